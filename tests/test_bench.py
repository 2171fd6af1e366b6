"""`sorl bench` runs end to end (a tiny size, so in seconds) and reports every figure it promises."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cli import main as cli
from experiments import bench
from sorl.errors import SorlError


@pytest.fixture
def tiny(monkeypatch):
    size = dataclasses.replace(
        bench.SIZES["small"],
        layers=1,
        width=16,
        batch=16,
        transitions=500,
        chunk=2,
        reps=1,
        Ks=(1,),
        Ns=(1, 2),
        latency_reps=2,
        seeds=(2,),
        seed_chunk=2,
    )
    monkeypatch.setitem(bench.SIZES, "small", size)
    return size


def test_bench_command_reports_training_inference_and_seeds(tiny, capsys):
    cli.main(
        [
            "bench",
            "--size",
            "small",
            "--json",
            "--sections",
            "training,inference,seeds",
            "--agent.denoise_timesteps=2",
            "--agent.max_k_backprop=2",
            "--agent.actor_layer_size=24",
        ]
    )
    r = json.loads(capsys.readouterr().out)
    assert r["agent"] == "sorl"
    assert r["agent_overrides"] == {"denoise_timesteps": "2", "max_k_backprop": "2", "actor_layer_size": "24"}
    assert r["machine"]["cores"] >= 1

    t = r["training"]
    # The label is the networks that were trained, overrides included, not the size's defaults.
    assert t["networks"] == "actor 1x24, value 1x16"
    assert t["updates_per_s"] > 0 and t["compile_s"] > 0 and t["peak_gflops"] > 0
    # FLOPs per K from the fixed-K updates, averaged over the uniform K distribution; more K, more work.
    per_K = {int(K): v["flops"] for K, v in t["per_K"].items()}
    assert sorted(per_K) == [1, 2] and 0 < per_K[1] < per_K[2]
    assert t["flops_per_update"] == pytest.approx((per_K[1] + per_K[2]) / 2)
    assert t["achieved_gflops"] == pytest.approx(t["flops_per_update"] * t["updates_per_s"] / 1e9)
    assert t["fraction_of_peak"] == pytest.approx(t["achieved_gflops"] / t["peak_gflops"])

    cells = {(c["batch"], c["K"], c["N"]) for c in r["inference"]["grid"]}
    assert cells == {(b, 1, N) for b in (1, 50) for N in (1, 2)}
    assert all(c["latency_ms"] > 0 for c in r["inference"]["grid"])

    (row,) = r["seeds"]["rows"]
    assert row["seeds"] == 2 and row["total_updates_per_s"] > 0
    # Against one seed's single-seed program (timed alternately): the seeds run one after another.
    assert row["speedup_vs_sequential"] == pytest.approx(row["total_updates_per_s"] / row["sequential_updates_per_s"])
    assert r["seeds"]["loop"]["seeds"] == 2 and r["seeds"]["loop"]["total_updates_per_s"] > 0

    text = bench.format_report(r)
    for word in ("updates_per_s", "flops_per_update", "fraction_of_peak", "batch 50", "2 seeds"):
        assert word in text


def test_bench_trains_a_pixel_task_on_compact_frames(tiny, capsys):
    cli.main(
        ["bench", "--size", "small", "--json", "--sections", "training", "--task", "visual-cube-single-play",
         "--agent.encoder=impala_debug", "--agent.denoise_timesteps=2", "--agent.max_k_backprop=2"]
    )  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    t = r["training"]
    assert (t["encoder"], t["frame_stack"], t["p_aug"]) == ("impala_debug", 3, 0.5)
    assert t["updates_per_s"] > 0
    e = t["encoder_alone"]  # the encoder alone: forward, forward + backward, that in a scan, its first convolution
    assert e["encoder"] == "impala_debug" and e["first_conv_shape"] == [t["batch_size"], 64, 64, 9]
    assert all(e[k]["s"] > 0 and e[k]["flops"] > 0 for k in ("forward", "forward_backward", "first_conv"))
    assert e["forward_backward_in_scan"]["flops"] == e["forward_backward"]["flops"] > 2 * e["forward"]["flops"]
    assert "encoder forward_backward_in_scan" in bench.format_report(r)
    # the training layout: every frame once (50 transitions in one episode of 51 frames), not twice
    data = bench.synthetic_pixel_dataset(50)
    assert len(data["observations"]) == 51 and len(data["frame_rows"]) == 50 and "next_observations" not in data


def _bench_changes_script():
    """scripts/bench_changes.py as a module (scripts/ is no package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_changes.py"
    spec = importlib.util.spec_from_file_location("bench_changes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_changes_is_a_script_not_a_bench_option(capsys):
    """`python scripts/bench_changes.py` (timings of past speed changes, a development tool: running it takes minutes,
    so the suite checks its refusal only); `sorl bench` itself has no --changes."""
    script = _bench_changes_script()
    with pytest.raises(SystemExit):
        script.main(["--size", "small", "--task", "visual-cube-single-play"])
    assert "--task" in capsys.readouterr().err
    assert not hasattr(bench.BenchArgs(), "changes")


def test_bench_rejects_unknown_sections_and_agents():
    with pytest.raises(SorlError, match="--sections"):
        bench.run_bench(bench.BenchArgs(size="small", sections="training,speed"))
    with pytest.raises(SorlError, match="unknown agent"):
        bench.run_bench(bench.BenchArgs(agent="nope", size="small"))


def test_raw_physics_rate_steps_the_real_environment():
    assert bench.raw_physics_rate(bench.TASK, steps=20) > 0


def test_memory_probe_loads_ogbench_files_the_way_training_does(tmp_path):
    # The files load through the training run's own path (ogbench's loader via envs.datasets.load_task).
    bench.write_synthetic_ogbench_files(tmp_path, 3000)
    from envs.datasets import load_task

    env, train, val = load_task(bench.TASK, tmp_path, generate=False, progress=False)
    env.close()
    assert len(train["observations"]) == 3000 and len(val["observations"]) == 1000  # a tenth, at least one episode
    assert train["observations"].shape[1] == bench.OBS_DIM and train["actions"].shape[1] == bench.ACTION_DIM

    r = bench.bench_memory("sorl", "small", {"batch_size": "16"})
    transitions = bench.SIZES["small"].memory_transitions
    assert r["transitions"] == transitions
    # observations, next_observations, actions, rewards and masks in float32
    assert r["dataset_bytes"] == transitions * (2 * bench.OBS_DIM + bench.ACTION_DIM + 2) * 4
    # The process held the dataset at its peak, on top of what JAX itself needs.
    assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] + r["dataset_bytes"]
    assert r["within_limit"] == (r["peak_rss_bytes"] <= 1.5 * r["dataset_bytes"] + 1.5 * bench.GiB)


def test_inference_includes_the_agents_own_policy_cell(tiny, capsys):
    """IFQL has no max_K; its latency is measured along the size's K grid and at its own policy, (10, 32) (it was
    K = 1 only before), marked as such; a one-step agent (its GRID_NOTES name K) only at K = 1."""
    cli.main(["bench", "--agent", "ifql", "--size", "small", "--json", "--sections", "inference"])
    r = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    grid = r["inference"]["grid"]
    assert {(c["batch"], c["K"], c["N"]) for c in grid} == {(b, K, N) for b in (1, 50) for K, N in
                                                            ((1, 1), (1, 2), (10, 32))}  # fmt: skip
    assert {(c["K"], c["N"]) for c in grid if c["policy"]} == {(10, 32)} and r["inference"]["policy_cell"] == [10, 32]
    assert "K=10,N=32*" in bench.format_report(r)
    from agents import get_agent

    assert bench.inference_cells(get_agent("fql"), tiny) == [(1, 1), (1, 2)]


def test_bench_json_is_strict_json_from_the_one_jsonable():
    """The bench's JSON goes through `runner.runs.jsonable` (one helper for results.json and the bench): numpy
    scalars as numbers, NaN as null, anything else as its text."""
    import numpy as np

    from runner.runs import jsonable

    out = json.dumps(jsonable({"a": np.float32(1.5), "b": float("nan"), (1, 2): (np.int64(3),)}), default=str)
    assert json.loads(out) == {"a": 1.5, "b": None, "(1, 2)": [3]}
    assert not hasattr(bench, "_jsonable")


FAKE_IFQL = """
import flax, jax, jax.numpy as jnp

class IFQLAgent(flax.struct.PyTreeNode):
    w: jax.Array
    config: dict = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, seed, observations, actions, config):
        assert tuple(config["actor_hidden_dims"]) == (16,) and config["batch_size"] == 16, dict(config)
        return cls(jnp.zeros((observations.shape[-1], actions.shape[-1])), dict(config))

    @jax.jit
    def update(self, batch):
        grad = batch["observations"].T @ (batch["observations"] @ self.w - batch["actions"])
        return self.replace(w=self.w - 1e-3 * grad), {"loss": jnp.mean(grad**2)}

def get_config():
    return {"actor_hidden_dims": (512,) * 4, "value_hidden_dims": (512,) * 4, "batch_size": 256}
"""
FAKE_DATASETS = """
import numpy as np

class Dataset(dict):
    @classmethod
    def create(cls, **arrays):
        assert "terminals" in arrays
        return cls(arrays)

    def sample(self, n):
        idx = np.random.randint(len(self["observations"]), size=n)
        return {k: v[idx] for k, v in self.items()}
"""


def test_bench_times_the_agent_against_its_reference_code(tiny, tmp_path, capsys):
    """`--reference CHECKOUT`: the reference's loop runs in its own process (here a stand-in checkout laid out as
    FQL's, run with this Python), alternately with our training chunk; both rates and their ratio are reported."""
    import sys

    (tmp_path / "agents").mkdir()
    (tmp_path / "utils").mkdir()
    (tmp_path / "agents" / "ifql.py").write_text(FAKE_IFQL)
    (tmp_path / "utils" / "datasets.py").write_text(FAKE_DATASETS)
    cli.main(["bench", "--agent", "ifql", "--size", "small", "--json", "--reference", str(tmp_path),
              "--reference-python", sys.executable, "--sections", "reference", "--reference-updates", "2",
              "--reference-reps", "2"])  # fmt: skip
    ref = json.loads(capsys.readouterr().out)["reference"]
    assert ref["ours_updates_per_s"] > 0 and ref["reference_updates_per_s"] > 0
    assert ref["speedup"] == pytest.approx(ref["ours_updates_per_s"] / ref["reference_updates_per_s"])
    assert (ref["window_updates"], ref["windows"], ref["batch_size"]) == (2, 2, 16)
    assert len(ref["ours_updates_per_s_all"]) == len(ref["reference_updates_per_s_all"]) == 2
    assert ref["reference_jax"] == ref["our_jax"] and ref["commit"].startswith("unknown")
    assert "ours / reference" in bench.format_report({**_report_stub(), "reference": ref})

    # bad input is one line before anything is measured
    with pytest.raises(SorlError, match="no reference implementation of sorl is known"):
        bench.run_bench(bench.BenchArgs(agent="sorl", reference=tmp_path))
    with pytest.raises(SorlError, match=r"no Python at .*\.venv/bin/python.*pip install jax=="):
        bench.run_bench(bench.BenchArgs(agent="ifql", reference=tmp_path))
    with pytest.raises(SorlError, match="no agents/ifql.py there"):
        bench.run_bench(bench.BenchArgs(agent="ifql", reference=tmp_path / "agents"))


def _report_stub() -> dict:
    machine = {"cpu": "cpu", "cores": 1, "backend": "cpu", "device": "cpu", "jax_version": "x", "loadavg_at_start": 0}
    return {"machine": machine, "agent": "ifql", "size": "small", "agent_overrides": {}, "bench_s": 1.0}
