"""CAC (agents/cac.py): each loss against its equation computed here with numpy (the multistep consistency sampler
and the consistency-training loss written out), the stop-gradients, the EMA schedule, the (K, N) sampler and
verifier, learning a one-step problem, and `sorl sweep` (its `sorl train`) / `sorl eval` / `sorl table` end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_e2e import eval_grid, tiny_spec
from test_baselines_learning import in_modes, trained
from test_e2e import data_dir  # noqa: F401 - the tiny generated cube-single dataset, shared with SORL's e2e test
from test_sorl_learning import make_dataset, reward

from agents import AGENTS, get_agent
from agents.cac import CACAgent, CACConfig
from cli import main as cli
from envs.registry import agent_env_settings
from sorl.errors import SorlError

OBS, ACT, BATCH = 3, 2, 8
TINY = dict(actor_layer_size=16, actor_num_layers=2, value_layer_size=16, value_num_layers=2, batch_size=BATCH)
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": jnp.array([1.0, 0.0] * (BATCH // 2)),  # some terminal, some not
        "next_observations": jax.random.normal(k[3], (BATCH, OBS)),
    }


def make_agent(**settings) -> CACAgent:
    config = dataclasses.replace(CACConfig(), **{**TINY, **settings})
    agent = CACAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # Targets unlike the online networks, so that a loss reading the wrong one shows.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params))


BATCH_DATA = make_batch()
RNG = jax.random.PRNGKey(7)
np_ = lambda x: np.asarray(x, np.float64)  # noqa: E731
# Every TINY config has the same networks: one compiled program each for the hand computations below (and the agent's
# own calls jitted, op-by-op dispatch being the slow part of these tests on shared cores).
BASE = make_agent()
denoise = jax.jit(lambda params, obs, x, sigma: BASE.denoiser(params)(obs, x, sigma))
q_values = jax.jit(lambda params, obs, actions: BASE.q_values(params, obs, actions))
sample_actions = jax.jit(CACAgent.sample_actions, static_argnames=("K", "N"))
bc_loss = jax.jit(lambda agent, rng: agent.bc_loss(BATCH_DATA, agent.params, rng))
q_loss = jax.jit(lambda agent, rng: agent.q_loss(BATCH_DATA, agent.params, rng))


def f_by_hand(agent: CACAgent, actor_params, observations, x, sigma) -> np.ndarray:
    """The consistency function `c_skip x + c_out F` (CM Appendix C, sigma_data 0.5, sigma_min 0.002) written out."""
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (*np.shape(x)[:-1], 1))
    c_skip = SIGMA_DATA**2 / ((sigma - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
    c_out = SIGMA_DATA * (sigma - SIGMA_MIN) / np.sqrt(SIGMA_DATA**2 + sigma**2)
    F = np_(denoise(actor_params, observations, jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32)))
    return c_skip * np_(x) + c_out * F


def sample_by_hand(agent: CACAgent, actor_params, observations, rng, K: int) -> np.ndarray:
    """CAC's multistep sampler: x = f(80 z, 80), then re-noise to each lower level of linspace(2, 80, K) and map back
    with f; clip at the end (one key per step, the first for the initial noise)."""
    sigmas = [SIGMA_MAX] if K == 1 else list(np.linspace(2.0, SIGMA_MAX, K)[::-1])
    keys = jax.random.split(rng, K)
    shape = (observations.shape[0], ACT)
    x = f_by_hand(agent, actor_params, observations, SIGMA_MAX * np_(jax.random.normal(keys[0], shape)), sigmas[0])
    for sigma, key in zip(sigmas[1:], keys[1:], strict=True):
        x = x + math.sqrt(sigma**2 - SIGMA_MIN**2) * np_(jax.random.normal(key, shape))
        x = f_by_hand(agent, actor_params, observations, x, sigma)
    return np.clip(x, -1.0, 1.0)


def karras(n, N) -> np.ndarray:
    lo, hi = SIGMA_MIN ** (1 / 7), SIGMA_MAX ** (1 / 7)
    return (lo + np_(n) / (N - 1) * (hi - lo)) ** 7


# ------------------------------------------------------------------------------------------ losses by hand


def test_registered_with_the_codes_defaults():
    assert AGENTS["cac"] is CACAgent and get_agent("cac").Config is CACConfig
    c = CACConfig()
    assert (c.eta, c.consistency_steps, c.scale_consis_loss, c.ct_period) == (1.0, 2, True, 50_000)
    assert (c.ema_decay, c.update_ema_every, c.step_start_ema, c.grad_clip_norm) == (0.995, 5, 1000, 1.0)
    assert (c.lr, c.batch_size, c.discount, c.tau, c.num_critics) == (3e-4, 256, 0.99, 0.005, 2)
    assert CACAgent.GRID_NOTES == {} and CACAgent.PUBLISHED_COLUMN is None and not CACAgent.K_POWERS_OF_TWO


def test_critic_loss_by_hand():
    agent = make_agent(consistency_steps=3)
    loss, info = jax.jit(lambda a: a.critic_loss(BATCH_DATA, a.params, RNG))(agent)
    b = BATCH_DATA
    a_next = sample_by_hand(agent, agent.target_params["actor"], b["next_observations"], RNG, 3)  # the EMA actor
    next_q = np_(q_values(agent.target_params["critic"], b["next_observations"], jnp.asarray(a_next))).min(0)
    y = np_(b["rewards"]) + 0.99 * np_(b["masks"]) * next_q
    qs = np_(q_values(agent.params["critic"], b["observations"], b["actions"]))
    assert qs.shape == (2, BATCH)
    np.testing.assert_allclose(float(loss), np.sum(np.mean((qs - y) ** 2, axis=1)), rtol=1e-4)
    np.testing.assert_allclose(float(info["y_mean"]), y.mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("step", [0, 25_000, 70_000])  # N(k) = 2 at the start; the schedule restarts every period
def test_bc_loss_is_consistency_training_against_the_ema_actor(scale, step):
    agent = make_agent(scale_consis_loss=scale).replace(step=jnp.asarray(step, jnp.int32))
    loss, N = bc_loss(agent, RNG)
    k = step % 50_000  # CAC's timesteps_schedule(k, 50_000, 2, 150)
    expected_N = math.ceil(math.sqrt(k * (150**2 - 2**2) / 50_000 + 2**2) - 1) + 1
    assert int(N) == expected_N == {0: 2, 25_000: 107, 70_000: 95}[step]
    b = BATCH_DATA
    n_rng, z_rng = jax.random.split(RNG)
    n = np_(jax.random.randint(n_rng, (BATCH, 1), 0, expected_N - 1))
    z = np_(jax.random.normal(z_rng, (BATCH, ACT)))
    lo, hi = karras(n, expected_N), karras(n + 1, expected_N)
    a = np_(b["actions"])
    prediction = f_by_hand(agent, agent.params["actor"], b["observations"], a + hi * z, hi)
    target = f_by_hand(agent, agent.target_params["actor"], b["observations"], a + lo * z, lo)
    per_example = np.mean((prediction - target) ** 2, axis=-1, keepdims=True)
    if scale:
        per_example = per_example * 100.0 / (hi - lo)
    np.testing.assert_allclose(float(loss), per_example.mean(), rtol=2e-4)


@pytest.mark.parametrize("seed", range(4))
def test_q_loss_by_hand(seed):
    agent = make_agent(consistency_steps=2)
    rng = jax.random.PRNGKey(seed)
    loss, q, actions = q_loss(agent, rng)
    member_rng, sample_rng = jax.random.split(rng)
    a = sample_by_hand(agent, agent.params["actor"], BATCH_DATA["observations"], sample_rng, 2)
    np.testing.assert_allclose(actions, a, rtol=1e-4, atol=1e-5)
    qs = np_(q_values(agent.params["critic"], BATCH_DATA["observations"], jnp.asarray(a)))  # online critic
    j = int(jax.random.randint(member_rng, (), 0, 2))
    np.testing.assert_allclose(float(loss), -qs[j].mean() / np.abs(qs[1 - j]).mean(), rtol=1e-4)
    np.testing.assert_allclose(q, qs[j], rtol=1e-4, atol=1e-6)


def test_q_loss_draws_either_critic():
    draws = {int(jax.random.randint(jax.random.split(jax.random.PRNGKey(s))[0], (), 0, 2)) for s in range(4)}
    assert draws == {0, 1}  # the seeds of test_q_loss_by_hand cover both members


def test_actor_loss_is_bc_plus_eta_q():
    agent = make_agent(eta=2.5)
    bc_rng, q_rng = jax.random.split(RNG)

    def parts(a):
        loss, info = a.actor_loss(BATCH_DATA, a.params, RNG)
        return loss, info, a.bc_loss(BATCH_DATA, a.params, bc_rng)[0], a.q_loss(BATCH_DATA, a.params, q_rng)[0]

    loss, info, bc, q_term = jax.jit(parts)(agent)
    np.testing.assert_allclose(float(loss), float(bc) + 2.5 * float(q_term), rtol=1e-5)
    assert {"bc_loss", "q_loss", "ct_levels", "mse"} <= set(info)


# ---------------------------------------------------------------------------------------------- gradients


LOSSES = {  # loss -> the one network it may move
    "critic_loss": ("critic", lambda a, p: a.critic_loss(BATCH_DATA, p, RNG)[0]),  # a' from the EMA actor: constant
    "actor_loss": ("actor", lambda a, p: a.actor_loss(BATCH_DATA, p, RNG)[0]),  # the Q term's critic is frozen
    "q_loss": ("actor", lambda a, p: a.q_loss(BATCH_DATA, p, RNG)[0]),
}


def moved(tree) -> bool:
    return any(np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def test_each_loss_moves_only_its_network_and_no_target():
    agent = make_agent()

    def grads(params, target_params):
        # d loss / d (params, target_params), the agent rebuilt from both (a leak through `self` shows).
        def of(loss):
            return jax.grad(lambda p, t: loss(agent.replace(params=p, target_params=t), p), argnums=(0, 1))

        return {name: of(loss)(params, target_params) for name, (_, loss) in LOSSES.items()}

    every = jax.jit(grads)(agent.params, agent.target_params)  # one compiled program for the three
    for name, (network, _) in LOSSES.items():
        g, g_target = every[name]
        assert {n for n, tree in g.items() if moved(tree)} == {network}, name
        assert not moved(g_target), f"an EMA network received a gradient from {name}"


def test_update_moves_both_networks_and_the_emas_on_their_schedules():
    update = jax.jit(CACAgent.update)
    agent = make_agent()
    for step, actor_ema_moves in [(0, False), (999, False), (1000, True), (1001, False), (1005, True)]:
        before = agent.replace(step=jnp.asarray(step, jnp.int32))
        new, info = update(before, BATCH_DATA)
        assert int(new.step) == step + 1 and all(np.isfinite(float(v)) for v in info.values())
        for name in ("critic", "actor"):
            assert moved(jax.tree.map(lambda x, y: x - y, new.params[name], before.params[name])), name
        # Towards the post-step networks: the critic's EMA every update, the actor's on its schedule.
        expected_critic = jax.tree.map(lambda p, t: 0.005 * p + 0.995 * t, new.params["critic"],
                                       before.target_params["critic"])  # fmt: skip
        rate = 0.005 if actor_ema_moves else 0.0
        expected_actor = jax.tree.map(lambda p, t, r=rate: r * p + (1 - r) * t, new.params["actor"],
                                      before.target_params["actor"])  # fmt: skip
        for got, want in ((new.target_params["critic"], expected_critic), (new.target_params["actor"], expected_actor)):
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), got, want)
    assert {"critic/critic_loss", "actor/actor_loss", "actor/bc_loss", "actor/q_loss", "actor/grad_norm"} <= set(info)


def test_a_fresh_ema_actor_is_the_actor():
    agent = CACAgent.create(0, jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), dataclasses.replace(CACConfig(), **TINY))
    jax.tree.map(np.testing.assert_array_equal, agent.target_params["actor"], agent.params["actor"])


# ----------------------------------------------------------------------------------------- sampling (K, N)

OBSERVATIONS = jax.random.normal(jax.random.PRNGKey(3), (16, OBS))


@pytest.mark.parametrize("K", [1, 3])
def test_K_is_the_number_of_consistency_steps(K):
    agent = make_agent()
    rng = jax.random.PRNGKey(5)
    expected = sample_by_hand(agent, agent.params["actor"], OBSERVATIONS, rng, K)
    np.testing.assert_allclose(sample_actions(agent, OBSERVATIONS, rng, K=K, N=1), expected, rtol=1e-4, atol=1e-5)


def test_any_positive_K_and_the_default_is_consistency_steps():
    agent = make_agent()
    assert CACAgent.takes_K(3) and CACAgent.takes_K(10) and not CACAgent.takes_K(0) and agent.max_K is None
    with pytest.raises(SorlError, match="cac takes any K >= 1"):
        agent.sample_actions(OBSERVATIONS, jax.random.PRNGKey(0), K=0)
    rng = jax.random.PRNGKey(6)
    expected = sample_by_hand(agent, agent.params["actor"], OBSERVATIONS, rng, agent.config.consistency_steps)
    np.testing.assert_allclose(sample_actions(agent, OBSERVATIONS, rng), expected, rtol=1e-4, atol=1e-5)


def test_best_of_n_is_the_target_critics_min_q_argmax():
    agent = make_agent()
    rng = jax.random.PRNGKey(4)
    keys = jax.random.split(rng, 5)
    candidates = np.stack([sample_by_hand(agent, agent.params["actor"], OBSERVATIONS, k, 2) for k in keys])
    scores = np.stack([np_(q_values(agent.target_params["critic"], OBSERVATIONS, c)).min(0) for c in candidates])
    expected = candidates[scores.argmax(0), np.arange(16)]
    np.testing.assert_allclose(sample_actions(agent, OBSERVATIONS, rng, K=2, N=5), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- learning


def test_prefers_the_good_mode_of_a_one_step_problem():
    # Half the dataset's actions near a good mode (reward 1), half near a bad one (reward 0), every step terminal:
    # consistency BC alone would reproduce the 50/50 mixture; the Q term moves the trained K-step map to the good side.
    # The EMA actor and the levels' schedule run faster than the code's, to fit a few hundred updates.
    fast = dict(step_start_ema=0, update_ema_every=1, ct_period=1000, value_layer_size=64, value_num_layers=2)
    agent = trained("cac", make_dataset(), 400, eta=3.0, consistency_steps=2, **fast)
    observations = jax.random.normal(jax.random.PRNGKey(123), (512, 2))
    for N in (1, 4):
        actions = agent.sample_actions(observations, jax.random.PRNGKey(2), K=2, N=N)
        good, bad = in_modes(actions)
        assert float(reward(np.asarray(actions)).mean()) > 0.9 and bad < 0.05, (N, good, bad)


# -------------------------------------------------------------------------------------- settings and e2e


def test_per_environment_settings_resolve_for_tasks():
    assert agent_env_settings(CACAgent, "antmaze-giant-navigate-task1")["discount"] == 0.995
    assert agent_env_settings(CACAgent, "cube-single-play-task1") == {}
    assert all(not tuned.verified and tuned.source for tuned in CACAgent.ENV_SETTINGS.values())


def test_sorl_sweep_eval_and_table_end_to_end(data_dir, tmp_path, capsys):  # noqa: F811
    cells = dict(seed=1, K=3, N=(1, 2), episodes=1, consistency_steps=3)
    spec = tiny_spec(tmp_path / "cac.toml", "cac", out=tmp_path / "runs", data=data_dir, **cells)
    cli.main(["sweep", str(spec), "--max-parallel", "1", "--no-progress"])
    run_dir = tmp_path / "runs" / "cube-single-play-task1" / "cac" / "seed1"
    log = (tmp_path / "runs" / "logs" / "cube-single-play-task1__cac__seed1.log").read_text()
    assert "$ sorl train" in log and "note: cac ignores" not in log  # K and N both change its action

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"] == "cac" and cfg["agent_config"]["consistency_steps"] == 3
    with (run_dir / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(np.isfinite(float(v)) for r in rows for v in r.values() if v != "")
    assert {"actor/bc_loss", "actor/q_loss", "critic/critic_loss"} <= set(rows[0])
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["agent"] == "cac"
    assert [(r["K"], r["N"]) for r in res["final"]] == [(3, 1), (3, 2)]

    cli.main(["eval", str(run_dir), "--K", "5", "--N", "2", "--episodes", "1", "--workers", "1", "--seed", "4"])
    assert eval_grid(run_dir) == [(5, 2)]  # any K, not only the trained one or a power of two

    capsys.readouterr()
    cli.main(["table", str(tmp_path / "runs"), "--format", "csv"])
    table = capsys.readouterr().out
    assert "cac" in table and "cube-single" in table
