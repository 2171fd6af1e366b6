"""`sorl train --agent {fql,rebrac,iql,bc,flow-bc}` end to end on a tiny generated cube-single dataset: the same run
directory (config.json, train.csv, eval.csv, checkpoints, results.json) as SORL's, then `sorl eval` on it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_e2e import TASK, data_dir  # noqa: F401 - the tiny generated dataset, shared with SORL's end-to-end test

from cli import main as cli
from runner import train
from runner.checkpoint import Checkpointer

SIZES = ["--agent.actor_layer_size=16", "--agent.actor_num_layers=2", "--agent.batch_size=16"]
CRITIC = ["--agent.value_layer_size=16", "--agent.value_num_layers=2"]
AGENTS = {
    # The other settings are cube-single's from envs/registry.py (rebrac's there: alpha_critic = 0).
    "fql": [*SIZES, *CRITIC, "--agent.flow_steps=3"],
    "rebrac": [*SIZES, *CRITIC],
    "iql": [*SIZES, *CRITIC],
    "bc": SIZES,
    "flow-bc": [*SIZES, "--agent.denoise_timesteps=2"],
}
ENV_SETTING = {
    "fql": ("alpha", 300.0),
    "rebrac": ("alpha_actor", 1.0),
    "iql": ("alpha", 1.0),
    "bc": None,
    "flow-bc": None,
}


# K is ignored by the one-step agents (tests/test_baselines_api.py checks they accept any power of two), so their
# runs evaluate K = 1 only: each (K, N) cell costs a compilation.
EVAL_K = {"fql": "1", "rebrac": "1", "iql": "1", "bc": "1", "flow-bc": "1,2"}


def sorl_train(agent: str, run_dir, data, *extra: str) -> None:
    argv = ["train", "--task", "cube-single-play-task1", "--agent", agent, "--steps", "20", "--seed", "2"]
    argv += ["--run-dir", str(run_dir), "--data-dir", str(data), "--log-interval", "10", "--eval-interval", "20"]
    argv += ["--eval-episodes", "2", "--eval-K", EVAL_K[agent], "--eval-N", "1,2", "--eval-workers", "1"]
    argv += ["--eval-max-episode-steps", "8", "--progress", "False", *extra]
    cli.main(argv)


@pytest.mark.parametrize("agent", list(AGENTS))
def test_train_writes_the_run_directory_and_evaluates(agent, data_dir, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / agent
    sorl_train(agent, run_dir, data_dir, *AGENTS[agent])
    out = capsys.readouterr().out
    assert "success %" in out
    # N = 1,2 is asked of every agent; only the two without a critic say that N cannot change their action.
    assert (f"note: {agent} ignores" in out) == (agent in ("bc", "flow-bc"))

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["task"] == TASK and cfg["agent"] == agent and cfg["seed"] == 2
    assert cfg["ogbench_version"] == train.ogbench_version() and cfg["agent_config"]["actor_layer_size"] == 16
    if ENV_SETTING[agent] is not None:  # the per-environment table reached the config
        key, value = ENV_SETTING[agent]
        assert cfg["env_settings"][key] == value and cfg["agent_config"][key] == value

    with (run_dir / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert all(np.isfinite(float(v)) for r in rows for v in r.values() if v != "")
    assert any(k.startswith("actor/") for k in rows[0])
    assert Checkpointer(run_dir / "checkpoints").all_steps() == [20]

    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["agent"] == agent and res["config"] == cfg["agent_config"]
    Ks = [int(k) for k in EVAL_K[agent].split(",")]
    assert [(r["K"], r["N"]) for r in res["final"]] == [(K, N) for K in Ks for N in (1, 2)]
    assert all(0.0 <= r["success"] <= 1.0 and r["episodes"] == 2 for r in res["final"])

    # The checkpoint loads back into the agent's class and evaluates, as `sorl eval` does.
    grid = cli.eval_from_cli(cli.EvalArgs(run_dir, K=(1,), N=(2,), episodes=1, workers=1, seed=4))
    assert [(g["K"], g["N"]) for g in grid] == [(1, 2)]


def test_rebrac_critic_penalty_end_to_end(data_dir, tmp_path):  # noqa: F811
    run_dir = tmp_path / "rebrac-penalty"
    sorl_train("rebrac", run_dir, data_dir, *AGENTS["rebrac"], "--agent.alpha_critic=0.01")
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["config"]["alpha_critic"] == 0.01
