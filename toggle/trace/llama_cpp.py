"""The teacher-forced pass of score.py, run by llama.cpp on a .gguf file instead of torch: what
the compressed model computes in the engine a user ships it in (llama.cpp quantises activations
on some paths and has its own kernels, so its logits differ slightly from a de-quantised torch
model's).

    scorer = LlamaCppScorer("model.gguf", threads=2)
    out = scorer(paths, needs, options)          # a StepOutputs with logprobs / gold_logprob

llama.cpp is reached through toggle-llama-logits (tools/llama_logits.c, built beside llama.cpp
by tools/build_llama_cpp.sh), one sequence per request over a pipe, each from an empty cache.
Only logit signals can come from it: hidden states and attention are torch-only.
"""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInput, ToggleError
from ..llama_cpp import LlamaCppNotFound, tool
from ..signals import ATTENTION, GOLD, HIDDEN, LOGPROBS
from .score import StepOutputs, TokenPath

HELPER = "toggle-llama-logits"


class LlamaCppError(ToggleError):
    """llama.cpp could not load or run a file."""


def helper() -> Path:
    try:
        return tool(HELPER)
    except LlamaCppNotFound as e:
        raise LlamaCppNotFound(f"{e} (toggle-llama-logits is built with it; rerun tools/build_llama_cpp.sh)") from None


def check_needs(needs, what: str = "--engine llama.cpp") -> None:
    """Only next-token distributions come out of llama.cpp."""
    unsupported = set(needs) & {HIDDEN, ATTENTION}
    if unsupported:
        raise InvalidInput(f"{what} reads llama.cpp's logits only; the specs need {', '.join(sorted(unsupported))} "
                           f"(hidden_cos / attn_cos), which llama.cpp does not expose: leave those specs out or "
                           f"audit with --engine torch")


class LlamaCppScorer:
    """A callable with score_paths' signature (minus the model) that runs a .gguf file in llama.cpp."""

    def __init__(self, gguf: str | Path, threads: int | None = None):
        self.gguf = Path(gguf)
        if self.gguf.suffix.lower() != ".gguf" or not self.gguf.is_file():
            raise InvalidInput(f"{gguf}: --engine llama.cpp runs a .gguf file; expected one (toggle apply --format gguf)")
        self.threads = threads or max(1, min(len(os.sched_getaffinity(0)), 8))
        self.program = helper()

    def __call__(self, paths: list[TokenPath], needs, options=None, *, batch_tokens: int | None = None) -> StepOutputs:
        needs = frozenset(needs)
        check_needs(needs)
        steps = tuple(len(p.tokens) for p in paths)
        answer_steps = tuple(len(p.answer) if (p.answer and GOLD in needs) else 0 for p in paths)
        requests = []  # (ids, n_out)
        if LOGPROBS in needs:
            requests += [(list(p.prompt_ids) + list(p.tokens[:-1]), len(p.tokens)) for p in paths if p.tokens]
        if GOLD in needs:
            requests += [(list(p.prompt_ids) + list(p.answer[:-1]), len(p.answer)) for p in paths if p.answer]
        rows = self._run(requests)
        out = StepOutputs(steps, answer_steps)
        at = 0
        if LOGPROBS in needs:
            parts = []
            for p in paths:
                if p.tokens:
                    parts.append(rows[at])
                    at += 1
            vocab = rows[0].shape[1] if rows else 0
            out.logprobs = torch.cat(parts) if parts else torch.zeros(0, vocab)
        if GOLD in needs:
            gold = []
            for p in paths:
                if p.answer:
                    lp = rows[at]
                    at += 1
                    gold.append(lp.gather(-1, torch.tensor(p.answer).unsqueeze(-1)).squeeze(-1))
            out.gold_logprob = torch.cat(gold) if gold else torch.zeros(0)
        return out

    def _run(self, requests: list[tuple[list[int], int]]) -> list[torch.Tensor]:
        """Log-softmax rows (n_out, vocab) for every request, in order."""
        if not requests:
            return []
        n_ctx = max(len(ids) for ids, _ in requests)
        n_ctx = max(64, -(-n_ctx // 64) * 64)
        proc = subprocess.Popen([str(self.program), str(self.gguf), str(n_ctx), str(self.threads)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            head = proc.stdout.read(4)
            if len(head) < 4:
                raise LlamaCppError(f"{self.gguf}: llama.cpp could not load the file: {self._stderr(proc)}")
            (vocab,) = struct.unpack("<i", head)
            out = []
            for ids, n_out in requests:
                proc.stdin.write(struct.pack(f"<ii{len(ids)}i", len(ids), n_out, *ids))
                proc.stdin.flush()
                status = proc.stdout.read(4)
                if len(status) < 4:
                    raise LlamaCppError(f"{self.gguf}: llama.cpp stopped: {self._stderr(proc)}")
                (code,) = struct.unpack("<i", status)
                if code == 3:
                    raise InvalidInput(f"{self.gguf}: a token id of the prompts is outside the file's vocabulary "
                                       f"of {vocab}; audit a GGUF made from the base model")
                if code:
                    raise LlamaCppError(f"{self.gguf}: llama.cpp's decode failed (status {code}) on a sequence of "
                                        f"{len(ids)} tokens")
                data = proc.stdout.read(4 * vocab * n_out)
                if len(data) < 4 * vocab * n_out:
                    raise LlamaCppError(f"{self.gguf}: llama.cpp stopped: {self._stderr(proc)}")
                logits = torch.from_numpy(np.frombuffer(data, dtype="<f4").reshape(n_out, vocab).copy())
                out.append(torch.log_softmax(logits, dim=-1))
            proc.stdin.write(struct.pack("<ii", 0, 0))
            proc.stdin.close()
            proc.wait(timeout=60)
            return out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    @staticmethod
    def _stderr(proc) -> str:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.wait(timeout=30)
        text = proc.stderr.read().decode(errors="replace").strip()
        return text.splitlines()[-1] if text else f"exit {proc.returncode}, no message"
