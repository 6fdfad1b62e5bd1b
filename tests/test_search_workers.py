"""Two worker processes on one study (journal file and sqlite), as `--storage URL --study NAME` does."""
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from shared_study import finished_trials, wait_for_a_finished_trial

WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_search_engine import SMALL
from toggle.search import run_study
from toggle.search.synthetic import SyntheticObjective
obj = SyntheticObjective(blocks=2, eval_seconds=0.2)
run_study(obj, int(obj.base16_bytes * 0.5), profile=SMALL, run_dir={run_dir!r}, trials={trials}, sampler="bo",
          storage={storage!r}, study_name="shared", sampler_options={{"n_startup": 3}})
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study(tmp_path, kind):
    """Worker 0 asks for 5 trials, worker 1 for 10 and starts once worker 0 has finished one: both do
    work on any machine (started together, the first to import could take every trial)."""
    storage = f"journal:{tmp_path / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    procs = []
    for i, asked in enumerate((5, 10)):
        worker = WORKER.format(tests=str(Path(__file__).parent), run_dir=str(tmp_path / f"w{i}"), storage=storage, trials=asked)
        procs.append(subprocess.Popen([sys.executable, "-c", worker], env=env, stderr=subprocess.PIPE, text=True))
        if i == 0:
            wait_for_a_finished_trial(procs[0], storage, 200)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    finished = finished_trials(storage)
    assert 10 <= len(finished) <= 11  # worker 1 stops once the study has 10 (both may start the 10th)
    trials = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both did work
    evaluated = [tuple(sorted(t.params.items())) for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(set(evaluated)) == len(evaluated)  # no point is evaluated twice (pending ones are not proposed)


def test_an_enqueued_sqlite_trial_goes_to_one_worker_only(tmp_path, monkeypatch):
    """Optuna pops an enqueued trial by reading that it waits, then writing that it runs. Worker B
    pops it in between worker A's read and write: only one of them may get it (with pysqlite's
    deferred transactions both did, and one then failed with "Cannot tell a COMPLETE trial")."""
    import threading

    from toggle.search.storage import open_storage

    store_a, _ = open_storage(None, tmp_path)
    store_b, _ = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=store_a)
    study.enqueue_trial({"x": 1.0})
    trial_id = store_a.get_all_trials(study._study_id)[0]._trial_id
    got: dict[str, bool] = {}

    def pop(name, store):
        got[name] = store.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING)

    b = threading.Thread(target=pop, args=("b", store_b))
    checked = store_a.check_trial_is_updatable

    def between_read_and_write(tid, state):  # A has read the trial's state, not yet written it
        checked(tid, state)
        if not b.is_alive() and "b" not in got:
            b.start()
            b.join(timeout=1.0)  # B waits for A's lock (the fix), or pops the trial at once (the race)

    monkeypatch.setattr(store_a, "check_trial_is_updatable", between_read_and_write)
    pop("a", store_a)
    b.join(timeout=30)
    assert sorted(got.values()) == [False, True], got
