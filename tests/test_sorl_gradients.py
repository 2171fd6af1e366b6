"""Gradients flow only where docs/method.md says, and released_update reproduces the released optimizer exactly."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents.sorl import SORLAgent, SORLConfig

OBS, ACT, B = 4, 2, 32
TINY = SORLConfig(
    actor_layer_size=16,
    actor_num_layers=2,
    value_layer_size=16,
    value_num_layers=2,
    batch_size=B,
    denoise_timesteps=4,
    max_k_backprop=2,
    lr=1e-2,  # large enough that every move is visible in float32
)


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (B, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (B, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (B,)),
        # Non-terminal, so the critic target depends on the policy's a'.
        "masks": jnp.ones((B,)),
        "next_observations": jax.random.normal(k[3], (B, OBS)),
    }


def make_agent(**changes) -> SORLAgent:
    config = dataclasses.replace(TINY, **changes)
    agent = SORLAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # Targets different from the online networks, so a leak through them would show.
    noisy = jax.tree.map(lambda p: p + 0.05, agent.params)
    return agent.replace(target_params=noisy)


def all_zero(tree) -> bool:
    return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def any_nonzero(tree) -> bool:
    return any(np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


@partial(jax.jit, static_argnames="loss")
def loss_grads(agent: SORLAgent, loss: str, rng: jax.Array) -> tuple[dict, dict]:
    """Gradients of one loss wrt every parameter the agent holds: (params, target_params)."""

    def f(params, target_params):
        a = agent.replace(params=params, target_params=target_params)
        if loss == "critic":
            return a.critic_loss(BATCH, params, rng)[0]
        return getattr(a, f"{loss}_loss")(BATCH, params["actor"], rng)[0]

    return jax.grad(f, argnums=(0, 1))(agent.params, agent.target_params)


BATCH = make_batch()
UPDATE = jax.jit(SORLAgent.update)  # one compilation per config, shared by the tests


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_critic_loss_gives_no_gradient_to_the_policy_by_default(seed):
    g, g_target = loss_grads(make_agent(), "critic", jax.random.PRNGKey(seed))
    assert all_zero(g["actor"])
    assert any_nonzero(g["critic"])
    assert all_zero(g_target)


def test_critic_loss_reaches_the_policy_with_released_update():
    g, g_target = loss_grads(make_agent(released_update=True), "critic", jax.random.PRNGKey(0))
    assert any_nonzero(g["actor"])  # the released code's a' is sampled with gradients
    assert any_nonzero(g["critic"])
    assert all_zero(g_target)


@pytest.mark.parametrize("loss", ["q", "actor"])
def test_q_term_and_actor_loss_give_no_gradient_to_the_critic(loss):
    g, g_target = loss_grads(make_agent(), loss, jax.random.PRNGKey(0))
    assert all_zero(g["critic"])
    assert any_nonzero(g["actor"])
    # The target policy only provides the self-consistency target.
    assert all_zero(g_target)


def shared_adam(cfg: SORLConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip_norm),
        optax.adam(cfg.lr, b1=cfg.optimizer_beta1, b2=cfg.optimizer_beta2),
    )


@jax.jit
def released_by_hand(pre: SORLAgent, state, batch):
    """The released update written out with one optax chain, from the update's documented key split."""
    tx = shared_adam(pre.config)
    params = pre.params
    _, critic_rng, actor_rng = jax.random.split(pre.rng, 3)
    g1 = jax.grad(lambda p: pre.critic_loss(batch, p, critic_rng)[0])(params)
    u, state = tx.update(g1, state, params)
    p1 = optax.apply_updates(params, u)
    # The actor loss is taken at the moved policy, reading critic and targets from before the update.
    g_actor = jax.grad(lambda a: pre.actor_loss(batch, a, actor_rng)[0])(p1["actor"])
    g2 = {"actor": g_actor, "critic": jax.tree.map(jnp.zeros_like, p1["critic"])}
    u, state = tx.update(g2, state, p1)
    p2 = optax.apply_updates(p1, u)
    targets = jax.tree.map(lambda p, t: pre.config.tau * p + (1 - pre.config.tau) * t, params, pre.target_params)
    return g1, p1, p2, targets, state


def test_released_update_is_two_steps_of_one_shared_adam():
    agent = make_agent(released_update=True)
    state = shared_adam(agent.config).init(agent.params)
    expected = agent
    for batch in (BATCH, make_batch(seed=7)):
        g1, p1, p2, targets, state = released_by_hand(expected, state, batch)
        assert any_nonzero(g1["actor"])  # the critic step's policy gradient
        # The critic got a zero gradient in the second step yet moved by Adam's momentum.
        assert any_nonzero(jax.tree.map(lambda a, b: a - b, p2["critic"], p1["critic"]))
        expected = expected.replace(params=p2, target_params=targets, rng=jax.random.split(expected.rng, 3)[0])

        agent, _ = UPDATE(agent, batch)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)  # noqa: E731
        jax.tree.map(close, agent.params, expected.params)
        jax.tree.map(close, agent.target_params, expected.target_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), agent.opt_state, state)
    assert int(agent.step) == 2


def test_default_update_is_one_step_of_separate_adams():
    # The expected policy step uses the actor loss's gradient alone, so this also checks that the update lets
    # no critic-loss gradient into the policy (and no actor-loss gradient into the critic).
    agent = make_agent()

    @jax.jit
    def by_hand(agent):
        tx = shared_adam(agent.config)
        _, critic_rng, actor_rng = jax.random.split(agent.rng, 3)
        g_critic = jax.grad(lambda p: agent.critic_loss(BATCH, p, critic_rng)[0])(agent.params)["critic"]
        g_actor = jax.grad(lambda a: agent.actor_loss(BATCH, a, actor_rng)[0])(agent.params["actor"])
        expected = {}
        for name, g in (("critic", g_critic), ("actor", g_actor)):
            u, _ = tx.update(g, tx.init(agent.params[name]), agent.params[name])
            expected[name] = optax.apply_updates(agent.params[name], u)
        return expected

    expected = by_hand(agent)
    new, info = UPDATE(agent, BATCH)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), new.params, expected)
    assert all(np.isfinite(float(v)) for v in info.values())


def test_update_vmaps_over_seeds():
    # Seeds as a batch axis: one vmapped update equals the per-seed updates.
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    create = lambda k: SORLAgent.create(k, jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), TINY)  # noqa: E731
    singles = [create(k) for k in keys]
    agents = jax.tree.map(lambda *x: jnp.stack(x), *singles)
    # create itself vmaps too (traced only here, to save a compilation).
    assert jax.tree.structure(jax.eval_shape(jax.vmap(create), keys)) == jax.tree.structure(agents)
    kernels = agents.params["actor"]["MLP_0"]["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])  # the seeds differ
    new, info = jax.jit(jax.vmap(SORLAgent.update, in_axes=(0, None)))(agents, BATCH)
    assert info["critic/critic_loss"].shape == (2,)
    for i, single in enumerate(singles):
        single, _ = UPDATE(single, BATCH)
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6), new.params, single.params
        )
