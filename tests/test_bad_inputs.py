"""A catalogue of bad inputs across the command line: each ends in one line on stderr (`error: ...`), a non-zero
exit code and no traceback.

The cases run in-process through `cli.main.main` (cheap); a few run as real `sorl` processes to check the same
at the process level. Training cases use the stand-in agent of test_train_loop.py ("tiny") where they need a
trained run; dataset cases use the real data layer on a scratch data directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_loop import TASK, _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from cli import main as cli
from runner import safety as reliability

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stand_in(request):
    """test_train_loop's stand-in agent ("tiny"), synthetic dataset and evaluation env."""
    return request.getfixturevalue("_stand_in")


# ------------------------------------------------------------------------------------------- set-ups


def _trained(tmp: Path) -> None:
    _train(tmp, "run", steps=10, eval_interval=10)


def _empty_data(tmp: Path) -> None:
    (tmp / "data").mkdir()


def _corrupt_data(tmp: Path) -> None:
    (tmp / "data").mkdir()
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        (tmp / "data" / name).write_bytes(b"PK\x03\x04 this is not a zip archive")


def _half_data(tmp: Path) -> None:
    (tmp / "data").mkdir()
    np.savez(tmp / "data" / "cube-single-play-v0.npz", observations=np.zeros((2, 3), np.float32))


def _data_file(tmp: Path) -> None:
    (tmp / "data").write_text("not a directory")


def _file_run_dir(tmp: Path) -> None:
    (tmp / "new").write_text("x")


def _foreign_dir(tmp: Path) -> None:
    (tmp / "new").mkdir()
    (tmp / "new" / "notes.txt").write_text("mine")


def _corrupt_config(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text('{"task": ')


def _no_checkpoints(tmp: Path) -> None:
    _trained(tmp)
    (tmp / "bare").mkdir()
    (tmp / "bare" / "config.json").write_text((tmp / "run" / "config.json").read_text())


def _corrupt_checkpoint(tmp: Path) -> None:
    _trained(tmp)
    for p in (tmp / "run" / "checkpoints" / "10").rglob("*"):
        if p.is_file() and p.name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
            p.write_bytes(b"\x00garbage")


def _locked(tmp: Path) -> None:
    _trained(tmp)
    _LOCKS.append(reliability.RunLock(tmp / "run").acquire())  # held through a second file description


_LOCKS: list[reliability.RunLock] = []


def _spec(text: str, name: str = "bad.toml"):
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(text)

    return setup


GOOD_SPEC = 'agents = ["sorl"]\ntasks = ["cube-single-play-task1"]\nseeds = [1]\n'

# ------------------------------------------------------------------------------------------- the catalogue

T = ["train", "--task", TASK, "--progress", "False"]  # a valid start; cases add or override flags
TINY = [*T, "--agent", "tiny", "--run-dir", "{tmp}/new", "--eval-K", "1", "--eval-workers", "1"]
RUN = [*TINY, "--run-dir", "{tmp}/run", "--seed", "1"]  # the stand-in run `_trained` made
DATA = [*T, "--data-dir", "{tmp}/data", "--run-dir", "{tmp}/new"]
EVAL = ["--K", "1", "--workers", "1"]
SWEEP = ["sweep", "{tmp}/bad.toml", "--dry-run"]
TYPO_TASK = GOOD_SPEC.replace("cube-single-play-task1", "cube-singel-play")

# (id, argv, a piece of the expected line, set-up, needs the stand-in agent)
CASES = [
    # command-line syntax (tyro's own errors, reprinted as one line)
    ("unknown-flag", [*T, "--bogus", "1"], "Unrecognized options: --bogus", None, False),
    ("flag-typo", [*T, "--stepz", "3"], "--steps", None, False),
    ("not-an-int", [*T, "--steps", "abc"], "--steps", None, False),
    ("missing-task", ["train"], "--task", None, False),
    ("bad-choice", [*T, "--success-timing", "mid"], "success-timing", None, False),
    ("unknown-command", ["trian"], "Unrecognized options: trian", None, False),
    ("eval-without-run", ["eval"], "Missing", None, False),
    ("missing-value", ["eval", "x", "--K"], "--K", None, False),
    # tasks
    ("task-typo", ["train", "--task", "cube-singel-play"], "cube-single-play", None, False),
    ("unknown-task-id", ["train", "--task", "cube-single-play-task9"], "task9", None, False),
    ("unknown-env", ["data", "generate", "nosuchenv"], "nosuchenv", None, False),
    ("generate-nothing", ["data", "generate"], "at least one task", None, False),
    # datasets
    ("dataset-not-generatable", [*DATA, "--task", "antmaze-large-navigate"], "antmaze", _empty_data, False),
    ("dataset-corrupt", DATA, "cube-single-play-v0", _corrupt_data, False),
    ("dataset-half-present", DATA, "missing", _half_data, False),
    ("data-dir-is-a-file", DATA, "cannot create data directory", _data_file, False),
    (
        "verify-corrupt",
        ["data", "verify", "cube-single-play", "--data-dir", "{tmp}/data"],
        "failed",
        _corrupt_data,
        False,
    ),
    # agents: names, keys and values
    ("unknown-agent", [*T, "--agent", "nosuchagent"], "unknown agent", None, False),
    ("unknown-agent-key", [*T, "--agent.nonsense=1"], "unknown setting --agent.nonsense", None, False),
    ("agent-key-typo", [*T, "--agent.q_los_coef=1"], "q_loss_coef", None, False),
    ("agent-value-type", [*T, "--agent.lr=abc"], "--agent.lr", None, False),
    ("agent-value-range", [*T, "--agent.batch_size=0"], "batch_size", None, False),
    ("agent-value-choice", [*T, "--agent.q_agg=median"], "q_agg", None, False),
    ("agent-value-missing", [*T, "--agent.lr"], "needs a value", None, False),
    ("agent-key-elsewhere", ["eval", "x", "--agent.lr=1"], "only apply to `sorl train`", None, False),
    # K and N
    ("K-not-power-of-two", [*T, "--eval-K", "1,3"], "power of two", None, False),
    ("K-not-a-number", [*T, "--eval-K", "1,x"], "--eval-K", None, False),
    ("K-empty-item", [*T, "--eval-K", "1,,2"], "--eval-K", None, False),
    ("N-zero", [*T, "--eval-N", "0"], "N=0", None, False),
    ("K-above-trained", [*TINY, "--eval-K", "8"], "above", None, True),
    ("M-not-power-of-two", [*T, "--agent.denoise_timesteps=3"], "denoise_timesteps", None, False),
    ("eval-K-bad", ["eval", "{tmp}/run", *EVAL, "--K", "3"], "power of two", _trained, True),
    ("eval-N-bad", ["eval", "{tmp}/run", *EVAL, "--N", "0"], "N=0", _trained, True),
    # numbers
    ("steps-zero", [*T, "--steps", "0"], "steps=0", None, False),
    ("seed-negative", [*T, "--seed", "-1"], "seed", None, False),
    ("log-interval-negative", [*T, "--log-interval", "-5"], "log_interval", None, False),
    ("episodes-zero", [*T, "--eval-episodes", "0"], "eval_episodes", None, False),
    ("eval-envs-zero", [*T, "--eval-envs", "0"], "eval_envs=0", None, False),
    ("eval-envs-zero-eval", ["eval", "{tmp}/run", *EVAL, "--envs", "0"], "--envs=0", _trained, True),
    # run directories
    ("run-dir-is-a-file", TINY, "is a file", _file_run_dir, True),
    ("run-dir-not-a-run", TINY, "not empty", _foreign_dir, True),
    ("run-dir-other-seed", [*RUN, "--seed", "7"], "seed=", _trained, True),
    ("run-dir-other-config", [*RUN, "--agent.lr=0.5"], "different agent config", _trained, True),
    ("run-dir-past-steps", [*RUN, "--steps", "5"], "> --steps 5", _trained, True),
    ("run-dir-in-use", RUN, "in use by process", _locked, True),
    ("eval-no-run", ["eval", "{tmp}/missing"], "not a run directory", None, False),
    ("eval-corrupt-config", ["eval", "{tmp}/run"], "corrupt", _corrupt_config, False),
    ("eval-no-checkpoint", ["eval", "{tmp}/bare", *EVAL], "no checkpoints", _no_checkpoints, True),
    ("eval-corrupt-checkpoint", ["eval", "{tmp}/run", *EVAL], "corrupt", _corrupt_checkpoint, True),
    # sweep spec files
    ("spec-missing", ["sweep", "{tmp}/none.toml", "--dry-run"], "not found", None, False),
    ("spec-not-toml", ["sweep", "{tmp}/bad.json", "--dry-run"], ".toml", _spec("{}", "bad.json"), False),
    ("spec-invalid-toml", SWEEP, "not valid TOML", _spec("agents = [sorl"), False),
    ("spec-unknown-key", SWEEP, "agentz", _spec(GOOD_SPEC + "agentz = 1\n"), False),
    ("spec-unknown-agent", SWEEP, "unknown agent", _spec(GOOD_SPEC.replace('"sorl"', '"nosuchagent"')), False),
    ("spec-unknown-task", SWEEP, "cube-single-play", _spec(TYPO_TASK), False),
    ("spec-bad-steps", SWEEP, "steps", _spec(GOOD_SPEC + "[train]\nsteps = 0\n"), False),
    ("spec-bad-K", SWEEP, "power of two", _spec(GOOD_SPEC + "[eval]\nK = [3]\n"), False),
    ("spec-unknown-setting", SWEEP, "unknown setting", _spec(GOOD_SPEC + "[settings]\nlearning_rate = 1\n"), False),
]


def test_catalogue_is_large_and_covers_every_kind():
    assert len(CASES) >= 20
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids)
    for kind in ("task", "dataset", "agent", "K-", "N-", "run-dir", "spec", "eval"):
        assert any(kind in i for i in ids), kind


@pytest.mark.parametrize(
    ("argv", "expect", "setup", "needs_stand_in"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line(request, tmp_path, capsys, monkeypatch, argv, expect, setup, needs_stand_in):
    monkeypatch.chdir(tmp_path)  # nothing lands in the repository (default run directories are relative)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "default-data"))
    if needs_stand_in:
        request.getfixturevalue("stand_in")
    if setup is not None:
        setup(tmp_path)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    finally:
        while _LOCKS:
            _LOCKS.pop().release()
    out, err = capsys.readouterr()
    assert e.value.code not in (0, None)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["train", "--task", "cube-singel-play"], "did you mean"),
        (["train", "--task", TASK, "--bogus"], "Unrecognized options: --bogus"),
        (["sweep", "no-such-spec"], "not found"),
    ],
    ids=["task-typo", "unknown-flag", "spec-missing"],
)
def test_bad_input_in_a_real_process(tmp_path, argv, expect):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "OGBENCH_DATA_DIR": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], p.stderr
