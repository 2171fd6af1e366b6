"""Every `sorl` command in the README's and docs/*.md's command blocks works as written: its subcommand exists, each
of its flags is one that command's `--help` lists (an unknown flag before `--help` would not fail by itself, since
help exits before the parser checks the rest), the command with `--help` appended exits 0, and a sweep of a spec
that exists expands with `--dry-run`. All in-process, so the walk costs parsing, not interpreter starts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
NESTED = ("data", "plot")
"""Commands whose second word is a subcommand of its own (`sorl data generate`, `sorl plot scaling`)."""
SPECS = {p.stem for p in (ROOT / "experiments" / "specs").glob("*.toml")}


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page:line, argv after `sorl`) of every `sorl ...` command in a shell block (after `&&` too)."""
    out = []
    for page in PAGES:
        language = None  # None: outside a fenced block
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                language = line[3:].strip() if language is None else None
                continue
            if language not in SHELL_BLOCKS:
                continue
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["sorl"]:
                    out.append((f"{page.relative_to(ROOT)}:{number}", words[1:]))
    return out


COMMANDS = documented_commands()


def run(capsys, argv: list[str]) -> str:
    """stdout of `sorl ARGV` run in-process; fails unless it exits 0 with nothing on stderr."""
    capsys.readouterr()
    try:
        cli.main(argv)
    except SystemExit as e:
        assert e.code in (0, None), f"sorl {shlex.join(argv)}: exit {e.code}: {capsys.readouterr().err.strip()}"
    out, err = capsys.readouterr()
    assert not err.strip(), f"sorl {shlex.join(argv)}: {err.strip()}"
    return out


def subcommand(argv: list[str]) -> tuple[str, ...]:
    return tuple(argv[:2] if argv[0] in NESTED else argv[:1])


def test_the_docs_have_commands_in_every_part_of_the_tour():
    # The walk finds what it should: both set-up commands' `sorl train`, and every documented subcommand.
    assert len(COMMANDS) > 40
    quick = ["train", "--task", "cube-single-play", "--quick"]
    assert any(where.startswith("README.md:") and argv == quick for where, argv in COMMANDS)
    assert {subcommand(argv)[0] for _, argv in COMMANDS} >= {"train", "eval", "data", "sweep", "table", "plot", "bench"}


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(where, argv, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")  # one flag per help line
    path = subcommand(argv)
    known = help_flags(capsys, path)
    flags = [word.split("=", 1)[0] for word in argv if word.startswith("--")]
    unknown = [flag for flag in flags if flag not in known]
    command, help_command = shlex.join(["sorl", *argv]), shlex.join(["sorl", *path, "--help"])
    assert not unknown, f"{where}: `{command}`: {', '.join(unknown)} not in `{help_command}`"
    run(capsys, [*argv, "--help"])  # the command as written, up to its own help
    if path == ("sweep",) and argv[1] in SPECS:  # long: expand it without launching anything
        out = run(capsys, [*argv, "--dry-run", "--out", str(tmp_path / "runs")])
        assert f"sweep {argv[1]}: " in out


_HELP: dict[tuple[str, ...], frozenset[str]] = {}


def help_flags(capsys, path: tuple[str, ...]) -> frozenset[str]:
    """Every flag `sorl PATH --help` names (aliases and `--no-` forms included), read once per subcommand."""
    if path not in _HELP:
        _HELP[path] = frozenset(re.findall(r"--[A-Za-z][\w.-]*", run(capsys, [*path, "--help"])))
    return _HELP[path]
