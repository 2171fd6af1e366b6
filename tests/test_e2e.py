"""End to end on a tiny generated cube-single dataset: `sorl train`, checkpoint, evaluate a (K, N) grid."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cli import main as cli
from envs.datasets import ensure_dataset
from runner import train
from runner.checkpoint import Checkpointer
from sorl.errors import SorlError

TASK = "cube-single-play-singletask-task1-v0"
TINY = [
    "--agent.actor_layer_size=16",
    "--agent.actor_num_layers=2",
    "--agent.value_layer_size=16",
    "--agent.value_num_layers=2",
    "--agent.batch_size=16",
    "--agent.denoise_timesteps=2",
    "--agent.max_k_backprop=2",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ensure_dataset(TASK, d, episodes=2, workers=1, max_episode_steps=50, progress=False)
    return d


def test_train_checkpoint_evaluate(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cli.main(
        [
            "train",
            "--task",
            "cube-single-play-task1",
            "--agent",
            "sorl",
            "--steps",
            "200",
            "--seed",
            "3",
            "--run-dir",
            str(run_dir),
            "--data-dir",
            str(data_dir),
            "--log-interval",
            "50",
            "--eval-interval",
            "100",
            "--eval-episodes",
            "2",
            "--eval-K",
            "1,2",
            "--eval-N",
            "1,2",
            "--eval-workers",
            "2",
            "--eval-max-episode-steps",
            "15",
            "--progress",
            "False",
            *TINY,
        ]
    )
    out = capsys.readouterr().out
    assert "success %" in out

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["task"] == TASK and cfg["agent"] == "sorl" and cfg["seed"] == 3
    assert cfg["agent_config"]["actor_layer_size"] == 16 and cfg["agent_config"]["q_loss_coef"] == 10  # env setting
    assert cfg["env_settings"]["q_loss_coef"] == 10
    assert cfg["success_timing"] == "pre" and cfg["ogbench_version"] == train.ogbench_version()

    with (run_dir / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [50, 100, 150, 200]
    for r in rows:
        assert all(np.isfinite(float(v)) for k, v in r.items() if v != "")
        assert float(r["updates_per_s"]) > 0
    with (run_dir / "eval.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 4

    assert Checkpointer(run_dir / "checkpoints").all_steps() == [100, 200]

    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["steps"] == 200 and res["seed"] == 3
    assert res["task"] == TASK and res["agent"] == "sorl" and res["success_timing"] == "pre"
    assert res["ogbench_version"] and res["config"] == cfg["agent_config"] and res["success_unit"] == "fraction"
    assert [(r["K"], r["N"]) for r in res["final"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in res["final"]:
        assert set(r) == {"K", "N", "success", "return", "length", "episodes"}
        assert 0.0 <= r["success"] <= 1.0
        assert r["episodes"] == 2 and 1 <= r["length"] <= 15
        assert -15 <= r["return"] <= 0  # cube-single rewards are -1 (not done) or 0 per step

    # evaluate the last checkpoint over a grid, as `sorl eval` does
    grid = cli.eval_from_cli(cli.EvalArgs(run_dir, K=(1, 2), N=(1, 2), episodes=2, workers=1, seed=5))
    out = capsys.readouterr().out
    assert "N=1" in out and "N=2" in out
    scaling = json.loads((run_dir / "scaling.json").read_text())
    assert scaling["step"] == 200 and scaling["max_episode_steps"] == 15  # the run's own evaluation limit
    assert scaling["grid"] == json.loads(json.dumps(grid)) and len(grid) == 4
    with (run_dir / "scaling.csv").open() as f:
        assert [(int(r["K"]), int(r["N"])) for r in csv.DictReader(f)] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # reproducible: the same seed gives the same numbers
    again = cli.eval_from_cli(cli.EvalArgs(run_dir, K=(1, 2), N=(1, 2), episodes=2, workers=1, seed=5))
    assert [(g["success"], g["return"]) for g in again] == [(g["success"], g["return"]) for g in grid]

    with pytest.raises(SorlError, match="above the largest"):
        cli.eval_from_cli(cli.EvalArgs(run_dir, K=(4,), N=(1,), episodes=1, workers=1))
