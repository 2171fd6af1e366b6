"""Datasets on disk: where they live, loading them through ogbench, generating missing ones, `sorl data ...`.

    from envs.datasets import load_task, make_env
    env, train, val = load_task("cube-single-play")              # default task; generates the data if missing
    env, train, val = load_task("cube-single-play-task3", success_timing="post")
    eval_env = make_env("cube-single-play-singletask-task3-v0")   # no dataset (evaluation workers)

`train`/`val` are dicts of float32 arrays: observations, actions, rewards, masks, next_observations, terminals
(rewards and masks relabelled by ogbench for the task from the stored qpos/qvel/button_states). Pixel tasks
(visual-*) keep their frames uint8 `[M, 64, 64, 3]`, each once, in the compact layout of
`sorl.data.compact_pixel_dataset` (`frame_rows` instead of `next_observations`); their returned `env` is the state
twin's (the same simulator and task, relabelling without rendering here), and `make_env` makes the rendering
environment for a process whose MUJOCO_GL is set (`envs.rendering`).

The data directory is `--data-dir`, else `$OGBENCH_DATA_DIR`, else `~/.ogbench/data` (ogbench's default), so
published OGBench files placed there are used as they are. A missing dataset that cannot be generated here (ant and
humanoid mazes, antsoccer: OGBench's expert policies made them) is downloaded on first use (`envs.download`: the
published host or $SORL_MIRRORS, checked before it is kept) unless `download=False` or $SORL_NO_DOWNLOAD=1;
generatable ones are generated, and downloaded only when asked (`sorl data download`). Nothing else touches the
network.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from envs import checks, manifest
from envs import download as download_mod
from envs.registry import ENVIRONMENTS, EnvSpec, Task, resolve_env, resolve_task
from sorl.errors import SorlError

DATA_DIR_ENV = "OGBENCH_DATA_DIR"
DEFAULT_DATA_DIR = "~/.ogbench/data"
SUCCESS_TIMINGS = ("pre", "post")
# Measured on a 2-core CPU VM: the manipulation simulators step at roughly 500-700 env steps/s per core.
_STEPS_PER_SECOND_PER_CORE = 500
# Pixel datasets render every frame: ~2.4 frames/s per core with Mesa's software EGL on that VM (busy).
_FRAMES_PER_SECOND_PER_CORE = 2.4
LONG_GENERATION_S = 3600.0
"""A generation estimated at more than this (a visual dataset on CPU: tens of hours) starts only when asked with
`sorl data generate ... --long`; training never starts one by itself."""


# ------------------------------------------------------------------------------------------------ paths


def data_dir(path: str | Path | None = None) -> Path:
    """`path` if given, else $OGBENCH_DATA_DIR, else ~/.ogbench/data (not created here)."""
    if path is None or str(path) == "":
        path = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(path).expanduser()


_resolve_dir = data_dir  # for functions whose `data_dir` argument shadows the function


def dataset_paths(env_spec: EnvSpec | str, data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(train, val) file paths: `<dir>/<dataset>.npz` and `<dir>/<dataset>-val.npz`."""
    spec = env_spec if isinstance(env_spec, EnvSpec) else resolve_env(env_spec)
    d = _resolve_dir(data_dir)
    return d / f"{spec.dataset_name}.npz", d / f"{spec.dataset_name}-val.npz"


def _as_spec(x: Task | EnvSpec | str) -> EnvSpec:
    if isinstance(x, Task):
        return x.env
    if isinstance(x, EnvSpec):
        return x
    return resolve_env(x)


def _dir_flag(directory: Path | None) -> str:
    """` --data-dir DIR` for a suggested command, unless DIR is where the command looks anyway."""
    if directory is None or Path(directory).absolute() == data_dir(None).absolute():
        return ""
    return f" --data-dir {shlex.quote(str(directory))}"


def _downloaded(spec: EnvSpec, directory: Path | None) -> bool:
    """Whether the manifest says one of the dataset's files was downloaded (its fix is then a re-fetch)."""
    if directory is None or not Path(directory).is_dir():
        return False
    with contextlib.suppress(SorlError):
        known = manifest.entries(directory)
        return any(known.get(p.name, {}).get("provenance") == "downloaded" for p in dataset_paths(spec, directory))
    return False


def _fix_hint(spec: EnvSpec, directory: Path | None = None) -> str:
    if spec.generatable and not _downloaded(spec, directory):
        return f"regenerate it with `sorl data generate {spec.name} --force{_dir_flag(directory)}`"
    return f"fetch it again with `sorl data download {spec.name} --force{_dir_flag(directory)}`"


def _placement_message(spec: EnvSpec, train: Path, val: Path, why: str = "") -> str:
    return (
        f"{spec.name} cannot be generated locally (its data come from OGBench's trained expert locomotion "
        f"policies): put the published files at {train} and {val} "
        f"(or point --data-dir / ${DATA_DIR_ENV} at a directory holding them){why}"
    )


def _download_command(spec: EnvSpec, directory: Path | None) -> str:
    return f"`sorl data download {spec.name}{_dir_flag(directory)}`"


def _check_writable(directory: Path) -> None:
    """Create the data directory if needed and prove we can write there, before any long job starts."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SorlError(
            f"cannot create data directory {directory} ({e.strerror or e}); "
            f"pass --data-dir or set ${DATA_DIR_ENV} to a writable directory"
        ) from None
    if not directory.is_dir():
        raise SorlError(f"data directory {directory} is not a directory; pass --data-dir or set ${DATA_DIR_ENV}")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise SorlError(
            f"data directory {directory} is not writable ({e.strerror or e}); "
            f"pass --data-dir or set ${DATA_DIR_ENV} to a writable directory"
        ) from None


def _validate(episodes: int | None, workers: int | None, seed: int, max_episode_steps: int | None) -> None:
    if episodes is not None and episodes < 1:
        raise SorlError(f"--episodes must be at least 1 (got {episodes}); leave it out for the published count")
    if workers is not None and workers < 1:
        raise SorlError(f"--workers must be at least 1 (got {workers}); leave it out to use all cores")
    if seed < 0:
        raise SorlError(f"--seed must be non-negative (got {seed})")
    if max_episode_steps is not None and max_episode_steps < 2:
        raise SorlError(f"--max-episode-steps must be at least 2 (got {max_episode_steps})")


def _dataset_lock(directory: Path, spec: EnvSpec):
    """Serialises generation (and download) of one dataset between processes sharing the data directory."""
    return manifest.dataset_lock(directory, spec.dataset_name)


def _state(spec: EnvSpec, directory: Path, known: dict) -> str:
    """'present', 'missing', 'partial' (one of the two files) or 'pending' (interrupted/ongoing generation)."""
    train, val = dataset_paths(spec, directory)
    if any(known.get(p.name, {}).get("status") == "pending" for p in (train, val)):
        return "pending"
    n = train.is_file() + val.is_file()
    return ("missing", "partial", "present")[n]


def _record_published(spec: EnvSpec, directory: Path) -> None:
    train, val = dataset_paths(spec, directory)
    manifest.record_published(
        directory, {train.name: (spec.dataset_name, "train"), val.name: (spec.dataset_name, "val")}
    )


# ------------------------------------------------------------------------------------------- generation


def _generate(
    spec: EnvSpec,
    directory: Path,
    *,
    episodes: int | None,
    workers: int | None,
    seed: int,
    max_episode_steps: int | None,
    progress: bool,
):
    from envs import generate

    s, n_workers, eta = generation_estimate(spec, episodes, max_episode_steps, seed, workers)
    train, val = dataset_paths(spec, directory)
    stop = "; Ctrl-C stops it and keeps nothing" if eta >= 90 else ""
    print(
        f"generating {spec.dataset_name} in {directory} with OGBench's oracles: "
        f"{s.train_episodes}+{s.val_episodes} episodes x {s.max_episode_steps} steps, seed {seed}, "
        f"{n_workers} worker{'s' * (n_workers > 1)} (about {_duration(eta)}{stop})",
        flush=True,
    )
    try:
        result = generate.generate_dataset(
            spec,
            train,
            val,
            episodes=episodes,
            max_episode_steps=max_episode_steps,
            workers=n_workers,
            seed=seed,
            progress=progress,
        )
    except OSError as e:
        raise SorlError(f"could not write {spec.dataset_name} to {directory}: {e.strerror or e}") from None
    extra = f", {result.retries} scene episodes redone" if result.retries else ""
    print(
        f"wrote {train} ({manifest.human_size(train.stat().st_size)}) and {val.name} "
        f"({manifest.human_size(val.stat().st_size)}): "
        f"{result.steps} steps in {result.seconds:.1f} s "
        f"({_rate(result.steps_per_second, spec.pixels, result.workers)}{extra})",
        flush=True,
    )
    return result


def generation_estimate(
    spec: EnvSpec, episodes: int | None, max_episode_steps: int | None, seed: int, workers: int | None
):
    """(generation settings, worker processes, estimated seconds): episodes x steps at the measured per-core rate
    (`_STEPS_PER_SECOND_PER_CORE`, or `_FRAMES_PER_SECOND_PER_CORE` for a rendered pixel dataset)."""
    from envs import generate

    s = generate.settings_for(spec, episodes, max_episode_steps, seed)
    n_workers = generate.default_workers() if workers is None else workers
    n_workers = max(1, min(n_workers, s.train_episodes + s.val_episodes))
    steps = (s.train_episodes + s.val_episodes) * s.max_episode_steps
    rate = _FRAMES_PER_SECOND_PER_CORE if spec.pixels else _STEPS_PER_SECOND_PER_CORE
    return s, n_workers, steps / (rate * n_workers)


def _generate_command(
    spec: EnvSpec, directory: Path, episodes: int | None, max_episode_steps: int | None, seed: int
) -> str:
    parts = [f"sorl data generate {spec.name}"]
    parts += [f"--train-episodes {episodes}"] * (episodes is not None)
    parts += [f"--max-episode-steps {max_episode_steps}"] * (max_episode_steps is not None)
    parts += [f"--seed {seed}"] * (seed != 0)
    return " ".join(parts) + " --long" + _dir_flag(directory)


def _too_long(spec: EnvSpec, eta: float, s, n_workers: int) -> str:
    frames = ", every frame rendered" if spec.pixels else ""
    return (
        f"generating {spec.dataset_name} would take about {_duration(eta)} on this machine "
        f"({s.train_episodes}+{s.val_episodes} episodes x {s.max_episode_steps} steps{frames}, "
        f"{n_workers} worker{'s' * (n_workers > 1)})"
    )


# ------------------------------------------------------------------------------- contents, once per file

# Files whose size and mtime this process has already checked against the manifest: (path, size, mtime_ns).
_TRUSTED: set[tuple[str, int, int]] = set()


def _check_dataset(spec: EnvSpec, directory: Path, paths: Sequence[Path]) -> None:
    """The files' sizes against the manifest and their .npy headers against the environment, on every load; their
    sha256 against the manifest and their floating-point arrays for NaN/inf, once per file.

    Every load compares size and mtime with the manifest's `verified` stamp (a stat); only a file never checked, or
    whose stamp changed, is hashed and scanned, and then stamped. Measured on a 1M-transition cube-single-play
    file (267 MB, busy 2-core VM): sha256 0.4-0.6 s, the NaN scan 4-6 s (decompressing the arrays; isfinite itself
    0.2 s), against 4 s for numpy just to read the file: both on every load would double that, and a
    flipped bit inside a stored array that keeps the stamp is still caught when the data are read (the zip
    members' CRC-32). The stamp is recorded only when both files pass, so a refused load leaves the data directory
    as it was; a read-only directory is checked once per process instead."""
    known = manifest.entries(directory)
    for path in paths:  # a stat: the plainest message for a truncated file
        entry, size = known.get(path.name) or {}, path.stat().st_size
        if entry.get("size") is not None and entry["size"] != size:
            what = f"has {size} bytes, the manifest recorded {entry['size']} (truncated or replaced)"
            raise _bad_file(spec, path, what)
    _check_files(spec, *paths)
    verified: dict[str, tuple[str, dict]] = {}
    new: dict[str, dict] = {}
    keys = []
    for path, split in zip(paths, ("train", "val"), strict=False):
        st = path.stat()
        key = (str(path.absolute()), st.st_size, st.st_mtime_ns)
        if key in _TRUSTED:
            continue
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        entry = known.get(path.name)
        if entry is not None and entry.get("verified") == stamp:
            keys.append(key)
            continue
        if entry is not None and entry.get("sha256") and manifest.sha256_file(path) != entry["sha256"]:
            raise _bad_file(spec, path, "changed since the manifest recorded it (sha256 differs)")
        try:
            problems = checks.non_finite(path)
        except Exception as e:  # noqa: BLE001 - any failure to read the zip means the file is damaged
            raise _bad_file(spec, path, f"is corrupt ({type(e).__name__}: {e})") from None
        if problems:
            raise SorlError(f"{path}: {'; '.join(problems)}; {_fix_hint(spec, directory)}")
        if entry is None:  # a file we did not write (published): recorded now, as `_record_published` does
            new[path.name] = manifest.make_entry(
                path, provenance="published", dataset=spec.dataset_name, split=split, verified=stamp
            )
        elif entry.get("sha256"):
            verified[path.name] = (entry["sha256"], stamp)
        keys.append(key)
    if verified or new:
        with contextlib.suppress(OSError):  # a read-only data directory: checked again by the next process
            manifest.record_verified(directory, verified, new)
    _TRUSTED.update(keys)


def ensure_dataset(
    task: Task | EnvSpec | str,
    data_dir: str | Path | None = None,
    *,
    generate: bool = True,
    episodes: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    max_episode_steps: int | None = None,
    long: bool = False,
    download: bool | None = None,
    mirrors: Sequence[str] = (),
) -> tuple[Path, Path]:
    """(train, val) paths of the task's dataset, generating it first if it is missing and generatable, downloading
    it (`envs.download`, from `mirrors` or $SORL_MIRRORS or OGBench's host) if it is missing and not. Present
    files are checked (keys, dtypes, shapes from the .npy headers on every call; sha256 against the manifest and
    NaN/inf once per file, `_check_dataset`) and, if new to the manifest, recorded there.

    Missing and not generatable (ant/humanoid mazes, antsoccer) with downloads off (`download=False`, else
    $SORL_NO_DOWNLOAD=1): SorlError naming exactly where the published files go. Half present (a missing one of a
    downloadable dataset is downloaded) or left pending by an interrupted generation: SorlError saying how to
    repair. A generation estimated at more than `LONG_GENERATION_S` needs `long=True` (`sorl data generate ... --long`).
    """
    spec = _as_spec(task)
    _validate(episodes, workers, seed, max_episode_steps)
    directory = _resolve_dir(data_dir)
    train, val = dataset_paths(spec, directory)
    fetch = not spec.generatable and download is not False and download_mod.downloads_allowed()
    if fetch:
        download_mod.base_urls(mirrors)  # a bad $SORL_MIRRORS is one line before anything is read
    if _dataset_ready(spec, directory, fetch):
        return train, val
    if not spec.generatable:
        _download_missing(spec, directory, fetch=fetch, download=download, mirrors=mirrors, progress=progress)
        return train, val
    if not generate:
        raise SorlError(f"{train} is missing; generate it with `sorl data generate {spec.name}{_dir_flag(directory)}`")
    _generate_missing(
        spec,
        directory,
        episodes=episodes,
        workers=workers,
        seed=seed,
        max_episode_steps=max_episode_steps,
        long=long,
        progress=progress,
    )
    return train, val


def _dataset_ready(spec: EnvSpec, directory: Path, fetch: bool) -> bool:
    """True when both files are present (and pass `_check_dataset`); False when missing, or half present and the
    missing one is to be downloaded (`fetch`); SorlError, saying how to repair, for a half or pending dataset."""
    train, val = dataset_paths(spec, directory)
    known = manifest.entries(directory) if directory.is_dir() else {}
    state = _state(spec, directory, known)
    if state == "present":
        _check_dataset(spec, directory, (train, val))
        return True
    if state == "pending":
        raise SorlError(
            f"{spec.dataset_name} in {directory} is incomplete (a generation was interrupted or is still "
            f"running); {_fix_hint(spec, directory)}"
        )
    if state == "partial":
        if fetch:
            return False  # the missing one is downloaded
        have, lack = (train, val) if train.is_file() else (val, train)
        raise SorlError(
            f"{lack} is missing but {have.name} is there; "
            + (
                f"regenerate both with `sorl data generate {spec.name} --force{_dir_flag(directory)}`"
                if spec.generatable
                else f"put the published {lack.name} at {lack}"
            )
        )
    return False


def _download_missing(
    spec: EnvSpec, directory: Path, *, fetch: bool, download: bool | None, mirrors: Sequence[str], progress: bool
) -> None:
    """A missing dataset that cannot be generated: refused when downloads are off (`fetch` False), else located on a
    host and fetched under the dataset's lock, unless another process fetched it meanwhile."""
    train, val = dataset_paths(spec, directory)
    if not fetch:
        off = "--no-download" if download is False else f"${download_mod.NO_DOWNLOAD_ENV}"
        raise SorlError(
            _placement_message(
                spec, train, val, f"; downloads are off ({off}): {_download_command(spec, directory)} fetches them"
            )
        )
    _check_writable(directory)
    plan = download_mod.locate(download_mod.Published(spec.dataset_name, spec), directory, mirrors=mirrors)
    with _dataset_lock(directory, spec):
        if not _dataset_ready(spec, directory, fetch):  # else another process downloaded it while we waited
            why = f"{spec.dataset_name} is missing and cannot be generated here (--no-download or "
            why += f"{download_mod.NO_DOWNLOAD_ENV}=1 would refuse): "
            download_mod.fetch(plan, progress=progress, why=why, each=False)
            _dataset_ready(spec, directory, fetch)


def _generate_missing(
    spec: EnvSpec,
    directory: Path,
    *,
    episodes: int | None,
    workers: int | None,
    seed: int,
    max_episode_steps: int | None,
    long: bool,
    progress: bool,
) -> None:
    """A missing generatable dataset: refused if it would take longer than `LONG_GENERATION_S` without `long`, else
    generated under the dataset's lock, unless another process generated it meanwhile."""
    train, _ = dataset_paths(spec, directory)
    s, n_workers, eta = generation_estimate(spec, episodes, max_episode_steps, seed, workers)
    if eta > LONG_GENERATION_S and not long:  # before anything is created
        raise SorlError(
            f"{train} is missing and {_too_long(spec, eta, s, n_workers)}: not started. Generate it on purpose "
            f"with `{_generate_command(spec, directory, episodes, max_episode_steps, seed)}`, put OGBench's "
            "published files there, or ask for fewer episodes (`sorl train --train-episodes N`)"
        )
    _check_writable(directory)
    with _dataset_lock(directory, spec):
        if _dataset_ready(spec, directory, fetch=False):  # another process generated it while we waited for the lock
            return
        print(f"dataset {spec.dataset_name} not found in {directory}: generating it (run once, then reused)")
        _generate(
            spec,
            directory,
            episodes=episodes,
            workers=workers,
            seed=seed,
            max_episode_steps=max_episode_steps,
            progress=progress,
        )


# ---------------------------------------------------------------------------------------------- loading


def _check_success_timing(success_timing: str) -> None:
    if success_timing not in SUCCESS_TIMINGS:
        raise SorlError(f"success_timing must be 'pre' or 'post' (got {success_timing!r})")


def make_env(task_name: str | Task, *, success_timing: str = "pre", **env_kwargs):
    """The task's gymnasium environment without any dataset (for evaluation workers).

    `success_timing` is accepted by every OGBench singletask env, pointmaze included (ogbench 1.2.2's locomaze
    MazeEnv and BallEnv take it, as do the manipspace envs): 'pre' is ogbench>=1.2's default (reward and success
    from the state before the action), 'post' the published protocol (ogbench 1.1.0). `env_kwargs` go to
    `gymnasium.make` (e.g. `max_episode_steps=...`)."""
    import ogbench

    task = task_name if isinstance(task_name, Task) else resolve_task(task_name)
    _check_success_timing(success_timing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ogbench.make_env_and_datasets(task.name, env_only=True, success_timing=success_timing, **env_kwargs)


def _bad_file(spec: EnvSpec, path: Path, what: str) -> SorlError:
    flag = _dir_flag(path.parent)
    return SorlError(f"{path} {what}; run `sorl data verify {spec.name}{flag}` and {_fix_hint(spec, path.parent)}")


def _check_files(spec: EnvSpec, *paths: Path) -> None:
    """Keys, dtypes and shapes from the .npy headers (cheap); SorlError on an unreadable or mismatched file."""
    for path in paths:
        try:
            problems = checks.check_headers(spec, path)
        except Exception as e:  # noqa: BLE001 - any failure to read the zip means the file is damaged
            what = f"is not a readable .npz (truncated or corrupt: {type(e).__name__}: {e})"
            raise _bad_file(spec, path, what) from None
        if problems:
            raise _bad_file(spec, path, f"does not match {spec.name}: {'; '.join(problems)}")


def _readable(path: Path) -> str | None:
    """None if every member of the zip reads back with a good CRC, else the problem."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        return None if bad is None else f"member {bad} has a bad CRC"
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is damaged
        return f"{type(e).__name__}: {e}"


def load_task(
    task_name: str | Task,
    data_dir: str | Path | None = None,
    *,
    success_timing: str = "pre",
    generate: bool = True,
    episodes: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    max_episode_steps: int | None = None,
    long: bool = False,
    download: bool | None = None,
):
    """(env, train, val) for a task; see the module docstring. Every problem with the files is a SorlError.
    `download=False` (`sorl train --no-download`) never fetches a missing expert dataset; None: unless
    $SORL_NO_DOWNLOAD=1."""
    import ogbench

    task = task_name if isinstance(task_name, Task) else resolve_task(task_name)
    spec = task.env
    _check_success_timing(success_timing)
    train_path, val_path = ensure_dataset(
        task,
        data_dir,
        generate=generate,
        episodes=episodes,
        workers=workers,
        seed=seed,
        progress=progress,
        max_episode_steps=max_episode_steps,
        long=long,
        download=download,
    )
    # Relabelling resets the environment, which renders a pixel one: use its state twin (same simulator and tasks).
    relabel_task = resolve_task(f"{spec.state_twin}-task{task.task_id}") if spec.pixels else task
    env = make_env(relabel_task, success_timing=success_timing)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pixel tasks: every frame once (the compact layout, sorl.data.compact_pixel_dataset)
            train, val = ogbench.make_env_and_datasets(
                task.name, dataset_path=str(train_path), dataset_only=True, cur_env=env, compact_dataset=spec.pixels
            )
    except Exception as e:  # noqa: BLE001 - a damaged file can fail in many ways inside numpy/zipfile/zlib
        raise _unloadable(spec, train_path, val_path, e) from None
    train, val = _in_memory_layout(spec, train, val)
    return env, train, val


def _unloadable(spec: EnvSpec, train_path: Path, val_path: Path, error: Exception) -> SorlError:
    """The error for files ogbench could not load: the corrupt one named when a zip check finds it, else both."""
    for path in (train_path, val_path):
        problem = _readable(path)
        if problem:
            return _bad_file(spec, path, f"is corrupt ({problem})")
    return _bad_file(spec, train_path, f"(or {val_path.name}) could not be loaded ({type(error).__name__}: {error})")


def _in_memory_layout(spec: EnvSpec, train: dict, val: dict) -> tuple[dict, dict]:
    """The loaded splits as training takes them: float32 arrays, except a pixel task's frames (uint8, once each in
    the compact layout of `sorl.data.compact_pixel_dataset`)."""
    for split in (train, val):
        for k, v in split.items():
            if v.dtype != np.float32 and not (spec.pixels and k in ("observations", "next_observations")):
                split[k] = v.astype(np.float32)  # images stay uint8: a quarter of the memory
    if spec.pixels:
        from sorl.data import compact_pixel_dataset

        train, val = compact_pixel_dataset(train), compact_pixel_dataset(val)
    return train, val


# ------------------------------------------------------------------------------------------ verification

OK, MISSING, MISMATCH, CORRUPT, INCOMPLETE = "OK", "MISSING", "MISMATCH", "CORRUPT", "INCOMPLETE"


def verify_file(spec: EnvSpec, path: Path, split: str, entry: dict | None) -> tuple[str, str]:
    """(status, detail) of one dataset file against the manifest and the environment's format."""
    if entry is not None and entry.get("status") == "pending":
        return INCOMPLETE, f"left by an interrupted generation; {_fix_hint(spec, path.parent)}"
    if not path.is_file():
        if not spec.generatable:
            return (
                MISSING,
                f"fetch it with {_download_command(spec, path.parent)} (or put the published file at {path})",
            )
        return MISSING, f"generate it with `sorl data generate {spec.name}{_dir_flag(path.parent)}`"
    try:
        problems = checks.check_full(spec, path)
    except Exception as e:  # noqa: BLE001
        return CORRUPT, f"unreadable, truncated or corrupt ({type(e).__name__}: {e})"
    if problems:
        return CORRUPT, "; ".join(problems)
    if entry is None:
        new = manifest.record_published(path.parent, {path.name: (spec.dataset_name, split)})
        return OK, "published (recorded now)" if new else "published (not recorded: data directory read-only)"
    size = path.stat().st_size
    if size != entry.get("size"):
        return MISMATCH, f"size {size} bytes, manifest says {entry.get('size')}"
    if manifest.sha256_file(path) != entry.get("sha256"):
        return MISMATCH, "sha256 differs from the manifest"
    return OK, entry.get("provenance", "")


# ------------------------------------------------------------------------------------------ CLI helpers


def _rate(steps_per_second: float, pixels: bool, workers: int) -> str:
    """Generation speed; for pixel datasets in rendered frames/s, per worker too (rendering is the cost)."""
    if not pixels:
        return f"{steps_per_second:.0f} steps/s"
    return f"{steps_per_second:.2f} frames/s, {steps_per_second / workers:.2f} per worker"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _specs(tasks: Iterable[str]) -> list[EnvSpec]:
    out: dict[str, EnvSpec] = {}
    for t in tasks:
        spec = resolve_env(t)
        out.setdefault(spec.name, spec)
    return list(out.values())


def cli_list(data_dir: str | Path | None = None) -> None:
    """`sorl data list`: every environment, whether its dataset is present, where from, and its size."""
    directory = _resolve_dir(data_dir)
    exists = directory.is_dir()
    damaged = set()
    if exists:
        known = manifest.entries(directory)
        for spec in ENVIRONMENTS.values():
            if _state(spec, directory, known) == "present":
                try:
                    _check_files(spec, *dataset_paths(spec, directory))
                except SorlError:
                    damaged.add(spec.name)
                    continue
                with contextlib.suppress(OSError):
                    _record_published(spec, directory)
    known = manifest.entries(directory) if exists else {}
    rows = []
    for spec in ENVIRONMENTS.values():
        train, val = dataset_paths(spec, directory)
        state = _state(spec, directory, known) if exists else "missing"
        if spec.name in damaged:
            state = "damaged"
        size = sum(p.stat().st_size for p in (train, val) if p.is_file())
        entry = known.get(train.name, {})
        source = entry.get("provenance", "-") if state == "present" else "-"
        gen = entry.get("generator") or {}
        episodes = ""
        if state == "present" and gen:
            episodes = f"{gen['train_episodes']}+{gen['val_episodes']} x {gen['max_episode_steps']}"
            episodes += f" (seed {gen['seed']})"
        elif state == "present":
            episodes = "published"
        rows.append(
            [
                spec.name,
                f"task{spec.default_task}",
                state,
                source,
                manifest.human_size(size) if size else "-",
                episodes or "-",
                "yes" if spec.generatable else "no (expert data)",
            ]
        )
    print(f"data directory: {directory}{'' if exists else ' (does not exist yet)'}")
    print(_table(["ENVIRONMENT", "DEFAULT", "DATASET", "SOURCE", "SIZE", "EPISODES", "GENERATABLE"], rows))
    n = sum(r[2] == "present" for r in rows)
    print(f"{n} of {len(rows)} datasets present; tasks are ENVIRONMENT-task1 ... -task5 (DEFAULT when omitted)")
    if any(r[2] in ("damaged", "partial", "pending") for r in rows):
        print("some datasets are damaged, partial or pending: `sorl data verify` tells which files and what to do")


def cli_generate(
    tasks: Sequence[str],
    episodes: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    force: bool = False,
    max_episode_steps: int | None = None,
    long: bool = False,
    progress: bool = True,
) -> None:
    """`sorl data generate TASK... [--train-episodes N] [--workers W] [--seed S] [--force] [--long]`."""
    if not tasks:
        raise SorlError("name at least one task or environment, e.g. `sorl data generate cube-single-play`")
    _validate(episodes, workers, seed, max_episode_steps)
    specs = _specs(tasks)
    directory = _resolve_dir(data_dir)
    # Everything the user can get wrong is checked before anything is generated.
    todo = _generation_todo(specs, directory, force)
    if not long:  # a generation of hours (a visual dataset on CPU) starts only when asked for
        _refuse_long_generations(todo, episodes, max_episode_steps, seed, workers)
    if any(run for _, run in todo):
        _check_writable(directory)
    for spec, run in todo:
        if not run:
            print(f"{spec.dataset_name}: already in {directory} (use --force to regenerate)")
            continue
        with _dataset_lock(directory, spec):
            if not force and _state(spec, directory, manifest.entries(directory)) == "present":
                print(f"{spec.dataset_name}: generated meanwhile by another process in {directory}")
                continue
            _generate(
                spec,
                directory,
                episodes=episodes,
                workers=workers,
                seed=seed,
                max_episode_steps=max_episode_steps,
                progress=progress,
            )


def _generation_todo(specs: Sequence[EnvSpec], directory: Path, force: bool) -> list[tuple[EnvSpec, bool]]:
    """(spec, whether to generate it) for each dataset `sorl data generate` was asked for; SorlError for one half
    present (unless `force`) or one that cannot be generated here."""
    known = manifest.entries(directory) if directory.is_dir() else {}
    todo = []
    for spec in specs:
        state = _state(spec, directory, known) if directory.is_dir() else "missing"
        if state == "present" and not force:
            todo.append((spec, False))
            continue
        if state == "partial" and not force:
            train, val = dataset_paths(spec, directory)
            have, lack = (train, val) if train.is_file() else (val, train)
            raise SorlError(
                f"{lack} is missing but {have} is there: put the missing file there, or regenerate both with "
                f"`sorl data generate {spec.name} --force{_dir_flag(directory)}` (replaces {have.name})"
            )
        if not spec.generatable:
            train, val = dataset_paths(spec, directory)
            how = f"; {_download_command(spec, directory)} fetches them"
            raise SorlError(_placement_message(spec, train, val, how))
        todo.append((spec, True))
    return todo


def _refuse_long_generations(
    todo: Sequence[tuple[EnvSpec, bool]],
    episodes: int | None,
    max_episode_steps: int | None,
    seed: int,
    workers: int | None,
) -> None:
    """SorlError for the first generation in `todo` estimated at more than `LONG_GENERATION_S` (`--long` starts it)."""
    for spec, run in todo:
        s, n_workers, eta = generation_estimate(spec, episodes, max_episode_steps, seed, workers)
        if run and eta > LONG_GENERATION_S:
            raise SorlError(
                f"{_too_long(spec, eta, s, n_workers)}: not started. Add --long to start it (Ctrl-C stops it and "
                "keeps nothing), or use fewer --train-episodes"
            )


def cli_verify(tasks: Sequence[str] = (), data_dir: str | Path | None = None) -> None:
    """`sorl data verify [TASK...]`: sha256/size against the manifest, keys/dtypes/shapes against the env."""
    directory = _resolve_dir(data_dir)
    known = manifest.entries(directory) if directory.is_dir() else {}
    if tasks:
        specs = _specs(tasks)
    else:
        names = {e.get("dataset") for e in known.values()}
        specs = [
            s
            for s in ENVIRONMENTS.values()
            if s.dataset_name in names or any(p.is_file() for p in dataset_paths(s, directory))
        ]
        if not specs:
            print(f"no datasets in {directory}; nothing to verify")
            return
    rows, bad = [], []
    for spec in specs:
        for path, split in zip(dataset_paths(spec, directory), ("train", "val"), strict=True):
            status, detail = verify_file(spec, path, split, known.get(path.name))
            rows.append([path.name, status, detail])
            if status != OK:
                bad.append((spec, path, status))
    print(f"data directory: {directory}")
    print(_table(["FILE", "STATUS", "DETAIL"], rows))
    if bad:
        names = sorted({s.name for s, _, _ in bad if s.generatable})
        others = sorted({s.name for s, _, _ in bad if not s.generatable})
        fixes = []
        if names:
            fixes.append(f"regenerate with `sorl data generate {' '.join(names)} --force{_dir_flag(directory)}`")
        if others:
            fixes.append(
                f"fetch the published files with `sorl data download {' '.join(others)} --force{_dir_flag(directory)}`"
            )
        raise SorlError(f"{len(bad)} of {len(rows)} dataset files failed verification; {' and '.join(fixes)}")
    print(f"all {len(rows)} files OK")


def cli_download(
    tasks: Sequence[str],
    data_dir: str | Path | None = None,
    mirrors: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> None:
    """`sorl data download TASK_OR_DATASET... [--mirror URL ...] [--force]`: OGBench's published files, generatable
    datasets included (their exact bytes), checked and recorded in the manifest (`envs.download`)."""
    if not tasks:
        raise SorlError(
            "name at least one task, environment or dataset, e.g. `sorl data download antmaze-large-navigate`"
        )
    pubs = list({p.name: p for p in map(download_mod.resolve, tasks)}.values())
    download_mod.base_urls(mirrors)  # a bad --mirror or $SORL_MIRRORS: one line before anything is touched
    if not download_mod.downloads_allowed():
        raise SorlError(
            f"downloads are off (${download_mod.NO_DOWNLOAD_ENV}=1, for machines that must not reach the network); "
            f"unset it to download, or put the published files in {_resolve_dir(data_dir)} by hand"
        )
    directory = _resolve_dir(data_dir)
    todo = []
    for pub in pubs:
        paths = pub.paths(directory)
        if not force and all(p.is_file() for p in paths):
            print(f"{pub.name}: already in {directory} (use --force to download it again)")
        else:
            todo.append(pub)
    if not todo:
        return
    _check_writable(directory)
    # Every file found on some host before anything is written (a host down or a file missing: one line, no trace).
    plans = [download_mod.locate(pub, directory, mirrors=mirrors, force=force) for pub in todo]
    for pub, plan in zip(todo, plans, strict=True):
        with manifest.dataset_lock(directory, pub.name):
            download_mod.fetch(plan, force=force, progress=progress)
            if pub.spec is not None:
                _check_dataset(pub.spec, directory, pub.paths(directory))  # records the stamps; cheap when fresh
