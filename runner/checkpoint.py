"""Orbax checkpoints of a training state: the agent pytree, the data-sampling key and the step.

The state saved is a pytree of arrays, e.g. `{"agent": agent, "data_rng": key, "step": step}`. Typed PRNG
keys (`jax.random.key`) are stored as their raw key data and re-wrapped on restore, so any agent pytree
(including one that holds its own keys) round-trips.

Saves are synchronous and atomic: orbax writes `<step>.orbax-checkpoint-tmp-*`, puts `commit_success.txt` in it
and renames it to `<step>` on commit. Only a step directory holding that marker (or a commit timestamp in its
metadata) counts as complete; anything else — a temporary directory left by a killed process or by a failed
save (disk full), an empty or half-copied step directory — is ignored by readers and removed by the writer
(`writer=True`, the training loop, which holds the run directory's lock). A failed save raises one SorlError
line and leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sorl.errors import SorlError

# orbax logs every save/restore through absl, and a failed write with a traceback at ERROR level; keep the
# terminal for our own lines (a failure reaches the user as one SorlError line).
logging.getLogger("absl").setLevel(logging.CRITICAL)

COMMIT_MARKER = "commit_success.txt"
_METADATA = "_CHECKPOINT_METADATA"


def is_complete(step_dir: Path) -> bool:
    """Whether `step_dir` (named by its step) holds a committed orbax checkpoint."""
    if not step_dir.name.isdigit() or not step_dir.is_dir():
        return False
    if (step_dir / COMMIT_MARKER).is_file():
        return True
    try:  # orbax versions that write no marker record the commit time in the step's metadata
        return json.loads((step_dir / _METADATA).read_text()).get("commit_timestamp_nsecs") is not None
    except (OSError, ValueError, AttributeError):
        return False


def complete_steps(directory: str | Path) -> list[int]:
    """The steps of the complete checkpoints in `directory`, ascending (nothing is created)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if is_complete(p))


def _one_line(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__


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
    """Numbered checkpoints of one run in `directory`, keeping the `max_to_keep` most recent.

    `writer=True` (the one process training the run) first removes what a killed process or a failed save left
    behind: temporary directories and step directories that were never committed.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3, *, writer: bool = False):
        self.directory = Path(directory).absolute()
        self._failed = False
        try:
            if writer:
                self._remove_incomplete()
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    create=True,
                    enable_async_checkpointing=False,
                    cleanup_tmp_directories=writer,
                ),
                item_handlers=ocp.StandardCheckpointHandler(),  # so that a new manager can read the metadata
            )
        except OSError as e:
            raise SorlError(f"cannot use checkpoint directory {self.directory}: {_one_line(e)}") from None

    def _remove_incomplete(self) -> None:
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            if p.is_dir() and not is_complete(p) and (p.name.isdigit() or ".orbax-checkpoint-tmp" in p.name):
                shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, state: Any) -> None:
        """Save `state` as checkpoint `step`; on return it is on disk and complete. A failure (disk full,
        unwritable directory) raises one SorlError line; the previous checkpoint stays the latest."""
        host = _to_host(state)
        try:
            self._manager.save(int(step), args=ocp.args.StandardSave(host), force=True)
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore report I/O failures with many exception types
            self._failed = True
            previous = [s for s in complete_steps(self.directory) if s != int(step)]
            kept = "there is no earlier checkpoint"
            if previous:
                kept = f"the last complete checkpoint (step {previous[-1]}) is still valid"
            raise SorlError(
                f"could not write checkpoint {step} in {self.directory}: {_one_line(e)}; {kept}. "
                "Free some space or fix the permissions, then run the same command again to continue"
            ) from None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints (uncommitted or temporary directories are not checkpoints)."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The checkpoint `step` (default: the latest) with the structure and dtypes of `template`."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise SorlError(f"no checkpoint in {self.directory}; train the run first (`sorl train ...`)")
        if not is_complete(self.directory / str(step)):
            have = ", ".join(map(str, self.all_steps())) or "none"
            raise SorlError(f"no complete checkpoint {step} in {self.directory} (complete: {have})")
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways inside orbax/tensorstore
            msg = _one_line(e)
            raise SorlError(
                f"checkpoint {step} in {self.directory} does not match this agent or is corrupt ({msg}); "
                "retrain or point to the right run directory"
            ) from None
        return _rewrap(template, restored)

    def saved_layout(self, step: int) -> dict[str, Any]:
        """The structure of checkpoint `step` with a `jax.ShapeDtypeStruct` per array, from its metadata alone."""
        try:
            tree = self._manager.item_metadata(int(step))
            tree = getattr(tree, "tree", tree)
            return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(tree))
        except Exception as e:  # noqa: BLE001 - orbax reports a missing or damaged item in many ways
            raise SorlError(
                f"checkpoint {step} in {self.directory} is corrupt or unreadable ({_one_line(e)}); retrain or point "
                "to the right run directory"
            ) from None

    def close(self) -> None:
        """Finish and release; after a failed save, errors while closing are not reported again."""
        if self._failed:
            with contextlib.suppress(Exception):
                self._manager.close()
            return
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        except Exception as e:  # noqa: BLE001
            raise SorlError(f"could not finish writing checkpoints in {self.directory}: {_one_line(e)}") from None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def latest_step(directory: str | Path) -> int | None:
    """The latest complete checkpoint step in `directory`, or None (without creating anything)."""
    steps = complete_steps(directory)
    return steps[-1] if steps else None
