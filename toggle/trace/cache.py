"""The trace cache: traces built in this process, kept in memory, and their files on disk
(safetensors, atomic writes) under <cache root>/traces/, so a second build does no model work."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..files import atomic_path, cache_dir
from ..prompts import EncodedPrompt
from .generate import GenerationSettings
from .score import StepOutputs, TokenPath

if TYPE_CHECKING:  # annotations only: build.py, where Trace lives, imports this module
    from .build import Trace

# The package's logger, "toggle.trace" as before the split (the CLI prints logger names).
log = logging.getLogger(__package__)

MEMORY_LIMIT = 4  # traces kept in memory per cache


class TraceCache:
    """Where built traces are kept, in memory and on disk.

    Memory: the last `memory_limit` traces stored with `put`, by key (when full, the one
    stored first is dropped; `get` does not reorder them). Disk: under `directory`,
    paths-<path key>.safetensors holds the generated token paths and
    scores-<score key>.safetensors the base outputs along them. Files are written atomically;
    one that cannot be read, or does not fit the prompts it is read for, is ignored (logged
    as a warning), so the caller rebuilds and rewrites it rather than trusting it.

    `directory` defaults to `cache_dir()/traces`, looked up at each use so that a changed
    $TOGGLE_CACHE_DIR is followed.
    """

    def __init__(self, directory: str | Path | None = None, *, memory_limit: int = MEMORY_LIMIT):
        self._directory = None if directory is None else Path(directory)
        self.memory_limit = memory_limit
        self._memory: dict[str, Trace] = {}

    # --- memory ------------------------------------------------------------------------------

    def get(self, key: str) -> Trace | None:
        """The trace stored under `key` in memory, or None."""
        return self._memory.get(key)

    def put(self, trace: Trace) -> None:
        """Keep `trace` in memory under `trace.key`, dropping the oldest beyond the limit."""
        if self.memory_limit < 1:
            return
        while len(self._memory) >= self.memory_limit:
            self._memory.pop(next(iter(self._memory)))
        self._memory[trace.key] = trace

    def clear(self) -> None:
        """Forget the traces held in memory; the files on disk stay."""
        self._memory.clear()

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._memory

    # --- disk --------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else cache_dir() / "traces"

    def paths_file(self, path_key: str) -> Path:
        return self.directory / f"paths-{path_key}.safetensors"

    def scores_file(self, score_key: str) -> Path:
        return self.directory / f"scores-{score_key}.safetensors"

    def write_paths(self, path_key: str, encoded: list[EncodedPrompt], tokens: list[tuple[int, ...]],
                    settings: GenerationSettings) -> Path:
        path = self.paths_file(path_key)
        flat = torch.tensor([t for seq in tokens for t in seq], dtype=torch.long)
        meta = {"prompt_ids": json.dumps([e.prompt.id for e in encoded]),
                "lengths": json.dumps([len(t) for t in tokens]), "settings": json.dumps(asdict(settings))}
        with atomic_path(path) as tmp:
            save_file({"tokens": flat}, str(tmp), metadata=meta)
        return path

    def read_paths(self, path_key: str, encoded: list[EncodedPrompt]) -> list[tuple[int, ...]] | None:
        """The stored continuations of these prompts, or None (missing, unreadable, other prompts)."""
        path = self.paths_file(path_key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                flat = f.get_tensor("tokens").tolist()
            ids, lengths = json.loads(meta["prompt_ids"]), json.loads(meta["lengths"])
        except Exception as e:  # a damaged cache file is rebuilt, never trusted
            log.warning("ignoring unreadable trace cache %s: %s", path, e)
            return None
        if ids != [e.prompt.id for e in encoded] or sum(lengths) != len(flat):
            return None
        out, at = [], 0
        for n in lengths:
            out.append(tuple(flat[at:at + n]))
            at += n
        return out

    def write_scores(self, score_key: str, scores: StepOutputs) -> Path:
        path = self.scores_file(score_key)
        meta = {"steps": json.dumps(list(scores.steps)), "answer_steps": json.dumps(list(scores.answer_steps))}
        with atomic_path(path) as tmp:
            save_file(scores.tensors(), str(tmp), metadata=meta)
        return path

    def read_scores(self, score_key: str, paths: list[TokenPath]) -> StepOutputs | None:
        """The stored outputs along these paths, or None (missing, unreadable, other step counts)."""
        path = self.scores_file(score_key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            tensors = load_file(str(path))
            out = StepOutputs(tuple(json.loads(meta["steps"])), tuple(json.loads(meta["answer_steps"])), **tensors)
        except Exception as e:
            log.warning("ignoring unreadable trace cache %s: %s", path, e)
            return None
        if out.steps != tuple(len(p.tokens) for p in paths):
            return None
        return out


# The cache build_trace uses when it is given none: a convenience for the CLI and the Python
# API, whose callers build traces without handling a cache, and what every caller got before
# caches were objects. It is shared by the whole process; a caller that wants isolation (its
# own directory, or memory no one else fills or clears) passes its own TraceCache.
DEFAULT_CACHE = TraceCache()
