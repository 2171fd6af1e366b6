"""CAC: consistency actor-critic ("Consistency-AC"), Ding & Jin 2024, "Consistency Models as a Rich and Efficient
Policy Class for Reinforcement Learning" (ICLR 2024, arXiv:2309.16984), after its official code
(`quantumiracle/Consistency_Model_For_Reinforcement_Learning`, `agents/ql_consistency.py` `Consistency_QL`,
`agents/consistency.py`, `agents/helpers.py`, `agents/model.py`), the Diffusion-QL recipe with a consistency policy.

Two networks and two EMA copies; one backward pass of the summed losses per update, one Adam per network:

- `actor`, a consistency model `f(x, a_sigma, sigma) = c_skip(sigma) a_sigma + c_out(sigma) F(x, a_sigma, sigma)`
  (`sorl.consistency.consistency_function`, variance-exploding noise levels sigma in [0.002, 80]), trained on
  `actor_loss = bc_loss + eta * q_loss`:
  - `bc_loss`: consistency *training* (`sorl.consistency.consistency_training_loss`): adjacent Karras levels
    `sigma_n < sigma_{n+1}` of N(k) levels, one noise z, `f_theta(a + sigma_{n+1} z)` regressed on
    `stopgrad f_ema(a + sigma_n z)`, each example scaled by `100 / (sigma_{n+1} - sigma_n)` (`scale_consis_loss`);
    N(k) grows from 2 to 150 over every `ct_period` updates (the code's schedule restarts with each `train()` call);
  - `q_loss`: `-mean Q_j(x, a) / stopgrad(mean |Q_j'(x, a)|)` with `a` the policy's `consistency_steps`-step sample,
    the gradient flowing back through every sampling step (as Diffusion-QL), `j` one critic drawn per update and
    `j'` the other; the critic is frozen in it;
- `critic`, a double Q: `sum_j mean_b (Q_j(x, a) - y)^2`, `y = r + gamma mask min_j Q'_j(x', a')`, `a'` a
  `consistency_steps`-step sample of the EMA actor (no gradient).

Targets: the critic's EMA (rate `tau`) every update; the actor's EMA (`ema_decay` 0.995) every `update_ema_every` = 5
updates from update `step_start_ema` = 1000 on, until then it stays at the initial actor (the code's `step_ema`);
both move towards the post-step networks, as the code steps its optimisers first. The EMA actor is the consistency
loss's target network (CM's theta^-) and gives the critic target's next actions.

(K, N) at test time: K is the number of consistency steps (`sorl.consistency.sample`: one network call from sigma = 80,
then re-noise to each of `linspace(2, 80, K)`'s lower levels and map back; any K >= 1, `K_POWERS_OF_TWO = False`, no
trained maximum); N > 1 draws N samples and keeps the one the target critic's `min_j Q'_j` ranks highest
(`sorl.inference.sample_best_of_n`; the code ranks 50 samples by that critic too, but draws one by softmax over them).
Default cell: (`consistency_steps`, 1).

Parameter convention (as agents/fbrac.py): each loss receives the dict of online parameters it may move, and every
other network it reads is wrapped in an explicit `stop_gradient`; targets are read from `self`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sorl import baselines, consistency
from sorl.agent import Agent
from sorl.inference import sample_best_of_n, validate_K_N
from sorl.networks import MLP, as_column, encode, encoder_module
from sorl.sources import FQL_README, unverified
from sorl.validation import BOOL, NON_NEGATIVE, NON_NEGATIVE_INTEGER, OPEN_UNIT, POSITIVE_INTEGER, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]

CAC_CODE = "CAC official code (quantumiracle/Consistency_Model_For_Reinforcement_Learning)"
FQL_DISCOUNT = (
    f"the discount of {FQL_README} for this environment (the FQL paper runs every baseline with it); CAC's Q weight "
    "and step count on OGBench (the FQL paper's appendix) could not be read here, so they keep the defaults"
)
TIME_DIM = 16
"""Width of the noise-level embedding (the CAC code's `MLP(t_dim=16)`)."""


class CACAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'critic', 'actor'}
    target_params: dict[str, Params]  # {'critic', 'actor'}: EMA copies
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: CACConfig = flax.struct.field(pytree_node=False)

    K_POWERS_OF_TWO: ClassVar[bool] = False
    """Multistep consistency sampling has no step-size input: any K >= 1 (`sorl.agent.Agent.check_K`)."""
    ENV_SETTINGS = {
        "antmaze-giant-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-medium-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-large-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "antsoccer-arena-navigate": unverified(FQL_DISCOUNT, discount=0.995),
    }
    # The FQL paper's OGBench table has a CAC column (the SORL paper's table is taken from it), but its numbers could
    # not be read here and experiments/paper.py has no CAC column: no published column until it does.
    PUBLISHED_COLUMN = None
    PUBLISHED_AS = ""
    PUBLISHED_CELL = (2, 1)
    """(K, N) of its reference policy: the official code's 2 consistency steps (`consistency_steps`), one sample:
    what it acts with when no cell is asked for (`runner.evaluation.policy_cell`)."""

    # ------------------------------------------------------------------------------------------- networks

    def denoiser(self, actor_params: Params) -> consistency.NetFn:
        """`F(x, a_sigma, sigma)` on *encoded* observations (`features`), for `sorl.consistency`'s functions."""
        net = _actor_def(self.config, self.action_dim)
        return lambda obs, x, sigma: net.apply({"params": actor_params}, obs, x, sigma, encoded=True)

    def features(self, actor_params: Params, observations: Array) -> Array:
        """The actor's own encoder's features (once per sample, not once per step); the observations without one."""
        return encode(self.config.encoder, actor_params, observations)

    def policy_actions(self, actor_params: Params, observations: Array, rng: Array, K: int) -> Array:
        """A K-step consistency sample, clipped to [-1, 1]; differentiable through every step (nothing stopped)."""
        features = self.features(actor_params, observations)
        return consistency.sample(self.denoiser(actor_params), features, rng, K, self.action_dim)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`Q_j(x, a)` of every member, `[num_critics, B]`."""
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    def ct_levels(self) -> Array:
        """N(k), the number of Karras levels of this update's consistency loss: 2 growing to 150 over each
        `ct_period` updates (the code's `timesteps_schedule(itr, iterations)`, `itr` restarting every `train()`)."""
        period = self.config.ct_period
        return consistency.training_discretisation(self.step % period, period)

    # --------------------------------------------------------------------------------------------- losses

    def critic_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`sum_j mean_b (Q_j(x, a) - y)^2`, `y = r + gamma mask min_j Q'_j(x', a')`, `a'` the EMA actor's
        `consistency_steps`-step sample at x'."""
        next_observations = batch["next_observations"]
        # The TD target is a constant: no gradient reaches the EMA actor or the target critic through it.
        target_actor = jax.lax.stop_gradient(self.target_params["actor"])
        next_actions = self.policy_actions(target_actor, next_observations, rng, self.config.consistency_steps)
        target_critic = jax.lax.stop_gradient(self.target_params["critic"])
        next_q = self.q_values(target_critic, next_observations, jax.lax.stop_gradient(next_actions)).min(axis=0)
        y = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        qs = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.sum(jnp.mean((qs - y) ** 2, axis=1))
        return loss, {
            "critic_loss": loss,
            "q_mean": qs.mean(),
            "q_max": qs.max(),
            "q_min": qs.min(),
            "y_mean": y.mean(),
        }

    def bc_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, Array]:
        """Consistency training on the dataset actions against the EMA actor (`sorl.consistency`); returns the loss
        and the number of levels N(k) it used."""
        actor = params["actor"]
        # CM's theta^-: the EMA actor is the regression target, never trained through this loss.
        target_actor = jax.lax.stop_gradient(self.target_params["actor"])
        observations = batch["observations"]
        N = self.ct_levels()
        loss = consistency.consistency_training_loss(
            lambda _, x, sigma: self.denoiser(actor)(self.features(actor, observations), x, sigma),
            lambda _, x, sigma: self.denoiser(target_actor)(self.features(target_actor, observations), x, sigma),
            observations,
            batch["actions"],
            rng,
            N,
            scale_by_gap=self.config.scale_consis_loss,
        )
        return loss, N

    def q_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, Array, Array]:
        """`-mean_b Q_j(x, a) / stopgrad(mean_b |Q_j'(x, a)|)`, `a` the policy's sample through every step, `j` a
        critic drawn at random and `j'` the next one (the code's coin flip between its two critics). Returns
        (loss, Q_j, the actions)."""
        member_rng, sample_rng = jax.random.split(rng)
        observations = batch["observations"]
        actions = self.policy_actions(params["actor"], observations, sample_rng, self.config.consistency_steps)
        # Policy improvement must not move the critic.
        critic = jax.lax.stop_gradient(params["critic"])
        qs = self.q_values(critic, observations, actions)
        j = jax.random.randint(member_rng, (), 0, qs.shape[0])
        q, q_other = qs[j], qs[(j + 1) % qs.shape[0]]
        loss = -q.mean() / jax.lax.stop_gradient(jnp.abs(q_other).mean())
        return loss, q, actions

    def actor_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`bc_loss + eta * q_loss` (moves the actor, never the critic or the EMA actor)."""
        bc_rng, q_rng = jax.random.split(rng)
        bc_loss, N = self.bc_loss(batch, params, bc_rng)
        q_loss, q, actions = self.q_loss(batch, params, q_rng)
        loss = bc_loss + self.config.eta * q_loss
        mse = jnp.mean((actions - batch["actions"]) ** 2)
        info = {"actor_loss": loss, "bc_loss": bc_loss, "q_loss": q_loss, "q": q.mean(), "mse": mse}
        return loss, {**info, "ct_levels": N}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[CACAgent, dict[str, Array]]:
        """One Adam step of the critic and the actor on `critic_loss + actor_loss` at the pre-step parameters, then
        the EMAs towards the post-step networks (the critic's every update, the actor's on its schedule). Pure;
        jit/scan/vmap it outside."""
        new_rng, critic_rng, actor_rng = jax.random.split(self.rng, 3)

        def total(params):
            critic_loss, critic_info = self.critic_loss(batch, params, critic_rng)
            actor_loss, actor_info = self.actor_loss(batch, params, actor_rng)
            return critic_loss + actor_loss, baselines.prefixed(critic=critic_info, actor=actor_info)

        grads, info = jax.grad(total, has_aux=True)(self.params)
        optimizer = baselines.ModuleOptimizer.of(self.config)
        params, opt_state, norms = optimizer.step(self.params, self.opt_state, grads)
        critic_target = baselines.ema_targets(params, {"critic": self.target_params["critic"]}, self.config.tau)
        ema_rate = jnp.where(self.ema_due(), 1.0 - self.config.ema_decay, 0.0)
        actor_target = baselines.ema_targets(params, {"actor": self.target_params["actor"]}, ema_rate)
        new = self.replace(
            rng=new_rng,
            step=self.step + 1,
            params=params,
            target_params={**critic_target, **actor_target},
            opt_state=opt_state,
        )
        return new, {**info, **norms}

    def ema_due(self) -> Array:
        """Whether this update moves the EMA actor: from `step_start_ema` on, every `update_ema_every` updates."""
        c = self.config
        return (self.step >= c.step_start_ema) & (self.step % c.update_ema_every == 0)

    # ------------------------------------------------------------------------------------------ inference

    def aggregated_q(self, observations: Array, actions: Array, K: Array | float | None = None) -> Array:
        """`min_j Q'_j(x, a)` of the target critic, `[B]`: the score best-of-N ranks candidates by (the verifier
        probe's, `experiments.verifier`); the critic does not read K, accepted for the probe's signature."""
        return self.q_values(self.target_params["critic"], observations, actions).min(axis=0)

    def sample_actions(self, observations: Array, rng: Array, K: int | None = None, N: int = 1) -> Array:
        """`[B, A]`: N consistency samples of K steps each, the best by the target critic's `min_j Q'_j(x, a)`;
        N = 1 is one sample and asks no critic. K defaults to `consistency_steps` (the trained policy's)."""
        K = self.config.consistency_steps if K is None else K
        validate_K_N(K, N, self.max_K, self)
        actor = self.params["actor"]
        features = self.features(actor, observations)  # once for every candidate and step
        denoiser = self.denoiser(actor)

        def sample_fn(obs: Array, key: Array) -> Array:
            return consistency.sample(denoiser, features, key, K, self.action_dim)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.aggregated_q(obs, actions, K)

        return sample_best_of_n(sample_fn, score_fn, observations, rng, N)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: CACConfig | None = None
    ) -> CACAgent:
        config = CACConfig() if config is None else config

        def networks(obs: Array, act: Array, action_dim: int):
            return {
                "critic": (baselines.critic_def(config), (obs, act)),
                "actor": (_actor_def(config, action_dim), (obs, act, act[..., :1])),
            }

        fields = baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"])
        # The EMA actor starts as a copy of the actor (the code's deepcopy), as the target critic does.
        fields["target_params"] = {**fields["target_params"], "actor": fields["params"]["actor"]}
        return cls(**fields)


class ConsistencyActorNet(nn.Module):
    """`F(x, a_sigma, sigma)` of the CAC code's `MLP`: the raw noise level through a sinusoidal embedding and a
    small Mish MLP (`TIME_DIM` -> 2 `TIME_DIM` -> `TIME_DIM`), concatenated with the noised action and the
    observation, then the trunk (here the baselines' GELU MLP of `hidden_dims`; the code's is 3x256 Mish). With an
    `encoder`, its own encoder (parameters under 'encoder'); `encoded=True` says the caller already encoded."""

    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = False
    encoder: str | None = None

    @nn.compact
    def __call__(self, observations: Array, x: Array, sigma: Array | float, encoded: bool = False) -> Array:
        if self.encoder is not None and not encoded:
            observations = encoder_module(self.encoder)(observations)
        sigma = as_column(sigma, x.shape[:-1])
        t = nn.Dense(TIME_DIM)(jax.nn.mish(nn.Dense(2 * TIME_DIM)(sinusoidal_embedding(sigma, TIME_DIM))))
        inputs = jnp.concatenate([x, t, observations], axis=-1)
        return MLP((*self.hidden_dims, self.action_dim), activate_final=False, layer_norm=self.layer_norm)(inputs)


def sinusoidal_embedding(sigma: Array, dim: int) -> Array:
    """`[sin(sigma w_k), cos(sigma w_k)]`, `w_k = 10000^(-k / (dim/2 - 1))`, k < dim/2 (the code's
    `SinusoidalPosEmb`): `[*batch, 1]` -> `[*batch, dim]`."""
    half = dim // 2
    w = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    angles = sigma * w
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _actor_def(config: CACConfig, action_dim: int) -> ConsistencyActorNet:
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return ConsistencyActorNet(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CACConfig(baselines.BaselineConfig):
    """The baselines' shared sizes and defaults (4x512 networks, LayerNorm in the critic only, Adam 3e-4, batch 256,
    gamma 0.99, tau 0.005, two critics) with the CAC code's `Consistency_QL` defaults for what is its own;
    per-environment values: `CACAgent.ENV_SETTINGS`."""

    grad_clip_norm: float = 1.0
    """Global-norm gradient clip per network (the CAC code's `grad_norm` default 1.0; its D4RL runs set 1 to 10)."""
    eta: float = setting(1.0, check=NON_NEGATIVE)
    """Weight of the Q term against the consistency loss (the CAC code's `eta`, default 1.0; its D4RL runs set it
    by task)."""
    consistency_steps: int = setting(2, check=POSITIVE_INTEGER)
    """Consistency sampling steps of the Q term's actions, the critic target's next actions and `sample_actions`'
    default K (the CAC code's `T`: 2 on 18 of its 20 D4RL tasks)."""
    scale_consis_loss: bool = setting(True, check=BOOL)
    """Scale each example's consistency loss by `100 / (sigma_{n+1} - sigma_n)` (the code's default, and what its
    `offline.py` runs: it never passes its per-task value on)."""
    ct_period: int = setting(50_000, check=POSITIVE_INTEGER)
    """Updates over which the consistency loss's number of levels grows from 2 to 150 before it restarts (the code's
    `train()` call: `eval_freq` 50 x 1000 steps)."""
    ema_decay: float = setting(0.995, check=OPEN_UNIT)
    """Decay of the EMA actor (the code's `ema_decay`)."""
    update_ema_every: int = setting(5, check=POSITIVE_INTEGER)
    """The EMA actor moves every this many updates (the code's `update_ema_every`)."""
    step_start_ema: int = setting(1000, check=NON_NEGATIVE_INTEGER)
    """Updates before the EMA actor first moves; until then it is the initial actor (the code's `step_start_ema`)."""


CACAgent.Config = CACConfig
