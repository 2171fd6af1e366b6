"""SORL in one file: data -> one-stage update -> (K, N) evaluation, with the project's own agent, sampler and data
code and no run layer (no run directory, checkpoints, resume or worker processes: `sorl train` adds those, runner/).

    python examples/minimal_sorl.py                                    # cube-single, a generated 100-episode dataset
    python examples/minimal_sorl.py --task toy --steps 1000 --agent.lr 3e-3 --agent.q_loss_coef 30

The pieces: the agent and its losses (agents/sorl.py), the K-step shortcut sampler and the best-of-N verifier it
calls (sorl/shortcut.py, sorl/inference.py), the on-device dataset and batch sampler (sorl/data.py), OGBench's
tasks and locally generated datasets (envs/datasets.py). The method, in this project's words: docs/method.md.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import tyro

from agents.sorl import SORLAgent, SORLConfig
from sorl.data import sample_batch, to_device
from sorl.inference import make_policy_fn

SMALL = SORLConfig(actor_layer_size=256, actor_num_layers=2, value_layer_size=256, value_num_layers=2, q_loss_coef=10)
"""2x256 networks (the paper's are 4x512) with cube-single's published Q coefficient (SORLAgent.ENV_SETTINGS)."""


@dataclasses.dataclass
class Args:
    task: str = "cube-single-play"
    """An OGBench task (its dataset generated on first use) or `toy`, the one-step task below."""
    steps: int = 30_000
    """Gradient updates: each is one critic step and one actor step."""
    seed: int = 0
    train_episodes: int = 100
    """Episodes of the generated dataset (OGBench tasks that can be generated)."""
    eval_K: tuple[int, ...] = (1, 2, 4, 8)
    """Sampling steps K to evaluate (sequential scaling)."""
    eval_N: tuple[int, ...] = (1, 4)
    """Best-of-N candidates to evaluate, ranked by the critic (parallel scaling)."""
    eval_episodes: int = 20
    log_interval: int = 1000
    agent: SORLConfig = SMALL
    """The agent's settings, spelled as the released code's (`--agent.q_loss_coef`)."""


class ToyTask:
    """One step: observe x ~ N(0, I_2), act; success when the action is nearer GOOD than BAD. Its dataset is half good
    and half bad actions, so behaviour cloning alone succeeds about half the time; the Q term has to pick the mode."""

    GOOD, BAD = np.array([0.6, 0.6]), np.array([-0.6, -0.6])

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        self.rng = np.random.default_rng(seed)
        return self.rng.normal(size=2).astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        success = np.linalg.norm(action - self.GOOD) < np.linalg.norm(action - self.BAD)
        return self.rng.normal(size=2).astype(np.float32), float(success), True, False, {"success": bool(success)}

    @classmethod
    def dataset(cls, size: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        good = rng.random(size) < 0.5
        actions = np.where(good[:, None], cls.GOOD, cls.BAD) + 0.1 * rng.normal(size=(size, 2))
        return {
            "observations": rng.normal(size=(size, 2)),
            "actions": actions,
            "rewards": good.astype(np.float32),
            "masks": np.zeros(size),  # every step ends its episode: nothing to bootstrap
            "next_observations": rng.normal(size=(size, 2)),
        }


def load(args: Args):
    """(a function making one evaluation environment, the training transitions as numpy arrays)."""
    if args.task == "toy":
        return ToyTask, ToyTask.dataset(4096, args.seed)
    from envs.datasets import load_task, make_env  # OGBench and MuJoCo load only when a real task is asked for

    _, train, _ = load_task(args.task, episodes=args.train_episodes)
    return (lambda: make_env(args.task)), train


def evaluate(agent: SORLAgent, envs: list, K: int, N: int, seed: int) -> float:
    """Success fraction of one episode per environment, acted with K sampling steps and the best of N candidates.
    The episodes step in lockstep, so the policy runs on one batch of observations per step."""
    policy = make_policy_fn()  # jitted, one compilation per (K, N)
    observations = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    done, success = np.zeros(len(envs), bool), np.zeros(len(envs), bool)
    key = jax.random.PRNGKey(seed)
    while not done.all():
        key, policy_key = jax.random.split(key)
        actions = np.asarray(policy(agent, observations, policy_key, K, N))
        for i in np.flatnonzero(~done):
            observations[i], _, terminated, truncated, info = envs[i].step(actions[i])
            done[i], success[i] = terminated or truncated, info["success"]
    return float(success.mean())


def main(args: Args) -> dict:
    """Train, then evaluate every (K, N) cell. Returns the logged losses and the success of each cell."""
    make_env, transitions = load(args)
    dataset = to_device(transitions)  # float32 on the device, actions clipped to the open interval (-1, 1)
    agent = SORLAgent.create(args.seed, dataset["observations"][:1], dataset["actions"][:1], args.agent)

    @jax.jit
    def update(agent: SORLAgent, key: jax.Array) -> tuple[SORLAgent, dict[str, jax.Array]]:
        # One stage: the critic and the policy (flow matching + self-consistency + Q) are updated together.
        return agent.update(sample_batch(dataset, key, args.agent.batch_size))

    log, key, start = [], jax.random.PRNGKey(args.seed + 1), time.time()
    for step in range(1, args.steps + 1):
        key, batch_key = jax.random.split(key)
        agent, info = update(agent, batch_key)
        if step % args.log_interval == 0 or step == args.steps:
            log.append({"step": step, **{k: float(v) for k, v in info.items()}})
            losses = ", ".join(f"{k} {log[-1][k]:.4f}" for k in ("critic/critic_loss", "actor/bc_flow_loss", "actor/q"))
            print(f"step {step}: {losses} ({step / (time.time() - start):.0f} updates/s)")

    envs = [make_env() for _ in range(args.eval_episodes)]  # an OGBench cube environment holds ~170 MB
    success = {}
    for K in args.eval_K:
        for N in args.eval_N:  # every cell starts from the same initial states
            success[K, N] = evaluate(agent, envs, K, N, seed=1000 * args.seed)
    print("success %, rows K, columns N:", *args.eval_N)
    for K in args.eval_K:
        print(f"K={K}", *(f"{100 * success[K, N]:.0f}" for N in args.eval_N))
    return {"log": log, "success": success}


if __name__ == "__main__":
    main(tyro.cli(Args))
