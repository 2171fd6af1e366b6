"""SAC: soft actor-critic (Haarnoja et al. 2018) as the FQL reference code ships it (`agents/sac.py`); trained
online from the start with half of each batch from the dataset (`--steps 0 --online-steps N --balanced-sampling`)
it is the reference's RLPD (Ball et al. 2023).

Three parts, one Adam step of the summed losses per update (`sorl.optim.joint_update`):

- `critic_loss`: each `Q_j(x, a)` regresses on `y = r + gamma mask agg_j Q'_j(x', a')` with `a' ~ pi(. | x')` drawn
  from the current policy and `agg` the ensemble's min (`q_agg`) of the EMA target critic; the loss is the mean over
  members and batch. The entropy backup `- gamma mask alpha log pi(a' | x')` in `y` is off in the reference
  (`backup_entropy = False`);
- `actor_loss`: `mean(alpha log pi(a | x) - mean_j Q_j(x, a))`, `a ~ pi(. | x)` reparameterised, critic and alpha
  held fixed (the reference's actor reads the ensemble's *mean*, whatever `q_agg`);
- `temperature_loss`: `alpha (H - H_target)` with `H = -mean log pi(a | x)` of the actor loss's draws (held fixed),
  `alpha = exp(log_alpha)` (starts at 1) and `H_target = -target_entropy_multiplier * action_dim` (-dim(A) / 2).

The policy is a tanh-squashed Gaussian: an MLP trunk (4x512 GELU, no LayerNorm) with two small-init heads, the mean
and a state-dependent log-std clipped to [-5, 2]; `log pi` has the tanh's change of variables. The temperature is
stepped by the same Adam as the networks but kept out of `params` (`log_alpha`): `params` are the networks, each with
its own image encoder where there is one.

Acting, as the reference's loop: evaluation with temperature 0, the action `tanh(mean)` (`sample_actions`, N = 1);
data collection with temperature 1, a draw of the squashed Gaussian (`exploration_actions`). K does not apply (no
sampling steps, `GRID_NOTES`). N > 1 ranks `tanh(mean)` and N - 1 draws of the policy by `agg_j Q_j(x, a)` of its
critic (`sorl.baselines.best_of_mode_and_samples`: the N = 1 action stays a candidate): SAC's critic is trained on
its own policy's actions, exactly the candidates it ranks.

No offline training: `Agent.OFFLINE` is False, so `sorl train --steps S` with S > 0 is refused in one line naming the
pure-online command (`runner.train.check_offline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sorl import baselines
from sorl.agent import Agent
from sorl.inference import validate_K_N
from sorl.networks import MLP, default_init, encoder_module
from sorl.optim import ModuleOptimizer
from sorl.sources import FQL_ONLINE, FQL_README, unverified, verified
from sorl.validation import BOOL, Check, is_number, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # the reference `Actor`'s clip of the log-std
INITIAL_ALPHA = 1.0  # the reference `LogParam`'s init_value

RLPD_EXAMPLE = FQL_ONLINE + " (its RLPD example: --offline_steps=0 --balanced_sampling=1 --agent=agents/sac.py)"
FQL_DISCOUNT = FQL_README + ": the discount its FQL commands use on this environment (the FQL paper uses one per " \
    "environment for every method); no RLPD command for it"  # fmt: skip


class TanhGaussianActor(nn.Module):
    """`(mean, log_std)` of the pre-tanh Gaussian: the reference `Actor` with `tanh_squash` and
    `state_dependent_std` (SAC's settings): MLP trunk with an activated last layer, two linear heads initialised at
    `final_init_scale`, the log-std clipped to [-5, 2]."""

    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = False
    final_init_scale: float = 1e-2
    encoder: str | None = None

    @nn.compact
    def __call__(self, observations: Array) -> tuple[Array, Array]:
        if self.encoder is not None:
            observations = encoder_module(self.encoder)(observations)
        x = MLP(tuple(self.hidden_dims), activate_final=True, layer_norm=self.layer_norm)(observations)
        mean = nn.Dense(self.action_dim, kernel_init=default_init(self.final_init_scale))(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init(self.final_init_scale))(x)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def tanh_log_det(x: Array) -> Array:
    """`sum log |d tanh(x) / dx|` over the action dimensions, in the form that stays finite for large |x|:
    `log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x))`."""
    return jnp.sum(2.0 * (math.log(2.0) - x - jax.nn.softplus(-2.0 * x)), axis=-1)


def squashed_sample(mean: Array, log_std: Array, rng: Array) -> tuple[Array, Array]:
    """A reparameterised draw `a = tanh(mean + std * eps)` and its log-density `log pi(a | x)`: `[B, A]`, `[B]`."""
    x = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    return jnp.tanh(x), baselines.gaussian_log_prob(mean, log_std, x) - tanh_log_det(x)


class SACAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'critic', 'actor'}
    target_params: dict[str, Params]  # {'critic'}
    log_alpha: Array  # the entropy temperature's log, a scalar
    opt_state: dict[str, Any]  # {'critic', 'actor', 'alpha'}
    action_dim: int = flax.struct.field(pytree_node=False)
    config: SACConfig = flax.struct.field(pytree_node=False)

    OFFLINE: ClassVar[bool] = False
    """Online only: the reference's SAC has no offline command (`runner.train.check_offline` refuses --steps > 0)."""
    GRID_NOTES: ClassVar[dict[str, str]] = {"K": "its tanh-Gaussian policy has no sampling steps"}
    # N: the critic ranks tanh(mean) and N - 1 policy draws (module docstring), so N is a real axis here.

    # Its runs are all online, so its per-environment values are its ENV_SETTINGS (what every run, `sorl train
    # --help` and the sources read); ONLINE_ENV_SETTINGS is for an online command that differs from an offline one.
    ENV_SETTINGS = {
        "humanoidmaze-medium-navigate": verified(RLPD_EXAMPLE, discount=0.995),
        "humanoidmaze-large-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "antmaze-giant-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "antsoccer-arena-navigate": unverified(FQL_DISCOUNT, discount=0.995),
    }
    # No published column: the published table is offline RL (the FQL paper's RLPD numbers are online curves).

    # ------------------------------------------------------------------------------------------- networks

    def policy(self, actor_params: Params, observations: Array) -> tuple[Array, Array]:
        """`(mean, log_std)` of the pre-tanh Gaussian."""
        return _actor_def(self.config, self.action_dim).apply({"params": actor_params}, observations)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`Q_j(x, a)` of every member, `[num_critics, B]`."""
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    @property
    def target_entropy(self) -> float:
        """`H_target`: the config's `target_entropy`, else `-target_entropy_multiplier * action_dim`."""
        if self.config.target_entropy is not None:
            return self.config.target_entropy
        return -self.config.target_entropy_multiplier * self.action_dim

    # --------------------------------------------------------------------------------------------- losses

    def critic_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`mean_{j, batch} (Q_j(x, a) - y)^2`, `y = r + gamma mask (agg_j Q'_j(x', a') [- alpha log pi(a' | x')])`,
        `a' ~ pi(. | x')`."""
        # The TD target is a constant: no gradient to the actor, the temperature or the target critic.
        actor, log_alpha, target = jax.lax.stop_gradient((params["actor"], self.log_alpha, self.target_params))
        next_actions, next_log_probs = squashed_sample(*self.policy(actor, batch["next_observations"]), rng)
        next_qs = self.q_values(target["critic"], batch["next_observations"], next_actions)
        next_q = baselines.aggregate(next_qs, self.config.q_agg)
        if self.config.backup_entropy:
            next_q = next_q - jnp.exp(log_alpha) * next_log_probs
        y = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        qs = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean((qs - y) ** 2)
        return loss, {"critic_loss": loss, "q_mean": qs.mean(), "q_max": qs.max(), "q_min": qs.min()}

    def actor_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`mean(alpha log pi(a | x) - mean_j Q_j(x, a))`, `a ~ pi(. | x)` reparameterised."""
        # Only the policy moves: the critic and alpha are constants here.
        critic, alpha = jax.lax.stop_gradient((params["critic"], jnp.exp(self.log_alpha)))
        mean, log_std = self.policy(params["actor"], batch["observations"])
        actions, log_probs = squashed_sample(mean, log_std, rng)
        q = self.q_values(critic, batch["observations"], actions).mean(axis=0)
        loss = jnp.mean(alpha * log_probs - q)
        info = {"actor_loss": loss, "entropy": -log_probs.mean(), "std": jnp.exp(log_std).mean(), "q": q.mean()}
        return loss, info

    def temperature_loss(
        self, batch: Batch, params: dict[str, Params], log_alpha: Array, rng: Array
    ) -> tuple[Array, dict[str, Array]]:
        """`alpha (H - H_target)`, `H = -mean log pi(a | x)` of the actor loss's draws (same key), held fixed: alpha
        falls while the policy's entropy is below the target and rises above it."""
        actor = jax.lax.stop_gradient(params["actor"])
        _, log_probs = squashed_sample(*self.policy(actor, batch["observations"]), rng)
        alpha = jnp.exp(log_alpha)
        loss = alpha * (-log_probs.mean() - self.target_entropy)
        return loss, {"alpha_loss": loss, "alpha": alpha}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[SACAgent, dict[str, Array]]:
        """One Adam step of critic, actor and temperature on the sum of their losses at the pre-step parameters,
        then the EMA target critic towards the pre-step critic. Pure; jit/scan/vmap it outside."""
        new_rng, rng = jax.random.split(self.rng)
        _, actor_rng, critic_rng = jax.random.split(rng, 3)  # the reference's keys, split for split
        _, critic_rng = jax.random.split(critic_rng)

        def total(params):
            networks = {k: v for k, v in params.items() if k != "alpha"}
            critic_loss, critic_info = self.critic_loss(batch, networks, critic_rng)
            actor_loss, actor_info = self.actor_loss(batch, networks, actor_rng)
            alpha_loss, alpha_info = self.temperature_loss(batch, networks, params["alpha"], actor_rng)
            info = baselines.prefixed(critic=critic_info, actor={**actor_info, **alpha_info})
            return critic_loss + actor_loss + alpha_loss, info

        # One Adam over the networks and the temperature, as the reference's one TrainState.
        joint = self.replace(params={**self.params, "alpha": self.log_alpha})
        new, info = baselines.joint_update(joint, total, new_rng)
        params = dict(new.params)
        return new.replace(params=params, log_alpha=params.pop("alpha")), info

    # ------------------------------------------------------------------------------------------ inference

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]`: `tanh(mean)` for N = 1 (the reference evaluates at temperature 0; K accepted and ignored); for
        N > 1 the best by `agg_j Q_j(x, a)` of `tanh(mean)` and N - 1 draws of the policy."""
        validate_K_N(K, N, self.max_K, self)
        mean, log_std = self.policy(self.params["actor"], observations)

        def sample_fn(_obs: Array, key: Array) -> Array:
            return jnp.clip(squashed_sample(mean, log_std, key)[0], -1, 1)

        def score_fn(obs: Array, actions: Array) -> Array:
            return baselines.aggregate(self.q_values(self.params["critic"], obs, actions), self.config.q_agg)

        mode = jnp.clip(jnp.tanh(mean), -1, 1)
        return baselines.best_of_mode_and_samples(mode, sample_fn, score_fn, observations, rng, N)

    def exploration_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """Online data collection: a draw of the squashed Gaussian (the reference acts at temperature 1), clipped
        as the reference clips; for N > 1 the best-of-N of `sample_actions`."""
        if N > 1:
            return self.sample_actions(observations, rng, K=K, N=N)
        validate_K_N(K, N, self.max_K, self)
        mean, log_std = self.policy(self.params["actor"], observations)
        return jnp.clip(squashed_sample(mean, log_std, rng)[0], -1, 1)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: SACConfig | None = None
    ) -> SACAgent:
        config = SACConfig() if config is None else config
        networks = lambda obs, act, action_dim: {  # noqa: E731
            "critic": (baselines.critic_def(config), (obs, act)),
            "actor": (_actor_def(config, action_dim), (obs,)),
        }
        fields = baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"])
        log_alpha = jnp.full((), math.log(INITIAL_ALPHA), jnp.float32)
        opt_state = {**fields.pop("opt_state"), "alpha": ModuleOptimizer.of(config).tx.init(log_alpha)}
        return cls(**fields, log_alpha=log_alpha, opt_state=opt_state)


def _actor_def(config: SACConfig, action_dim: int) -> TanhGaussianActor:
    return TanhGaussianActor(
        action_dim=action_dim,
        hidden_dims=baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers),
        layer_norm=config.actor_layer_norm,
        final_init_scale=config.actor_fc_scale,
        encoder=config.encoder,
    )


# ------------------------------------------------------------------------------------------------- config

NUMBER_OR_NONE = Check(lambda v: v is None or is_number(v), "must be a number or none")
NUMBER = Check(is_number, "must be a number")


@dataclass(frozen=True)
class SACConfig(baselines.BaselineConfig):
    """The reference's `agents/sac.py` get_config (4x512 networks, LayerNorm in the critics only, Adam 3e-4, batch
    256, discount 0.99, tau 0.005, two critics, min target); per-environment values: `SACAgent.ENV_SETTINGS`.
    The reference's `tanh_squash` and `state_dependent_std` are fixed at SAC's True (`TanhGaussianActor`)."""

    q_agg: Literal["mean", "min"] = "min"
    """How the target critics combine in the TD target and in ranking N candidates; the actor reads their mean."""
    actor_fc_scale: float = 0.01
    """Initialisation scale of the actor's mean and log-std heads."""
    target_entropy: float | None = setting(None, check=NUMBER_OR_NONE)
    """Entropy the temperature steers the policy to; none: -target_entropy_multiplier * action dimension."""
    target_entropy_multiplier: float = setting(0.5, check=NUMBER)
    """Target entropy per action dimension, negated, when target_entropy is none."""
    backup_entropy: bool = setting(False, check=BOOL)
    """Subtract gamma * alpha * log pi(a'|x') in the critic's TD target (the soft Bellman backup)."""


SACAgent.Config = SACConfig
