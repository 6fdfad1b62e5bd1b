"""Attention capture for the teacher-forced pass and for recorded generation: a transformers
attention implementation that runs SDPA as usual and also pools the eager attention weights of
the layers attn_cos reads."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..signals import SignalOptions

_CAPTURE_NAME = "toggle_capture"


class _AttentionCapture:
    """Mean attention weights (over heads and the chosen layers) of the last n_max queries.

    Installed as a transformers attention implementation: every layer runs SDPA as usual;
    the chosen layers also run the model's own eager attention on their last n_max queries
    to get those rows' weights.
    """

    def __init__(self, options: SignalOptions):
        self.layers = set(options.attn_layers)
        self.pooled: torch.Tensor | None = None
        self.n_max = 0

    def start(self, n_max: int) -> None:
        self.n_max, self.pooled = n_max, None

    def add(self, weights: torch.Tensor) -> None:
        w = weights[:, :, -self.n_max:, :].float().mean(dim=1) / len(self.layers)
        self.pooled = w if self.pooled is None else self.pooled + w


# The capture of the pass in progress, or None. It is a module global because transformers
# calls a registered attention function with only the layer and its tensors: there is no
# argument or model attribute through which `_capture_attention` could be handed its capture.
# Only `_capturing` sets it (and clears it when the pass ends); only `_capture_attention`
# reads it. One pass at a time per process: two concurrent captures would share it.
_ACTIVE: _AttentionCapture | None = None


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    capture = _ACTIVE
    captured = capture is not None and getattr(module, "layer_idx", None) in capture.layers
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    if kwargs.get("softcap") is not None:
        # SDPA cannot soft-cap attention logits (Gemma 2): the model's own eager attention for
        # every query, its weights kept where they are captured
        output, weights = eager(module, query, key, value, attention_mask, **kwargs)
        if captured:
            capture.add(weights)
        return output, None
    output = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if captured:
        # The weights of the last n_max queries only, through the model's own eager attention
        # (its scaling and masking): n_max x length instead of length x length.
        n = capture.n_max
        mask = None if attention_mask is None else attention_mask[:, :, -n:, :]
        _, weights = eager(module, query[:, :, -n:, :], key, value, mask, **kwargs)
        capture.add(weights)
    return output


def _register_capture() -> None:
    AttentionInterface.register(_CAPTURE_NAME, _capture_attention)
    AttentionMaskInterface.register(_CAPTURE_NAME, eager_mask)  # eager needs the additive float mask


@contextmanager
def _capturing(model, capture: _AttentionCapture | None):
    global _ACTIVE
    if capture is None:
        yield
        return
    _register_capture()
    previous = model.config._attn_implementation
    model.set_attn_implementation(_CAPTURE_NAME)
    _ACTIVE = capture
    try:
        yield
    finally:
        _ACTIVE = None
        model.set_attn_implementation(previous)
