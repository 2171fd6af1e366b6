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
`--formats`.

Nothing a person wrote is ever lost. Markers are whole lines (a marker quoted inside a line of prose is prose), and
every page is read strictly before anything is made: a page that is not UTF-8, a start without its `-->`, an end
without a start, a block without its end, a block inside another, or a command that is empty, unknown, has
unbalanced quotes or bad arguments is one `SorlError` naming the file and the line. Then every block of every page
is made (figures drawn into a scratch directory), and only then are the figures moved into place and the pages
that changed written, each atomically and with its own line endings (a CRLF page stays CRLF). A refusal leaves
every page byte-identical.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from sorl.errors import SorlError

RESULTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "results"
"""The committed studies (experiments/results/<study>/README.md and its runs)."""

START = "<!-- results:"
END = "<!-- /results -->"
KINDS = ("table", "plot scaling", "plot compute", "plot curves", "verifier", "k-probe", "bench")
"""What a block's command may start with."""


@dataclass(frozen=True)
class Block:
    """One results block of a page: its command, the lines of its start and end markers (0-based), and the line
    ending its generated text is written with (the start marker's: a CRLF page stays CRLF)."""

    command: str
    start: int
    end: int
    eol: str

    @property
    def line(self) -> int:
        return self.start + 1


@dataclass(frozen=True)
class Page:
    """A results page as read: its path, its lines (each with its own line ending) and its blocks."""

    path: Path
    lines: list[str]
    blocks: list[Block]


def _is_marker(line: str) -> bool:
    s = line.strip()
    return s.startswith(START) or s.startswith("<!-- /results")


def pages(roots: Sequence[str | Path]) -> list[Path]:
    """The markdown files under `roots` (files or directories) that hold at least one results marker line (a line
    that starts with `<!-- results:` or `<!-- /results`; a marker quoted inside prose is prose)."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise SorlError(f"{root} does not exist; give a results page (.md) or a directory of them")
        candidates = [root] if root.is_file() else sorted(root.rglob("*.md"))
        for path in candidates:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise SorlError(f"cannot read {path}: {e.strerror or e}") from None
            if any(_is_marker(line) for line in data.decode("utf-8", errors="replace").split("\n")):
                found.append(path)
    return list(dict.fromkeys(found))


def _split_lines(text: str) -> list[str]:
    """The lines of `text`, each with its own ending (LF or CRLF; the last line may have none)."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    return out + ([lines[-1]] if lines[-1] else [])


def _command_words(command: str) -> tuple[str, list[str]]:
    """(kind, arguments) of a block's command; SorlError for unbalanced quotes, an empty or an unknown command."""
    if not command:
        raise SorlError(f"empty results block command; write {START} table RUNS --> (or {', '.join(KINDS[1:])})")
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise SorlError(f"results block command '{command}' has unbalanced quotes ({e}); balance them") from None
    kind, args = (" ".join(words[:2]), words[2:]) if words[:1] == ["plot"] else (" ".join(words[:1]), words[1:])
    if kind not in KINDS:
        raise SorlError(
            f"unknown results block '{command}': use table, plot scaling|compute|curves, verifier, k-probe or bench ..."
        )
    return kind, args


def read_page(path: Path) -> Page:
    """A page's lines and blocks, parsed strictly: one SorlError naming the file and the line for a page that is
    not UTF-8, a start marker without its `-->`, an end marker without a start, a block without its end, a block
    opened inside another, or a command that is empty, unknown or has unbalanced quotes (its arguments too)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SorlError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SorlError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the page as UTF-8 and rerun `sorl results`"
        ) from None
    lines = _split_lines(text)
    blocks: list[Block] = []
    open_at: int | None = None
    command = ""
    for i, raw in enumerate(lines):
        s = (raw.lstrip("\ufeff") if i == 0 else raw).strip()  # a byte-order mark is kept, not read
        where = f"{path}:{i + 1}"
        if s.startswith(START):
            if open_at is not None:
                raise SorlError(
                    f"{where}: a results block opens inside the one opened at line {open_at + 1}; close that one "
                    f"with {END} first (blocks do not nest)"
                )
            if not s.endswith("-->") or len(s) < len(START) + 3:
                why = "has text after its '-->'" if "-->" in s else "has no closing '-->' on its line"
                raise SorlError(f"{where}: the results block start {why}; write it alone on its line as "
                                f"{START} COMMAND -->")  # fmt: skip
            command = s[len(START) : -3].strip()
            try:
                kind, args = _command_words(command)
                _check_arguments(kind, args, command, path.parent)
            except SorlError as e:
                raise SorlError(f"{where}: {e}") from None
            open_at = i
        elif s.startswith("<!-- /results"):
            if s != END:
                raise SorlError(f"{where}: a results block end is written {END} alone on its line")
            if open_at is None:
                raise SorlError(f"{where}: {END} without a {START} ... --> before it; remove it or add the start")
            eol = "\r\n" if lines[open_at].endswith("\r\n") else "\n"
            blocks.append(Block(command, open_at, i, eol))
            open_at = None
    if open_at is not None:
        raise SorlError(f"{path}:{open_at + 1}: the results block opened here has no {END} after it; add it where "
                        "the generated text ends")  # fmt: skip
    return Page(path, lines, blocks)


def render_block(command: str, base: Path, staged: list[tuple[Path, Path | None]] | None = None) -> str:
    """The generated text of one block: `table ...`, `plot scaling|compute|curves ...`, `verifier PATHS`,
    `k-probe PATHS` or `bench FILES`, run from `base`. With `staged`, a plot's figures are drawn into a scratch
    directory and (scratch file, destination) pairs appended, for `regenerate` to move into place once every
    block of every page has been made; without it they are written where the block says."""
    from cli.commands import PlotCompute, PlotCurves, PlotScaling, TableArgs
    from experiments import plots
    from experiments.aggregate import table

    kind, args = _command_words(command)
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
        text = table(paths, fmt=t.format, K=t.K, N=t.N, levels=levels, compare=t.compare, reps=t.reps, phase=t.phase)
        return _relative(text, base)
    if kind in ("plot scaling", "plot compute", "plot curves"):
        cls = {"plot scaling": PlotScaling, "plot compute": PlotCompute, "plot curves": PlotCurves}[kind]
        p = _parse(cls, args, command)
        formats = [f for f in p.formats.split(",") if f.strip()] if "--formats" in args else ["png"]
        paths, final = [str(base / x) for x in p.paths], base / p.out
        out = final
        if staged is not None:  # a scratch directory, listed (with no destination) so that it is removed
            out = Path(tempfile.mkdtemp(prefix="sorl-results-"))
            staged.append((out, None))
        if kind == "plot scaling":
            written = plots.plot_scaling(paths, out, stat=p.stat, formats=formats, reps=p.reps, title=p.title)
        elif kind == "plot compute":
            written = plots.plot_compute(paths, out, stat=p.stat, formats=formats, reps=p.reps, title=p.title)
        else:
            metrics = [m.strip() for m in p.metrics.split(",") if m.strip()] if p.metrics else None
            written = plots.plot_curves(
                paths, out, K=p.K, N=p.N, metrics=metrics, stat=p.stat, formats=formats, reps=p.reps
            )
        if staged is not None:
            staged += [(w, final / w.relative_to(out)) for w in written]
            written = [final / w.relative_to(out) for w in written]
        images = [w for w in written if w.suffix == ".png"] or written
        return "".join(f"![{w.stem}]({w.relative_to(base).as_posix()})\n" for w in images)
    raise SorlError(f"unknown results block '{command}'")  # read_page refuses it first


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


_ARGS = {
    "table": "TableArgs",
    "plot scaling": "PlotScaling",
    "plot compute": "PlotCompute",
    "plot curves": "PlotCurves",
}


def _check_arguments(kind: str, args: list[str], command: str, base: Path) -> None:
    """A table or plot block's arguments parsed and their numbers checked, as the block would be made (so a bad
    block is refused before any page is written or any figure made)."""
    if kind not in _ARGS:
        if not args:
            what = "`sorl bench --json` outputs" if kind == "bench" else "run directories or roots holding them"
            raise SorlError(f"results block '{command}' names nothing to show; give it {what}")
        return
    from cli import commands

    parsed = _parse(getattr(commands, _ARGS[kind]), args, command)
    try:
        if kind == "table":
            from experiments.aggregate import check_table_options

            check_table_options(K=parsed.K, N=parsed.N, reps=parsed.reps, last=parsed.last)
        else:
            from experiments.plots import check_plot_options

            check_plot_options(
                stat=parsed.stat, formats=parsed.formats.split(","), reps=parsed.reps,
                K=getattr(parsed, "K", None), N=getattr(parsed, "N", None), out=base / parsed.out,
            )  # fmt: skip
    except SorlError as e:
        raise SorlError(f"results block '{command}': {e}") from None


def _parse(cls: type, args: list[str], command: str):
    """tyro's parse of a block's arguments; a parse error is one SorlError naming the block."""
    import contextlib
    import io

    from cli.parse_errors import one_line_errors

    try:
        with one_line_errors(args), contextlib.redirect_stdout(io.StringIO()):
            return tyro.cli(cls, args=args, prog=command.split()[0])
    except SorlError as e:
        raise SorlError(f"bad arguments in results block '{command}': {e}") from None
    except SystemExit:  # a block asking for --help: nothing to run
        raise SorlError(f"bad arguments in results block '{command}': see `sorl {command.split()[0]} --help`") from None


def _relative(text: str, base: Path) -> str:
    """Absolute paths under `base` in generated text (e.g. a note naming a run) written relative to it."""
    return text.replace(str(base.resolve()) + os.sep, "").replace(str(base) + os.sep, "")


def render_page(page: Page, staged: list[tuple[Path, Path | None]] | None = None) -> str:
    """The page's text with every block's generated text made anew (the page itself not written; figures as
    `render_block` says)."""
    base = page.path.parent
    pieces: list[str] = []
    last = 0
    for block in page.blocks:
        try:
            body = render_block(block.command, base, staged)
        except SorlError as e:
            raise SorlError(f"{page.path}:{block.line}: {e}") from None
        if not body.endswith("\n"):
            body += "\n"
        if block.eol != "\n":
            body = body.replace("\r\n", "\n").replace("\n", block.eol)
        pieces += page.lines[last : block.start + 1] + [body]
        last = block.end
    pieces += page.lines[last:]
    return "".join(pieces)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8, line endings as given) in one step, keeping its permissions; on any
    failure the file is left as it was and no temporary file stays behind."""
    import stat

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SorlError(f"could not write {path}: {e.strerror or e}") from None


def regenerate_page(path: Path) -> int:
    """Rewrite every results block of one page; returns how many there were."""
    return regenerate_pages([Path(path)])[0][1]


def default_roots() -> list[Path]:
    """experiments/results and, in a checkout, the project README (which shows the main table and figure)."""
    readme = RESULTS_DIR.parents[1] / "README.md"
    return [RESULTS_DIR] + ([readme] if readme.is_file() else [])


def regenerate(roots: Sequence[str | Path] | None = None) -> list[tuple[Path, int]]:
    """Regenerate every results page under `roots` (default: `default_roots()`); [(page, blocks)].

    Every page is read and checked first, then every block made, then the pages that changed written (each
    atomically): a malformed page or a block that cannot be made leaves every page byte-identical."""
    roots = roots or default_roots()
    found = pages(roots)
    if not found:
        where = ", ".join(map(str, roots))
        raise SorlError(f"no results page (a .md file with '<!-- results: ... -->' blocks) under {where}")
    return regenerate_pages(found)


def regenerate_pages(paths: Sequence[Path]) -> list[tuple[Path, int]]:
    """Read and check every page, make every block, then move the figures into place and write the pages that
    changed (atomically): [(page, blocks)]."""
    read = [read_page(path) for path in paths]
    staged: list[tuple[Path, Path | None]] = []
    try:
        made = [(page, render_page(page, staged)) for page in read]
        changed = [(page, text) for page, text in made if text != "".join(page.lines)]
        for page, _ in changed:  # a page that could not be replaced is said before anything is written
            if not os.access(page.path.parent, os.W_OK | os.X_OK):
                raise SorlError(f"cannot write {page.path}: its directory is not writable; nothing was changed")
        for src, dst in staged:  # every block made: the figures move into place, then the pages are written
            if dst is None:
                continue
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dst)
            except OSError as e:
                raise SorlError(f"could not write {dst}: {e.strerror or e}") from None
    finally:
        for scratch, dst in staged:
            if dst is None:
                shutil.rmtree(scratch, ignore_errors=True)
    for page, text in changed:
        write_atomically(page.path, text)
    return [(page.path, len(page.blocks)) for page in read]


@dataclass(frozen=True)
class ResultsArgs:
    """Regenerate every table and figure of the results pages from the run summaries they name."""

    paths: tyro.conf.Positional[tuple[str, ...]] = ()
    """Results pages (.md) or directories of them (default: experiments/results and the project README)."""


def results(args: Annotated[ResultsArgs, tyro.conf.arg(name="")]) -> None:
    """Rewrite the `<!-- results: ... -->` blocks of the results pages (tables and figures) from the committed runs."""
    for page, blocks in regenerate(args.paths):
        print(f"regenerated {page} ({blocks} blocks)")
