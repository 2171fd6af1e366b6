"""What this process may use of the machine."""

from __future__ import annotations

import os


def available_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask on Linux; all cores elsewhere)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))
