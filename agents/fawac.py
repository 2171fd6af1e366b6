"""FAWAC: advantage-weighted actor-critic with a flow-matching policy, the FQL paper's baseline (Park, Li & Levine
2025), with the defaults of the public JAX port (ColinQiyangLi/qam, agents/fawac.py) where they match FQL's setup.

AWR cannot weight a flow policy's log-likelihood (it has none in closed form), so FAWAC weights each sample's
flow-matching error instead. Three networks, one Adam step of the summed losses per update (docs/method.md, FAWAC):

- `critic`, a Q ensemble trained by TD on the flow policy's own next actions (`critic_loss`; `a' ~ pi(x')` with
  `flow_steps` Euler steps, no gradient into the policy; EMA target critic; `agg_j` per `q_agg`): Q of the policy,
  as AWAC (not IQL's in-sample expectile);
- `value`, `V(x)` regressed with a plain squared error on the target critic's `Q'_j(x, a)` at dataset actions
  (`value_loss`), so `V(x) ~ E_{a ~ data} mean_j Q'_j(x, a)`: the advantage's baseline;
- `actor`, a flow field `v(x, a_t, t)` (`actor_loss`): `mean_batch w * mean_dims ||v(x, a_t, t) - (a1 - a0)||^2`,
  `t ~ U[0, 1)`, `a_t = (1 - t) a0 + t a1`, weights `w = min(exp(alpha (mean_j Q_j(x, a) - V(x))), 100)` held
  constant (the actor loss moves neither the critic nor the value network).

(K, N): K is the number of Euler steps of the flow policy at test time (the reference samples with `flow_steps`
= 10 for training and evaluation alike); N > 1 draws N noises and keeps the action the critic scores highest
(`agg_j Q_j(x, a)`, the project's verifier `sorl.inference.sample_best_of_n`). K is any step count >= 1
(`K_POWERS_OF_TWO = False`); the published cell is (K, N) = (`flow_steps`, 1) = (10, 1).

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
from sorl.sources import unverified
from sorl.validation import POSITIVE_INTEGER, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]

ADVANTAGE_WEIGHT_MAX = 100.0
"""The reference's clip of `exp(alpha * advantage)` (the same constant as IQL's)."""

FQL_DISCOUNT = (
    "FQL's commands use discount 0.995 on antmaze-giant, the humanoid mazes and antsoccer for every agent (0.99 "
    "elsewhere); not read for FAWAC itself"
)
QAM_REPRODUCE = (
    "; alpha: the QAM port's experiments/reproduce.py FAWAC inv_temp for this environment (ColinQiyangLi/qam; "
    "10 critics with a pessimistic backup there, not the FQL paper's table, which could not be read here)"
)


class FAWACAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'critic', 'value', 'actor'}
    target_params: dict[str, Params]  # {'critic'}
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: FAWACConfig = flax.struct.field(pytree_node=False)

    K_POWERS_OF_TWO: ClassVar[bool] = False
    """Its K is any number of Euler steps >= 1 (a plain flow field has no step-size input): the reference's 10 too."""

    # The FQL paper tunes FAWAC's inverse temperature per environment; its appendix table could not be read here,
    # so every entry is unverified. discount follows FQL's commands for every agent.
    ENV_SETTINGS = {
        "antmaze-large-navigate": unverified(FQL_DISCOUNT + QAM_REPRODUCE, alpha=6.4, discount=0.99),
        "antmaze-giant-navigate": unverified(FQL_DISCOUNT + QAM_REPRODUCE, alpha=0.8, discount=0.995),
        "humanoidmaze-medium-navigate": unverified(FQL_DISCOUNT + QAM_REPRODUCE, alpha=6.4, discount=0.995),
        "humanoidmaze-large-navigate": unverified(FQL_DISCOUNT + QAM_REPRODUCE, alpha=0.8, discount=0.995),
        "antsoccer-arena-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "cube-single-play": unverified(FQL_DISCOUNT, discount=0.99),
        "cube-double-play": unverified(FQL_DISCOUNT, discount=0.99),
        "scene-play": unverified(FQL_DISCOUNT, discount=0.99),
        "puzzle-3x3-play": unverified(FQL_DISCOUNT, discount=0.99),
        "puzzle-4x4-play": unverified(FQL_DISCOUNT, discount=0.99),
    }
    # The FQL paper's OGBench table has a FAWAC column, but its numbers could not be read here: no published column
    # is claimed until they are (experiments/paper.py has none for FAWAC).
    PUBLISHED_COLUMN = None
    PUBLISHED_AS = ""
    PUBLISHED_CELL = (10, 1)
    """(K, N) of its reference policy: `flow_steps` = 10 Euler steps, one sample (no best-of-N): what it acts with
    when no cell is asked for (`runner.evaluation.policy_cell`: online acting, bench, the table's default cell)."""

    # ------------------------------------------------------------------------------------------- networks

    def flow_velocity(self, actor_params: Params) -> shortcut.VelocityFn:
        """The flow field on *encoded* observations (`features`); the step code that `shortcut.euler` passes
        through is None and not an input."""
        net = _actor_def(self.config, self.action_dim)
        return lambda obs, a_t, t, d=None: net.apply({"params": actor_params}, obs, a_t, t, encoded=True)

    def features(self, actor_params: Params, observations: Array) -> Array:
        """The actor's own encoder's features (the observations themselves without an encoder)."""
        return encode(self.config.encoder, actor_params, observations)

    def flow_actions(self, actor_params: Params, observations: Array, noise: Array, K: int) -> Array:
        """The policy's action from `noise` with K Euler steps (`sorl.shortcut.euler`), clipped to [-1, 1]."""
        features = self.features(actor_params, observations)
        return jnp.clip(shortcut.euler(self.flow_velocity(actor_params), features, noise, K), -1.0, 1.0)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`Q_j(x, a)`, `[members, B]`."""
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    def v(self, value_params: Params, observations: Array) -> Array:
        """`V(x)`, `[B]`."""
        return baselines.critic_def(self.config, num_members=1).apply({"params": value_params}, observations)[0]

    def _noise(self, rng: Array, observations: Array) -> Array:
        return jax.random.normal(rng, (*observations.shape[:-1], self.action_dim))

    # --------------------------------------------------------------------------------------------- losses

    def critic_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Mean over members and batch of `(Q_j(x, a) - y)^2`, `y = r + gamma mask agg_j Q'_j(x', a')`, `a'` the
        policy's `flow_steps`-step action at `x'`."""
        next_observations = batch["next_observations"]
        # The target is a constant: no gradient reaches the policy through a', nor the target critic.
        actor = jax.lax.stop_gradient(params["actor"])
        next_actions = self.flow_actions(actor, next_observations, self._noise(rng, next_observations),
                                         self.config.flow_steps)  # fmt: skip
        target_critic = jax.lax.stop_gradient(self.target_params["critic"])
        next_q = baselines.aggregate(self.q_values(target_critic, next_observations, next_actions), self.config.q_agg)
        y = jax.lax.stop_gradient(batch["rewards"] + self.config.discount * batch["masks"] * next_q)
        q = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean((q - y) ** 2)
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "q_max": q.max(), "q_min": q.min()}

    def value_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """Mean over members and batch of `(Q'_j(x, a) - V(x))^2` at dataset actions (target critic)."""
        # The regression target is a constant: no gradient to the target critic.
        target_q = self.q_values(jax.lax.stop_gradient(self.target_params["critic"]), batch["observations"],
                                 batch["actions"])  # fmt: skip
        v = self.v(params["value"], batch["observations"])
        loss = jnp.mean((target_q - v) ** 2)
        return loss, {"value_loss": loss, "v_mean": v.mean(), "v_max": v.max(), "v_min": v.min()}

    def advantage_weights(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, Array]:
        """`(w, A)`: `A = mean_j Q_j(x, a) - V(x)` and `w = min(exp(alpha A), 100)`, both constants, `[B]`."""
        observations = batch["observations"]
        # The weights are constants: the actor loss moves neither the critic nor the value network.
        q = self.q_values(jax.lax.stop_gradient(params["critic"]), observations, batch["actions"]).mean(axis=0)
        v = self.v(jax.lax.stop_gradient(params["value"]), observations)
        advantage = q - v
        weights = jnp.minimum(jnp.exp(self.config.alpha * advantage), ADVANTAGE_WEIGHT_MAX)
        return jax.lax.stop_gradient(weights), advantage

    def actor_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Advantage-weighted flow matching: `mean_b w_b mean_dims (v(x, a_t, t) - (a1 - a0))^2`, `t ~ U[0, 1)`."""
        a1 = batch["actions"]
        t_rng, noise_rng = jax.random.split(rng)
        t = jax.random.uniform(t_rng, (*a1.shape[:-1], 1))
        a0 = jax.random.normal(noise_rng, a1.shape)
        a_t = shortcut.interpolant(a0, a1, t, eps=0.0)
        actor = params["actor"]
        pred = self.flow_velocity(actor)(self.features(actor, batch["observations"]), a_t, t)
        per_sample = jnp.mean((pred - shortcut.flow_matching_target(a0, a1, eps=0.0)) ** 2, axis=-1)
        weights, advantage = self.advantage_weights(batch, params)
        loss = jnp.mean(weights * per_sample)
        info = {"actor_loss": loss, "bc_flow_loss": per_sample.mean(), "adv": advantage.mean()}
        return loss, {**info, "weight_mean": weights.mean(), "weight_max": weights.max()}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[FAWACAgent, dict[str, Array]]:
        """One Adam step of every network on `critic_loss + value_loss + actor_loss` at the pre-step parameters,
        then the EMA target critic towards the pre-step critic (as the reference). Pure; jit/scan/vmap it outside."""
        new_rng, critic_rng, actor_rng = jax.random.split(self.rng, 3)

        def total(params):
            critic_loss, critic_info = self.critic_loss(batch, params, critic_rng)
            value_loss, value_info = self.value_loss(batch, params)
            actor_loss, actor_info = self.actor_loss(batch, params, actor_rng)
            info = baselines.prefixed(critic=critic_info, value=value_info, actor=actor_info)
            return critic_loss + value_loss + actor_loss, info

        return baselines.joint_update(self, total, new_rng)

    # ------------------------------------------------------------------------------------------ inference

    def aggregated_q(self, observations: Array, actions: Array, K: Array | float | None = None) -> Array:
        """`agg_j Q_j(x, a)` (`q_agg`) of the current critic, `[B]`: the score best-of-N ranks candidates by (the
        verifier probe's, `experiments.verifier`); the critic does not read K, accepted for the probe's signature."""
        return baselines.aggregate(self.q_values(self.params["critic"], observations, actions), self.config.q_agg)

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]` actions of the flow policy with K Euler steps; N > 1 keeps the best of N noises by
        `agg_j Q_j(x, a)` (N = 1 never asks the critic)."""
        validate_K_N(K, N, self.max_K, self)
        actor = self.params["actor"]

        def sample_fn(obs: Array, key: Array) -> Array:
            return self.flow_actions(actor, obs, self._noise(key, obs), K)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.aggregated_q(obs, actions, K)

        return sample_best_of_n(sample_fn, score_fn, observations, rng, N)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: FAWACConfig | None = None
    ) -> FAWACAgent:
        config = FAWACConfig() if config is None else config

        def networks(obs: Array, act: Array, action_dim: int):
            return {
                "critic": (baselines.critic_def(config), (obs, act)),
                "value": (baselines.critic_def(config, num_members=1), (obs,)),
                "actor": (_actor_def(config, action_dim), (obs, act, act[..., :1])),
            }

        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"]))


def _actor_def(config: FAWACConfig, action_dim: int) -> ShortcutVelocityNet:
    # A shortcut velocity net called without a step code is a plain flow-matching field v(x, a_t, t).
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return ShortcutVelocityNet(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FAWACConfig(baselines.BaselineConfig):
    """The FQL reference's shared defaults plus FAWAC's own keys; per-environment values: `FAWACAgent.ENV_SETTINGS`."""

    q_agg: Literal["mean", "min"] = "mean"
    """How the critics combine in the critic target and the best-of-N verifier (the advantage always averages)."""
    alpha: float = 10.0
    """Inverse temperature of the advantage weights `min(exp(alpha * A), 100)` (the port's inv_temp; per env)."""
    flow_steps: int = setting(10, check=POSITIVE_INTEGER)
    """Euler steps of the policy's next actions in the critic target (and the published K)."""


FAWACAgent.Config = FAWACConfig
