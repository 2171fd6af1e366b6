"""The `sorl` command: one entry point, one subcommand per job.

    sorl data list | generate TASK... | download TASK... | verify [TASK...]
    sorl train --task TASK --agent AGENT [--agent.KEY=VALUE ...]
    sorl eval RUN_DIR --eval-K 1,2,4,8 --eval-N 1,4,16
    sorl sweep SPEC [--launcher local|slurm|ray] | table RUNS... | plot scaling|curves RUNS...   (experiments/)

Agent hyperparameters use the reference code's dotted names (`--agent.q_loss_coef=100`); their valid set
depends on `--agent`, so `sorl train` is parsed once for `--agent` and then with that agent's settings as typed
flags (`cli.agent_args`); `sorl train --help` prints every agent's settings after tyro's help (`cli.agent_help`).

One spelling per idea across the subcommands: a flag means the same thing wherever it appears, and `sorl eval`
takes `sorl train`'s evaluation flags (`--eval-K`, `--eval-episodes`, ...). Older spellings stay accepted as
aliases (`alias`: shown after the canonical flag in `--help`), and `--progress False` still means
`--no-progress` (`normalize_argv`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from cli import agent_args, parse_errors
from cli.values import IntTuple, int_tuple
from runner.evaluation import parse_int_list
from runner.safety import Interrupted
from runner.settings import TrainSettings
from sorl.config import _FALSE, _TRUE
from sorl.errors import SorlError
from sorl.validation import check_positive

# ------------------------------------------------------------------------------------------ help text


def _paragraphs(text: str) -> str:
    """A docstring as tyro should show it: lines joined into paragraphs (a blank line separates two)."""
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()))


# tyro keeps a field docstring's line break wherever the next line does not start with a letter, and a class
# body's continuation lines start with indentation: every wrapped docstring came out broken mid-sentence.
if hasattr(tyro, "_strings") and hasattr(tyro._strings, "remove_single_line_breaks"):
    tyro._strings.remove_single_line_breaks = _paragraphs

_ARGV: list[str] = []
"""The command line `main` is running: an error names a flag as it was typed (`spelled`)."""


def spelled(canonical: str, alias: str) -> str:
    """The spelling the command line used for a flag with an older alias: `canonical` if it was typed, else
    `alias` (also the name when the command runs from Python, whose arguments keep the older names)."""
    typed = any(a == canonical or a.startswith(canonical + "=") for a in _ARGV)
    return canonical if typed else alias


def alias(canonical: str) -> Any:
    """A field whose flag is the older spelling, with `canonical` (shown first in --help) accepted as well."""
    return tyro.conf.arg(aliases=(canonical,))


def normalize_argv(argv: list[str]) -> list[str]:
    """`--progress False` / `--progress=true` (the old form) as the flag form `--no-progress` / `--progress`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg, value = argv[i], None
        if arg == "--progress" and i + 1 < len(argv) and argv[i + 1].strip().lower() in _TRUE | _FALSE:
            value = argv[i + 1]
            i += 1
        elif arg.startswith("--progress="):
            value = arg.partition("=")[2]
            if value.strip().lower() not in _TRUE | _FALSE:
                raise SorlError(f"{arg}: --progress takes no value (--progress or --no-progress)")
        out.append(arg if value is None else "--progress" if value.strip().lower() in _TRUE else "--no-progress")
        i += 1
    return out


def int_list(*flags: str) -> Any:
    """`--eval-K 1,2,4,8`: a comma-separated list of ints, parsed once as tyro reads the flag (`flags`: its
    spellings, the canonical one first)."""
    return int_tuple(flags, parse_int_list, "INT,...", lambda: _ARGV)


def _parse_seeds(text: str, _flag: str) -> IntTuple:
    from runner.multiseed import parse_seeds  # JAX: imported when a command needs it, not for `sorl --help`

    return parse_seeds(text)


seed_list = int_tuple(("--seeds",), _parse_seeds, "SEEDS", lambda: _ARGV)
"""`--seeds 1-8` or `--seeds 1,3,5`: the seeds, parsed once as tyro reads the flag."""

# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataList:
    """List the tasks, which datasets are present, where they came from and their sizes."""

    data_dir: Path | None = None
    """Data directory (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)."""


@dataclass(frozen=True)
class DataGenerate:
    """Generate datasets locally with OGBench's oracles (same format as the published files)."""

    tasks: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="TASK [TASK ...]")]
    """Tasks or environments, e.g. cube-single-play or cube-single-play-singletask-task2-v0."""
    episodes: Annotated[int | None, alias("--train-episodes")] = None
    """Episodes of the training dataset (default: the published count); validation gets a tenth (at least 1).
    --episodes is the older spelling."""
    workers: int | None = None
    """Worker processes (default: all cores)."""
    seed: int = 0
    """Seed of the oracle's episodes (the same seed gives the same dataset)."""
    data_dir: Path | None = None
    """Data directory to write to (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)."""
    force: bool = False
    """Overwrite an existing dataset."""
    max_episode_steps: int | None = None
    """Steps per episode (default: the published length); small values make quick test datasets."""
    long: bool = False
    """Start a generation estimated at more than an hour (e.g. a visual dataset on CPU)."""


@dataclass(frozen=True)
class DataVerify:
    """Check datasets against the manifest (sha256, size) and the environment's format."""

    tasks: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="[TASK ...]")] = ()
    """Tasks or environments to check (default: every dataset present)."""
    data_dir: Path | None = None
    """Data directory (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)."""


@dataclass(frozen=True)
class DataDownload:
    """Download OGBench's published dataset files (checked, then recorded in the manifest)."""

    tasks: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="TASK [TASK ...]")]
    """Tasks, environments or any of OGBench's 85 published datasets, e.g. antmaze-large-navigate."""
    mirror: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="URL")] = ()
    """A base URL serving NAME.npz and NAME-val.npz, tried in the order given instead of OGBench's host (repeat
    the flag, or comma-separate, for several; default: $SORL_MIRRORS, else OGBench's host). A Hugging Face dataset
    page such as https://huggingface.co/datasets/zhouzypaul/ogbench_datasets works as it is."""
    data_dir: Path | None = None
    """Data directory to write to (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)."""
    force: bool = False
    """Download again files that are already there (replacing them)."""
    progress: bool = True
    """Progress bar of each transfer."""


DataCommand = (
    Annotated[DataList, tyro.conf.subcommand("list")]
    | Annotated[DataGenerate, tyro.conf.subcommand("generate")]
    | Annotated[DataDownload, tyro.conf.subcommand("download")]
    | Annotated[DataVerify, tyro.conf.subcommand("verify")]
)


def data(cmd: Annotated[DataCommand, tyro.conf.OmitSubcommandPrefixes, tyro.conf.arg(name="")]) -> None:
    """Inspect, generate, download and verify OGBench datasets."""
    from envs import datasets

    if isinstance(cmd, DataList):
        datasets.cli_list(cmd.data_dir)
    elif isinstance(cmd, DataGenerate):
        typed = spelled("--train-episodes", "--episodes")  # named as typed (`envs` says --episodes)
        if typed == "--train-episodes" and cmd.episodes is not None and cmd.episodes < 1:
            raise SorlError(f"--train-episodes must be at least 1 (got {cmd.episodes}); leave it out for the "
                            "published count")  # fmt: skip
        datasets.cli_generate(
            cmd.tasks, cmd.episodes, cmd.workers, cmd.seed, cmd.data_dir, cmd.force, cmd.max_episode_steps, cmd.long
        )
    elif isinstance(cmd, DataDownload):
        datasets.cli_download(cmd.tasks, cmd.data_dir, cmd.mirror, cmd.force, cmd.progress)
    else:
        datasets.cli_verify(cmd.tasks, cmd.data_dir)


# ---------------------------------------------------------------------------------------------- train


# `--quick`: a run that finishes in about ten minutes on a 2-core CPU, data generation included. Every value is
# a default only; explicit flags and --agent.KEY=VALUE overrides take precedence.
QUICK_PRESET: dict[str, object] = {
    "steps": 30_000,
    "log_interval": 2_000,
    "eval_interval": 30_000,
    "eval_episodes": 20,
    "eval_N": "1,4",
    "train_episodes": 100,
}
QUICK_AGENT_PRESET: dict[str, Any] = {
    "actor_layer_size": "256",
    "actor_num_layers": "2",
    "value_layer_size": "256",
    "value_num_layers": "2",
}


def _quick_help() -> str:
    """--quick's help: what the preset sets, from the preset itself."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in QUICK_PRESET.items()]
    agent = [f"--agent.{k}={v}" for k, v in QUICK_AGENT_PRESET.items()]
    return (
        "Small-budget preset for a ~10-minute CPU run: "
        + ", ".join(flags + agent)
        + " (agent settings the agent has); flags you give explicitly win."
    )


@dataclass(frozen=True, kw_only=True)
class TrainArgs(TrainSettings):
    """Train one agent on one task; writes one run directory."""

    task: str
    """OGBench singletask name or environment (its default task), e.g. cube-single-play."""
    agent: str = "sorl"
    """Agent: one of the registry's (agents.AGENTS, named in `sorl train --help`); its settings (--agent.KEY=VALUE)
    are listed below."""
    seed: int = 0
    """Seed of the run (the default run directory is runs/TASK/AGENT/seedS)."""
    seeds: Annotated[IntTuple, seed_list] | None = None
    """Several seeds in one process, e.g. 1-8 or 1,3,5 (not with --seed); one run dir each, as --seed S (R/seedS)."""
    seeds_strategy: Literal["auto", "vmap", "loop"] = "auto"
    """--seeds as one vmapped batch, or in a loop over the one-seed program (CPU); auto: loop on CPU, else vmap."""
    run_dir: Path | None = None
    """Run directory (default: runs/TASK/AGENT/seedS)."""
    quick: Annotated[bool, tyro.conf.arg(help=_quick_help())] = False
    # The grid as typed (`--eval-K 1,2,4,8`), parsed once by tyro; the fields' help is TrainSettings'.
    eval_K: Annotated[IntTuple, int_list("--eval-K")] = TrainSettings.__dataclass_fields__["eval_K"]  # type: ignore[assignment]
    eval_N: Annotated[IntTuple, int_list("--eval-N")] = TrainSettings.__dataclass_fields__["eval_N"]  # type: ignore[assignment]


def apply_quick_preset(args: TrainArgs, agent_overrides: dict[str, Any]) -> tuple[TrainArgs, dict[str, Any]]:
    """Fill in QUICK_PRESET where `args` still holds the plain default."""
    defaults = TrainArgs(task=args.task)
    changes = {k: v for k, v in QUICK_PRESET.items() if getattr(args, k) == getattr(defaults, k)}
    return dataclasses.replace(args, **changes), {**QUICK_AGENT_PRESET, **agent_overrides}


def train(args: Annotated[TrainArgs, tyro.conf.arg(name="")], agent_overrides: dict[str, Any] | None = None) -> None:
    """Train one agent on one task (offline, then online with --online-steps); writes one run directory per seed."""
    agent_overrides = agent_overrides or {}
    keys = check_agent_keys(args.agent, agent_overrides)
    if args.quick:
        args, agent_overrides = apply_quick_preset(args, agent_overrides)
        agent_overrides = {k: v for k, v in agent_overrides.items() if k in keys}  # BC has no critic to shrink
    train_from_cli(args, agent_overrides)


def check_agent_keys(agent: str, overrides: dict[str, Any]) -> list[str]:
    """The settings of `agent`; one error line for an override it does not have, naming the agents that have it."""
    from agents import AGENTS, get_agent
    from sorl.errors import suggest

    keys = [f.name for f in dataclasses.fields(get_agent(agent).Config)]
    for key in overrides:
        if key not in keys:
            owners = [n for n, c in AGENTS.items() if key in {f.name for f in dataclasses.fields(c.Config)}]
            where = f" (a setting of {', '.join(owners)}, not of {agent})" if owners else suggest(key, keys)
            raise SorlError(
                f"unknown setting --agent.{key} for --agent {agent}{where}; {agent}'s settings: {', '.join(keys)} "
                f"(`sorl train --agent {agent} --help` says what each one means)"
            )
    return keys


def train_from_cli(args: TrainArgs, agent_overrides: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
    """`sorl train ...` (one seed) and `sorl train --seeds 1-8 ...` (several)."""
    from runner import train as train_lib

    settings = TrainSettings.from_object(args)
    if args.seeds is not None:
        return train_lib.train_seeds(
            args.task, args.agent, seeds=args.seeds, run_dir=args.run_dir, strategy=args.seeds_strategy,
            agent_overrides=agent_overrides, settings=settings,
        )  # fmt: skip
    return train_lib.train(
        args.task, args.agent, seed=args.seed, run_dir=args.run_dir, agent_overrides=agent_overrides, settings=settings
    )


# ----------------------------------------------------------------------------------------------- eval


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a trained run over a (K, N) grid; writes scaling.json/csv next to the run."""

    run_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run directory written by `sorl train` (its config.json and checkpoints)."""
    K: Annotated[IntTuple, alias("--eval-K"), int_list("--eval-K", "--K")] = (1, 2, 4, 8)
    """Sampling steps evaluated (comma-separated powers of two, at most the trained maximum); --K is the older
    spelling."""
    N: Annotated[IntTuple, alias("--eval-N"), int_list("--eval-N", "--N")] = (1, 4, 16)
    """Best-of-N candidate counts evaluated (comma-separated, >= 1); --N is the older spelling."""
    episodes: Annotated[int, alias("--eval-episodes")] = 50
    """Evaluation episodes per (K, N) cell; --episodes is the older spelling."""
    workers: Annotated[int | None, alias("--eval-workers")] = None
    """Environment worker processes for evaluation (default: all cores); --workers is the older spelling."""
    envs: Annotated[int | None, alias("--eval-envs")] = None
    """Environments stepped at once (default: one per episode; fewer saves memory, see README); --envs is the
    older spelling."""
    seed: int = 0
    """Evaluation seed (episodes are reproducible for a given seed)."""
    max_episode_steps: Annotated[int | None, alias("--eval-max-episode-steps")] = None
    """Cut episodes at this many steps (default: what the run used during training); --max-episode-steps is the
    older spelling."""
    logger: str = ""
    """Also send the scaling grid to wandb, tensorboard or both (into the run's own tracker run; see README)."""
    wandb_project: str = "sorl"
    """wandb project of --logger wandb."""
    wandb_mode: Literal["online", "offline"] | None = None
    """wandb online or offline (default: $WANDB_MODE, else offline)."""
    video_episodes: int | None = None
    """Also film this many evaluation episodes to RUN_DIR/videos/ (MP4, headless; see README)."""
    video_K: int | None = None
    """Sampling steps of the filmed cell (default: the largest of --eval-K the agent was trained for)."""
    video_N: int = 1
    """Best-of-N candidates of the filmed cell."""
    video_size: int = 256
    """Width and height of the videos in pixels (a multiple of 16)."""
    video_only: bool = False
    """Only film (with --video-episodes): no grid evaluation, scaling.json left as it is."""
    replace: bool = False
    """Start scaling.json afresh (by default an earlier grid's cells not evaluated now are kept) and film over videos
    of the same names (by default refused)."""


def evaluate(args: Annotated[EvalArgs, tyro.conf.arg(name="")]) -> None:
    """Evaluate a trained run over a grid of sampling steps K and best-of-N candidates N; writes scaling.json/csv."""
    eval_from_cli(args)


def eval_from_cli(args: EvalArgs) -> list[dict[str, Any]]:
    """`sorl eval RUN_DIR --eval-K ... --eval-N ...`: evaluate the run's last checkpoint over the grid.

    Writes scaling.json and scaling.csv in the run directory and prints the table. Every refusal comes before the
    evaluation: nothing is written if the command is refused.
    """
    from runner import evaluation, runs
    from runner.pixels import eval_pool, run_observations
    from runner.train import load_run

    tracking = check_eval_flags(args)
    run = runs.RunDir(args.run_dir)
    cfg = run.read_config()
    pixels, frame_stack = run_observations(cfg)  # evaluated as its training evaluated it: frames stacked, rendered
    if args.video_episodes:
        from runner.video import check_video_size

        check_video_size(args.video_size, pixels=pixels)  # a pixel task's size: now, not after the grid
    agent, step = load_run(run)
    check_grid_of(args, agent, cfg)
    max_steps = args.max_episode_steps or cfg.get("eval", {}).get("max_episode_steps")
    envs = args.envs or cfg.get("eval", {}).get("envs")  # a memory cap set in training holds
    timing = cfg.get("success_timing", "pre")
    if args.video_episodes:
        from runner import video

        video_K = args.video_K or video.default_video_K(args.K, agent.max_K)
        video.check_video_files(
            run.path, step=step, K=video_K, N=args.video_N, episodes=args.video_episodes, replace=args.replace
        )
    if args.video_only:
        film_from_cli(args, cfg, agent, step, args.K, timing, max_steps)
        return []
    runs.check_writable(run.path, "run directory", files=[run.scaling_json, run.scaling_csv])
    header = runs.scaling_header(cfg, step, eval_seed=args.seed, episodes=args.episodes, max_episode_steps=max_steps)
    kept = run.plan_scaling(header, [(K, N) for K in args.K for N in args.N], replace=args.replace)
    print(
        f"evaluating {run.path} (step {step}) on {cfg['task']}: K={list(args.K)} N={list(args.N)}, "
        f"{args.episodes} episodes, success_timing={timing}",
        flush=True,
    )
    pool = eval_pool(
        cfg["task"], min(args.episodes, envs or args.episodes), renders=pixels, frame_stack=frame_stack,
        workers=args.workers, success_timing=timing, max_episode_steps=max_steps,
    )  # fmt: skip
    with pool:
        grid = evaluation.evaluate(agent, cfg["task"], args.K, args.N, args.episodes, seed=args.seed, pool=pool,
                                   progress=True)  # fmt: skip
    run.write_scaling(
        cfg, step, grid, eval_seed=args.seed, episodes=args.episodes, max_episode_steps=max_steps, kept=kept
    )
    report_grid(run, cfg, step, args.episodes, grid, kept, tracking)
    if args.video_episodes:
        film_from_cli(args, cfg, agent, step, args.K, timing, max_steps)
    return grid


def check_eval_flags(args: EvalArgs) -> Any:
    """`sorl eval`'s flags on their own (before the run is read): one error line naming the flag as typed. Returns
    the experiment tracking asked for (a bad --logger is refused before the evaluation, not after it)."""
    from runner.evaluation import check_grid_values
    from runner.tracking import Tracking

    check_positive(spelled("--eval-episodes", "--episodes"), args.episodes)
    for field in ("workers", "envs", "max_episode_steps", "video_episodes", "video_K"):
        flag = f"--{field.replace('_', '-')}"
        name = flag if field.startswith("video") else spelled(f"--eval-{flag[2:]}", flag)
        check_positive(name, getattr(args, field), allow_none=True)
    if args.video_episodes or args.video_only:
        check_videos(args)
    check_grid_values(args.K, args.N)  # positive integers; which K the agent takes once it is loaded
    return Tracking.of(args)


def check_grid_of(args: EvalArgs, agent: Any, cfg: dict[str, Any]) -> None:
    """The grid (and the filmed cell) against the loaded agent's K rule; the note on axes that cannot change its
    action or where its published numbers are."""
    from runner import evaluation, runs

    name = runs.agent_name(cfg)
    if args.video_episodes and args.video_K:  # a K the agent does not take: said now, not after the grid
        evaluation.validate_grid((args.video_K,), (args.video_N,), agent.max_K, agent, name)
    if not args.video_only:
        evaluation.validate_grid(args.K, args.N, agent.max_K, agent, name)
        note = evaluation.grid_note(agent, name, args.K, args.N)
        if note:
            print(note, flush=True)


def report_grid(run: Any, cfg: dict[str, Any], step: int, episodes: int, grid: list, kept: list, tracking: Any) -> None:
    """The evaluated grid to the experiment tracker (appending to the training run's) and as a printed table."""
    from runner import evaluation, runs

    if tracking:
        sink = tracking.open(run.path, cfg)  # appends: the training run's tracker run continues
        sink.scaling(step, grid)
        sink.close()
    title = f"{cfg['task']}  agent={runs.agent_name(cfg)}  seed={cfg['seed']}  step={step}  ({episodes} episodes)"
    print(evaluation.format_grid(grid, title))
    print(f"wrote {run.scaling_json} and {run.scaling_csv}")
    if kept:
        print(f"kept from the earlier {runs.SCALING_JSON} (not evaluated now): {runs.format_cells(kept)}")


def check_videos(args: EvalArgs) -> None:
    """The video flags, and a headless renderer (`envs.rendering`): one error line before any evaluation."""
    from envs.rendering import gl_backend
    from runner.evaluation import check_grid_values
    from runner.video import check_video_size

    if args.video_only and not args.video_episodes:
        raise SorlError("--video-only films --video-episodes episodes: give --video-episodes N")
    check_grid_values((args.video_K or 1,), (args.video_N,))  # which K the agent takes: once it is loaded
    check_video_size(args.video_size)
    gl_backend()


def film_from_cli(
    args: EvalArgs, cfg: dict[str, Any], agent: Any, step: int, Ks: tuple[int, ...], timing: str, max_steps: int | None
) -> None:
    """`--video-episodes`: film the video cell's episodes of the evaluation seed into RUN_DIR/videos/."""
    from runner import video
    from runner.pixels import run_observations

    K = args.video_K or video.default_video_K(Ks, agent.max_K)
    pixels, frame_stack = run_observations(cfg)
    print(f"filming {args.video_episodes} episodes of K={K} N={args.video_N} ({args.video_size}px)", flush=True)
    videos = video.record_episodes(
        agent, cfg["task"], args.run_dir, step=step, K=K, N=args.video_N, episodes=args.video_episodes,
        seed=args.seed, success_timing=timing, max_episode_steps=max_steps, size=args.video_size, workers=args.workers,
        pixels=pixels, frame_stack=frame_stack, replace=args.replace,
    )  # fmt: skip
    print("\n".join(video.describe(videos)))


# ----------------------------------------------------------------------------------------------- main

from cli.commands import plot, sweep, table  # noqa: E402 - experiments layer: sweeps, tables, plots
from cli.results import results  # noqa: E402 - the results pages
from experiments.bench import BenchArgs  # noqa: E402 - the performance benchmark (experiments/bench.py)


def bench(args: Annotated[BenchArgs, tyro.conf.arg(name="")]) -> None:
    """Measure training, inference, evaluation, multi-seed and memory performance; prints a table (or --json)."""
    from experiments.bench import bench_from_cli

    bench_from_cli(args)


@dataclass(frozen=True)
class VerifierArgs:
    """Probe a run's Q verifier: rank agreement between Q and best-of-N candidates' actual returns."""

    run_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run directory of a trained run whose agent ranks best-of-N policy samples with a critic (a run of another
    agent is refused with the list of those that do)."""
    K: int = 4
    """Sampling steps of the candidates and of the policy that continues after them."""
    N: int = 32
    """Candidates per probe state."""
    states: int = 16
    """Probe states (episode j stopped after 0, 25, 50 or 75 policy steps)."""
    seed: int = 0
    """Seed of the probe episodes and the candidates' noise."""


def verifier(args: Annotated[VerifierArgs, tyro.conf.arg(name="")]) -> None:
    """Probe a run's Q verifier against best-of-N candidates' actual returns; writes verifier.json."""
    from experiments import verifier as v
    from runner.evaluation import check_grid_values

    check_positive("--states", args.states)
    check_grid_values((args.K,), (args.N,))  # which K the run's agent takes: `check_probe`, once it is read
    record = v.verifier_quality(args.run_dir, K=args.K, N=args.N, states=args.states, seed=args.seed)
    path = v.write_verifier(args.run_dir, record)
    print(v.format_verifier([args.run_dir]), end="")
    print(f"wrote {path}")


@dataclass(frozen=True)
class KProbeArgs:
    """Probe how a K-step policy's actions change with K, on held-out dataset transitions."""

    run_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run directory of a trained run whose policy samples with K steps that change its action (SORL, flow BC, IFQL,
    ...; not a one-step policy)."""
    states: int = 4096
    """Validation-dataset transitions to probe (drawn without replacement)."""
    seed: int = 0
    """Picks the transitions and the noise every K starts from."""
    data_dir: Path | None = None
    """Where the task's dataset is (default: the run's, else ~/.ogbench/data)."""


def k_probe(args: Annotated[KProbeArgs, tyro.conf.arg(name="")]) -> None:
    """Per K: distance of a K-step policy's actions from the data and from its finest sampler, and their Q;
    writes k_probe.json."""
    from experiments import k_probe as kp

    record = kp.k_probe(args.run_dir, states=args.states, seed=args.seed, data_dir=args.data_dir)
    path = kp.write_k_probe(args.run_dir, record)
    print(kp.format_k_probe([args.run_dir]), end="")
    print(f"wrote {path}")


_COMMANDS = {"data": data, "train": train, "eval": evaluate, "sweep": sweep, "table": table, "plot": plot}
_COMMANDS["verifier"] = verifier
_COMMANDS["k-probe"] = k_probe
_COMMANDS["results"] = results
_COMMANDS["bench"] = bench


def command_flags() -> dict[str, set[str]]:
    """Command ('eval', 'data generate', ...) -> the flags it takes, read from its arguments' dataclass (field
    names, `--no-` forms of booleans, aliases; positionals have no flag)."""
    positional = typing.get_args(tyro.conf.Positional[int])[1]

    def flags_of(cls: type) -> set[str]:
        out = set()
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            if name not in {f.name for f in dataclasses.fields(cls)}:
                continue
            base, *meta = typing.get_args(hint) if typing.get_origin(hint) is Annotated else (hint,)
            if positional in meta:
                continue
            flag = f"--{name.replace('_', '-')}"
            out |= {flag, f"--no-{flag[2:]}"} if base is bool else {flag}
            out |= {a for m in meta for a in (getattr(m, "aliases", None) or ())}
        return out

    commands: dict[str, set[str]] = {}
    for name, fn in _COMMANDS.items():
        first = next(iter(inspect.signature(fn).parameters))
        hint = typing.get_type_hints(fn, include_extras=True)[first]
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        if dataclasses.is_dataclass(base):
            commands[name] = flags_of(base)
            continue
        for arm in typing.get_args(base):  # a union of subcommands: Annotated[cls, tyro.conf.subcommand(NAME)]
            cls, *meta = typing.get_args(arm)
            sub = next(m.name for m in meta if type(m).__name__ == "_SubcommandConfig")
            commands[f"{name} {sub}"] = flags_of(cls)
    return commands


def _command_of(argv: list[str]) -> str:
    """The command ('eval', 'data generate', ...) that argv runs, as `command_flags` names it ('' if none)."""
    commands = command_flags()
    two = " ".join(argv[:2])
    return two if two in commands else argv[0] if argv and argv[0] in commands else ""


def explain_unrecognized(flag: str, argv: list[str]) -> str | None:
    """A flag that the command does not take but another command does: which command takes it (None otherwise)."""
    commands, command = command_flags(), _command_of(argv)
    owners = [c for c, flags in commands.items() if flag in flags]
    if not command or not owners or command in owners:
        return None
    return (
        f"`sorl {command}` does not take {flag}: it is an option of {', '.join(f'`sorl {o}`' for o in owners)} "
        f"(`sorl {command} --help` lists what `sorl {command}` takes)"
    )


def one_line_errors(argv: list[str], parsed: list[str] | None = None) -> Any:
    """tyro's parse errors of `sorl ARGV` as one line (`cli.parse_errors`); `parsed` is the part tyro reads."""
    return parse_errors.one_line_errors(
        argv if parsed is None else parsed,
        flags=lambda: command_flags().get(_command_of(argv), set(_COMMANDS)),  # no command yet: the commands
        explain=lambda flag: explain_unrecognized(flag, argv),
    )


def _option_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag` (`--flag V` or `--flag=V`) in argv, the last one given; None if absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def train_help(argv: list[str]) -> None:
    """`sorl train --help`: tyro's help for the flags, then every agent's settings (only --agent's if given, with
    --task's defaults if given)."""
    from cli import agent_help

    section = agent_help.render(_option_value(argv, "--agent"), _option_value(argv, "--task"))  # errors first
    try:
        with one_line_errors(["train", *argv]):
            tyro.cli(agent_help.with_agent_names(TrainArgs), args=["--help"], prog="sorl train")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    print()
    print(section)


def parse_with_agent(cls: type, argv: list[str]) -> tuple[Any, dict[str, str]]:
    """`sorl train ...` or `sorl bench ...` as its arguments (`cls`, with an `agent` field) and the agent settings
    typed on it (`cli.agent_args`): a first parse for --agent, then one with that agent's settings as flags."""
    prog = f"sorl {argv[0]}"
    with one_line_errors(argv, argv[1:]):
        first, _ = tyro.cli(cls, args=argv[1:], prog=prog, return_unknown_args=True)
    agent = first.agent

    def explain(flag: str) -> str | None:
        if flag.startswith(agent_args.PREFIX):  # raises: the agents that do have the setting
            check_agent_keys(agent, {flag[len(agent_args.PREFIX) :].replace("-", "_"): ""})
        return explain_unrecognized(flag, argv)

    parser = agent_args.with_agent_settings(cls, agent)
    with parse_errors.one_line_errors(argv[1:], flags=lambda: command_flags()[argv[0]], explain=explain):
        args = tyro.cli(parser, args=argv[1:], prog=prog)
    return args, agent_args.overrides_of(argv[1:])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = argv
    try:
        argv = normalize_argv(argv)
        if agent_args.typed_keys(argv) and (not argv or argv[0] not in ("train", "bench")):
            raise SorlError("--agent.KEY=VALUE overrides only apply to `sorl train` (and `sorl bench`)")
        if argv and argv[0] == "bench" and agent_args.typed_keys(argv):  # the generic path cannot pass them
            from experiments.bench import bench_from_cli

            bench_from_cli(*parse_with_agent(BenchArgs, argv))
            return
        if argv and argv[0] == "train" and any(a in ("-h", "--help") for a in argv[1:]):
            train_help(argv[1:])
        elif argv and argv[0] == "train":
            args, overrides = parse_with_agent(TrainArgs, argv)
            if args.seeds is not None and any(a == "--seed" or a.startswith("--seed=") for a in argv[1:]):
                raise SorlError("--seed and --seeds are exclusive: one seed with --seed S, several with --seeds 1-8")
            train(args, overrides)
        else:
            with one_line_errors(argv):
                tyro.extras.subcommand_cli_from_dict(_COMMANDS, args=argv, prog="sorl")
    except SorlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Interrupted as e:  # SIGTERM/SIGINT: checkpointed; the line says how to continue
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `sorl sweep ... --dry-run | head`: the reader left; nothing is wrong
        _silence_stdout()
        sys.exit(0)
    finally:
        _ARGV.clear()
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit does not fail on the closed pipe."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    main()
