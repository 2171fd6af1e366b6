"""The bad-input catalogue of sweeps, launchers and probes (`sorl sweep`, `sorl verifier`, `sorl k-probe`).

Spec cases are combinations all of whose runs would fail (refused at parse time, dry run or not, naming the spec key
and the task); launcher cases are flags the chosen launcher would ignore; probe cases are checked before anything is
built or compiled. Every case leaves every file under the test's directory byte-identical and creates nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from refusals import Refusal, run_case

from cli import main as cli

GOOD = 'agents = ["sorl"]\ntasks = ["cube-single-play-task1"]\nseeds = [1]\n'
VISUAL = GOOD.replace("cube-single-play-task1", "visual-cube-single-play-task1")


def _spec(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "s.toml").write_text(text)
        (tmp / "notes.md").write_text("a person's notes next to the spec\r\n")

    return setup


def _run(agent: str = "sorl", checkpoint: bool = False, **agent_config) -> Callable[[Path], None]:
    """A run directory as training leaves it (config.json; a complete checkpoint directory when asked)."""

    def setup(tmp: Path) -> None:
        run = tmp / "run"
        run.mkdir()
        cfg = {"task": "cube-single-play-singletask-task1-v0", "agent": agent, "seed": 1, "obs_dim": 3,
               "action_dim": 2, "agent_config": agent_config, "train": {"steps": 10, "frame_stack": 1}}  # fmt: skip
        (run / "config.json").write_text(json.dumps(cfg, indent=2))
        (run / "train.csv").write_text("step,actor/mse\n10,0.5\n")
        if checkpoint:
            step = run / "checkpoints" / "10"
            step.mkdir(parents=True)
            (step / "_CHECKPOINT_METADATA").write_text("{}")
            (step / "commit_success.txt").write_text("ok")

    return setup


SWEEP = ["sweep", "{tmp}/s.toml", "--dry-run", "--no-progress"]
LAUNCH = ["sweep", "{tmp}/s.toml", "--no-progress", "--data-dir", "{tmp}/data"]

CASES: list[Refusal] = [
    # specs whose runs would all fail: refused when the spec is read (dry run included), naming the key and the task
    Refusal("spec-p-aug-on-state-task", SWEEP, "[train] p_aug = 0.5 shifts images, but cube-single-play-singletask",
            _spec(GOOD + "[train]\np_aug = 0.5\n"), "spec"),
    Refusal("spec-online-on-pixel-task", SWEEP, "[train] online_steps = 100: visual-cube-single-play-singletask",
            _spec(VISUAL + "[train]\nonline_steps = 100\n"), "spec"),
    Refusal("spec-online-with-frame-stack", SWEEP, "[train] online_steps = 100 with frame_stack = 3",
            _spec(GOOD + "[train]\nonline_steps = 100\nframe_stack = 3\n"), "spec"),
    Refusal("spec-K-above-agent", SWEEP, "[eval] K = 16 on cube-single-play-singletask-task1-v0: sorl takes K up to 8",
            _spec(GOOD + "[eval]\nK = [1, 16]\n"), "spec"),
    Refusal("spec-K-above-agent-setting", SWEEP, "[eval.sorl] K = 8 on cube-single-play-singletask-task1-v0",
            _spec(GOOD + "[settings]\ndenoise_timesteps = 4\nmax_k_backprop = 4\n[eval.sorl]\nK = [8]\n"), "spec"),
    Refusal("spec-online-K-above-agent", SWEEP, "[train] online_K = 16",
            _spec(GOOD + "[train]\nonline_steps = 100\nonline_K = 16\n"), "spec"),
    # an online-only agent (Agent.OFFLINE False) with offline steps: refused at load, as `sorl train` refuses it
    Refusal("spec-online-agent-offline-steps", SWEEP, "sac is an online agent, it does not train offline",
            _spec(GOOD.replace('"sorl"', '"sac"') + "[train]\nsteps = 1000\n"), "spec"),
    # a launch whose data must be fetched: refused before anything is submitted (the dry run only says so)
    Refusal("launch-data-not-generatable", LAUNCH, "datasets missing and not generatable here: antmaze-large-navigate",
            _spec(GOOD.replace("cube-single-play-task1", "antmaze-large-navigate-task1")), "spec"),
    # launcher flags the chosen launcher would ignore
    Refusal("launcher-slurm-partition-local", [*SWEEP, "--partition", "gpu"],
            "--partition is an option of the slurm launcher; with --launcher local", _spec(GOOD), "launcher"),
    Refusal("launcher-slurm-time-local", [*SWEEP, "--time", "60"], "--time is an option of the slurm launcher",
            _spec(GOOD), "launcher"),
    Refusal("launcher-submitit-cluster-local", [*SWEEP, "--submitit-cluster", "local"],
            "--submitit-cluster is an option of the slurm launcher", _spec(GOOD), "launcher"),
    Refusal("launcher-no-wait-ray", [*SWEEP, "--launcher", "ray", "--no-wait"],
            "--no-wait is an option of the slurm launcher; with --launcher ray", _spec(GOOD), "launcher"),
    Refusal("launcher-ray-address-local", [*SWEEP, "--address", "auto"],
            "--address is an option of the ray launcher; with --launcher local", _spec(GOOD), "launcher"),
    Refusal("launcher-ray-gpus-slurm", [*SWEEP, "--launcher", "slurm", "--gpus-per-run", "1"],
            "--gpus-per-run is an option of the ray launcher", _spec(GOOD), "launcher"),
    Refusal("launcher-slurm-time-zero", [*SWEEP, "--launcher", "slurm", "--time", "0"], "--time=0: must be at least 1",
            _spec(GOOD), "launcher"),
    Refusal("launcher-bad-submitit-cluster", [*SWEEP, "--launcher", "slurm", "--submitit-cluster", "kube"],
            "--submitit-cluster 'kube': use slurm, local or debug", _spec(GOOD), "launcher"),
    Refusal("launcher-max-parallel-zero", [*SWEEP, "--max-parallel", "0"], "--max-parallel=0", _spec(GOOD),
            "launcher"),
    # probes: arguments checked before anything is built or compiled
    Refusal("verifier-no-run-dir", ["verifier", "{tmp}/none"], "no such run directory", None, "probe"),
    Refusal("verifier-K-above-agent", ["verifier", "{tmp}/run", "--K", "16"], "K=16",
            _run(denoise_timesteps=8, checkpoint=True), "probe"),
    Refusal("verifier-no-checkpoint", ["verifier", "{tmp}/run", "--K", "4"], "has no complete checkpoint",
            _run(denoise_timesteps=8), "probe"),
    Refusal("verifier-one-step-agent", ["verifier", "{tmp}/run"], "has no Q verifier", _run("rebrac"), "probe"),
    Refusal("verifier-N-zero", ["verifier", "{tmp}/run", "--N", "0"], "N=0", _run(denoise_timesteps=8), "probe"),
    Refusal("k-probe-no-checkpoint", ["k-probe", "{tmp}/run"], "has no complete checkpoint",
            _run(denoise_timesteps=8), "probe"),
    Refusal("k-probe-one-step-agent", ["k-probe", "{tmp}/run"], "samples its action in one step", _run("iql"),
            "probe"),
    Refusal("k-probe-seed-negative", ["k-probe", "{tmp}/run", "--seed", "-1"], "--seed -1",
            _run(denoise_timesteps=8, checkpoint=True), "probe"),
    Refusal("k-probe-no-held-out-data", ["k-probe", "{tmp}/run", "--data-dir", "{tmp}/data"], "-val.npz is missing",
            _run(denoise_timesteps=8, checkpoint=True), "probe"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(request, tmp_path, capsys, monkeypatch, case: Refusal):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "default-data"))
    run_case(request, tmp_path, capsys, case)


def test_dry_run_says_which_datasets_are_missing_and_whether_they_can_be_generated(tmp_path, capsys):
    """One line per missing environment (not an error: the dry run still prints its runs and exits 0)."""
    spec = GOOD.replace('["cube-single-play-task1"]', '["cube-single-play-task1", "antmaze-large-navigate-task1"]')
    (tmp_path / "s.toml").write_text(spec)
    (tmp_path / "data").mkdir()
    cli.main(["sweep", str(tmp_path / "s.toml"), "--dry-run", "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    data_lines = [line for line in out.splitlines() if line.startswith("data: ")]
    assert len(data_lines) == 2, out
    assert data_lines[0].startswith(f"data: cube-single-play: missing from {tmp_path / 'data'}; can be generated")
    assert data_lines[1].startswith("data: antmaze-large-navigate: missing from")
    assert "cannot be generated here, must be fetched" in data_lines[1]
    assert "$ sorl train --task antmaze-large-navigate-singletask-task1-v0" in out
    assert out.rstrip().endswith("dry run: nothing launched")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "s.toml"]  # nothing created


def test_the_shipped_paper_spec_dry_run_names_every_missing_environment(tmp_path, capsys):
    cli.main(["sweep", "paper-sorl", "--dry-run", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    data_lines = [line for line in out.splitlines() if line.startswith("data: ")]
    envs = [line.split(":")[1].strip() for line in data_lines]
    assert len(envs) == len(set(envs)) == 8  # paper-sorl: 8 environments, none present here
    assert all(("can be generated here" in x) != ("must be fetched" in x) for x in data_lines)
