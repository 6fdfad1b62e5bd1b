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


def test_search_refuses_an_out_directory_that_is_not_a_run_and_claims_a_run(tiny_llama_dir, tmp_path, capsys):
    from toggle.cli import main
    from toggle.rundir import MARKER, RunDir

    # someone's project folder, with a model/ and a summary.json of its own: refused before any model work
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "model" / "config.json").write_text("{}")
    (project / "summary.json").write_text('{"mine": 1}')
    assert main(["search", str(tiny_llama_dir), "--budget", "60KB", "--trials", "1", "--out", str(project)]) == 2
    err = capsys.readouterr().err
    assert f"--out {project}: the directory exists and is not a toggle run directory" in err
    assert (project / "model" / "config.json").read_text() == "{}" and sorted(p.name for p in project.iterdir()) == [
        "model", "summary.json"]
    afile = tmp_path / "afile"
    afile.write_text("hi")
    assert main(["search", str(tiny_llama_dir), "--budget", "60KB", "--trials", "1", "--out", str(afile)]) == 2
    assert f"--out {afile}: exists and is a file; a run directory is a folder" in capsys.readouterr().err

    # a run directory: the previous run's results go, its caches stay
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "operating_points").mkdir()
    for name in (MARKER, "plan.yaml", "summary.json", "heldout.json", "calibration.json", "trials.csv",
                 "report.md", "pareto.png", "study.db", "measured.json", "calibration_stats.safetensors"):
        (run / name).write_text("x")
    RunDir(run).claim()
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [MARKER, "study.db", "measured.json", "calibration_stats.safetensors"])
    seeded = tmp_path / "seeded"  # a profiling cache copied in, as benchmarks/bench_search.py seeds its runs
    seeded.mkdir()
    (seeded / "measured.json").write_text("{}")
    RunDir(seeded).claim()
    assert (seeded / "measured.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir(empty).claim()
    assert (empty / MARKER).is_file()


def test_a_reader_that_leaves_does_not_stop_the_command():
    from toggle.cli import _ReaderMayLeave

    class Closed:
        written = []

        def write(self, text):
            raise BrokenPipeError

        def flush(self):
            raise BrokenPipeError

    out = _ReaderMayLeave(Closed())
    assert out.write("a line\n") == 7  # printing goes on, into nothing
    out.flush()
    assert out.write("more\n") == 5 and not Closed.written
