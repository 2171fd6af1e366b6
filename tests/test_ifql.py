"""IFQL (agents/ifql.py) against the FQL reference code's `agents/ifql.py`.

The reference's update is computed here by hand from its equations (expectile value loss on the target critic's
min, the summed two-member critic loss on the pre-step V, the flow-matching loss with its keys split for split; one
Adam over every network; the EMA of the target critic towards the pre-step critic) with `jax.grad` and `optax.adam`,
and compared with the agent's after three updates. Its policy is checked against the reference's sampler (K Euler
steps `a += v / K` at `t = i / K`, clipped, the candidate with the highest min-Q), and its K against the agent's rule
(any K >= 1, unlike the shortcut agents' powers of two).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents import AGENTS, get_agent
from agents.ifql import IFQLAgent, IFQLConfig
from envs.registry import agent_env_settings, settings_source
from runner.evaluation import grid_note, validate_grid
from runner.online import check_online_settings
from runner.settings import TrainSettings
from runner.train import resolve_agent_config
from sorl import baselines
from sorl.errors import SorlError
from sorl.inference import make_policy_fn
from sorl.networks import ShortcutVelocityNet

OBS, ACT, BATCH = 4, 2, 16
TINY = IFQLConfig(actor_layer_size=8, actor_num_layers=2, value_layer_size=8, value_num_layers=2, batch_size=BATCH)


def make_batch(seed: int) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "observations": jax.random.normal(k[0], (BATCH, OBS)),
        "actions": jnp.clip(jax.random.normal(k[1], (BATCH, ACT)), -0.99, 0.99),
        "rewards": jax.random.normal(k[2], (BATCH,)),
        "masks": (jax.random.uniform(k[3], (BATCH,)) > 0.2).astype(jnp.float32),
        "next_observations": jax.random.normal(k[4], (BATCH, OBS)),
    }


def make_agent(config: IFQLConfig = TINY) -> IFQLAgent:
    agent = IFQLAgent.create(jax.random.PRNGKey(1), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)
    # A target critic unlike the online one, so that reading the wrong one shows.
    return agent.replace(target_params=jax.tree.map(lambda p: p + 0.05, agent.target_params))


# ----------------------------------------------------------------------------- the reference's equations


def value_net(params, x):
    return baselines.critic_def(TINY, num_members=1).apply({"params": params}, x)[0]


def critic_net(params, x, a):
    return baselines.critic_def(TINY).apply({"params": params}, x, a)  # [2, B]: q1, q2


def flow_net(params, x, a_t, t):
    dims = (TINY.actor_layer_size,) * TINY.actor_num_layers
    return ShortcutVelocityNet(action_dim=ACT, hidden_dims=dims).apply({"params": params}, x, a_t, t)


def reference_update(state, batch):
    """One `IFQLAgent.update` of the reference (`agents/ifql.py` in seohongpark/fql), written out."""
    params, target, opt_state, rng = state
    new_rng, rng = jax.random.split(rng)  # update()
    rng, actor_rng = jax.random.split(rng)  # total_loss()
    rng, x_rng, t_rng = jax.random.split(actor_rng, 3)  # actor_loss()
    e, gamma = TINY.expectile, TINY.discount

    def total_loss(grad_params):
        # value_loss: V on the target critic's min, expectile-weighted
        q1, q2 = critic_net(target, batch["observations"], batch["actions"])
        q = jnp.minimum(q1, q2)
        v = value_net(grad_params["value"], batch["observations"])
        adv = q - v
        value_loss = (jnp.where(adv >= 0, e, 1 - e) * adv**2).mean()
        # critic_loss: both members on r + gamma mask V(x') of the stored (pre-step) value network
        next_v = value_net(params["value"], batch["next_observations"])
        y = batch["rewards"] + gamma * batch["masks"] * next_v
        q1, q2 = critic_net(grad_params["critic"], batch["observations"], batch["actions"])
        critic_loss = ((q1 - y) ** 2 + (q2 - y) ** 2).mean()
        # actor_loss: behavioural flow matching
        x_0 = jax.random.normal(x_rng, (BATCH, ACT))
        x_1 = batch["actions"]
        t = jax.random.uniform(t_rng, (BATCH, 1))
        x_t = (1 - t) * x_0 + t * x_1
        pred = flow_net(grad_params["actor_flow"], batch["observations"], x_t, t)
        actor_loss = jnp.mean((pred - (x_1 - x_0)) ** 2)
        return value_loss + critic_loss + actor_loss

    grads = jax.grad(total_loss)(params)
    updates, opt_state = optax.adam(TINY.lr).update(grads, opt_state, params)  # one Adam over every network
    new_params = optax.apply_updates(params, updates)
    # target_update(): towards the stored (pre-step) critic
    target = jax.tree.map(lambda p, tp: p * TINY.tau + tp * (1 - TINY.tau), params["critic"], target)
    return new_params, target, opt_state, new_rng


def test_update_equals_the_reference_update_for_three_steps():
    agent = make_agent()
    state = (agent.params, agent.target_params["critic"], optax.adam(TINY.lr).init(agent.params), agent.rng)
    update = jax.jit(lambda a, b: a.update(b))
    for i in range(3):
        batch = make_batch(10 + i)
        agent, info = update(agent, batch)
        state = jax.jit(reference_update)(state, batch)
    params, target, _, rng = state
    for ours, theirs in ((agent.params, params), (agent.target_params["critic"], target)):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(jax.random.key_data(agent.rng), jax.random.key_data(rng))
    assert int(agent.step) == 3
    assert {"value/value_loss", "critic/critic_loss", "actor/actor_loss", "actor_flow/grad_norm"} <= set(info)
    assert jax.tree.structure(params) == jax.tree.structure(agent.params)  # the same three networks


def test_each_loss_moves_only_its_network():
    agent, batch = make_agent(), make_batch(0)

    def grads(loss):
        def f(params, target_params):
            return loss(agent.replace(params=params, target_params=target_params), params)

        return jax.grad(f, argnums=(0, 1))(agent.params, agent.target_params)

    def moved(tree) -> bool:
        return any(np.any(np.asarray(x)) for x in jax.tree.leaves(tree))

    for loss, network in (
        (lambda a, p: a.value_loss(batch, p)[0], "value"),
        (lambda a, p: a.critic_loss(batch, p)[0], "critic"),
        (lambda a, p: a.actor_loss(batch, p, jax.random.PRNGKey(0))[0], "actor_flow"),
    ):
        g, g_target = grads(loss)
        assert {name for name, tree in g.items() if moved(tree)} == {network}
        assert not moved(g_target)  # the target critic is a constant of the value loss


# ------------------------------------------------------------------------------------------------ policy


def reference_actions(agent, observations, rng, K, N):
    """The reference's `sample_actions`: N noises (here one key each, as `sorl.inference.sample_best_of_n` draws
    them), `a += v(x, a, i / K) / K` K times, clip, the candidate with the highest min(Q1, Q2) per state."""
    candidates = []
    for key in jax.random.split(rng, N):
        a = jax.random.normal(key, (observations.shape[0], ACT))
        for i in range(K):
            t = jnp.full((observations.shape[0], 1), i / K)
            a = a + flow_net(agent.params["actor_flow"], observations, a, t) / K
        candidates.append(jnp.clip(a, -1, 1))
    candidates = jnp.stack(candidates)  # [N, B, A]
    q = jnp.stack([critic_net(agent.params["critic"], observations, c).min(axis=0) for c in candidates])
    return candidates[jnp.argmax(q, axis=0), jnp.arange(observations.shape[0])]


def test_policy_is_the_reference_best_of_N_flow_samples():
    agent = make_agent()
    agent, _ = agent.update(make_batch(0))
    obs, rng = make_batch(1)["observations"], jax.random.PRNGKey(4)
    ours = agent.sample_actions(obs, rng, K=10, N=32)
    np.testing.assert_allclose(ours, reference_actions(agent, obs, rng, 10, 32), atol=1e-5)
    np.testing.assert_array_equal(agent.sample_actions(obs, rng), ours)  # the defaults: flow_steps, num_samples
    # N = 1: the plain flow sample from `rng` itself, no critic
    single = agent.sample_actions(obs, rng, K=3, N=1)
    a = jax.random.normal(rng, (BATCH, ACT))
    for i in range(3):
        a = a + flow_net(agent.params["actor_flow"], obs, a, jnp.full((BATCH, 1), i / 3)) / 3
    np.testing.assert_allclose(single, jnp.clip(a, -1, 1), atol=1e-5)
    assert bool(jnp.all(jnp.abs(ours) <= 1))


def test_any_positive_K_and_the_published_cell():
    agent = make_agent()
    policy = make_policy_fn()
    obs = make_batch(2)["observations"]
    for K in (1, 3, 10, 20):
        assert policy(agent, obs, jax.random.PRNGKey(0), K, 2).shape == (BATCH, ACT)
    assert policy(agent, obs[0], jax.random.PRNGKey(0), 10, 32).shape == (ACT,)
    with pytest.raises(
        SorlError, match="^K=0: the number of sampling steps must be a positive integer; ifql takes any K"
    ):
        policy(agent, obs, jax.random.PRNGKey(0), 0, 1)
    validate_grid((1, 3, 10), (1, 32), agent.max_K, agent, "ifql")
    # where the shortcut agents refuse the same K
    with pytest.raises(SorlError, match="power of two .*; sorl takes"):
        validate_grid((10,), (1,), None, get_agent("sorl"), "sorl")
    settings = TrainSettings(eval_K="1,10", eval_N="1,32", online_steps=5, online_K=10, online_N=32).validate()
    check_online_settings(settings, IFQLAgent, TINY, "ifql")
    # its grid note names the published cell, and how to evaluate it when the grid leaves it out
    note = grid_note(agent, "ifql", (1, 2, 4, 8), (1,))
    assert note == "note: ifql's published numbers are its cell K=10, N=32, not in this grid (add it with --eval-K " \
        "10 --eval-N 32)"  # fmt: skip
    assert grid_note(agent, "ifql", (1, 10), (1, 32)) == "note: ifql's published numbers are its cell K=10, N=32"


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_are_the_reference_get_config():
    c = IFQLConfig()
    assert (c.lr, c.batch_size, c.discount, c.tau, c.expectile, c.num_samples, c.flow_steps) == (
        3e-4, 256, 0.99, 0.005, 0.9, 32, 10
    )  # fmt: skip
    assert (c.actor_layer_size, c.actor_num_layers, c.value_layer_size, c.value_num_layers) == (512, 4, 512, 4)
    assert (c.layer_norm, c.actor_layer_norm, c.num_critics, c.encoder, c.grad_clip_norm) == (True, False, 2, None, 0)
    for key, bad in (("expectile", 1.0), ("num_samples", 0), ("flow_steps", 0)):
        with pytest.raises(SorlError, match=key):
            dataclasses.replace(c, **{key: bad}).validate()
    assert AGENTS["ifql"] is IFQLAgent and IFQLAgent.PUBLISHED_CELL == (10, 32)
    assert IFQLAgent.PUBLISHED_COLUMN is None  # until the FQL paper's IFQL numbers are in experiments.paper


def test_per_environment_settings_are_the_readme_commands():
    # README: `--agent=agents/ifql.py --agent.discount=0.995 --agent.num_samples=32` on humanoidmaze-medium
    assert agent_env_settings(IFQLAgent, "humanoidmaze-medium-navigate-singletask-task3-v0") == dict(
        discount=0.995, num_samples=32
    )
    assert settings_source(IFQLAgent, "humanoidmaze-medium-navigate")[0]
    # README: `--agent.num_samples=32 --agent.encoder=impala_small` on visual-cube-single
    assert agent_env_settings(IFQLAgent, "visual-cube-single-play") == dict(num_samples=32, encoder="impala_small")
    assert settings_source(IFQLAgent, "visual-cube-single-play")[0]
    # no IFQL command: FQL's per-environment discount, marked unverified
    assert agent_env_settings(IFQLAgent, "antsoccer-arena-navigate") == dict(discount=0.995)
    assert not settings_source(IFQLAgent, "antsoccer-arena-navigate")[0]
    assert agent_env_settings(IFQLAgent, "cube-single-play") == {}
    _, config, _ = resolve_agent_config("ifql", "humanoidmaze-medium-navigate", {"num_samples": "8"})
    assert (config.discount, config.num_samples) == (0.995, 8)  # flags win


# ----------------------------------------------------------------------------------------------- a run


def test_a_run_evaluates_the_published_cell(tmp_path, capsys):
    """`sorl train --agent ifql` with the grid K in {1, 10}, N in {1, 32} (a stand-in dataset and environment): K = 10
    is taken, the published cell is evaluated, and the grid note says which cell it is."""
    import json

    import gymnasium

    from runner import train as train_lib

    class Env(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        action_space = gymnasium.spaces.Box(-1, 1, (ACT,), np.float32)

        def reset(self, *, seed=None, options=None):
            self.t = 0
            return np.ones(OBS, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.ones(OBS, np.float32), 0.0, False, self.t >= 2, {"success": self.t >= 2}

    def load_task(task_name, data_dir=None, *, success_timing="pre", episodes=None):
        data = {k: np.asarray(v) for k, v in make_batch(0).items()}
        data["terminals"] = np.zeros(BATCH, np.float32)
        return Env(), data, data

    settings = TrainSettings(
        steps=4, log_interval=2, eval_interval=4, eval_episodes=1, eval_K="1,10", eval_N="1,32", eval_workers=1,
        progress=False,
    )  # fmt: skip
    sizes = ("actor_layer_size", "actor_num_layers", "value_layer_size", "value_num_layers")
    overrides = {**{k: str(getattr(TINY, k)) for k in sizes}, "batch_size": "8"}
    res = train_lib.train(
        "cube-single-play-task2", "ifql", seed=0, run_dir=tmp_path / "run", settings=settings, load_task=load_task,
        make_env=lambda task, timing, steps: Env(), agent_overrides=overrides,
    )  # fmt: skip
    assert res["status"] == "complete"
    assert {(c["K"], c["N"]) for c in res["final"]} == {(1, 1), (1, 32), (10, 1), (10, 32)}
    assert "note: ifql's published numbers are its cell K=10, N=32\n" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["agent"] == "ifql"
