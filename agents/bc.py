"""BC (`bc`): Gaussian behaviour cloning, the published table's "BC" column (the FQL paper's BC baseline).

A Gaussian policy `N(mu(x), sigma^2)` whose mean is an MLP (4x512 GELU, no LayerNorm, small-init mean head:
`sorl.baselines.ActorHead`, as the reference's `Actor`) is fitted to the dataset's actions by maximum likelihood
(`bc_loss = -mean log pi(a | x)`); with the default constant std (sigma = 1) that is half the mean squared error plus
a constant, so the mean regresses on the behaviour policy's mean action. At test time the action is the clipped
mean (the reference evaluates with temperature 0).

No Q function, no sampler: K and N do not apply. K is accepted and ignored (`max_K` None), and so is N — with no
critic there is no verifier to rank candidates, and the mean is the policy's one answer. Evaluation grids with K or N
above 1 print one line saying so (`GRID_NOTES`, `runner.evaluation.grid_note`), so a flat row is never mistaken for a
measured scaling curve.

Not flow BC: the shortcut-policy behaviour cloning that shares SORL's policy class is `flow-bc` (agents/flow_bc.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp

from sorl import baselines
from sorl.agent import Agent
from sorl.inference import validate_K_N
from sorl.validation import check_config

Array = jax.Array
Params = Any
Batch = dict[str, Array]


class BCAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'actor'}
    target_params: dict[str, Params]  # {} (nothing bootstraps)
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: BCConfig = flax.struct.field(pytree_node=False)

    GRID_NOTES: ClassVar[dict[str, str]] = {
        "K": "it has no multi-step sampler",
        "N": "it has no critic to rank candidates",
    }
    """Test-time axes that do not change this agent's action, and why (see `runner.evaluation.grid_note`)."""

    # Nothing is tuned per environment (no ENV_SETTINGS).
    PUBLISHED_COLUMN = "BC"
    PUBLISHED_AS = (
        "bc: Gaussian BC (agents/bc.py), 4x512 MLP, maximum likelihood with std 1, the mean action at test time"
    )

    def policy(self, actor_params: Params, observations: Array) -> tuple[Array, Array]:
        """`(mean, log_std)` of the Gaussian policy."""
        return baselines.actor_head(self.config, self.action_dim).apply({"params": actor_params}, observations)

    # --------------------------------------------------------------------------------------------- losses

    def bc_loss(self, batch: Batch, actor_params: Params) -> tuple[Array, dict[str, Array]]:
        """`-mean log pi(a | x)` over the batch's dataset actions."""
        mean, log_std = self.policy(actor_params, batch["observations"])
        log_prob = baselines.gaussian_log_prob(mean, log_std, batch["actions"])
        loss = -log_prob.mean()
        mse = jnp.mean((mean - batch["actions"]) ** 2)
        return loss, {"actor_loss": loss, "bc_log_prob": log_prob.mean(), "mse": mse, "std": jnp.exp(log_std).mean()}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[BCAgent, dict[str, Array]]:
        """One Adam step of the policy on `bc_loss`. Pure; jit/scan/vmap it outside."""

        def total(params):
            loss, info = self.bc_loss(batch, params["actor"])
            return loss, baselines.prefixed(actor=info)

        # The update draws no randomness; the agent's key still advances, as for every agent.
        return baselines.joint_update(self, total, jax.random.split(self.rng)[0])

    # ------------------------------------------------------------------------------------------ inference

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]`: the clipped Gaussian mean, whatever K and N (see the module docstring)."""
        validate_K_N(K, N, self.max_K)
        mean, _ = self.policy(self.params["actor"], observations)
        return jnp.clip(mean, -1, 1)

    def exploration_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """Online data collection: a draw of the Gaussian policy (the reference acts at temperature 1)."""
        validate_K_N(K, N, self.max_K)
        mean, log_std = self.policy(self.params["actor"], observations)
        return baselines.gaussian_sample(mean, log_std, rng)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: BCConfig | None = None
    ) -> BCAgent:
        config = BCConfig() if config is None else config
        networks = lambda obs, act, action_dim: {"actor": (baselines.actor_head(config, action_dim), (obs,))}  # noqa: E731
        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, targets=[]))


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BCConfig:
    """The FQL paper's BC baseline: the reference `Actor` (4x512 GELU MLP, no LayerNorm), Adam 3e-4, batch 256."""

    lr: float = 3e-4
    """Adam learning rate."""
    grad_clip_norm: float = 0.0
    """Global-norm gradient clip (0, the reference's choice, disables clipping)."""
    batch_size: int = 256
    """Dataset transitions per gradient update."""
    actor_layer_size: int = 512
    """Width of each hidden layer of the Gaussian policy's MLP."""
    actor_num_layers: int = 4
    """Hidden layers of the Gaussian policy's MLP."""
    actor_layer_norm: bool = False
    """LayerNorm in the policy's hidden layers."""
    const_std: bool = True
    """Std fixed at 1 (maximum likelihood is then mean squared error); false learns a log-std."""
    actor_fc_scale: float = 0.01
    """Initialisation scale of the policy's mean head."""
    encoder: str | None = None
    """Image encoder of pixel tasks (impala_small in the reference); none feeds states to the MLP."""

    def validate(self) -> None:
        check_config(self)


BCAgent.Config = BCConfig
