"""`sorl plot scaling|compute|curves`: figures (PNG and PDF, matplotlib) from run directories only.

- scaling: success against K (one line per N) and against N (one line per K), per environment and over all
  environments, one figure per method. Cells come from each run's `scaling.json` (`sorl eval`) when it has
  one, else from the final evaluation in `results.json`.
- compute: success against network evaluations per action (`runner.evaluation.network_evaluations`, from each
  agent's contract), every (K, N) cell a point, with the frontier of sequential (K) against parallel (N) scaling;
  one figure per method, then `compute-all`: every method of the study on one frontier figure.
- curves: success (at one (K, N) cell, from `eval.csv`) and losses (from `train.csv`) against gradient updates,
  per environment and over all, every method in the same panels.

Lines are the mean over runs (tasks weighted by their runs; `--stat iqm` for the interquartile mean); bands are
95 % stratified-bootstrap confidence intervals (seeds resampled within tasks; `experiments.aggregate`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.aggregate import (
    STATS,
    RunRecord,
    check_cell_K,
    check_table_options,
    load_runs,
    method_cell,
    read_csv,
    stratified_bootstrap_ci,
    to_float,
)
from sorl.errors import SorlError

FORMATS = ("png", "pdf")
PLOT_REPS = 1000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 10,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9=,._+-]+", "_", name).strip("_") or "plot"


def _check_formats(formats: Sequence[str]) -> list[str]:
    formats = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SorlError(f"--formats {','.join(formats)}: use png and/or pdf")
    return formats


def check_plot_options(
    *,
    stat: str,
    formats: Sequence[str],
    reps: int,
    K: int | None = None,
    N: int | None = None,
    out: str | Path | None = None,
) -> list[str]:
    """Every option of `sorl plot`, checked before any run is read or figure drawn; the formats, normalised."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise SorlError(f"--out {out} is a file; give a directory for the figures")
    if stat not in STATS:
        raise SorlError(f"--stat {stat}: use mean or iqm")
    check_table_options(K=K, N=N, reps=reps)
    return _check_formats(formats)


def _save(fig: Any, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SorlError(f"cannot create {out_dir}: {e.strerror or e}") from None
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _estimate(groups: dict[str, list[float]], stat: str, reps: int) -> tuple[float, float, float]:
    """(point, ci_low, ci_high) of `stat` over all values, CI stratified over the groups (tasks)."""
    values = [v for v in groups.values() if v]
    if not values:
        return math.nan, math.nan, math.nan
    fn = STATS[stat]
    point = float(fn(np.concatenate([np.asarray(v, np.float64) for v in values])))
    lo, hi = stratified_bootstrap_ci(values, fn, reps=reps)
    return point, lo, hi


def _env_panels(records: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    from envs.registry import ENVIRONMENTS

    order = {name: i for i, name in enumerate(ENVIRONMENTS)}
    envs = sorted({r.env for r in records}, key=lambda e: order.get(e, len(order)))
    panels = [(env, [r for r in records if r.env == env]) for env in envs]
    if len(envs) > 1:
        panels.append(("all environments", list(records)))
    return panels


def _describe(recs: Sequence[RunRecord]) -> str:
    tasks = {r.task for r in recs}
    seeds = {r.seed for r in recs}
    return f"{len(tasks)} task{'s' * (len(tasks) != 1)} × {len(seeds)} seed{'s' * (len(seeds) != 1)}"


def _log2_axis(ax: Any, values: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    if len(values) > 1:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(values)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(v) for v in values])


def _success_ylim(ax: Any) -> None:
    """0 to a little above the highest line or band (at least 10 %, at most 100 %)."""
    tops = [float(np.nanmax(line.get_ydata())) for line in ax.get_lines() if len(line.get_ydata())]
    for coll in ax.collections:
        for path in coll.get_paths():
            if len(path.vertices):
                tops.append(float(np.nanmax(path.vertices[:, 1])))
    top = max([t for t in tops if np.isfinite(t)], default=0.0)
    ax.set_ylim(0, min(100.0, max(10.0, 1.1 * top)) + 1.0)


def _by_method(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.label, []).append(r)
    return out


def _cell_estimate(
    recs: Sequence[RunRecord], grids: dict[int, dict], cell: tuple[int, int], stat: str, reps: int
) -> tuple[float, float, float]:
    """(point, ci_low, ci_high) of success (%) at one (K, N) cell over `recs` (tasks as bootstrap strata)."""
    groups: dict[str, list[float]] = {}
    for r in recs:
        c = grids[id(r)].get(cell)
        if c is not None and c.get("success") is not None:
            groups.setdefault(r.task, []).append(100.0 * float(c["success"]))
    return _estimate(groups, stat, reps)


def _finish_panel(
    ax: Any, xname: str, stat: str, env: str, recs: Sequence[RunRecord], *, legend_outside: bool = False
) -> None:
    """Axis labels, limits, the panel's title and legend. `legend_outside`: the legend to the right of the axes,
    each entry naming its own runs (methods of one study may have different seeds so far), the title only the
    environment."""
    ax.set_xlabel(xname)
    ax.set_ylabel(f"success rate (%, {stat})")
    _success_ylim(ax)
    if legend_outside:
        ax.set_title(env)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    else:
        ax.set_title(f"{env} ({_describe(recs)})")
        ax.legend(loc="best", frameon=False)


def _finish_figure(
    plt: Any, fig: Any, title: str | None, heading: str, y: float, stem: Path, formats: Sequence[str]
) -> list[Path]:
    fig.suptitle(f"{title}\n{heading}" if title else heading, y=y)
    fig.tight_layout()
    written = _save(fig, stem.parent, stem.name, formats)
    plt.close(fig)
    return written


# --------------------------------------------------------------------------------------------- scaling


def plot_scaling(
    paths: Sequence[str | Path],
    out_dir: str | Path = "plots",
    *,
    stat: str = "mean",
    formats: Sequence[str] = FORMATS,
    reps: int = PLOT_REPS,
    title: str | None = None,
) -> list[Path]:
    """Success against K (per N) and against N (per K): one figure per method; returns the files written."""
    formats = check_plot_options(stat=stat, formats=formats, reps=reps, out=out_dir)
    plt = _pyplot()
    runset = load_runs(paths)
    written: list[Path] = []
    for method, recs in _by_method(runset.records).items():
        grids = {id(r): r.scaling_grid() for r in recs}
        panels = _env_panels(recs)
        fig, axes = plt.subplots(len(panels), 2, figsize=(9.0, 3.1 * len(panels)), squeeze=False)
        for row, (env, env_recs) in enumerate(panels):
            cells = set().union(*(set(grids[id(r)]) for r in env_recs))
            Ks = sorted({k for k, _ in cells})
            Ns = sorted({n for _, n in cells})

            def point(K: int, N: int, env_recs=env_recs, grids=grids) -> tuple[float, float, float]:
                return _cell_estimate(env_recs, grids, (K, N), stat, reps)

            for col, (xs, lines, xname, lname) in enumerate(
                (
                    (Ks, Ns, "sampling steps K", "N"),
                    (Ns, Ks, "candidates N (best-of-N, ranked by Q)", "K"),
                )
            ):
                ax = axes[row][col]
                cmap = plt.get_cmap("viridis")
                for i, line in enumerate(lines):
                    pts = [point(x, line) if col == 0 else point(line, x) for x in xs]
                    ok = [(x, p) for x, p in zip(xs, pts, strict=True) if np.isfinite(p[0])]
                    if not ok:
                        continue
                    x = [o[0] for o in ok]
                    y = np.array([o[1][0] for o in ok])
                    lo = np.array([o[1][1] for o in ok])
                    hi = np.array([o[1][2] for o in ok])
                    color = cmap(0.85 * i / max(1, len(lines) - 1))
                    ax.plot(x, y, marker="o", ms=4, color=color, label=f"{lname} = {line}")
                    ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
                _log2_axis(ax, xs)
                _finish_panel(ax, xname, stat, env, env_recs)
        heading = f"Test-time scaling: {method} (final checkpoint; bands: 95% stratified-bootstrap CI)"
        written += _finish_figure(plt, fig, title, heading, 1.0, Path(out_dir) / f"scaling-{_safe(method)}", formats)
    return written


# ---------------------------------------------------------------------------------------------- compute


def _agent_cls(agent: str) -> Any:
    """The registered class of `agent` (its contract: `GRID_NOTES`, `PUBLISHED_CELL`); None for an agent this version
    does not have (the contract's defaults)."""
    from agents import AGENTS

    return AGENTS.get(agent)


def _cell_points(
    recs: Sequence[RunRecord], grids: dict[int, dict], stat: str, reps: int
) -> dict[tuple[int, int], tuple[float, float, float]]:
    """(K, N) -> (point, ci_low, ci_high) of success (%) over `recs`, for every cell some run evaluated."""
    cells = sorted(set().union(*(set(grids[id(r)]) for r in recs)))
    points = {}
    for cell in cells:
        est = _cell_estimate(recs, grids, cell, stat, reps)
        if np.isfinite(est[0]):
            points[cell] = est
    return points


def compute_frontier(costed: Sequence[tuple[int, float, Any]]) -> list[tuple[int, float, Any]]:
    """The frontier of (cost, success, what) points: each point that beats every cheaper-or-equal one, by cost."""
    frontier, best = [], -math.inf
    for cost, p, what in sorted(costed, key=lambda c: (c[0], -c[1])):
        if p > best:
            best = p
            frontier.append((cost, p, what))
    return frontier


COMPUTE_AXIS = "network evaluations per action"
"""The x axis of `sorl plot compute` (`runner.evaluation.network_evaluations`), defined in each figure's heading."""
COMPUTE_COST = "x: K·N policy calls + N critic calls where N > 1 ranks the candidates"


def plot_compute(
    paths: Sequence[str | Path],
    out_dir: str | Path = "plots",
    *,
    stat: str = "mean",
    formats: Sequence[str] = FORMATS,
    reps: int = PLOT_REPS,
    title: str | None = None,
) -> list[Path]:
    """Success against inference compute (network evaluations per action, `runner.evaluation.network_evaluations`
    from each agent's contract), every (K, N) cell a point. One figure per method: lines join the cells of one N
    (sequential scaling, K growing) and the dashed line is the frontier, the best success at or below each compute.
    Then one figure of every method together, `compute-all`: each method's cells as its own labelled markers and
    its frontier as a line, so that the inference-compute scaling of different agents is compared on one axis.
    One panel per environment and over all; returns the files written."""
    from runner.evaluation import network_evaluations

    formats = check_plot_options(stat=stat, formats=formats, reps=reps, out=out_dir)
    plt = _pyplot()
    runset = load_runs(paths)
    methods = _by_method(runset.records)
    grids = {id(r): r.scaling_grid() for r in runset.records}
    written: list[Path] = []
    for method, recs in methods.items():
        agent = _agent_cls(recs[0].agent)
        panels = _env_panels(recs)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
        for col, (env, env_recs) in enumerate(panels):
            ax = axes[0][col]
            points = _cell_points(env_recs, grids, stat, reps)
            Ns = sorted({n for _, n in points})
            cmap = plt.get_cmap("viridis")
            for i, N in enumerate(Ns):
                line = sorted((network_evaluations(agent, K, n), p, K) for (K, n), p in points.items() if n == N)
                x = [c for c, _, _ in line]
                y = np.array([p[0] for _, p, _ in line])
                err = np.array([[p[0] - p[1] for _, p, _ in line], [p[2] - p[0] for _, p, _ in line]])
                color = cmap(0.85 * i / max(1, len(Ns) - 1))
                ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, color=color, label=f"N = {N}")
                for cost, p, K in line:
                    ax.annotate(f"K{K}", (cost, p[0]), textcoords="offset points", xytext=(3, 3), fontsize=6)
            costed = [(network_evaluations(agent, K, N), p[0], (K, N)) for (K, N), p in points.items()]
            frontier = compute_frontier(costed)
            if frontier:
                xs, ys, _ = zip(*frontier, strict=True)
                ax.step(xs, ys, where="post", linestyle="--", color="black", linewidth=1, label="frontier")
            _compute_axis(ax, [network_evaluations(agent, K, N) for K, N in points])
            _finish_panel(ax, COMPUTE_AXIS, stat, env, env_recs)
        heading = (
            f"Success against inference compute: {method} (final checkpoint; bars: 95% bootstrap CI; {COMPUTE_COST})"
        )
        written += _finish_figure(plt, fig, title, heading, 1.02, Path(out_dir) / f"compute-{_safe(method)}", formats)
    written += _plot_compute_all(plt, methods, grids, stat, reps, title, Path(out_dir), formats)
    return written


def _plot_compute_all(
    plt: Any,
    methods: dict[str, list[RunRecord]],
    grids: dict[int, dict],
    stat: str,
    reps: int,
    title: str | None,
    out_dir: Path,
    formats: Sequence[str],
) -> list[Path]:
    """`compute-all`: every method of the study on one compute axis per panel (see `plot_compute`)."""
    from runner.evaluation import network_evaluations

    records = [r for recs in methods.values() for r in recs]
    panels = _env_panels(records)
    width = 7.5 * len(panels)  # room for a legend beside each panel
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.6), squeeze=False)
    colors, markers = plt.get_cmap("tab10"), "osD^vP*Xh<>p"
    for col, (env, env_recs) in enumerate(panels):
        ax = axes[0][col]
        ids, costs = {id(r) for r in env_recs}, []
        for i, (method, recs) in enumerate(methods.items()):
            recs = [r for r in recs if id(r) in ids]
            if not recs:
                continue
            agent = _agent_cls(recs[0].agent)
            points = _cell_points(recs, grids, stat, reps)
            costed = sorted((network_evaluations(agent, K, N), p[0], (K, N)) for (K, N), p in points.items())
            if not costed:
                continue
            color, marker = colors(i % 10), markers[i % len(markers)]
            xs, ys, _ = zip(*costed, strict=True)
            label = f"{method}: {_describe(recs)}"
            ax.plot(xs, ys, linestyle="none", marker=marker, ms=5, color=color, alpha=0.55, label=label)
            frontier = compute_frontier(costed)
            fx, fy, _ = zip(*frontier, strict=True)
            ax.step(fx, fy, where="post", color=color, linewidth=1.4, label="_frontier")  # "_": not in the legend
            for cost, p, (K, N) in frontier:
                ax.annotate(f"{K},{N}", (cost, p), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            costs += list(xs)
        _compute_axis(ax, costs)
        _finish_panel(ax, COMPUTE_AXIS, stat, env, env_recs, legend_outside=True)
    heading = textwrap.fill(
        "Success against inference compute, every method (markers: its (K, N) cells; line: its frontier, the best "
        "success at or below each compute; labels K,N)",
        width=int(14 * width),  # characters per line that fit the figure's width at the title's font size
    )
    heading = f"{heading}\n{COMPUTE_COST}"
    return _finish_figure(plt, fig, title, heading, 1.02, out_dir / "compute-all", formats)


def _compute_axis(ax: Any, costs: Sequence[int]) -> None:
    if costs:
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(costs) / 1.3, max(costs) * 1.3)


# ---------------------------------------------------------------------------------------------- curves


LOSS_PRIORITY = ("critic_loss", "actor_loss", "value_loss", "flow_loss", "bc_flow_loss", "q_loss")


def default_metrics(columns: Sequence[str], limit: int = 3) -> list[str]:
    """Up to `limit` loss columns of train.csv: the usual critic/actor losses first."""
    losses = [c for c in columns if "loss" in c.rsplit("/", 1)[-1]]
    ranked = sorted(
        losses,
        key=lambda c: (
            LOSS_PRIORITY.index(c.rsplit("/", 1)[-1]) if c.rsplit("/", 1)[-1] in LOSS_PRIORITY else len(LOSS_PRIORITY),
            losses.index(c),
        ),
    )
    return ranked[:limit]


def plot_curves(
    paths: Sequence[str | Path],
    out_dir: str | Path = "plots",
    *,
    K: int | None = None,
    N: int | None = None,
    metrics: Sequence[str] | None = None,
    stat: str = "mean",
    formats: Sequence[str] = FORMATS,
    reps: int = PLOT_REPS,
    name: str = "curves",
) -> list[Path]:
    """Success and losses against gradient updates, per environment and overall; returns the files written."""
    formats = check_plot_options(stat=stat, formats=formats, reps=reps, K=K, N=N, out=out_dir)
    plt = _pyplot()
    runset = load_runs(paths)
    check_cell_K(runset.records, K)
    methods = _by_method(runset.records)
    logs = _RunLogs.read(runset.records)
    metrics = _curve_metrics(logs.train_columns(), metrics)
    cells = {method: method_cell(recs, K, N) for method, recs in methods.items()}
    panels = _env_panels(runset.records)
    ncol = 1 + len(metrics)
    fig, axes = plt.subplots(len(panels), ncol, figsize=(4.2 * ncol, 3.0 * len(panels)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, (env, env_recs) in enumerate(panels):
        ids = {id(r) for r in env_recs}
        for index, (method, recs) in enumerate(methods.items()):
            recs = [r for r in recs if id(r) in ids]
            if not recs:
                continue
            color = colors(index % 10)
            _success_curve(axes[row][0], recs, logs, cells[method], stat, reps, color, method)
            for j, metric in enumerate(metrics):
                _loss_curves(axes[row][1 + j], recs, logs, metric, reps, color, method)
        _finish_curve_row(axes[row], env, env_recs, metrics, stat)
    fig.suptitle("Training curves (bands: 95% stratified-bootstrap CI over seeds within tasks)", y=1.0)
    fig.tight_layout()
    written = _save(fig, Path(out_dir), name, formats)
    plt.close(fig)
    return written


@dataclasses.dataclass
class _RunLogs:
    """Each run's logged rows (keyed by `id` of its record): eval.csv, train.csv and validation.csv (`val/<loss>`
    columns, where the run logged any)."""

    evals: dict[int, list[dict[str, str]]]
    trains: dict[int, list[dict[str, str]]]
    validations: dict[int, list[dict[str, str]]]

    @classmethod
    def read(cls, records: Sequence[RunRecord]) -> _RunLogs:
        def each(filename: str) -> dict[int, list[dict[str, str]]]:
            return {id(r): read_csv(r.path / filename) for r in records}

        return cls(evals=each("eval.csv"), trains=each("train.csv"), validations=each("validation.csv"))

    def train_columns(self) -> list[str]:
        """The train.csv columns a curve can show, in the order the runs first logged them."""
        columns: list[str] = []
        for rows in self.trains.values():
            for c in rows[0] if rows else []:
                if c not in columns and c not in ("step", "updates_per_s", "time_s"):
                    columns.append(c)
        return columns


def _curve_metrics(columns: list[str], metrics: Sequence[str] | None) -> list[str]:
    """The loss columns to draw: `--metrics` (each one a train.csv column) or `default_metrics`."""
    if not metrics:
        return default_metrics(columns)
    unknown = [m for m in metrics if m not in columns]
    if unknown:
        from sorl.errors import suggest

        raise SorlError(
            f"--metrics: {unknown[0]!r} is not a train.csv column{suggest(unknown[0], columns)}; "
            f"columns: {', '.join(columns)}"
        )
    return list(metrics)


def _success_curve(
    ax: Any,
    recs: Sequence[RunRecord],
    logs: _RunLogs,
    cell: tuple[int, int],
    stat: str,
    reps: int,
    color: Any,
    method: str,
) -> None:
    """Success (%) at one (K, N) cell against updates, from eval.csv."""
    per_step: dict[int, dict[str, list[float]]] = {}
    for r in recs:
        for e in logs.evals[id(r)]:
            s, k, n, v = (to_float(e.get(c)) for c in ("step", "K", "N", "success"))
            if None in (s, k, n, v) or (int(k), int(n)) != cell:
                continue
            per_step.setdefault(int(s), {}).setdefault(r.task, []).append(100.0 * v)
    _curve(ax, per_step, stat, reps, color, f"{method} (K={cell[0]}, N={cell[1]})")


def _loss_curves(
    ax: Any, recs: Sequence[RunRecord], logs: _RunLogs, metric: str, reps: int, color: Any, method: str
) -> None:
    """One loss against updates: training batches solid, validation batches (where logged) dashed."""
    for rows_of, key, style, label in (
        (logs.trains, metric, "-", method),
        (logs.validations, f"val/{metric}", "--", f"{method} (validation)"),
    ):
        per_step: dict[int, dict[str, list[float]]] = {}
        for r in recs:
            for t in rows_of[id(r)]:
                s, v = to_float(t.get("step")), to_float(t.get(key))
                if s is not None and v is not None:
                    per_step.setdefault(int(s), {}).setdefault(r.task, []).append(v)
        _curve(ax, per_step, "mean", reps, color, label, style)


def _finish_curve_row(
    axes_row: Sequence[Any], env: str, env_recs: Sequence[RunRecord], metrics: Sequence[str], stat: str
) -> None:
    """Labels, titles and scales of one environment's row of panels, once every method is drawn."""
    success_ax = axes_row[0]
    success_ax.set_ylabel(f"success rate (%, {stat})")
    _success_ylim(success_ax)
    success_ax.set_title(f"{env} ({_describe(env_recs)}): success")
    for j, metric in enumerate(metrics):
        ax = axes_row[1 + j]
        ax.set_ylabel(f"{metric} (mean over runs)")
        ax.set_title(f"{env}: {metric}")
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if ys and min(ys) > 0 and max(ys) / min(ys) > 50:  # losses spanning decades read better on a log scale
            ax.set_yscale("log")
        if any(line.get_label().endswith("(validation)") for line in ax.get_lines()):
            ax.legend(loc="best", frameon=False, fontsize=7)
    for ax in axes_row:
        ax.set_xlabel("gradient updates")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    success_ax.legend(loc="best", frameon=False)


def _curve(
    ax: Any,
    per_step: dict[int, dict[str, list[float]]],
    stat: str,
    reps: int,
    color: Any,
    label: str,
    linestyle: str = "-",
) -> None:
    if not per_step:
        return
    steps = sorted(per_step)
    est = [_estimate(per_step[s], stat, reps) for s in steps]
    y = np.array([e[0] for e in est])
    lo = np.array([e[1] for e in est])
    hi = np.array([e[2] for e in est])
    ax.plot(steps, y, color=color, marker="o" if len(steps) < 15 else None, ms=3, label=label, linestyle=linestyle)
    ax.fill_between(steps, lo, hi, color=color, alpha=0.18, linewidth=0)
