"""Offline-to-online fine-tuning: the online phase of a run (`sorl train ... --steps S --online-steps N`).

After the `steps` offline updates (none with `--steps 0`: a pure-online run, the reference's RLPD command) the
agent acts in the task's environment, one environment step at a time, as the reference's `online_steps` loop:
it picks an action with its acting policy (`Agent.exploration_actions` at (K, N) = (`--online-K`, `--online-N`),
default the agent's own policy, `runner.evaluation.policy_cell`: the reference calls `agent.sample_actions(
observations=ob, temperature=1, seed=key)` with the agent's own defaults, SORL's `inference_timesteps=1, n=1` and
IFQL's 10 flow steps and 32 candidates), steps the environment, adds the transition to the replay buffer
(`sorl.replay`: the reference's buffer of `max(--buffer-size, dataset + 1)` rows, or with `--balanced-sampling`
a separate one of `--buffer-size` rows), and makes one update on a batch drawn from it: add, then update. The
phase runs through the same Trainer as offline training (`OnlineSeeds` is a `runner.multiseed.SeedRunner`), so
logs, evaluations, validation, checkpoints, signals and the non-finite check work the same way; the step count goes
on from `steps` to `steps + online_steps`. A seed whose update goes non-finite stops acting at that update: no
further environment step or online.csv row (`stop`), as the offline phase stops a failed seed's updates.

Exact resume: a checkpoint of the online phase holds the agent, the data key, the buffer's ring, the episode count
and the running episode's actions and return (`checkpoint_state`). Everything else is derived: the action key of
global step `t` is folded from the seed and `t`, episode `e` is reset with a seed derived from (seed, e), and the
environment's state in the middle of an episode is rebuilt by resetting it with that seed and replaying the
episode's actions (MuJoCo is deterministic), checked against the stored observation. So a run killed in the online
phase ends bit for bit where an uninterrupted one would on the CPU, whether or not its buffer has wrapped.

`online.csv` gets one row per finished online episode: the update step it ended at, the environment steps so far,
the episode's index, return, success and length.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from runner import evaluation, safety
from runner.evaluation import MakeEnv, episode_seed, policy_cell
from sorl.agent import Agent, K_rule
from sorl.chunk import distinct_buffers
from sorl.errors import SorlError
from sorl.inference import validate_K_N
from sorl.replay import (
    REFERENCE_BUFFER_SIZE,
    capacity_of,
    make_buffer,
    online_update,
    online_update_jit,
    ring_capacity,
    virtual_size,
)
from sorl.seeds import ONLINE_ACTION_STREAM, ONLINE_EPISODE_OFFSET

POSTFIX_EPISODES = 10
"""The progress bar shows the mean success and return of this many latest online episodes (all seeds)."""

OnEpisode = Callable[[int, dict[str, Any]], None]
"""(seed index, episode row) -> None: called when an online episode ends."""


def online_episode_seed(seed: int, episode: int) -> int:
    """The reset seed of online episode `episode` of seed `seed` (never one an evaluation uses)."""
    return episode_seed(seed, ONLINE_EPISODE_OFFSET + int(episode))


def action_key(seed: int, step: int) -> jax.Array:
    """The exploration key of the action taken before update `step + 1` (a function of the seed and the step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), ONLINE_ACTION_STREAM), step)


def _explore(agent: Any, observation: jax.Array, rng: jax.Array, K: int, N: int) -> jax.Array:
    return agent.exploration_actions(observation[None], rng, K=K, N=N)[0]


explore_jit = jax.jit(_explore, static_argnames=("K", "N"))
"""One exploration action for one observation, compiled per (K, N)."""


# ------------------------------------------------------------------------------------ settings


def acting_policy(settings: Any, agent_cls: type = Agent) -> tuple[int, int]:
    """The online phase's acting (K, N): `--online-K` / `--online-N`, else the agent's own policy
    (`runner.evaluation.policy_cell`: IFQL's (10, 32), SORL's (1, 1) as the released code's). `agent_cls` defaults
    to the contract's own defaults, (1, 1)."""
    K, N = policy_cell(agent_cls)
    return int(settings.online_K or K), int(settings.online_N or N)


def buffer_size(settings: Any) -> int:
    """`--buffer-size`, else the reference's 2,000,000."""
    return int(settings.buffer_size or REFERENCE_BUFFER_SIZE)


def online_capacity(dataset: Mapping[str, Any], settings: Any) -> int:
    """Rows of each seed's ring buffer for these settings (`sorl.replay.ring_capacity`)."""
    n_data = int(dataset["rewards"].shape[0])
    return ring_capacity(n_data, int(settings.online_steps or 0), buffer_size(settings), settings.balanced_sampling)


def agent_max_K(agent_cls: type, config: Any) -> int | None:
    """The largest K an agent of this class and config accepts, from its abstract shape (nothing is initialised)."""
    try:
        return _agent_max_K(agent_cls, config)
    except TypeError:  # an unhashable config: not cached
        return _agent_max_K.__wrapped__(agent_cls, config)


@functools.lru_cache(maxsize=32)
def _agent_max_K(agent_cls: type, config: Any) -> int | None:

    def create():
        zeros = jnp.zeros((1, 1), jnp.float32)
        return agent_cls.create(jax.random.PRNGKey(0), zeros, zeros, config)

    try:
        return jax.eval_shape(create).max_K
    except Exception:  # noqa: BLE001 - an agent that cannot be traced abstractly: K is checked when it is created
        return None


def check_online_settings(settings: Any, agent_cls: type, config: Any, name: str | None = None) -> None:
    """The settings that need the agent, checked before anything is loaded or written: every K of the evaluation grid
    and of the filmed cell against the agent's rule (`Agent.check_K`; its largest K is checked once the agent is
    built, `Trainer.resume`), and the online phase's acting K and N, within its largest K too. The settings' own checks
    (`TrainSettings.validate`) come first. `name`: the agent's registry name.
    """
    evaluation.validate_grid(settings.Ks, settings.Ns, None, agent_cls, name)
    if settings.video_episodes:
        evaluation.validate_grid(settings.video_cell[:1], settings.video_cell[1:], None, agent_cls, name)
    if not settings.online_steps:
        return
    K, N = acting_policy(settings, agent_cls)
    max_K = agent_max_K(agent_cls, config)
    if not K_rule(agent_cls).takes_K(K):  # the rule itself, as the flag spells it
        K_rule(agent_cls).check_K(K, max_K, name=name, what=f"--online-K {K}: the acting policy's sampling steps")
    try:
        validate_K_N(K, N, max_K, agent_cls, name)
    except SorlError as e:
        raise SorlError(f"--online-K {K} --online-N {N}: {e}") from None


def recorded_online(settings: Any, agent_cls: type = Agent) -> dict[str, Any]:
    """config.json's `online` section: the phase's length, sampling, buffer and acting (K, N), as used by an agent
    of `agent_cls` (`acting_policy`)."""
    K, N = acting_policy(settings, agent_cls)
    return {
        "steps": settings.online_steps,
        "balanced_sampling": settings.balanced_sampling,
        "K": K,
        "N": N,
        "buffer_size": buffer_size(settings),
    }


def check_same_online(where: Any, previous: Mapping[str, Any], settings: Any, agent_cls: type = Agent) -> None:
    """Refuse to continue (or call complete) a run whose recorded online phase differs from `settings`' in anything
    but its length: the acting (K, N) (the flags' or `agent_cls`'s own policy, as recorded), the sampling, the
    buffer size, or the offline steps it began after.

    A run without a recorded online phase may be continued with `--online-steps` (its offline phase is the same)."""
    before = previous.get("online")
    if not before or not settings.online_steps:
        return
    now = recorded_online(settings, agent_cls)
    flags = {
        "K": "--online-K",
        "N": "--online-N",
        "balanced_sampling": "--balanced-sampling",
        "buffer_size": "--buffer-size",
    }
    diffs = []
    for key, flag in flags.items():
        if key in before and before[key] is not None and before[key] != now[key]:
            diffs.append((flag, before[key], now[key]))
        elif key == "K" and key in before and before[key] is None:  # written before the acting K was recorded
            diffs.append((flag, "the agent's largest (the old default)", now[key]))
    offline = (previous.get("train") or {}).get("steps")
    if offline is not None and offline != settings.steps:
        diffs.append(("--steps", offline, settings.steps))
    if diffs:
        what = ", ".join(f"{flag} {old} (now {new})" for flag, old, new in diffs)
        raise SorlError(
            f"run directory {where} holds a run whose online phase was set up with {what}; rerun with its settings "
            "to continue it, or choose another --run-dir (or delete that one) for a new run"
        )


# ------------------------------------------------------------------------------------ state


def empty_online_state(dataset: Mapping[str, jax.Array], capacity: int) -> dict[str, Any]:
    """The online part of a checkpoint before any online step (also the restore template's)."""
    action_dim = int(dataset["actions"].shape[-1])
    return {
        "buffer": make_buffer(dataset, capacity),
        "episode": np.int64(0),
        "episode_start": np.int64(0),
        "episode_actions": np.zeros((1, action_dim), np.float32),
        "episode_return": np.float64(0.0),
    }


def online_template(layout: Mapping[str, Any]) -> dict[str, Any] | None:
    """The restore template of a checkpoint's online part from its layout (`Checkpointer.saved_layout`), or None
    for a checkpoint of the offline phase. (Checkpoints written before the running episode was saved lack
    `episode_actions` and `episode_return`: their episode is replayed from the buffer, which never wrapped.)"""
    online = layout.get("online")
    if online is None:
        return None
    out: dict[str, Any] = {
        "buffer": {k: jnp.zeros(v.shape, v.dtype) for k, v in online["buffer"].items()},
        "episode": np.int64(0),
        "episode_start": np.int64(0),
    }
    if "episode_actions" in online:
        out["episode_actions"] = np.zeros(online["episode_actions"].shape, online["episode_actions"].dtype)
    if "episode_return" in online:
        out["episode_return"] = np.float64(0.0)
    return out


def resize_online_state(online: Mapping[str, Any], done: int, capacity: int, where: Any) -> dict[str, Any]:
    """A restored online state whose buffer holds `done` transitions (the checkpoint is `done` steps into the
    phase), with its ring resized to `capacity` (a run continued with another --online-steps: the ring has not
    wrapped, since a ring that wrapped is the reference buffer's full size, which the new length cannot change)."""
    buffer = online["buffer"]
    if int(buffer["size"]) != done:
        raise SorlError(
            f"{where}: its online phase began at step {int(buffer['size'])} updates before its checkpoint, not {done}; "
            "run it with the --steps it was started with"
        )
    rows = capacity_of(buffer)
    if rows != capacity:
        if done > min(rows, capacity):
            raise SorlError(
                f"{where}: its replay buffer of {rows} rows cannot become one of {capacity} rows after {done} online "
                "steps; rerun it with the --online-steps and --buffer-size it was started with"
            )
        buffer = {
            k: v if k == "size" else jnp.zeros((capacity, *v.shape[1:]), v.dtype).at[:done].set(v[:done])
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
        self.acting = env is not None
        self.stopped_at: int | None = None  # the update at which it stopped acting (non-finite)
        size = int(self.buffer["size"])
        if "episode_actions" in online:
            actions = np.asarray(online["episode_actions"], np.float32)[: size - self.episode_start]
            self.episode_return = float(online["episode_return"])
        else:  # an older checkpoint: the episode from the buffer (which never wrapped then)
            actions = np.asarray(self.buffer["actions"][self.episode_start : size], np.float32)
            rewards = np.asarray(self.buffer["rewards"][self.episode_start : size], np.float64)
            self.episode_return = float(np.sum(rewards))
        self.episode_actions = list(actions)
        self.observation = self.rebuild_episode() if self.acting else None

    def rebuild_episode(self) -> np.ndarray:
        """Reset to the running episode's start and replay its actions: the observation it is at.

        A fresh phase (or one whose last episode just ended) is simply the episode's reset."""
        ob, _ = self.env.reset(seed=online_episode_seed(self.seed, self.episode))
        for a in self.episode_actions:
            ob, *_ = self.env.step(a)
        ob = np.asarray(ob, np.float32).reshape(-1)
        size = int(self.buffer["size"])
        if self.episode_actions:
            stored = np.asarray(self.buffer["next_observations"][(size - 1) % capacity_of(self.buffer)])
            if not np.array_equal(ob, stored):
                print(
                    f"warning: seed {self.seed}: replaying the running online episode did not reproduce its last "
                    "observation; continuing from the replayed state (the run is no longer bit-identical to an "
                    "uninterrupted one)",
                    flush=True,
                )
        return ob

    def state(self) -> dict[str, Any]:
        action_dim = int(self.buffer["actions"].shape[-1])
        actions = np.stack(self.episode_actions) if self.episode_actions else np.zeros((1, action_dim), np.float32)
        return {
            "buffer": self.buffer,
            "episode": np.int64(self.episode),
            "episode_start": np.int64(self.episode_start),
            "episode_actions": actions.astype(np.float32),
            "episode_return": np.float64(self.episode_return),
        }


class OnlineSeeds:
    """The online phase of the seeds a Trainer trains together, each in turn (a `runner.multiseed.SeedRunner`).

    `states` are the seeds' training states at update `step` (>= the offline `steps`); a state without an
    `online` part starts the phase (empty buffer, episode 0). `online_steps`, `buffer_size` and `balanced` size the
    buffer (`sorl.replay`); `K`, `N` are the acting policy's (`acting_policy`; None: the contract's 1, 1);
    `on_episode(i, row)` receives each finished episode's online.csv row. `live[i]` False (a seed that failed
    before the phase) makes seed `i` hold its state without an environment and never act; `say` prints the line
    that opens the phase.
    """

    def __init__(
        self,
        states: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        step: int,
        *,
        dataset: Mapping[str, jax.Array],
        online_steps: int,
        task_name: str,
        success_timing: str,
        balanced: bool,
        K: int | None,
        N: int | None,
        buffer_size: int | None = None,
        make_env: MakeEnv | None = None,
        on_episode: OnEpisode | None = None,
        live: Sequence[bool] | None = None,
        say: Callable[[str], None] | None = None,
    ):
        make_env = make_env or evaluation._make_env  # looked up now: the evaluation's default environments
        self.step, self.balanced, self.on_episode = int(step), balanced, on_episode
        default_K, default_N = policy_cell(Agent)
        self.K, self.N = int(K or default_K), int(N or default_N)
        n_data = int(dataset["rewards"].shape[0])
        size = int(buffer_size or REFERENCE_BUFFER_SIZE)
        self.capacity = ring_capacity(n_data, online_steps, size, balanced)
        self.total = virtual_size(n_data, size, balanced)
        live = [True] * len(states) if live is None else list(live)
        self.seeds = []
        for st, seed, alive in zip(states, seeds, live, strict=True):
            online = st.get("online") or empty_online_state(dataset, self.capacity)
            env = make_env(task_name, success_timing, None) if alive else None
            self.seeds.append(_Seed(int(seed), st["agent"], st["data_rng"], env, online))
        self.env_s = 0.0  # seconds in environment steps, for env steps/s
        self.env_steps = 0
        self.recent: list[tuple[float, float]] = []  # (success, return) of the latest episodes, all seeds
        self._programs: tuple[Any, Any] | None = None
        self._no_info: dict[str, np.ndarray] = {}
        if say is not None:
            say(self.describe(step, online_steps, n_data, size, success_timing))

    def describe(self, step: int, online_steps: int, n_data: int, size: int, success_timing: str) -> str:
        """The line that opens (or resumes) the phase: where, how it acts, its buffer, its reward timing."""
        layout = (
            f"half of each batch from the dataset, half from a buffer of {size} online transitions"
            if self.balanced
            else f"batches uniform over a buffer of {self.total} rows that starts as the dataset ({n_data})"
        )
        timing = "the next state (the reference's)" if success_timing == "post" else "the state before the action"
        first = step - int(self.seeds[0].buffer["size"])
        where = f"updates {first} to {first + online_steps}" + (f", continuing at {step}" if step > first else "")
        return (
            f"online phase: {where}, acting with K={self.K}, N={self.N}; {layout}; rewards and success from {timing} "
            f"(success_timing={success_timing})"
        )

    # ------------------------------------------------------------------------------ SeedRunner contract

    def key(self, n: int) -> tuple[str, int, int]:
        return ("online", len(self.seeds), n)

    def _first_acting(self) -> _Seed:
        return next((s for s in self.seeds if s.acting), self.seeds[0])

    def compile(self, dataset: Mapping[str, jax.Array], batch_size: int, n: int) -> Any:
        """The compiled update and exploration programs (once, whatever `n`: the Python loop steps the
        environment), with the chunk's length."""
        if self._programs is None:
            s = self._first_acting()
            ob = s.observation if s.observation is not None else np.zeros(s.buffer["observations"].shape[1:])
            ob = np.asarray(ob, np.float32)
            no_action = np.zeros(s.buffer["actions"].shape[1:], np.float32)
            transition = _transition(ob, no_action, 0.0, False, ob)
            update = online_update_jit.lower(
                s.agent, s.data_rng, dataset, s.buffer, transition, batch_size=batch_size, balanced=self.balanced,
                total=self.total,
            ).compile()  # fmt: skip
            explore = explore_jit.lower(s.agent, jnp.asarray(ob), action_key(s.seed, 0), K=self.K, N=self.N)
            self._programs = (update, explore.compile())
            info = jax.eval_shape(
                functools.partial(online_update, batch_size=batch_size, balanced=self.balanced, total=self.total),
                s.agent, s.data_rng, dataset, s.buffer, transition,
            )[3]  # fmt: skip
            self._no_info = {k: np.full(v.shape, np.nan, v.dtype) for k, v in info.items()}
        return (*self._programs, n)

    def run(self, compiled: Any, dataset: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """`n` online steps of every acting seed, one seed after another; the update infos stacked `[seeds, n]`.

        A seed stops acting at the first update whose logged values are not finite (or before an action that is
        not): its remaining entries repeat its last info (NaN where it has none), which the Trainer's non-finite
        check reports at that update."""
        update, explore, n = compiled
        per_seed: list[list[dict[str, Any]] | None] = []
        for i, s in enumerate(self.seeds):
            if not s.acting:
                per_seed.append(None)
                continue
            infos: list[dict[str, Any]] = []
            for t in range(n):
                step = self.step + t
                action = np.asarray(explore(s.agent, jnp.asarray(s.observation), action_key(s.seed, step)))
                if not np.all(np.isfinite(action)):
                    self.stop(i, step + 1)
                    break
                t0 = time.perf_counter()
                next_ob, reward, terminated, truncated, info = s.env.step(action)
                self.env_s += time.perf_counter() - t0
                self.env_steps += 1
                next_ob = np.asarray(next_ob, np.float32).reshape(-1)
                transition = _transition(s.observation, action, reward, terminated, next_ob)
                s.agent, s.data_rng, s.buffer, upd = update(s.agent, s.data_rng, dataset, s.buffer, transition)
                upd = jax.device_get(upd)
                infos.append(upd)
                s.episode_actions.append(action.astype(np.float32))
                s.episode_return += float(reward)
                s.observation = next_ob
                if not all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in upd.values()):
                    self.stop(i, step + 1)
                    break
                if terminated or truncated:
                    self.end_episode(i, s, step + 1, bool(info.get("success", False)))
            per_seed.append(infos)
        self.step += n
        out = []
        for infos in per_seed:
            infos = infos or []
            out.append(infos + [infos[-1] if infos else self._no_info] * (n - len(infos)))
        return {k: np.stack([np.stack([np.asarray(d[k]) for d in infos]) for infos in out]) for k in self._no_info}

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
        self.recent = [*self.recent, (float(success), s.episode_return)][-POSTFIX_EPISODES:]
        s.episode, s.episode_start, s.episode_return, s.episode_actions = s.episode + 1, size, 0.0, []
        ob, _ = s.env.reset(seed=online_episode_seed(s.seed, s.episode))
        s.observation = np.asarray(ob, np.float32).reshape(-1)

    def stop(self, i: int, step: int | None = None) -> None:
        """Seed `i` acts no more (it failed at update `step`): no environment step, no online.csv row."""
        s = self.seeds[i]
        if s.acting:
            s.acting = False
            s.stopped_at = step
            s.env.close()

    def stopped_at(self, seed: int) -> int | None:
        """The update at which seed `seed` stopped acting, or None."""
        return next((s.stopped_at for s in self.seeds if s.seed == seed), None)

    def postfix(self) -> dict[str, str]:
        """The progress bar's online part: mean success and return of the latest episodes (none yet: nothing)."""
        if not self.recent:
            return {}
        success, ret = np.mean([r[0] for r in self.recent]), np.mean([r[1] for r in self.recent])
        return {"online_succ": f"{100 * success:.0f}%", "online_ret": f"{ret:.3g}"}

    def agent(self, i: int) -> Any:
        return self.seeds[i].agent

    def data_rng(self, i: int) -> jax.Array:
        return self.seeds[i].data_rng

    def any_non_finite(self) -> bool:
        return safety.non_finite_leaf([s.agent for s in self.seeds if s.acting]) is not None

    def checkpoint_state(self, i: int, step: int) -> dict[str, Any]:
        s = self.seeds[i]
        return {"agent": s.agent, "data_rng": s.data_rng, "step": np.int64(step), "online": s.state()}

    def close(self) -> None:
        for s in self.seeds:
            if s.acting:
                s.env.close()


def online_line(results: Mapping[str, Any]) -> str | None:
    """The end-of-run summary's online line from results.json's `online` section (None without one)."""
    on = results.get("online")
    if not on:
        return None
    if not on.get("episodes"):
        return f"online: {on['steps']} steps, acting K={on['K']} N={on['N']}, no episode finished"
    return (
        f"online: {on['steps']} steps, acting K={on['K']} N={on['N']}: {on['episodes']} episodes, success "
        f"{100 * on['success']:.1f}% (last tenth {100 * on['last_10pct_success']:.1f}%), mean return {on['return']:.3g}"
    )


def _transition(ob: np.ndarray, action: np.ndarray, reward: float, terminated: bool, next_ob: np.ndarray):
    """A transition as the buffer stores it; the mask cuts bootstrapping at a terminal state only (not at the time
    limit), as the dataset's masks do and the reference's `masks=1.0 - terminated`."""
    return {
        "observations": np.asarray(ob, np.float32),
        "actions": np.asarray(action, np.float32),
        "rewards": np.float32(reward),
        "masks": np.float32(1.0 - float(terminated)),
        "next_observations": np.asarray(next_ob, np.float32),
    }
