"""The agent-agnostic training loop.

One compiled *chunk* runs `n` updates with `jax.lax.scan`: each update draws a batch from the on-device
dataset with `jax.random` and calls `agent.update(batch)`. Python runs once per chunk, between chunks it
logs, checkpoints and evaluates. Chunk boundaries are the multiples of `log_interval`, `eval_interval` and
`checkpoint_interval` (and `steps`); the chunk is compiled once per distinct length (once, when the intervals
are multiples of `log_interval` and `steps` a multiple of it) and reused, with the agent and the key donated.

All randomness comes from PRNG keys: the agent's own (inside its state) and the data key, both saved in
every checkpoint with the step, so a run continues from its last checkpoint when the same command is run
again — after a SIGKILL at any moment too, bit for bit on CPU: the logs are cut back to the checkpoint, a train.csv
row is written at every checkpoint (so no partial interval is lost), and an evaluation the kill cut short is
redone. SIGTERM/SIGINT checkpoint at the next logged step and exit (`sorl.reliability.Interrupted`); a
non-finite loss or parameter stops the run with results.json "failed"; the run directory is locked against a
second process. Test-only: `SORL_TEST_INJECT_NAN_AT_STEP=S` makes the loss logged at update S NaN.

`train_chunk` is a pure function of (agent, key, dataset): `jax.vmap` over the first two trains several seeds
at once.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sorl
from sorl import reliability, runs
from sorl.chunk import compile_chunk, distinct_buffers, train_chunk, train_chunk_jit
from sorl.data import dataset_nbytes, dataset_size, to_device
from sorl.errors import SorlError
from sorl.evaluation import (
    EnvPool,
    evaluate,
    format_grid,
    grid_note,
    parse_int_list,
    validate_grid,
)
from sorl.multiseed import VmappedSeeds, parse_seeds, resolve_strategy, seed_run_dir
from sorl.runs import RESULT_KEYS, SUCCESS_UNIT


def boundaries(start: int, steps: int, intervals: Sequence[int]) -> list[int]:
    """Chunk ends after `start` up to `steps`: multiples of any interval, and `steps`."""
    ends = {steps}
    for iv in intervals:
        ends.update(range((start // iv + 1) * iv, steps, iv))
    return sorted(e for e in ends if start < e <= steps)


# --------------------------------------------------------------------------------------- the config


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SorlError(f"{name}={value}: must be a positive integer")


def resolve_agent_config(agent_name: str, env_name: str, overrides: Mapping[str, str] | None = None):
    """(AgentClass, config, env_settings): defaults, then the environment's settings, then `overrides`."""
    from agents import get_agent
    from envs.registry import agent_env_settings
    from sorl.config import apply_overrides

    agent_cls = get_agent(agent_name)
    settings = dict(agent_env_settings(agent_name, env_name) or {})
    config = dataclasses.replace(agent_cls.Config(), **settings)
    if overrides:
        config = apply_overrides(config, dict(overrides))
    config.validate()
    return agent_cls, config, settings


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
    from sorl.checkpoint import Checkpointer
    from sorl.config import config_from_dict

    run = run if isinstance(run, runs.RunDir) else runs.RunDir(run)
    cfg = run.read_config()
    try:
        name = runs.agent_name(cfg)
        if name != cfg["agent"]:
            print(f"note: {run.path} names agent {cfg['agent']!r} from before Gaussian BC; it loads as {name!r}")
        agent_cls = get_agent(name)
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
        state = ckpt.restore(template, step)
    return state["agent"], int(state["step"])


# ------------------------------------------------------------------------------------------ training


@dataclasses.dataclass
class SeedRun:
    """One seed's run directory and bookkeeping inside `train_runs`."""

    seed: int
    run: runs.RunDir
    run_config: dict[str, Any] | None = None
    train_log: runs.CsvLog | None = None
    eval_log: runs.CsvLog | None = None
    ckpt: Any = None
    state: dict[str, Any] | None = None
    start: int = 0
    step: int = 0  # the step its state is at
    results: dict[str, Any] | None = None  # set when complete (before or after this call) or failed
    error: str | None = None
    acc: dict[str, float] = dataclasses.field(default_factory=dict)
    last_eval: list[dict[str, Any]] | None = None
    last_eval_step: int = -1


class SequentialSeeds:
    """Training states advanced in turn by the single-seed compiled chunk: with one seed, the plain run.

    The other way to advance several seeds is `sorl.multiseed.VmappedSeeds` (one vmapped chunk); both have this
    interface, which is all the loop in `train_runs` sees.
    """

    def __init__(self, states: Sequence[Mapping[str, Any]]):
        self.states = [(st["agent"], jnp.asarray(st["data_rng"])) for st in states]

    def compile(self, dataset: Mapping[str, jax.Array], batch_size: int, n: int):
        self.states = [distinct_buffers(st) for st in self.states]
        return compile_chunk(*self.states[0], dataset, batch_size, n)

    def key(self, n: int) -> tuple[str, int, int]:
        """The compiled-chunk cache key: one program serves any number of seeds."""
        return ("loop", 1, n)

    def run(self, compiled: Any, dataset: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """One chunk for every seed; the infos stacked `[seeds, n]`, fetched once after all seeds are queued."""
        out, infos = [], []
        for agent, data_rng in self.states:
            agent, data_rng = distinct_buffers((agent, data_rng))
            agent, data_rng, info = compiled(agent, data_rng, dataset)
            out.append((agent, data_rng))
            infos.append(info)
        self.states = out
        infos = jax.device_get(infos)
        return {k: np.stack([np.asarray(info[k]) for info in infos]) for k in infos[0]}

    def agent(self, i: int) -> Any:
        return self.states[i][0]

    def data_rng(self, i: int) -> jax.Array:
        return self.states[i][1]

    def any_non_finite(self) -> bool:
        return reliability.non_finite_leaf([a for a, _ in self.states]) is not None


def train(
    task: str, agent: str = "sorl", *, seed: int = 0, run_dir: str | Path | None = None, **settings: Any
) -> dict[str, Any]:
    """Train `agent` on `task` into one run directory (default `runs/<task>/<agent>/seed<seed>`); the results dict.

    `settings` are `train_runs`'s: `steps`, `data_dir`, `success_timing`, `agent_overrides`, `log_interval`,
    `eval_interval`, `checkpoint_interval` (default: `eval_interval`), `keep_checkpoints`, `eval_episodes`,
    `eval_K`, `eval_N`, `eval_workers`, `eval_envs`, `eval_max_episode_steps`, `train_episodes`, `progress`. The
    run evaluates over the (eval_K x eval_N) grid every `eval_interval` updates and at the end, checkpoints every
    `checkpoint_interval` and at the end, logs every `log_interval`. Rerunning into a run directory that holds
    the same run continues from its last checkpoint (or returns its results if it is complete); a directory
    holding another task's, agent's or seed's run is refused. Several seeds: `train_seeds`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SorlError(f"seed={seed}: must be a non-negative integer")

    def run_dir_of(task_name: str, s: int) -> Path:
        return Path(run_dir) if run_dir is not None else runs.default_run_dir(task_name, agent, s)

    (results,) = train_runs(task, agent, [int(seed)], run_dir_of, **settings)
    return results


@reliability.releases_locks
def train_runs(
    task: str,
    agent: str,
    seeds: Sequence[int],
    run_dir_of: Callable[[str, int], Path],
    *,
    strategy: str = "loop",
    steps: int = 1_000_000,
    data_dir: str | Path | None = None,
    success_timing: str = "pre",
    agent_overrides: Mapping[str, str] | None = None,
    log_interval: int = 5_000,
    eval_interval: int = 100_000,
    checkpoint_interval: int | None = None,
    keep_checkpoints: int = 3,
    eval_episodes: int = 50,
    eval_K: str | Sequence[int] = "1,2,4,8",
    eval_N: str | Sequence[int] = "1",
    eval_workers: int | None = None,
    eval_envs: int | None = None,
    eval_max_episode_steps: int | None = None,
    train_episodes: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The training loop of `train` (one seed) and `train_seeds`: the results dicts in seed order.

    Seed `s` trains into `run_dir_of(task_name, s)` and its directory is the one `train(seed=s)` writes. The
    seeds share one dataset on the device, one compiled chunk and one evaluation pool; `strategy` 'loop'
    advances them in turn through the single-seed chunk (`SequentialSeeds`), 'vmap' as one vmapped batch
    (`sorl.multiseed.VmappedSeeds`). A seed whose loss or parameters go non-finite is stopped with results.json
    "failed" while the others go on, and a SorlError naming it is raised at the end.
    """
    from envs import datasets as env_datasets
    from envs.registry import resolve_task
    from sorl.checkpoint import Checkpointer
    from sorl.config import config_to_dict

    # --- validate everything a user can get wrong before any expensive work
    _positive("steps", steps)
    _positive("log_interval", log_interval)
    _positive("eval_interval", eval_interval)
    _positive("checkpoint_interval", checkpoint_interval, allow_none=True)
    _positive("keep_checkpoints", keep_checkpoints)
    _positive("eval_episodes", eval_episodes)
    _positive("eval_workers", eval_workers, allow_none=True)
    _positive("eval_envs", eval_envs, allow_none=True)
    _positive("eval_max_episode_steps", eval_max_episode_steps, allow_none=True)
    _positive("train_episodes", train_episodes, allow_none=True)
    if success_timing not in ("pre", "post"):
        raise SorlError(f"success_timing={success_timing!r}: must be 'pre' or 'post'")
    if strategy not in ("loop", "vmap"):
        raise SorlError(f"seeds strategy {strategy!r}: choose loop or vmap")
    Ks = parse_int_list(eval_K, "eval_K")
    Ns = parse_int_list(eval_N, "eval_N")
    checkpoint_interval = checkpoint_interval or eval_interval

    task_info = resolve_task(task)
    task_name, env_name = task_info.name, task_info.env.name
    agent_cls, config, env_settings = resolve_agent_config(agent, env_name, agent_overrides)
    validate_grid(Ks, Ns, None)  # power of two / N >= 1 now; the trained maximum once the agent exists

    # --- every seed's run directory, checked and locked (against a second process) before any expensive work
    all_runs: list[SeedRun] = []
    for seed in seeds:
        run = runs.open_run_dir(run_dir_of(task_name, seed), task=task_name, agent=agent, seed=seed)
        reliability.lock_run_dir(run.path)
        sr = SeedRun(seed, run)
        previous = run.read_config() if run.exists() else None
        if previous is not None:
            if previous.get("agent_config") != _plain(config_to_dict(config)):
                raise SorlError(
                    f"run directory {run.path} holds a run of {agent} with a different agent config; "
                    "choose another --run-dir or delete that one"
                )
            if previous.get("success_timing") != success_timing:
                raise SorlError(
                    f"run directory {run.path} holds a run with success_timing="
                    f"{previous.get('success_timing')!r}; choose another --run-dir or delete that one"
                )
            state, detail = runs.run_state(run.path, steps)  # the one answer to "is this run done?"
            if state == "corrupt":
                raise SorlError(detail)
            if state == "complete":
                print(f"{run.path} is already complete ({steps} updates); see {run.results}")
                sr.results = run.read_results()
        all_runs.append(sr)
    todo = [sr for sr in all_runs if sr.results is None]
    if not todo:
        return [sr.results for sr in all_runs]

    # --- data (generated if missing and generatable) on the device, once for all seeds
    env, train_data, val_data = env_datasets.load_task(
        task_name, data_dir, success_timing=success_timing, episodes=train_episodes
    )
    del val_data  # not used by the loop; free it
    if hasattr(env, "close"):
        env.close()
    example_obs = np.asarray(train_data["observations"][:1], np.float32)
    example_act = np.asarray(train_data["actions"][:1], np.float32)
    dataset = to_device(train_data)
    del train_data
    # Agents that need more than the standard batch keys (ReBRAC's next dataset action) derive them once here.
    dataset = agent_cls.prepare_dataset(dataset)

    def run_config_of(seed: int) -> dict[str, Any]:
        return {
            "format": runs.RUN_FORMAT,
            "task": task_name,
            "env": env_name,
            "agent": agent,
            "seed": seed,
            "success_timing": success_timing,
            "ogbench_version": ogbench_version(),
            "sorl_version": sorl.__version__,
            "jax_version": jax.__version__,
            "backend": jax.default_backend(),
            "agent_config": config_to_dict(config),
            "agent_overrides": dict(agent_overrides or {}),
            "env_settings": env_settings,
            "obs_dim": int(example_obs.shape[-1]),
            "action_dim": int(example_act.shape[-1]),
            "dataset": {
                "transitions": dataset_size(dataset),
                "bytes": dataset_nbytes(dataset),
                "data_dir": str(data_dir) if data_dir is not None else None,
                "train_episodes": train_episodes,
            },
            "train": {
                "steps": steps,
                "batch_size": int(config.batch_size),
                "log_interval": log_interval,
                "eval_interval": eval_interval,
                "checkpoint_interval": checkpoint_interval,
            },
            "eval": {
                "K": list(Ks),
                "N": list(Ns),
                "episodes": eval_episodes,
                "envs": eval_envs,  # stepped at once (None: one per episode); the numbers depend on it
                "seed": seed,
                "max_episode_steps": eval_max_episode_steps,
                "success_unit": SUCCESS_UNIT,
            },
        }

    pool: EnvPool | None = None
    stop = reliability.GracefulStop()  # SIGTERM/SIGINT: checkpoint at the next logged step, then exit
    compiled: dict[tuple[str, int, int], Any] = {}
    timing = {"compile_s": 0.0}
    t0 = time.perf_counter()
    started = False  # failures from the first training step on mark the seeds' runs failed
    try:
        for sr in todo:
            sr.state = initial_state(agent_cls, config, sr.seed, example_obs, example_act)
            validate_grid(Ks, Ns, sr.state["agent"].max_K)
            note = grid_note(sr.state["agent"], agent, Ks, Ns)
            if note and sr is todo[0]:
                print(note, flush=True)
            sr.run_config = run_config_of(sr.seed)
            sr.run.write_config(sr.run_config)
            sr.train_log = runs.CsvLog(sr.run.train_log)
            sr.eval_log = runs.CsvLog(sr.run.eval_log, ["step", *RESULT_KEYS, "env_steps", "time_s"])
            sr.ckpt = Checkpointer(sr.run.checkpoints, max_to_keep=keep_checkpoints, writer=True)
            sr.start = sr.ckpt.latest_step() or 0
            if sr.start > steps:
                raise SorlError(
                    f"{sr.run.path} already holds a checkpoint at step {sr.start} > --steps {steps}; "
                    "raise --steps or use another --run-dir"
                )
            if sr.start:
                sr.state = sr.ckpt.restore(sr.state, sr.start)
                print(f"continuing {sr.run.path} from its checkpoint at step {sr.start}", flush=True)
            sr.step = sr.start
            # rows logged after the checkpoint (or cut short) by a killed run go; a stale "failed" result too
            sr.train_log.truncate_after(sr.start)
            sr.eval_log.truncate_after(sr.start)
            sr.run.clear_failed_results()

        def get_pool() -> EnvPool:
            nonlocal pool
            if pool is None:
                pool = EnvPool(
                    task_name,
                    min(eval_episodes, eval_envs or eval_episodes),
                    workers=eval_workers,
                    success_timing=success_timing,
                    max_episode_steps=eval_max_episode_steps,
                )
            return pool

        stop.__enter__()
        started = True
        for start in sorted({sr.start for sr in todo}):  # seeds resuming from one checkpoint train together
            _train_group(
                [sr for sr in todo if sr.start == start],
                start=start,
                steps=steps,
                dataset=dataset,
                batch_size=int(config.batch_size),
                intervals=(log_interval, eval_interval, checkpoint_interval),
                task_name=task_name,
                agent=agent,
                Ks=Ks,
                Ns=Ns,
                eval_episodes=eval_episodes,
                get_pool=get_pool,
                stop=stop,
                compiled=compiled,
                timing=timing,
                progress=progress,
                t0=t0,
                strategy=strategy,
                several=len(seeds) > 1,
            )
    except Exception as e:
        if started and not isinstance(e, reliability.Interrupted):  # a failed run says so, and why
            error = str(e) if isinstance(e, SorlError) else f"{type(e).__name__}: {e}"
            for sr in todo:
                if sr.results is None and sr.run_config is not None and sr.ckpt is not None:
                    sr.run.try_write_results(
                        runs.make_results(sr.run_config, steps, sr.step, sr.last_eval, "failed", error=error)
                    )
        raise
    finally:
        stop.__exit__()
        if pool is not None:
            pool.close()
        for sr in todo:
            if sr.ckpt is not None:
                sr.ckpt.close()
    for sr in todo:
        if sr.error is None:
            title = f"{task_name}  agent={agent}  seed={sr.seed}  step={steps}  ({eval_episodes} episodes)"
            print(format_grid(sr.last_eval or [], title))
            print(f"results: {sr.run.results}")
    failed = [sr for sr in todo if sr.error is not None]
    if len(seeds) == 1 and failed:
        raise SorlError(failed[0].error)
    if failed:
        raise SorlError("; ".join(f"seed {sr.seed}: {sr.error}" for sr in failed))
    return [sr.results for sr in all_runs]


def _train_group(
    group: list[SeedRun],
    *,
    start: int,
    steps: int,
    dataset: Mapping[str, jax.Array],
    batch_size: int,
    intervals: tuple[int, int, int],
    task_name: str,
    agent: str,
    Ks: tuple[int, ...],
    Ns: tuple[int, ...],
    eval_episodes: int,
    get_pool: Callable[[], EnvPool],
    stop: reliability.GracefulStop,
    compiled: dict[tuple[str, int, int], Any],
    timing: dict[str, float],
    progress: bool,
    t0: float,
    strategy: str,
    several: bool,
) -> None:
    """Train the seeds of `group`, all at checkpoint `start`, up to `steps`: chunk, log, checkpoint, evaluate."""
    log_interval, eval_interval, checkpoint_interval = intervals
    if strategy == "vmap":
        runner: Any = VmappedSeeds([sr.state for sr in group])
    else:
        runner = SequentialSeeds([sr.state for sr in group])
    for sr in group:
        sr.state = None  # the runner holds the states from here on
    desc = f"{agent} {runs.short_task_name(task_name)}"
    if several:
        desc += f" seeds {','.join(str(sr.seed) for sr in group)}"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, unit="upd", desc=desc, dynamic_ncols=True, smoothing=0.1)
    train_s = 0.0
    compile_before = timing["compile_s"]
    acc_n, acc_t = 0, 0.0

    def live() -> list[tuple[int, SeedRun]]:
        return [(i, sr) for i, sr in enumerate(group) if sr.error is None]

    def save(step: int) -> None:
        for i, sr in live():
            sr.ckpt.save(step, {"agent": runner.agent(i), "data_rng": runner.data_rng(i), "step": np.int64(step)})

    def run_eval(step: int) -> None:
        for i, sr in live():
            if bar is not None:
                bar.set_description_str(f"{desc} (evaluating{f' seed {sr.seed}' if several else ''})")
            grid = evaluate(runner.agent(i), task_name, Ks, Ns, eval_episodes, seed=sr.seed, pool=get_pool())
            for r in grid:
                sr.eval_log.write({"step": step, **r})
            msg = "  ".join(f"K={r['K']},N={r['N']}: {100 * r['success']:.0f}%" for r in grid)
            _say(bar, f"[{f'seed {sr.seed} ' if several else ''}step {step}] eval success  {msg}")
            sr.last_eval, sr.last_eval_step = grid, step
        if bar is not None:
            bar.set_description_str(desc)

    def where() -> str:
        return ", ".join(str(sr.run.path) for sr in group)

    def eval_or_stop(step: int) -> None:
        """`run_eval`, unless a signal stopped the evaluation workers too: then stop at a checkpoint."""
        try:
            run_eval(step)
        except Exception:
            if not stop.requested:
                raise
            if acc_n:  # between logged steps: stop at the last checkpoint, not here
                raise stop.interrupted(step, where(), group[0].ckpt.latest_step()) from None
            if group[0].ckpt.latest_step() != step:
                save(step)
            raise stop.interrupted(step, where(), step) from None

    def fail(sr: SeedRun, step: int, message: str) -> None:
        sr.error = message
        sr.results = runs.make_results(sr.run_config, steps, step, sr.last_eval, "failed", error=message)
        sr.run.try_write_results(sr.results)
        if several:
            _say(bar, f"seed {sr.seed}: {message}")

    try:
        step = start
        due = start == steps or (start > 0 and start % eval_interval == 0)
        if due and any(start == steps or sr.eval_log.count(start) < len(Ks) * len(Ns) for sr in group):
            for sr in group:
                sr.eval_log.truncate_after(start - 1)  # the evaluation at the checkpoint was cut short: redo it
            eval_or_stop(start)
        for end in boundaries(start, steps, intervals):
            n = end - step
            if runner.key(n) not in compiled:
                tc = time.perf_counter()
                compiled[runner.key(n)] = runner.compile(dataset, batch_size, n)
                timing["compile_s"] += time.perf_counter() - tc
            tc = time.perf_counter()
            infos = runner.run(compiled[runner.key(n)], dataset)
            dt = time.perf_counter() - tc
            train_s += dt
            acc_n += n
            acc_t += dt
            any_bad_leaf = runner.any_non_finite()
            for i, sr in live():
                mine = reliability.inject_test_nan({k: v[i] for k, v in infos.items()}, step, n)  # test-only hook
                for k, v in mine.items():
                    sr.acc[k] = sr.acc.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
                bad = reliability.first_non_finite(mine, step)
                leaf = reliability.non_finite_leaf(runner.agent(i)) if not bad and any_bad_leaf else None
                if bad or leaf:
                    good = sr.ckpt.latest_step()
                    what = f"{bad[0]} at step {bad[1]}" if bad else f"parameter {leaf} by step {end}"
                    fail(
                        sr,
                        end,
                        f"non-finite {what}; stopped the run (results.json: failed). Last good checkpoint: "
                        f"{f'step {good}' if good else 'none'} in {sr.run.checkpoints}; lower the learning rate or "
                        "check the data, and train into a new --run-dir",
                    )
            step = end
            for _, sr in live():
                sr.step = end
            if not live():
                break
            if bar is not None:
                bar.update(n)
            if end % log_interval == 0 or end % checkpoint_interval == 0 or end == steps:
                for _, sr in live():
                    row = {
                        "step": step,
                        **{k: v / acc_n for k, v in sr.acc.items()},
                        "updates_per_s": acc_n / max(acc_t, 1e-9),
                        "time_s": time.perf_counter() - t0,
                    }
                    sr.train_log.write(row)
                    sr.acc = {}
                if bar is not None:
                    bar.set_postfix(_postfix(row), refresh=False)
                acc_n, acc_t = 0, 0.0
            stopping = stop.requested and acc_n == 0  # a signal came: stop at this logged step
            if end % checkpoint_interval == 0 or end == steps or stopping:
                save(step)
            if (end % eval_interval == 0 or end == steps) and not stopping:
                eval_or_stop(step)
            if stop.requested and acc_n == 0:
                if group[0].ckpt.latest_step() != step:  # the signal came during the evaluation
                    save(step)
                raise stop.interrupted(step, where(), step)
        if any(sr.last_eval_step != steps for _, sr in live()):  # resumed at the end (killed in the final eval)
            run_eval(steps)
        for _, sr in live():
            sr.ckpt.wait()
            sr.results = runs.make_results(sr.run_config, steps, steps, sr.last_eval, "complete")
            sr.results["timing"] = {
                "compile_s": timing["compile_s"] - compile_before,
                "train_s": train_s,
                "updates_per_s": (steps - start) / train_s if train_s > 0 else None,
                "wall_s": time.perf_counter() - t0,
            }
            if several:
                sr.results["timing"]["seeds_in_batch"] = [g.seed for g in group]
                sr.results["timing"]["seeds_strategy"] = strategy
            sr.run.write_results(sr.results)
    finally:
        if bar is not None:
            bar.close()


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


def _say(bar: Any, msg: str) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)


def train_seeds(
    task: str,
    agent: str = "sorl",
    *,
    seeds: str | Sequence[int] = "1-8",
    run_dir: str | Path | None = None,
    strategy: str = "auto",
    **settings: Any,
) -> list[dict[str, Any]]:
    """`sorl.train.train` for several seeds at once: one run directory per seed; the results dicts in seed order.

    `settings` are `train`'s (steps, data_dir, agent_overrides, intervals, evaluation, progress); `seeds` is
    '1-8', '1,3,5' or a list, `run_dir` the parent of the seeds' directories (see `seed_run_dir`). The loop is
    `train_runs`, the single-seed run's own. A seed whose loss or parameters go non-finite is stopped
    with results.json "failed", as a single-seed run would be; the other seeds go on, and a SorlError naming the
    failed seeds is raised at the end.
    """
    seed_list = parse_seeds(seeds)
    strategy = resolve_strategy(strategy)

    def run_dir_of(task_name: str, seed: int) -> Path:
        return seed_run_dir(run_dir, task_name, agent, seed)

    return train_runs(task, agent, seed_list, run_dir_of, strategy=strategy, **settings)


__all__ = [
    "boundaries",
    "compile_chunk",
    "initial_state",
    "load_run",
    "resolve_agent_config",
    "train",
    "train_chunk",
    "train_chunk_jit",
    "train_seeds",
    "train_runs",
]
