"""What each past speed change buys, before and after, timed alternately in one process.

    python scripts/bench_changes.py [sorl bench's flags] [--agent.KEY=VALUE ...]

Runs `sorl bench` with the same flags (its training section always: the changes compare against its FLOPs and
compile time), then adds the figures under "changes" in its table or `--json` output, which
`experiments.bench.format_report` (and so a results page's bench block) shows. The changes, each 'before' against
the code as it is ('after': the single-seed training chunk, or the vmapped seeds):

1. the released update's policy gradient through the critic target (and one Adam stepped twice), against the
   paper's update (SORL's `released_update=False`; other agents have no such switch);
2. a jitted update and a host round trip per update, against a scanned chunk of updates;
3. no buffer donation, against donated agent and key buffers;
4. recompiling the chunk per 5000-update log interval (derived from the compile time), against reusing it;
5. vmapped seeds drawing K per seed (every `lax.switch` branch runs), against the seeds' shared K schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Runnable from a checkout as `python scripts/bench_changes.py`, where Python puts scripts/, not the root, on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench import (  # noqa: E402
    SIZES,
    BenchArgs,
    Runner,
    Size,
    agent_setup,
    format_report,
    initial_agent_state,
    interleaved,
    load_average,
    peak_rss_bytes,
    run_bench,
    single_seed_runner,
    stacked_seeds,
    synthetic_dataset,
    update_flops,
)
from sorl.errors import SorlError  # noqa: E402

LOG_INTERVAL = 5000
"""Updates between two logs of a training run: the recompiling 'before' of change 4 compiles once per interval."""


def before_after(
    before: Callable[[], float], after: Callable[[], float], reps: int, what: str, **extra: Any
) -> dict[str, Any]:
    """Median updates/s of `before` and `after`, timed alternately, and their ratio; `what` names the 'before'."""
    rates = interleaved({"before": before, "after": after}, reps)
    return {
        "before_updates_per_s": rates["before"],
        "after_updates_per_s": rates["after"],
        "speedup": rates["after"] / rates["before"],
        "before": what,
        **extra,
    }


def released_update(agent_cls, config, dataset, after: Runner, reps: int, training: Mapping[str, Any]):
    """Change 1: the released update lets the critic loss's gradient reach the policy through a' (and steps a shared
    Adam twice); the paper's update stops it. Each side's FLOPs per update from XLA's cost analysis."""
    import jax

    from sorl.data import sample_batch

    released = single_seed_runner(agent_cls, dataclasses.replace(config, released_update=True), dataset, after.n)
    batch = sample_batch(dataset, jax.random.PRNGKey(1), config.batch_size)
    flops = update_flops(released.agent, batch)
    return before_after(
        released,
        after,
        reps,
        "the released update: a' sampled with gradients, one Adam stepped twice",
        before_flops_per_update=flops["flops_per_update"],
        after_flops_per_update=training["flops_per_update"],
    )


def host_round_trip_per_update(agent_cls, config, dataset, n: int) -> Callable[[], float]:
    """Change 2's 'before': sample, update and fetch the info from the host once per update, `n` updates a call."""
    import jax

    from runner.train import distinct_buffers
    from sorl.data import sample_batch

    state = {
        "agent": distinct_buffers(initial_agent_state(agent_cls, config, 0)["agent"]),
        "key": jax.random.PRNGKey(2),
    }
    update = jax.jit(lambda a, b: a.train_update(b))
    sample = jax.jit(sample_batch, static_argnums=2)

    def run() -> float:
        t = time.perf_counter()
        agent, key = state["agent"], state["key"]
        for _ in range(n):
            key, sub = jax.random.split(key)
            agent, info = update(agent, sample(dataset, sub, config.batch_size))
            jax.device_get(info)
        state["agent"], state["key"] = agent, key
        return n / (time.perf_counter() - t)

    return run


def recompiled_chunk(after_updates_per_s: float, compile_s: float) -> dict[str, Any]:
    """Change 4, derived rather than timed: one compilation of the chunk per log interval."""
    train_s = LOG_INTERVAL / after_updates_per_s
    return {
        "before_updates_per_s": LOG_INTERVAL / (train_s + compile_s),
        "after_updates_per_s": after_updates_per_s,
        "speedup": (train_s + compile_s) / train_s,
        "before": f"derived: one compilation ({compile_s:.1f} s) per {LOG_INTERVAL}-update log interval",
    }


def per_seed_K(agent_cls, config, dataset, size: Size, n: int, reps: int) -> dict[str, Any]:
    """Change 5: S vmapped seeds, K drawn per seed (the step batched, so every lax.switch branch runs) against the
    shared K schedule (the step shared, one branch); total updates/s."""
    import jax

    from runner import multiseed
    from runner.train import train_chunk

    S = 4 if size.seeds[-1] >= 4 else size.seeds[-1]
    agents, rngs = stacked_seeds(agent_cls, config, S)
    compiled = multiseed.compile_chunk_seeds(agents, rngs, dataset, config.batch_size, n)
    shared = Runner(compiled, agents, rngs, dataset, n, S)
    agents, rngs = stacked_seeds(agent_cls, config, S)
    agents = agents.replace(step=jax.numpy.zeros((S,), agents.step.dtype))

    def each_seed_draws_K(a, r, d):
        return jax.vmap(lambda a1, r1: train_chunk(a1, r1, d, batch_size=config.batch_size, num_updates=n))(a, r)

    compiled = jax.jit(each_seed_draws_K, donate_argnums=(0, 1)).lower(agents, rngs, dataset).compile()
    return before_after(
        Runner(compiled, agents, rngs, dataset, n, S),
        shared,
        reps,
        f"{S} vmapped seeds drawing K per seed (every switch branch runs); figures are total updates/s",
        seeds=S,
    )


def bench_changes(agent_name: str, size: Size, overrides, dataset, training: Mapping[str, Any]) -> dict[str, Any]:
    """Before/after updates/s of each speed change that applies to the agent, in the order of the module's list."""
    agent_cls, config = agent_setup(agent_name, size, overrides)
    n, reps = size.chunk, max(3, size.reps - 2)
    after = single_seed_runner(agent_cls, config, dataset, n)
    out: dict[str, Any] = {}
    if hasattr(config, "released_update") and not config.released_update:
        out["stop_policy_gradient_through_critic_target"] = released_update(
            agent_cls, config, dataset, after, reps, training
        )
    out["scan_chunk_instead_of_host_round_trip_per_update"] = before_after(
        host_round_trip_per_update(agent_cls, config, dataset, n), after, reps, "jitted update called once per update"
    )
    no_donation = single_seed_runner(agent_cls, config, dataset, n, donate=False)
    out["donated_buffers"] = before_after(no_donation, after, reps, "no buffer donation")
    ups = out["donated_buffers"]["after_updates_per_s"]
    out["compiled_chunk_reused"] = recompiled_chunk(ups, training["compile_s"])
    if getattr(after.agent, "K_choices", None):
        out["vmapped_seeds_share_K"] = per_seed_K(agent_cls, config, dataset, size, n, reps)
    return out


def run(args: BenchArgs, agent_overrides: Mapping[str, str] | None = None, log=print) -> dict[str, Any]:
    """`sorl bench`'s figures for `args` (training added where not asked for), then the speed changes'."""
    from sorl.data import to_device

    if args.task is not None:
        raise SorlError("--task: the speed changes are timed on state data; leave --task out")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if "training" not in sections:
        args = dataclasses.replace(args, sections=",".join([*sections, "training"]))
    start = time.perf_counter()
    out = run_bench(args, agent_overrides, log=log)
    log("measuring what each speed change buys ...")
    size = SIZES[args.size]
    dataset = to_device(synthetic_dataset(size.transitions))  # the dataset the bench's training was timed on
    out["changes"] = bench_changes(args.agent, size, out["agent_overrides"], dataset, out["training"])
    out["machine"]["loadavg_at_end"] = load_average()
    out["machine"]["bench_process_peak_rss_bytes"] = peak_rss_bytes()
    out["bench_s"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> None:
    """`python scripts/bench_changes.py ...` (agent overrides as --agent.KEY=VALUE, typed as for `sorl bench`)."""
    from cli.main import parse_with_agent
    from runner.runs import jsonable

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, overrides = parse_with_agent(BenchArgs, ["bench", *argv])
        log = functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)  # JSON on stdout alone
        result = run(args, overrides, log=log)
    except SorlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(json.dumps(jsonable(result), indent=2, default=str) if args.json else format_report(result))


if __name__ == "__main__":
    main()
