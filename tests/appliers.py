"""Stand-in plan appliers for tests and benchmarks (the real one is toggle.compress.PlanApplier).

Both follow the applier protocol the Evaluator uses: `apply(plan)` puts the plan's weights
into the model in place, `restore()` puts the base weights back.
"""
from __future__ import annotations

import torch

from toggle.modules import compressible_modules, get_module, set_weight_matrix, weight_matrix


def rtn(w: torch.Tensor, bits: int, group_size: int = 128) -> torch.Tensor:
    """Asymmetric per-group round-to-nearest along the input dimension, de-quantised."""
    out_f, in_f = w.shape
    g = group_size if group_size > 0 and in_f % group_size == 0 else in_f
    groups = w.float().reshape(out_f, in_f // g, g)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    levels = 2 ** bits - 1
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(groups / scale) + zero, 0, levels)
    return ((q - zero) * scale).reshape(out_f, in_f).to(w.dtype)


class RTNApplier:
    """Quantises the modules a Plan gives fewer than 16 bits to (Plan.methods.group_size)."""

    def __init__(self, model):
        self.model = model
        self.refs = {r.name: r for r in compressible_modules(model)}
        self.base = {n: weight_matrix(get_module(model, n), r).detach().clone() for n, r in self.refs.items()}
        self.cache: dict[tuple[str, int, int], torch.Tensor] = {}
        self.current: dict[str, int] = {}

    def apply(self, plan) -> None:
        group = plan.methods.group_size
        for name, ref in self.refs.items():
            bits = plan.setting(name).bits
            if self.current.get(name, 16) == bits:
                continue
            w = self.base[name] if bits >= 16 else self._quantised(name, bits, group)
            set_weight_matrix(get_module(self.model, name), ref, w)
            self.current[name] = bits

    def restore(self) -> None:
        for name, ref in self.refs.items():
            if self.current.get(name, 16) != 16:
                set_weight_matrix(get_module(self.model, name), ref, self.base[name])
        self.current = {}

    def _quantised(self, name: str, bits: int, group: int) -> torch.Tensor:
        key = (name, bits, group)
        if key not in self.cache:
            self.cache[key] = rtn(self.base[name], bits, group)
        return self.cache[key]


class NoiseApplier:
    """`apply(scale)`: adds Gaussian noise of `scale` x each matrix's std to every 2-D weight."""

    def __init__(self, model, seed: int = 0):
        self.model, self.seed = model, seed
        self.base = {n: p.detach().clone() for n, p in model.named_parameters()}

    def apply(self, scale: float) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if p.dim() == 2:
                    noise = torch.randn(p.shape, generator=gen) * self.base[n].std() * scale
                    p.copy_(self.base[n] + noise.to(p.device))

    def restore(self) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.base[n])


class BreakingApplier(NoiseApplier):
    """`apply(kind)`: 'nan' puts a NaN into a weight; 'zero' zeroes every block's output projections
    and the embedding (zero-norm hidden states)."""

    def apply(self, kind: str) -> None:
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            if kind == "nan":
                name = next(n for n, p in params.items() if p.dim() == 2 and "embed" not in n and "wte" not in n)
                params[name].view(-1)[0] = float("nan")
            elif kind == "zero":
                for p in params.values():
                    p.zero_()
            else:
                raise ValueError(kind)
