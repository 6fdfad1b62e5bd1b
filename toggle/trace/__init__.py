"""Stage 3, trace: the base model's token paths and its outputs along them, cached.

Two separate operations:

* `generate_paths`: a model generates each prompt's continuation greedily (T steps, or up
  to its end-of-sequence token). For the search this is the BASE model, once.
* `score_paths`: ONE teacher-forced pass of a model over given paths, returning exactly what
  the signals need at every step (log-probabilities, attention to the prompt's first tokens,
  hidden states, gold-answer log-probabilities). Every candidate is scored by it over the
  base model's paths (evaluate.py).
* `generate_recorded`: the base model's generation that records those outputs as it goes,
  so the base trace costs one pass, not two (gold answers, off the path, take score_paths).
  They equal a teacher-forced pass's to float rounding (an unmodified model scores JSD ~1e-8
  against them, not 0); when only the paths are cached, the base is scored by score_paths
  over them instead, under its own key.

A free-running audit scores along another path: `generate_paths` with the compressed model,
then `trace_along(base, ...)` scores the base model along those paths.

Traces are cached in memory and on disk under `cache_dir()/traces/` (safetensors, atomic
writes): paths keyed by model fingerprint, prompt-suite fingerprint, split and generation
settings; base outputs additionally by the specs' needs, signal options, device and dtype.
`build_trace` uses the process-wide `DEFAULT_CACHE` unless given a `TraceCache` of its own.

The package: generate.py (greedy paths), record.py (generation that records the outputs),
score.py (the teacher-forced pass), capture.py (attention weights during either pass),
prefix.py (a prefix every prompt shares, run once per pass: a chat template's system prompt),
replay.py (block outputs kept and reused under the same weights: profiling's one-group plans),
cache.py (TraceCache), build.py (Trace, build_trace, trace_along), padding.py (left padding
shared by generation and scoring). Everything callers
use is importable from `toggle.trace`.
"""
from __future__ import annotations

from .build import TRACE_VERSION, Trace, base_continuations, build_trace, encode_suite, trace_along
from .cache import DEFAULT_CACHE, MEMORY_LIMIT, TraceCache
from .generate import DEFAULT_STEPS, GenerationSettings, end_tokens, generate_paths
# _left_pad, _batches and _Sequence are private; re-exported for benchmarks/bench_evaluation.py.
from .padding import _left_pad
from .record import generate_recorded
from .score import (DEFAULT_BATCH_TOKENS, StepOutputs, TokenPath, _batches, _Sequence, check_outputs, resolve_options,
                    score_paths)

__all__ = [
    "DEFAULT_BATCH_TOKENS", "DEFAULT_CACHE", "DEFAULT_STEPS", "MEMORY_LIMIT", "TRACE_VERSION",
    "GenerationSettings", "StepOutputs", "TokenPath", "Trace", "TraceCache",
    "base_continuations", "build_trace", "check_outputs", "end_tokens", "encode_suite", "generate_paths",
    "generate_recorded",
    "resolve_options", "score_paths", "trace_along",
]
