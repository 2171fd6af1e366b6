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
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

import sorl
from sorl import reliability, runs
from sorl.data import dataset_nbytes, dataset_size, sample_batch, to_device
from sorl.errors import SorlError
from sorl.evaluation import RESULT_KEYS, SUCCESS_UNIT, EnvPool, evaluate, format_grid, parse_int_list, validate_grid

if TYPE_CHECKING:
    from sorl.cli import TrainArgs

# Donation is a no-op where the backend cannot donate; that is not worth a warning per compile.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


# ---------------------------------------------------------------------------------------- the chunk


def train_chunk(
    agent: Any, data_rng: jax.Array, dataset: Mapping[str, jax.Array], *, batch_size: int, num_updates: int
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """`num_updates` updates on batches drawn from `dataset`: (agent, data_rng, infos stacked [num_updates])."""

    def body(carry, _):
        agent, rng = carry
        rng, key = jax.random.split(rng)
        # `train_update` where the agent has one (SORL: K from the schedule shared by seeds), else `update`.
        agent, info = getattr(agent, "train_update", agent.update)(sample_batch(dataset, key, batch_size))
        return (agent, rng), info

    (agent, data_rng), infos = jax.lax.scan(body, (agent, data_rng), None, length=num_updates)
    return agent, data_rng, infos


train_chunk_jit = jax.jit(train_chunk, static_argnames=("batch_size", "num_updates"), donate_argnums=(0, 1))
"""`train_chunk` compiled, with the agent and the data key donated (their buffers are reused in place)."""


def compile_chunk(agent: Any, data_rng: jax.Array, dataset: Mapping[str, jax.Array], batch_size: int, num_updates: int):
    """Ahead-of-time compiled chunk: call it as `chunk(agent, data_rng, dataset)`."""
    return train_chunk_jit.lower(agent, data_rng, dataset, batch_size=batch_size, num_updates=num_updates).compile()


def distinct_buffers(tree: Any) -> Any:
    """`tree` with no two leaves sharing a device buffer (copying the repeats).

    An agent fresh from `create` may hold one array twice (e.g. the target network initialised *as* the
    network), and a donated argument may not hold the same buffer twice.
    """
    seen: set[int] = set()

    def leaf(x):
        if not isinstance(x, jax.Array):
            return x
        try:
            ptr = x.unsafe_buffer_pointer()
        except Exception:  # noqa: BLE001 - sharded or exotic arrays: copy to be safe
            return jnp.array(x, copy=True)
        if ptr in seen:
            return jnp.array(x, copy=True)
        seen.add(ptr)
        return x

    return jax.tree.map(leaf, tree)


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
        agent_cls = get_agent(cfg["agent"])
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


@reliability.releases_locks
def train(
    task: str,
    agent: str = "sorl",
    *,
    steps: int = 1_000_000,
    seed: int = 0,
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
) -> dict[str, Any]:
    """Train `agent` on `task` for `steps` updates into one run directory; returns the results dict.

    Evaluates over the (eval_K x eval_N) grid every `eval_interval` updates and at the end, checkpoints every
    `checkpoint_interval` (default: `eval_interval`) and at the end, logs every `log_interval`. Rerunning into
    a run directory that holds the same run continues from its last checkpoint (or returns its results if it
    is complete); a directory holding another task's, agent's or seed's run is refused.
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
    _positive("eval_max_episode_steps", eval_max_episode_steps, allow_none=True)
    _positive("train_episodes", train_episodes, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SorlError(f"seed={seed}: must be a non-negative integer")
    if success_timing not in ("pre", "post"):
        raise SorlError(f"success_timing={success_timing!r}: must be 'pre' or 'post'")
    Ks = parse_int_list(eval_K, "eval_K")
    Ns = parse_int_list(eval_N, "eval_N")
    checkpoint_interval = checkpoint_interval or eval_interval

    task_info = resolve_task(task)
    task_name, env_name = task_info.name, task_info.env.name
    agent_cls, config, env_settings = resolve_agent_config(agent, env_name, agent_overrides)
    validate_grid(Ks, Ns, None)  # power of two / N >= 1 now; the trained maximum once the agent exists

    run = runs.open_run_dir(
        run_dir or runs.default_run_dir(task_name, agent, seed), task=task_name, agent=agent, seed=seed
    )
    reliability.lock_run_dir(run.path)  # a second process training into this directory is refused
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
            return done

    # --- data (generated if missing and generatable) on the device
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
    prepare = getattr(agent_cls, "prepare_dataset", None)
    if prepare is not None:
        dataset = prepare(dataset)

    state = initial_state(agent_cls, config, seed, example_obs, example_act)
    validate_grid(Ks, Ns, getattr(state["agent"], "max_K", None))

    run_config = {
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
    run.write_config(run_config)

    train_log = runs.CsvLog(run.train_log)
    eval_log = runs.CsvLog(run.eval_log, ["step", *RESULT_KEYS, "env_steps", "time_s"])
    ckpt = Checkpointer(run.checkpoints, max_to_keep=keep_checkpoints, writer=True)
    pool: EnvPool | None = None
    bar = None
    stop = reliability.GracefulStop()  # SIGTERM/SIGINT: checkpoint at the next logged step, then exit
    step: int | None = None  # set once training starts: failures from then on mark the run failed
    try:
        start = ckpt.latest_step() or 0
        if start > steps:
            raise SorlError(
                f"{run.path} already holds a checkpoint at step {start} > --steps {steps}; "
                "raise --steps or use another --run-dir"
            )
        if start:
            state = ckpt.restore(state, start)
            print(f"continuing {run.path} from its checkpoint at step {start}", flush=True)
        # rows logged after the checkpoint (or cut short) by a killed run go; a stale "failed" result too
        train_log.truncate_after(start)
        eval_log.truncate_after(start)
        run.clear_failed_results()

        batch_size = int(config.batch_size)
        agent_state, data_rng = state["agent"], jnp.asarray(state["data_rng"])
        compiled: dict[int, Any] = {}
        compile_s = 0.0
        train_s = 0.0
        acc: dict[str, float] = {}
        acc_n = 0
        acc_t = 0.0
        last_eval: list[dict[str, Any]] | None = None
        last_eval_step = -1
        t0 = time.perf_counter()

        def run_eval(step: int) -> list[dict[str, Any]]:
            nonlocal pool
            if pool is None:
                pool = EnvPool(
                    task_name,
                    eval_episodes,
                    workers=eval_workers,
                    success_timing=success_timing,
                    max_episode_steps=eval_max_episode_steps,
                )
            if bar is not None:
                bar.set_description_str(f"{desc} (evaluating)")
            grid = evaluate(agent_state, task_name, Ks, Ns, eval_episodes, seed=seed, pool=pool)
            if bar is not None:
                bar.set_description_str(desc)
            for r in grid:
                eval_log.write({"step": step, **r})
            msg = "  ".join(f"K={r['K']},N={r['N']}: {100 * r['success']:.0f}%" for r in grid)
            _say(bar, f"[step {step}] eval success  {msg}")
            return grid

        desc = f"{agent} {runs.short_task_name(task_name)}"
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=steps,
                initial=start,
                unit="upd",
                desc=desc,
                dynamic_ncols=True,
                smoothing=0.1,
            )

        def save(step: int) -> None:
            ckpt.save(step, {"agent": agent_state, "data_rng": data_rng, "step": np.int64(step)})

        def eval_or_stop(step: int) -> list[dict[str, Any]]:
            """`run_eval`, unless a signal stopped the evaluation workers too: then stop at a checkpoint."""
            try:
                return run_eval(step)
            except Exception:
                if not stop.requested:
                    raise
                if acc_n:  # between logged steps: stop at the last checkpoint, not here
                    raise stop.interrupted(step, run.path, ckpt.latest_step()) from None
                if ckpt.latest_step() != step:
                    save(step)
                raise stop.interrupted(step, run.path, step) from None

        stop.__enter__()
        step = start
        due = start == steps or (start > 0 and start % eval_interval == 0)
        if due and (start == steps or eval_log.count(start) < len(Ks) * len(Ns)):
            eval_log.truncate_after(start - 1)  # the evaluation at the checkpoint was cut short: redo it
            last_eval, last_eval_step = eval_or_stop(start), start
        for end in boundaries(start, steps, (log_interval, eval_interval, checkpoint_interval)):
            n = end - step
            agent_state, data_rng = distinct_buffers((agent_state, data_rng))
            if n not in compiled:
                tc = time.perf_counter()
                compiled[n] = compile_chunk(agent_state, data_rng, dataset, batch_size, n)
                compile_s += time.perf_counter() - tc
            tc = time.perf_counter()
            agent_state, data_rng, infos = compiled[n](agent_state, data_rng, dataset)
            infos = reliability.inject_test_nan(jax.device_get(infos), step, n)  # no-op unless a test asks
            dt = time.perf_counter() - tc
            train_s += dt
            step = end
            for k, v in infos.items():
                acc[k] = acc.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
            acc_n += n
            acc_t += dt
            bad = reliability.first_non_finite(infos, step - n)
            leaf = None if bad else reliability.non_finite_leaf(agent_state)
            if bad or leaf:
                good = ckpt.latest_step()
                what = f"{bad[0]} at step {bad[1]}" if bad else f"parameter {leaf} by step {step}"
                raise SorlError(
                    f"non-finite {what}; stopped the run (results.json: failed). Last good checkpoint: "
                    f"{f'step {good}' if good else 'none'} in {run.checkpoints}; lower the learning rate or check "
                    "the data, and train into a new --run-dir"
                )
            if bar is not None:
                bar.update(n)
            if end % log_interval == 0 or end % checkpoint_interval == 0 or end == steps:
                row = {
                    "step": step,
                    **{k: v / acc_n for k, v in acc.items()},
                    "updates_per_s": acc_n / max(acc_t, 1e-9),
                    "time_s": time.perf_counter() - t0,
                }
                train_log.write(row)
                if bar is not None:
                    bar.set_postfix(_postfix(row), refresh=False)
                acc, acc_n, acc_t = {}, 0, 0.0
            stopping = stop.requested and acc_n == 0  # a signal came: stop at this logged step
            if end % checkpoint_interval == 0 or end == steps or stopping:
                save(step)
            if (end % eval_interval == 0 or end == steps) and not stopping:
                last_eval, last_eval_step = eval_or_stop(step), step
            if stop.requested and acc_n == 0:
                if ckpt.latest_step() != step:  # the signal came during the evaluation
                    save(step)
                raise stop.interrupted(step, run.path, step)
        if last_eval_step != steps:  # resumed at the end (e.g. killed during the final evaluation)
            last_eval = run_eval(steps)
        ckpt.wait()
        results = _results(run_config, steps, steps, last_eval, "complete")
        results["timing"] = {
            "compile_s": compile_s,
            "train_s": train_s,
            "updates_per_s": (steps - start) / train_s if train_s > 0 else None,
            "wall_s": time.perf_counter() - t0,
        }
        run.write_results(results)
    except Exception as e:
        if step is not None and not isinstance(e, reliability.Interrupted):  # a failed run says so, and why
            error = str(e) if isinstance(e, SorlError) else f"{type(e).__name__}: {e}"
            run.try_write_results(_results(run_config, steps, step, last_eval, "failed", error=error))
        raise
    finally:
        stop.__exit__()
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.close()
        ckpt.close()
    title = f"{task_name}  agent={agent}  seed={seed}  step={steps}  ({eval_episodes} episodes)"
    print(format_grid(last_eval or [], title))
    print(f"results: {run.results}")
    return results


def _results(
    run_config: Mapping[str, Any],
    steps: int,
    step: int,
    grid: list[dict[str, Any]] | None,
    status: str,
    error: str | None = None,
) -> dict[str, Any]:
    out = {
        "status": status,
        "task": run_config["task"],
        "agent": run_config["agent"],
        "seed": run_config["seed"],
        "steps": steps,
        "step": step,
        "success_timing": run_config["success_timing"],
        "ogbench_version": run_config["ogbench_version"],
        "sorl_version": run_config["sorl_version"],
        "config": run_config["agent_config"],
        "eval_episodes": run_config["eval"]["episodes"],
        "eval_max_episode_steps": run_config["eval"]["max_episode_steps"],
        "success_unit": SUCCESS_UNIT,
        "success_metric": "fraction of evaluation episodes with OGBench info['success'] at the episode's end "
        "(final checkpoint)",
        "final": [{k: r[k] for k in RESULT_KEYS} for r in grid] if grid else [],
    }
    if error:
        out["error"] = error
    return out


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


# ----------------------------------------------------------------------------------------------- CLI


def train_from_cli(args: TrainArgs, agent_overrides: dict[str, str]) -> dict[str, Any]:
    """`sorl train ...`"""
    if getattr(args, "seeds", None) is not None:  # several seeds, one vmapped program: sorl.multiseed
        from sorl.multiseed import train_seeds_from_cli

        return train_seeds_from_cli(args, agent_overrides)
    return train(
        args.task,
        args.agent,
        steps=args.steps,
        seed=args.seed,
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
    )


__all__ = [
    "boundaries",
    "compile_chunk",
    "initial_state",
    "load_run",
    "resolve_agent_config",
    "train",
    "train_chunk",
    "train_chunk_jit",
    "train_from_cli",
]
