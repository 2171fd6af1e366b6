"""What a training run does differently on pixel-based (visual-*) tasks, and frame stacking for any task.

- `pipeline`: the run's frame stack and augmentation probability, from `--frame-stack` / `--p-aug` or, when they
  are not given, the released pixel commands' values on pixel tasks (`envs.registry.PIXEL_FRAME_STACK`,
  `PIXEL_P_AUG`) and none on state tasks; with the checks that say, in one line, what cannot be combined.
  Both are training-loop options (`runner.settings.TrainSettings`), as `--frame_stack` / `--p_aug` are flags
  of the reference's `main.py`, not of its agent configs; the encoder is an agent setting (`--agent.encoder`).
- `FrameStack` / `FrameStackedEnvs`: the evaluation environments' observations stacked as the training batches
  are (`sorl.data`): the last F observations, frame-major and flattened, the first one repeated at a reset (the
  reference's `FrameStackWrapper`). They wrap each environment inside the evaluation worker process.
- `example_observation`: the shape the agent's networks are initialised with (one stacked, flattened row).
- `run_observations` / `eval_pool`: a trained run's observations (pixels? frames stacked?) read back from its
  config.json, and the evaluation environments that match them: what `sorl eval` and the videos use, so a run is
  evaluated after training exactly as its training evaluated it.

Pixel observations are rendered in the evaluation workers (always spawned processes, whose MUJOCO_GL is the
backend `envs.rendering.gl_backend` found), never in the training process.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.registry import PIXEL_FRAME_STACK, PIXEL_P_AUG, EnvSpec
from runner.evaluation import EnvPool, MakeEnv, _make_env
from runner.settings import TrainSettings, check_video_size
from sorl.data import PLAIN, Sampling
from sorl.errors import SorlError


def pipeline(spec: EnvSpec, settings: TrainSettings, config: Any) -> Sampling:
    """How the run's batches are drawn: frame stack, augmentation and (pixel tasks) the frame shape."""
    from envs.checks import PIXEL_OBSERVATION

    frame_stack = settings.frame_stack or (PIXEL_FRAME_STACK if spec.pixels else 1)
    p_aug = float(settings.p_aug if settings.p_aug is not None else (PIXEL_P_AUG if spec.pixels else 0.0))
    if p_aug and not spec.pixels:
        raise SorlError(f"--p-aug shifts images: {spec.name} has state observations (drop --p-aug)")
    if spec.pixels and getattr(config, "encoder", None) is None:
        raise SorlError(
            f"{spec.name} has pixel observations: give the agent an image encoder (--agent.encoder=impala_small, "
            "the default on pixel tasks; it was overridden with none)"
        )
    if (spec.pixels or frame_stack > 1) and settings.online_steps:
        what = "pixel tasks" if spec.pixels else "--frame-stack"
        raise SorlError(f"--online-steps is not supported with {what} yet: train offline only")
    if spec.pixels and settings.video_episodes:
        check_video_size(settings.video_size, pixels=True)
    if frame_stack == 1 and p_aug == 0.0:
        return PLAIN  # exactly the sampler of a run without these options
    return Sampling(frame_stack=frame_stack, p_aug=p_aug, image_shape=PIXEL_OBSERVATION if spec.pixels else None)


def example_observation(observations: np.ndarray, frame_stack: int) -> np.ndarray:
    """One float32 row shaped like the training batches' observations: flattened, `frame_stack` frames."""
    row = np.asarray(observations[:1], np.float32).reshape(1, -1)
    return np.tile(row, (1, frame_stack)) if frame_stack > 1 else row


class FrameStack:
    """An environment whose observation is its last `frames` observations, flattened and concatenated
    (oldest first); after a reset every slot holds the reset observation."""

    def __init__(self, env: Any, frames: int):
        import gymnasium

        self.env, self.frames = env, frames
        self._obs: deque[np.ndarray] = deque(maxlen=frames)
        space = env.observation_space
        shape = (frames * int(np.prod(space.shape)),)
        self.observation_space = gymnasium.spaces.Box(
            np.tile(np.ravel(np.broadcast_to(space.low, space.shape)), frames),
            np.tile(np.ravel(np.broadcast_to(space.high, space.shape)), frames),
            shape,
            space.dtype,
        )
        self.action_space = env.action_space

    def _stacked(self) -> np.ndarray:
        return np.concatenate([np.ravel(o) for o in self._obs])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        ob, info = self.env.reset(seed=seed, options=options)
        self._obs.extend([ob] * self.frames)
        return self._stacked(), info

    def step(self, action: np.ndarray):
        ob, reward, terminated, truncated, info = self.env.step(action)
        self._obs.append(ob)
        return self._stacked(), reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped


class FrameStackedEnvs:
    """A picklable `MakeEnv`: `make_env`'s environments (default: the task's OGBench one) wrapped in `FrameStack`."""

    def __init__(self, frames: int, make_env: MakeEnv | None = None):
        self.frames, self.make_env = frames, make_env or _make_env

    def __call__(self, task_name: str, success_timing: str, max_episode_steps: int | None) -> FrameStack:
        return FrameStack(self.make_env(task_name, success_timing, max_episode_steps), self.frames)


def run_observations(cfg: Mapping[str, Any]) -> tuple[bool, int]:
    """(pixels, frame_stack) of a trained run, from its config.json: whether its task renders its observations,
    and the frames each observation stacks (1 for runs recorded before frame stacking existed)."""
    from envs.registry import resolve_task

    if "task" not in cfg:
        raise SorlError("the run's config.json is corrupt (no 'task'); retrain the run")
    return resolve_task(cfg["task"]).env.pixels, int(cfg.get("train", {}).get("frame_stack") or 1)


def eval_pool(
    task_name: str,
    num_envs: int,
    *,
    renders: bool,
    frame_stack: int,
    make_env: MakeEnv | None = None,
    **pool_kwargs: Any,
) -> EnvPool:
    """`num_envs` evaluation environments of `task_name` whose observations are the ones the agent trained on:
    `frame_stack` frames stacked in the workers. Environments that render (pixel tasks, recorders) run in spawned
    workers with the headless backend found here (`envs.rendering`). `make_env` builds the unstacked environment
    (default: the task's OGBench one); `pool_kwargs` go to `EnvPool` (workers, success_timing, max_episode_steps)."""
    if frame_stack > 1:
        make_env = FrameStackedEnvs(frame_stack, make_env)
    render = contextlib.nullcontext()
    if renders:
        from envs.rendering import gl_backend, gl_environment

        render = gl_environment(gl_backend())
    with render:  # the spawned workers copy MUJOCO_GL when they start
        return EnvPool(task_name, num_envs, make_env=make_env, spawn_always=renders, **pool_kwargs)
