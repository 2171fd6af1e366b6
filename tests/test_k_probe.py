"""The K probe (`sorl k-probe`): every K starts from the same noise, the distances and Q gaps on known cases, the
run-level record and its table, and the agents it refuses."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import get_agent
from experiments import k_probe
from runner import runs
from sorl.errors import SorlError

OBS, ACT, B = 3, 2, 64
TINY = dict(actor_layer_size=16, actor_num_layers=2, value_layer_size=16, value_num_layers=2, batch_size=8)


def tiny_agent(name: str, seed: int = 0, **changes):
    cls = get_agent(name)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    config = dataclasses.replace(cls.Config(), **{k: v for k, v in {**TINY, **changes}.items() if k in names})
    return cls.create(seed, jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)


def zero_velocity(agent):
    """The same agent with an all-zero actor: every Euler step adds 0, so any K returns the clipped noise."""
    actor = jax.tree_util.tree_map(jnp.zeros_like, agent.params["actor"])
    return agent.replace(params={**agent.params, "actor": actor})


OBSERVATIONS = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (B, OBS)))


def test_a_zero_velocity_policy_gives_the_clipped_noise_at_every_K():
    agent = zero_velocity(tiny_agent("sorl", denoise_timesteps=4, max_k_backprop=4))
    noise = np.asarray(jnp.clip(jax.random.normal(jax.random.PRNGKey(5), (B, ACT)), -1, 1))
    data = np.asarray(jax.random.uniform(jax.random.PRNGKey(6), (B, ACT), minval=-1, maxval=1))
    records = k_probe.probe_agent(agent, OBSERVATIONS, data, seed=5)
    assert [r["K"] for r in records] == [1, 2, 4]
    for r in records:
        # one noise for all K: the samplers agree exactly, and each is that noise's distance from the data
        assert r["to_finest"] == 0.0
        assert r["mse"] == pytest.approx(float(np.mean((noise - data) ** 2)), rel=1e-6)
    # the dataset actions equal to the policy's: no distance, and the critic sees no gain at any K
    for r in k_probe.probe_agent(agent, OBSERVATIONS, noise, seed=5):
        assert r["mse"] == pytest.approx(0.0, abs=1e-12)
        assert r["q"] == pytest.approx(r["q_data"], abs=1e-6)


def test_a_random_velocity_field_separates_the_samplers_and_q_reads_each_K():
    agent = tiny_agent("sorl", denoise_timesteps=4, max_k_backprop=4)
    data = np.asarray(jax.random.uniform(jax.random.PRNGKey(6), (B, ACT), minval=-1, maxval=1))
    records = k_probe.probe_agent(agent, OBSERVATIONS, data, seed=0)
    assert [r["K"] for r in records] == [1, 2, 4]
    assert records[-1]["to_finest"] == 0.0 and records[0]["to_finest"] > 0.0  # a random field is not consistent
    a1 = np.asarray(agent.sample_actions(jnp.asarray(OBSERVATIONS), jax.random.PRNGKey(0), K=1))
    assert records[0]["mse"] == pytest.approx(float(np.mean((a1 - data) ** 2)), rel=1e-5)
    q1 = float(jnp.mean(agent.aggregated_q(jnp.asarray(OBSERVATIONS), jnp.asarray(a1), 1.0)))
    assert records[0]["q"] == pytest.approx(q1, rel=1e-5)


def test_an_agent_without_a_critic_has_no_q_columns():
    records = k_probe.probe_agent(tiny_agent("flow-bc", denoise_timesteps=2), OBSERVATIONS, np.zeros((B, ACT)))
    assert [r["K"] for r in records] == [1, 2]
    assert all(r["q"] is None and r["q_data"] is None for r in records)


def _record(seed: int, mse1: float, q1: float | None) -> dict:
    ks = [
        {"K": 1, "mse": mse1, "to_finest": 0.5, "q": q1, "q_data": None if q1 is None else q1 - 2.0},
        {"K": 2, "mse": 0.1, "to_finest": 0.0, "q": q1, "q_data": q1},
    ]
    return {"task": "t", "agent": "sorl", "seed": seed, "step": 100, "states": 8, "probe_seed": 0, "K": ks}


def test_the_table_is_mean_and_std_over_seeds(tmp_path):
    for seed, mse1 in ((1, 0.2), (2, 0.4)):
        (tmp_path / f"seed{seed}").mkdir()
        k_probe.write_k_probe(tmp_path / f"seed{seed}", _record(seed, mse1, q1=-10.0 * seed))
    table = k_probe.format_k_probe([tmp_path])
    row = next(line for line in table.splitlines() if line.startswith("| t | sorl | 100 | 2 | 1 |"))
    # mse (0.2, 0.4): 0.300 ± 0.141; Q (-10, -20): -15.0 ± 7.1; the gain is 2 on both seeds
    assert "| 0.300 ± 0.141 | 0.500 ± 0.000 | -15.0 ± 7.1 | -17.0 ± 7.1 | 2.0 ± 0.0 |" in row
    with pytest.raises(SorlError, match="no k_probe.json"):
        k_probe.format_k_probe([tmp_path / "elsewhere"])


def test_probe_of_a_tiny_run_and_the_one_step_agents_refused(tiny_sorl_run, monkeypatch):
    run, data_dir, task = tiny_sorl_run
    record = k_probe.k_probe(run, states=32, data_dir=data_dir)
    assert (record["agent"], record["seed"], record["step"], record["states"]) == ("sorl", 1, 20, 32)
    assert [r["K"] for r in record["K"]] == [1, 2] and record["K"][-1]["to_finest"] == 0.0
    assert all(r["q"] is not None and 0 <= r["mse"] <= 4 for r in record["K"])  # actions live in [-1, 1]
    path = k_probe.write_k_probe(run, record)
    assert json.loads(path.read_text())["K"][0]["K"] == 1
    assert f"| {task} | sorl | 20 | 1 | 2 |" in k_probe.format_k_probe([run])

    # a one-step agent: K changes nothing, so it is refused in one line and nothing is written
    one_step = tiny_agent("rebrac")
    monkeypatch.setattr(k_probe, "load_run", lambda r: (one_step, 20))
    monkeypatch.setattr(runs, "agent_name", lambda cfg: "rebrac")
    path.unlink()
    with pytest.raises(SorlError, match="samples its action in one step"):
        k_probe.k_probe(run, states=32, data_dir=data_dir)
    assert not path.exists()
