"""tyro's boxed parse errors reprinted as one `error: ...` line (exit code 2), for every `sorl` subcommand.

`compact_parse_errors()` holds stderr while tyro parses; a parse error (SystemExit with a boxed message) becomes
one line. `after_parsing(fn)` wraps a command function so stderr is the terminal again before it runs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BOX_EDGE = "╭╰┌└"
_SIDES = "│┃|"


def _unboxed(lines: list[str]) -> list[str] | None:
    """tyro's error drawn without UTF-8 (stdout in another encoding): ` Title`, a rule ` ----`, then the content
    indented by two spaces; as the content lines of a box (`│ ...`), or None if `lines` are not such an error."""
    for i in range(len(lines) - 1):
        rule = lines[i + 1].strip()
        if lines[i].startswith(" ") and lines[i].strip() and len(rule) > 3 and set(rule) == {"-"}:
            return ["│" + line[1:] for line in lines[i + 2 :] if line.startswith("  ")]
    return None


def _compact(text: str) -> str | None:
    """tyro's boxed error as one line, or None if `text` holds no box."""
    text = _ANSI.sub("", text)
    lines = text.splitlines()
    if not any(line.strip()[:1] in _BOX_EDGE for line in lines if line.strip()):
        unboxed = _unboxed(lines)
        if unboxed is None:
            return None
        lines = unboxed
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
def compact_parse_errors(rewrite: Callable[[str], str] | None = None) -> Iterator[None]:
    """Within: stderr is held until `parsed()`; a tyro parse error (SystemExit with a boxed message) becomes
    one line `error: ...` on stderr (`rewrite(line)` if given) and exit code 2. Help (`--help`, exit 0) is passed
    through unchanged."""
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
        if line is not None and rewrite is not None:
            line = rewrite(line)
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
