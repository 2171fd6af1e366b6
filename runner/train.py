"""The agent-agnostic training loop: a Trainer of small named steps.

One compiled *chunk* (`sorl.chunk`) runs `n` updates with `jax.lax.scan`: each update draws a batch from the
on-device dataset with `jax.random` and calls `agent.update(batch)`. Python runs once per chunk; between chunks
the Trainer logs, checkpoints and evaluates. Chunk boundaries are the multiples of `log_interval`,
`eval_interval` and `checkpoint_interval` (and `steps`); the chunk is compiled once per distinct length and
reused, with the agent and the key donated.

All randomness comes from PRNG keys: the agent's own (inside its state) and the data key, both saved in
every checkpoint with the step, so a run continues from its last checkpoint when the same command is run
again — after a SIGKILL at any moment too, bit for bit on CPU: the logs are cut back to the checkpoint, a train.csv
row is written at every checkpoint (so no partial interval is lost), and an evaluation the kill cut short is
redone. SIGTERM/SIGINT checkpoint at the next logged step and exit (`runner.safety.Interrupted`); a
non-finite loss or parameter stops the run with results.json "failed"; the run directory is locked against a
second process.

The steps, in order (`Trainer.run`): `open_runs` (check every seed's run directory), `load_data`, `resume`
(each seed from its checkpoint, or from step 0; the grid checked against the agent), `write` (lock every seed's
run directory, write its config.json, cut its logs back to the checkpoint), then per group of seeds at one starting
step `train_group`: `run_chunk`, `check_finite` (and `fail`), `log`, `checkpoint`, `evaluate`, `stop_here`, and at
the end `finish`. Nothing is written before `write`: a refused command (another run's directory, a checkpoint past
--steps, a K above the trained one, for any of the seeds) leaves every run directory as it was. The Trainer is
given the agent class, the dataset loader and the environment factory, so tests hand it fakes; by default they
come from `agents` and `envs`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import sorl
from runner import runs, safety
from runner.checkpoint import Checkpointer, latest_step
from runner.evaluation import EnvPool, MakeEnv, evaluate, format_grid, grid_note, validate_grid
from runner.multiseed import SeedRunner, make_seed_runner, parse_seeds, resolve_strategy, seed_run_dir
from runner.online import (
    OnlineSeeds,
    acting_policy,
    check_online_settings,
    check_same_online,
    online_capacity,
    online_line,
    online_template,
    recorded_online,
    resize_online_state,
)
from runner.pixels import eval_pool, example_observation
from runner.pixels import pipeline as pixel_pipeline
from runner.runs import RESULT_KEYS
from runner.settings import TrainSettings
from runner.tracking import MultiSink, Tracking
from runner.video import VIDEO_DIR, record_episodes
from sorl.agent import check_own_config
from sorl.chunk import compile_chunk, distinct_buffers, train_chunk, train_chunk_jit, validation_losses_jit
from sorl.config import apply_overrides, config_from_dict, config_to_dict
from sorl.data import dataset_nbytes, dataset_size, to_device
from sorl.errors import SorlError
from sorl.seeds import VALIDATION_STREAM

LoadTask = Callable[..., tuple[Any, Mapping[str, np.ndarray], Any]]
"""(task name, data_dir, *, success_timing, episodes) -> (env, train dataset, validation dataset)."""


def boundaries(start: int, steps: int, intervals: Sequence[int]) -> list[int]:
    """Chunk ends after `start` up to `steps`: multiples of any interval, and `steps`."""
    ends = {steps}
    for iv in (iv for iv in intervals if iv > 0):  # steps = 0 (a pure-online run) is no boundary
        ends.update(range((start // iv + 1) * iv, steps, iv))
    return sorted(e for e in ends if start < e <= steps)


# --------------------------------------------------------------------------------- agents and states


def resolve_agent_config(
    agent_name: str,
    env_name: str,
    overrides: Mapping[str, str] | None = None,
    agent_cls: type | None = None,
    online: bool = False,
    steps: int | None = None,
):
    """(AgentClass, config, env_settings): defaults, then the environment's settings, then `overrides`.

    `agent_cls` (default: the registry's class for `agent_name`) is the class trained under that name; `online`
    takes the environment's offline-to-online settings where the reference's online command differs; `steps`, the
    run's offline steps where known, is checked against the agent (`check_offline`)."""
    from agents import get_agent
    from envs.registry import agent_env_settings

    if agent_cls is None:
        agent_cls = get_agent(agent_name)  # checks the class itself
    else:
        check_own_config(agent_cls)
    check_offline(agent_cls, agent_name, steps)
    settings = agent_env_settings(agent_cls, env_name, online=online)
    config = dataclasses.replace(agent_cls.Config(), **settings)
    if overrides:
        config = apply_overrides(config, dict(overrides))
    config.validate()
    return agent_cls, config, settings


def check_offline(agent_cls: type, agent_name: str, steps: int | None) -> None:
    """One-line SorlError for offline steps (`steps` > 0) of an online-only agent (`Agent.OFFLINE` False)."""
    if steps and not getattr(agent_cls, "OFFLINE", True):
        raise SorlError(
            f"{agent_name} is an online agent, it does not train offline (--steps {steps}): run it pure-online with "
            f"`sorl train --agent {agent_name} --task TASK --steps 0 --online-steps N`, adding --balanced-sampling "
            "for RLPD (half of each batch from the dataset, the reference's command)"
        )


def ogbench_version() -> str:
    try:
        return importlib.metadata.version("ogbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def initial_state(agent_cls: Any, config: Any, seed: int, example_observations: Any, example_actions: Any):
    """The training state at step 0: {"agent", "data_rng", "step"}. The seed splits into the agent's key
    (initialisation and the agent's own sampling) and the data key (batch indices)."""
    agent_rng, data_rng = jax.random.split(jax.random.PRNGKey(seed))
    agent = agent_cls.create(agent_rng, example_observations, example_actions, config)
    return {"agent": agent, "data_rng": data_rng, "step": np.int64(0)}


def load_run(run: runs.RunDir | str | Path, step: int | None = None) -> tuple[Any, int]:
    """(agent, step) from a run directory's config and its checkpoint `step` (default: the latest)."""
    from agents import get_agent

    run = run if isinstance(run, runs.RunDir) else runs.RunDir(run)
    cfg = run.read_config()
    try:
        name = runs.agent_name(cfg)
        if name != cfg["agent"]:
            print(f"note: {run.path} names agent {cfg['agent']!r} from before Gaussian BC; it loads as {name!r}")
        try:
            agent_cls = get_agent(name)
        except SorlError as e:  # the name came from the file, not from the user's command line
            raise SorlError(f"{e} (read from {run.config}: a run of an agent this version does not have)") from None
        config = config_from_dict(agent_cls.Config, cfg["agent_config"])
        obs_dim, action_dim, seed = int(cfg["obs_dim"]), int(cfg["action_dim"]), int(cfg["seed"])
    except KeyError as e:
        raise SorlError(f"{run.config} is corrupt (no {e.args[0]!r}); retrain the run") from None
    template = initial_state(
        agent_cls, config, seed, np.zeros((1, obs_dim), np.float32), np.zeros((1, action_dim), np.float32)
    )
    if not run.checkpoints.is_dir():
        raise SorlError(f"{run.path} has no checkpoints yet; train it first")
    with Checkpointer(run.checkpoints) as ckpt:
        step = ckpt.latest_step() if step is None else step
        online = online_template(ckpt.saved_layout(step)) if step is not None else None
        if online is not None:  # a checkpoint of the online phase: its replay buffer comes along
            template["online"] = online
        state = ckpt.restore(template, step)
    return state["agent"], int(state["step"])


# ------------------------------------------------------------------------------------------ the trainer


@dataclasses.dataclass
class SeedRun:
    """One seed's run directory and bookkeeping inside a Trainer."""

    seed: int
    run: runs.RunDir
    run_config: dict[str, Any] | None = None
    train_log: runs.CsvLog | None = None
    eval_log: runs.CsvLog | None = None
    validation_log: runs.CsvLog | None = None
    online_log: runs.CsvLog | None = None
    ckpt: Any = None
    state: dict[str, Any] | None = None
    start: int = 0
    step: int = 0  # the step its state is at
    results: dict[str, Any] | None = None  # set when complete (before or after this call) or failed
    error: str | None = None
    acc: dict[str, float] = dataclasses.field(default_factory=dict)
    last_eval: list[dict[str, Any]] | None = None
    last_eval_step: int = -1
    sink: MultiSink = dataclasses.field(default_factory=MultiSink)  # --logger's copies of the rows


@dataclasses.dataclass
class Group:
    """Seeds trained together from one starting step, their runner (one interface for loop and vmap), the
    progress bar and the updates/s bookkeeping between logged steps."""

    runs: list[SeedRun]
    start: int
    runner: SeedRunner
    desc: str
    bar: Any = None
    train_s: float = 0.0
    acc_n: int = 0  # updates since the last logged step
    acc_t: float = 0.0
    compile_before: float = 0.0

    def live(self) -> list[tuple[int, SeedRun]]:
        return [(i, sr) for i, sr in enumerate(self.runs) if sr.error is None]

    def where(self) -> str:
        return ", ".join(str(sr.run.path) for sr in self.runs)

    def say(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)


class Trainer:
    """Train seeds of one agent on one task, each into its own run directory; `run()` returns their results.

    Seed `s` trains into `run_dir_of(task_name, s)`. The seeds share one dataset on the device, one compiled
    chunk and one evaluation pool; `strategy` 'loop' advances them in turn through the single-seed chunk,
    'vmap' as one vmapped batch (`runner.multiseed`). A seed whose loss or parameters go non-finite is stopped
    with results.json "failed" while the others go on, and a SorlError naming it is raised at the end.
    """

    def __init__(
        self,
        task: str,
        agent: str,
        seeds: Sequence[int],
        run_dir_of: Callable[[str, int], Path],
        settings: TrainSettings,
        *,
        agent_overrides: Mapping[str, str] | None = None,
        strategy: str = "loop",
        agent_cls: type | None = None,
        load_task: LoadTask | None = None,
        make_env: MakeEnv | None = None,
        inject_nan_at: int | None = None,
    ):
        from envs.registry import resolve_task

        self.settings = settings.validate()  # everything a user can get wrong, before any expensive work
        if self.settings.video_episodes:  # no headless renderer: one line now, not after hours of training
            from envs.rendering import gl_backend

            gl_backend()
        if strategy not in ("loop", "vmap"):
            raise SorlError(f"seeds strategy {strategy!r}: choose loop or vmap")
        task_info = resolve_task(task)
        self.task_name, self.env_name, self.agent = task_info.name, task_info.env.name, agent
        self.agent_overrides = dict(agent_overrides or {})
        online, steps = bool(self.settings.online_steps), self.settings.steps  # steps: an online agent's refusal
        self.agent_cls, self.config, self.env_settings = resolve_agent_config(
            agent, self.env_name, self.agent_overrides, agent_cls, online=online, steps=steps
        )
        # the evaluated and acting K against the agent's rule, before anything is read
        check_online_settings(self.settings, self.agent_cls, self.config, agent)
        self.seeds, self.run_dir_of, self.strategy = list(seeds), run_dir_of, strategy
        self.load_task, self.make_env = load_task, make_env
        # Frame stacking and augmentation happen on the device (runner.pixels); evaluation stacks frames too, and
        # renders pixel observations in spawned workers.
        self.pixels = task_info.env.pixels
        self.sampling = pixel_pipeline(task_info.env, self.settings, self.config)
        if self.pixels:  # evaluation renders: no headless renderer is one line now, not after the training
            from envs.rendering import gl_backend

            gl_backend()
        self.inject_nan_at = safety.nan_test_step_from_env() if inject_nan_at is None else inject_nan_at
        self.runs: list[SeedRun] = []
        self.stop = safety.GracefulStop()  # SIGTERM/SIGINT: checkpoint at the next logged step, then exit
        self.compiled: dict[tuple[str, int, int], Any] = {}
        self.compile_s = 0.0
        self._pool: EnvPool | None = None
        self.tracking = Tracking.of(self.settings)  # no --logger: nothing is imported or started
        self.dataset: Mapping[str, jax.Array] = {}

    # ------------------------------------------------------------------------------------------ run

    @safety.releases_locks
    def run(self) -> list[dict[str, Any]]:
        """Every step of a training job; the results dicts in seed order.

        Everything a command can be refused for is checked for every seed before anything is written or cut:
        `open_runs` (the run directories, before the data load) and `resume` (what needs the agent), then `write`
        (locks, config.json, logs cut back to the checkpoint, the checkpointer, the trackers), then the training."""
        self.open_runs()
        todo = [sr for sr in self.runs if sr.results is None]
        if not todo:
            return [sr.results for sr in self.runs]
        self.load_data()
        self.t0 = time.perf_counter()
        for sr in todo:
            self.resume(sr, first=sr is todo[0])
        started = False  # failures from the first training step on mark the seeds' runs failed
        try:
            self.write(todo)
            with self.stop:
                started = True
                for start in sorted({sr.start for sr in todo}):  # seeds resuming from one checkpoint train together
                    self.train_group([sr for sr in todo if sr.start == start], start)
        except Exception as e:  # not Interrupted (a KeyboardInterrupt): a stopped run is not a failed one
            if started:
                self.mark_failed(todo, e)
            raise
        finally:
            self.close(todo)
        return self.report(todo)

    # -------------------------------------------------------------------------------- run directories

    def open_runs(self) -> None:
        """Every seed's run directory checked before any expensive work, and before anything is written for any
        seed (`write` creates and locks them): empty or holding this same run, not in use by another process,
        writable, its checkpoint within --steps and its logs readable. A complete run is only read."""
        self.runs, total = [], self.settings.total_steps
        for seed in self.seeds:
            run, previous = runs.check_run_dir(
                self.run_dir_of(self.task_name, seed), task=self.task_name, agent=self.agent, seed=seed
            )
            sr = SeedRun(seed, run)
            self.runs.append(sr)
            if previous is not None:
                self.check_same_run(run, previous)
                state, detail = runs.run_state(run.path, total)  # the one answer to "is it done?"
                if state == "corrupt":
                    raise SorlError(detail)
                if state == "complete":
                    sr.results = run.read_results()
                    continue
            self.check_pending(sr)
        for sr in self.runs:
            if sr.results is not None:
                print(f"{sr.run.path} is already complete ({total} updates); see {sr.run.results}")

    def check_pending(self, sr: SeedRun) -> None:
        """A seed to train: its directory unlocked and writable, the checkpoint it continues from (`sr.start`)
        within --steps, its logs readable (and what a continuation cuts from them found). Reads only."""
        s, run = self.settings, sr.run
        sr.train_log = runs.CsvLog(run.train_log)
        sr.eval_log = runs.CsvLog(run.eval_log, ["step", *RESULT_KEYS, "env_steps", "time_s"])
        sr.validation_log = runs.CsvLog(run.validation_log)
        sr.online_log = runs.CsvLog(run.online_log)
        logs = (sr.train_log, sr.eval_log, sr.validation_log, sr.online_log)
        files = [run.config, run.results, *(log.path for log in logs)]
        runs.check_writable(run.path, "run directory", flag="--run-dir", files=files)
        safety.check_unlocked(run.path)
        for sub in (run.checkpoints, run.path / VIDEO_DIR if s.video_episodes else None):
            if sub is not None and sub.exists():
                runs.check_writable(sub, "directory", flag="--run-dir")
        sr.start = latest_step(run.checkpoints) or 0
        if sr.start > s.total_steps:
            online = f" + --online-steps {s.online_steps}" if s.online_steps else ""
            raise SorlError(
                f"{run.path} already holds a checkpoint at step {sr.start} > --steps {s.steps}{online}; "
                f"raise --steps{' or --online-steps' if online else ''} or use another --run-dir"
            )
        if sr.start > s.steps:  # a checkpoint of the online phase also holds the replay buffer, of its own size
            with Checkpointer(run.checkpoints) as ckpt:
                online_layout = online_template(ckpt.saved_layout(sr.start))
            if online_layout is None:
                raise SorlError(
                    f"{run.path} holds an offline checkpoint at step {sr.start} > --steps {s.steps}; an online "
                    f"phase starts after the offline updates: use --steps {sr.start} or more, or another --run-dir"
                )
        for log in logs:
            log.kept_after(sr.start)  # an unreadable log is refused now, not after config.json is rewritten

    def check_same_run(self, run: runs.RunDir, previous: Mapping[str, Any]) -> None:
        try:  # a setting added since that run was written takes its (legacy) default there, e.g. `encoder`
            recorded = _plain(config_to_dict(config_from_dict(type(self.config), previous.get("agent_config") or {})))
        except SorlError:
            recorded = previous.get("agent_config")
        if recorded != _plain(config_to_dict(self.config)):
            raise SorlError(
                f"run directory {run.path} holds a run of {self.agent} with a different agent config; "
                "choose another --run-dir or delete that one"
            )
        if previous.get("success_timing") != self.settings.success_timing:
            raise SorlError(
                f"run directory {run.path} holds a run with success_timing="
                f"{previous.get('success_timing')!r}; choose another --run-dir or delete that one"
            )
        check_same_online(run.path, previous, self.settings, self.agent_cls)  # acting (K, N), sampling, buffer, ...

    def run_config(self, seed: int) -> dict[str, Any]:
        """config.json: the run's identity, versions, agent config, data and the recorded settings."""
        recorded = self.settings.record()
        return {
            "format": runs.RUN_FORMAT,
            "task": self.task_name,
            "env": self.env_name,
            "agent": self.agent,
            "seed": seed,
            **recorded.get("", {}),
            "ogbench_version": ogbench_version(),
            "sorl_version": sorl.__version__,
            "jax_version": jax.__version__,
            "backend": jax.default_backend(),
            "agent_config": config_to_dict(self.config),
            "agent_overrides": dict(self.agent_overrides),
            "env_settings": self.env_settings,
            "obs_dim": int(self.example_obs.shape[-1]),
            "action_dim": int(self.example_act.shape[-1]),
            "dataset": {
                "transitions": dataset_size(self.dataset),
                "bytes": dataset_nbytes(self.dataset),
                **recorded.get("dataset", {}),
            },
            "train": {
                **recorded["train"],
                "batch_size": int(self.config.batch_size),
                # the values used, where --frame-stack / --p-aug were left to the task's default
                "frame_stack": self.sampling.frame_stack,
                "p_aug": self.sampling.p_aug,
            },
            "eval": {**recorded["eval"], "seed": seed, "success_unit": runs.SUCCESS_UNIT},
            **({"online": recorded_online(self.settings, self.agent_cls)} if self.settings.online_steps else {}),
        }

    # ------------------------------------------------------------------------------------ data, resume

    def load_data(self) -> None:
        """The dataset (generated if missing and generatable) on the device, once for all seeds."""
        load_task = self.load_task
        if load_task is None:
            from envs.datasets import load_task
        s = self.settings
        no_download = {} if s.download else {"download": False}  # --no-download (stand-in loaders need not take it)
        env, train_data, val_data = load_task(
            self.task_name, s.data_dir, success_timing=s.success_timing, episodes=s.train_episodes, **no_download
        )
        self.val_dataset = self.validation_data(val_data) if s.validation_interval else None
        del val_data
        if hasattr(env, "close"):
            env.close()
        self.example_obs = example_observation(train_data["observations"], self.sampling.frame_stack)
        self.example_act = np.asarray(train_data["actions"][:1], np.float32)
        # Agents that need more than the standard batch keys (ReBRAC's next dataset action) derive them here.
        self.dataset = self.agent_cls.prepare_dataset(to_device(train_data, frame_stack=self.sampling.frame_stack))

    def validation_data(self, val_data: Mapping[str, np.ndarray] | None) -> Mapping[str, jax.Array]:
        if val_data is None or not len(val_data.get("observations", ())):
            data_dir = self.settings.data_dir  # a suggested command keeps the user's --data-dir
            flag = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir is not None else ""
            raise SorlError(
                f"--validation-interval: {self.task_name} has no validation dataset (-val.npz) in the data "
                f"directory; regenerate it with `sorl data generate {self.env_name} --force{flag}` or train without "
                "--validation-interval"
            )
        return self.agent_cls.prepare_dataset(to_device(val_data, frame_stack=self.sampling.frame_stack))

    def resume(self, sr: SeedRun, first: bool = False) -> None:
        """A seed's state at its last checkpoint (read here) or step 0, with the grid and the video cell checked
        against its agent and its config.json made. Reads only: `write` writes, once every seed is checked."""
        s = self.settings
        sr.state = initial_state(self.agent_cls, self.config, sr.seed, self.example_obs, self.example_act)
        validate_grid(s.Ks, s.Ns, sr.state["agent"].max_K, self.agent_cls, self.agent)
        if s.video_episodes:
            validate_grid(s.video_cell[:1], s.video_cell[1:], sr.state["agent"].max_K, self.agent_cls, self.agent)
        note = grid_note(sr.state["agent"], self.agent, s.Ks, s.Ns)
        if note and first:
            print(note, flush=True)
        sr.run_config = self.run_config(sr.seed)
        if sr.start:
            with Checkpointer(sr.run.checkpoints) as ckpt:
                if sr.start > s.steps:  # an online-phase checkpoint also holds the replay buffer, of its own size
                    sr.state["online"] = online_template(ckpt.saved_layout(sr.start))
                sr.state = ckpt.restore(sr.state, sr.start)
        if sr.start > s.steps:
            capacity = online_capacity(self.dataset, s)
            sr.state["online"] = resize_online_state(sr.state["online"], sr.start - s.steps, capacity, sr.run)
        sr.step = sr.start

    def write(self, todo: list[SeedRun]) -> None:
        """The write pass, once every seed is checked (`open_runs`, `resume`): each run directory made and locked,
        then its config.json, its logs cut back to the checkpoint it continues from, a stale "failed" result
        removed, its checkpointer and trackers opened."""
        for sr in todo:
            safety.lock_run_dir(runs.create_run_dir(sr.run).path)
        for sr in todo:
            sr.ckpt = Checkpointer(sr.run.checkpoints, max_to_keep=self.settings.keep_checkpoints, writer=True)
            if (sr.ckpt.latest_step() or 0) != sr.start:  # another process trained it between the check and the lock
                raise SorlError(
                    f"{sr.run.path} changed while this command was starting (its checkpoint is now at step "
                    f"{sr.ckpt.latest_step() or 0}, not {sr.start}); run the command again"
                )
        for sr in todo:
            sr.run.write_config(sr.run_config)
            # rows logged after the checkpoint (or cut short) by a killed run go; a stale "failed" result too
            for log in (sr.train_log, sr.eval_log, sr.validation_log, sr.online_log):
                log.truncate_after(sr.start)
            sr.run.clear_failed_results()
            if sr.start:
                print(f"continuing {sr.run.path} from its checkpoint at step {sr.start}", flush=True)
            sr.sink = self.tracking.open(sr.run.path, sr.run_config, resume_step=sr.start)

    # ------------------------------------------------------------------------------------ one group

    def train_group(self, seed_runs: list[SeedRun], start: int) -> None:
        """Train seeds all at checkpoint `start` up to `steps` (and through the online phase, if any): chunk,
        check, log, checkpoint, evaluate."""
        s = self.settings
        g = self.begin_group(seed_runs, start)
        try:
            self.redo_cut_evaluation(g)
            step = start
            for end in boundaries(start, s.total_steps, (*s.intervals, s.steps)):
                if step == s.steps and s.online_steps and not isinstance(g.runner, OnlineSeeds):
                    g.runner = self.online_runner(g, [g.runner.checkpoint_state(i, step) for i in range(len(g.runs))])
                n = end - step
                infos = self.run_chunk(g, n)
                self.check_finite(g, infos, step, end)
                step = end
                for _, sr in g.live():
                    sr.step = end
                if not g.live():
                    break
                self.after_chunk(g, end, n)
            self.finish(g)
        finally:
            if g.bar is not None:
                g.bar.close()
            if isinstance(g.runner, OnlineSeeds):
                g.runner.close()

    def begin_group(self, seed_runs: list[SeedRun], start: int) -> Group:
        desc = f"{self.agent} {runs.short_task_name(self.task_name)}"
        if len(self.seeds) > 1:
            desc += f" seeds {','.join(str(sr.seed) for sr in seed_runs)}"
        states = [sr.state for sr in seed_runs]
        g = Group(seed_runs, start, None, desc, compile_before=self.compile_s)  # type: ignore[arg-type]
        online = start > self.settings.steps or (start == self.settings.steps and self.settings.online_steps)
        g.runner = self.online_runner(g, states) if online else make_seed_runner(self.strategy, states, self.sampling)
        for sr in seed_runs:
            sr.state = None  # the runner holds the states from here on
        if self.settings.progress:
            from tqdm.auto import tqdm

            g.bar = tqdm(
                total=self.settings.total_steps, initial=start, unit="upd", desc=desc, dynamic_ncols=True, smoothing=0.1
            )
        return g

    def online_runner(self, g: Group, states: Sequence[Mapping[str, Any]]) -> OnlineSeeds:
        """The online phase's runner for the group's seeds (`runner.online`), from their training states."""
        s = self.settings
        K, N = acting_policy(s, self.agent_cls)  # the flags', else the agent's own policy
        return OnlineSeeds(
            states, [sr.seed for sr in g.runs], int(states[0]["step"]), dataset=self.dataset,
            online_steps=int(s.online_steps or 0), task_name=self.task_name, success_timing=s.success_timing,
            balanced=s.balanced_sampling, K=K, N=N, buffer_size=s.buffer_size,
            make_env=self.make_env, on_episode=lambda i, row: self.log_episode(g.runs[i], row),
            live=[sr.error is None for sr in g.runs], say=g.say,
        )  # fmt: skip

    def log_episode(self, sr: SeedRun, row: Mapping[str, Any]) -> None:
        """One finished online episode: an online.csv row (and the --logger sinks' `online/` scalars)."""
        sr.online_log.write(row)
        sr.sink.online_episode(row)

    def redo_cut_evaluation(self, g: Group) -> None:
        """Resumed at an evaluation step whose evaluation a kill cut short (or at the end): evaluate again."""
        s, start, total = self.settings, g.start, self.settings.total_steps
        due = start == total or (start > 0 and (start == s.steps or start % s.eval_interval == 0))
        cells = len(s.Ks) * len(s.Ns)
        if due and any(start == total or sr.eval_log.count(start) < cells for sr in g.runs):
            for sr in g.runs:
                sr.eval_log.truncate_after(start - 1)
            self.evaluate_or_stop(g, start)

    def run_chunk(self, g: Group, n: int) -> dict[str, np.ndarray]:
        """`n` updates of every seed of the group (compiled on first use of this length); the infos [seeds, n]."""
        key = g.runner.key(n)
        if key not in self.compiled:
            tc = time.perf_counter()
            self.compiled[key] = g.runner.compile(self.dataset, int(self.config.batch_size), n)
            self.compile_s += time.perf_counter() - tc
        tc = time.perf_counter()
        infos = g.runner.run(self.compiled[key], self.dataset)
        dt = time.perf_counter() - tc
        g.train_s += dt
        g.acc_n += n
        g.acc_t += dt
        return infos

    def check_finite(self, g: Group, infos: Mapping[str, np.ndarray], step: int, end: int) -> None:
        """Accumulate each live seed's logged values; stop (`fail`) a seed whose loss or parameters went bad."""
        n = end - step
        any_bad_leaf = g.runner.any_non_finite()
        for i, sr in g.live():
            mine = safety.inject_nan({k: v[i] for k, v in infos.items()}, step, n, self.inject_nan_at)
            for k, v in mine.items():
                sr.acc[k] = sr.acc.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
            bad = safety.first_non_finite(mine, step)
            leaf = safety.non_finite_leaf(g.runner.agent(i)) if not bad and any_bad_leaf else None
            if bad or leaf:
                good = sr.ckpt.latest_step()
                what = f"{bad[0]} at step {bad[1]}" if bad else f"parameter {leaf} by step {end}"
                self.fail(
                    g,
                    sr,
                    end,
                    f"non-finite {what}; stopped the run (results.json: failed). Last good checkpoint: "
                    f"{f'step {good}' if good else 'none'} in {sr.run.checkpoints}; lower the learning rate or "
                    "check the data, and train into a new --run-dir",
                )

    def after_chunk(self, g: Group, end: int, n: int) -> None:
        """What is due at chunk end `end`: log, checkpoint, evaluate, or stop for a signal."""
        s = self.settings
        if g.bar is not None:
            g.bar.update(n)
        phase_end = end in (s.steps, s.total_steps)  # the offline phase's end and the run's
        if end % s.log_interval == 0 or end % s.checkpoint_every == 0 or phase_end:
            self.log(g, end)
        stopping = self.stop.requested and g.acc_n == 0  # a signal came: stop at this logged step
        if s.validation_interval and (end % s.validation_interval == 0 or phase_end) and not stopping:
            self.validate(g, end)  # before the checkpoint: a kill during it redoes it from the previous one
        if end % s.checkpoint_every == 0 or phase_end or stopping:
            self.checkpoint(g, end)
        if (end % s.eval_interval == 0 or phase_end) and not stopping:
            self.evaluate_or_stop(g, end)
        if self.stop.requested and g.acc_n == 0:
            self.stop_here(g, end)

    def log(self, g: Group, step: int) -> None:
        """One train.csv row per live seed: the means since the last row, updates/s, wall time."""
        row: dict[str, Any] = {}
        for _, sr in g.live():
            row = {
                "step": step,
                **{k: v / g.acc_n for k, v in sr.acc.items()},
                "updates_per_s": g.acc_n / max(g.acc_t, 1e-9),
                "time_s": time.perf_counter() - self.t0,
            }
            sr.train_log.write(row)
            sr.sink.train_row(row)
            sr.acc = {}
        if g.bar is not None and row:
            online = g.runner.postfix() if isinstance(g.runner, OnlineSeeds) else {}
            g.bar.set_postfix({**_postfix(row), **online}, refresh=False)
        g.acc_n, g.acc_t = 0, 0.0

    def validate(self, g: Group, step: int) -> None:
        """One validation.csv row per live seed: the agent's losses on validation batches, the update discarded.

        The batches' key is derived from the seed and the step alone, so a resumed run draws the same ones."""
        s = self.settings
        for i, sr in g.live():
            key = validation_key(sr.seed, step)
            infos = validation_losses_jit(
                g.runner.agent(i), self.val_dataset, key, batch_size=int(self.config.batch_size),
                num_batches=s.validation_batches, sampling=self.sampling,
            )  # fmt: skip
            infos = jax.device_get(infos)
            row = {"step": step, **{f"val/{k}": float(v) for k, v in infos.items() if "loss" in k}}
            sr.validation_log.write(row)
            sr.sink.validation_row(row)

    def checkpoint(self, g: Group, step: int) -> None:
        for i, sr in g.live():
            sr.ckpt.save(step, g.runner.checkpoint_state(i, step))

    def pool(self) -> EnvPool:
        """The evaluation environments, started on first use and shared by every evaluation of the job."""
        if self._pool is None:
            s = self.settings
            self._pool = eval_pool(
                self.task_name,
                min(s.eval_episodes, s.eval_envs or s.eval_episodes),
                renders=self.pixels,
                frame_stack=self.sampling.frame_stack,
                make_env=self.make_env,
                workers=s.eval_workers,
                success_timing=s.success_timing,
                max_episode_steps=s.eval_max_episode_steps,
            )
        return self._pool

    def evaluate(self, g: Group, step: int) -> None:
        """Every live seed over the (K, N) grid: eval.csv rows and one summary line each."""
        s, several = self.settings, len(self.seeds) > 1
        for i, sr in g.live():
            if g.bar is not None:
                g.bar.set_description_str(f"{g.desc} (evaluating{f' seed {sr.seed}' if several else ''})")
            grid = evaluate(
                g.runner.agent(i), self.task_name, s.Ks, s.Ns, s.eval_episodes, seed=sr.seed, pool=self.pool()
            )
            for r in grid:
                sr.eval_log.write({"step": step, **r})
            sr.sink.eval_grid(step, grid)
            msg = "  ".join(f"K={r['K']},N={r['N']}: {100 * r['success']:.0f}%" for r in grid)
            g.say(f"[{f'seed {sr.seed} ' if several else ''}step {step}] eval success  {msg}")
            sr.last_eval, sr.last_eval_step = grid, step
            self.film(g, i, sr, step)
        if g.bar is not None:
            g.bar.set_description_str(g.desc)

    def film(self, g: Group, i: int, sr: SeedRun, step: int) -> None:
        """--video-episodes: film the video cell's episodes into the run's videos/. A failure is one warning line,
        not the run's end: the videos only show the policy whose numbers eval.csv already holds."""
        s = self.settings
        if not s.video_episodes:
            return
        K, N = s.video_cell
        try:
            videos = record_episodes(
                g.runner.agent(i), self.task_name, sr.run.path, step=step, K=K, N=N, episodes=s.video_episodes,
                seed=sr.seed, success_timing=s.success_timing, max_episode_steps=s.eval_max_episode_steps,
                size=s.video_size, workers=s.eval_workers, pixels=self.pixels, frame_stack=self.sampling.frame_stack,
                replace=True,  # a continued run films a step again only when it redoes that step's evaluation
            )  # fmt: skip
        except Exception as e:
            if self.stop.requested:  # a signal stopped the rendering workers too: evaluate_or_stop handles it
                raise
            g.say(f"warning: no videos at step {step}: {e if isinstance(e, SorlError) else f'{type(e).__name__}: {e}'}")
            return
        names = ", ".join(v["path"].name for v in videos)
        where = f"{f'seed {sr.seed} ' if len(self.seeds) > 1 else ''}step {step}"
        replaced = sum(bool(v.get("replaced")) for v in videos)
        again = f" (replacing {replaced} of the same names)" if replaced else ""
        g.say(f"[{where}] videos  {names} in {videos[0]['path'].parent}{again}")

    def evaluate_or_stop(self, g: Group, step: int) -> None:
        """`evaluate`, unless a signal stopped the evaluation workers too: then stop at a checkpoint."""
        try:
            self.evaluate(g, step)
        except Exception:
            if not self.stop.requested:
                raise
            if g.acc_n:  # between logged steps: stop at the last checkpoint, not here
                raise self.stop.interrupted(step, g.where(), g.runs[0].ckpt.latest_step()) from None
            self.stop_here(g, step)

    def stop_here(self, g: Group, step: int) -> None:
        """A signal came: checkpoint at this logged step (unless that is done) and raise `Interrupted`."""
        if g.runs[0].ckpt.latest_step() != step:  # the signal came during the evaluation
            self.checkpoint(g, step)
        raise self.stop.interrupted(step, g.where(), step) from None

    def fail(self, g: Group, sr: SeedRun, step: int, message: str) -> None:
        """Stop one seed: results.json "failed" with the message; the group's other seeds go on."""
        sr.error = message
        sr.results = runs.make_results(
            sr.run_config, self.settings.total_steps, step, sr.last_eval, "failed", error=message
        )
        if isinstance(g.runner, OnlineSeeds):  # it acts no more; results.json says where its online phase stopped
            g.runner.stop(g.runs.index(sr), step)
            sr.results["online"] = online_summary(sr, self.settings, g.runner, self.agent_cls)
        sr.run.try_write_results(sr.results)
        sr.sink.results(sr.results)
        if len(self.seeds) > 1:
            g.say(f"seed {sr.seed}: {message}")

    def finish(self, g: Group) -> None:
        """Each live seed's final evaluation (if a kill cut it) and its complete results.json with timings."""
        s = self.settings
        steps = s.total_steps
        if any(sr.last_eval_step != steps for _, sr in g.live()):  # resumed at the end (killed in the final eval)
            self.evaluate(g, steps)
        for _, sr in g.live():
            sr.ckpt.wait()
            sr.results = runs.make_results(sr.run_config, steps, steps, sr.last_eval, "complete")
            sr.results["timing"] = {
                "compile_s": self.compile_s - g.compile_before,
                "train_s": g.train_s,
                "updates_per_s": (steps - g.start) / g.train_s if g.train_s > 0 else None,
                "wall_s": time.perf_counter() - self.t0,
            }
            if s.online_steps:
                sr.results["online"] = online_summary(sr, s, g.runner, self.agent_cls)
            if len(self.seeds) > 1:
                sr.results["timing"]["seeds_in_batch"] = [x.seed for x in g.runs]
                sr.results["timing"]["seeds_strategy"] = self.strategy
            sr.run.write_results(sr.results)
            sr.sink.results(sr.results)

    # ------------------------------------------------------------------------------------ the end

    def mark_failed(self, todo: list[SeedRun], e: Exception) -> None:
        """An error from the first training step on: each unfinished run's results.json says failed, and why."""
        error = str(e) if isinstance(e, SorlError) else f"{type(e).__name__}: {e}"
        for sr in todo:
            if sr.results is None and sr.run_config is not None and sr.ckpt is not None:
                sr.run.try_write_results(
                    runs.make_results(
                        sr.run_config, self.settings.total_steps, sr.step, sr.last_eval, "failed", error=error
                    )
                )

    def close(self, todo: list[SeedRun]) -> None:
        if self._pool is not None:
            self._pool.close()
        for sr in todo:
            if sr.ckpt is not None:
                sr.ckpt.close()
            sr.sink.close()

    def report(self, todo: list[SeedRun]) -> list[dict[str, Any]]:
        """Print each finished seed's grid; raise one SorlError for the failed seeds, else return the results."""
        s = self.settings
        for sr in todo:
            if sr.error is None:
                title = f"{self.task_name}  agent={self.agent}  seed={sr.seed}  step={s.total_steps}"
                title += f"  ({s.eval_episodes} episodes)"
                print(format_grid(sr.last_eval or [], title))
                if online_line(sr.results or {}):
                    print(online_line(sr.results or {}))
                print(f"results: {sr.run.results}")
        failed = [sr for sr in todo if sr.error is not None]
        if len(self.seeds) == 1 and failed:
            raise SorlError(failed[0].error)
        if failed:
            raise SorlError("; ".join(f"seed {sr.seed}: {sr.error}" for sr in failed))
        return [sr.results for sr in self.runs]


def online_summary(sr: SeedRun, s: TrainSettings, runner: Any, agent_cls: type) -> dict[str, Any]:
    """results.json's `online` section: the phase's settings, its episodes (from online.csv), the evaluation at
    the end of the offline phase (from eval.csv), and the environment's speed measured in this process."""
    episodes = sr.online_log.rows()
    success = [float(r["success"]) for r in episodes]
    returns = [float(r["return"]) for r in episodes]
    last = max(1, len(episodes) // 10)
    online = isinstance(runner, OnlineSeeds)
    K, N = acting_policy(s, agent_cls)
    return {
        "steps": s.online_steps,
        "offline_steps": s.steps,
        "balanced_sampling": s.balanced_sampling,
        "buffer_size": recorded_online(s, agent_cls)["buffer_size"],
        "K": K,
        "N": N,
        "stopped_at": runner.stopped_at(sr.seed) if online else None,
        "episodes": len(episodes),
        "success": float(np.mean(success)) if success else None,
        "return": float(np.mean(returns)) if returns else None,
        "last_10pct_success": float(np.mean(success[-last:])) if success else None,
        "offline_final": runs.grid_from_rows(sr.eval_log.rows(), s.steps),
        "env_steps_per_s": runner.env_steps / runner.env_s if online and runner.env_s > 0 else None,
    }


def validation_key(seed: int, step: int) -> jax.Array:
    """The key of the validation batches at `step` (a function of the seed and the step, kept nowhere)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), VALIDATION_STREAM), step)


def _plain(d: Any) -> Any:
    """A config dict as it reads back from JSON (tuples -> lists)."""
    if isinstance(d, Mapping):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def _postfix(row: Mapping[str, Any]) -> dict[str, str]:
    """Measured updates/s (compilation and evaluation excluded) and up to two losses for the progress bar."""
    losses = [k for k in row if k.endswith("loss")]
    main = [k for k in losses if k.rsplit("/", 1)[-1] in ("critic_loss", "actor_loss")] or losses
    out = {"upd/s": f"{row['updates_per_s']:.1f}"}
    out.update({k.rsplit("/", 1)[-1]: f"{row[k]:.3g}" for k in main[:2]})
    return out


# ------------------------------------------------------------------------------------ entry points


def train(
    task: str,
    agent: str = "sorl",
    *,
    seed: int = 0,
    run_dir: str | Path | None = None,
    agent_overrides: Mapping[str, str] | None = None,
    settings: TrainSettings | None = None,
    agent_cls: type | None = None,
    load_task: LoadTask | None = None,
    make_env: MakeEnv | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train `agent` on `task` into one run directory (default `runs/<task>/<agent>/seed<seed>`); the results dict.

    `settings` (or the same fields as keyword `options`: `steps`, `eval_interval`, `eval_K`, ...) are a
    `TrainSettings`. The run evaluates over the (eval_K x eval_N) grid every `eval_interval` updates and at the
    end, checkpoints every `checkpoint_interval` and at the end, logs every `log_interval`. Rerunning into a run
    directory that holds the same run continues from its last checkpoint (or returns its results if it is
    complete); a directory holding another task's, agent's or seed's run is refused. Several seeds:
    `train_seeds`. `agent_cls`, `load_task` and `make_env` replace the registry's agent class, the dataset
    loader and the evaluation environments (tests use them).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SorlError(f"seed={seed}: must be a non-negative integer")
    settings = dataclasses.replace(settings, **options).validate() if settings else TrainSettings.of(**options)

    def run_dir_of(task_name: str, s: int) -> Path:
        return Path(run_dir) if run_dir is not None else runs.default_run_dir(task_name, agent, s)

    trainer = Trainer(
        task, agent, [int(seed)], run_dir_of, settings, agent_overrides=agent_overrides,
        agent_cls=agent_cls, load_task=load_task, make_env=make_env,
    )  # fmt: skip
    (results,) = trainer.run()
    return results


def train_seeds(
    task: str,
    agent: str = "sorl",
    *,
    seeds: str | Sequence[int] = "1-8",
    run_dir: str | Path | None = None,
    strategy: str = "auto",
    agent_overrides: Mapping[str, str] | None = None,
    settings: TrainSettings | None = None,
    agent_cls: type | None = None,
    load_task: LoadTask | None = None,
    make_env: MakeEnv | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """`train` for several seeds at once: one run directory per seed; the results dicts in seed order.

    `seeds` is '1-8', '1,3,5' or a list, `run_dir` the parent of the seeds' directories (see `seed_run_dir`).
    The loop is the single-seed run's own Trainer. A seed whose loss or parameters go non-finite is stopped
    with results.json "failed", as a single-seed run would be; the other seeds go on, and a SorlError naming the
    failed seeds is raised at the end.
    """
    seed_list = parse_seeds(seeds)
    strategy = resolve_strategy(strategy)
    settings = dataclasses.replace(settings, **options).validate() if settings else TrainSettings.of(**options)

    def run_dir_of(task_name: str, seed: int) -> Path:
        return seed_run_dir(run_dir, task_name, agent, seed)

    trainer = Trainer(
        task, agent, seed_list, run_dir_of, settings, agent_overrides=agent_overrides, strategy=strategy,
        agent_cls=agent_cls, load_task=load_task, make_env=make_env,
    )  # fmt: skip
    return trainer.run()


__all__ = [
    "Trainer",
    "boundaries",
    "compile_chunk",
    "distinct_buffers",
    "initial_state",
    "load_run",
    "resolve_agent_config",
    "train",
    "train_chunk",
    "train_chunk_jit",
    "train_seeds",
]
