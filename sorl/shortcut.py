"""Shortcut-model math: the one place training, the critic target and inference take it from.

Notation (docs/method.md): noise `a0 ~ N(0, I)`, data action `a1`, flow time `t in [0, 1)`, a sampler with
`K` equal steps has step size `h = 1/K` and step code `d = log2 K`. `M` (`denoise_timesteps`) is the finest
discretisation trained; flow matching trains `d = log2 M`, self-consistency every coarser level.

A velocity function has the signature `velocity_fn(observations, a_t, t, d) -> velocity`, where `t` and `d` may be
Python floats (one value for the whole batch) or `[B, 1]` columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sorl.errors import SorlError
from sorl.validation import is_power_of_two  # also imported from here (sorl.agent)

Array = jax.Array
VelocityFn = Callable[[Array, Array, Array | float, Array | float], Array]


def interpolant(a0: Array, a1: Array, t: Array | float, eps: float = 1e-5) -> Array:
    """`a_t = (1 - (1 - eps) t) a0 + t a1`: noise at t=0, data (plus eps of noise) at t=1."""
    return (1.0 - (1.0 - eps) * t) * a0 + t * a1


def flow_matching_target(a0: Array, a1: Array, eps: float = 1e-5) -> Array:
    """d a_t / dt of the interpolant, the velocity flow matching regresses on."""
    return a1 - (1.0 - eps) * a0


def self_consistency_target(
    velocity_fn: VelocityFn,
    observations: Array,
    a_t: Array,
    t: Array | float,
    d: Array | float,
    h: Array | float,
) -> Array:
    """Average velocity of two half steps (code `d + 1`) of `velocity_fn`, the target for one step of size `h`.

    `velocity_fn` should be the target (EMA) policy. The result is a regression target, so no gradient may reach
    any parameter through it, whoever calls this.
    """
    v1 = velocity_fn(observations, a_t, t, d + 1)
    v2 = velocity_fn(observations, a_t + 0.5 * h * v1, t + 0.5 * h, d + 1)
    return jax.lax.stop_gradient(0.5 * (v1 + v2))


def euler(velocity_fn: VelocityFn, observations: Array, noise: Array, steps: int, d: float | None = None) -> Array:
    """`steps` equal Euler steps of `velocity_fn(observations, a, t, d)` from t = 0 to 1, unclipped.

    Any positive step count; `d` is passed through unchanged (None for a plain flow field). The loop is a Python
    loop on purpose: exactly `steps` network calls, each differentiable.
    """
    h = 1.0 / steps
    a = noise
    for i in range(steps):
        a = a + h * velocity_fn(observations, a, i / steps, d)
    return a


def sample_euler(velocity_fn: VelocityFn, observations: Array, noise: Array, K: int) -> Array:
    """The shortcut sampler: K-step Euler with step code d = log2 K, clipped to [-1, 1].

    `K` is a static Python int: the loop unrolls into exactly K network calls, which keeps every step
    differentiable (the Q term backpropagates through all of them) and costs little compile time for K <= 8.
    """
    if not is_power_of_two(K):
        raise SorlError(f"the number of sampling steps K must be a power of two (1, 2, 4, ...), got {K}")
    return jnp.clip(euler(velocity_fn, observations, noise, K, float(math.log2(K))), -1.0, 1.0)


class ShortcutBatch(NamedTuple):
    """Inputs and regression target of one shortcut-model loss; all `[B, A]` or `[B, 1]`."""

    a_t: Array
    t: Array
    d: Array
    h: Array
    a0: Array


def flow_matching_batch(rng: Array, a1: Array, M: int, eps: float = 1e-5) -> ShortcutBatch:
    """Flow matching at the finest level `d = log2 M`, with `t` uniform on the grid `{0, 1/M, ..., (M-1)/M}`."""
    batch_size = a1.shape[0]
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (batch_size, 1), 0, M).astype(jnp.float32) / M
    a0 = jax.random.normal(noise_rng, a1.shape, dtype=a1.dtype)
    d = jnp.full((batch_size, 1), math.log2(M), dtype=jnp.float32)
    h = jnp.full((batch_size, 1), 1.0 / M, dtype=jnp.float32)
    return ShortcutBatch(interpolant(a0, a1, t, eps), t, d, h, a0)


def self_consistency_levels(batch_size: int, M: int) -> np.ndarray:
    """Step code `d` of each row for the self-consistency loss, `[B]`, fixed (not random) like the released code.

    The batch is split evenly over the `log2 M` coarser levels `d = log2 M - 1, ..., 0` (h = 2/M ... 1); the
    remainder of the division goes to `d = 0` (h = 1). With M = 1 there is no coarser level: all rows get d = 0
    and the caller should skip the loss.
    """
    num_levels = int(math.log2(M))
    if num_levels == 0:
        return np.zeros(batch_size, dtype=np.float32)
    per_level = batch_size // num_levels
    levels = np.repeat(np.arange(num_levels - 1, -1, -1), per_level)
    levels = np.concatenate([levels, np.zeros(batch_size - levels.shape[0])])
    return levels.astype(np.float32)


def self_consistency_batch(rng: Array, a1: Array, M: int, eps: float = 1e-5) -> ShortcutBatch:
    """Rows split over the coarse levels; `t` uniform on the grid of multiples of each row's `h`; fresh noise."""
    batch_size = a1.shape[0]
    t_rng, noise_rng = jax.random.split(rng)
    d = jnp.asarray(self_consistency_levels(batch_size, M))[:, None]
    sections = jnp.exp2(d)
    t = jnp.floor(jax.random.uniform(t_rng, (batch_size, 1)) * sections) / sections
    a0 = jax.random.normal(noise_rng, a1.shape, dtype=a1.dtype)
    return ShortcutBatch(interpolant(a0, a1, t, eps), t, d, 1.0 / sections, a0)
