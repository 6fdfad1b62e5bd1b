"""Where the study lives: sqlite in the run directory by default, or any Optuna storage URL.

    (default)                    sqlite:///RUN_DIR/study.db
    --storage postgresql://...   any SQLAlchemy URL Optuna's RDB storage accepts (many machines)
    --storage journal:PATH       an append-only journal file (many processes on one file system)
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna

from ..errors import InvalidInput


def open_storage(url: str | None, run_dir: Path):
    """(storage object, URL as shown to the user)."""
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), url
    try:
        storage = _rdb(url)
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as e:
        raise InvalidInput(f"--storage: cannot open {url!r}: {e}; expected an SQLAlchemy URL such as "
                           f"sqlite:///study.db or postgresql://user@host/db, or journal:PATH") from None
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage, url


def _rdb(url: str, attempts: int = 5):
    """Two workers starting on a fresh database race to create its tables; the loser retries
    and finds them made."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # The heartbeat lets a worker killed hard (no Ctrl-C) have its running trial marked
                # failed by the others, instead of counting as pending forever.
                return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _fast_sqlite(engine) -> None:
    """Optuna commits once per parameter; with sqlite's default full fsync that costs ~1 s per
    trial of 180 parameters. WAL with synchronous=NORMAL stays crash-safe (a power cut may lose
    the last trial, never corrupt the file) and lets several local workers read while one writes."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL needs a lock another worker may hold
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections opened before the listener reconnect with the pragmas
