"""SRPO (agents/srpo.py): each loss against its equation computed here with numpy (the reference's VP-SDE marginal
in closed form), the stop-gradients, the phase schedule keyed on the step counter (before the boundary only the
pretraining networks move, after it only the policy), the deterministic policy on the (K, N) grid, a one-step
problem it learns, `sorl train` / `sorl eval` / `sorl sweep` / `sorl table` end to end, and an exact resume across
the phase boundary after kill -9."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_e2e import eval_grid, tiny_settings, tiny_spec, tiny_train_argv
from test_baselines_gradients import assert_moves_only, grads_of
from test_baselines_learning import in_modes, trained
from test_e2e import TASK, data_dir  # noqa: F401 - the tiny generated cube-single dataset
from test_reliability import ROOT, _env, _log, assert_same_run
from test_sorl_learning import make_dataset, reward

from agents import AGENTS, get_agent
from agents.srpo import SRPOAgent, SRPOConfig
from cli import main as cli
from envs.registry import agent_env_settings
from runner import checkpoint
from runner.evaluation import grid_note
from sorl.errors import SorlError

OBS, ACT, BATCH = 3, 2, 8
TINY = dict(actor_layer_size=8, actor_num_layers=1, value_layer_size=8, value_num_layers=1, batch_size=BATCH)
np_ = lambda x: np.asarray(x, np.float64)  # noqa: E731


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": jnp.array([1.0, 0.0] * (BATCH // 2)),
        "next_observations": jax.random.normal(k[3], (BATCH, OBS)),
    }


def make_agent(**settings) -> SRPOAgent:
    config = dataclasses.replace(SRPOConfig(), **{**TINY, **settings})
    agent = SRPOAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # A target critic unlike the online one, so that reading the wrong one shows.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params))


BATCH_DATA = make_batch()
RNG = jax.random.PRNGKey(7)


def reference_alpha_sigma(t: np.ndarray, beta_0: float = 0.1, beta_1: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """thu-ml/SRPO `utils.marginal_prob_std`: the VP-SDE's `alpha_t` and `sigma_t` at continuous `t`."""
    log_mean_coeff = -0.25 * t**2 * (beta_1 - beta_0) - 0.5 * t * beta_0
    return np.exp(log_mean_coeff), np.sqrt(1.0 - np.exp(2.0 * log_mean_coeff))


# ------------------------------------------------------------------------------------------ losses by hand


def test_registered_with_its_config_and_defaults():
    assert AGENTS["srpo"] is SRPOAgent and get_agent("srpo").Config is SRPOConfig
    c = SRPOConfig()
    assert (c.beta_0, c.beta_1, c.policy_t_min, c.policy_t_max, c.diffusion_steps) == (0.1, 20.0, 0.02, 0.98, 1000)
    assert (c.expectile, c.normalize_q_grad, c.behavior_weight_decay, c.lr, c.tau) == (0.9, True, 0.01, 3e-4, 0.005)
    for key, bad in (("beta", -1.0), ("pretrain_steps", -1), ("diffusion_steps", 0), ("policy_t_max", 1.5)):
        with pytest.raises(SorlError, match=key):
            dataclasses.replace(c, **{key: bad}).validate()
    with pytest.raises(SorlError, match="policy_t_min=0.5: must be below policy_t_max=0.4"):
        dataclasses.replace(c, policy_t_min=0.5, policy_t_max=0.4).validate()
    assert SRPOAgent.PUBLISHED_COLUMN is None  # experiments/paper.py has no SRPO column


def test_behavior_loss_is_noise_prediction_on_the_reference_vp_sde():
    agent = make_agent(diffusion_steps=50)
    loss, _ = agent.behavior_loss(BATCH_DATA, agent.params, RNG)
    # sorl.diffusion.ddpm_loss's draws: the step index from the first key, the noise from the second
    t_rng, z_rng = jax.random.split(RNG)
    i = np.asarray(jax.random.randint(t_rng, (BATCH,), 0, 50))
    z = np_(jax.random.normal(z_rng, (BATCH, ACT)))
    t = (i + 1) / 50  # the grid of the reference's continuous time
    alpha, sigma = reference_alpha_sigma(t)
    a_t = alpha[:, None] * np_(BATCH_DATA["actions"]) + sigma[:, None] * z
    eps = np_(agent.eps_fn(agent.params["behavior"])(BATCH_DATA["observations"], jnp.asarray(a_t, jnp.float32),
                                                     jnp.asarray(i[:, None], jnp.float32)))  # fmt: skip
    np.testing.assert_allclose(float(loss), np.mean(np.sum((eps - z) ** 2, axis=-1)), rtol=1e-4)


def test_value_and_critic_losses_by_hand():
    agent = make_agent(expectile=0.7)
    obs, act = BATCH_DATA["observations"], BATCH_DATA["actions"]
    q_target = np_(agent.q_values(agent.target_params["critic"], obs, act)).min(axis=0)
    v = np_(agent.v(agent.params["value"], obs))
    diff = q_target - v
    expected = np.mean(np.where(diff >= 0, 0.7, 0.3) * diff**2)
    np.testing.assert_allclose(float(agent.value_loss(BATCH_DATA, agent.params)[0]), expected, rtol=1e-5)

    next_v = np_(agent.v(agent.params["value"], BATCH_DATA["next_observations"]))
    y = np_(BATCH_DATA["rewards"]) + 0.99 * np_(BATCH_DATA["masks"]) * next_v
    qs = np_(agent.q_values(agent.params["critic"], obs, act))
    expected = np.mean([np.mean((q - y) ** 2) for q in qs])  # the reference's mean of its two MSEs
    np.testing.assert_allclose(float(agent.critic_loss(BATCH_DATA, agent.params)[0]), expected, rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_policy_loss_by_hand_and_its_gradient_is_the_regularised_q_ascent(normalize):
    agent = make_agent(beta=0.3, normalize_q_grad=normalize, diffusion_steps=100)
    obs = BATCH_DATA["observations"]
    loss, info = agent.policy_loss(BATCH_DATA, agent.params, RNG)
    a = np_(agent.policy(agent.params["actor"], obs))
    t_rng, z_rng = jax.random.split(RNG)
    i = np.asarray(jax.random.randint(t_rng, (BATCH,), 1, 98))  # t = (i + 1) / 100 in [0.02, 0.98]
    z = np_(jax.random.normal(z_rng, (BATCH, ACT)))
    alpha, sigma = reference_alpha_sigma((i + 1) / 100)
    a_t = alpha[:, None] * a + sigma[:, None] * z
    eps = np_(agent.eps_fn(agent.params["behavior"])(obs, jnp.asarray(a_t, jnp.float32),
                                                     jnp.asarray(i[:, None], jnp.float32)))  # fmt: skip

    def mean_q(actions):  # the target critic's mean over its two members, as the reference's guidance
        return agent.q_values(agent.target_params["critic"], obs, actions).mean(axis=0).sum()

    g = np_(jax.grad(mean_q)(jnp.asarray(a, jnp.float32)))
    if normalize:
        g = g / np.sqrt(np.mean(g**2, axis=-1, keepdims=True))
    per_state = sigma**2 * np.sum(eps * a, axis=-1) - 0.3 * np.sum(g * a, axis=-1)
    np.testing.assert_allclose(float(loss), per_state.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(info["regularizer"]), np.mean(sigma**2 * np.sum(eps * a, axis=-1)), rtol=1e-4)

    # Its gradient is (sigma^2 eps - beta g) / B pulled back through the policy: nothing through eps or g.
    _, pullback = jax.vjp(lambda p: agent.policy(p, obs), agent.params["actor"])
    (expected,) = pullback(jnp.asarray((sigma[:, None] ** 2 * eps - 0.3 * g) / BATCH, jnp.float32))
    got = jax.grad(lambda p: agent.policy_loss(BATCH_DATA, {**agent.params, "actor": p}, RNG)[0])(agent.params["actor"])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-3, atol=1e-6), got, expected)


@pytest.mark.parametrize(
    "loss, moved",
    [
        (lambda a, p: a.behavior_loss(BATCH_DATA, p, RNG)[0], {"behavior"}),
        (lambda a, p: a.value_loss(BATCH_DATA, p)[0], {"value"}),  # the target critic's Q: a constant
        (lambda a, p: a.critic_loss(BATCH_DATA, p)[0], {"critic"}),  # V(x'): a constant
        # the policy loss moves neither the critic, the target critic, the value nor the behaviour model
        (lambda a, p: a.policy_loss(BATCH_DATA, p, RNG)[0], {"actor"}),
    ],
)
def test_each_loss_moves_only_its_network(loss, moved):
    assert_moves_only(grads_of(make_agent(), loss), moved)


# --------------------------------------------------------------------------------------- phase schedule


UPDATE = jax.jit(SRPOAgent.update)  # one compiled update for the tests below (one config)


def changed(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return any(np.any(np.asarray(x) != np.asarray(y)) for x, y in pairs)


def test_phase_schedule_on_the_step_counter():
    """Updates 1-2 (pretrain_steps = 2) move the behaviour model, value, critic and target critic, never the policy
    nor its optimiser; from update 3 on only the policy (and its optimiser) moves."""
    agent = make_agent(pretrain_steps=2)
    update = UPDATE
    pretrain = {"behavior", "value", "critic"}
    for n in range(1, 5):
        new, info = update(agent, make_batch(n))
        assert int(new.step) == n and all(np.isfinite(float(v)) for v in info.values())
        moved = {name for name in agent.params if changed(agent.params[name], new.params[name])}
        optimisers = {name for name in agent.opt_state if changed(agent.opt_state[name], new.opt_state[name])}
        in_pretraining = n <= 2
        assert moved == optimisers == (pretrain if in_pretraining else {"actor"}), (n, moved, optimisers)
        assert changed(agent.target_params, new.target_params) == in_pretraining
        assert float(info["phase/pretraining"]) == float(in_pretraining)
        # each phase logs its own losses; the other's keys are there, at 0
        assert (float(info["behavior/behavior_loss"]) != 0) == in_pretraining
        assert (float(info["actor/policy_loss"]) != 0) != in_pretraining
        agent = new
    # the policy's cosine schedule counts policy updates only: two so far
    assert int(jax.tree.leaves(agent.opt_state["actor"])[0]) == 2


def test_the_update_scans_and_vmaps_across_the_boundary():
    """Two seeds vmapped through a scan of four updates crossing the boundary: the same as each seed's updates one
    by one (under vmap the phase's cond is a select over both branches)."""
    seeds = [make_agent(pretrain_steps=2).replace(rng=jax.random.PRNGKey(s)) for s in (3, 4)]
    batches = [make_batch(n) for n in range(1, 5)]
    stacked_batches = jax.tree.map(lambda *x: jnp.stack(x), *batches)

    def run(agent):
        return jax.lax.scan(lambda ag, b: ag.update(b), agent, stacked_batches)[0]

    together = jax.jit(jax.vmap(run))(jax.tree.map(lambda *x: jnp.stack(x), *seeds))
    for s, agent in enumerate(seeds):
        for batch in batches:
            agent, _ = UPDATE(agent, batch)
        assert int(agent.step) == 4
        mine = jax.tree.map(lambda x, s=s: x[s], together)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), mine, agent)


# ------------------------------------------------------------------------------------------ (K, N) grid


def test_deterministic_policy_ignores_K_and_N():
    agent = make_agent()
    obs = jax.random.normal(jax.random.PRNGKey(3), (16, OBS))
    a = agent.sample_actions(obs, jax.random.PRNGKey(0), K=1, N=1)
    np.testing.assert_array_equal(a, agent.policy(agent.params["actor"], obs))
    assert np.all(np.abs(np_(a)) < 1)  # tanh
    for K, N in ((1, 4), (3, 1), (8, 32)):  # K does not apply; N identical candidates
        np.testing.assert_array_equal(agent.sample_actions(obs, jax.random.PRNGKey(K + N), K=K, N=N), a)
    with pytest.raises(SorlError, match="srpo"):
        agent.sample_actions(obs, jax.random.PRNGKey(0), K=0)
    note = grid_note(agent, "srpo", (1, 2), (1, 4))
    assert "K" in note and "N" in note and "srpo" in note


# ------------------------------------------------------------------------------------------------ learning


def test_prefers_the_good_mode_of_a_one_step_problem():
    # Half the dataset's actions near a good mode (reward 1), half near a bad one (reward 0), every step terminal.
    # The score term holds the policy in the data's modes, the Q term picks the good one.
    dataset = make_dataset()
    agent = trained(
        "srpo", dataset, 1000, pretrain_steps=600, beta=0.1, diffusion_steps=100, value_layer_size=64,
        value_num_layers=2, policy_lr_decay_steps=0,
    )  # fmt: skip
    observations = jax.random.normal(jax.random.PRNGKey(123), (512, 2))
    actions = agent.sample_actions(observations, jax.random.PRNGKey(2), K=1, N=1)
    good, bad = in_modes(actions)
    # On the good side, mostly in the good mode itself, never in the bad one (the Q term's normalised ascent carries
    # some actions past the mode's centre, where the critic extrapolates).
    assert float(reward(np.asarray(actions)).mean()) > 0.9 and good > 0.5 and bad < 0.05, (good, bad)


# -------------------------------------------------------------------------------------- settings and e2e


def test_per_environment_settings_resolve_for_tasks():
    assert agent_env_settings(SRPOAgent, "antmaze-giant-navigate-task1")["discount"] == 0.995
    assert agent_env_settings(SRPOAgent, "cube-single-play-task1") == {"discount": 0.99}
    assert all(not tuned.verified and tuned.source for tuned in SRPOAgent.ENV_SETTINGS.values())


def test_sorl_train_eval_sweep_and_table_end_to_end(data_dir, tmp_path, capsys):  # noqa: F811
    cells = dict(seed=2, K=1, N=(1, 2), pretrain_steps=10, diffusion_steps=20)
    spec = tiny_spec(tmp_path / "tiny-srpo.toml", "srpo", out=tmp_path / "runs", data=data_dir, **cells)
    cli.main(["sweep", str(spec), "--dry-run", "--no-progress"])
    command = next(line for line in capsys.readouterr().out.splitlines() if "sorl train" in line)
    assert "--agent srpo" in command and "--agent.pretrain_steps=10" in command
    run_dir = tmp_path / "runs" / "cube-single-play-task1" / "srpo" / "seed2"
    assert f"--run-dir {run_dir}" in command

    # The run the sweep asks for, trained through `sorl train` with the spec's settings: 10 pretraining updates,
    # then 10 of the policy.
    argv = tiny_train_argv("srpo", run_dir=run_dir, data=data_dir, **cells)
    cli.main(argv)
    out = capsys.readouterr().out
    assert "success %" in out and "note: srpo ignores" in out  # K and N do not change its action
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["task"] == TASK and cfg["agent"] == "srpo" and cfg["agent_config"]["pretrain_steps"] == 10
    rows = _log(run_dir, "train.csv")
    assert [(int(r["step"]), float(r["phase/pretraining"])) for r in rows] == [(10, 1.0), (20, 0.0)]
    assert float(rows[0]["actor/policy_loss"]) == 0 and float(rows[1]["behavior/behavior_loss"]) == 0
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and [(r["K"], r["N"]) for r in res["final"]] == [(1, 1), (1, 2)]

    # The sweep finds its one run complete and launches nothing.
    cli.main(["sweep", str(spec), "--no-progress"])
    assert "1 skipped (complete)" in capsys.readouterr().out

    cli.main(["eval", str(run_dir), "--K", "1", "--N", "1,4", "--episodes", "1", "--workers", "1", "--seed", "4"])
    assert eval_grid(run_dir) == [(1, 1), (1, 4)]

    capsys.readouterr()
    cli.main(["table", str(tmp_path / "runs"), "--format", "csv"])
    table = capsys.readouterr().out
    assert "srpo" in table and "cube-single" in table


# ------------------------------------------------------------------------------ kill -9 across the boundary

KILL_STEPS, KILL_PRETRAIN = 40, 20


def _srpo_command(run_dir, data) -> list[str]:
    argv = [sys.executable, "-m", "cli", "train", "--task", "cube-single-play-task1", "--agent", "srpo"]
    argv += ["--seed", "5", "--steps", str(KILL_STEPS), "--log-interval", "2", "--checkpoint-interval", "10"]
    argv += ["--eval-interval", str(KILL_STEPS), "--eval-episodes", "1", "--eval-K", "1", "--eval-N", "1"]
    argv += ["--eval-workers", "1", "--eval-max-episode-steps", "3", "--progress", "False"]
    argv += ["--run-dir", str(run_dir), "--data-dir", str(data)]
    sizes = {**tiny_settings(), "actor_num_layers": 1, "value_num_layers": 1, "batch_size": 8}
    return argv + [f"--agent.{k}={v}" for k, v in {**sizes, "pretrain_steps": KILL_PRETRAIN}.items()]


def test_kill_9_before_the_phase_boundary_then_resume_is_exact(data_dir, tmp_path):  # noqa: F811
    """`sorl train --agent srpo` killed with SIGKILL in its pretraining phase (once its first checkpoint, at step 10,
    is written), then the same command again: it resumes from that pretraining checkpoint, crosses the boundary
    (step 20), and ends bit-identical (parameters, optimiser states, keys, step, logs, results) to an uninterrupted
    run."""
    env = _env(tmp_path / "jax-cache")
    # the uninterrupted run first: the runs below then load its compiled programs from the shared cache
    reference = subprocess.run(_srpo_command(tmp_path / "reference", data_dir), env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=600)  # fmt: skip
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(_srpo_command(run, data_dir), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while checkpoint.latest_step(run / "checkpoints") is None:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    resumed_from = checkpoint.latest_step(run / "checkpoints")
    assert resumed_from is not None and resumed_from < KILL_PRETRAIN, resumed_from
    again = subprocess.run(_srpo_command(run, data_dir), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"from its checkpoint at step {resumed_from}" in again.stdout
    phases = [float(r["phase/pretraining"]) for r in _log(run, "train.csv")]
    assert phases == [1.0] * (KILL_PRETRAIN // 2) + [0.0] * ((KILL_STEPS - KILL_PRETRAIN) // 2)
    assert_same_run(tmp_path / "reference", run, optimizer=True)
