"""The on-device dataset and its batch sampler: the one place training draws data from.

A dataset is a plain dict of `jax.Array`s with a common leading dimension (the transitions). It lives on
the accelerator for the whole run; batches are drawn with `jax.random` inside the compiled training
chunk, so no host round-trip happens per update.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sorl.errors import SorlError

BATCH_KEYS = ("observations", "actions", "rewards", "masks", "next_observations")
"""The keys an agent's `update(batch)` receives."""

ACTION_CLIP = 1.0 - 1e-5
"""Dataset actions are clipped to +-(1 - 1e-5), as in the reference code (docs/method.md, "Notation")."""

Dataset = dict[str, jax.Array]


def to_device(data: Mapping[str, np.ndarray], keys: tuple[str, ...] = BATCH_KEYS) -> Dataset:
    """Put the training keys of a loaded dataset on the default device as float32 arrays.

    Actions are clipped to `+-ACTION_CLIP`; keys other than `keys` (terminals, qpos, ...) are dropped.
    """
    missing = [k for k in keys if k not in data]
    if missing:
        raise SorlError(f"dataset lacks the key(s) {', '.join(missing)}; regenerate it with `sorl data generate`")
    sizes = {k: len(data[k]) for k in keys}
    if len(set(sizes.values())) != 1:
        raise SorlError(f"dataset keys have different lengths {sizes}; the file is corrupt, regenerate it")
    if next(iter(sizes.values())) == 0:
        raise SorlError("the dataset is empty")
    out: Dataset = {}
    for k in keys:
        arr = np.asarray(data[k], dtype=np.float32)
        if k == "actions":
            arr = np.clip(arr, -ACTION_CLIP, ACTION_CLIP)
        out[k] = jnp.asarray(arr)
    return out


def dataset_size(dataset: Mapping[str, jax.Array]) -> int:
    """Number of transitions."""
    return int(next(iter(dataset.values())).shape[0])


def dataset_nbytes(dataset: Mapping[str, jax.Array]) -> int:
    """Bytes the dataset occupies on the device."""
    return int(sum(v.size * v.dtype.itemsize for v in dataset.values()))


def sample_batch(dataset: Mapping[str, jax.Array], rng: jax.Array, batch_size: int) -> Dataset:
    """`batch_size` transitions drawn uniformly with replacement (jittable; `batch_size` static)."""
    n = next(iter(dataset.values())).shape[0]
    return take_rows(dataset, jax.random.randint(rng, (batch_size,), 0, n), tuple(dataset))


def take_rows(arrays: Mapping[str, jax.Array], idx: jax.Array, keys: tuple[str, ...]) -> Dataset:
    """The rows `idx` of the arrays named `keys` (the one gather every batch sampler uses)."""
    return {k: jnp.take(arrays[k], idx, axis=0) for k in keys}
