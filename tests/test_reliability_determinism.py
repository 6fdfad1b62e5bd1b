"""Determinism: the same `toggle search` command with the same seed, run twice in fresh
processes, gives the same plan, the same trials and the same summary (modulo wall times and
the run directory's own path)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from search_inputs import write_search_inputs

ROOT = Path(__file__).resolve().parent.parent
TIMING_COLUMNS = {"eval_seconds", "sampler_seconds"}


def _without_timings(obj):
    """Drop what measures time or names the run's own directory."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if not (k.endswith(("seconds", "_s")) or k in ("timings", "run_dir", "storage", "created"))}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _search(tmp_path: Path, tiny: Path, out: str) -> Path:
    run = tmp_path / out
    command = [sys.executable, "-m", "toggle.cli", "search", str(tiny), "--budget", "150KB",
               "--specs", str(tmp_path / "s.stl"), "--prompts", str(tmp_path / "p.yaml"),
               "--profile", str(tmp_path / "profile.yaml"), "--trials", "10", "--seed", "7", "--out", str(run)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOGGLE_CACHE_DIR=str(tmp_path / f"cache-{out}"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return run


def test_same_command_same_seed_same_results(tiny_llama_dir, tmp_path):
    write_search_inputs(tmp_path)
    a, b = _search(tmp_path, tiny_llama_dir, "a"), _search(tmp_path, tiny_llama_dir, "b")

    summary_a, summary_b = (_without_timings(json.loads((r / "summary.json").read_text())) for r in (a, b))
    assert summary_a == summary_b
    assert summary_a["trials"] == 10 and summary_a["seed"] == 7

    def trials(run: Path) -> list[dict]:
        rows = list(csv.DictReader((run / "trials.csv").read_text().splitlines()))
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]

    rows_a = trials(a)
    assert rows_a == trials(b)
    assert len({tuple(sorted(r.items())) for r in rows_a}) > 3  # the trials differ from each other: a real search ran
    assert (a / "pareto.csv").read_text() == (b / "pareto.csv").read_text()
    assert summary_a["satisfied"]  # this budget and eps leave room for a plan: compare real plans
    assert (a / "plan.yaml").read_text() == (b / "plan.yaml").read_text()
