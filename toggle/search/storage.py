"""Where the study lives: sqlite in the run directory by default, or any Optuna storage URL.

    (default)                    sqlite:///RUN_DIR/study.db
    --storage postgresql://...   any SQLAlchemy URL Optuna's RDB storage accepts (many machines)
    --storage journal:PATH       an append-only journal file (many processes on one file system)
"""
from __future__ import annotations

import os
import socket
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from ..errors import InvalidInput

WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process runs a trial (many workers, many machines)
_VALID = ("expected an SQLAlchemy URL such as sqlite:///study.db or postgresql://user@host/db "
          "(needs the psycopg package), or journal:PATH")


def check_storage_url(url: str | None) -> None:
    """Fail on a malformed --storage URL or a missing database driver before any model work."""
    if url is None or url.startswith("journal:"):
        if url is not None and not url[len("journal:"):].strip():
            raise InvalidInput(f"--storage {url!r}: journal:PATH needs a file path, e.g. journal:runs/study.log")
        return
    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as e:
        raise InvalidInput(f"--storage {redact(url)!r}: the database driver is not installed ({e}); "
                           f"for PostgreSQL: pip install 'psycopg[binary]'") from None
    except (SQLAlchemyError, ValueError) as e:
        raise InvalidInput(f"--storage {redact(url)!r}: {_first_line(e)}; {_VALID}") from None


def open_storage(url: str | None, run_dir: Path):
    """(storage object, URL as shown to the user)."""
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    check_storage_url(url)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), url
    try:
        storage = _rdb(url)
    except OperationalError as e:
        raise InvalidInput(f"--storage: cannot connect to {redact(url)!r}: {_first_line(e.orig or e)}; check that the "
                           f"database server runs and the URL's host, port, user and database name") from None
    except (ImportError, ValueError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise InvalidInput(f"--storage: cannot open {redact(url)!r}: {_first_line(e)}; {_VALID}") from None
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage, url


def _rdb(url: str, attempts: int = 5):
    """Two workers starting on a fresh database race to create its tables; the loser retries
    and finds them made (PostgreSQL reports the race as a type or table that already exists)."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # The heartbeat lets a worker killed hard (no Ctrl-C) have its running trial marked
                # failed by the others, instead of counting as pending forever.
                return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            if attempt == attempts - 1 or (isinstance(e, ProgrammingError) and "already exists" not in str(e)):
                raise
            time.sleep(0.5 * (attempt + 1))


def _fast_sqlite(engine) -> None:
    """Optuna commits once per parameter; with sqlite's default full fsync that costs ~1 s per
    trial of 180 parameters. WAL with synchronous=NORMAL stays crash-safe (a power cut may lose
    the last trial, never corrupt the file) and lets several local workers read while one writes.

    Every transaction also takes sqlite's write lock when it begins (BEGIN IMMEDIATE, SQLAlchemy's
    recipe for serializable sqlite): optuna hands out an enqueued trial by reading that it waits,
    then writing that it runs, and with pysqlite's deferred transactions two workers could both
    read "waiting" and both run the same trial (then one fails: "Cannot tell a COMPLETE trial")."""
    @event.listens_for(engine, "connect")
    def _pragmas(conn, _record):
        conn.isolation_level = None  # pysqlite emits no BEGIN of its own: the "begin" listener does
        cur = conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL needs a lock another worker may hold
        _set_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listener reconnect with the pragmas


def _set_wal(cur, attempts: int = 60) -> None:
    """WAL mode is stored in the file, so a worker that finds it set leaves it. Switching needs an
    exclusive lock, and sqlite answers "database is locked" at once (without the busy timeout)
    while the other worker starting beside it holds one: retry for up to ~30 s."""
    for attempt in range(attempts):
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.5)


def recover_orphans(study, storage) -> list[int]:
    """Trials left RUNNING by a worker of this machine that no longer runs (killed with SIGKILL,
    a power cut) are marked FAIL and their points queued again, so a resumed search evaluates
    them instead of treating them as pending forever. Trials of other machines are left to the
    RDB storage's heartbeat (a worker silent for its grace period is failed by the others).
    `storage`: the study's storage object (open_storage), through which a trial of another
    process is updated (Optuna's public BaseStorage API)."""
    host = socket.gethostname()
    recovered = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        name, _, pid = who.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:  # the reason first: a finished trial cannot be updated
            storage.set_trial_user_attr(trial_id, "reason", f"worker {who} stopped before finishing")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker of this machine recovered it at the same moment
        if t.params:
            attrs = {k: v for k, v in t.user_attrs.items() if k == "source"}
            study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number}, skip_if_exists=False)
        recovered.append(t.number)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # heartbeat-enabled storages: other machines too
    except Exception:  # noqa: BLE001 - best effort; the storage may not support heartbeats
        pass
    return recovered


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own pid on a trial this process has not started: a previous process's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redact(url: str) -> str:
    """Never show a database password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
