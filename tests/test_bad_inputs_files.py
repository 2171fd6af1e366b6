"""The bad-input catalogue of damaged files: checkpoints and datasets (issue 28).

Checkpoints carry the size and sha256 of every file (`runner.checkpoint`, `sorl_checksums.json`), checked on every
read: a flipped byte, a truncated or missing file is one line naming the checkpoint, the file and what to do, for
`sorl eval` and for a resumed `sorl train`, before orbax reads anything. Datasets are checked once per file against
the manifest's sha256 and for NaN/inf (`envs.datasets._check_dataset`), before anything is compiled; a generation
estimated at more than an hour starts only with `--long`. Every refusal leaves every file byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from refusals import Refusal, run_case, snapshot
from test_train_loop import TASK, _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from cli import main as cli
from envs import datasets, manifest
from envs.registry import resolve_env
from runner import checkpoint
from runner import train as train_lib
from runner.checkpoint import CHECKSUMS, Checkpointer
from sorl.errors import SorlError


@pytest.fixture
def stand_in(request):
    """test_train_loop's stand-in agent ("tiny"), synthetic dataset and evaluation env."""
    return request.getfixturevalue("_stand_in")


# ------------------------------------------------------------------------------------------- checkpoints

# One stand-in run, 20 updates, checkpoints at 10 and 20; the resume command repeats its settings exactly, so
# that the config.json a resume rewrites before it restores is byte-identical.
RUN_SETTINGS = dict(steps=20, log_interval=10, eval_interval=10, checkpoint_interval=10, eval_episodes=3,
                    eval_K="1", eval_N="1", eval_workers=1)  # fmt: skip
RESUME = ["train", "--task", TASK, "--agent", "tiny", "--seed", "1", "--run-dir", "{tmp}/run", "--no-progress"]
RESUME += [f"--{k.replace('_', '-')}={v}" for k, v in RUN_SETTINGS.items()]
EVAL = ["eval", "{tmp}/run", "--K", "1", "--N", "1", "--episodes", "2", "--workers", "1"]


def _trained(tmp: Path) -> None:
    _train(tmp, "run", **RUN_SETTINGS)


def _killed(tmp: Path) -> None:
    """A run killed after its checkpoint at 10: checkpoint 20 and results.json never written."""
    _trained(tmp)
    shutil.rmtree(tmp / "run" / "checkpoints" / "20")
    (tmp / "run" / "results.json").unlink()


def _largest(step_dir: Path) -> Path:
    """The largest array-data file of a step (orbax's OCDBT data files sit in `d/` directories)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


def _flip(step_dir: Path) -> None:
    path = _largest(step_dir)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(step_dir: Path) -> None:
    path = _largest(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damaged(make, damage, step: int):
    def setup(tmp: Path) -> None:
        make(tmp)
        damage(tmp / "run" / "checkpoints" / str(step))

    return setup


def _checksums_garbled(step_dir: Path) -> None:
    (step_dir / CHECKSUMS).write_text('{"files": {')


def _file_deleted(step_dir: Path) -> None:
    _largest(step_dir).unlink()


def _legacy_nan(tmp: Path) -> None:
    """Checkpoint 20 as a checkpoint from before checksums whose weights decode to NaN (its bytes damaged)."""
    _trained(tmp)
    ckdir = tmp / "run" / "checkpoints"
    agent, step = train_lib.load_run(tmp / "run")
    state = {"agent": agent.replace(w=jnp.full_like(agent.w, jnp.nan)), "data_rng": jnp.zeros(2, jnp.uint32)}
    shutil.rmtree(ckdir / "20")
    with Checkpointer(ckdir, writer=True) as ckpt:
        ckpt.save(step, {**state, "step": np.int64(step)})
    (ckdir / "20" / CHECKSUMS).unlink()


# ---------------------------------------------------------------------------------------------- datasets

DATA_TASK = "cube-single-play"
DATA_STEPS = 20


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good-data")
    datasets.ensure_dataset(DATA_TASK, d, episodes=2, workers=1, max_episode_steps=DATA_STEPS, progress=False)
    return d


_GOOD: list[Path] = []  # the module's generated dataset, for set-ups (which take only tmp)


@pytest.fixture(autouse=True)
def _good_data_for_setups(good_data):
    _GOOD[:] = [good_data]
    yield


def _copy_data(tmp: Path) -> Path:
    shutil.copytree(_GOOD[0], tmp / "data")  # copy2: mtimes kept, so the manifest's stamps still hold
    return tmp / "data"


def _edited(split: int, key: str, edit):
    """Set-up: the good dataset with `edit(array)` applied to `key` of the train (0) or val (1) file, recorded in
    the manifest as a published file (sha256 of the edited file; never checked)."""

    def setup(tmp: Path) -> None:
        d = _copy_data(tmp)
        path = datasets.dataset_paths(DATA_TASK, d)[split]
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        edit(arrays[key])
        np.savez_compressed(path, **arrays)
        entry = manifest.make_entry(path, provenance="published", dataset=path.stem, split=("train", "val")[split])
        manifest.update(d, {path.name: entry})

    return setup


def _nan_block(a: np.ndarray) -> None:
    a[3:5, :6] = np.nan  # 12 values, first at row 3


def _inf_one(a: np.ndarray) -> None:
    a[7, 1] = np.inf


def _nan_one(a: np.ndarray) -> None:
    a[0, 0] = np.nan


def _bytes_changed(tmp: Path) -> None:
    d = _copy_data(tmp)
    path = datasets.dataset_paths(DATA_TASK, d)[0]
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0x01  # the first member's modification time: same size, still a readable zip; a new mtime
    path.write_bytes(bytes(raw))


def _dataset_truncated(tmp: Path) -> None:
    d = _copy_data(tmp)
    path = datasets.dataset_paths(DATA_TASK, d)[1]
    path.write_bytes(path.read_bytes()[:-100])


def _empty_data(tmp: Path) -> None:
    (tmp / "data").mkdir()


TRAIN_DATA = ["train", "--task", DATA_TASK, "--data-dir", "{tmp}/data", "--run-dir", "{tmp}/new", "--no-progress"]
ONLY = "it is the run's only checkpoint: retrain"

CASES: list[Refusal] = [
    # checkpoints: `sorl eval` reads the latest (20); the message offers checkpoint 10
    Refusal("ckpt-flipped-byte-eval", EVAL, "changed since it was written (sha256 differs); delete",
            _damaged(_trained, _flip, 20), "checkpoint", stand_in=True),
    Refusal("ckpt-truncated-eval", EVAL, "when written (truncated or overwritten); delete",
            _damaged(_trained, _truncate, 20), "checkpoint", stand_in=True),
    Refusal("ckpt-file-deleted-eval", EVAL, "is missing; delete", _damaged(_trained, _file_deleted, 20),
            "checkpoint", stand_in=True),
    Refusal("ckpt-checksums-garbled-eval", EVAL, f"its checksum file {CHECKSUMS} is unreadable",
            _damaged(_trained, _checksums_garbled, 20), "checkpoint", stand_in=True),
    Refusal("ckpt-legacy-decodes-to-nan-eval", EVAL, "agent.w holds non-finite values, which training never saves",
            _legacy_nan, "checkpoint", stand_in=True),
    # checkpoints: a killed run resumed from its only checkpoint (10)
    Refusal("ckpt-flipped-byte-resume", RESUME, "checkpoint 10 in {tmp}/run/checkpoints is corrupt: ",
            _damaged(_killed, _flip, 10), "checkpoint", stand_in=True),
    Refusal("ckpt-truncated-resume", RESUME, ONLY, _damaged(_killed, _truncate, 10), "checkpoint", stand_in=True),
    # datasets: values, bytes, sizes; the training run is refused before it compiles anything
    Refusal("data-nan-observations", TRAIN_DATA,
            "cube-single-play-v0.npz: observations holds 12 NaN values (first at row 3); regenerate it with "
            "`sorl data generate cube-single-play --force --data-dir",
            _edited(0, "observations", _nan_block), "dataset"),
    Refusal("data-inf-actions-val", TRAIN_DATA,
            "cube-single-play-v0-val.npz: actions holds 1 infinite value (first at row 7)",
            _edited(1, "actions", _inf_one), "dataset"),
    Refusal("data-nan-qpos-rewards", TRAIN_DATA, "qpos holds 1 NaN value (first at row 0)",
            _edited(0, "qpos", _nan_one), "dataset"),
    Refusal("data-bytes-changed", TRAIN_DATA, "changed since the manifest recorded it (sha256 differs)",
            _bytes_changed, "dataset"),
    Refusal("data-truncated", TRAIN_DATA, "the manifest recorded", _dataset_truncated, "dataset"),
    Refusal("data-verify-nan", ["data", "verify", DATA_TASK, "--data-dir", "{tmp}/data"], "failed verification",
            _edited(0, "observations", _nan_block), "dataset"),
    # generation estimated at more than an hour
    Refusal("generate-too-long", ["data", "generate", DATA_TASK, "--train-episodes", "5000", "--workers", "2",
                                  "--data-dir", "{tmp}/data"], "h on this machine", None, "generation"),
    Refusal("generate-visual-too-long", ["data", "generate", "visual-cube-single-play", "--workers", "8",
                                         "--data-dir", "{tmp}/data"], "every frame rendered", None, "generation"),
    Refusal("train-would-generate-too-long", [*TRAIN_DATA, "--train-episodes", "100000000"],
            "--train-episodes 100000000 --long --data-dir", _empty_data, "generation"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(request, tmp_path, capsys, monkeypatch, case: Refusal):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "default-data"))
    if "{tmp}" in case.expect:
        case = Refusal(**{**case.__dict__, "expect": case.expect.replace("{tmp}", str(tmp_path))})
    run_case(request, tmp_path, capsys, case)


# ------------------------------------------------------------------------------------ what still loads


def test_good_run_loads_and_a_damaged_step_falls_back_as_the_line_says(tmp_path, stand_in, capsys):
    """A good run evaluates; with its latest checkpoint damaged, deleting that step as the error says gives eval
    the earlier checkpoint and a resume that reproduces the undamaged run bit for bit."""
    _trained(tmp_path)
    ckdir = tmp_path / "run" / "checkpoints"
    for step in (10, 20):
        record = json.loads((ckdir / str(step) / CHECKSUMS).read_text())["files"]
        files = {p.relative_to(ckdir / str(step)).as_posix() for p in (ckdir / str(step)).rglob("*") if p.is_file()}
        assert set(record) == files - {CHECKSUMS}
        assert checkpoint.checksum_problem(ckdir / str(step)) is None
    good, step = train_lib.load_run(tmp_path / "run")
    assert step == 20
    argv = [a.replace("{tmp}", str(tmp_path)) for a in EVAL]
    cli.main(argv)
    assert "(step 20)" in capsys.readouterr().out
    _flip(ckdir / "20")
    with pytest.raises(SorlError, match=f"delete {ckdir / '20'} to fall back to checkpoint 10") as e:
        train_lib.load_run(tmp_path / "run")
    assert f"delete {tmp_path / 'run' / 'results.json'} too and the same `sorl train` command" in str(e.value)
    shutil.rmtree(ckdir / "20")
    cli.main(argv)
    assert "(step 10)" in capsys.readouterr().out
    (tmp_path / "run" / "results.json").unlink()  # as a run killed after checkpoint 10
    _train(tmp_path, "run", **RUN_SETTINGS)
    again, step = train_lib.load_run(tmp_path / "run")
    assert step == 20
    np.testing.assert_array_equal(again.w, good.w)
    np.testing.assert_array_equal(jax.random.key_data(again.rng), jax.random.key_data(good.rng))


def test_checkpoint_from_before_checksums_still_loads(tmp_path, stand_in, capsys):
    _trained(tmp_path)
    good, _ = train_lib.load_run(tmp_path / "run")
    for record in (tmp_path / "run" / "checkpoints").glob(f"*/{CHECKSUMS}"):
        record.unlink()
    old, step = train_lib.load_run(tmp_path / "run")
    assert step == 20
    np.testing.assert_array_equal(old.w, good.w)
    cli.main([a.replace("{tmp}", str(tmp_path)) for a in EVAL])
    out, err = capsys.readouterr()
    assert "(step 20)" in out and "error" not in err and "note" not in out + err


def test_good_dataset_is_checked_once_then_by_its_stamp(tmp_path, monkeypatch):
    """A generated dataset is stamped when written; a hand-placed one is hashed and scanned on first use, then
    stamped. Later loads only stat the files (here: hashing or scanning would fail the test)."""
    d = _copy_data(tmp_path)
    train, val = datasets.dataset_paths(DATA_TASK, d)
    entries = manifest.entries(d)
    assert entries[train.name]["verified"] == manifest.stamp(train)
    assert entries[val.name]["verified"] == manifest.stamp(val)
    monkeypatch.setattr(datasets, "_TRUSTED", set())
    calls = []
    real_sha, real_scan = manifest.sha256_file, datasets.checks.non_finite
    monkeypatch.setattr(manifest, "sha256_file", lambda p: calls.append(("sha", p.name)) or real_sha(p))
    monkeypatch.setattr(datasets.checks, "non_finite", lambda p: calls.append(("scan", p.name)) or real_scan(p))
    before = snapshot(tmp_path)
    assert datasets.ensure_dataset(DATA_TASK, d, generate=False) == (train, val)
    assert calls == [] and snapshot(tmp_path) == before
    # published files (no manifest entries): hashed and scanned once, recorded with their stamps
    (d / manifest.MANIFEST_NAME).unlink()
    monkeypatch.setattr(datasets, "_TRUSTED", set())  # as a new process
    datasets.ensure_dataset(DATA_TASK, d, generate=False)
    assert sorted(calls) == sorted([("scan", train.name), ("scan", val.name), ("sha", train.name), ("sha", val.name)])
    entries = manifest.entries(d)
    assert entries[train.name]["provenance"] == "published"
    assert entries[train.name]["verified"] == manifest.stamp(train)
    calls.clear()
    monkeypatch.setattr(datasets, "_TRUSTED", set())  # as a new process
    datasets.ensure_dataset(DATA_TASK, d, generate=False)
    assert calls == []
    # the file changes (new mtime, same bytes): hashed and scanned again, then stamped anew
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))
    datasets.ensure_dataset(DATA_TASK, d, generate=False)
    assert sorted(calls) == [("scan", train.name), ("sha", train.name)]
    assert manifest.entries(d)[train.name]["verified"] == manifest.stamp(train)


def test_long_generation_starts_with_long(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "LONG_GENERATION_S", 0.0)  # every generation counts as long
    kw = dict(episodes=1, workers=1, max_episode_steps=10, data_dir=tmp_path / "data", progress=False)
    with pytest.raises(SorlError, match="not started. Add --long"):
        datasets.cli_generate(["pointmaze-medium-navigate"], **kw)
    with pytest.raises(SorlError, match="--train-episodes 1 --max-episode-steps 10 --long --data-dir"):
        datasets.ensure_dataset("pointmaze-medium-navigate", tmp_path / "data", episodes=1, max_episode_steps=10)
    assert not (tmp_path / "data").exists()
    datasets.cli_generate(["pointmaze-medium-navigate"], long=True, **kw)
    train, val = datasets.dataset_paths("pointmaze-medium-navigate", tmp_path / "data")
    spec = resolve_env("pointmaze-medium-navigate")
    entries = manifest.entries(tmp_path / "data")
    for path, split in ((train, "train"), (val, "val")):
        assert datasets.verify_file(spec, path, split, entries[path.name]) == (datasets.OK, "generated")
