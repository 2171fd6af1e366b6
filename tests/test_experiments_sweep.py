"""A tiny real sweep (2 tasks x 2 seeds x 20 updates, tiny networks) through each launcher, then `sorl table` and
both plots from its directories.

The launchers share one output directory and add two seeds each: `local` trains seeds 1-2, submitit's local
executor (the `slurm` launcher's code path, seeds grouped per task) seeds 3-4, a local Ray instance seeds 5-6; each
later sweep must skip the runs whose results.json exists. Last, a run that cannot start is reported as failed with
its log, and the others still finish.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_e2e import data_dir  # noqa: F401 - the tiny generated cube-single dataset

from cli import main as cli
from experiments import launchers

SPEC = """
agents = ["sorl"]
tasks = ["cube-single-play-task1", "cube-single-play-task2"]
seeds = {seeds}
out = "{out}"
data_dir = "{data}"
[train]
steps = 20
log_interval = 10
eval_interval = 20
[eval]
K = [1, 2]
N = [1, 2]
episodes = 1
max_episode_steps = 8
workers = 1
[settings]
actor_layer_size = 16
actor_num_layers = 1
value_layer_size = 16
value_num_layers = 1
batch_size = 16
denoise_timesteps = 2
max_k_backprop = 2
"""
TASKS = ("cube-single-play-task1", "cube-single-play-task2")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep")


def spec_file(root: Path, data: Path, seeds: list[int]) -> Path:
    path = root / f"tiny-{len(seeds)}.toml"
    path.write_text(SPEC.format(seeds=seeds, out=root / "runs", data=data))
    return path


def check_complete(root: Path, seeds: list[int]) -> None:
    for task in TASKS:
        for seed in seeds:
            run = root / "runs" / task / "sorl" / f"seed{seed}"
            res = json.loads((run / "results.json").read_text())
            assert res["status"] == "complete" and res["steps"] == 20 and res["seed"] == seed
            assert [(c["K"], c["N"]) for c in res["final"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
            cfg = json.loads((run / "config.json").read_text())
            assert cfg["agent_config"]["actor_layer_size"] == 16 and cfg["agent_overrides"]["batch_size"] == "16"


def test_local_launcher(sweep_dir, data_dir, capsys):  # noqa: F811
    spec = spec_file(sweep_dir, data_dir, [1, 2])
    summary = launchers.sweep(spec, launcher="local", max_parallel=2, progress=False)
    assert len(summary.done) == 4 and not summary.failed and not summary.skipped
    check_complete(sweep_dir, [1, 2])
    log = Path(summary.done[0]["log"])
    assert log.parent == sweep_dir / "runs" / "logs" and "$ sorl train" in log.read_text()
    # a re-launch resumes: nothing left to run
    again = launchers.sweep(spec, launcher="local", progress=False)
    assert len(again.skipped) == 4 and not again.done
    assert "4 runs: 0 done, 0 failed, 4 skipped (complete)" in capsys.readouterr().out


def test_submitit_local_executor(sweep_dir, data_dir):  # noqa: F811
    spec = spec_file(sweep_dir, data_dir, [1, 2, 3, 4])
    options = launchers.SlurmOptions(cluster="local", time=10, cpus_per_task=1)
    summary = launchers.sweep(spec, launcher="slurm", slurm=options, max_parallel=2, group_seeds=True, progress=False)
    assert len(summary.skipped) == 4 and len(summary.done) == 4 and not summary.failed
    assert {o["id"] for o in summary.done} == {f"{t}/sorl/seed{s}" for t in TASKS for s in (3, 4)}
    check_complete(sweep_dir, [3, 4])
    assert any((sweep_dir / "runs" / "submitit").iterdir())  # submitit's own job folder
    # --group-seeds: both seeds of a task in one process, through runner.multiseed's vmapped training
    log = sweep_dir / "runs" / "logs" / "cube-single-play-task1__sorl__seeds3,4.log"
    assert "seeds [3, 4] vmapped in one process" in log.read_text()
    assert {o["log"] for o in summary.done} == {str(log), str(log).replace("task1", "task2")}


def test_ray_local_instance(sweep_dir, data_dir):  # noqa: F811
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = spec_file(sweep_dir, data_dir, [1, 2, 3, 4, 5, 6])
        options = launchers.RayOptions(cpus_per_run=1)
        summary = launchers.sweep(spec, launcher="ray", ray_options=options, progress=False)
    finally:
        ray.shutdown()
    assert len(summary.skipped) == 8 and len(summary.done) == 4 and not summary.failed
    check_complete(sweep_dir, [5, 6])
    assert all(Path(o["log"]).is_file() for o in summary.done)


def test_table_and_plots_from_the_sweep(sweep_dir, capsys):
    runs = str(sweep_dir / "runs")
    cli.main(["table", runs, "--compare", "paper"])
    out = capsys.readouterr().out
    for task in TASKS:
        assert f"| cube-single-play | {task} | sorl | K=2, N=1 | 6 |" in out
    assert "| cube-single-play | 2/5 tasks | sorl | K=2, N=1 | 6 |" in out and "| 97 ± 1 |" in out
    plots = sweep_dir / "plots"
    cli.main(["plot", "scaling", runs, "--out", str(plots), "--reps", "200"])
    cli.main(["plot", "curves", runs, "--out", str(plots), "--reps", "200", "--formats", "png"])
    names = {p.name for p in plots.iterdir()}
    assert {"scaling-sorl.png", "scaling-sorl.pdf", "curves.png"} <= names
    assert all((plots / n).stat().st_size > 1000 for n in names)


def test_a_failed_run_is_reported_and_does_not_stop_the_others(sweep_dir, data_dir, capsys):  # noqa: F811
    spec = spec_file(sweep_dir, data_dir, [1, 2, 3, 4, 5, 6, 7])
    blocked = sweep_dir / "runs" / "cube-single-play-task1" / "sorl" / "seed7"
    blocked.mkdir(parents=True)
    (blocked / "unrelated.txt").write_text("not a run")  # train() refuses a non-empty non-run directory
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", str(spec), "--max-parallel", "2", "--no-progress"])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "14 runs: 1 done, 1 failed, 12 skipped (complete)" in captured.out
    log = sweep_dir / "runs" / "logs" / "cube-single-play-task1__sorl__seed7.log"
    assert "failed: cube-single-play-task1/sorl/seed7: " in captured.out and f"(log: {log})" in captured.out
    assert "holds no sorl run" in log.read_text()
    assert captured.err.strip() == "error: 1 of 14 runs failed; their logs are listed above"
    check_complete(sweep_dir, [])
    assert json.loads((sweep_dir / "runs" / TASKS[1] / "sorl" / "seed7" / "results.json").read_text())["seed"] == 7
