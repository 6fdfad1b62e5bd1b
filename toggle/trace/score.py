"""ONE teacher-forced pass of a model over given token paths, returning exactly what the
signals need at every step (log-probabilities, attention to the prompt's first tokens, hidden
states, gold-answer log-probabilities); and the checks that make such outputs comparable."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from ..errors import InvalidInput
from ..modules import find_blocks
from ..signals import ATTENTION, GOLD, HIDDEN, LOGPROBS, SignalOptions
from .capture import _AttentionCapture, _capturing
from .padding import _left_pad
from .prefix import batch_cache, prefix_cache, prompt_key, shared_prefix

# Padded tokens per forward batch. On a 2-core CPU 512 measured fastest for SmolLM2-135M over
# the default suite (7.0 s vs 8.3 s one sequence at a time and 12.8 s at 2048: large batches
# make the (batch, steps, vocabulary) logits tensors memory-bound).
DEFAULT_BATCH_TOKENS = 512
# A forward's logits (rows x steps x vocabulary, float32; their log-softmax as much again) at most
# this many bytes: wide batches of short sequences with a large vocabulary stay bounded.
LOGITS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class TokenPath:
    """One prompt and the continuation the signals are measured along."""

    prompt_id: str
    prompt_ids: tuple[int, ...]
    content: tuple[int, int]  # token span of the prompt's own text (attn_cos looks at its start)
    tokens: tuple[int, ...]  # the continuation: step t predicts tokens[t]
    answer: tuple[int, ...] | None = None  # gold answer tokens (answer-axis signals)
    # When `tokens` are not the base model's own continuation (a free-running audit: the
    # candidate's), the base model's own greedy continuation of the prompt (token_match).
    base_tokens: tuple[int, ...] | None = None


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


def resolve_options(model, options: SignalOptions, where: dict[str, str] | None = None) -> SignalOptions:
    """`options` with absolute block indices for `model`; `where` (option -> FILE:LINE:COL of its
    declaration, SpecSet.option_where) places the error of a block the model lacks."""
    _, blocks = find_blocks(model)
    n = len(blocks)
    try:
        return options.resolved(n)
    except IndexError as e:
        try:  # which option: hidden_layer alone, or else attn_layers
            SignalOptions(hidden_layer=options.hidden_layer).resolved(n)
            name = "attn_layers"
        except IndexError:
            name = "hidden_layer"
        at = (where or {}).get(name)
        raise InvalidInput(f"{at + ': ' if at else ''}option {name}: block {e.args[0]} does not exist; this model "
                           f"has {n} blocks (0..{n - 1}, or -1..-{n}, or a fraction 0.0..1.0)") from None


def check_outputs(out: StepOutputs, options: SignalOptions) -> str | None:
    """Why these outputs cannot be compared (non-finite logits, dead hidden states, empty
    attention rows), or None when they are fine."""
    if out.logprobs is not None:
        # 256 rows at a time (50 MB at a 49k vocabulary): isfinite of a whole tensor makes copies of its size
        bad = torch.cat([~torch.isfinite(rows).all(dim=-1) for rows in out.logprobs.split(256)]
                        or [torch.zeros(0, dtype=torch.bool)])
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
                batch_tokens: int = DEFAULT_BATCH_TOKENS, replay=None, prefixes=None,
                prefix_limit: int | None = None) -> StepOutputs:
    """One teacher-forced pass of `model` over every path; see StepOutputs for what it returns.

    Sequences are sorted by length and left-padded into batches of at most `batch_tokens`
    padded tokens, so every sequence's steps are the last positions of its row. Leading tokens
    all sequences share (PREFIX_MIN or more) are run once, and each batch continues from their
    keys and values. The LM head runs only on the step positions; attention weights are
    computed (eagerly) only in the layers attn_cos pools, hidden states are read by a hook on
    one block. `replay` (a replay.BlockReplay, armed with the model's weights): blocks it kept an
    output of for a batch, under the same weights, return that output instead of running. `prefixes` (a
    prefix.PrefixKeeper, armed with the model's weights): where the shared prefix's cache comes
    from (else it is computed); `prefix_limit`: at most this many shared tokens (a trace's own,
    `opening_tokens`, so that every piece of it continues the same cached prefix).
    """
    needs = frozenset(needs)
    steps = tuple(len(p.tokens) for p in paths)
    answer_steps = tuple(len(p.answer) if (p.answer and GOLD in needs) else 0 for p in paths)
    step_needs = needs & {LOGPROBS, ATTENTION, HIDDEN}
    out = StepOutputs(steps, answer_steps)
    step_seqs = [_Sequence(i, list(p.prompt_ids) + list(p.tokens[:-1]), len(p.tokens), list(p.tokens), p.content)
                 for i, p in enumerate(paths)] if step_needs else []
    gold_seqs = [_Sequence(i, list(p.prompt_ids) + list(p.answer[:-1]), len(p.answer), list(p.answer), p.content)
                 for i, p in enumerate(paths) if p.answer] if GOLD in needs else []
    # the shared prefix (it ends before any sequence's steps) is run once for both passes
    every = step_seqs + gold_seqs
    limit = min((len(s.ids) - s.n for s in every), default=0)
    shared = shared_prefix([s.ids for s in every], limit if prefix_limit is None else min(limit, prefix_limit))
    prefix = None
    if shared:
        device, ids = next(model.parameters()).device, every[0].ids[:shared]
        prefix = prefixes.get(model, ids, device) if prefixes is not None else prefix_cache(model, ids, device)
    if step_seqs:
        parts = _run(model, step_seqs, step_needs, options, batch_tokens, replay, shared, prefix)
        for name in ("logprobs", "attn", "hidden"):
            if name in parts:
                setattr(out, name, torch.cat([parts[name][i] for i in range(len(paths))]))
    if GOLD in needs:
        parts = _run(model, gold_seqs, {GOLD}, options, batch_tokens, replay, shared, prefix) if gold_seqs else {}
        out.gold_logprob = torch.cat([parts["gold"][s.index] for s in gold_seqs]) if gold_seqs else torch.zeros(0)
    return out


def opening_tokens(paths: list[TokenPath]) -> int:
    """How many leading tokens every path's prompt shares (before any step): the prefix a pass
    over any subset of `paths` may continue (0 when shorter than PREFIX_MIN)."""
    return shared_prefix([list(p.prompt_ids) for p in paths], min((len(p.prompt_ids) for p in paths), default=1) - 1)


def _run(model, seqs: list[_Sequence], needs, options: SignalOptions, batch_tokens: int, replay=None, shared: int = 0,
         prefix=None) -> dict[str, dict]:
    """One teacher-forced pass over `seqs`, each continuing the `shared` leading tokens whose
    keys and values `prefix` holds."""
    device = next(model.parameters()).device
    parts: dict[str, dict[int, torch.Tensor]] = {}
    capture = _AttentionCapture(options) if ATTENTION in needs else None
    _, blocks = find_blocks(model)
    hidden_rows: list[torch.Tensor] = []
    prefix_ids = torch.tensor(seqs[0].ids[:shared] if shared else [], dtype=torch.long)

    def grab_hidden(_module, _inputs, output):
        hidden_rows.append(block_output(output).detach())

    hook = blocks[options.hidden_layer].register_forward_hook(grab_hidden) if HIDDEN in needs else None
    try:
        with torch.no_grad(), _capturing(model, capture):
            for batch in _batches(seqs, batch_tokens, shared, _vocabulary(model)):
                n_max = max(s.n for s in batch)
                ids, mask, pads = _left_pad([s.ids[shared:] for s in batch], 0, device)
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0) + shared
                cached = {"use_cache": False}
                if prefix is not None:  # every row continues the cached prefix; its pads sit after it
                    cached = {"use_cache": True, **batch_cache(model, prefix, len(batch))}
                    mask = torch.cat([mask.new_ones(len(batch), shared), mask], dim=1)
                if capture:
                    capture.start(n_max)
                hidden_rows.clear()
                with replay.around(blocks, prefix_ids, ids, mask) if replay is not None else nullcontext():
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=n_max,
                                   **cached).logits.float()
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
                        keys = [prompt_key(j, shared, pads[row])
                                for j in range(s.content[0], min(s.content[1], s.content[0] + options.attn_span))]
                        a = torch.zeros(s.n, options.attn_span)
                        a[:, :len(keys)] = capture.pooled[row, n_max - s.n:, keys].float().cpu()
                        parts.setdefault("attn", {})[s.index] = a
    finally:
        if hook is not None:
            hook.remove()
    return parts


def _vocabulary(model) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else getattr(model.config, "vocab_size", 0)


def block_output(output) -> torch.Tensor:
    """A block's hidden states from what its forward returned (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def _batches(seqs: list[_Sequence], batch_tokens: int, shared: int = 0, vocab: int = 0):
    """Length-sorted batches whose padded size (less the `shared` prefix) stays within
    batch_tokens, and whose logits (rows x the most steps of a row x `vocab`, float32) within
    LOGITS_BYTES (at least one sequence each)."""
    order = sorted(seqs, key=lambda s: len(s.ids))
    batch: list[_Sequence] = []
    steps = 0
    for s in order:
        wider = max(steps, s.n)
        if batch and ((len(batch) + 1) * (len(s.ids) - shared) > batch_tokens
                      or (len(batch) + 1) * wider * vocab * 4 > LOGITS_BYTES):
            yield batch
            batch, wider = [], s.n
        batch.append(s)
        steps = wider
    if batch:
        yield batch
