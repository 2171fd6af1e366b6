"""DDPM (variance-preserving diffusion) math: the noise schedules, forward noising, the noise-prediction loss and
the one K-step sampler, for the diffusion-policy baselines (IDQL first). docs/method.md, *Diffusion and
consistency samplers*.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239, hereafter DDPM): `T`
diffusion steps, `beta_t` the variance added at step t, `alpha_t = 1 - beta_t`, `alpha_bar_t = prod_{s <= t}
alpha_s`. Arrays are indexed as in IDQL's official JAX code (`philippe-eecs/IDQL`, `jaxrl5/networks/diffusion.py`
and `jaxrl5/agents/ddpm_iql/ddpm_iql_learner.py`): entry `i = 0 ... T-1` is diffusion step `t = i + 1`, so
`alpha_bars[T-1]` is the most-noised level, and the network is told the integer index `i`.

A noise-prediction function has the signature `eps_fn(observations, x_t, t) -> eps`, where `t` is a `[*batch, 1]`
float column holding the step index `i` (in the *trained* schedule's numbering, also when sampling with fewer
steps); `observations` are passed through untouched (features or raw observations, as the agent likes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sorl.errors import SorlError
from sorl.networks import as_column

Array = jax.Array
EpsFn = Callable[[Array, Array, Array], Array]

SCHEDULES = ("vp", "cosine", "linear")
"""Beta schedules by name, as IDQL's `beta_schedule` option spells them (its default: `vp`)."""


class Schedule(NamedTuple):
    """A discrete VP noise schedule: `betas`, `alphas = 1 - betas`, `alpha_bars = cumprod(alphas)`, each `[T]`.

    A pytree of arrays, so an agent may keep it as a field (IDQL stores these three arrays in its agent).
    """

    betas: Array
    alphas: Array
    alpha_bars: Array

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])


def schedule_from_betas(betas: Array | np.ndarray) -> Schedule:
    """`alphas = 1 - betas`, `alpha_bars` their running product (DDPM §2: `alpha_bar_t = prod_{s=1}^t alpha_s`)."""
    betas = jnp.asarray(betas, dtype=jnp.float32)
    alphas = 1.0 - betas
    return Schedule(betas, alphas, jnp.cumprod(alphas))


def vp_schedule(T: int, beta_min: float = 0.1, beta_max: float = 10.0) -> Schedule:
    """The discretised VP-SDE schedule of IDQL's `vp_beta_schedule` (its default), from Song et al. 2021
    ("Score-Based Generative Modeling through SDEs", arXiv:2011.13456, eq. 11, `beta(s) = b_min + s (b_max - b_min)`):

    `alpha_t = exp(-b_min / T - (b_max - b_min) (2t - 1) / (2 T^2))`, t = 1 ... T, i.e. `alpha_t` is
    `exp(-integral of beta(s) over [(t-1)/T, t/T])`, so `alpha_bar_t = exp(-b_min t/T - (b_max - b_min) (t/T)^2 / 2)`
    in closed form, and `alpha_bar_T = exp(-(b_min + b_max) / 2)` whatever T.
    """
    t = np.arange(1, T + 1, dtype=np.float64)
    alphas = np.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T**2)
    return schedule_from_betas(1.0 - alphas)


def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM", arXiv:2102.09672, eq. 17), as IDQL's
    `cosine_beta_schedule`: `alpha_bar(t) = f(t) / f(0)`, `f(t) = cos^2(((t/T) + s) / (1 + s) * pi / 2)`, betas
    `1 - alpha_bar(t) / alpha_bar(t - 1)` clipped to `max_beta` (which only bites at t = T, where f(T) = 0).
    """
    t = np.linspace(0.0, T, T + 1, dtype=np.float64) / T
    f = np.cos((t + s) / (1 + s) * np.pi * 0.5) ** 2
    alpha_bar = f / f[0]
    betas = np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)
    return schedule_from_betas(betas)


def linear_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Schedule:
    """DDPM's linear betas (§4: 1e-4 to 0.02), IDQL's `linear` option."""
    return schedule_from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def make_schedule(name: str, T: int) -> Schedule:
    """The schedule called `name` (one of `SCHEDULES`) with `T` steps."""
    if isinstance(T, bool) or not isinstance(T, int | np.integer) or T < 1:
        raise SorlError(f"the number of diffusion steps T must be an integer >= 1, got {T!r}")
    makers = {"vp": vp_schedule, "cosine": cosine_schedule, "linear": linear_schedule}
    if name not in makers:
        raise SorlError(f"unknown beta schedule {name!r}; use one of {', '.join(SCHEDULES)}")
    return makers[name](int(T))


def q_sample(schedule: Schedule, x0: Array, t: Array | int, noise: Array) -> Array:
    """Forward noising `x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise` (DDPM eq. 4, IDQL's
    `update_actor`); `t` the step index `i` (an int, or `[*batch]` / `[*batch, 1]` ints)."""
    alpha_bar = as_column(schedule.alpha_bars[jnp.asarray(t)], x0.shape[:-1])
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def ddpm_loss(
    eps_fn: EpsFn,
    schedule: Schedule,
    observations: Array,
    x0: Array,
    rng: Array,
    weights: Array | None = None,
) -> Array:
    """The noise-prediction loss at a random step (DDPM eq. 14, `L_simple`, as IDQL's `actor_loss_fn`).

    Per example: `i ~ U{0, ..., T-1}`, `noise ~ N(0, I)`, `x_i = q_sample(x0, i, noise)`, loss
    `||eps_fn(obs, x_i, i) - noise||^2` summed over the action dimensions; the result is the batch mean of that,
    times `weights` `[B]` when given (IDQL's advantage weights; its default `bc` objective uses none).
    """
    batch_shape = x0.shape[:-1]
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, batch_shape, 0, schedule.T)
    noise = jax.random.normal(noise_rng, x0.shape, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    per_example = jnp.sum((eps_fn(observations, x_t, as_column(t, batch_shape)) - noise) ** 2, axis=-1)
    if weights is not None:
        per_example = per_example * weights
    return per_example.mean()


def sampling_timesteps(T: int, K: int) -> np.ndarray:
    """The K step indices a K-step sampler visits, ascending: all of `0 ... T-1` when K = T, else the evenly
    strided subset `round(linspace(0, T-1, K))` (K = 1: the last step only), which always ends at `T-1` (pure
    noise) and, for K > 1, starts at 0. Respacing as in Nichol & Dhariwal 2021, §4 ("Improving sampling speed").
    """
    if isinstance(K, bool) or not isinstance(K, int | np.integer) or not 1 <= K <= T:
        raise SorlError(
            f"K={K!r}: a diffusion policy trained with T={T} steps samples with 1 <= K <= {T} denoising steps"
        )
    if K == 1:
        return np.array([T - 1])
    return np.round(np.linspace(0, T - 1, K)).astype(np.int64)


def respaced(schedule: Schedule, timesteps: np.ndarray) -> Schedule:
    """The schedule restricted to `timesteps` (ascending indices): its `alpha_bars` are the visited ones and its
    betas `1 - alpha_bar[tau_k] / alpha_bar[tau_{k-1}]` (alpha_bar before the first is 1), Nichol & Dhariwal 2021
    §4; with every step kept, it is the schedule itself.
    """
    if len(timesteps) == schedule.T:
        return schedule
    alpha_bars = schedule.alpha_bars[timesteps]
    previous = jnp.concatenate([jnp.ones((1,), alpha_bars.dtype), alpha_bars[:-1]])
    alphas = alpha_bars / previous
    return Schedule(1.0 - alphas, alphas, alpha_bars)


class _Step(NamedTuple):
    """What the sampler's scan hands each reverse step: the visited step's index `t` and its respaced schedule
    entries, whether it is the step to the data, and its noise key."""

    t: Array
    beta: Array
    alpha: Array
    alpha_bar: Array
    alpha_bar_prev: Array
    is_last: Array
    key: Array


def _check_sampler(method: str, variance: str) -> None:
    """One-line errors for an unknown sampler or reverse-step variance, before anything is traced."""
    if method not in ("ddpm", "ddim"):
        raise SorlError(f"unknown diffusion sampler {method!r}; use 'ddpm' or 'ddim'")
    if variance not in ("beta", "posterior"):
        raise SorlError(f"unknown reverse-step variance {variance!r}; use 'beta' or 'posterior'")


def _reverse_steps(schedule: Schedule, K: int, rng: Array) -> _Step:
    """The K visited steps, ascending (`sampling_timesteps`), with the respaced schedule's entries (`respaced`)."""
    timesteps = sampling_timesteps(schedule.T, K)
    steps = respaced(schedule, timesteps)
    alpha_bar_prev = jnp.concatenate([jnp.ones((1,), steps.alpha_bars.dtype), steps.alpha_bars[:-1]])
    last = jnp.arange(K) == 0  # the step to the data (index 0 of the visited steps) adds no noise
    return _Step(
        jnp.asarray(timesteps),
        steps.betas,
        steps.alphas,
        steps.alpha_bars,
        alpha_bar_prev,
        last,
        jax.random.split(rng, K),
    )


def _ddpm_step(x: Array, eps: Array, s: _Step, temperature: float, variance: str) -> Array:
    """DDPM Algorithm 2 (IDQL's `ddpm_sampler`): `x <- (x - beta / sqrt(1 - alpha_bar) eps) / sqrt(alpha) +
    temperature sigma z`, no noise at the last step."""
    mean = (x - s.beta / jnp.sqrt(1.0 - s.alpha_bar) * eps) / jnp.sqrt(s.alpha)
    z = jax.random.normal(s.key, x.shape, dtype=x.dtype)
    # sigma^2: beta (IDQL) or the posterior variance (1 - alpha_bar_prev) / (1 - alpha_bar) beta (DDPM eq. 7)
    var = s.beta if variance == "beta" else (1.0 - s.alpha_bar_prev) / (1.0 - s.alpha_bar) * s.beta
    return mean + jnp.where(s.is_last, 0.0, temperature * jnp.sqrt(var)) * z


def _ddim_step(x: Array, eps: Array, s: _Step) -> Array:
    """DDIM eq. 12 with sigma = 0 (deterministic): `x0_hat = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)`,
    `x <- sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps`."""
    x0_hat = (x - jnp.sqrt(1.0 - s.alpha_bar) * eps) / jnp.sqrt(s.alpha_bar)
    return jnp.sqrt(s.alpha_bar_prev) * x0_hat + jnp.sqrt(1.0 - s.alpha_bar_prev) * eps


def sample(
    eps_fn: EpsFn,
    observations: Array,
    rng: Array,
    schedule: Schedule,
    K: int,
    action_dim: int,
    *,
    method: str = "ddpm",
    temperature: float = 1.0,
    variance: str = "beta",
    clip_each_step: bool = True,
) -> Array:
    """The diffusion sampler: `[*batch, action_dim]` actions from K denoising steps, clipped to [-1, 1].

    Start from `x ~ N(0, I)` at step `tau_K = T-1` and walk down the visited steps `tau_K > ... > tau_1`
    (`sampling_timesteps(T, K)`; all T of them when K = T) of the respaced schedule (`respaced`), with, at each:

    - `method="ddpm"` (`_ddpm_step`, DDPM Algorithm 2): `sigma^2 = beta` (`variance="beta"`, IDQL) or the
      posterior variance (`variance="posterior"`, DDPM eq. 7, the other choice of DDPM §3.2). With K < T the betas
      are the respaced ones: Nichol & Dhariwal 2021's strided sampling. With few steps `sigma^2 = beta`
      over-disperses and the posterior variance under-disperses (tests/test_diffusion.py measures both).
    - `method="ddim"` (`_ddim_step`; Song, Meng & Ermon 2021, "DDIM", arXiv:2010.02502): deterministic.

    `eps_fn` is told the original step index `tau_k`. `clip_each_step` clips `x` to [-1, 1] after every step, as
    IDQL does by default (`clip_sampler=True`). `K` and `method` are static; the steps run in a `lax.scan` (one
    network call each, differentiable), so any T compiles once per K. For best-of-N, wrap it as
    `lambda obs, key: sample(eps_fn, obs, key, schedule, K, A)` and hand that to `sorl.inference.sample_best_of_n`.
    """
    _check_sampler(method, variance)
    batch_shape = observations.shape[:-1]
    init_rng, step_rng = jax.random.split(rng)
    steps = _reverse_steps(schedule, K, step_rng)
    x = jax.random.normal(init_rng, (*batch_shape, action_dim))

    def step(x: Array, s: _Step) -> tuple[Array, None]:
        eps = eps_fn(observations, x, as_column(s.t.astype(jnp.float32), batch_shape))
        x = _ddpm_step(x, eps, s, temperature, variance) if method == "ddpm" else _ddim_step(x, eps, s)
        if clip_each_step:
            x = jnp.clip(x, -1.0, 1.0)
        return x, None

    x, _ = jax.lax.scan(step, x, steps, reverse=True)  # tau_K (noise) first, tau_1 last
    return jnp.clip(x, -1.0, 1.0)
