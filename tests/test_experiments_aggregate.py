"""`sorl table` and the plots on synthetic run directories with known values (results.json written by hand)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from cli import main as cli
from experiments import aggregate, paper, plots
from sorl.errors import SorlError

METHOD_MD = Path(__file__).resolve().parents[1] / "docs" / "method.md"  # the project's account of the method

TASKS = {
    "cube-single-play-task1": "cube-single-play-singletask-task1-v0",
    "cube-single-play-task2": "cube-single-play-singletask-task2-v0",
    "scene-play-task1": "scene-play-singletask-task1-v0",
    "scene-play-task2": "scene-play-singletask-task2-v0",
}


def write_run(root: Path, task: str, agent: str, seed: int, cells: dict, *, overrides=None, status="complete",
              steps=1000, curves=True) -> Path:  # fmt: skip
    """A run directory with results.json (and config.json, eval.csv, train.csv) holding `cells` {(K, N): success}."""
    d = root / task / agent / f"seed{seed}"
    d.mkdir(parents=True)
    final = [
        {"K": K, "N": N, "success": s, "return": -10.0, "length": 100.0, "episodes": 10}
        for (K, N), s in sorted(cells.items())
    ]
    results = {"status": status, "task": TASKS[task], "agent": agent, "seed": seed, "steps": steps,
               "step": steps, "success_timing": "post", "final": final}  # fmt: skip
    (d / "results.json").write_text(json.dumps(results))
    (d / "config.json").write_text(json.dumps({"agent_overrides": overrides or {}}))
    if curves:
        with (d / "eval.csv").open("w") as f:
            f.write("step,K,N,success,return,length,episodes\n")
            for step in (500, 1000):
                for (K, N), s in sorted(cells.items()):
                    f.write(f"{step},{K},{N},{s * step / 1000},-10,100,10\n")
        with (d / "train.csv").open("w") as f:
            f.write("step,critic/critic_loss,actor/actor_loss,updates_per_s,time_s\n")
            for step in (250, 500, 750, 1000):
                f.write(f"{step},{1.0 / step + seed * 1e-4},{-step / 100},100,1\n")
    return d


CUBE = {  # task -> success of seeds 1..4 at (K=8, N=1); (K=1, N=1) is 0 everywhere
    "cube-single-play-task1": [0.1, 0.2, 0.3, 0.4],
    "cube-single-play-task2": [0.5, 0.6, 0.7, 1.0],
}
SCENE = {"scene-play-task1": [0.0, 0.5, 1.0], "scene-play-task2": [0.2, 0.2, 0.2, 0.2]}  # task1 lacks seed 4


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for group in (CUBE, SCENE):
        for task, values in group.items():
            for seed, v in enumerate(values, start=1):
                write_run(root, task, "sorl", seed, {(1, 1): 0.0, (8, 1): v, (8, 4): min(1.0, v + 0.1)})
    # a failed run (left out, counted) and one baseline with two settings (two methods)
    write_run(root, "scene-play-task1", "sorl", 4, {(8, 1): 1.0}, status="failed")
    for alpha, v in (("10.0", 0.9), ("300.0", 0.3)):
        for seed in (1, 2):
            write_run(root / f"alpha{alpha}", "cube-single-play-task1", "fql", seed, {(1, 1): v},
                      overrides={"alpha": alpha, "batch_size": "64"})  # fmt: skip
    return root


def rows_by(rows, **want):
    return [r for r in rows if all(getattr(r, k) == v for k, v in want.items())]


def test_statistics_match_hand_computed_values(runs_root):
    rows, notes = aggregate.table_rows(aggregate.load_runs([runs_root]), compare="paper")
    (t1,) = rows_by(rows, level="task", task="cube-single-play-task1", method="sorl")
    assert (t1.K, t1.N) == (8, 1)  # default cell: largest K with N = 1
    assert t1.mean == pytest.approx(25.0) and t1.std == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    assert t1.iqm == pytest.approx(25.0)  # mean of the middle two of four
    (t2,) = rows_by(rows, level="task", task="cube-single-play-task2", method="sorl")
    assert t2.mean == pytest.approx(70.0) and t2.iqm == pytest.approx(65.0)

    (env,) = rows_by(rows, level="env", env="cube-single-play", method="sorl")
    assert env.mean == pytest.approx(47.5)  # tasks weighted equally
    assert env.std == pytest.approx(np.std([30, 40, 50, 70], ddof=1))  # over seeds of the per-seed task average
    assert env.iqm == pytest.approx(45.0)  # middle four of the eight scores
    assert env.ci_low <= env.iqm <= env.ci_high and env.ci_low >= 10 and env.ci_high <= 100
    assert env.tasks == 2 and env.tasks_total == 5 and env.seeds == [4, 4]
    assert env.paper == 97 and env.paper_std == 1 and env.diff == pytest.approx(47.5 - 97)
    for r in rows:
        assert r.ci_low <= r.iqm + 1e-9 and r.iqm <= r.ci_high + 1e-9

    # a partial environment: scene task1 has 3 complete seeds (its seed 4 failed), task2 four
    (scene,) = rows_by(rows, level="env", env="scene-play", method="sorl")
    assert scene.seeds == [3, 4] and scene.seeds_text() == "3-4"
    assert scene.mean == pytest.approx((50 + 20) / 2) and scene.paper == 57
    assert any("not complete" in n and "scene-play-task1" in n for n in notes)

    (overall,) = rows_by(rows, level="all", method="sorl")
    assert overall.tasks == 4 and overall.mean == pytest.approx((25 + 70 + 50 + 20) / 4)


def test_comparison_footnotes_unverified_settings_and_the_sorl_update(tmp_path):
    # ReBRAC's cube-single settings are unverified (envs/registry.py): its published number carries a mark and a
    # note; FQL's are the reference README's: none. A SORL trained with our default update is named in a note.
    for seed in (1, 2):
        write_run(tmp_path, "cube-single-play-task1", "rebrac", seed, {(1, 1): 0.5})
        write_run(tmp_path, "cube-single-play-task1", "fql", seed, {(1, 1): 0.5})
        write_run(tmp_path / "clean", "cube-single-play-task1", "sorl", seed, {(8, 1): 0.5},
                  overrides={"released_update": "False"})  # fmt: skip
        write_run(tmp_path / "released", "cube-single-play-task1", "sorl", seed, {(8, 1): 0.5},
                  overrides={"released_update": "True"})  # fmt: skip
    rows, notes = aggregate.table_rows(aggregate.load_runs([tmp_path]), levels=("env",), compare="paper")
    marks = {r.method: r.paper_mark for r in rows}
    assert marks == {"rebrac": "†", "fql": "", "sorl released_update=False": "", "sorl released_update=True": ""}
    assert notes[0].startswith("ours: the row's cell") and "paper: the published number, N = 1" in notes[0]
    (unverified,) = [n for n in notes if n.startswith("†")]
    assert "rebrac on cube-single-play" in unverified and "unverified" in unverified
    (update,) = [n for n in notes if "default update" in n]
    assert update.startswith("sorl released_update=False on cube-single-play")
    out = aggregate.format_table(rows, compare=True, notes=notes)
    assert "| 91† |" in out and "Note: † rebrac on cube-single-play" in out
    assert not any("no published number to compare with" in n for n in notes)


def test_agents_without_a_published_column_are_named_in_a_note(tmp_path):
    # SRPO and CAC have no column in the published table: their rows show no paper number and one note names both
    # (once, whatever their number of rows); IQL's row is compared as usual.
    for agent in ("srpo", "cac", "iql"):
        for seed in (1, 2):
            write_run(tmp_path, "cube-single-play-task1", agent, seed, {(1, 1): 0.5})
    rows, notes = aggregate.table_rows(aggregate.load_runs([tmp_path]), levels=("env", "task"), compare="paper")
    papers = {r.method: r.paper for r in rows if r.level == "env"}
    assert papers == {"cac": None, "iql": 83, "srpo": None}
    (missing,) = [n for n in notes if "no published number to compare with" in n]
    assert missing.startswith("cac, srpo: ") or missing.startswith("srpo, cac: ")
    assert "iql" not in missing.split(":")[0]


def test_a_corrupt_results_file_is_reported_not_skipped(tmp_path):
    from experiments import launchers
    from runner import runs

    write_run(tmp_path, "cube-single-play-task1", "sorl", 1, {(8, 1): 0.5})
    bad = write_run(tmp_path, "cube-single-play-task1", "sorl", 2, {(8, 1): 0.5})
    (bad / "results.json").write_text('{"status": "compl')  # cut short
    assert runs.run_state(bad)[0] == "corrupt" and runs.run_state(bad.parent / "seed1") == ("complete", None)
    runset = aggregate.load_runs([tmp_path])
    assert [r.seed for r in runset.records] == [1] and [d for d, _ in runset.corrupt] == [bad.resolve()]
    _, notes = aggregate.table_rows(runset, levels=("env",))
    assert any("unreadable" in n and "seed2" in n for n in notes), notes
    fake = type("Run", (), {"run_dir": str(bad), "train": {"steps": 1000}})()
    state, error = launchers.run_state(fake)
    assert state == "failed" and "corrupt" in error  # a sweep lists it among the failed runs, with what to do


def test_iqm_and_bootstrap_agree_with_their_definitions():
    x = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 100.0])
    assert aggregate.iqm(x) == pytest.approx(np.mean(np.sort(x)[2:8]))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert aggregate.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))
    # one stratum with identical values: a zero-width interval at that value
    assert aggregate.stratified_bootstrap_ci([[3.0, 3.0, 3.0]]) == (3.0, 3.0)
    # stratified: each task keeps its own size, so a constant task never contributes its spread
    lo, hi = aggregate.stratified_bootstrap_ci([[0.0, 100.0] * 5, [50.0] * 10], aggregate.mean, reps=4000)
    assert 30 < lo < 50 < hi < 70
    again = aggregate.stratified_bootstrap_ci([[0.0, 100.0] * 5, [50.0] * 10], aggregate.mean, reps=4000)
    assert (lo, hi) == again  # fixed seed: reproducible tables


def test_methods_split_by_the_settings_that_vary(runs_root):
    rows, _ = aggregate.table_rows(aggregate.load_runs([runs_root]), levels=("task",))
    methods = {r.method for r in rows}
    assert methods == {"sorl", "fql alpha=10.0", "fql alpha=300.0"}  # batch_size is common: not in the name
    (fql10,) = rows_by(rows, method="fql alpha=10.0")
    assert (fql10.K, fql10.N, fql10.mean, fql10.seeds) == (1, 1, pytest.approx(90.0), [2])


def test_a_setting_given_as_int_or_float_is_one_method(tmp_path):
    # A spec's grid writes q_loss_coef = 10 as 10.0 into the run's config; the per-environment default is 100.
    write_run(tmp_path / "default", "scene-play-task2", "sorl", 1, {(8, 1): 0.0}, overrides={"q_loss_coef": 100})
    write_run(tmp_path / "same", "scene-play-task2", "sorl", 2, {(8, 1): 0.5}, overrides={"q_loss_coef": 100.0})
    write_run(tmp_path / "grid", "scene-play-task2", "sorl", 1, {(8, 1): 1.0}, overrides={"q_loss_coef": 10.0})
    rows, _ = aggregate.table_rows(aggregate.load_runs([tmp_path]), levels=("task",))
    assert {r.method: r.seeds for r in rows} == {"sorl q_loss_coef=100": [2], "sorl q_loss_coef=10": [1]}


def test_a_config_field_added_after_a_run_takes_its_default(tmp_path):
    # Runs made before `encoder` existed have no such key in their resolved config; they are the same method as
    # newer runs whose config says encoder = None (its default), and apart from runs that set an encoder.
    from agents.sorl import SORLConfig

    def resolved(**changes):
        config = {k: v for k, v in vars(SORLConfig()).items()}
        config.update(changes)
        return config

    old = resolved(released_update=True)
    del old["encoder"]
    runs = {"old": old, "new": resolved(released_update=False), "pixels": resolved(encoder="impala_small")}
    for seed, (name, config) in enumerate(runs.items(), start=1):
        d = write_run(tmp_path / name, "cube-single-play-task2", "sorl", seed, {(8, 1): 0.5})
        (d / "config.json").write_text(json.dumps({"agent_config": config}))
    labels = {r.seed: r.label for r in aggregate.load_runs([tmp_path]).records}
    assert labels == {
        1: "sorl encoder=None released_update=True",
        2: "sorl encoder=None released_update=False",
        3: "sorl encoder=impala_small released_update=False",
    }


def test_cell_selection_and_formats(runs_root, capsys):
    cli.main(["table", str(runs_root), "--format", "csv", "--K", "8", "--N", "4", "--level", "env"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    (cube,) = [r for r in rows if r["environment"] == "cube-single-play" and r["method"] == "sorl"]
    assert (cube["K"], cube["N"], cube["level"]) == ("8", "4", "env")
    assert float(cube["mean"]) == pytest.approx((35 + 77.5) / 2)  # success + 10 points, capped at 100
    assert {r["method"] for r in rows} == {"sorl"}  # the fql runs have no (8, 4) cell: left out

    cli.main(["table", str(runs_root), "--compare", "paper", "--level", "env"])
    out = capsys.readouterr().out
    assert "| cell (ours) |" in out and "| paper (N = 1) | ours − paper |" in out  # each side's (K, N)
    assert "47.5 ± 17.1" in out and "97 ± 1" in out and "-49.5" in out
    assert "K=8, N=1" in out and "2/5 tasks" in out and "| 3-4 |" in out and "not complete" in out

    cli.main(["table", str(runs_root), "--format", "latex", "--level", "env,all"])
    out = capsys.readouterr().out
    assert "\\begin{tabular}" in out and "$\\pm$" in out and "all 4 tasks" in out

    out_file = runs_root.parent / "table.md"
    cli.main(["table", str(runs_root), "--output", str(out_file)])
    assert out_file.read_text().startswith("| environment |")


def test_seed_counts_against_the_spec(runs_root, tmp_path, capsys):
    spec = tmp_path / "partial.toml"
    spec.write_text(
        f'agents = ["sorl"]\ntasks = ["scene-play-task1", "scene-play-task2"]\nseeds = "1-4"\nout = "{runs_root}"\n'
    )
    cli.main(["table", str(spec), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    (t1,) = [r for r in rows if r["task"] == "scene-play-task1"]
    assert (t1["seeds_min"], t1["expected_seeds"], t1["runs"]) == ("3", "4", "3")
    cli.main(["table", str(spec), "--level", "task"])
    assert "| 3/4 |" in capsys.readouterr().out


def test_published_numbers_match_method_md():
    parsed = paper.parse_published_table(METHOD_MD.read_text(), where=str(METHOD_MD))
    assert parsed == {env: {c: (float(m), None if s is None else float(s)) for c, (m, s) in row.items()}
                      for env, row in paper.PUBLISHED.items()}  # fmt: skip
    assert "FQL also reports puzzle-3x3 30±4 and puzzle-4x4 17±5" in METHOD_MD.read_text().replace("\n", " ")
    assert paper.published_value(paper.published("paper"), "puzzle-3x3-play", "fql") == (30, 4)
    # `--compare FILE.md` reads the same table from a file
    assert paper.published(str(METHOD_MD))["scene"]["SORL"] == (57.0, 2.0)


def test_bad_table_inputs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, msg in (
        (["table", str(empty)], "no complete runs"),
        (["table", str(tmp_path / "nope")], "no such run directory"),
        (["table", str(empty), "--format", "xls"], ""),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and msg in err
    with pytest.raises(SorlError, match="use md, csv or latex"):
        aggregate.format_table([], "xls")
    with pytest.raises(SorlError, match="Published numbers"):
        paper.parse_published_table("no table here")


def test_plots_from_synthetic_runs(runs_root, tmp_path):
    out = tmp_path / "plots"
    written = plots.plot_scaling([runs_root], out, formats=("png", "pdf"), reps=200)
    names = sorted(p.name for p in written)
    assert "scaling-sorl.png" in names and "scaling-sorl.pdf" in names
    assert all(p.stat().st_size > 1000 for p in written)
    written = plots.plot_curves([runs_root], out, reps=200, formats=("png",))
    assert [p.name for p in written] == ["curves.png"] and written[0].stat().st_size > 1000
    assert plots.default_metrics(["actor/q", "actor/actor_loss", "critic/critic_loss", "x_loss"]) == [
        "critic/critic_loss",
        "actor/actor_loss",
        "x_loss",
    ]
    with pytest.raises(SorlError, match="not a train.csv column"):
        plots.plot_curves([runs_root], out, metrics=["critic/nope"])
    with pytest.raises(SorlError, match="png and/or pdf"):
        plots.plot_scaling([runs_root], out, formats=("gif",))


def test_a_run_fine_tuned_online_is_its_own_row(tmp_path):
    """Same total updates (results.json `steps`), one offline-only and one 500 offline + 500 online: two methods,
    labelled by their offline and online steps (config.json's `train` and `online` sections)."""
    offline = [write_run(tmp_path, "cube-single-play-task1", "sorl", s, {(8, 1): 0.2}) for s in (1, 2)]
    online = [write_run(tmp_path / "ft", "cube-single-play-task1", "sorl", s, {(8, 1): 0.8}) for s in (1, 2)]
    for d in offline:
        (d / "config.json").write_text(json.dumps({"train": {"steps": 1000}, "online": {"steps": None, "K": None}}))
    for d in online:
        cfg = {"train": {"steps": 500}, "online": {"steps": 500, "K": None, "N": 1, "balanced_sampling": False}}
        (d / "config.json").write_text(json.dumps(cfg))
    rows, _ = aggregate.table_rows(aggregate.load_runs([tmp_path]), levels=("task",))
    by_method = {r.method: r.mean for r in rows}
    assert by_method == {"sorl steps=1000": pytest.approx(20.0), "sorl steps=500 +online 500": pytest.approx(80.0)}
    # an older run directory without the sections: results.json's steps, offline
    (offline[0] / "config.json").write_text("{}")
    (offline[1] / "config.json").write_text("{}")
    rows, _ = aggregate.table_rows(aggregate.load_runs([tmp_path]), levels=("task",))
    assert {r.method for r in rows} == {"sorl steps=1000", "sorl steps=500 +online 500"}


def test_an_agent_with_a_published_cell_reports_it_by_default(tmp_path):
    """IFQL's published numbers are its cell (10, 32) (its PUBLISHED_CELL): where its runs evaluated that cell, the
    table shows it by default and says so (before: the largest K with N = 1, here 8); where they did not, today's rule
    and a note saying how to evaluate it. Other agents keep the largest K with N = 1."""
    for seed in (1, 2):
        write_run(tmp_path / "a", "cube-single-play-task1", "ifql", seed, {(1, 1): 0.1, (8, 1): 0.2, (10, 32): 0.9})
        write_run(tmp_path / "b", "scene-play-task1", "ifql", seed, {(1, 1): 0.1, (8, 1): 0.4})
        write_run(tmp_path / "a", "cube-single-play-task1", "sorl", seed, {(8, 1): 0.5, (8, 4): 0.7})
    rows, notes = aggregate.table_rows(aggregate.load_runs([tmp_path / "a"]), levels=("task",))
    (ifql,) = rows_by(rows, agent="ifql")
    assert (ifql.K, ifql.N, ifql.mean) == (10, 32, pytest.approx(90.0))
    assert (rows_by(rows, agent="sorl")[0].K, rows_by(rows, agent="sorl")[0].N) == (8, 1)
    assert any("K=10, N=32, the cell ifql's published numbers are" in n for n in notes)
    rows, notes = aggregate.table_rows(aggregate.load_runs([tmp_path / "b"]), levels=("task",))
    assert (rows[0].K, rows[0].N) == (8, 1)
    assert any("did not evaluate K=10, N=32" in n and "sorl eval RUN --K 10 --N 32" in n for n in notes)
    assert "published cell" in aggregate.comparison_note()
