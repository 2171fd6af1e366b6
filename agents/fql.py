"""FQL: flow Q-learning (Park, Li & Levine 2025), with the defaults of its reference code.

Three networks are trained together, one gradient step of the summed losses per update:

- `actor_bc_flow`, a flow-matching behaviour-cloning policy `v(x, a_t, t)` (`bc_flow_loss`; `t ~ U[0, 1)`, linear
  interpolant, sampled with `flow_steps` = 10 Euler steps);
- `actor_onestep_flow`, a one-step policy `mu(x, z)` that maps noise `z` to an action (`actor_loss`): distilled
  towards the flow policy's 10-step output from the same noise (`distillation_loss`, weight `alpha`, no gradient
  into the flow policy) while maximising the critic (`q_loss`, critic frozen);
- `critic`, a Q ensemble on one-step-policy next actions (`critic_loss`), with an EMA target.

Actions at test time come from `mu` (K is ignored: the policy has no step count); best-of-N draws N noises and keeps
the action the critic scores highest (`agg_j Q_j(x, a)` with `q_agg`).

Parameter convention (as agents/sorl.py): each loss receives the dict of online parameters it may move, and every
other network it reads is wrapped in an explicit `stop_gradient`; targets are read from `self`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sorl import baselines, shortcut
from sorl.agent import Agent
from sorl.inference import sample_best_of_n, validate_K_N
from sorl.networks import MLP, ShortcutVelocityNet, encode, encoder_module
from sorl.sources import FQL_ONLINE, FQL_PIXELS, FQL_README, verified
from sorl.validation import POSITIVE_INTEGER, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]


class OneStepPolicy(nn.Module):
    """`mu(x, z)`: an MLP on `[observations, noise]` returning an (unclipped) action."""

    action_dim: int
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    layer_norm: bool = False
    encoder: str | None = None

    @nn.compact
    def __call__(self, observations: Array, noise: Array) -> Array:
        if self.encoder is not None:  # its own encoder, as the reference's actor_onestep_flow
            observations = encoder_module(self.encoder)(observations)
        x = jnp.concatenate([observations, noise], axis=-1)
        return MLP((*self.hidden_dims, self.action_dim), layer_norm=self.layer_norm)(x)


class FQLAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'critic', 'actor_bc_flow', 'actor_onestep_flow'}
    target_params: dict[str, Params]  # {'critic'}
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: FQLConfig = flax.struct.field(pytree_node=False)

    GRID_NOTES: ClassVar[dict[str, str]] = {"K": "its one-step policy has no step count"}
    """Test-time axes that do not change the action (`runner.evaluation.grid_note`)."""

    ENV_SETTINGS = {
        "antmaze-large-navigate": verified(FQL_README, alpha=10.0, discount=0.99, q_agg="min"),
        "antmaze-giant-navigate": verified(FQL_README, alpha=10.0, discount=0.995, q_agg="min"),
        "humanoidmaze-medium-navigate": verified(FQL_README, alpha=30.0, discount=0.995, q_agg="mean"),
        "humanoidmaze-large-navigate": verified(FQL_README, alpha=30.0, discount=0.995, q_agg="mean"),
        "antsoccer-arena-navigate": verified(FQL_README, alpha=10.0, discount=0.995, q_agg="mean"),
        "cube-single-play": verified(FQL_README, alpha=300.0, discount=0.99, q_agg="mean"),
        "cube-double-play": verified(FQL_README, alpha=300.0, discount=0.99, q_agg="mean"),
        "scene-play": verified(FQL_README, alpha=300.0, discount=0.99, q_agg="mean"),
        "puzzle-3x3-play": verified(FQL_README, alpha=1000.0, discount=0.99, q_agg="mean"),
        "puzzle-4x4-play": verified(FQL_README, alpha=1000.0, discount=0.99, q_agg="mean"),
        # The released pixel-task commands, where they differ from the state twin's values.
        "visual-cube-single-play": verified(FQL_PIXELS, alpha=300.0),
        "visual-cube-double-play": verified(FQL_PIXELS, alpha=100.0),
        "visual-scene-play": verified(FQL_PIXELS, alpha=100.0),
        "visual-puzzle-3x3-play": verified(FQL_PIXELS, alpha=300.0),
        "visual-puzzle-4x4-play": verified(FQL_PIXELS, alpha=300.0),
    }
    ONLINE_ENV_SETTINGS = {
        # Where the README's offline-to-online commands differ from its offline ones. The same README gives
        # cube-double, scene and puzzle-4x4 online with their offline alpha (300, 300, 1000): no entry needed.
        "humanoidmaze-medium-navigate": verified(FQL_ONLINE, alpha=100.0),  # offline: 30
        "antsoccer-arena-navigate": verified(FQL_ONLINE, alpha=30.0),  # offline: 10
    }
    PUBLISHED_COLUMN = "FQL"
    PUBLISHED_AS = "fql: the FQL reference's update, one Adam step of the summed losses per update"

    # ------------------------------------------------------------------------------------------- networks

    def flow_velocity(self, flow_params: Params) -> shortcut.VelocityFn:
        """The flow field on *encoded* observations (`flow_features`; the observations without an encoder)."""
        net = _flow_def(self.config, self.action_dim)
        # A plain flow field: the step code d that shortcut.euler passes through is None and not an input.
        return lambda obs, a_t, t, d=None: net.apply({"params": flow_params}, obs, a_t, t, encoded=True)

    def flow_features(self, flow_params: Params, observations: Array) -> Array:
        """The flow policy's own encoder's features (encoded once per sample, as the reference)."""
        return encode(self.config.encoder, flow_params, observations)

    def onestep_actions(self, onestep_params: Params, observations: Array, noise: Array) -> Array:
        return _onestep_def(self.config, self.action_dim).apply({"params": onestep_params}, observations, noise)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    def flow_actions(self, flow_params: Params, observations: Array, noise: Array) -> Array:
        """The flow BC policy's action from `noise` with `flow_steps` Euler steps, clipped."""
        features = self.flow_features(flow_params, observations)
        a = shortcut.euler(self.flow_velocity(flow_params), features, noise, self.config.flow_steps)
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
        flow_params = params["actor_bc_flow"]
        pred = self.flow_velocity(flow_params)(self.flow_features(flow_params, batch["observations"]), a_t, t)
        return jnp.mean((pred - shortcut.flow_matching_target(a0, a1, eps=0.0)) ** 2)

    def distillation_loss(self, batch: Batch, params: dict[str, Params], noise: Array) -> tuple[Array, Array]:
        """`mean ||mu(x, z) - flow(x, z)||^2`; the flow policy's action is a fixed target. Returns (loss, mu(x, z))."""
        observations = batch["observations"]
        # The distillation target must not train the flow policy (it learns from bc_flow_loss only).
        target = jax.lax.stop_gradient(
            self.flow_actions(jax.lax.stop_gradient(params["actor_bc_flow"]), observations, noise)
        )
        actions = self.onestep_actions(params["actor_onestep_flow"], observations, noise)
        return jnp.mean((actions - target) ** 2), actions

    def q_loss(self, batch: Batch, onestep_actions: Array) -> tuple[Array, Array]:
        """`-mean Q(x, clip(mu(x, z)))` (ensemble mean, as the reference); optionally divided by `mean |Q|`."""
        # Policy improvement must not move the critic.
        critic_params = jax.lax.stop_gradient(self.params["critic"])
        q = self.q_values(critic_params, batch["observations"], jnp.clip(onestep_actions, -1, 1)).mean(axis=0)
        loss = -q.mean()
        if self.config.normalize_q_loss:
            loss = loss * jax.lax.stop_gradient(1.0 / jnp.abs(q).mean())
        return loss, q

    def actor_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`bc_flow_loss + alpha * distillation_loss + q_loss` (moves both policies, never the critic)."""
        flow_rng, noise_rng = jax.random.split(rng)
        bc_flow_loss = self.bc_flow_loss(batch, params, flow_rng)
        noise = self._noise(noise_rng, batch["observations"])
        distill_loss, actions = self.distillation_loss(batch, params, noise)
        q_loss, q = self.q_loss(batch, actions)
        loss = bc_flow_loss + self.config.alpha * distill_loss + q_loss
        mse = jnp.mean((jnp.clip(actions, -1, 1) - batch["actions"]) ** 2)
        info = {"actor_loss": loss, "bc_flow_loss": bc_flow_loss, "distill_loss": distill_loss, "q_loss": q_loss}
        return loss, {**info, "q": q.mean(), "mse": mse}

    def critic_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Mean over members and batch of `(Q_j(x, a) - y)^2`, `y = r + gamma mask agg_j Q'_j(x', mu(x', z))`."""
        next_observations = batch["next_observations"]
        # The critic target is a constant for the policy: no gradient reaches the one-step policy through a'.
        noise = self._noise(rng, next_observations)
        next_actions = self.onestep_actions(params["actor_onestep_flow"], next_observations, noise)
        next_actions = jax.lax.stop_gradient(jnp.clip(next_actions, -1, 1))
        target_critic = jax.lax.stop_gradient(self.target_params["critic"])
        next_q = baselines.aggregate(self.q_values(target_critic, next_observations, next_actions), self.config.q_agg)
        target = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        q = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean((q - target) ** 2)
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "q_max": q.max(), "q_min": q.min()}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[FQLAgent, dict[str, Array]]:
        """One Adam step of every network on `critic_loss + actor_loss` at the pre-step parameters, then the EMA
        target critic (towards the pre-step critic, as the reference). Pure; jit/scan/vmap it outside."""
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
        """`[B, A]` actions of the one-step policy; K is accepted (any power of two) and ignored; N > 1 keeps the
        best of N noises by `agg_j Q_j(x, a)`."""
        validate_K_N(K, N, self.max_K)
        onestep = self.params["actor_onestep_flow"]

        def sample_fn(obs: Array, key: Array) -> Array:
            return jnp.clip(self.onestep_actions(onestep, obs, self._noise(key, obs)), -1, 1)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.aggregated_q(obs, actions, K)

        return sample_best_of_n(sample_fn, score_fn, observations, rng, N)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: FQLConfig | None = None
    ) -> FQLAgent:
        def networks(obs: Array, act: Array, action_dim: int):
            return {
                "critic": (baselines.critic_def(config), (obs, act)),
                "actor_bc_flow": (_flow_def(config, action_dim), (obs, act, act[..., :1])),
                "actor_onestep_flow": (_onestep_def(config, action_dim), (obs, act)),
            }

        config = FQLConfig() if config is None else config
        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"]))


def _flow_def(config: FQLConfig, action_dim: int) -> ShortcutVelocityNet:
    # A shortcut velocity net called without a step code is a plain flow-matching field v(x, a_t, t).
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return ShortcutVelocityNet(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


def _onestep_def(config: FQLConfig, action_dim: int) -> OneStepPolicy:
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return OneStepPolicy(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FQLConfig(baselines.BaselineConfig):
    """The reference's `agents/fql.py` keys and defaults; per-environment values: `FQLAgent.ENV_SETTINGS`."""

    q_agg: Literal["mean", "min"] = "mean"
    """How the critics combine in the critic target and the best-of-N verifier (the Q term always averages)."""
    alpha: float = 10.0
    """Distillation coefficient: weight of the one-step policy's distance to the flow policy (tuned per task)."""
    flow_steps: int = setting(10, check=POSITIVE_INTEGER)
    """Euler steps of the flow BC policy (the distillation target)."""
    normalize_q_loss: bool = False
    """Divide the one-step policy's Q term by the batch's mean |Q| (no gradient through it)."""


FQLAgent.Config = FQLConfig
