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
