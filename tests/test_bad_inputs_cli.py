"""Bad-input catalogue: the command line itself (an option given to the wrong command, an older spelling with a
bad value, an agent setting of another agent, `--help` of an unknown agent or task). Every case is refused with one
`error:` line naming the problem and the fix, and leaves every file as it was (tests/refusals.py)."""

from __future__ import annotations

import pytest
from refusals import Refusal, run_case

from cli import main as cli

TASK = "cube-single-play"
T = ["train", "--task", TASK, "--no-progress"]
RUN = "{tmp}/run"  # never reached: every case is refused before the run directory is read

CASES: list[Refusal] = [
    # an option another command takes: which command takes it
    Refusal(
        "eval-given-a-train-option",
        ["eval", RUN, "--steps", "5"],
        "`sorl eval` does not take --steps: it is an option of `sorl train`",
        kind="cli",
    ),
    Refusal("train-given-an-eval-spelling", [*T, "--K", "4"], "`sorl train` does not take --K", kind="cli"),
    Refusal("generate-given-an-eval-option", ["data", "generate", TASK, "--eval-K", "1"], "`sorl eval`", kind="cli"),
    # the older and the canonical spelling of one flag: a bad value names both, or the one typed
    Refusal("alias-not-an-int", ["eval", RUN, "--episodes", "abc"], "--eval-episodes/--episodes", kind="cli"),
    Refusal("canonical-K-not-an-int", ["eval", RUN, "--eval-K", "1,x"], "--eval-K: 'x' is not an integer", kind="cli"),
    Refusal("alias-K-empty-item", ["eval", RUN, "--K", "1,,2"], "--K: expected comma-separated integers", kind="cli"),
    Refusal("alias-N-not-an-int", ["eval", RUN, "--N", "x"], "--N: 'x' is not an integer", kind="cli"),
    Refusal("canonical-envs-zero", ["eval", RUN, "--eval-envs", "0"], "--eval-envs=0: must be a positive", kind="cli"),
    Refusal("alias-envs-zero", ["eval", RUN, "--envs", "0"], "--envs=0: must be a positive", kind="cli"),
    Refusal(
        "generate-train-episodes-zero",
        ["data", "generate", TASK, "--train-episodes", "0", "--data-dir", "{tmp}/data"],
        "--train-episodes must be at least 1",
        kind="cli",
    ),
    Refusal("progress-with-a-value", [*T, "--progress=maybe"], "--progress takes no value", kind="cli"),
    # agent settings: another agent's, and an unknown one, name the agent chosen
    Refusal(
        "agent-setting-of-another-agent",
        [*T, "--agent", "fql", "--agent.denoise_timesteps=4"],
        "unknown setting --agent.denoise_timesteps for --agent fql (a setting of sorl, flow-bc, not of fql)",
        kind="cli",
    ),
    Refusal(
        "sorl-setting-given-to-bc",
        [*T, "--agent", "bc", "--agent.q_loss_coef=1"],
        "--agent bc (a setting of sorl, not of bc)",
        kind="cli",
    ),
    Refusal(
        "setting-typo-names-the-agent",
        [*T, "--agent", "iql", "--agent.expectle=0.7"],
        "--agent iql (did you mean: expectile?)",
        kind="cli",
    ),
    Refusal(
        "quick-keeps-the-check", [*T, "--quick", "--agent", "iql", "--agent.alpha_actor=1"], "not of iql", kind="cli"
    ),
    # --help of something that does not exist: the error, not a page of help
    Refusal(
        "help-unknown-agent", ["train", "--agent", "nosuchagent", "--help"], "unknown agent 'nosuchagent'", kind="cli"
    ),
    Refusal("help-unknown-task", ["train", "--agent", "fql", "--task", "nosuch", "--help"], "'nosuch'", kind="cli"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(request, tmp_path, capsys, case):
    run_case(request, tmp_path, capsys, case)


def test_a_parse_error_line_is_built_from_tyros_event_not_its_drawing(capsys):
    """The line comes from tyro's structured error (flag, value, choices), so it does not depend on how tyro
    draws its errors (boxes where stdout takes UTF-8, ruled titles elsewhere)."""
    with pytest.raises(SystemExit):
        cli.main([*T, "--stepz", "3"])
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: Unrecognized options: --stepz 3 (did you mean: --steps")
    assert "sorl train --help" in line
    assert not any(c in line for c in "╭│─")
