"""Evaluation videos: episodes of one (K, N) cell of a trained agent, rendered headless to MP4 in the run directory.

`record_episodes` runs `episodes` evaluation episodes with the evaluation's own machinery (`EnvPool`,
`run_episodes`, the cell's policy from `cell_actor`): filmed episode i starts from evaluation episode i's initial
state (the reset seed `episode_seed(seed, i)`) and draws its actions with the evaluation's key sequence. The
batch is smaller than an evaluation's, so the sampled noise, and with it the outcome, can differ from that
evaluation episode's.

Rendering happens in spawned worker processes whose MUJOCO_GL is the backend `envs.rendering.gl_backend` found
(MuJoCo reads it once, when first imported). Each worker's environment is wrapped in `EpisodeRecorder`, which
streams frames to an MP4 (imageio's ffmpeg writer; the imageio-ffmpeg wheel ships the ffmpeg binary) as the episode
runs and closes it when the episode ends, so memory does not grow with the episode's length. A video holds the
episode's length + 1 frames (the reset state, then the state after each step) at the environment's real-time rate.

On pixel tasks (visual-*) a video shows what the agent sees: the environment's own 64x64 camera, rendered at
the quality the dataset was, enlarged by a whole factor to the video size (a multiple of 64); a bigger render would
change the observations themselves, which are that same render. A frame-stacked run's environments stack frames
as in its evaluation (`runner.pixels.FrameStack`, outside the recorder: one video frame per environment step).
Files are written under a temporary name and moved into place only once every episode is complete: a failure or a
kill never leaves a truncated video under a final name, nor replaces an earlier one. A video of the same name
(step, cell, episode) is refused before any work unless `replace` (`sorl eval --replace`; a continued training run
films a step again only when it redoes that step's evaluation, and says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner.evaluation import cell_actor, episode_seed, evaluation_key, run_episodes, validate_grid
from runner.runs import check_writable
from runner.settings import MACROBLOCK, check_video_size  # noqa: F401 - the video size rules live with the options
from sorl.errors import SorlError

VIDEO_DIR = "videos"
"""Videos go to RUN_DIR/videos/."""


def video_name(step: int, K: int, N: int, episode: int) -> str:
    """`step<S>-K<k>-N<n>-ep<i>.mp4`: the checkpoint's step, the filmed cell and the evaluation episode."""
    return f"step{step}-K{K}-N{N}-ep{episode}.mp4"


def check_video_files(
    run_dir: Path | str, *, step: int, K: int, N: int, episodes: int, replace: bool = False
) -> list[Path]:
    """Before any filming: the videos directory must be writable, and the files this filming would write must not
    exist unless `replace` (`sorl eval --replace`); returns those that exist (and will be replaced). Writes
    nothing."""
    videos = Path(run_dir) / VIDEO_DIR
    check_writable(videos, "videos directory")
    existing = [videos / video_name(step, K, N, i) for i in range(episodes)]
    existing = [p for p in existing if p.exists()]
    if existing and not replace:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        names = ", ".join(p.name for p in existing[:3]) + more
        raise SorlError(
            f"{videos} already holds {names} (K={K}, N={N} at step {step}); move them aside, or give --replace to "
            "film them again"
        )
    return existing


def default_video_K(Ks: Sequence[int], max_K: int | None) -> int:
    """The filmed K when none is asked for: the largest K of the grid the agent was trained for (that of the
    results tables' default cell, with N = 1)."""
    fitting = [K for K in Ks if max_K is None or max_K >= K]
    return max(fitting) if fitting else int(max_K or 1)


# ---------------------------------------------------------------------------------- in the workers


def _fps(env: Any) -> float:
    """Frames per second at which the video plays in real time: one frame per environment step."""
    u = env.unwrapped
    fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    if fps:
        return float(fps)
    dt = getattr(u, "dt", None)  # gymnasium MuJoCo envs (pointmaze, antmaze)
    if dt is None:
        dt = getattr(u, "control_timestep", None)  # OGBench manipulation envs: a method
        dt = dt() if callable(dt) else dt
    return 1.0 / float(dt) if dt else 20.0


def _lighten(env: Any) -> None:
    """Cheaper rendering settings, applied before the environment's renderer is first created.

    OGBench's scenes ask for a 4096² shadow map and 4x multisampling; under software rendering (Mesa's llvmpipe,
    the EGL of a CPU-only machine) that is ~2 frames/s at 256², against ~17 without either (measured on 2 busy
    cores). The physics is untouched. A model recompiled later (OGBench's tasks never do in an episode) renders
    with its own settings again, only more slowly.
    """
    model = getattr(env.unwrapped, "model", None)
    quality = getattr(getattr(model, "vis", None), "quality", None)
    if quality is not None:
        quality.shadowsize = 0
        quality.offsamples = 0


class EpisodeRecorder:
    """An environment that writes each episode it plays to `out_dir/<reset seed>.mp4` as it goes.

    Frames: one after `reset`, one after each `step`; the file is closed when the episode terminates or is
    truncated. An episode cut short (the environment closed mid-episode) leaves no file.
    """

    def __init__(self, env: Any, out_dir: Path, upscale: int | None = None):
        self.env = env
        self.out_dir = out_dir
        self.upscale = upscale  # pixel tasks: the observation camera enlarged by this factor (module docstring)
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._writer: Any = None
        self._path: Path | None = None
        self.fps = _fps(env)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._discard()
        out = self.env.reset(seed=seed, options=options)
        if self.upscale is None:  # a pixel task's render is its observation: never changed
            _lighten(self.env)
        import imageio.v2 as imageio

        self._path = self.out_dir / f"{seed}.mp4"
        self._writer = imageio.get_writer(
            self._path, format="FFMPEG", mode="I", fps=self.fps, codec="libx264", pixelformat="yuv420p",
            quality=7, macro_block_size=MACROBLOCK, ffmpeg_log_level="error",
        )  # fmt: skip
        self._frame()
        return out

    def step(self, action: np.ndarray):
        out = self.env.step(action)
        self._frame()
        if out[2] or out[3]:  # terminated or truncated: the episode's video is complete
            self._writer.close()
            self._writer = self._path = None
        return out

    def _frame(self) -> None:
        frame = np.asarray(self.env.render(), np.uint8)
        if self.upscale and self.upscale > 1:
            frame = frame.repeat(self.upscale, axis=0).repeat(self.upscale, axis=1)
        self._writer.append_data(frame)

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def _discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            if self._path is not None:
                self._path.unlink(missing_ok=True)
        self._writer = self._path = None

    def close(self) -> None:
        self._discard()
        self.env.close()


@dataclasses.dataclass(frozen=True)
class RecordingEnvs:
    """`MakeEnv` of recording environments (picklable: built inside the spawned workers)."""

    out_dir: str
    size: int
    pixels: bool = False
    """A pixel task: the environment renders at its observation size, the recorder enlarges it to `size`."""

    def __call__(self, task_name: str, success_timing: str, max_episode_steps: int | None) -> EpisodeRecorder:
        from envs.checks import PIXEL_OBSERVATION
        from envs.datasets import make_env

        kwargs: dict[str, Any] = {"render_mode": "rgb_array"}
        if not self.pixels:
            kwargs.update(width=self.size, height=self.size)
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        env = make_env(task_name, success_timing=success_timing, **kwargs)
        upscale = self.size // PIXEL_OBSERVATION[0] if self.pixels else None
        return EpisodeRecorder(env, Path(self.out_dir), upscale)


# ------------------------------------------------------------------------------------ the main process


def record_episodes(
    agent: Any,
    task_name: str,
    run_dir: Path | str,
    *,
    step: int,
    K: int,
    N: int = 1,
    episodes: int = 2,
    seed: int = 0,
    success_timing: str = "pre",
    max_episode_steps: int | None = None,
    size: int = 256,
    workers: int | None = None,
    policy: Callable[..., Any] | None = None,
    pixels: bool = False,
    frame_stack: int = 1,
    replace: bool = False,
) -> list[dict[str, Any]]:
    """Film `episodes` evaluation episodes of cell (K, N) into `run_dir/videos/`; one dict per video:
    `{path, episode, success, length, frames, replaced}`, plus the recording's wall times in each: `startup_s` (the
    rendering workers and their environments) and `episodes_s` (the episodes: policy, physics, rendering, encoding).
    A video of the same name (step, cell, episode) is refused before any work (`check_video_files`) unless
    `replace`; `replaced` says which were.

    `pixels` and `frame_stack` are the run's observations (`runner.pixels.run_observations`): the filmed
    environments give the agent what its evaluation gave it.

    Raises a one-line SorlError before any work when no headless renderer works here (`gl_backend`).
    """
    existing = _check_filming(agent, run_dir, step=step, K=K, N=N, episodes=episodes, size=size, pixels=pixels,
                              replace=replace)  # fmt: skip
    if policy is None:
        from sorl.inference import make_policy_fn

        policy = make_policy_fn()
    videos, staging = _staging_dir(run_dir)
    try:
        result, timing = _film(
            agent, policy, task_name, staging, K=K, N=N, episodes=episodes, seed=seed, size=size, pixels=pixels,
            frame_stack=frame_stack, workers=workers, success_timing=success_timing,
            max_episode_steps=max_episode_steps,
        )  # fmt: skip
        return _move_into_place(staging, videos, result, timing, existing, step=step, K=K, N=N, seed=seed,
                                episodes=episodes)  # fmt: skip
    except RuntimeError as e:  # a rendering worker failed: its first line, not the worker's whole traceback
        raise SorlError(f"filming failed ({str(e).splitlines()[0]}); videos written before are kept") from e
    except OSError as e:  # the disk, while moving the finished videos into place
        raise SorlError(f"could not write videos to {videos}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_filming(
    agent: Any,
    run_dir: Path | str,
    *,
    step: int,
    K: int,
    N: int,
    episodes: int,
    size: int,
    pixels: bool,
    replace: bool,
) -> list[Path]:
    """Every refusal `record_episodes` makes before any work, as one-line SorlErrors: the cell, the video size, the
    episode count, the headless renderer and the files in the way; returns the videos that will be replaced."""
    from envs.rendering import gl_backend

    validate_grid((K,), (N,), getattr(agent, "max_K", None), agent)
    check_video_size(size, pixels=pixels)
    if episodes < 1:
        raise SorlError(f"video episodes={episodes}: must be a positive integer")
    gl_backend()  # no renderer: one line now
    return check_video_files(run_dir, step=step, K=K, N=N, episodes=episodes, replace=replace)


def _staging_dir(run_dir: Path | str) -> tuple[Path, Path]:
    """(the run's videos directory, a new temporary directory in it for the recorders): final names appear only when
    every episode is complete."""
    videos = Path(run_dir) / VIDEO_DIR
    try:
        videos.mkdir(parents=True, exist_ok=True)
        return videos, Path(tempfile.mkdtemp(prefix=".recording-", dir=videos))
    except OSError as e:
        raise SorlError(f"cannot write videos to {videos}: {e.strerror or e}") from None


def _film(
    agent: Any,
    policy: Callable[..., Any],
    task_name: str,
    staging: Path,
    *,
    K: int,
    N: int,
    episodes: int,
    seed: int,
    size: int,
    pixels: bool,
    frame_stack: int,
    workers: int | None,
    success_timing: str,
    max_episode_steps: int | None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the episodes in recording environments that write `staging/<reset seed>.mp4`: (`run_episodes`' result,
    the wall times `startup_s` of the workers and their environments and `episodes_s` of the episodes)."""
    from runner.pixels import eval_pool

    start = time.perf_counter()
    recorders = RecordingEnvs(str(staging), size, pixels)
    pool = eval_pool(
        task_name, episodes, renders=True, frame_stack=frame_stack, make_env=recorders, workers=workers,
        success_timing=success_timing, max_episode_steps=max_episode_steps,
    )  # fmt: skip
    started = time.perf_counter()
    with pool:
        act = cell_actor(policy, agent, K, N, evaluation_key(seed))
        result = run_episodes(pool, act, episodes, seed)
    return result, {"startup_s": started - start, "episodes_s": time.perf_counter() - started}


def _move_into_place(
    staging: Path,
    videos: Path,
    result: dict[str, Any],
    timing: dict[str, float],
    existing: Sequence[Path],
    *,
    step: int,
    K: int,
    N: int,
    seed: int,
    episodes: int,
) -> list[dict[str, Any]]:
    """Each filmed episode's video moved from its reset seed's name in `staging` to its final name in `videos`,
    in episode order; one dict per video (`record_episodes`)."""
    per = result["per_episode"]
    out = []
    for i in range(episodes):
        path = videos / video_name(step, K, N, i)
        (staging / f"{episode_seed(seed, i)}.mp4").replace(path)
        out.append(
            {
                "path": path, "episode": i, "success": bool(per["success"][i]), "length": int(per["length"][i]),
                "frames": int(per["length"][i]) + 1, "replaced": path in existing, **timing,
            }
        )  # fmt: skip
    return out


def describe(videos: Sequence[dict[str, Any]]) -> list[str]:
    """One line per video, and the rendering rate."""
    lines = [
        f"{'replaced' if v.get('replaced') else 'wrote'} {v['path']} ({'success' if v['success'] else 'failure'}, "
        f"{v['length']} steps)"
        for v in videos
    ]
    if videos:
        frames = sum(v["frames"] for v in videos)
        v = videos[0]
        lines.append(
            f"rendered {frames} frames in {v['episodes_s']:.1f} s ({frames / v['episodes_s']:.1f} frames/s, "
            f"{len(videos)} environment{'s' if len(videos) > 1 else ''} at once; start-up {v['startup_s']:.1f} s)"
        )
    return lines
