"""FBRAC (agents/fbrac.py): each loss on a hand-computed case, its stop-gradients, the Q term's gradient through every
Euler step, a one-step problem it learns, and `sorl train` / `sorl eval` / `sorl table` end to end."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_baselines_gradients import BATCH_DATA, RNG, assert_moves_only, grads_of, make_agent
from test_baselines_learning import in_modes, trained
from test_e2e import data_dir  # noqa: F401 - the tiny generated cube-single dataset
from test_sorl_learning import make_dataset, reward

from agents import AGENTS
from agents.fbrac import FBRACAgent, FBRACConfig
from cli import main as cli
from sorl.errors import SorlError

OBS, ACT, B = 3, 2, 5
# Linear networks (no hidden layer), so every loss is a few lines of numpy.
LINEAR = dict(actor_num_layers=0, value_num_layers=0, batch_size=B)


def linear_agent(**settings) -> FBRACAgent:
    config = FBRACConfig(**{**LINEAR, **settings})
    agent = FBRACAgent.create(3, jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # A target critic different from the online one, so the test can tell which one a loss reads.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.1, agent.target_params))


def small_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (B, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (B, ACT)), -0.9, 0.9),
        "rewards": jax.random.normal(k[2], (B,)),
        "masks": jnp.array([1.0, 1.0, 0.0, 1.0, 1.0]),
        "next_observations": jax.random.normal(k[3], (B, OBS)),
    }


def np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def np_velocity(flow, x, a, t):
    dense = flow["MLP_0"]["Dense_0"]
    inputs = np.concatenate([x, a, np.full((len(x), 1), t)], axis=-1)
    return inputs @ dense["kernel"] + dense["bias"]


def np_q(critic, x, a):
    """`[members, B]`: each member a linear head on `[x, a]`."""
    dense = critic["VmapMLP_0"]["Dense_0"]
    inputs = np.concatenate([x, a], axis=-1)
    return np.einsum("bi,mio->mb", inputs, dense["kernel"]) + dense["bias"][:, None, 0]


def np_ode(flow, x, z, steps):
    a = z
    for i in range(steps):
        a = a + np_velocity(flow, x, a, i / steps) / steps
    return np.clip(a, -1, 1)


# ------------------------------------------------------------------------------------------- hand-computed


def test_bc_flow_loss_by_hand():
    agent, batch = linear_agent(), small_batch()
    t_rng, noise_rng = jax.random.split(RNG)
    t = np.asarray(jax.random.uniform(t_rng, (B, 1)), np.float64)
    a0 = np.asarray(jax.random.normal(noise_rng, (B, ACT)), np.float64)
    x, a1 = np.asarray(batch["observations"], np.float64), np.asarray(batch["actions"], np.float64)
    flow = np_tree(agent.params["actor_flow"])
    a_t = (1 - t) * a0 + t * a1
    dense = flow["MLP_0"]["Dense_0"]
    pred = np.concatenate([x, a_t, t], axis=-1) @ dense["kernel"] + dense["bias"]
    expected = np.mean((pred - (a1 - a0)) ** 2)
    got = agent.bc_flow_loss(batch, agent.params, RNG)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("normalize_q_loss", [False, True])
def test_q_loss_by_hand_integrates_flow_steps_euler_steps(normalize_q_loss):
    agent, batch = linear_agent(flow_steps=3, normalize_q_loss=normalize_q_loss), small_batch()
    z = np.asarray(jax.random.normal(RNG, (B, ACT)), np.float64)
    x = np.asarray(batch["observations"], np.float64)
    actions = np_ode(np_tree(agent.params["actor_flow"]), x, z, 3)
    q = np_q(np_tree(agent.params["critic"]), x, actions).mean(axis=0)  # the online critic, members averaged
    expected = -q.mean() / (np.abs(q).mean() if normalize_q_loss else 1.0)
    loss, q_got, actions_got = agent.q_loss(batch, agent.params, jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(np.asarray(actions_got), actions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(q_got), q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_actor_loss_is_alpha_bc_plus_q_term():
    agent, batch = linear_agent(alpha=2.5, flow_steps=2), small_batch()
    flow_rng, noise_rng = jax.random.split(RNG)
    bc = agent.bc_flow_loss(batch, agent.params, flow_rng)
    q_loss, _, _ = agent.q_loss(batch, agent.params, jax.random.normal(noise_rng, (B, ACT)))
    loss, info = agent.actor_loss(batch, agent.params, RNG)
    np.testing.assert_allclose(float(loss), 2.5 * float(bc) + float(q_loss), rtol=1e-5)
    assert float(info["bc_flow_loss"]) == pytest.approx(float(bc)) and float(info["q_loss"]) == pytest.approx(
        float(q_loss)
    )


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_critic_loss_by_hand(q_agg):
    agent, batch = linear_agent(flow_steps=2, q_agg=q_agg, discount=0.9), small_batch()
    z = np.asarray(jax.random.normal(RNG, (B, ACT)), np.float64)
    x, x2 = (np.asarray(batch[k], np.float64) for k in ("observations", "next_observations"))
    next_actions = np_ode(np_tree(agent.params["actor_flow"]), x2, z, 2)
    next_qs = np_q(np_tree(agent.target_params["critic"]), x2, next_actions)  # the target critic
    next_q = next_qs.min(axis=0) if q_agg == "min" else next_qs.mean(axis=0)
    y = np.asarray(batch["rewards"]) + 0.9 * np.asarray(batch["masks"]) * next_q
    q = np_q(np_tree(agent.params["critic"]), x, np.asarray(batch["actions"], np.float64))
    expected = np.mean((q - y[None]) ** 2)
    loss, _ = agent.critic_loss(batch, agent.params, RNG)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ gradients


def test_critic_loss_moves_only_the_critic():
    agent = make_agent("fbrac", flow_steps=3)  # next actions come from the flow, the target is a constant for it
    assert_moves_only(grads_of(agent, lambda a, p: a.critic_loss(BATCH_DATA, p, RNG)[0]), {"critic"})


@pytest.mark.parametrize("normalize_q_loss", [False, True])
def test_actor_loss_and_q_term_move_the_flow_never_the_critic(normalize_q_loss):
    agent = make_agent("fbrac", flow_steps=3, normalize_q_loss=normalize_q_loss)
    assert_moves_only(grads_of(agent, lambda a, p: a.actor_loss(BATCH_DATA, p, RNG)[0]), {"actor_flow"})
    noise = jax.random.normal(RNG, BATCH_DATA["actions"].shape)
    assert_moves_only(grads_of(agent, lambda a, p: a.q_loss(BATCH_DATA, p, noise)[0]), {"actor_flow"})


def test_q_term_gradient_flows_through_every_euler_step():
    # Central differences of the numpy loss (float64) match JAX's gradient for every flow parameter: a
    # stop_gradient on any step would drop that step's share of the gradient.
    steps = 4
    agent, batch = linear_agent(flow_steps=steps), small_batch(1)
    agent = agent.replace(
        params={**agent.params, "actor_flow": jax.tree.map(lambda p: 0.5 * p, agent.params["actor_flow"])}
    )
    z = np.asarray(jax.random.normal(RNG, (B, ACT)), np.float64) * 0.3  # stays inside [-1, 1]: no clipped action
    x = np.asarray(batch["observations"], np.float64)
    critic = np_tree(agent.params["critic"])

    def np_loss(flow):
        return -np_q(critic, x, np_ode(flow, x, z, steps)).mean()

    flow = np_tree(agent.params["actor_flow"])
    assert np.all(np.abs(np_ode(flow, x, z, steps)) < 1)
    grad = jax.grad(lambda p: agent.q_loss(batch, {**agent.params, "actor_flow": p}, jnp.asarray(z, jnp.float32))[0])(
        agent.params["actor_flow"]
    )
    kernel = flow["MLP_0"]["Dense_0"]["kernel"]
    numeric = np.zeros_like(kernel)
    for idx in np.ndindex(kernel.shape):
        for sign in (1, -1):
            k = kernel.copy()
            k[idx] += sign * 1e-5
            numeric[idx] += sign * np_loss(
                {"MLP_0": {"Dense_0": {"kernel": k, "bias": flow["MLP_0"]["Dense_0"]["bias"]}}}
            )
    numeric /= 2e-5
    got = np.asarray(grad["MLP_0"]["Dense_0"]["kernel"])
    # The row of t (the last input) gets gradient only from steps after the first (t = 0 there).
    assert np.abs(numeric[-1]).max() > 1e-4
    np.testing.assert_allclose(got, numeric, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------------ (K, N)


def test_sample_actions_K_N():
    agent = make_agent("fbrac", flow_steps=3)
    obs = BATCH_DATA["observations"]
    # The flow field is trained at every t and has no step-size input: any K >= 1 integrates it, no maximum.
    assert agent.max_K is None and not FBRACAgent.K_POWERS_OF_TWO
    for K in (1, 3, 10):
        for N in (1, 3):
            a = agent.sample_actions(obs, RNG, K=K, N=N)
            assert a.shape == (obs.shape[0], ACT) and bool(jnp.all(jnp.abs(a) <= 1))
    # K changes the action (Euler steps of one ODE); N = 1 is the verifier's first-key sample.
    assert not np.allclose(agent.sample_actions(obs, RNG, K=1), agent.sample_actions(obs, RNG, K=8))
    np.testing.assert_allclose(
        agent.sample_actions(obs, RNG, K=10),
        agent.flow_actions(agent.params["actor_flow"], obs, agent._noise(RNG, obs), 10),
    )
    with pytest.raises(SorlError, match="positive integer; fbrac takes any K >= 1"):
        agent.sample_actions(obs, RNG, K=0)
    with pytest.raises(SorlError, match="N=0"):
        agent.sample_actions(obs, RNG, K=1, N=0)
    assert AGENTS["fbrac"] is FBRACAgent and FBRACAgent.GRID_NOTES == {}


def test_best_of_n_keeps_the_critics_choice():
    agent = make_agent("fbrac", flow_steps=2)
    obs = BATCH_DATA["observations"]
    keys = jax.random.split(RNG, 4)
    candidates = jnp.stack([agent.sample_actions(obs, k, K=2) for k in keys])
    scores = jnp.stack([agent.q_values(agent.params["critic"], obs, c).mean(axis=0) for c in candidates])
    expected = candidates[jnp.argmax(scores, axis=0), jnp.arange(obs.shape[0])]
    np.testing.assert_allclose(agent.sample_actions(obs, RNG, K=2, N=4), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------------- learning


def test_learns_the_good_mode_of_a_one_step_problem():
    # Data 50/50 near a good mode (reward 1) and a bad one (reward 0); the flow policy, pushed by the Q term
    # through its 4-step ODE, acts on the good side.
    dataset = make_dataset()
    observations = jax.random.normal(jax.random.PRNGKey(123), (512, 2))
    agent = trained("fbrac", dataset, 600, alpha=1.0, flow_steps=4, value_layer_size=64, value_num_layers=2)
    for N in (1, 4):
        actions = np.asarray(agent.sample_actions(observations, jax.random.PRNGKey(2), K=4, N=N))
        good, bad = in_modes(actions)
        assert reward(actions).mean() > 0.9 and bad < 0.05, (N, good, bad)


# ---------------------------------------------------------------------------------------------- end to end


def test_sorl_train_eval_and_table(data_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "runs" / "fbrac"
    argv = ["train", "--task", "cube-single-play-task1", "--agent", "fbrac", "--steps", "20", "--seed", "2"]
    argv += ["--run-dir", str(run), "--data-dir", str(data_dir), "--log-interval", "10", "--eval-interval", "20"]
    argv += ["--eval-episodes", "2", "--eval-K", "1,3", "--eval-N", "1,2", "--eval-workers", "1"]
    argv += ["--eval-max-episode-steps", "8", "--progress", "False", "--agent.actor_layer_size=16"]
    argv += ["--agent.actor_num_layers=2", "--agent.batch_size=16", "--agent.value_layer_size=16"]
    argv += ["--agent.value_num_layers=2", "--agent.flow_steps=3"]
    cli.main(argv)
    assert "success %" in capsys.readouterr().out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["agent"] == "fbrac" and cfg["agent_config"]["flow_steps"] == 3
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and [(r["K"], r["N"]) for r in res["final"]] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert all(0.0 <= r["success"] <= 1.0 for r in res["final"])

    # `sorl eval RUN --eval-K .. --eval-N ..` at the reference's K = 10, which the run was not evaluated at.
    cli.main(["eval", str(run), "--eval-K", "10", "--eval-N", "1,2", "--episodes", "1", "--workers", "1"])
    scaling = json.loads((run / "scaling.json").read_text())
    assert "N=2" in capsys.readouterr().out and scaling["step"] == 20
    assert [(c["K"], c["N"]) for c in scaling["grid"]] == [(10, 1), (10, 2)]

    cli.main(["table", str(tmp_path / "runs"), "--K", "3", "--N", "1"])
    out = capsys.readouterr().out
    assert "fbrac" in out


def test_config_defaults_match_the_reference():
    c = FBRACConfig()
    assert (c.alpha, c.flow_steps, c.q_agg, c.normalize_q_loss, c.discount, c.tau) == (
        10.0,
        10,
        "mean",
        False,
        0.99,
        0.005,
    )
    with pytest.raises(SorlError, match="flow_steps"):
        dataclasses.replace(c, flow_steps=0).validate()
