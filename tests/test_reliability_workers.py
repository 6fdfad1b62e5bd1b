"""Two `toggle search` workers on one study (`--storage URL --study NAME`), as two machines
would run it: no trial is evaluated twice and the results of both are kept.

sqlite and journal storage always run. PostgreSQL runs when its server binaries are here
(initdb, pg_ctl: /usr/lib/postgresql/*/bin or on PATH; Debian package `postgresql`) and the
psycopg driver is installed (test extras): the test starts a throw-away server on a loopback
port in a temporary directory, as the `postgres` (or `nobody`) user when running as root,
since the server refuses to run as root.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from search_inputs import write_search_inputs
from shared_study import open_storage, wait_for_a_finished_trial

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 8


def postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    candidates = ([str(Path(found).parent)] if found else []) + ["/usr/local/bin"] + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for d in candidates:
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _as_user() -> list[str]:
    """The prefix that runs a server command as a non-root user (postgres refuses root)."""
    if os.geteuid() != 0:
        return []
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    pytest.skip("PostgreSQL: running as root and no postgres or nobody user to run the server as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A PostgreSQL server on a loopback port for this test only; its URL."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install the Debian package postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed (pip install -e '.[test]')")
    prefix = _as_user()
    home = Path(tempfile.mkdtemp(prefix="toggle-pg-"))  # not under pytest's tmp: that is private to root
    if prefix:
        uid, gid = (int(p.split("=")[1]) for p in prefix[1:3])
        os.chown(home, uid, gid)
    data, port = home / "data", _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    try:
        made = run(str(bindir / "initdb"), "-D", str(data), "-U", "toggle", "--auth=trust", "-E", "UTF8", "--no-sync")
        if made.returncode != 0:
            pytest.skip(f"PostgreSQL: initdb failed: {(made.stderr or made.stdout).strip()[-300:]}")
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -F"
        started = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
        if started.returncode != 0:
            log = (home / "log").read_text() if (home / "log").exists() else started.stderr
            pytest.skip(f"PostgreSQL: the server did not start: {log.strip()[-300:]}")
        yield f"postgresql+psycopg://toggle@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


FIRST = TRIALS // 2  # the first worker stops when the study has this many trials; the second goes on to TRIALS


def _two_workers(tmp_path: Path, tiny: Path, storage: str) -> list[optuna.trial.FrozenTrial]:
    """Worker 0 asks for FIRST trials, worker 1 for TRIALS; worker 1 starts once worker 0 has finished
    a trial, so both do work whatever the machine's speed (started together, the one that loads first
    could finish every trial before the other's first), and they overlap while worker 0 still runs."""
    write_search_inputs(tmp_path, prompts=2, profile_prompts=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOGGLE_CACHE_DIR=str(tmp_path / "cache"))
    procs = []
    for i, trials in enumerate((FIRST, TRIALS)):
        command = [sys.executable, "-m", "toggle.cli", "search", str(tiny), "--budget", "150KB",
                   "--specs", str(tmp_path / "s.stl"), "--prompts", str(tmp_path / "p.yaml"),
                   "--profile", str(tmp_path / "profile.yaml"), "--trials", str(trials),
                   "--storage", storage, "--study", "shared", "--out", str(tmp_path / f"worker{i}")]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        if i == 0:
            wait_for_a_finished_trial(procs[0], storage, 300)
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode in (0, 1), err[-3000:]
        assert "Traceback" not in err
    return optuna.load_study(study_name="shared", storage=open_storage(storage)).get_trials()


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_two_search_workers_share_one_study(kind, tiny_llama_dir, tmp_path, request):
    if kind == "postgresql":
        storage = request.getfixturevalue("postgres_url")
    elif kind == "sqlite":
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        storage = f"journal:{tmp_path / 'shared.log'}"
    trials = _two_workers(tmp_path, tiny_llama_dir, storage)

    done = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    finished = [t for t in trials if t.state in done]
    assert TRIALS <= len(finished) <= TRIALS + 1  # worker 1 stops at TRIALS; both may start the last one
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    workers = {t.user_attrs.get("worker") for t in finished}
    assert len(workers) == 2, workers  # both did work, and both results are in the study
    evaluated = [tuple(sorted(t.params.items())) for t in finished
                 if "robustness" in t.user_attrs and "duplicate_of" not in t.user_attrs]
    assert len(set(evaluated)) == len(evaluated)  # no point was evaluated twice
    for i, asked in enumerate((FIRST, TRIALS)):  # each worker wrote a valid run directory from the shared study
        summary = json.loads((tmp_path / f"worker{i}" / "summary.json").read_text())
        assert summary["study"] == "shared" and summary["trials"] >= asked
