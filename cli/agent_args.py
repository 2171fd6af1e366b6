"""`--agent.KEY=VALUE`: the chosen agent's settings as typed tyro arguments of `sorl train`.

Which settings exist depends on `--agent`, so `sorl train` is parsed twice: once for `--agent` (the agent
settings left aside as unknown), then with the agent's config added as the nested argument `--agent` (tyro accepts
the reference's `--agent.q_loss_coef` as well as `--agent.q-loss-coef`). tyro checks every value against the
setting's type; only the settings typed on the command line become overrides, in the words typed (the run records
them so), and the run takes the agent's defaults, the environment's published values, then these: an explicit
value still wins over a per-environment default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

import tyro
from tyro.constructors import PrimitiveConstructorSpec

PREFIX = "--agent."
_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")
_NONE = ("none", "null")


def typed_keys(argv: Sequence[str]) -> list[str]:
    """The agent settings that `argv` sets (`--agent.KEY=V` or `--agent.KEY V`), as field names."""
    return [a[len(PREFIX) :].partition("=")[0].replace("-", "_") for a in argv if a.startswith(PREFIX)]


def _bool(args: list[str]) -> bool:
    word = args[0].strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(word)
    return word in _TRUE


def _spec(tp: Any) -> PrimitiveConstructorSpec | None:
    """The reference's value spellings where tyro's differ: booleans as true/false/1/0 (tyro: True/False only) and
    an optional number or name as `none` (tyro: None)."""
    if tp is bool:
        return PrimitiveConstructorSpec(
            nargs=1, metavar="{true,false}", instance_from_str=_bool, is_instance=lambda v: isinstance(v, bool),
            str_from_instance=lambda v: [str(v).lower()],
        )  # fmt: skip
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))

        def optional(values: list[str]) -> Any:
            return None if values[0].strip().lower() in _NONE else inner(values[0])

        return PrimitiveConstructorSpec(
            nargs=1, metavar=f"{inner.__name__.upper()}|none", instance_from_str=optional,
            is_instance=lambda v: v is None or isinstance(v, inner),
            str_from_instance=lambda v: ["none" if v is None else str(v)],
        )  # fmt: skip
    return None


def settings_class(config_cls: type) -> type:
    """A dataclass with the fields of the agent's config, typed for tyro (see `_spec`), defaults the agent's own."""
    hints, defaults = typing.get_type_hints(config_cls), config_cls()
    fields = []
    for f in dataclasses.fields(config_cls):
        spec = _spec(hints[f.name])
        # FlagConversionOff: a boolean setting takes a value, as the reference's flags do (not --agent.no-KEY)
        annotation = Annotated[hints[f.name], spec, tyro.conf.FlagConversionOff] if spec else hints[f.name]
        fields.append((f.name, annotation, dataclasses.field(default=getattr(defaults, f.name))))
    return dataclasses.make_dataclass(f"{config_cls.__name__}Settings", fields, frozen=True)


def with_agent_settings(args_cls: type, agent: str) -> type:
    """`args_cls` (`cli.main.TrainArgs`) with `agent`'s settings as the nested argument `--agent.KEY`."""
    from agents import get_agent

    settings = settings_class(get_agent(agent).Config)
    return dataclasses.make_dataclass(
        args_cls.__name__,
        [("agent_settings", Annotated[settings, tyro.conf.arg(name="agent")], dataclasses.field(default=settings()))],
        bases=(args_cls,),
        frozen=True,
        kw_only=True,
    )


def overrides_of(argv: Sequence[str]) -> dict[str, str]:
    """The agent settings typed on `argv` as they were typed (the last one given wins), once tyro has accepted
    them: the run records them so (config.json's `agent_overrides`, as a sweep's), and resolves them after the
    environment's settings (`runner.train.resolve_agent_config`)."""
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith(PREFIX):
            key, eq, value = arg[len(PREFIX) :].partition("=")
            out[key.replace("-", "_")] = value if eq else argv[i + 1]  # tyro has checked that a value follows
    return out
