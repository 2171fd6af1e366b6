"""The training-state helpers every agent shares: Adam per network, the EMA of target networks, one joint update
of summed losses, and the `critic/...`, `actor/...` log keys.

`ModuleOptimizer` is the optimiser of every agent (docs/method.md, "Update modes" and "Baselines"): Adam, after a
global-norm clip when `grad_clip_norm > 0`, with one state per named network (`init`, `step`) or, for the
released-code and reference-ReBRAC modes, one state over all of them (`tx.init(params)`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import optax

Array = jax.Array
Params = Any


@dataclass(frozen=True)
class ModuleOptimizer:
    """Adam (optionally after a global-norm clip) with one state per named network."""

    lr: float
    grad_clip_norm: float = 0.0
    b1: float = 0.9
    b2: float = 0.999

    @classmethod
    def of(cls, config: Any) -> ModuleOptimizer:
        """From a config's `lr`, `grad_clip_norm`, `optimizer_beta1`, `optimizer_beta2` (the last three optional)."""
        return cls(
            config.lr,
            getattr(config, "grad_clip_norm", 0.0),
            getattr(config, "optimizer_beta1", 0.9),
            getattr(config, "optimizer_beta2", 0.999),
        )

    @property
    def tx(self) -> optax.GradientTransformation:
        adam = optax.adam(self.lr, b1=self.b1, b2=self.b2)
        return optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), adam) if self.grad_clip_norm > 0 else adam

    def init(self, params: Mapping[str, Params]) -> dict[str, Any]:
        return {name: self.tx.init(p) for name, p in params.items()}

    def step(
        self,
        params: Mapping[str, Params],
        opt_state: Mapping[str, Any],
        grads: Mapping[str, Params],
        names: Iterable[str] | None = None,
    ) -> tuple[dict[str, Params], dict[str, Any], dict[str, Array]]:
        """One Adam step for each network in `names` (default: all); the others are returned unchanged.

        Returns (params, opt_state, {"<name>/grad_norm": ...}).
        """
        names = list(params) if names is None else list(names)
        new_params, new_state, info = dict(params), dict(opt_state), {}
        for name in names:
            updates, new_state[name] = self.tx.update(grads[name], opt_state[name], params[name])
            new_params[name] = optax.apply_updates(params[name], updates)
            info[f"{name}/grad_norm"] = optax.global_norm(grads[name])
        return new_params, new_state, info


def prefixed(**infos: Mapping[str, Array]) -> dict[str, Array]:
    """`prefixed(critic={...}, actor={...})` -> {'critic/k': v, 'actor/k': v}: the training log's key scheme."""
    return {f"{group}/{k}": v for group, info in infos.items() for k, v in info.items()}


def ema_targets(params: Mapping[str, Params], target_params: Mapping[str, Params], tau: float) -> dict[str, Params]:
    """Every target network moved `tau` of the way towards its online network (pass the pre-step `params` to do as
    the reference code does)."""
    return {name: optax.incremental_update(params[name], target, tau) for name, target in target_params.items()}


def joint_update(
    agent: Any, total_loss: Callable[[dict[str, Params]], tuple[Array, dict[str, Array]]], new_rng: Array
) -> tuple[Any, dict[str, Array]]:
    """`agent` after one backward pass of `total_loss(params)` (a sum of losses, each reaching only its own network),
    one Adam step per network, and the EMA of `agent.target_params` towards the pre-step networks; its key becomes
    `new_rng` and its step count advances. Returns `(agent, info)`, info with each network's gradient norm added.
    """
    grads, info = jax.grad(total_loss, has_aux=True)(agent.params)
    params, opt_state, norms = ModuleOptimizer.of(agent.config).step(agent.params, agent.opt_state, grads)
    # An agent without target networks (Gaussian BC) has no `tau` to read.
    targets = ema_targets(agent.params, agent.target_params, agent.config.tau) if agent.target_params else {}
    new = agent.replace(rng=new_rng, step=agent.step + 1, params=params, target_params=targets, opt_state=opt_state)
    return new, {**info, **norms}
