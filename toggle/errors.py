"""User-facing errors.

Anything a user can get wrong (a path, a budget, a spec line, a plan field) raises
`ToggleError`; the CLI prints its message on one line and exits with its code, never a
traceback. Library callers catch it like any exception.
"""
from __future__ import annotations

BAD_INPUT = 2
NOT_SATISFIED = 1
INTERRUPTED = 130
INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in toggle, not the user's input


class ToggleError(Exception):
    """Bad input or an unrecoverable condition the user can fix. Exit code 2 by default."""

    exit_code = BAD_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelLoadError(ToggleError):
    """MODEL could not be resolved or loaded."""


class InvalidInput(ToggleError):
    """A file or value supplied by the user is malformed: the message names where."""


def key_list(keys, *, quote: bool = False) -> str:
    """Keys a user wrote, for a one-line message: sorted, each as written when it is plain
    printable text, else quoted with its escapes (a key holding a newline stays on one line);
    `quote`: every key quoted."""
    def show(key) -> str:
        text = str(key)
        plain = not quote and text and text.isprintable() and text.strip() == text
        return text if plain else repr(text)
    return ", ".join(sorted(show(k) for k in keys))
