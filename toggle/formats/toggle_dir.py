"""The toggle format: a directory of packed safetensors, loadable back into a transformers model.

    fmt = get_format("toggle")
    info = fmt.write(lm, plan, Path("out/model"), applier)   # packed safetensors + toggle.json
    lm2 = fmt.read(Path("out/model"))                        # a transformers model again

The directory holds:
  model.safetensors   per compressed matrix P (a module name, or P.lowrank_a / P.lowrank_b
                      for the two factors of a factorised module):
                        P.values   float16 values (16-bit matrices)
                        P.codes    packed `bits`-bit codes (little-endian bit stream)
                        P.scales / P.mins   float16 per group, P.awq_scales float16 per input
                        or, with scale_bits < 16 (quantised group parameters):
                        P.scale_codes / P.min_codes   packed scale_bits-bit codes per group,
                        P.scale_step, P.scale_base / P.min_step, P.min_base   float16 per row
                        P.mask     packed keep bits (bitmask encoding) or
                        P.indices  (rows, kept) column indices (indices encoding)
                      and every other tensor (norms, biases) as loaded, under its own name;
  toggle.json         the manifest: format version, base model, plan, per-module layout;
  config.json, generation_config.json and the tokenizer files, so the directory is a
  self-contained model.
It is written to a temporary directory and renamed, so a crash leaves nothing half written.
Loading decodes every matrix to the loaded dtype (the de-quantised weights a simulated plan
uses) and rebuilds factorised modules as two Linear layers (LowRankLinear).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..compress import registry
from ..compress.apply import PlanApplier, StoredMatrix, validate_plan
from ..compress.lowrank import LowRankLinear
from ..compress.packing import (ENCODINGS, indices_to_mask, mask_to_indices, matrix_bytes, pack_bits, pack_mask,
                                unpack_bits, unpack_mask)
from ..compress.prune import kept_per_row
from ..compress.quant import ParamCodes, QuantizedMatrix
from ..compress.rules import stored_shapes
from ..errors import InvalidInput
from ..hf import check_safetensors, ready
from ..loaded import LoadedModel, dir_fingerprint
from ..modules import ModuleRef, compressible_modules, set_weight_matrix, stored_other_tensors
from ..plan import ALLOWED_BITS, SCALE_BITS, Plan
from ..files import atomic_path
from .base import ArtifactInfo, Format

FORMAT_VERSION = 1
MANIFEST = "toggle.json"
WEIGHTS = "model.safetensors"


class ToggleFormat(Format):
    name = "toggle"
    label = "toggle"
    description = "packed safetensors + toggle.json manifest (loadable back through the Python API)"

    def problem(self, ref, setting, methods) -> str | None:
        # every setting the applier can build is stored exactly, except llama.cpp's own blocks
        if setting.bits < 16 and registry.method("quantizer", methods.quantizer).ggml:
            return (f"quantizer {methods.quantizer} makes llama.cpp's GGML blocks, which only the GGUF format "
                    f"stores; use --format gguf (or format: gguf in the search profile), or quantizer rtn, awq or gptq")
        return None

    def module_bytes(self, ref, setting, methods) -> tuple[int, tuple[str, ...]]:
        # Per-input scales (AWQ) are stored only where the method had statistics: an untied
        # embedding falls back to its family's statistics-free method.
        scales = registry.chosen("quantizer", methods, has_stats=ref.is_linear).input_scales
        size, encodings = 0, []
        for out_f, in_f in stored_shapes(ref, setting):
            keep = kept_per_row(in_f, setting.sparsity, methods.prune_pattern)
            b, enc = matrix_bytes(out_f, in_f, keep, setting.bits, group_size=methods.group_size,
                                  symmetric=methods.symmetric_for(setting.bits), input_scales=scales,
                                  scale_bits=methods.scale_bits)
            size += b
            encodings.append(enc)
        return size, tuple(encodings)

    def other_bytes(self, model, refs) -> int:
        return sum(t.numel() * t.element_size() for t in stored_other_tensors(model, refs).values())

    def write(self, loaded, plan: Plan, out: Path, applier: PlanApplier, cost) -> ArtifactInfo:
        return write_artifact(loaded, plan, out, applier, cost)

    def read(self, path: Path, *, device="cpu", dtype=torch.float32, attn_implementation=None) -> LoadedModel:
        return read_artifact(path, device=device, dtype=dtype, attn_implementation=attn_implementation)


# --- write -------------------------------------------------------------------------------------

def write_artifact(loaded, plan: Plan, out_dir: Path, applier: PlanApplier, cost) -> ArtifactInfo:
    """Write `plan` applied to `loaded` (a LoadedModel) as a toggle artifact, with the caches
    and statistics of `applier`. The model's own weights are not modified."""
    out_dir = Path(out_dir)
    _refuse_foreign_dir(out_dir, MANIFEST)
    model = loaded.model
    refs = applier.refs
    validate_plan(plan, refs, applier.stats)

    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    encodings: dict[str, list[str]] = {}
    for ref in refs:
        stored = applier.stored(ref, plan.setting(ref.name), plan.methods)
        roles = ["lowrank_a", "lowrank_b"] if stored.factorised else ["weight"]
        entries = []
        for role, matrix in zip(roles, stored.matrices):
            prefix = ref.name if role == "weight" else f"{ref.name}.{role}"
            entries.append(_encode_matrix(prefix, role, matrix, tensors))
        modules[ref.name] = {"shape": [ref.out_features, ref.in_features], "transposed": ref.transposed,
                             "matrices": entries}
        encodings[ref.name] = [e["encoding"] for e in entries]
    others = stored_other_tensors(model, refs)
    for name, tensor in others.items():
        tensors[name] = tensor.detach().cpu().contiguous()

    manifest = {
        "format": "toggle", "format_version": FORMAT_VERSION,
        "base_model": loaded.model_id, "base_fingerprint": loaded.fingerprint,
        "weights": WEIGHTS, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "accounted_bytes": cost.bytes, "plan": plan.to_dict(), "modules": modules, "others": sorted(others),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "toggle_format": str(FORMAT_VERSION)})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return ArtifactInfo(path=out_dir, fmt="toggle", cost=cost, tensor_bytes_on_disk=tensor_bytes,
                        weights_file_bytes=(out_dir / WEIGHTS).stat().st_size,
                        total_bytes=sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
                        encodings=encodings)


def _encode_matrix(prefix: str, role: str, m: StoredMatrix, tensors: dict[str, torch.Tensor]) -> dict:
    out_f, in_f = m.shape
    _, encoding = m.storage()
    entry = {"role": role, "prefix": prefix, "shape": [out_f, in_f], "bits": m.bits, "encoding": encoding,
             "keep": m.keep}
    mask = m.mask
    if encoding == "bitmask":
        tensors[f"{prefix}.mask"] = pack_mask(mask)
    elif encoding == "indices":
        tensors[f"{prefix}.indices"] = mask_to_indices(mask.cpu(), m.keep)
    select = (lambda t: t.reshape(-1)) if encoding == "dense" else (lambda t: t[mask.to(t.device)])
    if m.quant is None:
        values = select(m.values.cpu())
        tensors[f"{prefix}.values"] = values.reshape(out_f, -1) if encoding != "bitmask" else values
        return entry
    q = m.quant
    # "awq" and P.awq_scales are the format's (version 1) names for per-input scales
    entry.update(group_size=q.group_size, symmetric=q.symmetric, awq=q.input_scales is not None)
    tensors[f"{prefix}.codes"] = pack_bits(select(q.codes.cpu()), q.bits)
    if q.params is not None:
        entry["scale_bits"] = q.scale_bits
        for key, name in PARAM_TENSORS.items():
            if key in q.params:
                p = q.params[key]
                tensors[f"{prefix}.{name}_codes"] = pack_bits(p.codes.cpu(), p.bits)
                tensors[f"{prefix}.{name}_step"] = p.step.cpu().contiguous()
                tensors[f"{prefix}.{name}_base"] = p.base.cpu().contiguous()
    else:
        tensors[f"{prefix}.scales"] = q.scales.cpu().contiguous()
        if q.mins is not None:
            tensors[f"{prefix}.mins"] = q.mins.cpu().contiguous()
    if q.input_scales is not None:
        tensors[f"{prefix}.awq_scales"] = q.input_scales.cpu().contiguous()
    return entry


# QuantizedMatrix.params key -> tensor name stem of a quantised group parameter
PARAM_TENSORS = {"scales": "scale", "mins": "min"}


def _refuse_foreign_dir(path: Path, marker: str) -> None:
    """Replacing an earlier artifact is fine; replacing someone's unrelated directory is not."""
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise InvalidInput(f"--out {path}: the directory exists and is not a toggle artifact; "
                           f"choose a new or empty directory")
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"--out {path}: exists and is a file; a toggle artifact is a directory")


# --- read --------------------------------------------------------------------------------------

def read_artifact(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  attn_implementation: str | None = None) -> LoadedModel:
    """Rebuild the model of a toggle artifact as a transformers model."""
    start = time.perf_counter()
    path = Path(path).resolve()
    manifest = read_manifest(path)
    weights = path / manifest["weights"]
    if not weights.is_file():
        raise InvalidInput(f"{weights}: no such file, which {MANIFEST} names as the weights; write the artifact again")
    check_safetensors(weights)  # a copy cut short is said so, not a safetensors traceback
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
            kwargs = {"dtype": dtype}
            if attn_implementation:
                kwargs["attn_implementation"] = attn_implementation
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    except Exception as e:  # transformers raises many types for bad configs
        raise InvalidInput(f"{path}: cannot build the model from config.json: {str(e).splitlines()[0][:300]}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:
        raise InvalidInput(f"{path}: cannot load the tokenizer (tokenizer.json, tokenizer_config.json): "
                           f"{str(e).splitlines()[0][:300]}") from None

    refs = {r.name: r for r in compressible_modules(model)}
    with safe_open(str(weights), framework="pt") as f:
        available = set(f.keys())

        def get(name: str) -> torch.Tensor:
            if name not in available:
                raise InvalidInput(f"{weights}: tensor {name} named by {MANIFEST} is missing")
            return f.get_tensor(name)

        for name, entry in manifest["modules"].items():
            ref = refs.get(name)
            if ref is None or [ref.out_features, ref.in_features] != entry["shape"]:
                raise InvalidInput(f"{path / MANIFEST}: modules.{name}: no module of shape {entry['shape']} "
                                   f"in the model config.json describes")
            if len(entry["matrices"]) == 2 and ref.part == "embed":
                raise InvalidInput(f"{path / MANIFEST}: modules.{name}: an embedding cannot be factorised")
            mats = [_decode_matrix(e, get) for e in entry["matrices"]]
            if len(mats) == 1:
                set_weight_matrix(model.get_submodule(name), ref, mats[0])
            else:
                _install_low_rank(model, ref, mats[0], mats[1], dtype)
        state = model.state_dict()
        for name in manifest["others"]:
            target = _other_target(model, name, state)
            if target is None:
                raise InvalidInput(f"{path / MANIFEST}: others: the model has no tensor {name}")
            value = get(name)
            if tuple(value.shape) != tuple(target.shape):
                raise InvalidInput(f"{weights}: tensor {name} has shape {list(value.shape)}, "
                                   f"the model expects {list(target.shape)}")
            with torch.no_grad():
                target.copy_(value.to(target.dtype))
    _check_complete(model, manifest, path)
    ready(model.to(device))
    plan = Plan.from_dict(manifest["plan"], source=f"{path / MANIFEST}: plan")
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=str(path), source="toggle",
                       fingerprint=dir_fingerprint(path), load_seconds=time.perf_counter() - start,
                       extra={"base_model": manifest["base_model"], "base_fingerprint": manifest.get("base_fingerprint"),
                              "plan": plan, "manifest": manifest})


def _decode_matrix(entry: dict, get) -> torch.Tensor:
    prefix, (out_f, in_f), bits = entry["prefix"], entry["shape"], entry["bits"]
    encoding, keep = entry["encoding"], entry["keep"]
    mask = None
    if encoding == "bitmask":
        mask = unpack_mask(_packed(get, f"{prefix}.mask"), (out_f, in_f))
    elif encoding == "indices":
        indices = get(f"{prefix}.indices")
        if tuple(indices.shape) != (out_f, keep) or int(indices.long().max()) >= in_f:
            raise InvalidInput(f"{prefix}.indices: expected ({out_f}, {keep}) column indices below {in_f}")
        mask = indices_to_mask(indices, in_f)
    if mask is not None and int(mask.sum()) != out_f * keep:
        raise InvalidInput(f"{prefix}: the sparsity mask keeps {int(mask.sum())} weights, the manifest says {out_f * keep}")
    count = out_f * in_f if encoding == "dense" else out_f * keep
    if bits == 16:
        values = get(f"{prefix}.values").reshape(-1)
        _expect(values.numel() == count, prefix, "values", count)
        w = _scatter(values.float(), mask, out_f, in_f)
    else:
        packed = _packed(get, f"{prefix}.codes")
        _expect(packed.numel() == math.ceil(count * bits / 8), prefix, "codes", math.ceil(count * bits / 8))
        codes = _scatter(unpack_bits(packed, bits, count), mask, out_f, in_f)
        groups = 1 if entry["group_size"] == -1 else math.ceil(in_f / entry["group_size"])
        scale_bits = entry.get("scale_bits", 16)
        if scale_bits == 16:
            scales = get(f"{prefix}.scales")
            _expect(tuple(scales.shape) == (out_f, groups), prefix, "scales", (out_f, groups))
            mins = None if entry["symmetric"] else get(f"{prefix}.mins")
        else:
            scales, mins = (None if key == "mins" and entry["symmetric"] else
                            _decode_params(prefix, name, scale_bits, out_f, groups, get)
                            for key, name in PARAM_TENSORS.items())
        awq = get(f"{prefix}.awq_scales") if entry["awq"] else None
        q = QuantizedMatrix(codes=codes, scales=scales, mins=mins, bits=bits, group_size=entry["group_size"],
                            input_scales=awq, scale_bits=scale_bits)
        w = q.dequantize()
    return w if mask is None else w * mask


def _decode_params(prefix: str, name: str, bits: int, out_f: int, groups: int, get) -> torch.Tensor:
    """One quantised group parameter (scales or minimums) as float32 (out, groups)."""
    packed = _packed(get, f"{prefix}.{name}_codes")
    count = out_f * groups
    _expect(packed.numel() == math.ceil(count * bits / 8), prefix, f"{name}_codes", math.ceil(count * bits / 8))
    step, base = get(f"{prefix}.{name}_step"), get(f"{prefix}.{name}_base")
    for what, t in (("step", step), ("base", base)):
        _expect(tuple(t.shape) == (out_f,), prefix, f"{name}_{what}", (out_f,))
    codes = unpack_bits(packed, bits, count).reshape(out_f, groups)
    return ParamCodes(codes=codes, step=step.half(), base=base.half(), bits=bits).decode()


def _scatter(values: torch.Tensor, mask: torch.Tensor | None, out_f: int, in_f: int) -> torch.Tensor:
    if mask is None:
        return values.reshape(out_f, in_f)
    full = torch.zeros(out_f, in_f, dtype=values.dtype)
    full[mask] = values
    return full


def _packed(get, name: str) -> torch.Tensor:
    """A tensor of packed bits (codes, masks): bytes, or a clear error naming it."""
    t = get(name)
    if t.dtype != torch.uint8:
        raise InvalidInput(f"{name}: packed bits are stored as uint8, this tensor is {str(t.dtype).removeprefix('torch.')}")
    return t


def _expect(ok: bool, prefix: str, what: str, expected) -> None:
    if not ok:
        raise InvalidInput(f"{prefix}.{what}: wrong size for the manifest's layout (expected {expected})")


def _install_low_rank(model, ref: ModuleRef, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    """Replace the module by two Linear factors: y = A (B x) + bias."""
    old = model.get_submodule(ref.name)
    bias = getattr(old, "bias", None)
    new = LowRankLinear(ref.in_features, ref.out_features, a.shape[1], bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        new.up.weight.copy_(a)
        new.down.weight.copy_(b)
        if bias is not None:
            new.up.bias.copy_(bias)
    parent_name, _, child = ref.name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _other_target(model, name: str, state: dict) -> torch.Tensor | None:
    """The live tensor for a state name; a factorised module's bias moved to its `up` layer."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    if isinstance(module, LowRankLinear) and attr == "bias":
        return module.up.bias
    return state.get(name) if name in state else getattr(module, attr, None)


def _check_complete(model, manifest: dict, path: Path) -> None:
    """Every stored tensor of the rebuilt model came from the artifact, none from random init."""
    covered = set(manifest["others"])
    for name, entry in manifest["modules"].items():
        if len(entry["matrices"]) == 2:
            covered |= {f"{name}.down.weight", f"{name}.up.weight", f"{name}.up.bias"}
        else:
            covered.add(f"{name}.weight")
    state = model.state_dict()
    covered_ptrs = {state[n].data_ptr() for n in covered if n in state}  # a tied head shares the embedding
    missing = [n for n, t in state.items() if n not in covered and t.data_ptr() not in covered_ptrs]
    if missing:
        raise InvalidInput(f"{path / MANIFEST}: the artifact does not hold {missing[0]}"
                           f"{f' and {len(missing) - 1} more tensors' if len(missing) > 1 else ''}")


# --- manifest --------------------------------------------------------------------------------

def read_manifest(path: Path) -> dict:
    """Read and validate toggle.json; every problem names the field and what is valid."""
    where = path / MANIFEST
    try:
        manifest = json.loads(where.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path}: not a toggle artifact (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InvalidInput(f"{where}: not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "toggle":
        raise InvalidInput(f"{where}: format: expected \"toggle\"")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InvalidInput(f"{where}: format_version: {manifest.get('format_version')!r} is not supported "
                           f"(this toggle reads version {FORMAT_VERSION})")
    weights = manifest.get("weights")
    if not isinstance(weights, str) or not weights or Path(weights).name != weights or weights in (".", ".."):
        raise InvalidInput(f"{where}: weights: {weights!r} must be a file name inside the artifact directory")
    target = (path / weights).resolve()
    if not target.is_relative_to(path.resolve()):
        raise InvalidInput(f"{where}: weights: {weights!r} points outside the artifact directory")
    if not target.is_file():
        raise InvalidInput(f"{where}: weights: {weights} does not exist in {path}")
    if not isinstance(manifest.get("base_model"), str):
        raise InvalidInput(f"{where}: base_model: expected the base model id (a string)")
    if not isinstance(manifest.get("plan"), dict):
        raise InvalidInput(f"{where}: plan: expected the plan mapping")
    others = manifest.get("others")
    if not isinstance(others, list) or not all(isinstance(n, str) for n in others):
        raise InvalidInput(f"{where}: others: expected a list of tensor names")
    modules = manifest.get("modules")
    if not isinstance(modules, dict):
        raise InvalidInput(f"{where}: modules: expected a mapping of module name -> layout")
    for name, entry in modules.items():
        _check_module_entry(where, name, entry)
    return manifest


def _check_module_entry(where: Path, name: str, entry) -> None:
    at = f"{where}: modules.{name}"
    if not isinstance(entry, dict) or not _is_shape(entry.get("shape")):
        raise InvalidInput(f"{at}.shape: expected [out_features, in_features]")
    mats = entry.get("matrices")
    if not isinstance(mats, list) or len(mats) not in (1, 2):
        raise InvalidInput(f"{at}.matrices: expected one matrix, or two factors")
    for i, m in enumerate(mats):
        mat = f"{at}.matrices[{i}]"
        if not isinstance(m, dict):
            raise InvalidInput(f"{mat}: expected a mapping")
        expected_prefix = name if len(mats) == 1 else f"{name}.{('lowrank_a', 'lowrank_b')[i]}"
        if m.get("prefix") != expected_prefix:
            raise InvalidInput(f"{mat}.prefix: expected {expected_prefix!r}")
        if not _is_shape(m.get("shape")):
            raise InvalidInput(f"{mat}.shape: expected [rows, columns]")
        if m.get("bits") not in ALLOWED_BITS:
            raise InvalidInput(f"{mat}.bits: {m.get('bits')!r}; expected one of {', '.join(map(str, ALLOWED_BITS))}")
        if m.get("encoding") not in ENCODINGS:
            raise InvalidInput(f"{mat}.encoding: {m.get('encoding')!r}; expected one of {', '.join(ENCODINGS)}")
        keep = m.get("keep")
        if not isinstance(keep, int) or isinstance(keep, bool) or not 0 < keep <= m["shape"][1]:
            raise InvalidInput(f"{mat}.keep: expected the weights kept per row, 1..{m['shape'][1]}")
        if m["bits"] < 16:
            g = m.get("group_size")
            if not isinstance(g, int) or isinstance(g, bool) or not (g == -1 or g > 0):
                raise InvalidInput(f"{mat}.group_size: expected a positive integer or -1")
            if not isinstance(m.get("symmetric"), bool) or not isinstance(m.get("awq"), bool):
                raise InvalidInput(f"{mat}: symmetric and awq must be true or false")
            sb = m.get("scale_bits", 16)
            if isinstance(sb, bool) or sb not in SCALE_BITS:
                raise InvalidInput(f"{mat}.scale_bits: {sb!r}; expected one of {', '.join(map(str, SCALE_BITS))}")
    out_f, in_f = entry["shape"]
    shapes = [tuple(m["shape"]) for m in mats]
    ok = shapes == [(out_f, in_f)] if len(mats) == 1 else (
        shapes[0][0] == out_f and shapes[1][1] == in_f and shapes[0][1] == shapes[1][0])
    if not ok:
        raise InvalidInput(f"{at}.matrices: shapes {shapes} do not make a {out_f}x{in_f} matrix")


def _is_shape(value) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
