"""Typed command-line values that keep their compact spellings: `--eval-K 1,2,4,8` and `--seeds 1-8` arrive as
tuples of ints, parsed once by tyro (a constructor per flag, `tyro.constructors.PrimitiveConstructorSpec`), so the
commands never see the string.

A bad value is one `SorlError` line naming the flag as it was typed; it is not a ValueError on purpose: tyro turns
those into its own error event, which knows the flag but not why the value was refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tyro.constructors import PrimitiveConstructorSpec

IntTuple = tuple[int, ...]


def _typed(flags: Sequence[str], argv: Sequence[str]) -> str:
    """The spelling of a flag that `argv` used (the first of `flags` when none was typed, e.g. from Python)."""
    for arg in reversed(argv):
        name = arg.partition("=")[0]
        if name in flags:
            return name
    return flags[0]


def int_tuple(
    flags: Sequence[str], parse: Callable[[str, str], IntTuple], metavar: str, argv: Callable[[], Sequence[str]]
) -> PrimitiveConstructorSpec[IntTuple]:
    """A one-token value parsed by `parse(text, flag)` into a tuple of ints; shown in --help comma-joined.

    `flags` are the flag's spellings (canonical first); `argv()` the command line, to name the spelling typed.
    """
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar=metavar,
        instance_from_str=lambda args: parse(args[0], _typed(flags, argv())),
        is_instance=lambda v: isinstance(v, tuple) and all(isinstance(x, int) for x in v),
        str_from_instance=lambda v: [",".join(str(x) for x in v)],
    )
