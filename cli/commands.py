"""The `sorl sweep`, `sorl table` and `sorl plot` subcommands (registered in cli/main.py's `_COMMANDS`).

    sorl sweep SPEC [--launcher local|slurm|ray] [--dry-run] [--max-parallel P] [--group-seeds] ...
    sorl table RUN_DIRS_OR_SWEEP... [--format md|csv|latex] [--K K --N N] [--compare paper] [--level env]
               [--phase final|offline|both]
    sorl plot scaling RUN_DIRS_OR_SWEEP... [--out plots] [--stat mean|iqm] [--formats png,pdf]
    sorl plot compute RUN_DIRS_OR_SWEEP... [--out plots]     success against network evaluations per action, all methods
    sorl plot curves RUN_DIRS_OR_SWEEP... [--out plots] [--K K --N N] [--metrics critic/critic_loss,...]
    sorl results [PAGES_OR_DIRS...]     regenerate the committed results' tables and figures from their runs

Kept free of heavy imports: the work is imported when a command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from sorl.errors import SorlError

# ---------------------------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class SweepArgs:
    """Run a sweep spec: expand it to runs, skip those whose results.json exists, launch the rest."""

    spec: tyro.conf.Positional[str]
    """Spec file (.toml), or the name of a shipped spec (experiments/specs/: paper-sorl, local, scaling, ...)."""
    launcher: str = "local"
    """local (process pool here), slurm (submitit) or ray."""
    dry_run: bool = False
    """List the runs, their state and their `sorl train` commands; launch nothing."""
    max_parallel: int | None = None
    """Runs at once (local default: cores // 4; slurm: array parallelism; ray: as resources allow)."""
    out: Path | None = None
    """Root of the run directories (default: the spec's `out`)."""
    data_dir: Path | None = None
    """Datasets (default: the spec's data_dir, else $OGBENCH_DATA_DIR, else ~/.ogbench/data)."""
    group_seeds: bool = False
    """One job per (agent, setting, task) holding all its pending seeds (one vmapped batch on a GPU, a loop on CPU)."""
    retry_failed: bool = False
    """Also rerun runs whose results.json says failed."""
    check_data: bool = True
    """Stop before launching if a dataset is missing and cannot be generated here."""
    compile_cache: bool = True
    """Share JAX's persistent compilation cache (OUT/.jax-cache) between the runs' processes."""
    progress: bool = True
    """Show the sweep's progress bar (--no-progress for logs without it)."""
    # slurm (submitit); defaults from the spec's [launcher.slurm]
    partition: str | None = None
    """Slurm partition (slurm launcher; unset flags take the spec's [launcher.slurm] values)."""
    time: int | None = None
    """Minutes per job (default 1440)."""
    gpus: int | None = None
    """GPUs per Slurm job (default 0)."""
    cpus_per_task: int | None = None
    """CPUs per Slurm job (default 8)."""
    mem_gb: float | None = None
    """Memory per Slurm job in GB (default: the partition's)."""
    array_parallelism: int | None = None
    """Slurm array jobs running at once (default: --max-parallel, else all)."""
    account: str | None = None
    """Slurm account to charge."""
    qos: str | None = None
    """Slurm quality of service."""
    constraint: str | None = None
    """Slurm node constraint (e.g. a GPU model)."""
    sbatch: tuple[str, ...] | None = None
    """Extra sbatch options KEY=VALUE, each an `#SBATCH --KEY=VALUE` line (adds to [launcher.slurm.additional])."""
    submitit_folder: Path | None = None
    """submitit's folder for job pickles and logs (default: OUT/submitit)."""
    submitit_cluster: str = "slurm"
    """'local' runs the slurm launcher's jobs on this machine through submitit (testing)."""
    wait: bool = True
    """Wait for the Slurm jobs (a progress bar); --no-wait submits and returns."""
    # ray; defaults from the spec's [launcher.ray]
    address: str | None = None
    """Ray cluster address ('auto', 'ray://HOST:10001'); none starts a local Ray instance for the sweep."""
    cpus_per_run: int | None = None
    """CPUs a Ray task reserves (default 1); also the run's evaluation workers."""
    gpus_per_run: float | None = None
    """GPUs a Ray task reserves (default 0; fractions share a GPU)."""


def sweep(args: Annotated[SweepArgs, tyro.conf.arg(name="")]) -> None:
    """Run a sweep (tasks x seeds x settings) on this machine, Slurm or Ray; resumes where it stopped."""
    from experiments.launchers import RayOptions, SlurmOptions, check_launcher_options, parse_sbatch
    from experiments.launchers import sweep as run_sweep
    from experiments.spec import load_spec

    check_launcher_options(args.launcher, args)  # a flag another launcher reads is refused, not ignored
    spec = load_spec(args.spec)
    slurm_cfg = dict(spec.launcher.get("slurm", {}))
    ray_cfg = dict(spec.launcher.get("ray", {}))

    def pick(flag, key, cfg, default):
        return flag if flag is not None else cfg.get(key, default)

    slurm = SlurmOptions(
        cluster=args.submitit_cluster,
        partition=pick(args.partition, "partition", slurm_cfg, None),
        time=pick(args.time, "time", slurm_cfg, 1440),
        gpus=pick(args.gpus, "gpus", slurm_cfg, 0),
        cpus_per_task=pick(args.cpus_per_task, "cpus_per_task", slurm_cfg, 8),
        mem_gb=pick(args.mem_gb, "mem_gb", slurm_cfg, None),
        array_parallelism=pick(args.array_parallelism, "array_parallelism", slurm_cfg, None),
        account=pick(args.account, "account", slurm_cfg, None),
        qos=pick(args.qos, "qos", slurm_cfg, None),
        constraint=pick(args.constraint, "constraint", slurm_cfg, None),
        additional={**slurm_cfg.get("additional", {}), **parse_sbatch(args.sbatch)},
        setup=list(slurm_cfg.get("setup", [])),
        folder=str(args.submitit_folder) if args.submitit_folder else slurm_cfg.get("folder"),
        wait=args.wait,
    )
    ray = RayOptions(
        address=pick(args.address, "address", ray_cfg, None),
        cpus_per_run=pick(args.cpus_per_run, "cpus_per_run", ray_cfg, 1),
        gpus_per_run=pick(args.gpus_per_run, "gpus_per_run", ray_cfg, 0.0),
    )
    summary = run_sweep(
        spec,
        launcher=args.launcher,
        dry_run=args.dry_run,
        max_parallel=args.max_parallel,
        out=args.out,
        data_dir=args.data_dir,
        group_seeds=True if args.group_seeds else None,
        retry_failed=args.retry_failed,
        check_data=args.check_data,
        compile_cache=args.compile_cache,
        slurm=slurm,
        ray_options=ray,
        progress=args.progress,
    )
    if summary.failed:
        raise SorlError(f"{len(summary.failed)} of {summary.total} runs failed; their logs are listed above")


# ---------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class TableArgs:
    """Aggregate run directories into a table: per task, per environment and overall."""

    paths: tyro.conf.Positional[tuple[str, ...]]
    """Run directories, directories holding runs (searched recursively), or sweep specs (.toml)."""
    format: str = "md"
    """md, csv or latex."""
    K: int | None = None
    """Sampling steps of the cell reported (default: each method's largest evaluated K)."""
    N: int | None = None
    """Best-of-N of the cell reported (default: 1)."""
    level: str = "task,env,all"
    """Rows to show: task, env and/or all (comma-separated)."""
    compare: str | None = None
    """'paper': the published numbers (experiments/paper.py) side by side, and our difference; or a .md file."""
    reps: int = 2000
    """Bootstrap resamples for the IQM confidence interval."""
    phase: str = "final"
    """Runs with an online phase (--online-steps): final (the final evaluation, after the online phase), offline
    (the evaluation at the end of the offline phase) or both (side by side, and their difference; a run trained
    online only shows — before)."""
    diagnostics: str | None = None
    """train.csv columns (comma-separated, e.g. actor/mse,critic/q_max) or results.json timing entries
    (timing/updates_per_s, timing/wall_s): instead of success, a table of each method's final return at its cell
    and these columns near the end of training (markdown)."""
    last: int = 10
    """--diagnostics: logged rows at the end of training each column is averaged over."""
    output: Path | None = None
    """Write the table to this file instead of printing it."""


def table(args: Annotated[TableArgs, tyro.conf.arg(name="")]) -> None:
    """Success mean ± std and IQM with 95 % bootstrap CIs over seeds, optionally next to the paper's numbers."""
    from experiments.aggregate import table as make_table

    if args.diagnostics is not None:
        if args.phase != "final":  # the logs near the end of training: there is no offline-phase view of them
            raise SorlError(f"--phase {args.phase} with --diagnostics: diagnostics are of the end of training only")
        from experiments.aggregate import diagnostics

        text = diagnostics(args.paths, args.diagnostics.split(","), last=args.last, K=args.K, N=args.N)
    else:
        levels = [lv.strip() for lv in args.level.split(",") if lv.strip()]
        text = make_table(
            args.paths,
            fmt=args.format,
            K=args.K,
            N=args.N,
            levels=levels,
            compare=args.compare,
            reps=args.reps,
            phase=args.phase,
        )
    if args.output is not None:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text)
        except OSError as e:
            raise SorlError(f"cannot write {args.output}: {e.strerror or e}") from None
        print(f"wrote {args.output}")
    else:
        print(text, end="")


# ----------------------------------------------------------------------------------------------- plot


@dataclass(frozen=True)
class PlotScaling:
    """Success against sampling steps K (per N) and against candidates N (per K), per environment and overall."""

    paths: tyro.conf.Positional[tuple[str, ...]]
    """Run directories, directories holding runs, or sweep specs (.toml)."""
    out: Path = Path("plots")
    """Directory for scaling-METHOD.png/.pdf."""
    stat: str = "mean"
    """mean or iqm."""
    formats: str = "png,pdf"
    """Figure file formats, comma-separated."""
    reps: int = 1000
    """Bootstrap resamples for the confidence bands."""
    title: str | None = None
    """A first title line (e.g. what the runs are)."""


@dataclass(frozen=True)
class PlotCurves:
    """Success and losses against gradient updates, per environment and overall."""

    paths: tyro.conf.Positional[tuple[str, ...]]
    """Run directories, directories holding runs, or sweep specs (.toml)."""
    out: Path = Path("plots")
    """Directory for curves.png/.pdf."""
    K: int | None = None
    """Sampling steps of the success curve's cell (default: the largest K evaluated at N = 1)."""
    N: int | None = None
    """Best-of-N of the success curve's cell (default: 1)."""
    metrics: str | None = None
    """train.csv columns to plot, comma-separated (default: the critic and actor losses)."""
    stat: str = "mean"
    """mean or iqm."""
    formats: str = "png,pdf"
    """Figure file formats, comma-separated."""
    reps: int = 1000
    """Bootstrap resamples for the confidence bands."""


@dataclass(frozen=True)
class PlotCompute(PlotScaling):
    """Success against inference compute (network evaluations per action): the sequential/parallel frontier of each
    method (compute-METHOD), and every method of the runs on one frontier figure (compute-all)."""


PlotCommand = (
    Annotated[PlotScaling, tyro.conf.subcommand("scaling")]
    | Annotated[PlotCompute, tyro.conf.subcommand("compute")]
    | Annotated[PlotCurves, tyro.conf.subcommand("curves")]
)


def plot(cmd: Annotated[PlotCommand, tyro.conf.OmitSubcommandPrefixes, tyro.conf.arg(name="")]) -> None:
    """Plot test-time scaling or training curves from run directories (PNG and PDF)."""
    from experiments import plots

    formats = [f for f in cmd.formats.split(",") if f.strip()]
    if isinstance(cmd, PlotCompute):
        paths = plots.plot_compute(cmd.paths, cmd.out, stat=cmd.stat, formats=formats, reps=cmd.reps, title=cmd.title)
    elif isinstance(cmd, PlotScaling):
        paths = plots.plot_scaling(cmd.paths, cmd.out, stat=cmd.stat, formats=formats, reps=cmd.reps, title=cmd.title)
    else:
        metrics = [m.strip() for m in cmd.metrics.split(",") if m.strip()] if cmd.metrics else None
        paths = plots.plot_curves(
            cmd.paths, cmd.out, K=cmd.K, N=cmd.N, metrics=metrics, stat=cmd.stat, formats=formats, reps=cmd.reps
        )
    for p in paths:
        print(f"wrote {p}")
