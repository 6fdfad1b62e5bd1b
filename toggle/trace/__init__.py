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
from ..modules import find_blocks
from ..prompts import EncodedPrompt, PromptSuite, encode
from ..signals import ATTENTION, GOLD, HIDDEN, LOGPROBS, SignalOptions
from .capture import _AttentionCapture, _capturing
from .generate import DEFAULT_STEPS, GenerationSettings, generate_paths
from .padding import _left_pad

log = logging.getLogger(__name__)

TRACE_VERSION = 1
# Padded tokens per forward batch. On a 2-core CPU 512 measured fastest for SmolLM2-135M over
# the default suite (7.0 s vs 8.3 s one sequence at a time and 12.8 s at 2048: large batches
# make the (batch, steps, vocabulary) logits tensors memory-bound).
DEFAULT_BATCH_TOKENS = 512
_MEMORY: dict[str, "Trace"] = {}
_MEMORY_LIMIT = 4


@dataclass(frozen=True)
class TokenPath:
    """One prompt and the continuation the signals are measured along."""

    prompt_id: str
    prompt_ids: tuple[int, ...]
    content: tuple[int, int]  # token span of the prompt's own text (attn_cos looks at its start)
    tokens: tuple[int, ...]  # the continuation: step t predicts tokens[t]
    answer: tuple[int, ...] | None = None  # gold answer tokens (answer-axis signals)


@dataclass
class StepOutputs:
    """A model's outputs at every step of every path, concatenated over prompts."""

    steps: tuple[int, ...]  # steps per prompt (step axis)
    answer_steps: tuple[int, ...]  # answer tokens per prompt (0: no answer)
    logprobs: torch.Tensor | None = None  # (sum steps, vocab) float32 log-softmax
    attn: torch.Tensor | None = None  # (sum steps, attn_span) pooled attention to the early prompt tokens
    hidden: torch.Tensor | None = None  # (sum steps, hidden size) at the chosen block
    gold_logprob: torch.Tensor | None = None  # (sum answer_steps,) log-prob of each gold token

    def slice(self, start: int, stop: int) -> "StepOutputs":
        """Rows start:stop of the step axis (for chunked signal computation)."""
        def cut(t):
            return None if t is None else t[start:stop]

        return replace(self, logprobs=cut(self.logprobs), attn=cut(self.attn), hidden=cut(self.hidden))

    def select(self, indices: list[int]) -> "StepOutputs":
        """The outputs of some prompts (by position), in the given order."""
        def rows(counts, t):
            if t is None:
                return None
            starts = [sum(counts[:i]) for i in range(len(counts))]
            parts = [t[starts[i]:starts[i] + counts[i]] for i in indices]
            return torch.cat(parts) if parts else t[:0]

        return StepOutputs(
            steps=tuple(self.steps[i] for i in indices),
            answer_steps=tuple(self.answer_steps[i] for i in indices),
            logprobs=rows(self.steps, self.logprobs), attn=rows(self.steps, self.attn),
            hidden=rows(self.steps, self.hidden), gold_logprob=rows(self.answer_steps, self.gold_logprob),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("logprobs", "attn", "hidden", "gold_logprob")
        return {n: getattr(self, n).contiguous() for n in names if getattr(self, n) is not None}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


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


def resolve_options(model, options: SignalOptions) -> SignalOptions:
    _, blocks = find_blocks(model)
    try:
        return options.resolved(len(blocks))
    except IndexError as e:
        raise InvalidInput(f"option hidden_layer / attn_layers: block {e.args[0]} does not exist; this model has "
                           f"{len(blocks)} blocks (0..{len(blocks) - 1}, or -1..-{len(blocks)})") from None


def check_outputs(out: StepOutputs, options: SignalOptions) -> str | None:
    """Why these outputs cannot be compared (non-finite logits, dead hidden states, empty
    attention rows), or None when they are fine."""
    if out.logprobs is not None:
        bad = ~torch.isfinite(out.logprobs).all(dim=-1)
        if bad.any():
            return f"NaN or infinite logits at {int(bad.sum())} of {bad.numel()} steps ({_where(out.steps, bad)})"
    if out.gold_logprob is not None:
        bad = ~torch.isfinite(out.gold_logprob)
        if bad.any():
            return f"NaN or infinite logits at {int(bad.sum())} gold-answer tokens"
    if out.hidden is not None:
        norm = out.hidden.norm(dim=-1)
        bad = ~torch.isfinite(norm) | (norm == 0)
        if bad.any():
            return (f"zero-norm or non-finite hidden states at block {options.hidden_layer} at {int(bad.sum())} "
                    f"steps ({_where(out.steps, bad)})")
    if out.attn is not None:
        total = out.attn.sum(dim=-1)
        bad = ~torch.isfinite(total) | (total <= 0)
        if bad.any():
            return f"empty or non-finite attention rows at {int(bad.sum())} steps ({_where(out.steps, bad)})"
    return None


def _where(steps, bad: torch.Tensor) -> str:
    first = int(bad.nonzero()[0, 0])
    for i, n in enumerate(steps):
        if first < n:
            return f"first: prompt #{i + 1}, step {first}"
        first -= n
    return "?"


# --- one teacher-forced pass -----------------------------------------------------------------

@dataclass
class _Sequence:
    index: int  # prompt position
    ids: list[int]  # model input
    n: int  # positions of interest: the last n inputs predict the n targets
    targets: list[int]
    content: tuple[int, int]


def score_paths(model, paths: list[TokenPath], needs, options: SignalOptions, *,
                batch_tokens: int = DEFAULT_BATCH_TOKENS) -> StepOutputs:
    """One teacher-forced pass of `model` over every path; see StepOutputs for what it returns.

    Sequences are sorted by length and left-padded into batches of at most `batch_tokens`
    padded tokens, so every sequence's steps are the last positions of its row. The LM head
    runs only on those positions; attention weights are computed (eagerly) only in the
    layers attn_cos pools, hidden states are read by a hook on one block.
    """
    needs = frozenset(needs)
    steps = tuple(len(p.tokens) for p in paths)
    answer_steps = tuple(len(p.answer) if (p.answer and GOLD in needs) else 0 for p in paths)
    step_needs = needs & {LOGPROBS, ATTENTION, HIDDEN}
    out = StepOutputs(steps, answer_steps)
    if step_needs:
        seqs = [_Sequence(i, list(p.prompt_ids) + list(p.tokens[:-1]), len(p.tokens), list(p.tokens), p.content)
                for i, p in enumerate(paths)]
        parts = _run(model, seqs, step_needs, options, batch_tokens)
        for name in ("logprobs", "attn", "hidden"):
            if name in parts:
                setattr(out, name, torch.cat([parts[name][i] for i in range(len(paths))]))
    if GOLD in needs:
        seqs = [_Sequence(i, list(p.prompt_ids) + list(p.answer[:-1]), len(p.answer), list(p.answer), p.content)
                for i, p in enumerate(paths) if p.answer and GOLD in needs]
        parts = _run(model, seqs, {GOLD}, options, batch_tokens)
        out.gold_logprob = torch.cat([parts["gold"][s.index] for s in seqs]) if seqs else torch.zeros(0)
    return out


def _run(model, seqs: list[_Sequence], needs, options: SignalOptions, batch_tokens: int) -> dict[str, dict]:
    device = next(model.parameters()).device
    parts: dict[str, dict[int, torch.Tensor]] = {}
    capture = _AttentionCapture(options) if ATTENTION in needs else None
    _, blocks = find_blocks(model)
    hidden_rows: list[torch.Tensor] = []

    def grab_hidden(_module, _inputs, output):
        hidden_rows.append((output[0] if isinstance(output, tuple) else output).detach())

    hook = blocks[options.hidden_layer].register_forward_hook(grab_hidden) if HIDDEN in needs else None
    try:
        with torch.no_grad(), _capturing(model, capture):
            for batch in _batches(seqs, batch_tokens):
                n_max = max(s.n for s in batch)
                ids, mask, pads = _left_pad([s.ids for s in batch], 0, device)
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                if capture:
                    capture.start(n_max)
                hidden_rows.clear()
                logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                               logits_to_keep=n_max, use_cache=False).logits.float()
                logprobs = torch.log_softmax(logits, dim=-1)
                for row, s in enumerate(batch):
                    lp = logprobs[row, n_max - s.n:]
                    if LOGPROBS in needs:
                        parts.setdefault("logprobs", {})[s.index] = lp.cpu()
                    if GOLD in needs:
                        target = torch.tensor(s.targets, device=lp.device).unsqueeze(-1)
                        parts.setdefault("gold", {})[s.index] = lp.gather(-1, target).squeeze(-1).cpu()
                    if HIDDEN in needs:
                        h = hidden_rows[-1][row, -s.n:]
                        parts.setdefault("hidden", {})[s.index] = h.float().cpu()
                    if capture:
                        start = pads[row] + s.content[0]
                        stop = min(pads[row] + s.content[1], start + options.attn_span)
                        a = torch.zeros(s.n, options.attn_span)
                        a[:, : stop - start] = capture.pooled[row, n_max - s.n:, start:stop].float().cpu()
                        parts.setdefault("attn", {})[s.index] = a
    finally:
        if hook is not None:
            hook.remove()
    return parts


def _batches(seqs: list[_Sequence], batch_tokens: int):
    """Length-sorted batches whose padded size stays within batch_tokens (at least one each)."""
    order = sorted(seqs, key=lambda s: len(s.ids))
    batch: list[_Sequence] = []
    for s in order:
        if batch and (len(batch) + 1) * len(s.ids) > batch_tokens:
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


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
