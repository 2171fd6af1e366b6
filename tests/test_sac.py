"""SAC (agents/sac.py) against the FQL reference code's `agents/sac.py`, and its place as an online-only agent.

Each loss is recomputed here in numpy from the networks' outputs and the reference's equations (the tanh-Gaussian
log-density by the naive change of variables, the min-of-target TD target with and without the entropy backup, the
actor's mean-of-critics objective, the temperature's `alpha (H - H_target)`); each loss reaches only its own part of
the agent; a one-step problem is learnt; `--steps` > 0 is refused in one line before anything is written; and a tiny
pure-online run (the RLPD command) goes through `sorl train` and `sorl eval`.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from refusals import assert_refused
from test_train_loop import TASK
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from agents import AGENTS
from agents.sac import SACAgent, SACConfig, squashed_sample, tanh_log_det
from cli import main as cli
from envs.registry import agent_env_settings, settings_source
from runner import train as train_lib
from runner.evaluation import grid_note
from sorl.errors import SorlError

OBS, ACT, BATCH = 3, 2, 8
TINY = SACConfig(actor_layer_size=8, actor_num_layers=2, value_layer_size=8, value_num_layers=2, batch_size=BATCH)
KEY = jax.random.PRNGKey(7)


@pytest.fixture
def stand_in(request):
    return request.getfixturevalue("_stand_in")


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": (jax.random.uniform(k[3], (BATCH,)) > 0.3).astype(jnp.float32),
        "next_observations": jax.random.normal(k[4], (BATCH, OBS)),
    }


def make_agent(config: SACConfig = TINY) -> SACAgent:
    agent = SACAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # A target critic unlike the online one and alpha unlike 1, so that reading the wrong one shows.
    return agent.replace(
        target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params), log_alpha=jnp.float32(math.log(0.5))
    )


def np_log_prob(mean, log_std, x):
    """log N(x; mean, std) - sum log(1 - tanh(x)^2), summed over actions: the change of variables written plainly."""
    mean, log_std, x = (np.asarray(v, np.float64) for v in (mean, log_std, x))
    gauss = -0.5 * ((x - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    return np.sum(gauss - np.log(1 - np.tanh(x) ** 2), axis=-1)


def draw(agent, actor_params, observations, rng):
    """The pre-tanh draw and its log-density, from the policy's outputs and the key's normal noise."""
    mean, log_std = agent.policy(actor_params, observations)
    x = np.asarray(mean) + np.exp(np.asarray(log_std)) * np.asarray(jax.random.normal(rng, mean.shape))
    return x, np_log_prob(mean, log_std, x)


# --------------------------------------------------------------------------------------------- the policy


def test_squashed_sample_is_tanh_of_the_gaussian_with_its_log_density():
    mean = jnp.array([[0.3, -1.2], [2.0, 0.0]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -2.0]])
    actions, log_prob = squashed_sample(mean, log_std, KEY)
    x = np.asarray(mean) + np.exp(np.asarray(log_std)) * np.asarray(jax.random.normal(KEY, mean.shape))
    np.testing.assert_allclose(actions, np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(log_prob, np_log_prob(mean, log_std, x), rtol=1e-5)
    # at x = 0 the tanh changes no volume; far out the stable form stays finite where the naive one is -inf
    assert float(tanh_log_det(jnp.zeros((1, 3)))[0]) == pytest.approx(0.0, abs=1e-7)
    assert np.isfinite(float(tanh_log_det(jnp.array([[30.0]]))[0]))
    assert float(tanh_log_det(jnp.array([[30.0]]))[0]) == pytest.approx(2 * (math.log(2) - 30), rel=1e-6)


def test_acting_evaluation_is_tanh_of_the_mean_exploration_a_draw():
    agent, obs = make_agent(), make_batch()["observations"]
    mean, log_std = agent.policy(agent.params["actor"], obs)
    np.testing.assert_allclose(agent.sample_actions(obs, KEY), np.tanh(np.asarray(mean)), rtol=1e-6)
    explored = agent.exploration_actions(obs, KEY)
    np.testing.assert_allclose(explored, squashed_sample(mean, log_std, KEY)[0], rtol=1e-6)
    assert not np.allclose(explored, agent.sample_actions(obs, KEY)) and np.all(np.abs(explored) <= 1)
    # K does not change the action (no sampling steps) and is said once per grid; N ranks candidates by the critic
    np.testing.assert_array_equal(agent.sample_actions(obs, KEY, K=4), agent.sample_actions(obs, KEY))
    assert "sac ignores K (its tanh-Gaussian policy has no sampling steps)" in grid_note(SACAgent, "sac", [1, 4], [1])
    best = np.asarray(agent.sample_actions(obs, KEY, N=4))
    draws = np.tanh(np.asarray(mean)[None] + np.exp(np.asarray(log_std))[None] * np.asarray(
        jax.vmap(lambda k: jax.random.normal(k, mean.shape))(jax.random.split(KEY, 3))))  # fmt: skip
    candidates = np.concatenate([np.tanh(np.asarray(mean))[None], draws])
    scores = np.stack([np.asarray(agent.q_values(agent.params["critic"], obs, c)).min(axis=0) for c in candidates])
    np.testing.assert_allclose(best, candidates[scores.argmax(axis=0), np.arange(BATCH)], rtol=1e-5)


# --------------------------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("backup_entropy", [False, True])
def test_critic_loss_by_hand(backup_entropy):
    agent = make_agent(dataclasses.replace(TINY, backup_entropy=backup_entropy))
    batch = make_batch()
    x, log_prob = draw(agent, agent.params["actor"], batch["next_observations"], KEY)
    next_qs = np.asarray(agent.q_values(agent.target_params["critic"], batch["next_observations"], np.tanh(x)))
    next_q = next_qs.min(axis=0) - (0.5 * log_prob if backup_entropy else 0.0)  # alpha = 0.5
    y = np.asarray(batch["rewards"]) + 0.99 * np.asarray(batch["masks"]) * next_q
    qs = np.asarray(agent.q_values(agent.params["critic"], batch["observations"], batch["actions"]))
    loss, info = agent.critic_loss(batch, agent.params, KEY)
    assert float(loss) == pytest.approx(np.mean((qs - y[None]) ** 2), rel=1e-5)  # mean over members and batch
    assert float(info["q_mean"]) == pytest.approx(qs.mean(), rel=1e-5)


def test_actor_loss_by_hand():
    agent, batch = make_agent(), make_batch()
    x, log_prob = draw(agent, agent.params["actor"], batch["observations"], KEY)
    qs = np.asarray(agent.q_values(agent.params["critic"], batch["observations"], np.tanh(x)))
    loss, info = agent.actor_loss(batch, agent.params, KEY)
    assert float(loss) == pytest.approx(np.mean(0.5 * log_prob - qs.mean(axis=0)), rel=1e-5)  # the critics' mean
    assert float(info["entropy"]) == pytest.approx(-log_prob.mean(), rel=1e-5)


@pytest.mark.parametrize("target_entropy, expected_target", [(None, -0.5 * ACT), (1.5, 1.5)])
def test_temperature_loss_by_hand(target_entropy, expected_target):
    agent = make_agent(dataclasses.replace(TINY, target_entropy=target_entropy))
    batch = make_batch()
    _, log_prob = draw(agent, agent.params["actor"], batch["observations"], KEY)
    log_alpha = jnp.float32(math.log(2.0))
    loss, info = agent.temperature_loss(batch, agent.params, log_alpha, KEY)
    assert agent.target_entropy == expected_target
    assert float(loss) == pytest.approx(2.0 * (-log_prob.mean() - expected_target), rel=1e-5)
    assert float(info["alpha"]) == pytest.approx(2.0)
    # d loss / d log_alpha = alpha (H - H_target): the temperature falls when the entropy is above its target
    grad = jax.grad(lambda la: agent.temperature_loss(batch, agent.params, la, KEY)[0])(log_alpha)
    assert float(grad) == pytest.approx(float(loss), rel=1e-5)


# ------------------------------------------------------------------------------------ stopped gradients


def _moved(loss_fn, agent):
    """The parts of the agent (critic, actor, target critic, log_alpha) that `loss_fn(agent)` has a gradient for."""
    parts = {"critic": agent.params["critic"], "actor": agent.params["actor"],
             "target": agent.target_params["critic"], "alpha": agent.log_alpha}  # fmt: skip

    def f(p):
        a = agent.replace(params={"critic": p["critic"], "actor": p["actor"]}, target_params={"critic": p["target"]})
        return loss_fn(a.replace(log_alpha=p["alpha"]))

    grads = jax.jit(jax.grad(f))(parts)
    return {k for k, g in grads.items() if any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))}


def test_each_loss_moves_only_its_own_part():
    agent = make_agent(dataclasses.replace(TINY, backup_entropy=True))  # the backup reads alpha too
    batch = make_batch()
    assert _moved(lambda a: a.critic_loss(batch, a.params, KEY)[0], agent) == {"critic"}
    assert _moved(lambda a: a.actor_loss(batch, a.params, KEY)[0], agent) == {"actor"}
    assert _moved(lambda a: a.temperature_loss(batch, a.params, a.log_alpha, KEY)[0], agent) == {"alpha"}


def test_one_update_is_one_adam_step_of_all_three_then_the_target_ema():
    agent, batch = make_agent(), make_batch()
    new, info = jax.jit(lambda a, b: a.update(b))(agent, batch)
    # Adam's first step moves a parameter by lr against its gradient's sign: the entropy starts above its target,
    # so the temperature falls
    assert float(info["actor/entropy"]) > agent.target_entropy
    assert float(new.log_alpha) == pytest.approx(math.log(0.5) - 3e-4, abs=1e-6)
    for name in ("critic", "actor"):
        assert not np.allclose(jax.tree.leaves(new.params[name])[0], jax.tree.leaves(agent.params[name])[0])
    # the target critic moves tau of the way towards the pre-step critic
    expected = jax.tree.map(lambda p, t: 0.005 * p + 0.995 * t, agent.params["critic"], agent.target_params["critic"])
    for e, t in zip(jax.tree.leaves(expected), jax.tree.leaves(new.target_params["critic"]), strict=True):
        np.testing.assert_allclose(e, t, rtol=1e-6, atol=1e-7)
    assert set(new.params) == {"critic", "actor"} and int(new.step) == 1
    assert {"critic/critic_loss", "actor/actor_loss", "actor/alpha_loss", "actor/alpha"} <= set(info)


# ------------------------------------------------------------------------------------------- learning


def test_learns_the_rewarded_action_of_a_one_step_problem():
    # One-step episodes (mask 0), actions uniform in the data, reward peaked at a* = (0.5, -0.3): the critic learns
    # r(a), and the policy's mean action moves to a*.
    target = np.array([0.5, -0.3], np.float32)
    n = 2048
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, ACT)).astype(np.float32)
    data = {"observations": obs, "actions": act, "rewards": 1.0 - np.sum((act - target) ** 2, axis=1),
            "masks": np.zeros(n, np.float32), "next_observations": obs}  # fmt: skip
    data = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
    config = SACConfig(actor_layer_size=32, actor_num_layers=2, value_layer_size=32, value_num_layers=2,
                       batch_size=128, lr=3e-3)  # fmt: skip
    agent = SACAgent.create(jax.random.PRNGKey(0), obs[:1], act[:1], config)

    def body(agent, key):
        idx = jax.random.randint(key, (config.batch_size,), 0, n)
        return agent.update(jax.tree.map(lambda v: v[idx], data))

    agent, infos = jax.jit(lambda a, k: jax.lax.scan(body, a, jax.random.split(k, 800)))(agent, jax.random.PRNGKey(1))
    test_obs = jnp.asarray(rng.normal(size=(256, OBS)), jnp.float32)
    actions = np.asarray(agent.sample_actions(test_obs, KEY))
    np.testing.assert_allclose(actions.mean(axis=0), target, atol=0.1)
    assert np.abs(actions - target).max() < 0.25
    assert float(infos["actor/alpha"][-1]) < 1.0  # the temperature fell towards the target entropy


# ------------------------------------------------------------------------------------- an online agent


def test_registry_settings_and_contract_hook():
    assert AGENTS["sac"] is SACAgent and SACAgent.OFFLINE is False and SACAgent.PUBLISHED_COLUMN is None
    assert all(cls.OFFLINE for name, cls in AGENTS.items() if name != "sac")
    # the RLPD example's discount: every SAC run is online, so it is the agent's own per-environment value
    for online in (False, True):
        assert agent_env_settings(SACAgent, "humanoidmaze-medium-navigate", online=online) == {"discount": 0.995}
    assert settings_source(SACAgent, "humanoidmaze-medium-navigate")[0]
    assert not settings_source(SACAgent, "antsoccer-arena-navigate")[0]
    c = SACConfig()
    assert (c.lr, c.batch_size, c.discount, c.tau, c.num_critics, c.q_agg, c.layer_norm, c.actor_layer_norm) == (
        3e-4, 256, 0.99, 0.005, 2, "min", True, False
    )  # fmt: skip
    assert (c.target_entropy, c.target_entropy_multiplier, c.backup_entropy) == (None, 0.5, False)
    assert c.actor_fc_scale == 0.01


def test_offline_steps_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    base = ["train", "--agent", "sac", "--task", "cube-single-play-task1", "--run-dir", "{tmp}/run"]
    base += ["--data-dir", "{tmp}/no-data"]
    for extra in (["--steps", "100"], [], ["--steps", "100", "--online-steps", "50"]):
        line = assert_refused(tmp_path, capsys, [*base, *extra], "sac is an online agent")
        assert "--steps 0 --online-steps N" in line and "--balanced-sampling" in line
    # where a sweep spec resolves each run's agent (`resolve_agent_config`), given the run's offline steps
    with pytest.raises(SorlError, match=r"sac is an online agent, it does not train offline \(--steps 5\)"):
        train_lib.resolve_agent_config("sac", "cube-single-play", steps=5)
    assert train_lib.resolve_agent_config("sac", "cube-single-play", online=True, steps=0)[0] is SACAgent
    assert train_lib.resolve_agent_config("fql", "cube-single-play", steps=5)[0] is AGENTS["fql"]


TINY_FLAGS = [
    "--agent.actor_layer_size=8", "--agent.actor_num_layers=2", "--agent.value_layer_size=8",
    "--agent.value_num_layers=2", "--agent.batch_size=16",
]  # fmt: skip


def test_pure_online_rlpd_run_then_sorl_eval(tmp_path, stand_in, capsys):
    """`sorl train --agent sac --steps 0 --online-steps 12 --balanced-sampling` (the reference's RLPD command) on the
    stand-in task, then `sorl eval` of the run at N = 1, 2."""
    run = tmp_path / "run"
    cli.main([
        "train", "--task", TASK, "--agent", "sac", "--run-dir", str(run), "--steps", "0", "--online-steps", "12",
        "--balanced-sampling", "--log-interval", "6", "--eval-interval", "12", "--eval-episodes", "2",
        "--eval-K", "1", "--eval-N", "1", "--eval-workers", "1", "--progress", "False", *TINY_FLAGS,
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "online phase: updates 0 to 12, acting with K=1, N=1; half of each batch from the dataset" in out
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and res["steps"] == 12 and res["online"]["offline_steps"] == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["agent"] == "sac" and cfg["train"]["steps"] == 0 and cfg["online"]["balanced_sampling"] is True
    cli.main(["eval", str(run), "--K", "1", "--N", "1,2", "--episodes", "2", "--workers", "1"])
    scaling = json.loads((run / "scaling.json").read_text())
    assert scaling["step"] == 12 and [(c["K"], c["N"]) for c in scaling["grid"]] == [(1, 1), (1, 2)]
    assert all(0.0 <= c["success"] <= 1.0 for c in scaling["grid"])
