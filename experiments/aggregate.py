"""`sorl table`: run directories -> success per task, per environment and overall, with seeds aggregated.

Statistics (success in %, from each run's `results.json` "final" grid: the final checkpoint):

- mean ± std: per task, over seeds (sample std, ddof=1; "—" with one seed). Per environment and overall, the
  mean weights tasks equally (mean of the per-task means) and the std is over seeds of each seed's average over
  the tasks it has — the paper's "mean over 5 tasks x 8 seeds ± std over seeds".
- IQM: the interquartile mean of all runs' scores (25 % trimmed from each end, as `scipy.stats.trim_mean(x, 0.25)`
  and rliable's `aggregate_iqm`), with a 95 % percentile confidence interval from a stratified bootstrap: seeds
  are resampled with replacement within each task (rliable's `StratifiedBootstrap`), `reps` times, with a fixed
  seed so tables are reproducible. Implemented here in numpy because rliable 1.2 imports `arch`, whose current
  release fails to import with pandas 3 (numpy 2.x environments); the computation is the same.

Methods are the agents, split by the settings (resolved agent config, offline budget, success timing) that differ
between runs of one agent on one environment (the grid of a sweep): e.g. "sorl alpha=1.0" and "sorl alpha=10.0".
A run fine-tuned online (config.json's `online` section) is its own method, "sorl +online 500000" (its online steps,
and the online settings that differ between such runs), never averaged with offline-only runs; `--phase offline`
or `both` (`PHASES`) reports such runs' evaluation at the end of their offline phase (results.json's
`online.offline_final`) alone or beside the final one, at the same cell (a run trained online only has none). Each
row says which (K, N) cell it reports; the default is the agent's published cell where it has one (its
`PUBLISHED_CELL`: IFQL's 10 flow steps and 32 candidates) and the runs evaluated it, else the largest K with N = 1
that the method's runs evaluated (`--K`/`--N` pick another); a note says which, for an agent with a published cell.
Partial sweeps are aggregated with the number of tasks and seeds shown; runs that are not complete are left out and
counted.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import paper
from runner import runs
from sorl.errors import SorlError

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


# ------------------------------------------------------------------------------------------- statistics


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean after dropping int(0.25 n) values from each end."""
    x = np.sort(np.asarray(x, np.float64), axis=axis)
    n = x.shape[axis]
    k = int(0.25 * n)
    return np.take(x, np.arange(k, n - k), axis=axis).mean(axis=axis)


def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(x, np.float64).mean(axis=axis)


STATS: dict[str, Callable[..., np.ndarray]] = {"iqm": iqm, "mean": mean}


def stratified_bootstrap_ci(
    groups: Sequence[Sequence[float]],
    stat: Callable[..., np.ndarray] = iqm,
    *,
    reps: int = BOOTSTRAP_REPS,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile CI of `stat` over all scores, resampling with replacement within each group (task)."""
    rng = np.random.default_rng(seed)
    parts = []
    for g in groups:
        g = np.asarray(g, np.float64)
        if g.size == 0:
            continue
        parts.append(g[rng.integers(0, g.size, size=(reps, g.size))])
    if not parts:
        return float("nan"), float("nan")
    samples = stat(np.concatenate(parts, axis=1), axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def sample_std(x: Sequence[float]) -> float:
    x = np.asarray(x, np.float64)
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


# ------------------------------------------------------------------------------------------------ runs


@dataclasses.dataclass
class RunRecord:
    """One run directory as the aggregation sees it."""

    path: Path
    task: str
    env: str
    agent: str
    seed: int
    status: str
    steps: int | None
    """Offline gradient updates (results.json's `steps` less the online phase's)."""
    success_timing: str | None
    settings: dict[str, str]
    """The resolved agent config (else the --agent overrides): what tells methods apart."""
    final: dict[tuple[int, int], dict[str, Any]]
    label: str = ""
    online: dict[str, Any] = dataclasses.field(default_factory=dict)
    """config.json's `online` section when the run had an online phase (steps, K, N, balanced_sampling), else {}."""
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)
    """results.json's `timing` (updates_per_s, train_s, compile_s, wall_s), as measured on the run's machine."""
    offline_final: dict[tuple[int, int], dict[str, Any]] | None = None
    """A run with an online phase: the grid evaluated at the end of its offline phase (results.json's
    `online.offline_final`; {} for a run trained online only, `--steps 0`). None: the run had no online phase."""

    @property
    def short_task(self) -> str:
        from runner.runs import short_task_name

        return short_task_name(self.task)

    def scaling_grid(self) -> dict[tuple[int, int], dict[str, Any]]:
        """The (K, N) grid of `sorl eval` (scaling.json) if the run has one, else its final evaluation."""
        path = self.path / "scaling.json"
        if path.is_file():
            try:
                grid = json.loads(path.read_text()).get("grid") or []
                cells = {(int(r["K"]), int(r["N"])): r for r in grid}
                if cells:
                    return cells
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return self.final


@dataclasses.dataclass
class RunSet:
    records: list[RunRecord]
    """Complete runs."""
    incomplete: list[Path]
    """Run directories left out (failed or running)."""
    expected_seeds: int | None = None
    """Seeds per task the sweep asks for, when aggregated from a spec."""
    corrupt: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    """Run directories whose results.json cannot be read or lacks what a run record needs, and why."""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def load_record(run_dir: Path) -> RunRecord | None:
    """A RunRecord from RUN_DIR/results.json (+ config.json if present); None if missing or unreadable."""
    from envs.registry import resolve_task

    results = _read(run_dir / "results.json")
    if results is None:
        return None
    config = _read(run_dir / "config.json") or {}
    try:
        task = resolve_task(results["task"])
        final = {(int(r["K"]), int(r["N"])): r for r in results.get("final") or []}
        online, steps = _phases(results, config)
        return RunRecord(
            path=run_dir,
            task=task.name,
            env=task.env.name,
            agent=runs.agent_name(results),
            seed=int(results["seed"]),
            status=str(results.get("status")),
            steps=steps,
            success_timing=results.get("success_timing"),
            settings=_settings(results, config),
            final=final,
            timing=results["timing"] if isinstance(results.get("timing"), dict) else {},
            online=online,
            offline_final=_offline_grid(results) if online else None,
        )
    except (KeyError, TypeError, ValueError, SorlError):
        return None


def _phases(results: dict[str, Any], config: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """(online section, offline steps) of a run: config.json's `online` section (runner.settings `record`) when its
    `steps` is set, and the offline updates (config.json's train.steps, else results.json's `steps`, which counts
    the online phase's updates too, less the online steps)."""
    section = config.get("online") if isinstance(config.get("online"), dict) else {}
    online = dict(section) if section.get("steps") else {}
    offline = (config.get("train") or {}).get("steps") if isinstance(config.get("train"), dict) else None
    total = results.get("steps")
    if offline is None and total is not None:
        offline = int(total) - int(online.get("steps") or 0)
    return online, offline


def _offline_grid(results: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """The (K, N) cells a run with an online phase evaluated at the end of its offline phase ({} when it had none:
    trained online only, or a results.json without the `online` section)."""
    section = results.get("online") if isinstance(results.get("online"), dict) else {}
    return {(int(r["K"]), int(r["N"])): r for r in section.get("offline_final") or []}


def _settings(results: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    """The run's agent settings as strings. A resolved config lacking a field of the agent's current Config was
    written before that field existed, so the run had the behaviour its default keeps (new fields default to the
    old behaviour): the default is filled in, so that such a run is not labelled apart from newer ones by it."""
    resolved = results.get("config") or config.get("agent_config")
    settings = {str(k): setting_str(v) for k, v in (resolved or config.get("agent_overrides") or {}).items()}
    if resolved:
        from agents import AGENTS

        agent_config = getattr(AGENTS.get(runs.agent_name(results)), "Config", None)
        if dataclasses.is_dataclass(agent_config):
            for field in dataclasses.fields(agent_config):
                if field.name not in settings and field.default is not dataclasses.MISSING:
                    settings[field.name] = setting_str(field.default)
    return settings


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under `root` (or `root` itself) holding a results.json."""
    if (root / "results.json").is_file():
        return [root]
    found = []
    for p in sorted(root.rglob("results.json")):
        rel = p.parent.relative_to(root)
        if any(part.startswith(".") or part in ("checkpoints", "submitit", "logs") for part in rel.parts):
            continue
        found.append(p.parent)
    return found


def load_runs(paths: Iterable[str | Path]) -> RunSet:
    """Complete runs from run directories, directories of runs, or sweep specs (.toml: the runs it expands to)."""
    paths = list(paths)
    if not paths:
        raise SorlError("give run directories, a directory of runs or a sweep spec (.toml)")
    dirs: list[Path] = []
    expected: int | None = None
    from experiments.spec import SPECS_DIR, load_spec

    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            dirs += find_run_dirs(path)
        elif path.suffix.lower() == ".toml" or (SPECS_DIR / f"{p}.toml").is_file():
            spec = load_spec(p)  # a spec file, or a shipped spec by name: the runs it expands to
            dirs += [Path(r.run_dir) for r in spec.runs()]
            expected = max(expected or 0, len(spec.seeds))
        else:
            raise SorlError(f"{p}: no such run directory or sweep spec")
    dirs = list(dict.fromkeys(d.resolve() for d in dirs))
    records, incomplete, corrupt = [], [], []
    for d in dirs:
        state, detail = runs.run_state(d)
        if state == "corrupt":
            corrupt.append((d, detail or "unreadable"))
        elif state == "complete":
            rec = load_record(d)
            if rec is None:
                corrupt.append((d, f"{d / 'results.json'} lacks the task, agent, seed or final grid of a run"))
            else:
                records.append(rec)
        elif d.exists():
            incomplete.append(d)
    if not records:
        where = ", ".join(str(p) for p in paths)
        raise SorlError(f"no complete runs (results.json with status complete) in {where}; run `sorl sweep` first")
    assign_labels(records)
    return RunSet(records, incomplete, expected, corrupt)


def setting_str(value: object) -> str:
    """A config value as labels and grouping compare it: 10 and 10.0 are one setting (a spec's grid may give either)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def assign_labels(records: Sequence[RunRecord]) -> None:
    """Label = agent, plus the settings that differ between its runs on one environment (the sweep's grid)."""

    def settings(r: RunRecord) -> dict[str, str]:
        return {**r.settings, "steps": str(r.steps), "success_timing": str(r.success_timing)}

    def online(r: RunRecord) -> dict[str, str]:
        return {k: setting_str(v) for k, v in r.online.items() if k != "steps"}

    varying: dict[str, set[str]] = {}
    by_agent_env: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        by_agent_env.setdefault((r.agent, r.env), []).append(r)
    for (agent, _), group in by_agent_env.items():
        keys = set().union(*(settings(r) for r in group))
        for key in keys:
            if len({settings(r).get(key) for r in group}) > 1:
                varying.setdefault(agent, set()).add(key)
    varying_online: dict[str, set[str]] = {}  # the online phase's settings that differ between online runs
    for (agent, _), group in by_agent_env.items():
        group = [r for r in group if r.online]
        for key in set().union(*(online(r) for r in group)):
            if len({online(r).get(key) for r in group}) > 1:
                varying_online.setdefault(agent, set()).add(key)
    for r in records:
        keys = sorted(varying.get(r.agent, ()))
        s = settings(r)
        r.label = r.agent + ("".join(f" {k}={s.get(k, 'default')}" for k in keys) if keys else "")
        if r.online:  # fine-tuned online: never one row with offline-only runs, whatever else varies
            o = online(r)
            r.label += f" +online {r.online['steps']}"
            r.label += "".join(f" online_{k}={o.get(k, 'default')}" for k in sorted(varying_online.get(r.agent, ())))


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a run's eval.csv / train.csv; [] when the file is missing or unreadable."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def to_float(x: str | None) -> float | None:
    """A csv cell as a finite float, else None (empty, text, nan or inf)."""
    try:
        v = float(x) if x not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


# ------------------------------------------------------------------------------------------------ table


@dataclasses.dataclass
class Row:
    level: str  # "task" | "env" | "all"
    env: str
    task: str
    method: str
    agent: str
    K: int
    N: int
    tasks: int
    tasks_total: int
    seeds: list[int]  # seeds per task (one entry per task)
    expected_seeds: int | None
    mean: float
    std: float
    iqm: float
    ci_low: float
    ci_high: float
    paper: float | None = None
    paper_std: float | None = None
    paper_mark: str = ""  # a footnote mark on the published number ("†": our settings there are unverified)

    @property
    def runs(self) -> int:
        return sum(self.seeds)

    @property
    def diff(self) -> float | None:
        return None if self.paper is None else self.mean - self.paper

    def seeds_text(self) -> str:
        lo, hi = min(self.seeds), max(self.seeds)
        text = str(lo) if lo == hi else f"{lo}-{hi}"
        if self.expected_seeds and (lo != self.expected_seeds or hi != self.expected_seeds):
            text += f"/{self.expected_seeds}"  # a partial sweep
        return text


def published_cell(agent: str) -> tuple[int, int] | None:
    """The (K, N) cell an agent's published numbers are (its class's `PUBLISHED_CELL`: IFQL's (10, 32)), or None
    (the published table's N = 1; an agent no longer registered)."""
    from agents import AGENTS

    cell = getattr(AGENTS.get(agent), "PUBLISHED_CELL", None)
    return None if cell is None else (int(cell[0]), int(cell[1]))


def default_cell(records: Sequence[RunRecord]) -> tuple[int, int]:
    """The cell a method's rows report when --K/--N do not say: its agent's published cell (`published_cell`) where
    every run evaluated it (else most runs: the union), otherwise the largest K with N = 1 evaluated by every run
    (else by most runs; N = smallest if no N = 1)."""
    common = set.intersection(*(set(r.final) for r in records)) if records else set()
    cells = common or set().union(*(set(r.final) for r in records))
    if not cells:
        raise SorlError(f"runs of {records[0].label} have no final evaluation in results.json")
    own = published_cell(records[0].agent)
    if own in cells:
        return own
    n = 1 if any(c[1] == 1 for c in cells) else min(c[1] for c in cells)
    return max(c[0] for c in cells if c[1] == n), n


def method_cell(records: Sequence[RunRecord], K: int | None, N: int | None) -> tuple[int, int]:
    """The (K, N) cell a method's rows and curves report: `--K`/`--N` where given, the rest from `default_cell`."""
    if K is not None and N is not None:
        return K, N
    default_K, default_N = default_cell(records)
    return (K if K is not None else default_K, N if N is not None else default_N)


def default_cell_note(method: str, agent: str, cell: tuple[int, int]) -> str | None:
    """The table's note saying which cell a method's rows show by default where its agent has a published cell:
    that cell, or that its runs did not evaluate it (and how to); None for the other agents."""
    own = published_cell(agent)
    if own is None:
        return None
    K, N = own
    if cell == own:
        return f"{method}: its rows show K={K}, N={N}, the cell {agent}'s published numbers are (its own policy)"
    return (
        f"{method}: its runs did not evaluate K={K}, N={N}, the cell {agent}'s published numbers are; its rows show "
        f"K={cell[0]}, N={cell[1]} (evaluate it with `sorl eval RUN --K {K} --N {N}`)"
    )


def _score(r: RunRecord, cell: tuple[int, int]) -> float | None:
    c = r.final.get(cell)
    return None if c is None or c.get("success") is None else 100.0 * float(c["success"])


def summarize(
    groups: dict[str, dict[int, float]],
    *,
    level: str,
    env: str,
    task: str,
    method: str,
    agent: str,
    cell: tuple[int, int],
    tasks_total: int,
    expected_seeds: int | None,
    reps: int,
) -> Row:
    """One row from {task: {seed: score %}}."""
    task_means = [np.mean(list(s.values())) for s in groups.values()]
    per_seed: dict[int, list[float]] = {}
    for s in groups.values():
        for seed, v in s.items():
            per_seed.setdefault(seed, []).append(v)
    if level == "task":
        std = sample_std(list(next(iter(groups.values())).values()))
    else:
        std = sample_std([np.mean(v) for v in per_seed.values()])
    scores = [list(s.values()) for s in groups.values()]
    flat = np.concatenate([np.asarray(s, np.float64) for s in scores])
    lo, hi = stratified_bootstrap_ci(scores, iqm, reps=reps)
    return Row(
        level=level,
        env=env,
        task=task,
        method=method,
        agent=agent,
        K=cell[0],
        N=cell[1],
        tasks=len(groups),
        tasks_total=tasks_total,
        seeds=[len(s) for s in groups.values()],
        expected_seeds=expected_seeds,
        mean=float(np.mean(task_means)),
        std=std,
        iqm=float(iqm(flat)),
        ci_low=lo,
        ci_high=hi,
    )


def _env_rank(env: str) -> int:
    """Where `env` sorts: the registry's order, an environment it does not know after every one it does."""
    from envs.registry import ENVIRONMENTS

    order = {name: i for i, name in enumerate(ENVIRONMENTS)}
    return order.get(env, len(order))


def table_rows(
    runset: RunSet,
    *,
    K: int | None = None,
    N: int | None = None,
    levels: Sequence[str] = ("task", "env", "all"),
    compare: str | None = None,
    reps: int = BOOTSTRAP_REPS,
) -> tuple[list[Row], list[str]]:
    """(rows, notes) of the table."""
    bad = [lv for lv in levels if lv not in ("task", "env", "all")]
    if bad or not levels:
        raise SorlError(f"--level {','.join(levels)}: use task, env and/or all")
    published = paper.published(compare) if compare else None
    notes: list[str] = []
    by_method: dict[str, list[RunRecord]] = {}
    for r in runset.records:
        by_method.setdefault(r.label, []).append(r)
    rows: list[Row] = []
    for method, recs in by_method.items():
        cell = method_cell(recs, K, N)
        defaulted = K is None or N is None
        if defaulted and (note := default_cell_note(method, recs[0].agent, cell)) is not None:
            notes.append(note)
        recs = _runs_with_cell(method, recs, cell, notes)
        if recs:
            context = _MethodRows(method, recs[0].agent, cell, runset.expected_seeds, reps)
            rows += context.rows(recs, levels, published, notes)
    rows.sort(key=lambda r: (_env_rank(r.env), r.level != "task", r.task, r.method))
    notes += _left_out_notes(runset)
    if published is not None:
        _add_comparison_notes(rows, levels, notes)
    return rows, notes


def _add_comparison_notes(rows: Sequence[Row], levels: Sequence[str], notes: list[str]) -> None:
    """With --compare: which (K, N) each side is (first), or that no published number matched."""
    if "env" not in levels:
        return
    if any(r.paper is not None for r in rows):
        notes.insert(0, comparison_note())
    else:
        notes.append("no published number matches these environments and agents")
    uncompared = _agents_without_a_published_column(rows)
    if uncompared:
        notes.append(
            f"{', '.join(uncompared)}: no published number to compare with (their paper column shows —): the "
            f"published table (experiments/paper.py: {', '.join(paper.COLUMNS)}) has no column for them"
        )


def _agents_without_a_published_column(rows: Sequence[Row]) -> list[str]:
    """The registered agents among `rows` whose `PUBLISHED_COLUMN` is None, in the rows' order."""
    from agents import AGENTS

    found = [r.agent for r in rows if r.agent in AGENTS and AGENTS[r.agent].PUBLISHED_COLUMN is None]
    return list(dict.fromkeys(found))


def _runs_with_cell(method: str, recs: Sequence[RunRecord], cell: tuple[int, int], notes: list[str]) -> list[RunRecord]:
    """The runs of `method` that evaluated `cell`, with a note on those left out."""
    missing = [r for r in recs if _score(r, cell) is None]
    if missing:
        notes.append(
            f"{method}: {len(missing)} runs have no K={cell[0]}, N={cell[1]} cell and are left out "
            f"(e.g. {missing[0].path})"
        )
    return [r for r in recs if _score(r, cell) is not None]


def _left_out_notes(runset: RunSet) -> list[str]:
    """The notes on run directories the table leaves out: unreadable, or not complete."""
    notes = []
    if runset.corrupt:
        notes.append(f"{len(runset.corrupt)} run directories are left out as unreadable: {runset.corrupt[0][1]}")
    if runset.incomplete:
        notes.append(
            f"{len(runset.incomplete)} run directories not complete (failed or running) are left out, "
            f"e.g. {runset.incomplete[0]}"
        )
    return notes


@dataclasses.dataclass
class _MethodRows:
    """What every row of one method shares (the keywords of `summarize` that are not the row's own)."""

    method: str
    agent: str
    cell: tuple[int, int]
    expected_seeds: int | None
    reps: int

    def summarize(
        self, groups: dict[str, dict[int, float]], *, level: str, env: str, task: str, tasks_total: int
    ) -> Row:
        return summarize(
            groups,
            level=level,
            env=env,
            task=task,
            method=self.method,
            agent=self.agent,
            cell=self.cell,
            tasks_total=tasks_total,
            expected_seeds=self.expected_seeds,
            reps=self.reps,
        )

    def rows(
        self,
        recs: Sequence[RunRecord],
        levels: Sequence[str],
        published: dict[str, dict[str, tuple[float, float | None]]] | None,
        notes: list[str],
    ) -> list[Row]:
        """The method's rows at `levels`: per task, per environment (with the published number where `published`
        has one), over every environment where there are several."""
        scores = _scores_by_env(recs, self.cell)
        rows: list[Row] = []
        for env, tasks in scores.items():
            if "task" in levels:
                for task, seeds in tasks.items():
                    rows.append(self.summarize({task: seeds}, level="task", env=env, task=task, tasks_total=1))
            if "env" in levels:
                rows.append(self.env_row(env, tasks, recs, published, notes))
        if "all" in levels and len(scores) > 1:
            every_task = {f"{env}/{task}": seeds for env, tasks in scores.items() for task, seeds in tasks.items()}
            rows.append(self.summarize(every_task, level="all", env="all", task="", tasks_total=len(every_task)))
        return rows

    def env_row(
        self,
        env: str,
        tasks: dict[str, dict[int, float]],
        recs: Sequence[RunRecord],
        published: dict[str, dict[str, tuple[float, float | None]]] | None,
        notes: list[str],
    ) -> Row:
        """One environment's row, its tasks weighted equally (out of all the environment's tasks)."""
        from envs.registry import ENVIRONMENTS

        total = ENVIRONMENTS[env].num_tasks if env in ENVIRONMENTS else len(tasks)
        row = self.summarize(tasks, level="env", env=env, task="", tasks_total=total)
        if published is not None:
            value = paper.published_value(published, env, self.agent)
            if value is not None:
                row.paper, row.paper_std = value
                row.paper_mark = _comparison_caveats(recs, env, self.agent, notes)
        return row


def _scores_by_env(recs: Sequence[RunRecord], cell: tuple[int, int]) -> dict[str, dict[str, dict[int, float]]]:
    """env -> task -> seed -> success (%) at `cell`: environments in the registry's order, tasks by name."""
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for r in recs:
        scores.setdefault(r.env, {}).setdefault(r.short_task, {})[r.seed] = _score(r, cell)
    return {env: dict(sorted(scores[env].items())) for env in sorted(scores, key=_env_rank)}


def comparison_note() -> str:
    """Which (K, N) each side of `--compare` is."""
    return (
        "ours: the row's cell (default: the agent's published cell where it has one and its runs evaluated it, else "
        "the largest K evaluated, N = 1; --K/--N pick another); "
        f"paper: the published number, {paper.PUBLISHED_CELL} (no best-of-N; the one-step baselines have no K) "
        "unless its agent's published cell says otherwise"
    )


def _comparison_caveats(recs: Sequence[RunRecord], env: str, agent: str, notes: list[str]) -> str:
    """The footnote mark of one compared row, adding its note once: '†' where our per-environment settings of
    `agent` on `env` are unverified. A SORL row trained with our default update (not the released one that made
    the published numbers) gets a note too."""
    from agents import AGENTS
    from envs.registry import settings_source

    mark = ""
    source = settings_source(AGENTS[agent], env) if agent in AGENTS else None
    if source is not None and not source[0]:
        mark = "†"
        note = f"† {agent} on {env}: our per-environment settings are unverified ({source[1]}; envs/registry.py)"
        if note not in notes:
            notes.append(note)
    if agent == "sorl" and any(r.settings.get("released_update") in ("False", "false") for r in recs if r.env == env):
        note = (
            f"{recs[0].label} on {env}: trained with our default update; the published SORL numbers come from "
            "the released update (released_update=True, the paper-sorl spec)"
        )
        if note not in notes:
            notes.append(note)
    return mark


# ----------------------------------------------------------------------------------------------- phases

PHASES = ("final", "offline", "both")
"""`sorl table --phase`: the final evaluation (after the online phase where a run has one), the evaluation at the
end of the offline phase (runs with an online phase only: results.json's `online.offline_final`), or both."""

RowKey = tuple[str, str, str, str]


def _row_key(r: Row) -> RowKey:
    return (r.level, r.env, r.task, r.method)


@dataclasses.dataclass
class PhaseRow:
    """One row of `--phase both`: a method's runs before their online phase and after it, at one (K, N) cell."""

    after: Row
    """The final evaluation (the row `--phase final` shows)."""
    before: Row | None
    """The evaluation at the end of the offline phase; None where the runs had none (trained online only)."""

    @property
    def delta(self) -> float | None:
        return None if self.before is None else self.after.mean - self.before.mean


def check_phase(phase: str, compare: str | None = None) -> None:
    """`--phase` (and `--compare` beside it), checked before any run is read."""
    if phase not in PHASES:
        raise SorlError(
            f"--phase {phase}: use final (the final evaluation), offline (the end of the offline phase) or both"
        )
    if phase == "both" and compare:
        raise SorlError("--compare with --phase both: compare one phase (--phase final or --phase offline)")


def check_online_phase(records: Sequence[RunRecord], phase: str) -> None:
    """One SorlError naming the runs without an online phase where `phase` asks for the evaluation before it."""
    missing = [r for r in records if r.offline_final is None]
    if phase == "final" or not missing:
        return
    named = ", ".join(str(r.path) for r in missing[:3]) + (f" and {len(missing) - 3} more" if missing[3:] else "")
    runs_had = "1 run had" if len(missing) == 1 else f"{len(missing)} runs had"
    raise SorlError(
        f"--phase {phase}: {runs_had} no online phase, so nothing was evaluated before one ({named}); "
        "give only runs trained with --online-steps, or use --phase final"
    )


def phase_rows(
    runset: RunSet,
    *,
    K: int | None = None,
    N: int | None = None,
    levels: Sequence[str] = ("task", "env", "all"),
    compare: str | None = None,
    reps: int = BOOTSTRAP_REPS,
) -> tuple[list[PhaseRow], list[str]]:
    """(rows, notes) of `--phase offline|both`: each row of the final evaluation (`table_rows`) beside the same
    runs' row at the end of their offline phase, at the same (K, N) cell, so that the two differ only by the online
    phase. `compare` puts the published numbers beside the offline phase's rows (the paper's are offline)."""
    check_online_phase(runset.records, "offline")
    after, notes = table_rows(runset, K=K, N=N, levels=levels, reps=reps)
    cells = {r.method: (r.K, r.N) for r in after}
    published = paper.published(compare) if compare else None
    by_method: dict[str, list[RunRecord]] = {}
    for r in runset.records:
        by_method.setdefault(r.label, []).append(r)
    before: dict[RowKey, Row] = {}
    for method, recs in by_method.items():
        if method in cells:  # a method with no row after the online phase has none before it either
            context = _MethodRows(method, recs[0].agent, cells[method], runset.expected_seeds, reps)
            before.update((_row_key(r), r) for r in _offline_rows(context, recs, levels, published, notes))
    paired = [PhaseRow(r, before.get(_row_key(r))) for r in after]
    if published is not None:
        _add_comparison_notes([p.before for p in paired if p.before is not None], levels, notes)
    return paired, notes


def _offline_rows(
    context: _MethodRows,
    recs: Sequence[RunRecord],
    levels: Sequence[str],
    published: dict[str, dict[str, tuple[float, float | None]]] | None,
    notes: list[str],
) -> list[Row]:
    """One method's rows at the end of its offline phase: its runs with their `offline_final` grids as final."""
    before = [dataclasses.replace(r, final=r.offline_final or {}) for r in recs]
    if not any(r.final for r in before):
        why = "trained online only (--steps 0)" if all(r.steps == 0 for r in recs) else "no `online.offline_final`"
        notes.append(f"{context.method}: {why}, so nothing was evaluated before its online phase")
        return []
    before = _runs_with_cell(f"{context.method} (before online)", before, context.cell, notes)
    return context.rows(before, levels, published, notes) if before else []


def _phase_table(
    runset: RunSet,
    phase: str,
    *,
    fmt: str,
    K: int | None,
    N: int | None,
    levels: Sequence[str],
    compare: str | None,
    reps: int,
) -> str:
    """The text of `sorl table --phase offline|both`."""
    check_online_phase(runset.records, phase)  # first: its refusal names the --phase asked for
    paired, notes = phase_rows(runset, K=K, N=N, levels=levels, compare=compare, reps=reps)
    if not paired:
        raise SorlError(NO_CELL)
    if phase == "both":
        return format_phase_table(paired, fmt, notes=notes, reps=reps)
    rows = [p.before for p in paired if p.before is not None]
    if not rows:
        raise SorlError(
            "--phase offline: no run of these was evaluated at the end of an offline phase at its method's cell "
            "(runs trained online only, --steps 0, have none); use --phase final"
        )
    return format_table(rows, fmt, compare=compare is not None, notes=notes, reps=reps, phase="offline")


# ------------------------------------------------------------------------------------------- formatting


def _f(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:+.1f}"


def _lead_cells(r: Row) -> list[str]:
    """What a row is: environment, task(s), method, cell and seeds."""
    if r.level == "task":
        name = r.task
    elif r.tasks == r.tasks_total:
        name = f"all {r.tasks} tasks"
    else:
        name = f"{r.tasks}/{r.tasks_total} tasks"
    return [r.env, name, r.method, f"K={r.K}, N={r.N}", r.seeds_text()]


def _stat_cells(r: Row | None) -> list[str]:
    """mean ± std and IQM [CI]; dashes for a phase the row's runs did not have."""
    if r is None:
        return ["—", "—"]
    return [f"{_f(r.mean)} ± {_f(r.std)}", f"{_f(r.iqm)} [{_f(r.ci_low)}, {_f(r.ci_high)}]"]


def _cells(r: Row, compare: bool) -> list[str]:
    cells = _lead_cells(r) + _stat_cells(r)
    if compare:
        paper_text = "—" if r.paper is None else _f(r.paper, 0) + (f" ± {_f(r.paper_std, 0)}" if r.paper_std else "")
        paper_text += r.paper_mark
        cells += [paper_text, _signed(r.diff)]
    return cells


HEADER = ["environment", "task", "method", "cell", "seeds", "success % (mean ± std)", "IQM [95% CI]"]
COMPARE_HEADER = [f"paper ({paper.PUBLISHED_CELL})", "ours − paper"]
CSV_FIELDS = [
    "level",
    "environment",
    "task",
    "method",
    "agent",
    "K",
    "N",
    "tasks",
    "tasks_total",
    "seeds_min",
    "seeds_max",
    "expected_seeds",
    "runs",
    "mean",
    "std",
    "iqm",
    "ci_low",
    "ci_high",
    "paper",
    "paper_std",
    "diff",
]


CAPTION_WHAT = {
    "final": "Success rate (%) of the final checkpoint, per (K, N) cell shown: K sampling steps, "
    "best-of-N candidates. ",
    "offline": "Success rate (%) at the end of the offline phase (before the online phase), per (K, N) cell shown: "
    "K sampling steps, best-of-N candidates. ",
    "both": "Success rate (%) before the online phase (the evaluation at the end of the offline phase) and after it "
    "(the final checkpoint), per (K, N) cell shown: K sampling steps, best-of-N candidates; after − before: the "
    "difference of the means (— : no offline phase, a run trained online only). ",
}
"""The caption's first sentence for each --phase."""


def caption(reps: int, phase: str = "final") -> str:
    return (
        CAPTION_WHAT[phase]
        + "mean ± std over seeds (environment rows: tasks weighted equally, std over seeds of the task average); "
        f"IQM with a 95 % stratified-bootstrap CI ({reps} resamples of seeds within tasks). "
        "seeds: seeds per task (a/b: a of the b the sweep asks for)."
    )


def format_table(rows: Sequence[Row], fmt: str = "md", *, compare: bool = False, notes: Sequence[str] = (),
                 reps: int = BOOTSTRAP_REPS, phase: str = "final") -> str:  # fmt: skip
    """One phase's table (`phase` "final" or "offline": which evaluation the caption says the rows are)."""
    if fmt not in ("md", "csv", "latex"):
        raise SorlError(f"--format {fmt}: use md, csv or latex")
    if fmt == "csv":
        return _csv_table(rows)
    # With --compare the header says which (K, N) each side is: ours per row, the published one in its column.
    header = [h + " (ours)" if compare and h == "cell" else h for h in HEADER] + (COMPARE_HEADER if compare else [])
    body = [_cells(r, compare) for r in rows]
    if fmt == "md":
        return _markdown_table(header, body, notes, caption(reps, phase))
    return _latex_table(header, rows, body, notes, caption(reps, phase))


def format_phase_table(
    paired: Sequence[PhaseRow], fmt: str = "md", *, notes: Sequence[str] = (), reps: int = BOOTSTRAP_REPS
) -> str:
    """The table of `--phase both`: each row's success before the online phase and after it, and the difference."""
    if fmt not in ("md", "csv", "latex"):
        raise SorlError(f"--format {fmt}: use md, csv or latex")
    if fmt == "csv":
        return _phase_csv_table(paired)
    stats = HEADER[len(HEADER) - 2 :]
    header = HEADER[:-2] + [f"{side}: {h}" for side in ("before online", "after online") for h in stats]
    header.append("after − before")
    body = [_lead_cells(p.after) + _stat_cells(p.before) + _stat_cells(p.after) + [_signed(p.delta)] for p in paired]
    if fmt == "md":
        return _markdown_table(header, body, notes, caption(reps, "both"))
    return _latex_table(header, [p.after for p in paired], body, notes, caption(reps, "both"))


STAT_FIELDS = ("mean", "std", "iqm", "ci_low", "ci_high")
PHASE_CSV_FIELDS = (
    CSV_FIELDS[: CSV_FIELDS.index("mean")]
    + [f"{side}_{k}" for side in ("before", "after") for k in STAT_FIELDS]
    + ["delta"]
)
"""`--phase both --format csv`: before_*: the end of the offline phase (empty: none), after_*: the final
evaluation, delta: after_mean - before_mean."""


def _csv_lead(r: Row) -> dict[str, Any]:
    """The csv fields saying what a row is."""
    return {
        "level": r.level,
        "environment": r.env,
        "task": r.task,
        "method": r.method,
        "agent": r.agent,
        "K": r.K,
        "N": r.N,
        "tasks": r.tasks,
        "tasks_total": r.tasks_total,
        "seeds_min": min(r.seeds),
        "seeds_max": max(r.seeds),
        "expected_seeds": r.expected_seeds or "",
        "runs": r.runs,
    }


def _csv_text(fields: Sequence[str], records: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


def _csv_table(rows: Sequence[Row]) -> str:
    return _csv_text(
        CSV_FIELDS,
        (
            {
                **_csv_lead(r),
                **{k: _num(getattr(r, k)) for k in STAT_FIELDS},
                "paper": _num(r.paper),
                "paper_std": _num(r.paper_std),
                "diff": _num(r.diff),
            }
            for r in rows
        ),
    )


def _phase_csv_table(paired: Sequence[PhaseRow]) -> str:
    def stats(r: Row | None, side: str) -> dict[str, str]:
        return {f"{side}_{k}": "" if r is None else _num(getattr(r, k)) for k in STAT_FIELDS}

    return _csv_text(
        PHASE_CSV_FIELDS,
        ({**_csv_lead(p.after), **stats(p.before, "before"), **stats(p.after, "after"), "delta": _num(p.delta)}
         for p in paired),
    )  # fmt: skip


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], notes: Sequence[str], text: str) -> str:
    """The table, then its caption `text` and the notes."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in body]
    lines += ["", text] + [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    s = s.replace("\\", "\\textbackslash{}")
    for a, b in (("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#")):
        s = s.replace(a, b)
    return s.replace("±", "$\\pm$").replace("−", "$-$").replace("—", "--")


def _latex_table(
    header: Sequence[str], rows: Sequence[Row], body: Sequence[Sequence[str]], notes: Sequence[str], text: str
) -> str:
    """A booktabs table, a rule between environments; the notes as LaTeX comments."""
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        "\\begin{tabular}{" + "lll" + "c" * (len(header) - 3) + "}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    prev_env = None
    for r, c in zip(rows, body, strict=True):
        if prev_env is not None and r.env != prev_env:
            lines.append("\\midrule")
        prev_env = r.env
        lines.append(" & ".join(_latex_escape(x) for x in c) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{_latex_escape(text)}}}", "\\end{table}"]
    lines += [f"% Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.4g}"


MIN_REPS = 100
"""Fewest bootstrap resamples a table or plot takes (fewer make a confidence interval of noise)."""


def check_table_options(
    *, K: int | None = None, N: int | None = None, reps: int = BOOTSTRAP_REPS, last: int = 1
) -> None:
    """The numeric options of `sorl table` (and the plots' shared ones), checked before any run is read: one
    SorlError naming the flag and what it takes. Which K the runs' agents take is asked once they are read
    (`check_cell_K`)."""
    for flag, value in (("--K", K), ("--N", N)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SorlError(f"{flag} {value}: a cell's {flag[2:]} is at least 1")
    check_reps(reps)
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise SorlError(f"--last {last}: average at least 1 logged row")


def check_cell_K(records: Sequence[RunRecord], K: int | None) -> None:
    """`--K` against the agents of the runs read: one SorlError when none of them takes K sampling steps, naming
    each agent and what it takes (`sorl.agent.Agent.check_K`; an agent no longer registered: the contract's
    default rule). A K some agent takes selects that cell; the others' rows are left out with a note."""
    if K is None or not records:
        return
    from agents import AGENTS
    from sorl.agent import K_rule

    names = sorted({r.agent for r in records})
    rules = {name: K_rule(AGENTS.get(name, object())) for name in names}
    if any(rule.takes_K(K) for rule in rules.values()):
        return
    try:
        rules[names[0]].check_K(K, name=names[0])
    except SorlError as e:
        others = "; ".join(f"{n} takes {rules[n].K_accepted()}" for n in names[1:])
        raise SorlError(f"--K {K}: no agent of these runs takes it: {e}" + (f"; {others}" if others else "")) from None


def check_reps(reps: int) -> None:
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < MIN_REPS:
        raise SorlError(f"--reps {reps}: use at least {MIN_REPS} bootstrap resamples (default 1000 for plots, "
                        f"{BOOTSTRAP_REPS} for tables)")  # fmt: skip


NO_CELL = "no run has the requested (K, N) cell; `sorl table --help` shows how to pick one"


def table(
    paths: Sequence[str | Path],
    *,
    fmt: str = "md",
    K: int | None = None,
    N: int | None = None,
    levels: Sequence[str] = ("task", "env", "all"),
    compare: str | None = None,
    reps: int = BOOTSTRAP_REPS,
    phase: str = "final",
) -> str:
    """The text of `sorl table`; `phase` (`PHASES`): the final evaluation, the end of the offline phase, or both."""
    check_table_options(K=K, N=N, reps=reps)
    check_phase(phase, compare)
    if fmt not in ("md", "csv", "latex"):
        raise SorlError(f"--format {fmt}: use md, csv or latex")
    if not levels or any(lv not in ("task", "env", "all") for lv in levels):
        raise SorlError(f"--level {','.join(levels)}: use task, env and/or all")
    if compare:
        paper.published(compare)  # a missing or unreadable --compare file: said before any run is read
    runset = load_runs(paths)
    check_cell_K(runset.records, K)
    if phase != "final":
        return _phase_table(runset, phase, fmt=fmt, K=K, N=N, levels=levels, compare=compare, reps=reps)
    rows, notes = table_rows(runset, K=K, N=N, levels=levels, compare=compare, reps=reps)
    if not rows:
        raise SorlError(NO_CELL)
    return format_table(rows, fmt, compare=compare is not None, notes=notes, reps=reps)


# ------------------------------------------------------------------------------------------ diagnostics


TIMING_PREFIX = "timing/"
"""A --diagnostics key with this prefix names an entry of results.json's `timing` (updates_per_s, train_s,
compile_s, wall_s) instead of a train.csv column."""


def diagnostics(
    paths: Sequence[str | Path], keys: Sequence[str], *, last: int = 10, K: int | None = None, N: int | None = None
) -> str:
    """What a success table cannot show of why a method scores what it does, per task and method (markdown):
    the mean episode return of the reported (K, N) cell (default: the method's default cell) and, for each
    train.csv column in `keys`, its mean over the last `last` values the run logged (the end of training,
    less noisy than the last row alone; rows without the column are skipped), or for a `timing/NAME` key the
    run's results.json `timing` entry (e.g. timing/updates_per_s); mean ± std over seeds. A run
    without a column leaves that cell out of the mean; a method none of whose runs logged it shows "—"."""
    check_table_options(K=K, N=N, last=last)
    keys = [k.strip() for k in keys if k.strip()]
    if not keys:
        raise SorlError("--diagnostics: name train.csv columns, e.g. actor/mse,critic/q_max")
    runset = load_runs(paths)
    check_cell_K(runset.records, K)
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in runset.records:
        groups.setdefault((r.env, r.short_task, r.label), []).append(r)
    known: set[str] = set()
    body: list[str] = []
    for (env, task, method), recs in sorted(groups.items(), key=lambda g: (_env_rank(g[0][0]), g[0][1:])):
        dk, dn = default_cell(recs)  # asked even where --K and --N both say: a method without a final evaluation fails
        cell = (K if K is not None else dk, N if N is not None else dn)
        returns = [float(r.final[cell]["return"]) for r in recs if r.final.get(cell, {}).get("return") is not None]
        values: dict[str, list[float]] = {k: [] for k in keys}
        for r in recs:
            run_values, run_keys = _run_diagnostics(r, keys, last)
            known |= run_keys
            for k, v in run_values.items():
                values[k].append(v)
        cells = [env, task, method, f"K={cell[0]}, N={cell[1]}", str(len(recs)), mean_std(returns)]
        body.append("| " + " | ".join(cells + [mean_std(values[k]) for k in keys]) + " |")
    unknown = [k for k in keys if k not in known]
    if len(unknown) == len(keys):
        raise SorlError(
            f"--diagnostics: {unknown[0]!r} is not a train.csv column of these runs (nor a results.json "
            f"timing entry, e.g. {TIMING_PREFIX}updates_per_s)"
        )
    head = ["environment", "task", "method", "cell", "seeds", "return (mean ± std)"] + keys
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *body, ""]
    lines.append(_diagnostics_caption(keys, last))
    return "\n".join(lines) + "\n"


def _run_diagnostics(r: RunRecord, keys: Sequence[str], last: int) -> tuple[dict[str, float], set[str]]:
    """One run's value of each key it has (a train.csv column's mean over its last `last` logged values, or its
    results.json timing entry), and every key it could have had."""
    rows = read_csv(r.path / "train.csv")
    run_keys = set(rows[0] if rows else ()) | {f"{TIMING_PREFIX}{name}" for name in r.timing}
    values: dict[str, float] = {}
    for k in keys:
        if k.startswith(TIMING_PREFIX):
            if (v := to_float(r.timing.get(k.removeprefix(TIMING_PREFIX)))) is not None:
                values[k] = v
            continue
        logged = [v for v in (to_float(row.get(k)) for row in rows) if v is not None]
        if logged:
            values[k] = float(np.mean(logged[-last:]))
    return values, run_keys


def _diagnostics_caption(keys: Sequence[str], last: int) -> str:
    return (
        f"Final checkpoint: mean episode return of the cell shown; each train.csv column averaged over the last "
        f"{last} values the run logged"
        + (
            "; timing/…: the run's own figure in results.json (timed on its machine)"
            if any(k.startswith(TIMING_PREFIX) for k in keys)
            else ""
        )
        + "; mean ± std over seeds (— : no run logged it)."
    )


def mean_std(values: Sequence[float | None], digits: int | None = None) -> str:
    """A table cell: mean ± std over seeds (None values skipped; "x ± —" for one value, "—" for none);
    `digits` defaults to 1, 2 or 3 decimals as the values' magnitude is ≥ 100, ≥ 1 or smaller."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if digits is None:
        scale = max(abs(v) for v in values)
        digits = 1 if scale >= 100 else 2 if scale >= 1 else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f} ± —"
    return f"{np.mean(values):.{digits}f} ± {sample_std(values):.{digits}f}"
