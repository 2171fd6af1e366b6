"""Flow BC (`flow-bc`): behaviour cloning with SORL's shortcut-model policy and the Q term off.

Not the published table's "BC" column, which is Gaussian behaviour cloning (`bc`, agents/bc.py). Flow BC is the
ablation that isolates what SORL's Q term adds to the same policy class.

`FlowBCAgent` is SORL's shortcut policy without a critic: both agents build on `agents.sorl.ShortcutPolicy`, so
the velocity network, `flow_matching_loss`, `self_consistency_loss` (weights `bc_flow_loss_coef` and `alpha`), the
EMA target policy of the self-consistency targets and the K-step sampler (`sorl.shortcut.sample_euler`) are the same
code, and K in {1, 2, ..., denoise_timesteps} works exactly as for SORL. Its config is SORL's policy settings with
SORL's defaults (`FlowBCConfig`, derived from `SORLConfig`). There is no critic to build, train or ask.

N (best-of-N): flow BC has no critic, so there is no verifier to rank candidates. Best-of-N without a verifier picks a
candidate at random, which has exactly the distribution of a single sample; `sample_actions` therefore returns the
N = 1 sample for every N (documented, not an error), so one (K, N) evaluation grid runs for every agent and flow BC's N
axis is flat by construction.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from agents.sorl import ShortcutPolicy, SORLConfig, actor_network
from sorl import baselines, shortcut
from sorl.config import field_docs
from sorl.inference import validate_K_N
from sorl.validation import check_config

Array = jax.Array
Batch = dict[str, Array]


class FlowBCAgent(ShortcutPolicy):
    """The shortcut policy alone: params, target_params and opt_state are `{'actor': ...}`."""

    GRID_NOTES: ClassVar[dict[str, str]] = {"N": "it has no critic to rank candidates"}
    """Test-time axes that do not change the action (`runner.evaluation.grid_note`)."""

    def actor_loss(self, batch: Batch, actor_params, rng: Array) -> tuple[Array, dict[str, Array]]:
        """`bc_flow_loss_coef * L_FM + alpha * L_SC`: SORL's actor loss without its Q term."""
        cfg = self.config
        fm_rng, sc_rng, _ = jax.random.split(rng, 3)  # SORL's split (its third key draws the Q term's K)
        features = self.encode(actor_params, batch["observations"])  # once for both terms
        fm_loss = self.flow_matching_loss(batch, actor_params, fm_rng, features)
        sc_loss = self.self_consistency_loss(batch, actor_params, sc_rng, features)
        loss = cfg.bc_flow_loss_coef * fm_loss + cfg.alpha * sc_loss
        return loss, {"actor_loss": loss, "bc_flow_loss": fm_loss, "consistency_loss": sc_loss}

    def update(self, batch: Batch) -> tuple[FlowBCAgent, dict[str, Array]]:
        """One Adam step of the policy on `bc_flow_loss_coef * L_FM + alpha * L_SC` (SORL's clipped Adam), then the
        EMA target policy towards the pre-step policy, as SORL. Pure; jit/scan/vmap it outside."""
        new_rng, actor_rng = jax.random.split(self.rng)

        def total(params):
            loss, info = self.actor_loss(batch, params["actor"], actor_rng)
            return loss, baselines.prefixed(actor=info)

        return baselines.joint_update(self, total, new_rng)

    def sample_actions(self, observations: Array, rng: Array, K: int = 1, N: int = 1) -> Array:
        """`[B, A]` actions from K-step shortcut sampling; any N gives the N = 1 sample (no verifier, see above)."""
        validate_K_N(K, N, self.max_K)
        noise = jax.random.normal(rng, (*observations.shape[:-1], self.action_dim))
        features = self.encode(self.params["actor"], observations)
        return shortcut.sample_euler(self.velocity_fn(self.params["actor"]), features, noise, K)

    @classmethod
    def create(
        cls, rng: Array | int, example_observations: Array, example_actions: Array, config: FlowBCConfig | None = None
    ) -> FlowBCAgent:
        config = FlowBCConfig() if config is None else config

        def networks(obs: Array, act: Array, action_dim: int):
            scalars = act[..., :1]  # example flow time t and step code d
            return {"actor": (actor_network(config, action_dim), (obs, act, scalars, scalars))}

        return cls(**baselines.initial_fields(rng, config, example_observations, example_actions, networks, ["actor"]))


POLICY_KEYS = (
    "lr",
    "grad_clip_norm",
    "optimizer_beta1",
    "optimizer_beta2",
    "batch_size",
    "actor_layer_size",
    "actor_num_layers",
    "actor_layer_norm",
    "tau",
    "alpha",
    "bc_flow_loss_coef",
    "t_epsilon",
    "denoise_timesteps",
    "encoder",
)
"""The SORLConfig settings that concern the policy alone: flow BC's settings, with SORL's defaults."""


class _FlowBCConfigBase:
    @property
    def q_loss_coef(self) -> float:
        """Always 0: the Q term is off (flow BC is SORL with q_loss_coef = 0)."""
        return 0.0

    def validate(self) -> None:
        check_config(self)


FlowBCConfig = dataclasses.make_dataclass(
    "FlowBCConfig",
    [
        (
            f.name,
            f.type,
            dataclasses.field(default=f.default, metadata={**f.metadata, "doc": field_docs(SORLConfig)[f.name]}),
        )
        for f in dataclasses.fields(SORLConfig)
        if f.name in POLICY_KEYS
    ],
    bases=(_FlowBCConfigBase,),
    frozen=True,
)
FlowBCConfig.__module__ = __name__
FlowBCConfig.__doc__ = "SORL's policy settings (`POLICY_KEYS`, same names and defaults as SORLConfig), no critic."

FlowBCAgent.Config = FlowBCConfig
