"""The on-device dataset and its batch sampler: the one place training draws data from.

A dataset is a plain dict of `jax.Array`s with a common leading dimension (the transitions). It lives on
the accelerator for the whole run; batches are drawn with `jax.random` inside the compiled training
chunk, so no host round-trip happens per update.

Pixel observations (OGBench's visual-* tasks, `[N, 64, 64, 3]` uint8 in the files) stay uint8 on the device,
flattened to `[N, 64*64*3]` so that every network and sampler sees observations as `[*batch, dim]` vectors; the
image encoders (`sorl.networks`) restore the images and divide by 255. State observations are float32.

Pixel datasets are also stored compactly: every frame once, in the file's order (each episode's frames, its final
one included), as `observations` `[M, dim]`, and the index key `frame_rows` `[N]` saying which frame is transition
i's observation; its next observation is the frame after it (`compact_pixel_dataset`). A separate
`next_observations` array would repeat all but one frame per episode: the compact layout halves the device memory
of the frames. Batches are the same either way: `sample_batch` draws the same rows from the same key and gives
`observations` and `next_observations` as usual.

`Sampling` adds what the reference's `Dataset.sample` does on the host, here inside the compiled chunk:

- frame stacking (`frame_stack` F > 1): a batch observation is the F frames ending at the sampled step,
  `[o[t-F+1], ..., o[t]]` concatenated on the last axis (frame-major), and the next observation is
  `[o[t-F+2], ..., o[t], o'[t]]`; a frame before the episode's first repeats the first (the reference's
  clamping to the episode's initial index). The episode starts come from the dataset's terminals
  (`to_device(..., frame_stack=F)` stores them as the index key `episode_starts`);
- random-shift augmentation (`p_aug`): with probability `p_aug` per batch (one coin per batch, as the
  reference), every image of the batch (observation and next observation, all stacked frames alike) is padded
  by `AUG_PAD` pixels repeating its edge and cropped back at a random offset drawn per transition: a shift of at
  most `AUG_PAD` pixels in each direction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sorl.errors import SorlError

BATCH_KEYS = ("observations", "actions", "rewards", "masks", "next_observations")
"""The keys an agent's `update(batch)` receives."""

ACTION_CLIP = 1.0 - 1e-5
"""Dataset actions are clipped to +-(1 - 1e-5), as in the reference code (docs/method.md, "Notation")."""

Dataset = dict[str, jax.Array]

INDEX_KEYS = ("episode_starts", "frame_rows")
"""Dataset keys the sampler reads but batches do not carry."""

FRAME_KEYS = ("observations", "next_observations")
"""Batch keys a compact pixel dataset derives from its frames (module docstring)."""

AUG_PAD = 3
"""Pixels of the random shift: the reference's `Dataset.augment` (FQL `utils/datasets.py`) pads by 3 ('edge')
and crops back at an offset in [0, 6]."""


@dataclass(frozen=True)
class Sampling:
    """How batches are drawn beyond uniform rows (static: one compiled chunk per value). The default draws
    exactly what `sample_batch` always drew, from the same key."""

    frame_stack: int = 1
    """Frames per observation (1: none)."""
    p_aug: float = 0.0
    """Probability that a batch is augmented by random shifts (0: never)."""
    image_shape: tuple[int, int, int] | None = None
    """(H, W, C) of one frame of flattened pixel observations; None for state observations (no augmentation)."""

    @property
    def plain(self) -> bool:
        return self.frame_stack == 1 and self.p_aug == 0.0


PLAIN = Sampling()


def to_device(data: Mapping[str, np.ndarray], keys: tuple[str, ...] = BATCH_KEYS, frame_stack: int = 1) -> Dataset:
    """Put the training keys of a loaded dataset on the default device as float32 arrays (uint8 pixel
    observations stay uint8, flattened: see the module docstring).

    Actions are clipped to `+-ACTION_CLIP`; keys other than `keys` (terminals, qpos, ...) are dropped. With
    `frame_stack` > 1 the episode starts (from `terminals`) are kept too, as `episode_starts`. A compact pixel
    dataset (`frame_rows`, no `next_observations`: `compact_pixel_dataset`) keeps its layout.
    """
    compact = "frame_rows" in data
    if compact:
        keys = tuple(k for k in keys if k != "next_observations")
    missing = [k for k in keys if k not in data]
    if missing:
        raise SorlError(f"dataset lacks the key(s) {', '.join(missing)}; regenerate it with `sorl data generate`")
    per_transition = [k for k in keys if not (compact and k == "observations")] + (["frame_rows"] if compact else [])
    sizes = {k: len(data[k]) for k in per_transition}
    if len(set(sizes.values())) != 1:
        raise SorlError(f"dataset keys have different lengths {sizes}; the file is corrupt, regenerate it")
    if next(iter(sizes.values())) == 0:
        raise SorlError("the dataset is empty")
    out: Dataset = {}
    for k in keys:
        if is_pixels(data[k]):
            arr = np.asarray(data[k]).reshape(len(data[k]), -1)  # uint8 kept: a quarter of float32's memory
        else:
            arr = np.asarray(data[k], dtype=np.float32)
        if k == "actions":
            arr = np.clip(arr, -ACTION_CLIP, ACTION_CLIP)
        out[k] = jnp.asarray(arr)
    rows = np.asarray(data["frame_rows"], np.int32) if compact else None
    if compact:
        out["frame_rows"] = jnp.asarray(rows)
    if frame_stack > 1:
        if "terminals" not in data:
            raise SorlError("frame stacking needs the dataset's terminals (episode ends); the dataset has none")
        starts = episode_starts(np.asarray(data["terminals"]))
        # compact: the frame row of the episode's first observation, as frames are stacked by frame row
        out["episode_starts"] = jnp.asarray(rows[starts] if compact else starts)
    return out


def compact_pixel_dataset(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A pixel dataset in the compact layout (module docstring) from OGBench's compact one (`load_dataset(...,
    compact_dataset=True)`: every row a frame of the file, `valids[r]` = 1 where frame r + 1 follows in the
    same episode, the other keys per row).

    Returns `observations` (all frames, as they are), `frame_rows` (the valid rows: one per transition) and every
    other key at those rows, except `terminals`, which marks each episode's last transition as in OGBench's
    regular layout; `valids` is dropped. Transition i is exactly the regular layout's transition i.
    """
    valids = np.asarray(data["valids"]) > 0
    rows = np.flatnonzero(valids).astype(np.int32)
    out: dict[str, np.ndarray] = {"observations": data["observations"], "frame_rows": rows}
    for k, v in data.items():
        if k in ("observations", "valids", "terminals"):
            continue
        out[k] = np.asarray(v)[rows]
    # an episode's last transition is the one whose next frame is the episode's final frame (it has no successor)
    out["terminals"] = (~valids[np.minimum(rows + 1, len(valids) - 1)]).astype(np.float32)
    return out


def is_pixels(arr: np.ndarray | jax.Array) -> bool:
    """Whether `arr` holds images: uint8 `[N, H, W, C]` (OGBench's pixel observations)."""
    return arr.dtype == np.uint8 and arr.ndim == 4


def episode_starts(terminals: np.ndarray) -> np.ndarray:
    """int32 `[N]`: the index of the first transition of each transition's episode. `terminals[i]` marks the last
    transition of an episode (ogbench's layout), so an episode starts at 0 and after every terminal."""
    n = len(terminals)
    is_start = np.concatenate([[True], np.asarray(terminals[:-1]) > 0])
    return np.maximum.accumulate(np.where(is_start, np.arange(n), 0)).astype(np.int32)


def dataset_size(dataset: Mapping[str, jax.Array]) -> int:
    """Number of transitions."""
    if "frame_rows" in dataset:  # compact: there are more frames than transitions
        return int(dataset["frame_rows"].shape[0])
    return int(next(iter(dataset.values())).shape[0])


def dataset_nbytes(dataset: Mapping[str, jax.Array]) -> int:
    """Bytes the dataset occupies on the device."""
    return int(sum(v.size * v.dtype.itemsize for v in dataset.values()))


def sample_batch(
    dataset: Mapping[str, jax.Array], rng: jax.Array, batch_size: int, sampling: Sampling = PLAIN
) -> Dataset:
    """`batch_size` transitions drawn uniformly with replacement, stacked and augmented as `sampling` says
    (jittable; `batch_size` and `sampling` static)."""
    n = dataset_size(dataset)
    compact = "frame_rows" in dataset
    keys = tuple(k for k in dataset if k not in INDEX_KEYS and not (compact and k in FRAME_KEYS))
    # Plain sampling draws the rows from `rng` itself; stacking or augmenting splits it first.
    idx_rng, aug_rng = (rng, rng) if sampling.plain else jax.random.split(rng)
    idx = jax.random.randint(idx_rng, (batch_size,), 0, n)
    if sampling.plain and not compact:
        return take_rows(dataset, idx, keys)
    batch = take_rows(dataset, idx, keys)
    rows = jnp.take(dataset["frame_rows"], idx, axis=0) if compact else idx
    if compact:  # the next observation is the next frame
        batch["next_observations"] = jnp.take(dataset["observations"], rows + 1, axis=0)
    if sampling.frame_stack > 1:
        batch.update(stack_frames(dataset, idx, batch["next_observations"], sampling.frame_stack, rows))
    elif compact:
        batch["observations"] = jnp.take(dataset["observations"], rows, axis=0)
    if sampling.p_aug > 0:
        batch = maybe_augment(batch, aug_rng, sampling.p_aug, sampling.image_shape)
    return batch


def stack_frames(
    dataset: Mapping[str, jax.Array],
    idx: jax.Array,
    next_observations: jax.Array,
    frame_stack: int,
    rows: jax.Array | None = None,
) -> Dataset:
    """{observations, next_observations} of transitions `idx` with `frame_stack` frames each (module docstring).
    `rows`: the transitions' rows of `observations` (default `idx`; a compact dataset's frame rows)."""
    if "episode_starts" not in dataset:
        raise ValueError("frame stacking needs `episode_starts`: put the dataset on the device with to_device(..., "
                         "frame_stack=F)")  # fmt: skip
    rows = idx if rows is None else rows
    start = jnp.take(dataset["episode_starts"], idx, axis=0)
    frames = [
        jnp.take(dataset["observations"], jnp.maximum(rows - back, start), axis=0)
        for back in range(frame_stack - 1, -1, -1)
    ]  # o[t-F+1], ..., o[t], clamped to the episode's first step
    return {
        "observations": jnp.concatenate(frames, axis=-1),
        "next_observations": jnp.concatenate([*frames[1:], next_observations], axis=-1),
    }


def random_shift(images: jax.Array, offsets: jax.Array, pad: int = AUG_PAD) -> jax.Array:
    """`images` `[B, H, W, C]` padded by `pad` (edge values) and cropped back at `offsets` `[B, 2]` (in
    [0, 2 pad]): each image moved by `offsets - pad` pixels, the reference's `batched_random_crop`."""
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")

    def crop(img: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (offset[0], offset[1], 0), images.shape[1:])

    return jax.vmap(crop)(padded, offsets)


def maybe_augment(batch: Dataset, rng: jax.Array, p_aug: float, image_shape: tuple[int, int, int] | None) -> Dataset:
    """With probability `p_aug`, the batch's flattened images shifted at random (the same shift for a
    transition's observation, next observation and all their frames); otherwise the batch unchanged."""
    if image_shape is None:
        raise ValueError("random-shift augmentation needs pixel observations (Sampling.image_shape)")
    coin_rng, offset_rng = jax.random.split(rng)
    B = batch["observations"].shape[0]
    offsets = jax.random.randint(offset_rng, (B, 2), 0, 2 * AUG_PAD + 1)
    H, W, C = image_shape

    def shift(x: jax.Array) -> jax.Array:
        frames = x.shape[-1] // (H * W * C)
        # Frames side by side on the channel axis: one shift moves them all.
        imgs = jnp.moveaxis(x.reshape(B, frames, H, W, C), 1, 3).reshape(B, H, W, frames * C)
        out = random_shift(imgs, offsets)
        return jnp.moveaxis(out.reshape(B, H, W, frames, C), 3, 1).reshape(x.shape)

    keys = ("observations", "next_observations")

    def augmented(b: Dataset) -> Dataset:
        return {**b, **{k: shift(b[k]) for k in keys}}

    # lax.cond: an unaugmented batch pays nothing for the shifts (under vmap over seeds it becomes a select).
    return jax.lax.cond(jax.random.uniform(coin_rng) < p_aug, augmented, lambda b: dict(b), batch)


def take_rows(arrays: Mapping[str, jax.Array], idx: jax.Array, keys: tuple[str, ...]) -> Dataset:
    """The rows `idx` of the arrays named `keys` (the one gather every batch sampler uses)."""
    return {k: jnp.take(arrays[k], idx, axis=0) for k in keys}
