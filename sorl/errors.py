"""The one exception type a user can cause.

Anything raised as `SorlError` reaches the terminal as a single line (no traceback) and a non-zero
exit code; the message must say what is wrong and what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SorlError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """`" (did you mean: a, b?)"` for the closest choices, or `""` if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
