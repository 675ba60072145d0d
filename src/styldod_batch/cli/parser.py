"""The runner's argument parser: a mistake costs one line, with the nearest right spelling."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_USAGE = 2
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)'")


class UsageError(SystemExit):
    """A bad command line, already told on stderr; ``message`` for a ``--json`` answer."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


class Parser(argparse.ArgumentParser):
    """``argparse`` that answers a bad argument with one line, not the whole usage, and
    suggests the nearest option or command when one was mistyped."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        choice = _INVALID_CHOICE.search(message)
        if choice is not None:
            hint = _nearest(choice.group(1), self._choices())
        text = f"{self.prog}: {message}{hint} (see {self.prog} --help)"
        sys.stderr.write(text + "\n")
        raise UsageError(text)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parser(parsed)
            hints = [
                _nearest(extra.split("=", 1)[0], command.option_strings())
                for extra in extras
                if extra.startswith("-")
            ]
            command.error(f"unrecognized arguments: {' '.join(extras)}{''.join(hints)}")
        return parsed

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def _choices(self) -> list[str]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return list(action.choices)
        return []

    def _command_parser(self, parsed: argparse.Namespace) -> Parser:
        """The parser of the command that was given (its options are the ones to suggest)."""
        current: Parser = self
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest or "", None)
                found: Any = action.choices.get(chosen) if chosen else None
                if isinstance(found, Parser):
                    current = found._command_parser(parsed)
        return current


def _nearest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
