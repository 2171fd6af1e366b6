"""Experiment-tracking sinks (`--logger wandb|tensorboard`, runner/tracking.py) in their offline/local forms.

Tiny runs of the loop's stand-in agent (tests/test_train_loop.py); the tensorboard event files and wandb's offline
run file are read back here and compared with the run directory's CSV files.
"""

from __future__ import annotations

import csv
import json
import re
import struct
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import tyro
from test_train_loop import TASK, _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below

from cli import main as cli
from runner import tracking
from runner import train as train_lib
from runner.settings import TrainSettings
from sorl.errors import SorlError

pytest.importorskip("tensorboardX")
RTOL = 1e-5  # the CSV files keep 6 significant digits, the event files float32


@pytest.fixture
def stand_in(request):
    """The training loop's stand-ins: the `tiny` agent, a synthetic dataset, TinyEnv."""
    return request.getfixturevalue("_stand_in")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb offline with every file of its own under tmp_path: no network, nothing in the home directory."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path / "wandb-home"
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        (root / var).mkdir(parents=True)
        monkeypatch.setenv(var, str(root / var))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb.teardown()  # wandb reads the environment once per process: start from this test's
    yield root / "WANDB_DIR" / "wandb"
    wandb.teardown()


# ---------------------------------------------------------------------------------------------- readers


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value over every event file (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out[v.tag][event.step] = v.simple_value
    return out


def wandb_flushed() -> None:
    """wandb's service writes a finished run's last records when it stops (at the latest at the process's exit)."""
    import wandb

    wandb.teardown()


def wandb_records(path: Path) -> list:
    """The records of a wandb transaction log (.wandb: a header, then leveldb-log framed Record protos)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block = path.read_bytes(), 7, 32768
    records, pending = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item) -> str:
    return "/".join(item.nested_key) or item.key


def wandb_history(records: list) -> dict[str, dict[int, float]]:
    """metric -> step -> value of a wandb run's logged rows (their `step` is the run's own)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.WhichOneof("record_type") == "history":
            values = {_key(i): json.loads(i.value_json) for i in r.history.item}
            for k, v in values.items():
                out[k][values["step"]] = v
    return out


def assert_close(a: float, b: float) -> None:
    assert a == pytest.approx(b, rel=RTOL, abs=1e-6)


# --------------------------------------------------------------------------------------------- settings


def test_logger_option_parses_and_checks():
    assert tracking.parse_loggers("") == () and tracking.parse_loggers("none") == ()
    assert tracking.parse_loggers("wandb, tensorboard,wandb") == ("wandb", "tensorboard")
    with pytest.raises(SorlError, match="logger='mlflow'"):
        TrainSettings.of(logger="mlflow")
    with pytest.raises(SorlError, match="wandb_mode='cloud'"):
        TrainSettings(wandb_mode="cloud").validate()  # type: ignore[arg-type]
    s = TrainSettings.of(logger="wandb,tensorboard", wandb_mode="offline")
    assert "--logger wandb,tensorboard" in s.command_flags() and "--wandb-mode offline" in s.command_flags()
    assert not any(f.startswith("--logger") for f in TrainSettings().command_flags())
    assert "logger" in TrainSettings.spec_keys("train")
    args = tyro.cli(cli.TrainArgs, args=["--task", "t", "--logger", "wandb", "--wandb-project", "p"])
    assert (args.logger, args.wandb_project, args.wandb_mode) == ("wandb", "p", None)
    assert tracking.Tracking("wandb").wandb_mode in ("offline", "online", "disabled")  # never None


def test_no_logger_starts_nothing(tmp_path, stand_in):
    _train(tmp_path, steps=20, eval_interval=20)
    run = tmp_path / "run"
    assert not (run / "tensorboard").exists() and not (run / "tracking.json").exists() and not (run / "wandb").exists()


# ------------------------------------------------------------------------------------------ tensorboard


def test_tensorboard_scalars_equal_the_run_files(tmp_path, stand_in, capsys):
    _train(tmp_path, logger="tensorboard", validation_interval=20, validation_batches=2)
    run = tmp_path / "run"
    assert "tracking: tensorboard event files in" in capsys.readouterr().out
    tb = tensorboard_scalars(run / "tensorboard")

    train_rows = csv_rows(run / "train.csv")
    assert [int(r["step"]) for r in train_rows] == [10, 20, 30, 40, 50, 60]
    for row in train_rows:
        for col, value in row.items():
            if col != "step":
                assert_close(tb[f"train/{col}"][int(row["step"])], float(value))
    assert {"train/loss", "train/updates_per_s", "train/time_s"} <= set(tb)

    eval_rows = csv_rows(run / "eval.csv")
    assert len(eval_rows) == 2 * 4  # steps 30 and 60, (K, N) in {1, 4} x {1, 2}
    for row in eval_rows:
        cell = f"eval/K{row['K']}_N{row['N']}"
        for metric in ("success", "return", "length"):
            assert_close(tb[f"{cell}/{metric}"][int(row["step"])], float(row[metric]))

    val_rows = csv_rows(run / "validation.csv")
    assert val_rows and all(col.startswith("val/") for col in val_rows[0] if col != "step")
    for row in val_rows:
        for col, value in row.items():
            if col != "step":
                assert_close(tb[col][int(row["step"])], float(value))

    # `sorl eval RUN --logger tensorboard` adds the scaling grid at the checkpoint's step
    cli.eval_from_cli(cli.EvalArgs(run, K=(1, 2), N=(1, 3), episodes=2, workers=1, logger="tensorboard"))
    scaling = json.loads((run / "scaling.json").read_text())
    tb = tensorboard_scalars(run / "tensorboard")
    for cell in scaling["grid"]:
        assert_close(tb[f"scaling/K{cell['K']}_N{cell['N']}/success"][60], cell["success"])
        assert_close(tb[f"scaling/K{cell['K']}_N{cell['N']}/return"][60], cell["return"])
    assert "train/loss" in tb  # appended to, not replaced


def test_tensorboard_resume_continues_in_the_same_directory(tmp_path, stand_in):
    """A continued run writes into RUN/tensorboard again, purging from past its checkpoint."""
    _train(tmp_path, logger="tensorboard", steps=30)
    _train(tmp_path, logger="tensorboard", steps=60)
    run = tmp_path / "run"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tb = tensorboard_scalars(run / "tensorboard")
    for row in csv_rows(run / "train.csv"):
        assert_close(tb["train/loss"][int(row["step"])], float(row["loss"]))
    assert sorted(tb["train/loss"]) == [10, 20, 30, 40, 50, 60]


# ------------------------------------------------------------------------------------------------ wandb


def _offline_dirs(wandb_dir: Path, run_id: str) -> list[Path]:
    """wandb's offline directories for one run id: offline-run-<time>-<id>, with "-1", "-2"... appended when
    a continued run starts within the same second as the previous one."""
    return [p for p in wandb_dir.glob(f"offline-run-*-{run_id}*") if re.search(rf"-{run_id}(-\d+)?$", p.name)]


def test_wandb_offline_run_holds_the_config_and_rows(tmp_path, stand_in, offline_wandb):
    _train(tmp_path, logger="wandb,tensorboard", steps=40, eval_interval=20)
    wandb_flushed()
    run = tmp_path / "run"
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]["id"]
    (run_dir,) = _offline_dirs(offline_wandb, run_id)  # WANDB_DIR wins over the run directory
    (log,) = run_dir.glob(f"run-{run_id}.wandb")
    records = wandb_records(log)

    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (start.run_id, start.project, start.display_name) == (run_id, "sorl", "tiny-cube-single-play-task1-seed1")
    logged = {item.key: json.loads(item.value_json) for item in start.config.update if item.key != "_wandb"}
    assert logged == json.loads((run / "config.json").read_text())

    history = wandb_history(records)
    for row in csv_rows(run / "train.csv"):
        assert_close(history["train/loss"][int(row["step"])], float(row["loss"]))
    for row in csv_rows(run / "eval.csv"):
        assert_close(history[f"eval/K{row['K']}_N{row['N']}/success"][int(row["step"])], float(row["success"]))
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["status"] == "complete" and summary["final_step"] == 40
    assert (run / "tensorboard").is_dir()  # both sinks at once

    # a continued run logs into the same wandb run (a second offline directory with the same id)
    _train(tmp_path, logger="wandb", steps=60, eval_interval=20)
    assert json.loads((run / "tracking.json").read_text())["wandb"]["id"] == run_id
    assert len(_offline_dirs(offline_wandb, run_id)) == 2


def test_wandb_several_seeds_one_run_each(tmp_path, stand_in, offline_wandb):
    train_lib.train_seeds(
        TASK, "tiny", seeds="1,2", run_dir=tmp_path / "runs", steps=20, log_interval=10, eval_interval=20,
        eval_episodes=2, eval_K="1", eval_N="1", eval_workers=1, progress=False, logger="wandb",
    )  # fmt: skip
    wandb_flushed()
    ids = {json.loads((tmp_path / "runs" / f"seed{s}" / "tracking.json").read_text())["wandb"]["id"] for s in (1, 2)}
    assert len(ids) == 2
    for run_id in ids:
        (log,) = offline_wandb.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
        assert sorted(wandb_history(wandb_records(log))["train/loss"]) == [10, 20]


# -------------------------------------------------------------------------------------------- failures


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def _numbers(path: Path) -> list[dict[str, str]]:
    """train.csv without its clock columns."""
    return [{k: v for k, v in r.items() if k not in ("time_s", "updates_per_s")} for r in csv_rows(path)]


def test_missing_package_warns_once_and_the_run_goes_on(tmp_path, stand_in, monkeypatch, capsys):
    train_lib.train_seeds(
        TASK, "tiny", seeds="1,2", run_dir=tmp_path / "plain", steps=20, log_interval=10, eval_interval=20,
        eval_episodes=2, eval_K="1", eval_N="1", eval_workers=1, progress=False,
    )  # fmt: skip
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    results = train_lib.train_seeds(
        TASK, "tiny", seeds="1,2", run_dir=tmp_path / "tracked", steps=20, log_interval=10, eval_interval=20,
        eval_episodes=2, eval_K="1", eval_N="1", eval_workers=1, progress=False, logger="wandb",
    )  # fmt: skip
    err = capsys.readouterr().err
    (line,) = _warnings(err)  # one line for the job, not one per seed
    assert "--logger wandb could not start: wandb is not installed" in line and "files only" in line
    assert [r["status"] for r in results] == ["complete", "complete"]
    for s in (1, 2):
        assert _numbers(tmp_path / "tracked" / f"seed{s}" / "train.csv") == _numbers(
            tmp_path / "plain" / f"seed{s}" / "train.csv"
        )


@pytest.mark.parametrize("where", ["init", "write"])
def test_failing_sink_warns_once_and_the_run_goes_on(tmp_path, stand_in, monkeypatch, capsys, where):
    _train(tmp_path, name="plain")
    capsys.readouterr()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracking.TensorboardSink, "__init__" if where == "init" else "scalars", boom)
    res = _train(tmp_path, name="tracked", logger="tensorboard")
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith("warning: --logger tensorboard") and "OSError: disk full" in line
    assert ("could not start" if where == "init" else "stopped") in line
    assert res["status"] == "complete"
    assert _numbers(tmp_path / "tracked" / "train.csv") == _numbers(tmp_path / "plain" / "train.csv")


def test_wandb_online_start_failure_falls_back_to_offline(tmp_path, offline_wandb, monkeypatch, capsys):
    import wandb

    real_init, modes = wandb.init, []

    def init(*args, mode=None, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.UsageError("No API key configured.")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    jobs = tracking.Tracking("wandb", wandb_mode="online")
    for seed in (1, 2):
        (tmp_path / f"seed{seed}").mkdir()
        sink = jobs.open(tmp_path / f"seed{seed}", {"task": TASK, "agent": "tiny", "seed": seed})
        assert [s.kind for s in sink.sinks] == ["wandb"]
        sink.train_row({"step": 10, "loss": 0.5})
        sink.close()
    assert modes == ["online", "offline", "offline"]  # the second seed goes straight to offline
    (line,) = _warnings(capsys.readouterr().err)
    assert "online start failed (UsageError: No API key configured.); logging offline instead" in line
