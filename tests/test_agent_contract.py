"""The agent contract (docs/architecture.md, "Contracts"): an agent is one file plus one registry line.

For every registered agent: each config setting has a check, declared at its field or shared by name
(`sorl.validation`); its per-environment settings (offline and online) name environments the registry knows and
fields of its own config, each with a source and a verified mark; its published column is one of the table's.
Then a toy agent defined in this module and registered at runtime (the registry monkeypatched, nothing else)
shows that the CLI help, `sorl train --agent toy`'s validation, its per-environment settings, a whole training run
and the published-table comparison all pick it up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import flax
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
from agents import AGENTS
from cli import main as cli
from envs.registry import (
    ENVIRONMENTS,
    agent_env_settings,
    online_settings_source,
    resolve_env,
    settings_source,
)
from experiments import paper
from runner import train as train_lib
from runner.settings import TrainSettings
from sorl.agent import Agent
from sorl.sources import Tuned, unverified, verified
from sorl.validation import POSITIVE, Check, field_check, is_integer, setting

ROOT = Path(__file__).resolve().parents[1]
BAD_VALUES = ("x", -1, math.nan, None, 0)

# ------------------------------------------------------------------------------------------ every agent


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_setting_has_a_check_that_names_it(name):
    config_cls = AGENTS[name].Config
    config_cls().validate()  # the defaults pass
    for f in dataclasses.fields(config_cls):
        check = field_check(f)
        assert isinstance(check, Check) and check.requirement, (name, f.name)
        assert check.ok(getattr(config_cls(), f.name)), (name, f.name)
        rejected = [v for v in BAD_VALUES if not check.ok(v)]
        assert rejected, (name, f.name, "its check accepts anything")
        with pytest.raises(Exception, match=rf"invalid agent setting {f.name}=.*\(--agent\.{f.name}=\.\.\.\)"):
            dataclasses.replace(config_cls(), **{f.name: rejected[0]}).validate()


@pytest.mark.parametrize("name", list(AGENTS))
def test_env_settings_name_known_environments_own_fields_and_a_source(name):
    cls = AGENTS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for table in (cls.ENV_SETTINGS, cls.ONLINE_ENV_SETTINGS):
        for env, tuned in table.items():
            assert env in ENVIRONMENTS and resolve_env(env).name == env, (name, env)
            assert isinstance(tuned, Tuned) and tuned.values, (name, env)
            assert set(tuned.values) <= fields, (name, env, set(tuned.values) - fields)
            assert isinstance(tuned.verified, bool) and isinstance(tuned.source, str) and tuned.source, (name, env)
    for env in ENVIRONMENTS:
        for online in (False, True):
            # What the run layer trains with: the agent's values on that environment, all of them valid.
            _, config, settings = train_lib.resolve_agent_config(name, env, online=online)
            assert settings == agent_env_settings(cls, env, online=online)
            assert all(getattr(config, k) == v for k, v in settings.items()), (name, env, online)
            if settings and not ENVIRONMENTS[env].pixels:
                assert settings_source(cls, env) is not None, (name, env)


def test_published_columns_and_grid_notes():
    claimed = [cls.PUBLISHED_COLUMN for cls in AGENTS.values() if cls.PUBLISHED_COLUMN is not None]
    assert len(claimed) == len(set(claimed)) and set(claimed) <= set(paper.COLUMNS)
    assert paper.agent_columns() == {n: c.PUBLISHED_COLUMN for n, c in AGENTS.items() if c.PUBLISHED_COLUMN}
    for name, cls in AGENTS.items():
        assert set(cls.GRID_NOTES) <= {"K", "N"}, name
        assert (cls.PUBLISHED_COLUMN is None) == (not cls.PUBLISHED_AS), name


def test_envs_name_no_agent():
    # Per-environment settings are the agents' own: the environment layer resolves them without naming one.
    for path in sorted((ROOT / "envs").glob("*.py")):
        text = path.read_text()
        for name in AGENTS:
            assert not re.search(rf"""["']{re.escape(name)}["']""", text), (path.name, name)


# ---------------------------------------------------------------------------------------- a toy agent

OBS, ACT = 3, 2
EVEN = Check(lambda v: is_integer(v) and v % 2 == 0, "must be an even integer")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    lr: float = 0.1
    """Step size of the toy's SGD (a shared setting: its check is `sorl.validation.SHARED['lr']`)."""
    batch_size: int = 16
    """Transitions per update."""
    gain: float = setting(1.0, check=POSITIVE)
    """Gain of the toy's linear policy."""
    width: int = setting(4, check=EVEN)
    """An even number the toy does not use."""

    def validate(self) -> None:
        from sorl.validation import check_config

        check_config(self)


class ToyAgent(Agent):
    w: jax.Array
    rng: jax.Array
    config: ToyConfig = flax.struct.field(pytree_node=False)

    Config = ToyConfig
    GRID_NOTES = {"K": "it has no step count"}
    ENV_SETTINGS = {
        "cube-single-play": verified("the toy's notes", gain=3.0),
        "puzzle-3x3-play": unverified("a guess", gain=0.5),
    }
    ONLINE_ENV_SETTINGS = {"cube-single-play": verified("the toy's online notes", gain=5.0)}
    PUBLISHED_COLUMN = "Toy"  # a column the `toy` fixture adds to the published table (every real one is claimed)
    PUBLISHED_AS = "toy: a linear policy"

    @classmethod
    def create(cls, rng, example_observations, example_actions, config=None):
        config = ToyConfig() if config is None else config
        w = 0.1 * jax.random.normal(rng, (example_observations.shape[-1], example_actions.shape[-1]))
        return cls(w, jax.random.key(0), config)

    def update(self, batch):
        def loss_fn(w):
            return jnp.mean((self.config.gain * batch["observations"] @ w - batch["actions"]) ** 2)

        loss, grad = jax.value_and_grad(loss_fn)(self.w)
        return self.replace(w=self.w - self.config.lr * grad), {"loss": loss}

    def sample_actions(self, observations, rng, K=1, N=1):
        return jnp.clip(self.config.gain * observations @ self.w, -1, 1)


class ToyEnv(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (ACT,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.ones(OBS, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= 3
        return np.ones(OBS, np.float32), 0.0, False, done, {"success": done}


def _dataset(n=64):
    obs = np.random.default_rng(0).normal(size=(n, OBS)).astype(np.float32)
    act = np.clip(obs[:, :ACT] * 0.5, -1, 1).astype(np.float32)
    zeros, ones = np.zeros(n, np.float32), np.ones(n, np.float32)
    return dict(observations=obs, actions=act, rewards=zeros, masks=ones, terminals=zeros, next_observations=obs)


@pytest.fixture
def toy(monkeypatch):
    """The toy registered as `toy`: the one change a new agent needs besides its file; the published table gets
    a column of its own for it (`paper.COLUMNS`, a number on cube-single)."""
    monkeypatch.setitem(agents.AGENTS, "toy", ToyAgent)
    monkeypatch.setattr(paper, "COLUMNS", (*paper.COLUMNS, "Toy"))
    monkeypatch.setitem(paper.PUBLISHED, "cube-single", {**paper.PUBLISHED["cube-single"], "Toy": (42.0, None)})
    return ToyAgent


def test_toy_settings_appear_in_train_help(toy, capsys):
    cli.main(["train", "--help"])
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())  # one line, no box drawing
    assert "agent settings: toy (--agent toy)" in text
    assert re.search(r"--agent STR Agent: sorl, [^;]* or toy;", text)  # the --agent flag's help names it
    toy_box = text.split("agent settings: toy")[1]
    assert "--agent.gain FLOAT Gain of the toy's linear policy. (default: 1.0; per task)" in toy_box
    assert "--agent.width INT An even number the toy does not use. (default: 4)" in toy_box
    cli.main(["train", "--agent", "toy", "--task", "cube-single-play-task2", "--help"])
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
    assert "--agent.gain FLOAT Gain of the toy's linear policy. (default on this task: 3.0; the agent's: 1.0)" in text
    assert "agent settings: sorl" not in text


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--agent.gain=-1", "error: invalid agent setting gain=-1.0: must be a positive number (--agent.gain=...)"),
        ("--agent.width=3", "error: invalid agent setting width=3: must be an even integer (--agent.width=...)"),
        ("--agent.lr=0", "error: invalid agent setting lr=0.0: must be a positive number (--agent.lr=...)"),
        ("--agent.alpha=1", "error: unknown setting --agent.alpha for --agent toy (a setting of sorl, fql, iql"),
    ],
)
def test_train_agent_toy_validates_its_settings(toy, tmp_path, capsys, flag, message):
    run_dir = tmp_path / "run"
    argv = ["train", "--agent", "toy", "--task", "cube-single-play", "--run-dir", str(run_dir), flag]
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--data-dir", str(tmp_path / "no-data")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not run_dir.exists() and not (tmp_path / "no-data").exists()  # refused before anything is written


def test_toy_env_settings_apply_to_runs_sources_and_the_published_table(toy, tmp_path):
    # Offline: the toy's cube-single value, its source; online: its online value on top; elsewhere the defaults.
    assert train_lib.resolve_agent_config("toy", "cube-single-play-task2")[1].gain == 3.0
    assert train_lib.resolve_agent_config("toy", "cube-single-play-task2", online=True)[1].gain == 5.0
    assert train_lib.resolve_agent_config("toy", "puzzle-3x3-play", {"gain": "2"})[1].gain == 2.0  # flags win
    assert train_lib.resolve_agent_config("toy", "scene-play")[1] == ToyConfig()
    assert settings_source(toy, "cube-single-play") == (True, "the toy's notes")
    assert settings_source(toy, "puzzle-3x3-play-task1") == (False, "a guess")
    assert online_settings_source(toy, "cube-single-play") == (True, "the toy's online notes")
    assert agent_env_settings(toy, "visual-cube-single-play") == {"gain": 3.0}  # its state twin's (no encoder)
    # `sorl table --compare paper`: the toy is compared with the column it names.
    table = paper.published("paper")
    assert paper.published_value(table, "cube-single-play", "toy") == (42.0, None) == table["cube-single"]["Toy"]
    assert paper.our_side()["Toy"] == "toy: a linear policy"

    # A whole run through the registry (no agent class handed in) trains with the task's settings.
    def load_task(task_name, data_dir=None, *, success_timing="pre", episodes=None):
        return ToyEnv(), _dataset(), _dataset(16)

    settings = TrainSettings(
        steps=4, log_interval=2, eval_interval=4, eval_episodes=1, eval_K="1", eval_N="1", eval_workers=1,
        progress=False,
    )  # fmt: skip
    res = train_lib.train(
        "cube-single-play-task2", "toy", seed=0, run_dir=tmp_path / "run", settings=settings,
        load_task=load_task, make_env=lambda task, timing, steps: ToyEnv(),
    )  # fmt: skip
    assert res["status"] == "complete"
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["agent"] == "toy" and cfg["agent_config"]["gain"] == 3.0
