"""Agent config: reference keys and defaults, string overrides, JSON round trip, one-line errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import pytest

from agents import AGENTS, get_agent
from agents.sorl import SORLAgent, SORLConfig
from sorl.config import apply_overrides, config_from_dict, config_to_dict, field_docs
from sorl.errors import SorlError

REFERENCE_KEYS = [
    "lr",
    "grad_clip_norm",
    "optimizer_beta1",
    "optimizer_beta2",
    "batch_size",
    "actor_layer_size",
    "actor_num_layers",
    "value_layer_size",
    "value_num_layers",
    "layer_norm",
    "actor_layer_norm",
    "discount",
    "tau",
    "q_agg",
    "alpha",
    "bc_flow_loss_coef",
    "q_loss_coef",
    "normalize_q_loss",
    "t_epsilon",
    "denoise_timesteps",
    "max_k_backprop",
]


def test_keys_and_defaults_follow_the_reference():
    names = [f.name for f in dataclasses.fields(SORLConfig)]
    assert names == [*REFERENCE_KEYS, "num_critics", "released_update", "encoder"]  # encoder: pixel tasks
    c = SORLConfig()
    assert (c.lr, c.grad_clip_norm, c.optimizer_beta1, c.optimizer_beta2, c.batch_size) == (1e-4, 1.0, 0.9, 0.999, 256)
    assert (c.actor_layer_size, c.actor_num_layers, c.value_layer_size, c.value_num_layers) == (512, 4, 512, 4)
    assert (c.layer_norm, c.actor_layer_norm, c.num_critics) == (True, False, 2)
    assert (c.discount, c.tau, c.q_agg, c.alpha, c.bc_flow_loss_coef) == (0.99, 0.005, "mean", 10.0, 10.0)
    assert (c.normalize_q_loss, c.t_epsilon, c.denoise_timesteps, c.max_k_backprop) == (True, 1e-5, 8, 8)
    assert c.released_update is False
    assert SORLAgent.Config is SORLConfig
    c.validate()


def test_overrides_are_coerced_to_field_types():
    c = apply_overrides(
        SORLConfig(),
        {
            "lr": "3e-4",
            "batch_size": "128",
            "q_loss_coef": "500",
            "discount": "0.995",
            "q_agg": "min",
            "normalize_q_loss": "false",
            "released-update": "1",
            "denoise_timesteps": "1.6e1",
        },
    )
    assert c.lr == 3e-4 and isinstance(c.lr, float)
    assert c.batch_size == 128 and isinstance(c.batch_size, int)
    assert c.q_loss_coef == 500.0 and isinstance(c.q_loss_coef, float)
    assert (c.discount, c.q_agg, c.normalize_q_loss, c.released_update, c.denoise_timesteps) == (
        0.995,
        "min",
        False,
        True,
        16,
    )
    assert apply_overrides(SORLConfig(), {"layer_norm": "True"}).layer_norm is True
    assert apply_overrides(SORLConfig(), {"layer_norm": "0"}).layer_norm is False


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(SorlError) as err:
        apply_overrides(SORLConfig(), {"q_los_coef": "10"})
    message = str(err.value)
    assert "--agent.q_los_coef" in message and "did you mean: q_loss_coef" in message
    assert all(key in message for key in REFERENCE_KEYS) and "\n" not in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("batch_size", "abc", "expected int"),
        ("batch_size", "2.5", "expected int"),
        ("lr", "fast", "expected float"),
        ("normalize_q_loss", "maybe", "expected bool"),
        ("q_agg", "max", "expected one of 'mean', 'min'"),
        # Well-typed but invalid values are caught by validate().
        ("lr", "-1e-4", "lr=-0.0001: must be a positive number"),
        ("batch_size", "0", "batch_size=0: must be a positive integer"),
        ("denoise_timesteps", "6", "must be a power of two"),
        ("max_k_backprop", "16", "at most denoise_timesteps=8"),
        ("discount", "1.5", "must be in [0, 1]"),
        ("tau", "0", "must be in (0, 1]"),
    ],
)
def test_bad_values_name_key_and_type(key, value, expected):
    with pytest.raises(SorlError) as err:
        apply_overrides(SORLConfig(), {key: value})
    message = str(err.value)
    assert key in message and expected in message and "\n" not in message


def test_json_round_trip_and_errors():
    c = apply_overrides(SORLConfig(), {"q_agg": "min", "q_loss_coef": "500", "released_update": "true"})
    assert config_from_dict(SORLConfig, json.loads(json.dumps(config_to_dict(c)))) == c
    assert config_from_dict(SORLConfig, {"lr": 1}).lr == 1.0  # JSON integers are fine for float fields
    with pytest.raises(SorlError, match="valid keys"):
        config_from_dict(SORLConfig, {"learning_rate": 1e-3})
    with pytest.raises(SorlError, match="batch_size"):
        config_from_dict(SORLConfig, {"batch_size": "many"})


@dataclass(frozen=True)
class _Other:
    hidden: tuple[int, ...] = (256, 256)
    encoder: str | None = None
    steps: int | None = 10
    mode: Literal["a", "b"] = "a"


def test_generic_field_types():
    c = apply_overrides(_Other(), {"hidden": "64,32", "encoder": "impala", "steps": "none", "mode": "b"})
    assert c == _Other(hidden=(64, 32), encoder="impala", steps=None, mode="b")
    assert apply_overrides(_Other(), {"encoder": "None"}).encoder is None
    assert config_from_dict(_Other, config_to_dict(c)) == c


def test_agent_registry():
    assert get_agent("sorl") is SORLAgent and AGENTS["sorl"] is SORLAgent
    with pytest.raises(SorlError) as err:
        get_agent("sorll")
    message = str(err.value)
    assert "did you mean: sorl" in message and "valid agents:" in message
    assert all(name in message for name in AGENTS) and "\n" not in message


@dataclass(frozen=True)
class _Parent:
    a: int = 1
    """The parent's a,
    on two lines."""
    b: float = 2.0
    c: str = "x"  # a comment is not a meaning
    """The parent's c."""


@dataclass(frozen=True)
class _Child(_Parent):
    c: str = "y"
    """The child's own c."""


def test_field_docs_read_the_docstring_under_each_field():
    assert field_docs(_Parent) == {"a": "The parent's a, on two lines.", "b": "", "c": "The parent's c."}
    assert field_docs(_Child) == {"a": "The parent's a, on two lines.", "b": "", "c": "The child's own c."}
    generated = dataclasses.make_dataclass("G", [("k", int, dataclasses.field(default=3, metadata={"doc": "K."}))])
    assert field_docs(generated) == {"k": "K."}  # a generated dataclass has no source: its metadata speaks
    for name, agent_cls in AGENTS.items():  # every agent setting means something (sorl train --help shows it)
        docs = field_docs(agent_cls.Config)
        assert all(docs.values()), (name, [k for k, v in docs.items() if not v])
    assert field_docs(get_agent("flow-bc").Config)["alpha"] == field_docs(SORLConfig)["alpha"]
