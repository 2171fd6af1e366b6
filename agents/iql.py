"""IQL: implicit Q-learning (Kostrikov, Nair & Levine 2021), with the FQL reference's defaults.

In-sample learning: no loss ever evaluates an action outside the dataset.

- `value_loss`: `V(x)` regresses on `agg_j Q'_j(x, a)` of the target critic with the asymmetric `expectile_loss`
  (expectile 0.9), an upper expectile of Q over the dataset's actions;
- `critic_loss`: each `Q_j(x, a)` regresses on `r + gamma mask V(x')` (summed over members, as the reference);
- `actor_loss`: advantage-weighted regression of a Gaussian policy (constant std 1 by default) on dataset actions,
  weights `min(exp(alpha (agg_j Q_j(x, a) - V(x))), 100)`;
- one Adam step of all three on the summed losses per update, then the EMA target critic.

At test time the action is the Gaussian's mean (the reference evaluates with temperature 0), and K is ignored.
Best-of-N keeps the best by `agg_j Q_j(x, a)` among the mean and N - 1 samples of the Gaussian
(`sorl.baselines.best_of_mode_and_samples`). Note that IQL's critic is trained on dataset actions only, so it is a
weaker verifier off the data than the critics of the agents that query their own policy's actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import flax
import jax
import jax.numpy as jnp

from sorl import baselines
from sorl.agent import Agent
from sorl.inference import validate_K_N
from sorl.sources import FQL_PIXEL_EXAMPLE, FQL_README, RECALLED, THIRD_PARTY_IQL, VISUAL, unverified, verified
from sorl.validation import OPEN_UNIT, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]

ADVANTAGE_WEIGHT_MAX = 100.0  # the reference's clip of exp(alpha * advantage)


class IQLAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'value', 'critic', 'actor'}
    target_params: dict[str, Params]  # {'critic'}
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: IQLConfig = flax.struct.field(pytree_node=False)

    GRID_NOTES: ClassVar[dict[str, str]] = {"K": "its Gaussian policy has no step count"}

    # q_agg is always min in the reference (our default); discount 0.995 on antmaze-giant, humanoidmaze and
    # antsoccer, as in FQL's commands for every agent.
    ENV_SETTINGS = {
        "antmaze-large-navigate": unverified(RECALLED + THIRD_PARTY_IQL, alpha=10.0, discount=0.99),
        "antmaze-giant-navigate": unverified(RECALLED + THIRD_PARTY_IQL, alpha=10.0, discount=0.995),
        "humanoidmaze-medium-navigate": verified(FQL_README + " (its IQL example)", alpha=10.0, discount=0.995),
        "humanoidmaze-large-navigate": unverified(RECALLED + THIRD_PARTY_IQL, alpha=10.0, discount=0.995),
        "antsoccer-arena-navigate": unverified(RECALLED + THIRD_PARTY_IQL, alpha=1.0, discount=0.995),
        "cube-single-play": unverified(
            RECALLED + THIRD_PARTY_IQL + VISUAL + " (visual-cube-single: 1)", alpha=1.0, discount=0.99
        ),
        "cube-double-play": unverified(
            RECALLED + THIRD_PARTY_IQL + VISUAL + " (visual-cube-double: 0.3)", alpha=0.3, discount=0.99
        ),
        "scene-play": unverified(
            RECALLED + THIRD_PARTY_IQL + VISUAL + " (visual-scene: 10)", alpha=10.0, discount=0.99
        ),
        "puzzle-3x3-play": unverified(
            RECALLED + THIRD_PARTY_IQL + VISUAL + " (visual-puzzle-3x3: 10)", alpha=10.0, discount=0.99
        ),
        "puzzle-4x4-play": unverified(RECALLED + THIRD_PARTY_IQL, alpha=3.0, discount=0.99),
        "visual-cube-single-play": verified(FQL_PIXEL_EXAMPLE, alpha=1.0),
    }
    PUBLISHED_COLUMN = "IQL"
    PUBLISHED_AS = "iql: the FQL reference's IQL (AWR actor), one Adam step of the summed losses per update"
    """Test-time axes that do not change the action (`runner.evaluation.grid_note`)."""

    # ------------------------------------------------------------------------------------------- networks

    def policy(self, actor_params: Params, observations: Array) -> tuple[Array, Array]:
        """`(mean, log_std)` of the Gaussian policy."""
        return baselines.actor_head(self.config, self.action_dim).apply({"params": actor_params}, observations)

    def q(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`agg_j Q_j(x, a)`, `[B]`."""
        qs = baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)
        return baselines.aggregate(qs, self.config.q_agg)

    def v(self, value_params: Params, observations: Array) -> Array:
        """`V(x)`, `[B]`."""
        return baselines.critic_def(self.config, num_members=1).apply({"params": value_params}, observations)[0]

    # --------------------------------------------------------------------------------------------- losses

    def value_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """Expectile regression of V(x) on the target critic's Q(x, a) at dataset actions."""
        # The regression target is a constant: no gradient to the target critic.
        q = self.q(jax.lax.stop_gradient(self.target_params["critic"]), batch["observations"], batch["actions"])
        v = self.v(params["value"], batch["observations"])
        loss = baselines.expectile_loss(q - v, self.config.expectile).mean()
        return loss, {"value_loss": loss, "v_mean": v.mean(), "v_max": v.max(), "v_min": v.min()}

    def critic_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """`sum_j mean (Q_j(x, a) - (r + gamma mask V(x')))^2`."""
        # The TD target is a constant: no gradient to the value network through V(x').
        next_v = self.v(jax.lax.stop_gradient(params["value"]), batch["next_observations"])
        y = batch["rewards"] + self.config.discount * batch["masks"] * next_v
        qs = baselines.critic_def(self.config).apply(
            {"params": params["critic"]}, batch["observations"], batch["actions"]
        )
        loss = jnp.mean(jnp.sum((qs - y) ** 2, axis=0))
        return loss, {"critic_loss": loss, "q_mean": qs.mean(), "q_max": qs.max(), "q_min": qs.min()}

    def actor_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """AWR: `-mean(w * log pi(a | x))`, `w = min(exp(alpha * (Q(x, a) - V(x))), 100)`."""
        observations, actions = batch["observations"], batch["actions"]
        # The advantage weights are constants: the actor loss moves neither the critic nor the value network.
        v = self.v(jax.lax.stop_gradient(params["value"]), observations)
        q = self.q(jax.lax.stop_gradient(params["critic"]), observations, actions)
        advantage = q - v
        weights = jnp.minimum(jnp.exp(self.config.alpha * advantage), ADVANTAGE_WEIGHT_MAX)
        mean, log_std = self.policy(params["actor"], observations)
        log_prob = baselines.gaussian_log_prob(mean, log_std, actions)
        loss = -jnp.mean(weights * log_prob)
        mse = jnp.mean((mean - actions) ** 2)
        info = {"actor_loss": loss, "adv": advantage.mean(), "bc_log_prob": log_prob.mean(), "mse": mse}
        return loss, {**info, "std": jnp.exp(log_std).mean()}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[IQLAgent, dict[str, Array]]:
        """One Adam step of the value, critic and actor networks on the sum of their losses at the pre-step
        parameters, then the EMA target critic towards the pre-step critic. Pure; jit/scan/vmap it outside."""

        def total(params):
            value_loss, value_info = self.value_loss(batch, params)
            critic_loss, critic_info = self.critic_loss(batch, params)
            actor_loss, actor_info = self.actor_loss(batch, params)
            info = baselines.prefixed(value=value_info, critic=critic_info, actor=actor_info)
            return value_loss + critic_loss + actor_loss, info

        # The update draws no randomness; the agent's key still advances, as for every agent.
        return baselines.joint_update(self, total, jax.random.split(self.rng)[0])

    # ------------------------------------------------------------------------------------------ inference

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]`: the clipped Gaussian mean for N = 1 (K accepted and ignored); for N > 1 the best by
        `agg_j Q_j(x, a)` of the mean and N - 1 clipped samples of the policy."""
        validate_K_N(K, N, self.max_K)
        mean, log_std = self.policy(self.params["actor"], observations)
        mode = jnp.clip(mean, -1, 1)

        def sample_fn(_obs: Array, key: Array) -> Array:
            return baselines.gaussian_sample(mean, log_std, key)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.q(self.params["critic"], obs, actions)

        return baselines.best_of_mode_and_samples(mode, sample_fn, score_fn, observations, rng, N)

    def exploration_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """Online data collection: a draw of the Gaussian policy (the reference acts at temperature 1); for N > 1
        the best-of-N of `sample_actions`."""
        if N > 1:
            return self.sample_actions(observations, rng, K=K, N=N)
        validate_K_N(K, N, self.max_K)
        mean, log_std = self.policy(self.params["actor"], observations)
        return baselines.gaussian_sample(mean, log_std, rng)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: IQLConfig | None = None
    ) -> IQLAgent:
        config = IQLConfig() if config is None else config
        networks = lambda obs, act, action_dim: {  # noqa: E731
            "value": (baselines.critic_def(config, num_members=1), (obs,)),
            "critic": (baselines.critic_def(config), (obs, act)),
            "actor": (baselines.actor_head(config, action_dim), (obs,)),
        }
        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"]))


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class IQLConfig(baselines.BaselineConfig):
    """The reference's `agents/iql.py` keys and defaults (AWR actor); per-env values: `IQLAgent.ENV_SETTINGS`."""

    q_agg: Literal["mean", "min"] = "min"
    """How the critics combine in the value target, the advantage and the best-of-N verifier (reference: min)."""
    expectile: float = setting(0.9, check=OPEN_UNIT)
    """Expectile of the value regression on Q (an upper expectile of Q over the dataset's actions)."""
    alpha: float = 10.0
    """AWR inverse temperature of the actor's advantage weights (tuned per environment)."""
    const_std: bool = True
    """Gaussian actor's std fixed at 1; false learns one log-std per action dimension."""
    actor_fc_scale: float = 0.01
    """Initialisation scale of the actor's mean layer."""


IQLAgent.Config = IQLConfig
