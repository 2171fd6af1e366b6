"""How good is the Q verifier? Rank agreement between Q and the actual returns of best-of-N candidates.

Best-of-N helps only if the critic ranks candidate actions the way their outcomes do. At probe states visited
by the policy itself, `verifier_quality` draws N candidate first actions with K sampling steps (the
candidates best-of-N would choose among: N independent samples of the N = 1 policy), scores each with the
agent's verifier (`aggregated_q(x, a, K)`, exactly the score its `sample_actions(K, N)` ranks by: SORL's
`agg_j Q_j(x, a, K)`, IFQL's and IDQL's `min_j Q_j(x, a)`, K ignored where the critic does not read it), and
measures each candidate's Monte-Carlo outcome: N copies of the environment are put in the probe state (MuJoCo
`set_state`), each takes its candidate, and then every copy follows the agent's K-step policy (N = 1, whatever the
agent's own policy cell) to the end of the episode. Per probe state it records the Spearman rank correlation
between Q and the discounted return, and what picking by Q gives against picking at random (the mean
candidate) and against the best candidate in hindsight. It also records Q against the realised return
(overestimation).

One Monte-Carlo rollout per candidate is a noisy estimate of its value (the continuation is stochastic), so a
rank correlation near zero means "Q does not rank better than noise", not that every Q is wrong; the argmax
and mean-candidate success rates are the quantity best-of-N actually changes.

Every agent whose best-of-N ranks N policy samples with a critic has `aggregated_q` and is probed (`verifier_agents`);
an agent without one is refused in one line naming those that have it. Agents whose best-of-N keeps their
deterministic N = 1 action among the candidates (`sorl.baselines.best_of_mode_and_samples`) have none: N samples of
that policy would be N copies of one action. The K is checked against the agent's own rule (`Agent.check_K`).

`sorl verifier RUN_DIR --K 4 --N 32 --states 16` writes verifier.json into the run directory; `format_verifier`
renders a table of several runs for the results pages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner import runs
from runner.evaluation import episode_seed
from runner.pixels import run_observations
from runner.train import load_run
from sorl.errors import SorlError

VERIFIER_JSON = "verifier.json"


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _physics_state(env: Any) -> dict[str, Any]:
    """Everything the next step depends on: a copy of MuJoCo's whole `MjData` (the state and the quantities
    derived from it, which the arm controller reads as they were left by the last step), the controller's IK
    state and, in scene, the buttons' latched states."""
    import mujoco

    u = env.unwrapped
    snapshot = mujoco.MjData(u._model)
    mujoco.mj_copyData(snapshot, u._model, u._data)
    state: dict[str, Any] = {"qpos": u._data.qpos.copy(), "qvel": u._data.qvel.copy(), "data": snapshot}
    state["ik_qpos"] = u._ik._data.qpos.copy()  # the IK starts from its previous solution
    if hasattr(u, "_cur_button_states"):
        state["buttons"] = np.array(u._cur_button_states, copy=True)
    return state


def _set_physics_state(env: Any, state: dict[str, Any]) -> None:
    import mujoco

    u = env.unwrapped
    if "buttons" in state:  # the environment's own bookkeeping first, then MuJoCo's data exactly
        u.set_state(state["qpos"], state["qvel"], state["buttons"])
    else:
        u.set_state(state["qpos"], state["qvel"])
    mujoco.mj_copyData(u._data, u._model, state["data"])
    u._ik._data.qpos[:] = state["ik_qpos"]


def verifier_agents() -> list[str]:
    """The registered agents the verifier probe takes: those with `aggregated_q`, the score their best-of-N ranks
    candidates by."""
    from agents import AGENTS

    return [name for name, cls in AGENTS.items() if hasattr(cls, "aggregated_q")]


def _no_verifier(where: Any, name: str) -> SorlError:
    return SorlError(
        f"{where}: agent {name!r} has no Q verifier (it does not rank best-of-N policy samples with a critic); the "
        f"verifier probe needs an agent that does: {', '.join(verifier_agents())}"
    )


def check_probe(
    run_dir: str | Path,
    probe: str,
    *,
    Ks: Sequence[int] = (),
    N: int = 1,
    seed: int = 0,
    needs_verifier: bool = False,
) -> tuple[runs.RunDir, dict[str, Any]]:
    """A probe's arguments checked against the run before anything is built or compiled: the run directory and
    its config, state observations, the agent (a Q verifier when `needs_verifier`), every K one the agent takes
    (`Agent.check_K`), N and the seed, and a complete checkpoint. One SorlError naming the argument and the fix;
    returns (run, config.json)."""
    from agents import AGENTS
    from experiments.spec import agent_max_K
    from runner.checkpoint import latest_step
    from runner.evaluation import check_grid_values, validate_grid
    from sorl.config import config_from_dict

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SorlError(f"--seed {seed}: a probe seed is a non-negative integer")
    check_grid_values(tuple(Ks), (N,))  # positive integers: before the run is read
    path = Path(run_dir)
    if not path.is_dir():
        raise SorlError(f"{path}: no such run directory; give a trained run (a directory holding config.json)")
    run = runs.RunDir(path)
    cfg = run.read_config()
    pixels, frame_stack = run_observations(cfg)
    if pixels or frame_stack > 1:  # rollouts restart from a physics state; the held-out split is not stacked
        what = "pixel observations" if pixels else f"{frame_stack} stacked frames"
        raise SorlError(f"{run.path} was trained on {what}: the {probe} handles state observations only")
    name = runs.agent_name(cfg)
    agent_cls = AGENTS.get(name)
    if agent_cls is None or not isinstance(cfg.get("agent_config"), dict) or "task" not in cfg:
        raise SorlError(f"{run.config} is corrupt or from an unknown agent ({name!r}); retrain the run")
    if needs_verifier and not hasattr(agent_cls, "aggregated_q"):
        raise _no_verifier(run.path, name)
    try:
        max_K = agent_max_K(name, config_from_dict(agent_cls.Config, cfg["agent_config"]))
    except SorlError as e:
        raise SorlError(f"{run.config} is corrupt ({e}); retrain the run") from None
    validate_grid(tuple(Ks), (N,), max_K, agent_cls, name)
    if latest_step(run.checkpoints) is None:
        raise SorlError(f"{run.path} has no complete checkpoint; train it first (`sorl train ... --run-dir {path}`)")
    return run, cfg


def verifier_quality(
    run_dir: str | Path,
    *,
    K: int = 4,
    N: int = 32,
    states: int = 16,
    probe_steps: Sequence[int] = (0, 25, 50, 75),
    seed: int = 0,
) -> dict[str, Any]:
    """Probe the run's final checkpoint at `states` states (episode j stopped after probe_steps[j % len]
    policy steps); the record written to verifier.json."""
    from envs.datasets import make_env
    from sorl.inference import make_policy_fn
    from sorl.validation import check_positive

    check_positive("--states", states)
    run, cfg = check_probe(run_dir, "verifier probe", Ks=(K,), N=N, seed=seed, needs_verifier=True)
    agent, step = load_run(run)
    timing = cfg.get("success_timing", "pre")
    gamma = float(agent.config.discount)
    policy = make_policy_fn()
    envs = [make_env(cfg["task"], success_timing=timing) for _ in range(N + 1)]
    t0 = time.perf_counter()
    records = _probe_records(
        agent, policy, envs[0], envs[1:], K=K, states=states, probe_steps=probe_steps, seed=seed, gamma=gamma
    )
    return {
        "task": cfg["task"],
        "agent": runs.agent_name(cfg),
        "seed": cfg["seed"],
        "step": step,
        "K": K,
        "N": N,
        "probe_seed": seed,
        "discount": gamma,
        "success_timing": timing,
        "time_s": time.perf_counter() - t0,
        "summary": summarize(records),
        "states": records,
    }


def _probe_records(
    agent: Any,
    policy: Any,
    probe_env: Any,
    copies: Sequence[Any],
    *,
    K: int,
    states: int,
    probe_steps: Sequence[int],
    seed: int,
    gamma: float,
) -> list[dict[str, Any]]:
    """One record per probe state reached (an episode that ends before its probe step gives none): the Q of
    len(copies) candidates drawn there and each candidate's Monte-Carlo outcome, one copy of the environment each."""
    import jax
    import jax.numpy as jnp

    N = len(copies)
    spec = getattr(probe_env, "spec", None)
    limit = int(spec.max_episode_steps) if spec is not None and spec.max_episode_steps else 1000
    key = jax.random.PRNGKey(seed)
    records = []
    for j in range(states):
        key, k_probe, k_cand, k_roll = jax.random.split(key, 4)
        reset_seed = episode_seed(seed, j)
        obs, state, t = _reach_probe_state(
            probe_env, agent, policy, reset_seed, probe_steps[j % len(probe_steps)], K, k_probe
        )
        if obs is None:
            continue  # the episode ended before the probe step
        batch = jnp.repeat(jnp.asarray(obs, jnp.float32)[None], N, axis=0)
        candidates = policy(agent, batch, k_cand, K, 1)  # N independent K-step samples
        q = np.asarray(agent.aggregated_q(batch, candidates, K))
        ret, success = _rollouts(
            copies, agent, policy, reset_seed, state, np.asarray(candidates), K, gamma, limit - t, k_roll
        )
        records.append(_state_record(t, q, ret, success))
    return records


def _reach_probe_state(env, agent, policy, reset_seed: int, steps: int, K: int, key) -> tuple[Any, Any, int]:
    """Reset with `reset_seed` and follow the K-step policy for `steps` steps: (obs, physics state, t), or
    (None, None, t) if the episode ended first."""
    import jax
    import jax.numpy as jnp

    obs, _ = env.reset(seed=reset_seed)
    for t in range(steps):
        action = np.asarray(policy(agent, jnp.asarray(obs, jnp.float32)[None], jax.random.fold_in(key, t), K, 1))[0]
        obs, _, terminated, truncated, _ = env.step(np.clip(action, -1, 1))
        if terminated or truncated:
            return None, None, t + 1
    return obs, _physics_state(env), steps


def _rollouts(copies, agent, policy, reset_seed, state, candidates, K, gamma, horizon, key):
    """Each copy in `state` takes its candidate, then follows the K-step policy: (discounted return, success)."""
    import jax
    import jax.numpy as jnp

    n = len(copies)
    obs = np.zeros((n, int(np.prod(copies[0].observation_space.shape))), np.float32)
    for env in copies:
        env.reset(seed=reset_seed)  # the same task and goal as the probe episode
        _set_physics_state(env, state)
    ret, success = np.zeros(n), np.zeros(n, bool)
    alive = np.ones(n, bool)
    actions = candidates
    for t in range(max(horizon, 1)):
        for i in np.flatnonzero(alive):
            ob, r, terminated, truncated, info = copies[i].step(np.clip(actions[i], -1, 1))
            obs[i] = ob
            ret[i] += gamma**t * r
            success[i] |= bool(info.get("success", False))
            alive[i] = not (terminated or truncated)
        if not alive.any():
            break
        actions = np.asarray(policy(agent, jnp.asarray(obs), jax.random.fold_in(key, t), K, 1))
    return ret, success


def _state_record(t: int, q: np.ndarray, ret: np.ndarray, success: np.ndarray) -> dict[str, Any]:
    best = int(np.argmax(q))
    return {
        "t": t,
        "spearman": _spearman(q, ret),
        "q": q.round(4).tolist(),
        "mc_return": ret.round(4).tolist(),
        "success": success.astype(int).tolist(),
        "argmax_return": float(ret[best]),
        "argmax_success": int(success[best]),
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over probe states; the rank correlation over states where both Q and the returns vary."""
    if not records:
        return {"states": 0}
    rho = [r["spearman"] for r in records if r["spearman"] is not None]
    q = np.array([np.mean(r["q"]) for r in records])
    ret = np.array([np.mean(r["mc_return"]) for r in records])
    return {
        "states": len(records),
        "states_ranked": len(rho),
        "spearman_mean": float(np.mean(rho)) if rho else None,
        "q_mean": float(q.mean()),
        "mc_return_mean": float(ret.mean()),
        "overestimation": float((q - ret).mean()),
        "success_argmax_q": float(np.mean([r["argmax_success"] for r in records])),
        "success_mean_candidate": float(np.mean([np.mean(r["success"]) for r in records])),
        "success_best_candidate": float(np.mean([max(r["success"]) for r in records])),
        "return_argmax_q": float(np.mean([r["argmax_return"] for r in records])),
        "return_mean_candidate": float(ret.mean()),
        "return_best_candidate": float(np.mean([max(r["mc_return"]) for r in records])),
    }


def write_verifier(run_dir: str | Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / VERIFIER_JSON
    runs.write_json(path, record)
    return path


def format_verifier(paths: Sequence[str | Path]) -> str:
    """A markdown table of the verifier.json files under `paths` (run directories or roots holding them)."""
    files = runs.summary_files(paths, VERIFIER_JSON, "sorl verifier RUN_DIR")
    lines = [
        "| run | step | K | N | states | Spearman ρ (Q, return) | success: argmax Q / mean candidate / best | "
        "mean Q | mean return | Q − return |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        r = json.loads(f.read_text())
        s = r["summary"]
        rho = "n/a" if s.get("spearman_mean") is None else f"{s['spearman_mean']:+.2f} ({s['states_ranked']} states)"
        succ = " / ".join(
            f"{100 * s[k]:.0f}%" for k in ("success_argmax_q", "success_mean_candidate", "success_best_candidate")
        )
        lines.append(
            f"| {r['task']} {r['agent']} seed {r['seed']} | {r['step']} | {r['K']} | {r['N']} | {s['states']} | {rho} "
            f"| {succ} | {s['q_mean']:.1f} | {s['mc_return_mean']:.1f} | {s['overestimation']:+.1f} |"
        )
    return "\n".join(lines) + "\n"
