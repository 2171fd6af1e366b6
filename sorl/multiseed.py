"""Several seeds in one process and one compiled program: `sorl train --seeds 1-8`.

The seeds' training states are stacked on a leading axis and trained by `train_chunk` vmapped over the agent
and the data key, with the dataset shared (one copy in memory, whatever the number of seeds). The agent's
step count is *not* batched: every seed is at the same step, and keeping it a scalar keeps what is derived
from it a scalar too. That matters for SORL: the training loop draws K from a schedule keyed by the step
alone (`SORLAgent.train_update`), so the `lax.switch` over K stays a real switch and each update runs the one
drawn K for all seeds — with a per-seed K, vmap would turn the switch into a select that runs every branch
(1 + 2 + 4 + 8 sampler passes instead of 3.75 on average). ReBRAC's actor-every-other-step `lax.cond` stays a
real cond for the same reason.

Strategies (`resolve_strategy`): 'vmap' is the above; 'loop' advances the seeds of each chunk one after another
through the single-seed compiled chunk, which on a CPU is as fast (one seed's matmuls already fill the cores) and
still shares one compilation, one dataset copy and one evaluation pool. 'auto' (the default) picks vmap on
accelerators and loop on the CPU.

Each seed gets the run directory a single-seed run would get (`runs/<task>/<agent>/seed<S>`, or
`RUN_DIR/seed<S>` with `--run-dir RUN_DIR`, or `RUN_DIR` with `{seed}` replaced) and the same content as
`sorl train --seed S`: config.json, train.csv, eval.csv, the checkpoints and results.json are equal up to float
rounding (batched matmuls round differently) and the timing fields. A single-seed run continues a directory
written here and vice versa. Seeds whose directory is complete are skipped; seeds resuming from different
checkpoints are trained as one batch per starting step.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sorl
from sorl import reliability, runs
from sorl.data import dataset_nbytes, dataset_size, to_device
from sorl.errors import SorlError
from sorl.evaluation import RESULT_KEYS, SUCCESS_UNIT, EnvPool, evaluate, format_grid, parse_int_list, validate_grid
from sorl.train import (
    _plain,
    _positive,
    _postfix,
    _results,
    _say,
    boundaries,
    compile_chunk,
    distinct_buffers,
    initial_state,
    ogbench_version,
    resolve_agent_config,
    train_chunk,
)

# ------------------------------------------------------------------------------------------ seeds


def parse_seeds(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """'1-8' -> (1, ..., 8); '1,3,5' -> (1, 3, 5); '0-2,7' -> (0, 1, 2, 7). Duplicates dropped, order kept."""
    if isinstance(text, bool):
        raise SorlError(f"--seeds {text!r}: expected seeds like 1-8 or 1,3,5")
    if isinstance(text, (int, np.integer)):
        items: list[int] = [int(text)]
    elif isinstance(text, str):
        items = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise SorlError(f"--seeds {text!r}: expected non-negative seeds like 1-8 or 1,3,5")
            lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
            if hi < lo:
                raise SorlError(f"--seeds {text!r}: the range {lo}-{hi} is empty (write it low-high)")
            items.extend(range(lo, hi + 1))
    else:
        items = [int(s) for s in text]
    out: list[int] = []
    for s in items:
        if s < 0:
            raise SorlError(f"--seeds: seed {s} must be a non-negative integer")
        if s not in out:
            out.append(s)
    if not out:
        raise SorlError("--seeds: expected at least one seed, e.g. 1-8")
    return tuple(out)


def seed_run_dir(run_dir: str | Path | None, task_name: str, agent: str, seed: int) -> Path:
    """The run directory of `seed`: the single-seed default, RUN_DIR/seed<S>, or RUN_DIR with {seed} filled in."""
    if run_dir is None:
        return runs.default_run_dir(task_name, agent, seed)
    text = str(run_dir)
    if "{seed}" in text:
        return Path(text.replace("{seed}", str(seed)))
    return Path(run_dir) / f"seed{seed}"


# ------------------------------------------------------------------------------ stacked training states


def _has_shared_step(agent: Any) -> bool:
    """Agents with a scalar `step` field keep it unbatched (the same for every seed)."""
    return (
        dataclasses.is_dataclass(agent)
        and any(f.name == "step" for f in dataclasses.fields(agent))
        and hasattr(agent.step, "shape")
        and tuple(agent.step.shape) == ()
    )


def agent_axes(agent: Any) -> Any:
    """vmap axes of a stacked agent: 0 for every leaf, None (shared) for the step count."""
    if _has_shared_step(agent):
        return jax.tree.map(lambda _: 0, agent.replace(step=None)).replace(step=None)
    return jax.tree.map(lambda _: 0, agent)


def stack_agents(agents: Sequence[Any]) -> Any:
    """Seeds' agents as one pytree with a leading seed axis (the step count shared)."""
    first = agents[0]
    if _has_shared_step(first):
        steps = {int(a.step) for a in agents}
        if len(steps) != 1:
            raise ValueError(f"seeds trained together must be at the same step, got {sorted(steps)}")
        body = jax.tree.map(lambda *xs: jnp.stack(xs), *[a.replace(step=None) for a in agents])
        return body.replace(step=jnp.array(first.step, copy=True))  # its own buffer: the chunk donates it
    return jax.tree.map(lambda *xs: jnp.stack(xs), *agents)


def unstack_agent(agents: Any, i: int) -> Any:
    """Seed `i`'s agent out of a stacked one: the same pytree a single-seed run holds."""
    if _has_shared_step(agents):
        return jax.tree.map(lambda x: x[i], agents.replace(step=None)).replace(step=agents.step)
    return jax.tree.map(lambda x: x[i], agents)


def train_chunk_seeds(
    agents: Any, data_rngs: jax.Array, dataset: Mapping[str, jax.Array], *, batch_size: int, num_updates: int
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """`train_chunk` for stacked seeds: (agents, data_rngs, infos [seeds, num_updates]); dataset shared."""
    axes = agent_axes(agents)
    chunk = partial(train_chunk, batch_size=batch_size, num_updates=num_updates)
    return jax.vmap(chunk, in_axes=(axes, 0, None), out_axes=(axes, 0, 0))(agents, data_rngs, dataset)


train_chunk_seeds_jit = jax.jit(train_chunk_seeds, static_argnames=("batch_size", "num_updates"), donate_argnums=(0, 1))
"""`train_chunk_seeds` compiled, the stacked agents and data keys donated."""


def compile_chunk_seeds(agents: Any, data_rngs: jax.Array, dataset: Mapping[str, jax.Array], batch_size: int, n: int):
    """Ahead-of-time compiled `train_chunk_seeds`: call it as `chunk(agents, data_rngs, dataset)`."""
    return train_chunk_seeds_jit.lower(agents, data_rngs, dataset, batch_size=batch_size, num_updates=n).compile()


STRATEGIES = ("auto", "vmap", "loop")


def resolve_strategy(strategy: str) -> str:
    """'vmap' or 'loop' for `strategy`; 'auto' is 'vmap' on accelerators and 'loop' on the CPU.

    On a CPU the single-seed update's matmuls already keep every core busy, so a vmapped batch of seeds is no
    faster than running them one after another and measured a little slower (`sorl bench`, seeds section);
    'loop' runs the seeds of each chunk one after another through the single-seed compiled chunk instead (one
    compilation and one copy of the dataset all the same). On a GPU the vmapped batch fills the device.
    """
    if strategy not in STRATEGIES:
        raise SorlError(f"seeds strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    return strategy


class _Vmapped:
    """The seeds' states stacked (step shared), advanced by one vmapped compiled chunk."""

    def __init__(self, states: Sequence[Mapping[str, Any]]):
        self.agents = stack_agents([st["agent"] for st in states])
        self.data_rngs = jnp.stack([jnp.asarray(st["data_rng"]) for st in states])
        self.S = len(states)

    def compile(self, dataset, batch_size: int, n: int):
        self.agents, self.data_rngs = distinct_buffers((self.agents, self.data_rngs))
        return compile_chunk_seeds(self.agents, self.data_rngs, dataset, batch_size, n)

    def key(self, n: int) -> tuple[str, int, int]:
        return ("vmap", self.S, n)

    def run(self, compiled, dataset) -> dict[str, np.ndarray]:
        self.agents, self.data_rngs = distinct_buffers((self.agents, self.data_rngs))
        self.agents, self.data_rngs, infos = compiled(self.agents, self.data_rngs, dataset)
        return {k: np.asarray(v) for k, v in jax.device_get(infos).items()}

    def agent(self, i: int) -> Any:
        return unstack_agent(self.agents, i)

    def data_rng(self, i: int) -> jax.Array:
        return self.data_rngs[i]

    def any_non_finite(self) -> bool:
        return reliability.non_finite_leaf(self.agents) is not None


class _Looped:
    """The seeds' states side by side, each advanced in turn by the single-seed compiled chunk."""

    def __init__(self, states: Sequence[Mapping[str, Any]]):
        self.states = [(st["agent"], jnp.asarray(st["data_rng"])) for st in states]

    def compile(self, dataset, batch_size: int, n: int):
        self.states = [distinct_buffers(st) for st in self.states]
        return compile_chunk(*self.states[0], dataset, batch_size, n)

    def key(self, n: int) -> tuple[str, int, int]:
        return ("loop", 1, n)

    def run(self, compiled, dataset) -> dict[str, np.ndarray]:
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


# ------------------------------------------------------------------------------------------ training


@dataclasses.dataclass
class _SeedRun:
    """One seed's run directory and bookkeeping inside a multi-seed run."""

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


@reliability.releases_locks
def train_seeds(
    task: str,
    agent: str = "sorl",
    *,
    seeds: str | Sequence[int] = "1-8",
    steps: int = 1_000_000,
    run_dir: str | Path | None = None,
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
    eval_max_episode_steps: int | None = None,
    train_episodes: int | None = None,
    progress: bool = True,
    strategy: str = "auto",
) -> list[dict[str, Any]]:
    """`sorl.train.train` for several seeds at once: one run directory per seed; the results dicts in seed order.

    The arguments are `train`'s, with `seeds` ('1-8', '1,3,5' or a list) for `seed`, and `run_dir` the parent
    of the seeds' directories (see `seed_run_dir`). A seed whose loss or parameters go non-finite is stopped
    with results.json "failed", as a single-seed run would be; the other seeds go on, and a SorlError naming
    the failed seeds is raised at the end.
    """
    from envs import datasets as env_datasets
    from envs.registry import resolve_task
    from sorl.checkpoint import Checkpointer
    from sorl.config import config_to_dict

    seed_list = parse_seeds(seeds)
    strategy = resolve_strategy(strategy)
    _positive("steps", steps)
    _positive("log_interval", log_interval)
    _positive("eval_interval", eval_interval)
    _positive("checkpoint_interval", checkpoint_interval, allow_none=True)
    _positive("keep_checkpoints", keep_checkpoints)
    _positive("eval_episodes", eval_episodes)
    _positive("eval_workers", eval_workers, allow_none=True)
    _positive("eval_max_episode_steps", eval_max_episode_steps, allow_none=True)
    _positive("train_episodes", train_episodes, allow_none=True)
    if success_timing not in ("pre", "post"):
        raise SorlError(f"success_timing={success_timing!r}: must be 'pre' or 'post'")
    Ks = parse_int_list(eval_K, "eval_K")
    Ns = parse_int_list(eval_N, "eval_N")
    checkpoint_interval = checkpoint_interval or eval_interval

    task_info = resolve_task(task)
    task_name, env_name = task_info.name, task_info.env.name
    agent_cls, config, env_settings = resolve_agent_config(agent, env_name, agent_overrides)
    validate_grid(Ks, Ns, None)

    # --- every seed's run directory, checked and locked before any expensive work
    all_runs: list[_SeedRun] = []
    for seed in seed_list:
        run = runs.open_run_dir(seed_run_dir(run_dir, task_name, agent, seed), task=task_name, agent=agent, seed=seed)
        reliability.lock_run_dir(run.path)
        sr = _SeedRun(seed, run)
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
            done = run.read_results()
            if done and done.get("status") == "complete" and done.get("steps") == steps:
                print(f"{run.path} is already complete ({steps} updates); see {run.results}")
                sr.results = done
        all_runs.append(sr)
    todo = [sr for sr in all_runs if sr.results is None]
    if not todo:
        return [sr.results for sr in all_runs]

    # --- data on the device, once for all seeds
    env, train_data, val_data = env_datasets.load_task(
        task_name, data_dir, success_timing=success_timing, episodes=train_episodes
    )
    del val_data
    if hasattr(env, "close"):
        env.close()
    example_obs = np.asarray(train_data["observations"][:1], np.float32)
    example_act = np.asarray(train_data["actions"][:1], np.float32)
    dataset = to_device(train_data)
    del train_data
    prepare = getattr(agent_cls, "prepare_dataset", None)
    if prepare is not None:
        dataset = prepare(dataset)

    def run_config_of(seed: int) -> dict[str, Any]:
        """Exactly the config.json `sorl.train.train` writes for `seed` (checked by tests/test_multiseed.py)."""
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
                "seed": seed,
                "max_episode_steps": eval_max_episode_steps,
                "success_unit": SUCCESS_UNIT,
            },
        }

    pool: EnvPool | None = None
    stop = reliability.GracefulStop()
    compiled: dict[tuple[str, int, int], Any] = {}
    timing = {"compile_s": 0.0}
    t0 = time.perf_counter()
    started = False  # failures from the first training step on mark the seeds' runs failed, as in `train`
    try:
        for sr in todo:
            sr.state = initial_state(agent_cls, config, sr.seed, example_obs, example_act)
            validate_grid(Ks, Ns, getattr(sr.state["agent"], "max_K", None))
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
            sr.train_log.truncate_after(sr.start)
            sr.eval_log.truncate_after(sr.start)
            sr.run.clear_failed_results()

        def get_pool() -> EnvPool:
            nonlocal pool
            if pool is None:
                pool = EnvPool(
                    task_name,
                    eval_episodes,
                    workers=eval_workers,
                    success_timing=success_timing,
                    max_episode_steps=eval_max_episode_steps,
                )
            return pool

        stop.__enter__()
        started = True
        for start in sorted({sr.start for sr in todo}):
            group = [sr for sr in todo if sr.start == start]
            _train_group(
                group,
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
            )
    except Exception as e:
        if started and not isinstance(e, reliability.Interrupted):
            error = str(e) if isinstance(e, SorlError) else f"{type(e).__name__}: {e}"
            for sr in todo:
                if sr.results is None and sr.run_config is not None and sr.ckpt is not None:
                    sr.run.try_write_results(
                        _results(sr.run_config, steps, sr.step, sr.last_eval, "failed", error=error)
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
    if failed:
        raise SorlError("; ".join(f"seed {sr.seed}: {sr.error}" for sr in failed))
    return [sr.results for sr in all_runs]


def _train_group(
    group: list[_SeedRun],
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
    get_pool: Any,
    stop: reliability.GracefulStop,
    compiled: dict[tuple[str, int, int], Any],
    timing: dict[str, float],
    progress: bool,
    t0: float,
    strategy: str,
) -> None:
    """Train the seeds of `group` (all at checkpoint `start`) as one vmapped batch up to `steps`."""
    log_interval, eval_interval, checkpoint_interval = intervals
    runner = (_Vmapped if strategy == "vmap" else _Looped)([sr.state for sr in group])
    for sr in group:
        sr.state = None  # the runner holds the states from here on
    seeds_text = ",".join(str(sr.seed) for sr in group)
    desc = f"{agent} {runs.short_task_name(task_name)} seeds {seeds_text}"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, unit="upd", desc=desc, dynamic_ncols=True, smoothing=0.1)
    train_s = 0.0
    compile_before = timing["compile_s"]
    acc_n, acc_t = 0, 0.0

    def live() -> list[tuple[int, _SeedRun]]:
        return [(i, sr) for i, sr in enumerate(group) if sr.error is None]

    def save(step: int) -> None:
        for i, sr in live():
            state = {"agent": runner.agent(i), "data_rng": runner.data_rng(i), "step": np.int64(step)}
            sr.ckpt.save(step, state)

    def run_eval(step: int) -> None:
        for i, sr in live():
            if bar is not None:
                bar.set_description_str(f"{desc} (evaluating seed {sr.seed})")
            grid = evaluate(runner.agent(i), task_name, Ks, Ns, eval_episodes, seed=sr.seed, pool=get_pool())
            for r in grid:
                sr.eval_log.write({"step": step, **r})
            msg = "  ".join(f"K={r['K']},N={r['N']}: {100 * r['success']:.0f}%" for r in grid)
            _say(bar, f"[seed {sr.seed} step {step}] eval success  {msg}")
            sr.last_eval, sr.last_eval_step = grid, step
        if bar is not None:
            bar.set_description_str(desc)

    def where() -> str:
        return ", ".join(str(sr.run.path) for sr in group)

    def eval_or_stop(step: int) -> None:
        try:
            run_eval(step)
        except Exception:
            if not stop.requested:
                raise
            if acc_n:
                raise stop.interrupted(step, where(), group[0].ckpt.latest_step()) from None
            if group[0].ckpt.latest_step() != step:
                save(step)
            raise stop.interrupted(step, where(), step) from None

    def fail(i: int, sr: _SeedRun, step: int, message: str) -> None:
        sr.error = message
        sr.results = _results(sr.run_config, steps, step, sr.last_eval, "failed", error=message)
        sr.run.try_write_results(sr.results)
        _say(bar, f"seed {sr.seed}: {message}")

    try:
        step = start
        due = start == steps or (start > 0 and start % eval_interval == 0)
        if due:
            redo = [sr for sr in group if start == steps or sr.eval_log.count(start) < len(Ks) * len(Ns)]
            if redo:
                for sr in group:
                    sr.eval_log.truncate_after(start - 1)
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
                mine = reliability.inject_test_nan({k: np.asarray(v)[i] for k, v in infos.items()}, step, n)
                for k, v in mine.items():
                    sr.acc[k] = sr.acc.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
                bad = reliability.first_non_finite(mine, step)
                leaf = reliability.non_finite_leaf(runner.agent(i)) if not bad and any_bad_leaf else None
                if bad or leaf:
                    good = sr.ckpt.latest_step()
                    what = f"{bad[0]} at step {bad[1]}" if bad else f"parameter {leaf} by step {end}"
                    fail(
                        i,
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
            stopping = stop.requested and acc_n == 0
            if end % checkpoint_interval == 0 or end == steps or stopping:
                save(step)
            if (end % eval_interval == 0 or end == steps) and not stopping:
                eval_or_stop(step)
            if stop.requested and acc_n == 0:
                if group[0].ckpt.latest_step() != step:
                    save(step)
                raise stop.interrupted(step, where(), step)
        for _, sr in live():
            if sr.last_eval_step != steps:
                run_eval(steps)
                break
        for _, sr in live():
            sr.ckpt.wait()
            sr.results = _results(sr.run_config, steps, steps, sr.last_eval, "complete")
            sr.results["timing"] = {
                "compile_s": timing["compile_s"] - compile_before,
                "train_s": train_s,
                "updates_per_s": (steps - start) / train_s if train_s > 0 else None,
                "wall_s": time.perf_counter() - t0,
                "seeds_in_batch": [g.seed for g in group],
                "seeds_strategy": strategy,
            }
            sr.run.write_results(sr.results)
    finally:
        if bar is not None:
            bar.close()


__all__ = [
    "agent_axes",
    "compile_chunk_seeds",
    "parse_seeds",
    "seed_run_dir",
    "stack_agents",
    "train_chunk_seeds",
    "train_chunk_seeds_jit",
    "train_seeds",
    "train_seeds_from_cli",
    "unstack_agent",
]


def train_seeds_from_cli(args: Any, agent_overrides: dict[str, str]) -> list[dict[str, Any]]:
    """`sorl train --seeds 1-8 ...`"""
    return train_seeds(
        args.task,
        args.agent,
        seeds=args.seeds,
        steps=args.steps,
        run_dir=args.run_dir,
        data_dir=args.data_dir,
        success_timing=args.success_timing,
        agent_overrides=agent_overrides,
        log_interval=args.log_interval,
        eval_interval=args.eval_interval,
        checkpoint_interval=getattr(args, "checkpoint_interval", None),
        eval_episodes=args.eval_episodes,
        eval_K=args.eval_K,
        eval_N=args.eval_N,
        eval_workers=args.eval_workers,
        eval_max_episode_steps=getattr(args, "eval_max_episode_steps", None),
        train_episodes=args.train_episodes,
        progress=args.progress,
        strategy=getattr(args, "seeds_strategy", "auto"),
    )
