"""Per-environment settings as agents declare them: the values, where they come from, and whether that was verified.

An agent lists its per-environment values in its own file, as class attributes of the agent (`sorl.agent.Agent`):

    ENV_SETTINGS = {"cube-single-play": verified(FQL_README, alpha=300.0, discount=0.99, q_agg="mean"), ...}
    ONLINE_ENV_SETTINGS = {"antsoccer-arena-navigate": verified(FQL_ONLINE, alpha=30.0)}

keyed by environment name (`envs.registry.ENVIRONMENTS`). `envs.registry.agent_env_settings` resolves them for a
task (a pixel task starts from its state twin's values; online entries go on top when `--online-steps` > 0).
Verified = read in the reference authors' own published commands; unverified entries are footnoted by
`sorl table --compare`. The reference documents' names, which several agents cite, are below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tuned:
    """An agent's settings on one environment: config field -> value, their source, and whether it was verified."""

    values: Mapping[str, Any]
    source: str
    verified: bool


def verified(source: str, **values: Any) -> Tuned:
    """Values read in the reference authors' own published commands (`source` names them)."""
    return Tuned(values, source, True)


def unverified(source: str, **values: Any) -> Tuned:
    """Values not read in the authors' own commands (`source` says where they come from instead)."""
    return Tuned(values, source, False)


SORL_README = "SORL's released README, all-tasks command list"
FQL_README = "FQL reference README, 'Reproducing the main results' command list"
FQL_ONLINE = "FQL reference README, 'Offline-to-online RL' command list"
FQL_PIXELS = "FQL reference README, 'FQL on pixel-based OGBench' command list"
FQL_PIXEL_EXAMPLE = "FQL reference README, its pixel-based example command for this agent"
RECALLED = "the FQL paper's appendix tables as recalled; the appendix could not be read here"
VISUAL = "; the same values appear in FQL's/Value Flows' commands for this environment's visual version"
THIRD_PARTY_IQL = "; matches a third-party rerun's table of FQL's settings (Xyu-Chern/DOAL, utils/hps.py)"
