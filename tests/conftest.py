"""Shared pytest set-up."""

import gc
import os
import sys

import pytest

# No test reaches the network: a missing expert dataset is the placement message, not a download from OGBench's
# host (envs/download.py). tests/test_download.py turns downloads back on against its own 127.0.0.1 server.
os.environ["SORL_NO_DOWNLOAD"] = "1"


@pytest.fixture(autouse=True)
def _usable_std_streams():
    # Some tests run CLI commands that swap sys.stderr while parsing; if a stream saved from an earlier test (a
    # capsys buffer pytest has since closed) is ever put back, later output would fail on a closed file.
    for name in ("stdout", "stderr"):
        if getattr(getattr(sys, name), "closed", False):
            setattr(sys, name, getattr(sys, f"__{name}__"))
    yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    # Every XLA:CPU executable holds ~6 memory mappings while a jit cache keeps it. Kept for the whole suite, ~1000
    # tests' programs reach the kernel's limit (vm.max_map_count, 65530): LLVM's next allocation fails and the
    # process dies in libgcc_s's unwinder with no Python traceback (reproduced with the limit lowered to 3000:
    # "LLVM compilation error: Cannot allocate memory", then the same segfault). Released after each test file.
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
        gc.collect()


TINY_SORL_TASK = "cube-single-play-singletask-task1-v0"


@pytest.fixture(scope="session")
def tiny_sorl_run(tmp_path_factory):
    """(run directory, data directory, task) of a SORL run trained for 20 updates on a 2-episode dataset, shared by the
    probes' tests (each writes its own file into it)."""
    from envs.datasets import ensure_dataset
    from runner import train

    root = tmp_path_factory.mktemp("tiny-sorl-run")
    ensure_dataset(TINY_SORL_TASK, root / "data", episodes=2, workers=1, max_episode_steps=50, progress=False)
    overrides = {"actor_layer_size": "16", "value_layer_size": "16", "batch_size": "16", "denoise_timesteps": "2"}
    overrides["max_k_backprop"] = "2"
    run = root / "run"
    train.train(
        TINY_SORL_TASK, "sorl", seed=1, run_dir=run, data_dir=root / "data", steps=20, log_interval=10,
        eval_interval=20, eval_episodes=1, eval_K="1", eval_workers=1, eval_max_episode_steps=5,
        agent_overrides=overrides, progress=False,
    )  # fmt: skip
    return run, root / "data", TINY_SORL_TASK
