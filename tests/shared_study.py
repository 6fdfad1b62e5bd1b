"""Reading a study that worker processes share while they run (journal file, sqlite or PostgreSQL)."""
from __future__ import annotations

import time

import optuna

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def open_storage(storage: str):
    """What optuna.load_study takes for a `--storage` value (journal:PATH is a journal file)."""
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return storage


def finished_trials(storage: str, study: str = "shared") -> list[optuna.trial.FrozenTrial]:
    """The study's complete and pruned trials; none before a worker has created the study."""
    try:
        loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    except KeyError:
        return []
    return loaded.get_trials(states=FINISHED)


def wait_for_a_finished_trial(worker, storage: str, seconds: float) -> None:
    """Block until the study has a finished trial, failing if `worker` (a Popen with stderr piped)
    exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not finished_trials(storage):
        assert worker.poll() is None, worker.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the first worker finished no trial in {seconds:g} s"
        time.sleep(0.1)
