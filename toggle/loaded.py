"""A loaded model and the fingerprints that identify its weights.

`LoadedModel` is what every stage takes: the torch model (eval mode, no gradients), its
tokenizer, the id plans and manifests record, and a fingerprint that is stable across loads of
the same weights (the key of every cache: traces, calibration statistics, profiling).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LoadedModel:
    """A model ready for evaluation: eval mode, no gradients."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str  # what plans and manifests record: alias, absolute path, or hub id
    source: str  # 'builtin', 'gguf', 'dir', 'hub' or 'toggle'
    fingerprint: str  # stable across loads of the same weights; used as a cache key
    load_seconds: float = 0.0
    # Set when the weights came from a quantised file (GGUF): the reference model is then
    # the de-quantised float model, which makes re-quantisation to that format easier.
    source_quantization: str | None = None
    # Bytes of the weights file(s) the model was loaded from (the .gguf, or the directory's
    # safetensors); None for a hub id. Reports compare the compressed size with it too.
    source_bytes: int | None = None
    # The file the weights came from when it is a GGUF file (its metadata is copied into GGUF
    # files written from this model).
    source_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def file_digest(path: Path) -> str:
    """Content hash of a file (sha256, first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def dir_fingerprint(path: Path) -> str:
    """Identity of a model directory: the names and contents of its files. Contents, not sizes and
    times: another model copied over one with its times kept (tar, rsync -a, cp -p) must not reuse
    the first one's traces, and a plain copy of the same weights is the same model. (About 1.5 s
    a GB on one core; a GGUF file is hashed whole the same way.)"""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return "dir-" + h.hexdigest()[:16]


def hub_fingerprint(model_id: str) -> str:
    return "hub-" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
