"""Building blocks the baseline agents (agents/fql.py, rebrac.py, iql.py, bc.py) share.

- `BaselineConfig`: the fields and defaults FQL, ReBRAC and IQL share in the FQL reference code (4x512 GELU MLPs,
  LayerNorm in critics only, Adam 3e-4 without clipping, batch 256, gamma 0.99, tau 0.005, two critics); its
  `validate()` is `sorl.validation.check_config`, as every agent config's.
- Networks: `critic_def` (the reference `Value`: a `CriticEnsemble`, one member for IQL's V), `ActorHead` /
  `actor_head` (the reference `Actor`: MLP trunk, small-init mean head, constant or learned log-std; ReBRAC plays
  `tanh(mean)`, IQL uses the Gaussian). FQL's 10-step flow sampler is `sorl.shortcut.euler`, the same Euler
  integrator the shortcut sampler uses.
- Formulas: `aggregate` (ensemble min / mean), `expectile_loss`, `gaussian_log_prob`.
- Training state: `initial_fields` (a fresh agent's fields, initialised by one compiled program). The optimiser
  (`ModuleOptimizer`), `joint_update`, `ema_targets` and `prefixed` are every agent's, SORL's included, and live
  in `sorl.optim`; `aggregate` is the verifier's (`sorl.inference`). Both are re-exported here.
- Inference: `best_of_mode_and_samples`, best-of-N for agents whose N = 1 action is deterministic (ReBRAC, IQL).
- Data: `with_next_actions`, the dataset key ReBRAC's critic penalty needs (`ReBRACAgent.prepare_dataset`).

The (K, N) contract of `sample_actions(observations, rng, K, N)` across the baselines: FQL, ReBRAC and IQL have no
multi-step sampler, so their `max_K` is None (`sorl.inference.validate_K_N` then accepts every power of two) and K
does not change the action; best-of-N ranks candidates with the agent's own critic. Flow BC samples with K steps
(`max_K = denoise_timesteps`, as SORL) and, having no critic, answers every N with the N = 1 sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sorl.inference import (
    aggregate,  # noqa: F401 - re-exported: agents call B.aggregate
    best_of_n,
)
from sorl.networks import MLP, CriticEnsemble, default_init, encoder_module
from sorl.optim import ModuleOptimizer, ema_targets, joint_update, prefixed  # noqa: F401 - re-exported
from sorl.validation import check_config

Array = jax.Array
Params = Any

# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class BaselineConfig:
    """Defaults shared by FQL, ReBRAC and IQL in the FQL reference code (`agents/*.py` get_config)."""

    lr: float = 3e-4
    """Adam learning rate of every network."""
    grad_clip_norm: float = 0.0
    """Global-norm gradient clip per network (0, the reference's choice, disables clipping)."""
    batch_size: int = 256
    """Dataset transitions per gradient update."""
    actor_layer_size: int = 512
    """Width of each hidden layer of the actor's MLP."""
    actor_num_layers: int = 4
    """Hidden layers of the actor's MLP."""
    value_layer_size: int = 512
    """Width of each hidden layer of the critic's (and value network's) MLPs."""
    value_num_layers: int = 4
    """Hidden layers of the critic's (and value network's) MLPs."""
    layer_norm: bool = True
    """LayerNorm in the critics' (and IQL's value network's) hidden layers."""
    actor_layer_norm: bool = False
    """LayerNorm in the actor's hidden layers."""
    discount: float = 0.99
    """Discount factor gamma of the critic target."""
    tau: float = 0.005
    """EMA rate tau of the target networks."""
    num_critics: int = 2
    """Critics in the ensemble."""
    encoder: str | None = None
    """Image encoder of pixel tasks, one per network (impala_small in the reference); none feeds states to MLPs."""

    def validate(self) -> None:
        check_config(self)


def hidden_dims(size: int, num_layers: int) -> tuple[int, ...]:
    return (size,) * num_layers


def critic_def(config: BaselineConfig, num_members: int | None = None) -> CriticEnsemble:
    """The reference `Value` network: an ensemble of MLPs with LayerNorm (per `layer_norm`) on `[x, a]` or `[x]`."""
    return CriticEnsemble(
        hidden_dims=hidden_dims(config.value_layer_size, config.value_num_layers),
        layer_norm=config.layer_norm,
        num_members=config.num_critics if num_members is None else num_members,
        encoder=getattr(config, "encoder", None),
    )


# ---------------------------------------------------------------------------------------------- networks


class ActorHead(nn.Module):
    """`(mean, log_std)` of the reference `Actor`: GELU MLP trunk with an activated last hidden layer, a linear mean
    head initialised at `final_init_scale` (small, so the initial policy is near the origin), and a log-std that is
    0 (`const_std`, std = 1) or one learned value per action dimension, clipped to [-5, 2]."""

    action_dim: int
    hidden_dims: Sequence[int] = (512, 512, 512, 512)
    layer_norm: bool = False
    final_init_scale: float = 1e-2
    const_std: bool = True
    encoder: str | None = None

    @nn.compact
    def __call__(self, observations: Array) -> tuple[Array, Array]:
        if self.encoder is not None:  # the actor's own encoder (the reference gives every network one)
            observations = encoder_module(self.encoder)(observations)
        x = MLP(tuple(self.hidden_dims), activate_final=True, layer_norm=self.layer_norm)(observations)
        mean = nn.Dense(self.action_dim, kernel_init=default_init(self.final_init_scale))(x)
        if self.const_std:
            log_std = jnp.zeros_like(mean)
        else:
            log_std = jnp.broadcast_to(self.param("log_stds", nn.initializers.zeros, (self.action_dim,)), mean.shape)
        return mean, jnp.clip(log_std, -5.0, 2.0)


def actor_head(config: Any, action_dim: int) -> ActorHead:
    """The `ActorHead` a config describes (`actor_*` sizes, `actor_fc_scale`, `const_std` where it has one)."""
    return ActorHead(
        action_dim=action_dim,
        hidden_dims=hidden_dims(config.actor_layer_size, config.actor_num_layers),
        layer_norm=config.actor_layer_norm,
        final_init_scale=config.actor_fc_scale,
        const_std=getattr(config, "const_std", True),
        encoder=getattr(config, "encoder", None),
    )


def gaussian_log_prob(mean: Array, log_std: Array, actions: Array) -> Array:
    """Log-density of a diagonal Gaussian, summed over the action dimensions: `[B]`."""
    z = (actions - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)


def gaussian_sample(mean: Array, log_std: Array, rng: Array) -> Array:
    """One draw of the diagonal Gaussian policy, clipped to the action range: `[B, A]`."""
    return jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape), -1, 1)


# ----------------------------------------------------------------------------------------------- formulas


def expectile_loss(diff: Array, expectile: float) -> Array:
    """Asymmetric squared loss of `diff = target - prediction`: weight `expectile` where the target is above the
    prediction, `1 - expectile` below, so the minimiser is the `expectile`-expectile of the target."""
    weight = jnp.where(diff >= 0, expectile, 1.0 - expectile)
    return weight * diff**2


NetworksFn = Callable[[Array, Array, int], Mapping[str, tuple[nn.Module, tuple[Array, ...]]]]


def initial_fields(
    rng: Array | int,
    config: Any,
    example_observations: Array,
    example_actions: Array,
    networks: NetworksFn,
    targets: Sequence[str],
) -> dict[str, Any]:
    """The constructor arguments of a fresh baseline agent (its fields rng, step, params, target_params,
    opt_state, action_dim, config), after `config.validate()`.

    `networks(observations, actions, action_dim)` names each network with its module and example inputs; each is
    initialised with its own key, and those named in `targets` get EMA copies that start equal to them. The
    initialisation runs as one compiled program, cached per (networks, optimiser, shapes).
    """
    config.validate()
    rng = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    rng, init_rng = jax.random.split(rng)
    obs = jnp.asarray(example_observations, jnp.float32)[:1]
    act = jnp.asarray(example_actions, jnp.float32)[:1]
    action_dim = int(act.shape[-1])
    nets = networks(obs, act, action_dim)
    modules = tuple((name, module) for name, (module, _) in nets.items())
    params, opt_state = _init_networks(modules, ModuleOptimizer.of(config), init_rng, [a for _, a in nets.values()])
    return dict(
        rng=rng,
        step=jnp.zeros((), jnp.int32),
        params=params,
        target_params={name: params[name] for name in targets},
        opt_state=opt_state,
        action_dim=action_dim,
        config=config,
    )


@partial(jax.jit, static_argnums=(0, 1))
def _init_networks(
    modules: tuple[tuple[str, nn.Module], ...], optimizer: ModuleOptimizer, rng: Array, example_args: list
) -> tuple[dict[str, Params], dict[str, Any]]:
    keys = jax.random.split(rng, len(modules))
    params = {
        name: module.init(key, *args)["params"]
        for key, (name, module), args in zip(keys, modules, example_args, strict=True)
    }
    return params, optimizer.init(params)


# ---------------------------------------------------------------------------------------------- inference

SampleFn = Callable[[Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]


def best_of_mode_and_samples(
    mode: Array, sample_fn: SampleFn, score_fn: ScoreFn, observations: Array, rng: Array, N: int
) -> Array:
    """Best-of-N for a policy whose N = 1 action is its deterministic `mode` `[B, A]`.

    The candidates are the mode and N - 1 draws of `sample_fn(observations, key)`; the verifier `score_fn` picks
    one per state (`sorl.inference.best_of_n`). Keeping the mode as a candidate means N > 1 never scores below the
    N = 1 action. N = 1 returns the mode without calling the sampler or the critic.
    """
    if N == 1:
        return mode
    keys = jax.random.split(rng, N - 1)
    samples = jax.vmap(sample_fn, in_axes=(None, 0))(observations, keys)
    candidates = jnp.concatenate([mode[None], samples], axis=0)
    scores = jax.vmap(score_fn, in_axes=(None, 0))(observations, candidates)
    return best_of_n(candidates, scores)


# -------------------------------------------------------------------------------------------------- data


def with_next_actions(dataset: Mapping[str, Array]) -> dict[str, Array]:
    """`dataset` plus `next_actions[i] = actions[min(i + 1, n - 1)]`, the reference code's definition.

    Transitions are stored in order, so this is the dataset action taken at `next_observations[i]`, except on an
    episode's last transition (where it is the next episode's first action, as in the reference). An existing
    `next_actions` key is kept.
    """
    if "next_actions" in dataset:
        return dict(dataset)
    actions = dataset["actions"]
    return {**dataset, "next_actions": jnp.concatenate([actions[1:], actions[-1:]], axis=0)}
