"""Evaluation videos: `sorl eval RUN --video-episodes`, `sorl train --video-episodes`, and the headless renderer choice.

The filming test renders real OGBench episodes (cube-single, an untrained tiny SORL agent, 12-step episodes at
64x64) through whichever headless backend works here, and decodes the MP4s; it is skipped, with the reason, on a
machine where none does. The renderer-selection and training tests stub what they do not check.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_train_loop import _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from agents import get_agent
from cli import main as cli
from envs import rendering
from runner import runs
from runner import train as train_lib
from runner.checkpoint import Checkpointer
from runner.train import initial_state
from runner.video import check_video_files, default_video_K, video_name
from sorl.config import config_to_dict
from sorl.errors import SorlError

TASK = "cube-single-play-singletask-task1-v0"
OBS, ACT = 28, 5  # cube-single's observation and action sizes
STEP = 10
EPISODE_STEPS = 12
SIZE = 64


@pytest.fixture
def stand_in(request):
    return request.getfixturevalue("_stand_in")


@pytest.fixture
def fresh_probes(monkeypatch):
    """Each test asks the backends again (the process caches their answers)."""
    monkeypatch.setattr(rendering, "_probed", {})


@pytest.fixture
def sorl_run(tmp_path):
    """A run directory holding an untrained tiny SORL agent at step STEP (K up to 2): no training to wait for."""
    agent_cls = get_agent("sorl")
    config = dataclasses.replace(
        agent_cls.Config(), actor_layer_size=16, actor_num_layers=2, value_layer_size=16, value_num_layers=2,
        denoise_timesteps=2, max_k_backprop=2,
    )  # fmt: skip
    run = runs.RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    run.write_config({"task": TASK, "agent": "sorl", "seed": 0, "agent_config": config_to_dict(config),
                      "obs_dim": OBS, "action_dim": ACT})  # fmt: skip
    state = initial_state(agent_cls, config, 0, np.zeros((1, OBS), np.float32), np.zeros((1, ACT), np.float32))
    with Checkpointer(run.checkpoints, writer=True) as ckpt:
        ckpt.save(STEP, {**state, "step": np.int64(STEP)})
    return run


def _frames(path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([frame for frame in reader])  # not list(reader): its length is unknown (inf) up front


# ------------------------------------------------------------------------------------------ filming


# decoding starts ffmpeg from this process, which runs JAX: JAX's fork warning is about the test, not the code
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")
def test_eval_films_episodes(sorl_run, capsys):
    try:
        rendering.gl_backend()
    except SorlError as e:
        pytest.skip(f"no headless renderer here: {e}")
    cli.main(
        ["eval", str(sorl_run.path), "--video-episodes", "2", "--video-only", "--video-N", "2",
         "--video-size", str(SIZE), "--max-episode-steps", str(EPISODE_STEPS), "--workers", "2"]
    )  # fmt: skip
    out = capsys.readouterr().out
    # the default cell: the largest K of --K (1,2,4,8) the agent was trained for (2)
    paths = [sorl_run.path / "videos" / video_name(STEP, 2, 2, i) for i in range(2)]
    assert sorted(p.name for p in (sorl_run.path / "videos").iterdir()) == [p.name for p in paths]  # no leftovers
    assert f"wrote {paths[0]}" in out and "frames/s" in out
    assert not sorl_run.scaling_json.exists()  # --video-only: the grid is not evaluated
    first = []
    for path in paths:
        frames = _frames(path)
        # the reset state, then one frame per step of the (time-limited) episode
        assert frames.shape == (EPISODE_STEPS + 1, SIZE, SIZE, 3) and frames.dtype == np.uint8
        assert frames[0].std() > 10  # a scene, not a blank image
        motion = np.abs(frames[1:].astype(np.int16) - frames[:-1]).mean(axis=(1, 2, 3))
        assert (motion > 0.1).sum() >= EPISODE_STEPS // 2  # the arm moves in most steps
        first.append(frames[0])
    assert np.abs(first[0].astype(np.int16) - first[1]).mean() > 0.1  # episodes start from their own states
    # filming the same cell again: refused before any rendering, unless --replace (which says so)
    argv = ["eval", str(sorl_run.path), "--video-episodes", "2", "--video-only", "--video-N", "2", "--video-size",
            str(SIZE), "--max-episode-steps", str(EPISODE_STEPS), "--workers", "2"]  # fmt: skip
    before = {p: p.read_bytes() for p in paths}
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "already holds step10-K2-N2-ep0.mp4, step10-K2-N2-ep1.mp4" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in paths} == before
    cli.main([*argv, "--replace"])
    assert f"replaced {paths[0]}" in capsys.readouterr().out
    assert sorted(p.name for p in (sorl_run.path / "videos").iterdir()) == [p.name for p in paths]


def test_videos_of_the_same_names_are_not_filmed_over_without_replace(tmp_path):
    videos = tmp_path / "run" / "videos"
    videos.mkdir(parents=True)
    earlier = videos / video_name(STEP, 2, 1, 1)
    earlier.write_bytes(b"an earlier video")
    (videos / video_name(STEP, 4, 1, 0)).write_bytes(b"another cell")
    cell = dict(step=STEP, K=2, N=1, episodes=3)
    with pytest.raises(SorlError, match=r"already holds step10-K2-N1-ep1.mp4 \(K=2, N=1 at step 10\).*--replace"):
        check_video_files(tmp_path / "run", **cell)
    assert check_video_files(tmp_path / "run", **cell, replace=True) == [earlier]
    assert check_video_files(tmp_path / "run", **{**cell, "K": 1}) == []  # another cell's files are no concern
    assert check_video_files(tmp_path / "new-run", **cell) == []  # no videos yet (nothing is created)
    assert earlier.read_bytes() == b"an earlier video" and not (tmp_path / "new-run").exists()


def test_default_video_cell():
    assert default_video_K((1, 2, 4, 8), 2) == 2  # the largest K the agent was trained for
    assert default_video_K((1, 2, 4, 8), 8) == 8
    assert default_video_K((4, 8), 2) == 2
    assert default_video_K((1, 8), None) == 8  # K-free agents (one-step baselines, BC)


# ------------------------------------------------------------------------------ no renderer: one line


def _no_renderer(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(rendering, "probe", lambda backend: f"lib{rendering._LIBRARY[backend]} not found")


def test_missing_renderer_is_one_line_and_loses_nothing(sorl_run, fresh_probes, monkeypatch, capsys):
    videos = sorl_run.path / "videos"
    videos.mkdir()
    earlier = videos / video_name(STEP, 2, 1, 0)
    earlier.write_bytes(b"an earlier video")
    sorl_run.scaling_json.write_text('{"earlier": true}')
    _no_renderer(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", str(sorl_run.path), "--video-episodes", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no headless OpenGL renderer for MuJoCo")
    assert "apt-get install libegl1 libgl1-mesa-dri" in err and "apt-get install libosmesa6" in err
    assert earlier.read_bytes() == b"an earlier video" and json.loads(sorl_run.scaling_json.read_text()) == {
        "earlier": True
    }
    assert sorted(p.name for p in videos.iterdir()) == [earlier.name]


def test_users_backend_is_checked(fresh_probes, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SorlError, match=r"MUJOCO_GL=glfw cannot render here \(no display.*MUJOCO_GL=egl"):
        rendering.gl_backend()
    monkeypatch.setenv("MUJOCO_GL", "nonsense")
    with pytest.raises(SorlError, match="not a MuJoCo backend"):
        rendering.gl_backend()
    if rendering.probe("osmesa") is not None:  # the real probe of a backend this machine lacks
        monkeypatch.setenv("MUJOCO_GL", "osmesa")
        with pytest.raises(SorlError, match=r"MUJOCO_GL=osmesa cannot render here .*`apt-get install libosmesa6`"):
            rendering.gl_backend()


def test_a_failed_rendering_worker_is_one_line(sorl_run, monkeypatch):
    from runner import pixels, video

    def dead_pool(*args, make_env, **kw):
        (Path(make_env.out_dir) / "123.mp4").write_bytes(b"half a video")
        raise RuntimeError("evaluation worker failed: ValueError: no context\nTraceback (most recent call last): ...")

    monkeypatch.setattr(rendering, "gl_backend", lambda: "egl")
    monkeypatch.setattr(pixels, "EnvPool", dead_pool)  # the filmed environments' pool (runner.pixels.eval_pool)
    agent, _ = train_lib.load_run(sorl_run)
    with pytest.raises(SorlError) as e:
        video.record_episodes(agent, TASK, sorl_run.path, step=STEP, K=2)
    assert str(e.value) == (
        "filming failed (evaluation worker failed: ValueError: no context); videos written before are kept"
    )
    assert list((sorl_run.path / "videos").iterdir()) == []  # nothing half-written is left


# ------------------------------------------------------------------------------------------- training


def test_train_films_at_every_evaluation(stand_in, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(rendering, "gl_backend", lambda: "egl")
    calls = []

    def record(agent, task_name, run_dir, *, step, K, N, episodes, seed, size, **kw):
        calls.append((step, K, N, episodes, seed, size))
        if step == 30:  # a failure while filming costs a warning, not the run
            raise RuntimeError("the renderer crashed")
        path = run_dir / "videos" / video_name(step, K, N, 0)
        return [{"path": path, "episode": 0, "success": False, "length": 5, "frames": 6}]

    monkeypatch.setattr(train_lib, "record_episodes", record)
    _train(tmp_path, video_episodes=1, video_size=64)  # eval_K 1,4: the filmed cell is K=4, N=1
    assert calls == [(30, 4, 1, 1, 1, 64), (60, 4, 1, 1, 1, 64)]
    out = capsys.readouterr().out
    assert "warning: no videos at step 30: RuntimeError: the renderer crashed" in out
    assert "[step 60] videos  step60-K4-N1-ep0.mp4" in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "complete"


def test_train_refuses_up_front_without_a_renderer(stand_in, fresh_probes, monkeypatch, tmp_path):
    _no_renderer(monkeypatch)
    with pytest.raises(SorlError, match="no headless OpenGL renderer"):
        _train(tmp_path, video_episodes=1)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_checks_the_video_cell(stand_in, monkeypatch, tmp_path):
    monkeypatch.setattr(rendering, "gl_backend", lambda: "egl")
    with pytest.raises(SorlError, match="K=8 is above the largest step count"):
        _train(tmp_path, video_episodes=1, video_K=8)  # the stand-in is trained for K <= 4
    with pytest.raises(SorlError, match="multiple of 16"):
        _train(tmp_path, video_episodes=1, video_size=100)
