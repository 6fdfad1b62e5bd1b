"""Quality of a compressed model against its base: KL divergence and perplexity on held-out text
(textdata.py), and the STL pass rate on the held-out prompts (toggle.audit, teacher mode).

    scorer = TextScorer(loaded.model, eval_windows)     # the base model's log-probs, once
    applier.apply(plan); scorer.score()                  # {"kl": ..., "ppl": ...}
    heldout_pass_rate(loaded, specs, suite, applier, plan)
"""
from __future__ import annotations

import math

import torch


class TextScorer:
    """Next-token perplexity of the model in its current state, and KL(base || current) per token,
    over fixed windows; the base log-probs are computed at construction and kept (float16)."""

    def __init__(self, model, windows: list[torch.Tensor], batch: int = 8):
        self.model = model
        self.ids = torch.stack(windows)
        self.batch = batch
        self.tokens = self.ids.shape[0] * (self.ids.shape[1] - 1)
        self.base = None
        self.base_ppl, self.base = self._score(keep=True)

    def _logprobs(self):
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for i in range(0, len(self.ids), self.batch):
                ids = self.ids[i:i + self.batch].to(device)
                logits = self.model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                yield torch.log_softmax(logits, dim=-1).cpu()

    def score(self) -> dict:
        """Perplexity of the model as it is now and its KL divergence from the base, per token."""
        nll = kl = 0.0
        for i, logp in enumerate(self._logprobs()):
            ids = self.ids[i * self.batch:(i + 1) * self.batch]
            nll -= float(logp.gather(-1, ids[:, 1:, None]).sum(dtype=torch.float64))
            base = self.base[i].float()
            kl += float((base.exp() * (base - logp)).sum(dtype=torch.float64))
        return {"ppl": math.exp(nll / self.tokens), "kl": kl / self.tokens}

    def _score(self, keep: bool):
        nll, kept = 0.0, []
        for i, logp in enumerate(self._logprobs()):
            ids = self.ids[i * self.batch:(i + 1) * self.batch]
            nll -= float(logp.gather(-1, ids[:, 1:, None]).sum(dtype=torch.float64))
            kept.append(logp.half())
        return math.exp(nll / self.tokens), kept


def heldout_pass_rate(loaded, specs, suite, applier, plan) -> dict:
    """Teacher-mode audit of `plan` (swapped into the base model) on the held-out prompts."""
    from toggle.audit import audit_models

    result = audit_models(loaded, loaded, specs, suite, split="heldout", mode="teacher", applier=applier, plan=plan,
                          worst=0, artifact="benchmark plan")
    return {"pass_rate": result.pass_rate, "satisfied": result.satisfied,
            "share": {k: p.share for k, p in result.properties.items()},
            "min_robustness": min(result.robustness.values(), default=math.nan)}
