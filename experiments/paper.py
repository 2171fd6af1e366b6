"""The published numbers SORL is measured against (docs/method.md, "Published numbers").

Success %, mean over 5 tasks x 8 seeds, ogbench 1.1.0 (`success_timing='post'`). Kept here as data so that
`sorl table --compare paper` works wherever the package is installed; tests/test_experiments_aggregate.py checks
this copy against the table of docs/method.md. `parse_published_table` reads the same table from
any markdown file (`sorl table --compare FILE.md`).
"""

from __future__ import annotations

import re
from pathlib import Path

from sorl.errors import SorlError

COLUMNS = ("BC", "IQL", "ReBRAC", "IDQL", "FQL", "SORL")
"""Columns of the published table. Each agent names its own column (`PUBLISHED_COLUMN`); every column has an
agent here (`idql` claims IDQL's)."""


def agent_columns() -> dict[str, str]:
    """Our agent behind each published column it is compared with: registry name -> column, from each agent's
    `PUBLISHED_COLUMN`. `flow-bc` (shortcut-policy BC) has none: the published BC is Gaussian behaviour cloning,
    our `bc`."""
    from agents import AGENTS

    return {name: cls.PUBLISHED_COLUMN for name, cls in AGENTS.items() if cls.PUBLISHED_COLUMN is not None}


def our_side() -> dict[str, str]:
    """Published column -> the agent and update that produce our side of `sorl table --compare paper` (each
    agent's `PUBLISHED_AS`; "no agent here" for a column no registered agent claims)."""
    from agents import AGENTS

    claimed = {cls.PUBLISHED_COLUMN: cls.PUBLISHED_AS for cls in AGENTS.values() if cls.PUBLISHED_COLUMN}
    return {column: claimed.get(column, "no agent here") for column in COLUMNS}


def __getattr__(name: str):
    # The registry-derived tables under their former constant names (docs cite `OUR_SIDE`), built on first use
    # so that importing this module does not import the agents.
    if name == "AGENT_COLUMN":
        return agent_columns()
    if name == "OUR_SIDE":
        return our_side()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PUBLISHED_CELL = "N = 1"
"""What the published numbers are, in our (K, N) terms: no best-of-N. The one-step baselines have no K; for SORL,
compare our K = 8 (the default: the largest K evaluated) and other K with `--K`."""

PUBLISHED: dict[str, dict[str, tuple[float, float | None]]] = {
    # environment (short name, as in the paper) -> column -> (mean, std over seeds or None)
    "antmaze-large": {"BC": (11, None), "IQL": (53, None), "ReBRAC": (81, None), "IDQL": (21, None),
                      "FQL": (79, None), "SORL": (89, 2)},
    "antmaze-giant": {"BC": (0, None), "IQL": (4, None), "ReBRAC": (26, None), "IDQL": (0, None),
                      "FQL": (9, None), "SORL": (9, 6)},
    "humanoidmaze-medium": {"BC": (2, None), "IQL": (33, None), "ReBRAC": (22, None), "IDQL": (1, None),
                            "FQL": (58, None), "SORL": (64, 4)},
    "humanoidmaze-large": {"BC": (1, None), "IQL": (2, None), "ReBRAC": (2, None), "IDQL": (1, None),
                           "FQL": (4, None), "SORL": (5, 2)},
    "antsoccer-arena": {"BC": (1, None), "IQL": (8, None), "ReBRAC": (0, None), "IDQL": (12, None),
                        "FQL": (60, None), "SORL": (69, 2)},
    "cube-single": {"BC": (5, None), "IQL": (83, None), "ReBRAC": (91, None), "IDQL": (95, None),
                    "FQL": (96, None), "SORL": (97, 1)},
    "cube-double": {"BC": (2, None), "IQL": (7, None), "ReBRAC": (12, None), "IDQL": (15, None),
                    "FQL": (29, None), "SORL": (25, 3)},
    "scene": {"BC": (5, None), "IQL": (28, None), "ReBRAC": (41, None), "IDQL": (46, None),
              "FQL": (56, None), "SORL": (57, 2)},
}  # fmt: skip

EXTRA: dict[str, dict[str, tuple[float, float | None]]] = {
    # "FQL also reports puzzle-3x3 30±4 and puzzle-4x4 17±5."
    "puzzle-3x3": {"FQL": (30, 4)},
    "puzzle-4x4": {"FQL": (17, 5)},
}


def published(source: str = "paper") -> dict[str, dict[str, tuple[float, float | None]]]:
    """'paper' -> the embedded numbers (table + FQL's puzzle numbers); a path -> that markdown file's table."""
    if source == "paper":
        out = {env: dict(cols) for env, cols in PUBLISHED.items()}
        for env, cols in EXTRA.items():
            out.setdefault(env, {}).update(cols)
        return out
    path = Path(source).expanduser()
    if not path.is_file():
        raise SorlError(f"--compare {source}: give 'paper' or a markdown file with a 'Published numbers' table")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SorlError(f"--compare {source}: cannot be read as UTF-8 text ({type(e).__name__}); give 'paper' or "
                        "a markdown file with a 'Published numbers' table") from None  # fmt: skip
    return parse_published_table(text, where=str(path))


_NUM = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:±\s*(\d+(?:\.\d+)?))?\s*$")


def parse_published_table(text: str, where: str = "text") -> dict[str, dict[str, tuple[float, float | None]]]:
    """The first markdown table whose header starts with 'environment' and names agent columns, after a heading
    containing 'Published numbers' if there is one: {environment: {column: (mean, std or None)}}."""
    start = text.find("Published numbers")
    lines = text[start if start >= 0 else 0 :].splitlines()
    header: list[str] | None = None
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("|"):
            if header is not None and out:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            if cells and cells[0].lower().startswith("environment") and len(cells) > 1:
                header = cells
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        row: dict[str, tuple[float, float | None]] = {}
        for col, cell in zip(header[1:], cells[1:], strict=False):
            m = _NUM.match(cell)
            if m:
                row[col] = (float(m[1]), float(m[2]) if m[2] else None)
        out[cells[0]] = row
    if not out:
        raise SorlError(f"{where}: no 'Published numbers' markdown table (| environment | BC | ... |) found")
    return out


def env_short_name(env_name: str) -> str:
    """'cube-single-play' -> 'cube-single', 'antmaze-large-navigate' -> 'antmaze-large' (the paper's names)."""
    for suffix in ("-navigate", "-play", "-stitch", "-explore"):
        if env_name.endswith(suffix):
            return env_name[: -len(suffix)]
    return env_name


def published_value(
    table: dict[str, dict[str, tuple[float, float | None]]], env_name: str, agent: str
) -> tuple[float, float | None] | None:
    """The published (mean, std) for `agent` on `env_name`, or None."""
    column = agent_columns().get(agent)
    row = table.get(env_short_name(env_name)) or table.get(env_name)
    if column is None or row is None:
        return None
    return row.get(column)
