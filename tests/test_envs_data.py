"""Locally generated datasets: published format, loading through ogbench, determinism, atomic writing.

Tiny datasets only (2-3 episodes of 30 steps); every data directory is a tmp_path, never ~/.ogbench.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from envs import datasets, generate, manifest
from envs.registry import resolve_env
from sorl.errors import SorlError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import ogbench

# The published OGBench file format (OGBench data_gen_scripts: generate_manipspace.py / generate_locomaze.py):
# key -> (dtype, ndim). button_states only for scene and puzzle.
PUBLISHED_FORMAT = {
    "observations": (np.float32, 2),
    "actions": (np.float32, 2),
    "terminals": (np.bool_, 1),
    "qpos": (np.float32, 2),
    "qvel": (np.float32, 2),
}
BUTTON_FORMAT = {"button_states": (np.int64, 2)}

# gymnasium warns about float64 Box bounds each time a manipspace env's action_space is read.
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered:UserWarning")

EPISODES, STEPS = 2, 30
ENVS = ["cube-single-play", "scene-play", "puzzle-3x3-play", "pointmaze-medium-navigate", "pointmaze-large-stitch"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One tiny dataset per generator path (cube, scene, puzzle, pointmaze navigate/stitch), 1 worker."""
    d = tmp_path_factory.mktemp("data")
    datasets.cli_generate(ENVS, episodes=EPISODES, workers=1, seed=0, data_dir=d, max_episode_steps=STEPS)
    return d


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("env_name", ENVS)
def test_generated_files_have_published_format(data, env_name):
    spec = resolve_env(env_name)
    train, val = datasets.dataset_paths(spec, data)
    assert train.name == f"{spec.dataset_name}.npz" and val.name == f"{spec.dataset_name}-val.npz"
    expected = dict(PUBLISHED_FORMAT)
    if spec.family in ("scene", "puzzle"):
        expected.update(BUTTON_FORMAT)
    for path, episodes in ((train, EPISODES), (val, 1)):  # validation: episodes // 10, at least 1
        arrays = _arrays(path)
        assert set(arrays) == set(expected)
        for key, (dtype, ndim) in expected.items():
            assert arrays[key].dtype == dtype, key
            assert arrays[key].ndim == ndim, key
            assert len(arrays[key]) == episodes * STEPS
        # one terminal at the end of every episode
        assert np.flatnonzero(arrays["terminals"]).tolist() == [STEPS * (i + 1) - 1 for i in range(episodes)]
        assert np.abs(arrays["actions"]).max() <= 1.0


@pytest.mark.parametrize("env_name", ENVS)
def test_generated_files_load_through_ogbench_with_rewards(data, env_name):
    spec = resolve_env(env_name)
    train_path, _ = datasets.dataset_paths(spec, data)
    task = spec.tasks[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env, train, val = ogbench.make_env_and_datasets(task.name, dataset_path=str(train_path))
    for split, episodes in ((train, EPISODES), (val, 1)):
        n = episodes * (STEPS - 1)  # ogbench drops each episode's last observation
        assert split["observations"].shape == (n, *env.observation_space.shape)
        assert split["next_observations"].shape == split["observations"].shape
        assert split["actions"].shape == (n, *env.action_space.shape)
        for key in ("rewards", "masks"):
            assert split[key].shape == (n,) and split[key].dtype == np.float32
        assert set(np.unique(split["masks"])) <= {0.0, 1.0}
        assert split["rewards"].max() <= 0.0
        # a step is a success (reward 0) exactly where the mask is 0
        np.testing.assert_array_equal(split["rewards"] == 0, split["masks"] == 0)


def test_load_task_returns_float32_dicts_and_success_timing(data):
    env, train, val = datasets.load_task("cube-single-play-task3", data, generate=False, success_timing="post")
    assert env.unwrapped._success_timing == "post"
    assert env.unwrapped._reward_task_id == 3
    keys = {"observations", "actions", "rewards", "masks", "next_observations", "terminals"}
    assert set(train) == set(val) == keys
    assert all(v.dtype == np.float32 for v in (*train.values(), *val.values()))
    # pointmaze takes success_timing too
    env, _, _ = datasets.load_task("pointmaze-medium-navigate", data, generate=False, success_timing="post")
    assert env.unwrapped._success_timing == "post"
    with pytest.raises(SorlError, match="success_timing"):
        datasets.load_task("cube-single-play", data, success_timing="later")
    assert datasets.make_env("scene-play").unwrapped._reward_task_id == 2
    assert datasets.make_env("pointmaze-medium-navigate", max_episode_steps=7).spec.max_episode_steps == 7


def test_same_seed_same_arrays_with_1_and_2_workers(data, tmp_path):
    names = ["cube-single-play", "pointmaze-medium-navigate"]
    datasets.cli_generate(
        names, episodes=EPISODES, workers=2, seed=0, data_dir=tmp_path, max_episode_steps=STEPS, progress=False
    )
    for name in names:
        for a, b in zip(datasets.dataset_paths(name, data), datasets.dataset_paths(name, tmp_path), strict=True):
            one, two = _arrays(a), _arrays(b)
            assert one.keys() == two.keys()
            for k in one:
                np.testing.assert_array_equal(one[k], two[k], err_msg=f"{name} {k}")


def test_seed_changes_data_and_prefix_is_stable(data):
    spec = resolve_env("pointmaze-medium-navigate")
    s0 = generate.settings_for(spec, 1, STEPS, seed=0)
    first = generate.generate_episode(s0, 0, 0)
    ref = _arrays(datasets.dataset_paths(spec, data)[0])
    np.testing.assert_array_equal(first["observations"], ref["observations"][:STEPS])  # ep 0 same for any count
    other = generate.generate_episode(generate.settings_for(spec, 1, STEPS, seed=1), 0, 0)
    assert not np.array_equal(first["observations"], other["observations"])


def test_manifest_records_generated_and_published(data, tmp_path):
    entries = manifest.entries(data)
    train, val = datasets.dataset_paths("cube-single-play", data)
    e = entries[train.name]
    assert e["provenance"] == "generated" and e["status"] == "complete" and e["split"] == "train"
    assert e["sha256"] == manifest.sha256_file(train) and e["size"] == train.stat().st_size
    assert e["generator"]["train_episodes"] == EPISODES and e["generator"]["max_episode_steps"] == STEPS
    assert e["generator"]["noise"] == 0.1 and e["ogbench_version"]
    assert entries[val.name]["generator"]["val_episodes"] == 1
    # Files placed by hand (no manifest entry) are recorded as published on first sight.
    shutil.copy(train, tmp_path / train.name)
    shutil.copy(val, tmp_path / val.name)
    datasets.cli_verify(["cube-single-play"], tmp_path)
    new = manifest.entries(tmp_path)
    assert new[train.name]["provenance"] == "published"
    assert new[train.name]["sha256"] == e["sha256"]


def test_interrupted_generation_never_verifies(data, tmp_path, monkeypatch):
    d = tmp_path / "d"
    # 1. Interrupted while collecting episodes: nothing is written at all.
    real = generate.generate_episode
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(generate, "generate_episode", flaky)
    with pytest.raises(KeyboardInterrupt):
        datasets.cli_generate(["pointmaze-medium-stitch"], episodes=2, workers=1, data_dir=d, max_episode_steps=10)
    monkeypatch.undo()
    assert sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) == []

    # 2. Interrupted between putting the train and the val file in place: reported incomplete, never OK.
    real_replace = generate.os.replace
    moves = []

    def replace(src, dst):
        moves.append(dst)
        if len(moves) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(generate.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        datasets.cli_generate(["pointmaze-medium-stitch"], episodes=2, workers=1, data_dir=d, max_episode_steps=10)
    monkeypatch.undo()
    assert not any(p.name.endswith(".tmp") for p in d.iterdir())  # temporary files cleaned up
    with pytest.raises(SorlError, match="failed verification"):
        datasets.cli_verify(["pointmaze-medium-stitch"], d)
    with pytest.raises(SorlError, match="incomplete"):
        datasets.load_task("pointmaze-medium-stitch", d)
    # generating again (no --force needed for an incomplete dataset) repairs it
    datasets.cli_generate(["pointmaze-medium-stitch"], episodes=2, workers=1, data_dir=d, max_episode_steps=10)
    datasets.cli_verify(["pointmaze-medium-stitch"], d)


def test_load_task_generates_missing_dataset(tmp_path, capsys):
    env, train, _ = datasets.load_task(
        "pointmaze-medium-stitch-task2", tmp_path, episodes=2, workers=1, max_episode_steps=10, progress=False
    )
    out = capsys.readouterr().out
    assert "generating" in out and str(tmp_path) in out
    assert len(train["observations"]) == 2 * 9
    assert manifest.entries(tmp_path)["pointmaze-medium-stitch-v0.npz"]["provenance"] == "generated"
