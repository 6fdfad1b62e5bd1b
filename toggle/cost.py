"""Stage 7, cost: exact bytes of the stored artifact, FLOPs and bit-operations per token.

    cost_model = CostModel(lm.model, context_length=1024)
    cost = cost_model.of(plan)      # microseconds: the search calls it thousands of times
    cost.bytes, cost.flops_per_token, cost.size_reduction, cost.flops_reduction

Bytes are those `toggle apply` writes for the format (`fmt='toggle'` or `'gguf'`): the
tensor data, not the container's header, config or tokenizer (docs/cost.md has the rules).
The reference is the 16-bit dense model: every unique parameter at 2 bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from .compress.apply import methods_key, setting_problem
from .compress.lowrank import rank_for
from .compress.packing import matrix_bytes
from .compress.prune import kept_per_row
from .errors import InvalidInput
from .modules import ModuleRef, compressible_modules
from .plan import UNTOUCHED, Methods, ModuleSetting, Plan

FORMATS = ("toggle", "gguf")
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
    def __init__(self, model: torch.nn.Module, refs: list[ModuleRef] | None = None, *,
                 context_length: int = 1024, fmt: str = "toggle", header_bytes: int = 0):
        """`header_bytes`: bytes of the weights file that do not depend on the plan (for GGUF,
        `gguf_io.gguf_header_bytes`: metadata and tokenizer, ~1.8 MB on SmolLM2); counted in
        every plan's size so the accounted size is the file size."""
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        self.refs = list(refs) if refs is not None else compressible_modules(model)
        self.context_length = int(context_length)
        self.fmt = fmt
        self.header_bytes = int(header_bytes)
        params = list(model.parameters())  # tied parameters are yielded once
        self.parameter_count = sum(p.numel() for p in params)
        self.base16_bytes = 2 * self.parameter_count
        self.loaded_bytes = sum(p.numel() * p.element_size() for p in params)
        self.compressible_params = sum(r.numel for r in self.refs)
        self.other_bytes = _other_bytes(model, self.refs, fmt)
        self.attention_flops_per_token = _attention_flops(model.config, self.context_length)
        self._memo: dict[tuple, ModuleCost] = {}
        self.base_flops_per_token = self.attention_flops_per_token + sum(
            self.module_cost(r, UNTOUCHED, Methods()).flops for r in self.refs)

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
            sizes = [self.module_cost(ref, s, methods).bytes for s in choices if self._usable(ref, s, methods)]
            total += min(sizes) if sizes else self.module_cost(ref, UNTOUCHED, methods).bytes
        return total

    def module_cost(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> ModuleCost:
        key = (ref.name, setting, methods_key(setting, methods))
        cost = self._memo.get(key)
        if cost is None:
            cost = self._memo[key] = self._module_cost(ref, setting, methods)
        return cost

    # --- rules ------------------------------------------------------------------------------
    def _usable(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> bool:
        if setting_problem(ref, setting, methods):
            return False
        return self.fmt != "gguf" or gguf_problem(ref, setting, methods) is None

    def _module_cost(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> ModuleCost:
        problem = setting_problem(ref, setting, methods)
        if problem:
            raise InvalidInput(f"modules.{ref.name}: {problem}")
        shapes = _stored_shapes(ref, setting)
        macs = 0
        if ref.is_linear:
            macs = sum(out_f * kept_per_row(in_f, setting.sparsity, methods.prune_pattern) for out_f, in_f in shapes)
        flops = 2 * macs
        bitops = macs * setting.bits * ACTIVATION_BITS
        if self.fmt == "gguf":
            problem = gguf_problem(ref, setting, methods)
            if problem:
                raise InvalidInput(f"modules.{ref.name}: cannot be stored in GGUF: {problem}")
            qtype = gguf_type_for(setting.bits, methods.quantizer, methods.group_size, methods.symmetric_for(setting.bits))
            return ModuleCost(gguf_tensor_bytes(qtype, ref.numel), flops, bitops, (qtype,))
        size, encodings = 0, []
        awq = methods.quantizer == "awq" and ref.is_linear  # an untied embedding falls back to RTN
        for out_f, in_f in shapes:
            keep = kept_per_row(in_f, setting.sparsity, methods.prune_pattern)
            b, enc = matrix_bytes(out_f, in_f, keep, setting.bits, group_size=methods.group_size,
                                  symmetric=methods.symmetric_for(setting.bits), awq=awq)
            size += b
            encodings.append(enc)
        return ModuleCost(size, flops, bitops, tuple(encodings))


def _stored_shapes(ref: ModuleRef, setting: ModuleSetting) -> list[tuple[int, int]]:
    if setting.rank_ratio < 1:
        k = rank_for(setting.rank_ratio, ref.out_features, ref.in_features)
        return [(ref.out_features, k), (k, ref.in_features)]
    return [(ref.out_features, ref.in_features)]


# --- GGUF ----------------------------------------------------------------------------------

GGUF_BLOCK = 32
GGUF_ALIGNMENT = 32  # GGUF pads every tensor's data to this many bytes
GGUF_BLOCK_BYTES = {"Q8_0": 34, "Q5_1": 24, "Q5_0": 22, "Q4_1": 20, "Q4_0": 18}


def gguf_type_for(bits: int, quantizer: str = "rtn", group_size: int = 32, symmetric: bool = True) -> str | None:
    """The GGUF type that stores exactly what toggle computes for these choices, or None.

    16 bits -> F16. With group size 32 and the rtn or gptq quantiser: 8 bits symmetric -> Q8_0,
    5 bits -> Q5_0 (symmetric) / Q5_1 (asymmetric), 4 bits -> Q4_0 / Q4_1. Nothing else maps:
    GGUF has no 2, 3, 6 or 7-bit type with these block rules, no asymmetric 8-bit type, and no
    place for AWQ's per-input-channel scales.
    """
    if bits == 16:
        return "F16"
    if group_size != GGUF_BLOCK or quantizer not in ("rtn", "gptq"):
        return None
    return {(8, True): "Q8_0", (5, True): "Q5_0", (5, False): "Q5_1",
            (4, True): "Q4_0", (4, False): "Q4_1"}.get((bits, symmetric))


def gguf_problem(ref: ModuleRef, setting: ModuleSetting, methods: Methods) -> str | None:
    """Why this module's setting cannot be written to GGUF exactly, or None."""
    if setting.rank_ratio < 1:
        return (f"rank_ratio {setting.rank_ratio}: GGUF has no factorised matrices; multiplied back the "
                f"matrix is full size again (no saving) and re-rounded, so it is refused; use --format toggle")
    qtype = gguf_type_for(setting.bits, methods.quantizer, methods.group_size, methods.symmetric_for(setting.bits))
    if qtype is None:
        return (f"{setting.bits} bits with quantizer {methods.quantizer}, group_size {methods.group_size}, "
                f"symmetric {str(methods.symmetric_for(setting.bits)).lower()} has no GGUF type; GGUF holds 16 bits (F16) and, with "
                f"group_size 32 and quantizer rtn or gptq, 8 bits symmetric (Q8_0), 5 or 4 bits (Q5_0/Q4_0 "
                f"symmetric, Q5_1/Q4_1 asymmetric)")
    if setting.sparsity > 0 and qtype in ("Q4_1", "Q5_1"):
        return (f"sparsity {setting.sparsity} with {qtype}: its per-block minimum cannot represent the pruned "
                f"zeros exactly; use symmetric quantisation (Q4_0/Q5_0) for pruned modules")
    if qtype != "F16" and ref.in_features % GGUF_BLOCK:
        return f"rows of {ref.in_features} values do not split into GGUF blocks of {GGUF_BLOCK}"
    return None


def gguf_tensor_bytes(qtype: str, numel: int) -> int:
    """Bytes of one tensor in a GGUF file, alignment padding included."""
    if qtype == "F16":
        size = 2 * numel
    elif qtype == "F32":
        size = 4 * numel
    else:
        size = numel // GGUF_BLOCK * GGUF_BLOCK_BYTES[qtype]
    return -(-size // GGUF_ALIGNMENT) * GGUF_ALIGNMENT


# --- the rest of the model -----------------------------------------------------------------

def stored_other_tensors(model: torch.nn.Module, refs: list[ModuleRef]) -> dict[str, torch.Tensor]:
    """Every state tensor that is not a compressible weight (norms, biases, position
    embeddings), each stored once: what the artifact keeps as it is."""
    compressible = {f"{r.name}.weight" for r in refs}
    compressible_ptrs = {model.get_submodule(r.name).weight.data_ptr() for r in refs}
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if name in compressible or ptr in compressible_ptrs or ptr in seen:
            continue
        seen.add(ptr)
        out[name] = tensor
    return out


def _other_bytes(model: torch.nn.Module, refs: list[ModuleRef], fmt: str) -> int:
    others = stored_other_tensors(model, refs)
    if fmt == "toggle":
        return sum(t.numel() * t.element_size() for t in others.values())
    from .gguf_io import skipped_in_gguf

    return sum(gguf_tensor_bytes("F32", t.numel()) for n, t in others.items() if not skipped_in_gguf(n))


def _attention_flops(config, context_length: int) -> int:
    """QK^T and AV for one new token attending to `context_length` positions, every layer."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers * 4 * context_length * heads * head_dim


def bits_per_weight(cost: Cost, cost_model: CostModel) -> float:
    """Average stored bits per compressible weight (scales, masks and factors included)."""
    return 8 * cost.weight_bytes / max(cost_model.compressible_params, 1)


def format_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"

