"""The run directory: everything one training run writes, and the only thing later commands read.

    RUN_DIR/
      config.json     resolved configuration: task, agent, seed, agent config, ogbench version,
                      success_timing, observation/action sizes, training and evaluation settings
      train.csv       one row per log interval (and at every checkpoint): step, mean of each loss/info
                      over the interval, updates_per_s, time_s
      eval.csv        one row per (evaluation step, K, N): success (fraction), return, length, episodes
      checkpoints/    orbax checkpoints (agent state, data rng, step), the last few kept
      results.json    written when the run ends: the final evaluation and `status`, "complete" or "failed" with
                      `error` (one line: what went wrong, at which step); a run killed or interrupted writes none
      scaling.json    written by `sorl eval`: the (K, N) grid of the last checkpoint; a later evaluation adds its
      scaling.csv     cells and keeps the earlier ones it did not redo (`RunDir.plan_scaling`; --replace starts afresh)
      .lock           held (flock) by the process training the run; see `runner.safety`
      tracking.json   with `--logger wandb`: the wandb run id, so a continued run logs into the same run
      tensorboard/    with `--logger tensorboard`: event files (`runner.tracking`)
      wandb/          with `--logger wandb` and no $WANDB_DIR: wandb's own files (offline runs to `wandb sync`)

Default location: runs/<env>-task<k>/<agent>/seed<S>, e.g. runs/cube-single-play-task1/sorl/seed0.

A run killed at any moment continues exactly when the same command is run again: training restarts from the last
complete checkpoint, and the logs are cut back to it (`CsvLog.truncate_after`), so no row is lost or repeated.

Every file here is written whole and atomically (`write_text_atomic`: a temporary file, then a rename), except the
logs' appended rows. Commands check before they write (`check_run_dir`, `check_writable`, `CsvLog.kept_after`,
`plan_scaling` read only): a refused command leaves the directory byte-identical.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sorl.errors import SorlError

RUN_FORMAT = "sorl-run/1"
CONFIG = "config.json"
TRAIN_LOG = "train.csv"
EVAL_LOG = "eval.csv"
VALIDATION_LOG = "validation.csv"
ONLINE_LOG = "online.csv"
CHECKPOINTS = "checkpoints"
RESULTS = "results.json"
SCALING_JSON = "scaling.json"
SCALING_CSV = "scaling.csv"
TRACKING = "tracking.json"
TENSORBOARD = "tensorboard"

SUCCESS_UNIT = "fraction"
"""`success` in every results file is the fraction of episodes that succeeded, in [0, 1]."""

RESULT_KEYS = ("K", "N", "success", "return", "length", "episodes")
"""The keys of one (K, N) cell of results.json's `final` list (and of eval.csv's rows)."""

SUCCESS_METRIC = "fraction of evaluation episodes with OGBench info['success'] at the episode's end (final checkpoint)"

_BOOKKEEPING = {".lock", ".write-test"}
"""Files a run directory may hold before its config is written (they do not make it 'not empty')."""

_TASK_RE = re.compile(r"^(?P<env>.+?)-singletask(?:-task(?P<k>\d+))?-v\d+$")


def short_task_name(task_name: str) -> str:
    """'cube-single-play-singletask-task2-v0' -> 'cube-single-play-task2' (default task -> task1)."""
    m = _TASK_RE.match(task_name)
    if not m:
        return task_name
    return f"{m['env']}-task{m['k'] or 1}"


def seed_dir_name(seed: int) -> str:
    return f"seed{seed}"


def run_path(task_name: str, agent: str, seed: int, variant: str | None = None) -> Path:
    """The layout of run directories under a root: [<variant>/]<env>-task<k>/<agent>/seed<S>."""
    return Path(*([variant] if variant else []), short_task_name(task_name), agent, seed_dir_name(seed))


def default_run_dir(task_name: str, agent: str, seed: int, root: str | Path = "runs") -> Path:
    """runs/<env>-task<k>/<agent>/seed<S>."""
    return Path(root) / run_path(task_name, agent, seed)


def agent_name(record: Mapping[str, Any]) -> str:
    """The agent of a run's config.json or results.json, by today's name.

    Before Gaussian BC existed, flow BC was registered as "bc"; such a run's agent config holds the shortcut
    policy's `denoise_timesteps`, which Gaussian BC's has not, so it is reported (and loads) as "flow-bc".
    """
    name = str(record.get("agent"))
    agent_config = record.get("agent_config") or record.get("config") or {}
    if name == "bc" and isinstance(agent_config, Mapping) and "denoise_timesteps" in agent_config:
        return "flow-bc"
    return name


def make_results(
    run_config: Mapping[str, Any],
    steps: int,
    step: int,
    grid: Sequence[Mapping[str, Any]] | None,
    status: str,
    error: str | None = None,
) -> dict[str, Any]:
    """results.json of a run (its `config.json` content `run_config`) that ended with `status` ("complete" or
    "failed", with the one-line `error`) at update `step` of `steps`; `final` is the last evaluation grid."""
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
        "success_metric": SUCCESS_METRIC,
        "final": [{k: r[k] for k in RESULT_KEYS} for r in grid] if grid else [],
    }
    if error:
        out["error"] = error
    return out


SCALING_PROTOCOL = ("step", "eval_seed", "episodes", "max_episode_steps", "success_timing")
"""What makes two scaling.json grids comparable: cells of grids that agree on these can share one file."""


def scaling_header(
    config: Mapping[str, Any], step: int, *, eval_seed: int, episodes: int, max_episode_steps: int | None
) -> dict[str, Any]:
    """scaling.json's fields besides the grid: the run, and how its checkpoint `step` was evaluated."""
    return {
        "task": config["task"],
        "agent": agent_name(config),
        "seed": config["seed"],
        "step": step,
        "eval_seed": eval_seed,
        "episodes": episodes,
        "max_episode_steps": max_episode_steps,
        "success_timing": config.get("success_timing", "pre"),
        "ogbench_version": config.get("ogbench_version"),
    }


def format_cells(cells: Sequence[tuple[int, int] | Mapping[str, Any]]) -> str:
    """'K=1 N=1, K=8 N=16': (K, N) pairs or grid cells, in (K, N) order."""
    pairs = sorted((int(c["K"]), int(c["N"])) if isinstance(c, Mapping) else (int(c[0]), int(c[1])) for c in cells)
    return ", ".join(f"K={K} N={N}" for K, N in pairs)


def grid_from_rows(rows: Sequence[Mapping[str, str]], step: int) -> list[dict[str, Any]]:
    """The (K, N) cells eval.csv logged at `step`, in results.json's `final` form (empty if none)."""
    ints = ("K", "N", "episodes")
    return [
        {k: int(float(r[k])) if k in ints else float(r[k]) for k in RESULT_KEYS}
        for r in rows
        if _step_of(r.get("step")) == step
    ]


def run_state(path: str | Path, steps: int | None = None) -> tuple[str, str | None]:
    """The one answer to "is this run done?": ('complete' | 'failed' | 'corrupt' | 'pending', detail).

    complete: results.json says so (with `steps` updates, when given); failed: it says failed (detail: its error);
    corrupt: it cannot be read (detail: what to do); pending: no results.json yet, or a complete one for another
    step budget (training continues it).
    """
    run = RunDir(path)
    if not run.results.is_file():
        return "pending", None
    try:
        results = run.read_results() or {}
    except SorlError as e:
        return "corrupt", str(e)
    status = results.get("status")
    if status == "complete" and (steps is None or results.get("steps") == steps):
        return "complete", None
    if status == "failed":
        return "failed", str(results.get("error") or "failed")
    return "pending", None


class RunDir:
    """Paths and files of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    train_log = property(lambda self: self.path / TRAIN_LOG)
    eval_log = property(lambda self: self.path / EVAL_LOG)
    validation_log = property(lambda self: self.path / VALIDATION_LOG)
    online_log = property(lambda self: self.path / ONLINE_LOG)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    results = property(lambda self: self.path / RESULTS)
    scaling_json = property(lambda self: self.path / SCALING_JSON)
    scaling_csv = property(lambda self: self.path / SCALING_CSV)
    tracking = property(lambda self: self.path / TRACKING)
    tensorboard = property(lambda self: self.path / TENSORBOARD)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def exists(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        if self.path.exists() and not self.path.is_dir():
            raise SorlError(f"{self.path} is a file, not a run directory; give the directory that holds its {CONFIG}")
        return read_json(self.config, what="run config", missing=f"{self.path} is not a run directory (no {CONFIG})")

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_json(self.config, config)

    def read_results(self) -> dict[str, Any] | None:
        return read_json(self.results, what="results") if self.results.is_file() else None

    def write_results(self, results: Mapping[str, Any]) -> None:
        write_json(self.results, results)

    def try_write_results(self, results: Mapping[str, Any]) -> bool:
        """`write_results`, but a failure (the disk that just failed the run) is not raised: False instead."""
        try:
            self.write_results(results)
        except SorlError:
            return False
        return True

    def write_scaling(
        self,
        config: Mapping[str, Any],
        step: int,
        grid: Sequence[Mapping[str, Any]],
        *,
        eval_seed: int,
        episodes: int,
        max_episode_steps: int | None,
        kept: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """scaling.json (the grid with what produced it) and scaling.csv (one row per (K, N) cell), each written
        atomically; `kept`: cells of the earlier scaling.json that this evaluation did not redo
        (`plan_scaling`), written next to the new ones in (K, N) order."""
        cells = sorted([*kept, *grid], key=lambda r: (int(r["K"]), int(r["N"])))
        out = {
            **scaling_header(config, step, eval_seed=eval_seed, episodes=episodes, max_episode_steps=max_episode_steps),
            "success_unit": SUCCESS_UNIT,
            "success_metric": "fraction of episodes with OGBench info['success'] at the episode's end",
            "grid": cells,
        }
        write_json(self.scaling_json, out)
        write_csv(self.scaling_csv, cells, [*RESULT_KEYS, "env_steps", "time_s"])

    def plan_scaling(
        self, header: Mapping[str, Any], cells: Sequence[tuple[int, int]], *, replace: bool = False
    ) -> list[dict[str, Any]]:
        """The cells of the earlier scaling.json to keep next to an evaluation of `cells` (the (K, N) pairs) whose
        `scaling_header` is `header`; checked before the evaluation, so a refusal costs nothing.

        Earlier cells that are evaluated again are replaced; the others are kept when the earlier grid was made
        the same way (checkpoint step, evaluation seed, episodes, episode cap, success timing). An earlier grid made
        another way is replaced when this evaluation covers all its cells, and refused (SorlError naming
        `--replace`) when cells would be lost. `replace` (`sorl eval --replace`): keep nothing."""
        if replace or not self.scaling_json.exists():
            return []
        try:
            earlier = read_json(self.scaling_json, what="scaling grid")
            grid = [dict(c) for c in earlier["grid"]]
            pairs = [(int(c["K"]), int(c["N"])) for c in grid]
        except (SorlError, KeyError, TypeError, ValueError):
            raise SorlError(
                f"{self.scaling_json} is unreadable or not a scaling grid; move it aside, or give --replace to "
                "replace it"
            ) from None
        new = {(int(K), int(N)) for K, N in cells}
        lost = [p for p in pairs if p not in new]
        if not lost:
            return []
        differs = {k: (earlier.get(k), v) for k, v in header.items() if k in SCALING_PROTOCOL and earlier.get(k) != v}
        if differs:
            was = ", ".join(f"{k}={a!r}" for k, (a, _) in differs.items())
            now = ", ".join(f"{k}={b!r}" for k, (_, b) in differs.items())
            raise SorlError(
                f"{self.scaling_json} holds cells {format_cells(lost)} made with {was}, not {now}: this evaluation "
                "would drop them; evaluate those cells too, or give --replace to replace the file"
            )
        return [c for c, p in zip(grid, pairs, strict=True) if p not in new]

    def clear_failed_results(self) -> None:
        """Remove a results.json that says "failed": the run is being trained again."""
        try:
            previous = self.read_results()
        except SorlError:  # unreadable: it is not a complete result either
            previous = {"status": "failed"}
        if previous is not None and previous.get("status") != "complete":
            try:
                self.results.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise SorlError(f"could not remove the stale {self.results}: {e.strerror or e}") from None


def check_run_dir(path: str | Path, *, task: str, agent: str, seed: int) -> tuple[RunDir, dict[str, Any] | None]:
    """(run, its config.json or None): `path` may take a run of (task, agent, seed); nothing is created or written.

    Refuses (SorlError) a path that is a file, a directory holding another task's, agent's or seed's run, and a
    non-empty directory that is not a run directory. Whether it can be written to: `check_writable`.
    """
    run = RunDir(path)
    p = run.path
    if p.exists() and not p.is_dir():
        raise SorlError(f"run directory {p} is a file; choose another --run-dir")
    cfg = None
    if run.exists():
        cfg = run.read_config()
        if agent_name(cfg) != cfg.get("agent") and agent == cfg.get("agent"):
            raise SorlError(
                f"run directory {p} holds a flow-BC run written as agent 'bc' before 'bc' meant Gaussian BC; "
                "continue it with --agent flow-bc, or choose another --run-dir for Gaussian BC"
            )
        for key, want in (("task", task), ("agent", agent), ("seed", seed)):
            have = agent_name(cfg) if key == "agent" else cfg.get(key)
            if have != want:
                raise SorlError(
                    f"run directory {p} holds a run with {key}={have!r}, not {want!r}; "
                    "choose another --run-dir or delete that one"
                )
    elif p.is_dir() and any(c.name not in _BOOKKEEPING for c in p.iterdir()):
        raise SorlError(f"{p} is not empty and holds no sorl run ({CONFIG} missing); choose another --run-dir")
    return run, cfg


def create_run_dir(run: RunDir) -> RunDir:
    """Make a checked run directory (`check_run_dir`, `check_writable`) and its parents."""
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SorlError(f"cannot write to run directory {run.path}: {e.strerror or e}") from None
    return run


def open_run_dir(path: str | Path, *, task: str, agent: str, seed: int) -> RunDir:
    """`check_run_dir`, then create the directory: a run of (task, agent, seed) can be written there."""
    run, _ = check_run_dir(path, task=task, agent=agent, seed=seed)
    check_writable(run.path, "run directory", flag="--run-dir")
    return create_run_dir(run)


def check_writable(
    path: str | Path, what: str = "directory", *, flag: str | None = None, files: Sequence[str | Path] = ()
) -> None:
    """SorlError unless this process can create files in the directory `path` (made, with its parents, where
    missing) and write the existing ones among `files`, found without writing anything: the nearest existing
    ancestor of `path` must be a writable directory."""
    p = Path(path)
    there = p
    while not there.exists() and there.parent != there:
        there = there.parent
    instead = f"; choose another {flag}" if flag else ""
    if not there.is_dir():
        raise SorlError(f"cannot write to {what} {p}: {there} is a file{instead}")
    if not os.access(there, os.W_OK | os.X_OK):
        raise SorlError(f"cannot write to {what} {p}: {_why_not_writable(there)}{instead}")
    for f in map(Path, files):
        if f.exists() and not os.access(f, os.W_OK):
            raise SorlError(f"cannot write {f}: {_why_not_writable(f)}{instead}")


def _why_not_writable(path: Path) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else f"no write permission on {path}"


# ----------------------------------------------------------------------------------------------- files


def jsonable(x: Any) -> Any:
    """`x` with what JSON cannot hold made plain: mappings' keys as strings, tuples as lists, paths as strings,
    numpy and JAX scalars as Python numbers, and non-finite floats as null (strict JSON has no NaN). Anything else
    is left for `json.dumps` to take or refuse."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()  # numpy / jax scalars
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically: a temporary file beside it, then a rename. A reader (or a later run) sees the
    old file or the new one, never half of one, and a failure leaves the old file as it was (and no temporary)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SorlError(f"could not write {path}: {e.strerror or e}") from None


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Write JSON atomically (`write_text_atomic`): a reader never sees half a file."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")


def read_json(path: Path, *, what: str = "file", missing: str | None = None) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise SorlError(missing or f"{what} {path} not found") from None
    except IsADirectoryError:
        raise SorlError(f"{what} {path} is a directory, not a file; move it aside") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SorlError(f"{what} {path} is unreadable or corrupt ({type(e).__name__}); delete or restore it") from None
    if not isinstance(obj, dict):
        raise SorlError(f"{what} {path} is corrupt (not a JSON object)")
    return obj


def summary_files(paths: Sequence[str | Path], name: str, command: str) -> list[Path]:
    """The `name` files (a probe's summary, e.g. verifier.json) of the run directories under `paths` (run
    directories or roots holding them); a SorlError naming the `command` that writes them if there are none."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += [p / name] if (p / name).is_file() else sorted(p.rglob(name))
    if not files:
        raise SorlError(f"no {name} under {', '.join(map(str, paths))}; run `{command}` first")
    return files


class CsvLog:
    """An append-only CSV log whose columns are fixed by the first row written (missing cells stay empty)."""

    def __init__(self, path: Path, fields: Sequence[str] | None = None):
        self.path = Path(path)
        self._given: list[str] | None = list(fields) if fields else None
        self.fields: list[str] | None = self._given
        if self.path.is_file() and self.path.stat().st_size > 0:
            try:
                with self.path.open(newline="") as f:
                    first = f.readline()
            except (OSError, UnicodeDecodeError) as e:
                raise SorlError(f"log {self.path} is unreadable ({type(e).__name__}); delete or restore it") from None
            if first.endswith("\n"):  # a header cut short by a kill is no header
                header = next(csv.reader([first]), None)
                if header:
                    self.fields = header

    def write(self, row: Mapping[str, Any]) -> None:
        new = self.fields is None or not self.path.is_file() or self.path.stat().st_size == 0
        if self.fields is None:
            self.fields = list(row)
        try:
            with self.path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow({k: _fmt(v) for k, v in row.items()})
        except OSError as e:
            raise SorlError(f"could not write {self.path}: {e.strerror or e}") from None

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def count(self, step: int) -> int:
        """How many rows were logged at `step`."""
        return sum(1 for r in self.rows() if _step_of(r.get("step")) == step)

    def truncate_after(self, step: int) -> None:
        """Keep the complete rows with `step` <= `step` (a run continuing from its checkpoint at `step`).

        Rows a killed run logged after its last checkpoint go, and so does a row (or header) cut short by the
        kill: no line end, or the wrong number of cells. The file is rewritten atomically, if at all.
        """
        kept = self.kept_after(step)
        if kept is None:
            return
        header, keep = kept
        self.fields = header or self._given
        write_text_atomic(self.path, "".join(keep))

    def kept_after(self, step: int) -> tuple[list[str] | None, list[str]] | None:
        """What `truncate_after(step)` would keep: (header, lines), or None when the file stays as it is. Reads
        only, so a run checks its logs before it writes anything; SorlError if the log is unreadable."""
        if not self.path.is_file():
            return None
        try:
            with self.path.open(newline="") as f:
                lines = f.read().splitlines(keepends=True)
        except (OSError, UnicodeDecodeError) as e:
            raise SorlError(f"log {self.path} is unreadable ({type(e).__name__}); delete or restore it") from None
        complete = [line for line in lines if line.endswith("\n")]
        keep: list[str] = []
        header = next(csv.reader(complete[:1]), None) if complete else None
        if header:
            keep.append(complete[0])
            col = header.index("step") if "step" in header else None
            for line in complete[1:]:
                cells = next(csv.reader([line]), [])
                if len(cells) != len(header):
                    continue
                s = _step_of(cells[col]) if col is not None else None
                if col is None or (s is not None and s <= step):
                    keep.append(line)
        if keep == lines:
            self.fields = header or self._given
            return None
        return header, keep


def _step_of(cell: Any) -> int | None:
    try:
        return int(float(cell))
    except (TypeError, ValueError):
        return None


def _fmt(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write a whole CSV file atomically (`write_text_atomic`)."""
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    write_text_atomic(path, out.getvalue())
