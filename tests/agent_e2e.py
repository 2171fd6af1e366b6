"""The tiny end-to-end run every agent's tests put through the CLI: one sweep spec, the `sorl train` command it
asks for, and the grid `sorl eval` wrote (tests/test_idql.py, test_srpo.py, test_cac.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASK_NAME = "cube-single-play-task1"
TINY_NETWORKS = {"actor_layer_size": 16, "actor_num_layers": 2, "value_layer_size": 16, "value_num_layers": 2}
"""2x16 networks (and batch 16, `tiny_settings`): compiles in seconds, enough to run every code path."""


def tiny_settings(**agent_settings: Any) -> dict[str, Any]:
    return {**TINY_NETWORKS, "batch_size": 16, **agent_settings}


def tiny_spec(
    path: Path,
    agent: str,
    *,
    out: Path,
    data: Path,
    seed: int,
    K: int,
    N: tuple[int, ...],
    episodes: int = 2,
    **agent_settings: Any,
) -> Path:
    """A one-run sweep spec (20 updates, evaluated at 20 on the (K, N) cells, 8-step episodes) written to `path`."""
    settings = "\n".join(f"{k} = {v}" for k, v in tiny_settings(**agent_settings).items())
    path.write_text(
        f'agents = ["{agent}"]\ntasks = ["{TASK_NAME}"]\nseeds = [{seed}]\nout = "{out}"\ndata_dir = "{data}"\n'
        "[train]\nsteps = 20\nlog_interval = 10\neval_interval = 20\n"
        f"[eval]\nK = [{K}]\nN = {list(N)}\nepisodes = {episodes}\nmax_episode_steps = 8\nworkers = 1\n"
        f"[settings]\n{settings}\n"
    )
    return path


def tiny_train_argv(
    agent: str,
    *,
    run_dir: Path,
    data: Path,
    seed: int,
    K: int,
    N: tuple[int, ...],
    episodes: int = 2,
    **agent_settings: Any,
) -> list[str]:
    """The `sorl train` command `tiny_spec`'s sweep runs, spelled out (the flags a user would type)."""
    argv = ["train", "--task", TASK_NAME, "--agent", agent, "--steps", "20", "--seed", str(seed)]
    argv += ["--run-dir", str(run_dir), "--data-dir", str(data), "--log-interval", "10", "--eval-interval", "20"]
    argv += ["--eval-episodes", str(episodes), "--eval-K", str(K), "--eval-N", ",".join(map(str, N))]
    argv += ["--eval-workers", "1", "--eval-max-episode-steps", "8", "--progress", "False"]
    return argv + [f"--agent.{k}={v}" for k, v in tiny_settings(**agent_settings).items()]


def eval_grid(run_dir: Path) -> list[tuple[int, int]]:
    """The (K, N) cells `sorl eval` wrote to the run's scaling.json, sorted."""
    scaling = json.loads((run_dir / "scaling.json").read_text())
    grid = scaling["grid"] if isinstance(scaling, dict) and "grid" in scaling else scaling
    return sorted((g["K"], g["N"]) for g in grid)
