"""Stage 4, signals: per-step numbers comparing a candidate model with the base model.

Every signal is computed for every step of every prompt from the outputs of ONE
teacher-forced pass of the candidate over the base model's token paths (see trace.py),
against the base model's cached outputs along the same paths, vectorised over all steps.

Notation at generation step t (t = 0 is the first generated token): p = base model's
next-token distribution, q = candidate's, over the vocabulary V; b = argmax p (the base
model's greedy token, which on the base path is the token that was generated).

Two time axes exist: `step` signals run over the generated continuation; `answer` signals
run over the tokens of a prompt's gold answer (teacher-forced after the prompt; time =
answer token index) and exist only for prompts that carry an answer. One property may not
mix the two axes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch

# What a signal needs from a teacher-forced pass (the trace caches the base side of it).
LOGPROBS, ATTENTION, HIDDEN, GOLD = "logprobs", "attention", "hidden", "gold"
STEP, ANSWER = "step", "answer"
# Generated steps a trace reads when no property bounds them (e.g. only unbounded `always`), and
# at least what an unbounded property reads beside bounded ones.
DEFAULT_STEPS = 32


Layer = int | float  # a block index (negative: from the end) or a fraction of the depth (0.0 .. 1.0)


@dataclass(frozen=True)
class SignalOptions:
    """Where the model-internal signals look. Spec files set them with `option NAME = VALUE`.

    A layer is a block index (0 = first block, -1 = last) or, written with a decimal point,
    a fraction of the depth (0.7 = the block 70% of the way down, round(0.7 * (blocks - 1))),
    so one spec file fits models of any depth. `attn_layers` items may be ranges `A:B`
    (inclusive).
    """

    hidden_layer: Layer = -1  # hidden_cos: output of this transformer block
    attn_layers: tuple | None = None  # attn_cos: blocks pooled: layers or (start, end) ranges; None: all
    attn_span: int = 32  # attn_cos: how many of the prompt text's first tokens count as "early"
    topk: int = 5  # topk_overlap: how many of each distribution's most likely tokens are compared

    def resolved(self, num_layers: int) -> "SignalOptions":
        """Absolute block indices for a model with `num_layers` blocks (IndexError if out of range).

        What a pass over the model depends on: `topk` is left at its default, since it only
        enters the arithmetic on the outputs, so traces are shared across topk values."""
        def fix(i: Layer) -> int:
            if isinstance(i, float):
                if not 0.0 <= i <= 1.0:
                    raise IndexError(i)
                return round(i * (num_layers - 1))
            j = i + num_layers if i < 0 else i
            if not 0 <= j < num_layers:
                raise IndexError(i)
            return j

        if self.attn_layers is None:
            layers = set(range(num_layers))
        else:
            layers = set()
            for item in self.attn_layers:
                if isinstance(item, tuple):
                    lo, hi = sorted((fix(item[0]), fix(item[1])))
                    layers.update(range(lo, hi + 1))
                else:
                    layers.add(fix(item))
        return SignalOptions(hidden_layer=fix(self.hidden_layer), attn_layers=tuple(sorted(layers)),
                             attn_span=self.attn_span)


@dataclass(frozen=True)
class Signal:
    name: str
    meaning: str
    formula: str
    needs: str  # LOGPROBS, ATTENTION, HIDDEN or GOLD
    axis: str  # STEP or ANSWER
    compute: Callable[["_Pair"], torch.Tensor]
    # whole-valued signals: FLAG (0 or 1), WHOLE (0, 1, 2, ...) or TOPK (multiples of 1/topk); None:
    # continuous. Compared with one of its own values such a signal has margin exactly 0 where it
    # equals it, which `not` and `->` misread: the spec parser refuses that (specs/syntax.py).
    values: str | None = None

    def grid(self, topk: int) -> tuple[float, float, float, str] | None:
        """(step, lowest, highest, in words) of the values it takes, None when continuous."""
        if self.values == FLAG:
            return 1.0, 0.0, 1.0, "0 and 1"
        if self.values == WHOLE:
            return 1.0, 0.0, math.inf, "whole numbers"
        if self.values == TOPK:
            return 1.0 / topk, 0.0, 1.0, f"multiples of 1/{topk} (option topk = {topk})"
        return None


FLAG, WHOLE, TOPK = "flag", "whole", "topk"


@dataclass(frozen=True)
class StepTokens:
    """The tokens of the path at every step (concatenated over prompts), for the token signals."""

    path: torch.Tensor  # (steps,) int64: the token the path takes at each step
    # (steps,) the base model's own greedy continuation at each step, -1 past its end, when the
    # path is the candidate's own (a free-running audit); None: the path is the base model's own
    base_own: torch.Tensor | None = None
    eos: tuple[int, ...] = ()  # the token ids that end a continuation

    @classmethod
    def of(cls, paths, eos=()) -> "StepTokens":
        """From trace.TokenPath-like objects (`tokens`, optional `base_tokens`)."""
        path = torch.tensor([t for p in paths for t in p.tokens], dtype=torch.long)
        own = None
        if any(getattr(p, "base_tokens", None) is not None for p in paths):
            own = torch.tensor([(list(p.base_tokens or ()) + [-1] * len(p.tokens))[i]
                                for p in paths for i in range(len(p.tokens))], dtype=torch.long)
        return cls(path, own, tuple(sorted(eos)))

    def slice(self, start: int, stop: int) -> "StepTokens":
        return StepTokens(self.path[start:stop], None if self.base_own is None else self.base_own[start:stop], self.eos)


class _Pair:
    """Candidate and base outputs over a slice of steps; shared terms computed once."""

    def __init__(self, cand, base, options: SignalOptions | None = None, tokens: StepTokens | None = None):
        self.cand, self.base = cand, base
        self.options = options or SignalOptions()
        self.tokens = tokens

    # float32: 5x faster than float64 over (steps, vocabulary), differences ~1e-7
    @cached_property
    def lp(self):  # base log-probabilities (steps, V)
        return self.base.logprobs.float()

    @cached_property
    def lq(self):
        return self.cand.logprobs.float()

    @cached_property
    def p(self):
        return self.lp.exp()

    @cached_property
    def q(self):
        return self.lq.exp()

    @cached_property
    def b(self):  # base greedy token per step
        return self.lp.argmax(dim=-1, keepdim=True)


def _jsd(x: _Pair) -> torch.Tensor:
    p, q = x.p, x.q
    m2 = p + q  # 2m; p*log(2p/(p+q)) is exactly 0 when p == q, so identical models give 0
    tp = torch.where(p > 0, p * torch.log(2 * p / m2), 0.0)
    tq = torch.where(q > 0, q * torch.log(2 * q / m2), 0.0)
    return (0.5 * (tp + tq).sum(-1) / math.log(2)).clamp(0.0, 1.0)


def _kl(x: _Pair) -> torch.Tensor:
    return torch.where(x.p > 0, x.p * (x.lp - x.lq), 0.0).sum(-1).clamp(min=0.0)


def _entropy(logp: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)


def _margin(lp: torch.Tensor) -> torch.Tensor:
    top = lp.topk(min(2, lp.shape[-1]), dim=-1).values.exp()
    return top[:, 0] - top[:, 1] if top.shape[-1] == 2 else top[:, 0]


def _rank(x: _Pair) -> torch.Tensor:
    # strictly greater: tokens tied with q(b) do not push b down
    return (x.lq > x.lq.gather(-1, x.b)).sum(-1).float()


def _topk_overlap(x: _Pair) -> torch.Tensor:
    k = min(x.options.topk, x.lp.shape[-1])
    ip, iq = x.lp.topk(k, dim=-1).indices, x.lq.topk(k, dim=-1).indices
    return (ip.unsqueeze(-1) == iq.unsqueeze(-2)).any(-1).sum(-1).float() / k


def _token_match(x: _Pair) -> torch.Tensor:
    t = x.tokens
    if t is None or t.base_own is None:  # the path is the base's own: the candidate's own token is its greedy choice
        path = x.b.squeeze(-1) if t is None else t.path
        return (x.lq.argmax(-1) == path).float()
    return (t.path == t.base_own).float()  # the path is the candidate's own continuation


def _stops(lp: torch.Tensor, x: _Pair) -> torch.Tensor:
    eos = x.tokens.eos if x.tokens is not None else ()
    if not eos:
        return torch.zeros(lp.shape[0])
    return torch.isin(lp.argmax(-1), torch.tensor(eos, dtype=torch.long)).float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).clamp(-1.0, 1.0)


_REGISTRY = [
    Signal("jsd", "Jensen-Shannon divergence between candidate and base next-token distributions (bits, 0..1)",
           "jsd[t] = 1/2 sum_v p log2(p/m) + 1/2 sum_v q log2(q/m), m = (p+q)/2",
           LOGPROBS, STEP, _jsd),
    Signal("kl", "Kullback-Leibler divergence of the candidate from the base distribution (nats, >= 0)",
           "kl[t] = sum_v p log(p/q)", LOGPROBS, STEP, _kl),
    Signal("top1_agree", "1 when the candidate's most likely next token is the base model's, else 0",
           "top1_agree[t] = [argmax q = argmax p]", LOGPROBS, STEP,
           lambda x: (x.lq.argmax(-1) == x.lp.argmax(-1)).float(), FLAG),
    Signal("p_ratio", "candidate probability of the base model's greedy token divided by the base probability",
           "p_ratio[t] = q(b) / p(b), b = argmax p", LOGPROBS, STEP,
           lambda x: (x.lq.gather(-1, x.b) - x.lp.gather(-1, x.b)).squeeze(-1).exp()),
    Signal("entropy_delta", "entropy of the candidate distribution minus the base entropy (nats, signed)",
           "entropy_delta[t] = H(q) - H(p), H(p) = -sum_v p log p", LOGPROBS, STEP,
           lambda x: _entropy(x.lq, x.q) - _entropy(x.lp, x.p)),
    Signal("base_p", "the base model's probability of its own greedy token (how sure the base is; 0..1)",
           "base_p[t] = p(b) = max_v p(v)", LOGPROBS, STEP, lambda x: x.lp.max(-1).values.exp()),
    Signal("base_entropy", "entropy of the base distribution (nats, >= 0; low: the base is sure)",
           "base_entropy[t] = H(p) = -sum_v p log p", LOGPROBS, STEP, lambda x: _entropy(x.lp, x.p)),
    Signal("base_margin", "the base model's top-1 probability minus its top-2 probability (0..1)",
           "base_margin[t] = p(v1) - p(v2), v1, v2 = the two most likely tokens under p",
           LOGPROBS, STEP, lambda x: _margin(x.lp)),
    Signal("base_rank", "rank of the base model's greedy token under the candidate (0: the candidate's top "
           "token too)", "base_rank[t] = |{v : q(v) > q(b)}|, b = argmax p", LOGPROBS, STEP, _rank, WHOLE),
    Signal("topk_overlap", "share of the base model's topk most likely tokens that are also among the "
           "candidate's topk (option topk, default 5; 0..1)",
           "topk_overlap[t] = |topk(p) & topk(q)| / k, k = min(topk, |V|), ties broken by torch.topk",
           LOGPROBS, STEP, _topk_overlap, TOPK),
    Signal("token_match", "1 when the candidate's own greedy continuation has the base model's token at this "
           "step, else 0. Free-running audit: the two models' own continuations of the prompt, compared "
           "position by position (0 once either has ended); on the base's path (search, teacher audit) the "
           "candidate's greedy choice after the base's tokens, which is top1_agree",
           "token_match[t] = [c_t = g_t], c / g = the candidate's / base's own greedy continuation "
           "(teacher: c_t = argmax q, g = the path)", LOGPROBS, STEP, _token_match, FLAG),
    Signal("base_stop", "1 when the base model's most likely next token ends the text (end-of-sequence), else 0",
           "base_stop[t] = [argmax p in EOS]", LOGPROBS, STEP, lambda x: _stops(x.lp, x), FLAG),
    Signal("cand_stop", "1 when the candidate's most likely next token ends the text (end-of-sequence), else 0; "
           "in a free-running audit the path ends where the candidate generated it",
           "cand_stop[t] = [argmax q in EOS]", LOGPROBS, STEP, lambda x: _stops(x.lq, x), FLAG),
    Signal("attn_cos", "cosine between candidate and base attention from the current step to the prompt's "
           "first tokens, averaged over heads and the chosen layers",
           "attn_cos[t] = cos(a_q[t], a_p[t]), a[t][j] = mean over layers in attn_layers and heads of "
           "attention(query = step t, key = j-th token of the prompt text), j < attn_span",
           ATTENTION, STEP, lambda x: _cosine(x.cand.attn, x.base.attn)),
    Signal("hidden_cos", "cosine between candidate and base hidden states at the chosen layer",
           "hidden_cos[t] = cos(h_q[t], h_p[t]), h = output of block hidden_layer at the position predicting step t",
           HIDDEN, STEP, lambda x: _cosine(x.cand.hidden, x.base.hidden)),
    Signal("gold_p_ratio", "candidate probability of the gold answer token divided by the base probability "
           "(prompts with an answer; time = answer token)",
           "gold_p_ratio[k] = q(a_k | prompt, a_<k) / p(a_k | prompt, a_<k)", GOLD, ANSWER,
           lambda x: (x.cand.gold_logprob.double() - x.base.gold_logprob.double()).exp()),
    Signal("gold_logprob", "candidate log-probability of the gold answer token (prompts with an answer; "
           "time = answer token)",
           "gold_logprob[k] = log q(a_k | prompt, a_<k)", GOLD, ANSWER,
           lambda x: x.cand.gold_logprob.double()),
]
SIGNALS: dict[str, Signal] = {s.name: s for s in _REGISTRY}
TOKEN_SIGNALS = frozenset({"token_match", "base_stop", "cand_stop"})  # read StepTokens


def known_signals() -> list[str]:
    return list(SIGNALS)


def compute_signals(names, cand, base, *, options: SignalOptions | None = None, tokens: StepTokens | None = None,
                    chunk: int = 128) -> dict[str, np.ndarray]:
    """Signal values for every step (concatenated over prompts), float64 numpy arrays.

    `cand` and `base` are trace.StepOutputs from the same paths; `options` (the specs') set
    what the arithmetic reads, e.g. topk; `tokens` the paths' tokens and end-of-sequence ids
    (token_match, base_stop, cand_stop; without them the path is taken to be the base's greedy
    tokens and nothing ends). Step signals are computed in chunks of steps so the
    (steps, vocabulary) intermediates stay small.
    """
    step = [SIGNALS[n] for n in names if SIGNALS[n].axis == STEP]
    answer = [SIGNALS[n] for n in names if SIGNALS[n].axis == ANSWER]
    out: dict[str, list[torch.Tensor]] = {s.name: [] for s in step + answer}
    total = sum(cand.steps)
    with torch.no_grad():
        for start in range(0, total, chunk):
            pair = _Pair(cand.slice(start, start + chunk), base.slice(start, start + chunk), options,
                         None if tokens is None else tokens.slice(start, start + chunk))
            for s in step:
                out[s.name].append(s.compute(pair))
        if answer:
            pair = _Pair(cand, base, options)
            for s in answer:
                out[s.name].append(s.compute(pair))
    return {n: (torch.cat(v).double().numpy() if v else np.zeros(0)) for n, v in out.items()}


def describe() -> list[dict]:
    """Rows for `toggle signals`."""
    return [{"name": s.name, "meaning": s.meaning, "formula": s.formula, "axis": s.axis, "needs": s.needs}
            for s in _REGISTRY]
