"""One validation mechanism for every agent config: each setting's check, declared next to its field.

A config field declares its check where it is defined, in the agent's own file:

    expectile: float = setting(0.9, check=Check(lambda v: is_number(v) and 0 < v < 1, "must be in (0, 1)"))

(`setting` is `dataclasses.field` with the check in its metadata). Settings several agents share, with one meaning
(`lr`, `batch_size`, `discount`, ...), have one named check in `SHARED` that a field of that name uses when it
declares none, so the shared base configs (`sorl.baselines.BaselineConfig`) need no declarations. A field with
neither is a programming error (TypeError), never skipped; tests/test_agent_contract.py checks every registered
agent's config.

`check_config(config)` applies each field's check, then the config's `cross_checks()` if it has one. A broken check
is one line for the user, naming the setting and the flag that sets it:
`invalid agent setting lr=0: must be a positive number (--agent.lr=...)`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NamedTuple

from sorl.errors import SorlError

ENCODER_NAMES = ("impala", "impala_debug", "impala_small", "impala_large")
"""Image encoders `--agent.encoder` accepts (`sorl.networks.ENCODERS`); None feeds observations to the MLPs as is."""


class Check(NamedTuple):
    """A setting's check: is a value valid, and what a valid value is (the error line's words)."""

    ok: Callable[[Any], bool]
    requirement: str


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    """The project's one positive-integer check, for run options (`name=value: must be a positive integer`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise SorlError(f"{name}={value}: must be a positive integer")


def is_power_of_two(v: Any) -> bool:
    """1, 2, 4, 8, ...: the one test for K and for `denoise_timesteps` (sampler and setting checks alike). numpy
    integers count, since a K may come from an array of K values; bools never do."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 and v & (v - 1) == 0


# The named checks agents' fields reference (`setting(default, check=NON_NEGATIVE)`).
POSITIVE = Check(lambda v: is_number(v) and v > 0, "must be a positive number")
NON_NEGATIVE = Check(lambda v: is_number(v) and v >= 0, "must be a non-negative number")
UNIT_INTERVAL = Check(lambda v: is_number(v) and 0 <= v <= 1, "must be in [0, 1]")
HALF_OPEN_UNIT = Check(lambda v: is_number(v) and 0 <= v < 1, "must be in [0, 1)")
OPEN_CLOSED_UNIT = Check(lambda v: is_number(v) and 0 < v <= 1, "must be in (0, 1]")
OPEN_UNIT = Check(lambda v: is_number(v) and 0 < v < 1, "must be in (0, 1)")
# A setting must also be a Python int (what the flags and config.json give), as every integer setting here.
POWER_OF_TWO = Check(lambda v: is_integer(v) and is_power_of_two(v), "must be a power of two (1, 2, 4, 8, ...)")
POSITIVE_INTEGER = Check(lambda v: is_integer(v) and v >= 1, "must be a positive integer")
NON_NEGATIVE_INTEGER = Check(lambda v: is_integer(v) and v >= 0, "must be a non-negative integer")
BOOL = Check(lambda v: isinstance(v, bool), "must be true or false")
Q_AGG = Check(lambda v: v in ("mean", "min"), "must be 'mean' or 'min'")
ENCODER = Check(lambda v: v is None or v in ENCODER_NAMES, f"must be none or one of {', '.join(ENCODER_NAMES)}")

SHARED: dict[str, Check] = {
    # Settings several agents share, one meaning each: a field of this name needs no check of its own.
    "lr": POSITIVE,
    "grad_clip_norm": NON_NEGATIVE,
    "batch_size": POSITIVE_INTEGER,
    "actor_layer_size": POSITIVE_INTEGER,
    "actor_num_layers": NON_NEGATIVE_INTEGER,
    "value_layer_size": POSITIVE_INTEGER,
    "value_num_layers": NON_NEGATIVE_INTEGER,
    "layer_norm": BOOL,
    "actor_layer_norm": BOOL,
    "discount": UNIT_INTERVAL,
    "tau": OPEN_CLOSED_UNIT,
    "num_critics": POSITIVE_INTEGER,
    "encoder": ENCODER,
    "q_agg": Q_AGG,
    "alpha": NON_NEGATIVE,
    "normalize_q_loss": BOOL,
    "const_std": BOOL,
    "actor_fc_scale": POSITIVE,
}
"""Shared setting name -> its check."""


def setting(default: Any, check: Check, **field_kwargs: Any) -> Any:
    """A config field with its check: `name: T = setting(default, check=...)` (a `dataclasses.field`)."""
    metadata = {**field_kwargs.pop("metadata", {}), "check": check}
    return dataclasses.field(default=default, metadata=metadata, **field_kwargs)


def field_check(field: dataclasses.Field) -> Check | None:
    """The check of a config field: its own (`setting(..., check=...)`), else the shared one of its name."""
    return field.metadata.get("check") or SHARED.get(field.name)


def invalid(key: str, value: Any, requirement: str) -> SorlError:
    """The one-line error for a bad agent setting."""
    return SorlError(f"invalid agent setting {key}={value!r}: {requirement} (--agent.{key}=...)")


def check_config(config: Any) -> None:
    """Raise a one-line SorlError naming the first field of `config` that breaks its rule, then run the config's
    `cross_checks()` (settings that constrain each other); TypeError for a field without a check."""
    for f in fields(config):
        check = field_check(f)
        if check is None:
            raise TypeError(
                f"{type(config).__name__}.{f.name} has no check: declare it with "
                f"`{f.name}: ... = sorl.validation.setting(default, check=...)`"
            )
        value = getattr(config, f.name)
        if not check.ok(value):
            raise invalid(f.name, value, check.requirement)
    cross_checks = getattr(config, "cross_checks", None)
    if callable(cross_checks):
        cross_checks()
