"""GGUF: the llama.cpp file format, as one `Format`.

Everything toggle knows about GGUF lives here: which settings map to which GGML type and the
bytes each type takes, the writer (metadata, tokenizer, tensors in llama.cpp's layout) and the
reader (transformers de-quantises a GGUF file to float once; the result is cached).

What maps (`gguf_type_for`): 16 bits -> F16; with group_size 32 and a quantiser whose result fits
GGUF blocks (registry: rtn, gptq), 8 bits symmetric -> Q8_0, 5 bits -> Q5_0 / Q5_1 (symmetric /
asymmetric), 4 bits -> Q4_0 / Q4_1. toggle's quantisation rules are llama.cpp's (compress/quant.py),
so the codes and float16 scales toggle computed are written as GGUF blocks bit for bit and the
file decodes to exactly the weights the plan was evaluated with. The quantizers ggml and ggml_iq
(compress/ggml.py) are llama.cpp's own, called through ctypes: bits pick a K-quant or i-quant
(Q2_K..Q6_K, Q8_0; IQ2_S, IQ3_S, IQ4_XS), a row length that does not split into 256-value
super-blocks takes llama.cpp's fallback (Q4_0, Q5_0, Q5_1, Q8_0, IQ4_NL; F16 when not even 32
fits), and the blocks llama.cpp returned are written as they are. Pruned weights are stored as
zeros (symmetric types and F16 hold 0 exactly; the asymmetric Q4_1/Q5_1 do not, so pruning with
them is refused). Low-rank is refused: GGUF has no factorised matrices. Tensors that are not
compressible weights (norms, biases, GPT-2 position embeddings) are written as F32, exactly as
loaded. Architectures: Llama (Llama 3.x rope scaling as llama.cpp's rope_freqs tensor), Mistral
(as llama.cpp's llama), Qwen2, Qwen3 and GPT-2, with byte-level BPE tokenizers; the pre-tokenizer
is the source GGUF file's, else the one its tokenizer.json describes (pre_tokenizer_name).
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ..compress import ggml, registry
from ..compress.apply import PlanApplier, validate_plan
from ..compress.quant import QuantizedMatrix
from ..errors import InvalidInput, ModelLoadError
from ..files import atomic_path, cache_dir
from ..hf import load_hf_dir, one_line
from ..loaded import LoadedModel, file_digest
from ..modules import stored_other_tensors
from ..plan import Plan
from .base import ArtifactInfo, Format

# HF model_type -> GGUF architecture name (llama.cpp runs Mistral as "llama", as its converter writes it)
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2"}
ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
# toggle's own key: the model's rope settings (JSON), which transformers cannot rebuild from rope_freqs
ROPE_KEY = "toggle.rope_parameters"
# architectures whose config reads like Llama's (num_hidden_layers, num_key_value_heads, rms_norm_eps, rope)
LLAMA_LIKE = ("llama", "qwen2", "qwen3")
BLOCK = 32
ALIGNMENT = 32  # GGUF pads every tensor's data to this many bytes
BLOCK_BYTES = {"Q8_0": 34, "Q5_1": 24, "Q5_0": 22, "Q4_1": 20, "Q4_0": 18}  # toggle's own block writer
# every type the writer stores: the ones above, and those llama.cpp's quantisers make (compress/ggml.py)
QTYPES = ("F32", "F16", *BLOCK_BYTES, *sorted(({t for menu in ggml.TYPES.values() for t in menu.values()}
                                              | set(ggml.FALLBACK.values())) - set(BLOCK_BYTES)))
# Tokenizer keys copied from a GGUF source, with their types: the pre-tokenizer decides how text
# is split before BPE (llama.cpp's "default" splits SmolLM2's text into other tokens than its
# own "smollm"), the flags whether a BOS token and a space prefix are added.
SOURCE_KEYS = {"tokenizer.ggml.pre": gguf.GGUFValueType.STRING,
               "tokenizer.ggml.add_bos_token": gguf.GGUFValueType.BOOL,
               "tokenizer.ggml.add_eos_token": gguf.GGUFValueType.BOOL,
               "tokenizer.ggml.add_space_prefix": gguf.GGUFValueType.BOOL,
               "tokenizer.ggml.remove_extra_whitespaces": gguf.GGUFValueType.BOOL}
# general.file_type of a file whose quantised tensors are mostly of this type (llama.cpp's LLAMA_FTYPE)
FILE_TYPES = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
              "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
              "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
              "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q2_K": gguf.LlamaFileType.MOSTLY_Q2_K,
              "Q3_K": gguf.LlamaFileType.MOSTLY_Q3_K_M, "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M,
              "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_M, "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
              "IQ2_S": gguf.LlamaFileType.MOSTLY_IQ2_S, "IQ3_S": gguf.LlamaFileType.MOSTLY_IQ3_S,
              "IQ4_XS": gguf.LlamaFileType.MOSTLY_IQ4_XS, "IQ4_NL": gguf.LlamaFileType.MOSTLY_IQ4_NL}
# Bump when the cached layout of de-quantised GGUF models changes so stale caches are rebuilt.
_CACHE_VERSION = "3"  # 3: Llama 3.x rope scaling restored from rope_freqs


class GGUFFormat(Format):
    name = "gguf"
    label = "GGUF"
    description = "one .gguf file that llama.cpp runs (legacy block types, K-quants and i-quants, F16 and F32)"

    def problem(self, ref, setting, methods) -> str | None:
        return gguf_problem(ref, setting, methods)

    def module_bytes(self, ref, setting, methods) -> tuple[int, tuple[str, ...]]:
        qtype = gguf_type_for(setting.bits, methods.quantizer, methods.group_size, methods.symmetric_for(setting.bits),
                              n_per_row=ref.in_features)
        return tensor_bytes(qtype, ref.numel), (qtype,)

    def other_bytes(self, model, refs) -> int:
        return (sum(tensor_bytes("F32", t.numel()) for n, t in stored_other_tensors(model, refs).items()
                    if not skipped_in_gguf(n))
                + sum(tensor_bytes("F32", data.size) for data in _extra_tensors(model).values()))

    def header_bytes(self, loaded) -> int:
        return gguf_header_bytes(loaded.model, loaded.tokenizer, name=model_name(loaded), source=source_metadata(loaded))

    def output_path(self, out) -> Path:
        out = Path(out)
        return out if out.suffix.lower() == ".gguf" else out / "model.gguf"

    def write(self, loaded, plan: Plan, out: Path, applier: PlanApplier, cost) -> ArtifactInfo:
        return write_artifact(loaded, plan, out, applier, cost)

    def read(self, path: Path, *, device="cpu", dtype=torch.float32, attn_implementation=None) -> LoadedModel:
        start = time.perf_counter()
        path = Path(path)
        cached = dequantised_cache(path, str(path))
        model, tokenizer = load_hf_dir(cached, str(path), dtype, attn_implementation, trust_remote_code=False)
        quant = json.loads((cached / "toggle-cache.json").read_text()).get("file_type", "gguf")
        return LoadedModel(model=model, tokenizer=tokenizer, model_id=str(path), source="gguf", fingerprint=cached.name,
                           load_seconds=time.perf_counter() - start, source_quantization=quant,
                           source_bytes=path.stat().st_size, source_path=path)


# --- which settings map to which type, and their bytes -------------------------------------------

def gguf_type_for(bits: int, quantizer: str = "rtn", group_size: int = 32, symmetric: bool = True, *,
                  n_per_row: int | None = None) -> str | None:
    """The GGUF type that stores exactly what toggle computes for these choices, or None.

    16 bits -> F16. The ggml quantizers: their menu's type for `bits`, or llama.cpp's fallback
    when rows of `n_per_row` weights do not split into its blocks (compress/ggml.py; group_size
    and symmetric do not apply). Other quantisers, with group size 32 and codes that fit GGUF
    blocks: 8 bits symmetric -> Q8_0, 5 bits -> Q5_0 (symmetric) / Q5_1 (asymmetric), 4 bits ->
    Q4_0 / Q4_1. Nothing else maps: toggle's own codes have no 2, 3, 6 or 7-bit GGUF type, no
    asymmetric 8-bit type, and no place for per-input-channel scales (AWQ).
    """
    if bits == 16:
        return "F16"
    if registry.method("quantizer", quantizer).ggml:
        return ggml.ggml_type(quantizer, bits, n_per_row)[0] if n_per_row else ggml.TYPES[quantizer].get(bits)
    if group_size != BLOCK or not registry.method("quantizer", quantizer).gguf:
        return None
    return {(8, True): "Q8_0", (5, True): "Q5_0", (5, False): "Q5_1",
            (4, True): "Q4_0", (4, False): "Q4_1"}.get((bits, symmetric))


def gguf_problem(ref, setting, methods) -> str | None:
    """Why this module's setting cannot be written to GGUF exactly, or None."""
    if setting.rank_ratio < 1:
        return (f"rank_ratio {setting.rank_ratio}: GGUF has no factorised matrices; multiplied back the "
                f"matrix is full size again (no saving) and re-rounded, so it is refused; use --format toggle")
    if setting.bits < 16 and methods.scale_bits != 16 and not registry.method("quantizer", methods.quantizer).ggml:
        return (f"scale_bits {methods.scale_bits}: GGUF's legacy blocks store float16 scales; use scale_bits 16, "
                f"or quantizer ggml for llama.cpp's K-quants (which quantise their own sub-block scales)")
    qtype = gguf_type_for(setting.bits, methods.quantizer, methods.group_size, methods.symmetric_for(setting.bits),
                          n_per_row=ref.in_features)
    if registry.method("quantizer", methods.quantizer).ggml and setting.bits < 16:
        if qtype is None:
            return (f"{setting.bits} bits: quantizer {methods.quantizer} has no GGML type for it; its bits are "
                    f"{ggml.menu(methods.quantizer)}, or 16 (F16)")
        if setting.sparsity > 0:
            return (f"sparsity {setting.sparsity} with quantizer {methods.quantizer}: llama.cpp's {qtype} does not "
                    f"keep pruned weights at exactly 0; use quantizer rtn with Q4_0/Q5_0/Q8_0 for pruned modules")
        return None
    if qtype is None:
        # the legacy block types toggle writes itself; llama.cpp's own quantisers (ggml, ggml_iq) have their menus
        fitting = ", ".join(n for n, m in registry.METHODS["quantizer"].items() if m.gguf and not m.ggml)
        menus = "; ".join(f"quantizer {n}: {ggml.menu(n)}" for n, m in registry.METHODS["quantizer"].items() if m.ggml)
        return (f"{setting.bits} bits with quantizer {methods.quantizer}, group_size {methods.group_size}, "
                f"symmetric {str(methods.symmetric_for(setting.bits)).lower()} has no GGUF type; GGUF holds 16 bits (F16) and, with "
                f"group_size 32 and quantizer {fitting.replace(', ', ' or ')}, 8 bits symmetric (Q8_0), 5 or 4 bits (Q5_0/Q4_0 "
                f"symmetric, Q5_1/Q4_1 asymmetric); llama.cpp's own types by bits, {menus}")
    if setting.sparsity > 0 and qtype in ("Q4_1", "Q5_1"):
        return (f"sparsity {setting.sparsity} with {qtype}: its per-block minimum cannot represent the pruned "
                f"zeros exactly; use symmetric quantisation (Q4_0/Q5_0) for pruned modules")
    if qtype != "F16" and ref.in_features % BLOCK:
        return f"rows of {ref.in_features} values do not split into GGUF blocks of {BLOCK}"
    return None


def tensor_bytes(qtype: str, numel: int) -> int:
    """Bytes of one tensor in a GGUF file, alignment padding included."""
    if qtype == "F16":
        size = 2 * numel
    elif qtype == "F32":
        size = 4 * numel
    else:
        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
        size = numel // block * block_bytes
    return -(-size // ALIGNMENT) * ALIGNMENT


def skipped_in_gguf(hf_name: str) -> bool:
    """State tensors GGUF does not store: buffers llama.cpp recomputes."""
    return hf_name.endswith(("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias"))


def gguf_arch(config) -> str:
    """The GGUF architecture a model is written as; a model whose file llama.cpp would run
    differently from transformers (rope scaling or a sliding window the writer does not store)
    is refused."""
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise InvalidInput(
            f"GGUF export supports the architectures {', '.join(ARCHITECTURES)}; "
            f"this model is '{model_type or '?'}' (use --format toggle)"
        )
    if arch in LLAMA_LIKE:
        kind = _rope_type(config)
        if kind != "default" and not (arch == "llama" and kind == "llama3"):
            raise InvalidInput(f"GGUF export: this {model_type} model's rope scaling '{kind}' (config.json "
                               f"rope_scaling / rope_parameters) is not written by toggle's GGUF writer, so llama.cpp "
                               f"would compute other positions; use --format toggle")
        # Qwen2 says use_sliding_window; Mistral has only sliding_window, on whenever it is set
        window = getattr(config, "sliding_window", None)
        uses = getattr(config, "use_sliding_window", None)
        if uses or (uses is None and window and window < getattr(config, "max_position_embeddings", math.inf)):
            raise InvalidInput(f"GGUF export: this {model_type} model uses sliding-window attention "
                               f"(config.json sliding_window {window}), which llama.cpp's {arch} does not, so its file "
                               f"would attend past the window; use --format toggle")
    return arch


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope_theta(config) -> float:
    return float(_rope_parameters(config).get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _rope_type(config) -> str:
    rope = _rope_parameters(config)
    return rope.get("rope_type") or rope.get("type") or "default"


def rope_freq_factors(config) -> np.ndarray | None:
    """Llama 3.1+ rope scaling as llama.cpp stores it: the tensor rope_freqs.weight, by which each
    rotary frequency is divided (default frequencies / scaled ones, as transformers computes both).
    None for a model without it."""
    if _rope_type(config) != "llama3":
        return None
    head_dim = _head_dim(config)
    default = 1.0 / (_rope_theta(config) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (default / scaled).numpy().astype(np.float32)


def _extra_tensors(model) -> dict[str, np.ndarray]:
    """Tensors a GGUF file of `model` holds that the model's state does not (GGUF name -> F32 data)."""
    factors = rope_freq_factors(model.config)
    return {} if factors is None else {ROPE_FREQS: factors}


def _rope_parameters(config) -> dict:
    """transformers 5 keeps rope settings in `rope_parameters`; older configs in `rope_scaling`."""
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        rope = getattr(config, "rope_scaling", None)
    return rope if isinstance(rope, dict) else {}


# --- write ---------------------------------------------------------------------------------------

def write_artifact(loaded, plan: Plan, out_path: Path, applier: PlanApplier, cost) -> ArtifactInfo:
    """Write `plan` applied to `loaded` as a GGUF file at `out_path` (temporary name, then rename)."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise InvalidInput(f"--out {out_path}: is a directory; give the .gguf file to write")
    model = loaded.model
    gguf_arch(model.config)  # unsupported architectures fail before any work
    refs = applier.refs
    validate_plan(plan, refs, applier.stats)
    GGUFFormat().check_plan(plan, refs)

    prepared: dict[str, tuple[str, np.ndarray]] = {}
    encodings: dict[str, list[str]] = {}
    imatrix, fallbacks = [], {}
    for ref in refs:
        setting = plan.setting(ref.name)
        methods = plan.methods.for_setting(setting)
        qtype = gguf_type_for(setting.bits, methods.quantizer, methods.group_size, methods.symmetric_for(setting.bits),
                              n_per_row=ref.in_features)
        matrix = applier.stored(ref, setting, plan.methods).matrices[0]
        q = matrix.quant
        if isinstance(q, ggml.GGMLMatrix):  # llama.cpp's own blocks, as its quantiser returned them
            if q.qtype != qtype:  # the cost model priced another type: never write what was not accounted
                raise InvalidInput(f"GGUF export: {ref.name}: quantised as {q.qtype}, accounted as {qtype}")
            data = q.raw.view(np.float16) if qtype == "F16" else q.raw
            if q.imatrix:
                imatrix.append(ref.name)
            if q.wanted:
                fallbacks[ref.name] = f"{q.wanted} -> {q.qtype}"
        elif qtype == "F16":
            data = matrix.dequantize().half().cpu().numpy()  # float16 values, pruned ones 0
        else:
            data = gguf_blocks(q, qtype)
        prepared[f"{ref.name}.weight"] = (qtype, data)
        encodings[ref.name] = [qtype]
    # Everything else stays exactly as loaded (F32), so the file decodes to the simulated model.
    for name, tensor in stored_other_tensors(model, refs).items():
        prepared.setdefault(name, ("F32", tensor.detach().to(torch.float32).cpu().numpy()))
    source = source_metadata(loaded)
    with atomic_path(out_path) as tmp:
        write_gguf(tmp, model, loaded.tokenizer, prepared, name=model_name(loaded), source=source)
    size = out_path.stat().st_size
    meta = {"pre_tokenizer": _pre_tokenizer_record(json.loads(loaded.tokenizer.backend_tokenizer.to_str()), source)}
    if imatrix:
        meta["imatrix"] = {"modules": len(imatrix), "statistic": "mean x^2 per input channel over the calibration "
                           "tokens (the diagonal of each module's input Gram matrix), as llama.cpp's imatrix"}
    if fallbacks:
        meta["fallbacks"] = fallbacks
    return ArtifactInfo(path=out_path, fmt="gguf", cost=cost, tensor_bytes_on_disk=size - _data_offset(out_path),
                        weights_file_bytes=size, total_bytes=size, encodings=encodings, meta=meta)


def source_metadata(loaded) -> dict:
    """The SOURCE_KEYS a GGUF-loaded model's file holds (empty for other sources), so the file
    written tokenizes in llama.cpp exactly as the source does."""
    path = getattr(loaded, "source_path", None)
    if path is None or Path(path).suffix.lower() != ".gguf" or not Path(path).is_file():
        return {}
    fields = read_header(path).fields
    return {key: fields[key].contents() for key in SOURCE_KEYS if key in fields}


def file_type(tensors: dict[str, tuple[str, np.ndarray]]) -> int:
    """general.file_type: the type holding most of the quantised (else float16) weight bytes."""
    weight = {}
    for qname, data in tensors.values():
        if qname != "F32":
            weight[qname] = weight.get(qname, 0) + data.nbytes
    quantised = {k: v for k, v in weight.items() if k != "F16"} or weight or {"F32": 0}
    return int(FILE_TYPES[max(quantised, key=quantised.get)])


def model_name(loaded) -> str:
    """The general.name written into the file (part of its fixed header)."""
    return Path(loaded.model_id).name or "toggle"


def write_gguf(path: str | Path, model: torch.nn.Module, tokenizer, tensors: dict[str, tuple[str, np.ndarray]], *,
               name: str | None = None, source: dict | None = None) -> Path:
    """Write `model`'s metadata and tokenizer and `tensors` (HF parameter name -> (GGML type, data)):
    an (out, in) float32 / float16 array for F32 / F16, or (out, bytes per row) uint8 blocks for a
    quantised type, written as given (this is not a quantiser). Every tensor a GGUF file of the
    model holds must be in `tensors`. Llama (and Mistral) q/k rows are permuted here for
    llama.cpp's rope kernel (Qwen's use the NeoX rope and stay as they are); GPT-2's Conv1D
    weights must already be (out, in). `source`: SOURCE_KEYS to copy (source_metadata)."""
    writer, name_map = _metadata_writer(path, model, tokenizer, name, source, file_type(tensors))
    config = model.config
    arch = gguf_arch(config)
    for hf_name, gguf_name, _ in _stored_tensors(model, name_map):
        if hf_name not in tensors:
            raise InvalidInput(f"GGUF export: no data for tensor {hf_name}")
        qname, data = tensors[hf_name]
        if qname not in QTYPES:
            raise InvalidInput(f"GGUF export: {hf_name}: type {qname} is not supported; use one of {', '.join(QTYPES)}")
        # q/k biases (Llama with attention_bias) take the same row order as their weights
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute_qk(data, config.num_attention_heads)
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute_qk(data, config.num_key_value_heads)
        data = np.ascontiguousarray(data)
        if qname in ("F32", "F16"):
            writer.add_tensor(gguf_name, data.astype(np.float32 if qname == "F32" else np.float16))
        else:
            writer.add_tensor(gguf_name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[qname])
    for gguf_name, data in _extra_tensors(model).items():
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def gguf_blocks(q: QuantizedMatrix, qtype: str) -> np.ndarray:
    """Our codes and float16 parameters as GGUF blocks of 32: (rows, bytes per row) uint8."""
    out_f, in_f = q.codes.shape
    nb = in_f // BLOCK
    codes = q.codes.cpu().numpy().reshape(out_f, nb, BLOCK)
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


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved for its rope kernel (convert_hf_to_gguf.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _metadata_writer(path, model, tokenizer, name, source=None, ftype: int = 0):
    """A GGUFWriter at `path` holding the model's hyper-parameters and tokenizer. Its size does
    not depend on `ftype` (a fixed-width integer), so header bytes are known before the plan."""
    config = model.config
    arch = gguf_arch(config)
    n_layers = config.num_hidden_layers if arch in LLAMA_LIKE else config.n_layer
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or getattr(config, "_name_or_path", None) or arch)
    if arch in LLAMA_LIKE:
        head_dim = _head_dim(config)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        # transformers reads Qwen's head width from these (Qwen3's need not be hidden / heads); llama.cpp too
        if arch != "llama" or head_dim * config.num_attention_heads != config.hidden_size:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(_rope_theta(config))
        if _rope_type(config) != "default":
            writer.add_string(ROPE_KEY, json.dumps(_rope_parameters(config), sort_keys=True))
    else:
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, config, source or {})
    return writer, name_map


def _stored_tensors(model, name_map):
    """(HF name, GGUF name, tensor) of every tensor a GGUF file of `model` holds, in order."""
    config = model.config
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd for a tied head
        if skipped_in_gguf(hf_name):
            continue  # buffers, not weights
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InvalidInput(f"GGUF export: no GGUF name for tensor {hf_name} of a {gguf_arch(config)} model")
        yield hf_name, gguf_name, tensor


def gguf_header_bytes(model: torch.nn.Module, tokenizer, *, name: str | None = None, source: dict | None = None) -> int:
    """Bytes before the tensor data in a GGUF file of `model`: header, metadata (the tokenizer
    is most of it: ~1.8 MB for SmolLM2) and tensor index, padded to the data alignment. It does
    not depend on the tensors' types, so the cost model adds it to every plan."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "header.gguf"
        writer, name_map = _metadata_writer(path, model, tokenizer, name, source)
        for _, gguf_name, tensor in _stored_tensors(model, name_map):
            shape = tuple(tensor.shape)
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)),
                                   raw_dtype=gguf.GGMLQuantizationType.F32)
        for gguf_name, data in _extra_tensors(model).items():
            writer.add_tensor_info(gguf_name, data.shape, data.dtype, data.nbytes, raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        size = os.path.getsize(path)
    return gguf.GGUFWriter.ggml_pad(size, gguf.GGUF_DEFAULT_ALIGNMENT)


# The pre-tokenizer split patterns of common byte-level BPE tokenizers (tokenizer.json's Split
# regex) and the llama.cpp pre-tokenizer that splits text the same way.
_SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",  # Llama 3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",  # Qwen2, Qwen2.5, Qwen3
}


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for the pre-tokenizer of a tokenizer.json `spec`:
    GPT-2's byte-level regex ("gpt-2"), single digits before it (SmolLM's "smollm"), or a Split
    pattern of _SPLIT_PATTERNS; "default" for any other (llama.cpp then splits text its own way)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _SPLIT_PATTERNS.get((steps[0].get("pattern") or {}).get("Regex"), "default")
    return "default"


def _pre_tokenizer_record(spec: dict, source: dict) -> dict:
    """The tokenizer.ggml.pre a file gets (`name`) and from where: the source GGUF file's, else the
    one the tokenizer.json `spec` describes; when toggle cannot tell, llama.cpp's default with a note."""
    if source.get("tokenizer.ggml.pre"):
        return {"name": source["tokenizer.ggml.pre"], "from": "the source GGUF file"}
    name = pre_tokenizer_name(spec)
    if name != "default" or not spec.get("pre_tokenizer"):
        return {"name": name, "from": "the tokenizer's pre-tokenizer (tokenizer.json)"}
    return {"name": name, "from": "not recognised", "note": (
        "the tokenizer's pre-tokenizer is not one toggle maps to llama.cpp's (gpt-2, smollm, llama-bpe, qwen2), so "
        "the file has llama.cpp's 'default' one and llama.cpp may split text into other tokens than the tokenizer "
        "does; check with llama-tokenize, or start from the model's GGUF file, whose pre-tokenizer toggle copies")}


def _add_tokenizer(writer, tokenizer, config, source: dict) -> None:
    """Byte-level BPE vocabulary, merges, special ids and chat template (the 'gpt2' model), and
    the source file's pre-tokenizer and flags. A model loaded from safetensors gets the llama.cpp
    pre-tokenizer its tokenizer.json describes (pre_tokenizer_name; llama.cpp's converter names it
    from a hash of tokenised test text instead)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InvalidInput("GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    bpe = spec.get("model", {})
    if bpe.get("type") != "BPE":
        raise InvalidInput(f"GGUF export supports byte-level BPE tokenizers; this one is {bpe.get('type')}")
    vocab: dict[str, int] = dict(bpe["vocab"])
    special = {}
    for tok in spec.get("added_tokens", []):
        vocab[tok["content"]] = tok["id"]
        special[tok["id"]] = tok.get("special", False)
    # one token per embedding row (llama.cpp checks it): a token past the rows has no embedding, e.g.
    # the <|endoftext|> transformers adds to a tokenizer it builds from a GGUF file without one
    size = config.vocab_size
    vocab = {text: idx for text, idx in vocab.items() if idx < size}
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # UNUSED
    for text, idx in vocab.items():
        tokens[idx] = text
        types[idx] = 3 if special.get(idx) else (4 if idx in special else 1)  # CONTROL / USER_DEFINED / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_record(spec, source)["name"])
    adds_bos, adds_eos = _adds_special_tokens(tokenizer)
    add_bos = source.get("tokenizer.ggml.add_bos_token", adds_bos)
    if isinstance(add_bos, bool):
        writer.add_add_bos_token(add_bos)
    if adds_eos and "tokenizer.ggml.add_eos_token" not in source:
        writer.add_add_eos_token(True)
    for key, value in source.items():
        if key not in ("tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
            writer.add_key_value(key, value, SOURCE_KEYS[key])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is None:
            value = getattr(config, attr, None)
        if isinstance(value, int) and 0 <= value < size:
            add(value)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def _adds_special_tokens(tokenizer) -> tuple[bool | None, bool | None]:
    """Whether the tokenizer puts BOS first / EOS last when asked for its special tokens, by what it
    does (its add_bos_token flag says nothing of a tokenizer.json post-processor, which is how Llama 3
    adds BOS): what llama.cpp must do with the file too. None where it cannot be told."""
    try:
        ids = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode this: its flag is all there is
        flag = getattr(tokenizer, "add_bos_token", None)
        return (flag if isinstance(flag, bool) else None), None
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    added = len(ids) > len(plain)
    return added and bos is not None and ids[0] == bos, added and eos is not None and ids[-1] == eos


def _data_offset(path: Path) -> int:
    return read_header(path).data_offset


# --- read: de-quantise once, cache as safetensors -------------------------------------------------

@contextmanager
def quick_gguf_parsing():
    """Two slow paths of reading a GGUF file, sped up while the block runs (13 of the 26 s of
    SmolLM2-135M's first load): gguf's reader slices its numpy.memmap once per metadata value,
    hundreds of thousands of times for a 49k-token vocabulary, and every memmap slice runs
    Python code, where a plain-array view of the same map slices in C; and transformers builds
    gguf's tensor-name map once per module, where one per architecture and depth does. What is
    read is unchanged."""
    original_get, original_map = gguf.GGUFReader._get, gguf.get_tensor_name_map

    def plain_get(self, *args, **kwargs):
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)  # the same mapped bytes, kept alive by the view
        return original_get(self, *args, **kwargs)

    gguf.GGUFReader._get = plain_get
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader._get, gguf.get_tensor_name_map = original_get, original_map


def read_header(path: Path) -> gguf.GGUFReader:
    """gguf's reader of `path` (metadata parsed, tensor data mapped, not read)."""
    with quick_gguf_parsing():
        return gguf.GGUFReader(str(path))


def _gguf_file_type(reader: gguf.GGUFReader) -> str | None:
    try:
        field_ = reader.fields.get("general.file_type")
        if field_ is None:
            return "gguf"
        return gguf.LlamaFileType(int(field_.parts[field_.data[0]][0])).name.removeprefix("MOSTLY_")
    except Exception:  # metadata only: never fail a load over it
        return "gguf"


# Llama 3.1 / 3.2 / 3.3's rope scaling: what a rope_freqs tensor of a file toggle did not write is matched against
_LLAMA3_ROPES = [{"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192} for factor in (8.0, 32.0, 16.0)]


def _restore_rope(reader: gguf.GGUFReader, path: Path, config) -> None:
    """transformers reads no rope scaling from a llama GGUF (it ignores rope_freqs.weight), so the
    model it builds would compute other positions than llama.cpp runs. toggle's own files carry
    the settings (ROPE_KEY); Llama 3.x's are recognised by their factors; any other is refused."""
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return
    if ROPE_KEY in reader.fields:
        config.rope_parameters = json.loads(reader.fields[ROPE_KEY].contents())
        return
    factors = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    base = dict(_rope_parameters(config), rope_theta=_rope_theta(config))
    for candidate in _LLAMA3_ROPES:
        trial = copy.deepcopy(config)
        trial.rope_parameters = {**base, **candidate}
        trial.max_position_embeddings = max(trial.max_position_embeddings, 8193)
        mine = rope_freq_factors(trial)
        if mine is not None and mine.shape == factors.shape and np.allclose(mine, factors, rtol=1e-4):
            config.rope_parameters = {**base, **candidate}
            return
    raise ModelLoadError(f"{path}: the file holds rope frequency factors ({ROPE_FREQS}) that are not Llama 3.x's "
                         f"rope scaling; transformers would ignore them and toggle would evaluate another model than "
                         f"llama.cpp runs. Load the model from its Hugging Face directory instead")


def _key_length(reader: gguf.GGUFReader) -> int | None:
    """The file's attention head width (`<arch>.attention.key_length`), when it states one."""
    fields = reader.fields
    arch = fields.get("general.architecture")
    field = fields.get(f"{arch.contents()}.attention.key_length") if arch is not None else None
    return int(field.contents()) if field is not None else None


def dequantised_cache(gguf_path: Path, model_id: str) -> Path:
    """De-quantise a GGUF file once into a safetensors model directory in the cache."""
    try:
        key = f"gguf-{file_digest(gguf_path)}-v{_CACHE_VERSION}"
    except OSError as e:
        raise ModelLoadError(f"{gguf_path}: cannot read: {e.strerror or e}") from None
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file() and (target / "toggle-cache.json").is_file():
        return target
    reader = _check_gguf(gguf_path)
    print(f"toggle: de-quantising {gguf_path.name} once (about ten seconds); cached in {target}",
          file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings(), quick_gguf_parsing():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            head_dim = _key_length(reader)
            if head_dim and hasattr(config, "head_dim"):
                config.head_dim = head_dim  # transformers ignores attention.key_length (Qwen3 would get 128)
            _restore_rope(reader, gguf_path, config)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, config=config, dtype=torch.float32
            )
    except ModelLoadError:
        raise  # toggle's own reason, already naming the file
    except Exception as e:  # transformers raises many types for bad GGUF files
        raise ModelLoadError(f"{gguf_path}: cannot load GGUF model: {one_line(e)}") from None
    _check_nothing_dropped(reader, model, gguf_path)
    # transformers marks GGUF-loaded models as quantised and refuses save_pretrained; the
    # weights are already plain float tensors, so the marker is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False if attr == "is_quantized" else None)
            except AttributeError:
                pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "toggle-cache.json").write_text(
            json.dumps({"source": str(gguf_path), "model_id": model_id, "version": _CACHE_VERSION,
                        "file_type": _gguf_file_type(reader)})
        )
        if target.exists():  # a concurrent loader finished first; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_nothing_dropped(reader: gguf.GGUFReader, model, path: Path) -> None:
    """transformers' GGUF config mapping has no attention_bias / mlp_bias for Llama: the bias
    tensors of such a file are left out of the model it builds, without a word, and that model
    computes something else than llama.cpp runs from the file."""
    biases = [t.name for t in reader.tensors if t.name.endswith(".bias")]
    kept = sum(1 for n, _ in model.named_parameters() if n.endswith("bias"))
    if len(biases) > kept:
        raise ModelLoadError(f"{path}: the file holds {len(biases)} bias tensors ({', '.join(biases[:3])}"
                             f"{', ...' if len(biases) > 3 else ''}) and transformers' GGUF loader builds a "
                             f"{model.config.model_type} model with {kept}: it would run without them, which is not "
                             f"the model llama.cpp runs from this file; load the Hugging Face model it came from")


def _check_gguf(path: Path) -> gguf.GGUFReader:
    """A GGUF file transformers can read: the magic bytes, a complete header, a known architecture.
    Checked before the (slow) de-quantisation so a wrong file fails in a second with its reason.
    Returns the file's reader (its header, for what transformers does not take from it)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes); "
                             f"expected a .gguf model file, a model directory or a built-in model")
    try:
        reader = read_header(path)
        field_ = reader.fields.get("general.architecture")
        arch = bytes(field_.parts[field_.data[0]]).decode("utf-8", "replace") if field_ else None
    except Exception as e:  # noqa: BLE001 - a truncated or damaged file raises many types
        raise ModelLoadError(f"{path}: damaged or truncated GGUF file: {one_line(e)}") from None
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - layout of another transformers version: let it decide
        return reader
    if arch is None:
        raise ModelLoadError(f"{path}: the GGUF file has no general.architecture field")
    # transformers' list also holds its non-architecture sections and models without decoder blocks
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "mamba", "t5", "umt5"})
    if arch not in supported and arch.replace("-", "") not in supported:
        raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not supported; expected a decoder-only "
                             f"model of one of the architectures {', '.join(supported)}")
    return reader


