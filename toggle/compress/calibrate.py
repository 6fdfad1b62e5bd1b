"""Calibration statistics: the input Gram matrix of every compressible module.

For a module y = W x, G = sum over calibration tokens of x x^T (in, in) is all the
activation-aware methods need: Wanda's channel norms ||x_j||_2 = sqrt(G_jj), AWQ's channel
RMS, GPTQ's Hessian, and the whitening of activation-aware SVD. Modules reading the same
input tensor (q/k/v, gate/up) share one matrix. The LM head's input is the base model's
last hidden state, taken from the backbone's output so the vocabulary projection is never
computed; a tied embedding gets the head's statistics (it is the head's weight).

Statistics are cached on disk as safetensors, keyed by the model fingerprint and a hash of
the calibration token ids, so a search and a later `toggle apply` see the same numbers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import InvalidInput
from ..files import atomic_path, cache_dir
from ..modules import compressible_modules
from ..trace.generate import generation_batches


@dataclass
class ActivationStats:
    """Per-module input statistics over `n_tokens` calibration tokens."""

    grams: dict[str, torch.Tensor]  # owner module name -> sum of x x^T, float32 (in, in)
    aliases: dict[str, str]  # module name -> owner name (itself when it owns one)
    n_tokens: int
    fingerprint: str = ""
    data_hash: str = ""
    meta: dict = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.aliases

    def gram_sum(self, name: str) -> torch.Tensor:
        return self.grams[self.aliases[name]]

    def gram(self, name: str) -> torch.Tensor:
        """E[x x^T] over calibration tokens."""
        return self.gram_sum(name) / max(self.n_tokens, 1)

    def channel_norm(self, name: str) -> torch.Tensor:
        """||x_j||_2 over all calibration tokens, per input channel (Wanda)."""
        return torch.diagonal(self.gram_sum(name)).clamp(min=0).sqrt()

    @property
    def key(self) -> str:
        return f"{self.fingerprint}-{self.data_hash}"

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes for g in self.grams.values())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"aliases": json.dumps(self.aliases), "n_tokens": str(self.n_tokens),
                "fingerprint": self.fingerprint, "data_hash": self.data_hash, "meta": json.dumps(self.meta)}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.grams.items()}, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ActivationStats":
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                grams = {k: f.get_tensor(k) for k in f.keys()}
            aliases = json.loads(meta["aliases"])
            n_tokens = int(meta["n_tokens"])
        except FileNotFoundError:
            raise InvalidInput(f"{path}: no such calibration statistics file") from None
        except (OSError, KeyError, ValueError, json.JSONDecodeError, SafetensorError) as e:
            raise InvalidInput(f"{path}: not a toggle calibration statistics file ({type(e).__name__}: {e})") from None
        missing = sorted(set(aliases.values()) - set(grams))
        if missing:
            raise InvalidInput(f"{path}: statistics for {missing[0]} are missing from the file")
        return cls(grams=grams, aliases=aliases, n_tokens=n_tokens, fingerprint=meta.get("fingerprint", ""),
                   data_hash=meta.get("data_hash", ""), meta=json.loads(meta.get("meta") or "{}"))


# Padded tokens per forward while gathering statistics: SmolLM2-135M's 30 calibration sequences
# (3,544 tokens) took 10.7 s in 2 forwards against 11.2 s one at a time on 2 cores; the Gram
# products cost as much as the forward (benchmarks/bench_stats.py).
STATS_BATCH_TOKENS = 4096


def data_hash(sequences: list[torch.Tensor]) -> str:
    """Identity of the calibration data: the token ids of every sequence, in order."""
    h = hashlib.sha256()
    for seq in sequences:
        ids = seq.reshape(-1).to(torch.int64).cpu().numpy()
        h.update(len(ids).to_bytes(8, "little"))
        h.update(ids.tobytes())
    return h.hexdigest()[:16]


def stats_cache_path(fingerprint: str, digest: str) -> Path:
    return cache_dir() / "stats" / f"{fingerprint}-{digest}.safetensors"


def collect_stats(model: torch.nn.Module, sequences: list[torch.Tensor], *, refs=None,
                  fingerprint: str | None = None, cache: bool = True,
                  batch_tokens: int = STATS_BATCH_TOKENS) -> ActivationStats:
    """Run `model` over `sequences` (1-D or (1, T) tensors of input ids) and gather the input
    Gram matrix of every module in `refs` (default: all compressible modules).

    Sequences of similar length run together, right-padded to at most `batch_tokens` padded
    tokens per forward (0: one at a time), and only their own tokens are counted; a model that
    feeds a module routed tokens instead of the batch (mixture-of-experts experts, where pads
    would be routed too) is run one sequence at a time.

    With a `fingerprint` (LoadedModel.fingerprint) and `cache`, the result is read from and
    written to the cache directory, keyed by fingerprint and data hash.
    """
    if not sequences:
        raise InvalidInput("calibration: no token sequences given")
    refs = refs if refs is not None else compressible_modules(model)
    digest = data_hash(sequences)
    path = stats_cache_path(fingerprint, digest) if fingerprint and cache else None
    if path is not None and path.is_file():
        stats = ActivationStats.load(path)
        if all(r.name in stats for r in refs if r.is_linear):
            return stats

    try:
        collector = _collect(model, refs, sequences, batch_tokens)
    except _RoutedInput:  # a module is fed routed tokens (mixture of experts): one sequence at a time
        collector = _collect(model, refs, sequences, 0)
    stats = ActivationStats(grams={k: v.float() for k, v in collector.grams.items()}, aliases=collector.aliases,
                            n_tokens=collector.n_tokens, fingerprint=fingerprint or "", data_hash=digest)
    if path is not None:
        stats.save(path)
    return stats


def _collect(model, refs, sequences: list[torch.Tensor], batch_tokens: int) -> "_Collector":
    collector = _Collector(model, refs)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            # length-sorted batches of at most batch_tokens padded tokens, as generation cuts them (0: one each)
            for batch in generation_batches([len(s.reshape(-1)) for s in sequences], len(sequences), batch_tokens):
                rows = [sequences[i].reshape(-1) for i in batch]
                width = max(len(r) for r in rows)
                ids = torch.zeros(len(rows), width, dtype=torch.long)
                mask = torch.zeros(len(rows), width, dtype=torch.long)
                for k, r in enumerate(rows):  # right padding: causal attention keeps pads out of real tokens
                    ids[k, :len(r)], mask[k, :len(r)] = r, 1
                ids, mask = ids.to(device), mask.to(device)
                collector.start(mask.bool() if len(rows) > 1 else None)
                hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                collector.add_head(hidden)
    finally:
        collector.remove()
    return collector


class _RoutedInput(Exception):
    """A hooked module's input is not laid out as the batch's (batch, tokens, features)."""


class _Collector:
    """Forward pre-hooks accumulating x^T x; modules fed the same tensor share one sum."""

    def __init__(self, model: torch.nn.Module, refs):
        self.grams: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] = {}
        self.n_tokens = 0
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}  # id(input) -> (input, owner), one forward
        self._handles = []
        self._keep: torch.Tensor | None = None
        self._head_names = [r.name for r in refs if r.block is None and r.is_linear]
        for ref in refs:
            if ref.block is None:
                continue
            module = model.get_submodule(ref.name)
            self._handles.append(module.register_forward_pre_hook(self._hook(ref.name)))

    def start(self, keep: torch.Tensor | None = None) -> None:
        """A new forward; `keep` (batch, tokens) marks the real tokens of a padded batch."""
        self._seen.clear()
        self._keep = keep

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            seen = self._seen.get(id(x))
            if seen is not None and seen[0] is x:
                self.aliases.setdefault(name, seen[1])
                return
            self._seen[id(x)] = (x, name)  # holding x keeps its id unique during this forward
            self.aliases.setdefault(name, name)
            self._accumulate(self.aliases[name], x)
        return hook

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x's rows of real tokens, (n, features)."""
        if self._keep is None:
            return x.reshape(-1, x.shape[-1])
        if x.dim() != 3 or x.shape[:2] != self._keep.shape:
            raise _RoutedInput(tuple(x.shape))
        return x[self._keep]

    def _accumulate(self, owner: str, x: torch.Tensor) -> None:
        flat = self._tokens(x).float()
        g = flat.T @ flat
        if owner in self.grams:
            self.grams[owner] += g.double()
        else:
            self.grams[owner] = g.double()

    def add_head(self, hidden: torch.Tensor) -> None:
        self.n_tokens += hidden.shape[0] * hidden.shape[1] if self._keep is None else int(self._keep.sum())
        for name in self._head_names:
            owner = self._head_names[0]
            self.aliases.setdefault(name, owner)
            if name == owner:
                self._accumulate(owner, hidden)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._seen.clear()
