"""Stage 10a, audit: re-check a compressed model against the properties on prompts the search
never saw (`toggle.api.audit` loads the models; `audit_models` audits loaded ones).

    from toggle.api import audit
    result = audit("out/model")                                  # base model from toggle.json
    result = audit("model.gguf", base="smollm2-135m", mode="free")
    result.satisfied, result.pass_rate, result.properties["coherence"].median
    result.to_dict()                                             # what `toggle audit --json` writes

Two modes:

* teacher: the base model's greedy continuation of every prompt (its trace, cached like the
  search's) is the path, and the compressed model is scored by one teacher-forced pass along
  it: what the search measured, on other prompts.
* free: the compressed model generates its own continuation (greedy, the same number of steps)
  and both models are scored along that path. A compressed model that drifts sees its own
  mistakes as context (exposure drift); teacher forcing hides that.

A property's robustness on a prompt is rtamt's robustness at step 0 (>= 0: it holds; +inf, a
property vacuously true on the prompt, holds too). The audit passes when every property holds on
every audited prompt; `pass_rate` is the share of prompts on which every property that applies
to them holds (gold-answer properties apply only to prompts with an answer).

Engines: the compressed model's outputs come from torch (default) or, for a .gguf file, from
llama.cpp itself (`engine="llama.cpp"`, teacher mode, logit signals only): what a user will
run. llama.cpp's kernels differ from a de-quantised torch model's (it quantises activations on
some paths), so a llama.cpp audit also scores the file in torch and reports both
(`result.cross_check`).

Stated confidence: per property and for all of them together, the violation rate (failed
prompts / prompts it applies to) and its one-sided upper Clopper-Pearson bound at `confidence`
(toggle.confidence): `result.overall.sentence()` reads "violation rate 0/30, at most 9.5% at 95%
confidence (one-sided Clopper-Pearson) on these prompts".
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from ..confidence import DEFAULT_LEVEL, Confidence, check_level
from ..errors import InvalidInput
from ..evaluate import Evaluator
from ..files import finite_or_none
from ..modules import find_blocks
from ..prompts import EncodedPrompt, Prompt
from ..signals import ANSWER, ATTENTION, HIDDEN, SIGNALS, compute_signals
from ..trace import (DEFAULT_STEPS, GenerationSettings, TokenPath, base_continuations, build_trace, encode_suite,
                     generate_paths, score_paths, trace_along)
from ..specs.semantics import over_suite
from ..trace.limits import check_lengths, context_note
from ..trace.score import resolve_options

MODES = ("teacher", "free")
ENGINES = ("torch", "llama.cpp")
SPLITS = ("heldout", "calibration", "confirmation", "all")
WORST = 5  # prompts shown with their generated text side by side


@dataclass(frozen=True)
class PropertyAudit:
    """One property over the audited prompts."""

    name: str
    formula: str
    prompts: int  # prompts the property applies to
    holds: int  # of which it holds on
    min: float  # -inf when the compressed model could not be scored
    median: float
    confidence: float = DEFAULT_LEVEL  # the level of the violation rate's upper bound
    required_share: float | None = None  # a chance constraint (`on 90% of prompts`): the share it must hold on
    value: float | None = None  # its robustness over the prompts: the order statistic a share asks for (None: min)

    @property
    def robustness(self) -> float:
        """The property's robustness over the audited prompts, as the search computes it: the
        minimum, or with a required share the value that is >= 0 exactly when the share holds."""
        return self.min if self.value is None else self.value

    @property
    def satisfied(self) -> bool:
        """Its robustness is >= 0: on every prompt (the minimum), or on the share it requires."""
        return self.prompts > 0 and self.robustness >= 0

    @property
    def violations(self) -> int:
        return self.prompts - self.holds

    @property
    def bound(self) -> Confidence:
        """The violation rate over the prompts it applies to, with its upper bound."""
        return Confidence.of(self.violations, self.prompts, self.confidence)

    @property
    def share(self) -> float:
        """Share of the prompts it applies to on which it holds."""
        return self.holds / self.prompts if self.prompts else 0.0

    def to_dict(self) -> dict:
        return {"formula": self.formula, "prompts": self.prompts, "holds": self.holds, "share": self.share,
                "required_share": self.required_share, "robustness": finite_or_none(self.robustness),
                "min": finite_or_none(self.min), "median": finite_or_none(self.median), "satisfied": self.satisfied,
                "confidence": self.bound.to_dict()}


@dataclass
class PromptAudit:
    """One audited prompt: robustness of every property that applies to it, and the texts."""

    id: str
    prompt: str
    robustness: dict[str, float]
    tags: tuple[str, ...] = ()
    base_text: str | None = None  # the base model's greedy continuation
    compressed_text: str | None = None  # the compressed model's greedy continuation

    @property
    def satisfied(self) -> bool:
        return all(v >= 0 for v in self.robustness.values())

    @property
    def margin(self) -> float:
        return min(self.robustness.values(), default=math.inf)

    @property
    def worst_property(self) -> str | None:
        return min(self.robustness, key=self.robustness.get) if self.robustness else None

    def to_dict(self) -> dict:
        # JSON has no infinities: a vacuous +inf (holds) and a -inf (fails) are both null in
        # `robustness`, so each property's verdict is written beside it
        return {"id": self.id, "prompt": self.prompt, "tags": list(self.tags), "satisfied": self.satisfied,
                "margin": finite_or_none(self.margin), "robustness": {k: finite_or_none(v) for k, v in self.robustness.items()},
                "holds": {k: v >= 0 for k, v in self.robustness.items()},
                "base_text": self.base_text, "compressed_text": self.compressed_text}


@dataclass
class AuditResult:
    artifact: str
    base: str
    mode: str
    split: str
    properties: dict[str, PropertyAudit]
    prompts: list[PromptAudit]
    feasible: bool = True
    reason: str | None = None  # why the compressed model could not be scored (NaN logits, ...)
    signals: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> min / mean / max
    timings: dict[str, float] = field(default_factory=dict)
    specs: dict = field(default_factory=dict)  # files, consts, relax, overrides
    notes: list[str] = field(default_factory=list)
    confidence: float = DEFAULT_LEVEL  # the level of the violation rates' upper bounds
    engine: str = "torch"  # what computed the compressed model's outputs
    # engine llama.cpp: the same audit with torch's outputs of the same file, per property
    # {prompts, holds, min, median}, plus pass_rate and the largest per-step JSD between the two engines
    cross_check: dict | None = None
    speed: dict | None = None  # engine llama.cpp: llama-bench's tokens/s of the file on this machine
    shown: int = WORST  # how many of the worst prompts are listed, with their texts

    @property
    def satisfied(self) -> bool:
        """Every property holds: on every audited prompt, or on the share its chance constraint asks for."""
        return self.feasible and bool(self.prompts) and all(p.satisfied for p in self.properties.values())

    @property
    def pass_rate(self) -> float:
        """Share of audited prompts on which every property that applies to them holds."""
        if not self.feasible or not self.prompts:
            return 0.0
        return sum(p.satisfied for p in self.prompts) / len(self.prompts)

    @property
    def overall(self) -> Confidence:
        """All properties together: prompts on which some property fails, of the audited prompts
        (all of them when the compressed model could not be scored)."""
        n = len(self.prompts)
        failed = n if not self.feasible else sum(not p.satisfied for p in self.prompts)
        return Confidence.of(failed, n, self.confidence)

    @property
    def exit_code(self) -> int:
        return 0 if self.satisfied else 1

    @property
    def robustness(self) -> dict[str, float]:
        return {name: p.robustness for name, p in self.properties.items()}

    def worst(self, n: int | None = None) -> list[PromptAudit]:
        """The n prompts (default: `shown`) with the smallest margin (violations first)."""
        return sorted(self.prompts, key=lambda p: (p.satisfied, p.margin))[:self.shown if n is None else n]

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact, "base": self.base, "mode": self.mode, "split": self.split, "engine": self.engine,
            "satisfied": self.satisfied, "pass_rate": self.pass_rate,
            "prompts_audited": len(self.prompts), "prompts_passed": sum(p.satisfied for p in self.prompts),
            "feasible": self.feasible, "reason": self.reason, "confidence": self.overall.to_dict(),
            "robustness": {k: finite_or_none(v) for k, v in self.robustness.items()},
            "properties": {name: p.to_dict() for name, p in self.properties.items()},
            "worst": [p.id for p in self.worst()],
            "prompts": [p.to_dict() for p in self.prompts],
            "signals": self.signals, "timings": self.timings, "specs": self.specs, "notes": self.notes,
            "cross_check": self.cross_check, "speed": self.speed,
        }


def check_engine(engine: str, mode: str) -> None:
    """An engine toggle knows, in a mode it can audit in (an engine other than torch: teacher only)."""
    if engine not in ENGINES:
        raise InvalidInput(f"--engine: {engine!r} is not valid; expected {' or '.join(ENGINES)}")
    if engine != "torch" and mode != "teacher":
        raise InvalidInput(f"--engine {engine} scores the base model's paths (teacher mode); --mode free "
                           f"generates with torch: audit with --mode teacher")


def check_split(suite, split: str, spec_set) -> None:
    """The split exists, has prompts, and has gold answers when the specs need them."""
    if split not in SPLITS:
        raise InvalidInput(f"--split: {split!r} is not valid; expected {', '.join(SPLITS[:-1])} or all")
    chosen = suite.split(split)
    if len(chosen) == 0:
        counts = {s: n for s in SPLITS[:-1] if s != split and (n := len(suite.split(s)))}
        other = max(counts, key=counts.get) if counts else "all"
        held = ", ".join(f"{n} {s}" for s, n in counts.items())
        raise InvalidInput(f"{suite.source}: no prompts in split {split!r} ({len(suite)} prompts: {held}); "
                           f"mark some with `split: {split}` or audit with --split {other}")
    gold = [p.name for p in spec_set.properties if p.axis == ANSWER]
    if gold and not any(p.answer for p in chosen):
        raise InvalidInput(f"{suite.source}: propert{'ies' if len(gold) > 1 else 'y'} {', '.join(gold)} "
                           f"need{'' if len(gold) > 1 else 's'} gold "
                           f"answers, but no {split} prompt has an `answer`; add answers or leave "
                           f"{', '.join(sorted({p.file for p in spec_set.properties if p.axis == ANSWER}))} out of --specs")


# --- the audit itself, on loaded models --------------------------------------------------------

def audit_models(candidate, base, spec_set, suite, *, split: str = "heldout", mode: str = "teacher",
                 applier=None, plan=None, worst: int = WORST, artifact: str | None = None,
                 confidence: float = DEFAULT_LEVEL, scorer=None, engine: str = "torch") -> AuditResult:
    """Audit `candidate` against `base` (both toggle.load.LoadedModel).

    `scorer` (with `engine` naming it, e.g. trace.llama_cpp.LlamaCppScorer and "llama.cpp"):
    what computes the candidate's outputs along the base's paths instead of torch; teacher mode
    only. The candidate is then also scored by torch, reported as `cross_check`.

    With `applier` and `plan` the candidate is the base model with the plan's weights swapped in
    (the search audits its winner this way, without writing an artifact): `candidate` is then
    `base` itself. The base model is left with its own weights.
    """
    if mode not in MODES:
        raise InvalidInput(f"--mode: {mode!r} is not valid; expected teacher or free")
    confidence = check_level(confidence)
    if scorer is not None:
        check_engine(engine, mode)
    check_split(suite, split, spec_set)
    check_compatible(candidate, base, spec_set)
    chosen = suite.split(split)
    clock = time.perf_counter
    timings: dict[str, float] = {}
    t0 = clock()
    steps = spec_set.steps_needed or DEFAULT_STEPS
    encoded = encode_suite(chosen, base.tokenizer)
    if mode == "teacher":
        with _weights(applier, None):  # base outputs come from the base weights (the trace cache is keyed by them)
            trace = build_trace(base, suite, spec_set, split=split, steps=steps)
        timings["trace"] = clock() - t0
    else:
        check_lengths(candidate.model, encoded, steps, spec_set.needs, resolve_options(candidate.model, spec_set.options, spec_set.option_where),
                      suite.source)
        with _weights(applier, plan):
            own = generate_paths(candidate.model, candidate.tokenizer, encoded, GenerationSettings(steps=steps))
        timings["generate"] = clock() - t0
        reference = {}
        if "token_match" in spec_set.signals:  # compares the two models' own continuations
            with _weights(applier, None):
                reference = base_continuations(base, suite, split=split, steps=steps)
        paths = [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids, reference.get(e.prompt.id))
                 for e, t in zip(encoded, own)]
        t1 = clock()
        with _weights(applier, None):
            trace = trace_along(base, paths, spec_set.needs, spec_set.options, split=split)
        timings["trace"] = clock() - t1
    t1 = clock()
    cross, engine_run, torch_out, gaps = None, None, {}, []
    if scorer is not None:
        # torch first: its outputs are the cross-check, and they give the engine's run the
        # hidden states and attention llama.cpp does not expose (both evaluations cut the trace
        # into the same pieces, so each of the engine's pieces finds torch's by its prompts)
        def torch_scorer(paths, needs, options, **kw):
            out = torch_out[_prompt_ids(paths)] = score_paths(candidate.model, paths, needs, options, **kw)
            return out

        def engine_scorer(paths, needs, options, **kw):
            out = scorer(paths, frozenset(needs) - {HIDDEN, ATTENTION}, options, **kw)
            key = _prompt_ids(paths)
            # torch's cross-check stops at a piece it cannot score (NaN logits): score the rest here
            theirs = torch_out.pop(key) if key in torch_out else score_paths(candidate.model, paths, needs, options, **kw)
            out.hidden, out.attn = theirs.hidden, theirs.attn
            if out.logprobs is not None and theirs.logprobs is not None:
                gaps.append(compute_signals(["jsd"], out, theirs)["jsd"])
            return out

        with _weights(applier, None):
            cross = _cross_check(Evaluator(candidate, spec_set, trace, applier, scorer=torch_scorer).evaluate(plan),
                                 spec_set, trace)
        timings["torch_cross_check"] = clock() - t1
        engine_run, t1 = engine_scorer, clock()
    with _weights(applier, None):
        evaluation = Evaluator(candidate, spec_set, trace, applier, scorer=engine_run).evaluate(plan)
    timings["evaluate"] = clock() - t1
    if cross is not None:
        cross["jsd_between_engines"] = _engine_gap(gaps)

    by_id = {p.id: p for p in chosen}
    rows = []
    for path in trace.paths:
        prompt = by_id[path.prompt_id]
        rob = {name: values[path.prompt_id] for name, values in evaluation.per_prompt.items()
               if path.prompt_id in values}
        if not evaluation.feasible:
            rob = {name: -math.inf for name in spec_set.names}
        text = decode(base.tokenizer, path.tokens)
        rows.append(PromptAudit(prompt.id, prompt.text, rob, prompt.tags,
                                base_text=text if mode == "teacher" else None,
                                compressed_text=text if mode == "free" else None))
    properties = {p.name: _property_audit(p, rows, evaluation.feasible, confidence) for p in spec_set.properties}
    result = AuditResult(artifact=artifact or candidate.model_id, base=base.model_id, mode=mode, split=split,
                         properties=properties, prompts=rows, feasible=evaluation.feasible, reason=evaluation.reason,
                         signals=evaluation.signals, specs=_specs_info(spec_set), confidence=confidence,
                         engine=engine, cross_check=cross, shown=worst)
    internal = sorted(spec_set.needs & {HIDDEN, ATTENTION})
    if scorer is not None and internal:
        names = [p.name for p in spec_set.properties if any(SIGNALS[x].needs in (HIDDEN, ATTENTION) for x in p.signals)]
        result.notes.append(f"{engine} does not expose {' or '.join(internal)}: the signals of {', '.join(names)} "
                            f"come from torch running the same file; every logit signal comes from {engine}")
    past_context = context_note(base.model, encoded, steps, suite.source)
    if past_context:
        result.notes.append(past_context)
    t1 = clock()
    _fill_texts(result.worst(), candidate, base, trace, steps, mode, applier, plan)
    timings["texts"] = clock() - t1
    timings["total"] = clock() - t0
    result.timings = {k: round(v, 3) for k, v in timings.items()}
    return result


def check_compatible(candidate, base, spec_set) -> None:
    """Both models read the same tokens and, for internal signals, have the same blocks."""
    if candidate is base:
        return
    vc, vb = _vocab_size(candidate), _vocab_size(base)
    if vc != vb:
        raise InvalidInput(f"{candidate.model_id} predicts over {vc} tokens, the base model {base.model_id} over {vb}; "
                           f"audit compares next-token distributions, so both need the same vocabulary")
    # Tokens the models can predict must mean the same; a GGUF round trip may add a special
    # token past the end of the vocabulary, which no logit refers to.
    vocab_c, vocab_b = ({t: i for t, i in tok.get_vocab().items() if i < vb} for tok in (candidate.tokenizer, base.tokenizer))
    if vocab_c != vocab_b:
        differ = sorted(set(vocab_c.items()) ^ set(vocab_b.items()), key=lambda kv: kv[1])
        raise InvalidInput(f"{candidate.model_id} and the base model {base.model_id} have different tokenizers "
                           f"({len(differ)} differences, e.g. token {differ[0][0]!r} -> id {differ[0][1]}); audit an "
                           f"artifact against the model it was made from")
    if spec_set.needs & {HIDDEN, ATTENTION}:
        nc, nb = len(find_blocks(candidate.model)[1]), len(find_blocks(base.model)[1])
        hc, hb = candidate.model.config.hidden_size, base.model.config.hidden_size
        if (nc, hc) != (nb, hb):
            raise InvalidInput(f"{candidate.model_id} has {nc} blocks of width {hc}, the base model {base.model_id} "
                               f"{nb} of width {hb}; hidden_cos and attn_cos compare block by block")


def decode(tokenizer, tokens) -> str:
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


# --- helpers -------------------------------------------------------------------------------------

def _weights(applier, plan):
    """The model with `plan`'s weights (None: its base weights) inside the block, base weights after."""
    return nullcontext() if applier is None else applier.applied(plan)


def _fill_texts(rows: list[PromptAudit], candidate, base, trace, steps: int, mode: str, applier, plan) -> None:
    """The side of the worst prompts' texts the audit did not generate anyway."""
    if not rows:
        return
    by_id = {p.prompt_id: p for p in trace.paths}
    encoded = [EncodedPrompt(Prompt(r.id, r.prompt), by_id[r.id].prompt_ids, by_id[r.id].content, True)
               for r in rows]
    settings = GenerationSettings(steps=steps)
    if mode == "teacher":
        with _weights(applier, plan):
            own = generate_paths(candidate.model, candidate.tokenizer, encoded, settings)
        for r, tokens in zip(rows, own):
            r.compressed_text = decode(base.tokenizer, tokens)
    else:
        with _weights(applier, None):
            own = generate_paths(base.model, base.tokenizer, encoded, settings)
        for r, tokens in zip(rows, own):
            r.base_text = decode(base.tokenizer, tokens)


def _property_audit(prop, rows: list[PromptAudit], feasible: bool, confidence: float = DEFAULT_LEVEL) -> PropertyAudit:
    values = [r.robustness[prop.name] for r in rows if prop.name in r.robustness]
    share = prop.share
    if not feasible:
        return PropertyAudit(prop.name, prop.formula, len(values), 0, -math.inf, -math.inf, confidence, share, -math.inf)
    if not values:
        return PropertyAudit(prop.name, prop.formula, 0, 0, math.inf, math.inf, confidence, share, math.inf)
    # +inf (vacuously true on a prompt) is >= 0: it holds
    return PropertyAudit(prop.name, prop.formula, len(values), sum(v >= 0 for v in values), min(values),
                         statistics.median(values), confidence, share, over_suite(prop, values))


def _cross_check(evaluation, spec_set, trace) -> dict:
    """Per property: prompts, holds, min and median of another engine's evaluation of the same file."""
    out = {"engine": "torch", "feasible": evaluation.feasible, "properties": {}}
    if not evaluation.feasible:
        out["reason"] = evaluation.reason
        return out
    failed = set()
    for prop in spec_set.properties:
        values = evaluation.per_prompt.get(prop.name, {})
        failed |= {pid for pid, v in values.items() if v < 0}
        vals = list(values.values())
        out["properties"][prop.name] = {
            "prompts": len(vals), "holds": sum(v >= 0 for v in vals),
            "min": finite_or_none(min(vals)) if vals else None,
            "median": finite_or_none(statistics.median(vals)) if vals else None}
    out["pass_rate"] = 1 - len(failed) / len(trace.paths) if trace.paths else 0.0
    return out


def _prompt_ids(paths) -> tuple[str, ...]:
    return tuple(p.prompt_id for p in paths)


def _engine_gap(gaps: list) -> dict | None:
    """How far two engines' next-token distributions of the same file are apart (JSD, bits), from
    the per-step JSD of every piece both scored."""
    if not gaps:
        return None
    jsd = np.concatenate(gaps)
    return {"max": float(jsd.max()) if jsd.size else 0.0, "mean": float(jsd.mean()) if jsd.size else 0.0,
            "steps": int(jsd.size)}


def _specs_info(spec_set) -> dict:
    return {"files": list(spec_set.files),
            "consts": spec_set.const_values}


def _vocab_size(loaded) -> int:
    head = loaded.model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(loaded.model.config.vocab_size)
