"""FAWAC (agents/fawac.py): each loss against its equation computed here with numpy, the stop-gradients, the (K, N)
sampler and verifier, learning a one-step problem, and `sorl train` / `sorl eval` / `sorl table` end to end."""

from __future__ import annotations

import csv
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_baselines_learning import in_modes, trained
from test_e2e import TASK, data_dir  # noqa: F401 - the tiny generated dataset, shared with SORL's end-to-end test
from test_sorl_learning import make_dataset, reward

from agents import AGENTS, get_agent
from agents.fawac import ADVANTAGE_WEIGHT_MAX, FAWACAgent, FAWACConfig
from cli import main as cli
from envs.registry import agent_env_settings
from sorl.errors import SorlError

OBS, ACT, BATCH = 3, 2, 8
TINY = dict(actor_layer_size=8, actor_num_layers=1, value_layer_size=8, value_num_layers=1, batch_size=BATCH)


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": jnp.array([1.0, 0.0] * (BATCH // 2)),  # some terminal, some not
        "next_observations": jax.random.normal(k[3], (BATCH, OBS)),
    }


def make_agent(**settings) -> FAWACAgent:
    config = dataclasses.replace(FAWACConfig(), **{**TINY, **settings})
    agent = FAWACAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # A target critic different from the online one, so a loss reading the wrong one shows.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params))


BATCH_DATA = make_batch()
RNG = jax.random.PRNGKey(7)
np_ = lambda x: np.asarray(x, np.float64)  # noqa: E731


def euler_by_hand(agent: FAWACAgent, actor_params, observations, noise, K: int) -> np.ndarray:
    """K Euler steps of the policy's velocity from t = 0 to 1, then the clip, written out here."""
    v = agent.flow_velocity(actor_params)
    a = np_(noise)
    for i in range(K):
        a = a + (1.0 / K) * np_(v(observations, jnp.asarray(a, jnp.float32), i / K))
    return np.clip(a, -1.0, 1.0)


# ------------------------------------------------------------------------------------------ losses by hand


def test_registered_with_its_config():
    assert AGENTS["fawac"] is FAWACAgent and get_agent("fawac").Config is FAWACConfig
    c = FAWACConfig()
    assert (c.alpha, c.flow_steps, c.q_agg, c.num_critics, c.lr, c.batch_size) == (10.0, 10, "mean", 2, 3e-4, 256)
    assert FAWACAgent.GRID_NOTES == {}  # both K and N change its action


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_critic_loss_by_hand(q_agg):
    agent = make_agent(q_agg=q_agg, flow_steps=3)
    loss, info = agent.critic_loss(BATCH_DATA, agent.params, RNG)
    b = BATCH_DATA
    noise = jax.random.normal(RNG, (BATCH, ACT))  # the loss's one draw of the next actions' noise
    a_next = euler_by_hand(agent, agent.params["actor"], b["next_observations"], noise, 3)
    next_qs = np_(agent.q_values(agent.target_params["critic"], b["next_observations"], jnp.asarray(a_next)))
    next_q = next_qs.min(0) if q_agg == "min" else next_qs.mean(0)
    y = np_(b["rewards"]) + 0.99 * np_(b["masks"]) * next_q
    qs = np_(agent.q_values(agent.params["critic"], b["observations"], b["actions"]))
    assert qs.shape == (2, BATCH)
    np.testing.assert_allclose(float(loss), np.mean((qs - y[None]) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(info["q_mean"]), qs.mean(), rtol=1e-4)


def test_value_loss_by_hand():
    agent = make_agent()
    loss, _ = agent.value_loss(BATCH_DATA, agent.params)
    b = BATCH_DATA
    target_qs = np_(agent.q_values(agent.target_params["critic"], b["observations"], b["actions"]))  # [2, B]
    v = np_(agent.v(agent.params["value"], b["observations"]))  # [B]
    np.testing.assert_allclose(float(loss), np.mean((target_qs - v[None]) ** 2), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 300.0])  # 0: plain flow BC; 300: weights clipped at 100
def test_actor_loss_by_hand(alpha):
    agent = make_agent(alpha=alpha)
    # Value far below Q for some states, so that exp(alpha * A) passes the clip at large alpha.
    value = agent.params["value"]
    loss, info = agent.actor_loss(BATCH_DATA, agent.params, RNG)
    b = BATCH_DATA
    t_rng, noise_rng = jax.random.split(RNG)
    t = np_(jax.random.uniform(t_rng, (BATCH, 1)))
    a0, a1 = np_(jax.random.normal(noise_rng, (BATCH, ACT))), np_(b["actions"])
    a_t = (1 - t) * a0 + t * a1
    pred = np_(agent.flow_velocity(agent.params["actor"])(b["observations"], jnp.asarray(a_t, jnp.float32),
                                                           jnp.asarray(t, jnp.float32)))  # fmt: skip
    per_sample = np.mean((pred - (a1 - a0)) ** 2, axis=-1)
    q = np_(agent.q_values(agent.params["critic"], b["observations"], b["actions"])).mean(0)  # online critic, mean
    adv = q - np_(agent.v(value, b["observations"]))
    w = np.minimum(np.exp(alpha * adv), ADVANTAGE_WEIGHT_MAX)
    np.testing.assert_allclose(float(loss), np.mean(w * per_sample), rtol=1e-4)
    np.testing.assert_allclose(float(info["adv"]), adv.mean(), rtol=1e-4, atol=1e-6)
    if alpha == 0.0:
        np.testing.assert_allclose(w, 1.0)
    if alpha == 300.0:  # the clip is reached by some samples and not others
        assert np.any(w == ADVANTAGE_WEIGHT_MAX) and np.any(w < ADVANTAGE_WEIGHT_MAX), adv
        np.testing.assert_allclose(float(info["weight_max"]), ADVANTAGE_WEIGHT_MAX)


# ---------------------------------------------------------------------------------------------- gradients


def grads_of(agent, loss):
    """d loss / d (params, target_params), with the agent rebuilt from both (a leak through `self` shows)."""

    def f(params, target_params):
        return loss(agent.replace(params=params, target_params=target_params), params)

    return jax.grad(f, argnums=(0, 1))(agent.params, agent.target_params)


def moved(tree) -> bool:
    return any(np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "name, loss",
    [
        ("critic", lambda a, p: a.critic_loss(BATCH_DATA, p, RNG)[0]),  # a' from the policy: no gradient to it
        ("value", lambda a, p: a.value_loss(BATCH_DATA, p)[0]),  # target critic's Q: a constant
        ("actor", lambda a, p: a.actor_loss(BATCH_DATA, p, RNG)[0]),  # weights: constants for critic and value
    ],
)
def test_each_loss_moves_only_its_network(name, loss):
    g, g_target = grads_of(make_agent(alpha=1.0), loss)
    assert {n for n, tree in g.items() if moved(tree)} == {name}
    assert not moved(g_target), "a target network received a gradient"


def test_update_moves_every_network_and_the_target_critic_by_ema():
    agent = make_agent()
    new, info = jax.jit(FAWACAgent.update)(agent, BATCH_DATA)
    assert int(new.step) == 1 and all(np.isfinite(float(v)) for v in info.values())
    for name in ("critic", "value", "actor"):
        assert moved(jax.tree.map(lambda x, y: x - y, new.params[name], agent.params[name])), name
    expected = jax.tree.map(lambda p, t: 0.005 * p + 0.995 * t, agent.params["critic"], agent.target_params["critic"])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), new.target_params["critic"],
                 expected)  # fmt: skip
    assert {"critic/critic_loss", "value/value_loss", "actor/actor_loss", "actor/adv"} <= set(info)


# ----------------------------------------------------------------------------------------- sampling (K, N)

OBSERVATIONS = jax.random.normal(jax.random.PRNGKey(3), (16, OBS))


@pytest.mark.parametrize("K", [1, 3, 10])  # any K >= 1; 10 is the reference's flow_steps
def test_K_is_the_number_of_euler_steps(K):
    agent = make_agent()
    rng = jax.random.PRNGKey(5)
    noise = jax.random.normal(rng, (16, ACT))
    expected = euler_by_hand(agent, agent.params["actor"], OBSERVATIONS, noise, K)
    np.testing.assert_allclose(agent.sample_actions(OBSERVATIONS, rng, K=K, N=1), expected, rtol=1e-4, atol=1e-5)


def test_K_must_be_a_positive_integer_and_any_is_taken():
    agent = make_agent()
    assert FAWACAgent.takes_K(10) and FAWACAgent.takes_K(3) and not FAWACAgent.takes_K(0)
    with pytest.raises(SorlError, match="fawac takes any K >= 1"):
        agent.sample_actions(OBSERVATIONS, jax.random.PRNGKey(0), K=0)


def test_best_of_n_is_the_critic_argmax_of_n_noises():
    agent = make_agent()
    rng = jax.random.PRNGKey(4)
    candidates = np.stack([agent.sample_actions(OBSERVATIONS, k, K=2, N=1) for k in jax.random.split(rng, 5)])
    scores = np.stack([np_(agent.q_values(agent.params["critic"], OBSERVATIONS, c)).mean(0) for c in candidates])
    expected = candidates[scores.argmax(0), np.arange(16)]
    np.testing.assert_allclose(agent.sample_actions(OBSERVATIONS, rng, K=2, N=5), expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- learning


def test_prefers_the_good_mode_of_a_one_step_problem():
    # Half the dataset's actions near a good mode (reward 1), half near a bad one (reward 0), every step terminal:
    # flow BC would reproduce the 50/50 mixture; the advantage weights (~e^{+-alpha/2}) keep the good mode only.
    dataset = make_dataset()
    agent = trained("fawac", dataset, 600, alpha=10.0, flow_steps=4, value_layer_size=64, value_num_layers=2)
    observations = jax.random.normal(jax.random.PRNGKey(123), (512, 2))
    for N in (1, 4):
        actions = agent.sample_actions(observations, jax.random.PRNGKey(2), K=8, N=N)
        good, bad = in_modes(actions)
        # On the good side, in the good mode itself (not between the modes), never in the bad one.
        assert float(reward(np.asarray(actions)).mean()) > 0.9 and good > 0.7 and bad < 0.05, (N, good, bad)


# -------------------------------------------------------------------------------------- settings and e2e


def test_per_environment_settings_resolve_for_tasks():
    assert agent_env_settings(FAWACAgent, "antmaze-giant-navigate-task1")["discount"] == 0.995
    assert agent_env_settings(FAWACAgent, "cube-single-play-task1") == {"discount": 0.99}
    assert all(not tuned.verified and tuned.source for tuned in FAWACAgent.ENV_SETTINGS.values())


def test_sorl_train_eval_and_table_end_to_end(data_dir, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "runs" / "fawac"
    argv = ["train", "--task", "cube-single-play-task1", "--agent", "fawac", "--steps", "20", "--seed", "2"]
    argv += ["--run-dir", str(run_dir), "--data-dir", str(data_dir), "--log-interval", "10", "--eval-interval", "20"]
    argv += ["--eval-episodes", "2", "--eval-K", "1,3", "--eval-N", "1,2", "--eval-workers", "1"]
    argv += ["--eval-max-episode-steps", "8", "--progress", "False"]
    argv += ["--agent.actor_layer_size=16", "--agent.actor_num_layers=2", "--agent.batch_size=16"]
    argv += ["--agent.value_layer_size=16", "--agent.value_num_layers=2", "--agent.flow_steps=2"]
    cli.main(argv)
    out = capsys.readouterr().out
    assert "success %" in out and "note: fawac ignores" not in out  # K and N both change its action

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["task"] == TASK and cfg["agent"] == "fawac" and cfg["agent_config"]["flow_steps"] == 2
    assert cfg["env_settings"]["discount"] == 0.99
    with (run_dir / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(np.isfinite(float(v)) for r in rows for v in r.values() if v != "")
    assert {"actor/actor_loss", "value/value_loss", "critic/critic_loss"} <= set(rows[0])
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["agent"] == "fawac"
    assert [(r["K"], r["N"]) for r in res["final"]] == [(1, 1), (1, 2), (3, 1), (3, 2)]

    cli.main(["eval", str(run_dir), "--eval-K", "10", "--eval-N", "1,2", "--eval-episodes", "1",
              "--eval-workers", "1", "--seed", "4"])  # fmt: skip
    scaling = json.loads((run_dir / "scaling.json").read_text())
    grid = scaling["grid"] if isinstance(scaling, dict) and "grid" in scaling else scaling
    assert sorted((g["K"], g["N"]) for g in grid) == [(10, 1), (10, 2)]

    capsys.readouterr()
    cli.main(["table", str(tmp_path / "runs"), "--format", "csv"])
    table = capsys.readouterr().out
    assert "fawac" in table and "cube-single" in table
