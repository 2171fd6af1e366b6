"""Sweep specs: expansion (environments -> tasks, grid, variants, settings scopes), the shipped specs, bad inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest

from agents import AGENTS
from cli import main as cli
from envs.registry import ENVIRONMENTS
from experiments import launchers
from experiments.spec import SPECS_DIR, load_spec, parse_seeds
from sorl.errors import SorlError

BASE = """
agents = ["sorl", "fql"]
environments = ["cube-single-play"]
tasks = ["scene-play-task2", "cube-single-play-task1"]
seeds = "1-2"
out = "{out}"
[train]
steps = 100
[eval]
K = [1, 2]
episodes = 3
[eval.fql]
K = [1]
"""


def write(tmp_path, text: str, name: str = "spec.toml"):
    path = tmp_path / name
    path.write_text(text.replace("{out}", str(tmp_path / "runs")))
    return path


def test_expansion_grid_variants_and_scopes(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            BASE
            + """
[settings]
batch_size = 64
[settings.sorl]
denoise_timesteps = 4
[settings.cube-single-play]
discount = 0.98
[settings.cube-single-play.sorl]
q_loss_coef = 7
[grid]
alpha = [1.0, 3.0]
[grid.sorl]
max_k_backprop = [1, 4]
""",
        )
    )
    runs = spec.runs()
    # 6 tasks (5 + scene task2; the duplicate cube task1 collapses) x 2 seeds; sorl 2x2 variants, fql 2 (alpha)
    assert len(runs) == 6 * 2 * (4 + 2)
    by_id = {r.id: r for r in runs}
    r = by_id["alpha=1.0,max_k_backprop=4/cube-single-play-task3/sorl/seed2"]
    assert r.overrides == {
        "batch_size": "64",
        "denoise_timesteps": "4",
        "discount": "0.98",
        "q_loss_coef": "7",
        "alpha": "1.0",
        "max_k_backprop": "4",
    }
    assert r.task == "cube-single-play-singletask-task3-v0" and r.seed == 2 and r.env == "cube-single-play"
    assert r.train["eval_K"] == (1, 2) and r.train["eval_episodes"] == 3 and r.train["steps"] == 100
    assert r.run_dir == str(tmp_path / "runs" / r.id) and r.log.endswith("__seed2.log")
    s = by_id["alpha=3.0/scene-play-task2/fql/seed1"]
    assert s.overrides == {"batch_size": "64", "alpha": "3.0"} and s.train["eval_K"] == (1,)
    assert "--agent.alpha=3.0" in s.command() and "--eval-K 1" in s.command()
    # seeds of one (agent, variant, task) group together for --group-seeds
    jobs = launchers.make_jobs(runs, group_seeds=True)
    assert len(jobs) == len(runs) // 2 and all(len(j.runs) == 2 for j in jobs)
    assert jobs[0].id.endswith("/sorl/seeds1,2") and jobs[0].log.endswith("__seeds1,2.log")


def test_named_variants(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            BASE
            + """
[[variants]]
name = "released"
released_update = true
[[variants]]
name = "paper"
""",
        )
    )
    runs = spec.runs()
    assert {r.variant for r in runs if r.agent == "sorl"} == {"released", "paper"}
    assert {r.variant for r in runs if r.agent == "fql"} == {"released", "paper"}  # fql lacks released_update
    (rel,) = [r for r in runs if r.agent == "sorl" and r.variant == "released" and r.id.endswith("task1/sorl/seed1")]
    assert rel.overrides == {"released_update": "True"} and rel.id.startswith("released/")


def test_train_per_agent_tables_go_on_top_of_train(tmp_path):
    # An online-only agent beside an offline-to-online one: [train.sac] is its own pure-online budget.
    text = 'agents = ["sorl", "sac"]\ntasks = ["cube-single-play-task2"]\nseeds = [1]\nout = "{out}"\n'
    text += "[train]\nsteps = 100\nonline_steps = 50\n[train.sac]\nsteps = 0\nbalanced_sampling = true\n"
    runs = {r.agent: r.train for r in load_spec(write(tmp_path, text)).runs()}
    assert (runs["sorl"]["steps"], runs["sorl"]["online_steps"], runs["sorl"]["balanced_sampling"]) == (100, 50, False)
    assert (runs["sac"]["steps"], runs["sac"]["online_steps"], runs["sac"]["balanced_sampling"]) == (0, 50, True)


def test_seeds_parsing():
    assert parse_seeds("1-8") == list(range(1, 9))
    assert parse_seeds("1-3,7, 2") == [1, 2, 3, 7]
    assert parse_seeds([4, 5]) == [4, 5] and parse_seeds(3) == [3]
    for bad in ("8-1", "a", -1, [1.5], True):
        with pytest.raises(SorlError, match="seeds"):
            parse_seeds(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agents = [\n", "not valid TOML"),
        ('agent = ["sorl"]', "unknown top-level key 'agent' (did you mean: agents"),
        ('agents = ["sorll"]\ntasks=["cube-single-play"]', "unknown agent 'sorll' (did you mean: sorl"),
        ('agents = ["sorl"]\nenvironments = ["cube-singel-play"]', "unknown task or environment 'cube-singel-play'"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[settings]\nq_los_coef = 3', "unknown setting 'q_los_coef'"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[settings.fql]\nalpha = 3', "fql is not in the spec"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[settings]\nq_agg = "max"', "q_agg"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[grid]\nalpha = 3', "non-empty list"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[eval]\nK = [3]', "power of two"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[train]\nsteps = 0', "positive integer"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[train]\nstep = 10', "unknown key in [train] 'step'"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[launcher]\nmax_paralel = 2', "max_parallel"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[launcher.slurm]\nqoz = 1', "[launcher.slurm] 'qoz'"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[launcher.slurm]\ntime = 0', "launcher.slurm.time=0"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[eval.sorl]\nk = [1]', "unknown key in [eval.sorl] 'k'"),
        (
            'agents = ["sorl"]\ntasks = ["cube-single-play"]\n[train.sorl]\nstep = 1',
            "unknown key in [train.sorl] 'step'",
        ),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[train.sorll]\nsteps = 1', "[train.sorll]: unknown agent"),
        ('agents = ["sac"]\ntasks = ["cube-single-play"]\n[train.sac]\nsteps = 5', "sac is an online agent"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[settings.cube-single-play]\nfoo = 1', "'foo'"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\n[settings.nowhere]\nfoo = 1', "neither an agent nor"),
        ('agents = []\ntasks = ["cube-single-play"]', "expands to no runs"),
        ('agents = ["sorl"]\ntasks = ["cube-single-play"]\nseeds = []', "expands to no runs"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SorlError) as e:
        load_spec(path).runs()
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", str(path), "--dry-run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and message in err


def test_unknown_launcher_and_missing_spec(tmp_path, capsys):
    path = write(tmp_path, 'agents = ["sorl"]\ntasks = ["cube-single-play"]')
    with pytest.raises(SorlError, match="unknown launcher 'slurmm' .*did you mean: slurm"):
        launchers.sweep(path, launcher="slurmm")
    for argv, message in (
        (["sweep", str(path), "--launcher", "kubernetes"], "unknown launcher 'kubernetes'"),
        (["sweep", "no-such-spec"], "spec no-such-spec not found"),
        (["sweep", str(path), "--max-parallel", "0"], "--max-parallel=0"),
    ):
        with pytest.raises(SystemExit):
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and message in err


def test_slurm_launcher_without_slurm_is_a_one_line_error(tmp_path, capsys):
    if shutil.which("srun") or shutil.which("sbatch"):
        pytest.skip("this machine has Slurm")
    path = write(tmp_path, 'agents = ["sorl"]\ntasks = ["cube-single-play-task1"]\ndata_dir = "{out}"')
    # In a child process: in-process, submitit's probing has left pytest's own capture file closed after earlier
    # tests (seen in the full suite only).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "sweep",
            str(path),
            "--launcher",
            "slurm",
            "--no-check-data",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "Traceback" not in err
    assert err.startswith("error: slurm launcher: ") and "--launcher local" in err and len(err.splitlines()) == 1


def test_dry_run_lists_runs_and_launches_nothing(tmp_path, capsys):
    path = write(tmp_path, BASE)
    cli.main(["sweep", str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert "sweep spec: 24 runs" in out and "24 to run as 24 jobs (local)" in out
    assert "pending   cube-single-play-task1/sorl/seed1" in out and "$ sorl train --task" in out
    assert "dry run: nothing launched" in out and not (tmp_path / "runs").exists()


def test_missing_expert_dataset_stops_before_launching(tmp_path):
    path = write(tmp_path, 'agents = ["sorl"]\ntasks = ["antmaze-large-navigate-task1"]\ndata_dir = "{out}"')
    with pytest.raises(SorlError, match="missing and not generatable here: antmaze-large-navigate"):
        launchers.sweep(path, progress=False)
    assert not (tmp_path / "runs" / "antmaze-large-navigate-task1").exists()


# ------------------------------------------------------------------------------------------- shipped specs


def test_shipped_specs_load_and_expand():
    names = sorted(p.stem for p in SPECS_DIR.glob("*.toml"))
    assert {"paper-sorl", "paper-fql", "paper-rebrac", "paper-iql", "paper-bc", "local", "scaling"} <= set(names)
    counts = {name: len(load_spec(name).runs()) for name in names}
    for agent in ("sorl", "fql", "rebrac", "iql", "bc"):
        assert counts[f"paper-{agent}"] == 8 * 5 * 8  # environments x tasks x seeds
    assert counts["paper-sorl-clean"] == 8 * 5 * 8
    assert counts["local"] == 6 * 5 * 5 * 8  # agents x environments x tasks x seeds
    assert counts["scaling"] == 2 * 3 * 5 * 4  # max_k_backprop variants x environments x tasks x seeds
    local = load_spec("local")
    assert all(t.env.generatable for t in local.tasks)
    assert {t.env.name for t in local.tasks} == {
        "cube-single-play",
        "cube-double-play",
        "scene-play",
        "puzzle-3x3-play",
        "puzzle-4x4-play",
    }
    scaling = load_spec("scaling")
    assert scaling.eval["N"] == [1, 2, 4, 8, 16, 32] and scaling.eval["K"] == [1, 2, 4, 8]


def test_paper_specs_share_one_budget_and_the_published_settings():
    budgets = set()
    for agent in ("sorl", "fql", "rebrac", "iql", "bc"):
        spec = load_spec(f"paper-{agent}")
        train = spec.train
        budgets.add((train["steps"], train["eval_interval"], spec.eval["episodes"], train["success_timing"]))
        assert spec.seeds == list(range(1, 9)) and spec.agents == [agent]
        assert [e for e in dict.fromkeys(t.env.name for t in spec.tasks)] == [
            "antmaze-large-navigate",
            "antmaze-giant-navigate",
            "humanoidmaze-medium-navigate",
            "humanoidmaze-large-navigate",
            "antsoccer-arena-navigate",
            "cube-single-play",
            "cube-double-play",
            "scene-play",
        ]
        raw = tomllib.loads((SPECS_DIR / f"paper-{agent}.toml").read_text())
        for env, settings in raw.get("settings", {}).items():
            if env == agent:  # the agent's own scope ([settings.sorl]: the update), not an environment
                continue
            assert env in ENVIRONMENTS and settings == AGENTS[agent].ENV_SETTINGS[env].values, (agent, env)
        if agent == "sorl":  # the released README: antmaze-giant has q_loss_coef 500, discount 0.995, q_agg min
            assert raw["settings"]["antmaze-giant-navigate"] == {"q_loss_coef": 500, "discount": 0.995, "q_agg": "min"}
    assert budgets == {(1_000_000, 100_000, 50, "post")}


def test_paper_sorl_runs_the_released_update_and_paper_sorl_clean_ours():
    # The published SORL numbers were made with the released update; the clean spec is the same cells with ours,
    # in a directory of its own under the same root.
    paper, clean = load_spec("paper-sorl"), load_spec("paper-sorl-clean")
    assert all("--agent.released_update=True" in r.command() for r in paper.runs())
    assert all("--agent.released_update=False" in r.command() for r in clean.runs())

    def words(run, swap=()):
        text = run.command()
        for a, b in swap:
            text = text.replace(a, b)
        return sorted(text.split())

    swap = (("clean-update/", ""), ("released_update=False", "released_update=True"))
    assert [words(r, swap) for r in clean.runs()] == [words(r) for r in paper.runs()]  # nothing else differs
    for name in ("local", "scaling"):  # compared with the published numbers and claims too
        assert all(r.overrides.get("released_update") == "True" for r in load_spec(name).runs() if r.agent == "sorl")


def test_readme_reproduces_the_paper_in_three_commands(tmp_path, capsys):
    root = SPECS_DIR.parents[1]
    doc = root / "docs" / "reproduction.md"
    section = doc.read_text().split("## Reproducing the paper", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert [c.split()[:2] for c in commands] == [["sorl", "data"], ["sorl", "sweep"], ["sorl", "table"]]
    argv = commands[1].split()[1:] + ["--dry-run", "--out", str(tmp_path / "paper")]
    cli.main(argv)  # the sweep command as written expands (dry run: nothing launched)
    assert "sweep paper-sorl: 320 runs" in capsys.readouterr().out
    image = section.split("](", 1)[1].split(")", 1)[0]
    assert image.endswith(".png") and (doc.parent / image).stat().st_size > 10_000


@pytest.mark.parametrize(
    "text",
    [
        'tasks = ["visual-cube-single-play-task1"]\n[train]\np_aug = 0.5\nframe_stack = 3',  # pixel options, pixels
        'tasks = ["cube-single-play-task1"]\n[train]\nframe_stack = 3',  # frame stacking works on state tasks too
        'tasks = ["cube-single-play-task1"]\n[train]\nonline_steps = 100\nonline_K = 8\n[eval]\nK = [1, 8]',
        'tasks = ["cube-single-play-task1"]\n[settings]\ndenoise_timesteps = 16\nmax_k_backprop = 16\n[eval]\nK = [16]',
        'tasks = ["cube-single-play-task1"]\n[train]\nsteps = 0\nonline_steps = 100\nbalanced_sampling = true',
    ],
    ids=["pixel-options-on-pixels", "frame-stack-on-state", "online-on-state", "K-within-a-larger-M", "pure-online"],
)
def test_what_the_runs_can_do_is_accepted(tmp_path, text):
    """The parse-time refusals (test_bad_inputs_sweep.py) refuse only what every run would fail on."""
    spec = load_spec(write(tmp_path, 'agents = ["sorl", "iql"]\n' + text))
    assert {r.agent for r in spec.runs()} == {"sorl", "iql"}
    if "steps = 0" in text:  # the printed command is the CLI's pure-online run
        assert all(" --steps 0 " in r.command() and " --online-steps 100 " in r.command() for r in spec.runs())


def test_launcher_flags_are_accepted_with_their_own_launcher():
    ok = SimpleNamespace(partition="gpu", time=60, submitit_cluster="local", wait=False, address=None)
    launchers.check_launcher_options("slurm", ok)
    launchers.check_launcher_options("ray", SimpleNamespace(address="auto", cpus_per_run=2, gpus_per_run=0.5))
    launchers.check_launcher_options("local", SimpleNamespace(max_parallel=2, submitit_cluster="slurm", wait=True))
    with pytest.raises(SorlError, match="--address is an option of the ray launcher; with --launcher slurm"):
        launchers.check_launcher_options("slurm", SimpleNamespace(address="auto"))
