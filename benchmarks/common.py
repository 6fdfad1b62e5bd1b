"""What every benchmark records beside its numbers: the machine, the load on it, the command,
and where the results go (benchmarks/results/NAME.json and .csv)."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine(device: str = "cpu") -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Run:
    """The provenance of one benchmark run; print() it at the start, finish() writes the results
    (call it after every row: a run stopped half-way keeps what it measured)."""

    def __init__(self, name: str, device: str = "cpu", threads: int | None = None):
        if threads:  # on an oversubscribed CPU one thread per process wastes less time spinning
            torch.set_num_threads(threads)
        self.name = name
        self.command = "PYTHONPATH=$PWD python " + " ".join(shlex.quote(a) for a in ["benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
        self.started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.machine = machine(device)
        self.load_start = load_average()
        print(f"# {name}: {self.command}")
        print(f"# {self.started}; {self.machine['cpu']}, {self.machine['cores']} cores, torch {self.machine['torch']} "
              f"({self.machine['torch_threads']} threads), device {device}; load average at start {self.load_start}",
              flush=True)

    def finish(self, rows: list[dict], extra: dict | None = None, final: bool = True) -> Path:
        load_end = load_average()
        if final:
            print(f"# load average at end {load_end}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{self.name}.json"
        data = {"benchmark": self.name, "command": self.command, "date": self.started, "machine": self.machine,
                "complete": final,
                "load_average": {"start": self.load_start, "end": load_end}, **(extra or {}), "rows": rows}
        out.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with open(RESULTS / f"{self.name}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows({k: _plain(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows)
        if final:
            print(f"# results: {out} and {out.with_suffix('.csv').name}")
        return out


def _plain(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: columns are (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, spec in columns:
            v = r.get(key)
            cells.append("-" if v is None else (format(v, spec) if spec else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
