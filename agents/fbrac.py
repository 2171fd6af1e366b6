"""FBRAC: flow behaviour-regularised actor-critic, FQL's "backpropagation through time" baseline (Park, Li & Levine
2025, with the defaults of the public ports' `agents/fbrac.py`, chongyi-zheng/value-flows and ColinQiyangLi/qam).

Two networks are trained together, one Adam step of the summed losses per update:

- `actor_flow`, a flow-matching policy `v(x, a_t, t)` (linear interpolant, `t ~ U[0, 1)`), trained on
  `alpha * bc_flow_loss + q_loss`: `bc_flow_loss` is flow-matching behaviour cloning on the dataset actions, and
  `q_loss = -mean Q(x, a)` where `a = clip(ODE(x, z))` is the action the policy produces from noise `z` with
  `flow_steps` Euler steps, the gradient flowing back through every step of the ODE (no one-step distillation:
  that is what FQL adds). `alpha` weighs the BC term, as in the value-flows port (the qam port writes the same
  trade-off as `bc + q / alpha`); the Q term may be divided by the batch's mean |Q| (`normalize_q_loss`);
- `critic`, a Q ensemble on the flow policy's next actions (`flow_steps` steps, no gradient), EMA target.

(K, N) at test time: K is the number of Euler steps of the same ODE (`sorl.shortcut.euler`, the integrator every
flow policy here uses; FBRAC's field is a plain flow field with no step-size input, so no step code is passed and
any K >= 1 is taken: `K_POWERS_OF_TWO = False`). The flow-matching loss trains the field at every t in [0, 1), so
any K integrates the ODE it learned; the Q term shaped it at `flow_steps` steps (the reference's 10). `max_K` is
therefore None (no trained maximum). N > 1 draws N noises and keeps the action its critic scores highest
(`agg_j Q_j(x, a)` with `q_agg`; `sorl.inference.sample_best_of_n`). Default cell, the reference's and its published
one: (K, N) = (`flow_steps`, 1) = (10, 1).

Parameter convention (as agents/fql.py): each loss receives the dict of online parameters it may move, and every
other network it reads is wrapped in an explicit `stop_gradient`; targets are read from `self`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import flax
import jax
import jax.numpy as jnp

from sorl import baselines, shortcut
from sorl.agent import Agent
from sorl.inference import sample_best_of_n, validate_K_N
from sorl.networks import ShortcutVelocityNet, encode
from sorl.sources import FQL_README, unverified, verified
from sorl.validation import POSITIVE_INTEGER, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]

VALUE_FLOWS_README = "Value Flows reference README (chongyi-zheng/value-flows), 'full list of commands for FBRAC'"
FQL_DISCOUNT = (
    f"the discount of {FQL_README} for this environment (the FQL paper runs its baselines with the same discount); "
    "FBRAC's alpha from the FQL paper's appendix could not be read here, so alpha keeps its default"
)


class FBRACAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'critic', 'actor_flow'}
    target_params: dict[str, Params]  # {'critic'}
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: FBRACConfig = flax.struct.field(pytree_node=False)

    K_POWERS_OF_TWO: ClassVar[bool] = False
    """Euler steps of a plain flow field: any K >= 1 (`sorl.agent.Agent.check_K`)."""
    ENV_SETTINGS = {
        # Value Flows runs FBRAC itself only where FQL's paper has no number (it reuses FQL's for the rest).
        "cube-triple-play": verified(VALUE_FLOWS_README, alpha=100.0, discount=0.995),
        "visual-cube-double-play": verified(VALUE_FLOWS_README, alpha=100.0, discount=0.995),
        "visual-scene-play": verified(VALUE_FLOWS_README, alpha=100.0),
        "visual-puzzle-3x3-play": verified(VALUE_FLOWS_README, alpha=100.0),
        # The long-horizon environments' discount, as FQL's own commands set it; alpha unverified (see FQL_DISCOUNT).
        "antmaze-giant-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-medium-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-large-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "antsoccer-arena-navigate": unverified(FQL_DISCOUNT, discount=0.995),
    }
    PUBLISHED_COLUMN = None  # the published table (experiments.paper.COLUMNS) has no FBRAC column
    PUBLISHED_AS = ""
    PUBLISHED_CELL = (10, 1)
    """(K, N) of its reference policy: the 10 Euler steps it is trained through, one sample: what it acts with when
    no cell is asked for (`runner.evaluation.policy_cell`: online acting, bench, the table's default cell)."""

    # ------------------------------------------------------------------------------------------- networks

    def flow_velocity(self, flow_params: Params) -> shortcut.VelocityFn:
        """The flow field on *encoded* observations; `shortcut.euler` passes its step code d = None through."""
        net = _flow_def(self.config, self.action_dim)
        return lambda obs, a_t, t, d=None: net.apply({"params": flow_params}, obs, a_t, t, encoded=True)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    def flow_actions(self, flow_params: Params, observations: Array, noise: Array, steps: int) -> Array:
        """`clip(ODE(x, noise))` with `steps` Euler steps; differentiable through every step (nothing stopped)."""
        features = encode(self.config.encoder, flow_params, observations)  # once per sample, as the reference
        a = shortcut.euler(self.flow_velocity(flow_params), features, noise, steps)
        return jnp.clip(a, -1.0, 1.0)

    def _noise(self, rng: Array, observations: Array) -> Array:
        return jax.random.normal(rng, (*observations.shape[:-1], self.action_dim))

    # --------------------------------------------------------------------------------------------- losses

    def bc_flow_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> Array:
        """Flow matching with `t ~ U[0, 1)` on `a_t = (1 - t) a0 + t a1`, target velocity `a1 - a0`."""
        a1 = batch["actions"]
        t_rng, noise_rng = jax.random.split(rng)
        t = jax.random.uniform(t_rng, (*a1.shape[:-1], 1))
        a0 = jax.random.normal(noise_rng, a1.shape)
        a_t = shortcut.interpolant(a0, a1, t, eps=0.0)
        flow_params = params["actor_flow"]
        features = encode(self.config.encoder, flow_params, batch["observations"])
        pred = self.flow_velocity(flow_params)(features, a_t, t)
        return jnp.mean((pred - shortcut.flow_matching_target(a0, a1, eps=0.0)) ** 2)

    def q_loss(self, batch: Batch, params: dict[str, Params], noise: Array) -> tuple[Array, Array, Array]:
        """`-mean_x mean_j Q_j(x, clip(ODE(x, z)))` through all `flow_steps` Euler steps (critic frozen); divided by
        the batch's mean |Q| (no gradient through it) with `normalize_q_loss`. Returns (loss, Q, the actions)."""
        observations = batch["observations"]
        actions = self.flow_actions(params["actor_flow"], observations, noise, self.config.flow_steps)
        # Policy improvement must not move the critic.
        critic_params = jax.lax.stop_gradient(self.params["critic"])
        q = self.q_values(critic_params, observations, actions).mean(axis=0)
        loss = -q.mean()
        if self.config.normalize_q_loss:
            loss = loss * jax.lax.stop_gradient(1.0 / jnp.abs(q).mean())
        return loss, q, actions

    def actor_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`alpha * bc_flow_loss + q_loss` (moves the flow policy, never the critic)."""
        flow_rng, noise_rng = jax.random.split(rng)
        bc_flow_loss = self.bc_flow_loss(batch, params, flow_rng)
        q_loss, q, actions = self.q_loss(batch, params, self._noise(noise_rng, batch["observations"]))
        loss = self.config.alpha * bc_flow_loss + q_loss
        mse = jnp.mean((actions - batch["actions"]) ** 2)
        info = {"actor_loss": loss, "bc_flow_loss": bc_flow_loss, "q_loss": q_loss}
        return loss, {**info, "q": q.mean(), "mse": mse}

    def critic_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Mean over members and batch of `(Q_j(x, a) - y)^2`, `y = r + gamma mask agg_j Q'_j(x', clip(ODE(x', z)))`."""
        next_observations = batch["next_observations"]
        # The critic target is a constant for the policy: no gradient reaches the flow through a'.
        flow_params = jax.lax.stop_gradient(params["actor_flow"])
        next_actions = self.flow_actions(flow_params, next_observations, self._noise(rng, next_observations),
                                         self.config.flow_steps)  # fmt: skip
        next_actions = jax.lax.stop_gradient(next_actions)
        target_critic = jax.lax.stop_gradient(self.target_params["critic"])
        next_q = baselines.aggregate(self.q_values(target_critic, next_observations, next_actions), self.config.q_agg)
        target = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        q = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean((q - target) ** 2)
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "q_max": q.max(), "q_min": q.min()}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[FBRACAgent, dict[str, Array]]:
        """One Adam step of both networks on `critic_loss + actor_loss` at the pre-step parameters, then the EMA
        target critic (as the reference). Pure; jit/scan/vmap it outside."""
        new_rng, critic_rng, actor_rng = jax.random.split(self.rng, 3)

        def total(params):
            critic_loss, critic_info = self.critic_loss(batch, params, critic_rng)
            actor_loss, actor_info = self.actor_loss(batch, params, actor_rng)
            return critic_loss + actor_loss, baselines.prefixed(critic=critic_info, actor=actor_info)

        return baselines.joint_update(self, total, new_rng)

    # ------------------------------------------------------------------------------------------ inference

    def aggregated_q(self, observations: Array, actions: Array, K: Array | float | None = None) -> Array:
        """`agg_j Q_j(x, a)` (`q_agg`) of the current critic, `[B]`: the score best-of-N ranks candidates by (the
        verifier probe's, `experiments.verifier`); the critic does not read K, accepted for the probe's signature."""
        return baselines.aggregate(self.q_values(self.params["critic"], observations, actions), self.config.q_agg)

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]` actions of the flow policy with K Euler steps; N > 1 keeps the best of N noises by
        `agg_j Q_j(x, a)` (the project's best-of-N verifier)."""
        validate_K_N(K, N, self.max_K, self)
        flow = self.params["actor_flow"]

        def sample_fn(obs: Array, key: Array) -> Array:
            return self.flow_actions(flow, obs, self._noise(key, obs), K)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.aggregated_q(obs, actions, K)

        return sample_best_of_n(sample_fn, score_fn, observations, rng, N)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: FBRACConfig | None = None
    ) -> FBRACAgent:
        config = FBRACConfig() if config is None else config

        def networks(obs: Array, act: Array, action_dim: int):
            return {
                "critic": (baselines.critic_def(config), (obs, act)),
                "actor_flow": (_flow_def(config, action_dim), (obs, act, act[..., :1])),
            }

        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"]))


def _flow_def(config: FBRACConfig, action_dim: int) -> ShortcutVelocityNet:
    # A shortcut velocity net called without a step code is a plain flow-matching field v(x, a_t, t).
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return ShortcutVelocityNet(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FBRACConfig(baselines.BaselineConfig):
    """The reference ports' `agents/fbrac.py` keys and defaults; per-environment values: `FBRACAgent.ENV_SETTINGS`."""

    q_agg: Literal["mean", "min"] = "mean"
    """How the critics combine in the critic target and the best-of-N verifier (the Q term always averages)."""
    alpha: float = 10.0
    """Weight of the flow-matching BC loss against the Q term (tuned per task; 10 is the value-flows default)."""
    flow_steps: int = setting(10, check=POSITIVE_INTEGER)
    """Euler steps of the ODE the Q term backpropagates through, and of the critic target's next actions."""
    normalize_q_loss: bool = False
    """Divide the Q term by the batch's mean |Q| (no gradient through it)."""


FBRACAgent.Config = FBRACConfig
