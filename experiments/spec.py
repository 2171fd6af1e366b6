"""Sweep specs: one TOML file names a study (agents x tasks x seeds x settings, one budget) and expands to runs.

    name = "sorl-paper"                       # default: the file's stem
    description = "..."
    agents = ["sorl"]                         # names from agents.AGENTS
    environments = ["cube-single-play"]       # each expands to its five tasks
    tasks = ["scene-play-task2"]              # and/or single tasks (any spelling `sorl train --task` takes)
    seeds = "1-8"                             # or [1, 2, 3], or "1-4,7"
    out = "runs/sorl-paper"                   # run directories go under it (default: runs/<name>)
    data_dir = "/data/ogbench"                # optional (default: $OGBENCH_DATA_DIR, else ~/.ogbench/data)

    [train]                                   # the budget, identical for every run of the study
    steps = 1_000_000
    log_interval = 5_000
    eval_interval = 100_000
    checkpoint_interval = 100_000             # optional (default: eval_interval)
    success_timing = "post"                   # "post" = the published protocol (ogbench < 1.2)
    train_episodes = 1000                     # optional: episodes if a missing dataset must be generated
    keep_checkpoints = 3                      # optional: checkpoints kept on disk

    # [train] and [eval] keys, defaults and checks are runner.settings.TrainSettings fields (`spec=` there)
    [eval]                                    # the (K, N) grid evaluated during and at the end of training
    K = [1, 2, 4, 8]
    N = [1]
    episodes = 50
    max_episode_steps = 200                   # optional: cut evaluation episodes (quick studies only)
    workers = 8                               # optional: evaluation processes per run
    envs = 16                                 # optional: environments stepped at once (default: one per episode)
    [eval.fql]                                # optional per-agent overrides of the grid
    K = [1]

    [settings]                                # --agent.KEY=VALUE for every run (where the agent has KEY)
    batch_size = 256
    [settings.sorl]                           # only for sorl
    denoise_timesteps = 8
    [settings.cube-single-play]               # only on this environment
    discount = 0.99
    [settings.cube-single-play.sorl]          # only for sorl on this environment
    q_loss_coef = 10

    [grid]                                    # Cartesian product of values: one variant per combination
    alpha = [1.0, 10.0]
    [grid.sorl]                               # a grid that only sorl runs vary over
    max_k_backprop = [1, 8]

    [[variants]]                              # and/or an explicit list of variants (product with the grid)
    name = "released"
    released_update = true

    [launcher]                                # defaults for `sorl sweep` flags (the flags win)
    max_parallel = 4
    group_seeds = false
    [launcher.slurm]                          # each also a `sorl sweep` flag (--partition, ...; --sbatch K=V)
    partition = "gpu"
    account = "my-lab"                        # optional: --account
    qos = "normal"                            # optional: --qos
    time = 1440                               # minutes per array task
    gpus = 1                                  # per array task (--gpus-per-node)
    cpus_per_task = 8
    mem_gb = 32                               # optional (default: the partition's)
    array_parallelism = 16                    # array tasks running at once
    setup = ["module load cuda"]              # optional: shell lines before each job
    [launcher.slurm.additional]               # optional: extra #SBATCH --KEY=VALUE lines
    mail-type = "END"
    [launcher.ray]
    address = "auto"
    cpus_per_run = 4
    gpus_per_run = 1

A key in an all-agents scope (`[settings]`, `[settings.ENV]`, `[grid]`, `[[variants]]`) applies to each agent
whose config has it and must exist in at least one; a key in an agent's scope must exist in that agent's config.
Per-environment settings of `envs.registry` apply anyway (defaults < environment settings < spec settings), so
writing them in a spec only makes them visible. Every combination is validated (`runner.train.resolve_agent_config`)
when the spec is loaded, so a bad value fails before anything runs.

Run directories: OUT/[VARIANT/]ENV-taskK/AGENT/seedS (VARIANT only when the agent has more than one variant or a
named one); logs: OUT/logs/<the same path with / replaced by __>.log.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner import multiseed, runs
from runner.settings import TrainSettings
from sorl.errors import SorlError, suggest
from sorl.validation import check_positive

SPECS_DIR = Path(__file__).resolve().parent / "specs"
"""The specs shipped with the project (`sorl sweep paper-sorl` finds experiments/specs/paper-sorl.toml)."""

TOP_KEYS = (
    "name",
    "description",
    "agents",
    "environments",
    "tasks",
    "seeds",
    "out",
    "data_dir",
    "train",
    "eval",
    "settings",
    "grid",
    "variants",
    "launcher",
)
# [train] and [eval] keys are fields of runner.settings.TrainSettings (their spec key, default and check live there)
TRAIN_KEYS = TrainSettings.spec_keys("train")
EVAL_KEYS = TrainSettings.spec_keys("eval")
LAUNCHER_KEYS = ("max_parallel", "group_seeds", "slurm", "ray")
SLURM_KEYS = (
    "partition",
    "time",
    "gpus",
    "cpus_per_task",
    "mem_gb",
    "array_parallelism",
    "account",
    "qos",
    "constraint",
    "folder",
    "additional",
    "setup",
)
RAY_KEYS = ("address", "cpus_per_run", "gpus_per_run")

TRAIN_DEFAULTS: dict[str, Any] = TrainSettings.spec_defaults("train")
EVAL_DEFAULTS: dict[str, Any] = TrainSettings.spec_defaults("eval")


# ------------------------------------------------------------------------------------------------ runs


@dataclasses.dataclass
class RunSpec:
    """One training run of a sweep: everything `runner.train.train` needs, plus where its log goes."""

    id: str
    """'[VARIANT/]ENV-taskK/AGENT/seedS': the run directory relative to the sweep's `out`."""
    task: str
    env: str
    agent: str
    seed: int
    variant: str
    run_dir: str
    log: str
    overrides: dict[str, str]
    """--agent.KEY=VALUE settings, as strings (exactly what `sorl train` would receive)."""
    train: dict[str, Any]
    """The run's `TrainSettings` as a dict (`TrainSettings.to_dict`; JSON travels to the worker processes)."""

    @property
    def group(self) -> tuple[str, str, str]:
        """Runs that differ only in the seed (they may share a process through multi-seed training)."""
        return (self.agent, self.variant, self.task)

    def train_kwargs(self) -> dict[str, Any]:
        return {
            **self.train,
            "seed": self.seed,
            "run_dir": self.run_dir,
            "agent_overrides": dict(self.overrides),
        }

    def settings(self) -> TrainSettings:
        return TrainSettings(**self.train)

    def command(self) -> str:
        """The equivalent `sorl train` command line."""
        flags = self.settings().command_flags()  # --steps first, then the run's identity, as sweeps always printed
        parts = ["sorl train", f"--task {self.task}", f"--agent {self.agent}", flags[0]]
        parts += [f"--seed {self.seed}", f"--run-dir {self.run_dir}", *flags[1:]]
        parts += [f"--agent.{k}={v}" for k, v in self.overrides.items()]
        return " ".join(parts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


# ------------------------------------------------------------------------------------------------ spec


@dataclasses.dataclass
class Spec:
    """A loaded, validated sweep spec."""

    name: str
    path: Path | None
    description: str
    agents: list[str]
    tasks: list[Any]  # envs.registry.Task
    seeds: list[int]
    out: Path
    data_dir: str | None
    train: dict[str, Any]
    eval: dict[str, Any]
    eval_by_agent: dict[str, dict[str, Any]]
    settings: dict[tuple[str | None, str | None], dict[str, Any]]
    """(environment or None, agent or None) -> settings."""
    grid: dict[str | None, dict[str, list[Any]]]
    """agent or None -> key -> values."""
    variants: list[dict[str, Any]]
    launcher: dict[str, Any]

    def where(self) -> str:
        return f"spec {self.path}" if self.path else f"spec {self.name!r}"

    # --------------------------------------------------------------------------------- expansion

    def agent_variants(self, agent: str) -> list[tuple[str, dict[str, Any]]]:
        """[(label, settings)] of one agent: the product of the grid (keys it has) and the explicit variants."""
        fields = agent_fields(agent)
        dims: dict[str, list[Any]] = {}
        for key, values in self.grid.get(None, {}).items():
            if key in fields:
                dims[key] = values
        dims.update(self.grid.get(agent, {}))
        combos: list[tuple[str, dict[str, Any]]] = [("", {})]
        if dims:
            combos = []
            for values in itertools.product(*dims.values()):
                chosen = dict(zip(dims, values, strict=True))
                combos.append((",".join(f"{k}={format_value(v)}" for k, v in chosen.items()), chosen))
        if not self.variants:
            return combos
        out: dict[str, dict[str, Any]] = {}
        for variant in self.variants:
            name = variant.get("name")
            settings = {k: v for k, v in variant.items() if k != "name" and k in fields}
            label = name or ",".join(f"{k}={format_value(v)}" for k, v in settings.items()) or "default"
            for glabel, gsettings in combos:
                # unnamed variants that mean the same for this agent (keys it lacks dropped) collapse into one
                out.setdefault(f"{label},{glabel}" if glabel else label, {**settings, **gsettings})
        return list(out.items())

    def overrides(self, agent: str, env: str, variant_settings: Mapping[str, Any]) -> dict[str, str]:
        """The --agent.KEY settings of one run, lowest precedence first: all, agent, env, env+agent, variant."""
        fields = agent_fields(agent)
        merged: dict[str, Any] = {}
        for scope in ((None, None), (None, agent), (env, None), (env, agent)):
            for key, value in self.settings.get(scope, {}).items():
                if key in fields:
                    merged[key] = value
        merged.update(variant_settings)
        return {k: format_value(v) for k, v in merged.items()}

    def eval_for(self, agent: str) -> dict[str, Any]:
        return {**self.eval, **self.eval_by_agent.get(agent, {})}

    def check(self) -> None:
        """Every (agent, variant, task) of the spec resolved and checked as its runs would be, before any runs:
        one SorlError naming the spec key and the task for a combination all of whose runs would fail (a pixel
        option on a state task, online steps on a pixel task or with stacked frames, a K the agent cannot take)."""
        for agent in self.agents:
            ev = self.eval_for(agent)
            for label, vsettings in self.agent_variants(agent):
                for task in self.tasks:
                    self._checked(agent, label, task, self.overrides(agent, task.env.name, vsettings), ev)

    def _checked(self, agent: str, label: str, task: Any, overrides: Mapping[str, str], ev: Mapping[str, Any]):
        from runner.train import resolve_agent_config

        where = f"{agent} on {task.env.name}" + (f" ({label})" if label else "")
        try:
            _, config, _ = resolve_agent_config(agent, task.env.name, overrides)
        except SorlError as e:
            raise SorlError(f"{self.where()}: {where}: {e}") from None
        check_run_settings(self.where(), agent, task, config, self.train, ev, "eval" + (
            f".{agent}" if "K" in self.eval_by_agent.get(agent, {}) else ""))  # fmt: skip
        return config

    def runs(self, out: str | Path | None = None, data_dir: str | Path | None = None) -> list[RunSpec]:
        """Every run of the sweep, validated, in a stable order (agent, variant, task, seed)."""
        root = Path(out) if out is not None else self.out
        root = root.expanduser().absolute()
        data = data_dir if data_dir is not None else (self.data_dir or os.environ.get("OGBENCH_DATA_DIR") or None)
        data = str(Path(data).expanduser().absolute()) if data else None
        result: list[RunSpec] = []
        for agent in self.agents:
            variants = self.agent_variants(agent)
            ev = self.eval_for(agent)
            for label, vsettings in variants:
                for task in self.tasks:
                    overrides = self.overrides(agent, task.env.name, vsettings)
                    self._checked(agent, label, task, overrides, ev)
                    for seed in self.seeds:
                        rel = runs.run_path(task.name, agent, seed, safe_name(label) if label else None)
                        run_id = rel.as_posix()
                        settings = TrainSettings.from_spec(self.train, ev, data_dir=data, progress=False)
                        result.append(
                            RunSpec(
                                id=run_id,
                                task=task.name,
                                env=task.env.name,
                                agent=agent,
                                seed=seed,
                                variant=label,
                                run_dir=str(root / rel),
                                log=str(root / "logs" / (run_id.replace("/", "__") + ".log")),
                                overrides=overrides,
                                train=settings.to_dict(),
                            )
                        )
        if not result:
            raise SorlError(
                f"{self.where()} expands to no runs (agents, tasks/environments and seeds must be non-empty)"
            )
        return result


# --------------------------------------------------------------------------------------------- loading


def find_spec(name: str | Path) -> Path:
    """A spec path as given, or a shipped spec by name ('paper-sorl' -> experiments/specs/paper-sorl.toml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (SPECS_DIR / f"{name}.toml", SPECS_DIR / str(name)):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in SPECS_DIR.glob("*.toml"))
    raise SorlError(
        f"spec {name} not found{suggest(str(name), shipped)}; give a .toml path or one of the shipped specs: "
        + ", ".join(shipped)
    )


def load_spec(name: str | Path) -> Spec:
    """Read and validate a spec file (SorlError, one line, naming the file and the problem)."""
    path = find_spec(name)
    if path.suffix.lower() != ".toml":
        raise SorlError(f"spec {path}: sweep specs are TOML files (.toml)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SorlError(f"spec {path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SorlError(f"spec {path} is unreadable: {e}") from None
    return parse_spec(raw, path)


def parse_spec(raw: Mapping[str, Any], path: Path | None = None) -> Spec:
    """Validate a spec given as a dict (what the TOML file parses to)."""
    from envs.registry import expand_environment, resolve_env, resolve_task

    where = f"spec {path}" if path else "spec"

    def fail(msg: str) -> SorlError:
        return SorlError(f"{where}: {msg}")

    if not isinstance(raw, Mapping):
        raise fail("must be a table of keys")
    _check_keys(raw, TOP_KEYS, "top-level key", fail)

    name = raw.get("name", path.stem if path else "sweep")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise fail(f"name={name!r} must be a non-empty string without '/'")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise fail("description must be a string")

    agents = _str_list(raw.get("agents", []), "agents", fail)
    from agents import AGENTS

    for agent in agents:
        if agent not in AGENTS:
            valid = sorted(AGENTS)
            raise fail(f"unknown agent {agent!r}{suggest(agent, valid)}; valid agents: {', '.join(valid)}")
    agents = list(dict.fromkeys(agents))

    tasks: list[Any] = []
    try:
        for env in _str_list(raw.get("environments", []), "environments", fail):
            tasks += expand_environment(env)
        for task in _str_list(raw.get("tasks", []), "tasks", fail):
            tasks.append(resolve_task(task))
    except SorlError as e:
        raise fail(str(e)) from None
    tasks = list(dict.fromkeys(tasks))  # Task is a frozen dataclass: duplicates collapse, order kept

    seeds = parse_seeds(raw.get("seeds", [0]), fail)

    out = raw.get("out", f"runs/{name}")
    if not isinstance(out, str) or not out:
        raise fail("out must be a directory path (a string)")
    data_dir = raw.get("data_dir")
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
        raise fail("data_dir must be a directory path (a string)")

    # budget
    train_raw = _table(raw.get("train", {}), "[train]", fail)
    _check_keys(train_raw, TRAIN_KEYS, "key in [train]", fail)
    train = {**TRAIN_DEFAULTS, **_section_values("train", train_raw, "train", fail)}

    eval_raw = _table(raw.get("eval", {}), "[eval]", fail)
    eval_by_agent: dict[str, dict[str, Any]] = {}
    eval_common: dict[str, Any] = {}
    for key, value in eval_raw.items():
        if isinstance(value, Mapping):
            if key not in AGENTS:
                raise fail(f"[eval.{key}]: unknown agent{suggest(key, list(AGENTS))}")
            _check_keys(value, EVAL_KEYS, f"key in [eval.{key}]", fail)
            eval_by_agent[key] = _section_values("eval", value, f"eval.{key}", fail)
        else:
            eval_common[key] = value
    _check_keys(eval_common, EVAL_KEYS, "key in [eval]", fail)
    evaluation = {**EVAL_DEFAULTS, **_section_values("eval", eval_common, "eval", fail)}

    # settings
    fields = {a: agent_fields(a) for a in agents}
    all_fields = sorted(set().union(*fields.values())) if fields else []

    def check_common(table: Mapping[str, Any], scope: str) -> None:
        for key, value in table.items():
            if not any(key in f for f in fields.values()):
                raise fail(
                    f"unknown setting {key!r} in {scope}{suggest(key, all_fields)}: no agent of the spec "
                    f"({', '.join(agents) or 'none'}) has it"
                )
            _scalar(value, f"{scope} {key}", fail)

    def check_agent(agent: str, table: Mapping[str, Any], scope: str, is_grid: bool = False) -> None:
        for key, value in table.items():
            if key not in fields[agent]:
                valid = sorted(fields[agent])
                raise fail(f"unknown setting {key!r} for {agent} in {scope}{suggest(key, valid)}")
            if is_grid:
                _grid_values(value, f"{scope} {key}", fail)
            else:
                _scalar(value, f"{scope} {key}", fail)

    def scope_agent(key: str, scope: str) -> str:
        if key in AGENTS:
            if key not in agents:
                raise fail(f"[{scope}.{key}]: agent {key} is not in the spec's agents ({', '.join(agents)})")
            return key
        raise fail(f"[{scope}.{key}]: not an agent of the spec{suggest(key, agents)}")

    settings: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    settings_raw = _table(raw.get("settings", {}), "[settings]", fail)
    common = {k: v for k, v in settings_raw.items() if not isinstance(v, Mapping)}
    check_common(common, "[settings]")
    settings[(None, None)] = common
    for key, sub in settings_raw.items():
        if not isinstance(sub, Mapping):
            continue
        if key in AGENTS:
            agent = scope_agent(key, "settings")
            check_agent(agent, sub, f"[settings.{agent}]")
            settings[(None, agent)] = dict(sub)
            continue
        try:
            env = resolve_env(key).name
        except SorlError:
            names = sorted(AGENTS) + _env_names()
            raise fail(f"[settings.{key}]: neither an agent nor an environment{suggest(key, names)}") from None
        env_common = {k: v for k, v in sub.items() if not isinstance(v, Mapping)}
        check_common(env_common, f"[settings.{key}]")
        settings[(env, None)] = {**settings.get((env, None), {}), **env_common}
        for akey, asub in sub.items():
            if isinstance(asub, Mapping):
                agent = scope_agent(akey, f"settings.{key}")
                check_agent(agent, asub, f"[settings.{key}.{agent}]")
                settings[(env, agent)] = {**settings.get((env, agent), {}), **asub}

    grid: dict[str | None, dict[str, list[Any]]] = {}
    grid_raw = _table(raw.get("grid", {}), "[grid]", fail)
    common_grid = {k: v for k, v in grid_raw.items() if not isinstance(v, Mapping)}
    for key, value in common_grid.items():
        if not any(key in f for f in fields.values()):
            raise fail(f"unknown setting {key!r} in [grid]{suggest(key, all_fields)}: no agent of the spec has it")
        common_grid[key] = _grid_values(value, f"[grid] {key}", fail)
    grid[None] = common_grid
    for key, sub in grid_raw.items():
        if isinstance(sub, Mapping):
            agent = scope_agent(key, "grid")
            check_agent(agent, sub, f"[grid.{agent}]", is_grid=True)
            grid[agent] = {k: _grid_values(v, f"[grid.{agent}] {k}", fail) for k, v in sub.items()}

    variants_raw = raw.get("variants", [])
    if not isinstance(variants_raw, list) or not all(isinstance(v, Mapping) for v in variants_raw):
        raise fail("variants must be an array of tables ([[variants]])")
    variants = []
    names_seen: set[str] = set()
    for i, v in enumerate(variants_raw):
        vname = v.get("name")
        if vname is not None and (not isinstance(vname, str) or not vname or "/" in vname):
            raise fail(f"variants[{i}].name={vname!r} must be a non-empty string without '/'")
        if vname in names_seen:
            raise fail(f"two variants are named {vname!r}")
        names_seen.add(vname)
        check_common({k: x for k, x in v.items() if k != "name"}, f"[[variants]] #{i + 1}")
        variants.append(dict(v))

    launcher = _table(raw.get("launcher", {}), "[launcher]", fail)
    _check_keys(launcher, LAUNCHER_KEYS, "key in [launcher]", fail)
    if "max_parallel" in launcher:
        _positive_int(launcher["max_parallel"], "launcher.max_parallel", fail)
    if "group_seeds" in launcher and not isinstance(launcher["group_seeds"], bool):
        raise fail("launcher.group_seeds must be true or false")
    for sub, keys in (("slurm", SLURM_KEYS), ("ray", RAY_KEYS)):
        _check_keys(_table(launcher.get(sub, {}), f"[launcher.{sub}]", fail), keys, f"key in [launcher.{sub}]", fail)
    _check_slurm(_table(launcher.get("slurm", {}), "[launcher.slurm]", fail), fail)

    spec = Spec(
        name=name,
        path=path,
        description=description,
        agents=agents,
        tasks=tasks,
        seeds=seeds,
        out=Path(out),
        data_dir=data_dir,
        train=train,
        eval=evaluation,
        eval_by_agent=eval_by_agent,
        settings=settings,
        grid=grid,
        variants=variants,
        launcher=launcher,
    )
    spec.check()  # every combination, now: a spec whose runs would all fail is refused before anything runs
    return spec


# ------------------------------------------------------------------------------------------- run checks


def agent_max_K(agent: str, config: Any) -> int | None:
    """The largest K an agent of `config` takes (its `max_K`, read off the config without building the agent);
    None where K does not apply or cannot be told without the agent."""
    import inspect

    from agents import get_agent

    prop = inspect.getattr_static(get_agent(agent), "max_K", None)
    if not isinstance(prop, property) or prop.fget is None:
        return None
    try:
        value = prop.fget(_ConfigOnly(config))
    except AttributeError:  # the property reads more than the config: told when the run starts
        return None
    return int(value) if value is not None else None


class _ConfigOnly:
    def __init__(self, config: Any):
        self.config = config


def check_run_settings(
    where: str, agent: str, task: Any, config: Any, train: Mapping[str, Any], ev: Mapping[str, Any], eval_scope: str
) -> None:
    """What `runner.pixels.pipeline` and the Trainer would refuse in every run of (agent, task), said now with the
    spec key: p_aug on a state task, online steps on a pixel task or with frame stacking, a K the agent does not take
    or above its largest (evaluation grid, online acting policy, filmed cell)."""
    name, pixels = task.name, bool(task.env.pixels)
    p_aug, frame_stack, online = train.get("p_aug"), train.get("frame_stack"), train.get("online_steps")
    if p_aug and not pixels:
        raise SorlError(
            f"{where}: [train] p_aug = {p_aug} shifts images, but {name} has state observations; drop p_aug or "
            "sweep pixel (visual-*) tasks"
        )
    if online and pixels:
        raise SorlError(
            f"{where}: [train] online_steps = {online}: {name} has pixel observations and the online phase "
            "supports state tasks only; drop online_steps or sweep state tasks"
        )
    if online and frame_stack and frame_stack > 1:
        raise SorlError(
            f"{where}: [train] online_steps = {online} with frame_stack = {frame_stack} on {name}: the online "
            "phase does not stack frames yet; drop one of them"
        )
    from agents import get_agent
    from sorl.agent import K_rule

    max_K = agent_max_K(agent, config)
    candidates = [(f"[{eval_scope}] K", k) for k in ev.get("K") or ()]
    if online and train.get("online_K") is not None:
        candidates.append(("[train] online_K", train["online_K"]))
    if ev.get("video_episodes") and ev.get("video_K") is not None:
        candidates.append(("[eval] video_K", ev["video_K"]))
    rule = K_rule(get_agent(agent))
    for key, K in candidates:  # the agent's own rule (`Agent.check_K`): a power of two for the shortcut agents
        if not rule.takes_K(K):
            try:
                rule.check_K(K, max_K, name=agent)
            except SorlError as e:
                raise SorlError(f"{where}: {key} = {K} on {name}: {e}") from None
    if max_K is not None:
        too_big = [(key, k) for key, k in candidates if k > max_K]
        if too_big:
            key, K = too_big[0]
            trained = "denoise_timesteps" if hasattr(config, "denoise_timesteps") else "the K it trains"
            raise SorlError(
                f"{where}: {key} = {K} on {name}: {agent} takes K up to {max_K} ({trained}); lower "
                f"{key.split()[-1]} or raise {trained}"
            )
    from runner.pixels import pipeline
    from runner.settings import TrainSettings

    try:  # anything else the run's pipeline refuses (e.g. a pixel task whose encoder was set to none)
        pipeline(task.env, TrainSettings.from_spec(train, ev), config)
    except SorlError as e:
        raise SorlError(f"{where}: {agent} on {name}: {e}") from None


# ------------------------------------------------------------------------------------------------ helpers


def agent_fields(agent: str) -> set[str]:
    from agents import get_agent

    return {f.name for f in dataclasses.fields(get_agent(agent).Config)}


def _env_names() -> list[str]:
    from envs.registry import ENVIRONMENTS

    return list(ENVIRONMENTS)


def format_value(value: Any) -> str:
    """A TOML value as a `--agent.KEY=VALUE` string."""
    if isinstance(value, bool):
        return "True" if value else "False"  # as Python and the README spell them (the parser takes both)
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def safe_name(label: str) -> str:
    """A variant label usable as one directory name."""
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", label)


def parse_seeds(value: Any, fail=None) -> list[int]:
    """[1, 2, 3], 3, "1-8" or "1-4,7" -> a list of distinct non-negative seeds, in order (`runner.multiseed`'s
    parser, whose message the spec prefixes)."""
    if isinstance(value, list) and not value:
        return []  # a spec with no seeds expands to no runs, and says so
    try:
        return list(multiseed.parse_seeds(value))
    except SorlError as e:
        raise (fail or SorlError)(str(e).replace("--seeds", "seeds", 1)) from None


def _check_keys(table: Mapping[str, Any], valid: Sequence[str], what: str, fail) -> None:
    for key in table:
        if key not in valid:
            raise fail(f"unknown {what} {key!r}{suggest(key, valid)}; valid: {', '.join(valid)}")


def _table(value: Any, what: str, fail) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(f"{what} must be a table")
    return dict(value)


def _str_list(value: Any, what: str, fail) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"{what} must be a list of names")
    return list(value)


def _check_slurm(slurm: Mapping[str, Any], fail) -> None:
    """[launcher.slurm] values: names are strings, counts whole numbers, `additional` a table of extra
    `#SBATCH --KEY=VALUE` lines, `setup` shell lines (what sbatch itself accepts is its own check, at submission)."""
    for key in ("partition", "account", "qos", "constraint", "folder"):
        if key in slurm and (not isinstance(slurm[key], str) or not slurm[key].strip()):
            raise fail(f"launcher.slurm.{key}={slurm[key]!r} must be a non-empty string")
    for key in ("time", "cpus_per_task", "array_parallelism"):
        if key in slurm:
            _positive_int(slurm[key], f"launcher.slurm.{key}", fail)
    if "gpus" in slurm and (isinstance(slurm["gpus"], bool) or not isinstance(slurm["gpus"], int) or slurm["gpus"] < 0):
        raise fail(f"launcher.slurm.gpus={slurm['gpus']!r} must be a whole number, 0 or more")
    mem = slurm.get("mem_gb", 1)
    if isinstance(mem, bool) or not isinstance(mem, int | float) or mem <= 0:
        raise fail(f"launcher.slurm.mem_gb={mem!r} must be a positive number")
    extra = _table(slurm.get("additional", {}), "[launcher.slurm.additional]", fail)
    for key, value in extra.items():
        if not isinstance(value, str | int | float | bool) or value is False or " " in key:
            raise fail(f"launcher.slurm.additional.{key}={value!r}: write KEY = VALUE (#SBATCH --KEY=VALUE) or true")
    setup = slurm.get("setup", [])
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise fail("launcher.slurm.setup must be a list of shell lines")


def _positive_int(value: Any, what: str, fail) -> int:
    try:
        check_positive(what, value)
    except SorlError as e:
        raise fail(str(e)) from None
    return value


def _scalar(value: Any, what: str, fail) -> None:
    ok = isinstance(value, bool | int | float | str) or (
        isinstance(value, list) and all(isinstance(v, bool | int | float | str) for v in value)
    )
    if not ok:
        raise fail(f"{what}: a setting must be a number, string, boolean or list of them")


def _grid_values(value: Any, what: str, fail) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise fail(f"{what}: a grid setting must be a non-empty list of values")
    for v in value:
        _scalar(v, what, fail)
    return list(value)


def _section_values(section: str, table: Mapping[str, Any], scope: str, fail) -> dict[str, Any]:
    """A [train] / [eval] table's values, each checked by its TrainSettings field (`scope.key=...: ...`); `steps = 0`
    beside `online_steps` is a pure-online run, as `sorl train --steps 0 --online-steps N` is."""
    pure_online = section == "train" and type(table.get("steps")) is int and table["steps"] == 0 and table.get(
        "online_steps"
    )
    return {
        key: 0 if pure_online and key == "steps" else TrainSettings.spec_value(section, key, v, f"{scope}.{key}", fail)
        for key, v in table.items()
    }
