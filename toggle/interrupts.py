"""SIGINT and SIGTERM as an interrupt that is never lost.

The signal handler raises KeyboardInterrupt in whatever Python code the main thread is running.
When that code is a garbage-collection callback or a __del__ (sqlalchemy's weakref callbacks run
at any moment of a search), Python cannot raise there: it prints "Exception ignored in ..." with a
traceback and goes on as if nothing had happened, so the run ignored the user's signal. The hook
below keeps such an interrupt instead, and `check()`, called at each stage, trial and prompt batch,
raises it where it can be handled (save, exit 130).
"""
from __future__ import annotations

import signal
import sys

_pending: str | None = None  # the message of the latest interrupt that was swallowed
_previous_hook = None


def handler(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _unraisable(unraisable) -> None:
    global _pending
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _pending = str(unraisable.exc_value) or "interrupted"
        return
    (_previous_hook or sys.__unraisablehook__)(unraisable)


def install() -> dict:
    """Install the handler for SIGTERM (and SIGINT where Python's default is in place) and the
    hook that keeps swallowed interrupts. Returns the handlers it replaced."""
    global _previous_hook, _pending
    _pending = None
    if sys.unraisablehook is not _unraisable:
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, handler)
    return previous


def pending() -> bool:
    return _pending is not None


def check() -> None:
    """Raise an interrupt that arrived where it could not be raised (see the module docstring)."""
    global _pending
    if _pending is not None:
        message, _pending = _pending, None
        raise KeyboardInterrupt(message)
