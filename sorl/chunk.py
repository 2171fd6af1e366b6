"""The compiled unit of training: a `lax.scan` of agent updates on batches drawn on the device.

One chunk of `num_updates` updates is one XLA program; Python runs once per chunk (a log interval), not per update.
`runner.train` runs chunks for one seed at a time, `runner.multiseed` vmaps the same chunk over seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sorl.data import PLAIN, Sampling, sample_batch

# Donation is a no-op where the backend cannot donate; that is not worth a warning per compile.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


def train_chunk(
    agent: Any,
    data_rng: jax.Array,
    dataset: Mapping[str, jax.Array],
    *,
    batch_size: int,
    num_updates: int,
    sampling: Sampling = PLAIN,
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """`num_updates` updates on batches drawn from `dataset` (frame stacking and augmentation as `sampling`
    says, on the device): (agent, data_rng, infos stacked [num_updates])."""

    def body(carry, _):
        agent, rng = carry
        rng, key = jax.random.split(rng)
        # The agent contract's training step (sorl.agent; SORL: K from the schedule shared by seeds).
        agent, info = agent.train_update(sample_batch(dataset, key, batch_size, sampling))
        return (agent, rng), info

    (agent, data_rng), infos = jax.lax.scan(body, (agent, data_rng), None, length=num_updates)
    return agent, data_rng, infos


def validation_losses(
    agent: Any,
    dataset: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    batch_size: int,
    num_batches: int,
    sampling: Sampling = PLAIN,
) -> dict[str, jax.Array]:
    """The agent's own logged values on `num_batches` batches of `dataset` (means), without keeping the update:
    each batch goes through the training step and only its infos are kept, so a validation loss is exactly the
    training loss on held-out data."""

    def body(_, k):
        _, info = agent.train_update(sample_batch(dataset, k, batch_size, sampling))
        return None, info

    _, infos = jax.lax.scan(body, None, jax.random.split(key, num_batches))
    return jax.tree.map(lambda x: x.mean(axis=0), infos)


validation_losses_jit = jax.jit(validation_losses, static_argnames=("batch_size", "num_batches", "sampling"))


train_chunk_jit = jax.jit(train_chunk, static_argnames=("batch_size", "num_updates", "sampling"), donate_argnums=(0, 1))
"""`train_chunk` compiled, with the agent and the data key donated (their buffers are reused in place)."""


def compile_chunk(
    agent: Any,
    data_rng: jax.Array,
    dataset: Mapping[str, jax.Array],
    batch_size: int,
    num_updates: int,
    sampling: Sampling = PLAIN,
):
    """Ahead-of-time compiled chunk: call it as `chunk(agent, data_rng, dataset)`."""
    lowered = train_chunk_jit.lower(
        agent, data_rng, dataset, batch_size=batch_size, num_updates=num_updates, sampling=sampling
    )
    return lowered.compile()


def distinct_buffers(tree: Any) -> Any:
    """`tree` with no two leaves sharing a device buffer (copying the repeats).

    An agent fresh from `create` may hold one array twice (e.g. the target network initialised *as* the
    network), and a donated argument may not hold the same buffer twice.
    """
    seen: set[int] = set()

    def leaf(x):
        if not isinstance(x, jax.Array):
            return x
        try:
            ptr = x.unsafe_buffer_pointer()
        except Exception:  # noqa: BLE001 - sharded or exotic arrays: copy to be safe
            return jnp.array(x, copy=True)
        if ptr in seen:
            return jnp.array(x, copy=True)
        seen.add(ptr)
        return x

    return jax.tree.map(leaf, tree)
