"""Leading tokens every row of a pass shares (a chat template's system prompt: 24 of the default
suite's ~86 prompt tokens on SmolLM2) are run once; each batch continues from their keys and
values, its own left padding placed after them (the attention mask hides it, position ids
count past it). Used by the teacher-forced pass and by generation."""
from __future__ import annotations

import copy
import inspect

import torch

# Fewer shared tokens than this are not worth a separate forward: every row is then run whole.
PREFIX_MIN = 8


def shared_prefix(rows: list[list[int]], limit: int) -> int:
    """How many leading tokens all `rows` share, at most `limit`; 0 when fewer than PREFIX_MIN."""
    if not rows:
        return 0
    first, shared = rows[0], 0
    while shared < limit and all(r[shared] == first[shared] for r in rows):
        shared += 1
    return shared if shared >= PREFIX_MIN else 0


def prefix_cache(model, ids: list[int], device):
    """The keys and values of `ids` (run before any capture or hook is installed: plain attention)."""
    with torch.no_grad():
        # only the keys and values are wanted: the LM head runs on the last position alone
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
    return out.cache if hasattr(out, "cache") else out.past_key_values


# Prefix caches a PrefixKeeper holds (about 1 MB each for SmolLM2-135M's 24-token system prompt; a
# long opening on a large model is far more): the plan being scored and the one before it.
PREFIXES_KEPT = 2


class PrefixKeeper:
    """Prefix caches kept under the weights that computed them, so the passes that score one
    plan (early exit's chunks, the held-out audit's pieces, the gold-answer pass) run its prefix
    once. `arm` says what the model holds now (an applier's signature of every block; None: not
    known, nothing is kept or reused); a cache is handed out only for the same ids under the same
    signature. Callers copy it before appending to it (batch_cache)."""

    def __init__(self, kept: int = PREFIXES_KEPT):
        self.kept = kept
        self.entries: list[tuple] = []  # (signature, ids, cache), most recently used last
        self.signature = None
        self.counters = {"computed": 0, "reused": 0}

    def arm(self, signature) -> None:
        self.signature = signature

    def get(self, model, ids: list[int], device):
        if self.signature is None:
            self.counters["computed"] += 1
            return prefix_cache(model, ids, device)
        key = tuple(ids)
        for i, (signature, kept_ids, cache) in enumerate(self.entries):
            if kept_ids == key and signature == self.signature:
                self.entries.append(self.entries.pop(i))
                self.counters["reused"] += 1
                return cache
        cache = prefix_cache(model, ids, device)
        self.counters["computed"] += 1
        self.entries.append((self.signature, key, cache))
        del self.entries[:-self.kept]
        return cache


def batch_cache(model, prefix, rows: int) -> dict:
    """Keyword arguments that give a forward or generate() call its own copy of the prefix's cache,
    one row per sequence of the batch (the call appends to it)."""
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(rows)
    return {cache_argument(model): cache}


def cache_argument(model) -> str:
    """What the model's forward calls its key-value cache: `cache` from transformers 5.x on
    (`past_key_values` there is deprecated), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prompt_key(j: int, shared: int, pad: int) -> int:
    """Where token j of a row's sequence sits among the attention keys: in the shared prefix, or
    after it and the row's padding."""
    return j if j < shared else j + pad
