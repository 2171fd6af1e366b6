"""The replay buffer of offline-to-online fine-tuning, on the device, and its batch sampler.

The reference (FQL's and SORL's `main.py` with `utils/datasets.py`) has two layouts, which we keep:

- plain sampling (the default): the dataset *is* the replay buffer,
  `ReplayBuffer.create_from_initial_dataset(dataset, size=max(buffer_size, dataset_size + 1))`: a buffer of
  `S = max(buffer_size, n + 1)` rows whose first `n` rows are the dataset and whose pointer starts at `n` and wraps
  at `S`, so once `n + m > S` (m online transitions) every new transition overwrites the oldest dataset row still
  there (row 0 first), and, past `S` online ones, the oldest online transition. Each batch is drawn uniformly
  over the `min(n + m, S)` rows held;
- balanced sampling (`--balanced-sampling`, the reference's `balanced_sampling=1`): the dataset stays whole and
  the online transitions go to a separate `ReplayBuffer.create(size=buffer_size)` whose pointer wraps at
  `buffer_size`; half of each batch is drawn from the dataset, half from that buffer.

`buffer_size` is `--buffer-size` (the reference's `--buffer_size`, default 2,000,000).

We hold the same rows without copying the dataset per seed: the dataset is shared by every seed, and a seed's
`Buffer` keeps only its online transitions, in a ring of `capacity = min(online steps, V)` rows (V = S plain,
`buffer_size` balanced: the ring never holds more than the reference's buffer could, and never more rows than the
phase has steps), plus `size`, the number of online transitions added so far (`m`). Online transition `j` sits in
ring row `j % capacity`; which row of the reference's buffer holds what follows from `m` alone. So a batch is drawn
from exactly the rows the reference's buffer samples, uniformly as its `sample`, and a checkpoint stores only the
ring. `reference_view` lays the rows out in the reference's own row order (tests compare the two).

One quirk is kept: the reference's `add_transition` sets `size = max(pointer, size)` after wrapping the pointer,
so `size` never reaches `S`: row `S - 1` is written but never sampled (`reference_pointer`). It is always an online
row (`S > n`); with the default `S` = 2,000,000 it matters only to a run whose dataset and online steps exceed it.

Everything except `reference_view` is jittable; the buffer's arrays are donated by the caller so that an addition
writes in place.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sorl.data import BATCH_KEYS, dataset_size, take_rows
from sorl.errors import SorlError

Buffer = dict[str, jax.Array]
"""The online transitions: the dataset's keys, each `[capacity, ...]` (a ring), and `size` (transitions added so
far, int32 scalar; row `j % capacity` holds transition `j`)."""

NEXT_ACTIONS = "next_actions"
"""A derived key some agents add to the dataset (ReBRAC); in the buffer it is the next transition's action."""

REFERENCE_BUFFER_SIZE = 2_000_000
"""The reference's `--buffer_size` default (FQL and SORL `main.py`)."""


def virtual_size(n_data: int, buffer_size: int, balanced: bool) -> int:
    """Rows of the reference's buffer that holds the online transitions: `max(buffer_size, n + 1)` when the dataset is
    the buffer (plain sampling), `buffer_size` for balanced sampling's separate buffer."""
    return int(buffer_size) if balanced else max(int(buffer_size), int(n_data) + 1)


def ring_capacity(n_data: int, online_steps: int, buffer_size: int, balanced: bool) -> int:
    """Rows of a seed's ring: never more than the phase's steps or the reference's buffer can hold."""
    return max(1, min(int(online_steps), virtual_size(n_data, buffer_size, balanced)))


def reference_pointer(n_data: int, size: int, total: int, balanced: bool) -> tuple[int, int]:
    """The reference buffer's (pointer, size) after `size` online additions: `pointer = (n + m) % S` and, as its
    `size = max(pointer, size)` never reaches `S` (the pointer wraps to 0 first), `size = min(n + m, S - 1)` (plain;
    balanced: `m % S`, `min(m, S - 1)` with S = buffer_size). Works on Python ints and traced arrays alike."""
    start = 0 if balanced else n_data
    if isinstance(size, (int, np.integer)):
        return (start + int(size)) % total, min(start + int(size), total - 1)
    return (start + size) % total, jnp.minimum(start + size, total - 1)


def make_buffer(dataset: Mapping[str, jax.Array], capacity: int) -> Buffer:
    """An empty ring of `capacity` rows with the dataset's keys, shapes and dtypes."""
    unknown = [k for k in dataset if k not in (*BATCH_KEYS, NEXT_ACTIONS)]
    if unknown:
        raise SorlError(f"online fine-tuning cannot fill the dataset key(s) {', '.join(unknown)} from the environment")
    buffer = {k: jnp.zeros((capacity, *v.shape[1:]), v.dtype) for k, v in dataset.items()}
    buffer["size"] = jnp.zeros((), jnp.int32)
    return buffer


def capacity_of(buffer: Mapping[str, jax.Array]) -> int:
    return int(buffer["rewards"].shape[0])


def add_transition(buffer: Buffer, transition: Mapping[str, jax.Array]) -> Buffer:
    """The buffer with `transition` (the batch keys, unbatched) written at ring row `size % capacity`.

    `next_actions` follows the reference sampler's rule (the action of the transition after, the transition's own
    for the newest one): the new row gets its own action and the previous transition's row gets the new action.
    """
    capacity = buffer["rewards"].shape[0]
    i = buffer["size"]
    row = i % capacity
    out = dict(buffer)
    for k in BATCH_KEYS:
        out[k] = buffer[k].at[row].set(jnp.asarray(transition[k], buffer[k].dtype))
    if NEXT_ACTIONS in buffer:
        action = jnp.asarray(transition["actions"], buffer[NEXT_ACTIONS].dtype)
        previous = jnp.where(i > 0, (i - 1) % capacity, row)  # the first addition writes its own row twice
        out[NEXT_ACTIONS] = buffer[NEXT_ACTIONS].at[previous].set(action).at[row].set(action)
    out["size"] = i + 1
    return out


def _contents(n_data: int, m, rows, total: int, balanced: bool, capacity: int):
    """For reference-buffer rows `rows`: (is a dataset row, dataset row, ring row). Row `r` holds the newest online
    transition `j < m` with `(start + j) % S == r` (start = n plain, 0 balanced), else (plain, `r < n`) dataset row
    `r`; transition `j` is in ring row `j % capacity`."""
    start = 0 if balanced else n_data
    d = (rows - start) % total  # the oldest transition index that lands on this row
    has = d <= m - 1
    j = d + total * ((m - 1 - d) // total)  # the newest such index below m
    return ~has, rows, jnp.where(has, j, 0) % capacity


def sample_online_batch(
    dataset: Mapping[str, jax.Array],
    buffer: Buffer,
    rng: jax.Array,
    batch_size: int,
    balanced: bool,
    total: int | None = None,
) -> dict[str, jax.Array]:
    """`batch_size` transitions for one online update (see the module docstring): uniform rows of the reference's
    buffer (`[0, size)`, its `sample`); `total` is `virtual_size` (default: a buffer that never wraps); `buffer` must
    hold at least one transition when `balanced` (the loop adds before it samples)."""
    if "frame_rows" in dataset:  # runner.pixels refuses --online-steps on pixel tasks before it comes to this
        raise ValueError("online batches need a dataset of separate next observations, not compact frames")
    n_data = dataset_size(dataset)
    capacity = buffer["rewards"].shape[0]
    if total is None:
        total = capacity + 1 if balanced else n_data + capacity + 1
    m = buffer["size"]
    _, held = reference_pointer(n_data, m, total, balanced)
    keys = tuple(dataset)

    def from_buffer(rows: jax.Array, with_data: bool) -> dict[str, jax.Array]:
        is_data, data_rows, ring_rows = _contents(n_data, m, rows, total, balanced, capacity)
        online = take_rows(buffer, ring_rows, keys)
        if not with_data:
            return online
        data = take_rows(dataset, jnp.where(is_data, data_rows, 0), keys)
        return {k: jnp.where(is_data.reshape(-1, *[1] * (data[k].ndim - 1)), data[k], online[k]) for k in keys}

    if balanced:
        half = batch_size // 2
        k_data, k_online = jax.random.split(rng)
        from_data = take_rows(dataset, jax.random.randint(k_data, (batch_size - half,), 0, n_data), keys)
        from_online = from_buffer(jax.random.randint(k_online, (half,), 0, jnp.maximum(held, 1)), False)
        return {k: jnp.concatenate([from_data[k], from_online[k]]) for k in keys}
    return from_buffer(jax.random.randint(rng, (batch_size,), 0, held), True)


def reference_view(
    dataset: Mapping[str, np.ndarray], buffer: Mapping[str, np.ndarray], total: int, balanced: bool
) -> dict[str, np.ndarray]:
    """The rows the reference's buffer can sample (`[:size]` of its arrays), in its row order: what
    `sample_online_batch` draws from, laid out on the host for tests and inspection."""
    n_data = dataset_size(dataset)
    m = jnp.asarray(buffer["size"])
    capacity = int(np.asarray(buffer["rewards"]).shape[0])
    _, size = reference_pointer(n_data, int(m), total, balanced)
    rows = jnp.arange(size)
    is_data, data_rows, ring_rows = (np.asarray(x) for x in _contents(n_data, m, rows, total, balanced, capacity))
    keys = [k for k in dataset if k != NEXT_ACTIONS]
    return {
        k: np.stack(
            [
                np.asarray(dataset[k][r]) if d else np.asarray(buffer[k][g])
                for d, r, g in zip(is_data, data_rows, ring_rows, strict=True)
            ]
        )
        if size
        else np.zeros((0, *np.shape(dataset[k])[1:]), np.asarray(dataset[k]).dtype)
        for k in keys
    }


def online_update(
    agent, data_rng: jax.Array, dataset, buffer: Buffer, transition, *, batch_size: int, balanced: bool, total: int
):
    """One online step's learning, in the reference's order: add the transition, draw a batch, one training update.

    (agent, data_rng, buffer, info). The same data key discipline as the offline chunk (`sorl.chunk`): split, draw
    with the new key, keep the carry. `total` is `virtual_size`."""
    buffer = add_transition(buffer, transition)
    data_rng, key = jax.random.split(data_rng)
    agent, info = agent.train_update(sample_online_batch(dataset, buffer, key, batch_size, balanced, total))
    return agent, data_rng, buffer, info


online_update_jit = jax.jit(
    online_update, static_argnames=("batch_size", "balanced", "total"), donate_argnums=(0, 1, 3)
)
"""`online_update` compiled, the agent, the data key and the buffer donated (the buffer is written in place)."""


__all__ = [
    "REFERENCE_BUFFER_SIZE",
    "Buffer",
    "add_transition",
    "make_buffer",
    "online_update",
    "online_update_jit",
    "reference_pointer",
    "reference_view",
    "ring_capacity",
    "sample_online_batch",
    "virtual_size",
]
