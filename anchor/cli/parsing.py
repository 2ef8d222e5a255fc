"""How every ``cityanchor`` command parses its flags: one error prefix, defaults in ``--help``,
``-v`` before or after the subcommand.

:func:`finish_parser` runs once on the whole tree built by :mod:`anchor.cli.commands` (so the
commands defined in other modules get the same conventions without each repeating them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import NoReturn

__all__ = [
    "ERROR_PREFIX",
    "CliParser",
    "DefaultsFormatter",
    "finish_parser",
    "iter_parsers",
    "shows_default",
]

ERROR_PREFIX = "cityanchor: error: "
"""Every error the command prints starts so: a bad flag (exit 2), an unusable input file
(exit 2) and a refusal from the system (exit 1) alike; the exit status tells them apart."""

# Flags whose default is implied by the flag itself: nothing to show.
_IMPLICIT = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse._CountAction,
    argparse._HelpAction,
    argparse._VersionAction,
)


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` must state this option's default (it has one worth stating)."""
    if not action.option_strings or action.help == argparse.SUPPRESS:
        return False
    if isinstance(action, _IMPLICIT):
        return False
    return (
        action.default is not None
        and action.default != []
        and (action.default is not argparse.SUPPRESS)
    )


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if shows_default(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors start like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{ERROR_PREFIX}{self.prog.removeprefix('cityanchor ')}: {message}\n")


def iter_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand parser below it, each once."""
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def _one_value_per_flag(action: argparse.Action) -> None:
    """Turn ``action="extend", nargs="+"`` into ``action="append"``: ``--log-key A B R`` read
    R as a key (issue 14); ``--log-key A --log-key B R`` cannot."""
    if (
        action.option_strings
        and isinstance(action, argparse._ExtendAction)
        and action.nargs in ("+", "*")
    ):
        action.__class__ = argparse._AppendAction  # type: ignore[assignment]
        action.nargs = None


def finish_parser(parser: argparse.ArgumentParser) -> None:
    """Give every parser of the tree the shared conventions.

    - ``--help`` shows each option's default (:class:`DefaultsFormatter`);
    - usage errors print :data:`ERROR_PREFIX` (:class:`CliParser`'s ``error``);
    - in a command with positional arguments, a flag that may be given several values takes
      one per occurrence (``--log-key A --log-key B``), so that it never swallows the
      positional arguments after it (:func:`_one_value_per_flag`); elsewhere (``token create
      --scope``, ``witness serve --log-key``) both ``--scope a b`` and ``--scope a --scope b``
      work, as before;
    - ``-v``/``--verbose`` is accepted after the subcommand too (``cityanchor verify -v R``);
      counted apart (``verbose_after``) and added to the top-level count by ``main``.
    """
    for p in iter_parsers(parser):
        has_positionals = any(
            not a.option_strings and not isinstance(a, argparse._SubParsersAction)
            for a in p._actions
        )
        for action in p._actions:
            if has_positionals:
                _one_value_per_flag(action)
            if shows_default(action) and not action.help:
                action.help = "(default: %(default)s)"  # argparse shows no help text at all
        p.formatter_class = DefaultsFormatter
        p.error = CliParser.error.__get__(p)  # type: ignore[method-assign]
        is_leaf = not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        if (
            p is not parser
            and is_leaf
            and not ({"-v", "--verbose"} & set(p._option_string_actions))
        ):
            p.add_argument(
                "-v",
                "--verbose",
                dest="verbose_after",
                action="count",
                default=argparse.SUPPRESS,
                help="more log output (also accepted before the subcommand)",
            )
