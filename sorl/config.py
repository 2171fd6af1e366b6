"""Typed agent configs from recorded values, with one-line errors.

The command line's `--agent.KEY=VALUE` are typed by tyro (`cli.agent_args`); what reaches this module are the
recorded forms of settings: the words a run or a sweep records in config.json's `agent_overrides` and prints in its
commands, a spec's TOML values, config.json's `agent_config`. Each is read as the dataclass field's declared type
(bool, int, float, str, Literal, Optional, tuples) with the reference's spellings (`false`, `none`, `1,2`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar

from sorl.errors import SorlError, suggest

C = TypeVar("C")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _field_types(cls: type) -> dict[str, Any]:
    # Resolves the string annotations left by `from __future__ import annotations`.
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "comma-separated " + " ".join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """`value` (a CLI string or a JSON value) as type `tp`; ValueError if it is not one."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except ValueError:
                pass
        raise ValueError
    if origin is tuple:
        args = typing.get_args(tp)
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(items) != len(args):
            raise ValueError
        return tuple(_coerce(v, a) for v, a in zip(items, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                value = float(value)
        # "1e6" and "100.0" name integers too; "2.5" does not.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise ValueError


def _unknown_key(key: str, valid: list[str], prefix: str) -> SorlError:
    return SorlError(f"unknown setting {prefix}{key}{suggest(key, valid)}; valid keys: {', '.join(valid)}")


def apply_overrides(config: C, overrides: dict[str, str], prefix: str = "--agent.") -> C:
    """A copy of the dataclass `config` with `overrides` (key -> string value) coerced to the fields' types.

    Raises `SorlError` for an unknown key (listing the valid ones), a value of the wrong type (naming key and
    type), or a resulting config its own `validate()` rejects.
    """
    types_ = _field_types(type(config))
    valid = list(types_)
    changes: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        key = raw_key.replace("-", "_")
        if key not in types_:
            raise _unknown_key(key, valid, prefix)
        try:
            changes[key] = _coerce(value, types_[key])
        except (ValueError, TypeError):
            raise SorlError(
                f"{prefix}{key}={value!r}: expected {_type_name(types_[key])} (current value {getattr(config, key)!r})"
            ) from None
    new = dataclasses.replace(config, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass config (tuples become lists)."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, tuple | list) else v

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Inverse of `config_to_dict`; missing keys take the defaults, unknown keys and bad values raise SorlError.

    A config class may name, in `LEGACY_DEFAULTS`, the value a key had before it existed (a run directory written
    then has no such key, and must load as it was trained, not with today's default).
    """
    types_ = _field_types(cls)
    valid = list(types_)
    values: dict[str, Any] = {k: v for k, v in getattr(cls, "LEGACY_DEFAULTS", {}).items() if k not in data}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(key, valid, prefix="")
        try:
            values[key] = _coerce(value, types_[key])
        except (ValueError, TypeError):
            raise SorlError(f"config key {key}={value!r}: expected {_type_name(types_[key])}") from None
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def field_docs(cls: type) -> dict[str, str]:
    """Setting name -> its meaning, one line: the docstring under each field of the dataclass `cls` (a subclass's
    own wins over its parent's), or a field's `metadata["doc"]` (a generated dataclass has no source). A field
    with neither maps to ''."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        for stmt, after in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("doc")
        out[f.name] = docs.get(f.name) or (" ".join(meta.split()) if isinstance(meta, str) else "")
    return out
