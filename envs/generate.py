"""Local dataset generation with the oracles the `ogbench` package ships, in the published file format.

The recipe is OGBench's own (`data_gen_scripts/generate_manipspace.py` and `generate_locomaze.py`, summarised in
docs/method.md, "OGBench data"):

- manipulation `play`: `gymnasium.make(env_id, terminate_at_goal=False, mode='data_collection',
  max_episode_steps=1001)`; plan oracles with noise 0.1 and smoothing 0.5 (puzzle: the button oracle with
  `gripper_always_closed=True`; scene: one oracle per `info['privileged/target_task']`); whenever the oracle is
  done a new target is set with `set_new_target(p_stack=...)`; scene episodes whose cube leaves the visible area
  are discarded and redone.
- `pointmaze` navigate/stitch: the action is the unit direction to the BFS oracle subgoal plus N(0, 0.5) noise,
  clipped; navigate samples a new vertex-cell goal whenever the current goal is reached; stitch episodes aim at a
  cell 4 BFS steps from the start.

Stored per step: `observations` (the observation *before* the step), `actions`, `terminals` (episode end),
`qpos`, `qvel` (`info['prev_qpos']` etc.) and, for scene/puzzle, `button_states`. dtypes: terminals bool,
button_states int64, everything else float32 — except the observations of pixel (visual-*) datasets, the
rendered 64x64x3 frames, uint8 as OGBench's files; `np.savez_compressed`.

Pixel datasets: the same recipe on the `visual-*` gym env (`ob_type='pixels'`). The oracles act on the
privileged `info`, never on the observation, so a visual dataset follows exactly the trajectories of its state
twin's dataset of the same seed, with frames instead of state vectors. Frames are rendered headless in worker
processes (always spawned, even for one worker: MuJoCo reads MUJOCO_GL once, when first imported) with the
backend `envs.rendering.gl_backend` finds: EGL (a GPU's, or Mesa's software renderer on a CPU), else OSMesa.
Rendering dominates: see docs/data.md, "Pixel-based tasks", for the measured frames/s per worker.

Determinism: episode `i` of split `s` (0 train, 1 validation) draws *all* its randomness from
`SeedSequence(seed, spawn_key=(s, i))`: the env's `reset(seed=...)`, its action space, and numpy's global RNG
(which the oracles, `p_stack`, goal sampling and the action noise use, as upstream). Nothing is carried between
episodes, so the arrays are bit-identical whatever the number of worker processes, and the first k training
episodes are the same whatever the total count.

Writing is atomic: arrays go to hidden temporary files in the data directory (fsync'ed), the manifest marks the
dataset *pending*, the files are `os.replace`d into place, and only then does the manifest record their sha256.
An interrupted generation therefore leaves either nothing, temporary files no one reads, or files that the
manifest reports as incomplete. The arrays are checked for NaN and infinity before anything is written, and the
manifest entries carry the files' `verified` stamp, so their first load does not hash or scan them again.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from envs import checks, manifest
from envs.registry import EnvSpec
from sorl.errors import SorlError
from sorl.machine import available_cores

GENERATOR_VERSION = 1

# Oracle settings of the published manipulation datasets (OGBench generate_manipspace.py defaults).
PLAY_NOISE = 0.1
PLAY_NOISE_SMOOTHING = 0.5
# Pointmaze action noise (commands.sh: --noise=0.5 for every pointmaze dataset).
POINTMAZE_NOISE = 0.5
# Stitch datasets: goals this many BFS cells from the start (generate_locomaze.py).
STITCH_CELLS = 4
# Scene episodes failing the health check are redone; give up (a bug, not bad luck) after this many tries.
MAX_SCENE_RETRIES = 100


@dataclass(frozen=True)
class GenSettings:
    """Everything that determines a generated dataset (recorded in the manifest)."""

    dataset_name: str
    env_id: str
    family: str
    dataset_type: str
    train_episodes: int
    val_episodes: int
    max_episode_steps: int
    seed: int
    noise: float
    noise_smoothing: float | None = None
    generator_version: int = GENERATOR_VERSION


def settings_for(spec: EnvSpec, episodes: int | None, max_episode_steps: int | None, seed: int) -> GenSettings:
    train = spec.published_episodes if episodes is None else episodes
    manip = spec.family in ("cube", "scene", "puzzle")
    return GenSettings(
        dataset_name=spec.dataset_name,
        env_id=spec.env_id,
        family=spec.family,
        dataset_type=spec.dataset_type,
        train_episodes=train,
        val_episodes=max(1, train // 10),  # upstream: num_episodes // 10; at least 1 for tiny datasets.
        max_episode_steps=spec.max_episode_steps if max_episode_steps is None else max_episode_steps,
        seed=seed,
        noise=PLAY_NOISE if manip else POINTMAZE_NOISE,
        noise_smoothing=PLAY_NOISE_SMOOTHING if manip else None,
    )


# ------------------------------------------------------------------------------------- one episode (worker)

_WORKER_CACHE: dict = {}


def _quiet_make(env_id: str, **kwargs):
    import gymnasium

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ogbench  # noqa: F401  (registers the environments)

        return gymnasium.make(env_id, **kwargs)


def is_pixels(s: GenSettings) -> bool:
    """Whether `s` is a pixel (visual-*) dataset."""
    return s.env_id.startswith("visual-")


def _worker_env(s: GenSettings):
    key = (s.env_id, s.max_episode_steps)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        if s.family == "pointmaze":
            env = _quiet_make(s.env_id, terminate_at_goal=False, max_episode_steps=s.max_episode_steps)
            _WORKER_CACHE[key] = (env, _maze_cells(env.unwrapped.maze_map))
        else:
            env = _quiet_make(
                s.env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=s.max_episode_steps
            )
            _WORKER_CACHE[key] = (env, None)
    return _WORKER_CACHE[key]


def _seeds(seed: int, split: int, index: int) -> tuple[np.ndarray, int, int]:
    ss_np, ss_env, ss_space = np.random.SeedSequence(seed, spawn_key=(split, index)).spawn(3)
    return (
        ss_np.generate_state(4),
        int(ss_env.generate_state(1, np.uint64)[0]),
        int(ss_space.generate_state(1, np.uint64)[0]),
    )


def generate_episode(s: GenSettings, split: int, index: int) -> dict:
    """One episode as a dict of arrays in the stored dtypes (plus 'retries', an int)."""
    env, cells = _worker_env(s)
    np_state, env_seed, space_seed = _seeds(s.seed, split, index)
    saved = np.random.get_state()
    np.random.seed(np_state)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The maze env's reset takes a few random actions from its action space: seed it too.
            env.unwrapped.action_space.seed(space_seed)
            if s.family == "pointmaze":
                return _maze_episode(s, env, cells, env_seed)
            return _manip_episode(s, env, env_seed)
    finally:
        np.random.set_state(saved)


def _make_oracles(s: GenSettings, env) -> dict:
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    kw = dict(env=env, noise=s.noise, noise_smoothing=s.noise_smoothing)
    if s.family == "cube":
        return {"cube": CubePlanOracle(**kw)}
    if s.family == "scene":
        return {
            "cube": CubePlanOracle(**kw),
            "button": ButtonPlanOracle(**kw),
            "drawer": DrawerPlanOracle(**kw),
            "window": WindowPlanOracle(**kw),
        }
    if s.family == "puzzle":
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **kw)}
    raise ValueError(f"no oracle for family {s.family}")


def _p_stack(env_id: str) -> float:
    # generate_manipspace.py: drawn once per episode from numpy's global RNG, right after env.reset().
    if "single" in env_id:
        return 0.0
    if "double" in env_id:
        return np.random.uniform(0.0, 0.25)
    if "triple" in env_id:
        return np.random.uniform(0.05, 0.35)
    if "quadruple" in env_id:
        return np.random.uniform(0.1, 0.5)
    return 0.5


def _scene_healthy(qpos: np.ndarray) -> bool:
    """generate_manipspace.py's check: the cube stays visible unless it is in the drawer."""
    xyz = qpos[:, 14:17]
    too_far_right = (xyz[:, 1] >= 0.29).any()
    too_far_left_outside_drawer = ((xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()
    return not (too_far_right or too_far_left_outside_drawer)


def _manip_episode(s: GenSettings, env, env_seed: int) -> dict:
    has_buttons = hasattr(env.unwrapped, "_cur_button_states")
    for attempt in range(MAX_SCENE_RETRIES + 1):
        # The first attempt is seeded; a redone scene episode continues from the RNG state the failed one left.
        ob, info = env.reset(seed=env_seed if attempt == 0 else None)
        p_stack = _p_stack(s.env_id)
        oracles = _make_oracles(s, env)  # fresh per episode: nothing carried over between episodes
        agent = oracles[info["privileged/target_task"]]
        agent.reset(ob, info)
        rows: dict[str, list] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
        if has_buttons:
            rows["button_states"] = []
        done = False
        while not done:
            action = np.clip(np.asarray(agent.select_action(ob, info)), -1, 1)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if agent.done:
                agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                agent = oracles[agent_info["privileged/target_task"]]
                agent.reset(agent_ob, agent_info)
            rows["observations"].append(ob)
            rows["actions"].append(action)
            rows["terminals"].append(done)
            rows["qpos"].append(info["prev_qpos"])
            rows["qvel"].append(info["prev_qvel"])
            if has_buttons:
                rows["button_states"].append(info["prev_button_states"])
            ob = next_ob
        episode = _to_arrays(rows, pixels=is_pixels(s))
        if s.family != "scene" or _scene_healthy(episode["qpos"]):
            episode["retries"] = attempt
            return episode
    raise RuntimeError(f"{s.dataset_name}: {MAX_SCENE_RETRIES} scene episodes in a row failed the health check")


def _maze_cells(maze_map: np.ndarray) -> tuple[list, list]:
    """All free cells, and the free cells that are not straight hallway cells (goal candidates)."""
    cells, vertex_cells = [], []
    for i in range(maze_map.shape[0]):
        for j in range(maze_map.shape[1]):
            if maze_map[i, j] != 0:
                continue
            cells.append((i, j))
            up_down_open = maze_map[i - 1, j] == 0 and maze_map[i + 1, j] == 0
            left_right_open = maze_map[i, j - 1] == 0 and maze_map[i, j + 1] == 0
            up_down_wall = maze_map[i - 1, j] == 1 and maze_map[i + 1, j] == 1
            left_right_wall = maze_map[i, j - 1] == 1 and maze_map[i, j + 1] == 1
            hallway = (up_down_open and left_right_wall) or (left_right_open and up_down_wall)
            if not hallway:
                vertex_cells.append((i, j))
    return cells, vertex_cells


def _cells_at_distance(maze_map: np.ndarray, start: tuple, steps: int) -> list:
    """Free cells exactly `steps` BFS moves from `start` (in BFS discovery order, as upstream)."""
    dist = -np.ones(maze_map.shape, dtype=np.int64)
    dist[start] = 0
    queue, found = [start], []
    while queue:
        i, j = queue.pop(0)
        for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
            ni, nj = i + di, j + dj
            inside = 0 <= ni < maze_map.shape[0] and 0 <= nj < maze_map.shape[1]
            if inside and maze_map[ni, nj] == 0 and dist[ni, nj] == -1:
                dist[ni, nj] = dist[i, j] + 1
                queue.append((ni, nj))
                if dist[ni, nj] == steps:
                    found.append((ni, nj))
    return found


def _maze_episode(s: GenSettings, env, cells: tuple[list, list], env_seed: int) -> dict:
    all_cells, vertex_cells = cells
    u = env.unwrapped
    init_ij = all_cells[np.random.randint(len(all_cells))]
    if s.dataset_type == "navigate":
        goal_ij = vertex_cells[np.random.randint(len(vertex_cells))]
    elif s.dataset_type == "stitch":
        near = _cells_at_distance(u.maze_map, init_ij, STITCH_CELLS)
        goal_ij = near[np.random.randint(len(near))] if near else init_ij
    else:
        raise ValueError(f"unsupported pointmaze dataset type {s.dataset_type}")
    ob, _ = env.reset(seed=env_seed, options=dict(task_info=dict(init_ij=init_ij, goal_ij=goal_ij)))
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
    done = False
    while not done:
        xy = u.get_xy()
        subgoal_xy, _ = u.get_oracle_subgoal(xy, u.cur_goal_xy)
        direction = subgoal_xy - xy
        direction = direction / (np.linalg.norm(direction) + 1e-6)
        action = np.clip(direction + np.random.normal(0, s.noise, direction.shape), -1, 1)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if info["success"] and s.dataset_type == "navigate":
            u.set_goal(vertex_cells[np.random.randint(len(vertex_cells))])
        rows["observations"].append(ob)
        rows["actions"].append(action)
        rows["terminals"].append(done)
        rows["qpos"].append(info["prev_qpos"])
        rows["qvel"].append(info["prev_qvel"])
        ob = next_ob
    episode = _to_arrays(rows)
    episode["retries"] = 0
    return episode


STORED_DTYPES = {"terminals": np.bool_, "button_states": np.int64}  # everything else float32


def _to_arrays(rows: dict[str, list], pixels: bool = False) -> dict[str, np.ndarray]:
    dtypes = {**STORED_DTYPES, "observations": np.uint8} if pixels else STORED_DTYPES
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in rows.items()}


def _job(args: tuple) -> tuple[int, int, dict]:
    s, split, index = args
    return split, index, generate_episode(s, split, index)


def _worker_init() -> None:
    warnings.simplefilter("ignore")


# ----------------------------------------------------------------------------------- many episodes, files


def default_workers() -> int:
    return len(available_cores())


@dataclass
class GenResult:
    train_path: Path
    val_path: Path
    steps: int
    seconds: float
    retries: int
    workers: int

    @property
    def steps_per_second(self) -> float:
        return self.steps / max(self.seconds, 1e-9)


def collect(s: GenSettings, workers: int, progress: bool = True) -> tuple[dict, dict, int]:
    """Run all episodes (train then validation), return (train arrays, val arrays, scene retries)."""
    from tqdm import tqdm

    jobs = [(s, 0, i) for i in range(s.train_episodes)] + [(s, 1, i) for i in range(s.val_episodes)]
    counts = (s.train_episodes, s.val_episodes)
    T = s.max_episode_steps
    out: list[dict] = [{}, {}]
    retries = 0

    def place(split: int, index: int, ep: dict) -> None:
        nonlocal retries
        retries += ep.pop("retries")
        if len(ep["terminals"]) != T:  # terminate_at_goal=False: every episode ends by truncation at T
            raise RuntimeError(f"episode of length {len(ep['terminals'])}, expected {T}")
        arrays = out[split]
        if not arrays:
            for k, v in ep.items():
                arrays[k] = np.empty((counts[split] * T, *v.shape[1:]), dtype=v.dtype)
        for k, v in ep.items():
            arrays[k][index * T : (index + 1) * T] = v

    workers = max(1, min(workers, len(jobs)))
    bar = tqdm(total=len(jobs), desc=s.dataset_name, unit="ep", disable=not progress, dynamic_ncols=True)
    render = contextlib.nullcontext()
    if is_pixels(s):  # the frames are rendered in spawned workers whose MUJOCO_GL names a backend that works here
        from envs.rendering import gl_backend, gl_environment

        render = gl_environment(gl_backend())
    try:
        if workers == 1 and not is_pixels(s):
            for job in jobs:
                place(*_job(job))
                bar.update()
        else:
            ctx = mp.get_context("spawn")
            with render, ctx.Pool(workers, initializer=_worker_init) as pool:
                for split, index, ep in pool.imap_unordered(_job, jobs, chunksize=1):
                    place(split, index, ep)
                    bar.update()
    finally:
        bar.close()
    return out[0], out[1], retries


def _write_tmp(directory: Path, name: str, arrays: dict) -> Path:
    fd, tmp = manifest.mkstemp_public(directory, f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_dataset(s: GenSettings, train_path: Path, val_path: Path, train: dict, val: dict) -> None:
    """Atomically put both files in place and record them in the manifest (see the module docstring)."""
    directory = train_path.parent
    for split, arrays in (("training", train), ("validation", val)):
        for key, arr in arrays.items():
            problem = checks.describe_non_finite(key, arr)
            if problem:
                raise SorlError(
                    f"the generated {s.dataset_name} {split} data are not finite ({problem}): the simulator "
                    "diverged; nothing was written. Try another --seed"
                )
    tmps: list[Path] = []
    try:
        tmps.append(_write_tmp(directory, train_path.name, train))
        tmps.append(_write_tmp(directory, val_path.name, val))
        generator = asdict(s)
        manifest.mark_pending(directory, [train_path.name, val_path.name], s.dataset_name)
        os.replace(tmps[0], train_path)
        os.replace(tmps[1], val_path)
        tmps.clear()
        _fsync_dir(directory)
        entries = {}
        for path, split in ((train_path, "train"), (val_path, "val")):
            entries[path.name] = manifest.make_entry(
                path,
                provenance="generated",
                dataset=s.dataset_name,
                split=split,
                generator=generator,
                ogbench_version=manifest.ogbench_version(),
                verified=manifest.stamp(path),  # written from the arrays just checked
            )
        manifest.update(directory, entries)
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)


def generate_dataset(
    spec: EnvSpec,
    train_path: Path,
    val_path: Path,
    *,
    episodes: int | None = None,
    max_episode_steps: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> GenResult:
    """Generate `spec`'s dataset into train_path / val_path (callers check inputs and the directory first)."""
    s = settings_for(spec, episodes, max_episode_steps, seed)
    n_workers = default_workers() if workers is None else workers
    n_workers = max(1, min(n_workers, s.train_episodes + s.val_episodes))
    t0 = time.perf_counter()
    train, val, retries = collect(s, n_workers, progress=progress)
    seconds = time.perf_counter() - t0
    write_dataset(s, train_path, val_path, train, val)
    steps = (s.train_episodes + s.val_episodes) * s.max_episode_steps
    return GenResult(train_path, val_path, steps, seconds, retries, n_workers)
