"""Shortcut math against values computed by hand on a linear velocity field v = [x, a, t, d] @ W + b."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.sorl import SORLAgent, SORLConfig
from sorl import shortcut
from sorl.errors import SorlError

OBS, ACT, B = 3, 2, 10
EPS = 1e-5


def linear_velocity(W: np.ndarray, b: np.ndarray):
    """numpy velocity of a linear network; t and d may be scalars or [B, 1] columns."""

    def v(obs, a, t, d):
        obs, a = np.asarray(obs, np.float64), np.asarray(a, np.float64)
        n = a.shape[0]
        t = np.broadcast_to(np.asarray(t, np.float64).reshape(-1, 1), (n, 1))
        d = np.broadcast_to(np.asarray(d, np.float64).reshape(-1, 1), (n, 1))
        return np.concatenate([obs, a, t, d], axis=1) @ W + b

    return v


@pytest.fixture(scope="module")
def rand():
    rng = np.random.default_rng(0)
    return {
        "obs": rng.normal(size=(B, OBS)).astype(np.float32),
        "a0": rng.normal(size=(B, ACT)).astype(np.float32),
        "a1": rng.uniform(-1, 1, size=(B, ACT)).astype(np.float32),
        "W": rng.normal(scale=0.3, size=(OBS + ACT + 2, ACT)).astype(np.float32),
        "b": rng.normal(scale=0.3, size=(ACT,)).astype(np.float32),
        "W_target": rng.normal(scale=0.3, size=(OBS + ACT + 2, ACT)).astype(np.float32),
        "b_target": rng.normal(scale=0.3, size=(ACT,)).astype(np.float32),
    }


def test_interpolant_endpoints_and_fm_target(rand):
    a0, a1 = rand["a0"], rand["a1"]
    np.testing.assert_allclose(shortcut.interpolant(a0, a1, 0.0, EPS), a0, rtol=1e-6)
    np.testing.assert_allclose(shortcut.interpolant(a0, a1, 1.0, EPS), a1 + EPS * a0, rtol=1e-6, atol=1e-7)
    t = 0.375
    np.testing.assert_allclose(
        shortcut.interpolant(a0, a1, t, EPS), (1 - (1 - EPS) * t) * a0 + t * a1, rtol=1e-6, atol=1e-7
    )
    # The FM target is the time derivative of the interpolant.
    fm = shortcut.flow_matching_target(a0, a1, EPS)
    np.testing.assert_allclose(fm, a1 - (1 - EPS) * a0, rtol=1e-6, atol=1e-7)
    dt = 1e-3
    finite_diff = (shortcut.interpolant(a0, a1, t + dt, EPS) - shortcut.interpolant(a0, a1, t, EPS)) / dt
    np.testing.assert_allclose(finite_diff, fm, rtol=1e-2, atol=1e-3)


def test_self_consistency_target_by_hand(rand):
    obs, a_t = rand["obs"], rand["a1"]
    W, b = rand["W"], rand["b"]
    v_np = linear_velocity(W, b)

    def v_jax(o, a, t, d):
        n = a.shape[0]
        t = jnp.broadcast_to(jnp.reshape(jnp.asarray(t, jnp.float32), (-1, 1)), (n, 1))
        d = jnp.broadcast_to(jnp.reshape(jnp.asarray(d, jnp.float32), (-1, 1)), (n, 1))
        return jnp.concatenate([o, a, t, d], axis=1) @ W + b

    t = np.array([[0.0], [0.5], [0.25], [0.75], [0.0], [0.5], [0.0], [0.0], [0.0], [0.5]], np.float32)
    d = np.array([[2], [1], [2], [2], [1], [1], [0], [0], [0], [1]], np.float32)
    h = 1.0 / 2**d
    v1 = v_np(obs, a_t, t, d + 1)
    v2 = v_np(obs, a_t + h / 2 * v1, t + h / 2, d + 1)
    expected = (v1 + v2) / 2
    got = shortcut.self_consistency_target(v_jax, obs, a_t, t, d, h)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_self_consistency_target_has_no_gradient(rand):
    obs, a_t = jnp.asarray(rand["obs"]), jnp.asarray(rand["a1"])

    def target_sum(W, a):
        def v(o, x, t, d):
            n = x.shape[0]
            cols = [jnp.full((n, 1), t) if jnp.ndim(t) == 0 else t, jnp.full((n, 1), d) if jnp.ndim(d) == 0 else d]
            return jnp.concatenate([o, x, *cols], axis=1) @ W

        return shortcut.self_consistency_target(v, obs, a, 0.25, 1.0, 0.5).sum()

    gW, ga = jax.grad(target_sum, argnums=(0, 1))(jnp.asarray(rand["W"]), a_t)
    assert not np.any(np.asarray(gW)) and not np.any(np.asarray(ga))


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_sampler_makes_exactly_K_calls_and_matches_euler(rand, K):
    W, b = rand["W"], rand["b"]
    v_np = linear_velocity(W, b)
    calls: list[tuple[float, float]] = []

    def v_counting(o, a, t, d):
        calls.append((float(t), float(d)))
        return jnp.asarray(v_np(o, a, t, d), jnp.float32)

    noise = rand["a0"]
    got = shortcut.sample_euler(v_counting, rand["obs"], noise, K)
    assert len(calls) == K
    assert calls == [(i / K, math.log2(K)) for i in range(K)]
    a = noise.astype(np.float64)
    for i in range(K):
        a = a + v_np(rand["obs"], a, i / K, math.log2(K)) / K
    np.testing.assert_allclose(got, np.clip(a, -1, 1), rtol=1e-5, atol=1e-5)


def test_sampler_clips_and_rejects_bad_K(rand):
    out = shortcut.sample_euler(lambda o, a, t, d: 100.0 * jnp.sign(a), rand["obs"], rand["a0"], 2)
    assert np.all(np.abs(np.asarray(out)) == 1.0)
    with pytest.raises(SorlError, match="power of two"):
        shortcut.sample_euler(lambda o, a, t, d: a, rand["obs"], rand["a0"], 3)


def test_sampler_gradient_flows_through_every_step():
    # v = theta * a gives a_K = (1 + theta/K)^K a0, so d a_K / d theta = (1 + theta/K)^(K-1) a0.
    a0 = jnp.array([[0.1, -0.2]])
    theta, K = 0.3, 4
    grad = jax.grad(lambda th: shortcut.sample_euler(lambda o, a, t, d: th * a, None, a0, K).sum())(theta)
    expected = (1 + theta / K) ** (K - 1) * float(a0.sum())
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_fm_and_sc_batches_use_the_grids():
    a1 = jnp.zeros((B, ACT))
    fm = shortcut.flow_matching_batch(jax.random.PRNGKey(0), a1, 8, EPS)
    t = np.asarray(fm.t)[:, 0]
    np.testing.assert_allclose(t * 8, np.round(t * 8), atol=1e-6)
    assert t.min() >= 0 and t.max() <= 7 / 8
    np.testing.assert_allclose(fm.d, 3.0)

    levels = shortcut.self_consistency_levels(B, 8)
    # log2(8) = 3 levels, 10 // 3 = 3 rows each, remainder to d = 0 (h = 1).
    np.testing.assert_array_equal(levels, [2, 2, 2, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(shortcut.self_consistency_levels(5, 1), np.zeros(5))

    big = jnp.zeros((600, ACT))
    sc = shortcut.self_consistency_batch(jax.random.PRNGKey(1), big, 8, EPS)
    d, t, h = (np.asarray(x)[:, 0] for x in (sc.d, sc.t, sc.h))
    np.testing.assert_allclose(h, 1.0 / 2**d)
    np.testing.assert_allclose(t / h, np.round(t / h), atol=1e-5)
    assert np.all(t < 1) and np.all(t >= 0)
    for level in (0, 1, 2):  # every grid point of every level is drawn
        assert len(np.unique(t[d == level])) == 2**level


def _linear_agent(rand) -> tuple[SORLAgent, dict]:
    config = SORLConfig(actor_num_layers=0, value_layer_size=8, value_num_layers=1, denoise_timesteps=8)
    agent = SORLAgent.create(jax.random.PRNGKey(0), rand["obs"], rand["a1"], config)
    dense = {"kernel": jnp.asarray(rand["W"]), "bias": jnp.asarray(rand["b"])}
    dense_t = {"kernel": jnp.asarray(rand["W_target"]), "bias": jnp.asarray(rand["b_target"])}
    # Known weights replace the initialisation, with the same structure.
    assert jax.tree.structure(agent.params["actor"]) == jax.tree.structure({"MLP_0": {"Dense_0": dense}})
    agent = agent.replace(
        params={**agent.params, "actor": {"MLP_0": {"Dense_0": dense}}},
        target_params={**agent.target_params, "actor": {"MLP_0": {"Dense_0": dense_t}}},
    )
    batch = {"observations": jnp.asarray(rand["obs"]), "actions": jnp.asarray(rand["a1"])}
    return agent, batch


def test_agent_flow_matching_loss_by_hand(rand):
    agent, batch = _linear_agent(rand)
    rng = jax.random.PRNGKey(3)
    fm = shortcut.flow_matching_batch(rng, batch["actions"], 8, EPS)
    v = linear_velocity(rand["W"], rand["b"])
    a0 = np.asarray(fm.a0, np.float64)
    t = np.asarray(fm.t, np.float64)
    a_t = (1 - (1 - EPS) * t) * a0 + t * rand["a1"]
    expected = np.mean((v(rand["obs"], a_t, t, 3.0) - (rand["a1"] - (1 - EPS) * a0)) ** 2)
    got = agent.flow_matching_loss(batch, agent.params["actor"], rng)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_agent_self_consistency_loss_by_hand(rand):
    agent, batch = _linear_agent(rand)
    rng = jax.random.PRNGKey(4)
    sc = shortcut.self_consistency_batch(rng, batch["actions"], 8, EPS)
    v = linear_velocity(rand["W"], rand["b"])
    v_target = linear_velocity(rand["W_target"], rand["b_target"])
    a_t, t, d, h = (np.asarray(x, np.float64) for x in (sc.a_t, sc.t, sc.d, sc.h))
    v1 = v_target(rand["obs"], a_t, t, d + 1)
    v2 = v_target(rand["obs"], a_t + h / 2 * v1, t + h / 2, d + 1)
    expected = np.mean((v(rand["obs"], a_t, t, d) - (v1 + v2) / 2) ** 2)
    got = agent.self_consistency_loss(batch, agent.params["actor"], rng)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # M = 1 has no coarser level to distil.
    flat = dataclasses.replace(agent.config, denoise_timesteps=1, max_k_backprop=1)
    assert float(agent.replace(config=flat).self_consistency_loss(batch, agent.params["actor"], rng)) == 0.0
