"""Agents by name: each is an immutable pytree class with `Config`, `create`, `update` and `sample_actions`.

Everything about an agent is in its own file (`sorl.agent`: its settings' checks, per-environment settings,
published column, hooks); its line in `AGENTS` is the only other change a new agent needs. Every list of agents
(CLI help and `--agent` values, `sorl table --compare paper`, sweeps, bench, contract tests) is this one.
"""

from __future__ import annotations

from agents.bc import BCAgent
from agents.cac import CACAgent
from agents.fawac import FAWACAgent
from agents.fbrac import FBRACAgent
from agents.flow_bc import FlowBCAgent
from agents.fql import FQLAgent
from agents.idql import IDQLAgent
from agents.ifql import IFQLAgent
from agents.iql import IQLAgent
from agents.rebrac import ReBRACAgent
from agents.sac import SACAgent
from agents.sorl import SORLAgent
from agents.srpo import SRPOAgent
from sorl.agent import check_own_config
from sorl.errors import SorlError, suggest

AGENTS: dict[str, type] = {
    "sorl": SORLAgent,
    "fql": FQLAgent,
    "rebrac": ReBRACAgent,
    "iql": IQLAgent,
    "bc": BCAgent,  # Gaussian BC, the published table's BC column
    "flow-bc": FlowBCAgent,  # behaviour cloning with SORL's shortcut policy (CHANGELOG: its former name)
    "ifql": IFQLAgent,  # flow BC policy, the best of N flow samples by an IQL critic (FQL's IDQL-for-flows baseline)
    "fawac": FAWACAgent,  # flow policy, advantage-weighted flow matching (FQL's AWR-for-flows baseline)
    "fbrac": FBRACAgent,  # flow policy, Q term backpropagated through its Euler ODE (FQL's BPTT baseline)
    "idql": IDQLAgent,  # DDPM behaviour policy, the best of N diffusion samples by an IQL critic (IDQL)
    "srpo": SRPOAgent,  # deterministic one-step policy, score-regularised by a pretrained diffusion behaviour model
    "cac": CACAgent,  # consistency policy, consistency training + Q term through its sampling steps (FQL's CAC)
    "sac": SACAgent,  # online only: tanh-Gaussian soft actor-critic; with --balanced-sampling, RLPD
}


def get_agent(name: str) -> type:
    """The agent class registered as `name`; SorlError listing the valid names otherwise."""
    try:
        agent_cls = AGENTS[name]
    except KeyError:
        valid = sorted(AGENTS)
        raise SorlError(f"unknown agent '{name}'{suggest(name, valid)}; valid agents: {', '.join(valid)}") from None
    check_own_config(agent_cls)
    return agent_cls
