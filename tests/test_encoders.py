"""The image encoders against the reference's definitions, and the CPU forms of their gradients.

The reference is `utils/encoders.py` of FQL (github.com/seohongpark/fql, commit 719d044) and of the released SORL
code (github.com/nico-espinosadice/SORL, commit cc060ac), the same file byte for byte:

    encoder_modules = {
        'impala': ImpalaEncoder,       # width 1, stack_sizes (16, 32, 32), num_blocks 2, dropout_rate None,
                                       # mlp_hidden_dims (512,), layer_norm False
        'impala_debug': partial(ImpalaEncoder, num_blocks=1, stack_sizes=(4, 4)),
        'impala_small': partial(ImpalaEncoder, num_blocks=1),
        'impala_large': partial(ImpalaEncoder, stack_sizes=(64, 128, 128), mlp_hidden_dims=(1024,)),
    }

A stack is a 3x3 conv (SAME, bias), a 3x3/2 max-pool (SAME: 64 -> 32 -> 16 -> 8) and `num_blocks` residual blocks of
two 3x3 convs; then ReLU, flattening and one GELU Dense layer per `mlp_hidden_dims` entry. The parameter counts below
are that arithmetic written out, for 3 stacked RGB frames (9 input channels, the pixel tasks' default).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sorl.networks import ENCODERS, ImpalaEncoder, cpu_safe_conv, max_pool
from sorl.validation import ENCODER_NAMES


def conv3x3(c_in: int, c_out: int) -> int:
    """Parameters of a 3x3 convolution: its kernel and one bias per output channel."""
    return 3 * 3 * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# fmt: off
REFERENCE_COUNTS = {
    # 'impala': stacks of 16, 32, 32 features, 2 blocks (2 convs each) per stack, Dense(512) on 8*8*32 features
    "impala": (
        conv3x3(9, 16) + 2 * 2 * conv3x3(16, 16)       # stack 1 at 64x64 (its blocks at 32x32)
        + conv3x3(16, 32) + 2 * 2 * conv3x3(32, 32)    # stack 2: 32x32 -> 16x16
        + conv3x3(32, 32) + 2 * 2 * conv3x3(32, 32)    # stack 3: 16x16 -> 8x8
        + dense(8 * 8 * 32, 512)
    ),
    # 'impala_debug': stacks of 4, 4 features, 1 block per stack; two poolings leave 16x16x4
    "impala_debug": (
        conv3x3(9, 4) + 1 * 2 * conv3x3(4, 4)
        + conv3x3(4, 4) + 1 * 2 * conv3x3(4, 4)
        + dense(16 * 16 * 4, 512)
    ),
    # 'impala_small': 'impala' with 1 block per stack (the released pixel commands' encoder)
    "impala_small": (
        conv3x3(9, 16) + 1 * 2 * conv3x3(16, 16)
        + conv3x3(16, 32) + 1 * 2 * conv3x3(32, 32)
        + conv3x3(32, 32) + 1 * 2 * conv3x3(32, 32)
        + dense(8 * 8 * 32, 512)
    ),
    # 'impala_large': stacks of 64, 128, 128 features, 2 blocks per stack, Dense(1024)
    "impala_large": (
        conv3x3(9, 64) + 2 * 2 * conv3x3(64, 64)
        + conv3x3(64, 128) + 2 * 2 * conv3x3(128, 128)
        + conv3x3(128, 128) + 2 * 2 * conv3x3(128, 128)
        + dense(8 * 8 * 128, 1024)
    ),
}
# The same sums evaluated: conv kernels + biases, then the dense layer (kernel + bias).
assert REFERENCE_COUNTS == {
    "impala": (1312 + 4 * 2320) + (4640 + 4 * 9248) + (9248 + 4 * 9248) + (2048 * 512 + 512),  # 1,147,552
    "impala_debug": (328 + 2 * 148) + (148 + 2 * 148) + (1024 * 512 + 512),  # 525,868
    "impala_small": (1312 + 2 * 2320) + (4640 + 2 * 9248) + (9248 + 2 * 9248) + (2048 * 512 + 512),  # 1,105,920
    "impala_large": (5248 + 4 * 36928) + (73856 + 4 * 147584) + (147584 + 4 * 147584) + (8192 * 1024 + 1024),
} == {"impala": 1_147_552, "impala_debug": 525_868, "impala_small": 1_105_920, "impala_large": 9_944_704}

REFERENCE_FIELDS = {  # (width, stack_sizes, num_blocks, dropout_rate, mlp_hidden_dims, layer_norm)
    "impala": (1, (16, 32, 32), 2, None, (512,), False),
    "impala_debug": (1, (4, 4), 1, None, (512,), False),
    "impala_small": (1, (16, 32, 32), 1, None, (512,), False),
    "impala_large": (1, (64, 128, 128), 2, None, (1024,), False),
}
# fmt: on

FRAMES = jnp.zeros((2, 3 * 64 * 64 * 3), jnp.uint8)  # two observations of 3 stacked 64x64 RGB frames


def _params(name: str, observations=FRAMES):
    return jax.eval_shape(ENCODERS[name]().init, jax.random.PRNGKey(0), observations)["params"]  # shapes only


def test_every_reference_encoder_name_is_defined_as_the_reference():
    assert tuple(ENCODERS) == ENCODER_NAMES == tuple(REFERENCE_FIELDS)
    for name, fields in REFERENCE_FIELDS.items():
        enc = ENCODERS[name]()
        got = (enc.width, tuple(enc.stack_sizes), enc.num_blocks, enc.dropout_rate, tuple(enc.mlp_hidden_dims))
        assert (*got, enc.layer_norm) == fields, name


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_parameter_count_and_layers_are_the_references(name):
    width, stacks, blocks, _, mlp, _ = REFERENCE_FIELDS[name]
    params = _params(name)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == REFERENCE_COUNTS[name]
    # the reference's module names: one conv, then two per residual block, in each stack
    assert sorted(params) == ["MLP_0"] + [f"stack_blocks_{i}" for i in range(len(stacks))]
    c_in = 9
    for i, size in enumerate(stacks):
        stack = params[f"stack_blocks_{i}"]
        assert sorted(stack) == [f"Conv_{j}" for j in range(1 + 2 * blocks)]
        assert stack["Conv_0"]["kernel"].shape == (3, 3, c_in, size * width)
        c_in = size * width
    side = 64 // 2 ** len(stacks)
    assert params["MLP_0"]["Dense_0"]["kernel"].shape == (side * side * c_in, mlp[0])
    out = jax.eval_shape(ENCODERS[name]().apply, {"params": params}, FRAMES)
    assert out.shape == (2, mlp[-1]) and out.dtype == jnp.float32


def test_one_frame_has_three_input_channels():
    params = _params("impala_small", jnp.zeros((1, 64 * 64 * 3), jnp.uint8))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert count == REFERENCE_COUNTS["impala_small"] - conv3x3(9, 16) + conv3x3(3, 16)


@pytest.mark.parametrize("name", ["impala_debug", "impala_small"])
def test_a_forward_pass_divides_by_255(name):
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 3 * 64 * 64 * 3), dtype=np.uint8))
    enc = ENCODERS[name]()
    params = jax.jit(enc.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(enc.apply)
    out = apply(params, x)
    assert out.shape == (2, 512) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, apply(params, x.astype(jnp.float32)), rtol=1e-6)  # uint8 or float: /255 inside
    assert not np.allclose(out[0], out[1])


def test_layer_norm_and_width_follow_the_reference():
    enc = ImpalaEncoder(stack_sizes=(4, 4), num_blocks=1, width=2, layer_norm=True)
    params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), FRAMES)["params"]
    assert params["stack_blocks_1"]["Conv_0"]["kernel"].shape == (3, 3, 8, 8)  # 4 features x width 2
    # after the final ReLU and before flattening, as the reference: over each pixel's channels
    assert params["LayerNorm_0"]["scale"].shape == (8,)
    assert "LayerNorm_0" in params["MLP_0"]  # and after the MLP's activation
    with pytest.raises(NotImplementedError, match="dropout"):
        jax.eval_shape(ImpalaEncoder(dropout_rate=0.1).init, jax.random.PRNGKey(0), FRAMES)


# ------------------------------------------------------------------------------ CPU forms of the gradients


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1))])
def test_cpu_safe_conv_has_the_value_and_gradients_of_lax_conv(padding):
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 9, 5))
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 5, 4))
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=dims)))

    ours = jax.jit(jax.value_and_grad(loss(cpu_safe_conv), argnums=(0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (2, 7, 9, 2)])
def test_max_pool_has_the_value_and_gradient_of_flax_max_pool_ties_included(shape):
    # integer-valued inputs: many ties, where the gradient goes to the window's first maximum (row-major)
    x = jnp.round(jax.random.normal(jax.random.PRNGKey(3), shape) * 1.5)
    g = jax.random.normal(jax.random.PRNGKey(4), nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME").shape)

    def value_and_vjp(pool):
        return jax.jit(lambda x, g: (pool(x), jax.vjp(pool, x)[1](g)[0]))(x, g)

    y, dx = value_and_vjp(lambda x: max_pool(x, (3, 3), (2, 2), "SAME"))
    y_ref, dx_ref = value_and_vjp(lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME"))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx != 0, dx_ref != 0)  # the same element of each window gets the gradient
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)  # sums of overlapping windows: rounding only


def test_encoder_gradient_in_a_scanned_loop_has_only_canonical_convolutions():
    """XLA's CPU compiler runs a non-canonical convolution inside a loop body 10-30x slower (jax-ml/jax#12868); the
    training chunk is a `lax.scan`, so on CPU every convolution of an update must reach XLA in NHWC/HWIO form."""
    enc = ENCODERS["impala_debug"]()
    x = jnp.zeros((2, 3 * 64 * 64 * 3), jnp.uint8)
    params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x)

    def steps(p):
        def step(p, _):
            g = jax.grad(lambda p: jnp.sum(enc.apply(p, x) ** 2))(p)
            return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), None

        return jax.lax.scan(step, p, None, length=2)[0]

    hlo = jax.jit(steps).lower(params).compile().as_text()
    labels = set(re.findall(r"dim_labels=([^,\s]+)", hlo))
    if jax.default_backend() == "cpu":
        assert labels == {"b01f_01io->b01f"}, labels
        assert "select-and-scatter" not in hlo
