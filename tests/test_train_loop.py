"""The agent-agnostic training loop, checkpoints and run directory, with a tiny stand-in agent.

The stand-in is a linear behaviour-cloning policy trained by SGD; the dataset is synthetic and the
evaluation environment a tiny gymnasium env, so these tests exercise only the loop's own machinery.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import types
from functools import partial

import flax
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
import envs
from cli import main as cli
from runner import evaluation, runs
from runner import train as train_lib
from runner.checkpoint import Checkpointer
from runner.settings import TrainSettings
from sorl.agent import Agent
from sorl.data import ACTION_CLIP, sample_batch, to_device
from sorl.errors import SorlError

OBS, ACT = 3, 2
TASK = "cube-single-play-singletask-task1-v0"
TRACES = {"update": 0}

# ------------------------------------------------------------------------------------- the stand-in


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    batch_size: int = 16
    lr: float = 0.1
    denoise_timesteps: int = 4
    nan_at: int = -1
    """Test hook: the loss is NaN at this update."""
    param_nan_at: int = -1
    """Test hook: the weights turn NaN at this update while every logged value stays finite. A config field, not a
    subclass with its own `update`: jaxlib's PyTreeDef equality ignores a dataclass node's type (only its fields and
    static data count), so a subclass with the same config can be served the parent's compiled chunk."""

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise SorlError(f"--agent.batch_size={self.batch_size}: must be positive")
        if self.lr <= 0:
            raise SorlError(f"--agent.lr={self.lr}: must be positive")


class TinyAgent(Agent):
    w: jax.Array
    b: jax.Array
    rng: jax.Array  # typed key: checkpoints must round-trip it
    count: jax.Array
    config: TinyConfig = flax.struct.field(pytree_node=False)

    Config = TinyConfig

    @property
    def max_K(self) -> int:
        return self.config.denoise_timesteps

    @classmethod
    def create(cls, rng, example_observations, example_actions, config):
        k1, k2 = jax.random.split(rng)
        w = 0.1 * jax.random.normal(k1, (example_observations.shape[-1], example_actions.shape[-1]))
        return cls(
            w,
            jnp.zeros(example_actions.shape[-1]),
            jax.random.key(jax.random.randint(k2, (), 0, 2**30)),
            jnp.int32(0),
            config,
        )

    def update(self, batch):
        TRACES["update"] += 1

        def loss_fn(w, b):
            return jnp.mean((batch["observations"] @ w + b - batch["actions"]) ** 2)

        loss, (gw, gb) = jax.value_and_grad(loss_fn, argnums=(0, 1))(self.w, self.b)
        rng, key = jax.random.split(self.rng)
        noise = 1e-3 * jax.random.normal(key, self.w.shape)
        loss = jnp.where(self.count == self.config.nan_at, jnp.nan, loss)
        w = jnp.where(self.count == self.config.param_nan_at, jnp.nan, self.w - self.config.lr * gw + noise)
        new = self.replace(w=w, b=self.b - self.config.lr * gb, rng=rng, count=self.count + 1)
        return new, {"loss": loss, "w_norm": jnp.linalg.norm(self.w)}

    def sample_actions(self, observations, rng, K, N):
        return jnp.clip(observations @ self.w + self.b + 0.0 * jax.random.normal(rng, (1,)), -1, 1)


class TinyEnv(gymnasium.Env):
    """Succeeds when the first action component is positive at the last step; 5 steps."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (ACT,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        self.x = np.random.default_rng(seed).normal(size=OBS).astype(np.float32)
        return self.x, {}

    def step(self, action):
        self.t += 1
        done = self.t >= 5
        return self.x, float(action[0]), False, done, {"success": bool(done and action[0] > 0)}


def _dataset(n=256, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    act = np.clip(obs[:, :ACT] * 0.5, -1, 1).astype(np.float32)
    return {
        "observations": obs,
        "actions": act,
        "rewards": np.zeros(n, np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": np.zeros(n, np.float32),
        "next_observations": obs,
    }


@pytest.fixture
def stand_in(monkeypatch):
    """`tiny` agent, a synthetic dataset for any task, and TinyEnv for evaluation (in-process)."""
    real_get_agent = agents.get_agent
    monkeypatch.setattr(agents, "get_agent", lambda name: TinyAgent if name == "tiny" else real_get_agent(name))
    loads = []

    def load_task(task_name, data_dir=None, *, success_timing="pre", generate=True, episodes=None, workers=None):
        loads.append(task_name)
        return TinyEnv(), _dataset(), _dataset(32, 1)

    try:
        import envs.datasets as mod
    except ImportError:
        mod = types.ModuleType("envs.datasets")
        monkeypatch.setitem(sys.modules, "envs.datasets", mod)
        monkeypatch.setattr(envs, "datasets", mod, raising=False)
    monkeypatch.setattr(mod, "load_task", load_task, raising=False)
    monkeypatch.setattr(evaluation, "_make_env", lambda task, timing, max_steps: TinyEnv())
    return loads


def _train(tmp_path, name="run", **kw):
    args = dict(
        agent="tiny",
        steps=60,
        seed=1,
        run_dir=tmp_path / name,
        log_interval=10,
        eval_interval=30,
        eval_episodes=3,
        eval_K="1,4",
        eval_N="1,2",
        eval_workers=1,
        progress=False,
    )
    args.update(kw)
    return train_lib.train(args.pop("task", TASK), **args)


def _params(run_dir):
    agent, step = train_lib.load_run(run_dir)
    return agent, step


# ---------------------------------------------------------------------------------------- data layer


def test_to_device_and_sample_batch():
    data = _dataset(50)
    data["actions"][0] = [1.0, -1.0]
    np.testing.assert_allclose(to_device(data)["actions"][0], [ACTION_CLIP, -ACTION_CLIP])
    ds = to_device(_dataset(50))
    assert set(ds) == {"observations", "actions", "rewards", "masks", "next_observations"}
    assert all(v.dtype == jnp.float32 for v in ds.values())
    b1 = jax.jit(sample_batch, static_argnums=2)(ds, jax.random.PRNGKey(0), 7)
    b2 = sample_batch(ds, jax.random.PRNGKey(0), 7)
    assert b1["observations"].shape == (7, OBS) and b1["rewards"].shape == (7,)
    np.testing.assert_array_equal(b1["observations"], b2["observations"])
    # every sampled row is a dataset row, with its fields kept together
    rows = {tuple(np.round(r, 5)) for r in np.asarray(ds["observations"])}
    assert all(tuple(np.round(r, 5)) in rows for r in np.asarray(b1["observations"]))
    np.testing.assert_allclose(b1["actions"], np.clip(b1["observations"][:, :ACT] * 0.5, -ACTION_CLIP, ACTION_CLIP))


def test_to_device_rejects_bad_data():
    data = _dataset(10)
    del data["masks"]
    with pytest.raises(SorlError, match="masks"):
        to_device(data)
    data = _dataset(10)
    data["rewards"] = data["rewards"][:5]
    with pytest.raises(SorlError, match="different lengths"):
        to_device(data)


def test_chunk_equals_update_loop():
    config = TinyConfig()
    ds = to_device(_dataset())
    state = train_lib.initial_state(TinyAgent, config, 0, np.zeros((1, OBS)), np.zeros((1, ACT)))
    agent, rng = state["agent"], state["data_rng"]
    ref_agent, ref_rng, losses = agent, rng, []
    for _ in range(5):
        ref_rng, key = jax.random.split(ref_rng)
        ref_agent, info = ref_agent.update(sample_batch(ds, key, config.batch_size))
        losses.append(float(info["loss"]))
    out_agent, out_rng, infos = train_lib.train_chunk_jit(agent, rng, ds, batch_size=config.batch_size, num_updates=5)
    np.testing.assert_allclose(out_agent.w, ref_agent.w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_rng, ref_rng)
    assert infos["loss"].shape == (5,)
    np.testing.assert_allclose(infos["loss"], losses, rtol=1e-5)


def test_chunk_vmaps_over_seeds():
    """Seeds as a batch axis: a vmapped chunk equals the chunks run one seed at a time."""
    config = TinyConfig()
    ds = to_device(_dataset())
    states = [train_lib.initial_state(TinyAgent, config, s, np.zeros((1, OBS)), np.zeros((1, ACT))) for s in (0, 1)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[(st["agent"], st["data_rng"]) for st in states])
    chunk = jax.vmap(partial(train_lib.train_chunk, batch_size=8, num_updates=4), in_axes=(0, 0, None))
    agents_v, rngs_v, infos_v = jax.jit(chunk)(*stacked, ds)
    for i, st in enumerate(states):
        a, r, info = train_lib.train_chunk(st["agent"], st["data_rng"], ds, batch_size=8, num_updates=4)
        np.testing.assert_allclose(agents_v.w[i], a.w, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rngs_v[i], r)
        np.testing.assert_allclose(infos_v["loss"][i], info["loss"], rtol=1e-5)


def test_distinct_buffers():
    x = jnp.arange(3.0)
    tree = {"params": x, "target": x, "other": jnp.ones(2)}
    out = train_lib.distinct_buffers(tree)
    ptrs = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(out)]
    assert len(set(ptrs)) == 3
    np.testing.assert_array_equal(out["target"], x)
    assert out["params"] is x  # first use kept, only repeats copied


def test_boundaries():
    assert train_lib.boundaries(0, 60, (10, 30, 30)) == [10, 20, 30, 40, 50, 60]
    assert train_lib.boundaries(0, 25, (10, 15)) == [10, 15, 20, 25]
    assert train_lib.boundaries(30, 60, (10,)) == [40, 50, 60]
    assert train_lib.boundaries(0, 5, (1000, 100_000)) == [5]


# ---------------------------------------------------------------------------------------- a whole run


def test_trainer_takes_agent_data_and_environments_as_arguments(tmp_path):
    """No registry, dataset or environment patched: the Trainer is handed the stand-ins."""
    loads, made = [], []

    def load_task(task_name, data_dir=None, *, success_timing="pre", episodes=None):
        loads.append((task_name, success_timing, episodes))
        return TinyEnv(), _dataset(), _dataset(32, 1)

    def make_env(task_name, success_timing, max_episode_steps):
        made.append(task_name)
        return TinyEnv()

    settings = TrainSettings(
        steps=40, log_interval=10, eval_interval=20, eval_episodes=2, eval_K="1,2", eval_N="1", eval_workers=1,
        train_episodes=7, progress=False,
    )  # fmt: skip

    def trainer(name, **kw):
        return train_lib.Trainer(
            TASK, "tiny", [3], lambda task, seed: tmp_path / name, settings,
            agent_cls=TinyAgent, load_task=load_task, make_env=make_env, **kw,
        )  # fmt: skip

    (res,) = trainer("run").run()
    assert res["status"] == "complete" and res["steps"] == 40 and res["seed"] == 3
    assert loads == [(TASK, "pre", 7)] and made == [TASK, TASK]  # one pool of eval_episodes environments
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["agent_config"] == dataclasses.asdict(TinyConfig()) and cfg["dataset"]["train_episodes"] == 7
    assert cfg["train"]["checkpoint_interval"] == 20 and cfg["eval"]["K"] == [1, 2]
    with (tmp_path / "run" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    with pytest.raises(SorlError, match="non-finite loss at step 15"):
        trainer("nan", inject_nan_at=15).run()
    assert json.loads((tmp_path / "nan" / "results.json").read_text())["status"] == "failed"


class _TwoStepAgent(TinyAgent):
    """A variant of the stand-in (two SGD steps per update) that keeps the stand-in's Config."""

    def update(self, batch):
        new, _ = TinyAgent.update(self, batch)
        return TinyAgent.update(new, batch)


@dataclasses.dataclass(frozen=True)
class _TwoStepConfig(TinyConfig):
    pass


class _TwoStepOwnConfigAgent(_TwoStepAgent):
    Config = _TwoStepConfig


def test_an_agent_variant_needs_a_config_class_of_its_own():
    # jaxlib compares a dataclass pytree node by its fields and static data, not its type: a subclass with its
    # parent's config could be served the parent's compiled update, so the lookup refuses it in one line
    with pytest.raises(SorlError, match=r"^agent class _TwoStepAgent has the Config of TinyAgent: give it its own"):
        train_lib.resolve_agent_config("two-step", TASK, agent_cls=_TwoStepAgent)
    agent_cls, config, _ = train_lib.resolve_agent_config("two-step", TASK, agent_cls=_TwoStepOwnConfigAgent)
    assert type(config) is _TwoStepConfig
    obs, act = jnp.zeros((1, OBS)), jnp.zeros((1, ACT))
    parent = TinyAgent.create(jax.random.PRNGKey(0), obs, act, TinyConfig())
    child = agent_cls.create(jax.random.PRNGKey(0), obs, act, config)
    assert jax.tree_util.tree_structure(child) != jax.tree_util.tree_structure(parent)  # two cache keys
    for name in agents.AGENTS:  # every registered agent has a Config of its own
        assert agents.get_agent(name) is agents.AGENTS[name]


def test_validation_loss_is_the_training_loss_on_validation_batches(tmp_path, stand_in):
    _train(tmp_path, validation_interval=20, validation_batches=3)
    run = tmp_path / "run"
    with (run / "validation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [20, 40, 60] and set(rows[0]) == {"step", "val/loss"}  # losses only
    assert float(rows[-1]["val/loss"]) < float(rows[0]["val/loss"])  # it learns, on data it never trains on
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["validation_interval"] == 20 and cfg["train"]["validation_batches"] == 3
    # the logged value, recomputed from the final checkpoint and the documented batch key
    agent, _ = train_lib.load_run(run)
    val = to_device(_dataset(32, 1))
    keys = jax.random.split(train_lib.validation_key(1, 60), 3)
    losses = [
        jnp.mean((b["observations"] @ agent.w + agent.b - b["actions"]) ** 2)
        for b in (sample_batch(val, k, TinyConfig.batch_size) for k in keys)
    ]
    assert float(rows[-1]["val/loss"]) == pytest.approx(float(np.mean(losses)), rel=1e-5)
    # a run continued from its checkpoint logs the same validation losses
    _train(tmp_path, "split", steps=30, validation_interval=20, validation_batches=3)
    _train(tmp_path, "split", steps=60, validation_interval=20, validation_batches=3)
    with (tmp_path / "split" / "validation.csv").open() as f:
        split = {r["step"]: r["val/loss"] for r in csv.DictReader(f)}
    assert [split[r["step"]] for r in rows] == [r["val/loss"] for r in rows]


def test_validation_needs_a_validation_dataset(tmp_path):
    settings = TrainSettings(
        steps=10, log_interval=10, eval_interval=10, validation_interval=10, progress=False,
        data_dir=tmp_path / "my data",
    )  # fmt: skip
    trainer = train_lib.Trainer(
        TASK, "tiny", [0], lambda task, seed: tmp_path / "run", settings, agent_cls=TinyAgent,
        load_task=lambda *a, **k: (TinyEnv(), _dataset(), None), make_env=lambda *a: TinyEnv(),
    )  # fmt: skip
    with pytest.raises(SorlError, match="no validation dataset") as e:
        trainer.run()
    # the suggested command regenerates the user's data directory, not the default one
    assert f"`sorl data generate cube-single-play --force --data-dir '{tmp_path / 'my data'}'`" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_writes_run_directory(tmp_path, stand_in):
    jax.clear_caches()  # an earlier test in the session may have compiled this very chunk already
    TRACES["update"] = 0
    res = _train(tmp_path)
    assert TRACES["update"] == 1, "the chunk must be traced/compiled once and reused"
    run = runs.RunDir(tmp_path / "run")
    cfg = json.loads(run.config.read_text())
    assert cfg["task"] == TASK and cfg["env"] == "cube-single-play" and cfg["agent"] == "tiny" and cfg["seed"] == 1
    assert cfg["success_timing"] == "pre" and cfg["ogbench_version"] == train_lib.ogbench_version() != "unknown"
    assert cfg["agent_config"] == dataclasses.asdict(TinyConfig())
    assert (cfg["obs_dim"], cfg["action_dim"]) == (OBS, ACT)

    with run.train_log.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "w_norm", "updates_per_s", "time_s"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learns
    with run.eval_log.open() as f:
        ev = list(csv.DictReader(f))
    assert [(int(r["step"]), int(r["K"]), int(r["N"])) for r in ev] == [
        (s, k, n) for s in (30, 60) for k in (1, 4) for n in (1, 2)
    ]

    assert Checkpointer(run.checkpoints).all_steps() == [30, 60]
    results = json.loads(run.results.read_text())
    assert results == json.loads(json.dumps(res))
    assert results["status"] == "complete"
    assert results["success_unit"] == "fraction"
    for key in ("task", "agent", "seed", "steps", "success_timing", "ogbench_version", "config", "final"):
        assert key in results
    assert results["steps"] == 60 and results["seed"] == 1
    assert [(r["K"], r["N"]) for r in results["final"]] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    for r in results["final"]:
        assert set(r) == {"K", "N", "success", "return", "length", "episodes"}
        assert 0.0 <= r["success"] <= 1.0 and r["episodes"] == 3 and r["length"] == 5

    agent, step = train_lib.load_run(run)
    assert step == 60 and int(agent.count) == 60


def test_rerun_of_complete_run_returns_its_results(tmp_path, stand_in, capsys):
    first = _train(tmp_path)
    mtime = (tmp_path / "run" / "results.json").stat().st_mtime_ns
    again = _train(tmp_path)
    assert again == json.loads(json.dumps(first))
    assert "already complete" in capsys.readouterr().out
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns == mtime


def test_continue_from_checkpoint_is_exact(tmp_path, stand_in):
    """A run extended from its last checkpoint equals an uninterrupted run, bit for bit, logs included."""
    _train(tmp_path, "whole", steps=60)
    _train(tmp_path, "split", steps=30)
    _train(tmp_path, "split", steps=60)
    a, _ = train_lib.load_run(tmp_path / "whole")
    b, _ = train_lib.load_run(tmp_path / "split")
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))

    def log(name, file, drop=("updates_per_s", "time_s")):
        with (tmp_path / name / file).open() as f:
            return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]

    assert log("whole", "train.csv") == log("split", "train.csv")
    assert log("whole", "eval.csv", ("time_s",)) == log("split", "eval.csv", ("time_s",))
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    split = json.loads((tmp_path / "split" / "results.json").read_text())
    assert whole["final"] == split["final"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, stand_in):
    with pytest.raises(SorlError, match=r"non-finite loss at step 46;.*step 30"):
        _train(tmp_path, agent_overrides={"nan_at": "45"})
    run = runs.RunDir(tmp_path / "run")
    results = json.loads(run.results.read_text())
    assert results["status"] == "failed" and "non-finite" in results["error"]
    assert Checkpointer(run.checkpoints).all_steps() == [30]


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(steps=0), "steps=0"),
        (dict(steps=-5), "steps=-5"),
        (dict(log_interval=0), "log_interval"),
        (dict(eval_interval=-1), "eval_interval"),
        (dict(eval_episodes=0), "eval_episodes"),
        (dict(eval_workers=0), "eval_workers"),
        (dict(eval_max_episode_steps=0), "eval_max_episode_steps"),
        (dict(checkpoint_interval=0), "checkpoint_interval"),
        (dict(seed=-1), "seed"),
        (dict(success_timing="later"), "success_timing"),
        (dict(eval_K="1,3"), "power of two"),
        (dict(eval_K="1,x"), "eval_K"),
        (dict(eval_K="8"), "above"),  # the stand-in is trained up to K=4
        (dict(eval_N="0"), "N=0"),
        (dict(agent="nope"), "unknown agent"),
        (dict(agent_overrides={"batch_size": "0"}), "batch_size"),
        (dict(agent_overrides={"lr": "-1"}), "lr"),
        (dict(agent_overrides={"nonsense": "1"}), "unknown setting"),
        (dict(task="cube-singel-play"), "cube-single-play"),
    ],
)
def test_bad_input_is_one_sorl_error(tmp_path, stand_in, kw, match):
    with pytest.raises(SorlError, match=match) as e:
        _train(tmp_path, **kw)
    assert "\n" not in str(e.value)


def test_run_dir_refusals(tmp_path, stand_in):
    _train(tmp_path, steps=10, eval_interval=10)
    with pytest.raises(SorlError, match="task="):
        _train(tmp_path, task="cube-single-play-singletask-task2-v0")
    with pytest.raises(SorlError, match="agent="):
        _train(tmp_path, agent="sorl")
    with pytest.raises(SorlError, match="seed="):
        _train(tmp_path, seed=2)
    with pytest.raises(SorlError, match="different agent config"):
        _train(tmp_path, agent_overrides={"lr": "0.05"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(SorlError, match="is a file"):
        _train(tmp_path, "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(SorlError, match="not empty"):
        _train(tmp_path, "other")
    with pytest.raises(SorlError, match=r"checkpoint at step 10 > --steps 5"):
        _train(tmp_path, steps=5)


def test_run_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    import errno
    import os

    config = tmp_path / "config.json"
    runs.write_json(config, {"task": "before"})
    log = runs.CsvLog(tmp_path / "train.csv")
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert log.kept_after(20) is not None and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(SorlError, match=r"could not write .*config.json: No space left on device"):
        runs.write_json(config, {"task": "after"})
    with pytest.raises(SorlError, match="could not write .*train.csv"):
        log.truncate_after(20)
    # the old files as they were, and no temporary file left beside them
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    log.truncate_after(20)
    assert [int(r["step"]) for r in log.rows()] == [10, 20]


def test_default_run_dir():
    assert str(runs.default_run_dir(TASK, "sorl", 3)) == "runs/cube-single-play-task1/sorl/seed3"
    assert runs.short_task_name("scene-play-singletask-task4-v0") == "scene-play-task4"


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_train_then_eval(tmp_path, stand_in, capsys):
    run_dir = tmp_path / "cli-run"
    cli.main(
        [
            "train",
            "--task",
            "cube-single-play-task1",
            "--agent",
            "tiny",
            "--steps",
            "20",
            "--run-dir",
            str(run_dir),
            "--log-interval",
            "10",
            "--eval-interval",
            "20",
            "--eval-episodes",
            "2",
            "--eval-K",
            "1",
            "--eval-N",
            "1",
            "--eval-workers",
            "1",
            "--progress",
            "False",
            "--agent.lr=0.05",
        ]
    )
    out = capsys.readouterr().out
    assert "success %" in out
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent_config"]["lr"] == 0.05 and cfg["agent_overrides"] == {"lr": "0.05"}

    # `sorl eval` (called as the CLI calls it; the flag spelling is the CLI's business)
    cli.eval_from_cli(cli.EvalArgs(run_dir, K=(1, 2, 4), N=(1, 3), episodes=2, workers=1))
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["K"])
    assert lines[header].split() == ["K", "N=1", "N=3"]
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == ["1", "2", "4"]
    scaling = json.loads((run_dir / "scaling.json").read_text())
    assert scaling["step"] == 20 and scaling["success_unit"] == "fraction" and scaling["episodes"] == 2
    assert [(g["K"], g["N"]) for g in scaling["grid"]] == [(k, n) for k in (1, 2, 4) for n in (1, 3)]
    with (run_dir / "scaling.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(K=(3,)), "power of two"),
        (dict(K=(8,)), "above"),
        (dict(N=(0,)), "N=0"),
        # a K or N that is not a list of integers is refused as the command line is parsed: test_bad_inputs_cli
        (dict(episodes=0), "episodes"),
        (dict(workers=0), "workers"),
        (dict(max_episode_steps=0), "max-episode-steps"),
        (dict(run_dir="missing"), "not a run directory"),
        (dict(run_dir="empty"), "no checkpoints"),
    ],
)
def test_eval_bad_input(tmp_path, stand_in, kw, match):
    _train(tmp_path, steps=10, eval_interval=10)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    run_dir = tmp_path / kw.pop("run_dir", "run")
    with pytest.raises(SorlError, match=match) as e:
        cli.eval_from_cli(cli.EvalArgs(run_dir, **{"workers": 1, "K": (1,), **kw}))
    assert "\n" not in str(e.value)


def test_eval_corrupt_config(tmp_path, stand_in):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(SorlError, match="corrupt"):
        cli.eval_from_cli(cli.EvalArgs(tmp_path / "run"))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--steps", "0"], "steps=0"),
        (["--log-interval", "-3"], "log_interval"),
        (["--eval-K", "1,5"], "power of two"),
        (["--eval-N", "1,0"], "N=0"),
        (["--agent.lr=abc"], "--agent.lr"),
        (["--agent.bogus=1"], "unknown setting --agent.bogus"),
        (["--seed", "9", "--run-dir", "{run}"], "seed="),
    ],
)
def test_cli_train_bad_input_one_line(tmp_path, stand_in, capsys, argv, match):
    _train(tmp_path, steps=10, eval_interval=10)
    base = ["train", "--task", TASK, "--agent", "tiny", "--run-dir", str(tmp_path / "new"), "--progress", "False"]
    with pytest.raises(SystemExit) as e:
        cli.main(base + [a.format(run=tmp_path / "run") for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
