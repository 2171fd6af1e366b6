"""The process the `local` launcher starts for one job: `python -m experiments.worker --outcomes FILE [--cores 0,1]`.

Reads the job's runs (a JSON list of `RunSpec` fields) from stdin, pins itself to `--cores` before JAX starts,
trains them (`experiments.launchers.execute_job`) and writes one outcome per run to FILE as JSON. Its own
stdout/stderr are the job's log (the launcher opens it); with `--log-each` every run also gets its own log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.worker")
    parser.add_argument("--outcomes", required=True)
    parser.add_argument("--cores", default="")
    parser.add_argument("--log-each", action="store_true")
    args = parser.parse_args(argv)
    if args.cores and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
        except (OSError, ValueError) as e:
            print(f"warning: could not pin to cores {args.cores}: {e}", flush=True)

    from experiments.launchers import execute_job
    from experiments.spec import RunSpec

    runs = [RunSpec(**r) for r in json.loads(sys.stdin.read())]
    outcomes = execute_job(runs, log=args.log_each)
    tmp = args.outcomes + ".tmp"
    with open(tmp, "w") as f:
        json.dump(outcomes, f)
    os.replace(tmp, args.outcomes)
    return 0 if all(o["status"] == "done" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
