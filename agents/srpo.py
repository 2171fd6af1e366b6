"""SRPO: score regularized policy optimization (Chen et al. 2024, "Score Regularized Policy Optimization through
Diffusion Behavior", ICLR 2024, arXiv:2310.07297), after its official PyTorch code (`thu-ml/SRPO`: `SRPO.py`,
`utils.py`, `model.py`, `train_behavior.py`, `train_critic.py`, `train_policy.py`), on the suite's networks.

Four networks and two phases, one training loop (docs/method.md, SRPO). The phase is a schedule keyed on the
agent's own step counter (`self.step < pretrain_steps`, a `jax.lax.cond` inside `update`), so the update stays one
jittable, scannable, vmappable function and a checkpoint on either side of the boundary resumes bit for bit:

1. Pretraining (`step < pretrain_steps`; the reference's `train_behavior.py` and `train_critic.py`, run here side by
   side, one Adam/AdamW step of the summed losses per update, EMA target critic):
   - `behavior_loss`: the diffusion behaviour model `eps(x, a_t, t)` by noise prediction (`sorl.diffusion.ddpm_loss`):
     `mean_b ||eps(x, sqrt(ab_t) a + sqrt(1 - ab_t) z, t) - z||^2` at a random noise level;
   - `value_loss`: IQL's expectile regression of `V(x)` on `min_j Q'_j(x, a)` of the target critic;
   - `critic_loss`: `mean_j mean_b (Q_j(x, a) - (r + gamma mask V(x')))^2` (the reference's `update_q0`).
2. Policy extraction (`step >= pretrain_steps`; the reference's `train_policy.py`): the critic, value, target critic
   and behaviour model are frozen and only the deterministic policy `pi(x) = tanh(MLP(x))` moves, by
   `policy_loss`: `mean_b [ w(t) <eps(x, a_t, t), a> - beta <g, a> ]` with `a = pi(x)`, `a_t = sqrt(ab_t) a +
   sqrt(1 - ab_t) z`, `t ~ U[0.02, 0.98]`, `w(t) = 1 - ab_t = sigma_t^2` (the reference's default "VDS" weighting),
   `eps` and `g` constants: `eps` the frozen behaviour model's noise prediction (the gradient of the KL to the
   behaviour distribution, estimated at random noise levels: the "score regularization"), `g = grad_a mean_j
   Q'_j(x, a)` of the target critic, divided per state by its root-mean-square over the action dimensions when
   `normalize_q_grad` (the reference's `regq`, on for its maze tasks, as every OGBench task here).

The behaviour model. The reference's is a continuous-time VP-SDE noise predictor: `log alpha_t = -(beta_1 - beta_0)
t^2 / 4 - beta_0 t / 2` (beta_0 = 0.1, beta_1 = 20, `utils.marginal_prob_std`), `sigma_t^2 = 1 - alpha_t^2`,
`t ~ U[1e-3, 1]` for the behaviour loss and `U[0.02, 0.98]` for the policy loss. `sorl.diffusion.vp_schedule(T,
0.1, 20)` is that same process at `t = (i + 1) / T` (its `alpha_bar_i` is `alpha_t^2` in closed form), so the
behaviour loss is `sorl.diffusion.ddpm_loss` on it and nothing new is written for the diffusion: with
`diffusion_steps` T = 1000 (the default) the noise level is the reference's `t` on a grid of step 1e-3 over
[1e-3, 1], and the network is told the continuous time `t = (i + 1) / T`, not the index, as the reference's is.

Parameter convention (as agents/fql.py): each loss receives the dict of online parameters it may move, and every
other network it reads is wrapped in an explicit `stop_gradient`; targets are read from `self`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import optax

from sorl import baselines, diffusion
from sorl.agent import Agent
from sorl.errors import SorlError
from sorl.inference import validate_K_N
from sorl.networks import ShortcutVelocityNet
from sorl.sources import unverified
from sorl.validation import (
    BOOL,
    NON_NEGATIVE,
    NON_NEGATIVE_INTEGER,
    OPEN_CLOSED_UNIT,
    OPEN_UNIT,
    POSITIVE,
    POSITIVE_INTEGER,
    setting,
)

Array = jax.Array
Params = Any
Batch = dict[str, Array]

PRETRAIN_NETWORKS = ("value", "critic", "behavior")
POLICY_NETWORKS = ("actor",)

FQL_DISCOUNT = (
    "FQL's commands use discount 0.995 on antmaze-giant, the humanoid mazes and antsoccer for every agent (0.99 "
    "elsewhere); not read for SRPO itself: the FQL paper's appendix (its SRPO description and temperatures) could "
    "not be read here"
)


class SRPOAgent(Agent):
    rng: Array
    step: Array
    params: dict[str, Params]  # {'value', 'critic', 'behavior', 'actor'}
    target_params: dict[str, Params]  # {'critic'}
    opt_state: dict[str, Any]
    action_dim: int = flax.struct.field(pytree_node=False)
    config: SRPOConfig = flax.struct.field(pytree_node=False)

    K_POWERS_OF_TWO: ClassVar[bool] = False
    """K is ignored (a one-step policy), so any K >= 1 is taken rather than refusing a grid's K."""
    GRID_NOTES: ClassVar[dict[str, str]] = {
        "K": "its one-step policy has no sampling steps",
        "N": "its policy is deterministic: the N candidates are identical, so best-of-N is the N = 1 action",
    }

    # The FQL paper tunes SRPO's temperature per environment; its appendix table could not be read here, so
    # beta stays the default everywhere and only FQL's per-environment discount is set, unverified.
    ENV_SETTINGS = {
        "antmaze-large-navigate": unverified(FQL_DISCOUNT, discount=0.99),
        "antmaze-giant-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-medium-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "humanoidmaze-large-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "antsoccer-arena-navigate": unverified(FQL_DISCOUNT, discount=0.995),
        "cube-single-play": unverified(FQL_DISCOUNT, discount=0.99),
        "cube-double-play": unverified(FQL_DISCOUNT, discount=0.99),
        "scene-play": unverified(FQL_DISCOUNT, discount=0.99),
        "puzzle-3x3-play": unverified(FQL_DISCOUNT, discount=0.99),
        "puzzle-4x4-play": unverified(FQL_DISCOUNT, discount=0.99),
    }
    # experiments/paper.py has no SRPO column: none is claimed (the FQL paper's OGBench table has one).
    PUBLISHED_COLUMN = None
    PUBLISHED_AS = ""

    # ------------------------------------------------------------------------------------------- networks

    @property
    def schedule(self) -> diffusion.Schedule:
        """The behaviour model's noise levels: the reference's VP-SDE at `t = (i + 1) / T` (module docstring)."""
        return diffusion.vp_schedule(self.config.diffusion_steps, self.config.beta_0, self.config.beta_1)

    def eps_fn(self, behavior_params: Params) -> diffusion.EpsFn:
        """`eps(observations, a_t, i)` with `i` the step index of `schedule`; the network sees `t = (i + 1) / T`."""
        net = _behavior_def(self.config, self.action_dim)
        T = self.config.diffusion_steps
        return lambda obs, a_t, i: net.apply({"params": behavior_params}, obs, a_t, (i + 1.0) / T)

    def policy(self, actor_params: Params, observations: Array) -> Array:
        """The deterministic policy `tanh(MLP(x))` (the reference's `Dirac_Policy`), `[B, A]`."""
        mean, _ = baselines.actor_head(self.config, self.action_dim).apply({"params": actor_params}, observations)
        return jnp.tanh(mean)

    def q_values(self, critic_params: Params, observations: Array, actions: Array) -> Array:
        """`Q_j(x, a)` of both members, `[2, B]`."""
        return baselines.critic_def(self.config).apply({"params": critic_params}, observations, actions)

    def v(self, value_params: Params, observations: Array) -> Array:
        """`V(x)`, `[B]`."""
        return baselines.critic_def(self.config, num_members=1).apply({"params": value_params}, observations)[0]

    @property
    def pretraining(self) -> Array:
        """Whether the next update is a pretraining one: the phase schedule, keyed on the step counter."""
        return self.step < self.config.pretrain_steps

    # --------------------------------------------------------------------------------------------- losses

    def behavior_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """Noise prediction at a random noise level (`sorl.diffusion.ddpm_loss`, summed over action dimensions)."""
        eps_fn = self.eps_fn(params["behavior"])
        loss = diffusion.ddpm_loss(eps_fn, self.schedule, batch["observations"], batch["actions"], rng)
        return loss, {"behavior_loss": loss}

    def value_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """Expectile regression of `V(x)` on `min_j Q'_j(x, a)` of the target critic at dataset actions."""
        # The regression target is a constant: no gradient to the target critic.
        qs = self.q_values(jax.lax.stop_gradient(self.target_params["critic"]), batch["observations"], batch["actions"])
        v = self.v(params["value"], batch["observations"])
        loss = baselines.expectile_loss(qs.min(axis=0) - v, self.config.expectile).mean()
        return loss, {"value_loss": loss, "v_mean": v.mean(), "v_max": v.max(), "v_min": v.min()}

    def critic_loss(self, batch: Batch, params: dict[str, Params]) -> tuple[Array, dict[str, Array]]:
        """`mean_j mean_b (Q_j(x, a) - y)^2`, `y = r + gamma mask V(x')` (the reference averages its two MSEs)."""
        # The TD target is a constant: no gradient to the value network through V(x').
        next_v = self.v(jax.lax.stop_gradient(params["value"]), batch["next_observations"])
        y = batch["rewards"] + self.config.discount * batch["masks"] * next_v
        qs = self.q_values(params["critic"], batch["observations"], batch["actions"])
        loss = jnp.mean((qs - y) ** 2)
        return loss, {"critic_loss": loss, "q_mean": qs.mean(), "q_max": qs.max(), "q_min": qs.min()}

    def policy_loss(self, batch: Batch, params: dict[str, Params], rng: Array) -> tuple[Array, dict[str, Array]]:
        """`mean_b [sigma_t^2 <eps(x, a_t, t), a> - beta <g, a>]`, `a = pi(x)` (module docstring): its gradient is
        `sigma_t^2 eps - beta g` through `a`, the behaviour KL's score estimate against the (normalised) Q ascent."""
        observations = batch["observations"]
        config, schedule = self.config, self.schedule
        a = self.policy(params["actor"], observations)
        batch_shape = a.shape[:-1]
        t_rng, z_rng = jax.random.split(rng)
        # t ~ U[t_min, t_max] on the schedule's grid t = (i + 1) / T
        lo, hi = _index_range(config)
        i = jax.random.randint(t_rng, batch_shape, lo, hi + 1)
        z = jax.random.normal(z_rng, a.shape, a.dtype)
        a_t = diffusion.q_sample(schedule, a, i, z)
        # The score estimate is a constant (the reference computes it under no_grad): neither the behaviour model
        # nor the path a -> a_t -> eps carries gradient; only the explicit `a` factor does.
        behavior = jax.lax.stop_gradient(params["behavior"])
        eps = jax.lax.stop_gradient(self.eps_fn(behavior)(observations, a_t, i[..., None].astype(jnp.float32)))
        weight = 1.0 - schedule.alpha_bars[i]  # sigma_t^2, the reference's "VDS" weighting

        # The Q direction at the policy's action, a constant too: g = grad_a mean_j Q'_j(x, a).
        target_critic = jax.lax.stop_gradient(self.target_params["critic"])

        def q_sum(actions: Array) -> tuple[Array, Array]:
            q = self.q_values(target_critic, observations, actions).mean(axis=0)
            return q.sum(), q

        g, q = jax.grad(q_sum, has_aux=True)(jax.lax.stop_gradient(a))
        g_rms = jnp.sqrt(jnp.mean(g**2, axis=-1, keepdims=True))
        if config.normalize_q_grad:
            # Per state to unit root-mean-square, so beta weighs a direction, not Q's scale (the reference's regq);
            # the floor only keeps a flat critic from dividing by zero.
            g = g / jnp.maximum(g_rms, 1e-12)
        g = jax.lax.stop_gradient(g)
        regularizer = weight * jnp.sum(eps * a, axis=-1)
        q_term = jnp.sum(g * a, axis=-1)
        loss = jnp.mean(regularizer - config.beta * q_term)
        info = {
            "policy_loss": loss,
            "regularizer": regularizer.mean(),
            "q": q.mean(),
            "q_grad_rms": g_rms.mean(),
            "action_abs": jnp.abs(a).mean(),
        }
        return loss, info

    # --------------------------------------------------------------------------------------------- update

    def update(self, batch: Batch) -> tuple[SRPOAgent, dict[str, Array]]:
        """One update of the phase the step counter is in: before `pretrain_steps`, one step of the behaviour
        model, value and critic on the sum of their losses and the EMA target critic; from then on one step of
        the policy alone. Pure; jit/scan/vmap it outside (under vmap the phase is a select over both branches).

        Both branches log the same keys (those of the other phase are 0), plus `phase/pretraining` (1 or 0)."""
        new_rng, rng = jax.random.split(self.rng)
        pretrain_rng, policy_rng = jax.random.split(rng)

        def pretrain() -> tuple[SRPOAgent, dict[str, Array]]:
            return self._pretrain_update(batch, pretrain_rng, new_rng)

        def extract() -> tuple[SRPOAgent, dict[str, Array]]:
            return self._policy_update(batch, policy_rng, new_rng)

        def with_all_keys(branch, other):
            def run():
                agent, info = branch()
                zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda: other()[1]))
                return agent, {**zeros, **info}

            return run

        agent, info = jax.lax.cond(self.pretraining, with_all_keys(pretrain, extract), with_all_keys(extract, pretrain))
        return agent, {**info, "phase/pretraining": self.pretraining.astype(jnp.float32)}

    def _pretrain_update(self, batch: Batch, rng: Array, new_rng: Array) -> tuple[SRPOAgent, dict[str, Array]]:
        def total(params):
            behavior_loss, behavior_info = self.behavior_loss(batch, params, rng)
            value_loss, value_info = self.value_loss(batch, params)
            critic_loss, critic_info = self.critic_loss(batch, params)
            info = baselines.prefixed(behavior=behavior_info, value=value_info, critic=critic_info)
            return behavior_loss + value_loss + critic_loss, info

        grads, info = jax.grad(total, has_aux=True)(self.params)
        params, opt_state, norms = self._step(grads, PRETRAIN_NETWORKS)
        # The EMA of the target critic towards the pre-step critic, as the baselines' joint update.
        targets = baselines.ema_targets(self.params, self.target_params, self.config.tau)
        new = self.replace(rng=new_rng, step=self.step + 1, params=params, target_params=targets, opt_state=opt_state)
        return new, {**info, **norms}

    def _policy_update(self, batch: Batch, rng: Array, new_rng: Array) -> tuple[SRPOAgent, dict[str, Array]]:
        def loss(params):
            policy_loss, policy_info = self.policy_loss(batch, params, rng)
            return policy_loss, baselines.prefixed(actor=policy_info)

        grads, info = jax.grad(loss, has_aux=True)(self.params)
        params, opt_state, norms = self._step(grads, POLICY_NETWORKS)
        new = self.replace(rng=new_rng, step=self.step + 1, params=params, opt_state=opt_state)
        return new, {**info, **norms}

    def _step(self, grads: dict[str, Params], names: tuple[str, ...]):
        """One optimiser step of the networks `names` (the others, and their optimiser states, unchanged)."""
        txs = _optimizers(self.config)
        params, opt_state, norms = dict(self.params), dict(self.opt_state), {}
        for name in names:
            updates, opt_state[name] = txs[name].update(grads[name], self.opt_state[name], self.params[name])
            params[name] = optax.apply_updates(self.params[name], updates)
            norms[f"{name}/grad_norm"] = optax.global_norm(grads[name])
        return params, opt_state, norms

    # ------------------------------------------------------------------------------------------ inference

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]`: the deterministic policy's action `pi(x)` for every K and N (GRID_NOTES: K does not apply; its
        N candidates would all be this action, so the best of them is it)."""
        validate_K_N(K, N, self.max_K, self)
        return self.policy(self.params["actor"], observations)

    # --------------------------------------------------------------------------------------------- create

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: SRPOConfig | None = None
    ) -> SRPOAgent:
        config = SRPOConfig() if config is None else config

        def networks(obs: Array, act: Array, action_dim: int):
            return {
                "value": (baselines.critic_def(config, num_members=1), (obs,)),
                "critic": (baselines.critic_def(config), (obs, act)),
                "behavior": (_behavior_def(config, action_dim), (obs, act, act[..., :1])),
                "actor": (baselines.actor_head(config, action_dim), (obs,)),
            }

        fields = baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["critic"])
        # Each network's own optimiser (AdamW for the behaviour model, a decaying rate for the policy).
        txs = _optimizers(config)
        fields["opt_state"] = {name: txs[name].init(p) for name, p in fields["params"].items()}
        return cls(**fields)


def _behavior_def(config: SRPOConfig, action_dim: int) -> ShortcutVelocityNet:
    # The suite's MLP on [x, a_t, t] (a velocity net called without a step code), not the reference's
    # Fourier-feature residual network: the FQL setup gives every baseline network the same MLP.
    dims = baselines.hidden_dims(config.actor_layer_size, config.actor_num_layers)
    return ShortcutVelocityNet(
        action_dim=action_dim, hidden_dims=dims, layer_norm=config.actor_layer_norm, encoder=config.encoder
    )


def _index_range(config: SRPOConfig) -> tuple[int, int]:
    """The step indices `i` whose `t = (i + 1) / T` lie in [policy_t_min, policy_t_max] (rounded to the grid)."""
    T = config.diffusion_steps
    lo = max(round(config.policy_t_min * T) - 1, 0)
    hi = min(max(round(config.policy_t_max * T) - 1, lo), T - 1)
    return lo, hi


def _optimizers(config: SRPOConfig) -> dict[str, optax.GradientTransformation]:
    """Adam for the value and critic (the reference's), AdamW for the behaviour model (its `torch.optim.AdamW`,
    weight decay 0.01), Adam with a cosine decay to 0 over `policy_lr_decay_steps` policy updates for the policy
    (its `CosineAnnealingLR`; the count is the policy optimiser's own, so it starts at the phase boundary)."""
    lr = config.lr
    policy_lr = optax.cosine_decay_schedule(lr, config.policy_lr_decay_steps) if config.policy_lr_decay_steps else lr
    txs = {
        "value": optax.adam(lr),
        "critic": optax.adam(lr),
        "behavior": optax.adamw(lr, weight_decay=config.behavior_weight_decay),
        "actor": optax.adam(policy_lr),
    }
    if config.grad_clip_norm > 0:
        txs = {name: optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx) for name, tx in txs.items()}
    return txs


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SRPOConfig(baselines.BaselineConfig):
    """The baselines' shared defaults (4x512 networks, LayerNorm in the value and critic only, lr 3e-4, batch 256,
    discount 0.99, tau 0.005, two critics) and SRPO's own, each from `thu-ml/SRPO` unless said otherwise; the
    FQL paper's OGBench values for SRPO could not be read here (docs/method.md, SRPO)."""

    pretrain_steps: int = setting(500_000, check=NON_NEGATIVE_INTEGER)
    """Updates of the pretraining phase (behaviour model, value and critic); the policy trains from then on. The
    reference pretrains separately (behaviour 2M updates of batch 2048, critic 1.5M of 256, policy 1M); half of the
    suite's 1M-update budget here, unverified. Set it below --steps, or the policy never trains."""
    beta: float = setting(0.05, check=NON_NEGATIVE)
    """Temperature of the Q term against the score regulariser (the reference's `beta`, `temperature_coefficients`
    per D4RL task: 0.02 to 0.08 on antmaze with `regq`); unverified for OGBench."""
    normalize_q_grad: bool = setting(True, check=BOOL)
    """Divide the Q gradient by its per-state root-mean-square over action dimensions (the reference's `regq`, on
    for its maze tasks)."""
    expectile: float = setting(0.9, check=OPEN_UNIT)
    """Expectile of IQL's value regression (the reference: 0.9 on maze tasks, 0.7 elsewhere; FQL's IQL: 0.9)."""
    diffusion_steps: int = setting(1000, check=POSITIVE_INTEGER)
    """T, points of the behaviour model's time grid `t = (i + 1) / T` (the reference's t is continuous on [1e-3, 1])."""
    beta_0: float = setting(0.1, check=POSITIVE)
    """VP-SDE beta(t) at t = 0 (the reference's `marginal_prob_std` beta_0)."""
    beta_1: float = setting(20.0, check=POSITIVE)
    """VP-SDE beta(t) at t = 1 (the reference's beta_1)."""
    policy_t_min: float = setting(0.02, check=OPEN_UNIT)
    """Smallest noise level t of the policy loss (the reference: t ~ U[0.02, 0.98])."""
    policy_t_max: float = setting(0.98, check=OPEN_CLOSED_UNIT)
    """Largest noise level t of the policy loss."""
    behavior_weight_decay: float = setting(0.01, check=NON_NEGATIVE)
    """Decoupled weight decay of the behaviour model's Adam (torch's default for it, which the reference keeps)."""
    policy_lr_decay_steps: int = setting(500_000, check=NON_NEGATIVE_INTEGER)
    """Policy updates over which its learning rate decays to 0 by a cosine (the reference's cosine annealing over
    its whole policy phase); 0 keeps it constant. Default: the policy phase of a 1M-update run, unverified."""
    actor_fc_scale: float = 1.0
    """Initial scale of the policy's output layer (the reference's plain torch init, not the baselines' 0.01)."""

    def cross_checks(self) -> None:
        if self.policy_t_min >= self.policy_t_max:
            raise SorlError(
                f"invalid agent setting policy_t_min={self.policy_t_min!r}: must be below policy_t_max="
                f"{self.policy_t_max!r} (--agent.policy_t_min=...)"
            )


SRPOAgent.Config = SRPOConfig
