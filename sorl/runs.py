"""The run directory: everything one training run writes, and the only thing later commands read.

    RUN_DIR/
      config.json     resolved configuration: task, agent, seed, agent config, ogbench version,
                      success_timing, observation/action sizes, training and evaluation settings
      train.csv       one row per log interval: step, mean of each loss/info over the interval,
                      updates_per_s, time_s
      eval.csv        one row per (evaluation step, K, N): success (fraction), return, length, episodes
      checkpoints/    orbax checkpoints (agent state, data rng, step), the last few kept
      results.json    the final evaluation and `status` ("complete" or "failed")
      scaling.json    written by `sorl eval`: the (K, N) grid of the last checkpoint
      scaling.csv

Default location: runs/<env>-task<k>/<agent>/seed<S>, e.g. runs/cube-single-play-task1/sorl/seed0.
"""

from __future__ import annotations

import csv
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
CHECKPOINTS = "checkpoints"
RESULTS = "results.json"
SCALING_JSON = "scaling.json"
SCALING_CSV = "scaling.csv"

_TASK_RE = re.compile(r"^(?P<env>.+?)-singletask(?:-task(?P<k>\d+))?-v\d+$")


def short_task_name(task_name: str) -> str:
    """'cube-single-play-singletask-task2-v0' -> 'cube-single-play-task2' (default task -> task1)."""
    m = _TASK_RE.match(task_name)
    if not m:
        return task_name
    return f"{m['env']}-task{m['k'] or 1}"


def default_run_dir(task_name: str, agent: str, seed: int, root: str | Path = "runs") -> Path:
    """runs/<env>-task<k>/<agent>/seed<S>."""
    return Path(root) / short_task_name(task_name) / agent / f"seed{seed}"


class RunDir:
    """Paths and files of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    train_log = property(lambda self: self.path / TRAIN_LOG)
    eval_log = property(lambda self: self.path / EVAL_LOG)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    results = property(lambda self: self.path / RESULTS)
    scaling_json = property(lambda self: self.path / SCALING_JSON)
    scaling_csv = property(lambda self: self.path / SCALING_CSV)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def exists(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        return read_json(self.config, what="run config", missing=f"{self.path} is not a run directory (no {CONFIG})")

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_json(self.config, config)

    def read_results(self) -> dict[str, Any] | None:
        return read_json(self.results, what="results") if self.results.is_file() else None

    def write_results(self, results: Mapping[str, Any]) -> None:
        write_json(self.results, results)


def open_run_dir(path: str | Path, *, task: str, agent: str, seed: int) -> RunDir:
    """Create `path` for a run of (task, agent, seed), or accept it if it already holds that run.

    Refuses (SorlError) a path that is a file, a directory holding another task's, agent's or seed's
    run, or a non-empty directory that is not a run directory.
    """
    run = RunDir(path)
    p = run.path
    if p.exists() and not p.is_dir():
        raise SorlError(f"run directory {p} is a file; choose another --run-dir")
    if run.exists():
        cfg = run.read_config()
        for key, want in (("task", task), ("agent", agent), ("seed", seed)):
            if cfg.get(key) != want:
                raise SorlError(
                    f"run directory {p} holds a run with {key}={cfg.get(key)!r}, not {want!r}; "
                    "choose another --run-dir or delete that one"
                )
    elif p.is_dir() and any(p.iterdir()):
        raise SorlError(f"{p} is not empty and holds no sorl run ({CONFIG} missing); choose another --run-dir")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SorlError(f"cannot write to run directory {p}: {e.strerror or e}") from None
    return run


# ----------------------------------------------------------------------------------------------- files


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()  # numpy / jax scalars
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename): a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise SorlError(f"could not write {path}: {e.strerror or e}") from None


def read_json(path: Path, *, what: str = "file", missing: str | None = None) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise SorlError(missing or f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SorlError(f"{what} {path} is unreadable or corrupt ({type(e).__name__}); delete or restore it") from None
    if not isinstance(obj, dict):
        raise SorlError(f"{what} {path} is corrupt (not a JSON object)")
    return obj


class CsvLog:
    """An append-only CSV log whose columns are fixed by the first row written (missing cells stay empty)."""

    def __init__(self, path: Path, fields: Sequence[str] | None = None):
        self.path = Path(path)
        self.fields: list[str] | None = list(fields) if fields else None
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None)
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

    def truncate_after(self, step: int) -> None:
        """Drop rows with `step` > `step` (used when a run continues from an earlier checkpoint)."""
        rows = self.rows()
        keep = [r for r in rows if r.get("step", "") == "" or int(float(r["step"])) <= step]
        if len(keep) == len(rows) or self.fields is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, self.path)


def _fmt(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write a whole CSV file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(v) for k, v in r.items()})
        os.replace(tmp, path)
    except OSError as e:
        raise SorlError(f"could not write {path}: {e.strerror or e}") from None
