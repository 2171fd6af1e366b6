"""Networks shared by every agent: the MLP, critic ensembles and the (shortcut) velocity field.

Conventions follow the FQL / OGBench reference code so checkpoints and learning curves are comparable:
GELU activations, LayerNorm after the activation (critics only by default), `variance_scaling(1, fan_avg,
uniform)` kernels, and conditioning scalars (flow time `t`, step code `d = log2 K`, step count `K`) fed as raw
numbers concatenated to the input rather than through an embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


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


class CriticEnsemble(nn.Module):
    """`num_members` scalar heads on `[observations, actions, K]`; returns `[num_members, *batch]`.

    SORL's released critic is conditioned on the step count `K` that produced the action (the raw number, not
    log2 K); baselines leave `K=None` and get an ordinary Q(x, a). With `actions=None` it is a V(x) ensemble.
    """

    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = True
    num_members: int = 2

    @nn.compact
    def __call__(self, observations: Array, actions: Array | None = None, K: Array | float | None = None) -> Array:
        batch_shape = observations.shape[:-1]
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
    flow-matching velocity field `v(x, a_t, t)` (flow BC / FQL reuse it that way).
    """

    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, observations: Array, a_t: Array, t: Array | float, d: Array | float | None = None) -> Array:
        batch_shape = a_t.shape[:-1]
        inputs = [observations, a_t, as_column(t, batch_shape)]
        if d is not None:
            inputs.append(as_column(d, batch_shape))
        x = jnp.concatenate(inputs, axis=-1)
        return MLP((*self.hidden_dims, self.action_dim), activate_final=False, layer_norm=self.layer_norm)(x)
