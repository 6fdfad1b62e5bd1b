"""Building a trace: generate the base model's paths and score it along them once, keyed
and cached (see cache.py); or score the base model along paths from elsewhere (trace_along)."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import transformers

from ..errors import InvalidInput, ToggleError
from ..files import json_digest
from ..prompts import EncodedPrompt, PromptSuite, encode
from ..signals import GOLD, LOGPROBS, SignalOptions
from .cache import DEFAULT_CACHE, TraceCache
from .generate import DEFAULT_STEPS, GENERATE_BATCH, GENERATE_TOKENS, GenerationSettings, generate_paths
from .limits import check_lengths
from .record import generate_recorded
from .score import DEFAULT_BATCH_TOKENS, StepOutputs, TokenPath, check_outputs, resolve_options, score_paths

TRACE_VERSION = 1  # part of every path key: bump it to orphan all cached traces


@dataclass
class Trace:
    """The base model's paths and outputs for a set of prompts: what candidates are compared with."""

    key: str
    model_id: str
    split: str
    settings: GenerationSettings
    needs: frozenset[str]
    options: SignalOptions  # resolved: absolute layer indices
    paths: list[TokenPath]
    base: StepOutputs
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    timings: dict = field(default_factory=dict)  # generate, score (seconds; 0 when loaded from cache)
    files: tuple[Path, ...] = ()

    @property
    def prompt_ids(self) -> list[str]:
        return [p.prompt_id for p in self.paths]

    def subset(self, ids) -> "Trace":
        """The same trace restricted to some prompts (e.g. for quick sensitivity profiling)."""
        index = {pid: i for i, pid in enumerate(self.prompt_ids)}
        unknown = [i for i in ids if i not in index]
        if unknown:
            raise InvalidInput(f"no prompt {unknown[0]!r} in the trace; it has {', '.join(self.prompt_ids)}")
        chosen = [index[i] for i in ids]
        return replace(self, paths=[self.paths[i] for i in chosen], base=self.base.select(chosen))


# --- building a trace ----------------------------------------------------------------------

def build_trace(loaded, suite: PromptSuite, specs=None, *, split: str = "calibration",
                steps: int | None = None, needs=None, options: SignalOptions | None = None,
                stop_at_eos: bool = True, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                use_cache: bool = True, cache: TraceCache | None = None) -> Trace:
    """Generate the base model's paths on a split of the suite, recording its outputs along
    them as it goes (one pass; gold-answer log-probabilities take a second over the answers).

    `specs` (a SpecSet) supplies needs, options and the steps its properties read; `steps`,
    `needs` and `options` override it. Cached on disk and in memory; a second call with the
    same inputs does no model work. The model must hold its base weights (call
    `applier.restore()` first if a plan was applied): the cache key is the model's fingerprint.

    `cache` is where traces are looked up and stored; None means the process-wide
    DEFAULT_CACHE (memory shared by every caller, files under cache_dir()/traces). Pass your
    own TraceCache for isolation. `use_cache=False` neither reads nor writes any cache.
    """
    chosen = suite.split(split)
    if len(chosen) == 0:
        raise InvalidInput(f"{suite.source}: no prompts in split {split!r}")
    needs = frozenset(needs if needs is not None else (specs.needs if specs is not None else {LOGPROBS}))
    options = options or (specs.options if specs is not None else SignalOptions())
    if steps is None:
        steps = (specs.steps_needed if specs is not None else None) or DEFAULT_STEPS
    if steps < 1:
        raise InvalidInput(f"steps: {steps} is not valid; expected at least 1 generated token")
    settings = GenerationSettings(steps=steps, stop_at_eos=stop_at_eos)
    model, tokenizer = loaded.model, loaded.tokenizer
    resolved = resolve_options(model, options, specs.option_where if specs is not None and options is specs.options else None)
    encoded = [encode(p, tokenizer) for p in chosen]
    check_lengths(model, encoded, steps, needs, resolved, suite.source)
    if GOLD in needs and not any(e.answer_ids for e in encoded):
        raise InvalidInput(f"{suite.source}: the specs use gold-answer signals but no {split} prompt has an answer")

    device, dtype = _device_dtype(model)
    path_key = _path_key(loaded, chosen, split, settings)
    # Base outputs come from one of two passes, equal to float rounding, and the key says which:
    # recorded during generation (record.py: one pass instead of two), or, when the paths are
    # already cached, a teacher-forced pass over them (cheaper than generating again).
    keys = {source: _key({"paths": path_key, "needs": sorted(needs), "options": asdict(resolved),
                          "device": device.type, "dtype": str(dtype), "batch_tokens": batch_tokens,
                          "source": source, "torch": torch.__version__, "transformers": _transformers_version(),
                          "generate": [GENERATE_BATCH, GENERATE_TOKENS] if source == "generation" else None})
            for source in ("generation", "teacher")}
    cache = cache if cache is not None else DEFAULT_CACHE
    if use_cache:
        for key in keys.values():
            hit = cache.get(key)
            if hit is not None:
                return hit

    timings = {"generate": 0.0, "score": 0.0}
    tokens = cache.read_paths(path_key, encoded) if use_cache else None
    if tokens is None:  # paths and outputs in one pass
        score_key = keys["generation"]
        start = time.perf_counter()
        tokens, base = generate_recorded(model, tokenizer, encoded, settings, needs, resolved)
        timings["generate"] = time.perf_counter() - start
        paths = _paths(encoded, tokens)
        if use_cache:
            cache.write_paths(path_key, encoded, tokens, settings)
        if GOLD in needs:  # the answers are not on the path: their own pass
            start = time.perf_counter()
            gold = score_paths(model, paths, {GOLD}, resolved, batch_tokens=batch_tokens)
            base.answer_steps, base.gold_logprob = gold.answer_steps, gold.gold_logprob
            timings["score"] = time.perf_counter() - start
        fresh = True
    else:
        paths = _paths(encoded, tokens)
        for score_key in keys.values():
            base = cache.read_scores(score_key, paths)
            if base is not None:
                break
        fresh = base is None
        if fresh:
            score_key = keys["teacher"]
            start = time.perf_counter()
            base = score_paths(model, paths, needs, resolved, batch_tokens=batch_tokens)
            timings["score"] = time.perf_counter() - start
    if fresh:
        problem = check_outputs(base, resolved)
        if problem:
            raise ToggleError(f"{loaded.model_id}: the base model itself gives {problem}; cannot build a trace")
        if use_cache:
            cache.write_scores(score_key, base)
    trace = Trace(score_key, loaded.model_id, split, settings, needs, resolved, paths, base, batch_tokens,
                  timings, (cache.paths_file(path_key), cache.scores_file(score_key)) if use_cache else ())
    if use_cache:
        cache.put(trace)
    return trace


def _paths(encoded: list[EncodedPrompt], tokens) -> list[TokenPath]:
    return [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, tokens)]


def base_continuations(loaded, suite: PromptSuite, *, split: str, steps: int, stop_at_eos: bool = True,
                       use_cache: bool = True, cache: TraceCache | None = None) -> dict[str, tuple[int, ...]]:
    """The base model's own greedy continuation of each prompt of a split (prompt id -> tokens),
    from the same cache as build_trace's paths (a teacher-mode trace of the split reuses them)."""
    chosen = suite.split(split)
    settings = GenerationSettings(steps=steps, stop_at_eos=stop_at_eos)
    encoded = [encode(p, loaded.tokenizer) for p in chosen]
    cache = cache if cache is not None else DEFAULT_CACHE
    tokens, _ = _continuations(loaded, encoded, _path_key(loaded, chosen, split, settings), settings,
                               cache if use_cache else None)
    return {e.prompt.id: t for e, t in zip(encoded, tokens)}


def _path_key(loaded, chosen: PromptSuite, split: str, settings: GenerationSettings) -> str:
    return _key({"v": TRACE_VERSION, "model": loaded.fingerprint, "suite": chosen.fingerprint, "split": split,
                 "settings": asdict(settings), "template": _template_hash(loaded.tokenizer)})


def _continuations(loaded, encoded, path_key: str, settings: GenerationSettings, cache: TraceCache | None):
    """(greedy continuations, seconds spent generating): read from `cache`, else generated (and stored)."""
    tokens = cache.read_paths(path_key, encoded) if cache is not None else None
    if tokens is not None:
        return tokens, 0.0
    start = time.perf_counter()
    tokens = generate_paths(loaded.model, loaded.tokenizer, encoded, settings)
    if cache is not None:
        cache.write_paths(path_key, encoded, tokens, settings)
    return tokens, time.perf_counter() - start


def trace_along(base_loaded, paths: list[TokenPath], needs, options: SignalOptions, *, split: str = "audit",
                batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Trace:
    """A trace whose paths come from elsewhere (e.g. the compressed model's own generations
    in a free-running audit): the base model is scored along them. Not cached."""
    resolved = resolve_options(base_loaded.model, options)
    start = time.perf_counter()
    base = score_paths(base_loaded.model, paths, frozenset(needs), resolved, batch_tokens=batch_tokens)
    steps = max(len(p.tokens) for p in paths)
    return Trace("along-" + _key([p.tokens for p in paths]), base_loaded.model_id, split, GenerationSettings(steps),
                 frozenset(needs), resolved, list(paths), base, batch_tokens,
                 {"generate": 0.0, "score": time.perf_counter() - start})


def encode_suite(suite: PromptSuite, tokenizer) -> list[EncodedPrompt]:
    return [encode(p, tokenizer) for p in suite]


def _key(obj) -> str:
    return json_digest(obj, 20)


def _transformers_version() -> str:
    return transformers.__version__


def _template_hash(tokenizer) -> str:
    return hashlib.sha256(str(getattr(tokenizer, "chat_template", "") or "").encode()).hexdigest()[:12]


def _device_dtype(model):
    p = next(model.parameters())
    return p.device, p.dtype
