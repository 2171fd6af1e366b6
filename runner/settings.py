"""The settings of a training run, typed, in one place.

`TrainSettings` has one field per option of `sorl train` other than the run's identity (task, agent, seed, run
directory). Each field owns, next to its type and default:

- its check (`check`: "positive", "optional-positive", "timing", "int-list", "logger", "wandb-mode"), run by
  `validate()`;
- its `sorl train` flag: the field name (`--eval-K`, `--log-interval`); `cli.main.TrainArgs` subclasses this
  class, so a new field is a new flag, with its docstring as the help;
- its sweep-spec key (`spec`: `("train", "steps")` or `("eval", "K")`), read by `experiments.spec`;
- where config.json records it (`record`: a section and a key, or nothing: eval workers and the progress bar
  do not change the numbers);
- whether the `sorl train` command line a sweep prints carries it (`command`: True, "if-changed" from the
  default, or False; None values are never printed).

Adding an option is one field here; the CLI, the spec parser, config.json and the printed commands follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from runner.evaluation import check_grid_values, parse_int_list
from runner.tracking import check_wandb_mode, parse_loggers
from sorl.errors import SorlError
from sorl.validation import check_positive

MACROBLOCK = 16
"""H.264 codes 16x16 blocks: a video size that is a multiple of it needs no resizing (`runner.video`)."""


def check_video_size(size: int, name: str = "--video-size", pixels: bool = False) -> None:
    """One line unless `size` is a multiple of `MACROBLOCK`, and on a pixel task of the observation frame's side:
    its video is the agent's camera enlarged by a whole factor (`runner.video`)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MACROBLOCK or size % MACROBLOCK:
        raise SorlError(f"{name}={size}: must be a multiple of {MACROBLOCK} (H.264's block size), e.g. 128 or 256")
    if pixels:
        from envs.checks import PIXEL_OBSERVATION

        side = PIXEL_OBSERVATION[0]
        if size % side:
            raise SorlError(
                f"{name}={size}: a pixel task films its {side}x{side} observation camera enlarged by a whole factor; "
                f"use a multiple of {side}, e.g. {4 * side}"
            )


def option(
    default: Any,
    *,
    check: str | None = None,
    spec: tuple[str, str] | None = None,
    record: tuple[str, str] | None = None,
    command: bool | str = True,
) -> Any:
    return dataclasses.field(
        default=default, metadata={"check": check, "spec": spec, "record": record, "command": command}
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How long to train, how often to log, evaluate and checkpoint, and how to evaluate."""

    steps: int = option(1_000_000, check="positive", spec=("train", "steps"), record=("train", "steps"))
    """Gradient updates (offline; 0 with --online-steps: a pure-online run, the reference's RLPD command)."""
    data_dir: Path | None = option(None, record=("dataset", "data_dir"))
    """Data directory (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)."""
    download: bool = option(True, check="bool", spec=("train", "download"), command="if-changed")
    """Download a missing dataset that cannot be generated here (ant/humanoid mazes, antsoccer) from OGBench's host
    or $SORL_MIRRORS; --no-download (or $SORL_NO_DOWNLOAD=1) refuses and says where to put the files."""
    success_timing: Literal["pre", "post"] = option(
        "pre", check="timing", spec=("train", "success_timing"), record=("", "success_timing")
    )
    """'post' reproduces the published protocol (ogbench < 1.2)."""
    log_interval: int = option(
        5_000, check="positive", spec=("train", "log_interval"), record=("train", "log_interval")
    )
    """Updates between rows of train.csv (losses and their statistics)."""
    eval_interval: int = option(
        100_000, check="positive", spec=("train", "eval_interval"), record=("train", "eval_interval")
    )
    """Updates between evaluations (one is always run at the end)."""
    eval_episodes: int = option(50, check="positive", spec=("eval", "episodes"), record=("eval", "episodes"))
    """Evaluation episodes per (K, N) cell."""
    eval_K: tuple[int, ...] = option((1, 2, 4, 8), check="int-list", spec=("eval", "K"), record=("eval", "K"))
    """Sampling steps evaluated during and after training (comma-separated; those the agent takes: powers of two
    for the shortcut policies)."""
    eval_N: tuple[int, ...] = option((1,), check="int-list", spec=("eval", "N"), record=("eval", "N"))
    """Best-of-N candidate counts evaluated (comma-separated)."""
    checkpoint_interval: int | None = option(
        None, check="optional-positive", spec=("train", "checkpoint_interval"), record=("train", "checkpoint_interval")
    )
    """Updates between checkpoints (default: --eval-interval); one is always written at the end."""
    eval_workers: int | None = option(None, check="optional-positive", spec=("eval", "workers"))
    """Environment worker processes for evaluation (default: all cores)."""
    eval_envs: int | None = option(None, check="optional-positive", spec=("eval", "envs"), record=("eval", "envs"))
    """Environments stepped at once in evaluation (default: one per episode; fewer save memory: docs/performance.md)."""
    eval_max_episode_steps: int | None = option(
        None, check="optional-positive", spec=("eval", "max_episode_steps"), record=("eval", "max_episode_steps")
    )
    """Cut evaluation episodes at this many steps (default: the environment's own limit)."""
    # Videos show episodes and never change a number: config.json does not record them.
    video_episodes: int | None = option(None, check="optional-positive", spec=("eval", "video_episodes"))
    """Evaluation episodes filmed at every evaluation, to RUN_DIR/videos/stepS-KK-NN-epI.mp4 (default: none)."""
    video_K: int | None = option(None, check="optional-positive", spec=("eval", "video_K"))
    """Sampling steps of the filmed cell (default: the largest of --eval-K)."""
    video_N: int = option(1, check="positive", spec=("eval", "video_N"), command="if-changed")
    """Best-of-N candidates of the filmed cell."""
    video_size: int = option(256, check="video-size", spec=("eval", "video_size"), command="if-changed")
    """Width and height of the videos in pixels (a multiple of 16)."""
    frame_stack: int | None = option(
        None, check="optional-positive", spec=("train", "frame_stack"), record=("train", "frame_stack")
    )
    """Observations stacked per input, in training (on the device) and evaluation (default: 3 on pixel tasks, as the
    released pixel commands' --frame_stack, 1 on state tasks)."""
    p_aug: float | None = option(None, check="optional-probability", spec=("train", "p_aug"), record=("train", "p_aug"))
    """Probability that a batch is randomly shifted by up to 3 pixels, on the device (default: 0.5 on pixel tasks,
    as the released --p_aug; pixel tasks only)."""
    train_episodes: int | None = option(
        None, check="optional-positive", spec=("train", "train_episodes"), record=("dataset", "train_episodes")
    )
    """If the dataset must be generated: training episodes (default: the published count)."""
    validation_interval: int | None = option(
        None,
        check="optional-positive",
        spec=("train", "validation_interval"),
        record=("train", "validation_interval"),
    )
    """Updates between validation losses (the agent's losses on the -val dataset, validation.csv; default: off)."""
    validation_batches: int = option(
        10, check="positive", spec=("train", "validation_batches"), record=("train", "validation_batches"),
        command="if-changed",
    )  # fmt: skip
    """Batches of the validation dataset per validation loss."""
    online_steps: int | None = option(
        None, check="optional-positive", spec=("train", "online_steps"), record=("online", "steps")
    )
    """Offline-to-online fine-tuning: after --steps offline updates, this many environment steps, one update each
    (default: none)."""
    balanced_sampling: bool = option(
        False,
        check="bool",
        spec=("train", "balanced_sampling"),
        record=("online", "balanced_sampling"),
        command="if-changed",
    )
    """Online updates draw half of each batch from the dataset and half from a separate buffer of the online
    transitions (default: uniformly over one buffer that starts as the dataset), as the reference's flag."""
    online_K: int | None = option(None, check="optional-positive", spec=("train", "online_K"), record=("online", "K"))
    """Sampling steps of the acting policy in the online phase (default: the agent's own policy's, e.g. SORL's 1 as the
    released code, IFQL's 10)."""
    online_N: int | None = option(
        None, check="optional-positive", spec=("train", "online_N"), record=("online", "N"), command="if-changed"
    )
    """Best-of-N candidates of the acting policy in the online phase (default: the agent's own policy's, e.g. SORL's 1
    as the released code, IFQL's 32)."""
    buffer_size: int | None = option(
        None, check="optional-positive", spec=("train", "buffer_size"), record=("online", "buffer_size"),
        command="if-changed",
    )  # fmt: skip
    """Replay buffer rows of the online phase (default: 2000000, the reference's): the dataset plus the online
    transitions, at least dataset + 1 rows; once full, new transitions overwrite the oldest rows (with
    --balanced-sampling: the online transitions' own buffer)."""
    keep_checkpoints: int = option(3, check="positive", spec=("train", "keep_checkpoints"), command="if-changed")
    """Checkpoints kept on disk (the latest ones)."""
    # Tracking copies the rows to a tool and never changes a number: config.json does not record it.
    logger: str = option("", check="logger", spec=("train", "logger"))
    """Experiment tracking besides the run's files: wandb, tensorboard or wandb,tensorboard (default: none)."""
    wandb_project: str = option("sorl", spec=("train", "wandb_project"), command="if-changed")
    """wandb project of --logger wandb."""
    wandb_mode: Literal["online", "offline"] | None = option(None, check="wandb-mode", spec=("train", "wandb_mode"))
    """wandb online or offline (default: $WANDB_MODE, else offline; upload later with `wandb sync`)."""
    progress: bool = option(True, command=False)
    """Show the progress bar (--no-progress for logs without it; --progress False is the older spelling)."""

    def __post_init__(self) -> None:
        # The grid is parsed once, here: the command line hands over tuples (tyro, `cli.main.int_list`), the Python
        # API may pass "1,2,4,8", a spec TOML lists; one SorlError naming the setting otherwise.
        for name in ("eval_K", "eval_N"):
            object.__setattr__(self, name, parse_int_list(getattr(self, name), name))

    # ------------------------------------------------------------------------------------ derived values

    @property
    def Ks(self) -> tuple[int, ...]:
        return self.eval_K

    @property
    def Ns(self) -> tuple[int, ...]:
        return self.eval_N

    @property
    def video_cell(self) -> tuple[int, int]:
        """The (K, N) cell that --video-episodes films."""
        return self.video_K or max(self.Ks), self.video_N

    @property
    def total_steps(self) -> int:
        """Updates of the whole run: the offline ones, then one per online environment step."""
        return self.steps + (self.online_steps or 0)

    @property
    def checkpoint_every(self) -> int:
        return self.checkpoint_interval or self.eval_interval

    @property
    def intervals(self) -> tuple[int, ...]:
        """(log, eval, checkpoint[, validation]): the chunk boundaries of the training loop."""
        extra = (self.validation_interval,) if self.validation_interval else ()
        return self.log_interval, self.eval_interval, self.checkpoint_every, *extra

    # ------------------------------------------------------------------------------------------ checks

    def validate(self) -> TrainSettings:
        """Every field's check, in field order: one SorlError naming the first bad value."""
        for f in dataclasses.fields(self):
            if f.name == "steps" and self.steps == 0 and self.online_steps:
                continue  # a pure-online run (the reference's --offline_steps=0)
            if f.name == "steps" and self.steps == 0:
                raise SorlError("steps=0: must be a positive integer (0 only with --online-steps N: a pure-online run)")
            check_value(f, getattr(self, f.name), f.name)
        self.check_online()
        return self

    ONLINE_ONLY = ("balanced_sampling", "online_K", "online_N", "buffer_size")
    """Settings of the online phase: an error without --online-steps."""

    def check_online(self) -> None:
        """The online settings against each other (the acting K against the agent's rule: `runner.online`)."""
        if not self.online_steps:
            for name in self.ONLINE_ONLY:
                if getattr(self, name) not in (None, False):
                    flag = f"--{name.replace('_', '-')}"
                    raise SorlError(f"{flag} sets the online phase, which this run does not have: add --online-steps N "
                                    f"or drop {flag}")  # fmt: skip

    @classmethod
    def of(cls, **options: Any) -> TrainSettings:
        """Settings from keyword options (the `train(...)` API); an unknown name is one SorlError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise SorlError(f"unknown training setting {unknown[0]!r}; valid: {', '.join(names)}")
        return cls(**options).validate()

    @classmethod
    def from_object(cls, obj: Any) -> TrainSettings:
        """The settings part of an object that has these fields (the parsed `sorl train` arguments)."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a sweep's RunSpec carries its settings this way): paths as strings."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    # ----------------------------------------------------------------------------------- config.json

    def record(self) -> dict[str, dict[str, Any]]:
        """What config.json records of these settings, by section ('' = top level), in field order."""
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            if f.metadata["record"] is None:
                continue
            section, key = f.metadata["record"]
            value = getattr(self, f.name)
            if f.name == "checkpoint_interval":
                value = self.checkpoint_every  # the interval the run used
            elif f.metadata["check"] == "int-list":
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            elif section == "online":
                from runner.online import recorded_online  # imports jax: not on every `sorl` command's path

                value = recorded_online(self)[key]  # defaults resolved; the run's own agent: Trainer.run_config
            out.setdefault(section, {})[key] = value
        return out

    # ------------------------------------------------------------------------------------ command line

    def command_flags(self) -> list[str]:
        """`--flag value` for every set option that a printed `sorl train` command carries, in field order."""
        parts = []
        for f in dataclasses.fields(self):
            value, when = getattr(self, f.name), f.metadata["command"]
            if when == "if-changed" and value == f.default:
                continue
            flag = f"--{f.name.replace('_', '-')}"
            if isinstance(value, bool) and when:
                parts.append(flag if value else f"--no-{flag[2:]}")
            elif isinstance(value, tuple) and when:
                parts.append(f"{flag} {','.join(str(v) for v in value)}")
            elif when and value is not None and value != "":
                parts.append(f"{flag} {value}")
        return parts

    # ------------------------------------------------------------------------------------------- specs

    @classmethod
    def spec_fields(cls, section: str) -> dict[str, dataclasses.Field]:
        """Spec key -> field of one spec section ('train' or 'eval')."""
        return {
            f.metadata["spec"][1]: f for f in dataclasses.fields(cls) if (f.metadata["spec"] or ("",))[0] == section
        }

    @classmethod
    def spec_keys(cls, section: str) -> tuple[str, ...]:
        return tuple(cls.spec_fields(section))

    @classmethod
    def spec_defaults(cls, section: str) -> dict[str, Any]:
        """The spec's values when a key is absent (integer lists as lists)."""
        return {key: _spec_form(f, f.default) for key, f in cls.spec_fields(section).items()}

    @classmethod
    def spec_value(cls, section: str, key: str, value: Any, what: str, fail: Callable[[str], Exception]) -> Any:
        """A spec value checked by its field's own check, in the spec's form (integer lists as lists)."""
        f = cls.spec_fields(section)[key]
        if f.metadata["check"] == "int-list" and isinstance(value, list) and not all(type(v) is int for v in value):
            value = repr(value)  # named as written in the spec, not item by item
        try:
            check_value(f, value, what)
        except SorlError as e:
            raise fail(str(e)) from None
        return _spec_form(f, value)

    @classmethod
    def from_spec(cls, train: Mapping[str, Any], evaluation: Mapping[str, Any], **rest: Any) -> TrainSettings:
        """Settings from a spec's [train] and [eval] values (as `spec_value` returns them) plus `rest`."""
        values = dict(rest)
        for section, table in (("train", train), ("eval", evaluation)):
            fields = cls.spec_fields(section)
            for key, value in table.items():
                f = fields[key]
                values[f.name] = tuple(value) if f.metadata["check"] == "int-list" else value
        return cls(**values)


def check_value(f: dataclasses.Field, value: Any, name: str) -> None:
    check = f.metadata.get("check")
    if check == "positive":
        check_positive(name, value)
    elif check == "optional-positive":
        check_positive(name, value, allow_none=True)
    elif check == "optional-probability":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            raise SorlError(f"{name}={value!r}: must be a probability in [0, 1]")
    elif check == "bool":
        if not isinstance(value, bool):
            raise SorlError(f"{name}={value!r}: must be true or false")
    elif check == "video-size":
        check_video_size(value, name)
    elif check == "timing":
        if value not in ("pre", "post"):
            raise SorlError(f"{name}={value!r}: must be 'pre' or 'post'")
    elif check == "logger":
        parse_loggers(value, name)
    elif check == "wandb-mode":
        check_wandb_mode(value, name)
    elif check == "int-list":
        values = parse_int_list(value, name)
        # positive integers; which K the agent takes (and up to which maximum) is asked once it is known
        check_grid_values(values, ()) if f.name == "eval_K" else check_grid_values((), values)


def _spec_form(f: dataclasses.Field, value: Any) -> Any:
    return list(parse_int_list(value, f.name)) if f.metadata["check"] == "int-list" else value
