"""The OGBench singletask environments, state-based and pixel-based: names, tasks, dataset facts, and the resolution
of an agent's per-environment settings (which each agent declares in its own file).

Naming (OGBench's own):

    environment   cube-single-play                       (what `sorl data ...` and sweeps talk about)
    dataset       cube-single-play-v0                    (files cube-single-play-v0.npz / -val.npz)
    task          cube-single-play-singletask-task2-v0   (what `ogbench.make_env_and_datasets` takes)
    gym env id    cube-single-v0 / cube-single-singletask-task2-v0

Each environment has five tasks; `...-singletask-v0` (no `-taskN`) is OGBench's *default* task, which is
not task1 everywhere: the default ids below were read from the installed `ogbench` (1.2.2) source
(`reward_task_id == 0` branches) and are checked against it by tests/test_envs_registry.py. `resolve_task`
always returns the explicit `-taskN` name, so one task has exactly one spelling in run directories.

Dataset sizes ("published_episodes" x "max_episode_steps" per episode, plus a tenth as many validation
episodes) are those of OGBench's data-generation commands (`data_gen_scripts/commands.sh` in the OGBench
repository). Summaries that give 1000 episodes for every manipulation `play` dataset are wrong for four
of them: the commands file uses 3000 for cube-triple and puzzle-4x5 and 5000 for cube-quadruple and puzzle-4x6,
the published counts, which we follow.

Pixel-based tasks: every manipulation environment has a `visual-` twin (`visual-cube-single-play`, ...), the same
simulator made by ogbench with `ob_type='pixels'` (64x64x3 uint8 observations from the 'front_pixels' camera; the
gym ids are `visual-cube-single-v0` etc.). Its dataset is collected with the same oracle recipe as its state twin
(OGBench's `generate_manipspace.py`), with its twin's episode count and length, which are also the ones OGBench's
commands file gives each visual-*-play dataset (checked in tests/test_envs_registry.py). An agent's settings on a
pixel task are its state twin's, its own pixel-task entry and the released encoder (`agent_env_settings`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sorl.errors import SorlError, suggest
from sorl.sources import Tuned

# Families whose data need trained expert locomotion policies (not shipped with ogbench): not generatable.
EXPERT_FAMILIES = ("antmaze", "humanoidmaze", "antsoccer")
VISUAL_PREFIX = "visual-"
"""OGBench's prefix of a pixel-based environment's name."""


@dataclass(frozen=True)
class EnvSpec:
    """One OGBench singletask environment (five tasks) and the facts about its dataset."""

    name: str
    """Environment name, e.g. 'cube-single-play'."""
    dataset_name: str
    """Dataset (file stem), e.g. 'cube-single-play-v0'."""
    family: str
    """'cube', 'scene', 'puzzle', 'pointmaze', 'antmaze', 'humanoidmaze' or 'antsoccer'."""
    env_id: str
    """Goal-conditioned gym id used for data collection, e.g. 'cube-single-v0'."""
    dataset_type: str
    """'play', 'navigate', 'stitch' or 'explore'."""
    default_task: int
    """The task OGBench's `...-singletask-v0` name means."""
    generatable: bool
    """Whether `envs.generate` can produce this dataset locally (oracle data, no expert policy needed)."""
    published_episodes: int
    """Training episodes of the published dataset (validation: a tenth of it)."""
    max_episode_steps: int
    """Environment steps per data-collection episode (the published files' episode length)."""
    num_tasks: int = 5
    notes: str = ""
    pixels: bool = False
    """Pixel observations (a `visual-` environment): images, an encoder, frame stacking and augmentation."""

    @property
    def state_twin(self) -> str:
        """The state-based environment of the same simulator ('cube-single-play' for 'visual-cube-single-play')."""
        return self.name.removeprefix(VISUAL_PREFIX)

    @property
    def stem(self) -> str:
        """Environment id stem without the dataset type, e.g. 'cube-single'."""
        return self.env_id[: -len("-v0")]

    @property
    def published_val_episodes(self) -> int:
        return max(1, self.published_episodes // 10)

    def task_name(self, task_id: int) -> str:
        """'cube-single-play-singletask-task2-v0'."""
        return f"{self.name}-singletask-task{task_id}-v0"

    def singletask_env_id(self, task_id: int | None = None) -> str:
        """Gym id of the reward-based environment, e.g. 'cube-single-singletask-task2-v0'."""
        suffix = "" if task_id is None else f"-task{task_id}"
        return f"{self.stem}-singletask{suffix}-v0"

    @property
    def tasks(self) -> list[Task]:
        return [Task(self, i) for i in range(1, self.num_tasks + 1)]

    @property
    def default(self) -> Task:
        return Task(self, self.default_task)


@dataclass(frozen=True)
class Task:
    """One of the five tasks of an environment."""

    env: EnvSpec
    task_id: int

    @property
    def name(self) -> str:
        """Full singletask name, e.g. 'cube-single-play-singletask-task2-v0'."""
        return self.env.task_name(self.task_id)

    @property
    def short_name(self) -> str:
        """'cube-single-play-task2'."""
        return f"{self.env.name}-task{self.task_id}"

    def __str__(self) -> str:
        return self.name


def _spec(stem: str, dataset_type: str, default_task: int, episodes: int, steps: int, notes: str = "") -> EnvSpec:
    family = stem.removeprefix(VISUAL_PREFIX).split("-")[0]
    if stem.startswith(VISUAL_PREFIX):
        notes = "pixels (64x64x3 uint8) of its state twin's recipe: " + _PLAY["notes"]
    generatable = family not in EXPERT_FAMILIES
    if not generatable and not notes:
        notes = "needs OGBench's trained expert locomotion policies: place the published files in the data directory"
    return EnvSpec(
        name=f"{stem}-{dataset_type}",
        dataset_name=f"{stem}-{dataset_type}-v0",
        family=family,
        env_id=f"{stem}-v0",
        dataset_type=dataset_type,
        default_task=default_task,
        generatable=generatable,
        published_episodes=episodes,
        max_episode_steps=steps,
        notes=notes,
        pixels=stem.startswith(VISUAL_PREFIX),
    )


# Defaults from ogbench: locomaze MazeEnv.set_tasks -> 1, BallEnv (antsoccer) -> 4, CubeEnv and SceneEnv -> 2,
# PuzzleEnv 3x3/4x4 -> 4, 4x5/4x6 -> 2.
# Episode counts and lengths: OGBench data_gen_scripts/commands.sh (see the module docstring).
_SPECS: list[EnvSpec] = []
for _maze in ("medium", "large", "giant", "teleport"):
    _nav = (500, 2001) if _maze == "giant" else (1000, 1001)
    _SPECS.append(_spec(f"pointmaze-{_maze}", "navigate", 1, *_nav, notes="oracle subgoal direction + N(0, 0.5)"))
    _SPECS.append(_spec(f"pointmaze-{_maze}", "stitch", 1, 5000, 201, notes="goals 4 cells away (BFS)"))
for _maze in ("medium", "large", "giant", "teleport"):
    _nav = (500, 2001) if _maze == "giant" else (1000, 1001)
    _SPECS.append(_spec(f"antmaze-{_maze}", "navigate", 1, *_nav))
    _SPECS.append(_spec(f"antmaze-{_maze}", "stitch", 1, 5000, 201))
    if _maze != "giant":  # OGBench publishes no antmaze-giant-explore dataset.
        _SPECS.append(_spec(f"antmaze-{_maze}", "explore", 1, 10000, 501))
for _maze in ("medium", "large", "giant"):  # no humanoidmaze-teleport datasets in OGBench.
    _SPECS.append(_spec(f"humanoidmaze-{_maze}", "navigate", 1, 1000, 4001 if _maze == "giant" else 2001))
    _SPECS.append(_spec(f"humanoidmaze-{_maze}", "stitch", 1, 10000 if _maze == "giant" else 5000, 401))
_SPECS += [
    _spec("antsoccer-arena", "navigate", 4, 1000, 1001),
    _spec("antsoccer-medium", "navigate", 4, 4000, 1001),
    _spec("antsoccer-arena", "stitch", 4, 5000, 201),
    _spec("antsoccer-medium", "stitch", 4, 8000, 501),
]
_PLAY = dict(
    notes="plan oracles, noise 0.1, smoothing 0.5",
)
_SPECS += [
    _spec("cube-single", "play", 2, 1000, 1001, **_PLAY),
    _spec("cube-double", "play", 2, 1000, 1001, **_PLAY),
    _spec("cube-triple", "play", 2, 3000, 1001, **_PLAY),  # commands.sh: 3000, not 1000
    _spec("cube-quadruple", "play", 2, 5000, 1001, **_PLAY),  # commands.sh: 5000, not 1000
    _spec("scene", "play", 2, 1000, 1001, **_PLAY),
    _spec("puzzle-3x3", "play", 4, 1000, 1001, **_PLAY),
    _spec("puzzle-4x4", "play", 4, 1000, 1001, **_PLAY),
    _spec("puzzle-4x5", "play", 2, 3000, 1001, **_PLAY),  # commands.sh: 3000, not 1000
    _spec("puzzle-4x6", "play", 2, 5000, 1001, **_PLAY),  # commands.sh: 5000, not 1000
]
# The pixel-based twins of the manipulation environments (ogbench registers visual-* for each of them).
_SPECS += [
    _spec(VISUAL_PREFIX + s.stem, s.dataset_type, s.default_task, s.published_episodes, s.max_episode_steps)
    for s in list(_SPECS)
    if s.family in ("cube", "scene", "puzzle")
]

ENVIRONMENTS: dict[str, EnvSpec] = {s.name: s for s in _SPECS}
"""Environment name ('cube-single-play') -> EnvSpec, for every OGBench singletask environment (state and pixels)."""

del _maze, _nav

# --------------------------------------------------------------------------------------- name resolution

_NAME_RE = re.compile(r"^(?P<env>.+?)(?:-singletask)?(?:-task(?P<task>\d+))?(?:-v0)?$")


def _all_names() -> list[str]:
    names = []
    for spec in ENVIRONMENTS.values():
        names += [spec.name, spec.dataset_name, f"{spec.name}-singletask-v0"]
        names += [t.name for t in spec.tasks] + [t.short_name for t in spec.tasks]
    return names


def _parse(name: str) -> tuple[EnvSpec, int | None]:
    key = name.strip().lower()
    m = _NAME_RE.match(key)
    if m is None or m.group("env") not in ENVIRONMENTS:
        hint = suggest(key, list(ENVIRONMENTS)) or suggest(key, _all_names())
        raise SorlError(
            f"unknown task or environment '{name}'{hint}; `sorl data list` shows all environments "
            "(names like cube-single-play, cube-single-play-task2 or cube-single-play-singletask-task2-v0)"
        )
    spec = ENVIRONMENTS[m.group("env")]
    task = m.group("task")
    if task is None:
        return spec, None
    task_id = int(task)
    if not 1 <= task_id <= spec.num_tasks:
        raise SorlError(f"'{name}': {spec.name} has tasks 1-{spec.num_tasks} (default task {spec.default_task})")
    return spec, task_id


def resolve_env(name: str) -> EnvSpec:
    """The environment of any accepted spelling (environment, dataset or task name)."""
    return _parse(name)[0]


def resolve_task(name: str) -> Task:
    """Accepts 'cube-single-play', 'cube-single-play-v0', 'cube-single-play-singletask-v0' (the default task),
    'cube-single-play-singletask-task2-v0' and 'cube-single-play-task2'. Unknown -> SorlError with suggestions."""
    spec, task_id = _parse(name)
    return Task(spec, spec.default_task if task_id is None else task_id)


def expand_environment(name: str) -> list[Task]:
    """The five tasks of an environment; a name that picks one task explicitly ('...-task2') gives just it."""
    spec, task_id = _parse(name)
    return spec.tasks if task_id is None else [Task(spec, task_id)]


# ------------------------------------------------------------------------------ pixel-based environments

PIXEL_ENCODER = "impala_small"
"""The encoder of every released pixel-task command (`--agent.encoder=impala_small`)."""
PIXEL_FRAME_STACK = 3
"""`--frame_stack=3` in every released pixel-task command (`runner.settings.TrainSettings.frame_stack`)."""
PIXEL_P_AUG = 0.5
"""`--p_aug=0.5` in every released pixel-task command (`runner.settings.TrainSettings.p_aug`)."""
PIXEL_STEPS = 500_000
"""`--offline_steps=500000` in the released pixel-task commands (ours default to 1M for every task: pass
`--steps 500000` to match them)."""

_NO_COMMAND = "no released command for this agent on this pixel task: the state twin's values, unverified"
_DEFAULTS_ONLY = "no released command for this pixel task: the agent's defaults with the released encoder"

# ------------------------------------------------------------------------------ per-environment settings
#
# Each agent declares its own, in its file (`ENV_SETTINGS`, `ONLINE_ENV_SETTINGS`: environment name ->
# `sorl.sources.Tuned`, the values with their source and verified mark); this module only resolves them for a
# task, from the agent class it is given, and names no agent. On a pixel task every agent starts from its state
# twin's values, then its own entry for the pixel environment (a released pixel command's values), then the
# released encoder; the training-loop settings (frame stack, augmentation) are the PIXEL_* constants above,
# applied by the Trainer.


def _entry(table: Mapping[str, Tuned], name: str) -> dict[str, Any]:
    entry = table.get(name)
    return dict(entry.values) if entry is not None else {}


def agent_env_settings(agent: type, env_name: str, online: bool = False) -> dict[str, Any]:
    """Overrides of the agent class `agent`'s config on the environment of `env_name` (any accepted spelling);
    {} = the agent's defaults.

    `online` (a run with --online-steps > 0): its `ONLINE_ENV_SETTINGS` entry on top."""
    spec = resolve_env(env_name)
    table = getattr(agent, "ENV_SETTINGS", {})
    if spec.pixels:
        out = {**_entry(table, spec.state_twin), **_entry(table, spec.name)}
        config = getattr(agent, "Config", None)
        if config is not None and "encoder" in {f.name for f in dataclasses.fields(config)}:
            out["encoder"] = PIXEL_ENCODER  # every agent with an image encoder setting (all of agents.AGENTS)
    else:
        out = _entry(table, spec.name)
    if online:
        out.update(_entry(getattr(agent, "ONLINE_ENV_SETTINGS", {}), spec.name))
    return out


def settings_source(agent: type, env_name: str) -> tuple[bool, str] | None:
    """(verified, source) of the agent class `agent`'s per-environment settings on `env_name`; None where it has
    none. A pixel task always has some (at least the encoder): verified only where a released command gives them."""
    spec = resolve_env(env_name)
    table = getattr(agent, "ENV_SETTINGS", {})
    entry = table.get(spec.name)
    if entry is not None:
        return entry.verified, entry.source
    if not spec.pixels:
        return None
    return (False, _NO_COMMAND) if spec.state_twin in table else (False, _DEFAULTS_ONLY)


def online_settings_source(agent: type, env_name: str) -> tuple[bool, str] | None:
    """(verified, source) of the agent class `agent`'s offline-to-online settings on `env_name`; None where it has
    none (the offline settings apply)."""
    entry = getattr(agent, "ONLINE_ENV_SETTINGS", {}).get(resolve_env(env_name).name)
    return None if entry is None else (entry.verified, entry.source)
