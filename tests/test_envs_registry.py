"""The environment registry: names, tasks, defaults and settings, checked against the installed ogbench."""

from __future__ import annotations

import warnings

import gymnasium
import pytest

from agents import AGENTS
from envs.registry import (
    ENVIRONMENTS,
    agent_env_settings,
    expand_environment,
    resolve_env,
    resolve_task,
)
from sorl.errors import SorlError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ogbench  # noqa: F401  (registers the gym ids)

EXPECTED = {
    *(f"pointmaze-{m}-{t}" for m in ("medium", "large", "giant", "teleport") for t in ("navigate", "stitch")),
    *(f"antmaze-{m}-{t}" for m in ("medium", "large", "giant", "teleport") for t in ("navigate", "stitch")),
    *(f"antmaze-{m}-explore" for m in ("medium", "large", "teleport")),
    *(f"humanoidmaze-{m}-{t}" for m in ("medium", "large", "giant") for t in ("navigate", "stitch")),
    *(f"antsoccer-{m}-{t}" for m in ("arena", "medium") for t in ("navigate", "stitch")),
    *(f"cube-{n}-play" for n in ("single", "double", "triple", "quadruple")),
    "scene-play",
    *(f"puzzle-{n}-play" for n in ("3x3", "4x4", "4x5", "4x6")),
}
# Every manipulation environment's pixel-based twin (ogbench's visual-* ids).
EXPECTED |= {f"visual-{name}" for name in EXPECTED if name.startswith(("cube", "scene", "puzzle"))}


def test_registry_covers_ogbench_singletask_environments():
    assert set(ENVIRONMENTS) == EXPECTED
    registered = set(gymnasium.envs.registry)
    for spec in ENVIRONMENTS.values():
        assert spec.env_id in registered, spec.env_id
        assert spec.singletask_env_id() in registered
        for task in spec.tasks:
            assert spec.singletask_env_id(task.task_id) in registered
        assert spec.generatable == (spec.family in ("pointmaze", "cube", "scene", "puzzle"))
        assert spec.dataset_name == f"{spec.name}-v0"


# OGBench's data_gen_scripts/commands.sh: --num_episodes of each visual-*-play dataset, all --max_episode_steps=1001.
VISUAL_EPISODES = {
    "visual-cube-single-play": 1000, "visual-cube-double-play": 1000, "visual-cube-triple-play": 3000,
    "visual-cube-quadruple-play": 5000, "visual-scene-play": 1000, "visual-puzzle-3x3-play": 1000,
    "visual-puzzle-4x4-play": 1000, "visual-puzzle-4x5-play": 3000, "visual-puzzle-4x6-play": 5000,
}  # fmt: skip


def test_visual_datasets_have_the_published_episode_counts():
    visual = {name: spec for name, spec in ENVIRONMENTS.items() if spec.pixels}
    assert {name: spec.published_episodes for name, spec in visual.items()} == VISUAL_EPISODES
    assert {spec.max_episode_steps for spec in visual.values()} == {1001}


def test_default_tasks_match_ogbench():
    # ogbench resolves `reward_task_id=0` (the '-singletask-v0' name) to an environment-specific default.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in ENVIRONMENTS.values():
            # A pixel env's checker would render (no OpenGL context here): its task ids need no frame.
            env = gymnasium.make(spec.singletask_env_id(), disable_env_checker=spec.pixels)
            assert env.unwrapped._reward_task_id == spec.default_task, spec.name
            assert env.unwrapped.num_tasks == spec.num_tasks == 5
            env.close()


@pytest.mark.parametrize(
    "name, task_id",
    [
        ("cube-single-play", 2),
        ("cube-single-play-v0", 2),
        ("cube-single-play-singletask-v0", 2),
        ("cube-single-play-singletask-task3-v0", 3),
        ("cube-single-play-task5", 5),
        ("  Puzzle-3x3-Play ", 4),
        ("antsoccer-arena-navigate", 4),
        ("pointmaze-giant-stitch-task1", 1),
    ],
)
def test_resolve_task_spellings(name, task_id):
    task = resolve_task(name)
    assert task.task_id == task_id
    assert task.name == f"{task.env.name}-singletask-task{task_id}-v0"
    assert resolve_task(task.name) == task  # canonical names round-trip


def test_unknown_names_suggest_close_ones():
    with pytest.raises(SorlError, match="did you mean: cube-single-play"):
        resolve_task("cube-singel-play")
    with pytest.raises(SorlError, match="did you mean"):
        resolve_task("antmaze-large-navigat-singletask-task1-v0")
    with pytest.raises(SorlError, match="tasks 1-5"):
        resolve_task("scene-play-task7")


def test_expand_environment():
    tasks = expand_environment("scene-play")
    assert [t.task_id for t in tasks] == [1, 2, 3, 4, 5]
    assert [t.name for t in tasks][0] == "scene-play-singletask-task1-v0"
    assert expand_environment("scene-play-task3") == [resolve_task("scene-play-task3")]


def test_agent_env_settings_from_method_table():
    # The released README's SORL per-environment table (docs/method.md, "Defaults").
    sorl = AGENTS["sorl"]
    assert agent_env_settings(sorl, "antmaze-giant-navigate-singletask-task2-v0") == dict(
        q_loss_coef=500, discount=0.995, q_agg="min"
    )
    assert agent_env_settings(sorl, "cube-single-play") == dict(q_loss_coef=10, discount=0.99, q_agg="mean")
    assert agent_env_settings(sorl, "puzzle-3x3-play") == {}  # not in the table: agent defaults
    assert agent_env_settings(object, "cube-single-play") == {}  # a class that declares none: the defaults
    for cls in AGENTS.values():
        for env_name in {**cls.ENV_SETTINGS, **cls.ONLINE_ENV_SETTINGS}:
            assert resolve_env(env_name).name == env_name
    with pytest.raises(SorlError):
        agent_env_settings(sorl, "no-such-env")
