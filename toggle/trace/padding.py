"""Left padding of token rows into a batch, shared by generation and scoring: every row ends
at the last position, so a sequence's steps are the last positions of its row."""
from __future__ import annotations

import torch


def _left_pad(rows, pad: int, device):
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    pads = []
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, length - len(r):] = 1
        pads.append(length - len(r))
    return ids.to(device), mask.to(device), pads
