"""GGUF export: a plan whose every choice has an exact GGUF type becomes one .gguf file
that llama.cpp runs and transformers' GGUF loader reads.

What maps (`gguf_type_for`): 16 bits -> F16; with group_size 32 and the rtn or gptq
quantiser, 8 bits symmetric -> Q8_0, 5 bits -> Q5_0 / Q5_1 (symmetric / asymmetric),
4 bits -> Q4_0 / Q4_1. toggle's quantisation rules are llama.cpp's (see compress/quant.py),
so the codes and float16 scales toggle computed are written as GGUF blocks bit for bit and
the file decodes to exactly the weights the plan was evaluated with. Pruned weights are
stored as zeros (symmetric types and F16 hold 0 exactly; the asymmetric Q4_1/Q5_1 do not,
so pruning with them is refused). Low-rank is refused: GGUF has no factorised matrices.
Tensors that are not compressible weights (norms, biases, GPT-2 position embeddings) are
written as F32, exactly as loaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .compress.apply import PlanApplier, validate_plan
from .compress.quant import QuantizedMatrix
from .cost import GGUF_BLOCK, CostModel, gguf_problem, gguf_type_for, stored_other_tensors
from .errors import InvalidInput
from .gguf_io import gguf_arch, gguf_header_bytes, write_gguf
from .plan import Plan

__all__ = ["check_gguf_plan", "gguf_blocks", "gguf_type_for", "write_gguf_artifact"]


def check_gguf_plan(plan: Plan, refs) -> None:
    """Raise InvalidInput naming the first module whose setting has no exact GGUF form, and why."""
    bad = [(r.name, p) for r in refs if (p := gguf_problem(r, plan.setting(r.name), plan.methods))]
    if bad:
        name, problem = bad[0]
        more = f" ({len(bad) - 1} more modules have the same kind of problem)" if len(bad) > 1 else ""
        raise InvalidInput(f"plan cannot be written as GGUF: modules.{name}: {problem}{more}")


def gguf_blocks(q: QuantizedMatrix, qtype: str) -> np.ndarray:
    """Our codes and float16 parameters as GGUF blocks of 32: (rows, bytes per row) uint8."""
    out_f, in_f = q.codes.shape
    nb = in_f // GGUF_BLOCK
    codes = q.codes.cpu().numpy().reshape(out_f, nb, GGUF_BLOCK)
    d = q.scales.cpu().numpy().astype(np.float16).reshape(out_f, nb, 1).view(np.uint8)
    parts = [d]
    if qtype in ("Q4_1", "Q5_1"):
        parts.append(q.mins.cpu().numpy().astype(np.float16).reshape(out_f, nb, 1).view(np.uint8))
    if qtype == "Q8_0":
        parts.append((codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if qtype in ("Q5_0", "Q5_1"):
            parts.append(np.packbits((codes >> 4) & 1, axis=-1, bitorder="little"))
        low = codes & 0x0F
        parts.append(low[..., :16] | (low[..., 16:] << 4))
    return np.concatenate(parts, axis=-1).reshape(out_f, -1)


def write_gguf_artifact(loaded, plan: Plan, out_path: str | Path, applier: PlanApplier | None = None,
                        stats=None):
    """Write `plan` applied to `loaded` as a GGUF file at `out_path` (temporary name, then rename)."""
    from .export import ArtifactInfo

    out_path = Path(out_path)
    if out_path.is_dir():
        raise InvalidInput(f"--out {out_path}: is a directory; give the .gguf file to write")
    model = loaded.model
    gguf_arch(model.config)  # unsupported architectures fail before any work
    applier = applier or PlanApplier(model, stats=stats)
    refs = applier.refs
    validate_plan(plan, refs, applier.stats)
    check_gguf_plan(plan, refs)

    prepared: dict[str, tuple[str, np.ndarray]] = {}
    encodings: dict[str, list[str]] = {}
    for ref in refs:
        setting = plan.setting(ref.name)
        qtype = gguf_type_for(setting.bits, plan.methods.quantizer, plan.methods.group_size,
                              plan.methods.symmetric_for(setting.bits))
        matrix = applier.stored(ref, setting, plan.methods).matrices[0]
        if qtype == "F16":
            data = matrix.dequantize().half().cpu().numpy()  # float16 values, pruned ones 0
        else:
            data = gguf_blocks(matrix.quant, qtype)
        prepared[f"{ref.name}.weight"] = (qtype, data)
        encodings[ref.name] = [qtype]
    # Everything else stays exactly as loaded (F32), so the file decodes to the simulated model.
    qtypes = {name: "F32" for name in stored_other_tensors(model, refs)}
    with atomic_path(out_path) as tmp:
        write_gguf(tmp, model, loaded.tokenizer, qtypes=qtypes, prepared=prepared, name=gguf_model_name(loaded))
    cost = gguf_cost_model(loaded, refs).of(plan)
    size = out_path.stat().st_size
    return ArtifactInfo(path=out_path, fmt="gguf", cost=cost, tensor_bytes_on_disk=size - _data_offset(out_path),
                        weights_file_bytes=size, total_bytes=size, encodings=encodings)


def gguf_model_name(loaded) -> str:
    """The general.name written into the file (part of its fixed header)."""
    return Path(loaded.model_id).name or "toggle"


def gguf_cost_model(loaded, refs=None) -> CostModel:
    """A cost model for GGUF files of this model: tensor bytes plus the file's fixed header
    (metadata and tokenizer), so the accounted size is the size of the .gguf file."""
    header = gguf_header_bytes(loaded.model, loaded.tokenizer, name=gguf_model_name(loaded))
    return CostModel(loaded.model, refs, fmt="gguf", header_bytes=header)


def _data_offset(path: Path) -> int:
    from gguf import GGUFReader

    return GGUFReader(str(path)).data_offset
