"""`sorl results` regenerates a results page's tables and figures from its committed runs (a tiny fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli import main as cli
from cli import results
from experiments import plots

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "results-demo"


@pytest.fixture
def page(tmp_path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(FIXTURE, root)
    return root / "README.md"


def test_results_regenerates_blocks_and_keeps_the_prose(page, capsys):
    cli.main(["results", str(page.parent)])
    assert f"regenerated {page} (2 blocks)" in capsys.readouterr().out
    text = page.read_text()
    assert "stale table" not in text
    assert text.startswith("# A tiny results page (test fixture)\n\nHand-written prose stays as it is;")
    assert "\nBetween the blocks, more prose.\n" in text
    # SORL's default cell is K=8, N=1: seeds 60 % and 80 %; Gaussian BC's K=1, N=1: 10 % and 30 %.
    assert "| cube-single-play | 1/5 tasks | sorl | K=8, N=1 | 2 | 70.0 ± 14.1 |" in text
    assert "| cube-single-play | 1/5 tasks | bc | K=1, N=1 | 2 | 20.0 ± 14.1 |" in text
    assert str(page.parent) not in text  # paths in the page stay relative to it
    assert "![curves](figures/curves.png)" in text
    assert (page.parent / "figures" / "curves.png").stat().st_size > 5_000
    assert not (page.parent / "figures" / "curves.pdf").exists()  # PNG unless the block asks for more

    # Success against compute: one point per (K, N) cell at K·N policy + N critic calls (runner.evaluation), one
    # figure per method and every method on one frontier (compute-all).
    written = plots.plot_compute([page.parent / "runs"], page.parent / "figures", formats=["png"], reps=100)
    assert [w.name for w in written] == ["compute-bc.png", "compute-sorl.png", "compute-all.png"]
    assert all(w.stat().st_size > 5_000 for w in written)

    results.regenerate([page])  # idempotent: the same runs give the same page
    assert page.read_text() == text


def test_a_block_that_cannot_be_made_is_one_line_and_the_page_stays(page, capsys):
    page.write_text(page.read_text() + "\n<!-- results: table no-such-runs -->\n<!-- /results -->\n")
    before = page.read_text()
    with pytest.raises(SystemExit) as e:
        cli.main(["results", str(page)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {page}:14: ") and "\n" not in err
    assert page.read_text() == before


def test_plain_sorl_results_finds_the_committed_pages_and_the_readme():
    root = Path(__file__).resolve().parents[1]
    roots = results.default_roots()
    assert roots[0] == root / "experiments" / "results" and roots[0].is_dir()
    assert roots[1:] == [root / "README.md"]
    assert (root / "experiments" / "results" / "main" / "README.md") in results.pages(roots)


def test_a_diagnostics_block_averages_the_end_of_training_over_seeds(page, capsys):
    # Seed 1's last two logged rows of actor/mse are 1 and 3, seed 2's 5 and 7 (a row without the column is skipped):
    # per-seed means 2 and 6, so 4.00 ± 2.83 over seeds; the return is the default cell's (K=8, N=1).
    runs = page.parent / "runs" / "cube-single-play-task2" / "sorl"
    for seed, rows in ((1, ["0,9", "100,1", "200,3"]), (2, ["0,9", "100,5", "150,", "200,7"])):
        (runs / f"seed{seed}" / "train.csv").write_text("step,actor/mse\n" + "\n".join(rows) + "\n")
    for seed, ret in ((1, -120.0), (2, -80.0)):
        path = runs / f"seed{seed}" / "results.json"
        results_json = json.loads(path.read_text())
        for cell in results_json["final"]:
            if (cell["K"], cell["N"]) == (8, 1):
                cell["return"] = ret
        path.write_text(json.dumps(results_json))
    block = "<!-- results: table runs --diagnostics actor/mse --last 2 -->\n<!-- /results -->\n"
    page.write_text(page.read_text() + "\n" + block)
    cli.main(["results", str(page)])
    text = page.read_text()
    assert "| cube-single-play | cube-single-play-task2 | sorl | K=8, N=1 | 2 | -100.0 ± 28.3 | 4.00 ± 2.83 |" in text
    assert "| cube-single-play | cube-single-play-task2 | bc | K=1, N=1 | 2 | -100.0 ± 0.0 | — |" in text  # no column
    assert "over the last 2 values the run logged" in text

    with pytest.raises(SystemExit):
        cli.main(["table", str(page.parent / "runs"), "--diagnostics", "actor/nope"])
    assert "'actor/nope' is not a train.csv column" in capsys.readouterr().err


def test_a_timing_diagnostic_reads_each_runs_own_results_json(page, capsys):
    # timing/NAME is results.json's timing entry, per run: 100 and 50 updates/s give 75.0 ± 35.4 over seeds;
    # a run without a timing record leaves the cell out of the mean rather than counting as 0.
    runs = page.parent / "runs" / "cube-single-play-task2"
    for agent, seed, timing in (("sorl", 1, {"updates_per_s": 100.0}), ("sorl", 2, {"updates_per_s": 50.0})):
        path = runs / agent / f"seed{seed}" / "results.json"
        results_json = json.loads(path.read_text())
        results_json["timing"] = timing
        path.write_text(json.dumps(results_json))
    for seed in (1, 2):
        path = runs / "bc" / f"seed{seed}" / "results.json"
        results_json = json.loads(path.read_text())
        results_json.pop("timing", None)
        path.write_text(json.dumps(results_json))
    cli.main(["table", str(page.parent / "runs"), "--diagnostics", "timing/updates_per_s"])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[2]: line for line in out.splitlines() if line.startswith("| cube-single-play |")}
    assert rows["sorl"].endswith("| K=8, N=1 | 2 | -100.0 ± 0.0 | 75.0 ± 35.4 |")
    assert rows["bc"].endswith("| — |")
    assert "the run's own figure in results.json" in out

    with pytest.raises(SystemExit):
        cli.main(["table", str(page.parent / "runs"), "--diagnostics", "timing/nope"])
    assert "nor a results.json timing entry" in capsys.readouterr().err


def _bench_json(before: float, after: float) -> dict:
    """A `python scripts/bench_changes.py --sections training --json` output with one measured change."""
    per_K = {str(K): {"flops": 1e9 * K, "update_s": 0.01 * K, "gflops": 100.0, "compile_s": 1.0} for K in (1, 8)}
    return {
        "machine": {"cpu": "Test CPU", "cores": 2, "backend": "cpu", "device": "cpu:0", "jax_version": "0",
                    "loadavg_at_start": [0.5, 0.5, 0.5], "loadavg_at_end": [1.0, 0.5, 0.5]},
        "size": "paper", "agent": "sorl", "agent_overrides": {"actor_layer_size": "256"}, "bench_s": 12.0,
        "training": {"agent": "sorl", "task": "cube-single-play", "encoder": None, "frame_stack": 1, "p_aug": 0.0,
                     "networks": "2x256", "batch_size": 256, "chunk_updates": 10, "compile_s": 7.5,
                     "updates_per_s": 53.7, "updates_per_s_all": [50.0, 53.7, 60.0], "flops_per_update": 1.39e9,
                     "per_K": per_K, "K_distribution": "uniform over [1, 8]", "achieved_gflops": 74.6,
                     "peak_gflops": 185.2, "fraction_of_peak": 0.4},
        "changes": {"stop_policy_gradient_through_critic_target": {
            "before_updates_per_s": before, "after_updates_per_s": after, "speedup": after / before,
            "before": "the released update", "before_flops_per_update": 1.77e9, "after_flops_per_update": 1.39e9}},
    }  # fmt: skip


def test_a_bench_block_prints_the_saved_report_and_a_bad_file_is_one_line(page, capsys):
    (page.parent / "bench").mkdir()
    (page.parent / "bench" / "cube.json").write_text(json.dumps(_bench_json(50.0, 65.0)))
    page.write_text(page.read_text() + "\n<!-- results: bench bench/cube.json -->\nstale\n<!-- /results -->\n")
    cli.main(["results", str(page)])
    text = page.read_text()
    block = text[text.index("<!-- results: bench") :]
    assert "stale" not in block and block.count("```") == 2
    assert "updates_per_s (median)               53.70  (all: 50.00, 53.70, 60.00)" in block
    assert "50.00 -> 65.00  (x1.30)  (1.77 GFLOP -> 1.39 GFLOP)" in block
    assert "    K=8                                8 GFLOP, 80.0 ms/update, 100 GFLOP/s" in block

    (page.parent / "bench" / "cube.json").write_text('{"machine": {}}')
    before = page.read_text()
    with pytest.raises(SystemExit):
        cli.main(["results", str(page)])
    err = capsys.readouterr().err.strip()
    assert "bench/cube.json is not a readable `sorl bench --json` output" in err and "\n" not in err
    assert page.read_text() == before
