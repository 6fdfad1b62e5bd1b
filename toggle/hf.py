"""transformers models from a directory of safetensors weights or a hub id, safely: safetensors
only (pickle files are refused), a truncated file is named before transformers reads it, a
model's own Python code (auto_map) is refused unless the user trusts it; any failure is one line."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .errors import ModelLoadError


def load_hf_dir(path: Path, spec: str, dtype, attn_implementation, trust_remote_code: bool):
    """(model, tokenizer) of a Hugging Face model directory with safetensors weights."""
    has_safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    if not has_safetensors:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(sorted(pickled))}: pickle files are not loaded for safety)" if pickled else ""
        raise ModelLoadError(f"{spec}: no safetensors weights in the directory{hint}")
    for file in sorted(path.glob("*.safetensors")):
        check_safetensors(file)
    if not trust_remote_code:
        refuse_remote_code(path, spec)
    return from_pretrained(str(path), dtype, attn_implementation, trust_remote_code, f"{spec}: cannot load model")


def load_hub(model_id: str, dtype, attn_implementation, trust_remote_code: bool):
    return from_pretrained(model_id, dtype, attn_implementation, trust_remote_code,
                           f"{model_id}: cannot load from the Hugging Face hub (is the network reachable and the id right?)")


def from_pretrained(where: str, dtype, attn_implementation, trust_remote_code: bool, failure: str):
    """Tokenizer and model through transformers, safetensors only; any failure is one line."""
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"{failure}: {one_line(e)}") from None
    return model, tokenizer


def check_safetensors(path: Path) -> None:
    """The header of a safetensors file parses and its tensors fit in the file: a truncated
    download or a copy cut short is named as such, not as a transformers stack trace."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise ValueError("the header is cut off")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{path}: damaged or truncated safetensors file ({one_line(e)})") from None
    if 8 + n + end > size:
        raise ModelLoadError(f"{path}: truncated safetensors file: its header describes {8 + n + end:,} bytes, "
                             f"the file holds {size:,}; copy or download it again")


def refuse_remote_code(path: Path, spec: str) -> None:
    """A directory whose config or tokenizer config maps to its own Python files would run them."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue  # missing or unreadable: transformers reports it
        if isinstance(data, dict) and data.get("auto_map"):
            raise ModelLoadError(f"{spec}: {name} maps to the model's own Python code (auto_map), which toggle "
                                 f"does not run unless you pass --trust-remote-code (only for code you trust)")


def ready(model):
    """Eval mode, no gradients: how every stage expects a model."""
    model.eval()
    model.requires_grad_(False)
    return model


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    return first if len(first) < 300 else first[:297] + "..."


def quiet_transformers() -> None:
    """transformers' own warnings and progress bars off (the command line's default)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
