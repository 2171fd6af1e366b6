"""`sorl table --phase final|offline|both`: an offline-to-online run's success at the end of its offline phase
beside its success after the online phase, on run directories written by hand as the runner writes them
(runner/train.py's results.json `online` section, config.json's `train` and `online` sections)."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import pytest

from cli import main as cli
from cli import results
from cli.commands import TableArgs
from experiments import aggregate
from sorl.errors import SorlError

TASK = "cube-single-play-singletask-task1-v0"
ONLINE_README = Path(__file__).resolve().parents[1] / "experiments" / "results" / "online" / "README.md"

# Success at (K=8, N=1) of SORL seeds 1-3: before the online phase 20, 40, 60 %; after it 50, 70, 60 %.
SORL_BEFORE = [0.2, 0.4, 0.6]
SORL_AFTER = [0.5, 0.7, 0.6]
# SAC/RLPD, online only (--steps 0): seeds 1-2 at (K=1, N=1) after the online phase 10, 30 %.
SAC_AFTER = [0.1, 0.3]


def _cell(K: int, N: int, success: float) -> dict:
    return {"K": K, "N": N, "success": success, "return": -10.0, "length": 100.0, "episodes": 10}


def write_run(
    root: Path, agent: str, seed: int, after: dict, before: dict | None, *, offline: int, online: int
) -> Path:
    """A complete run: `after` {(K, N): success} the final grid; `before` the grid at the end of the offline phase
    (results.json's online.offline_final) for a run with an online phase (`online` steps), else None."""
    d = root / agent / f"seed{seed}"
    d.mkdir(parents=True)
    results = {"status": "complete", "task": TASK, "agent": agent, "seed": seed, "steps": offline + online,
               "step": offline + online, "success_timing": "post",
               "final": [_cell(K, N, s) for (K, N), s in sorted(after.items())]}  # fmt: skip
    config = {"train": {"steps": offline}, "online": {"steps": online or None, "K": 1, "N": 1}}
    if online:
        config["online"]["balanced_sampling"] = offline == 0
        grid = [_cell(K, N, s) for (K, N), s in sorted((before or {}).items())]
        results["online"] = {"steps": online, "offline_steps": offline, "K": 1, "N": 1, "offline_final": grid}
    (d / "results.json").write_text(json.dumps(results))
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """o2o: SORL 100 offline + 50 online updates; sac: 50 online steps only; offline: SORL without an online phase."""
    base = tmp_path_factory.mktemp("online-table")
    for seed, (b, a) in enumerate(zip(SORL_BEFORE, SORL_AFTER, strict=True), start=1):
        write_run(
            base / "o2o", "sorl", seed, {(1, 1): 0.0, (8, 1): a}, {(1, 1): 0.0, (8, 1): b}, offline=100, online=50
        )
    for seed, a in enumerate(SAC_AFTER, start=1):
        write_run(base / "sac", "sac", seed, {(1, 1): a}, None, offline=0, online=50)
    for seed in (1, 2):
        write_run(base / "offline", "sorl", seed, {(8, 1): 0.3}, None, offline=150, online=0)
    return {name: base / name for name in ("o2o", "sac", "offline")}


def _by_method(paired):
    return {p.after.method: p for p in paired}


def test_both_phases_give_the_hand_computed_numbers(roots):
    runset = aggregate.load_runs([roots["o2o"], roots["sac"]])
    paired, notes = aggregate.phase_rows(runset, levels=("task",))
    rows = _by_method(paired)
    assert set(rows) == {"sorl +online 50", "sac +online 50"}
    sorl = rows["sorl +online 50"]
    assert (sorl.after.K, sorl.after.N) == (8, 1) and (sorl.before.K, sorl.before.N) == (8, 1)  # one cell, both sides
    # before: mean(20, 40, 60) = 40, sample std 20; IQM of 3 scores trims none (int(0.75) = 0): the mean
    assert (sorl.before.mean, sorl.before.std, sorl.before.iqm) == pytest.approx((40.0, 20.0, 40.0))
    # after: mean(50, 70, 60) = 60, std 10; after − before = 20
    assert (sorl.after.mean, sorl.after.std, sorl.after.iqm) == pytest.approx((60.0, 10.0, 60.0))
    assert sorl.delta == pytest.approx(20.0)
    sac = rows["sac +online 50"]
    assert sac.before is None and sac.delta is None  # trained online only: no offline value, not an error
    assert (sac.after.K, sac.after.N, sac.after.mean) == (1, 1, pytest.approx(20.0))
    assert sac.after.std == pytest.approx(14.142, abs=1e-3)  # sample std of 10 and 30: 10·√2
    assert any("sac +online 50: trained online only (--steps 0)" in n for n in notes)
    # --phase final is the table as it was: the after-online rows
    final, _ = aggregate.table_rows(runset, levels=("task",))
    assert {(r.method, r.mean) for r in final} == {(p.after.method, p.after.mean) for p in paired}


def test_the_offline_phase_alone_and_its_formats(roots):
    paths = [roots["o2o"], roots["sac"]]
    text = aggregate.table(paths, levels=("task",), phase="offline")
    assert "| sorl +online 50 | K=8, N=1 | 3 | 40.0 ± 20.0 | 40.0 [" in text
    assert "sac" not in text.split("\n\n")[0]  # no offline value to show: left out of the table, with a note
    assert "at the end of the offline phase (before the online phase)" in text
    rows = list(csv.DictReader(io.StringIO(aggregate.table(paths, fmt="csv", levels=("task",), phase="both"))))
    sorl, sac = (next(r for r in rows if r["agent"] == a) for a in ("sorl", "sac"))
    assert (sorl["before_mean"], sorl["after_mean"], sorl["delta"]) == ("40", "60", "20")
    assert (sac["before_mean"], sac["after_mean"], sac["delta"]) == ("", "20", "")
    latex = aggregate.table(paths, fmt="latex", phase="both")
    assert "before online: success \\% (mean $\\pm$ std)" in latex and "+20.0" in latex
    with pytest.raises(SorlError, match="no run of these was evaluated at the end of an offline phase"):
        aggregate.table([roots["sac"]], phase="offline")


def test_runs_without_an_online_phase_are_refused_by_name(roots, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["table", str(roots["o2o"]), str(roots["offline"]), "--phase", "both"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: --phase both: 2 runs had no online phase, so nothing was evaluated before one (")
    assert str(roots["offline"] / "sorl" / "seed1") in err and str(roots["offline"] / "sorl" / "seed2") in err
    assert err.endswith("give only runs trained with --online-steps, or use --phase final")
    for argv, msg in (
        (["--phase", "online"], "--phase online: use final"),
        (["--phase", "both", "--compare", "paper"], "--compare with --phase both"),
        (["--phase", "offline", "--diagnostics", "actor/mse"], "--phase offline with --diagnostics"),
    ):
        with pytest.raises(SystemExit):
            cli.main(["table", str(roots["o2o"]), *argv])
        assert msg in capsys.readouterr().err
    cli.main(["table", str(roots["o2o"]), str(roots["offline"]), "--level", "task"])  # final: both kinds, as before
    assert "| sorl steps=100 +online 50 |" in capsys.readouterr().out


def test_the_cli_prints_both_phases_side_by_side(roots, capsys):
    cli.main(["table", str(roots["o2o"]), str(roots["sac"]), "--phase", "both", "--level", "task"])
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header == (
        "| environment | task | method | cell | seeds | before online: success % (mean ± std) | before online: IQM "
        "[95% CI] | after online: success % (mean ± std) | after online: IQM [95% CI] | after − before |"
    )
    # with 3 seeds the bootstrap's IQM is the resample's mean: its 2.5/97.5 percentiles are the extremes (each
    # drawn thrice with probability 1/27 > 2.5 %)
    assert (
        "| cube-single-play | cube-single-play-task1 | sorl +online 50 | K=8, N=1 | 3 "
        "| 40.0 ± 20.0 | 40.0 [20.0, 60.0] | 60.0 ± 10.0 | 60.0 [50.0, 70.0] | +20.0 |"
    ) in out
    assert "| sac +online 50 | K=1, N=1 | 2 | — | — | 20.0 ± 14.1 | 20.0 [10.0, 30.0] | — |" in out
    assert "before the online phase (the evaluation at the end of the offline phase) and after it" in out


def _readme_block_command() -> str:
    """The command of the online study's one results block."""
    (block,) = results.read_page(ONLINE_README).blocks
    return block.command


def test_the_online_page_asks_for_both_phases_of_its_own_runs(roots):
    # the committed page regenerates from its own runs directory: a block whose runs were missing would stop
    # `sorl results`
    assert results.pages([ONLINE_README]) == [ONLINE_README]
    command = _readme_block_command()
    kind, args = results._command_words(command)
    assert kind == "table"
    results._check_arguments(kind, args, command, ONLINE_README.parent)
    parsed = results._parse(TableArgs, args, command)
    assert (parsed.phase, parsed.paths, parsed.level) == ("both", ("runs",), "task")
    assert (ONLINE_README.parent / "runs").is_dir()


def test_the_page_block_renders_both_phases_once_its_runs_exist(roots, tmp_path):
    page = tmp_path / "README.md"
    runs = tmp_path / "runs"
    for name in ("o2o", "sac"):
        for d in aggregate.find_run_dirs(roots[name]):
            dst = runs / name / d.relative_to(roots[name])
            dst.mkdir(parents=True)
            for f in ("results.json", "config.json"):
                (dst / f).write_text((d / f).read_text())
    command = _readme_block_command()
    page.write_text(f"# online\n\n<!-- results: {command} -->\n<!-- /results -->\n")
    results.regenerate_pages([page])
    text = page.read_text()
    assert f"<!-- results: {shlex.join(shlex.split(command))} -->" in text
    assert "| 40.0 ± 20.0 | 40.0 [20.0, 60.0] | 60.0 ± 10.0 | 60.0 [50.0, 70.0] | +20.0 |" in text
