"""The bad-input catalogue for run directories: `sorl train` reruns, `sorl eval` and videos that are refused must
write nothing. Each case runs through `refusals.assert_refused`: one `error:` line, no traceback, every file
under the test's directory byte-identical (config.json, the logs, the checkpoints, scaling.json, the videos, the
lock file) and nothing created (a refused new run leaves no directory behind).

Read-only run directories are made read-only for real: a read-only bind mount when the tests run as root (root
writes through permission bits), else the permission bits; a case is skipped where neither can be done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from refusals import Refusal, run_case
from test_train_loop import TASK, _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from envs import rendering
from runner import runs
from runner import safety as reliability


@pytest.fixture
def stand_in(request):
    """test_train_loop's stand-in agent ("tiny"), synthetic dataset and evaluation env."""
    return request.getfixturevalue("_stand_in")


# ------------------------------------------------------------------------------------------- set-ups

_LOCKS: list[reliability.RunLock] = []
_UNDO: list[Path] = []  # read-only directories to make writable again


def _trained(tmp: Path) -> None:
    _train(tmp, "run", steps=10, eval_interval=10)


def _online_trained(tmp: Path) -> None:
    """10 offline updates, then 5 online steps: its config.json has an online section, its last checkpoint (15) a
    replay buffer."""
    _train(tmp, "run", steps=10, online_steps=5, log_interval=5, eval_interval=5)


def _file(tmp: Path) -> None:
    (tmp / "file").write_text("not a run directory")


def _seed2_trained(tmp: Path) -> None:
    _train(tmp, "multi/seed2", seed=2, steps=10, eval_interval=10)


def _locked(tmp: Path) -> None:
    _trained(tmp)
    _LOCKS.append(reliability.RunLock(tmp / "run").acquire())  # held through a second file description


def _read_only(path: Path) -> None:
    """Make `path` read-only for this process (see the module docstring), or skip the test."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        _UNDO.append(path)
        return
    if shutil.which("mount") is None:
        pytest.skip("running as root without mount: no way to make a directory read-only")
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount: {mounted.stderr.decode().strip()}")
    _UNDO.append(path)
    ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
    if ro.returncode != 0:
        pytest.skip(f"running as root and cannot remount read-only: {ro.stderr.decode().strip()}")


def _writable_again(path: Path) -> None:
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
    else:
        subprocess.run(["umount", str(path)], check=True)


def _read_only_run(tmp: Path) -> None:
    _trained(tmp)
    _read_only(tmp / "run")


def _alien_agent(tmp: Path) -> None:
    _trained(tmp)
    cfg = json.loads((tmp / "run" / "config.json").read_text())
    (tmp / "run" / "config.json").write_text(json.dumps({**cfg, "agent": "nosuchagent"}))


def _earlier_video(tmp: Path) -> None:
    _trained(tmp)
    (tmp / "run" / "videos").mkdir()
    (tmp / "run" / "videos" / "step10-K1-N1-ep0.mp4").write_bytes(b"an earlier video")


def _other_scaling_grid(tmp: Path) -> None:
    _trained(tmp)
    run = runs.RunDir(tmp / "run")
    cells = [{"K": K, "N": 1, "success": 0.5, "return": 1.0, "length": 5.0, "episodes": 50} for K in (1, 2, 4)]
    run.write_scaling(run.read_config(), 10, cells, eval_seed=0, episodes=50, max_episode_steps=None)


def _corrupt_scaling(tmp: Path) -> None:
    _trained(tmp)
    (tmp / "run" / "scaling.json").write_text('{"grid": [{"K": ')


def _binary_train_log(tmp: Path) -> None:
    _trained(tmp)
    (tmp / "run" / "train.csv").write_bytes(b"\xff\xfe\x00garbage\n")


def _corrupt_checkpoint(tmp: Path) -> None:
    _trained(tmp)
    for f in (tmp / "run" / "checkpoints" / "10").rglob("*"):
        if f.is_file() and f.name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
            f.write_bytes(b"\x00garbage")


def _run_dir_in_the_way(tmp: Path) -> None:
    _trained(tmp)
    (tmp / "run" / "config.json").unlink()
    (tmp / "run" / "config.json").mkdir()


# ------------------------------------------------------------------------------------------- the catalogue

T = ["train", "--task", TASK, "--progress", "False"]
TINY = [*T, "--agent", "tiny", "--run-dir", "{tmp}/new", "--eval-K", "1", "--eval-workers", "1"]
RUN = [*TINY, "--run-dir", "{tmp}/run", "--seed", "1"]  # the stand-in run `_trained` made (10 updates)
EVAL = ["--K", "1", "--N", "1", "--workers", "1", "--episodes", "2"]
VIDEO = ["--video-episodes", "1", "--video-size", "64"]

CASES: list[Refusal] = [
    # reruns of a trained run that must not touch it
    Refusal("rerun-steps-below-checkpoint", [*RUN, "--steps", "5"], "> --steps 5", _trained, stand_in=True),
    Refusal(  # the case: this rerun used to rewrite config.json without its online section first
        "rerun-online-run-below-its-checkpoint",
        [*RUN, "--steps", "10"],
        "checkpoint at step 15 > --steps 10",
        _online_trained,
        stand_in=True,
    ),
    Refusal(
        "rerun-online-run-other-offline-steps",
        [*RUN, "--steps", "5", "--online-steps", "20"],
        "online phase was set up with --steps 10 (now 5)",
        _online_trained,
        stand_in=True,
    ),
    Refusal(
        "rerun-offline-checkpoint-past-online-start",
        [*RUN, "--steps", "5", "--online-steps", "10"],
        "holds an offline checkpoint at step 10 > --steps 5",
        _trained,
        stand_in=True,
    ),
    Refusal("rerun-other-seed", [*RUN, "--seed", "7"], "seed=1, not 7", _trained, stand_in=True),
    Refusal("rerun-other-config", [*RUN, "--agent.lr=0.5"], "different agent config", _trained, stand_in=True),
    Refusal(
        "rerun-other-success-timing",
        [*RUN, "--success-timing", "post"],
        "success_timing='pre'",
        _trained,
        stand_in=True,
    ),
    Refusal("rerun-other-task", [*RUN, "--task", "cube-single-play-task2"], "task=", _trained, stand_in=True),
    Refusal("rerun-K-above-trained", [*RUN, "--steps", "20", "--eval-K", "8"], "above", _trained, stand_in=True),
    Refusal(
        "rerun-video-cell-above-trained",
        [*RUN, "--steps", "20", *VIDEO, "--video-K", "8"],
        "K=8 is above",
        _trained,
        stand_in=True,
    ),
    Refusal(
        "rerun-unreadable-log", [*RUN, "--steps", "20"], "train.csv is unreadable", _binary_train_log, stand_in=True
    ),
    Refusal(  # refused while restoring (after the data load): the checkpoint is read, never cleaned up or rewritten
        "rerun-corrupt-checkpoint", [*RUN, "--steps", "20"], "checkpoint 10 in", _corrupt_checkpoint, stand_in=True
    ),
    Refusal("rerun-in-use", [*RUN, "--steps", "20"], "in use by process", _locked, stand_in=True),
    Refusal(
        "rerun-read-only-run-dir-with-videos",
        [*RUN, "--steps", "20", *VIDEO],
        "cannot write to run directory",
        _read_only_run,
        stand_in=True,
    ),
    # several seeds: one seed's refusal stops them all before any is written (seed 1's directory is not made)
    Refusal(
        "seeds-one-past-steps",
        [*TINY, "--seeds", "1,2", "--run-dir", "{tmp}/multi", "--steps", "5"],
        "seed2 already holds a checkpoint at step 10 > --steps 5",
        _seed2_trained,
        stand_in=True,
    ),
    # new run directories: refused without leaving a directory (or a lock file) behind
    Refusal("new-run-K-above-trained", [*TINY, "--eval-K", "8"], "above", None, stand_in=True),
    Refusal("run-dir-is-a-file", [*TINY, "--run-dir", "{tmp}/file"], "is a file", _file, stand_in=True),
    Refusal("run-dir-under-a-file", [*TINY, "--run-dir", "{tmp}/file/run"], "file is a file", _file, stand_in=True),
    # sorl eval
    Refusal("eval-file-path", ["eval", "{tmp}/file", *EVAL], "is a file, not a run directory", _file),
    Refusal(
        "eval-config-is-a-directory",
        ["eval", "{tmp}/run", *EVAL],
        "config.json is a directory",
        _run_dir_in_the_way,
        stand_in=True,
    ),
    Refusal("eval-unknown-agent-in-config", ["eval", "{tmp}/run", *EVAL], "(read from", _alien_agent, stand_in=True),
    Refusal(
        "eval-read-only-run-dir",
        ["eval", "{tmp}/run", *EVAL],
        "cannot write to run directory",
        _read_only_run,
        stand_in=True,
    ),
    Refusal(
        "eval-read-only-run-dir-with-videos",
        ["eval", "{tmp}/run", *EVAL, *VIDEO, "--video-only"],
        "cannot write to videos directory",
        _read_only_run,
        stand_in=True,
    ),
    Refusal(
        "eval-video-exists",
        ["eval", "{tmp}/run", *EVAL, *VIDEO],
        "step10-K1-N1-ep0.mp4",
        _earlier_video,
        stand_in=True,
    ),
    Refusal(
        "eval-would-drop-cells-of-another-grid",
        ["eval", "{tmp}/run", *EVAL],
        "K=2 N=1, K=4 N=1 made with",
        _other_scaling_grid,
        stand_in=True,
    ),
    Refusal(
        "eval-corrupt-scaling-json",
        ["eval", "{tmp}/run", *EVAL],
        "not a scaling grid",
        _corrupt_scaling,
        stand_in=True,
    ),
]


def test_catalogue_covers_the_run_layer():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for kind in ("rerun-", "seeds-", "new-run", "eval-", "read-only", "video"):
        assert any(kind in i for i in ids), kind


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_and_nothing_written(request, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository (default run directories are relative)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "default-data"))
    monkeypatch.setattr(rendering, "gl_backend", lambda: "egl")  # the video cases are refused before any rendering
    try:
        run_case(request, tmp_path, capsys, case)
    finally:
        while _LOCKS:
            _LOCKS.pop().release()
        while _UNDO:
            _writable_again(_UNDO.pop())
