"""OGBench tasks and datasets: the registry of singletask environments, loading (through ogbench), local
generation with OGBench's oracles, and the manifest/verification of the files in the data directory.

    from envs import load_task, make_env, resolve_task, ENVIRONMENTS
"""

from envs.datasets import data_dir, dataset_paths, ensure_dataset, load_task, make_env
from envs.registry import (
    ENVIRONMENTS,
    EnvSpec,
    Task,
    agent_env_settings,
    expand_environment,
    resolve_env,
    resolve_task,
)

__all__ = [
    "ENVIRONMENTS",
    "EnvSpec",
    "Task",
    "agent_env_settings",
    "data_dir",
    "dataset_paths",
    "ensure_dataset",
    "expand_environment",
    "load_task",
    "make_env",
    "resolve_env",
    "resolve_task",
]
