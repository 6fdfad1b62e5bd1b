import signal
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "toggle.cli", *args], capture_output=True, text=True)


def test_help_shows_the_contract():
    out = run("search", "--help")
    assert out.returncode == 0
    for flag in ("--budget", "--specs", "--prompts", "--profile", "--trials", "--objective", "--relax",
                 "--set", "--out", "--storage", "--study", "--seed"):
        assert flag in out.stdout
    top = run("--help").stdout
    for command in ("search", "apply", "audit", "specs", "signals", "report"):
        assert command in top


def test_usage_errors_exit_2():
    out = run("search", "smollm2-135m")  # --budget missing
    assert out.returncode == 2 and "--budget" in out.stderr and "Traceback" not in out.stderr
    assert run().returncode == 2


class _Exit(Exception):
    pass


@pytest.mark.parametrize("raised, code, message", [
    (KeyboardInterrupt(), 130, "toggle: interrupted"),
    (RuntimeError("boom"), 70, "toggle: internal error"),
])
def test_the_program_never_leaves_silently(monkeypatch, capsys, raised, code, message):
    """What escapes the command (a signal just as it returns, a bug) is said on stderr with its exit
    code: the program ends with os._exit, which would otherwise drop it without a word."""
    from toggle import cli

    def command(_argv):
        raise raised

    def exit_now(status):
        raise _Exit(status)

    monkeypatch.setattr(cli, "_main", command)
    monkeypatch.setattr(cli.os, "_exit", exit_now)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(_Exit) as left:
            cli.run()
    finally:  # run() installs the program's handlers: give pytest its own back
        for s, h in handlers.items():
            signal.signal(s, h)
    err = capsys.readouterr().err
    assert left.value.args == (code,)
    assert message in err
    assert ("Traceback" in err and "RuntimeError: boom" in err) == (code == 70)
