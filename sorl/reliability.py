"""What keeps a long run safe: a run-directory lock, graceful stops on SIGTERM/SIGINT, finiteness checks, and
one-line command-line parse errors.

- `lock_run_dir(path)`: an exclusive `fcntl.flock` on `RUN_DIR/.lock`. A second process pointed at the same run
  directory is refused with one line; the operating system drops the lock when its holder dies (even by
  SIGKILL), so a killed run never leaves the directory stuck. Functions decorated with `@releases_locks`
  release every lock taken during the call when it returns or raises.
- `GracefulStop`: while active, the first SIGTERM (Slurm preemption) or SIGINT (Ctrl-C) only sets a flag; the
  training loop checkpoints at its next logged step and raises `Interrupted` (exit code 128 + signal: 143 for
  SIGTERM, 130 for SIGINT) with a one-line message saying how to continue. A second signal stops at once.
- `first_non_finite(infos, ...)` / `non_finite_leaf(tree)`: the first non-finite logged value (by update) and
  the first non-finite floating-point leaf of the agent state (parameters, optimizer state).
- `inject_test_nan(infos, ...)`: a TEST-ONLY hook. When the environment variable `SORL_TEST_INJECT_NAN_AT_STEP`
  is set to a step S, the training loop overwrites the first loss it logs for update S with NaN, so tests can
  check what a diverging run does. Never set it outside tests.
- `compact_parse_errors(...)`: tyro's boxed parse errors reprinted as one `error: ...` line (exit code 2).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import io
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sorl.errors import SorlError

LOCK_FILE = ".lock"
TEST_NAN_ENV = "SORL_TEST_INJECT_NAN_AT_STEP"
"""Test-only: the training loop makes the logged loss of this update NaN (see `inject_test_nan`)."""

# --------------------------------------------------------------------------------------------- the lock


class RunLock:
    """An exclusive, non-blocking `flock` on `DIR/.lock`; `release()` (or process death) drops it."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SorlError(f"cannot write to run directory {self.directory}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"process {holder}" if holder else "another process"
                raise SorlError(
                    f"run directory {self.directory} is in use by {who} (a sorl run is writing to it); "
                    "wait for it to finish or stop it, or choose another --run-dir"
                ) from None
            raise SorlError(f"cannot lock run directory {self.directory}: {e.strerror or e}") from None
        with contextlib.suppress(OSError):  # the holder's pid, for the message above; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_pid(fd: int) -> str | None:
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
    if argv0 in ("cli.py", "__main__.py") and "sorl" in sys.argv[0]:
        return shlex.join(["python", "-m", "sorl.cli", *sys.argv[1:]])
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


def inject_test_nan(infos: dict[str, Any], step_before: int, n: int) -> dict[str, Any]:
    """TEST-ONLY hook: with `SORL_TEST_INJECT_NAN_AT_STEP=S` in the environment and S in this chunk
    (step_before < S <= step_before + n), the first loss logged (the first info, if none is called a loss) is
    set to NaN at update S. Without the variable, `infos` is returned untouched."""
    raw = os.environ.get(TEST_NAN_ENV)
    if not raw:
        return infos
    try:
        at = int(raw)
    except ValueError:
        raise SorlError(f"{TEST_NAN_ENV}={raw!r}: must be an integer step (a test-only hook)") from None
    if not step_before < at <= step_before + n or not infos:
        return infos
    names = sorted(infos)
    name = next((k for k in names if "loss" in k), names[0])
    value = np.array(infos[name], np.float64 if np.asarray(infos[name]).dtype == np.float64 else np.float32)
    value[at - step_before - 1] = np.nan
    return {**infos, name: value}


# ---------------------------------------------------------------------------------- parse errors


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BOX_EDGE = "╭╰┌└"
_SIDES = "│┃|"


def _compact(text: str) -> str | None:
    """tyro's boxed error as one line, or None if `text` holds no box."""
    text = _ANSI.sub("", text)
    lines = text.splitlines()
    if not any(line.lstrip()[:1] in _BOX_EDGE for line in lines):
        return None
    sections: list[list[str]] = [[]]
    help_hint = ""
    for line in lines:
        s = line.strip()
        if not s or s[0] in _BOX_EDGE:
            continue
        if s[0] in _SIDES:
            s = s[1:]
        if s and s[-1] in _SIDES:
            s = s[:-1]
        body = s.rstrip()
        stripped = body.strip()
        if not stripped:
            continue
        if set(stripped) <= set("─━-"):
            sections.append([])
            continue
        indent = len(body) - len(body.lstrip())
        sections[-1].append((indent, stripped))  # type: ignore[arg-type]
    out: list[str] = []
    for sec in sections:
        if not sec:
            continue
        first = sec[0][1]
        if first.startswith("For full helptext"):
            words = " ".join(t for _, t in sec)
            m = re.search(r"(?:run|see):?\s+(.+?--help)", words)
            help_hint = m.group(1) if m else ""
            continue
        if first.startswith("Argument helptext"):
            continue
        base = min(i for i, _ in sec)
        kept = [t for i, t in sec if i - base <= 4]
        out.append(" ".join(kept))
    if not out:
        return None
    msg = "; ".join(out)
    msg = re.sub(r"\s+", " ", msg).strip()
    if help_hint:
        msg += f" (see `{help_hint}`)"
    return msg


class _StderrCapture(io.TextIOBase):
    """Holds what is written to stderr while parsing; `release()` stops capturing (and replays nothing)."""

    def __init__(self, real: Any):
        self.real = real
        self.buffer_text = io.StringIO()
        self.capturing = True

    def _target(self) -> Any:
        # A stale capture can outlive the stream it wrapped (pytest's capsys closes its own per test): fall back
        # to the process's stderr rather than fail on a closed file.
        return sys.__stderr__ if getattr(self.real, "closed", False) else self.real

    def write(self, s: str) -> int:
        if self.capturing:
            return self.buffer_text.write(s)
        return self._target().write(s)

    def flush(self) -> None:
        if not self.capturing:
            self._target().flush()

    def isatty(self) -> bool:
        return False if self.capturing else self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")

    def release(self) -> None:
        if self.capturing:
            self.capturing = False
            self._target().write(self.buffer_text.getvalue())
            self.buffer_text = io.StringIO()


_active_capture: list[_StderrCapture] = []


def parsed() -> None:
    """Call once the command line is parsed: stderr goes to the terminal again (see `compact_parse_errors`)."""
    while _active_capture:
        cap = _active_capture.pop()
        cap.release()
        if sys.stderr is cap:
            sys.stderr = cap.real


def after_parsing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command function run by tyro so that stderr is restored before it starts."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        parsed()
        return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def compact_parse_errors() -> Iterator[None]:
    """Within: stderr is held until `parsed()`; a tyro parse error (SystemExit with a boxed message) becomes
    one line `error: ...` on stderr and exit code 2. Help (`--help`, exit 0) is passed through unchanged."""
    real = sys.stderr
    cap = _StderrCapture(real)
    _active_capture.append(cap)
    sys.stderr = cap
    try:
        yield
    except SystemExit as e:
        held = cap.buffer_text.getvalue() if cap.capturing else ""
        failed = e.code not in (0, None)
        line = _compact(held) if failed and held else None
        if line is not None:
            cap.buffer_text = io.StringIO()
            parsed()
            print(f"error: {line}", file=real, flush=True)
            raise SystemExit(2) from None
        parsed()
        raise
    finally:
        parsed()
        if sys.stderr is cap:
            sys.stderr = real
