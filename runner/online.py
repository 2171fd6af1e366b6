"""Offline-to-online fine-tuning: the online phase of a run (`sorl train ... --steps S --online-steps N`).

After the `steps` offline updates the agent acts in the task's environment, one environment step at a time: it
picks an action with its exploration policy (`Agent.exploration_actions`, K and N settable, default the largest K
and N = 1), steps the environment, adds the transition to a replay buffer (`sorl.replay`), and makes one update
on a batch drawn from the dataset and the buffer (uniformly over both, or half and half with
`--balanced-sampling`): the reference code's `online_steps` loop. The phase runs through the same Trainer as
offline training (`OnlineSeeds` is a `runner.multiseed.SeedRunner`), so logs, evaluations, validation,
checkpoints, signals and the non-finite check work the same way; the step count goes on from `steps` to
`steps + online_steps`.

Exact resume: a checkpoint of the online phase holds the agent, the data key, the buffer's transitions and the
episode count (`checkpoint_state`). Everything else is derived: the action key of global step `t` is folded from
the seed and `t`, episode `e` is reset with a seed derived from (seed, e), and the environment's state in the
middle of an episode is rebuilt by resetting it with that seed and replaying the episode's actions from the
buffer (MuJoCo is deterministic), checked against the stored observation. So a run killed in the online phase
ends bit for bit where an uninterrupted one would on the CPU.

`online.csv` gets one row per finished online episode: the update step it ended at, the environment steps so far,
the episode's index, return, success and length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from runner import evaluation, safety
from runner.evaluation import MakeEnv, episode_seed
from sorl.chunk import distinct_buffers
from sorl.errors import SorlError
from sorl.replay import make_buffer, online_update_jit

ONLINE_EPISODE_OFFSET = 2**31
"""Online episodes draw their reset seeds from indices above this, apart from the evaluation episodes'."""

OnEpisode = Callable[[int, dict[str, Any]], None]
"""(seed index, episode row) -> None: called when an online episode ends."""


def online_episode_seed(seed: int, episode: int) -> int:
    """The reset seed of online episode `episode` of seed `seed` (never one an evaluation uses)."""
    return episode_seed(seed, ONLINE_EPISODE_OFFSET + int(episode))


def action_key(seed: int, step: int) -> jax.Array:
    """The exploration key of the action taken before update `step + 1` (a function of the seed and the step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x0411E), step)


def _explore(agent: Any, observation: jax.Array, rng: jax.Array, K: int, N: int) -> jax.Array:
    return agent.exploration_actions(observation[None], rng, K=K, N=N)[0]


explore_jit = jax.jit(_explore, static_argnames=("K", "N"))
"""One exploration action for one observation, compiled per (K, N)."""


def empty_online_state(dataset: Mapping[str, jax.Array], capacity: int) -> dict[str, Any]:
    """The online part of a checkpoint before any online step (also the restore template's)."""
    return {"buffer": make_buffer(dataset, capacity), "episode": np.int64(0), "episode_start": np.int64(0)}


def online_template(layout: Mapping[str, Any]) -> dict[str, Any] | None:
    """The restore template of a checkpoint's online part from its layout (`Checkpointer.saved_layout`), or None
    for a checkpoint of the offline phase."""
    online = layout.get("online")
    if online is None:
        return None
    return {
        "buffer": {k: jnp.zeros(v.shape, v.dtype) for k, v in online["buffer"].items()},
        "episode": np.int64(0),
        "episode_start": np.int64(0),
    }


def resize_online_state(online: Mapping[str, Any], done: int, capacity: int, where: Any) -> dict[str, Any]:
    """A restored online state whose buffer holds `done` transitions (the checkpoint is `done` steps into the
    phase), with its buffer resized to `capacity` (a run continued with another --online-steps)."""
    buffer = online["buffer"]
    if int(buffer["size"]) != done:
        raise SorlError(
            f"{where}: its online phase began at step {int(buffer['size'])} updates before its checkpoint, not {done}; "
            "run it with the --steps it was started with"
        )
    rows = int(buffer["rewards"].shape[0])
    if rows != capacity:
        keep = min(rows, capacity)
        buffer = {
            k: v if k == "size" else jnp.zeros((capacity, *v.shape[1:]), v.dtype).at[:keep].set(v[:keep])
            for k, v in buffer.items()
        }
    return {**online, "buffer": buffer}


class _Seed:
    """One seed's online data collection: its environment, the buffer, the running episode."""

    def __init__(self, seed: int, agent: Any, data_rng: jax.Array, env: Any, online: Mapping[str, Any]):
        self.seed, self.env = seed, env
        buffer = {k: jnp.asarray(v) for k, v in online["buffer"].items()}
        # the update donates all three: no two leaves may share a device buffer
        self.agent, self.data_rng, self.buffer = distinct_buffers((agent, jnp.asarray(data_rng), buffer))
        self.episode = int(online["episode"])
        self.episode_start = int(online["episode_start"])
        self.observation, self.episode_return = self.rebuild_episode()

    def rebuild_episode(self) -> tuple[np.ndarray, float]:
        """Reset to the running episode's start and replay its actions from the buffer: (observation, return).

        A fresh phase (or one whose last episode just ended) is simply the episode's reset."""
        ob, _ = self.env.reset(seed=online_episode_seed(self.seed, self.episode))
        size = int(self.buffer["size"])
        actions = np.asarray(self.buffer["actions"][self.episode_start : size])
        ret = float(np.sum(np.asarray(self.buffer["rewards"][self.episode_start : size], np.float64)))
        for a in actions:
            ob, *_ = self.env.step(a)
        ob = np.asarray(ob, np.float32).reshape(-1)
        if size > self.episode_start and not np.array_equal(ob, np.asarray(self.buffer["next_observations"][size - 1])):
            print(
                f"warning: seed {self.seed}: replaying the running online episode did not reproduce its last "
                "observation; continuing from the replayed state (the run is no longer bit-identical to an "
                "uninterrupted one)",
                flush=True,
            )
        return ob, ret

    def state(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "episode": np.int64(self.episode), "episode_start": np.int64(self.episode_start)}


class OnlineSeeds:
    """The online phase of the seeds a Trainer trains together, each in turn (a `runner.multiseed.SeedRunner`).

    `states` are the seeds' training states at update `step` (>= the offline `steps`); a state without an
    `online` part starts the phase (empty buffer, episode 0). `capacity` is the buffer's size (the phase's
    length); `on_episode(i, row)` receives each finished episode's online.csv row.
    """

    def __init__(
        self,
        states: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        step: int,
        *,
        dataset: Mapping[str, jax.Array],
        capacity: int,
        task_name: str,
        success_timing: str,
        balanced: bool,
        K: int | None,
        N: int,
        make_env: MakeEnv | None = None,
        on_episode: OnEpisode | None = None,
    ):
        make_env = make_env or evaluation._make_env  # looked up now: the evaluation's default environments
        self.step, self.balanced, self.N, self.on_episode = int(step), balanced, int(N), on_episode
        self.seeds = []
        for st, seed in zip(states, seeds, strict=True):
            online = st.get("online") or empty_online_state(dataset, capacity)
            env = make_env(task_name, success_timing, None)
            self.seeds.append(_Seed(int(seed), st["agent"], st["data_rng"], env, online))
        max_K = self.seeds[0].agent.max_K
        self.K = int(K or max_K or 1)
        self.env_s = 0.0  # seconds in environment steps, for env steps/s
        self.env_steps = 0
        self._programs: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------------------ SeedRunner contract

    def key(self, n: int) -> tuple[str, int, int]:
        return ("online", len(self.seeds), n)

    def compile(self, dataset: Mapping[str, jax.Array], batch_size: int, n: int) -> Any:
        """The compiled update and exploration programs (once, whatever `n`: the Python loop steps the
        environment), with the chunk's length."""
        if self._programs is None:
            s = self.seeds[0]
            no_action = np.zeros(s.buffer["actions"].shape[1:], np.float32)
            transition = _transition(s.observation, no_action, 0.0, False, s.observation)
            update = online_update_jit.lower(
                s.agent, s.data_rng, dataset, s.buffer, transition, batch_size=batch_size, balanced=self.balanced
            ).compile()
            explore = explore_jit.lower(s.agent, jnp.asarray(s.observation), action_key(s.seed, 0), K=self.K, N=self.N)
            self._programs = (update, explore.compile())
        return (*self._programs, n)

    def run(self, compiled: Any, dataset: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """`n` online steps of every seed, one seed after another; the update infos stacked `[seeds, n]`."""
        update, explore, n = compiled
        per_seed = []
        for i, s in enumerate(self.seeds):
            infos = []
            for t in range(n):
                step = self.step + t
                action = np.asarray(explore(s.agent, jnp.asarray(s.observation), action_key(s.seed, step)))
                t0 = time.perf_counter()
                next_ob, reward, terminated, truncated, info = s.env.step(action)
                self.env_s += time.perf_counter() - t0
                next_ob = np.asarray(next_ob, np.float32).reshape(-1)
                transition = _transition(s.observation, action, reward, terminated, next_ob)
                s.agent, s.data_rng, s.buffer, upd = update(s.agent, s.data_rng, dataset, s.buffer, transition)
                infos.append(upd)
                s.episode_return += float(reward)
                s.observation = next_ob
                if terminated or truncated:
                    self.end_episode(i, s, step + 1, bool(info.get("success", False)))
            per_seed.append(jax.device_get(infos))
        self.step += n
        self.env_steps += n * len(self.seeds)
        keys = per_seed[0][0]
        return {k: np.stack([np.stack([np.asarray(d[k]) for d in infos]) for infos in per_seed]) for k in keys}

    def end_episode(self, i: int, s: _Seed, step: int, success: bool) -> None:
        size = int(s.buffer["size"])
        row = {
            "step": step,
            "env_steps": size,
            "episode": s.episode,
            "return": s.episode_return,
            "success": float(success),
            "length": size - s.episode_start,
        }
        if self.on_episode is not None:
            self.on_episode(i, row)
        s.episode, s.episode_start, s.episode_return = s.episode + 1, size, 0.0
        ob, _ = s.env.reset(seed=online_episode_seed(s.seed, s.episode))
        s.observation = np.asarray(ob, np.float32).reshape(-1)

    def agent(self, i: int) -> Any:
        return self.seeds[i].agent

    def data_rng(self, i: int) -> jax.Array:
        return self.seeds[i].data_rng

    def any_non_finite(self) -> bool:
        return safety.non_finite_leaf([s.agent for s in self.seeds]) is not None

    def checkpoint_state(self, i: int, step: int) -> dict[str, Any]:
        s = self.seeds[i]
        return {"agent": s.agent, "data_rng": s.data_rng, "step": np.int64(step), "online": s.state()}

    def close(self) -> None:
        for s in self.seeds:
            s.env.close()


def _transition(ob: np.ndarray, action: np.ndarray, reward: float, terminated: bool, next_ob: np.ndarray):
    """A transition as the buffer stores it; the mask cuts bootstrapping at a terminal state only (not at the time
    limit), as the dataset's masks do."""
    return {
        "observations": np.asarray(ob, np.float32),
        "actions": np.asarray(action, np.float32),
        "rewards": np.float32(reward),
        "masks": np.float32(1.0 - float(terminated)),
        "next_observations": np.asarray(next_ob, np.float32),
    }
