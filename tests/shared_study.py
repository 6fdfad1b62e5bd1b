"""Reading a study that worker processes share while they run (journal file, sqlite or PostgreSQL)."""
from __future__ import annotations

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
