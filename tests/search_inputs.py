"""Inputs for tests that run a real `toggle search` on a tiny model in a subprocess: a few
prompts, a one-property spec and a small profile, written into a directory."""
from __future__ import annotations

from pathlib import Path

PROMPTS = ("The capital of France is", "Water boils at", "Once upon a time")


def write_search_inputs(directory: Path, *, prompts: int = 3, eps: float = 0.05, profile_prompts: int = 2) -> None:
    """p.yaml (the first `prompts` prompts), s.stl (coherence within `eps`) and profile.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "p.yaml").write_text("".join(f'- {{prompt: "{p}"}}\n' for p in PROMPTS[:prompts]))
    (directory / "s.stl").write_text(f"const eps = {eps}\ncoherence = always[0:3] (jsd <= eps)\n")
    (directory / "profile.yaml").write_text(
        "granularity: block_part\n"
        "knobs: {bits: [16, 8, 4, 3], sparsity: [0.0, 0.3]}\n"
        "embedding: {bits: [16, 8]}\n"
        "methods: {quantizer: rtn, group_size: 32, symmetric: auto, pruner: magnitude}\n"
        f"sensitivity: {{prompts: {profile_prompts}, levels: {{bits: [3]}}}}\n")
