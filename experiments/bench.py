"""The performance benchmark: `sorl bench [--agent A] [--size paper|small] [--json]`.

Everything is measured in this one process (the memory figure in a child process, so that its peak RSS is the
training path's alone), on synthetic data with cube-single's sizes (observation 28, action 5) unless noted:

- training: `updates_per_s` of the compiled training chunk (`runner.train.compile_chunk`, the loop's own program)
  after compilation; `compile_s`; `flops_per_update` from XLA's cost analysis of the compiled update. SORL draws
  K per update inside a `lax.switch`, whose cost analysis counts every branch, so the update is compiled once
  per K with K fixed (`SORLAgent.update(batch, K=K)`) and the FLOPs averaged over the K distribution (uniform
  over 1, 2, ..., max_k_backprop). `achieved_gflops = flops_per_update * updates_per_s`; `peak_gflops` is a
  2048x2048 float32 matmul under JAX in this process (best of several repetitions); `fraction_of_peak` their
  ratio. Per K, the fixed-K update's own time and FLOP rate too.
- inference: latency of `sorl.inference.make_policy_fn()` per (K, N), for batch 1 and batch 50.
- evaluation: env steps/s of a real `runner.evaluation.evaluate` on cube-single with all cores (untrained agent,
  full-length episodes), against the raw physics rate (random actions) of one process and of all cores.
- seeds: total updates/s of S vmapped seeds (`runner.multiseed`) for S = 1, 2, 4, 8, against one seed.
- memory: peak RSS of a child process that loads 1M-transition OGBench-format files (random contents) the way a
  training run does (`envs.datasets.load_task`, `sorl.data.to_device`) and trains on them, against the dataset's
  bytes on the device (target: <= 1.5 x dataset + 1.5 GiB).
- reference (`--reference CHECKOUT`): our training chunk against the agent's reference code, timed alternately.

What each past speed change bought is timed by `python scripts/bench_changes.py`, not here.

`--size small` runs the same code with small networks and counts, in a minute or two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sorl.errors import SorlError

SECTIONS = ("training", "inference", "evaluation", "seeds", "memory")
TASK = "cube-single-play-singletask-task1-v0"
OBS_DIM, ACTION_DIM = 28, 5  # cube-single
GiB = 1024**3


@dataclass(frozen=True, kw_only=True)
class Size:
    layers: int
    width: int
    batch: int
    transitions: int  # synthetic dataset for the timing sections
    chunk: int  # updates per compiled call when timing
    reps: int  # timed calls
    Ks: tuple[int, ...]  # inference grid
    Ns: tuple[int, ...]
    latency_reps: int
    eval_episodes: int
    eval_max_steps: int | None  # None: the environment's own limit (200 for cube-single)
    raw_steps: int
    seeds: tuple[int, ...]
    seed_chunk: int
    memory_transitions: int


SIZES = {
    "paper": Size(
        layers=4,
        width=512,
        batch=256,
        transitions=100_000,
        chunk=10,
        reps=5,
        Ks=(1, 2, 4, 8),
        Ns=(1, 4, 16),
        latency_reps=20,
        eval_episodes=50,
        eval_max_steps=None,
        raw_steps=2000,
        seeds=(1, 2, 4, 8),
        seed_chunk=4,
        memory_transitions=1_000_000,
    ),
    "small": Size(
        layers=2,
        width=64,
        batch=64,
        transitions=10_000,
        chunk=20,
        reps=3,
        Ks=(1, 8),
        Ns=(1, 4),
        latency_reps=10,
        eval_episodes=8,
        eval_max_steps=50,
        raw_steps=300,
        seeds=(1, 2, 4),
        seed_chunk=10,
        memory_transitions=100_000,
    ),
}


@dataclass(frozen=True)
class BenchArgs:
    """Measure training, inference, evaluation, multi-seed and memory performance on this machine."""

    agent: str = "sorl"
    """Agent: a name in the registry, agents.AGENTS (cube-single's settings; --agent.KEY=VALUE overrides apply)."""
    size: Literal["paper", "small"] = "paper"
    """paper: 4x512 networks, batch 256, 1M-transition memory test; small: a quick run of the same code."""
    json: bool = False
    """Print the figures as JSON instead of a table."""
    sections: str = ",".join(SECTIONS)
    """Comma-separated subset of: training, inference, evaluation, seeds, memory."""
    workers: int | None = None
    """Evaluation worker processes (default: all cores)."""
    task: str | None = None
    """A pixel task (e.g. visual-cube-single-play): training with its settings (the image encoder, frame stacking and
    augmentation on the device) on synthetic uint8 frames; training section only (default: cube-single, states)."""
    reference: Path | None = None
    """A checkout of the agent's reference code (FQL's for ifql): also time its training loop against ours, in one
    run on this machine, alternately (updates/s at the size's networks and batch)."""
    reference_python: Path | None = None
    """The Python of the reference's own environment (default: REFERENCE/.venv/bin/python)."""
    reference_updates: int = 50
    """Updates per timed window of each side in the reference comparison."""
    reference_reps: int = 5
    """Timed windows of each side (after one warm-up window each); the figures are their medians."""


# ------------------------------------------------------------------------------------------- helpers


def _now() -> float:
    return time.perf_counter()


def _cores() -> int:
    from runner.evaluation import default_workers

    return default_workers()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    """Seconds of each of `reps` calls of `fn` (which must block until its result is ready)."""
    out = []
    for _ in range(reps):
        t = _now()
        fn()
        out.append(_now() - t)
    return out


def synthetic_dataset(n: int, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, seed: int = 0):
    """Host arrays shaped like a loaded OGBench dataset (float32), `n` transitions."""
    rng = np.random.default_rng(seed)
    return _transitions(rng, rng.standard_normal((n, obs_dim), dtype=np.float32), action_dim)


def _transitions(rng: np.random.Generator, obs: np.ndarray, action_dim: int) -> dict[str, np.ndarray]:
    """Random actions, rewards (-1 nine times in ten) and masks around `obs`; next observations are the next rows."""
    n = len(obs)
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        "rewards": -(rng.random(n) < 0.9).astype(np.float32),
        "masks": (rng.random(n) > 0.01).astype(np.float32),
        "next_observations": np.roll(obs, -1, axis=0),
    }


def synthetic_pixel_dataset(n: int, episode: int = 100, action_dim: int = ACTION_DIM, seed: int = 0):
    """Host arrays shaped like a loaded pixel dataset: uint8 64x64x3 frames, `n` transitions in episodes of
    `episode` (the last one shorter if need be), in the compact layout training loads (every frame once:
    `sorl.data.compact_pixel_dataset`)."""
    from envs.checks import PIXEL_OBSERVATION
    from sorl.data import compact_pixel_dataset

    rng = np.random.default_rng(seed)
    lengths = [episode] * (n // episode) + ([n % episode] if n % episode else [])
    frames = rng.integers(0, 256, (n + len(lengths), *PIXEL_OBSERVATION), dtype=np.uint8)  # an episode: length + 1
    per_row = _transitions(rng, frames, action_dim)
    del per_row["next_observations"]  # the next frame
    last = np.cumsum(np.asarray(lengths) + 1) - 1
    valids = (~np.isin(np.arange(len(frames)), last)).astype(np.float32)
    return compact_pixel_dataset({**per_row, "valids": valids})


def agent_setup(agent: str, size: Size, overrides: Mapping[str, str] | None = None, env: str = "cube-single-play"):
    """(agent class, config) at `size` with `env`'s settings (default cube-single's), then `overrides`."""
    from runner.train import resolve_agent_config

    agent_cls = resolve_agent_config(agent, env)[0]
    sized = {"batch_size": size.batch}
    fields = {f.name for f in dataclasses.fields(agent_cls.Config)}
    for key, value in (
        ("actor_layer_size", size.width),
        ("actor_num_layers", size.layers),
        ("value_layer_size", size.width),
        ("value_num_layers", size.layers),
    ):
        if key in fields:
            sized[key] = value
    merged = {k: str(v) for k, v in sized.items()} | dict(overrides or {})
    _, config, _ = resolve_agent_config(agent, env, merged)
    return agent_cls, config


def peak_matmul_gflops(n: int = 2048, reps: int = 5, trials: int = 3) -> dict[str, Any]:
    """Best float32 GFLOP/s of an n x n matmul under JAX in this process."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    best = 0.0
    for _ in range(trials):
        t = _now()
        for _ in range(reps):
            out = mm(a, b)
        out.block_until_ready()
        best = max(best, 2 * n**3 * reps / (_now() - t) / 1e9)
    return {"peak_gflops": best, "matmul": f"{n}x{n} float32, best of {trials} x {reps}"}


# ------------------------------------------------------------------------------------------ training


def initial_agent_state(agent_cls, config, seed: int, obs_dim: int = OBS_DIM):
    """A fresh training state (agent, data key) of `seed`, as a training run starts it."""
    from runner.train import initial_state

    example = (np.zeros((1, obs_dim), np.float32), np.zeros((1, ACTION_DIM), np.float32))
    return initial_state(agent_cls, config, seed, *example)


def time_chunk(compiled, agent, rng, dataset, n: int, reps: int) -> tuple[list[float], Any, Any]:
    """Updates/s of `reps` calls of a compiled chunk of `n` updates (after one warm-up call)."""
    import jax

    agent, rng, _ = compiled(agent, rng, dataset)
    jax.block_until_ready(agent)
    rates = []
    for _ in range(reps):
        t = _now()
        agent, rng, infos = compiled(agent, rng, dataset)
        jax.block_until_ready((agent, infos))
        rates.append(n / (_now() - t))
    return rates, agent, rng


def update_flops(agent, batch) -> dict[str, Any]:
    """FLOPs of one update as executed: per K for agents that draw K (each K compiled alone), else one figure."""
    import inspect

    import jax

    K_choices = getattr(agent, "K_choices", None)
    sig = inspect.signature(type(agent).update).parameters
    if K_choices and "K" in sig and getattr(agent.config, "q_loss_coef", 1) != 0:
        per_K = {}
        for K in K_choices:
            fn = jax.jit(lambda a, b, K=K: a.update(b, K=K))  # a fresh function per K: no cache sharing
            t = _now()
            compiled = fn.lower(agent, batch).compile()
            compile_s = _now() - t
            flops = _flops(compiled)
            new, _ = compiled(agent, batch)
            jax.block_until_ready(new)
            secs = statistics.median(_timed(lambda c=compiled: jax.block_until_ready(c(agent, batch)), 3))
            per_K[K] = {"flops": flops, "update_s": secs, "gflops": flops / secs / 1e9, "compile_s": compile_s}
        mean = sum(v["flops"] for v in per_K.values()) / len(per_K)
        return {"flops_per_update": mean, "per_K": per_K, "K_distribution": f"uniform over {list(K_choices)}"}
    compiled = jax.jit(lambda a, b: a.train_update(b)).lower(agent, batch).compile()
    return {
        "flops_per_update": _flops(compiled),
        "per_K": None,
        "K_distribution": None,
        "flops_note": "XLA's analysis of the compiled update (both branches of any lax.cond counted)",
    }


def network_shape(config) -> str:
    """The trained networks' depth x width as the config has them (--agent.* overrides included)."""
    actor = f"{config.actor_num_layers}x{config.actor_layer_size}"
    value = f"{getattr(config, 'value_num_layers', None)}x{getattr(config, 'value_layer_size', None)}"
    return actor if value in (actor, "NonexNone") else f"actor {actor}, value {value}"


def bench_training(
    agent_name: str, size: Size, overrides, dataset, peak: float, env: str = "cube-single-play", sampling=None
) -> dict[str, Any]:
    import jax

    from runner.train import compile_chunk, distinct_buffers
    from sorl.data import PLAIN, sample_batch

    sampling = sampling or PLAIN
    agent_cls, config = agent_setup(agent_name, size, overrides, env)
    batch = sample_batch(dataset, jax.random.PRNGKey(1), config.batch_size, sampling)
    state = initial_agent_state(agent_cls, config, 0, int(batch["observations"].shape[-1]))
    agent, rng = distinct_buffers((state["agent"], state["data_rng"]))
    flops = update_flops(agent, batch)
    t = _now()
    compiled = compile_chunk(agent, rng, dataset, config.batch_size, size.chunk, sampling)
    compile_s = _now() - t
    rates, _, _ = time_chunk(compiled, agent, rng, dataset, size.chunk, size.reps)
    ups = statistics.median(rates)
    achieved = flops["flops_per_update"] * ups / 1e9
    return {
        "agent": agent_name,
        "task": env,
        "encoder": getattr(config, "encoder", None),
        "frame_stack": sampling.frame_stack,
        "p_aug": sampling.p_aug,
        "networks": network_shape(config),
        "batch_size": config.batch_size,
        "chunk_updates": size.chunk,
        "compile_s": compile_s,
        "updates_per_s": ups,
        "updates_per_s_all": rates,
        **flops,
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
    }


def bench_encoder(name: str, observations: Any, reps: int = 3) -> dict[str, Any]:
    """A pixel task's encoder alone on one batch of (stacked, uint8) observations: seconds, XLA's FLOPs and GFLOP/s of
    its forward pass, of forward + backward (a gradient step on its parameters), of that step run twice inside a
    `lax.scan` (as the training chunk runs it: XLA's CPU compiler once ran convolution gradients 10-30x slower in a
    loop body, jax-ml/jax#12868), and of its first convolution alone (this machine's convolution throughput)."""
    import jax
    import jax.numpy as jnp

    from sorl.networks import ENCODERS, IMAGE_SHAPE

    enc = ENCODERS[name]()
    params = jax.jit(enc.init)(jax.random.PRNGKey(0), observations)

    def step(p):
        grads = jax.grad(lambda p: jnp.mean(enc.apply(p, observations) ** 2))(p)
        return jax.tree.map(lambda a, g: a - 1e-6 * g, p, grads)

    H, W, C = IMAGE_SHAPE
    x = jax.random.normal(jax.random.PRNGKey(1), (observations.shape[0], H, W, observations.shape[-1] // (H * W)))
    kernel = jax.random.normal(jax.random.PRNGKey(2), (3, 3, x.shape[-1], enc.stack_sizes[0] * enc.width))

    def two_steps(p):
        return jax.lax.scan(lambda c, _: (step(c), None), p, None, length=2)[0]

    def first_conv(k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    programs = {  # name: (function, its argument, steps per call)
        "forward": (lambda p: enc.apply(p, observations), params, 1),
        "forward_backward": (step, params, 1),
        "forward_backward_in_scan": (two_steps, params, 2),
        "first_conv": (first_conv, kernel, 1),
    }
    out: dict[str, Any] = {"encoder": name, "batch": int(observations.shape[0]), "first_conv_shape": list(x.shape)}
    for key, (fn, arg, n) in programs.items():
        compiled = jax.jit(fn).lower(arg).compile()
        jax.block_until_ready(compiled(arg))
        secs = statistics.median(_timed(lambda c=compiled, a=arg: jax.block_until_ready(c(a)), reps)) / n
        flops = out["forward_backward"]["flops"] if n > 1 else _flops(compiled)  # a loop body is counted once
        out[key] = {"s": secs, "flops": flops, "gflops": flops / secs / 1e9}
    return out


# ----------------------------------------------------------------------------------------- inference


def inference_cells(agent: Any, size: Size) -> list[tuple[int, int]]:
    """The (K, N) cells whose latency is measured: the size's grid along the axes that change `agent`'s action (K up
    to its `max_K`, by its own K rule; K = 1 only where its `GRID_NOTES` name K), and its own policy's cell
    (`runner.evaluation.policy_cell`: IFQL's (10, 32)), so that the figure includes the policy it acts with."""
    from runner.evaluation import policy_cell
    from sorl.agent import K_rule

    max_K = None if isinstance(agent, type) else agent.max_K
    rule = K_rule(agent)
    Ks = [1] if "K" in agent.GRID_NOTES else [K for K in size.Ks if rule.takes_K(K, max_K)]
    cells = [(K, N) for K in Ks for N in size.Ns]
    own = policy_cell(agent)
    return cells if own in cells else [*cells, own]


def bench_inference(agent_name: str, size: Size, overrides) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from runner.evaluation import policy_cell
    from sorl.inference import make_policy_fn

    agent_cls, config = agent_setup(agent_name, size, overrides)
    agent = initial_agent_state(agent_cls, config, 0)["agent"]
    policy = make_policy_fn()
    own = policy_cell(agent)
    out = []
    key = jax.random.PRNGKey(0)
    for batch in (1, 50):
        obs = jnp.zeros((batch, OBS_DIM), jnp.float32)
        for K, N in inference_cells(agent, size):
            t = _now()
            jax.block_until_ready(policy(agent, obs, key, K, N))
            compile_s = _now() - t
            secs = _timed(
                lambda K=K, N=N, obs=obs: jax.block_until_ready(policy(agent, obs, key, K, N)), size.latency_reps
            )
            out.append(
                {
                    "batch": batch,
                    "K": K,
                    "N": N,
                    "policy": own == (K, N),
                    "latency_ms": 1e3 * statistics.median(secs),
                    "first_call_s": compile_s,
                }
            )
    return {
        "grid": out,
        "policy_cell": list(own),
        "note": "median of repeated jitted policy calls; first_call_s includes compilation; policy: the agent's own "
        "(K, N), the cell it acts with when asked for none",
    }


# ---------------------------------------------------------------------------------------- evaluation


def raw_physics_rate(task: str = TASK, steps: int = 1000, seed: int = 0) -> float:
    """Env steps/s of one environment in this process with random actions (resets included)."""
    import warnings

    warnings.filterwarnings("ignore")
    from envs.datasets import make_env

    env = make_env(task)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    actions = [env.action_space.sample() for _ in range(min(steps, 1000))]
    t = _now()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()
    rate = steps / (_now() - t)
    env.close()
    return rate


def _raw_worker(args: tuple[str, int, int]) -> float:
    os.environ.setdefault("MUJOCO_GL", "egl")
    return raw_physics_rate(*args)


def raw_physics_rate_all_cores(task: str, steps: int, processes: int) -> float:
    """Sum of the random-action rates of `processes` environments stepping at once, one per process."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(processes) as pool:
        rates = pool.map(_raw_worker, [(task, steps, i) for i in range(processes)])
    return float(sum(rates))


def bench_evaluation(agent_name: str, size: Size, overrides, workers: int | None) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from runner.evaluation import EnvPool, evaluate
    from sorl.inference import make_policy_fn

    cores = _cores()
    workers = workers or cores
    raw_one = raw_physics_rate(TASK, size.raw_steps)
    raw_all = raw_physics_rate_all_cores(TASK, size.raw_steps, cores)
    agent_cls, config = agent_setup(agent_name, size, overrides)
    agent = initial_agent_state(agent_cls, config, 0)["agent"]
    pool = EnvPool(TASK, size.eval_episodes, workers=workers, max_episode_steps=size.eval_max_steps)
    try:
        # Compile the policy for the pool's batch first: the figure is the steady-state throughput.
        obs = jnp.zeros((size.eval_episodes, OBS_DIM), jnp.float32)
        jax.block_until_ready(make_policy_fn()(agent, obs, jax.random.PRNGKey(0), 1, 1))
        t = _now()
        (cell,) = evaluate(agent, TASK, [1], [1], size.eval_episodes, seed=0, pool=pool)
        wall = _now() - t
    finally:
        pool.close()
    rate = cell["env_steps"] / cell["time_s"]
    return {
        "task": TASK,
        "episodes": size.eval_episodes,
        "max_episode_steps": size.eval_max_steps or 200,
        "workers": pool.workers,
        "cores": cores,
        "env_steps": cell["env_steps"],
        "eval_steps_per_s": rate,
        "eval_wall_s": wall,
        "raw_steps_per_s_one_process": raw_one,
        "raw_steps_per_s_all_cores": raw_all,
        "ratio_to_raw_x_cores": rate / (raw_one * cores),
        "ratio_to_raw_all_cores": rate / raw_all,
        "target": ">= 0.8 x raw physics x cores",
    }


# --------------------------------------------------------------------------------------------- seeds


class Runner:
    """A compiled training chunk with the state it carries: each call runs it once and returns updates/s."""

    def __init__(self, compiled: Any, agent: Any, rng: Any, dataset: Any, n: int, seeds: int = 1):
        self.compiled, self.agent, self.rng, self.dataset, self.n, self.seeds = compiled, agent, rng, dataset, n, seeds

    def __call__(self) -> float:
        import jax

        t = _now()
        self.agent, self.rng, infos = self.compiled(self.agent, self.rng, self.dataset)
        jax.block_until_ready((self.agent, infos))
        return self.seeds * self.n / (_now() - t)


def interleaved(runners: Mapping[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Median updates/s of each runner, their calls alternated (one warm-up each) so that a change in the load of
    a shared machine hits all of them alike."""
    return {name: statistics.median(v) for name, v in interleaved_rates(runners, reps).items()}


def interleaved_rates(runners: Mapping[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Every timed call's updates/s of each runner, as `interleaved` alternates them."""
    for run in runners.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            rates[name].append(run())
    return rates


def single_seed_runner(agent_cls, config, dataset, n: int, seed: int = 0, donate: bool = True) -> Runner:
    """The single-seed training chunk (`runner.train.compile_chunk`, the loop's own program)."""
    import jax

    from runner.train import compile_chunk, distinct_buffers, train_chunk

    s = initial_agent_state(agent_cls, config, seed)
    agent, rng = distinct_buffers((s["agent"], s["data_rng"]))
    if donate:
        compiled = compile_chunk(agent, rng, dataset, config.batch_size, n)
    else:
        plain = jax.jit(train_chunk, static_argnames=("batch_size", "num_updates"))
        compiled = plain.lower(agent, rng, dataset, batch_size=config.batch_size, num_updates=n).compile()
    return Runner(compiled, agent, rng, dataset, n)


def stacked_seeds(agent_cls, config, S: int):
    """Seeds 0..S-1's agents and data keys stacked along a leading axis, as `runner.multiseed` vmaps them."""
    import jax.numpy as jnp

    from runner import multiseed
    from runner.train import distinct_buffers

    states = [initial_agent_state(agent_cls, config, s) for s in range(S)]
    agents = multiseed.stack_agents([s["agent"] for s in states])
    rngs = jnp.stack([jnp.asarray(s["data_rng"]) for s in states])
    return distinct_buffers((agents, rngs))


def sequential_runner(single: Runner, S: int) -> Callable[[], float]:
    """S chunks of the single-seed program back to back: the same length of window as S seeds' in one call."""

    def run() -> float:
        t = _now()
        for _ in range(S):
            single()
        return S * single.n / (_now() - t)

    return run


def vmapped_seeds_row(agent_cls, config, dataset, single: Runner, S: int, reps: int) -> dict[str, Any]:
    """S vmapped seeds in one compiled chunk, timed alternately with S single-seed chunks one after another."""
    from runner import multiseed

    n = single.n
    agents, rngs = stacked_seeds(agent_cls, config, S)
    t = _now()
    compiled = multiseed.compile_chunk_seeds(agents, rngs, dataset, config.batch_size, n)
    compile_s = _now() - t
    vmapped = Runner(compiled, agents, rngs, dataset, n, S)
    rates = interleaved({"vmap": vmapped, "sequential": sequential_runner(single, S)}, reps)
    return {
        "seeds": S,
        "total_updates_per_s": rates["vmap"],
        "per_seed_updates_per_s": rates["vmap"] / S,
        "sequential_updates_per_s": rates["sequential"],
        "speedup_vs_sequential": rates["vmap"] / rates["sequential"],
        "compile_s": compile_s,
    }


def looped_seeds(agent_cls, config, dataset, single: Runner, S: int, reps: int) -> dict[str, Any]:
    """Strategy 'loop' (the CPU default of --seeds): each of S seeds' own state through the single-seed chunk, timed
    alternately with one seed's chunk run S times."""
    n = single.n
    looped = [single_seed_runner(agent_cls, config, dataset, n, seed=s) for s in range(S)]  # one compilation, cached

    def loop() -> float:
        t = _now()
        for run in looped:
            run()
        return S * n / (_now() - t)

    rates = interleaved({"loop": loop, "sequential": sequential_runner(single, S)}, reps)
    return {
        "seeds": S,
        "total_updates_per_s": rates["loop"],
        "sequential_updates_per_s": rates["sequential"],
        "speedup_vs_sequential": rates["loop"] / rates["sequential"],
        "note": "strategy 'loop' (the CPU default): seeds one after another through the single-seed chunk",
    }


def bench_seeds(agent_name: str, size: Size, overrides, dataset, seeds: Sequence[int]) -> dict[str, Any]:
    """Total updates/s of S vmapped seeds against running them one after another (the single-seed chunk's rate,
    timed alternately with it); for the largest S also the 'loop' strategy (the CPU default of --seeds)."""
    agent_cls, config = agent_setup(agent_name, size, overrides)
    reps = max(2, size.reps - 2)
    single = single_seed_runner(agent_cls, config, dataset, size.seed_chunk)
    return {
        "rows": [vmapped_seeds_row(agent_cls, config, dataset, single, S, reps) for S in seeds],
        "loop": looped_seeds(agent_cls, config, dataset, single, seeds[-1], reps),
        "note": "S seeds vmapped in one compiled chunk; speedup = total updates/s over one single-seed run's "
        "(timed alternately), i.e. over running the S seeds one after another",
    }


# -------------------------------------------------------------------------------------------- memory


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM (reset by exec, unlike ru_maxrss, which Linux carries over
    from the parent across fork + exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


EPISODE_ROWS = 1001  # a play episode in OGBench's files: 1001 rows, 1000 transitions


def write_synthetic_ogbench_files(data_dir: str | os.PathLike, transitions: int, seed: int = 0) -> None:
    """cube-single's train and validation files, in OGBench's layout and file names, with random contents:
    `transitions` training transitions (a tenth for validation) in episodes of 1000, so that loading them is
    exactly what a training run does with a published dataset of that size."""
    from envs.checks import expected_layout
    from envs.datasets import dataset_paths
    from envs.registry import resolve_task

    spec = resolve_task(TASK).env
    train_path, val_path = dataset_paths(spec, Path(data_dir))
    train_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for path, n in ((train_path, transitions), (val_path, max(1, transitions // 10))):
        episodes = max(1, n // (EPISODE_ROWS - 1))
        rows = episodes * EPISODE_ROWS
        arrays: dict[str, np.ndarray] = {}
        for key, (kinds, shape) in expected_layout(spec).items():
            if key == "terminals":
                arrays[key] = np.zeros(rows, bool)
                arrays[key][EPISODE_ROWS - 1 :: EPISODE_ROWS] = True
            elif "f" in kinds:
                arrays[key] = rng.uniform(-1, 1, (rows, *shape)).astype(np.float32)
            else:
                arrays[key] = np.zeros((rows, *shape), np.int64)
        np.savez(path, **arrays)


def memory_child(data_dir: str, size_name: str, agent_name: str, overrides_json: str = "{}") -> None:
    """Run in a child process: the training run's own path — `envs.datasets.load_task` on the files in `data_dir`
    (through ogbench's loader), `sorl.data.to_device`, the agent's `prepare_dataset`, a few training chunks — then
    print the peak RSS."""
    import gc

    import jax

    from envs.datasets import load_task
    from runner.train import compile_chunk, distinct_buffers
    from sorl.data import dataset_nbytes, dataset_size, to_device

    size = SIZES[size_name]
    jax.block_until_ready(jax.numpy.zeros(1))
    baseline = peak_rss_bytes()
    env, host, val = load_task(TASK, data_dir, generate=False, progress=False)
    del val
    env.close()
    dataset = to_device(host)
    del host
    gc.collect()
    nbytes = dataset_nbytes(dataset)
    agent_cls, config = agent_setup(agent_name, size, json.loads(overrides_json))
    dataset = agent_cls.prepare_dataset(dataset)
    state = initial_agent_state(agent_cls, config, 0)
    agent, rng = distinct_buffers((state["agent"], state["data_rng"]))
    compiled = compile_chunk(agent, rng, dataset, config.batch_size, 2)
    for _ in range(2):
        agent, rng, infos = compiled(agent, rng, dataset)
    jax.block_until_ready((agent, infos))
    peak = peak_rss_bytes()
    figures = {
        "peak_rss_bytes": peak,
        "dataset_bytes": nbytes,
        "dataset_transitions": dataset_size(dataset),
        "baseline_rss_bytes": baseline,
    }
    print("MEMORY_JSON " + json.dumps(figures))


def bench_memory(agent_name: str, size_name: str, overrides) -> dict[str, Any]:
    import tempfile

    size = SIZES[size_name]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="sorl-bench-memory-") as data_dir:
        write_synthetic_ogbench_files(data_dir, size.memory_transitions)
        code = (
            "from experiments.bench import memory_child; "
            f"memory_child({data_dir!r}, {size_name!r}, {agent_name!r}, {json.dumps(dict(overrides))!r})"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY_JSON ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory probe failed: {tail[0]}")
    r = json.loads(line[len("MEMORY_JSON ") :])
    limit = 1.5 * r["dataset_bytes"] + 1.5 * GiB
    return {
        "transitions": r["dataset_transitions"],
        **r,
        "peak_over_dataset": r["peak_rss_bytes"] / r["dataset_bytes"],
        "limit_bytes": limit,
        "within_limit": r["peak_rss_bytes"] <= limit,
        "path": "OGBench-format files -> envs.datasets.load_task -> sorl.data.to_device -> training chunks",
        "target": "peak RSS <= 1.5 x dataset bytes + 1.5 GiB",
    }


# ------------------------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Reference:
    """A published implementation of one of our agents that `sorl bench --reference CHECKOUT` times against ours."""

    what: str
    repo: str
    commit: str
    """The commit our agent was checked against (a checkout at another commit is timed too, and its commit said)."""
    module: str
    """Its agent's module and class, imported from the checkout; the module has the reference's `get_config()`."""
    cls: str
    sized: Callable[[Size], dict[str, Any]]
    """Its config keys for a bench size (the network dims and batch), on top of its `get_config()` defaults."""
    packages: tuple[str, ...]
    """What its own environment needs to import and train that agent, besides the JAX stack (pinned to ours)."""


REFERENCES: dict[str, Reference] = {
    # Registry name -> its reference. FQL's code ships IFQL (agents/ifql.py); its requirements say jax >= 0.4.26 and
    # flax >= 0.8.4, so its environment gets this process's JAX, Flax and Optax: the same XLA on both sides.
    "ifql": Reference(
        what="FQL's reference IFQL (agents/ifql.py)",
        repo="seohongpark/fql",
        commit="719d04417cb0b206deddbc7d761b3e710c3d750c",
        module="agents.ifql",
        cls="IFQLAgent",
        sized=lambda size: {
            "actor_hidden_dims": [size.width] * size.layers,
            "value_hidden_dims": [size.width] * size.layers,
            "batch_size": size.batch,
        },
        packages=("ml_collections", "distrax"),  # distrax: imported by its utils/networks.py
    ),
}

REFERENCE_CHILD = r"""
import json, sys, time
checkout, spec = sys.argv[1], json.loads(sys.stdin.readline())
sys.path.insert(0, checkout)
import importlib
import jax, flax, numpy as np
from utils.datasets import Dataset

module = importlib.import_module(spec["module"])
arrays = dict(np.load(spec["data"]))
dataset = Dataset.create(**arrays)
config = module.get_config()
config.update({k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()})
np.random.seed(spec["seed"])
example = dataset.sample(1)
agent = getattr(module, spec["cls"]).create(spec["seed"], example["observations"], example["actions"], config)
batch_size = config["batch_size"]

def updates(n):
    # the reference's offline loop (main.py): a host-sampled batch, then the jitted update; infos read only at
    # its log interval, so none is fetched here
    global agent
    start = time.perf_counter()
    for _ in range(n):
        agent, info = agent.update(dataset.sample(batch_size))
    jax.block_until_ready(agent)
    return time.perf_counter() - start

updates(1)  # compiles
print(json.dumps({"jax": jax.__version__, "flax": flax.__version__, "backend": jax.default_backend()}), flush=True)
for line in sys.stdin:
    n = int(line)
    print(json.dumps({"seconds": updates(n)}), flush=True)
"""
"""The reference's side, run with its environment's Python from its checkout: our code (a dataset file, a timed
loop), its agent and dataset sampler. It answers each line `n` on stdin with the seconds of n updates."""


class ReferenceRunner:
    """The reference's training loop in its own process and environment: each call times `n` of its updates (the
    process waits on its stdin in between, so it takes no cores from ours)."""

    def __init__(self, python: str, checkout: str, spec: Mapping[str, Any], n: int):
        self.n = n
        self.proc = subprocess.Popen(
            [python, "-c", REFERENCE_CHILD, checkout],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=checkout,
        )
        self.info = self._answer(json.dumps(dict(spec)))

    def _answer(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self.proc.stdout.readline()
        if not answer:
            self.close()
            tail = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()[-1:] or ["no output"]
            raise SorlError(f"the reference process stopped: {tail[0]}")
        return json.loads(answer)

    def __call__(self) -> float:
        return self.n / self._answer(str(self.n))["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def reference_python(checkout: Path, python: str | None) -> str:
    """The Python of the reference's own environment: `python`, else CHECKOUT/.venv/bin/python; one line naming the
    command that makes it when there is none."""
    path = Path(python) if python else checkout / ".venv" / "bin" / "python"
    if not path.is_file():
        raise SorlError(f"no Python at {path}: give the reference's environment with --reference-python, or make one: "
                        f"{reference_setup(checkout)}")  # fmt: skip
    return str(path)


def reference_setup(checkout: Path, agent: str = "ifql") -> str:
    """The commands that make the reference's environment beside its checkout, with this process's JAX stack."""
    import importlib.metadata as md

    pins = " ".join(f"{p}=={md.version(p)}" for p in ("jax", "jaxlib", "flax", "optax"))
    extra = " ".join(REFERENCES[agent].packages) if agent in REFERENCES else ""
    venv = checkout / ".venv"
    return f"python3 -m venv {venv} && {venv}/bin/pip install {pins} {extra}".strip()


def _checkout_commit(checkout: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def bench_reference(args: BenchArgs, size: Size, overrides, dataset_host: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Updates/s of our agent's training chunk and of its reference's training loop, at the same network size and
    batch on the same synthetic data, timed alternately (`interleaved`) in windows of `--reference-updates` updates:
    `--reference-reps` windows each after one warm-up window; medians and their ratio."""
    import tempfile

    from sorl.data import to_device

    ref, checkout, python = check_reference(args)
    n = args.reference_updates
    agent_cls, config = agent_setup(args.agent, size, overrides)
    ours = single_seed_runner(agent_cls, config, to_device(dataset_host), n)
    with tempfile.TemporaryDirectory(prefix="sorl-bench-reference-") as tmp:
        data = Path(tmp) / "data.npz"
        terminals = np.zeros(len(dataset_host["rewards"]), np.float32)
        terminals[-1] = 1.0  # its Dataset finds episode starts from the terminals
        np.savez(data, terminals=terminals, **{k: np.asarray(v) for k, v in dataset_host.items()})
        spec = {"module": ref.module, "cls": ref.cls, "config": ref.sized(size), "data": str(data), "seed": 0}
        theirs = ReferenceRunner(python, str(checkout), spec, n)
        try:
            windows = interleaved_rates({"ours": ours, "reference": theirs}, args.reference_reps)
        finally:
            theirs.close()
    rates = {name: statistics.median(v) for name, v in windows.items()}
    import jax

    return {
        "reference": ref.what,
        "repo": ref.repo,
        "commit": _checkout_commit(checkout) or "unknown (not a git checkout)",
        "checked_commit": ref.commit,
        "reference_python": python,
        "reference_jax": theirs.info.get("jax"),
        "reference_flax": theirs.info.get("flax"),
        "our_jax": jax.__version__,
        "networks": network_shape(config),
        "batch_size": config.batch_size,
        "window_updates": n,
        "windows": args.reference_reps,
        "ours_updates_per_s": rates["ours"],
        "reference_updates_per_s": rates["reference"],
        "ours_updates_per_s_all": windows["ours"],
        "reference_updates_per_s_all": windows["reference"],
        "speedup": rates["ours"] / rates["reference"],
        "note": "medians of alternating windows on the same machine and data; ours: the training chunk `sorl train` "
        "runs (a scan of updates, batches sampled on the device); reference: its main.py's offline loop (a batch "
        "sampled on the host, then its jitted update)",
    }


def check_reference(args: BenchArgs) -> tuple[Reference, Path, str]:
    """The reference comparison's arguments, checked before anything is measured: (its entry, the checkout, the
    Python of its environment); one line naming the flag and the fix."""
    for flag, value in (("--reference-updates", args.reference_updates), ("--reference-reps", args.reference_reps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SorlError(f"{flag} {value}: a positive integer")
    ref = REFERENCES.get(args.agent)
    if ref is None:
        have = ", ".join(sorted(REFERENCES)) or "none"
        raise SorlError(f"--reference: no reference implementation of {args.agent} is known (known: {have})")
    checkout = Path(args.reference or ".").expanduser().resolve()
    if not (checkout / Path(*ref.module.split("."))).with_suffix(".py").is_file():
        raise SorlError(f"--reference {checkout}: no {ref.module.replace('.', '/')}.py there; give a checkout of "
                        f"{ref.repo} (e.g. git clone https://github.com/{ref.repo})")  # fmt: skip
    return ref, checkout, reference_python(checkout, args.reference_python)


# ----------------------------------------------------------------------------------------------- run


def requested_sections(args: BenchArgs) -> list[str]:
    """The sections `--sections` (and `--reference`) ask for, checked before anything is measured."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in (*SECTIONS, "reference")]
    if unknown:
        raise SorlError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}, reference")
    if args.reference is not None and "reference" not in sections:
        sections.append("reference")
    if "reference" in sections:
        if args.reference is None or args.task is not None:
            raise SorlError("the reference section times the agent against its reference code on state data: give "
                            "--reference CHECKOUT (and no --task)")  # fmt: skip
        check_reference(args)
    return sections


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and how loaded it was at the start."""
    import jax

    return {
        "cpu": _cpu_model(),
        "cores": _cores(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "loadavg_at_start": load_average(),
    }


def training_dataset(size: Size, sampling=None):
    """The synthetic dataset on the device that training and seeds are timed on: state transitions, or a tenth as
    many pixel transitions with `sampling`'s frame stack."""
    from sorl.data import to_device

    if sampling is not None:
        return to_device(synthetic_pixel_dataset(size.transitions // 10), frame_stack=sampling.frame_stack)
    return to_device(synthetic_dataset(size.transitions))


def measure_training(
    args: BenchArgs, size: Size, overrides, dataset, env: str, sampling, log=print
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the matmul peak, the training figures): the update's rate and FLOPs between two peak measurements, and a
    pixel task's encoder alone."""
    import jax

    from sorl.data import sample_batch

    log("measuring the matmul peak ...")
    peak = peak_matmul_gflops()
    log("measuring training (compiles the update once per K, then the chunk) ...")
    t = bench_training(args.agent, size, overrides, dataset, peak["peak_gflops"], env=env, sampling=sampling)
    # The peak again, right after: a machine shared with other work is judged by its best moment.
    again = peak_matmul_gflops()["peak_gflops"]
    peak["peak_gflops_before_after"] = [peak["peak_gflops"], again]
    t["peak_gflops"] = peak["peak_gflops"] = max(peak["peak_gflops"], again)
    t["fraction_of_peak"] = t["achieved_gflops"] / t["peak_gflops"]
    if sampling is not None:
        log("measuring the encoder alone ...")
        batch = sample_batch(dataset, jax.random.PRNGKey(1), t["batch_size"], sampling)
        t["encoder_alone"] = bench_encoder(t["encoder"], batch["observations"])
    return peak, t


def run_bench(args: BenchArgs, agent_overrides: Mapping[str, str] | None = None, log=print) -> dict[str, Any]:
    """All requested sections; the figures as one dict (what --json prints)."""
    from agents import get_agent

    get_agent(args.agent)  # one clear line for an unknown agent
    sections = requested_sections(args)
    size = SIZES[args.size]
    overrides = dict(agent_overrides or {})
    env, sampling = "cube-single-play", None
    if args.task is not None:
        env, sampling = _pixel_task(args.task, sections, args)
    agent_setup(args.agent, size, overrides, env)  # invalid overrides fail now, not minutes in
    t0 = _now()
    out: dict[str, Any] = {
        "machine": machine_info(),
        "size": args.size,
        "agent": args.agent,
        "agent_overrides": overrides,
    }
    dataset = training_dataset(size, sampling) if {"training", "seeds"} & set(sections) else None
    if "training" in sections:
        out["matmul"], out["training"] = measure_training(args, size, overrides, dataset, env, sampling, log)
    if "inference" in sections:
        log("measuring inference latency ...")
        out["inference"] = bench_inference(args.agent, size, overrides)
    if "evaluation" in sections:
        log("measuring evaluation throughput and raw physics ...")
        out["evaluation"] = bench_evaluation(args.agent, size, overrides, args.workers)
    if "seeds" in sections:
        log(f"measuring vmapped seeds {list(size.seeds)} ...")
        out["seeds"] = bench_seeds(args.agent, size, overrides, dataset, size.seeds)
    if "memory" in sections:
        log(f"measuring peak memory with {size.memory_transitions} transitions (child process) ...")
        out["memory"] = bench_memory(args.agent, args.size, overrides)
    if "reference" in sections:
        log(f"timing {args.agent} against its reference code, alternately ...")
        out["reference"] = bench_reference(args, size, overrides, synthetic_dataset(size.transitions))
    out["machine"]["loadavg_at_end"] = load_average()
    out["machine"]["bench_process_peak_rss_bytes"] = peak_rss_bytes()
    out["bench_s"] = _now() - t0
    return out


def _pixel_task(task: str, sections: list[str], args: BenchArgs):
    """(environment name, Sampling) of `--task`: a pixel task's, with the released pixel commands' frame stack and
    augmentation (`runner.pixels`); only the training section is measured on it."""
    from envs.checks import PIXEL_OBSERVATION
    from envs.registry import PIXEL_FRAME_STACK, PIXEL_P_AUG, resolve_env
    from sorl.data import Sampling

    spec = resolve_env(task)
    if not spec.pixels:
        raise SorlError(f"--task {task}: the default bench is the state-based one; --task takes a visual-* task")
    chosen = args.sections != ",".join(SECTIONS)  # sections asked for explicitly, not the default list
    if chosen and set(sections) != {"training"}:
        raise SorlError("--task measures training only: add --sections training")
    sections[:] = ["training"]
    return spec.name, Sampling(PIXEL_FRAME_STACK, PIXEL_P_AUG, PIXEL_OBSERVATION)


def _gf(flops: float) -> str:
    """FLOPs as GFLOP with three significant digits."""
    return f"{flops / 1e9:.3g} GFLOP"


def _row(name: str, value: str) -> str:
    """One figure of the table: its name in a fixed-width column, then its value."""
    return f"  {name:<36} {value}"


def _training_lines(t: Mapping[str, Any]) -> list[str]:
    pixels = (
        f", {t['task']}: encoder {t['encoder']}, frame stack {t['frame_stack']}, p_aug {t['p_aug']}"
        if t.get("encoder")
        else ""
    )
    every = ", ".join(f"{x:.2f}" for x in t["updates_per_s_all"])
    lines = [
        f"training ({t['networks']} networks, batch {t['batch_size']}, chunks of {t['chunk_updates']}{pixels})",
        _row("updates_per_s (median)", f"{t['updates_per_s']:.2f}  (all: {every})"),
        _row("compile_s (chunk)", f"{t['compile_s']:.1f}"),
        _row("flops_per_update", _gf(t["flops_per_update"]) + (f"  ({t['K_distribution']})" if t["per_K"] else "")),
    ]
    for K, v in (t["per_K"] or {}).items():
        lines.append(
            _row(f"  K={K}", f"{_gf(v['flops'])}, {1e3 * v['update_s']:.1f} ms/update, {v['gflops']:.0f} GFLOP/s")
        )
    lines += [
        _row("achieved_gflops", f"{t['achieved_gflops']:.1f}"),
        _row("peak_gflops (2048^2 matmul)", f"{t['peak_gflops']:.1f}  (best of before/after training)"),
        _row("fraction_of_peak", f"{100 * t['fraction_of_peak']:.0f} %"),
    ]
    if "encoder_alone" in t:
        for key in ("forward", "forward_backward", "forward_backward_in_scan", "first_conv"):
            v = t["encoder_alone"][key]
            lines.append(
                _row(f"  encoder {key}", f"{_gf(v['flops'])}, {1e3 * v['s']:.0f} ms, {v['gflops']:.1f} GFLOP/s")
            )
    return lines


def _inference_lines(inference: Mapping[str, Any]) -> list[str]:
    grid = inference["grid"]
    lines = ["inference latency, ms (median)"]
    for b in sorted({c["batch"] for c in grid}):
        cells = [c for c in grid if c["batch"] == b]
        latencies = "  ".join(
            f"K={c['K']},N={c['N']}{'*' * c.get('policy', False)}: {c['latency_ms']:.2f}" for c in cells
        )
        lines.append(_row(f"batch {b}", latencies))
    if any(c.get("policy") for c in grid):
        lines.append(_row("", "* the agent's own policy (the (K, N) it acts with when asked for none)"))
    return lines


def _evaluation_lines(e: Mapping[str, Any]) -> list[str]:
    return [
        f"evaluation ({e['task']}, {e['episodes']} episodes x {e['max_episode_steps']} steps, {e['workers']} workers)",
        _row("eval env steps/s", f"{e['eval_steps_per_s']:.0f}"),
        _row("raw physics steps/s, 1 process", f"{e['raw_steps_per_s_one_process']:.0f}"),
        _row("raw physics steps/s, all cores", f"{e['raw_steps_per_s_all_cores']:.0f}"),
        _row("eval / (raw x cores)", f"{e['ratio_to_raw_x_cores']:.2f}  (target >= 0.8)"),
        _row("eval / raw all cores", f"{e['ratio_to_raw_all_cores']:.2f}"),
    ]


def _seeds_lines(seeds: Mapping[str, Any]) -> list[str]:
    lines = ["seeds_per_process (vmapped)"]
    for s in seeds["rows"]:
        figures = (
            f"{s['total_updates_per_s']:.2f} updates/s total, {s['per_seed_updates_per_s']:.2f} per seed, "
            f"x{s['speedup_vs_sequential']:.2f} vs sequential (compile {s['compile_s']:.0f} s)"
        )
        lines.append(_row(f"{s['seeds']} seeds", figures))
    if "loop" in seeds:
        lp = seeds["loop"]
        figures = f"{lp['total_updates_per_s']:.2f} updates/s total, x{lp['speedup_vs_sequential']:.2f} vs sequential"
        lines.append(_row(f"{lp['seeds']} seeds, strategy loop", figures))
    return lines


def _memory_lines(mem: Mapping[str, Any]) -> list[str]:
    baseline, limit = mem["baseline_rss_bytes"] / 2**20, mem["limit_bytes"] / 2**20
    return [
        f"memory ({mem['transitions']} transitions, child process)",
        _row("dataset bytes", f"{mem['dataset_bytes'] / 2**20:.0f} MiB"),
        _row("peak RSS", f"{mem['peak_rss_bytes'] / 2**20:.0f} MiB (JAX baseline {baseline:.0f} MiB)"),
        _row("limit 1.5 x dataset + 1.5 GiB", f"{limit:.0f} MiB  ({'met' if mem['within_limit'] else 'NOT met'})"),
    ]


def _changes_lines(changes: Mapping[str, Any]) -> list[str]:
    """The speed changes that scripts/bench_changes.py adds (saved outputs in the results pages hold them)."""
    lines = ["speed changes: before -> after updates/s (this process)"]
    for name, v in changes.items():
        flops = ""
        if "before_flops_per_update" in v:
            flops = f"  ({_gf(v['before_flops_per_update'])} -> {_gf(v['after_flops_per_update'])})"
        rates = f"{v['before_updates_per_s']:.2f} -> {v['after_updates_per_s']:.2f}  (x{v['speedup']:.2f}){flops}"
        lines += [f"  {name}", _row("", rates)]
    return lines


def _reference_lines(ref: Mapping[str, Any]) -> list[str]:
    lines = [
        f"against {ref['reference']} ({ref['repo']} at {ref['commit'][:10]}; {ref['networks']} networks, batch "
        f"{ref['batch_size']}; jax {ref['our_jax']} here, {ref['reference_jax']} there)"
    ]
    for side in ("ours", "reference"):
        every = ", ".join(f"{x:.2f}" for x in ref.get(f"{side}_updates_per_s_all", []))
        lines.append(_row(f"{side} updates_per_s (median)", f"{ref[f'{side}_updates_per_s']:.2f}  (all: {every})"))
    windows = f"{ref['windows']} alternating windows of {ref['window_updates']} updates each"
    lines.append(_row("ours / reference", f"x{ref['speedup']:.2f}  ({windows})"))
    return lines


SECTION_LINES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "training": _training_lines,
    "inference": _inference_lines,
    "evaluation": _evaluation_lines,
    "seeds": _seeds_lines,
    "memory": _memory_lines,
    "changes": _changes_lines,
    "reference": _reference_lines,
}
"""Each section's part of the table, in the table's order."""


def format_report(r: Mapping[str, Any]) -> str:
    """The figures as a plain-text table."""
    m = r["machine"]
    lines = [
        f"sorl bench  agent={r['agent']}  size={r['size']}  overrides={r['agent_overrides'] or '-'}",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['backend']} ({m['device']}), jax {m['jax_version']}; "
        f"load average {m['loadavg_at_start']} -> {m.get('loadavg_at_end')}",
    ]
    for section, section_lines in SECTION_LINES.items():
        if section in r:
            lines += section_lines(r[section])
    lines.append(f"bench time {r['bench_s']:.0f} s")
    return "\n".join(lines)


def bench_from_cli(args: BenchArgs, agent_overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`sorl bench ...`: run, then print the table (or JSON)."""
    from runner.runs import jsonable

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    result = run_bench(args, agent_overrides, log=log)
    if args.json:
        print(json.dumps(jsonable(result), indent=2, default=str))
    else:
        print(format_report(result))
    return result
