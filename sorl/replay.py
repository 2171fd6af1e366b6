"""The replay buffer of offline-to-online fine-tuning, on the device, and its batch sampler.

The online phase (`runner.online`) adds one transition per environment step to a buffer preallocated to the
phase's length, and draws each update's batch from the offline dataset and that buffer together:

- plain sampling (the reference's default): uniformly over every transition seen so far, the dataset's and the
  online ones, as if the buffer had started as a copy of the dataset (the reference's
  `ReplayBuffer.create_from_initial_dataset`), without copying the dataset;
- balanced sampling (`--balanced-sampling`, the reference's `balanced_sampling`): the first half of the batch
  from the dataset, the second half from the online transitions.

The dataset is shared by every seed and never copied; a buffer holds only its own transitions, which is also
what a checkpoint stores. Everything here is jittable; the buffer's arrays are donated by the caller so that an
addition writes in place.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from sorl.data import BATCH_KEYS, dataset_size, take_rows
from sorl.errors import SorlError

Buffer = dict[str, jax.Array]
"""The online transitions: the dataset's keys, each `[capacity, ...]`, and `size` (rows filled, int32 scalar)."""

NEXT_ACTIONS = "next_actions"
"""A derived key some agents add to the dataset (ReBRAC); in the buffer it is the next row's action."""


def make_buffer(dataset: Mapping[str, jax.Array], capacity: int) -> Buffer:
    """An empty buffer of `capacity` rows with the dataset's keys, shapes and dtypes."""
    unknown = [k for k in dataset if k not in (*BATCH_KEYS, NEXT_ACTIONS)]
    if unknown:
        raise SorlError(f"online fine-tuning cannot fill the dataset key(s) {', '.join(unknown)} from the environment")
    buffer = {k: jnp.zeros((capacity, *v.shape[1:]), v.dtype) for k, v in dataset.items()}
    buffer["size"] = jnp.zeros((), jnp.int32)
    return buffer


def add_transition(buffer: Buffer, transition: Mapping[str, jax.Array]) -> Buffer:
    """The buffer with `transition` (the batch keys, unbatched) written at row `size`.

    `next_actions` follows the reference sampler's rule (the action of the row after, the row's own action for
    the newest row): the new row gets its own action and the row before it gets the new action.
    """
    i = buffer["size"]
    out = dict(buffer)
    for k in BATCH_KEYS:
        out[k] = buffer[k].at[i].set(jnp.asarray(transition[k], buffer[k].dtype))
    if NEXT_ACTIONS in buffer:
        action = jnp.asarray(transition["actions"], buffer[NEXT_ACTIONS].dtype)
        # at i = 0 the first write lands on row 0 too, and the second overwrites it with the same action
        out[NEXT_ACTIONS] = buffer[NEXT_ACTIONS].at[jnp.maximum(i - 1, 0)].set(action).at[i].set(action)
    out["size"] = i + 1
    return out


def sample_online_batch(
    dataset: Mapping[str, jax.Array], buffer: Buffer, rng: jax.Array, batch_size: int, balanced: bool
) -> dict[str, jax.Array]:
    """`batch_size` transitions for one online update (see the module docstring); `buffer` must hold at least one
    transition when `balanced` (the loop adds before it samples)."""
    if "frame_rows" in dataset:  # runner.pixels refuses --online-steps on pixel tasks before it comes to this
        raise ValueError("online batches need a dataset of separate next observations, not compact frames")
    n_data = dataset_size(dataset)
    size = buffer["size"]
    if balanced:
        half = batch_size // 2
        k_data, k_online = jax.random.split(rng)
        keys = tuple(dataset)
        from_data = take_rows(dataset, jax.random.randint(k_data, (batch_size - half,), 0, n_data), keys)
        from_online = take_rows(buffer, jax.random.randint(k_online, (half,), 0, jnp.maximum(size, 1)), keys)
        return {k: jnp.concatenate([from_data[k], from_online[k]]) for k in dataset}
    idx = jax.random.randint(rng, (batch_size,), 0, n_data + size)
    in_data = idx < n_data
    from_data = take_rows(dataset, jnp.where(in_data, idx, 0), tuple(dataset))
    from_online = take_rows(buffer, jnp.where(in_data, 0, idx - n_data), tuple(dataset))
    return {
        k: jnp.where(in_data.reshape(-1, *[1] * (from_data[k].ndim - 1)), from_data[k], from_online[k]) for k in dataset
    }


def online_update(agent, data_rng: jax.Array, dataset, buffer: Buffer, transition, *, batch_size: int, balanced: bool):
    """One online step's learning: add the transition, draw a batch, one training update.

    (agent, data_rng, buffer, info). The same data key discipline as the offline chunk (`sorl.chunk`): split, draw
    with the new key, keep the carry."""
    buffer = add_transition(buffer, transition)
    data_rng, key = jax.random.split(data_rng)
    agent, info = agent.train_update(sample_online_batch(dataset, buffer, key, batch_size, balanced))
    return agent, data_rng, buffer, info


online_update_jit = jax.jit(online_update, static_argnames=("batch_size", "balanced"), donate_argnums=(0, 1, 3))
"""`online_update` compiled, the agent, the data key and the buffer donated (the buffer is written in place)."""


__all__ = ["Buffer", "add_transition", "make_buffer", "online_update", "online_update_jit", "sample_online_batch"]
