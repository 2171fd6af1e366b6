"""How does a trained policy change with its number of sampling steps K? A probe of the K-step sampler.

SORL trains flow matching at its finest step only (K = M) and every coarser step through self-consistency,
while its Q term and its critic see every K (docs/method.md). Success is therefore not bound to rise with K, and
at a small budget it does not (experiments/results/main). `k_probe` looks at what each K does to the actions:
it takes `states` transitions of the task's validation dataset (held out from training), draws one noise per
state, samples from that same noise with every probed K, and records per K

- `mse`: the mean squared distance from the dataset action, per action dimension (train.csv's `actor/mse`
  is the same quantity averaged over the K's the Q term drew);
- `to_finest`: the mean squared distance from the finest probed K's action of the same noise: how far the coarse
  sampler lands from the finest one (0 there; for SORL what self-consistency is there to keep small);
- `q`: the verifier's mean value of the sampled actions, `agg_j Q_j(x, a_K, K)`, for every agent with a best-of-N
  verifier (`aggregated_q`; a critic that does not read K, e.g. IFQL's, scores the K-step action alone);
- `q_data`: the verifier's mean value of the dataset actions scored with the same K (the same at every K where the
  critic does not read K); `q - q_data` is the improvement over the data that the critic credits the K-step
  policy with.

Which K are probed is the agent's own rule (`sorl.agent.Agent.check_K`, `probe_Ks`): the powers of two up to the
finest K, which is its trained maximum `max_K` (SORL's M) or, for an agent without one (a plain flow field, any
K >= 1: IFQL, FAWAC, FBRAC), the K of its own policy (`runner.evaluation.policy_cell`; IFQL's 10) or the default
evaluation grid's largest, whichever is larger, itself probed too. An agent whose action no K changes (its
`GRID_NOTES` name K: a one-step or Gaussian policy) is refused in one line.

`sorl k-probe RUN_DIR` writes k_probe.json into the run directory; `format_k_probe` renders the runs under some
paths as a table (mean ± std over seeds per task, agent and K) for the results pages.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.aggregate import mean_std
from runner import runs
from runner.evaluation import policy_cell
from runner.train import load_run
from sorl.errors import SorlError
from sorl.validation import check_positive

K_PROBE_JSON = "k_probe.json"


def probe_Ks(agent: Any) -> list[int]:
    """The K a probe of `agent` (an agent or its class) samples with, finest last (module docstring): the powers of
    two the agent takes below its finest K, and that K."""
    from runner.settings import TrainSettings
    from sorl.agent import K_rule

    rule = K_rule(agent)
    max_K = None if isinstance(agent, type) else getattr(agent, "max_K", None)
    finest = max_K or max(policy_cell(agent)[0], *TrainSettings().eval_K)
    if not rule.takes_K(finest, max_K):  # a power-of-two rule without a maximum: its largest power below
        finest = 2 ** (finest.bit_length() - 1)
    Ks = [2**i for i in range(finest.bit_length()) if 2**i < finest and rule.takes_K(2**i, max_K)]
    return [*Ks, finest]


def check_K_applies(agent_cls: type, name: str, where: Any) -> None:
    """One line refusing an agent whose action no K changes (`GRID_NOTES` names K), and why."""
    from agents import AGENTS

    why = (getattr(agent_cls, "GRID_NOTES", {}) or {}).get("K")
    if why is not None:
        multi_step = ", ".join(n for n, c in AGENTS.items() if "K" not in c.GRID_NOTES)
        raise SorlError(
            f"{where}: agent {name!r} samples its action in one step ({why}), so K changes nothing; probe an agent "
            f"whose K changes its action ({multi_step})"
        )


@functools.cache
def _verifier_score():
    """`agg_j Q_j(x, a, K)` jitted once per process (the agent and K are traced: one compilation per shape)."""
    import jax

    return jax.jit(lambda agent, observations, actions, K: agent.aggregated_q(observations, actions, K))


def probe_agent(agent: Any, observations: np.ndarray, actions: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """One record per K of `probe_Ks(agent)`: the quantities of the module docstring on these transitions.

    Every K starts from the same noise (`sample_actions(K, N=1)` with one key draws the same `[B, A]` normal for
    any K), so the K's differ only in how they integrate it."""
    import jax
    import jax.numpy as jnp

    from sorl.inference import make_policy_fn

    policy = make_policy_fn()
    score = _verifier_score() if hasattr(agent, "aggregated_q") else None
    obs, data = jnp.asarray(observations, jnp.float32), np.asarray(actions, np.float32)
    key = jax.random.PRNGKey(seed)
    Ks = probe_Ks(agent)
    sampled = {K: np.asarray(policy(agent, obs, key, K, 1)) for K in Ks}
    finest = sampled[Ks[-1]]
    records = []
    for K in Ks:
        a = sampled[K]
        record: dict[str, Any] = {
            "K": K,
            "mse": float(np.mean((a - data) ** 2)),
            "to_finest": float(np.mean((a - finest) ** 2)),
            "q": None,
            "q_data": None,
        }
        if score is not None:
            record["q"] = float(np.mean(score(agent, obs, jnp.asarray(a), float(K))))
            record["q_data"] = float(np.mean(score(agent, obs, jnp.asarray(data), float(K))))
        records.append(record)
    return records


def k_probe(
    run_dir: str | Path, *, states: int = 4096, seed: int = 0, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """Probe the run's final checkpoint on `states` validation transitions; the record written to k_probe.json."""
    from agents import AGENTS
    from envs.datasets import dataset_paths, load_task
    from experiments.verifier import check_probe

    check_positive("--states", states)
    path = runs.RunDir(run_dir)
    if path.exists():  # an agent whose action no K changes: said before its config is parsed
        name = runs.agent_name(path.read_config())
        if name in AGENTS:
            check_K_applies(AGENTS[name], name, path.path)
    run, cfg = check_probe(run_dir, "K probe", seed=seed)  # before anything is built or compiled
    data_dir = data_dir if data_dir is not None else (cfg.get("dataset") or {}).get("data_dir")
    try:
        _, val_file = dataset_paths(cfg["task"], data_dir)
    except SorlError as e:
        raise SorlError(f"{run.config}: {e}") from None
    if not val_file.is_file():
        raise SorlError(
            f"{val_file} is missing: the K probe measures the policy on the held-out split; give --data-dir where "
            f"the dataset is, or regenerate it with `sorl data generate {cfg['task']}`"
        )
    agent, step = load_run(run)
    check_K_applies(type(agent), runs.agent_name(cfg), run.path)
    env, _, val = load_task(cfg["task"], data_dir, success_timing=cfg.get("success_timing", "pre"), generate=False)
    if hasattr(env, "close"):
        env.close()
    n = len(val.get("observations", ()))
    if n == 0:
        raise SorlError(
            f"{cfg['task']} has no validation transitions in the data directory; regenerate it with `sorl data "
            "generate` (the K probe measures the policy on held-out data)"
        )
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(states, n), replace=False))
    return {
        "task": cfg["task"],
        "agent": runs.agent_name(cfg),
        "seed": cfg["seed"],
        "step": step,
        "states": len(idx),
        "probe_seed": seed,
        "K": probe_agent(agent, val["observations"][idx], val["actions"][idx], seed),
    }


def write_k_probe(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / K_PROBE_JSON
    runs.write_json(path, dict(record))
    return path


def format_k_probe(paths: Sequence[str | Path]) -> str:
    """A markdown table of the k_probe.json files under `paths`: per task, agent and K, mean ± std over seeds."""
    files = runs.summary_files(paths, K_PROBE_JSON, "sorl k-probe RUN_DIR")
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    seeds: dict[tuple[str, str], list[int]] = defaultdict(list)
    steps: dict[tuple[str, str], set[int]] = defaultdict(set)
    for f in files:
        r = json.loads(f.read_text())
        seeds[r["task"], r["agent"]].append(int(r["seed"]))
        steps[r["task"], r["agent"]].add(int(r["step"]))
        for k in r["K"]:
            q = k["q"]
            gain = None if q is None or k["q_data"] is None else q - k["q_data"]
            groups[r["task"], r["agent"], int(k["K"])].append({**k, "gain": gain})
    lines = [
        "| task | agent | step | seeds | K | mse to data | mse to K = M | Q(a_K) | Q(data) | Q(a_K) − Q(data) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, agent, K), rows in sorted(groups.items()):
        step = "/".join(str(s) for s in sorted(steps[task, agent]))
        cols = [mean_std([r[c] for r in rows], d) for c, d in (("mse", 3), ("to_finest", 3), ("q", 1), ("q_data", 1))]
        cols.append(mean_std([r["gain"] for r in rows], 1))
        lines.append(f"| {task} | {agent} | {step} | {len(seeds[task, agent])} | {K} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
