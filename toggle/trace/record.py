"""The base model's trace in one pass: greedy generation that records, at every step, what the
teacher-forced pass (score.py) would return along the generated path (log-probabilities,
pooled attention to the prompt's first tokens, hidden states at one block), so the base model
is not run a second time over its own paths.

Step t of a path is the forward call that produced token t: the prefill's last position for
t = 0, then one decode call per token, so hooks read the last query position of every call.
The values equal the teacher-forced pass's to float rounding (cached keys and values, other
batch shapes), not bit for bit; gold-answer log-probabilities need a pass over the answer and
still come from score_paths.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..modules import find_blocks
from ..prompts import EncodedPrompt
from ..signals import ATTENTION, HIDDEN, LOGPROBS, SignalOptions
from .capture import _AttentionCapture, _capturing
from .generate import GENERATE_BATCH, GENERATE_TOKENS, GenerationSettings, _generate
from .prefix import prompt_key
from .score import StepOutputs, block_output

RECORDED = frozenset({LOGPROBS, ATTENTION, HIDDEN})  # what generation can record; GOLD cannot


class _Recorder:
    """Collects one batch's per-call attention rows and hidden states (by hooks), then each
    row's first n steps of them and of the logits."""

    def __init__(self, needs, options: SignalOptions, prompts: int, steps: int):
        self.needs, self.options = needs, options
        self.capture = _AttentionCapture(options) if ATTENTION in needs else None
        self.parts: dict[str, dict[int, torch.Tensor]] = {name: {} for name in ("attn", "hidden")}
        # Log-probabilities, by far the largest output (steps x vocabulary per prompt), go straight
        # into one (prompts, steps, vocabulary) tensor, packed in place at the end (`packed`):
        # rows kept apart and concatenated would hold them twice at once.
        self.count, self.steps = prompts, steps
        self.logprobs: torch.Tensor | None = None
        self.prompts: list[EncodedPrompt] = []
        self.pads: list[int] = []
        self.shared = 0
        self.attn_rows: list[torch.Tensor] = []
        self.hidden_rows: list[torch.Tensor] = []

    @contextmanager
    def recording(self, model):
        """The hooks and the attention capture, installed for the generation calls."""
        _, blocks = find_blocks(model)
        hooks = [model.register_forward_hook(self.after_call)]
        if HIDDEN in self.needs:
            hooks.append(blocks[self.options.hidden_layer].register_forward_hook(self.after_block))
        try:
            with _capturing(model, self.capture):
                yield
        finally:
            for hook in hooks:
                hook.remove()

    def begin(self, prompts: list[EncodedPrompt], pads: list[int], shared: int) -> None:
        self.prompts, self.pads, self.shared = prompts, pads, shared
        self.attn_rows.clear()
        self.hidden_rows.clear()
        if self.capture is not None:
            self.capture.start(1)

    def after_block(self, _module, _inputs, output) -> None:
        self.hidden_rows.append(block_output(output)[:, -1].detach().float().cpu())

    def after_call(self, _module, _inputs, _output) -> None:
        if self.capture is not None:
            # keys are the padded prompt then the tokens generated so far; only the prompt's are kept
            self.attn_rows.append(self.capture.pooled[:, -1].float().cpu())
            self.capture.start(1)

    def keep(self, index: int, row: int, n: int, logits: tuple[torch.Tensor, ...]) -> None:
        if LOGPROBS in self.needs:
            if self.logprobs is None:
                self.logprobs = torch.empty(self.count, self.steps, logits[0].shape[-1])
            steps = torch.stack([logits[t][row] for t in range(n)])
            self.logprobs[index, :n] = torch.log_softmax(steps.float(), dim=-1)
        if HIDDEN in self.needs:
            self.parts["hidden"][index] = torch.stack([self.hidden_rows[t][row] for t in range(n)])
        if self.capture is not None:
            content = self.prompts[row].content
            keys = [prompt_key(j, self.shared, self.pads[row])
                    for j in range(content[0], min(content[1], content[0] + self.options.attn_span))]
            a = torch.zeros(n, self.options.attn_span)
            for t in range(n):
                a[t, :len(keys)] = self.attn_rows[t][row, keys]
            self.parts["attn"][index] = a


def generate_recorded(model, tokenizer, encoded: list[EncodedPrompt], settings: GenerationSettings, needs,
                      options: SignalOptions, *, batch_size: int = GENERATE_BATCH,
                      batch_tokens: int = GENERATE_TOKENS) -> tuple[list[tuple[int, ...]], StepOutputs]:
    """Greedy continuations, and the outputs of `needs` (within RECORDED; `options` resolved)
    at every step of them, recorded during the generation."""
    recorder = _Recorder(frozenset(needs) & RECORDED, options, len(encoded), settings.steps)
    tokens = _generate(model, tokenizer, encoded, settings, batch_size, batch_tokens, recorder)
    out = StepOutputs(tuple(len(t) for t in tokens), tuple(0 for _ in tokens))
    if recorder.logprobs is not None:
        out.logprobs = packed(recorder.logprobs, out.steps)
    for name, rows in recorder.parts.items():
        if rows:
            setattr(out, name, torch.cat([rows[i] for i in range(len(tokens))]))
    return tokens, out


def packed(rows: torch.Tensor, counts) -> torch.Tensor:
    """The first counts[i] rows of rows[i] (a (prompts, steps, ...) tensor), one after another:
    moved forward in place, so the result is a view of `rows`' memory (the unused tail of it, the
    steps after an end of sequence, stays allocated with it)."""
    flat = rows.view(rows.shape[0] * rows.shape[1], *rows.shape[2:])
    at = 0
    for i, n in enumerate(counts):
        src = i * rows.shape[1]
        if src != at:
            if at + n <= src:  # the rows do not overlap: one copy
                flat[at:at + n] = flat[src:src + n]
            else:  # each row copied before its own source is overwritten
                for k in range(n):
                    flat[at + k] = flat[src + k]
        at += n
    return flat[:at]
