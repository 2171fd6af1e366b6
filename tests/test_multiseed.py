"""Several seeds in one process: the vmapped batch takes exactly the steps of the single-seed runs.

- library level: 8 vmapped seeds and 8 single-seed runs (tiny SORL, K in {1, 2, 4}) end with the same
  parameters, optimizer states, data keys and logged infos, and the vmapped program keeps K's switch a
  real switch (one branch per update, not all of them);
- command level: `sorl train --seeds 0-7` writes run directories equal to `sorl train --seed 1` and `--seed 2`
  (config.json, train.csv, eval.csv, checkpoints, results.json; timings aside).

Both levels use the same dataset, agent config and chunk length, so they share the two compiled programs.
"""

from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.sorl import SORLAgent
from cli import main as cli
from envs.datasets import ensure_dataset, load_task
from runner import multiseed
from runner.checkpoint import Checkpointer
from runner.train import compile_chunk, distinct_buffers, initial_state, load_run, resolve_agent_config
from sorl.data import to_device
from sorl.errors import SorlError

TASK = "cube-single-play-singletask-task1-v0"
TINY_ARGS = [
    "--agent.actor_layer_size=16",
    "--agent.actor_num_layers=2",
    "--agent.value_layer_size=16",
    "--agent.value_num_layers=2",
    "--agent.batch_size=16",
    "--agent.denoise_timesteps=4",
    "--agent.max_k_backprop=4",
]
CHUNK = 10  # the chunk length of the command-level runs below, so both tests share the two compilations


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ensure_dataset(TASK, d, episodes=2, workers=1, max_episode_steps=50, progress=False)
    return d


def close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=what)


def test_parse_seeds():
    assert multiseed.parse_seeds("1-8") == tuple(range(1, 9))
    assert multiseed.parse_seeds("1,3,5") == (1, 3, 5)
    assert multiseed.parse_seeds("0-2, 7,1") == (0, 1, 2, 7)
    assert multiseed.parse_seeds([4, 4, 2]) == (4, 2)
    for bad in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(SorlError, match="--seeds"):
            multiseed.parse_seeds(bad)


def test_eight_vmapped_seeds_equal_eight_single_seed_runs(data_dir):
    _, train_data, _ = load_task(TASK, data_dir)
    dataset = to_device(train_data)
    overrides = dict(a[len("--agent.") :].split("=") for a in TINY_ARGS)
    _, config, _ = resolve_agent_config("sorl", "cube-single-play", overrides)
    example = (np.asarray(train_data["observations"][:1]), np.asarray(train_data["actions"][:1]))
    seeds = list(range(8))
    states = [initial_state(SORLAgent, config, s, *example) for s in seeds]
    agents = multiseed.stack_agents([s["agent"] for s in states])
    data_rngs = jnp.stack([s["data_rng"] for s in states])
    assert agents.step.shape == ()  # the step count is shared, not batched
    assert agents.params["actor"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == 8

    # The K schedule is keyed by the step alone, so vmap keeps lax.switch a switch (one branch per update).
    jaxpr = jax.make_jaxpr(lambda a, r: multiseed.train_chunk_seeds(a, r, dataset, batch_size=16, num_updates=1))(
        agents, data_rngs
    )
    assert "cond[" in str(jaxpr)

    infos_multi = []
    agents, data_rngs = distinct_buffers((agents, data_rngs))
    chunk = multiseed.compile_chunk_seeds(agents, data_rngs, dataset, 16, CHUNK)
    for _ in range(2):  # two chunks: the state carries over between compiled calls
        agents, data_rngs, infos = chunk(agents, data_rngs, dataset)
        infos_multi.append(jax.device_get(infos))
    assert int(agents.step) == 2 * CHUNK

    Ks = set()
    for i, s in enumerate(states):
        agent, data_rng = distinct_buffers((s["agent"], s["data_rng"]))
        chunk = compile_chunk(agent, data_rng, dataset, 16, CHUNK)  # compiled once, cached for the other seeds
        for c in range(2):
            agent, data_rng, infos = chunk(agent, data_rng, dataset)
            for k, v in jax.device_get(infos).items():
                close(infos_multi[c][k][i], v, f"seed {seeds[i]}: {k}")
                if k.endswith("/K"):
                    Ks.update(np.asarray(v).tolist())
        mine = multiseed.unstack_agent(agents, i)
        assert jax.tree.structure(mine) == jax.tree.structure(agent)
        jax.tree.map(lambda a, b, i=i: close(a, b, f"seed {seeds[i]}"), mine.params, agent.params)
        jax.tree.map(lambda a, b, i=i: close(a, b, f"seed {seeds[i]}"), mine.target_params, agent.target_params)
        jax.tree.map(lambda a, b, i=i: close(a, b, f"seed {seeds[i]}"), mine.opt_state, agent.opt_state)
        np.testing.assert_array_equal(np.asarray(data_rngs[i]), np.asarray(data_rng))
        np.testing.assert_array_equal(np.asarray(mine.rng), np.asarray(agent.rng))
    assert len(Ks) > 1  # several K were drawn, so the equality covers the switch
    # The seeds differ (only the K schedule is shared).
    kernels = np.asarray(agents.params["actor"]["MLP_0"]["Dense_0"]["kernel"])
    assert not np.allclose(kernels[0], kernels[1])


# ------------------------------------------------------------------------------------ the command

TIMING = {"updates_per_s", "time_s"}


def train_args(data_dir, run_dir, *seed_args):
    return [
        "train",
        "--task",
        TASK,
        *seed_args,
        "--steps",
        "20",
        "--run-dir",
        str(run_dir),
        "--data-dir",
        str(data_dir),
        "--log-interval",
        "10",
        "--eval-interval",
        "20",
        "--eval-episodes",
        "2",
        "--eval-K",
        "1,2",
        "--eval-workers",
        "1",
        "--eval-max-episode-steps",
        "5",
        "--progress",
        "False",
        *TINY_ARGS,
    ]


def rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def assert_same_rows(a, b, skip):
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            if k not in skip:
                np.testing.assert_allclose(float(ra[k]), float(rb[k]), rtol=1e-4, atol=1e-6, err_msg=k)


def test_train_seeds_writes_the_single_seed_run_directories(data_dir, tmp_path):
    with pytest.raises(SystemExit):  # --seed and --seeds together: one clear line
        cli.main(train_args(data_dir, tmp_path / "x", "--seed", "1", "--seeds", "1-2"))

    # vmapped: the 8-seed program of the test above
    cli.main(train_args(data_dir, tmp_path / "multi", "--seeds", "0-7", "--seeds-strategy", "vmap"))
    for seed in (1, 2):
        cli.main(train_args(data_dir, tmp_path / "single" / f"seed{seed}", "--seed", str(seed)))

    for seed in (1, 2):
        multi, single = tmp_path / "multi" / f"seed{seed}", tmp_path / "single" / f"seed{seed}"
        cfg_m, cfg_s = (json.loads((d / "config.json").read_text()) for d in (multi, single))
        assert cfg_m["seed"] == seed
        assert cfg_m == cfg_s

        assert_same_rows(rows(multi / "train.csv"), rows(single / "train.csv"), TIMING)
        assert [int(r["step"]) for r in rows(multi / "train.csv")] == [10, 20]
        assert_same_rows(rows(multi / "eval.csv"), rows(single / "eval.csv"), TIMING)

        res_m, res_s = (json.loads((d / "results.json").read_text()) for d in (multi, single))
        timing = res_m.pop("timing")
        assert timing["seeds_in_batch"] == list(range(8)) and timing["seeds_strategy"] == "vmap"
        res_s.pop("timing")
        assert res_m == res_s and res_m["status"] == "complete"

        with Checkpointer(multi / "checkpoints") as cm, Checkpointer(single / "checkpoints") as cs:
            assert cm.all_steps() == cs.all_steps() == [20]
        (agent_m, step_m), (agent_s, step_s) = load_run(multi), load_run(single)
        assert step_m == step_s == 20 and jax.tree.structure(agent_m) == jax.tree.structure(agent_s)
        jax.tree.map(lambda a, b: close(a, b, "checkpoint"), agent_m, agent_s)

    # A complete batch is not retrained.
    cli.main(train_args(data_dir, tmp_path / "multi", "--seeds", "0-7"))


def test_a_diverging_batch_fails_each_seed_like_a_single_seed_run(data_dir, tmp_path, monkeypatch):
    # The default strategy on the CPU: seeds one after another through the single-seed program.
    monkeypatch.setenv("SORL_TEST_INJECT_NAN_AT_STEP", "15")  # test-only hook: the loss logged at update 15 is NaN
    with pytest.raises(SystemExit):
        cli.main(train_args(data_dir, tmp_path / "multi", "--seeds", "0-7"))
    with pytest.raises(SystemExit):
        cli.main(train_args(data_dir, tmp_path / "single" / "seed1", "--seed", "1"))
    multi, single = tmp_path / "multi" / "seed1", tmp_path / "single" / "seed1"
    res_m, res_s = (json.loads((d / "results.json").read_text()) for d in (multi, single))
    assert res_m["status"] == res_s["status"] == "failed" and res_m["step"] == res_s["step"] == 20
    assert res_m["error"].replace(str(multi), "RUN") == res_s["error"].replace(str(single), "RUN")
    assert_same_rows(rows(multi / "train.csv"), rows(single / "train.csv"), TIMING)
    assert [int(r["step"]) for r in rows(multi / "train.csv")] == [10]
    assert multiseed.resolve_strategy("auto") == ("loop" if jax.default_backend() == "cpu" else "vmap")
