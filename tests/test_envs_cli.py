"""`sorl data ...` and the bad-input cases of issue 2: each gives one clear line on stderr, a non-zero exit, no
traceback, and leaves every file already in the data directory untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli import main as cli
from envs import datasets
from sorl.errors import SorlError

STEPS = 20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    datasets.cli_generate(["cube-single-play"], episodes=2, workers=1, data_dir=d, max_episode_steps=STEPS)
    return d


@pytest.fixture
def data(good, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(good, d)
    return d


def snapshot(d):
    if not d.exists():
        return None
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def run_cli(capsys, *argv):
    """cli.main.main in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_list_and_verify_ok(data, capsys):
    code, out, err = run_cli(capsys, "data", "list", "--data-dir", str(data))
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("cube-single-play "))
    assert "present" in row and "generated" in row and "2+1 x 20" in row
    assert "no (expert data)" in next(line for line in out.splitlines() if line.startswith("antmaze-large-navigate"))
    code, out, err = run_cli(capsys, "data", "verify", "--data-dir", str(data))
    assert code == 0 and "all 2 files OK" in out


def test_generate_existing_is_skipped_without_force(data, capsys):
    before = snapshot(data)
    code, out, _ = run_cli(capsys, "data", "generate", "cube-single-play", "--data-dir", str(data))
    assert code == 0 and "--force" in out
    assert snapshot(data) == before


def test_unknown_task_suggests(data, capsys):
    before = snapshot(data)
    code, _, err = run_cli(capsys, "data", "generate", "cube-singel-play", "--data-dir", str(data))
    assert_one_line_error(code, err, "cube-singel-play", "did you mean: cube-single-play")
    code, _, err = run_cli(capsys, "data", "verify", "scene-plya", "--data-dir", str(data))
    assert_one_line_error(code, err, "did you mean: scene-play")
    assert snapshot(data) == before


def test_expert_data_missing_says_where_to_put_it(data, capsys):
    before = snapshot(data)
    train, val = datasets.dataset_paths("antmaze-large-navigate", data)
    code, _, err = run_cli(capsys, "data", "generate", "antmaze-large-navigate", "--data-dir", str(data))
    assert_one_line_error(code, err, str(train), str(val))
    with pytest.raises(SorlError, match="antmaze-large-navigate-v0-val.npz"):
        datasets.load_task("antmaze-large-navigate-singletask-task2-v0", data)
    code, out, err = run_cli(capsys, "data", "verify", "humanoidmaze-medium-navigate", "--data-dir", str(data))
    assert_one_line_error(code, err, "published")
    assert "MISSING" in out and str(data / "humanoidmaze-medium-navigate-v0.npz") in out
    assert snapshot(data) == before


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_npz(data, capsys, damage):
    train, _ = datasets.dataset_paths("cube-single-play", data)
    raw = train.read_bytes()
    if damage == "truncated":
        train.write_bytes(raw[: len(raw) // 2])
    else:  # same size, bytes flipped in the middle of the compressed data
        mid = len(raw) // 2
        train.write_bytes(raw[:mid] + bytes(b ^ 0xFF for b in raw[mid : mid + 64]) + raw[mid + 64 :])
    before = snapshot(data)
    code, out, err = run_cli(capsys, "data", "verify", "--data-dir", str(data))
    assert_one_line_error(code, err, "failed verification", "sorl data generate cube-single-play --force")
    assert "CORRUPT" in out
    with pytest.raises(SorlError, match=r"sorl data verify cube-single-play.*--force") as e:
        datasets.load_task("cube-single-play", data)
    assert str(train) in str(e.value)
    # generating without --force does not overwrite it either
    code, out, err = run_cli(capsys, "data", "generate", "cube-single-play", "--data-dir", str(data))
    assert snapshot(data) == before


def test_changed_file_is_a_mismatch(data, capsys):
    # A valid npz, but not the one the manifest recorded (e.g. regenerated elsewhere and copied over).
    train, _ = datasets.dataset_paths("cube-single-play", data)
    with np.load(train) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["actions"] = arrays["actions"] * 0.5
    np.savez_compressed(train, **arrays)
    code, out, err = run_cli(capsys, "data", "verify", "cube-single-play", "--data-dir", str(data))
    assert_one_line_error(code, err, "failed verification")
    assert "MISMATCH" in out


@pytest.mark.parametrize("change", ["obs_dim", "missing_key", "action_dim"])
def test_wrong_keys_or_shapes(tmp_path, good, capsys, change):
    # A hand-placed (hence 'published') file that does not fit the environment.
    d = tmp_path / "data"
    d.mkdir()
    for src in datasets.dataset_paths("cube-single-play", good):
        with np.load(src) as f:
            arrays = {k: f[k] for k in f.files}
        if change == "obs_dim":
            arrays["observations"] = arrays["observations"][:, :-1]
        elif change == "missing_key":
            del arrays["qpos"]
        else:
            arrays["actions"] = np.zeros((len(arrays["actions"]), 8), np.float32)
        np.savez_compressed(d / src.name, **arrays)
    before = snapshot(d)
    code, out, err = run_cli(capsys, "data", "verify", "--data-dir", str(d))
    assert_one_line_error(code, err, "failed verification")
    assert "CORRUPT" in out
    with pytest.raises(SorlError, match="does not match cube-single-play"):
        datasets.load_task("cube-single-play", d)
    assert snapshot(d) == before


def test_unwritable_data_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(
        capsys, "data", "generate", "cube-single-play", "--episodes", "1", "--data-dir", str(blocker / "data")
    )
    assert_one_line_error(code, err, "cannot create data directory", "--data-dir")
    code, _, err = run_cli(capsys, "data", "generate", "pointmaze-medium-navigate", "--data-dir", str(blocker))
    assert_one_line_error(code, err, str(blocker))
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_data_dir(data, capsys):
    before = snapshot(data)
    data.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "data", "generate", "scene-play", "--episodes", "1", "--data-dir", str(data))
        assert_one_line_error(code, err, "not writable")
    finally:
        data.chmod(0o755)
    assert snapshot(data) == before


@pytest.mark.parametrize("flag", [["--episodes", "0"], ["--episodes", "-1"], ["--episodes=-3"], ["--workers", "0"]])
def test_bad_counts(data, capsys, flag):
    before = snapshot(data)
    code, _, err = run_cli(capsys, "data", "generate", "scene-play", *flag, "--data-dir", str(data))
    assert_one_line_error(code, err, "at least 1")
    assert snapshot(data) == before
    assert not (data / "scene-play-v0.npz").exists()


def test_real_process_prints_one_line(data):
    """The installed entry point, in its own process: no traceback, one stderr line, exit 2."""
    train, _ = datasets.dataset_paths("cube-single-play", data)
    train.write_bytes(train.read_bytes()[:100])
    before = snapshot(data)
    env = {**os.environ, "OGBENCH_DATA_DIR": str(data)}  # the environment variable picks the data directory
    for argv in (["data", "verify"], ["data", "generate", "cube-single-pley"]):
        r = subprocess.run([sys.executable, "-m", "cli", *argv], capture_output=True, text=True, env=env)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snapshot(data) == before


def test_partial_dataset_needs_force(data, capsys):
    train, val = datasets.dataset_paths("cube-single-play", data)
    val.unlink()
    before = snapshot(data)
    code, _, err = run_cli(capsys, "data", "generate", "cube-single-play", "--data-dir", str(data))
    assert_one_line_error(code, err, str(val), "--force")
    with pytest.raises(SorlError, match="missing"):
        datasets.load_task("cube-single-play", data)
    code, out, _ = run_cli(capsys, "data", "list", "--data-dir", str(data))
    assert "partial" in next(line for line in out.splitlines() if line.startswith("cube-single-play "))
    assert snapshot(data) == before


def test_list_marks_damaged(data, capsys):
    train, _ = datasets.dataset_paths("cube-single-play", data)
    train.write_bytes(b"not a zip")
    code, out, _ = run_cli(capsys, "data", "list", "--data-dir", str(data))
    assert code == 0
    assert "damaged" in next(line for line in out.splitlines() if line.startswith("cube-single-play "))
