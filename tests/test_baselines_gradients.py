"""Every stop-gradient of the baselines, tested: each loss moves only the networks it is meant to move.

The gradient of each loss is taken with respect to *all* parameters an agent holds (online and target), with the
agent itself rebuilt from those parameters, so a leak through `self.params` or `self.target_params` shows too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents import get_agent
from sorl.errors import SorlError

OBS, ACT, BATCH = 4, 2, 32
SIZES = dict(actor_layer_size=16, actor_num_layers=2, value_layer_size=16, value_num_layers=2, batch_size=BATCH)


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": jnp.ones((BATCH,)),  # non-terminal: the targets depend on the next state
        "next_observations": jax.random.normal(k[3], (BATCH, OBS)),
        "next_actions": jnp.clip(jax.random.normal(k[4], (BATCH, ACT)), -0.99, 0.99),
    }


BATCH_DATA = make_batch()
RNG = jax.random.PRNGKey(7)


def make_agent(name: str, **settings):
    cls = get_agent(name)
    sizes = {k: v for k, v in SIZES.items() if k in {f.name for f in dataclasses.fields(cls.Config)}}
    config = dataclasses.replace(cls.Config(), **sizes, **settings)
    agent = cls.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # Targets different from the online networks, so a gradient leak through either would show.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params))


def grads_of(agent, loss):
    """d loss(agent, params) / d (params, target_params), with `agent` rebuilt from both."""

    def f(params, target_params):
        return loss(agent.replace(params=params, target_params=target_params), params)

    return jax.grad(f, argnums=(0, 1))(agent.params, agent.target_params)


def zero(tree) -> bool:
    return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def nonzero(tree) -> bool:
    return any(np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def assert_moves_only(grads, moved: set[str]):
    g, g_target = grads
    for name, tree in g.items():
        assert nonzero(tree) if name in moved else zero(tree), (name, "should move" if name in moved else "leaked")
    assert zero(g_target), "a target network received a gradient"


# ------------------------------------------------------------------------------------------------------- FQL


def test_fql_critic_loss_moves_only_the_critic():
    # The next action comes from the one-step policy, but the target is a constant for it.
    agent = make_agent("fql")
    assert_moves_only(grads_of(agent, lambda a, p: a.critic_loss(BATCH_DATA, p, RNG)[0]), {"critic"})


def test_fql_actor_loss_moves_both_policies_never_the_critic():
    agent = make_agent("fql")
    grads = grads_of(agent, lambda a, p: a.actor_loss(BATCH_DATA, p, RNG)[0])
    assert_moves_only(grads, {"actor_bc_flow", "actor_onestep_flow"})


def test_fql_distillation_target_gets_no_gradient():
    agent = make_agent("fql")
    noise = jax.random.normal(RNG, (BATCH, ACT))
    grads = grads_of(agent, lambda a, p: a.distillation_loss(BATCH_DATA, p, noise)[0])
    assert_moves_only(grads, {"actor_onestep_flow"})  # the flow policy only learns from bc_flow_loss


def test_fql_bc_flow_loss_moves_only_the_flow_policy():
    agent = make_agent("fql")
    assert_moves_only(grads_of(agent, lambda a, p: a.bc_flow_loss(BATCH_DATA, p, RNG)), {"actor_bc_flow"})


@pytest.mark.parametrize("normalize_q_loss", [False, True])
def test_fql_q_term_moves_the_one_step_policy_not_the_critic(normalize_q_loss):
    agent = make_agent("fql", normalize_q_loss=normalize_q_loss)
    noise = jax.random.normal(RNG, (BATCH, ACT))

    def q_term(a, p):
        actions = a.onestep_actions(p["actor_onestep_flow"], BATCH_DATA["observations"], noise)
        return a.q_loss(BATCH_DATA, actions)[0]

    assert_moves_only(grads_of(agent, q_term), {"actor_onestep_flow"})


# ---------------------------------------------------------------------------------------------------- ReBRAC


@pytest.mark.parametrize("alpha_critic", [0.0, 0.1])
def test_rebrac_critic_loss_moves_only_the_critic(alpha_critic):
    # Target actor and target critic are constants of the TD target (and the actor is not involved at all).
    agent = make_agent("rebrac", alpha_critic=alpha_critic)
    assert_moves_only(grads_of(agent, lambda a, p: a.critic_loss(BATCH_DATA, p, RNG)[0]), {"critic"})


@pytest.mark.parametrize("alpha_actor", [0.0, 1.0])
def test_rebrac_actor_loss_moves_only_the_actor(alpha_actor):
    agent = make_agent("rebrac", alpha_actor=alpha_actor)
    assert_moves_only(grads_of(agent, lambda a, p: a.actor_loss(BATCH_DATA, p)[0]), {"actor"})


def changed(x, y) -> bool:
    return not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True))


def test_rebrac_actor_and_targets_move_only_every_actor_freq_updates():
    # The ReBRAC paper's optimiser (one Adam per network); the reference's shared Adam is tested below.
    agent = make_agent("rebrac", actor_freq=2, alpha_actor=0.1, alpha_critic=0.1, shared_adam=False)
    update = jax.jit(lambda a: a.update(BATCH_DATA))
    first, info1 = update(agent)  # update 1: critic only
    second, info2 = update(first)  # update 2: critic and actor, then both targets

    assert changed(agent.params["critic"], first.params["critic"])
    assert not changed(agent.params["actor"], first.params["actor"])
    assert not changed(agent.opt_state["actor"], first.opt_state["actor"])  # no Adam momentum drift either
    assert not changed(agent.target_params, first.target_params)
    assert float(info1["actor/updated"]) == 0 and float(info2["actor/updated"]) == 1

    assert changed(first.params["critic"], second.params["critic"])
    assert changed(first.params["actor"], second.params["actor"])
    # Targets move towards the networks as they were before this update.
    expected = optax.incremental_update(first.params, first.target_params, agent.config.tau)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(second.target_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_rebrac_critic_penalty_needs_next_actions():
    agent = make_agent("rebrac", alpha_critic=0.1)
    batch = {k: v for k, v in BATCH_DATA.items() if k != "next_actions"}
    with pytest.raises(SorlError, match="next_actions"):
        agent.update(batch)
    make_agent("rebrac", alpha_critic=0.0).update(batch)  # no penalty, no need


def rebrac_grads(agent, critic_rng, actor_step: bool):
    """Both networks' gradients of one ReBRAC update at `agent`'s parameters (a zero actor gradient off schedule)."""
    params = agent.params
    g_critic = jax.grad(lambda c: agent.critic_loss(BATCH_DATA, {**params, "critic": c}, critic_rng)[0])(
        params["critic"]
    )
    g_actor = jax.grad(lambda a: agent.actor_loss(BATCH_DATA, {**params, "actor": a})[0])(params["actor"])
    if not actor_step:
        g_actor = jax.tree.map(jnp.zeros_like, g_actor)
    return {"actor": g_actor, "critic": g_critic}


def rebrac_by_hand(agent, steps: int, separate: bool = False):
    """ReBRAC's first `steps` updates written out with optax, from its documented key split and actor schedule.

    The reference (`separate=False`): one Adam state over {actor, critic}, stepped every update on the critic's
    gradient and, on every `actor_freq`-th update, the actor's (a zero actor gradient otherwise); the targets move
    towards the pre-step networks on actor updates only. Returns (params, target_params) after each update.
    """
    tx = optax.adam(agent.config.lr)
    tau = agent.config.tau
    params, targets, rng = agent.params, agent.target_params, agent.rng
    state = {name: tx.init(p) for name, p in params.items()} if separate else tx.init(params)
    history = []
    for step in range(steps):
        rng, critic_rng = jax.random.split(rng)
        actor_step = (step + 1) % agent.config.actor_freq == 0
        grads = rebrac_grads(agent.replace(params=params, target_params=targets), critic_rng, actor_step)
        if separate:
            new = dict(params)
            for name in ["critic", "actor"] if actor_step else ["critic"]:
                updates, state[name] = tx.update(grads[name], state[name], params[name])
                new[name] = optax.apply_updates(params[name], updates)
        else:
            updates, state = tx.update(grads, state, params)
            new = optax.apply_updates(params, updates)
        if actor_step:
            targets = optax.incremental_update(params, targets, tau)
        params = new
        history.append((params, targets))
    return history


def assert_trees_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6), a, b)


@pytest.mark.parametrize("separate", [False, True])
def test_rebrac_update_equals_the_optax_sequence_by_hand(separate):
    # Default: the FQL reference's single Adam; shared_adam=False: one Adam per network, the actor's stepped only
    # on actor updates (updates 2 and 4 of 4 with actor_freq = 2).
    agent = make_agent("rebrac", alpha_actor=0.1, alpha_critic=0.01, shared_adam=not separate)
    expected = rebrac_by_hand(agent, 4, separate=separate)
    update = jax.jit(lambda a: a.update(BATCH_DATA))
    history = []
    for params, targets in expected:
        agent, info = update(agent)
        assert_trees_close(agent.params, params)
        assert_trees_close(agent.target_params, targets)
        history.append(agent.params["actor"])
    assert int(agent.step) == 4
    # Update 3 trains no actor. With one shared Adam the actor still moves by the momentum of update 2;
    # with its own Adam it stays where update 2 left it.
    before, after = jax.tree.leaves(history[1]), jax.tree.leaves(history[2])
    moved = any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    assert moved is not separate


# ------------------------------------------------------------------------------------------------------- IQL


@pytest.mark.parametrize(
    "loss, moved",
    [("value_loss", {"value"}), ("critic_loss", {"critic"}), ("actor_loss", {"actor"})],
)
def test_iql_each_loss_moves_only_its_network(loss, moved):
    # value: the target critic's Q is a constant; critic: V(x') is a constant; actor: the advantage is a constant.
    agent = make_agent("iql")
    assert_moves_only(grads_of(agent, lambda a, p: getattr(a, loss)(BATCH_DATA, p)[0]), moved)


def test_iql_update_is_one_adam_step_per_network_of_its_own_loss():
    agent = make_agent("iql")
    new, _ = jax.jit(lambda a: a.update(BATCH_DATA))(agent)
    tx = optax.adam(agent.config.lr)
    for name, loss in [("value", "value_loss"), ("critic", "critic_loss"), ("actor", "actor_loss")]:
        g = jax.grad(lambda p, name=name, loss=loss: getattr(agent, loss)(BATCH_DATA, {**agent.params, name: p})[0])(
            agent.params[name]
        )
        updates, _ = tx.update(g, tx.init(agent.params[name]), agent.params[name])
        expected = optax.apply_updates(agent.params[name], updates)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(new.params[name]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------------- BC


def test_flow_bc_has_no_critic_and_its_loss_moves_only_the_policy():
    agent = make_agent("flow-bc", denoise_timesteps=4)
    assert set(agent.params) == {"actor"} and set(agent.target_params) == {"actor"}
    # The self-consistency target comes from the EMA policy and is a constant.
    assert_moves_only(grads_of(agent, lambda a, p: a.actor_loss(BATCH_DATA, p["actor"], RNG)[0]), {"actor"})
