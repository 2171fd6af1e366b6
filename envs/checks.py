"""The dataset file format, checked against the environment's own spaces.

A published OGBench singletask dataset (`<dataset>.npz`, `<dataset>-val.npz`) holds, for N steps:

    observations  float32  (N, observation dim)
    actions       float32  (N, action dim)
    terminals     bool     (N,)          True on the last step of each episode
    qpos          float32  (N, model nq)
    qvel          float32  (N, model nv)
    button_states int64    (N, buttons)  scene and puzzle only

Pixel-based (visual-*) datasets hold the same keys, with `observations` uint8 `(N, 64, 64, 3)` (the rendered
frames; qpos/qvel/button_states are the simulator's state, used to relabel rewards, as OGBench's files).

`check_headers` reads only the .npy headers inside the zip (cheap, used before every load); `check_full` reads
every array (which also checks the zip's CRCs) and is what `sorl data verify` runs; `non_finite` reads only the
floating-point arrays, one vectorised pass each, and names the first NaN or infinity (what a training run checks once
per file before using it: `envs.datasets`).
"""

from __future__ import annotations

import functools
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.registry import EnvSpec


@dataclass(frozen=True)
class Dims:
    observation: tuple[int, ...]
    action: tuple[int, ...]
    nq: int
    nv: int
    buttons: int | None  # None: the environment has no buttons


PIXEL_OBSERVATION = (64, 64, 3)
"""Shape of a pixel observation (ogbench's `visual_dict`: width=64, height=64, RGB)."""


@functools.cache
def env_dims(spec: EnvSpec) -> Dims:
    """Shapes the environment implies (from a freshly made singletask env of its default task).

    A pixel environment is not made here (its observations need a renderer, which this process may not have): its
    simulator is its state twin's, with `PIXEL_OBSERVATION` images as observations."""
    import dataclasses

    import gymnasium

    if spec.pixels:
        from envs.registry import resolve_env

        return dataclasses.replace(env_dims(resolve_env(spec.state_twin)), observation=PIXEL_OBSERVATION)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ogbench  # noqa: F401

        env = gymnasium.make(spec.singletask_env_id())
        u = env.unwrapped
        dims = Dims(
            observation=tuple(env.observation_space.shape),
            action=tuple(env.action_space.shape),
            nq=int(u.model.nq),
            nv=int(u.model.nv),
            buttons=int(u._num_buttons) if hasattr(u, "_cur_button_states") else None,
        )
        env.close()
    return dims


def expected_layout(spec: EnvSpec) -> dict[str, tuple[str, tuple[int, ...]]]:
    """key -> (dtype kind(s) accepted, trailing shape)."""
    d = env_dims(spec)
    layout = {
        "observations": ("u" if spec.pixels else "f", d.observation),
        "actions": ("f", d.action),
        "terminals": ("biuf", ()),
        "qpos": ("f", (d.nq,)),
        "qvel": ("f", (d.nv,)),
    }
    if d.buttons is not None:
        layout["button_states"] = ("iu", (d.buttons,))
    return layout


def read_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """{key: (dtype, shape)} from the .npy headers of an .npz, without reading the data. Raises on a file that
    is not a readable npz (zipfile.BadZipFile, ValueError, OSError, ...)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            with zf.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            out[name[: -len(".npy")]] = (np.dtype(dtype), tuple(shape))
    return out


def check_layout(spec: EnvSpec, headers: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> list[str]:
    """Problems (empty: fine) with keys, dtypes and shapes against the environment."""
    problems = []
    layout = expected_layout(spec)
    missing = [k for k in layout if k not in headers]
    if missing:
        problems.append(f"missing key(s) {', '.join(missing)} (has {', '.join(sorted(headers)) or 'none'})")
    n = None
    for key, (kinds, trailing) in layout.items():
        if key not in headers:
            continue
        dtype, shape = headers[key]
        if dtype.kind not in kinds:
            problems.append(f"{key} has dtype {dtype}")
        if len(shape) != 1 + len(trailing) or tuple(shape[1:]) != trailing:
            want = "(N" + "".join(f", {t}" for t in trailing) + ("," if not trailing else "") + ")"
            problems.append(f"{key} has shape {shape}, {spec.name} needs {want}")
            continue
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            problems.append(f"{key} has {shape[0]} rows, observations {n}")
    if n == 0:
        problems.append("no steps")
    return problems


def check_headers(spec: EnvSpec, path: Path) -> list[str]:
    return check_layout(spec, read_headers(path))


def describe_non_finite(key: str, arr: np.ndarray) -> str | None:
    """'observations holds 12 NaN values (first at row 3)' for an array with NaNs or infinities, else None."""
    if arr.dtype.kind not in "fc":
        return None
    finite = np.isfinite(arr)
    if finite.all():
        return None
    bad = ~finite
    n_bad = int(bad.sum())
    n_nan = int(np.isnan(arr).sum())
    kinds = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_bad - n_nan, "infinite")) if n]
    row = int(np.argmax(bad.reshape(len(arr), -1).any(axis=1))) if arr.ndim else 0
    return f"{key} holds {' and '.join(kinds)} value{'s' * (n_bad > 1)} (first at row {row})"


def non_finite(path: Path) -> list[str]:
    """The NaN/infinity problems of an .npz's floating-point arrays (empty: none). Integer arrays (pixel frames,
    button states) cannot hold either and are not read."""
    headers = read_headers(path)
    problems = []
    with np.load(path, allow_pickle=False) as f:
        for key, (dtype, _) in headers.items():
            if dtype.kind in "fc":
                problem = describe_non_finite(key, f[key])
                if problem:
                    problems.append(problem)
    return problems


def check_full(spec: EnvSpec, path: Path) -> list[str]:
    """Header check plus reading every array (zip CRCs) and the episode structure."""
    problems = check_headers(spec, path)
    if problems:
        return problems
    with np.load(path, allow_pickle=False) as f:
        for key in f.files:
            arr = f[key]
            if key == "terminals":
                if not bool(arr[-1]):
                    problems.append("the last step is not marked terminal (truncated episode)")
            else:
                problem = describe_non_finite(key, arr)
                if problem:
                    problems.append(problem)
    return problems
