"""Consistency-model math: the consistency function's parametrisation, the consistency-training loss and the
multistep sampler, for the consistency actor-critic baseline (CAC). docs/method.md, *Diffusion and consistency
samplers*.

Sources: Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models" (arXiv:2303.01469, hereafter CM), and CAC
itself, Ding & Jin 2024, "Consistency Models as a Rich and Efficient Policy Class for Reinforcement Learning"
(arXiv:2309.16984), whose official code (`quantumiracle/Consistency_Model_For_Reinforcement_Learning`,
`agents/consistency.py`, `agents/ql_consistency.py`, `agents/helpers.py`) fixes the choices the paper leaves open.

Noise levels `sigma` follow the variance-exploding convention of CM / Karras et al. 2022 ("EDM",
arXiv:2206.00364): a noised action is `x_sigma = x0 + sigma z`, `sigma` in `[sigma_min, sigma_max]` =
`[0.002, 80]`. A denoiser network has the signature `net_fn(observations, x, sigma) -> F`, `sigma` a `[*batch, 1]`
float column (raw, as CAC's network receives it); the consistency function wraps it (`consistency_function`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sorl.errors import SorlError
from sorl.networks import as_column

Array = jax.Array
NetFn = Callable[[Array, Array, Array], Array]

SIGMA_MIN = 0.002
"""`epsilon` of CM: the noise level at which the consistency function is the identity (CAC code's `eps`)."""
SIGMA_MAX = 80.0
"""`T` of CM: the noise level sampling starts from (CAC code's `max_T`)."""
SIGMA_DATA = 0.5
"""`sigma_data` of CM's skip/out scalings (CAC code: `0.25 = 0.5^2`)."""
RHO = 7.0
"""Karras et al.'s discretisation exponent (CM §5 and CAC's `kerras_boundaries(7.0, ...)`)."""
SIGMA_LOW = 2.0
"""The smallest noise level the multistep sampler visits (CAC code's `min_T`, "tau_{n-1}")."""


def skip_out_scalings(
    sigma: Array | float, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN
) -> tuple[Array, Array]:
    """`(c_skip, c_out)` of CM Appendix C (and CAC's `predict_consistency`):
    `c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)`,
    `c_out = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2)`; at `sigma = sigma_min` they are 1
    and 0, so the boundary condition `f(x, sigma_min) = x` (CM eq. 5) holds for any network.
    """
    sigma = jnp.asarray(sigma, dtype=jnp.float32)
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma_data**2 + sigma**2)
    return c_skip, c_out


def consistency_function(
    net_fn: NetFn,
    observations: Array,
    x: Array,
    sigma: Array | float,
    sigma_data: float = SIGMA_DATA,
    sigma_min: float = SIGMA_MIN,
) -> Array:
    """`f(obs, x, sigma) = c_skip(sigma) x + c_out(sigma) F(obs, x, sigma)` (CM eq. 5). No input scaling `c_in`,
    as in CAC's code ("no c_in (EDM preconditioning)"); a network that wants one applies it itself."""
    sigma = as_column(sigma, x.shape[:-1])
    c_skip, c_out = skip_out_scalings(sigma, sigma_data, sigma_min)
    return c_skip * x + c_out * net_fn(observations, x, sigma)


def karras_sigma(
    n: Array | int, N: Array | int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> Array:
    """The n-th of N noise levels, `(sigma_min^(1/rho) + n/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho`,
    n = 0 ... N-1 (Karras et al. 2022 eq. 5, CM §5, CAC's `kerras_boundaries`). `n` and `N` may be traced."""
    n = jnp.asarray(n, dtype=jnp.float32)
    N = jnp.asarray(N, dtype=jnp.float32)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + n / (N - 1.0) * (hi - lo)) ** rho


def training_discretisation(step: Array | int, total_steps: int, s0: int = 2, s1: int = 150) -> Array:
    """N(k), the number of noise levels the consistency-training loss uses at training step k, growing from
    `s0` to `s1`: `ceil(sqrt(k / K (s1^2 - s0^2) + s0^2) - 1) + 1` (CAC's `timesteps_schedule`; CM Appendix C
    writes `(s1 + 1)^2` where CAC writes `s1^2`). An int32 array; `step` may be traced."""
    k = jnp.asarray(step, dtype=jnp.float32)
    n = jnp.ceil(jnp.sqrt(k * (s1**2 - s0**2) / total_steps + s0**2) - 1.0) + 1.0
    return n.astype(jnp.int32)


def consistency_training_loss(
    net_fn: NetFn,
    target_net_fn: NetFn,
    observations: Array,
    x0: Array,
    rng: Array,
    N: Array | int,
    *,
    scale_by_gap: bool = False,
    sigma_data: float = SIGMA_DATA,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> Array:
    """CAC's behaviour-cloning loss: consistency *training* (CM Algorithm 3, eq. 10 with `lambda = 1` and the
    squared L2 distance), not distillation (there is no pre-trained diffusion model in CAC).

    Per example: `n ~ U{0, ..., N-2}`, one `z ~ N(0, I)`, `sigma_n = karras_sigma(n, N)`; the loss is
    `mean over action dims of (f_theta(x0 + sigma_{n+1} z, sigma_{n+1}) - stopgrad f_target(x0 + sigma_n z,
    sigma_n))^2`, averaged over the batch (CAC's `Consistency.loss` with `WeightedL2`). `target_net_fn` is the EMA
    network (CM's `theta^-`); no gradient reaches anything through the target. `scale_by_gap` multiplies each
    example by `100 / (sigma_{n+1} - sigma_n)` (CAC's `scale_consis_loss`: its offline.py keeps a per-task value but
    never passes it on, so every official run scales).
    `N` (>= 2) may be traced, e.g. `training_discretisation(step, total)` inside a scanned training chunk.
    """
    batch_shape = x0.shape[:-1]
    n_rng, z_rng = jax.random.split(rng)
    n = jax.random.randint(n_rng, (*batch_shape, 1), 0, jnp.asarray(N) - 1)
    z = jax.random.normal(z_rng, x0.shape, dtype=x0.dtype)
    sigma_lo = karras_sigma(n, N, sigma_min, sigma_max, rho)
    sigma_hi = karras_sigma(n + 1, N, sigma_min, sigma_max, rho)
    prediction = consistency_function(net_fn, observations, x0 + sigma_hi * z, sigma_hi, sigma_data, sigma_min)
    target = consistency_function(target_net_fn, observations, x0 + sigma_lo * z, sigma_lo, sigma_data, sigma_min)
    per_example = jnp.mean((prediction - jax.lax.stop_gradient(target)) ** 2, axis=-1, keepdims=True)
    if scale_by_gap:
        per_example = per_example * (100.0 / (sigma_hi - sigma_lo))
    return per_example.mean()


def sampling_sigmas(K: int, sigma_low: float = SIGMA_LOW, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """The K noise levels the multistep sampler visits, descending from `sigma_max`: CAC's
    `linspace(sigma_low, sigma_max, K)` reversed (its `t_seq`; CAC samples with K = 2, i.e. 80 then 2); K = 1 is
    the one-step sampler from `sigma_max`."""
    if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
        raise SorlError(f"K={K!r}: a consistency policy samples with K >= 1 steps")
    if K == 1:
        return np.array([sigma_max])
    return np.linspace(sigma_low, sigma_max, K)[::-1].copy()


def sample(
    net_fn: NetFn,
    observations: Array,
    rng: Array,
    K: int,
    action_dim: int,
    *,
    sigma_low: float = SIGMA_LOW,
    sigma_data: float = SIGMA_DATA,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
) -> Array:
    """Multistep consistency sampling (CM Algorithm 1, CAC's `Consistency.sample`): `[*batch, action_dim]`
    actions in [-1, 1].

    `x = f(sigma_max z, sigma_max)`; then for each further level `sigma` of `sampling_sigmas(K)`:
    `x = f(x + sqrt(sigma^2 - sigma_min^2) z', sigma)` with fresh `z'`; clip to [-1, 1] at the end only. K is
    static; the loop unrolls into exactly K network calls, each differentiable (CAC's Q term backpropagates
    through the sampler). For best-of-N, hand `lambda obs, key: sample(net_fn, obs, key, K, A)` to
    `sorl.inference.sample_best_of_n`.
    """
    sigmas = sampling_sigmas(K, sigma_low, sigma_max)
    batch_shape = observations.shape[:-1]
    keys = jax.random.split(rng, K)
    x = sigma_max * jax.random.normal(keys[0], (*batch_shape, action_dim))
    x = consistency_function(net_fn, observations, x, float(sigmas[0]), sigma_data, sigma_min)
    for sigma, key in zip(sigmas[1:], keys[1:], strict=True):
        noise = jax.random.normal(key, x.shape, dtype=x.dtype)
        x = x + float(np.sqrt(sigma**2 - sigma_min**2)) * noise
        x = consistency_function(net_fn, observations, x, float(sigma), sigma_data, sigma_min)
    return jnp.clip(x, -1.0, 1.0)
