"""Write a transformers causal LM as a GGUF file (llama.cpp's format) with the `gguf` package.

Supports the Llama and GPT-2 architectures with byte-level BPE tokenizers, which covers the
built-in SmolLM2 model and the test models. Each tensor can get its own GGML type (F32,
F16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1) quantised by the `gguf` package's reference quantisers,
so llama.cpp and transformers' GGUF loader both read the result.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import InvalidInput

# HF model_type -> GGUF architecture name
ARCHITECTURES = {"llama": "llama", "gpt2": "gpt2"}
QTYPES = ("F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


def gguf_arch(config) -> str:
    arch = ARCHITECTURES.get(getattr(config, "model_type", None))
    if arch is None:
        raise InvalidInput(
            f"GGUF export supports the architectures {', '.join(ARCHITECTURES)}; "
            f"this model is '{getattr(config, 'model_type', '?')}' (use --format toggle)"
        )
    return arch


def skipped_in_gguf(hf_name: str) -> bool:
    """State tensors GGUF does not store: buffers llama.cpp recomputes."""
    return hf_name.endswith(("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias"))


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved for its rope kernel (convert_hf_to_gguf.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    path: str | Path,
    model: torch.nn.Module,
    tokenizer,
    *,
    qtypes: dict[str, str] | None = None,
    default_2d: str = "F16",
    name: str | None = None,
    prepared: dict[str, tuple[str, np.ndarray]] | None = None,
) -> Path:
    """Write `model` (its current weights) to `path`.

    `qtypes` maps HF parameter names ('model.layers.0.mlp.up_proj.weight') to a GGML type
    name; 2-D weights not listed get `default_2d`, 1-D tensors (norms, biases) stay F32.
    `prepared` maps HF parameter names to (GGML type, data) already in GGUF layout: an
    (out, in) float16 array for F16, or (out, bytes per row) uint8 quantised blocks; they are
    written as given (llama q/k rows are still permuted here), so a caller can store codes
    it computed itself, bit for bit.
    """
    writer, name_map = _metadata_writer(path, model, tokenizer, name)
    config = model.config
    arch = gguf_arch(config)
    qtypes = qtypes or {}

    for hf_name, gguf_name, tensor in _stored_tensors(model, name_map):
        if prepared and hf_name in prepared:
            _add_prepared(writer, gguf_name, hf_name, *prepared[hf_name], arch=arch, config=config)
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = _permute_qk(data, config.num_attention_heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = _permute_qk(data, config.num_key_value_heads)
        elif arch == "gpt2" and data.ndim == 2 and hf_name.startswith("transformer.h."):
            data = data.T  # Conv1D stores (in, out); GGUF wants (out, in) rows
        qname = qtypes.get(hf_name, default_2d if data.ndim == 2 else "F32")
        _add_tensor(writer, gguf_name, np.ascontiguousarray(data), qname, hf_name)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _metadata_writer(path, model, tokenizer, name):
    """A GGUFWriter at `path` holding the model's hyper-parameters and tokenizer."""
    import gguf

    config = model.config
    arch = gguf_arch(config)
    n_layers = config.num_hidden_layers if arch == "llama" else config.n_layer
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or getattr(config, "_name_or_path", None) or arch)
    if arch == "llama":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_rope_dimension_count(head_dim)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        writer.add_rope_freq_base(float(theta or getattr(config, "rope_theta", 10000.0)))
    else:
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, tokenizer, config)
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


def gguf_header_bytes(model: torch.nn.Module, tokenizer, *, name: str | None = None) -> int:
    """Bytes before the tensor data in a GGUF file of `model`: header, metadata (the tokenizer
    is most of it: ~1.8 MB for SmolLM2) and tensor index, padded to the data alignment. It does
    not depend on the tensors' types, so the cost model adds it to every plan."""
    import os
    import tempfile

    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "header.gguf"
        writer, name_map = _metadata_writer(path, model, tokenizer, name)
        for _, gguf_name, tensor in _stored_tensors(model, name_map):
            shape = tuple(tensor.shape)
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)),
                                   raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        size = os.path.getsize(path)
    return gguf.GGUFWriter.ggml_pad(size, gguf.GGUF_DEFAULT_ALIGNMENT)


def _add_tensor(writer, gguf_name: str, data: np.ndarray, qname: str, hf_name: str) -> None:
    import gguf

    if qname not in QTYPES:
        raise InvalidInput(f"GGUF export: {hf_name}: type {qname} is not supported; use one of {', '.join(QTYPES)}")
    qtype = gguf.GGMLQuantizationType[qname]
    if qname == "F32":
        writer.add_tensor(gguf_name, data.astype(np.float32))
        return
    if qname == "F16":
        writer.add_tensor(gguf_name, data.astype(np.float16))
        return
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        raise InvalidInput(
            f"GGUF export: {hf_name}: rows of {data.shape[-1]} values do not split into {qname} blocks of {block}"
        )
    packed = gguf.quants.quantize(data.astype(np.float32), qtype)
    writer.add_tensor(gguf_name, packed, raw_shape=packed.shape, raw_dtype=qtype)


def _add_prepared(writer, gguf_name: str, hf_name: str, qname: str, data: np.ndarray, *, arch: str, config) -> None:
    import gguf

    if qname not in QTYPES:
        raise InvalidInput(f"GGUF export: {hf_name}: type {qname} is not supported; use one of {', '.join(QTYPES)}")
    if arch == "llama" and hf_name.endswith("q_proj.weight"):
        data = _permute_qk(data, config.num_attention_heads)
    elif arch == "llama" and hf_name.endswith("k_proj.weight"):
        data = _permute_qk(data, config.num_key_value_heads)
    data = np.ascontiguousarray(data)
    if qname in ("F32", "F16"):
        writer.add_tensor(gguf_name, data.astype(np.float32 if qname == "F32" else np.float16))
    else:
        writer.add_tensor(gguf_name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[qname])


def _add_tokenizer(writer, tokenizer, config) -> None:
    """Byte-level BPE vocabulary, merges, special ids and chat template (the 'gpt2' model)."""
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
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # UNUSED
    for text, idx in vocab.items():
        tokens[idx] = text
        types[idx] = 3 if special.get(idx) else (4 if idx in special else 1)  # CONTROL / USER_DEFINED / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is None:
            value = getattr(config, attr, None)
        if isinstance(value, int):
            add(value)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
