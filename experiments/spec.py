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
    [train.sac]                               # optional per-agent [train] values (an online-only agent's budget)
    steps = 0
    online_steps = 100_000

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

Checks, in order: the file's shape (its keys and their types) is `SpecFile`, a pydantic model whose first error is
said as one line (`refusal`); then what the project's registries decide: agent and task names, [train]/[eval]
values (each by its `TrainSettings` field), and the settings scopes against the agents' configs (`Scopes`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import ErrorDetails

from runner import multiseed, runs
from runner.settings import TrainSettings
from sorl.errors import SorlError, suggest

SPECS_DIR = Path(__file__).resolve().parent / "specs"
"""The specs shipped with the project (`sorl sweep paper-sorl` finds experiments/specs/paper-sorl.toml)."""

TRAIN_DEFAULTS: dict[str, Any] = TrainSettings.spec_defaults("train")
EVAL_DEFAULTS: dict[str, Any] = TrainSettings.spec_defaults("eval")

Fail = Callable[[str], SorlError]
"""Makes the one-line error of a spec from what is wrong (`spec PATH: ` prefixed)."""


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
        return {**self.train, "seed": self.seed, "run_dir": self.run_dir, "agent_overrides": dict(self.overrides)}

    def settings(self) -> TrainSettings:
        return TrainSettings(**self.train)

    def command(self) -> str:
        """The equivalent `sorl train` command line."""
        flags = self.settings().command_flags()  # --steps first, then the run's identity, as sweeps always printed
        parts = ["sorl train", f"--task {self.task}", f"--agent {self.agent}", flags[0]]
        parts += [f"--seed {self.seed}", f"--run-dir {self.run_dir}", *flags[1:]]
        parts += [f"--agent.{k}={v}" for k, v in self.overrides.items()]
        return " ".join(parts)


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
    train_by_agent: dict[str, dict[str, Any]]
    settings: dict[tuple[str | None, str | None], dict[str, Any]]
    """(environment or None, agent or None) -> settings."""
    grid: dict[str | None, dict[str, list[Any]]]
    """agent or None -> key -> values."""
    variants: list[dict[str, Any]]
    launcher: dict[str, Any]
    """[launcher] as written (the keys given only): `sorl sweep`'s flags fall back to it."""

    def where(self) -> str:
        return f"spec {self.path}" if self.path else f"spec {self.name!r}"

    # --------------------------------------------------------------------------------- expansion

    def agent_variants(self, agent: str) -> list[tuple[str, dict[str, Any]]]:
        """[(label, settings)] of one agent: the product of the grid (keys it has) and the explicit variants."""
        fields = agent_fields(agent)
        dims = {key: values for key, values in self.grid.get(None, {}).items() if key in fields}
        dims.update(self.grid.get(agent, {}))
        combos: list[tuple[str, dict[str, Any]]] = [("", {})]
        if dims:
            chosen = [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]
            combos = [(_label(c), c) for c in chosen]
        if not self.variants:
            return combos
        out: dict[str, dict[str, Any]] = {}
        for variant in self.variants:
            settings = {k: v for k, v in variant.items() if k != "name" and k in fields}
            label = variant.get("name") or _label(settings) or "default"
            for glabel, gsettings in combos:
                # unnamed variants that mean the same for this agent (keys it lacks dropped) collapse into one
                out.setdefault(f"{label},{glabel}" if glabel else label, {**settings, **gsettings})
        return list(out.items())

    def overrides(self, agent: str, env: str, variant_settings: Mapping[str, Any]) -> dict[str, str]:
        """The --agent.KEY settings of one run, lowest precedence first: all, agent, env, env+agent, variant."""
        fields = agent_fields(agent)
        merged: dict[str, Any] = {}
        for scope in ((None, None), (None, agent), (env, None), (env, agent)):
            merged.update({k: v for k, v in self.settings.get(scope, {}).items() if k in fields})
        merged.update(variant_settings)
        return {k: format_value(v) for k, v in merged.items()}

    def eval_for(self, agent: str) -> dict[str, Any]:
        return {**self.eval, **self.eval_by_agent.get(agent, {})}

    def train_for(self, agent: str) -> dict[str, Any]:
        return {**self.train, **self.train_by_agent.get(agent, {})}

    def check(self) -> None:
        """Every (agent, variant, task) of the spec resolved and checked as its runs would be, before any runs:
        one SorlError naming the spec key and the task for a combination all of whose runs would fail (a pixel
        option on a state task, online steps on a pixel task or with stacked frames, a K the agent cannot take)."""
        for agent in self.agents:
            for label, vsettings in self.agent_variants(agent):
                for task in self.tasks:
                    self._checked(agent, label, task, self.overrides(agent, task.env.name, vsettings))

    def _checked(self, agent: str, label: str, task: Any, overrides: Mapping[str, str]):
        from runner.train import resolve_agent_config

        where = f"{agent} on {task.env.name}" + (f" ({label})" if label else "")
        train, ev = self.train_for(agent), self.eval_for(agent)
        try:
            steps = train.get("steps", TrainSettings.steps)
            online = bool(train.get("online_steps"))
            _, config, _ = resolve_agent_config(agent, task.env.name, overrides, online=online, steps=steps)
        except SorlError as e:
            raise SorlError(f"{self.where()}: {where}: {e}") from None
        eval_scope = "eval" + (f".{agent}" if "K" in self.eval_by_agent.get(agent, {}) else "")
        check_run_settings(self.where(), agent, task, config, train, ev, eval_scope)
        return config

    def runs(self, out: str | Path | None = None, data_dir: str | Path | None = None) -> list[RunSpec]:
        """Every run of the sweep, validated, in a stable order (agent, variant, task, seed)."""
        root = (Path(out) if out is not None else self.out).expanduser().absolute()
        data = data_dir if data_dir is not None else (self.data_dir or os.environ.get("OGBENCH_DATA_DIR") or None)
        data = str(Path(data).expanduser().absolute()) if data else None
        result: list[RunSpec] = []
        for agent in self.agents:
            train = TrainSettings.from_spec(self.train_for(agent), self.eval_for(agent), data_dir=data, progress=False)
            train = train.to_dict()
            for label, vsettings in self.agent_variants(agent):
                for task in self.tasks:
                    overrides = self.overrides(agent, task.env.name, vsettings)
                    self._checked(agent, label, task, overrides)
                    for seed in self.seeds:
                        run_id = runs.run_path(task.name, agent, seed, safe_name(label) if label else None).as_posix()
                        log = root / "logs" / (run_id.replace("/", "__") + ".log")
                        result.append(
                            RunSpec(id=run_id, task=task.name, env=task.env.name, agent=agent, seed=seed,
                                    variant=label, run_dir=str(root / run_id), log=str(log),
                                    overrides=overrides, train=dict(train))
                        )  # fmt: skip
        if not result:
            raise SorlError(
                f"{self.where()} expands to no runs (agents, tasks/environments and seeds must be non-empty)"
            )
        return result


# ------------------------------------------------------------------------------------------ the file


def _must(ok: Callable[[Any], Any], why: str) -> AfterValidator:
    """A check of this module's own, which pydantic reports as a value_error carrying `why`."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(why)
        return value

    return AfterValidator(check)


DirName = Annotated[str, _must(lambda v: v.strip() and "/" not in v, "must be a non-empty string without '/'")]
NonBlank = Annotated[str, _must(str.strip, "must be a non-empty string")]
NonEmpty = Annotated[str, Field(min_length=1)]
Names = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]  # "sorl": one name
SBATCH = "write KEY = VALUE (#SBATCH --KEY=VALUE) or true"
SbatchName = Annotated[str, _must(lambda key: key and " " not in key, SBATCH)]
SbatchValue = Annotated[Any, _must(lambda v: isinstance(v, str | int | float) and v is not False, SBATCH)]
PositiveInt = Annotated[int, Field(gt=0)]
Scalar = bool | int | float | str
Setting = Scalar | list[Scalar]


class Table(BaseModel):
    """A table of the spec: strict types (TOML's, no coercion) and unknown keys refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)


# [train] and [eval] keys are fields of runner.settings.TrainSettings: the key's value is checked by its field there
TrainTable = create_model("TrainTable", __base__=Table, **{k: (Any, None) for k in TrainSettings.spec_keys("train")})
EvalValues = create_model("EvalValues", __base__=Table, **{k: (Any, None) for k in TrainSettings.spec_keys("eval")})


class EvalTable(EvalValues):
    """[eval], whose other keys are [eval.AGENT] tables of the same keys (`by_agent`)."""

    model_config = ConfigDict(extra="allow")


class TrainTableAll(TrainTable):
    """[train], whose other keys are [train.AGENT] tables of the same keys (`by_agent`)."""

    model_config = ConfigDict(extra="allow")


class SlurmTable(Table):
    """[launcher.slurm]: what sbatch itself accepts is its own check, at submission."""

    partition: NonBlank | None = None
    time: PositiveInt | None = None
    gpus: Annotated[int, Field(ge=0)] | None = None
    cpus_per_task: PositiveInt | None = None
    mem_gb: Annotated[float, Field(gt=0)] | None = None
    array_parallelism: PositiveInt | None = None
    account: NonBlank | None = None
    qos: NonBlank | None = None
    constraint: NonBlank | None = None
    folder: NonBlank | None = None
    additional: dict[SbatchName, SbatchValue] = {}
    """Extra `#SBATCH --KEY=VALUE` lines (true: `#SBATCH --KEY`)."""
    setup: list[str] = []
    """Shell lines before each job."""


class RayTable(Table):
    address: NonBlank | None = None
    cpus_per_run: PositiveInt | None = None
    gpus_per_run: Annotated[float, Field(ge=0)] | None = None


class LauncherTable(Table):
    max_parallel: PositiveInt | None = None
    group_seeds: bool | None = None
    slurm: SlurmTable = SlurmTable()
    ray: RayTable = RayTable()


class Variant(Table):
    """One [[variants]] table: an optional name, and settings (checked against the agents' configs: `Scopes`)."""

    model_config = ConfigDict(extra="allow")
    name: DirName | None = None


class SpecFile(Table):
    """A spec file as written (the keys, their types and meaning: the module docstring)."""

    name: DirName | None = None
    description: str = ""
    agents: Names = []
    environments: Names = []
    tasks: Names = []
    seeds: Any = [0]
    """[1, 2, 3], 3, "1-8" or "1-4,7": `parse_seeds`."""
    out: NonEmpty | None = None
    data_dir: NonEmpty | None = None
    train: TrainTableAll = TrainTableAll()
    eval: EvalTable = EvalTable()
    settings: dict[str, Any] = {}
    """Settings scopes ([settings], [settings.AGENT], [settings.ENV], [settings.ENV.AGENT]): `Scopes`."""
    grid: dict[str, Any] = {}
    variants: list[Variant] = []
    launcher: LauncherTable = LauncherTable()


_WHY = {  # pydantic's error types, said as the rest of the project says them
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "greater_than": "must be greater than {gt:g}",
    "greater_than_equal": "must be {ge:g} or more",
}


def refusal(error: ErrorDetails, within: tuple[str, ...] = ()) -> str:
    """One line from pydantic's first error of a spec (its `loc`, `type`, `input` and `ctx` fields): the unknown key
    and the valid ones, or the key, its value and what it must be. `within`: the table validated (loc's prefix)."""
    loc = (*within, *error["loc"])
    if error["type"] == "extra_forbidden":
        return unknown_key(loc[:-1], str(loc[-1]))
    ctx, kind = error.get("ctx") or {}, error["type"]
    why = _WHY[kind].format(**ctx) if kind in _WHY else error["msg"]
    if kind == "value_error":  # raised by one of this module's validators: its own words
        why = str(ctx["error"])
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p != "[key]").lstrip(".")
    return f"{where}={error['input']!r}: {why}"


def unknown_key(table: tuple[str | int, ...], key: str) -> str:
    model: type[BaseModel] = SpecFile
    for part in table:
        field = model.model_fields.get(str(part))
        # the tables named by the user: [eval.AGENT], [train.AGENT]
        model = field.annotation if field is not None else {"train": TrainTable}.get(str(table[0]), EvalValues)
    valid = list(model.model_fields)
    what = f"key in [{'.'.join(map(str, table))}]" if table else "top-level key"
    return f"unknown {what} {key!r}{suggest(key, valid)}; valid: {', '.join(valid)}"


def validated(model: type[BaseModel], raw: Any, fail: Fail, within: tuple[str, ...] = ()) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise fail(refusal(e.errors()[0], within)) from None


def given(table: BaseModel) -> dict[str, Any]:
    """The keys of a table that the file sets (its fields only, not an [eval]'s agent tables)."""
    return {k: getattr(table, k) for k in type(table).model_fields if k in table.model_fields_set}


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
    """Validate a spec given as a dict (what the TOML file parses to): its shape, then what the registries decide,
    then every combination as its runs would be (`Spec.check`: a spec whose runs would all fail is refused now)."""
    where = f"spec {path}" if path else "spec"

    def fail(msg: str) -> SorlError:
        return SorlError(f"{where}: {msg}")

    if not isinstance(raw, Mapping):
        raise fail("must be a table of keys")
    file: SpecFile = validated(SpecFile, raw, fail)
    name = file.name or (path.stem if path else "sweep")
    agents = spec_agents(file.agents, fail)
    scopes = Scopes(agents, fail)
    spec = Spec(
        name=name,
        path=path,
        description=file.description,
        agents=agents,
        tasks=spec_tasks(file.environments, file.tasks, fail),
        seeds=parse_seeds(file.seeds, fail),
        out=Path(file.out or f"runs/{name}"),
        data_dir=file.data_dir,
        train={**TRAIN_DEFAULTS, **section_values("train", given(file.train), "train", fail)},
        eval={**EVAL_DEFAULTS, **section_values("eval", given(file.eval), "eval", fail)},
        eval_by_agent=by_agent("eval", file.eval.model_extra or {}, fail),
        train_by_agent=by_agent("train", file.train.model_extra or {}, fail, given(file.train)),
        settings=scopes.settings(file.settings),
        grid=scopes.grid(file.grid),
        variants=scopes.variants(file.variants),
        launcher=file.launcher.model_dump(exclude_unset=True),
    )
    spec.check()
    return spec


def spec_agents(names: list[str], fail: Fail) -> list[str]:
    from agents import AGENTS

    for agent in names:
        if agent not in AGENTS:
            valid = sorted(AGENTS)
            raise fail(f"unknown agent {agent!r}{suggest(agent, valid)}; valid agents: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def spec_tasks(environments: list[str], tasks: list[str], fail: Fail) -> list[Any]:
    """The environments' tasks, then the single tasks; a task named twice is run once (Task is a frozen dataclass)."""
    from envs.registry import expand_environment, resolve_task

    try:
        found = [task for env in environments for task in expand_environment(env)]
        found += [resolve_task(task) for task in tasks]
    except SorlError as e:
        raise fail(str(e)) from None
    return list(dict.fromkeys(found))


def section_values(
    section: str, table: Mapping[str, Any], scope: str, fail: Fail, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A [train] / [eval] table's values, each checked by its TrainSettings field (`scope.key=...: ...`); `steps = 0`
    beside `online_steps` (in this table or in `base`, the [train] an agent's [train.AGENT] goes on top of) is a
    pure-online run, as `sorl train --steps 0 --online-steps N` is."""
    steps = table.get("steps")
    online_steps = table.get("online_steps", (base or {}).get("online_steps"))
    pure_online = section == "train" and type(steps) is int and steps == 0 and online_steps
    return {
        key: 0 if pure_online and key == "steps" else TrainSettings.spec_value(section, key, v, f"{scope}.{key}", fail)
        for key, v in table.items()
    }


def by_agent(
    section: str, tables: Mapping[str, Any], fail: Fail, base: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """[eval.AGENT] / [train.AGENT] tables (the section's keys that are not its fields): one agent's own values,
    on top of the section's (`base`: the section as written)."""
    from agents import AGENTS

    model = {"train": TrainTable, "eval": EvalValues}[section]
    out = {}
    for key, table in tables.items():
        if not isinstance(table, Mapping):
            raise fail(unknown_key((section,), key))
        if key not in AGENTS:
            raise fail(f"[{section}.{key}]: unknown agent{suggest(key, list(AGENTS))}")
        values = given(validated(model, table, fail, (section, key)))
        out[key] = section_values(section, values, f"{section}.{key}", fail, base)
    return out


# ---------------------------------------------------------------------------------------- settings scopes


SETTING = TypeAdapter(Setting, config=ConfigDict(strict=True))
GRID = TypeAdapter(Annotated[list[Setting], Field(min_length=1)], config=ConfigDict(strict=True))


class Scopes:
    """The settings scopes of a spec ([settings], [settings.AGENT], [settings.ENV], [settings.ENV.AGENT], [grid],
    [grid.AGENT], [[variants]]) checked against the configs of the spec's agents (the registry): a key in an
    all-agents scope must be a setting of one of them, a key in an agent's scope a setting of that agent."""

    def __init__(self, agents: list[str], fail: Fail):
        from agents import AGENTS

        self.agents, self.fail, self.registered = agents, fail, set(AGENTS)
        self.fields = {a: agent_fields(a) for a in agents}
        self.all_fields = sorted(set().union(*self.fields.values()))

    def settings(self, table: Mapping[str, Any]) -> dict[tuple[str | None, str | None], dict[str, Any]]:
        """(environment or None, agent or None) -> settings; spellings of one environment merge."""
        out = {(None, None): self.common(_values(table), "[settings]")}
        for key, sub in _tables(table).items():
            if key in self.registered:
                agent = self.agent(key, "settings")
                out[(None, agent)] = self.of_agent(agent, sub, f"[settings.{agent}]")
                continue
            env = self.environment(key)
            out[(env, None)] = {**out.get((env, None), {}), **self.common(_values(sub), f"[settings.{key}]")}
            for akey, asub in _tables(sub).items():
                agent = self.agent(akey, f"settings.{key}")
                scoped = self.of_agent(agent, asub, f"[settings.{key}.{agent}]")
                out[(env, agent)] = {**out.get((env, agent), {}), **scoped}
        return out

    def grid(self, table: Mapping[str, Any]) -> dict[str | None, dict[str, list[Any]]]:
        """agent or None -> key -> values."""
        out: dict[str | None, dict[str, list[Any]]] = {None: self.common(_values(table), "[grid]", GRID)}
        for key, sub in _tables(table).items():
            agent = self.agent(key, "grid")
            out[agent] = self.of_agent(agent, sub, f"[grid.{agent}]", GRID)
        return out

    def variants(self, variants: list[Variant]) -> list[dict[str, Any]]:
        names: set[str | None] = set()
        for i, variant in enumerate(variants):
            if variant.name in names:
                raise self.fail(f"two variants are named {variant.name!r}")
            names.add(variant.name)
            self.common(variant.model_extra or {}, f"[[variants]] #{i + 1}")
        return [variant.model_dump(exclude_unset=True) for variant in variants]

    def common(self, table: Mapping[str, Any], scope: str, adapter: TypeAdapter = SETTING) -> dict[str, Any]:
        for key, value in table.items():
            if not any(key in fields for fields in self.fields.values()):
                raise self.fail(
                    f"unknown setting {key!r} in {scope}{suggest(key, self.all_fields)}: no agent of the spec "
                    f"({', '.join(self.agents) or 'none'}) has it"
                )
            self.value(value, f"{scope} {key}", adapter)
        return dict(table)

    def of_agent(self, agent: str, table: Mapping[str, Any], scope: str, adapter: TypeAdapter = SETTING) -> dict:
        for key, value in table.items():
            if key not in self.fields[agent]:
                raise self.fail(f"unknown setting {key!r} for {agent} in {scope}{suggest(key, self.fields[agent])}")
            self.value(value, f"{scope} {key}", adapter)
        return dict(table)

    def value(self, value: Any, what: str, adapter: TypeAdapter) -> None:
        try:
            adapter.validate_python(value)
        except ValidationError:
            why = "a setting must be a number, string, boolean or list of them"
            if adapter is GRID:
                why = "a grid setting must be a non-empty list of values, each a number, string, boolean or list"
            raise self.fail(f"{what}: {why}") from None

    def agent(self, key: str, scope: str) -> str:
        """An agent's scope ([settings.AGENT], [grid.AGENT], ...): the agent must be one of the spec's."""
        if key not in self.registered:
            raise self.fail(f"[{scope}.{key}]: not an agent of the spec{suggest(key, self.agents)}")
        if key not in self.agents:
            raise self.fail(f"[{scope}.{key}]: agent {key} is not in the spec's agents ({', '.join(self.agents)})")
        return key

    def environment(self, key: str) -> str:
        from envs.registry import ENVIRONMENTS, resolve_env

        try:
            return resolve_env(key).name
        except SorlError:
            names = sorted(self.registered) + list(ENVIRONMENTS)
            raise self.fail(f"[settings.{key}]: neither an agent nor an environment{suggest(key, names)}") from None


def _values(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if not isinstance(v, Mapping)}


def _tables(table: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {k: v for k, v in table.items() if isinstance(v, Mapping)}


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
    from runner.pixels import pipeline

    _check_observations(where, task, train)
    _check_K(where, agent, task, config, _K_keys(train, ev, eval_scope))
    try:  # anything else the run's pipeline refuses (e.g. a pixel task whose encoder was set to none)
        pipeline(task.env, TrainSettings.from_spec(train, ev), config)
    except SorlError as e:
        raise SorlError(f"{where}: {agent} on {task.name}: {e}") from None


def _check_observations(where: str, task: Any, train: Mapping[str, Any]) -> None:
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


def _K_keys(train: Mapping[str, Any], ev: Mapping[str, Any], eval_scope: str) -> list[tuple[str, int]]:
    """(spec key, K) of every K the runs will sample with: the evaluation grid, the online acting policy, the filmed
    cell."""
    keys = [(f"[{eval_scope}] K", k) for k in ev.get("K") or ()]
    if train.get("online_steps") and train.get("online_K") is not None:
        keys.append(("[train] online_K", train["online_K"]))
    if ev.get("video_episodes") and ev.get("video_K") is not None:
        keys.append(("[eval] video_K", ev["video_K"]))
    return keys


def _check_K(where: str, agent: str, task: Any, config: Any, keys: list[tuple[str, int]]) -> None:
    from agents import get_agent
    from sorl.agent import K_rule

    max_K = agent_max_K(agent, config)
    rule = K_rule(get_agent(agent))
    for key, K in keys:  # the agent's own rule (`Agent.check_K`): a power of two for the shortcut agents
        if not rule.takes_K(K):
            try:
                rule.check_K(K, max_K, name=agent)
            except SorlError as e:
                raise SorlError(f"{where}: {key} = {K} on {task.name}: {e}") from None
    too_big = [(key, k) for key, k in keys if max_K is not None and k > max_K]
    if too_big:
        key, K = too_big[0]
        trained = "denoise_timesteps" if hasattr(config, "denoise_timesteps") else "the K it trains"
        raise SorlError(
            f"{where}: {key} = {K} on {task.name}: {agent} takes K up to {max_K} ({trained}); lower "
            f"{key.split()[-1]} or raise {trained}"
        )


# ------------------------------------------------------------------------------------------------ helpers


def agent_fields(agent: str) -> set[str]:
    from agents import get_agent

    return {f.name for f in dataclasses.fields(get_agent(agent).Config)}


def format_value(value: Any) -> str:
    """A TOML value as a `--agent.KEY=VALUE` string."""
    if isinstance(value, bool):
        return "True" if value else "False"  # as Python and the README spell them (the parser takes both)
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _label(settings: Mapping[str, Any]) -> str:
    """A variant's label from its settings: 'alpha=1.0,max_k_backprop=4'."""
    return ",".join(f"{k}={format_value(v)}" for k, v in settings.items())


def safe_name(label: str) -> str:
    """A variant label usable as one directory name."""
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", label)


def parse_seeds(value: Any, fail: Fail | None = None) -> list[int]:
    """[1, 2, 3], 3, "1-8" or "1-4,7" -> a list of distinct non-negative seeds, in order (`runner.multiseed`'s
    parser, whose message the spec prefixes)."""
    if isinstance(value, list) and not value:
        return []  # a spec with no seeds expands to no runs, and says so
    try:
        return list(multiseed.parse_seeds(value))
    except SorlError as e:
        raise (fail or SorlError)(str(e).replace("--seeds", "seeds", 1)) from None
