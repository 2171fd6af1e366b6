"""Network shapes and conditioning: MLP, critic ensemble (vmapped members, K input), shortcut velocity net."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from agents.sorl import SORLAgent, SORLConfig
from sorl.networks import MLP, CriticEnsemble, ShortcutVelocityNet

OBS, ACT, B = 5, 3, 7
KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (B, OBS))
A = jax.random.uniform(jax.random.PRNGKey(2), (B, ACT), minval=-1, maxval=1)


def test_mlp_layers_and_layer_norm():
    for layer_norm in (False, True):
        net = MLP((16, 16, 4), layer_norm=layer_norm)
        params = jax.jit(net.init)(KEY, X)["params"]
        assert jax.jit(net.apply)({"params": params}, X).shape == (B, 4)
        names = set(params)
        assert {"Dense_0", "Dense_1", "Dense_2"} <= names
        # LayerNorm follows each hidden activation, never the output layer.
        assert (names >= {"LayerNorm_0", "LayerNorm_1"}) == layer_norm and "LayerNorm_2" not in names


def test_critic_ensemble_members_and_K_conditioning():
    critic = CriticEnsemble(hidden_dims=(16, 16), num_members=3)
    params = jax.jit(critic.init)(KEY, X, A, 1.0)["params"]
    apply = jax.jit(critic.apply)  # one compilation per input shape instead of one per small op
    q = apply({"params": params}, X, A, 4.0)
    assert q.shape == (3, B)
    # Independent members: different parameters, different values.
    kernel = params["VmapMLP_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (3, OBS + ACT + 1, 16) and not np.allclose(kernel[0], kernel[1])
    assert not np.allclose(q[0], q[1])
    # K is a raw scalar input: it changes Q, and a scalar, a [B] vector and a [B, 1] column agree.
    q8 = apply({"params": params}, X, A, 8.0)
    assert not np.allclose(q, q8)
    np.testing.assert_allclose(apply({"params": params}, X, A, jnp.full((B,), 4.0)), q, rtol=1e-6)
    np.testing.assert_allclose(apply({"params": params}, X, A, jnp.full((B, 1), 4.0)), q, rtol=1e-6)
    # Without K (baselines) and without actions (a V ensemble).
    plain = CriticEnsemble(hidden_dims=(16,), num_members=2)
    assert jax.eval_shape(lambda: plain.apply(plain.init(KEY, X, A), X, A)).shape == (2, B)
    assert jax.eval_shape(lambda: plain.apply(plain.init(KEY, X), X)).shape == (2, B)


def test_shortcut_velocity_net_takes_raw_t_and_d():
    net = ShortcutVelocityNet(action_dim=ACT, hidden_dims=(16, 16))
    params = jax.jit(net.init)(KEY, X, A, 0.0, 0.0)["params"]
    assert params["MLP_0"]["Dense_0"]["kernel"].shape == (OBS + ACT + 2, 16)
    apply = jax.jit(net.apply)
    v = apply({"params": params}, X, A, 0.25, 2.0)
    assert v.shape == (B, ACT)
    np.testing.assert_allclose(
        apply({"params": params}, X, A, jnp.full((B, 1), 0.25), jnp.full((B, 1), 2.0)), v, rtol=1e-6
    )
    assert not np.allclose(apply({"params": params}, X, A, 0.25, 3.0), v)
    assert not np.allclose(apply({"params": params}, X, A, 0.5, 2.0), v)
    # d=None gives a plain flow velocity field v(x, a_t, t).
    flow = ShortcutVelocityNet(action_dim=ACT, hidden_dims=(16,))
    flow_params = jax.eval_shape(flow.init, KEY, X, A, 0.0)["params"]
    assert flow_params["MLP_0"]["Dense_0"]["kernel"].shape == (OBS + ACT + 1, 16)


def test_reference_sizes_by_default():
    # Shapes only (no computation): cube-single has 28-d observations and 5-d actions.
    agent = jax.eval_shape(lambda: SORLAgent.create(KEY, jnp.zeros((1, 28)), jnp.zeros((1, 5)), SORLConfig()))
    actor, critic = agent.params["actor"]["MLP_0"], agent.params["critic"]["VmapMLP_0"]
    assert [actor[f"Dense_{i}"]["kernel"].shape for i in range(5)] == [(35, 512)] + [(512, 512)] * 3 + [(512, 5)]
    assert not any(k.startswith("LayerNorm") for k in actor)
    assert [critic[f"Dense_{i}"]["kernel"].shape for i in range(5)] == [(2, 34, 512)] + [(2, 512, 512)] * 3 + [
        (2, 512, 1)
    ]
    assert {f"LayerNorm_{i}" for i in range(4)} <= set(critic)
    assert jax.tree.structure(agent.target_params) == jax.tree.structure(agent.params)
