"""IFQL: implicit flow Q-learning, the flow variant of IDQL, as the FQL reference code ships it (`agents/ifql.py`).

Three networks, one Adam step of the summed losses per update (`sorl.optim.joint_update`):

- `value_loss`: `V(x)` regresses on `min_j Q'_j(x, a)` of the target critic at dataset actions with the asymmetric
  `expectile_loss` (expectile 0.9): IQL's in-sample value;
- `critic_loss`: each `Q_j(x, a)` regresses on `r + gamma mask V(x')` (summed over the two members, V read at the
  pre-step parameters), with an EMA target critic (tau 0.005, towards the pre-step critic);
- `actor_loss`: flow-matching behaviour cloning of a velocity field `v(x, a_t, t)` on dataset actions (`t ~ U[0, 1)`,
  `a_t = (1 - t) a0 + t a1`, target `a1 - a0`); no Q term: the policy never sees the critic in training.

At test time the critic picks among the flow policy's samples: K Euler steps of `v` from N noises (each clipped to
[-1, 1]), and the candidate with the highest `min_j Q_j(x, a)` is the action (`sorl.inference.sample_best_of_n`; N = 1
is the plain flow sample). The reference acts with `flow_steps` = 10 steps and `num_samples` = 32 candidates, the
defaults of `sample_actions` here; that cell, (K, N) = (10, 32), is its published one (`PUBLISHED_CELL`, said once
per evaluation grid), while an evaluation grid's cells are the (K, N) it names. K is any positive
integer (`K_POWERS_OF_TWO = False`: the field has no step-size input, as FQL's flow policy; the sampler is
`sorl.shortcut.euler`, the shortcut sampler's integrator without a step code), so the default grid's K in {1, 2, 4, 8}
are coarser integrations of the same field.

Parameter convention (as agents/fql.py): each loss receives the dict of online parameters it may move, and every
other network it reads is wrapped in an explicit `stop_gradient`; targets are read from `self`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp

from sorl import baselines, shortcut
from sorl.agent import Agent
from sorl.inference import sample_best_of_n, validate_K_N
from sorl.networks import ShortcutVelocityNet, encode
from sorl.sources import FQL_PIXEL_EXAMPLE, FQL_README, unverified, verified
from sorl.validation import OPEN_UNIT, POSITIVE_INTEGER, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]

FQL_DISCOUNT = FQL_README + ": the discount its FQL commands use on this environment (the FQL paper uses one per " \
    "environment for every method); no IFQL command for it"  # fmt: skip


class IFQLAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'value', 'critic', 'actor_flow'}
    target_params: dict[str, Params]  # {'critic'}
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: IFQLConfig = flax.struct.field(pytree_node=False)

    K_POWERS_OF_TWO: ClassVar[bool] = False
    """Any K >= 1: Euler steps of a velocity field without a step-size input (`sorl.agent.Agent.check_K`)."""

    ENV_SETTINGS = {
        "humanoidmaze-medium-navigate": verified(
            FQL_README + " (its IFQL example command)", discount=0.995, num_samples=32
        ),
        "antmaze-giant-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-large-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "antsoccer-arena-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "visual-cube-single-play": verified(FQL_PIXEL_EXAMPLE, num_samples=32),
    }
    # The README's IFQL offline-to-online example (humanoidmaze-medium) repeats the offline values: no online entry.
    # No published column: the FQL paper's OGBench table has an IFQL column, but its numbers could not be read where
    # this was written (as FAWAC's and FBRAC's); `experiments.paper` gets them in a commit of their own, with the
    # source, and this agent then names the column (PUBLISHED_COLUMN = "IFQL").

    PUBLISHED_CELL = (10, 32)
    """(K, N) of the published numbers: the reference's defaults `flow_steps` = 10 and `num_samples` = 32 (the
    README's IFQL commands pass --agent.num_samples=32); said once per evaluation grid (`runner.evaluation.grid_note`).
    """

    # ------------------------------------------------------------------------------------------- networks

    def flow_velocity(self, flow_params: Params) -> shortcut.VelocityFn:
        """The flow field on *encoded* observations (`flow_features`; the observations without an encoder)."""
        net = _flow_def(self.config, self.action_dim)
        # A plain flow field: the step code d that shortcut.euler passes through is None and not an input.
        return lambda obs, a_t, t, d=None: net.apply({"params": flow_params}, obs, a_t, t, encoded=True)

    def flow_features(self, flow_params: Params, observations: Array) -> Array:
        """The flow policy's own encoder's features (encoded once per sample, as the reference)."""
        return encode(self.config.encoder, flow_params, observations)

    def flow_actions(self, flow_params: Params, observations: Array, noise: Array, K: int) -> Array:
        """The flow policy's action from `noise` with K Euler steps (`t = i / K`), clipped to [-1, 1]."""
        features = self.flow_features(flow_params, observations)
        return jnp.clip(shortcut.euler(self.flow_velocity(flow_params), features, noise, K), -1.0, 1.0)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`Q_j(x, a)` of both members, `[2, B]`."""
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    def q(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`min_j Q_j(x, a)`, `[B]`: the value target's and the verifier's (the reference has no `q_agg`)."""
        return self.q_values(critic_params, observations, actions).min(axis=0)

    def v(self, value_params: Params, observations: Array) -> Array:
        """`V(x)`, `[B]`."""
        return baselines.critic_def(self.config, num_members=1).apply({"params": value_params}, observations)[0]

    def _noise(self, rng: Array, observations: Array) -> Array:
        return jax.random.normal(rng, (*observations.shape[:-1], self.action_dim))

    # --------------------------------------------------------------------------------------------- losses

    def value_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """Expectile regression of `V(x)` on `min_j Q'_j(x, a)` of the target critic at dataset actions."""
        # The regression target is a constant: no gradient to the target critic.
        q = self.q(jax.lax.stop_gradient(self.target_params["critic"]), batch["observations"], batch["actions"])
        v = self.v(params["value"], batch["observations"])
        loss = baselines.expectile_loss(q - v, self.config.expectile).mean()
        return loss, {"value_loss": loss, "v_mean": v.mean(), "v_max": v.max(), "v_min": v.min()}

    def critic_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """`mean_batch sum_j (Q_j(x, a) - y)^2`, `y = r + gamma mask V(x')`; logs y's statistics, as the reference."""
        # The TD target is a constant: no gradient to the value network through V(x').
        next_v = self.v(jax.lax.stop_gradient(params["value"]), batch["next_observations"])
        y = batch["rewards"] + self.config.discount * batch["masks"] * next_v
        qs = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean(jnp.sum((qs - y) ** 2, axis=0))
        return loss, {"critic_loss": loss, "q_mean": y.mean(), "q_max": y.max(), "q_min": y.min()}

    def actor_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Flow matching with `t ~ U[0, 1)` on `a_t = (1 - t) a0 + t a1`, target velocity `a1 - a0` (the reference's
        behavioural flow loss; its keys: noise from the second of three splits, t from the third)."""
        a1 = batch["actions"]
        _, noise_rng, t_rng = jax.random.split(rng, 3)
        a0 = jax.random.normal(noise_rng, a1.shape)
        t = jax.random.uniform(t_rng, (*a1.shape[:-1], 1))
        a_t = shortcut.interpolant(a0, a1, t, eps=0.0)
        flow_params = params["actor_flow"]
        pred = self.flow_velocity(flow_params)(self.flow_features(flow_params, batch["observations"]), a_t, t)
        loss = jnp.mean((pred - shortcut.flow_matching_target(a0, a1, eps=0.0)) ** 2)
        return loss, {"actor_loss": loss}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[IFQLAgent, dict[str, Array]]:
        """One Adam step of the value, critic and flow networks on the sum of their losses at the pre-step
        parameters, then the EMA target critic towards the pre-step critic. Pure; jit/scan/vmap it outside."""
        new_rng, rng = jax.random.split(self.rng)
        _, actor_rng = jax.random.split(rng)  # the reference's keys, split for split

        def total(params):
            value_loss, value_info = self.value_loss(batch, params)
            critic_loss, critic_info = self.critic_loss(batch, params)
            actor_loss, actor_info = self.actor_loss(batch, params, actor_rng)
            info = baselines.prefixed(value=value_info, critic=critic_info, actor=actor_info)
            return value_loss + critic_loss + actor_loss, info

        return baselines.joint_update(self, total, new_rng)

    # ------------------------------------------------------------------------------------------ inference

    def aggregated_q(self, observations: Array, actions: Array, K: Array | float | None = None) -> Array:
        """`min_j Q_j(x, a)` of the current critic, `[B]`: the score best-of-N ranks candidates by (the verifier
        probe's, `experiments.verifier`); the critic does not read K, accepted for the probe's signature."""
        return self.q(self.params["critic"], observations, actions)

    def sample_actions(self, observations: Array, rng: Array, K: int | None = None, N: int | None = None) -> Array:
        """`[B, A]`: N flow samples of K Euler steps each (clipped), the best by `min_j Q_j(x, a)`; N = 1 is one
        flow sample and asks no critic. K and N default to `flow_steps` and `num_samples`: the reference's policy."""
        K = self.config.flow_steps if K is None else K
        N = self.config.num_samples if N is None else N
        validate_K_N(K, N, self.max_K, self)
        flow_params = self.params["actor_flow"]
        features = self.flow_features(flow_params, observations)  # once for every candidate and step
        velocity = self.flow_velocity(flow_params)

        def sample_fn(obs: Array, key: Array) -> Array:
            return jnp.clip(shortcut.euler(velocity, features, self._noise(key, obs), K), -1.0, 1.0)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.aggregated_q(obs, actions, K)

        return sample_best_of_n(sample_fn, score_fn, observations, rng, N)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: IFQLConfig | None = None
    ) -> IFQLAgent:
        config = IFQLConfig() if config is None else config

        def networks(obs: Array, act: Array, action_dim: int):
            return {
                "value": (baselines.critic_def(config, num_members=1), (obs,)),
                "critic": (baselines.critic_def(config), (obs, act)),
                "actor_flow": (_flow_def(config, action_dim), (obs, act, act[..., :1])),
            }

        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"]))


def _flow_def(config: IFQLConfig, action_dim: int) -> ShortcutVelocityNet:
    # The reference's ActorVectorField: an MLP on [x, a_t, t] (a shortcut velocity net called without a step code).
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return ShortcutVelocityNet(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class IFQLConfig(baselines.BaselineConfig):
    """The reference's `agents/ifql.py` keys and defaults (4x512 networks, LayerNorm in the value and critic only,
    Adam 3e-4, batch 256, discount 0.99, tau 0.005, two critics); per-environment values: `IFQLAgent.ENV_SETTINGS`."""

    expectile: float = setting(0.9, check=OPEN_UNIT)
    """Expectile of the value regression on Q (an upper expectile of Q over the dataset's actions)."""
    num_samples: int = setting(32, check=POSITIVE_INTEGER)
    """Flow samples the critic chooses among: `sample_actions`' default N (the evaluation grid's --eval-N sets the N
    evaluated; the published cell's is 32)."""
    flow_steps: int = setting(10, check=POSITIVE_INTEGER)
    """Euler steps of each flow sample: `sample_actions`' default K (the evaluation grid's --eval-K sets the K
    evaluated; the published cell's is 10)."""


IFQLAgent.Config = IFQLConfig
