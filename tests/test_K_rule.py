"""Which sampling step counts K an agent takes is the agent's own rule (`sorl.agent.Agent.check_K`).

The contract's default is the shortcut sampler's (a power of two up to the trained maximum); an agent without step
codes sets `K_POWERS_OF_TWO = False` and takes any K >= 1. Every check that knows the agent asks it and refuses in
one line naming the agent and what it takes; a check that does not know the agent yet (a settings field, a spec
value, a flag before the run is read) asks only for a positive integer.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import pytest

import agents
from agents.sorl import SORLAgent
from experiments.aggregate import check_cell_K, check_table_options
from experiments.spec import load_spec
from runner.evaluation import check_grid_values, validate_grid
from runner.settings import TrainSettings
from sorl import inference
from sorl.agent import Agent, K_rule, agent_name
from sorl.errors import SorlError


@dataclasses.dataclass(frozen=True)
class AnyKConfig:
    lr: float = 0.1
    batch_size: int = 16

    def validate(self) -> None:
        pass


class AnyKAgent(Agent):
    """A stand-in whose sampler has no step codes: any K >= 1."""

    w: jax.Array
    config: AnyKConfig = flax.struct.field(pytree_node=False)

    Config = AnyKConfig
    K_POWERS_OF_TWO = False

    @classmethod
    def create(cls, rng, example_observations, example_actions, config=None):
        return cls(jnp.zeros((example_observations.shape[-1], example_actions.shape[-1])), config or AnyKConfig())

    def sample_actions(self, observations, rng, K=1, N=1):
        inference.validate_K_N(K, N, self.max_K, self)
        return jnp.clip(observations @ self.w, -1, 1)


@pytest.fixture
def anyk(monkeypatch):
    monkeypatch.setitem(agents.AGENTS, "anyk", AnyKAgent)
    return AnyKAgent


def test_the_default_rule_is_powers_of_two_up_to_the_trained_maximum():
    assert [K for K in range(1, 20) if SORLAgent.takes_K(K, 8)] == [1, 2, 4, 8]
    assert [K for K in range(1, 20) if SORLAgent.takes_K(K)] == [1, 2, 4, 8, 16]
    assert not SORLAgent.takes_K(0) and not SORLAgent.takes_K(True) and not SORLAgent.takes_K(2.0)
    with pytest.raises(SorlError) as e:
        SORLAgent.check_K(3, 8)
    # the message it always had, then the agent and what it takes
    assert str(e.value) == (
        "K=3: the number of sampling steps must be a power of two (1, 2, 4, 8, ...); sorl takes K = 1, 2, 4 or 8"
    )
    with pytest.raises(SorlError, match=r"^K=16 is above the largest step count this agent was trained for \(8, its "
                       r"denoise_timesteps\); use K <= 8 .*; sorl takes K = 1, 2, 4 or 8$"):  # fmt: skip
        SORLAgent.check_K(16, 8)
    with pytest.raises(SorlError, match="^K=0: .* power of two .*; fql takes any power of two K"):
        agents.AGENTS["fql"].check_K(0)
    assert agent_name(SORLAgent) == "sorl" and agent_name(Agent) == "this agent"
    assert K_rule(object()) is Agent and K_rule(SORLAgent) is SORLAgent


def test_an_agent_without_step_codes_takes_any_positive_K(anyk):
    assert all(anyk.takes_K(K) for K in (1, 3, 10, 33))
    assert anyk.takes_K(10, 10) and not anyk.takes_K(11, 10) and not anyk.takes_K(0)
    for K, pattern in ((0, "K=0: the number of sampling steps must be a positive integer; anyk takes any K >= 1"),
                       (-2, "must be a positive integer"), (True, "positive integer")):  # fmt: skip
        with pytest.raises(SorlError, match=pattern) as e:
            anyk.check_K(K)
        assert "\n" not in str(e.value)
    agent = anyk.create(jax.random.PRNGKey(0), jnp.ones((1, 3)), jnp.ones((1, 2)))
    inference.validate_K_N(10, 32, None, agent)
    validate_grid((1, 3, 10), (1, 32), agent.max_K, agent)
    policy = inference.make_policy_fn()
    assert policy(agent, jnp.ones((4, 3)), jax.random.PRNGKey(0), 10, 1).shape == (4, 2)
    with pytest.raises(SorlError, match="anyk takes any K >= 1"):
        policy(agent, jnp.ones((4, 3)), jax.random.PRNGKey(0), 0, 1)
    # the default rule still refuses what this agent takes
    with pytest.raises(SorlError, match="power of two"):
        validate_grid((10,), (1,), None, SORLAgent)


def test_where_the_agent_is_not_known_a_K_need_only_be_a_positive_integer():
    check_grid_values((3, 10), (1, 7))
    for Ks, Ns, pattern in (((0,), (1,), "K=0: .* positive integer"), ((1,), (0,), "N=0")):
        with pytest.raises(SorlError, match=pattern):
            check_grid_values(Ks, Ns)
    assert TrainSettings(eval_K="1,3,10").validate().Ks == (1, 3, 10)  # the agent says which it takes
    TrainSettings(online_steps=5, online_K=3).validate()
    with pytest.raises(SorlError, match="K=0: the number of sampling steps must be a positive integer"):
        TrainSettings(eval_K="1,0").validate()
    check_table_options(K=3)
    with pytest.raises(SorlError, match="--K 0"):
        check_table_options(K=0)


def test_a_table_K_is_refused_only_when_no_agent_of_the_runs_takes_it(anyk):
    def records(*names):
        return [type("R", (), {"agent": n})() for n in names]

    check_cell_K(records("sorl", "anyk"), 3)  # anyk's cell; sorl's rows are left out with a note
    check_cell_K(records("sorl"), None)
    with pytest.raises(SorlError, match=r"^--K 3: no agent of these runs takes it: K=3: .* power of two .*; fql "
                       r"takes any power of two K .*; sorl takes any power of two K"):  # fmt: skip
        check_cell_K(records("sorl", "fql"), 3)


SPEC = """
agents = {agents}
tasks = ["cube-single-play-task2"]
seeds = "1"
out = "{out}"
[eval]
K = {K}
"""


def _spec(tmp_path, agents_, K):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(agents=agents_, K=K, out=tmp_path / "runs"))
    return load_spec(path)


def test_a_spec_asks_each_agent_it_names(anyk, tmp_path):
    assert [r.train["eval_K"] for r in _spec(tmp_path, '["anyk"]', "[1, 3, 10]").runs()] == [(1, 3, 10)]
    with pytest.raises(SorlError) as e:
        _spec(tmp_path, '["anyk", "sorl"]', "[1, 10]").runs()
    message = "[eval] K = 10 on cube-single-play-singletask-task2-v0: K=10: the number of sampling steps must be a "
    assert message + "power of two" in str(e.value)
    assert "sorl takes K = 1, 2, 4 or 8" in str(e.value) and "\n" not in str(e.value)


def test_online_K_is_asked_of_the_agent(anyk):
    from runner.online import check_online_settings

    settings = TrainSettings(online_steps=5, online_K=3, eval_K="1,3").validate()
    check_online_settings(settings, anyk, AnyKConfig(), "anyk")
    with pytest.raises(SorlError, match="^K=3: .* power of two .*; sorl takes any power of two K"):
        check_online_settings(settings, SORLAgent, SORLAgent.Config(), "sorl")  # its eval grid first
    settings = dataclasses.replace(settings, eval_K="1")
    with pytest.raises(SorlError, match="^--online-K 3: the acting policy's sampling steps must be a power of two"):
        check_online_settings(settings, SORLAgent, SORLAgent.Config(), "sorl")
