"""Evaluate a compression plan: apply it, one teacher-forced pass over the base model's
paths, signals, and every property's robustness (rtamt) on every prompt.

    specs = load_specs()                                  # checked before any model work
    loaded = load_model("smollm2-135m")
    trace = build_trace(loaded, load_prompts(), specs)    # base work, cached
    evaluator = Evaluator(loaded, specs, trace, applier=PlanApplier(loaded.model))
    result = evaluator.evaluate(plan)                     # evaluate(None): the base model itself
    result.robustness, result.feasible, result.reason, result.timings

After `evaluate(plan)` the model holds the plan's weights until the next evaluate or
`applier.restore()` (an applier only swaps the modules that change between plans).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from . import interrupts
from .errors import InvalidInput, ToggleError
from .modules import find_blocks
from .plan import UNTOUCHED, Plan
from .signals import ANSWER, ATTENTION, SIGNALS, TOKEN_SIGNALS, StepTokens, compute_signals
from .specs.semantics import decided_below, over_suite
from .trace import Trace, check_outputs, end_tokens, resolve_options, score_paths
from .trace.score import opening_tokens
from .trace.prefix import PrefixKeeper
from .trace.replay import BlockReplay

EARLY_CHUNK = 4  # prompts per chunk when a candidate may stop early (fewer on a small suite)
# A candidate's outputs are held whole only for a piece of the trace at a time: its signals are
# computed and its outputs dropped before the next piece is scored. A piece's per-step outputs
# (full-vocabulary log-probabilities, mostly) stay within this many bytes, so the 30 calibration
# prompts are one piece (0.12 GB on SmolLM2-135M) and the 283 held-out ones several, instead of
# 1.5 GB of log-probabilities and their copies at once (more with a larger vocabulary).
PIECE_BYTES = 256 * 2**20
SCORED_KEPT = 256  # evaluations kept for `evaluate(plan, reuse=True)` (a few kB each)


def early_chunks(prompts: int) -> list[int]:
    """Chunk sizes for early exit: EARLY_CHUNK prompts (a quarter of a small suite) at a time, each
    chunk at least half of what is scored so far (few passes on a large suite), while the scored
    prompts stay within half the suite; then the rest at once. A violation usually shows on the
    hardest prompts, which go first, so checking every few prompts stops soon after it, and a plan
    that passes the first half is scored in one more pass."""
    first = min(EARLY_CHUNK, max(1, prompts // 4))
    sizes, done = [], 0
    while done + max(first, done // 2) <= prompts // 2:
        sizes.append(max(first, done // 2))
        done += sizes[-1]
    return sizes + [prompts - done] if prompts > done else sizes


@dataclass
class Evaluation:
    robustness: dict[str, float]  # property -> min over prompts (-inf when infeasible)
    per_prompt: dict[str, dict[str, float]]  # property -> prompt id -> robustness
    feasible: bool
    reason: str | None = None  # why the candidate could not be scored (NaN logits, ...)
    signals: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> min / mean / max
    timings: dict[str, float] = field(default_factory=dict)  # apply, forward, signals, rtamt, total (s)
    partial: bool = False  # stopped early: `robustness` is an upper bound (prompts_evaluated of prompts_total)
    prompts_evaluated: int = 0
    prompts_total: int = 0

    @property
    def satisfied(self) -> bool:
        return self.feasible and all(v >= 0 for v in self.robustness.values())

    @property
    def margin(self) -> float:
        """The smallest robustness over properties: >= 0 means every property holds."""
        return min(self.robustness.values(), default=math.inf)

    def to_dict(self) -> dict:
        return {"robustness": self.robustness, "per_prompt": self.per_prompt, "feasible": self.feasible,
                "reason": self.reason, "satisfied": self.satisfied, "signals": self.signals,
                "timings": self.timings, "partial": self.partial, "prompts_evaluated": self.prompts_evaluated,
                "prompts_total": self.prompts_total}


class Evaluator:
    """Scores candidates of one model against one trace with one set of specs."""

    def __init__(self, loaded, specs, trace: Trace, applier=None, scorer=None, piece_bytes: int | None = None):
        """`scorer`: what computes the candidate's outputs along the trace's paths, with
        score_paths' signature minus the model (e.g. trace.llama_cpp.LlamaCppScorer, llama.cpp
        running a .gguf file); None: torch, `loaded.model` with the applier's weights. It is
        called once per piece of the trace (`piece_bytes`: the largest per-step outputs of one
        piece, PIECE_BYTES when None; a prompt longer than that is a piece of its own)."""
        missing = specs.needs - trace.needs
        if missing:
            raise InvalidInput(f"the trace was built without {', '.join(sorted(missing))}, which the specs need; "
                               f"build it with these specs")
        if resolve_options(loaded.model, specs.options, specs.option_where) != trace.options:
            raise InvalidInput("the trace was built with other signal options (hidden_layer / attn_layers / "
                               "attn_span) than the specs declare; build it with these specs")
        gold = [p.name for p in specs.properties if p.axis == ANSWER]
        if gold and not any(p.answer for p in trace.paths):
            raise InvalidInput(f"propert{'ies' if len(gold) > 1 else 'y'} {', '.join(gold)} need gold answers, "
                               f"but no prompt of the trace has one")
        self.loaded, self.specs, self.trace, self.applier, self.scorer = loaded, specs, trace, applier, scorer
        self.piece_bytes = piece_bytes or PIECE_BYTES
        self._replay = BlockReplay()
        self._prefixes = PrefixKeeper()
        self._opening = opening_tokens(trace.paths)  # every piece and subset continues this prefix
        self._scored: OrderedDict[tuple, Evaluation] = OrderedDict()  # plan -> its evaluation on every prompt
        self.eos = end_tokens(loaded.model, loaded.tokenizer)
        self._subsets: dict[tuple[str, ...], Trace] = {}
        self._hardness: dict[str, float] = {}  # prompt id -> its lowest relative margin seen (early exit's order)
        self._scale: dict[str, float] = {}  # property -> the largest |robustness| seen on a prompt

    def evaluate(self, plan=None, prompts=None, *, stop_below: float | None = None, replay: bool = False,
                 reuse: bool = False) -> Evaluation:
        """Robustness of every property for `plan` (None: the base model).

        `prompts`: optional prompt ids to evaluate on (e.g. a quick subset for profiling);
        properties with no prompt in the subset (gold properties) are vacuously +inf.

        `stop_below` (early exit): score the prompts hardest first, a few at a time, and stop as soon
        as some property's robustness over the whole suite is sure to be below this value (0: the
        plan violates a property) whatever the other prompts give. Such an Evaluation is `partial`:
        its robustness is an upper bound (the minimum, or a share's order statistic, over fewer
        prompts can only be larger).

        `replay`: keep the blocks' outputs, and reuse those computed under the same weights for the
        same batch (trace/replay.py): for a series of plans that differ from each other late in the
        model on the same prompts (sensitivity profiling). The same robustness either way.

        `reuse`: a plan this evaluator already scored on every prompt (a search's winner, scored
        as a trial) gives that evaluation back, without a pass and without changing the model's
        weights (timings {"reused": 1.0}).
        """
        key = _plan_key(plan) if isinstance(plan, Plan) and prompts is None else None
        if reuse and key in self._scored:
            self._scored.move_to_end(key)
            return replace(self._scored[key], timings={"reused": 1.0})
        trace = self._trace_for(prompts)
        clock = time.perf_counter
        start = clock()
        if self.applier is not None:
            if plan is None:
                self.applier.restore()
            else:
                self.applier.apply(plan)
        elif plan is not None:
            raise ToggleError("evaluate(plan) needs an applier to put the plan's weights into the model")
        timings = {"apply": clock() - start}
        if stop_below is None:
            chunks = [trace]
        else:
            order = sorted(trace.prompt_ids, key=lambda pid: (self._hardness.get(pid, math.inf), pid))
            cuts = np.cumsum(early_chunks(len(order))).tolist()
            chunks = [trace.subset(order[lo:hi]) for lo, hi in zip([0] + cuts[:-1], cuts)]
        per_prompt: dict[str, dict[str, float]] = {p: {} for p in self.specs.names}
        summaries, partial = [], False
        for i, chunk in enumerate(chunks):
            for piece in pieces(chunk, self.piece_bytes):
                interrupts.check()
                scored = self._score(piece, timings, replay)
                if isinstance(scored, str):
                    return self._infeasible(scored, timings, clock() - start)
                values, summary = scored
                summaries.append(summary)
                for name, by_prompt in values.items():
                    per_prompt[name].update(by_prompt)
            if stop_below is not None and i < len(chunks) - 1 and self._decided(per_prompt, len(trace.paths), stop_below):
                partial = True
                break
        if stop_below is not None or prompts is None:
            self._remember_hardness(per_prompt)
        robustness = self._over_suite(per_prompt, trace)
        timings["total"] = clock() - start
        scored = sum(len(c.paths) for c in chunks[:i + 1])
        result = Evaluation(robustness, per_prompt, True, None, _merge(summaries), timings, partial=partial,
                            prompts_evaluated=scored, prompts_total=len(trace.paths))
        if key is not None and not partial:
            self._scored[key] = result
            while len(self._scored) > SCORED_KEPT:
                self._scored.popitem(last=False)
        return result

    def _score(self, trace: Trace, timings: dict, replay: bool = False):
        """One teacher-forced pass over `trace`'s paths: (property -> prompt -> robustness, signal
        summaries), or the reason the outputs cannot be compared."""
        clock = time.perf_counter
        t0 = clock()
        if self.scorer is None:
            signatures = self._block_signatures()
            cand = score_paths(self.loaded.model, trace.paths, self.specs.needs, trace.options,
                               batch_tokens=trace.batch_tokens,
                               replay=self._armed_replay(trace, signatures) if replay else None,
                               prefixes=self._armed_prefixes(signatures), prefix_limit=self._opening)
        else:
            cand = self.scorer(trace.paths, self.specs.needs, trace.options, batch_tokens=trace.batch_tokens)
            ours, theirs = cand.logprobs, trace.base.logprobs
            if ours is not None and theirs is not None and ours.shape[-1] != theirs.shape[-1]:
                raise InvalidInput(f"the candidate predicts over {ours.shape[-1]} tokens, the base model over "
                                   f"{theirs.shape[-1]}; audit a file made from the base model")
        t1 = clock()
        timings["forward"] = timings.get("forward", 0.0) + t1 - t0
        problem = check_outputs(cand, trace.options)
        if problem:
            return problem
        values = self._signals(cand, trace)
        t2 = clock()
        timings["signals"] = timings.get("signals", 0.0) + t2 - t1
        for name, v in values.items():
            if v.size and not np.isfinite(v).all():
                return f"signal {name} is not finite at {int((~np.isfinite(v)).sum())} steps"
        step_traces, answer_traces = _per_prompt(values, trace)
        per_prompt = self.specs.evaluate(step_traces, answer_traces)
        timings["rtamt"] = timings.get("rtamt", 0.0) + clock() - t2
        summary = {name: (float(v.min()), float(v.sum()), int(v.size), float(v.max()))
                   for name, v in values.items() if v.size}
        return per_prompt, summary

    def _block_signatures(self) -> list | None:
        """What the model holds now, per block (PlanApplier.block_signatures), or None when the
        applier cannot say."""
        signatures = getattr(self.applier, "block_signatures", None)
        return None if signatures is None else signatures(len(find_blocks(self.loaded.model)[1]))

    def _armed_prefixes(self, signatures: list | None) -> PrefixKeeper:
        """The evaluator's prefix caches, told the weights the model holds now (the signature of
        its last block covers the embedding and every block; None: the prefix is computed each time)."""
        self._prefixes.arm(signatures[-1] if signatures else None)
        return self._prefixes

    def _armed_replay(self, trace: Trace, signatures: list | None) -> BlockReplay | None:
        """The evaluator's block replay, told the weights the model holds now (None when the
        applier cannot say which: replay nothing)."""
        if signatures is None:
            return None
        blocks = len(signatures)
        # the attention capture runs inside the blocks it pools: those and the ones after them run
        stop = min(trace.options.attn_layers, default=blocks) if ATTENTION in self.specs.needs else blocks
        self._replay.arm(signatures, stop)
        return self._replay

    def base_against_itself(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Every property's robustness (over the suite, and per prompt) with the base model's own
        recorded outputs as the candidate's, from the trace alone (no pass): what a plan that
        reproduces the base model scores. Below 0, the property fails for the original model."""
        per_prompt = self.specs.evaluate(*_per_prompt(self._signals(self.trace.base, self.trace), self.trace))
        return self._over_suite(per_prompt, self.trace), per_prompt

    def _signals(self, cand, trace: Trace) -> dict[str, np.ndarray]:
        """Every signal the specs read, `cand`'s outputs against the base's along `trace`'s paths."""
        tokens = StepTokens.of(trace.paths, self.eos) if TOKEN_SIGNALS.intersection(self.specs.signals) else None
        return compute_signals(self.specs.signals, cand, trace.base, options=self.specs.options, tokens=tokens)

    def _over_suite(self, per_prompt: dict, trace: Trace) -> dict[str, float]:
        """Each property's robustness over `trace`'s prompts, from its per-prompt values."""
        return {p.name: over_suite(p, per_prompt[p.name].values(), prompts=self._applies(p, trace))
                for p in self.specs.properties}

    def _applies(self, prop, trace: Trace) -> int:
        """How many prompts of `trace` a property is evaluated on (answer properties: those with one)."""
        return len(trace.paths) if prop.axis != ANSWER else sum(1 for p in trace.paths if p.answer)

    def _decided(self, per_prompt: dict, prompts: int, threshold: float) -> bool:
        trace_answers = sum(1 for p in self.trace.paths if p.answer)
        for prop in self.specs.properties:
            n = prompts if prop.axis != ANSWER else trace_answers
            if decided_below(prop, per_prompt[prop.name].values(), n, threshold):
                return True
        return False

    def _remember_hardness(self, per_prompt: dict) -> None:
        """Each prompt's lowest margin seen, relative to the property's scale (its largest value
        seen): early exit scores the prompts that broke plans before first."""
        for name, values in per_prompt.items():
            finite = [abs(v) for v in values.values() if math.isfinite(v)]
            if finite:
                self._scale[name] = max(self._scale.get(name, 0.0), max(finite))
        for name, values in per_prompt.items():
            scale = self._scale.get(name) or 1.0
            for pid, v in values.items():
                if math.isfinite(v):
                    self._hardness[pid] = min(self._hardness.get(pid, math.inf), v / scale)

    def _trace_for(self, prompts) -> Trace:
        if prompts is None:
            return self.trace
        key = tuple(prompts)
        if key not in self._subsets:
            self._subsets[key] = self.trace.subset(key)
        return self._subsets[key]

    def _infeasible(self, reason: str, timings: dict, total: float) -> Evaluation:
        timings = {**timings, "total": total}
        return Evaluation({p: -math.inf for p in self.specs.names}, {}, False, reason, {}, timings)


def _plan_key(plan) -> tuple:
    """What a plan's weights depend on: every setting other than the untouched one (a module
    the plan does not name gets that one), and the methods."""
    return (tuple(sorted((n, s) for n, s in plan.modules.items() if s != UNTOUCHED)), plan.methods)


def pieces(trace: Trace, limit: int) -> Iterator[Trace]:
    """`trace` cut into pieces whose base outputs along the steps take at most `limit` bytes (the
    candidate's take as many), prompts of similar length together (score_paths pads each batch
    to its longest sequence); `trace` itself when it fits. Each piece's copy of the base outputs
    is made as it is reached, so one piece's is held at a time, not the whole trace's again."""
    tensors = [t for t in (trace.base.logprobs, trace.base.attn, trace.base.hidden) if t is not None]
    per_step = sum(t[0].numel() * t.element_size() for t in tensors if len(t))
    steps = [len(p.tokens) for p in trace.paths]
    if per_step * sum(steps) <= limit:
        yield trace
        return
    order = sorted(range(len(trace.paths)), key=lambda i: (len(trace.paths[i].prompt_ids) + steps[i], i))
    groups, size = [[]], 0
    for i in order:
        if groups[-1] and size + steps[i] * per_step > limit:
            groups.append([])
            size = 0
        groups[-1].append(trace.paths[i].prompt_id)
        size += steps[i] * per_step
    for ids in groups:
        yield trace.subset(ids)


def _merge(summaries: list[dict]) -> dict[str, dict[str, float]]:
    """Signal min / mean / max over the chunks scored."""
    out = {}
    for name in {n for s in summaries for n in s}:
        parts = [s[name] for s in summaries if name in s]
        count = sum(p[2] for p in parts)
        out[name] = {"min": min(p[0] for p in parts), "mean": sum(p[1] for p in parts) / count,
                     "max": max(p[3] for p in parts)}
    return out


def _per_prompt(values: dict[str, np.ndarray], trace: Trace):
    """Split concatenated signal values into prompt id -> {signal -> values}, per time axis."""
    steps = [len(p.tokens) for p in trace.paths]
    answers = [len(p.answer) if p.answer else 0 for p in trace.paths]
    step_out: dict[str, dict] = {p.prompt_id: {} for p in trace.paths}
    answer_out: dict[str, dict] = {p.prompt_id: {} for p, n in zip(trace.paths, answers) if n}
    for name, v in values.items():
        axis_answer = SIGNALS[name].axis == ANSWER
        counts = answers if axis_answer else steps
        at = 0
        for p, n in zip(trace.paths, counts):
            if n:
                (answer_out if axis_answer else step_out)[p.prompt_id][name] = v[at:at + n]
            at += n
    return step_out, answer_out
