"""Headless OpenGL for MuJoCo: which backend renders on this machine, chosen once per process.

MuJoCo reads `MUJOCO_GL` when it is first imported and cannot switch afterwards, so a backend is tried in a fresh
Python process (it renders one frame of a one-sphere model) and whatever renders is then set in the environment of
the processes that build rendering environments (`gl_environment`), never in a process that may already hold
MuJoCo. A user's `MUJOCO_GL` is respected (and checked); otherwise EGL (a GPU's driver, or Mesa's software
renderer on a CPU) is tried before OSMesa. Both are headless: no display is needed.

This module does not import MuJoCo: the caller may be about to start the processes that will.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

from sorl.errors import SorlError

GL_BACKENDS = ("egl", "osmesa")
"""Headless backends tried, in order, when the user has not set MUJOCO_GL."""

INSTALL = {
    "egl": "apt-get install libegl1 libgl1-mesa-dri",
    "osmesa": "apt-get install libosmesa6",
}
"""The Debian/Ubuntu packages providing each backend (EGL: Mesa's software renderer; a GPU driver's EGL works too)."""

_LIBRARY = {"egl": "EGL", "osmesa": "OSMesa"}

# Renders one frame; on failure its last stderr line says why (PyOpenGL's own error for a missing library is an
# unhelpful AttributeError, so a missing library is named).
_PROBE = """
import ctypes.util, os, sys
try:
    import mujoco
    m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    r = mujoco.Renderer(m, 16, 16)
    r.update_scene(d)
    assert r.render().shape == (16, 16, 3)
    r.close()
except Exception:
    library = {"egl": "EGL", "osmesa": "OSMesa"}.get(os.environ["MUJOCO_GL"])
    if library is not None and ctypes.util.find_library(library) is None:
        sys.exit(f"lib{library} not found")
    raise
"""

_probed: dict[str, str | None] = {}  # backend -> None (renders) or why not; a process asks each backend once


def probe(backend: str, timeout_s: float = 120.0) -> str | None:
    """None if MuJoCo renders a frame with `backend` in a fresh process, else a short reason why not."""
    if backend == "glfw" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: DISPLAY is not set"
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    if backend == "glfw":
        env.pop("PYOPENGL_PLATFORM")  # PyOpenGL's default platform is the one GLFW uses
    try:
        out = subprocess.run(  # close_fds=False lets Python use posix_spawn: no fork of a process running JAX
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
            close_fds=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"rendering one frame took over {timeout_s:.0f} s"
    if out.returncode == 0:
        return None
    lines = [line.strip() for line in out.stderr.splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit code {out.returncode}"
    return why if len(why) <= 120 else why[:117] + "..."


def _probe_once(backend: str) -> str | None:
    if backend not in _probed:
        _probed[backend] = probe(backend)
    return _probed[backend]


def gl_backend(candidates: Sequence[str] = GL_BACKENDS) -> str:
    """The MuJoCo OpenGL backend to render with here: the user's MUJOCO_GL if set, else the first of `candidates`
    that renders. One SorlError line when none does, naming exactly what to install."""
    user = os.environ.get("MUJOCO_GL", "").strip().lower()
    if user:
        if user not in (*GL_BACKENDS, "glfw"):
            raise SorlError(f"MUJOCO_GL={user} is not a MuJoCo backend: set it to egl, osmesa or glfw, or unset it")
        why = _probe_once(user)
        if why is None:
            return user
        fix = (
            f"install it with `{INSTALL[user]}`"
            if user in INSTALL
            else "glfw needs a display; use MUJOCO_GL=egl or MUJOCO_GL=osmesa on a machine without one"
        )
        raise SorlError(f"MUJOCO_GL={user} cannot render here ({why}): {fix}, or unset MUJOCO_GL to let sorl choose")
    reasons = []
    for backend in candidates:
        why = _probe_once(backend)
        if why is None:
            return backend
        reasons.append(f"{backend}: {why}")
    raise SorlError(
        f"no headless OpenGL renderer for MuJoCo on this machine ({'; '.join(reasons)}): install one with "
        + " or ".join(f"`{INSTALL[b]}` ({_LIBRARY[b]})" for b in candidates if b in INSTALL)
        + ", or set MUJOCO_GL to a backend that works here"
    )


@contextlib.contextmanager
def gl_environment(backend: str) -> Iterator[None]:
    """`MUJOCO_GL` (and PyOpenGL's platform) set to `backend` for the processes started inside the block.

    Spawned processes copy this process's environment when they start, so rendering workers started here load
    MuJoCo with `backend`; the variables are restored afterwards, and MuJoCo already loaded here is unaffected.
    """
    names = ("MUJOCO_GL", "PYOPENGL_PLATFORM")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["MUJOCO_GL"] = backend
    if backend == "glfw":
        os.environ.pop("PYOPENGL_PLATFORM", None)
    else:
        os.environ["PYOPENGL_PLATFORM"] = backend
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
