"""Vectorised evaluation over a (K, N) grid: episodes in lockstep, environments in worker processes.

All running episodes advance together: one batched, jitted policy call per environment step answers every
episode at once (the batch has a fixed size — finished episodes are padded with their last observation — so
the policy compiles once per (K, N)), and the environments are stepped in parallel by worker processes, each
owning a slice of them (default: one worker per core). Success is OGBench's `info['success']` at the end of
an episode (an episode ends when it terminates or is truncated by the time limit).

Reproducibility: episode i is reset with a seed derived from (eval seed, i), and the policy's keys come from
the eval seed, so the same seed gives the same numbers whatever the number of workers. Every (K, N) cell
sees the same initial states and the same policy keys (common random numbers).

This module imports JAX lazily: the environment workers (started with 'spawn') import it too and should
not pay for JAX.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runner.runs import RESULT_KEYS, SUCCESS_UNIT  # noqa: F401 - an evaluation's result keys (the results schema)
from sorl.errors import SorlError
from sorl.machine import available_cores
from sorl.validation import check_positive

# ------------------------------------------------------------------------------------------- parsing


def parse_int_list(text: str | Sequence[int] | int, name: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8); one clear SorlError on junk. Duplicates are dropped, order kept."""
    if isinstance(text, bool):
        raise SorlError(f"{name}: expected comma-separated integers, got {text!r}")
    if isinstance(text, int):
        items: list[Any] = [text]
    elif isinstance(text, str):
        items = [s.strip() for s in text.split(",")]
        if not text.strip() or any(s == "" for s in items):
            raise SorlError(f"{name}: expected comma-separated integers like 1,2,4,8, got {text!r}")
    else:
        items = list(text)
        if not items:
            raise SorlError(f"{name}: expected at least one value")
    out: list[int] = []
    for s in items:
        try:
            if isinstance(s, str):
                v = int(s, 10)
            elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
                v = int(s)
            else:
                raise ValueError
        except ValueError:
            raise SorlError(
                f"{name}: {s!r} is not an integer (expected comma-separated integers like 1,2,4,8)"
            ) from None
        if v not in out:
            out.append(v)
    return tuple(out)


def validate_grid(
    Ks: Sequence[int], Ns: Sequence[int], max_K: int | None, agent: Any = None, name: str | None = None
) -> None:
    """Every K one `agent` takes up to max_K (its `check_K`; no agent: the contract's default rule, a power of two)
    and every N >= 1, else SorlError (via `sorl.inference.validate_K_N`). `name`: the agent's registry name."""
    from sorl.inference import validate_K_N

    for K in Ks:
        validate_K_N(K, 1, max_K, agent, name)
    for N in Ns:
        validate_K_N(1, N, max_K, agent, name)


def check_grid_values(Ks: Sequence[int], Ns: Sequence[int]) -> None:
    """The grid's check where no agent is known yet (a settings field, a spec value, a flag before the run is read):
    every K and N a positive integer. Which K an agent takes is its own rule (`sorl.agent.Agent.check_K`), asked by
    `validate_grid` once the agent is known. Imports no JAX (the command line's settings run it)."""
    for K in Ks:
        if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
            raise SorlError(f"K={K}: the number of sampling steps must be a positive integer")
    for N in Ns:
        if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 1:
            raise SorlError(f"N={N}: the number of best-of-N candidates must be an integer >= 1")


def grid_note(agent: Any, name: str, Ks: Sequence[int], Ns: Sequence[int]) -> str | None:
    """One line naming the axes of the (K, N) grid that cannot change `agent`'s action, and the cell its published
    numbers are where that is one particular cell (its `PUBLISHED_CELL`); or None.

    An agent declares the axes in its class's `GRID_NOTES` ({"K" or "N": why}); a grid that asks for more than K = 1
    (or N = 1) along such an axis measures the same policy in every cell of it, and the user is told so once. An
    agent whose `PUBLISHED_CELL` is set (IFQL: 10 flow steps, 32 candidates) has it named, and how to evaluate it
    where the grid leaves it out.
    """
    asked = {"K": Ks, "N": Ns}
    ignored = [f"{axis} ({why})" for axis, why in getattr(agent, "GRID_NOTES", {}).items() if set(asked[axis]) - {1}]
    notes = []
    if ignored:
        notes.append(
            f"{name} ignores {' and '.join(ignored)}: every cell along "
            f"{'those axes' if len(ignored) > 1 else 'that axis'} evaluates the same policy"
        )
    cell = getattr(agent, "PUBLISHED_CELL", None)
    if cell is not None:
        K, N = cell
        missing = "" if K in Ks and N in Ns else f", not in this grid (add it with --eval-K {K} --eval-N {N})"
        notes.append(f"{name}'s published numbers are its cell K={K}, N={N}{missing}")
    return "note: " + "; ".join(notes) if notes else None


def policy_cell(agent: Any) -> tuple[int, int]:
    """The (K, N) `agent` (an agent or its class) acts with when asked for none: its `PUBLISHED_CELL` where it has
    one (IFQL: 10 flow steps, 32 candidates), else the integer defaults of its `sample_actions` (the contract's:
    K = 1, N = 1, SORL's and the released SORL code's). A default of None is resolved by the agent from its config,
    which only a `PUBLISHED_CELL` names to the rest of the suite: without one, that axis counts as 1 (the contract's
    default, what every agent acted with before this rule)."""
    import inspect

    from sorl.agent import Agent

    cls = agent if isinstance(agent, type) else type(agent)
    cell = getattr(cls, "PUBLISHED_CELL", None)
    if cell is not None:
        return int(cell[0]), int(cell[1])
    params = inspect.signature(getattr(cls, "sample_actions", Agent.sample_actions)).parameters
    defaults = [params[axis].default if axis in params else None for axis in ("K", "N")]
    K, N = (int(d) if isinstance(d, int) and not isinstance(d, bool) else 1 for d in defaults)
    return K, N


def network_evaluations(agent: Any, K: int, N: int) -> int:
    """Network calls to choose one action at (K, N), per the agent's contract (its class's `GRID_NOTES`): K policy
    steps for each of N candidates (one step where K cannot change its action: a one-step policy), plus one critic
    call per candidate where N > 1 ranks them; an agent whose N cannot change its action draws one candidate and asks
    no critic. An ensemble critic is one call (its members run as one batched network). `agent`: an agent, its class,
    or None (the contract's defaults: every axis counts)."""
    notes = getattr(agent, "GRID_NOTES", {}) or {}
    steps = 1 if "K" in notes else int(K)
    if "N" in notes or N == 1:
        return steps
    return steps * int(N) + int(N)


def default_workers() -> int:
    """Cores available to this process."""
    return max(1, len(available_cores()))


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` of an evaluation with seed `seed`."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(episode)]).generate_state(1)[0])


# -------------------------------------------------------------------------------------- environments


MakeEnv = Callable[[str, str, "int | None"], Any]
"""(task name, success timing, max episode steps) -> a gymnasium environment; picklable for worker processes."""


def _make_env(task_name: str, success_timing: str, max_episode_steps: int | None):
    from envs.datasets import make_env

    if max_episode_steps is None:
        return make_env(task_name, success_timing=success_timing)
    return make_env(task_name, success_timing=success_timing, max_episode_steps=max_episode_steps)


class _EnvSlice:
    """Some environments of a pool, stepped in this process (inside a worker, or in the main process)."""

    def __init__(
        self, task_name: str, n: int, success_timing: str, max_episode_steps: int | None, make_env: MakeEnv | None
    ):
        import warnings

        warnings.filterwarnings("ignore")  # gymnasium/glfw chatter on headless machines
        make_env = make_env or _make_env
        self.envs = [make_env(task_name, success_timing, max_episode_steps) for _ in range(n)]
        env = self.envs[0]
        self.obs_dim = int(np.prod(env.observation_space.shape))
        self.action_dim = int(np.prod(env.action_space.shape))
        self.obs = np.zeros((n, self.obs_dim), np.float32)

    def spec(self) -> tuple[int, int]:
        return self.obs_dim, self.action_dim

    def reset(self, slots_seeds: Sequence[tuple[int, int]]) -> np.ndarray:
        for slot, seed in slots_seeds:
            ob, _ = self.envs[slot].reset(seed=int(seed))
            self.obs[slot] = np.asarray(ob, np.float32).reshape(-1)
        return self.obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray):
        n = len(self.envs)
        reward = np.zeros(n, np.float64)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        success = np.zeros(n, bool)
        for i in np.flatnonzero(active):
            ob, r, te, tr, info = self.envs[i].step(actions[i])
            self.obs[i] = np.asarray(ob, np.float32).reshape(-1)
            reward[i], terminated[i], truncated[i] = float(r), bool(te), bool(tr)
            success[i] = bool(info.get("success", False))
        return self.obs.copy(), reward, terminated, truncated, success

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(
    conn, task_name: str, n: int, success_timing: str, max_episode_steps: int | None, make_env: MakeEnv | None
) -> None:
    """Worker process: owns `n` environments and answers (method, args) messages on `conn`."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    envs = None
    try:
        envs = _EnvSlice(task_name, n, success_timing, max_episode_steps, make_env)
        conn.send(("ok", envs.spec()))
        while True:
            method, args = conn.recv()
            if method == "close":
                break
            conn.send(("ok", getattr(envs, method)(*args)))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except SorlError as e:  # a user error (unknown task, missing package): one line in the main process
        with contextlib.suppress(OSError):
            conn.send(("sorl_error", str(e)))
    except BaseException as e:  # report to the main process, which raises
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        if envs is not None:
            envs.close()
        conn.close()


class EnvPool:
    """`num_envs` environments of one task, stepped in `workers` processes (1: in this process).

    Each worker owns a contiguous slice of the environments; a step sends every worker its slice of the
    actions, then collects the answers, so the workers step in parallel. Reuse one pool across evaluations
    (training does) to pay the process start-up once. `make_env` builds each environment (default: the task's
    OGBench environment from `envs`); with several workers it must be picklable. `spawn_always` starts a worker
    process even for one worker (rendering environments need MUJOCO_GL set before MuJoCo loads: `runner.video`).
    """

    def __init__(
        self,
        task_name: str,
        num_envs: int,
        *,
        workers: int | None = None,
        success_timing: str = "pre",
        max_episode_steps: int | None = None,
        context: str = "spawn",
        make_env: MakeEnv | None = None,
        spawn_always: bool = False,
    ):
        if num_envs < 1:
            raise SorlError(f"need at least one environment, got {num_envs}")
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise SorlError(f"workers={workers}: need at least 1 (1 steps the environments in this process)")
        self.task_name = task_name
        self.num_envs = num_envs
        self.workers = min(workers, num_envs)
        self.success_timing = success_timing
        self.max_episode_steps = max_episode_steps
        bounds = np.linspace(0, num_envs, self.workers + 1).round().astype(int)
        self._slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._local: _EnvSlice | None = None
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        if self.workers == 1 and not spawn_always:
            self._local = _EnvSlice(task_name, num_envs, success_timing, max_episode_steps, make_env)
            self.obs_dim, self.action_dim = self._local.spec()
            return
        ctx = mp.get_context(context)
        try:
            for a, b in self._slices:
                parent, child = ctx.Pipe()
                p = ctx.Process(
                    target=_worker,
                    args=(child, task_name, b - a, success_timing, max_episode_steps, make_env),
                    daemon=True,
                )
                p.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(p)
            specs = self._gather()
        except BaseException:
            self.close()
            raise
        self.obs_dim, self.action_dim = specs[0]

    # -- messaging
    def _gather(self, conns: Sequence[Any] | None = None) -> list[Any]:
        out = []
        for conn in self._conns if conns is None else conns:
            try:
                status, payload = conn.recv()
            except EOFError:
                raise RuntimeError("an evaluation worker process died unexpectedly") from None
            if status == "sorl_error":
                raise SorlError(payload)
            if status == "error":
                raise RuntimeError(f"evaluation worker failed: {payload}")
            out.append(payload)
        return out

    def reset(self, slots_seeds: Sequence[tuple[int, int]]) -> np.ndarray:
        """Reset the given (slot, seed) environments; the observations of all slots, [num_envs, obs_dim]."""
        if self._local is not None:
            return self._local.reset(slots_seeds)
        per = [[(s - a, seed) for s, seed in slots_seeds if a <= s < b] for a, b in self._slices]
        for conn, items in zip(self._conns, per, strict=True):
            conn.send(("reset", (items,)))
        return np.concatenate(self._gather(), axis=0)

    def step(self, actions: np.ndarray, active: np.ndarray):
        """Step the `active` environments: (obs, reward, terminated, truncated, success), each [num_envs]."""
        if self._local is not None:
            return self._local.step(actions, active)
        busy = []
        for conn, (a, b) in zip(self._conns, self._slices, strict=True):
            if active[a:b].any():
                conn.send(("step", (actions[a:b], active[a:b])))
                busy.append(conn)
        answers = iter(self._gather(busy))
        parts = []
        for conn, (a, b) in zip(self._conns, self._slices, strict=True):
            if conn in busy:
                parts.append(next(answers))
            else:  # nothing ran here: the caller ignores these slots
                n = b - a
                z = np.zeros(n, bool)
                parts.append((np.zeros((n, self.obs_dim), np.float32), np.zeros(n), z, z, z))
        return tuple(np.concatenate(x, axis=0) for x in zip(*parts, strict=True))

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("close", ()))
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            if self._procs or self._local is not None:
                self.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------ rollouts


def run_episodes(
    pool: EnvPool,
    act: Callable[[np.ndarray, int], np.ndarray],
    episodes: int,
    seed: int,
    on_episode: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run `episodes` episodes in lockstep on `pool` with `act(observations [E, O], t) -> actions [E, A]`.

    `act` always receives the full, fixed-size batch (one row per environment of the pool); rows of slots
    with no running episode hold stale observations and their actions are ignored. When an episode ends,
    its slot starts the next pending episode. Returns per-episode arrays and the summary numbers.
    """
    E = pool.num_envs
    slot_episode = np.full(E, -1)
    next_episode = 0
    starts = []
    for slot in range(min(E, episodes)):
        slot_episode[slot] = next_episode
        starts.append((slot, episode_seed(seed, next_episode)))
        next_episode += 1
    obs = pool.reset(starts)
    active = slot_episode >= 0
    ep_return = np.zeros(episodes)
    ep_length = np.zeros(episodes, np.int64)
    ep_success = np.zeros(episodes, bool)
    t = 0
    steps = 0
    start = time.perf_counter()
    while active.any():
        actions = np.clip(np.asarray(act(obs, t), np.float32), -1.0, 1.0)
        new_obs, reward, terminated, truncated, success = pool.step(actions, active)
        eps = slot_episode[active]
        ep_return[eps] += reward[active]
        ep_length[eps] += 1
        steps += int(active.sum())
        obs = np.where(active[:, None], new_obs, obs)
        done = active & (terminated | truncated)
        ep_success[slot_episode[done]] = success[done]
        restart, next_episode = _reassign(done, slot_episode, active, next_episode, episodes, seed, on_episode)
        if restart:
            reset_obs = pool.reset(restart)
            idx = [s for s, _ in restart]
            obs[idx] = reset_obs[idx]
        t += 1
    return {
        "success": float(ep_success.mean()),
        "return": float(ep_return.mean()),
        "length": float(ep_length.mean()),
        "episodes": int(episodes),
        "env_steps": steps,
        "time_s": time.perf_counter() - start,
        "per_episode": {"success": ep_success, "return": ep_return, "length": ep_length},
    }


def _reassign(
    done: np.ndarray,
    slot_episode: np.ndarray,
    active: np.ndarray,
    next_episode: int,
    episodes: int,
    seed: int,
    on_episode: Callable[[], None] | None,
) -> tuple[list[tuple[int, int]], int]:
    """Slots whose episode ended take the next pending episode ((slot, reset seed) to reset) or go idle."""
    restart = []
    for slot in np.flatnonzero(done):
        if on_episode is not None:
            on_episode()
        if next_episode < episodes:
            slot_episode[slot] = next_episode
            restart.append((int(slot), episode_seed(seed, next_episode)))
            next_episode += 1
        else:
            slot_episode[slot] = -1
            active[slot] = False
    return restart, next_episode


def evaluate(
    agent: Any,
    task_name: str,
    Ks: Sequence[int],
    Ns: Sequence[int],
    episodes: int,
    seed: int = 0,
    workers: int | None = None,
    success_timing: str = "pre",
    *,
    max_episode_steps: int | None = None,
    envs: int | None = None,
    pool: EnvPool | None = None,
    policy: Callable[..., Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate `agent` on every (K, N) of the grid; one dict per cell, K-major:
    `{K, N, success (fraction in [0, 1]), return, length (means over episodes), episodes, env_steps, time_s}`.

    `pool` reuses running environments (its task/timing/limit win over the arguments); otherwise one of
    min(episodes, envs) environments is started in min(those, workers) processes and closed at the end. With
    fewer environments than episodes a slot starts the next pending episode when its episode ends.
    `policy(agent, obs, rng, K, N)` defaults to `sorl.inference.make_policy_fn()`.
    """
    Ks = parse_int_list(Ks, "K")
    Ns = parse_int_list(Ns, "N")
    check_positive("episodes", episodes)
    validate_grid(Ks, Ns, getattr(agent, "max_K", None), agent)
    check_positive("envs", envs, allow_none=True)
    if policy is None:
        from sorl.inference import make_policy_fn

        policy = make_policy_fn()
    own_pool = pool is None
    if own_pool:
        n = min(episodes, envs or episodes)
        pool = EnvPool(
            task_name, n, workers=workers, success_timing=success_timing, max_episode_steps=max_episode_steps
        )
    base_key = evaluation_key(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(Ks) * len(Ns) * episodes, desc="eval", unit="ep", leave=False, dynamic_ncols=True)
    try:
        return [_evaluate_cell(pool, policy, agent, K, N, base_key, episodes, seed, bar) for K in Ks for N in Ns]
    finally:
        if bar is not None:
            bar.close()
        if own_pool:
            pool.close()


def _evaluate_cell(
    pool: EnvPool, policy: Callable[..., Any], agent: Any, K: int, N: int, base_key: Any, episodes: int, seed: int, bar
) -> dict[str, Any]:
    """One (K, N) cell: `episodes` episodes, the action key of step t folded from the evaluation's key."""
    if bar is not None:
        bar.set_postfix_str(f"K={K} N={N}")
    act = cell_actor(policy, agent, K, N, base_key)
    r = run_episodes(pool, act, episodes, seed, on_episode=bar.update if bar is not None else None)
    r.pop("per_episode")
    return {"K": int(K), "N": int(N), **r}


def evaluation_key(seed: int) -> Any:
    """The key an evaluation with seed `seed` folds each step's policy key from."""
    import jax

    return jax.random.PRNGKey(int(seed) % 2**32)


def cell_actor(
    policy: Callable[..., Any], agent: Any, K: int, N: int, base_key: Any
) -> Callable[[np.ndarray, int], np.ndarray]:
    """`act(observations, t)` of the (K, N) cell for `run_episodes`: the policy with step t's key folded from
    `base_key` (an evaluation's `jax.random.PRNGKey(seed)`), so every cell, and every filmed episode
    (`runner.video`), draws its actions with the same key sequence."""
    import jax
    import jax.numpy as jnp

    def act(obs: np.ndarray, t: int) -> np.ndarray:
        return np.asarray(policy(agent, jnp.asarray(obs), jax.random.fold_in(base_key, t), K, N))

    return act


# ---------------------------------------------------------------------------------------- reporting


def format_grid(results: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """The grid as a table: rows K, columns N, cells success in %."""
    Ks = sorted({r["K"] for r in results})
    Ns = sorted({r["N"] for r in results})
    cell = {(r["K"], r["N"]): r["success"] for r in results}
    width = max(7, *(len(f"N={n}") + 1 for n in Ns))
    lines = [title] if title else []
    lines.append("success % (rows: K sampling steps, columns: N best-of-N candidates)")
    lines.append(f"{'K':>5}" + "".join(f"{f'N={n}':>{width}}" for n in Ns))
    for K in Ks:
        row = f"{K:>5}"
        for N in Ns:
            v = cell.get((K, N))
            row += f"{'-' if v is None or math.isnan(v) else f'{100 * v:.1f}':>{width}}"
        lines.append(row)
    return "\n".join(lines)
