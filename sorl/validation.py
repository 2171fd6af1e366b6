"""One validation mechanism for every agent config: a rule per setting name, and a config's own cross-field checks.

`check_config(config)` applies, to each field of a config dataclass, the rule registered for its name (the
same name means the same kind of value in every agent, the released code's convention), then the config's
`cross_checks()` if it has one. A field with no rule is a programming error (TypeError), never skipped: a new
setting needs its rule here, and tests/test_baselines_api.py checks every registered agent's config has one.

A broken rule is one line for the user, naming the setting and the flag that sets it:
`invalid agent setting lr=0: must be a positive number (--agent.lr=...)`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from sorl.errors import SorlError

ENCODER_NAMES = ("impala", "impala_small", "impala_debug")
"""Image encoders `--agent.encoder` accepts (`sorl.networks.ENCODERS`); None feeds observations to the MLPs as is."""

Rule = tuple[Callable[[Any], bool], str]
RULES: dict[str, Rule] = {}
"""Setting name -> (is the value valid, what a valid value is)."""


def rule(names: Iterable[str], ok: Callable[[Any], bool], requirement: str) -> None:
    for name in names:
        RULES[name] = (ok, requirement)


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
    return is_integer(v) and v >= 1 and v & (v - 1) == 0


rule(["lr", "actor_fc_scale"], lambda v: is_number(v) and v > 0, "must be a positive number")
rule(
    [
        "grad_clip_norm",
        "alpha",
        "alpha_actor",
        "alpha_critic",
        "actor_noise",
        "actor_noise_clip",
        "bc_flow_loss_coef",
        "q_loss_coef",
    ],
    lambda v: is_number(v) and v >= 0,
    "must be a non-negative number",
)
rule(["discount"], lambda v: is_number(v) and 0 <= v <= 1, "must be in [0, 1]")
rule(["optimizer_beta1", "optimizer_beta2", "t_epsilon"], lambda v: is_number(v) and 0 <= v < 1, "must be in [0, 1)")
rule(["tau"], lambda v: is_number(v) and 0 < v <= 1, "must be in (0, 1]")
rule(["expectile"], lambda v: is_number(v) and 0 < v < 1, "must be in (0, 1)")
rule(["denoise_timesteps", "max_k_backprop"], is_power_of_two, "must be a power of two (1, 2, 4, 8, ...)")
rule(
    ["batch_size", "actor_layer_size", "value_layer_size", "num_critics", "flow_steps", "actor_freq"],
    lambda v: is_integer(v) and v >= 1,
    "must be a positive integer",
)
rule(["actor_num_layers", "value_num_layers"], lambda v: is_integer(v) and v >= 0, "must be a non-negative integer")
rule(["q_agg"], lambda v: v in ("mean", "min"), "must be 'mean' or 'min'")
rule(["encoder"], lambda v: v is None or v in ENCODER_NAMES, f"must be none or one of {', '.join(ENCODER_NAMES)}")
rule(
    ["layer_norm", "actor_layer_norm", "normalize_q_loss", "const_std", "shared_adam", "released_update"],
    lambda v: isinstance(v, bool),
    "must be true or false",
)


def invalid(key: str, value: Any, requirement: str) -> SorlError:
    """The one-line error for a bad agent setting."""
    return SorlError(f"invalid agent setting {key}={value!r}: {requirement} (--agent.{key}=...)")


def check_config(config: Any) -> None:
    """Raise a one-line SorlError naming the first field of `config` that breaks its rule, then run the config's
    `cross_checks()` (settings that constrain each other); TypeError for a field without a rule."""
    for f in fields(config):
        if f.name not in RULES:
            raise TypeError(f"{type(config).__name__}.{f.name} has no validation rule in sorl.validation.RULES")
        ok, requirement = RULES[f.name]
        value = getattr(config, f.name)
        if not ok(value):
            raise invalid(f.name, value, requirement)
    cross_checks = getattr(config, "cross_checks", None)
    if callable(cross_checks):
        cross_checks()
