"""An interrupt that Python could not raise (it arrived inside a garbage-collection callback) is
kept and raised at the next checkpoint, instead of being printed as a traceback and lost."""
import gc
import signal
import sys

import pytest

from toggle import interrupts


class _SignalledWhileCollected:
    """Runs the installed SIGTERM handler from __del__, as a signal landing during GC does."""

    def __del__(self):
        interrupts.handler(signal.SIGTERM, None)


@pytest.fixture
def installed():
    previous = interrupts.install()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_an_interrupt_swallowed_by_a_gc_callback_is_raised_at_the_next_check(installed, capsys):
    obj = _SignalledWhileCollected()
    obj.cycle = obj  # only the collector frees it, where an exception cannot propagate
    del obj
    gc.collect()
    assert interrupts.pending()
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        interrupts.check()
    assert not interrupts.pending()
    interrupts.check()  # raised once, not again
    assert "Traceback" not in capsys.readouterr().err


def test_other_unraisable_errors_still_reach_the_hook_before_it(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    previous = interrupts.install()
    for signum, handler in previous.items():
        signal.signal(signum, handler)

    class Broken:
        def __del__(self):
            raise ValueError("boom in __del__")

    Broken()
    gc.collect()
    assert not interrupts.pending()
    assert seen == ["ValueError('boom in __del__')"]
