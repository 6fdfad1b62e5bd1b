"""Stage 3, trace: the base model's token paths and its outputs along them, cached.

Two separate operations:

* `generate_paths`: a model generates each prompt's continuation greedily (T steps, or up
  to its end-of-sequence token). For the search this is the BASE model, once.
* `score_paths`: ONE teacher-forced pass of a model over given paths, returning exactly what
  the signals need at every step (log-probabilities, attention to the prompt's first tokens,
  hidden states, gold-answer log-probabilities). The base model is scored once and cached;
  every candidate is scored by the same function over the same paths (evaluate.py), so an
  unmodified model reproduces the base outputs exactly.

A free-running audit scores along another path: `generate_paths` with the compressed model,
then `trace_along(base, ...)` scores the base model along those paths.

Traces are cached in memory and on disk under `cache_dir()/traces/` (safetensors, atomic
writes): paths keyed by model fingerprint, prompt-suite fingerprint, split and generation
settings; base outputs additionally by the specs' needs, signal options, device and dtype.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import InvalidInput, ToggleError
from ..prompts import EncodedPrompt, PromptSuite, encode
from ..signals import GOLD, LOGPROBS, SignalOptions
from .generate import DEFAULT_STEPS, GenerationSettings, generate_paths
from .padding import _left_pad
from .score import (DEFAULT_BATCH_TOKENS, StepOutputs, TokenPath, _batches, _Sequence, check_outputs, resolve_options,
                    score_paths)

log = logging.getLogger(__name__)

TRACE_VERSION = 1
_MEMORY: dict[str, "Trace"] = {}
_MEMORY_LIMIT = 4


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
                use_cache: bool = True) -> Trace:
    """Generate (once) and score (once) the base model on a split of the suite.

    `specs` (a SpecSet) supplies needs, options and the steps its properties read; `steps`,
    `needs` and `options` override it. Cached on disk and in memory; a second call with the
    same inputs does no model work. The model must hold its base weights (call
    `applier.restore()` first if a plan was applied): the cache key is the model's fingerprint.
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
    resolved = resolve_options(model, options)
    encoded = [encode(p, tokenizer) for p in chosen]
    if GOLD in needs and not any(e.answer_ids for e in encoded):
        raise InvalidInput(f"{suite.source}: the specs use gold-answer signals but no {split} prompt has an answer")

    device, dtype = _device_dtype(model)
    path_key = _key({"v": TRACE_VERSION, "model": loaded.fingerprint, "suite": chosen.fingerprint, "split": split,
                     "settings": asdict(settings), "template": _template_hash(tokenizer)})
    # Scores also depend on the numerics: a candidate equal to the base must reproduce them exactly.
    score_key = _key({"paths": path_key, "needs": sorted(needs), "options": asdict(resolved),
                      "device": device.type, "dtype": str(dtype), "batch_tokens": batch_tokens,
                      "torch": torch.__version__, "transformers": _transformers_version()})
    if use_cache and score_key in _MEMORY:
        return _MEMORY[score_key]

    directory = _trace_dir()
    path_file = directory / f"paths-{path_key}.safetensors"
    score_file = directory / f"scores-{score_key}.safetensors"
    timings = {"generate": 0.0, "score": 0.0}
    tokens = _read_paths(path_file, encoded) if use_cache else None
    if tokens is None:
        start = time.perf_counter()
        tokens = generate_paths(model, tokenizer, encoded, settings)
        timings["generate"] = time.perf_counter() - start
        if use_cache:
            _write_paths(path_file, encoded, tokens, settings)
    paths = [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, tokens)]
    base = _read_scores(score_file, paths, needs) if use_cache else None
    if base is None:
        start = time.perf_counter()
        base = score_paths(model, paths, needs, resolved, batch_tokens=batch_tokens)
        timings["score"] = time.perf_counter() - start
        problem = check_outputs(base, resolved)
        if problem:
            raise ToggleError(f"{loaded.model_id}: the base model itself gives {problem}; cannot build a trace")
        if use_cache:
            _write_scores(score_file, base)
    trace = Trace(score_key, loaded.model_id, split, settings, needs, resolved, paths, base, batch_tokens,
                  timings, (path_file, score_file) if use_cache else ())
    if use_cache:
        while len(_MEMORY) >= _MEMORY_LIMIT:
            _MEMORY.pop(next(iter(_MEMORY)))
        _MEMORY[score_key] = trace
    return trace


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


# --- disk cache ---------------------------------------------------------------------------------

def _trace_dir() -> Path:
    from ..load import cache_dir

    return cache_dir() / "traces"


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _template_hash(tokenizer) -> str:
    return hashlib.sha256(str(getattr(tokenizer, "chat_template", "") or "").encode()).hexdigest()[:12]


def _device_dtype(model):
    p = next(model.parameters())
    return p.device, p.dtype


def _write_paths(path: Path, encoded, tokens, settings) -> None:
    from safetensors.torch import save_file

    flat = torch.tensor([t for seq in tokens for t in seq], dtype=torch.long)
    meta = {"prompt_ids": json.dumps([e.prompt.id for e in encoded]),
            "lengths": json.dumps([len(t) for t in tokens]), "settings": json.dumps(asdict(settings))}
    with atomic_path(path) as tmp:
        save_file({"tokens": flat}, str(tmp), metadata=meta)


def _read_paths(path: Path, encoded) -> list[tuple[int, ...]] | None:
    from safetensors import safe_open

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


def _write_scores(path: Path, scores: StepOutputs) -> None:
    from safetensors.torch import save_file

    meta = {"steps": json.dumps(list(scores.steps)), "answer_steps": json.dumps(list(scores.answer_steps))}
    with atomic_path(path) as tmp:
        save_file(scores.tensors(), str(tmp), metadata=meta)


def _read_scores(path: Path, paths: list[TokenPath], needs) -> StepOutputs | None:
    from safetensors.torch import load_file
    from safetensors import safe_open

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
