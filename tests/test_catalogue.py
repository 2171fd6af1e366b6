"""The bad-input catalogue as a whole: the first catalogue (test_bad_inputs.py) and the cases of the newer surfaces
(`tests/test_bad_inputs_*.py`, each a `refusals.Refusal` that also asserts every file byte-identical)."""

from __future__ import annotations

import importlib
from pathlib import Path

from refusals import Refusal

HERE = Path(__file__).resolve().parent


def _new_cases() -> dict[str, list[Refusal]]:
    out = {}
    for path in sorted(HERE.glob("test_bad_inputs_*.py")):
        module = importlib.import_module(path.stem)
        out[path.stem] = [c for c in getattr(module, "CASES", []) if isinstance(c, Refusal)]
    return out


def test_newer_surfaces_have_at_least_thirty_cases_with_unique_ids():
    cases = _new_cases()
    assert all(cases.values()), [name for name, c in cases.items() if not c]
    flat = [c for cs in cases.values() for c in cs]
    assert len(flat) >= 30, len(flat)
    ids = [f"{name}::{c.id}" for name, cs in cases.items() for c in cs]
    assert len(set(ids)) == len(ids)
    # every case names what it expects to read in the error line, and a command to run
    assert all(c.expect and c.argv for c in flat)
