"""The agent contract: what the training loop, evaluation and checkpoints need from an agent, and its defaults.

An agent is an immutable pytree (a `flax.struct.PyTreeNode` subclass of `Agent`) holding everything that changes
during training — parameters, optimiser state, its PRNG key, a step count — so one value can be checkpointed,
restored exactly, and vmapped over seeds. Its settings are a frozen dataclass, `Config`, passed at creation and
kept as a static field (`flax.struct.field(pytree_node=False)`), whose `validate()` raises one-line errors
(`sorl.validation.check_config`).

Every agent implements:

- `create(rng, example_observations, example_actions, config) -> agent` (a classmethod): a fresh agent, its
  parameters initialised from `rng`;
- `update(batch) -> (agent, info)`: one gradient update on a batch (`observations`, `actions`, `rewards`,
  `masks`, `next_observations`, plus what `prepare_dataset` adds), pure, so that it can be jitted, scanned and
  vmapped; `info` is a flat dict of scalars (the `train.csv` columns);
- `sample_actions(observations, rng, K=1, N=1) -> actions`: `[B, A]` actions in [-1, 1] with K sampling steps
  and best-of-N candidates (docs/method.md, "Test-time scaling").

and may override these hooks, whose defaults suit most agents:

- `max_K`: the largest K it was trained for (None: no maximum, or K does not apply);
- `check_K(K, max_K)` (a classmethod) and `K_POWERS_OF_TWO`: which sampling step counts it takes, refusing any other
  in one line that names the agent and what it takes. The default is the shortcut sampler's rule, a power of two up
  to `max_K`; an agent whose sampler has no step-size input (a plain flow field's Euler steps) sets
  `K_POWERS_OF_TWO = False` and takes any K >= 1 up to `max_K`. Every place that checks a K against a known agent
  asks it (`sorl.inference.validate_K_N`, the evaluation grid, the online acting policy, videos, sweep specs, the
  probes); where the agent is not known yet a K need only be a positive integer
  (`runner.evaluation.check_grid_values`);
- `GRID_NOTES`: the test-time axes ("K", "N") that cannot change its action, and why (printed once per
  evaluation grid, `runner.evaluation.grid_note`);
- `PUBLISHED_CELL`: the (K, N) cell its published numbers are, where its policy is one particular cell rather
  than the published table's N = 1 (`experiments.paper.PUBLISHED_CELL`): IFQL's is (10, 32), 32 candidates of 10
  flow steps (said in the same grid note);
- `train_update(batch)`: the update as the training loop runs it (default `update`; SORL draws its step counts
  from a schedule shared by vmapped seeds);
- `prepare_dataset(dataset)`: derive extra dataset keys once before training (default: none; ReBRAC adds the
  next dataset action);
- `exploration_actions(observations, rng, K, N)`: how it acts while collecting data in online fine-tuning
  (default `sample_actions`, already stochastic for the flow policies; the Gaussian and deterministic policies
  add their exploration noise, as the reference's `temperature=1`).

and may declare, as class attributes, what the rest of the suite reads about it:

- `ENV_SETTINGS`, `ONLINE_ENV_SETTINGS`: its per-environment settings, offline and for online runs, each with its
  source and verified mark (`sorl.sources`; resolved for a task by `envs.registry.agent_env_settings`);
- `PUBLISHED_COLUMN`, `PUBLISHED_AS`: the published table's column it is compared with (`sorl table --compare
  paper`), and what produces our side of it;
- `OFFLINE`: whether it trains offline (default True); an online-only agent (SAC) sets False, and a run with
  offline steps (`--steps` > 0) is refused in one line before anything is written (`runner.train.check_offline`).

Its `Config` declares each setting's check next to the field (`sorl.validation.setting`; shared names such as `lr`
have one in `sorl.validation.SHARED`). A new agent is one file in `agents/` defining all of this and one line in
`agents.AGENTS`; the CLI, its help, the sweeps, tables, plots, bench, checkpoints and `sorl train --agent NAME`
pick it up from there (tests/test_agent_contract.py checks the contract for every registered agent).

A variant made by subclassing an agent (say, SORL with another `update`) needs a `Config` class of its own, even an
empty subclass of the parent's: jaxlib's PyTreeDef equality compares a dataclass node's fields and static data but
not its type, so a subclass whose config equals its parent's can be served the parent's compiled programs
(CHANGELOG.md). `check_own_config` refuses such a class where agents are looked up.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import flax
import jax
import numpy as np

from sorl.errors import SorlError
from sorl.shortcut import is_power_of_two
from sorl.sources import Tuned

Array = jax.Array
Batch = dict[str, Array]


class Agent(flax.struct.PyTreeNode):
    """Base class of every agent: the contract above, with its default hooks. Declares no fields."""

    Config: ClassVar[type]
    GRID_NOTES: ClassVar[dict[str, str]] = {}
    """Test-time axes that do not change the action, and why (`runner.evaluation.grid_note`)."""
    ENV_SETTINGS: ClassVar[Mapping[str, Tuned]] = {}
    """Environment name -> its settings (config fields), their source and verified mark (`sorl.sources`); a
    `visual-` environment's entry goes on top of its state twin's. Environments not listed use the defaults."""
    ONLINE_ENV_SETTINGS: ClassVar[Mapping[str, Tuned]] = {}
    """Environment name -> settings of a run with --online-steps > 0 (its offline phase too), on top of
    `ENV_SETTINGS`: only where the reference's offline-to-online command differs from its offline one."""
    PUBLISHED_COLUMN: ClassVar[str | None] = None
    """The column of the published table (`experiments.paper.PUBLISHED`) this agent is compared with; None: none."""
    PUBLISHED_AS: ClassVar[str] = ""
    """What produces our side of that column (the agent and its update), for `experiments.paper.our_side`."""
    PUBLISHED_CELL: ClassVar[tuple[int, int] | None] = None
    """(K, N) of its published numbers where its policy is one particular cell (`runner.evaluation.grid_note` says
    it); None: the published table's N = 1 (`experiments.paper.PUBLISHED_CELL`)."""
    OFFLINE: ClassVar[bool] = True
    """Whether it trains offline; False: online only (`--steps 0 --online-steps N`), offline steps refused."""
    K_POWERS_OF_TWO: ClassVar[bool] = True
    """The sampling step counts it takes (`check_K`): powers of two (the shortcut sampler's step codes d = log2 K),
    or, False, any K >= 1 (a sampler without a step-size input); either up to `max_K` where it has one."""

    @classmethod
    def create(cls, rng: Array | int, example_observations: Array, example_actions: Array, config: Any = None):
        raise NotImplementedError(f"{cls.__name__}.create")

    def update(self, batch: Batch) -> tuple[Agent, dict[str, Array]]:
        raise NotImplementedError(f"{type(self).__name__}.update")

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        raise NotImplementedError(f"{type(self).__name__}.sample_actions")

    @property
    def max_K(self) -> int | None:
        """The largest sampling step count this agent was trained for; None: no maximum (or K does not apply)."""
        return None

    @classmethod
    def takes_K(cls, K: int, max_K: int | None = None) -> bool:
        """Whether this agent samples with `K` steps (`K_POWERS_OF_TWO`, at most `max_K`)."""
        if not is_positive_int(K) or (max_K is not None and max_K < K):
            return False
        return is_power_of_two(K) or not cls.K_POWERS_OF_TWO

    @classmethod
    def K_accepted(cls, max_K: int | None = None) -> str:
        """What `takes_K` accepts, in words, for the refusals: 'K = 1, 2, 4 or 8', 'any K >= 1', ..."""
        if max_K is None:
            return "any power of two K (1, 2, 4, 8, ...)" if cls.K_POWERS_OF_TWO else "any K >= 1"
        if not cls.K_POWERS_OF_TWO:
            return f"K = 1 to {max_K}" if max_K > 1 else "K = 1"
        Ks = [str(2**i) for i in range(max(max_K, 1).bit_length())]
        return "K = " + (f"{', '.join(Ks[:-1])} or {Ks[-1]}" if len(Ks) > 1 else Ks[0])

    @classmethod
    def check_K(cls, K: int, max_K: int | None = None, *, name: str | None = None, what: str | None = None) -> None:
        """Raise a one-line SorlError unless this agent takes `K` sampling steps; the line ends naming the agent
        (`name`, default its registry name) and what it takes. `what` replaces the line's opening ('K=3: the number of
        sampling steps', the online phase's '--online-K 3: the acting policy's sampling steps')."""
        takes = f"{name or agent_name(cls)} takes {cls.K_accepted(max_K)}"
        what = what or f"K={K}: the number of sampling steps"
        if not is_positive_int(K):
            must = "a power of two (1, 2, 4, 8, ...)" if cls.K_POWERS_OF_TWO else "a positive integer"
            raise SorlError(f"{what} must be {must}; {takes}")
        if cls.K_POWERS_OF_TWO and not is_power_of_two(K):
            raise SorlError(f"{what} must be a power of two (1, 2, 4, 8, ...); {takes}")
        if max_K is not None and max_K < K:
            raise SorlError(
                f"K={K} is above the largest step count this agent was trained for ({max_K}, its denoise_timesteps); "
                f"use K <= {max_K} or train with --agent.denoise_timesteps={K}; {takes}"
            )

    def train_update(self, batch: Batch) -> tuple[Agent, dict[str, Array]]:
        """The update as the training loop runs it."""
        return self.update(batch)

    def exploration_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]` actions for collecting online data (default: the evaluation policy `sample_actions`)."""
        return self.sample_actions(observations, rng, K=K, N=N)

    @staticmethod
    def prepare_dataset(dataset: Mapping[str, Array]) -> Mapping[str, Array]:
        """The training dataset with any keys this agent's batches need beyond the standard ones."""
        return dataset


def is_positive_int(n: Any) -> bool:
    return isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1


def K_rule(agent: Any) -> type:
    """The class whose `check_K` decides for `agent` (an agent, an agent class, or anything with a `max_K`): its
    own class where it follows the contract, else `Agent` (the default rule)."""
    cls = agent if isinstance(agent, type) else type(agent)
    return cls if issubclass(cls, Agent) else Agent


def agent_name(agent_cls: type) -> str:
    """The name `agent_cls` is registered under in `agents.AGENTS` (where that registry is loaded), else its class
    name ('this agent' for the contract itself). Read from the loaded module: the core does not import the agents."""
    if agent_cls is Agent:
        return "this agent"
    registry = getattr(sys.modules.get("agents"), "AGENTS", None) or {}
    for name, cls in registry.items():
        if cls is agent_cls:
            return name
    return agent_cls.__name__


def check_own_config(agent_cls: type) -> None:
    """Raise SorlError if `agent_cls` shares its `Config` class with an agent class it derives from (see above)."""
    config = getattr(agent_cls, "Config", None)
    if config is None:
        return
    for base in agent_cls.__mro__[1:]:
        if base is not Agent and issubclass(base, Agent) and getattr(base, "Config", None) is config:
            raise SorlError(
                f"agent class {agent_cls.__name__} has the Config of {base.__name__}: give it its own (e.g. "
                f"`class {agent_cls.__name__}Config({config.__name__}): pass`, then `{agent_cls.__name__}.Config = "
                f"{agent_cls.__name__}Config`), or JAX may run {base.__name__}'s compiled programs for it"
            )
