"""The OGBench singletask environments, state-based and pixel-based: names, tasks, dataset facts, per-agent settings.

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
commands file gives each visual-*-play dataset (checked in tests/test_envs_registry.py). Per-agent settings of pixel
tasks are in `PIXEL_AGENT_ENV_SETTINGS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sorl.errors import SorlError, suggest

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


# ------------------------------------------------------------------------------ per-environment settings

AGENT_ENV_SETTINGS: dict[str, dict[str, dict]] = {
    # agent -> environment -> hyperparameter overrides (the agent's config names). Environments not listed use
    # the agent's defaults. Where each value comes from, and whether it is verified, is in SETTING_SOURCES below.
    "sorl": {
        "antmaze-large-navigate": dict(q_loss_coef=500, discount=0.99, q_agg="min"),
        "antmaze-giant-navigate": dict(q_loss_coef=500, discount=0.995, q_agg="min"),
        "humanoidmaze-medium-navigate": dict(q_loss_coef=100, discount=0.995, q_agg="mean"),
        "humanoidmaze-large-navigate": dict(q_loss_coef=500, discount=0.995, q_agg="mean"),
        # The released README's all-tasks list gives antsoccer discount=0.995 (tasks 1-5, the default task4
        # included); its default-task line gives no discount (i.e. 0.99). We keep 0.995: the all-tasks list is
        # the complete one, and the README says discount follows FQL's, which is 0.995 on antsoccer.
        "antsoccer-arena-navigate": dict(q_loss_coef=500, discount=0.995, q_agg="mean"),
        "cube-single-play": dict(q_loss_coef=10, discount=0.99, q_agg="mean"),
        "cube-double-play": dict(q_loss_coef=50, discount=0.99, q_agg="mean"),
        "scene-play": dict(q_loss_coef=100, discount=0.99, q_agg="mean"),
    },
    "fql": {
        "antmaze-large-navigate": dict(alpha=10.0, discount=0.99, q_agg="min"),
        "antmaze-giant-navigate": dict(alpha=10.0, discount=0.995, q_agg="min"),
        "humanoidmaze-medium-navigate": dict(alpha=30.0, discount=0.995, q_agg="mean"),
        "humanoidmaze-large-navigate": dict(alpha=30.0, discount=0.995, q_agg="mean"),
        "antsoccer-arena-navigate": dict(alpha=10.0, discount=0.995, q_agg="mean"),
        "cube-single-play": dict(alpha=300.0, discount=0.99, q_agg="mean"),
        "cube-double-play": dict(alpha=300.0, discount=0.99, q_agg="mean"),
        "scene-play": dict(alpha=300.0, discount=0.99, q_agg="mean"),
        "puzzle-3x3-play": dict(alpha=1000.0, discount=0.99, q_agg="mean"),
        "puzzle-4x4-play": dict(alpha=1000.0, discount=0.99, q_agg="mean"),
    },
    # ReBRAC and IQL always use q_agg=min in the reference (our config default). gamma = 0.995 on antmaze-giant,
    # humanoidmaze and antsoccer for every agent, as in FQL's commands.
    "rebrac": {
        "antmaze-large-navigate": dict(alpha_actor=0.003, alpha_critic=0.002, discount=0.99),
        "antmaze-giant-navigate": dict(alpha_actor=0.003, alpha_critic=0.001, discount=0.995),
        "humanoidmaze-medium-navigate": dict(alpha_actor=0.01, alpha_critic=0.01, discount=0.995),
        "humanoidmaze-large-navigate": dict(alpha_actor=0.01, alpha_critic=0.01, discount=0.995),
        "antsoccer-arena-navigate": dict(alpha_actor=0.01, alpha_critic=0.01, discount=0.995),
        "cube-single-play": dict(alpha_actor=1.0, alpha_critic=0.0, discount=0.99),
        "cube-double-play": dict(alpha_actor=0.1, alpha_critic=0.0, discount=0.99),
        "scene-play": dict(alpha_actor=0.1, alpha_critic=0.01, discount=0.99),
        "puzzle-3x3-play": dict(alpha_actor=0.3, alpha_critic=0.01, discount=0.99),
        "puzzle-4x4-play": dict(alpha_actor=0.3, alpha_critic=0.01, discount=0.99),
    },
    "iql": {
        "antmaze-large-navigate": dict(alpha=10.0, discount=0.99),
        "antmaze-giant-navigate": dict(alpha=10.0, discount=0.995),
        "humanoidmaze-medium-navigate": dict(alpha=10.0, discount=0.995),
        "humanoidmaze-large-navigate": dict(alpha=10.0, discount=0.995),
        "antsoccer-arena-navigate": dict(alpha=1.0, discount=0.995),
        "cube-single-play": dict(alpha=1.0, discount=0.99),
        "cube-double-play": dict(alpha=0.3, discount=0.99),
        "scene-play": dict(alpha=10.0, discount=0.99),
        "puzzle-3x3-play": dict(alpha=10.0, discount=0.99),
        "puzzle-4x4-play": dict(alpha=3.0, discount=0.99),
    },
    "bc": {},  # Gaussian BC: nothing is tuned per environment
    "flow-bc": {},
}

_SORL_README = "SORL's released README, all-tasks command list"
_FQL_README = "FQL reference README, 'Reproducing the main results' command list"
_RECALLED = "the FQL paper's appendix tables as recalled; the appendix could not be read here"
_VISUAL = "; the same values appear in FQL's/Value Flows' commands for this environment's visual version"
_THIRD_PARTY_IQL = "; matches a third-party rerun's table of FQL's settings (Xyu-Chern/DOAL, utils/hps.py)"

SETTING_SOURCES: dict[str, dict[str, tuple[bool, str]]] = {
    # agent -> environment -> (verified, source) for every AGENT_ENV_SETTINGS entry. Verified = read in the
    # reference authors' own published commands. Unverified entries are footnoted by `sorl table --compare`.
    "sorl": {env: (True, _SORL_README) for env in AGENT_ENV_SETTINGS["sorl"]},
    "fql": {env: (True, _FQL_README) for env in AGENT_ENV_SETTINGS["fql"]},
    "rebrac": {
        # A third-party table lists exactly these two pairs for ReBRAC on D4RL antmaze-umaze(-diverse): the
        # recalled antmaze values may be D4RL's, not OGBench's. The least certain entries here.
        "antmaze-large-navigate": (False, _RECALLED + "; possibly D4RL antmaze-umaze's values"),
        "antmaze-giant-navigate": (False, _RECALLED + "; possibly D4RL antmaze-umaze-diverse's values"),
        "humanoidmaze-medium-navigate": (True, _FQL_README + " (its ReBRAC example)"),
        "humanoidmaze-large-navigate": (False, _RECALLED),
        "antsoccer-arena-navigate": (False, _RECALLED),
        "cube-single-play": (False, _RECALLED + _VISUAL + " (visual-cube-single: 1, 0)"),
        "cube-double-play": (False, _RECALLED + _VISUAL + " (visual-cube-double: 0.1, 0)"),
        "scene-play": (False, _RECALLED + _VISUAL + " (visual-scene: 0.1, 0.01)"),
        "puzzle-3x3-play": (False, _RECALLED + _VISUAL + " (visual-puzzle-3x3: 0.3, 0.01)"),
        "puzzle-4x4-play": (False, _RECALLED),
    },
    "iql": {
        "antmaze-large-navigate": (False, _RECALLED + _THIRD_PARTY_IQL),
        "antmaze-giant-navigate": (False, _RECALLED + _THIRD_PARTY_IQL),
        "humanoidmaze-medium-navigate": (True, _FQL_README + " (its IQL example)"),
        "humanoidmaze-large-navigate": (False, _RECALLED + _THIRD_PARTY_IQL),
        "antsoccer-arena-navigate": (False, _RECALLED + _THIRD_PARTY_IQL),
        "cube-single-play": (False, _RECALLED + _THIRD_PARTY_IQL + _VISUAL + " (visual-cube-single: 1)"),
        "cube-double-play": (False, _RECALLED + _THIRD_PARTY_IQL + _VISUAL + " (visual-cube-double: 0.3)"),
        "scene-play": (False, _RECALLED + _THIRD_PARTY_IQL + _VISUAL + " (visual-scene: 10)"),
        "puzzle-3x3-play": (False, _RECALLED + _THIRD_PARTY_IQL + _VISUAL + " (visual-puzzle-3x3: 10)"),
        "puzzle-4x4-play": (False, _RECALLED + _THIRD_PARTY_IQL),
    },
    "bc": {},
    "flow-bc": {},
}


# ------------------------------------------------------------------------------ offline-to-online settings

_FQL_ONLINE = "FQL reference README, 'Offline-to-online RL' command list"

ONLINE_AGENT_ENV_SETTINGS: dict[str, dict[str, dict]] = {
    # agent -> environment -> overrides of a run with --online-steps > 0 (its offline phase included: the
    # reference's online commands train the whole run with them), on top of AGENT_ENV_SETTINGS. Only where the
    # reference's offline-to-online command differs from its offline one; sources in ONLINE_SETTING_SOURCES. The
    # same README gives cube-double, scene and puzzle-4x4 (FQL: alpha 300, 300, 1000) and humanoidmaze-medium (IQL:
    # alpha 10; ReBRAC: 0.01, 0.01) online with their offline values, so they need no entry. SORL's released README
    # gives no offline-to-online command: SORL runs online with its offline settings.
    "fql": {
        "humanoidmaze-medium-navigate": dict(alpha=100.0),  # offline: 30
        "antsoccer-arena-navigate": dict(alpha=30.0),  # offline: 10
    },
}

ONLINE_SETTING_SOURCES: dict[str, dict[str, tuple[bool, str]]] = {
    # agent -> environment -> (verified, source) for every ONLINE_AGENT_ENV_SETTINGS entry (verified: read in the
    # reference authors' own published commands, as SETTING_SOURCES).
    "fql": {env: (True, _FQL_ONLINE) for env in ONLINE_AGENT_ENV_SETTINGS["fql"]},
}


def online_settings_source(agent: str, env_name: str) -> tuple[bool, str] | None:
    """(verified, source) of `agent`'s offline-to-online settings on `env_name`; None where it has none (the
    offline settings apply)."""
    return ONLINE_SETTING_SOURCES.get(agent, {}).get(resolve_env(env_name).name)


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

_FQL_PIXELS = "FQL reference README, 'FQL on pixel-based OGBench' command list"
_FQL_PIXEL_EXAMPLE = "FQL reference README, its pixel-based example command for this agent"
_NO_COMMAND = "no released command for this agent on this pixel task: the state twin's values, unverified"
_DEFAULTS_ONLY = "no released command for this pixel task: the agent's defaults with the released encoder"

_PIXEL_TUNED: dict[str, dict[str, dict]] = {
    # Values the released pixel-task commands give where they differ from the state twin's (FQL README).
    "fql": {
        "visual-cube-single-play": dict(alpha=300.0),
        "visual-cube-double-play": dict(alpha=100.0),
        "visual-scene-play": dict(alpha=100.0),
        "visual-puzzle-3x3-play": dict(alpha=300.0),
        "visual-puzzle-4x4-play": dict(alpha=300.0),
    },
    "rebrac": {"visual-cube-single-play": dict(alpha_actor=1.0, alpha_critic=0.0)},
    "iql": {"visual-cube-single-play": dict(alpha=1.0)},
}

PIXEL_AGENT_ENV_SETTINGS: dict[str, dict[str, dict]] = {
    # agent -> visual environment -> overrides, for every agent on every pixel task (at least the encoder): the
    # released pixel command's values where there is one, else the state twin's. Sources: PIXEL_SETTING_SOURCES.
    # The training-loop settings (frame stack, augmentation) are the PIXEL_* constants, applied by the Trainer.
    agent: {
        spec.name: {
            **AGENT_ENV_SETTINGS[agent].get(spec.state_twin, {}),
            **_PIXEL_TUNED.get(agent, {}).get(spec.name, {}),
            "encoder": PIXEL_ENCODER,
        }
        for spec in ENVIRONMENTS.values()
        if spec.pixels
    }
    for agent in AGENT_ENV_SETTINGS
}


def _pixel_source(agent: str, name: str) -> tuple[bool, str]:
    twin = name.removeprefix(VISUAL_PREFIX)
    if agent == "fql" and name in _PIXEL_TUNED["fql"]:
        return True, _FQL_PIXELS
    if name in _PIXEL_TUNED.get(agent, {}):
        return True, _FQL_PIXEL_EXAMPLE
    if twin in AGENT_ENV_SETTINGS[agent]:
        return False, _NO_COMMAND
    return False, _DEFAULTS_ONLY


PIXEL_SETTING_SOURCES: dict[str, dict[str, tuple[bool, str]]] = {
    agent: {name: _pixel_source(agent, name) for name in table} for agent, table in PIXEL_AGENT_ENV_SETTINGS.items()
}
"""(verified, source) of every PIXEL_AGENT_ENV_SETTINGS entry: verified only where a released command gives it."""


def settings_source(agent: str, env_name: str) -> tuple[bool, str] | None:
    """(verified, source) of `agent`'s per-environment settings on `env_name`; None where it has none."""
    name = resolve_env(env_name).name
    return SETTING_SOURCES.get(agent, {}).get(name) or PIXEL_SETTING_SOURCES.get(agent, {}).get(name)


def agent_env_settings(agent: str, env_name: str, online: bool = False) -> dict:
    """Overrides for `agent` on the environment of `env_name` (any accepted spelling); {} = agent defaults.

    `online` (a run with --online-steps > 0): the offline-to-online settings (`ONLINE_AGENT_ENV_SETTINGS`) on top."""
    spec = resolve_env(env_name)
    table = PIXEL_AGENT_ENV_SETTINGS if spec.pixels else AGENT_ENV_SETTINGS
    out = dict(table.get(agent, {}).get(spec.name, {}))
    if online:
        out.update(ONLINE_AGENT_ENV_SETTINGS.get(agent, {}).get(spec.name, {}))
    return out
