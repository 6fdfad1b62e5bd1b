"""Block replay for a teacher-forced pass: a block whose weights, and those of everything before
it, are what they were when the same batch last went through it gives the same output, so that
output is kept and returned instead of being computed again.

Sensitivity profiling scores one plan per group on the same few prompts, each plan the
untouched model but for one group: the blocks before that group compute what the untouched
model's blocks computed, and only the blocks from the group on need running. A block's output is
kept under the batch's tokens with a signature of the weights up to that block (the embedding's
and every block's up to it, as the applier reports them), and returned only to a pass whose
signature for that block is the same: the same inputs through the same weights in the same batch
shape give exactly that output. One output is kept per block and batch, the first one computed
(profiling's untouched pass: the one every later probe can reuse), so the memory is that of one
pass over the profiling prompts.

Only blocks before the first one whose attention the signals pool are replayed (the attention
capture runs inside the attention of the blocks it reads); a hook on a replayed block (the
hidden state at one block) still sees its output.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch

# Outputs kept at most, in bytes: one pass over the profiling subset (3 prompts, the 21 blocks
# of SmolLM2-135M before the pooled attention) fits several times over; past it nothing is kept.
REPLAY_BYTES = 256 * 2**20


class BlockReplay:
    """Kept block outputs, and the signatures of the weights the model holds now."""

    def __init__(self, limit_bytes: int = REPLAY_BYTES):
        self.limit_bytes = int(limit_bytes)
        self.kept: dict[tuple, tuple] = {}  # (batch key, block) -> (signature, what the block returned)
        self.bytes = 0
        self.signatures: list | None = None  # per block: the weights up to and including it
        self.stop = 0  # blocks at and after this one are always run (attention capture)
        self.counters = {"replayed": 0, "run": 0}

    def arm(self, signatures: list | None, stop: int) -> None:
        """The weights now in the model, one signature per block (None: not known, replay nothing),
        and the first block that must run whatever is kept."""
        self.signatures, self.stop = signatures, stop

    @contextmanager
    def around(self, blocks, *batch: torch.Tensor):
        """One forward call over `batch` (the tensors that make its inputs: ids, mask, ...):
        blocks with a kept output return it, the others run and, before `stop`, are kept."""
        if self.signatures is None:
            yield
            return
        key = _batch_key(batch)
        upto = min(self.stop, len(blocks), len(self.signatures))
        replayed = 0
        while replayed < upto and self.kept.get((key, replayed), (None,))[0] == self.signatures[replayed]:
            replayed += 1
        saved, hooks = {}, []
        try:
            for j in range(replayed):
                saved[j] = blocks[j].__dict__.get("forward")
                blocks[j].forward = _returning(self.kept[(key, j)][1])
            for j in range(replayed, upto):
                if (key, j) not in self.kept:
                    hooks.append(blocks[j].register_forward_hook(self._keeper((key, j), self.signatures[j])))
            self.counters["replayed"] += replayed
            self.counters["run"] += len(blocks) - replayed
            yield
        finally:
            for j, forward in saved.items():
                if forward is None:
                    del blocks[j].forward
                else:
                    blocks[j].forward = forward
            for hook in hooks:
                hook.remove()

    def _keeper(self, where: tuple, signature):
        def keep(_module, _inputs, output):
            size = sum(t.numel() * t.element_size() for t in _tensors(output))
            if self.bytes + size <= self.limit_bytes:
                self.kept[where] = (signature, _cloned(output))
                self.bytes += size
        return keep


def _batch_key(batch) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in batch:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _returning(output):
    """A stand-in forward that returns a copy of a kept output (the next block may write into
    its input)."""
    def forward(*_args, **_kwargs):
        return _cloned(output)
    return forward


def _tensors(output):
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _tensors(o)]
    return []


def _cloned(output):
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    if isinstance(output, tuple):
        return tuple(_cloned(o) for o in output)
    if isinstance(output, list):
        return [_cloned(o) for o in output]
    return output
