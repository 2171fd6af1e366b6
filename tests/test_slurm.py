"""`sorl sweep --launcher slurm` on a real single-node Slurm (slurmctld + slurmd + munge, started by
.ci/slurm.sh): the sbatch options a lab sets, checked by this Slurm; a sweep submitted as one job array that
completes and that `sorl table` reads; a rerun that skips complete runs and resubmits only missing or cancelled
ones; and an array task requeued mid-training (`scontrol requeue`) that resumes from its checkpoint and ends
bit-identical to an uninterrupted run.

Skipped, with one line saying what is missing, where Slurm is not installed or its daemons cannot start
(`.ci/run` installs it; `.ci/slurm.sh up` does both by hand). The machine has few cores: one CPU per array
task, two tasks at once, tiny networks and step counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_e2e import data_dir  # noqa: F401 - the tiny generated cube-single dataset
from test_reliability import assert_same_run

from cli import main as cli
from experiments import launchers

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "slurm.sh"
SLURM_DIR = Path(os.environ.get("SORL_SLURM_DIR", "/var/tmp/sorl-slurm"))


def _script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="session")
def slurm():
    """A running single-node Slurm (partition `debug`): the one already up, else started here and stopped after."""
    if not SCRIPT.is_file():
        pytest.skip("slurm: .ci/slurm.sh is missing")
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    started = False
    if _script("status").returncode != 0:
        if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
            pytest.skip("slurm: not installed (sbatch/slurmctld missing; `.ci/slurm.sh install` installs it)")
        out = _script("start")
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["slurm: .ci/slurm.sh start failed"])[-1]
            pytest.skip(reason)
        started = True
    try:
        yield SLURM_DIR
    finally:
        if started:
            _script("stop")
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


SPEC = """
name = "{name}"
agents = {agents}
tasks = ["cube-single-play-task1"]
seeds = {seeds}
out = "{out}"
data_dir = "{data}"
{variants}
[train]
steps = {steps}
log_interval = {log_interval}
eval_interval = {steps}
checkpoint_interval = {checkpoint_interval}
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
[settings.sorl]
denoise_timesteps = 2
max_k_backprop = 2
{fql}
[launcher.slurm]
partition = "debug"
time = 15
cpus_per_task = 1
array_parallelism = 2
"""


def write_spec(root: Path, data: Path, name: str, **kw) -> Path:
    values = dict(agents='["sorl", "fql"]', seeds="[1, 2]", variants="", steps=20, log_interval=10)
    values["fql"] = "[settings.fql]\nflow_steps = 2" if "fql" in kw.get("agents", "fql") else ""
    values.update(kw)
    values.setdefault("checkpoint_interval", values["steps"])
    path = root / f"{name}.toml"
    path.write_text(SPEC.format(name=name, out=root / name, data=data, **values))
    return path


def squeue(name: str) -> list[tuple[str, str]]:
    """(array task id, state) of the sweep's jobs still known to slurmctld."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "--name", f"sorl-{name}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [tuple(line.split("|")) for line in out.stdout.split()]


def in_background(fn, *args, **kwargs):
    """Run `fn` in a thread; returns a function that joins it and returns its result (or raises its error)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout: float = 600):
        thread.join(timeout)
        assert not thread.is_alive(), "the sweep did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]

    join.thread = thread
    return join


def wait_for(predicate, background, timeout: float = 300, what: str = "") -> None:
    """Wait until `predicate()`; fail if it takes too long or the background sweep ends first."""
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        if not background.thread.is_alive():
            pytest.fail(f"the sweep ended before {what}: {background(0)}")
        time.sleep(0.5)


def options(**kw) -> launchers.SlurmOptions:
    return launchers.SlurmOptions(**{"partition": "debug", "time": 15, "cpus_per_task": 1, **kw})


# ------------------------------------------------------------------------------------------- options


def test_sbatch_options_shown_by_dry_run_are_accepted_by_slurm(slurm, tmp_path, data_dir, capsys):  # noqa: F811
    spec = write_spec(tmp_path, data_dir, "opts")
    argv = ["sweep", str(spec), "--launcher", "slurm", "--dry-run", "--account", "lab", "--qos", "normal"]
    argv += ["--time", "12", "--cpus-per-task", "1", "--array-parallelism", "2", "--sbatch", "comment=sorl-test"]
    argv += ["--mem-gb", "1"]
    cli.main(argv)
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("#SBATCH")]
    assert "4 jobs as one array, submitted with:" in out and "dry run: nothing launched" in out
    for want in ("--array=0-3%2", "--partition=debug", "--account=lab", "--qos=normal", "--time=12",
                 "--cpus-per-task=1", "--comment=sorl-test", "--mem=1024MB"):  # fmt: skip
        assert f"#SBATCH {want}" in lines, (want, lines)
    # each line as this Slurm reads it: sbatch --test-only validates the script without submitting it
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/bash\n" + "\n".join(lines) + "\ntrue\n")
    check = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "to start at" in check.stderr


def test_a_partition_slurm_refuses_is_one_line(slurm, tmp_path, data_dir):  # noqa: F811
    spec = write_spec(tmp_path, data_dir, "refused")
    argv = ["sweep", str(spec), "--launcher", "slurm", "--partition", "nope", "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "cli", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err == "error: sbatch refused the job array: invalid partition specified: nope; nothing was submitted"
    assert not (tmp_path / "refused" / "cube-single-play-task1").exists()


def test_spec_slurm_values_are_checked(tmp_path, data_dir):  # noqa: F811
    from experiments.spec import load_spec
    from sorl.errors import SorlError

    spec = write_spec(tmp_path, data_dir, "bad").read_text()
    for bad, says in (('partition = "debug"', "partition = 3"), ("time = 15", 'time = "1h"'),
                      ("cpus_per_task = 1", "cpus_per_task = 0")):  # fmt: skip
        path = tmp_path / "bad.toml"
        path.write_text(spec.replace(bad, says))
        with pytest.raises(SorlError, match=r"launcher\.slurm\."):
            load_spec(path)


# ---------------------------------------------------------------------------------------- the sweep


def check_complete(root: Path, agents=("sorl", "fql"), seeds=(1, 2), steps: int = 20) -> None:
    for agent in agents:
        for seed in seeds:
            res = json.loads((root / "cube-single-play-task1" / agent / f"seed{seed}" / "results.json").read_text())
            assert res["status"] == "complete" and res["steps"] == steps and res["seed"] == seed
            assert [(c["K"], c["N"]) for c in res["final"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_sweep_as_a_job_array_then_rerun_resubmits_only_missing_and_cancelled(slurm, tmp_path, data_dir, capsys):  # noqa: F811
    spec = write_spec(tmp_path, data_dir, "array")
    runs = tmp_path / "array"
    summary = launchers.sweep(spec, launcher="slurm", slurm=options(array_parallelism=2), progress=False)
    out = capsys.readouterr().out
    assert len(summary.done) == 4 and not summary.failed, out
    assert "submitted 4 jobs as Slurm array " in out
    check_complete(runs)
    submission = next((runs / "submitit").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%2" in submission and "#SBATCH --partition=debug" in submission
    assert f"export PYTHONPATH={ROOT}" in submission  # the job sees this checkout
    assert f"{sys.executable} -u -m submitit.core._submit" in submission  # with this Python (the venv's)
    assert "$ sorl train" in Path(summary.done[0]["log"]).read_text()

    cli.main(["table", str(runs)])
    table = capsys.readouterr().out
    assert "| cube-single-play | cube-single-play-task1 | sorl |" in table
    assert "| cube-single-play | cube-single-play-task1 | fql |" in table

    # two runs lost: a rerun submits only those two (one array of 2); the running one is cancelled (scancel)
    for agent in ("sorl", "fql"):
        shutil.rmtree(runs / "cube-single-play-task1" / agent / "seed2")
    before = {j for j, _ in squeue("array")}
    join = in_background(launchers.sweep, spec, launcher="slurm", slurm=options(array_parallelism=1), progress=False)

    def first_task() -> list[str]:
        return [j for j, state in squeue("array") if j not in before and j.endswith("_0") and state == "RUNNING"]

    wait_for(first_task, join, what="the second array to run")
    subprocess.run(["scancel", first_task()[0]], check=True)  # sorl seed 2, running (fql seed 2 waits: %1)
    again = join()
    out = capsys.readouterr().out
    assert len(again.skipped) == 2 and len(again.done) == 1 and len(again.failed) == 1, out
    assert "submitted 2 jobs as Slurm array " in out
    failed = again.failed[0]
    assert failed["id"] == "cube-single-play-task1/sorl/seed2"
    assert "was cancelled (scancel, or preempted without requeue)" in failed["error"]
    assert "rerun the same `sorl sweep` command to resubmit them" in failed["error"]
    # and rerunning it resubmits only the cancelled run
    last = launchers.sweep(spec, launcher="slurm", slurm=options(), progress=False)
    assert len(last.skipped) == 3 and [o["id"] for o in last.done] == ["cube-single-play-task1/sorl/seed2"]
    assert "submitted 1 jobs as Slurm array " in capsys.readouterr().out
    check_complete(runs)


# -------------------------------------------------------------------------------------------- requeue

REQUEUE_STEPS = 20_000


def test_requeued_task_resumes_from_its_checkpoint_and_ends_identical(slurm, tmp_path, data_dir):  # noqa: F811
    """Two identical variants in one array; variant `a`'s task is requeued (`scontrol requeue`) mid-training.
    Slurm sends it SIGTERM (the Trainer checkpoints at its next logged step and exits), puts it back in the queue
    and starts it again; it resumes from that checkpoint and ends bit-identical to variant `b`, never stopped."""
    variants = '[[variants]]\nname = "a"\n[[variants]]\nname = "b"\n'
    spec = write_spec(
        tmp_path, data_dir, "requeue", agents='["sorl"]', seeds="[1]", variants=variants, steps=REQUEUE_STEPS,
        log_interval=500, checkpoint_interval=4000,
    )  # fmt: skip
    runs = tmp_path / "requeue"
    run_a = runs / "a" / "cube-single-play-task1" / "sorl" / "seed1"
    run_b = runs / "b" / "cube-single-play-task1" / "sorl" / "seed1"
    join = in_background(launchers.sweep, spec, launcher="slurm", slurm=options(array_parallelism=2), progress=False)

    def rows() -> int:
        try:
            return max(0, len((run_a / "train.csv").read_text().splitlines()) - 1)
        except FileNotFoundError:
            return 0

    wait_for(lambda: rows() >= 2, join, what="variant a to train")  # its first checkpoint is written
    running = [j for j, state in squeue("requeue") if j.endswith("_0") and state == "RUNNING"]
    task = max(running, key=lambda j: int(j.split("_")[0]))  # this sweep's array, not an earlier one
    subprocess.run(["scontrol", "requeue", task], check=True)
    requeued_at = rows()
    assert not (run_a / "results.json").exists(), "the requeue came after training had finished"
    # a requeued job waits (BeginTime, about two minutes); let it start again at once
    wait_for(lambda: dict(squeue("requeue")).get(task) == "PENDING", join, what="the task to be pending again")
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)
    summary = join()
    assert len(summary.done) == 2 and not summary.failed, summary
    log = (runs / "logs" / "a__cube-single-play-task1__sorl__seed1.log").read_text()
    # started twice: the first stopped by SIGTERM at a checkpoint, the second continued from it
    assert log.count("=== a/cube-single-play-task1/sorl/seed1\n") == 2, log
    assert "=== a/cube-single-play-task1/sorl/seed1: interrupted: SIGTERM at step " in log, log
    stopped = int(log.split("interrupted: SIGTERM at step ")[1].split()[0])
    assert f"from its checkpoint at step {stopped}" in log
    assert requeued_at < REQUEUE_STEPS // 500
    restart = subprocess.run(["scontrol", "show", "job", task], capture_output=True, text=True).stdout
    assert "Restarts=1" in restart
    assert_same_run(run_a, run_b, optimizer=True)
