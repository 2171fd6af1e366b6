"""The Q-verifier probe (`sorl verifier`): rank correlation, the state copies its rollouts start from, the summary,
every agent's verifier score against its best-of-N, an IFQL run probed through the CLI, and the agents refused."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import AGENTS, get_agent
from cli import main as cli
from envs.datasets import make_env
from experiments import verifier
from sorl.config import config_to_dict
from sorl.errors import SorlError

TINY = dict(actor_layer_size=16, actor_num_layers=2, value_layer_size=16, value_num_layers=2, batch_size=8)


def test_spearman_known_cases():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert verifier._spearman(x, 10 * x + 3) == pytest.approx(1.0)
    assert verifier._spearman(x, -(x**3)) == pytest.approx(-1.0)  # monotone, not linear: still -1
    assert verifier._spearman(x, np.ones(4)) is None  # nothing to rank
    # ties take their mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    r = verifier._spearman(np.array([1.0, 2.0, 2.0, 3.0]), x)
    assert r == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1])


@pytest.mark.parametrize("task", ["cube-single-play-singletask-task1-v0", "scene-play-singletask-task1-v0"])
def test_a_copy_put_in_the_probe_state_continues_exactly_as_the_original(task):
    rng = np.random.default_rng(0)
    original, copy = make_env(task, success_timing="post"), make_env(task, success_timing="post")
    original.reset(seed=5)
    for _ in range(20):
        original.step(rng.uniform(-1, 1, original.action_space.shape))
    state = verifier._physics_state(original)
    copy.reset(seed=5)
    copy.step(rng.uniform(-1, 1, copy.action_space.shape))  # somewhere else first
    verifier._set_physics_state(copy, state)
    for _ in range(5):
        a = rng.uniform(-1, 1, original.action_space.shape)
        ob_a, r_a, *_ = original.step(a)
        ob_b, r_b, *_ = copy.step(a)
        np.testing.assert_allclose(ob_a, ob_b, atol=1e-6)
        assert r_a == r_b


def test_summary_of_known_records():
    records = [
        verifier._state_record(0, np.array([3.0, 1.0, 2.0]), np.array([-1.0, -5.0, -3.0]), np.array([1, 0, 0])),
        verifier._state_record(25, np.array([0.0, 1.0, 2.0]), np.array([-1.0, -1.0, -1.0]), np.array([1, 1, 1])),
    ]
    s = verifier.summarize(records)
    assert s["states"] == 2 and s["states_ranked"] == 1  # the second state's returns are all equal
    assert s["spearman_mean"] == pytest.approx(1.0)
    assert s["success_argmax_q"] == 1.0 and s["success_mean_candidate"] == pytest.approx((1 / 3 + 1) / 2)
    assert s["success_best_candidate"] == 1.0
    assert s["q_mean"] == pytest.approx(1.5) and s["mc_return_mean"] == pytest.approx((-3 - 1) / 2)
    assert s["overestimation"] == pytest.approx(1.5 + 2)


def test_probe_of_a_tiny_sorl_run(tiny_sorl_run):
    run, _, task = tiny_sorl_run
    record = verifier.verifier_quality(run, K=2, N=3, states=2, probe_steps=(0, 4))
    assert record["K"] == 2 and record["N"] == 3 and record["step"] == 20 and len(record["states"]) == 2
    assert [s["t"] for s in record["states"]] == [0, 4]
    for s in record["states"]:
        assert len(s["q"]) == len(s["mc_return"]) == len(s["success"]) == 3
        best = int(np.argmax(s["q"]))
        assert s["argmax_return"] == pytest.approx(s["mc_return"][best]) and s["argmax_success"] == s["success"][best]
        # a -1-per-step reward discounted over at most the episode's length bounds every return
        assert all(-1 / (1 - record["discount"]) <= r <= 0 for r in s["mc_return"])
    path = verifier.write_verifier(run, record)
    assert json.loads(path.read_text())["summary"]["states"] == 2
    table = verifier.format_verifier([run])
    assert f"{task} sorl seed 1 | 20 | 2 | 3 | 2 |" in table


def test_a_run_without_a_verifier_is_refused(tmp_path):
    with pytest.raises(SorlError, match="no verifier.json"):
        verifier.format_verifier([tmp_path])


def _tiny_agent(name: str, obs_dim: int = 3, action_dim: int = 2):
    cls = get_agent(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = dataclasses.replace(cls.Config(), **{k: v for k, v in TINY.items() if k in fields})
    return cls.create(0, jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim)), config)


def test_the_probed_agents_are_the_registered_ones_with_a_verifier_score():
    assert verifier.verifier_agents() == [n for n, c in AGENTS.items() if hasattr(c, "aggregated_q")]
    assert {"sorl", "ifql", "idql", "cac", "fawac", "fbrac", "fql"} <= set(verifier.verifier_agents())
    assert not {"bc", "flow-bc", "srpo"} & set(verifier.verifier_agents())  # nothing to rank


@pytest.mark.parametrize("name", verifier.verifier_agents())
def test_aggregated_q_is_the_score_best_of_n_picks_by(name):
    """The candidates by hand (candidate i from `split(rng, N)[i]`, as `sample_best_of_n`), scored with
    `aggregated_q`: their argmax is the action `sample_actions(K, N)` returns."""
    agent, K, N = _tiny_agent(name), 2, 5
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    rng = jax.random.PRNGKey(2)
    candidates = jnp.stack([agent.sample_actions(obs, key, K=K, N=1) for key in jax.random.split(rng, N)])
    scores = np.stack([np.asarray(agent.aggregated_q(obs, c, K)) for c in candidates])  # [N, B]
    assert scores.shape == (N, 4) and np.all(np.ptp(scores, axis=0) > 0)  # an untrained critic still ranks them
    picked = np.asarray(candidates)[np.argmax(scores, axis=0), np.arange(4)]
    np.testing.assert_allclose(np.asarray(agent.sample_actions(obs, rng, K=K, N=N)), picked, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_ifql_run(tiny_sorl_run, tmp_path_factory):
    """An IFQL run of 20 updates (2x16 networks, its own 10 flow steps) on the tiny SORL run's dataset."""
    from runner import train

    _, data, task = tiny_sorl_run
    run = tmp_path_factory.mktemp("tiny-ifql-run") / "run"
    train.train(
        task, "ifql", seed=2, run_dir=run, data_dir=data, steps=20, log_interval=10, eval_interval=20,
        eval_episodes=1, eval_K="1", eval_N="1", eval_workers=1, eval_max_episode_steps=5,
        agent_overrides={k: str(v) for k, v in TINY.items()}, progress=False,
    )  # fmt: skip
    return run, task


def test_an_ifql_run_is_probed_through_the_cli_at_its_own_K(tiny_ifql_run, capsys):
    run, task = tiny_ifql_run
    cli.main(["verifier", str(run), "--K", "10", "--N", "3", "--states", "1", "--seed", "1"])
    assert f"{task} ifql seed 2 | 20 | 10 | 3 | 1 |" in capsys.readouterr().out
    record = json.loads((run / verifier.VERIFIER_JSON).read_text())
    assert (record["agent"], record["K"], record["N"], record["probe_seed"], record["step"]) == ("ifql", 10, 3, 1, 20)
    assert record["summary"]["states"] == 1 and set(record["summary"]) >= {"spearman_mean", "overestimation"}
    (state,) = record["states"]
    assert state["t"] == 0 and len(state["q"]) == len(state["mc_return"]) == len(state["success"]) == 3
    assert state["argmax_return"] == pytest.approx(state["mc_return"][int(np.argmax(state["q"]))])


def _fake_run(tiny_sorl_run, tmp_path, name: str, **config):
    """A run directory whose config.json is `name`'s (no checkpoint: every check here comes before it is read)."""
    sorl_run, _, _ = tiny_sorl_run
    cfg = json.loads((sorl_run / "config.json").read_text())
    cls = get_agent(name)
    cfg.update(agent=name, agent_config=config_to_dict(dataclasses.replace(cls.Config(), **config)))
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize("name", ["bc", "iql"])
def test_an_agent_without_a_verifier_score_is_refused_in_one_line(tiny_sorl_run, tmp_path, capsys, name):
    """BC ranks nothing; IQL's best-of-N keeps its mode among the candidates, which N policy samples cannot draw."""
    run = _fake_run(tiny_sorl_run, tmp_path, name)
    with pytest.raises(SystemExit):
        cli.main(["verifier", str(run), "--K", "1", "--N", "4"])
    takers = ", ".join(verifier.verifier_agents())
    line = (
        f"error: {run}: agent {name!r} has no Q verifier (it does not rank best-of-N policy samples with a critic); "
        f"the verifier probe needs an agent that does: {takers}\n"
    )
    assert capsys.readouterr().err == line


@pytest.mark.parametrize(
    ("name", "K", "refusal"),
    [("fql", 10, "power of two"), ("idql", 16, "above the diffusion steps"), ("fql", 4, None), ("cac", 7, None)],
)
def test_the_probe_s_K_is_one_the_agent_takes(tiny_sorl_run, tmp_path, name, K, refusal):
    run = _fake_run(tiny_sorl_run, tmp_path, name)
    if refusal is None:  # past the K: only the missing checkpoint is left
        refusal = "no complete checkpoint"
    with pytest.raises(SorlError, match=refusal):
        verifier.check_probe(run, "verifier probe", Ks=(K,), N=4, needs_verifier=True)
