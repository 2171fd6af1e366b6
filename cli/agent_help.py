"""The agent settings section of `sorl train --help`: every `--agent.KEY` of every registered agent.

One box per agent (`agents.AGENTS`, in registry order), one row per setting of its config: the flag, the kind of
value, the meaning (the config field's docstring, `sorl.config.field_docs`) and the default. The default is the
agent's own; a setting that the agent's per-environment settings (its `ENV_SETTINGS`, resolved by
`envs.registry.agent_env_settings`) replace on some tasks is marked, and with `--task` the rows show the defaults
that apply to that task. Agent settings are parsed outside tyro (their valid set depends on `--agent`),
so this section is printed after tyro's own help.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import textwrap
import types
import typing
from typing import Any, Literal

PER_TASK = "per task"
"""The mark on a default that some tasks replace."""


def metavar(tp: Any) -> str:
    """The kind of value a setting takes, in tyro's style: FLOAT, INT, STR, {mean,min}, {true,false}, STR|none."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin in (typing.Union, types.UnionType):
        parts = [metavar(a) for a in typing.get_args(tp) if a is not type(None)]
        return "|".join(parts) + ("|none" if type(None) in typing.get_args(tp) else "")
    if origin is tuple:
        return metavar(typing.get_args(tp)[0]) + ",..."
    return {bool: "{true,false}", int: "INT", float: "FLOAT", str: "STR"}.get(tp, "VALUE")


def show(value: Any) -> str:
    """A default as it is typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(show(v) for v in value)
    return str(value)


def per_task_keys(agent: str) -> set[str]:
    """The settings that `agent`'s per-environment settings replace on at least one task (state or pixel)."""
    from agents import get_agent
    from envs.registry import ENVIRONMENTS, agent_env_settings

    agent_cls = get_agent(agent)
    keys: set[str] = set()
    for name in ENVIRONMENTS:
        keys.update(agent_env_settings(agent_cls, name))
    return keys


def agent_rows(agent: str, task: str | None = None) -> list[tuple[str, str, str]]:
    """(flag with its kind, meaning, default note) per setting of `agent`, in its config's field order."""
    from agents import get_agent
    from sorl.config import _field_types, field_docs

    config_cls = get_agent(agent).Config
    defaults = config_cls()
    docs = field_docs(config_cls)
    kinds = _field_types(config_cls)
    varying = per_task_keys(agent)
    on_task: dict[str, Any] = {}
    if task is not None:
        from envs.registry import agent_env_settings

        on_task = agent_env_settings(get_agent(agent), task)
    rows = []
    for f in dataclasses.fields(config_cls):
        own = show(getattr(defaults, f.name))
        if f.name in on_task:
            default = f"default on this task: {show(on_task[f.name])}; the agent's: {own}"
        elif f.name in varying and task is None:
            default = f"default: {own}; {PER_TASK}"
        else:
            default = f"default: {own}"
        rows.append((f"--agent.{f.name} {metavar(kinds[f.name])}", docs[f.name], f"({default})"))
    return rows


def with_agent_names(args_cls: type) -> type:
    """`args_cls` (a frozen dataclass with an `agent: str` field, `cli.main.TrainArgs`) whose `--agent` help names
    every registered agent, in registry order, so that no list of agents is written by hand."""
    import tyro

    from agents import AGENTS

    agent = next(f for f in dataclasses.fields(args_cls) if f.name == "agent")
    names = list(AGENTS)
    text = f"Agent: {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else f"Agent: {names[0]}"
    text += "; its settings (--agent.KEY=VALUE) are listed below."
    annotated = typing.Annotated[str, tyro.conf.arg(help=text)]
    named = dataclasses.make_dataclass(
        args_cls.__name__,
        [("agent", annotated, dataclasses.field(default=agent.default))],
        bases=(args_cls,),
        frozen=True,
        kw_only=True,
    )
    named.__doc__ = args_cls.__doc__
    named.__module__ = args_cls.__module__
    return named


def _box(title: str, lines: list[str], width: int) -> list[str]:
    """A titled box as tyro draws its groups: UTF-8 box lines where stdout takes UTF-8, else a ruled title."""
    inner = width - 4
    if getattr(sys.stdout, "encoding", None) != "utf-8":
        return [f" {title}", " " + "-" * (width - 2), *(f"  {line}" for line in lines), ""]
    top = f"╭─ {title} " + "─" * max(0, width - len(title) - 5) + "╮"
    body = [f"│ {line.ljust(inner)} │" for line in lines]
    return [top, *body, "╰" + "─" * (width - 2) + "╯"]


def _table(rows: list[tuple[str, str, str]], inner: int) -> list[str]:
    """tyro's layout: the flag, then its help in a column (on the next line when the flag is too long)."""
    column = min(max(len(flag) for flag, _, _ in rows) + 2, 32)
    lines: list[str] = []
    for flag, meaning, default in rows:
        text = textwrap.wrap(f"{meaning} {default}".strip(), max(20, inner - column))
        if len(flag) + 2 > column:
            lines.append(flag)
            lines += [" " * column + t for t in text]
        else:
            lines.append(flag.ljust(column) + text[0])
            lines += [" " * column + t for t in text[1:]]
    return lines


def render(agent: str | None = None, task: str | None = None, width: int | None = None) -> str:
    """The agent settings section: every registered agent's settings (or only `agent`'s), with the defaults that
    apply to `task` when one is given."""
    from agents import AGENTS, get_agent

    if agent is not None:
        get_agent(agent)  # an unknown name is one error line listing the valid ones
    names = [agent] if agent is not None else list(AGENTS)
    if width is None:
        width = min(max(shutil.get_terminal_size().columns, 60), 100)
    inner = width - 4
    if task is None:
        note = (
            f"Defaults are the agent's own; those marked '{PER_TASK}' are replaced on some tasks by the published "
            "per-environment values: `sorl train --agent AGENT --task TASK --help` shows the defaults for TASK."
        )
    else:
        note = f"Defaults for --task {task}: the per-environment values that apply to it, else the agent's own."
    intro = (
        "Agent settings: --agent.KEY=VALUE (or --agent.KEY VALUE) sets a setting of the agent chosen with --agent; "
        "an explicit value wins over any default. " + note
    )
    if agent is None:
        intro += " `sorl train --agent AGENT --help` shows one agent's settings only."
    out = textwrap.wrap(intro, width)
    for name in names:
        title = f"agent settings: {name} (--agent {name})"
        out += _box(title, _table(agent_rows(name, task), inner), width)
    return "\n".join(out)
