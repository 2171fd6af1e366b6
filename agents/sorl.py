"""SORL: a shortcut-model policy and an ensemble critic trained together in one stage (docs/method.md).

Each loss of the method is one method below: `flow_matching_loss`, `self_consistency_loss`, `q_loss` (their
weighted sum is `actor_loss`) and `critic_loss`. The sampler, targets and verifier come from `sorl.shortcut` and
`sorl.inference`, the same code the critic target and evaluation use.

Parameter convention: a loss differentiates only the parameters passed to it (`actor_params`, or
`params = {'actor', 'critic'}` for the critic loss); everything read from `self` (the critic in the Q term, the
target networks) is the pre-update value and is wrapped in an explicit `stop_gradient`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp
import optax

from sorl import shortcut
from sorl.agent import Agent
from sorl.errors import SorlError
from sorl.inference import aggregate, sample_best_of_n, validate_K_N
from sorl.networks import CriticEnsemble, ShortcutVelocityNet, encode
from sorl.optim import ModuleOptimizer, ema_targets, prefixed
from sorl.seeds import K_SCHEDULE_SEED
from sorl.sources import SORL_README, verified
from sorl.validation import (
    BOOL,
    HALF_OPEN_UNIT,
    NON_NEGATIVE,
    POWER_OF_TWO,
    check_config,
    invalid,
    setting,
)

Array = jax.Array
Params = Any
Batch = dict[str, Array]


class ShortcutPolicy(Agent):
    """The shortcut-model policy that SORL and flow BC share: the velocity network, its two behaviour-cloning
    losses and the K-step sampler. Immutable agent state, checkpointable as one pytree and vmappable over seeds
    (its PRNG key included); `params`, `target_params` hold at least the policy under 'actor'."""

    rng: Array
    step: Array
    params: dict[str, Params]  # {'actor': shortcut velocity net, ...}
    target_params: dict[str, Params]  # EMA copies
    opt_state: Any
    action_dim: int = flax.struct.field(pytree_node=False)
    config: Any = flax.struct.field(pytree_node=False)  # any config with the policy settings (POLICY_KEYS)

    @property
    def max_K(self) -> int:
        """Largest sampling step count trained (`denoise_timesteps`, M)."""
        return self.config.denoise_timesteps

    @property
    def actor_def(self) -> ShortcutVelocityNet:
        return actor_network(self.config, self.action_dim)

    def encode(self, actor_params: Params, observations: Array) -> Array:
        """What the velocity net sees of `observations`: its own encoder's features (`--agent.encoder`), else the
        observations themselves. Encoded once per sampler call, then reused by every Euler step."""
        return encode(self.config.encoder, actor_params, observations)

    def velocity_fn(self, actor_params: Params) -> shortcut.VelocityFn:
        """The velocity on *encoded* observations (`encode`; the observations themselves without an encoder)."""

        def velocity(features: Array, a_t: Array, t: Array | float, d: Array | float) -> Array:
            return self.actor_def.apply({"params": actor_params}, features, a_t, t, d, encoded=True)

        return velocity

    def flow_matching_loss(
        self, batch: Batch, actor_params: Params, rng: Array, features: Array | None = None
    ) -> Array:
        """L_FM: velocity at the finest step (d = log2 M) regressed on a1 - (1 - eps) a0. `features`: the batch's
        observations already encoded with `actor_params` (`encode`), else encoded here."""
        a1 = batch["actions"]
        fm = shortcut.flow_matching_batch(rng, a1, self.config.denoise_timesteps, self.config.t_epsilon)
        target = shortcut.flow_matching_target(fm.a0, a1, self.config.t_epsilon)
        features = self.encode(actor_params, batch["observations"]) if features is None else features
        pred = self.velocity_fn(actor_params)(features, fm.a_t, fm.t, fm.d)
        return jnp.mean((pred - target) ** 2)

    def self_consistency_loss(
        self, batch: Batch, actor_params: Params, rng: Array, features: Array | None = None
    ) -> Array:
        """L_SC: one step of size h matches two half steps of the target policy, for every coarser h (`features`: as
        in `flow_matching_loss`)."""
        M = self.config.denoise_timesteps
        if M == 1:  # no coarser level than the finest: nothing to distil
            return jnp.zeros((), jnp.float32)
        sc = shortcut.self_consistency_batch(rng, batch["actions"], M, self.config.t_epsilon)
        target_params = jax.lax.stop_gradient(self.target_params["actor"])
        target_features = self.encode(target_params, batch["observations"])
        # self_consistency_target stops the gradient of the target itself, whatever network produced it.
        target = shortcut.self_consistency_target(
            self.velocity_fn(target_params), target_features, sc.a_t, sc.t, sc.d, sc.h
        )
        features = self.encode(actor_params, batch["observations"]) if features is None else features
        pred = self.velocity_fn(actor_params)(features, sc.a_t, sc.t, sc.d)
        return jnp.mean((pred - target) ** 2)


class SORLAgent(ShortcutPolicy):
    """The shortcut policy and its critic: params, target_params and opt_state hold 'actor' and 'critic'
    (opt_state: one state per network, or one shared state with `released_update`)."""

    config: SORLConfig = flax.struct.field(pytree_node=False)

    ENV_SETTINGS = {
        # The released README's all-tasks command list. SORL's release has no pixel-task or offline-to-online
        # commands: pixel tasks take their state twin's values, online runs the offline ones.
        "antmaze-large-navigate": verified(SORL_README, q_loss_coef=500, discount=0.99, q_agg="min"),
        "antmaze-giant-navigate": verified(SORL_README, q_loss_coef=500, discount=0.995, q_agg="min"),
        "humanoidmaze-medium-navigate": verified(SORL_README, q_loss_coef=100, discount=0.995, q_agg="mean"),
        "humanoidmaze-large-navigate": verified(SORL_README, q_loss_coef=500, discount=0.995, q_agg="mean"),
        # The released README's all-tasks list gives antsoccer discount=0.995 (tasks 1-5, the default task4
        # included); its default-task line gives no discount (i.e. 0.99). We keep 0.995: the all-tasks list is
        # the complete one, and the README says discount follows FQL's, which is 0.995 on antsoccer.
        "antsoccer-arena-navigate": verified(SORL_README, q_loss_coef=500, discount=0.995, q_agg="mean"),
        "cube-single-play": verified(SORL_README, q_loss_coef=10, discount=0.99, q_agg="mean"),
        "cube-double-play": verified(SORL_README, q_loss_coef=50, discount=0.99, q_agg="mean"),
        "scene-play": verified(SORL_README, q_loss_coef=100, discount=0.99, q_agg="mean"),
    }
    PUBLISHED_COLUMN = "SORL"
    PUBLISHED_AS = (
        "sorl with released_update=True (paper-sorl spec): the released code's update, which produced the "
        "published numbers; released_update=False (paper-sorl-clean) is our default, the paper text's update"
    )

    @property
    def critic_def(self) -> CriticEnsemble:
        return _critic_def(self.config)

    def q_values(self, critic_params: Params, observations: Array, actions: Array, K: Array | float) -> Array:
        """`[num_critics, B]` Q values of actions produced with K sampling steps."""
        return self.critic_def.apply({"params": critic_params}, observations, actions, K)

    def aggregate(self, qs: Array) -> Array:
        return aggregate(qs, self.config.q_agg)

    def aggregated_q(self, observations: Array, actions: Array, K: Array | float) -> Array:
        """`agg_j Q_j(x, a, K)` with the current critic: the best-of-N verifier's score, `[B]`."""
        return self.aggregate(self.q_values(self.params["critic"], observations, actions, K))

    @property
    def K_choices(self) -> list[int]:
        """The step counts the Q term and the critic target draw from: 1, 2, 4, ..., max_k_backprop."""
        return [2**i for i in range(int(math.log2(self.config.max_k_backprop)) + 1)]

    def draw_K_index(self, rng: Array) -> Array:
        """An index into `K_choices`, uniform."""
        return jax.random.randint(rng, (), 0, len(self.K_choices))

    def sample_with_random_K(
        self,
        actor_params: Params,
        observations: Array,
        rng: Array,
        K_index: Array | int | None = None,
        features: Array | None = None,
    ) -> tuple[Array, Array]:
        """Actions from the policy with one K drawn uniformly from {1, 2, ..., max_k_backprop}; returns (a, K).

        `rng` gives the noise and, unless `K_index` is given, the draw of K. K must be static for the sampler,
        so each K is one `lax.switch` branch and only the drawn branch runs — as long as the index is not
        batched: under `vmap` over seeds a per-seed index makes every branch run (1 + 2 + ... +
        max_k_backprop network calls), which is why the training loop draws K from a key shared by the seeds
        (`train_update`). A Python int `K_index` traces the one branch alone (XLA cost analysis per K).
        Gradients reach `actor_params` through every Euler step unless the caller stops them. `features`: the
        observations already encoded with `actor_params`, else encoded here.
        """
        K_values = self.K_choices
        idx_rng, noise_rng = jax.random.split(rng)
        idx = self.draw_K_index(idx_rng) if K_index is None else K_index
        noise = jax.random.normal(noise_rng, (*observations.shape[:-1], self.action_dim))
        if features is None:  # once, outside the branches and the Euler steps
            features = self.encode(actor_params, observations)

        def branch(K: int):
            return lambda p, feats, z: shortcut.sample_euler(self.velocity_fn(p), feats, z, K)

        if isinstance(idx, int):
            return branch(K_values[idx])(actor_params, features, noise), jnp.float32(K_values[idx])
        actions = jax.lax.switch(idx, [branch(K) for K in K_values], actor_params, features, noise)
        return actions, jnp.exp2(idx).astype(jnp.float32)

    # --------------------------------------------------------------------------------------------- losses

    def q_loss(
        self,
        batch: Batch,
        actor_params: Params,
        rng: Array,
        K_index: Array | int | None = None,
        features: Array | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """L_Q = -mean Q(x, a^pi, K) over batch and ensemble; a^pi sampled with gradients, critic frozen."""
        observations = batch["observations"]
        actions, K = self.sample_with_random_K(actor_params, observations, rng, K_index, features)
        # Policy improvement must not move the critic.
        critic_params = jax.lax.stop_gradient(self.params["critic"])
        q = self.q_values(critic_params, observations, actions, K).mean(axis=0)
        loss = -q.mean()
        if self.config.normalize_q_loss:
            # Scale-free Q term: the normaliser is a constant, not something to optimise.
            loss = loss * jax.lax.stop_gradient(1.0 / jnp.abs(q).mean())
        info = {"q_loss": loss, "q": q.mean(), "mse": jnp.mean((actions - batch["actions"]) ** 2), "K": K}
        return loss, info

    def actor_loss(
        self, batch: Batch, actor_params: Params, rng: Array, K_index: Array | int | None = None
    ) -> tuple[Array, dict[str, Array]]:
        """c_FM * L_FM + alpha * L_SC + c_Q * L_Q (`K_index`: the Q term's K, else drawn from `rng`)."""
        cfg = self.config
        fm_rng, sc_rng, q_rng = jax.random.split(rng, 3)
        # The policy's encoder runs once for its three terms (one backward pass through it, not three).
        features = self.encode(actor_params, batch["observations"])
        fm_loss = self.flow_matching_loss(batch, actor_params, fm_rng, features)
        sc_loss = self.self_consistency_loss(batch, actor_params, sc_rng, features)
        if cfg.q_loss_coef != 0:
            q_loss, info = self.q_loss(batch, actor_params, q_rng, K_index, features)
        else:  # the "Q term off" ablation skips the K-step sampler entirely
            q_loss, info = jnp.zeros((), jnp.float32), {}
        loss = cfg.bc_flow_loss_coef * fm_loss + cfg.alpha * sc_loss + cfg.q_loss_coef * q_loss
        return loss, {"actor_loss": loss, "bc_flow_loss": fm_loss, "consistency_loss": sc_loss, **info}

    def critic_loss(
        self, batch: Batch, params: dict[str, Params], rng: Array, K_index: Array | int | None = None
    ) -> tuple[Array, dict[str, Array]]:
        """Mean over members and batch of (Q_j(x, a, K) - y)^2, y = r + gamma mask agg_j Q'_j(x', a', K)."""
        next_actions, K = self.sample_with_random_K(params["actor"], batch["next_observations"], rng, K_index)
        if not self.config.released_update:
            # The paper's critic loss has no policy term; the released code lets it through (see released_update).
            next_actions = jax.lax.stop_gradient(next_actions)
        target_critic = jax.lax.stop_gradient(self.target_params["critic"])
        next_q = self.aggregate(self.q_values(target_critic, batch["next_observations"], next_actions, K))
        target = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        q = self.q_values(params["critic"], batch["observations"], batch["actions"], K)
        loss = jnp.mean((q - target) ** 2)
        info = {"critic_loss": loss, "q_mean": q.mean(), "q_max": q.max(), "q_min": q.min(), "K": K}
        return loss, info

    # --------------------------------------------------------------------------------------------- update

    def update(
        self, batch: Batch, *, K_rng: Array | None = None, K: int | None = None
    ) -> tuple[SORLAgent, dict[str, Array]]:
        """One critic step and one actor step on `batch`, then EMA targets. Pure; jit/scan/vmap it outside.

        Randomness: `new_rng, critic_rng, actor_rng = jax.random.split(self.rng, 3)`. The critic target's K and
        the Q term's K are drawn from critic_rng and actor_rng (`sample_with_random_K`) unless `K_rng` is given;
        then from `fold_in(K_rng, 0)` and `fold_in(K_rng, 1)` (the training loop's schedule shared by all
        seeds, `train_update`); the noise comes from critic_rng and actor_rng either way. `K`, a static int,
        fixes both step counts (analysis only: XLA's cost of the update as executed for that K).
        """
        new_rng, critic_rng, actor_rng = jax.random.split(self.rng, 3)
        if K is not None:
            if K not in self.K_choices:
                raise SorlError(f"K={K}: the update samples with K in {self.K_choices}")
            K_indices = (self.K_choices.index(K),) * 2
        elif K_rng is not None:
            K_indices = tuple(self.draw_K_index(jax.random.fold_in(K_rng, i)) for i in (0, 1))
        else:
            K_indices = (None, None)
        if self.config.released_update:
            params, opt_state, info = self._released_step(batch, critic_rng, actor_rng, K_indices)
        else:
            params, opt_state, info = self._paper_step(batch, critic_rng, actor_rng, K_indices)
        # Targets move towards the pre-step parameters, as in both the FQL and the released SORL code.
        target_params = ema_targets(self.params, self.target_params, self.config.tau)
        agent = self.replace(
            rng=new_rng, step=self.step + 1, params=params, target_params=target_params, opt_state=opt_state
        )
        return agent, info

    def train_update(self, batch: Batch) -> tuple[SORLAgent, dict[str, Array]]:
        """`update` as the training loop runs it: K drawn from the schedule shared by all seeds.

        Both K draws of update `step` come from `K_schedule_rng(step)`, which depends on the step count alone.
        Every seed therefore sees the same sequence of K (each K still uniform and independent across updates;
        everything else — initialisation, batches, noise — stays per seed), and seeds trained as one vmapped
        batch (`runner.multiseed`, the step count shared, not batched) run the one drawn `lax.switch` branch
        instead of all of them, while a single-seed run takes exactly the same steps as that seed in a batch.
        """
        return self.update(batch, K_rng=K_schedule_rng(self.step))

    def _paper_step(self, batch: Batch, critic_rng: Array, actor_rng: Array, K_indices=(None, None)):
        """The paper's update: critic and actor each take one step of their own clipped Adam.

        One backward pass of critic_loss + actor_loss gives both gradients at once: the critic loss cannot reach
        the policy (a' is stop-gradient'ed) and the actor loss cannot reach the critic (frozen in the Q term), so
        grads['critic'] = dL_critic/dcritic and grads['actor'] = dL_actor/dactor, both at the pre-step
        parameters — the same as a critic step then an actor step from the pre-step parameters.
        """

        def total_loss(params: dict[str, Params]):
            critic_loss, critic_info = self.critic_loss(batch, params, critic_rng, K_indices[0])
            actor_loss, actor_info = self.actor_loss(batch, params["actor"], actor_rng, K_indices[1])
            return critic_loss + actor_loss, prefixed(critic=critic_info, actor=actor_info)

        grads, info = jax.grad(total_loss, has_aux=True)(self.params)
        params, opt_state, norms = ModuleOptimizer.of(self.config).step(self.params, self.opt_state, grads)
        return params, opt_state, {**info, **norms}

    def _released_step(self, batch: Batch, critic_rng: Array, actor_rng: Array, K_indices=(None, None)):
        """The released code's update, reproduced exactly (docs/method.md, "Update modes").

        One clipped Adam over all parameters, stepped twice: (1) with the critic loss's gradient, which includes
        a policy gradient through a' (no stop-gradient in this mode) and is clipped jointly with the critic's;
        (2) with the actor loss's gradient at the parameters after (1), the critic getting a zero gradient but
        still moving by Adam's momentum. Both losses read the critic and the targets from before the update.
        """
        tx = ModuleOptimizer.of(self.config).tx
        critic_grads, critic_info = jax.grad(
            lambda p: self.critic_loss(batch, p, critic_rng, K_indices[0]), has_aux=True
        )(self.params)
        updates, opt_state = tx.update(critic_grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)

        actor_grad, actor_info = jax.grad(lambda p: self.actor_loss(batch, p, actor_rng, K_indices[1]), has_aux=True)(
            params["actor"]
        )
        actor_grads = {"actor": actor_grad, "critic": jax.tree.map(jnp.zeros_like, params["critic"])}
        updates, opt_state = tx.update(actor_grads, opt_state, params)
        params = optax.apply_updates(params, updates)

        info = prefixed(critic=critic_info, actor=actor_info)
        info["critic/grad_norm"] = optax.global_norm(critic_grads)
        info["actor/grad_norm"] = optax.global_norm(actor_grad)
        return params, opt_state, info

    # ------------------------------------------------------------------------------------------- inference

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]` actions in [-1, 1] from K-step sampling; N > 1 keeps the best of N by agg_j Q_j(x, a, K).

        K and N are static; call through `sorl.inference.make_policy_fn()` for the jitted version.
        """
        validate_K_N(K, N, self.max_K)
        velocity = self.velocity_fn(self.params["actor"])
        features = self.encode(self.params["actor"], observations)  # once for all N candidates

        def sample_fn(obs: Array, key: Array) -> Array:  # obs: `observations` (sample_best_of_n passes them)
            noise = jax.random.normal(key, (*obs.shape[:-1], self.action_dim))
            return shortcut.sample_euler(velocity, features, noise, K)

        def score_fn(obs: Array, actions: Array) -> Array:
            return self.aggregated_q(obs, actions, K)

        return sample_best_of_n(sample_fn, score_fn, observations, rng, N)

    # ---------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls,
        rng: Array | int,
        example_observations: Array,
        example_actions: Array,
        config: SORLConfig | None = None,
    ) -> SORLAgent:
        """A fresh agent; `rng` a PRNG key (or an int seed). vmap over keys for several seeds at once."""
        config = SORLConfig() if config is None else config
        config.validate()
        if isinstance(rng, int):
            rng = jax.random.PRNGKey(rng)
        observations = jnp.asarray(example_observations, jnp.float32)
        actions = jnp.asarray(example_actions, jnp.float32)
        return _init_agent(cls, config, rng, observations[:1], actions[:1])


def K_schedule_rng(step: Array | int) -> Array:
    """The key both K draws of update `step` come from in training: a function of the step count alone."""
    return jax.random.fold_in(jax.random.PRNGKey(K_SCHEDULE_SEED), step)


# Jitted as a whole and cached per (class, config, shapes): op-by-op initialisation compiles every small op.
@partial(jax.jit, static_argnums=(0, 1))
def _init_agent(cls: type[SORLAgent], config: SORLConfig, rng: Array, observations: Array, actions: Array):
    action_dim = int(actions.shape[-1])
    rng, actor_rng, critic_rng = jax.random.split(rng, 3)
    scalars = actions[..., :1]
    params = {
        "actor": actor_network(config, action_dim).init(actor_rng, observations, actions, scalars, scalars)["params"],
        "critic": _critic_def(config).init(critic_rng, observations, actions, scalars)["params"],
    }
    tx = ModuleOptimizer.of(config).tx
    # One shared Adam state in the released update; one per network otherwise.
    opt_state = tx.init(params) if config.released_update else {name: tx.init(p) for name, p in params.items()}
    return cls(
        rng=rng,
        step=jnp.zeros((), jnp.int32),
        params=params,
        target_params=params,
        opt_state=opt_state,
        action_dim=action_dim,
        config=config,
    )


def actor_network(config: Any, action_dim: int) -> ShortcutVelocityNet:
    """The shortcut velocity net a config's `actor_*` settings describe (SORL's and flow BC's policy)."""
    return ShortcutVelocityNet(
        action_dim=action_dim,
        hidden_dims=(config.actor_layer_size,) * config.actor_num_layers,
        layer_norm=config.actor_layer_norm,
        encoder=config.encoder,
    )


def _critic_def(config: SORLConfig) -> CriticEnsemble:
    return CriticEnsemble(
        hidden_dims=(config.value_layer_size,) * config.value_num_layers,
        layer_norm=config.layer_norm,
        num_members=config.num_critics,
        encoder=config.encoder,  # the critic's own encoder, as the reference's (not shared with the actor)
    )


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SORLConfig:
    """The released code's keys and defaults (docs/method.md, "Defaults"); per-env values: `SORLAgent.ENV_SETTINGS`."""

    lr: float = 1e-4
    """Adam learning rate of every network."""
    grad_clip_norm: float = 1.0
    """Global-norm gradient clip of each Adam step (0 disables clipping)."""
    optimizer_beta1: float = setting(0.9, check=HALF_OPEN_UNIT)
    """Adam's first-moment decay (beta1)."""
    optimizer_beta2: float = setting(0.999, check=HALF_OPEN_UNIT)
    """Adam's second-moment decay (beta2)."""
    batch_size: int = 256
    """Dataset transitions per gradient update."""
    actor_layer_size: int = 512
    """Width of each hidden layer of the shortcut policy's MLP."""
    actor_num_layers: int = 4
    """Hidden layers of the shortcut policy's MLP (0 makes the velocity net linear)."""
    value_layer_size: int = 512
    """Width of each hidden layer of the critic's MLPs."""
    value_num_layers: int = 4
    """Hidden layers of the critic's MLPs."""
    layer_norm: bool = True
    """LayerNorm in the critic's hidden layers."""
    actor_layer_norm: bool = False
    """LayerNorm in the shortcut policy's hidden layers."""
    discount: float = 0.99
    """Discount factor gamma of the critic target."""
    tau: float = 0.005
    """EMA rate tau of the target networks (target policy, and target critic where there is one)."""
    q_agg: Literal["mean", "min"] = "mean"
    """How the critic ensemble's values combine in the critic target and the best-of-N verifier: mean or min."""
    alpha: float = 10.0
    """Weight of the self-consistency loss in the actor loss."""
    bc_flow_loss_coef: float = setting(10.0, check=NON_NEGATIVE)
    """Weight of the flow-matching (behaviour cloning) loss in the actor loss."""
    q_loss_coef: float = setting(100.0, check=NON_NEGATIVE)
    """Weight of the Q term (policy improvement) in the actor loss; the released default, tuned per environment."""
    normalize_q_loss: bool = True
    """Divide the Q term by the batch's mean |Q| (no gradient through it), so q_loss_coef is scale-free."""
    t_epsilon: float = setting(1e-5, check=HALF_OPEN_UNIT)
    """Epsilon of the flow interpolant a_t = (1 - (1 - epsilon) t) a0 + t a1."""
    denoise_timesteps: int = setting(8, check=POWER_OF_TWO)
    """M: the finest discretisation the policy is trained at, and the largest sampling steps K at test time."""
    max_k_backprop: int = setting(8, check=POWER_OF_TWO)
    """Largest K the Q term and the critic target sample with (K drawn from 1, 2, 4, ... up to it)."""
    num_critics: int = 2
    """Critics in the ensemble (C)."""
    released_update: bool = setting(False, check=BOOL)
    """Reproduce the released code's update instead of the paper's (docs/method.md, "Update modes")."""
    encoder: str | None = None
    """Image encoder of pixel tasks (impala_small in the released commands); none feeds states to the MLPs."""

    def validate(self) -> None:
        """Raise a one-line SorlError naming the first invalid setting (`sorl.validation`)."""
        check_config(self)

    def cross_checks(self) -> None:
        if self.max_k_backprop > self.denoise_timesteps:
            raise invalid(
                "max_k_backprop", self.max_k_backprop, f"must be at most denoise_timesteps={self.denoise_timesteps}"
            )


SORLAgent.Config = SORLConfig
