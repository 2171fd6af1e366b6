"""Several seeds in one process and one compiled program: `sorl train --seeds 1-8`.

The seeds' training states are stacked on a leading axis and trained by `train_chunk` vmapped over the agent
and the data key, with the dataset shared (one copy in memory, whatever the number of seeds). The agent's
step count is *not* batched: every seed is at the same step, and keeping it a scalar keeps what is derived
from it a scalar too. That matters for SORL: the training loop draws K from a schedule keyed by the step
alone (`SORLAgent.train_update`), so the `lax.switch` over K stays a real switch and each update runs the one
drawn K for all seeds — with a per-seed K, vmap would turn the switch into a select that runs every branch
(1 + 2 + 4 + 8 sampler passes instead of 3.75 on average). ReBRAC's actor-every-other-step `lax.cond` stays a
real cond for the same reason.

The loop around the chunks (logs, checkpoints, evaluation, resume, signals, failures) is the single-seed run's
own, `runner.train.Trainer`; this module adds the seeds' parsing and directories and the vmapped chunk.

Strategies (`resolve_strategy`): 'vmap' is the above; 'loop' advances the seeds of each chunk one after another
through the single-seed compiled chunk (`SequentialSeeds`), which on a CPU is as fast (one seed's
matmuls already fill the cores) and still shares one compilation, one dataset copy and one evaluation pool.
'auto' (the default) picks vmap on accelerators and loop on the CPU.

Each seed gets the run directory a single-seed run would get (`runs/<task>/<agent>/seed<S>`, or
`RUN_DIR/seed<S>` with `--run-dir RUN_DIR`, or `RUN_DIR` with `{seed}` replaced) and the same content as
`sorl train --seed S`: config.json, train.csv, eval.csv, the checkpoints and results.json are equal up to float
rounding (batched matmuls round differently) and the timing fields. A single-seed run continues a directory
written here and vice versa. Seeds whose directory is complete are skipped; seeds resuming from different
checkpoints are trained as one batch per starting step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from runner import runs, safety
from sorl.chunk import compile_chunk, distinct_buffers, train_chunk
from sorl.data import PLAIN, Sampling
from sorl.errors import SorlError

# ------------------------------------------------------------------------------------------ seeds


def parse_seeds(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """'1-8' -> (1, ..., 8); '1,3,5' -> (1, 3, 5); '0-2,7' -> (0, 1, 2, 7). Duplicates dropped, order kept."""
    if isinstance(text, bool):
        raise SorlError(f"--seeds {text!r}: expected seeds like 1-8 or 1,3,5")
    if isinstance(text, (int, np.integer)):
        items: list[int] = [int(text)]
    elif isinstance(text, str):
        items = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise SorlError(f"--seeds {text!r}: expected non-negative seeds like 1-8 or 1,3,5")
            lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
            if hi < lo:
                raise SorlError(f"--seeds {text!r}: the range {lo}-{hi} is empty (write it low-high)")
            items.extend(range(lo, hi + 1))
    else:
        items = list(text)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in items):
            raise SorlError(f"--seeds {text!r}: expected non-negative integer seeds")
    out: list[int] = []
    for s in items:
        if s < 0:
            raise SorlError(f"--seeds: seed {s} must be a non-negative integer")
        if s not in out:
            out.append(s)
    if not out:
        raise SorlError("--seeds: expected at least one seed, e.g. 1-8")
    return tuple(out)


def seed_run_dir(run_dir: str | Path | None, task_name: str, agent: str, seed: int) -> Path:
    """The run directory of `seed`: the single-seed default, RUN_DIR/seed<S>, or RUN_DIR with {seed} filled in."""
    if run_dir is None:
        return runs.default_run_dir(task_name, agent, seed)
    text = str(run_dir)
    if "{seed}" in text:
        return Path(text.replace("{seed}", str(seed)))
    return Path(run_dir) / runs.seed_dir_name(seed)


# ------------------------------------------------------------------------------ stacked training states


def _has_shared_step(agent: Any) -> bool:
    """Agents with a scalar `step` field keep it unbatched (the same for every seed)."""
    return (
        dataclasses.is_dataclass(agent)
        and any(f.name == "step" for f in dataclasses.fields(agent))
        and hasattr(agent.step, "shape")
        and tuple(agent.step.shape) == ()
    )


def agent_axes(agent: Any) -> Any:
    """vmap axes of a stacked agent: 0 for every leaf, None (shared) for the step count."""
    if _has_shared_step(agent):
        return jax.tree.map(lambda _: 0, agent.replace(step=None)).replace(step=None)
    return jax.tree.map(lambda _: 0, agent)


def stack_agents(agents: Sequence[Any]) -> Any:
    """Seeds' agents as one pytree with a leading seed axis (the step count shared)."""
    first = agents[0]
    if _has_shared_step(first):
        steps = {int(a.step) for a in agents}
        if len(steps) != 1:
            raise ValueError(f"seeds trained together must be at the same step, got {sorted(steps)}")
        body = jax.tree.map(lambda *xs: jnp.stack(xs), *[a.replace(step=None) for a in agents])
        return body.replace(step=jnp.array(first.step, copy=True))  # its own buffer: the chunk donates it
    return jax.tree.map(lambda *xs: jnp.stack(xs), *agents)


def unstack_agent(agents: Any, i: int) -> Any:
    """Seed `i`'s agent out of a stacked one: the same pytree a single-seed run holds."""
    if _has_shared_step(agents):
        return jax.tree.map(lambda x: x[i], agents.replace(step=None)).replace(step=agents.step)
    return jax.tree.map(lambda x: x[i], agents)


def train_chunk_seeds(
    agents: Any,
    data_rngs: jax.Array,
    dataset: Mapping[str, jax.Array],
    *,
    batch_size: int,
    num_updates: int,
    sampling: Sampling = PLAIN,
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """`train_chunk` for stacked seeds: (agents, data_rngs, infos [seeds, num_updates]); dataset shared."""
    axes = agent_axes(agents)
    chunk = partial(train_chunk, batch_size=batch_size, num_updates=num_updates, sampling=sampling)
    return jax.vmap(chunk, in_axes=(axes, 0, None), out_axes=(axes, 0, 0))(agents, data_rngs, dataset)


train_chunk_seeds_jit = jax.jit(
    train_chunk_seeds, static_argnames=("batch_size", "num_updates", "sampling"), donate_argnums=(0, 1)
)
"""`train_chunk_seeds` compiled, the stacked agents and data keys donated."""


def compile_chunk_seeds(
    agents: Any,
    data_rngs: jax.Array,
    dataset: Mapping[str, jax.Array],
    batch_size: int,
    n: int,
    sampling: Sampling = PLAIN,
):
    """Ahead-of-time compiled `train_chunk_seeds`: call it as `chunk(agents, data_rngs, dataset)`."""
    lowered = train_chunk_seeds_jit.lower(
        agents, data_rngs, dataset, batch_size=batch_size, num_updates=n, sampling=sampling
    )
    return lowered.compile()


STRATEGIES = ("auto", "vmap", "loop")


def resolve_strategy(strategy: str) -> str:
    """'vmap' or 'loop' for `strategy`; 'auto' is 'vmap' on accelerators and 'loop' on the CPU.

    On a CPU the single-seed update's matmuls already keep every core busy, so a vmapped batch of seeds is no
    faster than running them one after another and measured a little slower (`sorl bench`, seeds section);
    'loop' runs the seeds of each chunk one after another through the single-seed compiled chunk instead (one
    compilation and one copy of the dataset all the same). On a GPU the vmapped batch fills the device.
    """
    if strategy not in STRATEGIES:
        raise SorlError(f"seeds strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    return strategy


class SeedRunner(Protocol):
    """How a Trainer advances the training states of the seeds it trains together. Two implementations:
    `SequentialSeeds` (the single-seed compiled chunk, each seed in turn; with one seed, the plain run) and
    `VmappedSeeds` (one vmapped chunk for all seeds)."""

    def compile(self, dataset: Mapping[str, jax.Array], batch_size: int, n: int) -> Any:
        """The compiled chunk of `n` updates for these states."""

    def key(self, n: int) -> tuple[str, int, int]:
        """The compiled-chunk cache key (runners with equal keys share a compiled chunk)."""

    def run(self, compiled: Any, dataset: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """One chunk for every seed; the infos stacked `[seeds, n]`."""

    def agent(self, i: int) -> Any:
        """Seed `i`'s agent, as a single-seed run holds it."""

    def data_rng(self, i: int) -> jax.Array: ...

    def any_non_finite(self) -> bool:
        """Whether any seed's state holds a NaN or an infinity."""

    def checkpoint_state(self, i: int, step: int) -> dict[str, Any]:
        """Seed `i`'s training state at update `step`, as its checkpoint stores it."""


class SequentialSeeds:
    """Training states advanced in turn by the single-seed compiled chunk (a `SeedRunner`)."""

    def __init__(self, states: Sequence[Mapping[str, Any]], sampling: Sampling = PLAIN):
        self.states = [(st["agent"], jnp.asarray(st["data_rng"])) for st in states]
        self.sampling = sampling

    def compile(self, dataset: Mapping[str, jax.Array], batch_size: int, n: int):
        self.states = [distinct_buffers(st) for st in self.states]
        return compile_chunk(*self.states[0], dataset, batch_size, n, self.sampling)

    def key(self, n: int) -> tuple[str, int, int]:
        return ("loop", 1, n)  # one program serves any number of seeds

    def run(self, compiled: Any, dataset: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        out, infos = [], []
        for agent, data_rng in self.states:
            agent, data_rng = distinct_buffers((agent, data_rng))
            agent, data_rng, info = compiled(agent, data_rng, dataset)
            out.append((agent, data_rng))
            infos.append(info)
        self.states = out
        infos = jax.device_get(infos)  # fetched once, after every seed's chunk is queued
        return {k: np.stack([np.asarray(info[k]) for info in infos]) for k in infos[0]}

    def agent(self, i: int) -> Any:
        return self.states[i][0]

    def data_rng(self, i: int) -> jax.Array:
        return self.states[i][1]

    def any_non_finite(self) -> bool:
        return safety.non_finite_leaf([a for a, _ in self.states]) is not None

    def checkpoint_state(self, i: int, step: int) -> dict[str, Any]:
        return offline_state(self, i, step)


def make_seed_runner(strategy: str, states: Sequence[Mapping[str, Any]], sampling: Sampling = PLAIN) -> SeedRunner:
    """'loop' -> `SequentialSeeds`, 'vmap' -> `VmappedSeeds`; batches drawn as `sampling` says."""
    return VmappedSeeds(states, sampling) if strategy == "vmap" else SequentialSeeds(states, sampling)


class VmappedSeeds:
    """The seeds' states stacked (step shared), advanced by one vmapped compiled chunk (a `SeedRunner`)."""

    def __init__(self, states: Sequence[Mapping[str, Any]], sampling: Sampling = PLAIN):
        self.agents = stack_agents([st["agent"] for st in states])
        self.data_rngs = jnp.stack([jnp.asarray(st["data_rng"]) for st in states])
        self.S = len(states)
        self.sampling = sampling

    def compile(self, dataset, batch_size: int, n: int):
        self.agents, self.data_rngs = distinct_buffers((self.agents, self.data_rngs))
        return compile_chunk_seeds(self.agents, self.data_rngs, dataset, batch_size, n, self.sampling)

    def key(self, n: int) -> tuple[str, int, int]:
        return ("vmap", self.S, n)

    def run(self, compiled, dataset) -> dict[str, np.ndarray]:
        self.agents, self.data_rngs = distinct_buffers((self.agents, self.data_rngs))
        self.agents, self.data_rngs, infos = compiled(self.agents, self.data_rngs, dataset)
        return {k: np.asarray(v) for k, v in jax.device_get(infos).items()}

    def agent(self, i: int) -> Any:
        return unstack_agent(self.agents, i)

    def data_rng(self, i: int) -> jax.Array:
        return self.data_rngs[i]

    def any_non_finite(self) -> bool:
        return safety.non_finite_leaf(self.agents) is not None

    def checkpoint_state(self, i: int, step: int) -> dict[str, Any]:
        return offline_state(self, i, step)


def offline_state(runner: SeedRunner, i: int, step: int) -> dict[str, Any]:
    """An offline training state: {"agent", "data_rng", "step"} (`runner.train.initial_state`'s structure)."""
    return {"agent": runner.agent(i), "data_rng": runner.data_rng(i), "step": np.int64(step)}


__all__ = [
    "agent_axes",
    "compile_chunk_seeds",
    "parse_seeds",
    "seed_run_dir",
    "stack_agents",
    "train_chunk_seeds",
    "train_chunk_seeds_jit",
    "unstack_agent",
    "SeedRunner",
    "SequentialSeeds",
    "VmappedSeeds",
    "make_seed_runner",
]
