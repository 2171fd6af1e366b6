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

Checksums: once orbax has committed a step, `sorl_checksums.json` (written atomically into the step directory)
records the size and sha256 of every file in it. Every read of a checkpoint (`restore`, `saved_layout`: `sorl
eval`, resume, videos, the probes) first checks them, so a damaged or truncated file is one line naming the file
and what to do before orbax reads anything (orbax's zstd chunks carry no checksum: a flipped byte in one restores
silently different weights). A checkpoint without that file (written before checksums, or by a process killed
between orbax's commit and the checksums) still loads; a restored agent with non-finite values (training never
saves one) is refused as damaged either way. Cost, measured: a default SORL checkpoint (17 MB on disk) hashes in
0.05 s, once per read, against seconds of compiling and evaluating that follow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from envs.manifest import sha256_file
from runner.runs import RESULTS
from sorl.errors import SorlError

# orbax logs every save/restore through absl, and a failed write with a traceback at ERROR level; keep the
# terminal for our own lines (a failure reaches the user as one SorlError line).
logging.getLogger("absl").setLevel(logging.CRITICAL)

COMMIT_MARKER = "commit_success.txt"
_METADATA = "_CHECKPOINT_METADATA"
CHECKSUMS = "sorl_checksums.json"
"""Per step directory: {"version": 1, "files": {relative path: {"size": bytes, "sha256": hex}}}."""
_CHECKSUMS_VERSION = 1


def _step_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS and not p.name.endswith(".tmp"))


def write_checksums(step_dir: Path) -> None:
    """Record size and sha256 of every file of a committed step directory, atomically (temporary file, fsync,
    rename): a reader sees the complete record or none."""
    files = {}
    for p in _step_files(step_dir):
        files[p.relative_to(step_dir).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    fd, tmp = tempfile.mkstemp(prefix=f".{CHECKSUMS}.", suffix=".tmp", dir=step_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": _CHECKSUMS_VERSION, "files": files}, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; the checkpoint's other files follow the umask
        os.replace(tmp, step_dir / CHECKSUMS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checksum_problem(step_dir: Path) -> str | None:
    """What is wrong with a step directory's files against its checksums, or None (also None when it has no
    checksums: a checkpoint from before they were written)."""
    record = step_dir / CHECKSUMS
    try:
        data = json.loads(record.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise ValueError("no 'files' table")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its checksum file {CHECKSUMS} is unreadable ({_one_line(e)})"
    for name, want in sorted(files.items()):
        path = step_dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} is unreadable ({_one_line(e)})"
        if size != want.get("size"):
            return f"{name} has {size} bytes, {want.get('size')} when written (truncated or overwritten)"
        try:
            digest = sha256_file(path)
        except OSError as e:
            return f"{name} is unreadable ({_one_line(e)})"
        if digest != want.get("sha256"):
            return f"{name} changed since it was written (sha256 differs)"
    return None


def _ignore_orbax_late_callbacks() -> None:
    """After orbax fails to read a damaged checkpoint, tensorstore reads still in flight finish later and call back
    into orbax's event loop, already closed: Python prints each 'RuntimeError: Event loop is closed' traceback
    (through `sys.unraisablehook`) at exit, under our one error line. Those are dropped; anything else is not."""
    previous = sys.unraisablehook
    if getattr(previous, "_sorl_quiet", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._sorl_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    # The same late reads can also end as asyncio tasks whose failure nobody awaited: asyncio logs them at garbage
    # collection ("Task exception was never retrieved", with a traceback). Those of a damaged checkpoint's reads go.
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_read_failures)


def _drop_unretrieved_read_failures(record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith("Task exception was never retrieved"):
        return True
    e = record.exc_info[1] if record.exc_info else None
    if e is None:
        ctx = getattr(record, "args", None)
        e = ctx.get("exception") if isinstance(ctx, dict) else None
    text = str(e) if e is not None else str(record.getMessage())
    return not any(m in text for m in ("OCDBT", "zarr", "tensorstore", "Event loop is closed"))


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


def _non_finite_leaf(tree: Any) -> str | None:
    """The path of the first floating-point leaf of `tree` holding a NaN or an infinity, or None."""
    if tree is None:
        return None
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(x)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return jax.tree_util.keystr(path)
    return None


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
        self._checked: set[int] = set()  # steps whose checksums matched (each read once per Checkpointer)
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
            write_checksums(self.directory / str(int(step)))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore report I/O failures with many exception types
            self._failed = True
            _ignore_orbax_late_callbacks()
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

    def _damaged(self, step: int, what: str) -> SorlError:
        step_dir = self.directory / str(step)
        earlier = [s for s in self.all_steps() if s < step]
        results = self.directory.parent / RESULTS
        if earlier and results.is_file():  # a finished run: training redoes the rest once its results are gone too
            fix = (
                f"delete {step_dir} to fall back to checkpoint {earlier[-1]} (`sorl eval` then uses it; delete "
                f"{results} too and the same `sorl train` command redoes the rest), or retrain"
            )
        elif earlier:
            fix = (
                f"delete {step_dir} to fall back to checkpoint {earlier[-1]} (eval and resume then use it), or retrain"
            )
        else:
            fix = f"it is the run's only checkpoint: retrain (delete {self.directory.parent} or use another --run-dir)"
        return SorlError(f"checkpoint {step} in {self.directory} is corrupt: {what}; {fix}")

    def check(self, step: int) -> None:
        """SorlError unless checkpoint `step` is complete and its files match the checksums written with it (read
        once per step and Checkpointer)."""
        step = int(step)
        if step in self._checked:
            return
        if not is_complete(self.directory / str(step)):
            have = ", ".join(map(str, self.all_steps())) or "none"
            raise SorlError(f"no complete checkpoint {step} in {self.directory} (complete: {have})")
        problem = checksum_problem(self.directory / str(step))
        if problem:
            raise self._damaged(step, problem)
        self._checked.add(step)

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The checkpoint `step` (default: the latest) with the structure and dtypes of `template`."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise SorlError(f"no checkpoint in {self.directory}; train the run first (`sorl train ...`)")
        self.check(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways inside orbax/tensorstore
            _ignore_orbax_late_callbacks()
            msg = _one_line(e)
            raise SorlError(
                f"checkpoint {step} in {self.directory} does not match this agent or is corrupt ({msg}); "
                "retrain or point to the right run directory"
            ) from None
        bad = _non_finite_leaf(restored.get("agent") if isinstance(restored, dict) else None)
        if bad:
            raise self._damaged(step, f"agent{bad} holds non-finite values, which training never saves")
        return _rewrap(template, restored)

    def saved_layout(self, step: int) -> dict[str, Any]:
        """The structure of checkpoint `step` with a `jax.ShapeDtypeStruct` per array, from its metadata alone."""
        self.check(step)
        try:
            tree = self._manager.item_metadata(int(step))
            tree = getattr(tree, "tree", tree)
            return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(tree))
        except Exception as e:  # noqa: BLE001 - orbax reports a missing or damaged item in many ways
            _ignore_orbax_late_callbacks()
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
