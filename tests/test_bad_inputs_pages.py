"""The bad-input catalogue of the results pages, plots and tables (`sorl results`, `sorl plot`, `sorl table`).

Each page case copies the tiny results fixture (prose, two good blocks, runs), writes one more page with prose and
several blocks (LF or CRLF) in which one thing is malformed, and asserts that `sorl results` refuses it in one line
naming the file and the line, with every page (the good one included) byte-identical afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from refusals import Refusal, run_case

from cli import results
from sorl.errors import SorlError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "results-demo"

PROSE = "# A page\n\nHand-written prose that must survive.\n\n"
GOOD = "<!-- results: table runs --level env --reps 200 -->\nold table\n<!-- /results -->\n"
MIDDLE = "\nMore prose between the blocks, written by a person.\n\n"


def _page(body: str, crlf: bool = False, raw: bytes | None = None) -> Callable[[Path], None]:
    """Set-up: the fixture under tmp/demo (its README is a good page) and tmp/demo/bad.md holding `body`."""

    def setup(tmp: Path) -> None:
        shutil.copytree(FIXTURE, tmp / "demo")
        text = PROSE + body
        data = raw if raw is not None else (text.replace("\n", "\r\n") if crlf else text).encode()
        (tmp / "demo" / "bad.md").write_bytes(data)

    return setup


def _runs(tmp: Path) -> None:
    shutil.copytree(FIXTURE, tmp / "demo")


R = ["results", "{tmp}/demo"]
RUNS = "{tmp}/demo/runs"

CASES: list[Refusal] = [
    # pages: the case first (an unterminated start before a good block used to delete the prose between)
    Refusal("page-unterminated-start", R, "bad.md:5: the results block start has no closing '-->'",
            _page("<!-- results: table runs --level env\n" + MIDDLE + GOOD), "page"),
    Refusal("page-unterminated-start-crlf", R, "bad.md:5: the results block start has no closing '-->'",
            _page("<!-- results: table runs\n" + MIDDLE + GOOD, crlf=True), "page"),
    Refusal("page-no-end-marker", R, "bad.md:11: the results block opened here has no <!-- /results -->",
            _page(GOOD + MIDDLE + "<!-- results: table runs -->\nold table\n\nTrailing prose.\n"), "page"),
    Refusal("page-end-without-start", R, "bad.md:11: <!-- /results --> without a <!-- results:",
            _page(GOOD + MIDDLE + "<!-- /results -->\n" + GOOD, crlf=True), "page"),
    Refusal("page-nested-blocks", R, "bad.md:6: a results block opens inside the one opened at line 5",
            _page("<!-- results: table runs -->\n" + GOOD + MIDDLE), "page"),
    Refusal("page-unbalanced-quotes", R, "bad.md:11: results block command 'table \"runs --level env' has unbalanced",
            _page(GOOD + MIDDLE + '<!-- results: table "runs --level env -->\nx\n<!-- /results -->\n'), "page"),
    Refusal("page-text-after-start", R, "bad.md:11: the results block start has text after its '-->'",
            _page(GOOD + MIDDLE + "<!-- results: table runs --> and more\nx\n<!-- /results -->\n"), "page"),
    Refusal("page-empty-command", R, "bad.md:11: empty results block command",
            _page(GOOD + MIDDLE + "<!-- results:   -->\n<!-- /results -->\n", crlf=True), "page"),
    Refusal("page-unknown-command", R, "bad.md:5: unknown results block 'tabel runs'",
            _page("<!-- results: tabel runs -->\nx\n<!-- /results -->\n" + MIDDLE + GOOD), "page"),
    Refusal("page-not-utf8", R, "bad.md:8: not UTF-8 (byte 0xe9)",
            _page("", raw=(PROSE + GOOD + "caf\xe9 au lait\n").encode("latin-1")), "page"),
    Refusal("page-block-bad-reps", R, "bad.md:11: results block 'plot curves runs --reps 0': --reps 0",
            _page(GOOD + MIDDLE + "<!-- results: plot curves runs --reps 0 -->\n<!-- /results -->\n"), "page"),
    Refusal("page-block-bad-flag", R, "bad.md:11: bad arguments in results block 'table runs --levle env'",
            _page(GOOD + MIDDLE + "<!-- results: table runs --levle env -->\n<!-- /results -->\n", crlf=True), "page"),
    Refusal("page-block-cannot-be-made", R, "bad.md:11: ",
            _page(GOOD + MIDDLE + "<!-- results: table no-such-runs -->\nkept\n<!-- /results -->\n"), "page"),
    Refusal("page-verifier-without-paths", R, "bad.md:5: results block 'verifier' names nothing to show",
            _page("<!-- results: verifier -->\n<!-- /results -->\n" + MIDDLE + GOOD, crlf=True), "page"),
    Refusal("page-block-out-is-a-file", R, "bad.md:11: results block 'plot scaling runs --out README.md': --out",
            _page(GOOD + MIDDLE + "<!-- results: plot scaling runs --out README.md -->\n<!-- /results -->\n"),
            "page"),
    # plots: every numeric option up front
    Refusal("plot-scaling-reps-zero", ["plot", "scaling", RUNS, "--out", "{tmp}/p", "--reps", "0"], "--reps 0",
            _runs, "plot"),
    Refusal("plot-compute-reps-negative", ["plot", "compute", RUNS, "--out", "{tmp}/p", "--reps", "-5"], "--reps -5",
            _runs, "plot"),
    Refusal("plot-curves-reps-zero", ["plot", "curves", RUNS, "--out", "{tmp}/p", "--reps", "0"], "--reps 0",
            _runs, "plot"),
    Refusal("plot-curves-K-zero", ["plot", "curves", RUNS, "--out", "{tmp}/p", "--K", "0"], "--K 0", _runs, "plot"),
    Refusal("plot-curves-N-zero", ["plot", "curves", RUNS, "--out", "{tmp}/p", "--N", "0"], "--N 0", _runs, "plot"),
    Refusal("plot-bad-stat", ["plot", "scaling", RUNS, "--out", "{tmp}/p", "--stat", "median"], "--stat median",
            _runs, "plot"),
    Refusal("plot-out-is-a-file", ["plot", "curves", RUNS, "--out", "{tmp}/demo/README.md"], "is a file", _runs,
            "plot"),
    # tables
    Refusal("table-reps-zero", ["table", RUNS, "--reps", "0"], "--reps 0", _runs, "table"),
    Refusal("table-K-not-power-of-two", ["table", RUNS, "--K", "3"], "--K 3", _runs, "table"),
    Refusal("table-N-zero", ["table", RUNS, "--N", "0", "--output", "{tmp}/t.md"], "--N 0", _runs, "table"),
    Refusal("table-last-zero", ["table", RUNS, "--diagnostics", "actor/mse", "--last", "0"], "--last 0", _runs,
            "table"),
    Refusal("table-compare-missing", ["table", RUNS, "--compare", "{tmp}/nope.md"], "--compare", _runs, "table"),
    Refusal("table-compare-not-utf8", ["table", RUNS, "--compare", "{tmp}/demo/latin.md"], "cannot be read as UTF-8",
            lambda tmp: (_runs(tmp), (tmp / "demo" / "latin.md").write_bytes(b"Published numbers \xe9\n")), "table"),
    Refusal("table-bad-format", ["table", RUNS, "--format", "xlsx", "--output", "{tmp}/t.md"], "--format xlsx",
            _runs, "table"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(request, tmp_path, capsys, monkeypatch, case: Refusal):
    monkeypatch.chdir(tmp_path)
    run_case(request, tmp_path, capsys, case)


def test_the_good_page_is_regenerated_once_the_bad_one_is_fixed(tmp_path):
    """The refusals above are about the bad page: fixed, both pages regenerate (and a CRLF page stays CRLF)."""
    _page(GOOD + MIDDLE + GOOD, crlf=True)(tmp_path)
    out = results.regenerate([tmp_path / "demo"])
    assert sorted((p.name, n) for p, n in out) == [("README.md", 2), ("bad.md", 2)]
    data = (tmp_path / "demo" / "bad.md").read_bytes()
    assert b"old table" not in data and data.count(b"\n") == data.count(b"\r\n")
    assert data.startswith(PROSE.replace("\n", "\r\n").encode())
    assert MIDDLE.replace("\n", "\r\n").encode() in data
    assert b"| cube-single-play | 1/5 tasks | sorl | K=8, N=1 | 2 | 70.0 \xc2\xb1 14.1 |" in data
    again = results.regenerate([tmp_path / "demo" / "bad.md"])  # idempotent, byte for byte
    assert again == [(tmp_path / "demo" / "bad.md", 2)]
    assert (tmp_path / "demo" / "bad.md").read_bytes() == data


def test_inline_markers_in_prose_are_prose(tmp_path):
    """A marker quoted inside a line of prose (as the README documents the format) is neither a block nor an error."""
    _runs(tmp_path)
    page = tmp_path / "demo" / "doc.md"
    page.write_text("Blocks sit between `<!-- results: COMMAND -->` and `<!-- /results -->`.\n\n" + GOOD)
    assert results.regenerate([page]) == [(page, 1)]
    assert page.read_text().startswith("Blocks sit between `<!-- results: COMMAND -->` and `<!-- /results -->`.\n")


def test_figures_wait_until_every_block_is_made_and_no_scratch_stays(tmp_path, monkeypatch):
    """A plot block made before a failing block leaves no figure behind; after success the figures are in place;
    neither leaves a scratch directory."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    _page(GOOD + MIDDLE + "<!-- results: table no-such-runs -->\n<!-- /results -->\n")(tmp_path)
    with pytest.raises(SorlError, match="bad.md:11: "):
        results.regenerate([tmp_path / "demo"])
    assert not (tmp_path / "demo" / "figures").exists() and not list(scratch.iterdir())
    (tmp_path / "demo" / "bad.md").unlink()
    assert results.regenerate([tmp_path / "demo"]) == [(tmp_path / "demo" / "README.md", 2)]
    assert (tmp_path / "demo" / "figures" / "curves.png").stat().st_size > 5_000
    assert not list(scratch.iterdir())


def test_a_page_with_a_byte_order_mark_keeps_it(tmp_path):
    _runs(tmp_path)
    page = tmp_path / "demo" / "bom.md"
    page.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode() + b"prose\r\n")
    assert results.regenerate([page]) == [(page, 1)]
    data = page.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf<!-- results: table runs") and data.endswith(b"<!-- /results -->\r\nprose\r\n")
    assert b"old table" not in data and data.count(b"\n") == data.count(b"\r\n")
