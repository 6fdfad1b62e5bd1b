"""Stage 7, cost: exact bytes of the stored artifact, FLOPs and bit-operations per token.

    cost_model = CostModel(lm.model, fmt="toggle", context_length=1024)   # or "gguf", or a Format
    cost = cost_model.of(plan)      # microseconds: the search calls it thousands of times
    cost.bytes, cost.flops_per_token, cost.size_reduction, cost.flops_reduction

Bytes are those the format's writer puts in the weights file (`Format.module_bytes`,
`other_bytes` and `header_bytes`; docs/cost.md has the rules). FLOPs do not depend on the
format. The reference is the 16-bit dense model: every unique parameter at 2 bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from .compress.prune import kept_per_row
from .compress.rules import methods_key, setting_problem, stored_shapes
from .errors import InvalidInput
from .formats import Format, get_format
from .modules import ModuleRef, compressible_modules
from .plan import UNTOUCHED, Methods, ModuleSetting, Plan

ACTIVATION_BITS = 16  # activations and the KV cache stay 16-bit floats


@dataclass(frozen=True)
class Cost:
    bytes: int  # the weights file: stored tensor bytes plus the file's header (header_bytes)
    flops_per_token: int  # 2 x multiply-adds of the matmuls for one token at the context length
    bitops_per_token: int  # multiply-adds x weight bits x activation bits
    weight_bytes: int  # the compressible modules' share of `bytes`
    base16_bytes: int  # the 16-bit dense model: every unique parameter at 2 bytes
    base_flops_per_token: int  # the dense model
    fmt: str = "toggle"
    header_bytes: int = 0  # fixed per model: GGUF's metadata and tokenizer; 0 for the toggle format

    @property
    def tensor_bytes(self) -> int:
        return self.bytes - self.header_bytes

    @property
    def size_reduction(self) -> float:
        """Fraction of the 16-bit dense size saved (0.75 = four times smaller)."""
        return 1.0 - self.bytes / self.base16_bytes

    @property
    def flops_reduction(self) -> float:
        """Dense FLOPs divided by these FLOPs (2.0 = half the work)."""
        return self.base_flops_per_token / max(self.flops_per_token, 1)


@dataclass(frozen=True)
class ModuleCost:
    bytes: int
    flops: int
    bitops: int
    encodings: tuple[str, ...]  # per stored matrix: dense/bitmask/indices, or the GGUF type


class CostModel:
    def __init__(self, model: torch.nn.Module, refs: list[ModuleRef] | None = None, *, fmt: str | Format = "toggle",
                 context_length: int = 1024, header_bytes: int = 0):
        """`fmt`: a toggle.formats name or Format. `header_bytes`: bytes of the weights file that do
        not depend on the plan (`Format.header_bytes(loaded)`: GGUF's metadata and tokenizer, ~1.8 MB
        on SmolLM2), counted in every plan's size so the accounted size is the file size; use
        `CostModel.for_model` to have it measured."""
        self.refs = list(refs) if refs is not None else compressible_modules(model)
        self.context_length = int(context_length)
        self.format = fmt = get_format(fmt)
        self.fmt = fmt.name
        self.header_bytes = int(header_bytes)
        params = list(model.parameters())  # tied parameters are yielded once
        self.parameter_count = sum(p.numel() for p in params)
        self.base16_bytes = 2 * self.parameter_count
        self.loaded_bytes = sum(p.numel() * p.element_size() for p in params)
        self.compressible_params = sum(r.numel for r in self.refs)
        self.other_bytes = fmt.other_bytes(model, self.refs)
        self.attention_flops_per_token = _attention_flops(model.config, self.context_length)
        self._memo: dict[tuple, ModuleCost] = {}
        self.base_flops_per_token = self.attention_flops_per_token + sum(
            self.module_cost(r, UNTOUCHED, Methods()).flops for r in self.refs)

    @classmethod
    def for_model(cls, loaded, fmt: str | Format = "toggle", refs: list[ModuleRef] | None = None,
                  **kwargs) -> "CostModel":
        """The cost model of `fmt` files of a toggle.loaded.LoadedModel (its header included)."""
        fmt = get_format(fmt)
        return cls(loaded.model, refs, fmt=fmt, header_bytes=fmt.header_bytes(loaded), **kwargs)

    def budget_bytes(self, budget) -> int:
        """A toggle.units.Budget in bytes of this format: a bpw budget holds the compressible weights
        at that rate and everything the file stores besides them (other tensors, GGUF's header)."""
        return budget.resolve(self.compressible_params, self.other_bytes + self.header_bytes)

    def of(self, plan: Plan) -> Cost:
        """Totals for a plan (modules missing from it are stored as 16-bit floats)."""
        weight_bytes = flops = bitops = 0
        for ref in self.refs:
            c = self.module_cost(ref, plan.setting(ref.name), plan.methods)
            weight_bytes += c.bytes
            flops += c.flops
            bitops += c.bitops
        attn = self.attention_flops_per_token
        return Cost(
            bytes=weight_bytes + self.other_bytes + self.header_bytes,
            flops_per_token=flops + attn,
            bitops_per_token=bitops + attn // 2 * ACTIVATION_BITS * ACTIVATION_BITS,
            weight_bytes=weight_bytes, base16_bytes=self.base16_bytes,
            base_flops_per_token=self.base_flops_per_token, fmt=self.fmt, header_bytes=self.header_bytes,
        )

    def breakdown(self, plan: Plan) -> list[dict]:
        """One row per module: setting, bytes, FLOPs and the encoding of each stored matrix."""
        rows = []
        for ref in self.refs:
            s = plan.setting(ref.name)
            c = self.module_cost(ref, s, plan.methods)
            rows.append({"name": ref.name, "bits": s.bits, "sparsity": s.sparsity, "rank_ratio": s.rank_ratio,
                         "bytes": c.bytes, "flops": c.flops, "bitops": c.bitops, "encodings": list(c.encodings)})
        return rows

    def min_bytes(self, allowed: Iterable[ModuleSetting] | Mapping[str, Iterable[ModuleSetting]],
                  methods: Methods | None = None) -> int:
        """The smallest artifact any plan built from `allowed` settings can have (one list for
        every module, or a list per module name): a budget below it is impossible."""
        methods = methods or Methods()
        total = self.other_bytes + self.header_bytes
        for ref in self.refs:
            choices = allowed.get(ref.name, (UNTOUCHED,)) if isinstance(allowed, Mapping) else allowed
            sizes = [self.module_cost(ref, s, methods).bytes for s in choices if self.usable(ref, s, methods)]
            total += min(sizes) if sizes else self.module_cost(ref, UNTOUCHED, methods).bytes
        return total

    def usable(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> bool:
        """The setting applies to the module and the format can store it."""
        return (not setting_problem(ref, setting, methods)
                and self.format.problem(ref, setting, methods.for_setting(setting)) is None)

    def module_cost(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> ModuleCost:
        key = (ref.name, setting, methods_key(setting, methods))
        cost = self._memo.get(key)
        if cost is None:
            cost = self._memo[key] = self._module_cost(ref, setting, methods)
        return cost

    def _module_cost(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> ModuleCost:
        problem = setting_problem(ref, setting, methods)
        if problem:
            raise InvalidInput(f"modules.{ref.name}: {problem}")
        problem = self.format.problem(ref, setting, methods.for_setting(setting))
        if problem:
            raise InvalidInput(f"modules.{ref.name}: cannot be stored in {self.format.label}: {problem}")
        macs = 0
        if ref.is_linear:
            macs = sum(out_f * kept_per_row(in_f, setting.sparsity, methods.prune_pattern)
                       for out_f, in_f in stored_shapes(ref, setting))
        size, encodings = self.format.module_bytes(ref, setting, methods.for_setting(setting))
        return ModuleCost(size, 2 * macs, macs * setting.bits * ACTIVATION_BITS, encodings)


def _attention_flops(config, context_length: int) -> int:
    """QK^T and AV for one new token attending to `context_length` positions, every layer."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers * 4 * context_length * heads * head_dim
