"""Greedy generation of each prompt's continuation: the token paths the signals are measured
along (the base model's for the search, the compressed model's in a free-running audit)."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from ..prompts import EncodedPrompt
from ..signals import DEFAULT_STEPS
from .padding import _left_pad
from .prefix import batch_cache, prefix_cache, shared_prefix



@dataclass(frozen=True)
class GenerationSettings:
    steps: int = DEFAULT_STEPS  # at most this many generated tokens per prompt
    stop_at_eos: bool = True  # a continuation ends at (and includes) the end-of-sequence token


def end_tokens(model, tokenizer) -> frozenset[int]:
    """The token ids that end a continuation: the model's generation config's, else the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return frozenset(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])


# Sequences per generate() call. Greedy decoding of a small model on a CPU is bound by the weights
# read per step, so wider batches amortise them: 96 held-out prompts x 32 steps on SmolLM2-135M,
# 2 cores, took 39 s at 8, 27 s at 16, 21 s at 32 and 20 s at 48-96, with identical tokens (Intel
# Xeon); all 283 on an AMD EPYC 78.8 s at 32, 75.2 at 64, 72.8 at 96, recording the default specs'
# outputs 84.1 s at 32 and 79.6 at 64 (benchmarks/bench_generate.py). A batch's raw logits are held
# until it ends (64 x 32 steps x 49,152 x 4 bytes = 0.4 GB on SmolLM2), so wider costs memory.
GENERATE_BATCH = 64
# Padded prompt tokens per generate() call. Rows are left-padded to the batch's longest prompt,
# so one 600-token prompt among 31 short ones made the default held-out suite's prefill 38%
# padding; a cap puts long prompts in narrower batches of their own (benchmarks/bench_generate.py).
GENERATE_TOKENS = 4096


def generation_batches(lengths: list[int], batch_size: int = GENERATE_BATCH,
                       batch_tokens: int = GENERATE_TOKENS) -> list[list[int]]:
    """Indices of `lengths` in length order, cut into batches of at most `batch_size` rows and
    at most `batch_tokens` padded tokens (a longer single prompt gets a batch of its own)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[i] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def generate_paths(model, tokenizer, encoded: list[EncodedPrompt], settings: GenerationSettings,
                   *, batch_size: int = GENERATE_BATCH, batch_tokens: int = GENERATE_TOKENS) -> list[tuple[int, ...]]:
    """Greedy continuations (token ids, ending with EOS when the model stopped)."""
    return _generate(model, tokenizer, encoded, settings, batch_size, batch_tokens)


def _generate(model, tokenizer, encoded, settings, batch_size, batch_tokens, recorder=None):
    """generate_paths; a `recorder` (record.py) records while generating (not the prefix's own
    forward), is told of each batch and keeps each row's outputs."""
    eos_ids = end_tokens(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
    config = GenerationConfig(
        max_new_tokens=settings.steps, do_sample=False, pad_token_id=pad,
        eos_token_id=sorted(eos_ids) if settings.stop_at_eos and eos_ids else None,
        min_new_tokens=None if settings.stop_at_eos else settings.steps,
        # raw logits, not `scores`: those are after the logits processors (EOS masked, ...)
        return_dict_in_generate=True, output_logits=recorder is not None,
    )
    device = next(model.parameters()).device
    out: dict[int, tuple[int, ...]] = {}
    # a prefix every prompt shares is run once (prefix.py); each prompt keeps a token after it
    shared = shared_prefix([e.ids for e in encoded], min((len(e.ids) for e in encoded), default=1) - 1)
    prefix = prefix_cache(model, encoded[0].ids[:shared], device) if shared else None
    with (torch.no_grad(), _plain_generation_defaults(model),
          (recorder.recording(model) if recorder is not None else nullcontext())):
        for idx in generation_batches([len(e.ids) - shared for e in encoded], batch_size, batch_tokens):
            ids, mask, pads = _left_pad([encoded[i].ids[shared:] for i in idx], pad, device)
            cached = {}
            if prefix is not None:
                ids = torch.cat([torch.tensor([encoded[0].ids[:shared]] * len(idx), device=device), ids], dim=1)
                mask = torch.cat([mask.new_ones(len(idx), shared), mask], dim=1)
                cached = batch_cache(model, prefix, len(idx))
            if recorder is not None:
                recorder.begin([encoded[i] for i in idx], pads, shared)
            result = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **cached)
            for row, i in enumerate(idx):
                new = result.sequences[row, ids.shape[1]:].tolist()
                stop = next((k for k, t in enumerate(new) if t in eos_ids), None) if settings.stop_at_eos else None
                out[i] = tuple(new[: stop + 1] if stop is not None else new)
                if recorder is not None:
                    recorder.keep(i, row, len(out[i]), result.logits)
    return [out[i] for i in range(len(encoded))]


@contextmanager
def _plain_generation_defaults(model):
    """transformers fills every field a GenerationConfig leaves unset from the model's own
    generation_config.json (repetition_penalty, no_repeat_ngram_size, min_new_tokens, ...), which
    would bend the greedy paths: while generating, the model's defaults are transformers' plain ones."""
    own = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own
