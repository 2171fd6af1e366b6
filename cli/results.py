"""`sorl results`: regenerate every table and figure of the committed results from the committed run summaries.

A results page is a markdown file whose generated parts sit between markers, each naming the `sorl table` or
`sorl plot` command that makes it (paths relative to the file's own directory):

    <!-- results: table runs --level env,task -->
    ...the table, as `sorl table runs --level env,task` prints it...
    <!-- /results -->

    <!-- results: plot scaling runs --out figures -->
    ![scaling-sorl](figures/scaling-sorl.png)
    <!-- /results -->

`plot compute ...` works the same way; `verifier PATHS` and `k-probe PATHS` render the probes' summaries, and
`bench FILES` the saved output of `sorl bench --json` (a figure timed on one machine, kept beside the runs).

`regenerate` rewrites what lies between each pair of markers and nothing else, so the prose stays hand-written
while every number and figure in the page comes from the run directories (results.json, eval.csv, train.csv,
scaling.json) through the same code as the commands. Plots are written as PNG unless the block names
`--formats`. A block that cannot be made is one `SorlError` naming the file and the line; the page is left as it
was (each page is written once, atomically, after all its blocks are made).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from sorl.errors import SorlError

RESULTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "results"
"""The committed studies (experiments/results/<study>/README.md and its runs)."""

_BLOCK = re.compile(r"(<!-- results: (?P<command>.*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def pages(roots: Sequence[str | Path]) -> list[Path]:
    """The markdown files under `roots` (files or directories) that hold at least one results block."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise SorlError(f"{root} does not exist; give a results page (.md) or a directory of them")
        candidates = [root] if root.is_file() else sorted(root.rglob("*.md"))
        for path in candidates:
            if "<!-- results: " in path.read_text(errors="replace"):
                found.append(path)
    return found


def render_block(command: str, base: Path) -> str:
    """The generated text of one block: `table ...`, `plot scaling|compute|curves ...`, `verifier PATHS`,
    `k-probe PATHS` or `bench FILES`, run from `base`."""
    from cli.commands import PlotCompute, PlotCurves, PlotScaling, TableArgs
    from experiments import plots
    from experiments.aggregate import table

    words = shlex.split(command)
    kind, args = (" ".join(words[:2]), words[2:]) if words[:1] == ["plot"] else (" ".join(words[:1]), words[1:])
    if kind == "verifier":  # the verifier.json summaries of the runs under the paths (`sorl verifier`)
        from experiments.verifier import format_verifier

        return format_verifier([base / p for p in args])
    if kind == "k-probe":  # the k_probe.json summaries of the runs under the paths (`sorl k-probe`)
        from experiments.k_probe import format_k_probe

        return _relative(format_k_probe([base / p for p in args]), base)
    if kind == "bench":  # `sorl bench --json > FILE` outputs, each as the report `sorl bench` prints
        return "".join(f"```text\n{_bench_report(base / p)}\n```\n" for p in args)
    if kind == "table":
        t = _parse(TableArgs, args, command)
        if t.diagnostics is not None:
            from experiments.aggregate import diagnostics

            text = diagnostics([base / p for p in t.paths], t.diagnostics.split(","), last=t.last, K=t.K, N=t.N)
            return _relative(text, base)
        levels = [lv.strip() for lv in t.level.split(",") if lv.strip()]
        paths = [str(base / p) for p in t.paths]
        text = table(paths, fmt=t.format, K=t.K, N=t.N, levels=levels, compare=t.compare, reps=t.reps)
        return _relative(text, base)
    if kind in ("plot scaling", "plot compute", "plot curves"):
        cls = {"plot scaling": PlotScaling, "plot compute": PlotCompute, "plot curves": PlotCurves}[kind]
        p = _parse(cls, args, command)
        formats = [f for f in p.formats.split(",") if f.strip()] if "--formats" in args else ["png"]
        paths, out = [str(base / x) for x in p.paths], base / p.out
        if kind == "plot scaling":
            written = plots.plot_scaling(paths, out, stat=p.stat, formats=formats, reps=p.reps, title=p.title)
        elif kind == "plot compute":
            written = plots.plot_compute(paths, out, stat=p.stat, formats=formats, reps=p.reps, title=p.title)
        else:
            metrics = [m.strip() for m in p.metrics.split(",") if m.strip()] if p.metrics else None
            written = plots.plot_curves(
                paths, out, K=p.K, N=p.N, metrics=metrics, stat=p.stat, formats=formats, reps=p.reps
            )
        images = [w for w in written if w.suffix == ".png"] or written
        return "".join(f"![{w.stem}]({w.relative_to(base).as_posix()})\n" for w in images)
    raise SorlError(
        f"unknown results block '{command}': use table, plot scaling|compute|curves, verifier, k-probe or bench ..."
    )


def _bench_report(path: Path) -> str:
    import json

    from experiments.bench import format_report

    try:
        return format_report(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SorlError(
            f"{path} is not a readable `sorl bench --json` output ({type(e).__name__}: {e}); "
            "write it with `sorl bench ... --json > FILE`"
        ) from None


def _parse(cls: type, args: list[str], command: str):
    import tyro

    from cli.parse_errors import compact_parse_errors

    try:
        with compact_parse_errors():
            return tyro.cli(cls, args=args, prog=command.split()[0])
    except SystemExit:
        raise SorlError(f"bad arguments in results block '{command}'") from None


def _relative(text: str, base: Path) -> str:
    """Absolute paths under `base` in generated text (e.g. a note naming a run) written relative to it."""
    return text.replace(str(base.resolve()) + os.sep, "").replace(str(base) + os.sep, "")


def regenerate_page(path: Path) -> int:
    """Rewrite every results block of one page; returns how many there were."""
    text = path.read_text()
    base = path.parent
    pieces: list[str] = []
    last = 0
    count = 0
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        try:
            body = render_block(m["command"].strip(), base)
        except SorlError as e:
            raise SorlError(f"{path}:{line}: {e}") from None
        pieces += [text[last : m.start()], m.group(1), body if body.endswith("\n") else body + "\n", m.group(4)]
        last = m.end()
        count += 1
    pieces.append(text[last:])
    new = "".join(pieces)
    if new != text:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(new)
            os.replace(tmp, path)
        except OSError as e:
            raise SorlError(f"could not write {path}: {e.strerror or e}") from None
    return count


def default_roots() -> list[Path]:
    """experiments/results and, in a checkout, the project README (which shows the main table and figure)."""
    readme = RESULTS_DIR.parents[1] / "README.md"
    return [RESULTS_DIR] + ([readme] if readme.is_file() else [])


def regenerate(roots: Sequence[str | Path] | None = None) -> list[tuple[Path, int]]:
    """Regenerate every results page under `roots` (default: `default_roots()`); [(page, blocks)]."""
    roots = roots or default_roots()
    found = pages(roots)
    if not found:
        where = ", ".join(map(str, roots))
        raise SorlError(f"no results page (a .md file with '<!-- results: ... -->' blocks) under {where}")
    return [(page, regenerate_page(page)) for page in found]


@dataclass(frozen=True)
class ResultsArgs:
    """Regenerate every table and figure of the results pages from the run summaries they name."""

    paths: tyro.conf.Positional[tuple[str, ...]] = ()
    """Results pages (.md) or directories of them (default: experiments/results and the project README)."""


def results(args: Annotated[ResultsArgs, tyro.conf.arg(name="")]) -> None:
    """Rewrite the `<!-- results: ... -->` blocks of the results pages (tables and figures) from the committed runs."""
    for page, blocks in regenerate(args.paths):
        print(f"regenerated {page} ({blocks} blocks)")
