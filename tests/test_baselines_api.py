"""The baselines' shared contract: registry, configs and per-environment settings, `sample_actions(obs, rng, K, N)`
(K ignored by the one-step agents, best-of-N by each agent's own critic, N ignored by BC), seeds as a batch axis."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import AGENTS, get_agent
from envs.registry import agent_env_settings, resolve_env, settings_source
from runner.evaluation import validate_grid
from runner.train import resolve_agent_config
from sorl.baselines import aggregate, expectile_loss, gaussian_log_prob, with_next_actions
from sorl.config import apply_overrides, config_from_dict, config_to_dict
from sorl.errors import SorlError
from sorl.inference import make_policy_fn

OBS, ACT = 3, 2
BASELINES = ("fql", "rebrac", "iql", "flow-bc")
ONE_STEP = ("fql", "rebrac", "iql")  # no multi-step sampler: K is ignored
TINY = dict(actor_layer_size=16, actor_num_layers=2, value_layer_size=16, value_num_layers=2, batch_size=8)


def tiny_config(name: str, **changes):
    cls = get_agent(name)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    return dataclasses.replace(cls.Config(), **{k: v for k, v in {**TINY, **changes}.items() if k in names})


def make_agent(name: str, seed: int = 0, **changes):
    return get_agent(name).create(seed, jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), tiny_config(name, **changes))


OBSERVATIONS = jax.random.normal(jax.random.PRNGKey(3), (16, OBS))


# ------------------------------------------------------------------------------------- registry and configs


def test_registered_with_config_and_contract():
    for name in BASELINES:
        cls = get_agent(name)
        assert AGENTS[name] is cls and dataclasses.is_dataclass(cls.Config)
        for method in ("create", "update", "sample_actions"):
            assert callable(getattr(cls, method))
    with pytest.raises(SorlError, match="did you mean: rebrac"):
        get_agent("rebrack")


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("fql", "alpha", "-1"),
        ("fql", "q_agg", "max"),
        ("fql", "flow_steps", "0"),
        ("rebrac", "actor_freq", "0"),
        ("rebrac", "tau", "0"),
        ("iql", "expectile", "1.0"),
        ("iql", "discount", "1.5"),
        ("flow-bc", "denoise_timesteps", "3"),
        ("flow-bc", "lr", "0"),
        ("bc", "lr", "0"),
        ("bc", "actor_num_layers", "-1"),
    ],
)
def test_invalid_settings_are_one_line_errors(name, key, value):
    with pytest.raises(SorlError, match=f"{key}"):
        apply_overrides(get_agent(name).Config(), {key: value})


def test_every_agent_implements_the_contract():
    # sorl.agent: one base class with the default hooks; flow BC shares SORL's policy, not its critic.
    from agents import AGENTS
    from agents.sorl import ShortcutPolicy
    from sorl.agent import Agent

    for name, cls in AGENTS.items():
        assert issubclass(cls, Agent) and dataclasses.is_dataclass(cls.Config), name
    assert issubclass(get_agent("flow-bc"), ShortcutPolicy) and not issubclass(get_agent("flow-bc"), get_agent("sorl"))
    assert "critic_loss" not in dir(get_agent("flow-bc"))


def test_every_agent_setting_has_a_check():
    # One mechanism for every agent: a setting of any registered config is checked (its own check, declared at the
    # field, or the shared one of its name), none skipped.
    from agents import AGENTS
    from sorl.validation import check_config, field_check

    for name, cls in AGENTS.items():
        missing = [f.name for f in dataclasses.fields(cls.Config) if field_check(f) is None]
        assert not missing, (name, missing)
        check_config(cls.Config())  # the defaults are valid
    with pytest.raises(SorlError, match=r"max_k_backprop=8: must be at most denoise_timesteps=4"):
        dataclasses.replace(get_agent("sorl").Config(), denoise_timesteps=4).validate()  # a cross-field check


def test_reference_flag_names_port_directly():
    fql = apply_overrides(get_agent("fql").Config(), {"alpha": "300", "q_agg": "min", "normalize_q_loss": "true"})
    assert (fql.alpha, fql.q_agg, fql.normalize_q_loss) == (300.0, "min", True)
    rebrac = apply_overrides(get_agent("rebrac").Config(), {"alpha_actor": "0.01", "alpha_critic": "0.01"})
    assert (rebrac.alpha_actor, rebrac.alpha_critic, rebrac.actor_freq) == (0.01, 0.01, 2)
    with pytest.raises(SorlError, match="unknown setting"):
        apply_overrides(get_agent("flow-bc").Config(), {"q_loss_coef": "1"})  # flow BC has no Q term to weigh
    for name in BASELINES:  # run directories store the config as JSON and read it back
        config = get_agent(name).Config()
        assert config_from_dict(type(config), config_to_dict(config)) == config


def test_reference_defaults():
    fql, rebrac, iql, bc = (get_agent(n).Config() for n in BASELINES)
    for c in (fql, rebrac, iql):
        assert (c.lr, c.batch_size, c.discount, c.tau, c.num_critics) == (3e-4, 256, 0.99, 0.005, 2)
        assert (c.actor_layer_size, c.actor_num_layers, c.value_layer_size, c.value_num_layers) == (512, 4, 512, 4)
        assert c.layer_norm and not c.actor_layer_norm and c.grad_clip_norm == 0
    assert (fql.alpha, fql.flow_steps, fql.q_agg, fql.normalize_q_loss) == (10.0, 10, "mean", False)
    noise = (rebrac.actor_noise, rebrac.actor_noise_clip)
    assert (rebrac.actor_freq, *noise, rebrac.actor_fc_scale) == (2, 0.2, 0.5, 0.01)
    assert (iql.expectile, iql.alpha, iql.const_std, iql.q_agg) == (0.9, 10.0, True, "min")
    sorl = get_agent("sorl").Config()
    assert all(getattr(bc, f.name) == getattr(sorl, f.name) for f in dataclasses.fields(bc))  # SORL's policy
    assert bc.q_loss_coef == 0.0


# ------------------------------------------------------------------------------------ per-environment table

TABLE_ENVS = [
    "antmaze-large-navigate",
    "antmaze-giant-navigate",
    "humanoidmaze-medium-navigate",
    "humanoidmaze-large-navigate",
    "antsoccer-arena-navigate",
    "cube-single-play",
    "cube-double-play",
    "scene-play",
    "puzzle-3x3-play",
    "puzzle-4x4-play",
]


def test_per_environment_settings_cover_the_table():
    for name in ("fql", "rebrac", "iql"):
        state = {
            env: tuned.values for env, tuned in get_agent(name).ENV_SETTINGS.items() if not env.startswith("visual")
        }
        assert sorted(state) == sorted(TABLE_ENVS)
        for env_name, settings in state.items():
            assert resolve_env(env_name).name == env_name
            apply_overrides(get_agent(name).Config(), {k: str(v) for k, v in settings.items()})  # all valid keys
            giant_or_humanoid = env_name.startswith(("antmaze-giant", "humanoidmaze", "antsoccer"))
            assert settings["discount"] == (0.995 if giant_or_humanoid else 0.99)
    # The FQL reference's README commands.
    fql, iql, rebrac = get_agent("fql"), get_agent("iql"), get_agent("rebrac")
    assert agent_env_settings(fql, "antmaze-large-navigate-singletask-task3-v0") == dict(
        alpha=10.0, discount=0.99, q_agg="min"
    )
    assert agent_env_settings(fql, "humanoidmaze-medium-navigate")["alpha"] == 30.0
    assert agent_env_settings(fql, "puzzle-4x4-play-task4")["alpha"] == 1000.0
    assert agent_env_settings(iql, "humanoidmaze-medium-navigate") == dict(alpha=10.0, discount=0.995)
    assert agent_env_settings(rebrac, "humanoidmaze-medium-navigate") == dict(
        alpha_actor=0.01, alpha_critic=0.01, discount=0.995
    )
    assert agent_env_settings(get_agent("bc"), "scene-play") == {}


def test_every_per_environment_setting_names_its_source():
    for name, cls in AGENTS.items():
        for env, tuned in cls.ENV_SETTINGS.items():
            assert settings_source(cls, env) == (tuned.verified, tuned.source) and tuned.source, (name, env)
    # Read in the authors' own commands: SORL's and FQL's per-environment lists, the README's humanoidmaze examples.
    sorl, fql, iql, rebrac = (get_agent(n) for n in ("sorl", "fql", "iql", "rebrac"))
    assert all(settings_source(sorl, env)[0] for env in sorl.ENV_SETTINGS)
    assert all(settings_source(fql, env)[0] for env in fql.ENV_SETTINGS)
    assert settings_source(rebrac, "humanoidmaze-medium-navigate-task2")[0]
    assert settings_source(iql, "humanoidmaze-medium-navigate")[0]
    assert not settings_source(rebrac, "cube-single-play")[0] and not settings_source(iql, "scene-play")[0]
    assert settings_source(get_agent("bc"), "cube-single-play") is None


def test_task_picks_the_settings_and_overrides_win():
    _, config, settings = resolve_agent_config("rebrac", "scene-play-singletask-task3-v0", {"alpha_critic": "0.5"})
    assert settings == dict(alpha_actor=0.1, alpha_critic=0.01, discount=0.99)
    assert (config.alpha_actor, config.alpha_critic) == (0.1, 0.5)


# ----------------------------------------------------------------------------------------- K / N contract


@pytest.mark.parametrize("name", ONE_STEP)
def test_one_step_agents_accept_any_power_of_two_K_and_ignore_it(name):
    agent = make_agent(name)
    assert agent.max_K is None
    rng = jax.random.PRNGKey(5)
    for N in (1, 3):
        first = agent.sample_actions(OBSERVATIONS, rng, K=1, N=N)
        assert first.shape == (16, ACT) and bool(jnp.all(jnp.abs(first) <= 1))
        for K in (2, 8, 64):
            np.testing.assert_array_equal(agent.sample_actions(OBSERVATIONS, rng, K=K, N=N), first)
    for K, N in ((3, 1), (0, 1), (1, 0)):
        with pytest.raises(SorlError):
            agent.sample_actions(OBSERVATIONS, rng, K=K, N=N)
    validate_grid((1, 2, 4, 8), (1, 2, 4, 8), agent.max_K)  # `sorl train`'s default evaluation grid is accepted


def _score(agent, observations, actions):
    return np.asarray(aggregate(agent.q_values(agent.params["critic"], observations, actions), agent.config.q_agg))


@pytest.mark.parametrize("name", ("rebrac", "iql"))
def test_deterministic_agents_best_of_n_keeps_the_mode_as_a_candidate(name):
    agent = make_agent(name)
    mode = agent.sample_actions(OBSERVATIONS, jax.random.PRNGKey(0), N=1)
    np.testing.assert_array_equal(mode, agent.sample_actions(OBSERVATIONS, jax.random.PRNGKey(9), N=1))  # no noise
    best = agent.sample_actions(OBSERVATIONS, jax.random.PRNGKey(0), N=8)
    assert not np.allclose(best, mode)  # some states pick a perturbed candidate
    score = (lambda o, a: np.asarray(agent.q(agent.params["critic"], o, a))) if name == "iql" else None
    score = score or (lambda o, a: _score(agent, o, a))
    assert np.all(score(OBSERVATIONS, best) >= score(OBSERVATIONS, mode) - 1e-6)


def test_fql_best_of_n_is_the_critic_argmax_of_n_noises():
    agent = make_agent("fql")
    rng = jax.random.PRNGKey(4)
    keys = jax.random.split(rng, 6)
    candidates = [agent.sample_actions(OBSERVATIONS, k, N=1) for k in keys]  # N=1 draws with the same keys
    scores = np.stack([_score(agent, OBSERVATIONS, c) for c in candidates])
    expected = np.stack(candidates)[scores.argmax(0), np.arange(16)]
    np.testing.assert_allclose(agent.sample_actions(OBSERVATIONS, rng, N=6), expected, rtol=1e-4, atol=1e-6)


def test_flow_bc_uses_K_up_to_its_trained_maximum_and_ignores_N():
    agent = make_agent("flow-bc", denoise_timesteps=4)
    assert agent.max_K == 4
    rng = jax.random.PRNGKey(2)
    by_K = [agent.sample_actions(OBSERVATIONS, rng, K=K) for K in (1, 2, 4)]
    assert not np.allclose(by_K[0], by_K[2])  # the sampler really takes K steps
    for N in (2, 8):
        np.testing.assert_array_equal(agent.sample_actions(OBSERVATIONS, rng, K=4, N=N), by_K[2])
    with pytest.raises(SorlError, match="above the largest"):
        agent.sample_actions(OBSERVATIONS, rng, K=8)


@pytest.mark.parametrize("name", ("rebrac", "flow-bc", "bc"))  # the actor's `cond`, the SORLAgent subclass, Gaussian BC
def test_jitted_policy_and_seeds_as_a_batch_axis(name):
    config = tiny_config(name, denoise_timesteps=2, actor_freq=2, flow_steps=2)
    cls = get_agent(name)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    agents = jax.jit(jax.vmap(lambda k: cls.create(k, jnp.zeros((1, OBS)), jnp.zeros((1, ACT)), config)))(keys)
    batch = {
        "observations": OBSERVATIONS[:8],
        "actions": jnp.zeros((8, ACT)),
        "rewards": jnp.ones(8),
        "masks": jnp.ones(8),
        "next_observations": OBSERVATIONS[8:],
        "next_actions": jnp.zeros((8, ACT)),
    }
    agents, info = jax.jit(jax.vmap(lambda a: a.update(batch)))(agents)
    assert all(v.shape == (2,) and np.all(np.isfinite(v)) for v in info.values())
    one = jax.tree.map(lambda x: x[0], agents)
    action = make_policy_fn()(one, OBSERVATIONS[0], jax.random.PRNGKey(1), 2, 2)  # one unbatched observation
    assert action.shape == (ACT,)


# ---------------------------------------------------------------------------------------------- helpers


def test_next_actions_follow_the_reference_definition():
    data = {"actions": jnp.arange(10.0).reshape(5, 2), "observations": jnp.zeros((5, 1))}
    out = get_agent("rebrac").prepare_dataset(data)
    np.testing.assert_array_equal(out["next_actions"], np.array([[2, 3], [4, 5], [6, 7], [8, 9], [8, 9]]))
    assert with_next_actions(out)["next_actions"] is out["next_actions"]  # an existing key is kept


def test_formulas():
    diff = jnp.array([2.0, -2.0])
    np.testing.assert_allclose(expectile_loss(diff, 0.9), [0.9 * 4, 0.1 * 4])
    mean, log_std, a = jnp.zeros((1, 2)), jnp.log(jnp.full((1, 2), 2.0)), jnp.ones((1, 2))
    expected = 2 * (-0.5 * 0.25 - np.log(2.0) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(gaussian_log_prob(mean, log_std, a), [expected], rtol=1e-6)
    qs = jnp.array([[1.0, 4.0], [3.0, 2.0]])
    np.testing.assert_array_equal(aggregate(qs, "min"), [1.0, 2.0])
    np.testing.assert_array_equal(aggregate(qs, "mean"), [2.0, 3.0])
