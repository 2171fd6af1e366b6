"""Test-time scaling: the Q verifier (best-of-N) and the jitted policy every evaluation calls.

Sequential scaling is the `K` of the sampler; parallel scaling draws `N` candidates per state and keeps the one the
critic scores highest. Both are static per call, so each `(K, N)` pair compiles once and runs as one XLA program
for a whole batch of states.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from sorl.agent import K_rule
from sorl.errors import SorlError

Array = jax.Array
SampleFn = Callable[[Array, Array], Array]  # (observations [B, O], rng) -> actions [B, A]
ScoreFn = Callable[[Array, Array], Array]  # (observations [B, O], actions [B, A]) -> scores [B]


def validate_K_N(K: int, N: int, max_K: int | None = None, agent: Any = None, name: str | None = None) -> None:
    """Raise a one-line `SorlError` unless `agent` takes K sampling steps within the trained maximum
    (`sorl.agent.Agent.check_K`; no agent: the contract's default, a power of two) and N >= 1. `agent` is an agent
    or its class; `name` its registry name for the message (default: looked up)."""
    K_rule(agent if agent is not None else object()).check_K(K, max_K, name=name)
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise SorlError(f"N={N}: the number of best-of-N candidates must be an integer >= 1")


def aggregate(qs: Array, how: str) -> Array:
    """`agg_j Q_j`, `[members, B]` -> `[B]`: the minimum (clipped double Q) or the mean over the ensemble (`q_agg`)."""
    return qs.min(axis=0) if how == "min" else qs.mean(axis=0)


def best_of_n(candidates: Array, scores: Array) -> Array:
    """Per state, the candidate with the highest score: `[N, B, A]`, `[N, B]` -> `[B, A]` (first one on ties)."""
    best = jnp.argmax(scores, axis=0)
    return jnp.take_along_axis(candidates, best[None, :, None], axis=0)[0]


def sample_best_of_n(sample_fn: SampleFn, score_fn: ScoreFn, observations: Array, rng: Array, N: int) -> Array:
    """Draw N candidates per state with independent keys and keep the best by `score_fn`.

    N = 1 is exactly `sample_fn(observations, rng)` and never evaluates the critic; for N > 1 candidate i uses
    `jax.random.split(rng, N)[i]`. Agent-agnostic: any policy with a sampler and a critic (SORL, flow BC + Q,
    FQL) gets the same verifier.
    """
    if N == 1:
        return sample_fn(observations, rng)
    keys = jax.random.split(rng, N)
    candidates = jax.vmap(sample_fn, in_axes=(None, 0))(observations, keys)
    scores = jax.vmap(score_fn, in_axes=(None, 0))(observations, candidates)
    return best_of_n(candidates, scores)


@partial(jax.jit, static_argnames=("K", "N"))
def _policy(agent: Any, observations: Array, rng: Array, K: int, N: int) -> Array:
    return agent.sample_actions(observations, rng, K=K, N=N)


def make_policy_fn() -> Callable[[Any, Array, Array, int, int], Array]:
    """`policy(agent, observations, rng, K, N) -> actions`, jitted with K and N static.

    The agent is a traced argument (not closed over), so new parameters after training steps reuse the
    compiled program; one compilation per `(K, N)` pair and observation shape. A single unbatched observation
    `[obs_dim]` is accepted and answered with a single action.
    """

    def policy(agent: Any, observations: Array, rng: Array, K: int, N: int) -> Array:
        validate_K_N(K, N, getattr(agent, "max_K", None), agent)
        observations = jnp.asarray(observations)
        if observations.ndim == 1:
            return _policy(agent, observations[None], rng, K=K, N=N)[0]
        return _policy(agent, observations, rng, K=K, N=N)

    return policy
