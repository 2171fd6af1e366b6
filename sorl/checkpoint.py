"""Orbax checkpoints of a training state: the agent pytree, the data-sampling key and the step.

The state saved is a pytree of arrays, e.g. `{"agent": agent, "data_rng": key, "step": step}`. Typed PRNG
keys (`jax.random.key`) are stored as their raw key data and re-wrapped on restore, so any agent pytree
(including one that holds its own keys) round-trips. Saves are atomic (orbax writes a temporary directory
and renames it on commit), so a killed process never leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sorl.errors import SorlError

# orbax logs every save/restore at INFO/WARNING level through absl; keep the terminal for our own lines.
logging.getLogger("absl").setLevel(logging.ERROR)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(state: Any) -> Any:
    """A host copy of `state` (numpy arrays; typed keys as key data), safe from later buffer donation."""

    def leaf(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        return np.array(x)  # a copy: the device buffers may be donated to the next training chunk

    return jax.tree.map(leaf, state)


def _abstract(template: Any) -> Any:
    def leaf(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    return jax.tree.map(leaf, template)


def _rewrap(template: Any, restored: Any) -> Any:
    def leaf(t, r):
        if _is_key(t):
            return jax.random.wrap_key_data(jnp.asarray(r), impl=jax.random.key_impl(t))
        if isinstance(t, jax.Array):
            return jnp.asarray(r, dtype=t.dtype)
        return np.asarray(r, dtype=np.asarray(t).dtype)  # host leaves (e.g. an int64 step) stay on the host

    return jax.tree.map(leaf, template, restored)


class Checkpointer:
    """Numbered checkpoints of one run in `directory`, keeping the `max_to_keep` most recent."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            )
        except OSError as e:
            raise SorlError(f"cannot use checkpoint directory {self.directory}: {e.strerror or e}") from None

    def save(self, step: int, state: Any) -> None:
        """Save `state` as checkpoint `step` (asynchronously; `wait()` or `close()` to be sure it is on disk)."""
        try:
            self._manager.save(int(step), args=ocp.args.StandardSave(_to_host(state)), force=True)
        except OSError as e:
            raise SorlError(f"could not write checkpoint {step} in {self.directory}: {e.strerror or e}") from None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The checkpoint `step` (default: the latest) with the structure and dtypes of `template`."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise SorlError(f"no checkpoint in {self.directory}; train the run first (`sorl train ...`)")
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        except (ValueError, KeyError, TypeError, OSError, FileNotFoundError) as e:
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise SorlError(
                f"checkpoint {step} in {self.directory} does not match this agent or is corrupt ({msg}); "
                "retrain or point to the right run directory"
            ) from None
        return _rewrap(template, restored)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def latest_step(directory: str | Path) -> int | None:
    """The latest complete checkpoint step in `directory`, or None (without creating anything)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None
