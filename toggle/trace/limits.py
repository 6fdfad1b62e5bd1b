"""What a model can read: checked before any tracing, so a prompt too long for the model or an
attention signal a sliding window cannot compute is one line naming the prompt or the option,
not a traceback (or silent garbage) mid-run."""
from __future__ import annotations

import re

import torch

from ..errors import InvalidInput
from ..modules import find_blocks
from ..prompts import EncodedPrompt
from ..signals import ATTENTION, SignalOptions


def check_lengths(model, encoded: list[EncodedPrompt], steps: int, needs, options: SignalOptions,
                  source: str) -> None:
    """Every prompt of `encoded` with `steps` generated tokens fits the model's learned position
    embeddings, and, for attention signals, the sliding windows of the layers they pool.
    `options` resolved (absolute layer indices); `source` names the prompt suite."""
    if not encoded:
        return
    gold = "gold" in needs  # the gold answer is scored after the prompt too
    longest = max(encoded, key=lambda e: positions(e, steps, gold))
    total = positions(longest, steps, gold)
    context = learned_positions(model)
    if context and total > context:
        answer = len(longest.answer_ids or ()) if gold else 0
        read = (f"its {answer}-token gold answer" if answer > steps else f"the {steps} steps the properties read")
        raise InvalidInput(
            f"{source}: prompt {longest.prompt.id!r} is {len(longest.ids)} tokens, and with {read} it needs {total} "
            f"positions; this model's learned position embeddings hold {context}: shorten the prompt or bound the "
            f"properties' steps")
    if ATTENTION not in needs:
        return
    windows = sliding_windows(model)
    pooled = [layer for layer in options.attn_layers if layer in windows]
    if not pooled:
        return
    window = min(windows[layer] for layer in pooled)
    if total > window:
        full = [layer for layer in range(_layer_count(model)) if layer not in windows]
        hint = (f"pool only full-attention layers (option attn_layers = {', '.join(map(str, full))}) or "
                if full else "")
        shorter = (f"use prompts of at most {window - steps} tokens" if window > steps else
                   f"read fewer than {window} steps (the window is shorter than the {steps} the properties read)")
        raise InvalidInput(
            f"option attn_layers: {'layers' if len(pooled) > 1 else 'layer'} {', '.join(map(str, pooled))} of this "
            f"model {'attend' if len(pooled) > 1 else 'attends'} within a sliding window of {window} tokens, and prompt "
            f"{longest.prompt.id!r} of {source} with its {steps} steps is {total}: attn_cos cannot see the prompt's "
            f"first tokens there; {hint}drop the attention property, or {shorter}")


def positions(encoded: EncodedPrompt, steps: int, gold: bool = False) -> int:
    """Positions the model reads for a prompt: its tokens and all but the last of the `steps`
    generated after it (the last is predicted, never fed), or of its gold answer's tokens."""
    after = max(steps, len(encoded.answer_ids or ()) if gold else 0)
    return len(encoded.ids) + max(after - 1, 0)


def context_note(model, encoded: list[EncodedPrompt], steps: int, source: str) -> str | None:
    """A note when a prompt and its steps run past the context the model declares but has no
    table to run out of (rotary and other relative positions): it runs, on positions it was
    not trained on, so what the properties measure there says little about real use."""
    if not encoded or learned_positions(model):
        return None
    config = model.config.get_text_config()
    declared = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    longest = max(encoded, key=lambda e: len(e.ids))
    total = positions(longest, steps)
    if not declared or total <= declared:
        return None
    beyond = sum(1 for e in encoded if positions(e, steps) > declared)
    return (f"{source}: {beyond} prompt{'s' if beyond > 1 else ''} with {steps} steps run past this model's declared "
            f"context of {declared} positions (prompt {longest.prompt.id!r}: {total}); the model runs there, "
            f"on positions it was not trained on")


def learned_positions(model) -> int | None:
    """How many positions a model with learned absolute position embeddings (GPT-2, OPT) can
    read; None for rotary and other relative schemes, which have no table to run out of."""
    config = model.config.get_text_config()
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not limit:
        return None
    tokens = model.get_input_embeddings()
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Embedding) and module is not tokens
                and re.search(r"(^|[._])(wpe|embed_positions|position_embeddings)$", name)):
            return int(limit)
    return None


def sliding_windows(model) -> dict[int, int]:
    """Layer index -> its sliding attention window, for the layers that have one."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if not window:
        return {}
    types = getattr(config, "layer_types", None)
    if types is not None:
        return {i: int(window) for i, kind in enumerate(types) if kind == "sliding_attention"}
    if getattr(config, "use_sliding_window", True) is False:
        return {}
    return {i: int(window) for i in range(_layer_count(model))}


def _layer_count(model) -> int:
    return len(find_blocks(model)[1])
