"""ReBRAC: behaviour-regularised actor-critic revisited (Tarasov et al. 2023), with the FQL reference's defaults.

TD3+BC with LayerNorm critics and separate behaviour-cloning penalties in the actor and the critic:

- `actor_loss`: a deterministic tanh actor `pi(x)` (final layer initialised at scale 0.01) maximises the
  scale-normalised `min_j Q_j(x, pi(x))` with the penalty `alpha_actor * ||pi(x) - a||^2` (critic frozen);
- `critic_loss`: `y = r + gamma mask (min_j Q'_j(x', a') - alpha_critic * ||a' - a'_data||^2)` with
  `a' = clip(pi'(x') + clip(N(0, actor_noise^2), +-actor_noise_clip))` from the target actor (target policy
  smoothing); `a'_data` is the dataset's next action (`next_actions`, see `prepare_dataset`);
- the critic steps every update, the actor (and the EMA of both targets) every `actor_freq`-th update.

Optimiser (`shared_adam`, default True, the FQL reference code's): one Adam over actor and critic, stepped on every
update with the gradient of `critic_loss + actor_loss`, the actor loss counting only on actor updates. On the other
updates the actor's gradient is zero, yet Adam still moves it by its momentum, and the step count that drives Adam's
bias correction advances for both networks every update. `shared_adam=False` gives the ReBRAC paper's scheme instead:
critic and actor each with their own Adam, the actor's stepped only on actor updates.

At test time the action is `pi(x)` (the reference evaluates with temperature 0, i.e. without exploration noise), and
K is ignored. Best-of-N keeps the best by `agg_j Q_j(x, a)` among `pi(x)` and N - 1 copies perturbed by the target
policy noise (`sorl.baselines.best_of_mode_and_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import flax
import jax
import jax.numpy as jnp
import optax

from sorl import baselines
from sorl.agent import Agent
from sorl.errors import SorlError
from sorl.inference import validate_K_N
from sorl.sources import FQL_PIXEL_EXAMPLE, FQL_README, RECALLED, VISUAL, unverified, verified
from sorl.validation import BOOL, NON_NEGATIVE, POSITIVE_INTEGER, setting

Array = jax.Array
Params = Any
Batch = dict[str, Array]


class ReBRACAgent(Agent):
    rng: Array
    step: Array  # updates done so far; the actor steps when (step + 1) % actor_freq == 0
    params: dict[str, Params]  # {'actor', 'critic'}
    target_params: dict[str, Params]  # {'actor', 'critic'}
    opt_state: Any  # shared_adam: one Adam state over params; else {"actor", "critic"}
    action_dim: int = flax.struct.field(pytree_node=False)
    config: ReBRACConfig = flax.struct.field(pytree_node=False)

    GRID_NOTES: ClassVar[dict[str, str]] = {"K": "its deterministic actor has no step count"}

    # q_agg is always min in the reference (our default); discount 0.995 on antmaze-giant, humanoidmaze and
    # antsoccer, as in FQL's commands for every agent.
    ENV_SETTINGS = {
        # A third-party table lists exactly these two pairs for ReBRAC on D4RL antmaze-umaze(-diverse): the
        # recalled antmaze values may be D4RL's, not OGBench's. The least certain entries here.
        "antmaze-large-navigate": unverified(
            RECALLED + "; possibly D4RL antmaze-umaze's values", alpha_actor=0.003, alpha_critic=0.002, discount=0.99
        ),
        "antmaze-giant-navigate": unverified(
            RECALLED + "; possibly D4RL antmaze-umaze-diverse's values",
            alpha_actor=0.003,
            alpha_critic=0.001,
            discount=0.995,
        ),
        "humanoidmaze-medium-navigate": verified(
            FQL_README + " (its ReBRAC example)", alpha_actor=0.01, alpha_critic=0.01, discount=0.995
        ),
        "humanoidmaze-large-navigate": unverified(RECALLED, alpha_actor=0.01, alpha_critic=0.01, discount=0.995),
        "antsoccer-arena-navigate": unverified(RECALLED, alpha_actor=0.01, alpha_critic=0.01, discount=0.995),
        "cube-single-play": unverified(
            RECALLED + VISUAL + " (visual-cube-single: 1, 0)", alpha_actor=1.0, alpha_critic=0.0, discount=0.99
        ),
        "cube-double-play": unverified(
            RECALLED + VISUAL + " (visual-cube-double: 0.1, 0)", alpha_actor=0.1, alpha_critic=0.0, discount=0.99
        ),
        "scene-play": unverified(
            RECALLED + VISUAL + " (visual-scene: 0.1, 0.01)", alpha_actor=0.1, alpha_critic=0.01, discount=0.99
        ),
        "puzzle-3x3-play": unverified(
            RECALLED + VISUAL + " (visual-puzzle-3x3: 0.3, 0.01)", alpha_actor=0.3, alpha_critic=0.01, discount=0.99
        ),
        "puzzle-4x4-play": unverified(RECALLED, alpha_actor=0.3, alpha_critic=0.01, discount=0.99),
        "visual-cube-single-play": verified(FQL_PIXEL_EXAMPLE, alpha_actor=1.0, alpha_critic=0.0),
    }
    PUBLISHED_COLUMN = "ReBRAC"
    PUBLISHED_AS = "rebrac with shared_adam=True (default): the FQL reference's single Adam over actor and critic"
    """Test-time axes that do not change the action (`runner.evaluation.grid_note`)."""

    @staticmethod
    def prepare_dataset(dataset: dict[str, Array]) -> dict[str, Array]:
        """The training dataset with `next_actions` added (`sorl.baselines.with_next_actions`), for the critic's
        behaviour-cloning penalty. The training loop calls this once, before sampling batches."""
        return baselines.with_next_actions(dataset)

    # ------------------------------------------------------------------------------------------- networks

    def actions(self, actor_params: Params, observations: Array) -> Array:
        """`pi(x) = tanh(mean)`, in (-1, 1)."""
        mean, _ = baselines.actor_head(self.config, self.action_dim).apply({"params": actor_params}, observations)
        return jnp.tanh(mean)

    def smoothing_noise(self, rng: Array, shape: tuple[int, ...]) -> Array:
        cfg = self.config
        return jnp.clip(cfg.actor_noise * jax.random.normal(rng, shape), -cfg.actor_noise_clip, cfg.actor_noise_clip)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    # --------------------------------------------------------------------------------------------- losses

    def critic_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Mean over members and batch of `(Q_j(x, a) - y)^2` with the penalised, smoothed target `y`."""
        cfg = self.config
        next_observations = batch["next_observations"]
        # Targets are constants: neither the target actor nor the target critic receives a gradient.
        target = jax.lax.stop_gradient(self.target_params)
        next_actions = self.actions(target["actor"], next_observations)
        next_actions = jnp.clip(next_actions + self.smoothing_noise(rng, next_actions.shape), -1, 1)
        next_q = baselines.aggregate(self.q_values(target["critic"], next_observations, next_actions), cfg.q_agg)
        if cfg.alpha_critic > 0:
            if "next_actions" not in batch:
                raise SorlError(
                    "rebrac with alpha_critic > 0 needs 'next_actions' in the batch: the training loop must pass "
                    "its dataset through ReBRACAgent.prepare_dataset (or set --agent.alpha_critic=0)"
                )
            next_q = next_q - cfg.alpha_critic * jnp.sum((next_actions - batch["next_actions"]) ** 2, axis=-1)
        y = batch["rewards"] + cfg.discount * batch["masks"] * next_q
        q = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean((q - y) ** 2)
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "q_max": q.max(), "q_min": q.min()}

    def actor_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """`-mean(Q / stopgrad(mean |Q|)) + alpha_actor * mean ||pi(x) - a||^2`, `Q = agg_j Q_j(x, pi(x))`."""
        actions = self.actions(params["actor"], batch["observations"])
        # Policy improvement must not move the critic.
        critic_params = jax.lax.stop_gradient(self.params["critic"])
        q = baselines.aggregate(self.q_values(critic_params, batch["observations"], actions), self.config.q_agg)
        q_loss = -jnp.mean(q * jax.lax.stop_gradient(1.0 / jnp.abs(q).mean()))
        mse = jnp.sum((actions - batch["actions"]) ** 2, axis=-1).mean()
        bc_loss = self.config.alpha_actor * mse
        loss = q_loss + bc_loss
        return loss, {"actor_loss": loss, "q_loss": q_loss, "bc_loss": bc_loss, "q": q.mean(), "mse": mse}

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[ReBRACAgent, dict[str, Array]]:
        """A critic step; on every `actor_freq`-th update also an actor step (from the pre-step critic) and the EMA
        of both targets towards the pre-step networks. Pure; jit/scan/vmap it outside."""
        new_rng, critic_rng = jax.random.split(self.rng)
        critic_grads, critic_info = jax.grad(
            lambda p: self.critic_loss(batch, {**self.params, "critic": p}, critic_rng), has_aux=True
        )(self.params["critic"])

        def actor_gradient(_):
            grad, info = jax.grad(lambda p: self.actor_loss(batch, {**self.params, "actor": p}), has_aux=True)(
                self.params["actor"]
            )
            return grad, _floats(info, grad_norm=optax.global_norm(grad), updated=1)

        def no_actor_gradient(_):
            # The actor's loss at the current parameters, for the log; its gradient does not count this update.
            _, info = self.actor_loss(batch, self.params)
            return jax.tree.map(jnp.zeros_like, self.params["actor"]), _floats(info, grad_norm=0, updated=0)

        is_actor_step = (self.step + 1) % self.config.actor_freq == 0
        actor_grads, actor_info = jax.lax.cond(is_actor_step, actor_gradient, no_actor_gradient, None)
        grads = {"actor": actor_grads, "critic": critic_grads}
        if self.config.shared_adam:
            params, opt_state = self._shared_adam_step(grads)
        else:
            params, opt_state = self._separate_adam_steps(grads, is_actor_step)
        targets = jax.lax.cond(
            is_actor_step,
            lambda: baselines.ema_targets(self.params, self.target_params, self.config.tau),
            lambda: self.target_params,
        )
        agent = self.replace(rng=new_rng, step=self.step + 1, params=params, target_params=targets, opt_state=opt_state)
        info = baselines.prefixed(critic=critic_info, actor=actor_info)
        return agent, {**info, "critic/grad_norm": optax.global_norm(critic_grads)}

    def _shared_adam_step(self, grads: dict[str, Params]) -> tuple[dict[str, Params], Any]:
        """The reference's optimiser: one Adam state over {actor, critic}, one step per update."""
        tx = baselines.ModuleOptimizer.of(self.config).tx
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return optax.apply_updates(self.params, updates), opt_state

    def _separate_adam_steps(self, grads: dict[str, Params], is_actor_step: Array) -> tuple[dict[str, Params], Any]:
        """The ReBRAC paper's scheme: the critic's Adam steps every update, the actor's only on actor updates."""
        optimizer = baselines.ModuleOptimizer.of(self.config)
        params, opt_state, _ = optimizer.step(self.params, self.opt_state, grads, names=["critic"])
        return jax.lax.cond(
            is_actor_step,
            lambda: optimizer.step(params, opt_state, grads, names=["actor"])[:2],
            lambda: (params, opt_state),
        )

    # ------------------------------------------------------------------------------------------ inference

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]`: `pi(x)` for N = 1 (K accepted and ignored); for N > 1 the best by `agg_j Q_j(x, a)` of `pi(x)`
        and N - 1 noisy copies `clip(pi(x) + clipped N(0, actor_noise^2))`."""
        validate_K_N(K, N, self.max_K)
        mode = self.actions(self.params["actor"], observations)

        def sample_fn(_obs: Array, key: Array) -> Array:
            return jnp.clip(mode + self.smoothing_noise(key, mode.shape), -1, 1)

        def score_fn(obs: Array, actions: Array) -> Array:
            return baselines.aggregate(self.q_values(self.params["critic"], obs, actions), self.config.q_agg)

        return baselines.best_of_mode_and_samples(mode, sample_fn, score_fn, observations, rng, N)

    def exploration_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """Online data collection: `clip(pi(x) + clipped N(0, actor_noise^2))` (the reference's temperature 1); for
        N > 1 the best-of-N of `sample_actions`."""
        if N > 1:
            return self.sample_actions(observations, rng, K=K, N=N)
        validate_K_N(K, N, self.max_K)
        mode = self.actions(self.params["actor"], observations)
        return jnp.clip(mode + self.smoothing_noise(rng, mode.shape), -1, 1)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: ReBRACConfig | None = None
    ) -> ReBRACAgent:
        config = ReBRACConfig() if config is None else config
        fields = baselines.initial_fields(
            rng,
            config,
            example_observations,
            example_actions,
            lambda obs, act, action_dim: {
                "actor": (baselines.actor_head(config, action_dim), (obs,)),
                "critic": (baselines.critic_def(config), (obs, act)),
            },
            targets=["actor", "critic"],
        )
        if config.shared_adam:  # one Adam state over both networks, as the reference's single TrainState
            fields["opt_state"] = baselines.ModuleOptimizer.of(config).tx.init(fields["params"])
        return cls(**fields)


def _floats(info: dict[str, Array], **extra: Array | float) -> dict[str, Array]:
    """`info` and `extra` as float32 arrays (both branches of the actor-step `cond` must return the same types)."""
    return {k: jnp.asarray(v, jnp.float32) for k, v in {**info, **extra}.items()}


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ReBRACConfig(baselines.BaselineConfig):
    """The reference's `agents/rebrac.py` keys and defaults; per-environment values: `ReBRACAgent.ENV_SETTINGS`."""

    q_agg: Literal["mean", "min"] = "min"
    """How the critics combine in the critic target, the actor's Q and the best-of-N verifier (reference: min)."""
    alpha_actor: float = setting(0.0, check=NON_NEGATIVE)
    """Actor BC coefficient: weight of the squared distance to the dataset action (tuned per environment)."""
    alpha_critic: float = setting(0.0, check=NON_NEGATIVE)
    """Critic BC coefficient: penalty on the next action's distance to the dataset's (tuned per environment)."""
    actor_freq: int = setting(2, check=POSITIVE_INTEGER)
    """The actor and the targets update every actor_freq-th update (the critic every update)."""
    actor_noise: float = setting(0.2, check=NON_NEGATIVE)
    """Std of the target policy smoothing noise (also the best-of-N candidates' perturbation)."""
    actor_noise_clip: float = setting(0.5, check=NON_NEGATIVE)
    """The smoothing noise is clipped to plus or minus this."""
    actor_fc_scale: float = 0.01
    """Initialisation scale of the actor's last layer."""
    shared_adam: bool = setting(True, check=BOOL)
    """One Adam over actor and critic stepped every update, as the reference; false gives each network its own."""

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"shared_adam": False}
    """Runs written before `shared_adam` existed were trained with one Adam per network."""


ReBRACAgent.Config = ReBRACConfig
