"""Offline-to-online fine-tuning: the replay buffer and its sampler (`sorl.replay`), and the online phase of a run
(`runner.online`) with the stand-in agent and environment, then with SORL in the real cube environment, killed
with SIGKILL in the online phase and resumed bit for bit."""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import sys

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_reliability import ROOT, TINY_SORL, _Background, _env, _log, _rows, _wait_rows, _words, assert_same_run
from test_train_loop import TASK, TinyAgent, TinyConfig, TinyEnv, _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from cli import main as cli
from runner import online as online_lib
from runner import train as train_lib
from runner.checkpoint import Checkpointer
from runner.settings import TrainSettings
from sorl import replay
from sorl.data import BATCH_KEYS
from sorl.errors import SorlError
from sorl.replay import add_transition, make_buffer, sample_online_batch


@pytest.fixture
def stand_in(request):
    return request.getfixturevalue("_stand_in")


def _data(n: int) -> dict[str, jax.Array]:
    """A dataset whose rows say where they come from: reward = -1 - row."""
    return {
        "observations": jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.ones((1, 3)),
        "actions": jnp.zeros((n, 2)),
        "rewards": -1.0 - jnp.arange(n, dtype=jnp.float32),
        "masks": jnp.ones(n),
        "next_observations": jnp.zeros((n, 3)),
    }


def _filled(dataset, capacity: int, size: int):
    """A buffer with `size` online transitions whose rewards are 1000 + their index."""
    buffer = make_buffer(dataset, capacity)
    for i in range(size):
        t = {"observations": np.full(3, i), "actions": np.full(2, 0.01 * i), "rewards": 1000.0 + i, "masks": 1.0}
        buffer = add_transition(buffer, {**t, "next_observations": np.zeros(3)})
    return buffer


# ------------------------------------------------------------------------------------------ the buffer


def test_buffer_is_preallocated_and_fills_row_by_row():
    data = _data(10)
    buffer = _filled(data, 8, 3)
    assert int(buffer["size"]) == 3 and buffer["observations"].shape == (8, 3)
    np.testing.assert_array_equal(buffer["rewards"], [1000, 1001, 1002, 0, 0, 0, 0, 0])
    assert buffer["observations"].dtype == data["observations"].dtype


def test_next_actions_are_the_next_rows_action_as_the_reference_samples_them():
    data = {**_data(4), "next_actions": jnp.zeros((4, 2))}
    buffer = _filled(data, 5, 3)
    # rows 0 and 1 see the action after them; the newest row, its own (min(i + 1, size - 1))
    np.testing.assert_allclose(buffer["next_actions"][:3, 0], [0.01, 0.02, 0.02])


def test_balanced_sampling_draws_the_stated_halves():
    data = _data(50)
    buffer = _filled(data, 20, 5)
    batch = sample_online_batch(data, buffer, jax.random.PRNGKey(0), 64, balanced=True)
    rewards = np.asarray(batch["rewards"])
    assert np.all(rewards[:32] < 0) and np.all(rewards[:32] >= -50)  # the first half: dataset rows
    assert np.all((rewards[32:] >= 1000) & (rewards[32:] <= 1004))  # the second: filled online rows only
    assert len(set(rewards[32:])) > 1
    # fields stay together: an online row's observation is its index
    np.testing.assert_array_equal(batch["observations"][32:, 0], rewards[32:] - 1000)


def test_plain_sampling_is_uniform_over_dataset_and_online_transitions():
    data = _data(30)
    buffer = _filled(data, 100, 10)  # 10 online rows of 40 transitions seen: a quarter of the draws
    batch = jax.jit(sample_online_batch, static_argnums=(3, 4))(data, buffer, jax.random.PRNGKey(1), 4000, False)
    rewards = np.asarray(batch["rewards"])
    online = rewards >= 1000
    assert abs(online.mean() - 0.25) < 0.03
    assert np.all(rewards[online] <= 1009)  # never an unfilled row
    np.testing.assert_array_equal(batch["observations"][~online, 0], -1 - rewards[~online])


# ----------------------------------------------------------------------- the reference's wrap-around


class _ReferenceBuffer:
    """The reference's `ReplayBuffer` (FQL/SORL `utils/datasets.py`) on numpy: `create_from_initial_dataset`
    (plain sampling) or `create` (balanced sampling's separate buffer), `add_transition` with its wrapping pointer."""

    def __init__(self, dataset, size, from_dataset):
        n = len(dataset["rewards"])
        self.data = {k: np.zeros((size, *np.shape(v)[1:]), np.float32) for k, v in dataset.items()}
        if from_dataset:
            for k, v in dataset.items():
                self.data[k][:n] = np.asarray(v)
        self.max_size = size
        self.size = self.pointer = n if from_dataset else 0

    def add_transition(self, transition):
        for k, v in transition.items():
            self.data[k][self.pointer] = v
        self.pointer = (self.pointer + 1) % self.max_size
        self.size = max(self.pointer, self.size)


def _online_transition(j):
    return {"observations": np.full(3, 100.0 + j), "actions": np.full(2, 0.01 * j), "rewards": 1000.0 + j,
            "masks": 1.0, "next_observations": np.zeros(3)}  # fmt: skip


@pytest.mark.parametrize("balanced", [False, True], ids=["plain", "balanced"])
def test_buffer_wraps_as_the_reference_pointer_does(balanced):
    """Dataset of 3 rows, --buffer-size 5, 7 online steps. Plain: the buffer is the dataset, S = max(5, 3 + 1) = 5
    rows, pointer from 3; balanced: a separate buffer of 5 rows, pointer from 0. Hand-computed pointer positions and
    sizes (the reference's size stops at S - 1) after each addition, and the rows it samples equal to ours, row for
    row."""
    data = _data(3)
    n_data, buffer_size, online_steps = 3, 5, 7
    total = replay.virtual_size(n_data, buffer_size, balanced)
    capacity = replay.ring_capacity(n_data, online_steps, buffer_size, balanced)
    assert (total, capacity) == (5, 5)
    expected = [0, 1, 2, 3, 4, 0, 1, 2] if balanced else [3, 4, 0, 1, 2, 3, 4, 0]  # before any addition, then each
    expected_size = [0, 1, 2, 3, 4, 4, 4, 4] if balanced else [3, 4, 4, 4, 4, 4, 4, 4]
    reference = _ReferenceBuffer({k: np.asarray(v) for k, v in data.items()}, total, from_dataset=not balanced)
    buffer = make_buffer(data, capacity)
    for m in range(online_steps + 1):
        assert replay.reference_pointer(n_data, m, total, balanced) == (expected[m], expected_size[m])
        assert (reference.pointer, reference.size) == (expected[m], expected_size[m])
        view = replay.reference_view(data, buffer, total, balanced)
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(view[k], reference.data[k][: reference.size], err_msg=f"{k} after {m}")
        if m < online_steps:
            reference.add_transition(_online_transition(m))
            buffer = add_transition(buffer, _online_transition(m))
    if not balanced:  # transitions 0-1 went to rows 3-4, 2-4 over dataset rows 0-2, 5-6 over transitions 0-1
        np.testing.assert_array_equal(reference.data["rewards"], [1002, 1003, 1004, 1005, 1006])
        np.testing.assert_array_equal(view["rewards"], [1002, 1003, 1004, 1005])  # row 4 (the newest): never drawn


def test_sampling_after_the_wrap_draws_only_the_rows_the_reference_holds():
    """Plain sampling, 10 dataset rows, --buffer-size 12 (S = 12), 5 online transitions: transitions 0 and 1 go to
    rows 10 and 11, 2-4 overwrite dataset rows 0-2; the reference samples rows [0, 11): every row but 11."""
    data = _data(10)
    total = replay.virtual_size(10, 12, False)
    buffer = make_buffer(data, replay.ring_capacity(10, 5, 12, False))
    for j in range(5):
        buffer = add_transition(buffer, _online_transition(j))
    sample = jax.jit(sample_online_batch, static_argnums=(3, 4, 5))
    rewards = np.asarray(sample(data, buffer, jax.random.PRNGKey(3), 6000, False, total)["rewards"])
    held = set(np.asarray(replay.reference_view(data, buffer, total, False)["rewards"]).tolist())
    assert held == {-4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0, 1000.0, 1002.0, 1003.0, 1004.0}
    assert set(rewards.tolist()) == held
    counts = np.array([np.sum(rewards == r) for r in sorted(held)])
    assert counts.min() > 6000 / 11 * 0.8 and counts.max() < 6000 / 11 * 1.2  # uniform over the 11 rows


def test_balanced_sampling_after_its_buffer_wraps_draws_the_newest_online_rows():
    data = _data(50)
    # a separate buffer of 4 rows, 9 additions: rows 0-2 hold transitions 8, 5, 6 (row 3, transition 7, is not drawn)
    buffer = make_buffer(data, replay.ring_capacity(50, 9, 4, True))
    for j in range(9):
        buffer = add_transition(buffer, _online_transition(j))
    batch = sample_online_batch(data, buffer, jax.random.PRNGKey(0), 400, True, replay.virtual_size(50, 4, True))
    rewards = np.asarray(batch["rewards"])
    assert np.all(rewards[:200] < 0)  # the dataset half: the whole dataset, never overwritten
    assert set(rewards[200:].tolist()) == {1005.0, 1006.0, 1008.0}


# ------------------------------------------------------------------------------- the online phase


def _online(tmp_path, name="run", **kw):
    args = dict(steps=20, online_steps=23, log_interval=5, eval_interval=10, checkpoint_interval=7)
    args.update(kw)
    return _train(tmp_path, name, **args)


def test_online_phase_collects_episodes_fills_the_buffer_and_records_both_phases(tmp_path, stand_in):
    res = _online(tmp_path)
    run = tmp_path / "run"
    assert res["status"] == "complete" and res["steps"] == 43 and res["step"] == 43
    on = res["online"]
    # the acting policy defaults to the released code's sample_actions defaults (K = 1, N = 1), not the largest K
    assert on["steps"] == 23 and on["offline_steps"] == 20 and on["K"] == 1 and on["N"] == 1
    assert on["buffer_size"] == 2_000_000 and on["stopped_at"] is None
    assert on["episodes"] == 4 and 0 <= on["success"] <= 1  # TinyEnv's episodes are 5 steps: 4 end in 23
    assert [(c["K"], c["N"]) for c in on["offline_final"]] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert on["env_steps_per_s"] > 0
    with (run / "online.csv").open() as f:
        episodes = list(csv.DictReader(f))
    assert [int(r["step"]) for r in episodes] == [25, 30, 35, 40]
    assert [int(r["env_steps"]) for r in episodes] == [5, 10, 15, 20] and {r["length"] for r in episodes} == {"5"}
    # TinyEnv's reward is the first action component: an episode's return is the sum of its 5 actions' first parts
    ckpt_steps = Checkpointer(run / "checkpoints").all_steps()
    assert ckpt_steps[-1] == 43 and 20 in [int(r["step"]) for r in _log(run, "eval.csv")]
    state = _restore_online(run, 43)
    buffer = state["online"]["buffer"]
    assert int(buffer["size"]) == 23 and int(state["online"]["episode"]) == 4
    assert int(state["online"]["episode_start"]) == 20
    returns = np.asarray(buffer["rewards"][:20]).reshape(4, 5).sum(axis=1)
    np.testing.assert_allclose([float(r["return"]) for r in episodes], returns, rtol=1e-5)
    np.testing.assert_array_equal(buffer["masks"][:23], np.ones(23))  # time limits, never terminal
    steps = [int(r["step"]) for r in _log(run, "train.csv")]
    assert steps == [5, 7, 10, 14, 15, 20, 21, 25, 28, 30, 35, 40, 42, 43]


def _restore_online(run, step):
    """The whole online checkpoint `step`: agent, data key, step, and the buffer at its saved size."""
    agent, _ = train_lib.load_run(run, step)
    with Checkpointer(run / "checkpoints") as ckpt:
        online = online_lib.online_template(ckpt.saved_layout(step))
        template = {"agent": agent, "data_rng": jax.random.PRNGKey(0), "step": np.int64(0), "online": online}
        return ckpt.restore(template, step)


def test_online_phase_resumes_exactly_from_a_checkpoint_inside_an_episode(tmp_path, stand_in):
    """Stopped at step 28 (8 online steps: 3 into the second episode) and continued: the environment is rebuilt by
    replaying that episode's actions, and the run ends identical to an uninterrupted one."""
    _online(tmp_path, "whole")
    _online(tmp_path, "split", online_steps=8)  # the online phase of a shorter run: stops at step 28
    eval_log = tmp_path / "split" / "eval.csv"
    lines = eval_log.read_text().splitlines(keepends=True)
    eval_log.write_text("".join(line for line in lines if not line.startswith("28,")))  # the shorter run's final
    _online(tmp_path, "split")
    assert_same_run(tmp_path / "whole", tmp_path / "split")
    assert _log(tmp_path / "whole", "online.csv") == _log(tmp_path / "split", "online.csv")


@pytest.mark.parametrize(
    "buffer",
    [{"buffer_size": 260}, {"buffer_size": 3, "balanced_sampling": True}],
    ids=["dataset-overwritten", "ring-wrapped"],
)
def test_online_phase_resumes_exactly_after_its_buffer_wrapped(tmp_path, stand_in, buffer):
    """As above with a buffer that wraps: plain sampling with S = max(260, 256 + 1) = 260 (from the 5th online step
    on, each transition overwrites a dataset row), and balanced sampling with a 3-row buffer (shorter than an
    episode: the running episode is replayed from the checkpoint's own copy of its actions)."""
    _online(tmp_path, "whole", **buffer)
    _online(tmp_path, "split", online_steps=8, **buffer)
    eval_log = tmp_path / "split" / "eval.csv"
    lines = eval_log.read_text().splitlines(keepends=True)
    eval_log.write_text("".join(line for line in lines if not line.startswith("28,")))
    _online(tmp_path, "split", **buffer)
    assert_same_run(tmp_path / "whole", tmp_path / "split")
    assert _log(tmp_path / "whole", "online.csv") == _log(tmp_path / "split", "online.csv")
    state = _restore_online(tmp_path / "whole", 43)
    ring = state["online"]["buffer"]
    assert int(ring["size"]) == 23 and ring["rewards"].shape[0] == (3 if "balanced_sampling" in buffer else 23)


def test_a_pure_online_run_trains_from_step_0(tmp_path, stand_in, capsys):
    """`sorl train --steps 0 --online-steps 12 --balanced-sampling` (the reference's RLPD command): no offline update
    and no evaluation at step 0; the online phase runs from update 0, and the run is visible while it does."""
    cli.main([
        "train", "--task", TASK, "--agent", "tiny", "--run-dir", str(tmp_path / "run"), "--steps", "0",
        "--online-steps", "12", "--balanced-sampling", "--log-interval", "5", "--eval-interval", "10",
        "--eval-episodes", "2", "--eval-K", "1", "--eval-workers", "1", "--progress", "False",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "online phase: updates 0 to 12, acting with K=1, N=1; half of each batch from the dataset" in out
    assert "online: 12 steps, acting K=1 N=1: 2 episodes, success" in out  # the end-of-run summary
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and res["steps"] == 12
    assert res["online"]["offline_steps"] == 0 and res["online"]["offline_final"] == []
    assert [int(r["step"]) for r in _log(run, "eval.csv")] == [10, 12]
    assert [int(r["step"]) for r in _log(run, "train.csv")] == [5, 10, 12]
    assert [int(r["step"]) for r in _log(run, "online.csv")] == [5, 10]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 0


def test_the_progress_bar_shows_online_success_and_return(tmp_path, stand_in, capsys):
    seeds = online_lib.OnlineSeeds.__new__(online_lib.OnlineSeeds)
    seeds.recent = [(1.0, 2.0), (0.0, 4.0)]
    assert seeds.postfix() == {"online_succ": "50%", "online_ret": "3"}
    seeds.recent = []
    assert seeds.postfix() == {}
    _online(tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "online_succ=" in err and "online_ret=" in err


@dataclasses.dataclass(frozen=True)
class _FlakyConfig(TinyConfig):
    flaky_at: int = -1
    """The loss is NaN at this update for the seeds whose initial w[0, 0] is positive."""


class _FlakyAgent(TinyAgent):
    flaky: jax.Array

    Config = _FlakyConfig

    @classmethod
    def create(cls, rng, example_observations, example_actions, config):
        t = TinyAgent.create(rng, example_observations, example_actions, config)
        return cls(t.w, t.b, t.rng, t.count, config, jnp.asarray(t.w[0, 0] > 0))

    def update(self, batch):
        new, info = super().update(batch)
        bad = self.flaky & (self.count == self.config.flaky_at)
        return new, {**info, "loss": jnp.where(bad, jnp.nan, info["loss"])}


@pytest.mark.parametrize("phase", ["online", "offline"])
def test_a_failed_seed_stops_acting_in_the_online_phase(tmp_path, stand_in, phase):
    """Two seeds online; one's update 18 goes NaN (online step 8, in its second episode). It steps its environment
    no more and writes no online.csv row from there, while the other goes on; its results.json says failed, where.
    A seed that failed in the offline phase (update 6) never acts online."""
    flaky = [s for s in range(1, 20) if bool(train_lib.initial_state(
        _FlakyAgent, _FlakyConfig(), s, np.zeros((1, 3)), np.zeros((1, 2)))["agent"].flaky)]  # fmt: skip
    steady = [s for s in range(1, 20) if s not in flaky]
    bad, good = flaky[0], steady[0]
    resets = []

    class Env(TinyEnv):
        def reset(self, *, seed=None, options=None):
            resets.append(seed)
            return super().reset(seed=seed)

    at = 18 if phase == "online" else 6
    with pytest.raises(SorlError, match=f"seed {bad}: non-finite loss at step {at}"):
        train_lib.train_seeds(
            TASK, "flaky", seeds=[bad, good], run_dir=tmp_path, agent_cls=_FlakyAgent,
            agent_overrides={"flaky_at": str(at - 1)}, steps=10, online_steps=20, log_interval=5, eval_interval=10,
            eval_episodes=2, eval_K="1", eval_N="1", eval_workers=1, progress=False, make_env=lambda *a: Env(),
        )  # fmt: skip
    runs_of = {s: tmp_path / f"seed{s}" for s in (bad, good)}
    assert [int(r["step"]) for r in _log(runs_of[good], "online.csv")] == [15, 20, 25, 30]
    assert json.loads((runs_of[good] / "results.json").read_text())["status"] == "complete"
    assert online_lib.online_episode_seed(good, 4) in resets
    res = json.loads((runs_of[bad] / "results.json").read_text())
    if phase == "offline":
        assert res["status"] == "failed" and "non-finite loss at step 6" in res["error"] and "online" not in res
        assert _log(runs_of[bad], "online.csv") == [] and online_lib.online_episode_seed(bad, 0) not in resets
        return
    assert [int(r["step"]) for r in _log(runs_of[bad], "online.csv")] == [15]  # none at or after update 18
    assert res["status"] == "failed" and "non-finite loss at step 18" in res["error"]
    assert res["online"]["stopped_at"] == 18 and res["online"]["episodes"] == 1
    # its environment was reset for its second episode (at update 15), never for a third (update 20)
    assert online_lib.online_episode_seed(bad, 1) in resets and online_lib.online_episode_seed(bad, 2) not in resets


def test_online_settings_of_an_environment_apply_only_to_online_runs():
    """FQL's offline-to-online commands use alpha 100 on humanoidmaze-medium and 30 on antsoccer-arena (offline: 30
    and 10); the run's agent config takes them only when --online-steps > 0."""
    from agents import AGENTS
    from envs.registry import agent_env_settings, online_settings_source

    fql, sorl = AGENTS["fql"], AGENTS["sorl"]
    task = "humanoidmaze-medium-navigate-singletask-task1-v0"
    assert agent_env_settings(fql, task)["alpha"] == 30.0
    assert agent_env_settings(fql, task, online=True) == dict(alpha=100.0, discount=0.995, q_agg="mean")
    assert agent_env_settings(fql, "antsoccer-arena-navigate", online=True)["alpha"] == 30.0
    assert agent_env_settings(fql, "scene-play", online=True) == agent_env_settings(fql, "scene-play")
    assert agent_env_settings(sorl, task, online=True) == agent_env_settings(sorl, task)
    verified, source = online_settings_source(fql, task)
    assert verified and "Offline-to-online" in source
    assert online_settings_source(fql, "scene-play") is None

    def trainer(**kw):
        return train_lib.Trainer(task, "fql", [0], lambda t, s: None, TrainSettings(**kw))

    assert trainer().config.alpha == 30.0 and trainer(steps=10).env_settings["alpha"] == 30.0
    online = trainer(steps=10, online_steps=5)
    assert online.config.alpha == 100.0 and online.env_settings["alpha"] == 100.0


def test_online_specs_use_the_reference_reward_timing():
    """The reference pins ogbench 1.1.0 (rewards and success from the next state): any sweep spec with online steps
    must say success_timing = "post" (none has online steps yet; this keeps the paper path right when one does)."""
    import tomllib

    for path in sorted((ROOT / "experiments" / "specs").glob("*.toml")):
        train = tomllib.loads(path.read_text()).get("train", {})
        if train.get("online_steps"):
            assert train.get("success_timing") == "post", path.name


def test_online_steps_extend_a_finished_offline_run(tmp_path, stand_in):
    """An offline run (20 updates) continued with --online-steps starts its online phase from that checkpoint."""
    _train(tmp_path, "run", steps=20, log_interval=5, eval_interval=10)
    res = _online(tmp_path)
    assert res["steps"] == 43 and res["online"]["episodes"] == 4


def test_online_settings_are_checked_recorded_and_printed(tmp_path, stand_in):
    from runner.train import TrainSettings as TS  # the same class the CLI subclasses

    assert TS is TrainSettings
    with pytest.raises(Exception, match="online_steps=0: must be a positive integer"):
        TrainSettings.of(online_steps=0)
    with pytest.raises(Exception, match="balanced_sampling='yes': must be true or false"):
        TrainSettings.of(balanced_sampling="yes")
    s = TrainSettings.of(online_steps=10, balanced_sampling=True, online_N=4)
    flags = " ".join(s.command_flags())
    assert "--online-steps 10" in flags and "--balanced-sampling" in flags and "--online-N 4" in flags
    assert s.total_steps == s.steps + 10
    _online(tmp_path, balanced_sampling=True, online_K=2)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["online"] == {"steps": 23, "balanced_sampling": True, "K": 2, "N": 1, "buffer_size": 2_000_000}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["online"]["K"] == 2


def test_every_agent_explores(tmp_path):
    """Each registered agent's exploration action: in range, of the right shape, and (for the Gaussian and
    deterministic policies) different from its test-time action."""
    import agents

    obs, act = np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)
    tiny = {"actor_layer_size": 8, "actor_num_layers": 1, "value_layer_size": 8, "value_num_layers": 1}
    for name in agents.AGENTS:
        cls = agents.get_agent(name)
        fields = {f for f in cls.Config.__dataclass_fields__}
        config = cls.Config(**{k: v for k, v in tiny.items() if k in fields})
        agent = cls.create(jax.random.PRNGKey(0), obs, act, config)
        a = np.asarray(agent.exploration_actions(jnp.asarray(obs), jax.random.PRNGKey(1), K=1, N=1))
        assert a.shape == (4, 2) and np.all(np.abs(a) <= 1), name
        if name in ("bc", "iql", "rebrac"):
            test_time = np.asarray(agent.sample_actions(jnp.asarray(obs), jax.random.PRNGKey(1), K=1, N=1))
            assert not np.allclose(a, test_time), f"{name} does not explore"


class ThresholdBandit(gymnasium.Env):
    """One-step episodes: success (reward 0, else -1) when the first action component is above 0.5."""

    observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.x = np.random.default_rng(seed).uniform(-1, 1, 2).astype(np.float32)
        return self.x, {}

    def step(self, action):
        success = bool(action[0] > 0.5)
        return self.x, float(success) - 1.0, True, False, {"success": success}


def _failing_dataset(n=512):
    """The behaviour never succeeds: first action component uniform in [-1, 0.3]."""
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    act = np.stack([rng.uniform(-1, 0.3, n), rng.uniform(-1, 1, n)], axis=1).astype(np.float32)
    zeros = np.zeros(n, np.float32)
    return {"observations": obs, "actions": act, "rewards": zeros - 1, "masks": zeros, "terminals": zeros + 1,
            "next_observations": obs}  # fmt: skip


def test_online_fine_tuning_learns_what_the_dataset_never_shows(tmp_path):
    """IQL (tiny networks, AWR temperature 10) offline on a dataset without one success fails; online, its Gaussian
    exploration finds the successful actions, AWR moves its mean there, and the evaluation goes from 0 to about 1."""
    settings = TrainSettings(
        steps=300, online_steps=300, log_interval=100, eval_interval=300, eval_episodes=20, eval_K="1", eval_N="1",
        eval_workers=1, progress=False, balanced_sampling=True,
    )  # fmt: skip
    tiny = {"actor_layer_size": "16", "actor_num_layers": "2", "value_layer_size": "16", "value_num_layers": "2",
            "lr": "0.01", "batch_size": "64", "discount": "0.0", "alpha": "10"}  # fmt: skip
    trainer = train_lib.Trainer(
        TASK, "iql", [0], lambda task, seed: tmp_path / "run", settings, agent_overrides=tiny,
        load_task=lambda *a, **k: (ThresholdBandit(), _failing_dataset(), None),
        make_env=lambda *a: ThresholdBandit(),
    )  # fmt: skip
    (res,) = trainer.run()
    offline = res["online"]["offline_final"][0]["success"]
    assert offline == 0.0
    assert res["final"][0]["success"] >= 0.9, res["final"]
    episodes = _log(tmp_path / "run", "online.csv")
    assert len(episodes) == 300  # one-step episodes
    # exploring with std 1 around a mean near 1, about two thirds of the draws land above 0.5
    assert np.mean([float(r["success"]) for r in episodes[-100:]]) > 0.5


# ------------------------------------------------------------------- SORL, real environment, SIGKILL

ONLINE_STEPS = 230  # cube episodes are 200 steps: the second kill lands 10 steps into the second
BUFFER_SIZE = 150  # about 100 dataset rows: S = 150 rows, so the buffer wraps (dataset rows, then online ones)


def _sorl_online_command(run_dir, data):
    return [
        *(sys.executable, "-m", "cli"),
        *_words("train --task cube-single-play-task1 --agent sorl --seed 5 --steps 20 --log-interval 5"),
        *_words(f"--online-steps {ONLINE_STEPS} --checkpoint-interval 15 --eval-interval 125 --eval-episodes 1"),
        *_words("--eval-K 1 --eval-N 1 --eval-workers 1 --eval-max-episode-steps 5 --progress False"),
        *_words(f"--buffer-size {BUFFER_SIZE}"),
        *("--run-dir", str(run_dir), "--data-dir", str(data)),
        *TINY_SORL,
    ]


def test_sigkill_in_the_online_phase_then_resume_is_exact(tmp_path):
    """SORL in the real cube environment (200-step episodes): killed with SIGKILL twice in the online phase and
    rerun, it ends bit-identical to an uninterrupted run (parameters, optimiser state, keys, buffer, logs). Its
    replay buffer (--buffer-size 150) has wrapped by then: every dataset row overwritten, then the oldest online
    transitions, and the running episode is longer than the buffer."""
    from envs.datasets import ensure_dataset

    data = tmp_path / "data"
    ensure_dataset(TASK, data, episodes=2, workers=1, max_episode_steps=50)
    env = _env(tmp_path / "jax-cache")
    reference = _Background(_sorl_online_command(tmp_path / "reference", data), env, tmp_path / "reference")
    try:
        run = tmp_path / "killed"
        kills = 0
        for wait_for in (10, 45):  # train.csv rows: one every 5 updates, offline and online
            proc = subprocess.Popen(_sorl_online_command(run, data), env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            if _wait_rows(run / "train.csv", wait_for, proc, timeout=240):
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills == 2 and _rows(run / "train.csv") < 50
        done = subprocess.run(
            _sorl_online_command(run, data), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stdout + done.stderr  # the episode was rebuilt exactly
        ref = reference.done()
        assert_same_run(ref, run, optimizer=True)
        assert _log(ref, "online.csv") == _log(run, "online.csv")
        res = json.loads((run / "results.json").read_text())
        assert res["steps"] == 20 + ONLINE_STEPS and res["online"]["episodes"] == 1
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["dataset"]["transitions"] < BUFFER_SIZE - 1 < ONLINE_STEPS  # it wrapped past the dataset
        ring = _restore_online(run, 20 + ONLINE_STEPS)["online"]["buffer"]
        assert int(ring["size"]) == ONLINE_STEPS and ring["rewards"].shape[0] == BUFFER_SIZE
    finally:
        reference.close()


def test_the_acting_policy_is_the_agents_own_unless_the_flags_set_it():
    """Without --online-K/--online-N an agent acts with its own policy (`runner.evaluation.policy_cell`): IFQL's
    published cell (10, 32), SORL's (1, 1) as the released code; the flags win, each on its own axis. What is
    recorded and what a resume is checked against are that same cell (before, IFQL acted with (1, 1))."""
    from agents import get_agent

    ifql, sorl = get_agent("ifql"), get_agent("sorl")
    s = TrainSettings.of(online_steps=10)
    assert online_lib.acting_policy(s, ifql) == (10, 32) and online_lib.acting_policy(s, sorl) == (1, 1)
    assert online_lib.acting_policy(TrainSettings.of(online_steps=10, online_K=4), ifql) == (4, 32)
    assert online_lib.acting_policy(TrainSettings.of(online_steps=10, online_N=1), ifql) == (10, 1)
    assert online_lib.acting_policy(s) == (1, 1)  # no agent: the contract's defaults
    recorded = online_lib.recorded_online(s, ifql)
    assert (recorded["K"], recorded["N"]) == (10, 32)
    online_lib.check_online_settings(s, ifql, ifql.Config(), "ifql")  # its own cell is one it takes
    online_lib.check_same_online("run", {"online": recorded, "train": {"steps": s.steps}}, s, ifql)
    with pytest.raises(SorlError, match=r"--online-K 10 \(now 1\), --online-N 32 \(now 1\)"):
        online_lib.check_same_online("run", {"online": recorded, "train": {"steps": s.steps}}, s, sorl)


def test_a_run_acts_records_and_resumes_with_the_agents_own_policy(tmp_path, stand_in, monkeypatch):
    """An agent whose own policy is (4, 2) (its PUBLISHED_CELL) acts with it when --online-K/-N are not given: the
    opening line, config.json and results.json say so, and the run continues with the same default; asking for
    another cell on the same run directory is refused."""
    from test_train_loop import TinyAgent

    monkeypatch.setattr(TinyAgent, "PUBLISHED_CELL", (4, 2))
    res = _online(tmp_path)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["online"]["K"], cfg["online"]["N"]) == (4, 2) and (res["online"]["K"], res["online"]["N"]) == (4, 2)
    assert _online(tmp_path, online_steps=30)["online"]["K"] == 4  # continued: the same policy, not refused
    with pytest.raises(SorlError, match=r"--online-K 4 \(now 1\)"):
        _online(tmp_path, online_steps=35, online_K=1)
