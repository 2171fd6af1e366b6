"""Gaussian BC (`bc`, the published BC column): it learns a unimodal behaviour policy's mean, says which (K, N)
cells cannot change its action, and the old meaning of the name `bc` (flow BC) still loads unambiguously."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_baselines_learning import trained

from agents import get_agent
from agents.flow_bc import FlowBCAgent
from experiments.aggregate import load_record
from runner import runs
from runner.checkpoint import Checkpointer
from runner.evaluation import grid_note
from runner.train import initial_state, load_run
from sorl.config import config_to_dict
from sorl.errors import SorlError

OBS, ACT, SIZE = 3, 2, 4096
W = np.array([[0.8, -0.5], [0.3, 0.7], [-0.6, 0.2]])


def behaviour_mean(observations: np.ndarray) -> np.ndarray:
    """The behaviour policy's (state-dependent) mean action, inside (-1, 1)."""
    return 0.8 * np.tanh(np.asarray(observations) @ W)


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(SIZE, OBS))
    actions = np.clip(behaviour_mean(observations) + 0.1 * rng.normal(size=(SIZE, ACT)), -1 + 1e-5, 1 - 1e-5)
    return {
        "observations": jnp.asarray(observations, jnp.float32),
        "actions": jnp.asarray(actions, jnp.float32),
        "rewards": jnp.zeros(SIZE, jnp.float32),
        "masks": jnp.zeros(SIZE, jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(SIZE, OBS)), jnp.float32),
    }


def test_bc_mean_lands_on_the_behaviour_action(dataset):
    observations = jax.random.normal(jax.random.PRNGKey(5), (512, OBS))
    target = behaviour_mean(observations)
    untrained = trained("bc", dataset, 1)
    before = np.abs(np.asarray(untrained.sample_actions(observations, jax.random.PRNGKey(0))) - target).mean()
    agent = trained("bc", dataset, 2000)
    actions = np.asarray(agent.sample_actions(observations, jax.random.PRNGKey(0)))
    error = np.abs(actions - target).mean()
    assert before > 0.3 and error < 0.05, (before, error)  # the mean, not a sample: the data's noise is 0.1


def test_bc_has_only_a_policy_and_ignores_K_and_N_with_one_line(dataset):
    agent = trained("bc", dataset, 1)
    assert set(agent.params) == {"actor"} and agent.target_params == {} and agent.max_K is None
    observations = dataset["observations"][:16]
    mean = agent.sample_actions(observations, jax.random.PRNGKey(0))
    for K, N in [(8, 1), (1, 16), (16, 4)]:
        np.testing.assert_array_equal(agent.sample_actions(observations, jax.random.PRNGKey(K * N), K=K, N=N), mean)
    note = grid_note(agent, "bc", [1, 2, 4, 8], [1, 4])
    assert note.startswith("note: bc ignores K") and "N (" in note and "\n" not in note
    assert grid_note(agent, "bc", [1], [1]) is None  # nothing to say about the one cell that applies
    assert "ignores N" in grid_note(trained("flow-bc", dataset, 1, denoise_timesteps=2), "flow-bc", [1, 2], [1, 4])
    sorl = get_agent("sorl").create(0, dataset["observations"][:1], dataset["actions"][:1], get_agent("sorl").Config())
    assert grid_note(sorl, "sorl", [1, 8], [1, 32]) is None  # SORL uses both axes


# ------------------------------------------------------------------------------------- the old name "bc"


@pytest.fixture
def legacy_flow_bc_run(tmp_path):
    """A run directory as written before Gaussian BC existed: flow BC registered as 'bc'."""
    config = dataclasses.replace(FlowBCAgent.Config(), actor_layer_size=8, actor_num_layers=1, denoise_timesteps=2)
    task = "cube-single-play-singletask-task1-v0"
    run = runs.RunDir(tmp_path / "cube-single-play-task1" / "bc" / "seed0")
    run.path.mkdir(parents=True)
    agent_config = config_to_dict(config)
    run.write_config({"task": task, "agent": "bc", "seed": 0, "agent_config": agent_config, "obs_dim": OBS,
                      "action_dim": ACT})  # fmt: skip
    state = initial_state(FlowBCAgent, config, 0, np.zeros((1, OBS), np.float32), np.zeros((1, ACT), np.float32))
    with Checkpointer(run.checkpoints, writer=True) as ckpt:
        ckpt.save(10, {**state, "step": np.int64(10)})
    run.write_results({"status": "complete", "task": task, "agent": "bc", "seed": 0, "config": agent_config,
                       "final": [{"K": 1, "N": 1, "success": 0.5}]})  # fmt: skip
    return run, task


def test_an_old_bc_run_loads_as_flow_bc(legacy_flow_bc_run, capsys):
    run, task = legacy_flow_bc_run
    agent, step = load_run(run)
    assert isinstance(agent, FlowBCAgent) and step == 10
    assert "loads as 'flow-bc'" in capsys.readouterr().out
    assert runs.agent_name(run.read_config()) == "flow-bc" and load_record(run.path).agent == "flow-bc"
    # Gaussian BC's own runs keep their name.
    gaussian = {"agent": "bc", "agent_config": config_to_dict(get_agent("bc").Config())}
    assert runs.agent_name(gaussian) == "bc"


def test_training_gaussian_bc_into_an_old_bc_run_is_one_clear_line(legacy_flow_bc_run):
    run, task = legacy_flow_bc_run
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    with pytest.raises(SorlError, match="flow-BC run written as agent 'bc'.*--agent flow-bc") as e:
        runs.open_run_dir(run.path, task=task, agent="bc", seed=0)
    assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == before  # nothing lost
    runs.open_run_dir(run.path, task=task, agent="flow-bc", seed=0)  # continuing it as flow-bc is accepted
    assert json.loads(run.config.read_text())["agent"] == "bc"  # and rewrites nothing by itself
