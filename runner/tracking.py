"""Experiment-tracking sinks: `--logger wandb`, `--logger tensorboard` (or both, comma-separated).

The run directory's files (config.json, train.csv, eval.csv, validation.csv, results.json, scaling.json) are the
record of a run and are always written; a sink is an opt-in copy of the same rows for a tracking tool. The
Trainer opens one `MultiSink` per seed (`Tracking.open`) and hands it every row it writes:

    config.json        -> the tracker run's config (wandb) / a text entry "config" (tensorboard)
    train.csv row      -> train/<column> at the row's step (losses, updates_per_s, time_s)
    eval.csv rows      -> eval/K<K>_N<N>/<success|return|length> at the evaluation step
    validation.csv row -> val/<loss> at the row's step
    results.json       -> the run summary: status, final/K<K>_N<N>/<metric>
    scaling.json       -> scaling/K<K>_N<N>/<metric> at the checkpoint's step (`sorl eval RUN --logger ...`)

A sink never stops a run: a missing package, a failed start or a write that raises prints one warning line (once
per kind of sink and job) and that sink is dropped; the files go on. The packages are imported only when asked for
(`pip install -e '.[tracking]'`).

Resume: tracking.json in the run directory keeps the wandb run id, so a continued run (and a later `sorl eval`)
logs into the same wandb run; tensorboard writes into RUN/tensorboard/ again, with `purge_step` set past the
checkpoint so that TensorBoard hides what the killed process logged after it (the redone steps are logged anew).
wandb gets a `step` metric as every chart's x-axis instead of its own monotonic step, so the redone steps of a
resumed run are accepted; its charts may show them twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from runner import runs
from sorl.errors import SorlError

LOGGERS = ("wandb", "tensorboard")
PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboardX"}
WANDB_MODES = ("online", "offline")
DEFAULT_WANDB_PROJECT = "sorl"
GRID_METRICS = ("success", "return", "length")


def parse_loggers(value: str | Sequence[str] | None, name: str = "logger") -> tuple[str, ...]:
    """'wandb,tensorboard' -> ('wandb', 'tensorboard'); '' or 'none' -> (); anything else one SorlError."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item in ("", "none"):
            continue
        if item not in LOGGERS:
            raise SorlError(f"{name}={value!r}: choose wandb, tensorboard or both (wandb,tensorboard)")
        if item not in out:
            out.append(item)
    return tuple(out)


def check_wandb_mode(value: str | None, name: str = "wandb_mode") -> None:
    if value is not None and value not in WANDB_MODES:
        raise SorlError(f"{name}={value!r}: choose online or offline")


# ------------------------------------------------------------------------------------------ the sinks


class Sink(Protocol):
    """One tracking backend for one run: scalars at a step, a summary, close."""

    kind: str

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class TensorboardSink:
    """Event files in RUN/tensorboard/ (tensorboardX: no TensorFlow needed); `tensorboard --logdir runs/`."""

    kind = "tensorboard"

    def __init__(self, logdir: Path, config: Mapping[str, Any], *, purge_step: int | None):
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        # the default file name has a one-second clock: a resumed run or `sorl eval` within it would overwrite
        self.writer = SummaryWriter(
            logdir=str(self.logdir), purge_step=purge_step, flush_secs=30, filename_suffix=f".{secrets.token_hex(3)}"
        )
        self.writer.add_text("config", _json_block(config), global_step=purge_step or 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # rows are minutes apart: a kill must not lose the rows the CSV files kept

    def summary(self, values: Mapping[str, Any]) -> None:
        self.writer.add_text("summary", _json_block(values))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One wandb run per run directory, its id kept in tracking.json so that a resumed run continues it.

    Offline unless asked for online (`--wandb-mode online` or WANDB_MODE=online): a machine without network or
    credentials then still logs, and `wandb sync RUN/wandb/offline-run-*` uploads later. An online start that
    fails falls back to offline (the caller's one warning line says so)."""

    kind = "wandb"

    def __init__(self, run_dir: Path, config: Mapping[str, Any], *, project: str, mode: str, name: str, group: str):
        import wandb

        state = read_tracking(run_dir)
        run_id = state.get("wandb", {}).get("id") or secrets.token_hex(4)
        write_tracking(run_dir, {**state, "wandb": {"id": run_id, "project": project}})
        # wandb's own files next to the run's unless WANDB_DIR says otherwise
        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(run_dir)}
        settings = wandb.Settings(console="off", silent=True, init_timeout=30)

        def start(mode: str) -> Any:
            return wandb.init(
                project=project, id=run_id, name=name, group=group, config=dict(config), mode=mode,
                resume="allow", reinit="create_new", settings=settings, **where,
            )  # fmt: skip

        self.fallback: str | None = None
        try:
            self.run = start(mode)
        except Exception as e:
            if mode == "offline":
                raise
            self.run = start("offline")
            self.fallback = f"online start failed ({_one_line(e)}); logging offline instead (upload: wandb sync)"
        # the run's own step as every chart's x-axis: a resumed run re-logs steps wandb's step counter would drop
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.mode = "offline" if self.fallback else mode

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({"step": step, **values})

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def close(self) -> None:
        self.run.finish()


# ----------------------------------------------------------------------------------- one run's sinks


class MultiSink:
    """The sinks of one run directory behind the Trainer's rows; with none (no --logger) every call does nothing.

    A sink that raises is dropped and `warn` is told (it prints one line per kind of sink and job)."""

    def __init__(self, sinks: Sequence[Sink] = (), warn: Callable[[str, str], None] | None = None):
        self.sinks = list(sinks)
        self.warn = warn or (lambda kind, what: None)

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as e:  # a tracker is never worth a run
                self.sinks.remove(sink)
                self.warn(sink.kind, f"stopped ({_one_line(e)})")
                _close_quietly(sink)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self.sinks and values:
            self._each("scalars", int(step), {k: _number(v) for k, v in values.items()})

    def train_row(self, row: Mapping[str, Any]) -> None:
        """A train.csv row: train/<column>."""
        self.scalars(row["step"], {f"train/{k}": v for k, v in row.items() if k != "step"})

    def online_episode(self, row: Mapping[str, Any]) -> None:
        """An online.csv row (one finished online episode): online/<column>."""
        self.scalars(row["step"], {f"online/{k}": v for k, v in row.items() if k != "step"})

    def validation_row(self, row: Mapping[str, Any]) -> None:
        """A validation.csv row (its columns are val/<loss> already)."""
        self.scalars(row["step"], {k: v for k, v in row.items() if k != "step"})

    def eval_grid(self, step: int, grid: Sequence[Mapping[str, Any]], prefix: str = "eval") -> None:
        """eval.csv's rows of one evaluation: <prefix>/K<K>_N<N>/<metric>."""
        self.scalars(step, grid_scalars(grid, prefix))

    def scaling(self, step: int, grid: Sequence[Mapping[str, Any]]) -> None:
        """scaling.json's grid (`sorl eval`)."""
        self.eval_grid(step, grid, prefix="scaling")
        if self.sinks:
            self._each("summary", {"scaling_step": int(step), **grid_scalars(grid, "scaling")})

    def results(self, results: Mapping[str, Any]) -> None:
        """results.json: its status, step and the final grid as the run's summary."""
        if self.sinks:
            out: dict[str, Any] = {"status": results.get("status"), "final_step": results.get("step")}
            if results.get("error"):
                out["error"] = results["error"]
            out.update(grid_scalars(results.get("final") or [], "final"))
            self._each("summary", out)

    def close(self) -> None:
        self._each("close")
        self.sinks = []


def grid_scalars(grid: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/K{r['K']}_N{r['N']}/{m}": _number(r[m]) for r in grid for m in GRID_METRICS if r.get(m) is not None
    }


# ------------------------------------------------------------------------------------------ a job's


class Tracking:
    """The sinks a job asked for (`--logger`): `open` starts them for one run directory.

    One warning line per kind of sink and job (not per seed): after a sink fails to start, the job's later run
    directories do not try it again."""

    def __init__(
        self,
        loggers: str | Sequence[str] | None = "",
        *,
        wandb_project: str = DEFAULT_WANDB_PROJECT,
        wandb_mode: str | None = None,
    ):
        self.kinds = parse_loggers(loggers)
        check_wandb_mode(wandb_mode)
        self.wandb_project = wandb_project or DEFAULT_WANDB_PROJECT
        # --wandb-mode, else WANDB_MODE, else offline: nothing waits on a network nobody asked for
        env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
        self.wandb_mode = wandb_mode or (env_mode if env_mode in (*WANDB_MODES, "disabled") else "offline")
        self.warned: set[tuple[str, bool]] = set()
        self.broken: set[str] = set()

    @classmethod
    def of(cls, settings: Any) -> Tracking:
        """From anything with `logger`, `wandb_project`, `wandb_mode` (TrainSettings, the `sorl eval` arguments)."""
        return cls(
            getattr(settings, "logger", ""),
            wandb_project=getattr(settings, "wandb_project", DEFAULT_WANDB_PROJECT),
            wandb_mode=getattr(settings, "wandb_mode", None),
        )

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def warn(self, kind: str, what: str, *, dropped: bool = True) -> None:
        """One line per kind of sink (and per kind of trouble: dropped, or wandb fallen back to offline)."""
        if dropped:
            self.broken.add(kind)
            what += "; the run goes on, logging to its files only"
        if (kind, dropped) not in self.warned:
            self.warned.add((kind, dropped))
            print(f"warning: --logger {kind} {what}", file=sys.stderr, flush=True)

    def open(self, run_dir: str | Path, config: Mapping[str, Any], *, resume_step: int | None = None) -> MultiSink:
        """The sinks of one run directory; `resume_step`: a training run continuing from its checkpoint there
        (tensorboard hides the steps logged after it), None when appending (`sorl eval`)."""
        run_dir = Path(run_dir)
        sinks: list[Sink] = []
        for kind in self.kinds:
            if kind in self.broken:
                continue
            try:
                sink = self._start(kind, run_dir, config, resume_step)
            except ImportError as e:
                self.warn(kind, f"could not start: {PACKAGES[kind]} is not installed ({_one_line(e)}; install it "
                          "with pip install -e '.[tracking]')")  # fmt: skip
                continue
            except Exception as e:
                self.warn(kind, f"could not start ({_one_line(e)})")
                continue
            note = getattr(sink, "fallback", None)
            if note:
                self.warn(kind, note, dropped=False)
                self.wandb_mode = "offline"  # the job's other seeds need not wait for the same failure
            sinks.append(sink)
            print(f"tracking: {describe(sink, run_dir)}", flush=True)
        return MultiSink(sinks, self.warn)

    def _start(self, kind: str, run_dir: Path, config: Mapping[str, Any], resume_step: int | None) -> Sink:
        if kind == "tensorboard":
            purge = resume_step + 1 if resume_step else None  # the checkpoint's own row was kept; later ones redone
            return TensorboardSink(runs.RunDir(run_dir).tensorboard, config, purge_step=purge)
        task, agent, seed = config.get("task", "task"), config.get("agent", "agent"), config.get("seed", 0)
        short = runs.short_task_name(task) if isinstance(task, str) else str(task)
        return WandbSink(
            run_dir, config, project=self.wandb_project, mode=self.wandb_mode,
            name=f"{agent}-{short}-seed{seed}", group=f"{short}-{agent}",
        )  # fmt: skip


def describe(sink: Sink, run_dir: Path) -> str:
    """Where a started sink writes (one line); a tracker's changed internals cost the line's detail, not the run."""
    try:
        return _describe(sink, run_dir)
    except Exception:
        return sink.kind


def _describe(sink: Sink, run_dir: Path) -> str:
    if isinstance(sink, TensorboardSink):
        return f"tensorboard event files in {sink.logdir} (tensorboard --logdir {sink.logdir})"
    if isinstance(sink, WandbSink):
        if sink.mode == "offline":
            where = Path(getattr(sink.run.settings, "sync_dir", "") or run_dir / "wandb")
            return f"wandb offline run {sink.run.id} in {where} (upload: wandb sync {where})"
        return f"wandb run {getattr(sink.run, 'url', None) or sink.run.id}"
    return sink.kind


# --------------------------------------------------------------------------------------- tracking.json


def read_tracking(run_dir: str | Path) -> dict[str, Any]:
    """tracking.json of a run directory ({} if absent or unreadable: a new tracker run is no failure)."""
    path = runs.RunDir(run_dir).tracking
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_tracking(run_dir: str | Path, state: Mapping[str, Any]) -> None:
    runs.write_json(runs.RunDir(run_dir).tracking, state)


# ---------------------------------------------------------------------------------------------- helpers


def _number(v: Any) -> float:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _json_block(obj: Mapping[str, Any]) -> str:
    # markdown code block: TensorBoard's text tab renders markdown
    return "```\n" + json.dumps(obj, indent=2, default=str) + "\n```"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _close_quietly(sink: Sink) -> None:
    with contextlib.suppress(Exception):  # already failing; the warning has been printed
        sink.close()


__all__ = [
    "LOGGERS",
    "MultiSink",
    "Sink",
    "TensorboardSink",
    "Tracking",
    "WandbSink",
    "check_wandb_mode",
    "grid_scalars",
    "parse_loggers",
    "read_tracking",
    "write_tracking",
]
