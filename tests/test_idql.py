"""IDQL (agents/idql.py): each loss against its equation computed here with numpy (the VP schedule in closed form),
the stop-gradients, the DDPM sampler and the target critic's best of N, K from 1 to T and nothing else, a one-step
problem it learns, and `sorl train` / `sorl eval` / `sorl sweep` / `sorl table` end to end."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_e2e import eval_grid, tiny_spec, tiny_train_argv
from test_baselines_gradients import assert_moves_only, grads_of
from test_baselines_learning import in_modes, trained
from test_e2e import TASK, data_dir  # noqa: F401 - the tiny generated cube-single dataset
from test_sorl_learning import make_dataset, reward

from agents import AGENTS, get_agent
from agents.idql import IDQLAgent, IDQLConfig
from cli import main as cli
from envs.registry import agent_env_settings
from experiments import paper
from runner.evaluation import grid_note, validate_grid
from sorl import diffusion
from sorl.errors import SorlError
from sorl.inference import make_policy_fn

OBS, ACT, BATCH = 3, 2, 8
TINY = dict(actor_layer_size=8, actor_num_layers=1, value_layer_size=8, value_num_layers=1, batch_size=BATCH)
np_ = lambda x: np.asarray(x, np.float64)  # noqa: E731


def make_agent(**settings) -> IDQLAgent:
    config = dataclasses.replace(IDQLConfig(), **{**TINY, **settings})
    agent = IDQLAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # A target critic unlike the online one, so that reading the wrong one shows.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params))


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": jnp.array([1.0, 0.0] * (BATCH // 2)),
        "next_observations": jax.random.normal(k[3], (BATCH, OBS)),
    }


AGENT, BATCH_DATA, RNG = make_agent(), make_batch(), jax.random.PRNGKey(7)


# ------------------------------------------------------------------------------------------ losses by hand


@pytest.mark.parametrize("expectile", [0.9, 0.7])  # the official code's antmaze and locomotion values
def test_value_loss_by_hand(expectile):
    agent = make_agent(expectile=expectile)
    loss, info = agent.value_loss(BATCH_DATA, agent.params)
    b = BATCH_DATA
    q = np_(agent.q_values(agent.target_params["critic"], b["observations"], b["actions"])).min(0)  # target, min
    v = np_(agent.v(agent.params["value"], b["observations"]))
    u = q - v
    assert np.any(u > 0) and np.any(u < 0)  # both sides of the asymmetric weight are exercised
    np.testing.assert_allclose(float(loss), np.mean(np.where(u >= 0, expectile, 1 - expectile) * u**2), rtol=1e-5)
    np.testing.assert_allclose(float(info["v_mean"]), v.mean(), rtol=1e-5, atol=1e-7)


def test_critic_loss_by_hand():
    loss, _ = AGENT.critic_loss(BATCH_DATA, AGENT.params)
    b = BATCH_DATA
    y = np_(b["rewards"]) + 0.99 * np_(b["masks"]) * np_(AGENT.v(AGENT.params["value"], b["next_observations"]))
    qs = np_(AGENT.q_values(AGENT.params["critic"], b["observations"], b["actions"]))
    assert qs.shape == (2, BATCH)
    np.testing.assert_allclose(float(loss), np.mean(np.sum((qs - y[None]) ** 2, axis=0)), rtol=1e-5)


def vp_alpha_bar(i: np.ndarray, T: int) -> np.ndarray:
    """The VP schedule's alpha_bar of step t = i + 1 in closed form: exp(-0.1 t/T - 9.9 (t/T)^2 / 2)."""
    s = (i + 1) / T
    return np.exp(-0.1 * s - 0.5 * 9.9 * s**2)


def test_ddpm_policy_loss_by_hand_at_a_fixed_key():
    T = AGENT.config.diffusion_steps
    loss, _ = AGENT.actor_loss(BATCH_DATA, AGENT.params, RNG)
    b = BATCH_DATA
    t_rng, noise_rng = jax.random.split(RNG)  # ddpm_loss's draws: the steps, then the noise
    i = np.asarray(jax.random.randint(t_rng, (BATCH,), 0, T))
    noise = np_(jax.random.normal(noise_rng, (BATCH, ACT)))
    alpha_bar = vp_alpha_bar(i, T)[:, None]
    a_i = np.sqrt(alpha_bar) * np_(b["actions"]) + np.sqrt(1 - alpha_bar) * noise
    eps = np_(AGENT.noise_prediction(AGENT.params["actor_diffusion"])(
        b["observations"], jnp.asarray(a_i, jnp.float32), jnp.asarray(i[:, None], jnp.float32)))  # fmt: skip
    np.testing.assert_allclose(float(loss), np.mean(np.sum((eps - noise) ** 2, axis=-1)), rtol=1e-4)
    # The update draws the policy loss's key as the second half of a split of the agent's key.
    _, info = jax.jit(IDQLAgent.update)(AGENT, BATCH_DATA)
    expected, _ = AGENT.actor_loss(BATCH_DATA, AGENT.params, jax.random.split(AGENT.rng)[1])
    np.testing.assert_allclose(float(info["actor/actor_loss"]), float(expected), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "network, loss",
    [
        ("value", lambda a, p: a.value_loss(BATCH_DATA, p)[0]),  # the target critic's Q is a constant
        ("critic", lambda a, p: a.critic_loss(BATCH_DATA, p)[0]),  # V(x') is a constant of the TD target
        ("actor_diffusion", lambda a, p: a.actor_loss(BATCH_DATA, p, RNG)[0]),  # no Q term at all
    ],
)
def test_each_loss_moves_only_its_network(network, loss):
    assert_moves_only(grads_of(AGENT, loss), {network})


def test_update_moves_every_network_and_the_target_critic_by_ema():
    new, info = jax.jit(IDQLAgent.update)(AGENT, BATCH_DATA)
    assert int(new.step) == 1 and all(np.isfinite(float(v)) for v in info.values())
    for name in ("value", "critic", "actor_diffusion"):
        assert not np.allclose(jax.tree.leaves(new.params[name])[0], jax.tree.leaves(AGENT.params[name])[0]), name
    expected = jax.tree.map(lambda p, t: 0.005 * p + 0.995 * t, AGENT.params["critic"], AGENT.target_params["critic"])
    for x, y in zip(jax.tree.leaves(new.target_params["critic"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert {"value/value_loss", "critic/critic_loss", "actor/actor_loss", "actor_diffusion/grad_norm"} <= set(info)


# ----------------------------------------------------------------------------------------- sampling (K, N)

OBSERVATIONS = jax.random.normal(jax.random.PRNGKey(3), (16, OBS))


POLICY = make_policy_fn()  # sample_actions jitted per (K, N)


@partial(jax.jit, static_argnums=2)
def ddpm_samples(agent: IDQLAgent, keys: jax.Array, K: int) -> jax.Array:
    """`sorl.diffusion.sample` of the agent's noise network from each key: `[len(keys), 16, ACT]`."""
    eps_fn = agent.noise_prediction(agent.params["actor_diffusion"])
    return jax.vmap(lambda key: diffusion.sample(eps_fn, OBSERVATIONS, key, agent.schedule, K, ACT))(keys)


def test_K_steps_of_the_ddpm_sampler_and_the_target_critics_best_of_N():
    agent, rng = make_agent(diffusion_steps=5), jax.random.PRNGKey(5)
    for K in (1, 5):  # 5 = T: the trained chain
        expected = ddpm_samples(agent, rng[None], K)[0]
        np.testing.assert_allclose(POLICY(agent, OBSERVATIONS, rng, K, 1), expected, atol=1e-6)
    # N > 1: candidate n from the n-th split key, the argmax of the *target* critic's min over members.
    candidates = np.asarray(ddpm_samples(agent, jax.random.split(rng, 6), 3))
    scores = np.stack([np_(agent.q_values(agent.target_params["critic"], OBSERVATIONS, c)).min(0) for c in candidates])
    best = candidates[scores.argmax(0), np.arange(16)]
    np.testing.assert_allclose(POLICY(agent, OBSERVATIONS, rng, 3, 6), best, atol=1e-6)


def test_K_from_1_to_T_and_nothing_else():
    agent = make_agent(diffusion_steps=5)
    assert agent.max_K == 5 and IDQLAgent.takes_K(3, 5) and not IDQLAgent.takes_K(6, 5)
    policy = POLICY
    for K in (1, 3, 5):  # not powers of two only
        assert policy(agent, OBSERVATIONS, jax.random.PRNGKey(0), K, 1).shape == (16, ACT)
    for K, message in (
        (6, "K=6 is above the diffusion steps this agent was trained with (T = 5, its diffusion_steps); use K <= 5 "
            "or train with --agent.diffusion_steps=6; idql takes K = 1 to 5"),
        (0, "K=0: the number of sampling steps must be a positive integer; idql takes K = 1 to 5"),
    ):  # fmt: skip
        with pytest.raises(SorlError) as e:
            policy(agent, OBSERVATIONS, jax.random.PRNGKey(0), K, 1)
        assert str(e.value) == message and "\n" not in str(e.value)
    with pytest.raises(SorlError, match="^K=8 is above .* idql takes K = 1 to 5$"):
        validate_grid((1, 2, 4, 8), (1,), agent.max_K, agent, "idql")
    validate_grid((1, 2, 4, 8), (1, 32), make_agent().max_K, agent, "idql")  # the default grid fits T = 10


# ----------------------------------------------------------------------------------------------- learning


def test_the_critic_picks_the_good_mode_of_a_one_step_problem():
    # Half the dataset's actions near a good mode (reward 1), half near a bad one (reward 0), every step terminal:
    # the diffusion policy clones the 50/50 mixture; among N = 16 of its samples the critic keeps the good mode.
    agent = trained("idql", make_dataset(), 600, value_layer_size=64, value_num_layers=2, diffusion_steps=5)
    observations = jax.random.normal(jax.random.PRNGKey(123), (512, 2))
    nearer_good = reward(np.asarray(POLICY(agent, observations, jax.random.PRNGKey(2), 5, 1))).mean()
    assert 0.35 < nearer_good < 0.65, nearer_good  # N = 1: the behaviour policy's two modes, about equally
    actions = np.asarray(POLICY(agent, observations, jax.random.PRNGKey(2), 5, 16))
    good, bad = in_modes(actions)
    assert reward(actions).mean() > 0.95 and good > 0.5 and bad < 0.02, (reward(actions).mean(), good, bad)


# -------------------------------------------------------------------------------------- settings and e2e


def test_registered_with_its_config_column_and_cell():
    assert AGENTS["idql"] is IDQLAgent and get_agent("idql").Config is IDQLConfig
    c = IDQLConfig()
    assert (c.expectile, c.num_samples, c.diffusion_steps, c.beta_schedule) == (0.9, 32, 10, "vp")
    assert (c.lr, c.batch_size, c.discount, c.tau, c.num_critics, c.actor_layer_size) == (
        3e-4,
        256,
        0.99,
        0.005,
        2,
        512,
    )
    for key, bad in (("expectile", 1.0), ("num_samples", 0), ("diffusion_steps", 0), ("beta_schedule", "sigmoid")):
        with pytest.raises(SorlError, match=f"invalid agent setting {key}="):
            dataclasses.replace(c, **{key: bad}).validate()
    # Its published cell is the defaults of sample_actions: T denoising steps, num_samples candidates.
    assert IDQLAgent.GRID_NOTES == {} and IDQLAgent.PUBLISHED_CELL == (c.diffusion_steps, c.num_samples) == (10, 32)
    assert paper.agent_columns()["idql"] == "IDQL" and paper.our_side()["IDQL"].startswith("idql: ")
    assert grid_note(AGENT, "idql", (1, 10), (1, 32)) == "note: idql's published numbers are its cell K=10, N=32"
    assert agent_env_settings(IDQLAgent, "antsoccer-arena-navigate-task1") == {"discount": 0.995}
    assert agent_env_settings(IDQLAgent, "cube-single-play-task1") == {}
    assert all(not tuned.verified and tuned.source for tuned in IDQLAgent.ENV_SETTINGS.values())


def test_sorl_train_eval_sweep_and_table_end_to_end(data_dir, tmp_path, capsys):  # noqa: F811
    cells = dict(seed=2, K=3, N=(1, 2), diffusion_steps=3)
    spec = tiny_spec(tmp_path / "tiny-idql.toml", "idql", out=tmp_path / "runs", data=data_dir, **cells)
    cli.main(["sweep", str(spec), "--dry-run", "--no-progress"])
    command = next(line for line in capsys.readouterr().out.splitlines() if "sorl train" in line)
    assert "--agent idql" in command and "--agent.diffusion_steps=3" in command
    run_dir = tmp_path / "runs" / "cube-single-play-task1" / "idql" / "seed2"
    assert f"--run-dir {run_dir}" in command

    # The run the sweep asks for, trained through `sorl train` with the spec's settings.
    argv = tiny_train_argv("idql", run_dir=run_dir, data=data_dir, **cells)
    cli.main(argv)
    out = capsys.readouterr().out
    assert "success %" in out and "note: idql ignores" not in out  # K and N both change its action
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["task"] == TASK and cfg["agent"] == "idql" and cfg["agent_config"]["diffusion_steps"] == 3
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and [(r["K"], r["N"]) for r in res["final"]] == [(3, 1), (3, 2)]

    # The sweep finds its one run complete and launches nothing.
    summary = cli.main(["sweep", str(spec), "--no-progress"])
    assert "1 skipped (complete)" in capsys.readouterr().out, summary

    cli.main(["eval", str(run_dir), "--K", "2", "--N", "4", "--episodes", "1", "--workers", "1", "--seed", "4"])
    assert eval_grid(run_dir) == [(2, 4)]
    with pytest.raises(SystemExit):  # K above T = 3: refused in one line
        cli.main(["eval", str(run_dir), "--K", "4", "--N", "1", "--episodes", "1", "--workers", "1"])
    err = capsys.readouterr().err
    assert "K=4 is above the diffusion steps this agent was trained with (T = 3" in err and err.count("\n") == 1, err

    cli.main(["table", str(tmp_path / "runs"), "--format", "csv"])
    table = capsys.readouterr().out
    assert "idql" in table and "cube-single" in table
