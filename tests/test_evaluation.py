"""Vectorised evaluation: lockstep episodes, one batched policy call per step, workers, reproducibility."""

from __future__ import annotations

import csv
import json

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_loop import _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from cli import main as cli
from runner import evaluation
from runner.evaluation import EnvPool, evaluate, format_grid, parse_int_list, run_episodes
from sorl.errors import SorlError

# ------------------------------------------------------------------------------------------ parsing


def test_parse_int_list():
    assert parse_int_list("1,2,4,8", "--K") == (1, 2, 4, 8)
    assert parse_int_list(" 1, 4 ,16 ", "--N") == (1, 4, 16)
    assert parse_int_list("2,2,1", "--K") == (2, 1)
    assert parse_int_list([1, 2], "K") == (1, 2)
    assert parse_int_list(4, "K") == (4,)
    for junk in ["", "1,,2", "a", "1.5", "1,two", ",", "0x10"]:
        with pytest.raises(SorlError, match="--K"):
            parse_int_list(junk, "--K")


@pytest.mark.parametrize(
    ("Ks", "Ns", "match"),
    [((3,), (1,), "power of two"), ((16,), (1,), "above"), ((1,), (0,), "N=0"), ((0,), (1,), "power of two")],
)
def test_grid_validation(Ks, Ns, match):
    class A:
        max_K = 8

    with pytest.raises(SorlError, match=match):
        evaluate(A(), "unused", Ks, Ns, episodes=1, policy=lambda *a: None)


def test_bad_episodes():
    with pytest.raises(SorlError, match="episodes"):
        evaluate(object(), "unused", (1,), (1,), episodes=0, policy=lambda *a: None)


def test_episode_seed_is_deterministic_and_distinct():
    seeds = [evaluation.episode_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100
    assert seeds == [evaluation.episode_seed(0, i) for i in range(100)]
    assert evaluation.episode_seed(1, 0) != seeds[0]


# --------------------------------------------------------------------------- a fake environment, exact


class CountdownEnv(gymnasium.Env):
    """Episode length 2 + seed % 5; reward = action[0] per step; success iff seed is even; obs = [seed, t]."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.seed_, self.t = int(seed), 0
        self.length = 2 + self.seed_ % 5
        return np.array([self.seed_ % 1000, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        info = {"success": done and self.seed_ % 2 == 0}
        return np.array([self.seed_ % 1000, self.t], np.float32), float(action[0]), done, False, info


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setattr(evaluation, "_make_env", lambda task, timing, max_steps: CountdownEnv())


@pytest.mark.parametrize("pool_size", [7, 3, 1])
def test_run_episodes_exact(fake_env, pool_size):
    episodes, seed = 7, 5
    seeds = [evaluation.episode_seed(seed, i) for i in range(episodes)]
    lengths = np.array([2 + s % 5 for s in seeds])
    success = np.array([s % 2 == 0 for s in seeds])
    calls = []

    def act(obs, t):
        calls.append(obs.shape)
        return np.full((obs.shape[0], 1), 0.5, np.float32)

    with EnvPool("fake", pool_size, workers=1) as pool:
        r = run_episodes(pool, act, episodes, seed)
    # fixed batch shape: every call answers the whole pool
    assert set(calls) == {(pool_size, 2)}
    if pool_size == episodes:  # all episodes in lockstep: one call per step of the longest episode
        assert len(calls) == lengths.max()
    np.testing.assert_array_equal(r["per_episode"]["length"], lengths)
    np.testing.assert_array_equal(r["per_episode"]["success"], success)
    np.testing.assert_allclose(r["per_episode"]["return"], 0.5 * lengths)
    assert r["success"] == pytest.approx(success.mean())
    assert r["length"] == pytest.approx(lengths.mean())
    assert r["episodes"] == episodes
    assert r["env_steps"] == lengths.sum()


def test_evaluate_grid_one_policy_call_per_step(fake_env):
    class Agent:
        max_K = 4

    calls = []

    def policy(agent, obs, rng, K, N):
        calls.append((K, N, obs.shape))
        return jnp.full((obs.shape[0], 1), K / 4 - 0.01 * N)  # return encodes the cell

    res = evaluate(Agent(), "fake", "1,4", "1,2", episodes=6, seed=3, workers=1, policy=policy)
    assert [(r["K"], r["N"]) for r in res] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    seeds = [evaluation.episode_seed(3, i) for i in range(6)]
    max_len = max(2 + s % 5 for s in seeds)
    mean_len = np.mean([2 + s % 5 for s in seeds])
    for r in res:
        assert set(evaluation.RESULT_KEYS) <= set(r)
        assert 0.0 <= r["success"] <= 1.0
        assert r["return"] == pytest.approx((r["K"] / 4 - 0.01 * r["N"]) * mean_len, rel=1e-5)
        assert r["length"] == pytest.approx(mean_len)
        assert sum(c[:2] == (r["K"], r["N"]) for c in calls) == max_len
    assert {c[2] for c in calls} == {(6, 2)}


def test_evaluate_with_fewer_envs_than_episodes(fake_env):
    class Agent:
        max_K = 1

    shapes = []

    def policy(agent, obs, rng, K, N):
        shapes.append(obs.shape)
        return jnp.full((obs.shape[0], 1), 0.5)

    seeds = [evaluation.episode_seed(3, i) for i in range(5)]
    lengths = np.array([2 + s % 5 for s in seeds])
    (r,) = evaluate(Agent(), "fake", [1], [1], episodes=5, seed=3, workers=1, envs=2, policy=policy)
    assert set(shapes) == {(2, 2)}  # two environments stepped at once, every episode run
    assert r["episodes"] == 5 and r["env_steps"] == lengths.sum()
    assert r["length"] == pytest.approx(lengths.mean()) and r["return"] == pytest.approx(0.5 * lengths.mean())
    assert r["success"] == pytest.approx(np.mean([s % 2 == 0 for s in seeds]))
    with pytest.raises(SorlError, match="envs=0"):
        evaluate(Agent(), "fake", [1], [1], episodes=5, envs=0, policy=policy)


def test_evaluate_policy_keys_reproducible(fake_env):
    class Agent:
        max_K = 1

    def policy(agent, obs, rng, K, N):
        return jax.random.uniform(rng, (obs.shape[0], 1), minval=-1, maxval=1)

    a = evaluate(Agent(), "fake", [1], [1], episodes=5, seed=11, workers=1, policy=policy)
    b = evaluate(Agent(), "fake", [1], [1], episodes=5, seed=11, workers=1, policy=policy)
    c = evaluate(Agent(), "fake", [1], [1], episodes=5, seed=12, workers=1, policy=policy)
    assert a[0]["return"] == b[0]["return"]
    assert a[0]["return"] != c[0]["return"]


def test_format_grid():
    grid = [
        {"K": 1, "N": 1, "success": 0.25},
        {"K": 1, "N": 4, "success": 0.5},
        {"K": 2, "N": 1, "success": 1.0},
        {"K": 2, "N": 4, "success": 0.0},
    ]
    text = format_grid(grid, "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert "N=1" in lines[2] and "N=4" in lines[2]
    assert lines[3].split() == ["1", "25.0", "50.0"]
    assert lines[4].split() == ["2", "100.0", "0.0"]


# ------------------------------------------------------------------------ real OGBench environments


def _real_env_available() -> bool:
    try:
        from envs.datasets import make_env  # noqa: F401
    except ImportError:
        return False
    return True


needs_envs = pytest.mark.skipif(not _real_env_available(), reason="envs.datasets.make_env not available yet")


@needs_envs
def test_workers_match_in_process():
    """Same numbers with the environments in 2 spawned worker processes as in this process."""
    task = "cube-single-play-singletask-task1-v0"

    def policy(agent, obs, rng, K, N):  # deterministic, observation-dependent
        return jnp.tanh(obs[:, :5] * 3.0)

    class Agent:
        max_K = 1

    kw = dict(episodes=3, seed=0, success_timing="pre", max_episode_steps=12, policy=policy)
    local = evaluate(Agent(), task, [1], [1], workers=1, **kw)
    multi = evaluate(Agent(), task, [1], [1], workers=2, **kw)
    for a, b in zip(local, multi, strict=True):
        assert a["length"] == b["length"] == 12
        assert a["return"] == pytest.approx(b["return"])
        assert a["success"] == b["success"]
        assert a["env_steps"] == b["env_steps"] == 36


@needs_envs
def test_pool_reports_worker_failure(monkeypatch):
    """A worker that cannot make its environment: a SorlError stays one line, anything else is an error."""
    with pytest.raises((SorlError, RuntimeError)):
        EnvPool("no-such-task-singletask-task1-v0", 2, workers=2)


# ------------------------------------------------------------------------------ scaling.json: merged, never lost


@pytest.fixture
def stand_in(request):
    """test_train_loop's stand-in agent ("tiny", K up to 4), synthetic dataset and evaluation env."""
    return request.getfixturevalue("_stand_in")


@pytest.fixture
def trained(tmp_path, stand_in):
    """A stand-in run trained for 10 updates."""
    _train(tmp_path, "run", steps=10, eval_interval=10)
    return tmp_path / "run"


def _eval(run, capsys, *flags: str) -> tuple[dict, str]:
    cli.main(["eval", str(run), "--workers", "1", "--episodes", "2", *flags])
    return json.loads((run / "scaling.json").read_text()), capsys.readouterr().out


def _eval_grid(run, capsys, K: tuple[int, ...], N: tuple[int, ...]) -> tuple[dict, str, list[dict]]:
    grid = cli.eval_from_cli(cli.EvalArgs(run, K=K, N=N, episodes=2, workers=1))
    return json.loads((run / "scaling.json").read_text()), capsys.readouterr().out, json.loads(json.dumps(grid))


def _cells(scaling: dict) -> list[tuple[int, int]]:
    return [(c["K"], c["N"]) for c in scaling["grid"]]


def test_eval_keeps_the_cells_it_does_not_redo(trained, capsys):
    first, _ = _eval(trained, capsys, "--K", "1,2,4", "--N", "1")
    assert _cells(first) == [(1, 1), (2, 1), (4, 1)]
    second, out, grid = _eval_grid(trained, capsys, K=(1,), N=(1, 3))
    # the earlier cells not evaluated now are kept as they were; (1, 1), evaluated again, is the new one
    assert _cells(second) == [(1, 1), (1, 3), (2, 1), (4, 1)]
    assert second["grid"][2:] == first["grid"][1:] and second["grid"][:2] == grid
    assert "kept from the earlier scaling.json (not evaluated now): K=2 N=1, K=4 N=1" in out
    assert {k: second[k] for k in ("step", "episodes", "eval_seed")} == {"step": 10, "episodes": 2, "eval_seed": 0}
    with (trained / "scaling.csv").open() as f:  # the CSV holds the same merged grid
        assert [(int(r["K"]), int(r["N"])) for r in csv.DictReader(f)] == _cells(second)
    # --replace starts afresh
    third, out = _eval(trained, capsys, "--K", "2", "--N", "1", "--replace")
    assert _cells(third) == [(2, 1)] and "kept from" not in out


def test_eval_of_another_protocol_replaces_a_grid_it_covers_and_refuses_to_drop_cells(trained, capsys):
    _eval(trained, capsys, "--K", "1", "--N", "1")
    other, out = _eval(trained, capsys, "--K", "1,2", "--N", "1", "--seed", "3")  # covers (1, 1): replaced
    assert _cells(other) == [(1, 1), (2, 1)] and other["eval_seed"] == 3 and "kept from" not in out
    before = (trained / "scaling.json").read_bytes()
    with pytest.raises(SystemExit):
        _eval(trained, capsys, "--K", "1", "--N", "1")  # seed 0 again: (2, 1) of seed 3 would be dropped
    err = capsys.readouterr().err
    assert "holds cells K=2 N=1 made with eval_seed=3, not eval_seed=0" in err and "--replace" in err
    assert (trained / "scaling.json").read_bytes() == before
