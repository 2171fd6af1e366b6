"""tyro's parse errors as one `error: ...` line (exit code 2), built from tyro's structured error events.

tyro reports each rejected command line as an event (`tyro._errors`: the failing argument, the bad value, the
accepted choices) just before it draws its error box; `one_line_errors` turns that event into a `SorlError`, so no
box is drawn and nothing rendered is read back. `tyro._errors` is private to tyro: pyproject.toml pins the minor
version it was written against, and an event this module does not know still ends as one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from tyro import _errors as events

from sorl.errors import SorlError, suggest

Explain = Callable[[str], str | None]
"""An unrecognized flag -> a better line than 'unrecognized' (e.g. the command that does take it), or None."""


def _spelling(argv: Sequence[str], flag: str) -> str | None:
    """How `argv` spelled `flag` (tyro reads - and _ alike in a flag's name), or None if it is not there."""
    for arg in argv:
        name = arg.partition("=")[0]
        if name.replace("_", "-") == flag.replace("_", "-"):
            return name
    return None


def _flags(argument: Any, argv: Sequence[str] | None = None) -> str:
    """An argument as the user knows it: its flags (canonical first, then aliases) or its positional metavar."""
    lowered = argument.lowered
    if len(lowered.name_or_flags) == 1 and lowered.name_or_flags[0].startswith("-") and argv is not None:
        # tyro takes `--agent.q_agg` for its `--agent.q-agg`: named as the user wrote it
        spelling = _spelling(argv, lowered.name_or_flags[0])
        if spelling is not None:
            return spelling
    if lowered.name_or_flags and lowered.name_or_flags[0].startswith("-"):
        return "/".join(lowered.name_or_flags)
    return str(lowered.metavar or argument.display_name()).upper()


def _typed_value(argv: Sequence[str], argument: Any) -> str | None:
    """The value the user gave `argument` on `argv` (the last one, as argparse keeps the last)."""
    flags = {f.replace("_", "-") for f in argument.lowered.name_or_flags}
    value = None
    for i, arg in enumerate(argv):
        name, eq, rest = arg.partition("=")
        if name.replace("_", "-") in flags:
            value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _unrecognized(event: Any, flags: Callable[[], Iterable[str]] | None, explain: Explain | None) -> str:
    tokens = list(event.tokens)
    first = next((t.partition("=")[0] for t in tokens if t.startswith("-")), tokens[0] if tokens else "")
    if first.startswith("-") and explain is not None:
        better = explain(first)
        if better:
            return better
    hint = suggest(first, flags()) if first and flags is not None else ""
    return f"Unrecognized options: {' '.join(tokens)}{hint} (see `{event.prog} --help`)"


def message(
    event: Any, argv: Sequence[str], flags: Callable[[], Iterable[str]] | None = None, explain: Explain | None = None
) -> str:
    """One line for a tyro parse-error event: the flag, the value given and what is accepted."""
    help_hint = f"`{event.prog} --help` lists what it takes"
    if isinstance(event, events.UnrecognizedArgs):
        return _unrecognized(event, flags, explain)
    if isinstance(event, events.MissingArgs):
        missing = ", ".join(_flags(a.arg) for a in event.missing_arguments)
        suffix = event.missing_arguments[0].source_parser.prog_suffix if event.missing_arguments else ""
        prog = f"{event.prog} {suffix}".strip()
        return f"Missing required argument of `{prog}`: {missing} (`{prog} --help` lists what it takes)"
    if isinstance(event, events.MissingSubcommand):
        names = ", ".join(event.subcommand_spec.parser_from_name)
        found = f" (got {event.found_token!r})" if event.found_token else ""
        return f"Missing command{found}: `{event.prog}` takes one of {names}"
    if isinstance(event, events.InvalidChoice):
        choices = ", ".join(event.choices)
        return f"{_flags(event.argument, argv)}={event.value!r}: expected one of {choices}"
    if isinstance(event, events.BadValue):
        flag, metavar = _flags(event.argument, argv), event.argument.lowered.metavar
        if event.reason == "too_few_values":
            return f"{flag} needs a value ({metavar})" if metavar else f"{flag} needs a value"
        return f"{flag} takes no value (got {event.offending_value!r})"
    if isinstance(event, events.InstantiationFailure) and event.argument is not None:
        flag, metavar = _flags(event.argument, argv), event.argument.lowered.metavar
        value = _typed_value(argv, event.argument)
        given = f"={value!r}" if value is not None else ""
        return f"{flag}{given}: expected {metavar or 'another value'}"
    if isinstance(event, events.InstantiationFailure):
        return f"{event.message} ({help_hint})"
    if isinstance(event, events.MutexConflict):
        return f"{event.first_token} and {event.second_token} are exclusive: give one"
    # An event added by a later tyro: still one line, pointing at the help.
    return f"the command line was not understood ({help_hint})"


@contextlib.contextmanager
def one_line_errors(
    argv: Sequence[str], flags: Callable[[], Iterable[str]] | None = None, explain: Explain | None = None
) -> Iterator[None]:
    """Within: a tyro parse error of `argv` raises `SorlError(message(...))` instead of drawing tyro's box.

    `flags()` gives the command's own flags, for a 'did you mean' (only asked for on an unrecognized flag);
    `explain` may say more about an unrecognized flag.
    """

    def hook(event: Any) -> None:
        raise SorlError(message(event, argv, flags, explain))

    with events.on_parse_error(hook):
        yield
