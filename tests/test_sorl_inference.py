"""The verifier keeps the candidate with the highest aggregated Q; the jitted policy validates K and N."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.sorl import SORLAgent, SORLConfig
from sorl import inference
from sorl.errors import SorlError

OBS, ACT, B = 3, 2, 6


def test_validate_K_N_one_line_errors():
    inference.validate_K_N(8, 16, max_K=8)
    for K, N, max_K, pattern in [
        (3, 1, 8, "power of two"),
        (0, 1, 8, "power of two"),
        (16, 1, 8, "above the largest step count"),
        (4, 0, 8, "N=0"),
        (4, 2.5, 8, "integer"),
    ]:
        with pytest.raises(SorlError, match=pattern) as err:
            inference.validate_K_N(K, N, max_K)
        assert "\n" not in str(err.value)


def test_best_of_n_picks_the_argmax_per_state():
    candidates = jnp.arange(3 * 2 * 2, dtype=jnp.float32).reshape(3, 2, 2)  # [N=3, B=2, A=2]
    scores = jnp.array([[0.1, 5.0], [0.7, -1.0], [0.3, 2.0]])
    np.testing.assert_array_equal(inference.best_of_n(candidates, scores), [candidates[1, 0], candidates[0, 1]])


def test_sample_best_of_n_with_a_known_verifier():
    observations = jax.random.normal(jax.random.PRNGKey(0), (B, OBS))
    a_star = jnp.tanh(observations[:, :ACT])

    def sample_fn(obs, key):
        return jax.random.uniform(key, (obs.shape[0], ACT), minval=-1, maxval=1)

    def score_fn(obs, actions):  # Q(x, a) = -|a - a*(x)|
        return -jnp.abs(actions - jnp.tanh(obs[:, :ACT])).sum(-1)

    rng, N = jax.random.PRNGKey(1), 16
    got = inference.sample_best_of_n(sample_fn, score_fn, observations, rng, N)
    candidates = np.stack([np.asarray(sample_fn(observations, k)) for k in jax.random.split(rng, N)])
    distance = np.abs(candidates - np.asarray(a_star)[None]).sum(-1)  # [N, B]
    expected = candidates[np.argmin(distance, axis=0), np.arange(B)]
    np.testing.assert_allclose(got, expected)
    # The best of 16 is closer than a single draw on average.
    assert distance.min(0).mean() < distance.mean()

    calls = []
    one = inference.sample_best_of_n(sample_fn, lambda o, a: calls.append(1) or a[:, 0], observations, rng, 1)
    assert not calls  # N = 1 never evaluates the verifier
    np.testing.assert_allclose(one, sample_fn(observations, rng))


def linear_critic_agent(q_agg: str) -> SORLAgent:
    """A small agent whose two critics are known linear functions: Q_1 = a_0 and Q_2 = -2 a_0."""
    config = SORLConfig(
        actor_layer_size=16, actor_num_layers=2, value_num_layers=0, num_critics=2, q_agg=q_agg, denoise_timesteps=8
    )
    agent = SORLAgent.create(jax.random.PRNGKey(0), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    kernel = np.zeros((2, OBS + ACT + 1, 1), np.float32)
    kernel[0, OBS, 0], kernel[1, OBS, 0] = 1.0, -2.0
    critic = {"VmapMLP_0": {"Dense_0": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros((2, 1))}}}
    assert jax.tree.structure(critic) == jax.tree.structure(agent.params["critic"])
    return agent.replace(params={**agent.params, "critic": critic})


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_agent_best_of_n_uses_the_aggregated_critic(q_agg):
    agent = linear_critic_agent(q_agg)
    policy = inference.make_policy_fn()
    observations = jax.random.normal(jax.random.PRNGKey(2), (B, OBS))
    rng, K, N = jax.random.PRNGKey(3), 4, 8
    got = np.asarray(policy(agent, observations, rng, K, N))
    candidates = np.stack([np.asarray(policy(agent, observations, k, K, 1)) for k in jax.random.split(rng, N)])
    a0 = candidates[..., 0]
    # mean(a0, -2 a0) = -a0/2 prefers the smallest a0; min(a0, -2 a0) prefers a0 nearest 0.
    score = -0.5 * a0 if q_agg == "mean" else np.minimum(a0, -2 * a0)
    expected = candidates[np.argmax(score, axis=0), np.arange(B)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.shape == (B, ACT) and np.all(np.abs(got) <= 1)
    np.testing.assert_allclose(
        agent.aggregated_q(observations, jnp.asarray(got), K), score[np.argmax(score, axis=0), np.arange(B)], rtol=1e-5
    )


def test_policy_compiles_once_per_K_N_and_validates():
    agent = linear_critic_agent("mean")
    policy = inference.make_policy_fn()
    observations = jnp.zeros((B, OBS))
    policy(agent, observations, jax.random.PRNGKey(0), 2, 3)
    before = inference._policy._cache_size()
    # New parameters and keys, same (K, N): no recompilation.
    moved = agent.replace(params=jax.tree.map(lambda p: p + 0.1, agent.params))
    policy(moved, observations, jax.random.PRNGKey(5), 2, 3)
    assert inference._policy._cache_size() == before
    policy(agent, observations, jax.random.PRNGKey(0), 1, 3)
    assert inference._policy._cache_size() == before + 1

    single = policy(agent, observations[0], jax.random.PRNGKey(0), 2, 1)
    assert single.shape == (ACT,)
    with pytest.raises(SorlError, match="above the largest"):
        policy(agent, observations, jax.random.PRNGKey(0), 16, 1)
    with pytest.raises(SorlError, match="N=0"):
        policy(agent, observations, jax.random.PRNGKey(0), 2, 0)
    with pytest.raises(SorlError, match="power of two"):
        agent.sample_actions(observations, jax.random.PRNGKey(0), K=6, N=1)
    # A smaller trained maximum lowers the allowed K.
    small = agent.replace(config=dataclasses.replace(agent.config, denoise_timesteps=2, max_k_backprop=2))
    assert small.max_K == 2
    with pytest.raises(SorlError, match=r"\(2, its denoise_timesteps\)"):
        policy(small, observations, jax.random.PRNGKey(0), 4, 1)
