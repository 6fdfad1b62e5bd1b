"""Two worker processes on one study (journal file and sqlite), as `--storage URL --study NAME` does."""
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_search_engine import SMALL
from toggle.search import run_study
from toggle.search.synthetic import SyntheticObjective
obj = SyntheticObjective(blocks=2, eval_seconds=0.2)
run_study(obj, int(obj.base16_bytes * 0.5), profile=SMALL, run_dir={run_dir!r}, trials=10, sampler="bo",
          storage={storage!r}, study_name="shared", sampler_options={{"n_startup": 3}})
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study(tmp_path, kind):
    storage = f"journal:{tmp_path / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(tests=str(Path(__file__).parent), run_dir=str(tmp_path / f"w{i}"),
                                                                   storage=storage)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        store = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    else:
        store = storage
    finished = optuna.load_study(study_name="shared", storage=store).get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert 10 <= len(finished) <= 11  # each worker stops once the study has 10 (both may start the 10th)
    trials = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both did work
    evaluated = [tuple(sorted(t.params.items())) for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(set(evaluated)) == len(evaluated)  # no point is evaluated twice (pending ones are not proposed)
