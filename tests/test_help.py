"""Every setting of `sorl` is findable from `--help`: each command (walked from `sorl --help`) describes each of its
flags, `sorl train --help` lists every agent setting of every registered agent with its meaning and default, and one
idea has one spelling across the commands (older spellings still accepted)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from agents import AGENTS
from cli import main as cli
from cli.agent_help import PER_TASK, per_task_keys, show
from envs.registry import agent_env_settings
from sorl.config import field_docs

WIDTH = "120"


@pytest.fixture(autouse=True)
def _columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", WIDTH)  # tyro and the agent section wrap at the terminal's width


def help_text(capsys, *argv: str) -> str:
    """stdout of `sorl ARGV --help`, run in-process (tyro's help exits 0; train's returns)."""
    capsys.readouterr()
    try:
        cli.main([*argv, "--help"])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr()
    out, err = capsys.readouterr()
    assert not err.strip(), err
    return out


def boxes(text: str) -> dict[str, list[str]]:
    """Group title -> its content lines, in order. tyro draws a group as a UTF-8 box where stdout takes UTF-8
    (`╭─ title ─╮`, `│ line │`, `╰─╯`), else as ` title`, a rule ` ----` and lines indented by two spaces."""
    out: dict[str, list[str]] = {}
    lines = text.splitlines()
    title = None
    for i, line in enumerate(lines):
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.startswith("╭─"):
            title = line.strip("╭─╮ ").rstrip("─ ")
            out[title] = []
        elif line.strip() and len(following) > 3 and set(following) == {"-"}:
            title = line.strip()
            out[title] = []
        elif title is not None and (line.startswith("╰") or not line.strip()):
            title = None
        elif title is not None and line.startswith("│"):
            out[title].append(line[2:].rstrip().removesuffix("│").rstrip())
        elif title is not None and line.startswith("  "):
            out[title].append(line[2:].rstrip())
    return out


def entries(lines: list[str]) -> list[tuple[str, str]]:
    """(flag spec, description) of each entry of a box: an entry starts at column 0, its help continues on the
    indented lines below; the spec ends at the first gap of two spaces (or the line's end)."""
    out: list[list[str]] = []
    for line in lines:
        if not line.strip() or set(line.strip()) <= set("─-"):
            continue
        if line[0] != " ":
            spec, _, rest = line.partition("  ")
            out.append([spec.strip(), rest.strip()])
        elif out:
            out[-1][1] = (out[-1][1] + " " + line.strip()).strip()
    return [(spec, re.sub(r"\s+", " ", desc)) for spec, desc in out]


def meaning(description: str) -> str:
    """A description without tyro's trailing `(default: ...)` / `(required)`."""
    return re.sub(r"\s*\((default: .*|required)\)\s*$", "", description).strip()


def subcommands(text: str) -> list[tuple[str, str]]:
    """(name, description) of the `subcommands` box of a help text."""
    lines = boxes(text).get("subcommands", [])
    out: list[list[str]] = []
    for line in lines:
        m = re.match(r"\s*• (\S+)\s*(.*)", line)
        if m:
            out.append([m.group(1), m.group(2)])
        elif out and line.strip() and not line.strip().startswith("("):
            out[-1][1] += " " + line.strip()
    return [(n, d.strip()) for n, d in out]


def walk(capsys) -> dict[tuple[str, ...], str]:
    """Every command path (from `sorl --help`, recursively) -> its help text."""
    found: dict[tuple[str, ...], str] = {}
    todo: list[tuple[str, ...]] = [()]
    while todo:
        path = todo.pop()
        text = help_text(capsys, *path)
        found[path] = text
        for name, description in subcommands(text):
            assert description, f"`sorl {' '.join((*path, name))}` has no one-line description"
            todo.append((*path, name))
    return found


CODE_NAME = [
    re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+\b"),  # CamelCase classes (TrainSettings)
    re.compile(r"(?<![$\w])[A-Z][A-Z0-9]*_[A-Z0-9_]+\b"),  # CONSTANTS (QUICK_PRESET; $ENV_VARS are words for users)
    re.compile(r"(?<![\w/.-])_[a-z]\w*"),  # private names (_coerce)
    re.compile(r"\b(?:sorl|cli|runner|envs|agents|experiments)\.[a-z_]+"),  # module paths (runner.train)
]
NOT_CODE = {"LayerNorm", "ReBRAC", "RUN_DIR", "OGBench", "TensorBoard"}


def test_every_command_has_a_description_and_every_flag_one_too(capsys):
    helps = walk(capsys)
    names = {path[0] for path in helps if path}
    assert names == set(cli._COMMANDS), names  # the walk reached every registered command
    assert ("data", "generate") in helps and ("plot", "curves") in helps
    for path, text in helps.items():
        command = " ".join(("sorl", *path))
        for title, lines in boxes(text).items():
            if title == "subcommands" or title.startswith("agent settings"):
                continue
            for spec, description in entries(lines):
                if spec.startswith("(") or not spec:
                    continue  # a group's own description line
                assert meaning(description), f"{command}: {spec} has no description"
                if not spec.startswith("-"):  # a positional: tyro falls back on the field's name
                    assert " " in meaning(description), f"{command}: positional {spec} says only {description!r}"
        for pattern in CODE_NAME:
            hits = set(pattern.findall(text)) - NOT_CODE
            assert not hits, f"{command} --help names code: {sorted(hits)}"


def test_multi_line_docstrings_are_one_paragraph(capsys):
    """tyro kept the line breaks of a wrapped field docstring; the help joins them."""
    text = help_text(capsys, "train")
    (description,) = [d for s, d in entries(boxes(text)["options"]) if s.startswith("--frame-stack")]
    assert "as the released pixel commands' --frame_stack, 1 on state tasks" in description
    assert "\n" not in description


def agent_section(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """agent -> setting -> (kind, description) from the agent settings boxes of `sorl train --help`."""
    out = {}
    for title, lines in boxes(text).items():
        m = re.fullmatch(r"agent settings: (\S+) \(--agent \S+\)", title)
        if m:
            rows = {}
            for spec, description in entries(lines):
                flag, _, kind = spec.partition(" ")
                rows[flag.removeprefix("--agent.")] = (kind, description)
            out[m.group(1)] = rows
    return out


def test_train_help_lists_every_agent_setting_with_meaning_and_default(capsys):
    text = help_text(capsys, "train")
    section = agent_section(text)
    assert list(section) == list(AGENTS)  # every registered agent, in the registry's order
    for name, agent_cls in AGENTS.items():
        config = agent_cls.Config()
        docs = field_docs(agent_cls.Config)
        fields = [f.name for f in dataclasses.fields(config)]
        assert list(section[name]) == fields, name
        for key in fields:
            kind, description = section[name][key]
            assert docs[key] and description.startswith(docs[key]), (name, key, description)
            default = f"(default: {show(getattr(config, key))}"
            assert default in description, (name, key, description)
            assert (PER_TASK in description) == (key in per_task_keys(name)), (name, key, description)
    # values a researcher meets: SORL's Q-term weight, its released default, marked as tuned per task
    assert section["sorl"]["q_loss_coef"][0] == "FLOAT"
    assert "(default: 100.0; per task)" in section["sorl"]["q_loss_coef"][1]
    assert "(default: true)" in section["rebrac"]["shared_adam"][1]
    assert section["iql"]["q_agg"][0] == "{mean,min}"
    assert "--task TASK --help" in text  # how to see a task's defaults
    (line,) = [d for s, d in entries(boxes(text)["options"]) if s.startswith("--agent ")]
    assert all(name in line for name in AGENTS), line  # the --agent flag's own help names them all


def test_train_help_of_one_agent_on_one_task(capsys):
    text = help_text(capsys, "train", "--agent", "fql", "--task", "cube-single-play")
    section = agent_section(text)
    assert list(section) == ["fql"]
    tuned = agent_env_settings(AGENTS["fql"], "cube-single-play")
    assert tuned["alpha"] == 300.0
    assert "(default on this task: 300.0; the agent's: 10.0)" in section["fql"]["alpha"][1]
    assert "(default: 10)" in section["fql"]["flow_steps"][1]
    assert f"; {PER_TASK})" not in text.split("agent settings: fql")[1]  # the task's own values, not the mark
    pixel = agent_section(help_text(capsys, "train", "--agent", "iql", "--task", "visual-cube-single-play"))
    assert "(default on this task: impala_small; the agent's: none)" in pixel["iql"]["encoder"][1]


def test_quick_help_names_what_it_sets(capsys):
    (description,) = [d for s, d in entries(boxes(help_text(capsys, "train"))["options"]) if s.startswith("--quick")]
    for key, value in {**cli.QUICK_PRESET, **cli.QUICK_AGENT_PRESET}.items():
        assert str(value) in description and key.replace("_", "-") in description.replace("_", "-"), key


# ------------------------------------------------------------------------------------ one spelling per idea


def flags(text: str) -> set[str]:
    specs = [spec for lines in boxes(text).values() for spec, _ in entries(lines)]
    return {f for spec in specs for f in re.findall(r"--[\w.-]+", spec)}


def test_eval_takes_trains_evaluation_flags_and_the_older_spellings(capsys):
    train, evaluate = flags(help_text(capsys, "train")), flags(help_text(capsys, "eval"))
    shared = {"--eval-K", "--eval-N", "--eval-episodes", "--eval-workers", "--eval-envs", "--eval-max-episode-steps"}
    assert shared <= train and shared <= evaluate
    assert {"--K", "--N", "--episodes", "--workers", "--envs", "--max-episode-steps"} <= evaluate  # aliases kept
    both = {"--video-K", "--video-N", "--video-episodes", "--video-size", "--logger", "--wandb-mode", "--seed"}
    assert both <= train & evaluate
    generate = flags(help_text(capsys, "data", "generate"))
    assert {"--train-episodes", "--episodes"} <= generate and "--train-episodes" in train
    sweep = flags(help_text(capsys, "sweep"))
    assert {"--progress", "--no-progress"} <= train & sweep


def _parsed_eval(monkeypatch, argv: list[str]) -> cli.EvalArgs:
    seen = []
    monkeypatch.setattr(cli, "eval_from_cli", seen.append)
    cli.main(["eval", "some/run", *argv])
    return seen[0]


NEW = ["--eval-K", "1,2", "--eval-N", "4", "--eval-episodes", "3", "--eval-workers", "2", "--eval-envs", "1"]
OLD = ["--K", "1,2", "--N", "4", "--episodes", "3", "--workers", "2", "--envs", "1"]


def test_both_spellings_parse_to_the_same_eval(monkeypatch):
    new = _parsed_eval(monkeypatch, NEW)
    old = _parsed_eval(monkeypatch, OLD)
    assert new == old == cli.EvalArgs(cli.Path("some/run"), K=(1, 2), N=(4,), episodes=3, workers=2, envs=1)


def test_progress_false_is_no_progress(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "train", lambda args, overrides: seen.append(args.progress))
    for argv, expect in (
        (["--progress", "False"], False), (["--progress=false"], False), (["--no-progress"], False),
        (["--progress", "True"], True), (["--progress"], True), ([], True),
    ):  # fmt: skip
        cli.main(["train", "--task", "cube-single-play", *argv])
        assert seen.pop() is expect, argv


def test_quick_preset_sets_only_the_settings_the_agent_has(monkeypatch):
    """--quick shrinks the networks; Gaussian BC has no critic, so it gets the actor's half only (it used to be
    refused for the critic's keys)."""
    seen = []
    monkeypatch.setattr(cli, "train_from_cli", lambda args, overrides: seen.append((args.steps, overrides)))
    cli.main(["train", "--task", "cube-single-play", "--quick", "--agent", "bc", "--agent.lr=1e-3"])
    cli.main(["train", "--task", "cube-single-play", "--quick", "--agent", "fql"])
    assert seen[0] == (30_000, {"actor_layer_size": "256", "actor_num_layers": "2", "lr": "1e-3"})
    assert seen[1] == (30_000, cli.QUICK_AGENT_PRESET)
