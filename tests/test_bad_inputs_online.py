"""The bad-input catalogue of the online phase (issues 27 and 28): settings of the online phase without one, acting
policies the agent cannot run, pixel tasks, and a finished or interrupted online run rerun with other online
settings. Each is refused before anything is loaded, trained or written (`runner.settings.TrainSettings.check_online`,
`runner.online.check_online_settings` in the Trainer's constructor, `runner.online.check_same_online` in
`Trainer.open_runs`), with one line saying what differs and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from refusals import Refusal, run_case
from test_train_loop import TASK, _train
from test_train_loop import stand_in as _stand_in  # noqa: F401 - a fixture, used through `stand_in` below


@pytest.fixture
def stand_in(request):
    """test_train_loop's stand-in agent ("tiny", largest K 4), synthetic dataset and evaluation env."""
    return request.getfixturevalue("_stand_in")


# An online stand-in run: 10 offline updates, 5 online steps (TinyEnv's episodes are 5 steps).
ONLINE = dict(steps=10, online_steps=5, log_interval=5, eval_interval=10, eval_episodes=2, eval_K="1", eval_N="1",
              eval_workers=1)  # fmt: skip
NEW = ["train", "--task", TASK, "--agent", "tiny", "--run-dir", "{tmp}/new", "--no-progress", "--eval-K", "1"]
RUN = ["train", "--task", TASK, "--agent", "tiny", "--seed", "1", "--run-dir", "{tmp}/run", "--no-progress"]
RUN += [f"--{k.replace('_', '-')}={v}" for k, v in ONLINE.items()]  # the online run's own command


def _online_done(tmp: Path) -> None:
    _train(tmp, "run", **ONLINE)


def _online_interrupted(tmp: Path) -> None:
    """The online run without its results.json: a rerun continues it (from its last checkpoint)."""
    _online_done(tmp)
    (tmp / "run" / "results.json").unlink()


ONLY_ONLINE = "sets the online phase, which this run does not have: add --online-steps N or drop"
CHANGED = "holds a run whose online phase was set up with"

CASES: list[Refusal] = [
    # online settings without an online phase
    Refusal("balanced-without-online", [*NEW, "--balanced-sampling"], f"--balanced-sampling {ONLY_ONLINE}",
            kind="online", stand_in=True),
    Refusal("online-K-without-online", [*NEW, "--online-K", "2"], f"--online-K {ONLY_ONLINE}", kind="online",
            stand_in=True),
    Refusal("online-N-without-online", [*NEW, "--online-N", "2"], f"--online-N {ONLY_ONLINE}", kind="online",
            stand_in=True),
    Refusal("buffer-size-without-online", [*NEW, "--buffer-size", "1000"], f"--buffer-size {ONLY_ONLINE}",
            kind="online", stand_in=True),
    Refusal("steps-zero-without-online", [*NEW, "--steps", "0"], "0 only with --online-steps N: a pure-online run",
            kind="online", stand_in=True),
    # values
    Refusal("online-K-not-power-of-two", [*NEW, "--online-steps", "5", "--online-K", "3"],
            "--online-K 3: the acting policy's sampling steps must be a power of two", kind="online", stand_in=True),
    Refusal("online-K-above-trained", [*NEW, "--online-steps", "5", "--online-K", "8"],
            "--online-K 8 --online-N 1: K=8 is above the largest step count this agent was trained for (4",
            kind="online", stand_in=True),
    Refusal("online-N-zero", [*NEW, "--online-steps", "5", "--online-N", "0"], "online_N=0", kind="online",
            stand_in=True),
    Refusal("buffer-size-zero", [*NEW, "--online-steps", "5", "--buffer-size", "0"], "buffer_size=0", kind="online",
            stand_in=True),
    Refusal("online-steps-zero", [*NEW, "--online-steps", "0"], "online_steps=0", kind="online", stand_in=True),
    # pixel tasks: refused before the agent, the data or the renderer
    Refusal("online-on-pixel-task", ["train", "--task", "visual-cube-single-play", "--online-steps", "10",
                                     "--run-dir", "{tmp}/new", "--no-progress"],
            "--online-steps is not supported with", kind="online"),
    # a finished online run rerun with other online settings: never "already complete" with the old results
    Refusal("complete-rerun-other-K", [*RUN, "--online-K", "2"], f"{CHANGED} --online-K 1 (now 2)",
            _online_done, "online", stand_in=True),
    Refusal("complete-rerun-balanced", [*RUN, "--balanced-sampling"],
            f"{CHANGED} --balanced-sampling False (now True)", _online_done, "online", stand_in=True),
    Refusal("complete-rerun-buffer-size", [*RUN, "--buffer-size", "300"],
            f"{CHANGED} --buffer-size 2000000 (now 300)", _online_done, "online", stand_in=True),
    Refusal("complete-rerun-offline-steps-moved", [*RUN, "--steps", "12", "--online-steps", "3"],
            f"{CHANGED} --steps 10 (now 12)", _online_done, "online", stand_in=True),
    Refusal("complete-rerun-without-online", [a for a in RUN if not a.startswith("--online-steps")],
            "already holds a checkpoint at step 15 > --steps 10", _online_done, "online", stand_in=True),
    Refusal("complete-rerun-fewer-online-steps", [*RUN, "--online-steps", "3"],
            "already holds a checkpoint at step 15 > --steps 10 + --online-steps 3", _online_done, "online",
            stand_in=True),
    # an interrupted online run continued with another acting policy
    Refusal("resume-online-other-N", [*RUN, "--online-N", "2"], f"{CHANGED} --online-N 1 (now 2)",
            _online_interrupted, "online", stand_in=True),
]  # fmt: skip


def test_catalogue_covers_the_online_settings():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 8
    for flag in ("balanced", "online-K", "online-N", "buffer-size", "pixel", "complete-rerun", "resume"):
        assert any(flag in i for i in ids), flag


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(request, tmp_path, capsys, monkeypatch, case: Refusal):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "default-data"))
    run_case(request, tmp_path, capsys, case)


def test_an_offline_run_continues_with_online_steps_and_a_same_rerun_is_complete(tmp_path, stand_in, capsys):
    """The legitimate reruns: a complete offline run given --online-steps continues into its online phase (its
    offline phase is the same run), and the complete online run rerun with its own command says so."""
    from cli import main as cli

    _train(tmp_path, "run", **{k: v for k, v in ONLINE.items() if k != "online_steps"})
    cli.main([a.replace("{tmp}", str(tmp_path)) for a in RUN])
    out = capsys.readouterr().out
    assert "continuing" in out and "online phase: updates 10 to 15" in out
    cli.main([a.replace("{tmp}", str(tmp_path)) for a in RUN])
    assert "is already complete (15 updates)" in capsys.readouterr().out
