"""SORL learns on a small offline problem: a one-step task whose behaviour data has a good and a bad mode."""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from agents.sorl import SORLAgent, SORLConfig
from sorl.inference import make_policy_fn

OBS, ACT, SIZE = 2, 2, 4096
GOOD, BAD = np.array([0.6, 0.6]), np.array([-0.6, -0.6])


def make_dataset(seed: int = 0) -> dict[str, jax.Array]:
    """Behaviour policy: half the actions near GOOD (reward 1), half near BAD (reward 0); every step terminal."""
    rng = np.random.default_rng(seed)
    good = rng.random(SIZE) < 0.5
    actions = np.where(good[:, None], GOOD, BAD) + 0.1 * rng.normal(size=(SIZE, ACT))
    return {
        "observations": jnp.asarray(rng.normal(size=(SIZE, OBS)), jnp.float32),
        "actions": jnp.asarray(np.clip(actions, -1 + 1e-5, 1 - 1e-5), jnp.float32),
        "rewards": jnp.asarray(good, jnp.float32),
        "masks": jnp.zeros(SIZE, jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(SIZE, OBS)), jnp.float32),
    }


def reward(actions: np.ndarray) -> np.ndarray:
    """1 where the action is nearer the good mode than the bad one."""
    return (np.linalg.norm(actions - GOOD, axis=-1) < np.linalg.norm(actions - BAD, axis=-1)).astype(np.float64)


@partial(jax.jit, static_argnames=("steps", "batch_size"))
def train(agent: SORLAgent, dataset: dict[str, jax.Array], rng: jax.Array, steps: int, batch_size: int):
    def one(agent, key):
        idx = jax.random.randint(key, (batch_size,), 0, SIZE)
        return agent.update(jax.tree.map(lambda x: x[idx], dataset))

    return jax.lax.scan(one, agent, jax.random.split(rng, steps))


CONFIG = SORLConfig(
    lr=3e-3,
    batch_size=64,
    actor_layer_size=32,
    actor_num_layers=2,
    value_layer_size=32,
    value_num_layers=2,
    denoise_timesteps=4,
    max_k_backprop=4,
    q_loss_coef=30.0,
    tau=0.05,
)


def train_and_score(config: SORLConfig, steps: int = 2000) -> dict[tuple[int, int], float]:
    """Mean reward of the trained policy over a (K, N) grid on 512 fresh states."""
    dataset = make_dataset()
    agent = SORLAgent.create(jax.random.PRNGKey(0), dataset["observations"], dataset["actions"], config)
    agent, info = train(agent, dataset, jax.random.PRNGKey(1), steps=steps, batch_size=config.batch_size)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in info.values())
    policy = make_policy_fn()
    observations = jax.random.normal(jax.random.PRNGKey(2), (512, OBS))
    scores = {}
    for K in (1, 2, 4):
        for N in (1, 8):
            actions = np.asarray(policy(agent, observations, jax.random.PRNGKey(10 * K + N), K, N))
            assert actions.shape == (512, ACT) and np.all(np.abs(actions) <= 1)
            scores[K, N] = float(reward(actions).mean())
    return scores


def test_sorl_moves_to_the_good_mode_and_best_of_n_does_not_hurt():
    start = time.time()
    assert abs(float(make_dataset()["rewards"].mean()) - 0.5) < 0.05
    sorl = train_and_score(CONFIG)
    # The same agent with the Q term off is flow BC: it reproduces the 50/50 behaviour data.
    bc = train_and_score(dataclasses.replace(CONFIG, q_loss_coef=0.0))
    print(f"mean reward by (K, N): SORL {sorl}, Q term off {bc} ({time.time() - start:.1f}s)")
    for K in (1, 2, 4):
        assert bc[K, 1] < 0.7
        assert sorl[K, 1] > 0.8 and sorl[K, 1] > bc[K, 1] + 0.2
        # Best-of-N by the learned critic does not lower the return.
        assert sorl[K, 8] >= sorl[K, 1] - 0.02
