"""Real held-out text for perplexity and KL: the Python documentation topics that ship with every
Python (`pydoc_data.topics.topics`, ~1 MB of English and code), never the prompts the search used.

The split is deterministic and by topic, so no passage is in both parts: topics sorted by name,
every 4th one (index % 4 == 3) is evaluation text, the rest calibration text. Each part is the
topics joined by blank lines, tokenised once and cut into windows of `length` tokens.

    calib, evaluation = text_windows(tokenizer, length=128, evaluation=24, calibration=32)

It lives in benchmarks/ because the search calibrates on its own trace's token paths; the
benchmark uses the calibration part for the outlier-aware (AWQ) baseline's statistics.
"""
from __future__ import annotations

import torch

EVERY = 4  # one topic in EVERY goes to the evaluation part


def topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics as table

    return sorted(table.items())


def split_text() -> tuple[str, str]:
    """(calibration text, evaluation text)."""
    calib, evaluation = [], []
    for i, (_, text) in enumerate(topics()):
        (evaluation if i % EVERY == EVERY - 1 else calib).append(text.strip())
    return "\n\n".join(calib), "\n\n".join(evaluation)


def windows(tokenizer, text: str, length: int, count: int) -> list[torch.Tensor]:
    """The first `count` non-overlapping windows of `length` token ids (1-D tensors)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(count, len(ids) // length)
    if n < count:
        raise ValueError(f"the text has {len(ids)} tokens: only {n} windows of {length}, {count} requested")
    return [torch.tensor(ids[i * length:(i + 1) * length]) for i in range(n)]


def text_windows(tokenizer, *, length: int = 128, evaluation: int = 24, calibration: int = 32):
    """(calibration windows, evaluation windows) of the pydoc topics text."""
    calib_text, eval_text = split_text()
    return windows(tokenizer, calib_text, length, calibration), windows(tokenizer, eval_text, length, evaluation)
