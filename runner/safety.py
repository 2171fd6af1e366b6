"""What keeps a long run safe: a run-directory lock, graceful stops on SIGTERM/SIGINT, and finiteness checks.

- `lock_run_dir(path)`: an exclusive lock (`sorl.locks`) on `RUN_DIR/.lock`. A second process pointed at the same run
  directory is refused with one line; the operating system drops the lock when its holder dies (even by
  SIGKILL), so a killed run never leaves the directory stuck. Functions decorated with `@releases_locks`
  release every lock taken during the call when it returns or raises. `check_unlocked(path)` asks the same
  question without creating or writing the lock file: a command checks every directory before it writes to any.
- `GracefulStop`: while active, the first SIGTERM (Slurm preemption) or SIGINT (Ctrl-C) only sets a flag; the
  training loop checkpoints at its next logged step and raises `Interrupted` (exit code 128 + signal: 143 for
  SIGTERM, 130 for SIGINT) with a one-line message saying how to continue. A second signal stops at once.
- `first_non_finite(infos, ...)` / `non_finite_leaf(tree)`: the first non-finite logged value (by update) and
  the first non-finite floating-point leaf of the agent state (parameters, optimizer state).
- `inject_nan(infos, ..., at)`: a TEST-ONLY hook. A Trainer given `inject_nan_at=S` (by default the step in the
  environment variable `SORL_TEST_INJECT_NAN_AT_STEP`, read once when the Trainer is built, so that tests can
  set it for a `sorl train` process) overwrites the first loss it logs for update S with NaN, so tests can check
  what a diverging run does. Never set it outside tests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sorl.errors import SorlError
from sorl.locks import FileLock

LOCK_FILE = ".lock"
TEST_NAN_ENV = "SORL_TEST_INJECT_NAN_AT_STEP"
"""Test-only: the Trainer makes the logged loss of this update NaN (see `inject_nan`)."""

# --------------------------------------------------------------------------------------------- the lock


class RunLock:
    """An exclusive, non-blocking lock on `DIR/.lock` (`sorl.locks.FileLock`); `release()` (or process death)
    drops it."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._lock = FileLock(self.path)

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> RunLock:
        try:
            ok = self._lock.acquire(blocking=False)
        except OSError as e:
            raise SorlError(f"cannot lock run directory {self.directory}: {e.strerror or e}") from None
        if not ok:
            raise self._in_use(self._lock.holder)
        return self

    def check(self) -> None:
        """SorlError if another process (or another lock of this one) holds the lock; creates and writes nothing:
        a command checks every run directory it would write to before it writes to any (`acquire` follows)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):  # no lock file: nobody has locked the directory
            return
        except OSError as e:
            raise SorlError(f"cannot lock run directory {self.directory}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # dropped again when the descriptor closes
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._in_use(_pid_in(fd)) from None
            raise SorlError(f"cannot lock run directory {self.directory}: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def _in_use(self, holder: str | None) -> SorlError:
        who = f"process {holder}" if holder else "another process"
        return SorlError(
            f"run directory {self.directory} is in use by {who} (a sorl run is writing to it); "
            "wait for it to finish or stop it, or choose another --run-dir"
        )

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _pid_in(fd: int) -> str | None:
    """The pid a lock's holder wrote into the lock file (`sorl.locks.FileLock`), if any."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


_scopes = threading.local()


def releases_locks(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: every lock taken by `lock_run_dir` during a call is released when the call ends."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack = _scopes.__dict__.setdefault("stack", [])
        stack.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for lock in reversed(stack.pop()):
                lock.release()

    return wrapper


def lock_run_dir(directory: str | Path) -> RunLock:
    """Lock a run directory for this process (SorlError if another process holds it).

    Inside a `@releases_locks` call the lock is released when that call ends. Otherwise keep the returned
    object (dropping it releases the lock) and call `release()` when done.
    """
    lock = RunLock(directory).acquire()
    stack = getattr(_scopes, "stack", None)
    if stack:
        stack[-1].append(lock)
    return lock


def check_unlocked(directory: str | Path) -> None:
    """SorlError if a run directory is locked by another process (`RunLock.check`); nothing is created."""
    RunLock(directory).check()


# ------------------------------------------------------------------------------------- graceful stop


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped training at a checkpoint; the message says how to continue.

    Like Ctrl-C's KeyboardInterrupt (and unlike SorlError) it passes through `except Exception`, so a caller
    that goes on after a failed run (a sweep) stops instead. `sorl` prints `interrupted: MESSAGE` and exits
    with `exit_code` (128 + the signal number: 143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


def resume_command() -> str:
    """The command line to run again: `sorl ...` when called from the `sorl` command, else ''."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if argv0 == "sorl":
        return shlex.join(["sorl", *sys.argv[1:]])
    if argv0 in ("main.py", "__main__.py") and Path(sys.argv[0]).parent.name == "cli":
        return shlex.join(["python", "-m", "cli", *sys.argv[1:]])
    return ""


class GracefulStop:
    """Within `with GracefulStop() as stop:`, SIGTERM/SIGINT set `stop.signum` instead of killing the process.

    The loop polls `stop.requested` at chunk boundaries. A second signal raises KeyboardInterrupt at once. Off
    the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now (the last complete checkpoint stays valid)
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        if sys.stderr is not None and sys.stderr.isatty():
            print(
                f"\n{signal.Signals(signum).name}: stopping at the next logged step with a checkpoint "
                "(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                with contextlib.suppress(ValueError, OSError):  # exotic embeddings: no handler, default behaviour
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def _restore(self) -> None:
        for s, old in self._old.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, old)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def interrupted(self, step: int, run_dir: Path | str, checkpoint_step: int | None) -> Interrupted:
        """The exception to raise once the loop stopped at `step` (`checkpoint_step`: the checkpoint it kept)."""
        signum = self.signum if self.signum is not None else signal.SIGINT
        name = signal.Signals(signum).name
        cmd = resume_command()
        again = f"run the same command again to continue: {cmd}" if cmd else "run the same command again to continue"
        if checkpoint_step is None:
            kept = "no checkpoint yet, so it will start over"
        elif checkpoint_step == step:
            kept = f"saved a checkpoint at step {step}"
        else:
            kept = f"kept the last checkpoint (step {checkpoint_step})"
        return Interrupted(f"{name} at step {step} of {run_dir}: {kept}; {again}", signum)


# --------------------------------------------------------------------------------------- finiteness


def first_non_finite(infos: Mapping[str, Any], step_before: int) -> tuple[str, int] | None:
    """(name, step) of the earliest non-finite logged value of a chunk that started at `step_before`.

    `infos[name]` holds one value per update (leading axis; extra axes, e.g. seeds, are reduced); update i of
    the chunk ends at step `step_before + i + 1`. Ties between names go to losses, then alphabetical order.
    """
    best: tuple[int, int, str] | None = None
    for name, value in infos.items():
        v = np.asarray(value, np.float64)
        if v.ndim == 0:
            v = v[None]
        bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
        if bad.any():
            key = (int(np.argmax(bad)), 0 if "loss" in name else 1, name)
            best = key if best is None or key < best else best
    if best is None:
        return None
    return best[2], step_before + best[0] + 1


def non_finite_leaf(tree: Any) -> str | None:
    """The path of the first floating-point leaf of `tree` holding a NaN or an infinity, or None."""
    import jax
    import jax.numpy as jnp

    leaves = [
        (path, x)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    if not leaves:
        return None
    ok = np.asarray(jax.device_get(_all_finite([x for _, x in leaves])))
    if ok.all():
        return None
    return jax.tree_util.keystr(leaves[int(np.argmin(ok))][0])


@functools.cache
def _finite_fn() -> Callable[[list[Any]], Any]:
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def _all_finite(xs: list[Any]) -> Any:
    return _finite_fn()(xs)


def nan_test_step_from_env() -> int | None:
    """TEST-ONLY: the step named by `SORL_TEST_INJECT_NAN_AT_STEP`, or None. Read once, when a Trainer is built."""
    raw = os.environ.get(TEST_NAN_ENV)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise SorlError(f"{TEST_NAN_ENV}={raw!r}: must be an integer step (a test-only hook)") from None


def inject_nan(infos: dict[str, Any], step_before: int, n: int, at: int | None) -> dict[str, Any]:
    """TEST-ONLY: with `at` in this chunk (step_before < at <= step_before + n), the first loss logged (the first
    info, if none is called a loss) is set to NaN at update `at`. With `at` None, `infos` is returned untouched."""
    if at is None or not step_before < at <= step_before + n or not infos:
        return infos
    names = sorted(infos)
    name = next((k for k in names if "loss" in k), names[0])
    value = np.array(infos[name], np.float64 if np.asarray(infos[name]).dtype == np.float64 else np.float32)
    value[at - step_before - 1] = np.nan
    return {**infos, name: value}
