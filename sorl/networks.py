"""Networks shared by every agent: the MLP, critic ensembles, the (shortcut) velocity field and image encoders.

Conventions follow the FQL / OGBench reference code so checkpoints and learning curves are comparable:
GELU activations, LayerNorm after the activation (critics only by default), `variance_scaling(1, fan_avg,
uniform)` kernels, and conditioning scalars (flow time `t`, step code `d = log2 K`, step count `K`) fed as raw
numbers concatenated to the input rather than through an embedding.

Pixel observations (OGBench's visual-* tasks) reach the networks as flat uint8 vectors, `[*batch, F*H*W*C]`
with F stacked frames of `IMAGE_SHAPE` each, frame-major (`sorl.data`); a network with an `encoder` (one of
`ENCODERS`, the reference's names) first turns them into features with its own encoder module, which restores
the images, stacks the frames on the channel axis as the reference does, and divides by 255. With
`encoder=None` (the default) nothing changes: the parameters and outputs are those of the network without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sorl.validation import ENCODER_NAMES

Array = jax.Array

IMAGE_SHAPE = (64, 64, 3)
"""(height, width, channels) of one frame: OGBench's pixel observations (`ob_type='pixels'`, 64x64 RGB)."""


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def as_column(value: Array | float, batch_shape: tuple[int, ...]) -> Array:
    """A conditioning scalar as a `[*batch, 1]` float column.

    Accepts a Python/0-d scalar (one value for the whole batch), a `[*batch]` vector or a `[*batch, 1]` column,
    so callers can pass `t = i / K` from a sampler loop or per-example times from a loss alike.
    """
    value = jnp.asarray(value, dtype=jnp.float32)
    if value.ndim == len(batch_shape):
        value = value[..., None]
    return jnp.broadcast_to(value, (*batch_shape, 1))


class MLP(nn.Module):
    """Dense stack; `hidden_dims` includes the output width, so `(out_dim,)` is a single linear layer."""

    hidden_dims: Sequence[int]
    activate_final: bool = False
    layer_norm: bool = False
    activation: Callable[[Array], Array] = nn.gelu
    kernel_init: nn.initializers.Initializer = default_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=self.kernel_init)(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                x = self.activation(x)
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
        return x


def ensemblize(cls: type[nn.Module], num_members: int) -> type[nn.Module]:
    """`cls` with independent parameters per member (leading axis) and outputs stacked on axis 0.

    One vmapped module rather than a Python list keeps the ensemble a single batched matmul per layer.
    """
    return nn.vmap(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=num_members,
    )


# ------------------------------------------------------------------------------------------------ encoders
#
# The encoders are the reference's (FQL `utils/encoders.py`, identical in the released SORL code), with two ops whose
# gradients XLA runs slowly on CPU replaced, on CPU only, by the same math in a form it runs fast; forward values are
# those of the reference's ops and every other backend (GPU, TPU) runs the reference's ops themselves:
#
# - `cpu_safe_conv`: XLA's CPU compiler leaves a convolution with non-canonical dimension labels, which is what the
#   weight and input gradients of an NHWC convolution are, as it is when it sits inside a loop body (our training
#   chunk is a `lax.scan`), and runs it 10-30x slower than the same convolution outside a loop (jax-ml/jax#12868).
#   Its custom VJP writes both gradients as canonical NHWC/HWIO convolutions with explicit transposes.
# - `max_pool`: the gradient of `nn.max_pool` is a `select_and_scatter`, which XLA's CPU backend runs 3-5x slower at
#   the encoder's shapes than strided slices, compares and pads; the custom VJP routes the gradient to the first
#   maximum of each window in row-major order, the element `select_and_scatter` picks (ties included).

NHWC = ("NHWC", "HWIO", "NHWC")


def _explicit_pads(padding, in_spatial, window, strides) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(in_spatial, window, strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_canonical_grads(x: Array, kernel: Array, pads: tuple, precision) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=NHWC, precision=precision)


def _conv_fwd(x, kernel, pads, precision):
    return _conv_canonical_grads(x, kernel, pads, precision), (x, kernel)


def _conv_bwd(pads, precision, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    # dx: g correlated with the kernel rotated by 180 degrees, its in/out features swapped (HWIO: O <-> I)
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx_pads = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]), (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
    dx = jax.lax.conv_general_dilated(g, flipped, (1, 1), dx_pads, dimension_numbers=NHWC, precision=precision)
    # dkernel[a, b, c, o] = sum_{n,i,j} x_pad[n, i + a, j + b, c] g[n, i, j, o]: a convolution of x as [C, H, W, N]
    # (channels as the batch, the batch as the features) with g as an [H, W, N, O] kernel, then back to HWIO
    dk = jax.lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), pads, dimension_numbers=NHWC, precision=precision
    ).transpose(1, 2, 0, 3)
    return dx, dk


_conv_canonical_grads.defvjp(_conv_fwd, _conv_bwd)


def cpu_safe_conv(
    lhs: Array,
    rhs: Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
) -> Array:
    """`lax.conv_general_dilated` (the signature `nn.Conv(conv_general_dilated=...)` calls), the same value; on CPU a
    stride-1 NHWC convolution gets canonical gradient convolutions (see above), elsewhere nothing changes."""

    def reference(lhs: Array, rhs: Array) -> Array:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            precision=precision,
        )  # fmt: skip

    plain = lambda v: v is None or all(int(s) == 1 for s in v)  # noqa: E731
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    dims = dimension_numbers and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if not (lhs.ndim == 4 and plain(window_strides) and plain(lhs_dilation) and plain(rhs_dilation)
            and feature_group_count == 1 and dims in (None, nhwc)):  # fmt: skip
        return reference(lhs, rhs)
    pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2], (1, 1))

    def cpu(lhs: Array, rhs: Array) -> Array:
        return _conv_canonical_grads(lhs, rhs, pads, precision)

    return jax.lax.platform_dependent(lhs, rhs, cpu=cpu, default=reference)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_sliced_grad(x: Array, window: tuple, strides: tuple, pads: tuple) -> Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0)))


def _max_pool_fwd(x, window, strides, pads):
    y = _max_pool_sliced_grad(x, window, strides, pads)
    return y, (x, y)


def _max_pool_bwd(window, strides, pads, res, g):
    x, y = res
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    (N, _, _, C), (Ho, Wo), (kh, kw), (sh, sw) = xp.shape, y.shape[1:3], window, strides
    # Output (i, j) reads padded input (sh i + a, sw j + b): in the input's phase (a % sh, b % sw), a grid of
    # [Hq, Wq], at (i + a // sh, j + b // sw). Each phase's gradient is a sum of shifted masked copies of g.
    Hq, Wq = Ho + (kh - 1) // sh, Wo + (kw - 1) // sw
    zero, taken, phases = jnp.zeros((), g.dtype), jnp.zeros(y.shape, bool), {}
    for a in range(kh):  # the window's elements in row-major order: the first maximum takes the gradient
        for b in range(kw):
            tap = jax.lax.slice(xp, (0, a, b, 0), (N, a + sh * (Ho - 1) + 1, b + sw * (Wo - 1) + 1, C), (1, sh, sw, 1))
            first = (tap == y) & ~taken
            taken = taken | first
            shift = ((0, 0), (a // sh, Hq - Ho - a // sh), (b // sw, Wq - Wo - b // sw), (0, 0))
            part = jnp.pad(jnp.where(first, g, zero), shift)
            key = (a % sh, b % sw)
            phases[key] = phases[key] + part if key in phases else part
    empty = jnp.zeros((N, Hq, Wq, C), g.dtype)
    rows = [jnp.stack([phases.get((r, c), empty) for c in range(sw)], axis=3) for r in range(sh)]
    dxp = jnp.stack(rows, axis=2).reshape(N, Hq * sh, Wq * sw, C)  # the phases interleaved: the padded input
    (top, _), (left, _) = pads
    return (dxp[:, top : top + x.shape[1], left : left + x.shape[2]],)


_max_pool_sliced_grad.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int], padding: str = "SAME") -> Array:
    """`nn.max_pool(x, window, strides, padding)` of `[N, H, W, C]`, the same value and gradient; on CPU the
    gradient is computed without `select_and_scatter` (see above)."""
    pads = _explicit_pads(padding, x.shape[1:3], window, strides)

    def reference(x: Array) -> Array:
        return nn.max_pool(x, window, strides=strides, padding=pads)

    def cpu(x: Array) -> Array:
        return _max_pool_sliced_grad(x, tuple(window), tuple(strides), pads)

    return jax.lax.platform_dependent(x, cpu=cpu, default=reference)


class ResnetStack(nn.Module):
    """The reference's IMPALA stack: a 3x3 conv, a 3x3/2 max-pool (`max_pooling`), then `num_blocks` residual
    blocks of ReLU, 3x3 conv, ReLU, 3x3 conv; xavier-uniform kernels, zero biases, SAME padding."""

    num_features: int
    num_blocks: int
    max_pooling: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(
            nn.Conv, self.num_features, (3, 3), strides=1, padding="SAME",
            kernel_init=nn.initializers.xavier_uniform(), conv_general_dilated=cpu_safe_conv,
        )  # fmt: skip
        x = conv()(x)
        if self.max_pooling:
            x = max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for _ in range(self.num_blocks):
            residual = x
            x = conv()(nn.relu(x))
            x = conv()(nn.relu(x))
            x = x + residual
        return x


def unflatten_frames(x: Array, image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> Array:
    """`[*batch, F*H*W*C]` (F frames, frame-major) -> `[*batch, H, W, F*C]`: frames stacked on the channel axis,
    frame 0's channels first, the layout the reference's `np.concatenate(frames, axis=-1)` gives."""
    H, W, C = image_shape
    frames, rem = divmod(x.shape[-1], H * W * C)
    if rem or not frames:
        raise ValueError(f"an observation of {x.shape[-1]} values is not a whole number of {H}x{W}x{C} frames")
    x = x.reshape((*x.shape[:-1], frames, H, W, C))
    x = jnp.moveaxis(x, -4, -2)  # [..., H, W, F, C]
    return x.reshape((*x.shape[:-4], H, W, frames * C))


class ImpalaEncoder(nn.Module):
    """The reference's `ImpalaEncoder` (FQL `utils/encoders.py`, the same file in the released SORL code), field
    for field: one `ResnetStack` of `stack_sizes[i] * width` features per entry (each halving the image), a ReLU,
    a LayerNorm if `layer_norm`, flattening, and a GELU `MLP(mlp_hidden_dims, activate_final=True, layer_norm)`.
    Input: flat uint8 frames (`unflatten_frames`), divided by 255; output `[*batch, mlp_hidden_dims[-1]]`.
    Parameter names are the reference's (`stack_blocks_i`, `MLP_0`, `LayerNorm_0`)."""

    width: int = 1
    stack_sizes: tuple[int, ...] = (16, 32, 32)
    num_blocks: int = 2
    dropout_rate: float | None = None
    mlp_hidden_dims: tuple[int, ...] = (512,)
    layer_norm: bool = False
    image_shape: tuple[int, int, int] = IMAGE_SHAPE

    @nn.compact
    def __call__(self, observations: Array) -> Array:
        if self.dropout_rate is not None:
            # No named encoder of the reference uses dropout; it would need a dropout key in every agent's update.
            raise NotImplementedError("ImpalaEncoder: dropout_rate is not supported (no reference encoder uses it)")
        batch_shape = observations.shape[:-1]
        x = unflatten_frames(observations, self.image_shape).astype(jnp.float32) / 255.0
        x = x.reshape((-1, *x.shape[-3:]))  # convolutions want one batch axis
        for i, size in enumerate(self.stack_sizes):
            x = ResnetStack(num_features=size * self.width, num_blocks=self.num_blocks, name=f"stack_blocks_{i}")(x)
        x = nn.relu(x)
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        x = x.reshape((*batch_shape, -1))
        return MLP(self.mlp_hidden_dims, activate_final=True, layer_norm=self.layer_norm)(x)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "impala": ImpalaEncoder,
    "impala_debug": functools.partial(ImpalaEncoder, num_blocks=1, stack_sizes=(4, 4)),  # tiny, for tests
    "impala_small": functools.partial(ImpalaEncoder, num_blocks=1),  # the released pixel commands' encoder
    "impala_large": functools.partial(ImpalaEncoder, stack_sizes=(64, 128, 128), mlp_hidden_dims=(1024,)),
}
"""Encoder name (`--agent.encoder=...`) -> module: the reference's `encoder_modules`, entry for entry."""
assert tuple(ENCODERS) == ENCODER_NAMES  # the names `sorl.validation` accepts


def encoder_module(name: str | None, module_name: str = "encoder") -> nn.Module | None:
    """A fresh encoder module named `module_name` (its parameters' key), or None for `name=None`."""
    return None if name is None else ENCODERS[name](name=module_name)


def encode(encoder: str | None, params: dict, observations: Array) -> Array:
    """`observations` through the encoder whose parameters are `params['encoder']` (a network's own encoder, see
    `ShortcutVelocityNet`); unchanged without an encoder. Lets a caller encode once and call the network on the
    features many times (`encoded=True`), as the reference's K-step samplers do."""
    if encoder is None:
        return observations
    return ENCODERS[encoder]().apply({"params": params["encoder"]}, observations)


class CriticEnsemble(nn.Module):
    """`num_members` scalar heads on `[observations, actions, K]`; returns `[num_members, *batch]`.

    SORL's released critic is conditioned on the step count `K` that produced the action (the raw number, not
    log2 K); baselines leave `K=None` and get an ordinary Q(x, a). With `actions=None` it is a V(x) ensemble.
    With an `encoder`, one encoder (shared by the members, as the reference's `Value`) encodes the observations.
    """

    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = True
    num_members: int = 2
    encoder: str | None = None

    @nn.compact
    def __call__(self, observations: Array, actions: Array | None = None, K: Array | float | None = None) -> Array:
        batch_shape = observations.shape[:-1]
        if self.encoder is not None:
            observations = encoder_module(self.encoder)(observations)
        inputs = [observations]
        if actions is not None:
            inputs.append(actions)
        if K is not None:
            inputs.append(as_column(K, batch_shape))
        x = jnp.concatenate(inputs, axis=-1)
        heads = ensemblize(MLP, self.num_members)(
            (*self.hidden_dims, 1), activate_final=False, layer_norm=self.layer_norm
        )
        return heads(x).squeeze(-1)


class ShortcutVelocityNet(nn.Module):
    """Velocity `s(x, a_t, t, d)` of a shortcut model; `d = log2 K` is the step-size code.

    `t` and `d` are raw scalars concatenated to the input, as in the released code. With `d=None` it is a plain
    flow-matching velocity field `v(x, a_t, t)` (flow BC / FQL reuse it that way). With an `encoder`, its own
    encoder (parameters under 'encoder') encodes the observations first; `encoded=True` says the caller already
    did (`encode`), so a K-step sampler encodes once, not K times.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = False
    encoder: str | None = None

    @nn.compact
    def __call__(
        self,
        observations: Array,
        a_t: Array,
        t: Array | float,
        d: Array | float | None = None,
        encoded: bool = False,
    ) -> Array:
        batch_shape = a_t.shape[:-1]
        if self.encoder is not None and not encoded:
            observations = encoder_module(self.encoder)(observations)
        inputs = [observations, a_t, as_column(t, batch_shape)]
        if d is not None:
            inputs.append(as_column(d, batch_shape))
        x = jnp.concatenate(inputs, axis=-1)
        return MLP((*self.hidden_dims, self.action_dim), activate_final=False, layer_norm=self.layer_norm)(x)
