"""The bad-input catalogue's one assertion: a refused command exits non-zero with one `error: ...` line on stderr
naming the problem, prints no traceback, and leaves every file that existed before it byte-identical (and creates
none that a person would then have to clean up).

Catalogue files (`tests/test_bad_inputs*.py`) describe each case as a `Refusal` and run it through `assert_refused`;
`tests/test_bad_inputs.py::test_catalogue_is_large_and_covers_every_kind` counts them across files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cli import main as cli


@dataclasses.dataclass(frozen=True)
class Refusal:
    """One catalogue case: `argv` (with `{tmp}` for the test's directory) must be refused with a line containing
    `expect`; `setup(tmp)` builds what the command meets on disk; `watch` lists the paths under `tmp` whose files
    must be byte-identical afterwards (default: all of `tmp`); `creates_nothing` also asserts that no new file
    appeared under the watched paths."""

    id: str
    argv: Sequence[str]
    expect: str
    setup: Callable[[Path], None] | None = None
    kind: str = ""
    watch: Sequence[str] = ("",)
    creates_nothing: bool = True
    stand_in: bool = False


def snapshot(root: Path, watch: Sequence[str] = ("",)) -> dict[str, bytes]:
    """sha256 (with the mode bits) of every file under the watched paths of `root`, keyed by relative path."""
    out: dict[str, bytes] = {}
    for w in watch:
        base = root / w
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []
        for p in paths:
            if p.is_symlink():
                continue
            h = hashlib.sha256(p.read_bytes())
            h.update(oct(p.stat().st_mode).encode())
            out[str(p.relative_to(root))] = h.digest()
    return out


def assert_refused(
    tmp: Path,
    capsys: pytest.CaptureFixture,
    argv: Sequence[str],
    expect: str,
    watch: Sequence[str] = ("",),
    creates_nothing: bool = True,
) -> str:
    """Run `sorl ARGV` in-process and assert the catalogue's contract; returns the error line."""
    before = snapshot(tmp, watch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main([a.replace("{tmp}", str(tmp)) for a in argv])
    out, err = capsys.readouterr()
    assert e.value.code not in (0, None), (out, err)
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]
    after = snapshot(tmp, watch)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"a refused command changed or removed {changed}"
    if creates_nothing:
        created = sorted(set(after) - set(before))
        assert not created, f"a refused command created {created}"
    return lines[0]


def run_case(request: pytest.FixtureRequest, tmp: Path, capsys: pytest.CaptureFixture, case: Refusal) -> str:
    """Set up and check one `Refusal` (the stand-in agent fixture `stand_in` is requested when the case needs it)."""
    if case.stand_in:
        request.getfixturevalue("stand_in")
    if case.setup is not None:
        case.setup(tmp)
    return assert_refused(tmp, capsys, case.argv, case.expect, case.watch, case.creates_nothing)
