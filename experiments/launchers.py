"""`sorl sweep`: expand a spec to runs, skip the finished ones, launch the rest on this machine, Slurm or Ray.

Launchers (all run `runner.train.train` on one or more runs of the same task and agent — a *job* — and report one
outcome per run; a failed run is reported with its log and does not stop the others):

- `local`: a pool of P worker slots on this machine; each job runs in its own process
  (`python -m experiments.worker`), pinned to its slot's share of the cores (cores // P, also its evaluation
  workers), stdout/stderr to the run's log. With P > 1 and a GPU, each process gets 0.9/P of its memory.
- `slurm`: `submitit` (one job array on Slurm, followed with `squeue`, so no accounting database is needed; a task
  requeued or preempted resumes its runs from their checkpoints, one cancelled or ended without a result is
  reported failed; tests/test_slurm.py runs it on a real single-node Slurm, `--submitit-cluster local` runs the
  same jobs as local processes through submitit's LocalExecutor).
- `ray`: Ray tasks on an existing cluster (`--address`), or on a local Ray instance started (and stopped) here.

`--group-seeds` makes one job of all pending seeds of one (agent, variant, task), trained together in that job's
process by `runner.train.train_seeds` (one dataset copy, one compilation, one evaluation pool).

A run counts as finished when its `results.json` exists: "complete" (with the spec's step budget) is skipped;
"failed" (a non-finite loss) is skipped and listed again unless `--retry-failed`. Re-running the same command
therefore resumes a sweep; a run killed half-way continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.spec import RunSpec, Spec, load_spec
from runner import runs as runs_lib
from sorl.errors import SorlError, suggest
from sorl.machine import available_cores

LAUNCHERS = ("local", "slurm", "ray")


# ----------------------------------------------------------------------------------------------- jobs


@dataclasses.dataclass
class Job:
    """Runs that share one process: one run, or (with --group-seeds) the seeds of one (agent, variant, task)."""

    runs: list[RunSpec]

    @property
    def id(self) -> str:
        if len(self.runs) == 1:
            return self.runs[0].id
        head = self.runs[0].id.rsplit("/", 1)[0]
        return f"{head}/seeds{','.join(str(r.seed) for r in self.runs)}"

    @property
    def log(self) -> str:
        if len(self.runs) == 1:
            return self.runs[0].log
        first = Path(self.runs[0].log)
        return str(first.parent / (self.id.replace("/", "__") + ".log"))


def make_jobs(runs: Sequence[RunSpec], group_seeds: bool) -> list[Job]:
    if not group_seeds:
        return [Job([r]) for r in runs]
    groups: dict[tuple[str, str, str], list[RunSpec]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    return [Job(g) for g in groups.values()]


def run_state(run: RunSpec) -> tuple[str, str | None]:
    """('complete' | 'failed' | 'pending', error) of one run of the sweep (`runner.runs.run_state`); a corrupt
    results.json counts as failed, with the line saying what to do, so it is reported and not silently rerun."""
    state, detail = runs_lib.run_state(run.run_dir, run.train["steps"] + (run.train.get("online_steps") or 0))
    return ("failed", detail) if state == "corrupt" else (state, detail)


# ---------------------------------------------------------------------------------- running one job


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


@contextlib.contextmanager
def redirect_output(path: str | Path) -> Iterator[None]:
    """Send this process's stdout and stderr (Python and C level) to `path` (appended) for the duration."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with path.open("a", buffering=1) as f:
        saved = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(f.fileno(), fd)
        except OSError:  # no usable file descriptors (unusual embedding): Python-level only
            pass
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            f.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _outcome(run: RunSpec, status: str, error: str | None, seconds: float) -> dict[str, Any]:
    return {
        "id": run.id,
        "run_dir": run.run_dir,
        "log": run.log,
        "status": status,
        "error": error,
        "seconds": round(seconds, 3),
    }


def execute_run(run: RunSpec, *, log: bool = True) -> dict[str, Any]:
    """Train one run in this process (output to its log when `log`); never raises for a failed run."""
    t0 = time.perf_counter()
    status, error = "failed", None
    ctx = redirect_output(run.log) if log else contextlib.nullcontext()
    with ctx:
        print(f"=== {run.id}\n$ {run.command()}", flush=True)
        try:
            from runner.train import train

            results = train(run.task, run.agent, **run.train_kwargs())
            if results.get("status") == "complete":
                status = "done"
            else:
                error = str(results.get("error") or f"run ended with status {results.get('status')!r}")
        except SorlError as e:
            error = str(e)
            print(f"error: {e}", flush=True)
        except KeyboardInterrupt as e:  # SIGTERM/SIGINT (runner.safety.Interrupted): said in the run's log, re-raised
            print(f"=== {run.id}: interrupted: {e}", flush=True)
            raise
        except Exception as e:  # noqa: BLE001 - a crash of one run must not stop the sweep
            traceback.print_exc()
            error = f"{type(e).__name__}: {_first_line(str(e)) or 'see the log'}"
        print(f"=== {run.id}: {status}" + (f" ({error})" if error else ""), flush=True)
    return _outcome(run, status, error, time.perf_counter() - t0)


def use_compile_cache(path: str | None) -> None:
    """Share JAX's persistent compilation cache between a sweep's processes (runs of one agent and environment
    compile the same programs). A cache directory the user already set wins."""
    if not path or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    if "jax" in sys.modules:  # imported already (a reused Ray worker): set it through the config
        import jax

        with contextlib.suppress(Exception):
            jax.config.update("jax_compilation_cache_dir", path)


def execute_job(runs: Sequence[RunSpec], *, log: bool = True, compile_cache: str | None = None) -> list[dict[str, Any]]:
    """All runs of one job, in this process; one outcome per run."""
    use_compile_cache(compile_cache)
    runs = list(runs)
    same_parent = len({str(Path(r.run_dir).parent) for r in runs}) == 1
    if len(runs) == 1 or not same_parent or any(Path(r.run_dir).name != runs_lib.seed_dir_name(r.seed) for r in runs):
        return [execute_run(r, log=log) for r in runs]
    return _execute_multi_seed(runs, log=log)


def _execute_multi_seed(runs: list[RunSpec], *, log: bool) -> list[dict[str, Any]]:
    """The seeds of `runs` (one task and agent, directories `PARENT/seed<S>`) trained together by
    `runner.train.train_seeds`; one outcome per seed, from its own results.json."""
    from runner.train import train_seeds

    t0 = time.perf_counter()
    job = Job(runs)
    kwargs = runs[0].train_kwargs()
    kwargs.pop("seed")
    kwargs.pop("run_dir")
    template = str(Path(runs[0].run_dir).parent / "seed{seed}")
    error = None
    ctx = redirect_output(job.log) if log else contextlib.nullcontext()
    with ctx:
        seeds = [r.seed for r in runs]
        print(f"=== {job.id}: seeds {seeds} vmapped in one process\n$ {runs[0].command()} (with --seeds)", flush=True)
        try:
            train_seeds(runs[0].task, runs[0].agent, seeds=seeds, run_dir=template, **kwargs)
        except SorlError as e:
            print(f"error: {e}", flush=True)
            error = str(e)
        except Exception as e:  # noqa: BLE001 - a crash must not stop the sweep
            traceback.print_exc()
            error = f"{type(e).__name__}: {_first_line(str(e)) or 'see the log'}"
    dt = time.perf_counter() - t0
    out = []
    for r in runs:  # each seed's own results.json says how it ended
        state, run_error = run_state(r)
        ok = state == "complete"
        out.append(
            {**_outcome(r, "done" if ok else "failed", None if ok else (run_error or error), dt), "log": job.log}
        )
    return out


def _with_workers(runs: Sequence[RunSpec], workers: int) -> list[RunSpec]:
    """Runs whose evaluation uses `workers` processes unless the spec fixed the number."""
    out = []
    for r in runs:
        if r.train.get("eval_workers") is None:
            r = dataclasses.replace(r, train={**r.train, "eval_workers": workers})
        out.append(r)
    return out


def _failed_job(job: Job, error: str, log: str | None = None) -> list[dict[str, Any]]:
    return [{**_outcome(r, "failed", error, 0.0), "log": log or job.log} for r in job.runs]


# --------------------------------------------------------------------------------------------- local


def default_parallel() -> int:
    """Runs at once on this machine when not told: one per 4 cores (each run evaluates on its cores)."""
    return max(1, len(available_cores()) // 4)


def launch_local(
    jobs: Sequence[Job],
    *,
    max_parallel: int,
    on_outcome: Callable[[dict[str, Any]], None],
    compile_cache: str | None = None,
) -> list[dict[str, Any]]:
    """Run the jobs in worker processes, at most `max_parallel` at once, cores divided between the slots."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    slots = WorkerSlots(max(1, min(max_parallel, len(jobs))), compile_cache)
    pool = ThreadPoolExecutor(slots.n, thread_name_prefix="sorl-sweep")
    outcomes: list[dict[str, Any]] = []
    try:
        for fut in as_completed([pool.submit(slots.run, job) for job in jobs]):
            for o in fut.result():
                outcomes.append(o)
                on_outcome(o)
    except BaseException:
        slots.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


class WorkerSlots:
    """`n` slots, each a share of this machine's cores: a job waits for a free slot and runs in a worker process
    (`python -m experiments.worker`) pinned to that slot's cores, its output to the job's log."""

    def __init__(self, n: int, compile_cache: str | None):
        self.n, self.compile_cache = n, compile_cache
        self.cores = available_cores()
        self.per = max(1, len(self.cores) // n)
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(n):
            self.free.put(i)
        self.procs: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self, job: Job) -> list[dict[str, Any]]:
        slot = self.free.get()
        try:
            if self.stopped.is_set():
                return _failed_job(job, "interrupted")
            return self.run_worker(job, [self.cores[(slot * self.per + j) % len(self.cores)] for j in range(self.per)])
        finally:
            self.free.put(slot)

    def run_worker(self, job: Job, cores: list[int]) -> list[dict[str, Any]]:
        """The job in one worker process on `cores`; its outcomes come back through a file the worker writes."""
        runs = _with_workers(job.runs, self.per)
        log = Path(job.log)
        log.parent.mkdir(parents=True, exist_ok=True)
        result_file = log.parent / f".outcome-{uuid.uuid4().hex}.json"
        cmd = [sys.executable, "-m", "experiments.worker", "--outcomes", str(result_file)]
        cmd += ["--cores", ",".join(map(str, cores)), *(["--log-each"] if len(runs) > 1 else [])]
        payload = json.dumps([dataclasses.asdict(r) for r in runs])
        with log.open("a") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, env=self.env())
            with self.lock:
                self.procs[proc.pid] = proc
            try:
                proc.communicate(payload.encode())
            finally:
                with self.lock:
                    self.procs.pop(proc.pid, None)
        try:
            result = json.loads(result_file.read_text())
            result_file.unlink()
            return result
        except (OSError, ValueError):
            return _failed_job(job, f"worker process exited with code {proc.returncode}")

    def env(self) -> dict[str, str]:
        """A worker's environment: its threads, its share of the GPU's memory, the sweep's compilation cache."""
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.per)
        if self.n > 1:
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.75, 0.9 / self.n):.2f}")
        if self.compile_cache:
            env.setdefault("JAX_COMPILATION_CACHE_DIR", self.compile_cache)
        return env

    def stop(self) -> None:
        """No new job starts; the worker processes this launcher started are terminated."""
        self.stopped.set()
        with self.lock:
            for proc in self.procs.values():
                proc.terminate()


# ---------------------------------------------------------------------------------------------- slurm


def run_job_remote(
    runs: list[RunSpec], workers: int | None = None, compile_cache: str | None = None
) -> list[dict[str, Any]]:
    """The function a Slurm (submitit) or Ray worker calls: train `runs`, each with its output in its log."""
    if workers:
        runs = _with_workers(runs, workers)
    return execute_job(runs, log=True, compile_cache=compile_cache)


class SlurmJobFunction:
    """`run_job_remote` as submitit's job function, with submitit's `checkpoint` hook: on Slurm's warning signal
    (USR2, `--signal` before the time limit or a preemption) submitit requeues the same call instead of failing a
    timed-out job. Nothing needs saving here: the runs resume from their own last checkpoint (the Trainer's), and
    a plain `scontrol requeue` (SIGTERM: the Trainer checkpoints at its next logged step) restarts the call the
    same way."""

    def __call__(
        self, runs: list[RunSpec], workers: int | None = None, compile_cache: str | None = None
    ) -> list[dict[str, Any]]:
        try:
            return run_job_remote(runs, workers, compile_cache)
        except KeyboardInterrupt as e:  # stopped at a checkpoint (requeue, preemption, scancel): no result, no trace
            print(f"interrupted: {_first_line(str(e))}", file=sys.stderr, flush=True)
            raise SystemExit(getattr(e, "exit_code", 130)) from None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclasses.dataclass
class SlurmOptions:
    cluster: str = "slurm"
    """submitit cluster: 'slurm', or 'local' / 'debug' to run the same jobs on this machine."""
    partition: str | None = None
    time: int = 1440
    """Minutes per job."""
    gpus: int = 0
    cpus_per_task: int = 8
    mem_gb: float | None = None
    array_parallelism: int | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra `#SBATCH --KEY=VALUE` lines (a value of true: `#SBATCH --KEY`)."""
    setup: list[str] = dataclasses.field(default_factory=list)
    """Shell lines the job script runs before the job (`module load ...`, `source ...`)."""
    folder: str | None = None
    """submitit's job folder (pickles and its own logs); default OUT/submitit."""
    wait: bool = True


REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout whose code the jobs run (put on the job's PYTHONPATH, so submitit can unpickle the job function)."""
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "SPECIAL_EXIT")  # fmt: skip
"""Slurm job states after which a job runs no more (REQUEUED, PENDING, RUNNING, ... are not among them)."""


def slurm_parallelism(options: SlurmOptions, max_parallel: int | None, n_jobs: int) -> int:
    return int(options.array_parallelism or max_parallel or n_jobs)


def slurm_parameters(options: SlurmOptions, name: str, n_jobs: int, max_parallel: int | None) -> dict[str, Any]:
    """submitit's `update_parameters` for the sweep's job array."""
    params: dict[str, Any] = {
        "name": f"sorl-{name}",
        "timeout_min": int(options.time),
        "cpus_per_task": int(options.cpus_per_task),
        "slurm_array_parallelism": slurm_parallelism(options, max_parallel, n_jobs),
        "slurm_setup": job_setup(options),
    }
    if options.gpus:
        params["gpus_per_node"] = int(options.gpus)
    if options.mem_gb:
        params["mem_gb"] = float(options.mem_gb)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key):
            params[f"slurm_{key}"] = getattr(options, key)
    if options.additional:
        params["slurm_additional_parameters"] = dict(options.additional)
    return params


def job_setup(options: SlurmOptions) -> list[str]:
    """The job script's lines before the job: the spec's `setup`, then this checkout on PYTHONPATH and the data
    directory the sweep sees (sbatch exports the submitting environment by default, but a cluster may not)."""
    import shlex

    lines = list(options.setup)
    lines.append(f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}")
    if os.environ.get("OGBENCH_DATA_DIR"):
        lines.append(f"export OGBENCH_DATA_DIR={shlex.quote(os.environ['OGBENCH_DATA_DIR'])}")
    return lines


def sbatch_lines(options: SlurmOptions, n_jobs: int, max_parallel: int | None) -> list[str]:
    """The `#SBATCH` lines the sweep's job array is submitted with (what `--dry-run` shows; submitit writes the
    same lines, plus its own --output/--error/--signal, into the script it submits)."""
    import shlex

    flags: dict[str, Any] = {
        "array": f"0-{n_jobs - 1}%{min(n_jobs, slurm_parallelism(options, max_parallel, n_jobs))}",
        "time": int(options.time),
        "cpus_per_task": int(options.cpus_per_task),
    }
    if options.gpus:
        flags["gpus_per_node"] = int(options.gpus)
    if options.mem_gb:
        flags["mem"] = f"{int(float(options.mem_gb) * 1024)}MB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key):
            flags[key] = getattr(options, key)
    flags.update(options.additional)
    out = []
    for key in sorted(flags):
        value = flags[key]
        flag = "--" + key.replace("_", "-")
        out.append(f"#SBATCH {flag}" if value is True else f"#SBATCH {flag}={shlex.quote(str(value))}")
    return out


def parse_sbatch(items: Sequence[str] | None) -> dict[str, Any]:
    """`--sbatch KEY=VALUE` / `--sbatch KEY` (as in `#SBATCH --KEY=VALUE`) to a dict of extra sbatch options."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = str(item).lstrip("-").partition("=")
        if not key or " " in key:
            raise SorlError(f"--sbatch {item!r}: write KEY=VALUE (e.g. --sbatch mail-type=END) or KEY")
        out[key] = value if eq else True
    return out


def slurm_states(array_ids: Sequence[str]) -> dict[str, str] | None:
    """{"ARRAY_TASK": state} of the array jobs from squeue (ended jobs too, while slurmctld remembers them:
    MinJobAge); None when squeue cannot tell. This works without Slurm's accounting database, which submitit's
    own check (sacct) needs."""
    if not array_ids:
        return {}
    cmd = ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(sorted(set(array_ids)))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state:
            states[job_id] = state.strip().upper()
    return states


def _sbatch_refusal(error: BaseException) -> str:
    """The line of sbatch's refusal that says why (`sbatch: error: invalid partition specified: gpu`)."""
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line]
    line = lines[0] if lines else _first_line(str(error))
    return line[line.index("error:") + len("error:") :].strip() if "error:" in line else line


def _ended_without_result(sjob: Any, state: str) -> str:
    """What to tell the user about an array task that ended with no result from submitit."""
    if state == "CANCELLED":
        why = "was cancelled (scancel, or preempted without requeue)"
    elif state == "GONE":  # a pending array task cancelled before it ran leaves no record
        why = "left Slurm's queue without a result (cancelled before it started, or forgotten by slurmctld)"
    elif state == "TIMEOUT":
        why = "ran out of time (raise --time, or --checkpoint-interval so a requeue loses less)"
    elif state in ("OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "DEADLINE"):
        why = f"ended {state}"
    else:
        why = f"ended {state} without a result (see {sjob.paths.stderr})"
    return (
        f"Slurm job {sjob.job_id} {why}; its runs keep their last checkpoint: rerun the same `sorl sweep` "
        "command to resubmit them (complete runs are skipped)"
    )


def _import_submitit() -> Any:
    """submitit, imported without its logging set-up (`logging.config.dictConfig` at import closes every handler
    already installed, absl's included, whose stream may be a stream this process still writes to); its warnings
    still reach stderr through logging's last-resort handler. Its jobs configure their own logging as usual."""
    if "submitit" not in sys.modules:
        saved = os.environ.get("SUBMITIT_LOG_LEVEL")
        os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise SorlError("the slurm launcher needs submitit: pip install submitit") from None
        finally:
            if saved is None:
                os.environ.pop("SUBMITIT_LOG_LEVEL", None)
            else:
                os.environ["SUBMITIT_LOG_LEVEL"] = saved
    return sys.modules["submitit"]


SLURM_HINT = "run on a Slurm login node, or use --launcher local (--submitit-cluster local tests this path here)"


def launch_slurm(
    jobs: Sequence[Job],
    *,
    options: SlurmOptions,
    folder: Path,
    name: str,
    max_parallel: int | None,
    on_outcome: Callable[[dict[str, Any]], None],
    compile_cache: str | None = None,
    poll_s: float = 5.0,
) -> list[dict[str, Any]]:
    """The jobs as one Slurm job array (followed until each has a result unless `options.wait` is off), or, on
    submitit's local/debug cluster, as local processes within a window of `max_parallel`."""
    executor = slurm_executor(options, folder, name, len(jobs), max_parallel)
    workers = int(options.cpus_per_task)
    outcomes: list[dict[str, Any]] = []

    def report(result: list[dict[str, Any]]) -> None:
        for o in result:
            outcomes.append(o)
            on_outcome(o)

    try:
        if options.cluster != "slurm":
            _run_windowed(executor, jobs, max(1, max_parallel or len(jobs)), workers, compile_cache, report)
            return outcomes
        submitted = _submit_array(executor, jobs, workers, compile_cache)
        array_id = submitted[0].job_id.split("_")[0]
        print(f"submitted {len(jobs)} jobs as Slurm array {array_id}", flush=True)
        if options.wait:
            _follow_array(array_id, list(zip(submitted, jobs, strict=True)), report, poll_s)
    except FileNotFoundError as e:
        raise SorlError(f"slurm launcher: {e.filename or 'sbatch'} not found; {SLURM_HINT}") from None
    return outcomes


def slurm_executor(options: SlurmOptions, folder: Path, name: str, n_jobs: int, max_parallel: int | None) -> Any:
    """submitit's executor for the sweep's jobs, its parameters set (the sbatch options on a real Slurm)."""
    submitit = _import_submitit()
    if options.cluster not in ("slurm", "local", "debug"):
        raise SorlError(f"--submitit-cluster {options.cluster!r}: use slurm, local or debug")
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster)
    except (RuntimeError, ValueError, OSError) as e:
        raise SorlError(f"slurm launcher: {_first_line(str(e))}; {SLURM_HINT}") from None
    params = slurm_parameters(options, name, n_jobs, max_parallel)
    if options.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    try:
        executor.update_parameters(**params)
    except (NameError, AssertionError, ValueError) as e:
        raise SorlError(f"slurm launcher: bad parameter ({_first_line(str(e))})") from None
    return executor


def _submit_array(executor: Any, jobs: Sequence[Job], workers: int, compile_cache: str | None) -> list[Any]:
    try:  # submitit prints sbatch's refusal to stderr before raising it: keep that to the one line below
        with contextlib.redirect_stderr(io.StringIO()):
            n = len(jobs)
            return executor.map_array(SlurmJobFunction(), [j.runs for j in jobs], [workers] * n, [compile_cache] * n)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - sbatch refused the script (submitit: FailedJobError)
        raise SorlError(f"sbatch refused the job array: {_sbatch_refusal(e)}; nothing was submitted") from None


def _job_result(sjob: Any, job: Job) -> list[dict[str, Any]]:
    """A submitit job's outcomes: its result, or each of its runs failed with why."""
    try:
        return sjob.result()
    except Exception as e:  # noqa: BLE001 - the job crashed, timed out or was cancelled
        error = f"submitit job {sjob.job_id} failed: {_first_line(str(e))[:300]}"
        return _failed_job(job, error, str(sjob.paths.stderr))


def _follow_array(
    array_id: str, pending: list[tuple[Any, Job]], report: Callable[[list[dict[str, Any]]], None], poll_s: float
) -> None:
    """Poll until every array task has reported: with its result, or as failed once it has ended without one."""
    gone: dict[str, int] = {}  # job id -> polls it has been ended (or unknown to squeue) with no result
    while pending:
        states = slurm_states([array_id])
        still = []
        for sjob, job in pending:
            result = _array_task_outcome(sjob, job, states, gone)
            if result is None:
                still.append((sjob, job))
            else:
                report(result)
        pending = still
        if pending:
            time.sleep(poll_s)


def _array_task_outcome(
    sjob: Any, job: Job, states: dict[str, str] | None, gone: dict[str, int]
) -> list[dict[str, Any]] | None:
    """One array task's outcomes once it has ended; None while it may still run (or its result is on its way)."""
    if sjob.paths.result_pickle.exists():
        return _job_result(sjob, job)
    if states is None:  # squeue cannot tell: submitit's own check (sacct)
        return _job_result(sjob, job) if sjob.done() else None
    state = states.get(sjob.job_id, "UNKNOWN").split()[0]
    if state not in ENDED and state != "UNKNOWN":
        gone.pop(sjob.job_id, None)
        return None
    gone[sjob.job_id] = gone.get(sjob.job_id, 0) + 1
    if gone[sjob.job_id] < 3:  # the result file would be there by now
        return None
    state = "GONE" if state == "UNKNOWN" else state
    return _failed_job(job, _ended_without_result(sjob, state), str(sjob.paths.stderr))


def _run_windowed(
    executor: Any,
    jobs: Sequence[Job],
    window: int,
    workers: int,
    compile_cache: str | None,
    report: Callable[[list[dict[str, Any]]], None],
) -> None:
    """submitit's local/debug executor: at most `window` jobs submitted at once."""
    todo = list(jobs)
    running: list[tuple[Any, Job]] = []
    while todo or running:
        while todo and len(running) < window:
            job = todo.pop(0)
            running.append((executor.submit(run_job_remote, job.runs, workers, compile_cache), job))
        still = []
        for sjob, job in running:
            if sjob.done():
                report(_job_result(sjob, job))
            else:
                still.append((sjob, job))
        running = still
        if running:
            time.sleep(0.5)


# ------------------------------------------------------------------------------------------------ ray


@dataclasses.dataclass
class RayOptions:
    address: str | None = None
    """An existing Ray cluster ('auto' or 'ray://host:10001'); none starts a local instance for the sweep."""
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    num_cpus: int | None = None
    """CPUs of the local instance (default: all)."""


def launch_ray(
    jobs: Sequence[Job],
    *,
    options: RayOptions,
    max_parallel: int | None,
    on_outcome: Callable[[dict[str, Any]], None],
    compile_cache: str | None = None,
) -> list[dict[str, Any]]:
    """The jobs as Ray tasks, at most `max_parallel` at once; a local Ray instance started here is stopped after."""
    try:
        import ray
    except ImportError:
        raise SorlError("the ray launcher needs Ray: pip install 'sorl[ray]' (or pip install ray)") from None
    started = _start_ray(ray, options)
    remote = ray.remote(run_job_remote).options(
        num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=0
    )
    workers = max(1, int(options.cpus_per_run))
    window = max(1, max_parallel or len(jobs))
    todo = list(jobs)
    running: dict[Any, Job] = {}
    outcomes: list[dict[str, Any]] = []
    try:
        while todo or running:
            while todo and len(running) < window:
                job = todo.pop(0)
                running[remote.remote(job.runs, workers, compile_cache)] = job
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task or its worker died
                    result = _failed_job(job, f"Ray task failed: {_first_line(str(e))[:300]}")
                for o in result:
                    outcomes.append(o)
                    on_outcome(o)
    except BaseException:
        for ref in running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
    return outcomes


def _start_ray(ray: Any, options: RayOptions) -> bool:
    """Connect to `options.address`, or start a local instance (True: this launcher started it, and stops it)."""
    if ray.is_initialized():
        return False
    try:
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
            return False
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=False)
        return True
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SorlError(f"ray launcher: cannot connect to Ray ({_first_line(str(e))[:200]})") from None


# ------------------------------------------------------------------------------------ launcher options


SLURM_ONLY = (
    "partition", "time", "gpus", "cpus_per_task", "mem_gb", "array_parallelism", "account", "qos", "constraint",
    "submitit_folder", "sbatch",
)  # fmt: skip
"""`sorl sweep` flags that only the slurm launcher reads (besides --submitit-cluster and --no-wait)."""
RAY_ONLY = ("address", "cpus_per_run", "gpus_per_run")
"""`sorl sweep` flags that only the ray launcher reads."""
_AT_LEAST = {  # flag -> its smallest value
    "time": 1, "gpus": 0, "cpus_per_task": 1, "mem_gb": 0.001, "array_parallelism": 1, "cpus_per_run": 1,
    "gpus_per_run": 0, "max_parallel": 1,
}  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_launcher_options(launcher: str, options: Any) -> None:
    """The `sorl sweep` flags given (`options`: the parsed arguments, unset flags None) against the launcher
    chosen, before the spec is read: an unknown launcher, a flag that only another launcher reads (it would be
    ignored without a word), or a number out of range is one SorlError saying which option needs which launcher."""
    if launcher not in LAUNCHERS:
        valid = ", ".join(LAUNCHERS)
        raise SorlError(f"unknown launcher {launcher!r}{suggest(launcher, LAUNCHERS)}; use one of: {valid}")
    given = {name for name in (*SLURM_ONLY, *RAY_ONLY) if getattr(options, name, None) is not None}
    if getattr(options, "submitit_cluster", "slurm") != "slurm":
        given.add("submitit_cluster")
    if getattr(options, "wait", True) is False:
        given.add("no_wait")
    for name in sorted(given):
        needs = "ray" if name in RAY_ONLY else "slurm"
        if needs != launcher:
            flag = "--no-wait" if name == "no_wait" else _flag(name)
            raise SorlError(
                f"{flag} is an option of the {needs} launcher; with --launcher {launcher} it would be ignored: "
                f"add --launcher {needs} or drop {flag}"
            )
    cluster = getattr(options, "submitit_cluster", "slurm")
    if cluster not in ("slurm", "local", "debug"):
        raise SorlError(f"--submitit-cluster {cluster!r}: use slurm, local or debug")
    for name, low in _AT_LEAST.items():
        value = getattr(options, name, None)
        if value is not None and (isinstance(value, bool) or value < low):
            what = "a positive number" if isinstance(low, float) else f"at least {low}"
            raise SorlError(f"{_flag(name)}={value}: must be {what}")


# ---------------------------------------------------------------------------------------------- sweep


@dataclasses.dataclass
class Summary:
    name: str
    total: int
    done: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    """Runs whose results.json already says complete."""
    failed_before: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Runs whose results.json says failed (skipped unless --retry-failed)."""
    submitted: int = 0

    def line(self) -> str:
        parts = [f"{len(self.done)} done", f"{len(self.failed)} failed", f"{len(self.skipped)} skipped (complete)"]
        if self.failed_before:
            parts.append(f"{len(self.failed_before)} skipped (failed before; --retry-failed reruns them)")
        if self.submitted:
            parts.append(f"{self.submitted} submitted, not waited for")
        return f"sweep {self.name}: {self.total} runs: " + ", ".join(parts)


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


@dataclasses.dataclass(frozen=True)
class MissingData:
    """An environment whose dataset a sweep's pending runs need and the data directory lacks."""

    env: str
    train_file: Path
    generatable: bool
    data_dir: str | None

    def line(self) -> str:
        """One summary line: where it is missing and whether it can be generated here or must be fetched."""
        where = f"missing from {self.train_file.parent}"
        if self.generatable:
            flag = f" --data-dir {self.data_dir}" if self.data_dir else ""
            return (
                f"data: {self.env}: {where}; can be generated here (the first run that needs it does, or "
                f"`sorl data generate {self.env}{flag}` first)"
            )
        return (
            f"data: {self.env}: {where}; cannot be generated here, must be fetched: place the published "
            f"{self.train_file.name} and its -val file there"
        )


def missing_datasets(runs: Sequence[RunSpec]) -> list[MissingData]:
    """One entry per (environment, data directory) whose dataset the runs need and is not there (nothing read)."""
    from envs.datasets import dataset_paths
    from envs.registry import resolve_env

    out: list[MissingData] = []
    seen: set[tuple[str, str | None]] = set()
    for r in runs:
        key = (r.env, r.train.get("data_dir"))
        if key in seen:
            continue
        seen.add(key)
        train_file, val_file = dataset_paths(r.env, r.train.get("data_dir"))
        if not (train_file.is_file() and val_file.is_file()):
            out.append(MissingData(r.env, train_file, resolve_env(r.env).generatable, r.train.get("data_dir")))
    return out


def check_datasets(runs: Sequence[RunSpec]) -> list[str]:
    """Notes on datasets the pending runs need; SorlError if one is missing and cannot be generated here."""
    missing = missing_datasets(runs)
    fetch = [m for m in missing if not m.generatable]
    if fetch:
        names = ", ".join(m.env for m in fetch)
        raise SorlError(
            f"datasets missing and not generatable here: {names}; place the published files in "
            f"{fetch[0].train_file.parent} (e.g. {fetch[0].train_file.name}), or sweep a spec without them "
            "(experiments/specs/local.toml); --no-check-data skips this check; nothing was launched"
        )
    return [
        f"note: {m.train_file} is missing; the first run that needs it generates it "
        f"(or run `sorl data generate {m.env}" + (f" --data-dir {m.data_dir}" if m.data_dir else "") + "` first)"
        for m in missing
    ]


def sweep(
    spec: str | Path | Spec,
    *,
    launcher: str = "local",
    dry_run: bool = False,
    max_parallel: int | None = None,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    group_seeds: bool | None = None,
    retry_failed: bool = False,
    check_data: bool = True,
    compile_cache: bool = True,
    slurm: SlurmOptions | None = None,
    ray_options: RayOptions | None = None,
    progress: bool = True,
) -> Summary:
    """Expand `spec`, skip finished runs, launch the others with `launcher`; prints a summary and returns it."""
    if launcher not in LAUNCHERS:
        valid = ", ".join(LAUNCHERS)
        raise SorlError(f"unknown launcher {launcher!r}{suggest(launcher, LAUNCHERS)}; use one of: {valid}")
    if max_parallel is not None and (isinstance(max_parallel, bool) or max_parallel < 1):
        raise SorlError(f"--max-parallel={max_parallel}: must be at least 1")
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    slurm, ray_options = slurm or SlurmOptions(), ray_options or RayOptions()
    runs = spec.runs(out=out, data_dir=data_dir)
    root = Path(runs[0].run_dir).parents[len(Path(runs[0].id).parts) - 1]
    summary, states, pending = triage(spec.name, runs, retry_failed)
    max_parallel = max_parallel or spec.launcher.get("max_parallel")
    jobs = make_jobs(pending, spec.launcher.get("group_seeds", False) if group_seeds is None else group_seeds)
    print(
        f"sweep {spec.name}: {len(runs)} runs ({', '.join(spec.agents)}; {_n(len(spec.tasks), 'task')}; "
        f"{_n(len(spec.seeds), 'seed')}) under {root}: {len(summary.skipped)} complete, "
        f"{len(summary.failed_before)} failed before, {len(pending)} to run as {len(jobs)} jobs ({launcher})",
        flush=True,
    )
    if dry_run:
        print_plan(runs, states, jobs, launcher, slurm, max_parallel, pending if check_data else [])
        return summary
    if not jobs:
        print(summary.line(), flush=True)
        return summary
    if check_data and not (launcher == "ray" and ray_options.address):
        for note in check_datasets(pending):
            print(note, flush=True)
    on_outcome = Progress(summary, len(pending), progress)
    try:
        cache = str(root / ".jax-cache") if compile_cache else None
        launch(launcher, jobs, on_outcome, cache, spec.name, root, max_parallel, slurm, ray_options)
        if launcher == "slurm" and not slurm.wait:
            summary.submitted = len(pending)
    finally:
        on_outcome.close()
    print_summary(summary)
    return summary


def launch(
    launcher: str,
    jobs: Sequence[Job],
    on_outcome: Callable[[dict[str, Any]], None],
    compile_cache: str | None,
    name: str,
    root: Path,
    max_parallel: int | None,
    slurm: SlurmOptions,
    ray_options: RayOptions,
) -> None:
    """The jobs on `launcher`, each run's outcome to `on_outcome`."""
    if launcher == "local":
        parallel = max_parallel or default_parallel()
        launch_local(jobs, max_parallel=parallel, on_outcome=on_outcome, compile_cache=compile_cache)
    elif launcher == "slurm":
        folder = Path(slurm.folder) if slurm.folder else root / "submitit"
        launch_slurm(jobs, options=slurm, folder=folder, name=name, max_parallel=max_parallel,
                     on_outcome=on_outcome, compile_cache=compile_cache)  # fmt: skip
    else:
        launch_ray(jobs, options=ray_options, max_parallel=max_parallel, on_outcome=on_outcome,
                   compile_cache=compile_cache)  # fmt: skip


def triage(name: str, runs: Sequence[RunSpec], retry_failed: bool) -> tuple[Summary, dict[str, str], list[RunSpec]]:
    """(summary with the runs already finished, each run's state, the runs left to launch): complete runs are
    skipped, failed ones too unless `retry_failed`."""
    summary = Summary(name, len(runs))
    states: dict[str, str] = {}
    pending: list[RunSpec] = []
    for r in runs:
        state, error = run_state(r)
        states[r.id] = state
        if state == "complete":
            summary.skipped.append(r.id)
        elif state == "failed" and not retry_failed:
            summary.failed_before.append({"id": r.id, "error": error, "log": r.log, "run_dir": r.run_dir})
        else:
            pending.append(r)
    return summary, states, pending


def print_plan(
    runs: Sequence[RunSpec],
    states: Mapping[str, str],
    jobs: Sequence[Job],
    launcher: str,
    slurm: SlurmOptions,
    max_parallel: int | None,
    check_data_of: Sequence[RunSpec],
) -> None:
    """`--dry-run`: each run's state, each command to run, the job array's sbatch lines, the missing datasets."""
    for r in runs:
        print(f"  {states[r.id]:<9} {r.id}")
    for job in jobs:
        for r in job.runs:
            print(f"    $ {r.command()}")
    if launcher == "slurm" and jobs:  # the job array's sbatch options, as they will be submitted
        print(f"  slurm: {_n(len(jobs), 'job')} as one array, submitted with:")
        for line in sbatch_lines(slurm, len(jobs), max_parallel):
            print(f"    {line}")
        for line in slurm.setup:
            print(f"    {line}  (setup)")
    for m in missing_datasets(check_data_of):  # what a launch would need: one line per environment lacking its data
        print(m.line(), flush=True)
    print("dry run: nothing launched", flush=True)


class Progress:
    """Each run's outcome counted into the sweep's summary: on a progress bar, or (without one) a line per failure."""

    def __init__(self, summary: Summary, total: int, bar: bool):
        self.summary, self.bar = summary, None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="run", desc=f"sweep {summary.name}", dynamic_ncols=True)

    def __call__(self, o: dict[str, Any]) -> None:
        summary = self.summary
        (summary.done if o["status"] == "done" else summary.failed).append(o)
        msg = None if o["status"] == "done" else f"failed: {o['id']}: {o['error']} (log: {o['log']})"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({"done": len(summary.done), "failed": len(summary.failed)}, refresh=False)
            if msg:
                self.bar.write(msg)
        elif msg:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_summary(summary: Summary) -> None:
    print(summary.line(), flush=True)
    for o in summary.failed:
        print(f"  failed: {o['id']}: {o['error']} (log: {o['log']})", flush=True)
    for o in summary.failed_before:
        print(f"  failed before: {o['id']}: {o['error']} (results: {o['run_dir']}/results.json)", flush=True)
