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


class ResnetStack(nn.Module):
    """The reference IMPALA stack: a 3x3 conv, a 3x3/2 max-pool, then `num_blocks` residual blocks of two convs."""

    num_features: int
    num_blocks: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.xavier_uniform()
        x = nn.Conv(self.num_features, (3, 3), strides=1, padding="SAME", kernel_init=init)(x)
        x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        for _ in range(self.num_blocks):
            residual = x
            x = nn.Conv(self.num_features, (3, 3), strides=1, padding="SAME", kernel_init=init)(nn.relu(x))
            x = nn.Conv(self.num_features, (3, 3), strides=1, padding="SAME", kernel_init=init)(nn.relu(x))
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
    """The reference's `ImpalaEncoder` (FQL/OGBench `utils/encoders.py`): IMPALA conv stacks (16, 32, 32 features),
    a ReLU, flattening and a GELU MLP (512, activated). Input: flat uint8 frames (`unflatten_frames`), scaled to
    [0, 1]; output `[*batch, 512]` features."""

    stack_sizes: tuple[int, ...] = (16, 32, 32)
    num_blocks: int = 2
    mlp_hidden_dims: tuple[int, ...] = (512,)
    image_shape: tuple[int, int, int] = IMAGE_SHAPE

    @nn.compact
    def __call__(self, observations: Array) -> Array:
        batch_shape = observations.shape[:-1]
        x = unflatten_frames(observations, self.image_shape).astype(jnp.float32) / 255.0
        x = x.reshape((-1, *x.shape[-3:]))  # convolutions want one batch axis
        for size in self.stack_sizes:
            x = ResnetStack(num_features=size, num_blocks=self.num_blocks)(x)
        x = nn.relu(x).reshape((*batch_shape, -1))
        return MLP(self.mlp_hidden_dims, activate_final=True)(x)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "impala": ImpalaEncoder,
    "impala_small": functools.partial(ImpalaEncoder, num_blocks=0),  # the released commands' pixel encoder
    "impala_debug": functools.partial(ImpalaEncoder, num_blocks=0, stack_sizes=(4, 4)),  # tiny, for tests
}
"""Encoder name (`--agent.encoder=...`) -> module, as the reference's `encoder_modules`."""
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
