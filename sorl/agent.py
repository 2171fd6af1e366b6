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

- `max_K`: the largest K it was trained for (None: K does not apply, every power of two is accepted);
- `GRID_NOTES`: the test-time axes ("K", "N") that cannot change its action, and why (printed once per
  evaluation grid, `runner.evaluation.grid_note`);
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
  paper`), and what produces our side of it.

Its `Config` declares each setting's check next to the field (`sorl.validation.setting`; shared names such as `lr`
have one in `sorl.validation.SHARED`). A new agent is one file in `agents/` defining all of this and one line in
`agents.AGENTS`; the CLI, its help, the sweeps, tables, plots, bench, checkpoints and `sorl train --agent NAME`
pick it up from there (tests/test_agent_contract.py checks the contract for every registered agent).

A variant made by subclassing an agent (say, SORL with another `update`) needs a `Config` class of its own, even an
empty subclass of the parent's: jaxlib's PyTreeDef equality compares a dataclass node's fields and static data but
not its type, so a subclass whose config equals its parent's can be served the parent's compiled programs (it did,
in about one trace in ten, in a probe). `check_own_config` refuses such a class where agents are looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax
import jax

from sorl.errors import SorlError
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

    @classmethod
    def create(cls, rng: Array | int, example_observations: Array, example_actions: Array, config: Any = None):
        raise NotImplementedError(f"{cls.__name__}.create")

    def update(self, batch: Batch) -> tuple[Agent, dict[str, Array]]:
        raise NotImplementedError(f"{type(self).__name__}.update")

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        raise NotImplementedError(f"{type(self).__name__}.sample_actions")

    @property
    def max_K(self) -> int | None:
        """The largest sampling step count this agent was trained for; None where K does not apply."""
        return None

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
