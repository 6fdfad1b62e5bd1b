"""A compression plan: what to do to every compressible module, and with which methods.

plan.yaml (written by `toggle search`, read by `toggle apply`):

    toggle_plan: 1
    model: smollm2-135m
    profile: default
    methods: {quantizer: rtn, group_size: 128, symmetric: false,
              pruner: wanda, prune_pattern: unstructured, lowrank: svd}
    modules:
      model.embed_tokens: {bits: 8, sparsity: 0.0, rank_ratio: 1.0}
      model.layers.0.self_attn.q_proj: {bits: 4, sparsity: 0.25, rank_ratio: 1.0}

`bits: 16` means the matrix is kept as a 16-bit float; modules missing from `modules` are
left untouched. Operators apply in the order low-rank, pruning, quantisation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .compress import registry
from .compress.prune import PATTERNS as PRUNE_PATTERNS
from .errors import InvalidInput, key_list
from .files import atomic_write_yaml, read_yaml

PLAN_VERSION = 1
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


@dataclass(frozen=True)
class ModuleSetting:
    bits: int = 16
    sparsity: float = 0.0
    rank_ratio: float = 1.0
    # Per-module overrides of the plan's methods (None: the plan's methods.group_size / quantizer);
    # they only mean something for quantised modules, so 16 bits drops them.
    group_size: int | None = None
    quantizer: str | None = None
    scale_bits: int | None = None  # bits per stored group scale / minimum (16: float16)

    def __post_init__(self):
        if self.bits >= 16:
            for knob in ("group_size", "quantizer", "scale_bits"):
                object.__setattr__(self, knob, None)

    @property
    def untouched(self) -> bool:
        return self.bits == 16 and self.sparsity == 0.0 and self.rank_ratio >= 1.0


UNTOUCHED = ModuleSetting()


@dataclass(frozen=True)
class Methods:
    quantizer: str = "rtn"
    group_size: int = 128  # -1: one scale per output channel
    # true, false, or "auto": asymmetric (scale + minimum) below 8 bits, symmetric at 8 bits,
    # where a zero point buys nothing; this is llama.cpp's Q4_1 / Q5_1 / Q8_0 family.
    symmetric: bool | str = False
    pruner: str = "magnitude"
    prune_pattern: str = "unstructured"
    lowrank: str = "svd"
    # Bits of each quantisation group's scale (and minimum): 16 stores float16; 2..8 quantise them
    # per row ("double quantisation", compress/quant.py), e.g. 8 halves their cost at group 32.
    scale_bits: int = 16

    def symmetric_for(self, bits: int) -> bool:
        """Whether quantisation at `bits` is symmetric under these methods."""
        if self.symmetric == "auto":
            return bits >= 8
        return bool(self.symmetric)

    def for_setting(self, setting: ModuleSetting) -> "Methods":
        """These methods with a module setting's own group size and quantiser, where it has them."""
        if setting.group_size is None and setting.quantizer is None and setting.scale_bits is None:
            return self
        return replace(self, group_size=setting.group_size if setting.group_size is not None else self.group_size,
                       quantizer=setting.quantizer or self.quantizer,
                       scale_bits=setting.scale_bits if setting.scale_bits is not None else self.scale_bits)


@dataclass
class Plan:
    model: str
    modules: dict[str, ModuleSetting] = field(default_factory=dict)
    methods: Methods = field(default_factory=Methods)
    profile: str | None = None
    meta: dict = field(default_factory=dict)  # free-form provenance (trial number, robustness, ...)

    def setting(self, name: str) -> ModuleSetting:
        return self.modules.get(name, UNTOUCHED)

    def with_setting(self, name: str, setting: ModuleSetting) -> "Plan":
        modules = dict(self.modules)
        modules[name] = setting
        return replace(self, modules=modules)

    @classmethod
    def uniform(cls, model: str, names, setting: ModuleSetting, methods: Methods | None = None, **kw) -> "Plan":
        return cls(model=model, modules={n: setting for n in names}, methods=methods or Methods(), **kw)

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "toggle_plan": PLAN_VERSION,
            "model": self.model,
            "profile": self.profile,
            "methods": asdict(self.methods),
            "modules": {n: setting_dict(s) for n, s in self.modules.items()},
            **({"meta": self.meta} if self.meta else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary name, then rename)."""
        path = Path(path)
        atomic_write_yaml(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data, *, source: str = "plan") -> "Plan":
        if not isinstance(data, dict):
            raise InvalidInput(f"{source}: a plan is a mapping with keys model, methods, modules")
        unknown = set(data) - {"toggle_plan", "model", "profile", "methods", "modules", "meta"}
        if unknown:
            raise InvalidInput(
                f"{source}: unknown key(s) {key_list(unknown)}; "
                f"valid keys: toggle_plan, model, profile, methods, modules, meta"
            )
        version = data.get("toggle_plan", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise InvalidInput(f"{source}: toggle_plan: version {version!r} is not supported (expected {PLAN_VERSION})")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidInput(f"{source}: model: expected the model id the plan was made for (a string)")
        methods = parse_methods(data.get("methods") or {}, source)
        raw_modules = data.get("modules") or {}
        if not isinstance(raw_modules, dict):
            raise InvalidInput(f"{source}: modules: expected a mapping of module name -> {{bits, sparsity, rank_ratio}}")
        modules = {str(n): _parse_setting(v, f"{source}: modules.{n}") for n, v in raw_modules.items()}
        profile = data.get("profile")
        meta = data.get("meta") or {}
        return cls(model=model, modules=modules, methods=methods,
                   profile=str(profile) if profile is not None else None, meta=dict(meta) if isinstance(meta, dict) else {})

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        return cls.from_dict(read_yaml(path, what="plan file"), source=str(path))

    def validate_for(self, module_names) -> None:
        """Every module named by the plan must exist in the model."""
        known = set(module_names)
        unknown = [n for n in self.modules if n not in known]
        if unknown:
            sample = ", ".join(sorted(known)[:4])
            raise InvalidInput(
                f"plan for {self.model}: unknown module(s) {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''}; this model's modules look like {sample} "
                f"(`toggle modules MODEL` lists them all)"
            )


def setting_dict(s: ModuleSetting) -> dict:
    """A module setting as plan.yaml writes it (the per-module method overrides only when set)."""
    out = {"bits": s.bits, "sparsity": float(s.sparsity), "rank_ratio": float(s.rank_ratio)}
    if s.group_size is not None:
        out["group_size"] = s.group_size
    if s.quantizer is not None:
        out["quantizer"] = s.quantizer
    if s.scale_bits is not None:
        out["scale_bits"] = s.scale_bits
    return out


SETTING_KEYS = ("bits", "sparsity", "rank_ratio", "group_size", "quantizer", "scale_bits")
SCALE_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def _parse_setting(value, where: str) -> ModuleSetting:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a mapping with bits, sparsity, rank_ratio")
    unknown = set(value) - set(SETTING_KEYS)
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {key_list(unknown)}; valid: {', '.join(SETTING_KEYS)}")
    bits = value.get("bits", 16)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise InvalidInput(f"{where}.bits: {bits!r} is not valid; expected an integer 2..8, or 16 for untouched")
    sparsity = value.get("sparsity", 0.0)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0.0 <= sparsity < 1.0):
        raise InvalidInput(f"{where}.sparsity: {sparsity!r} is not valid; expected a number in [0, 1)")
    rank = value.get("rank_ratio", 1.0)
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not math.isfinite(rank) or not (0.0 < rank <= 1.0):
        raise InvalidInput(f"{where}.rank_ratio: {rank!r} is not valid; expected a number in (0, 1]")
    group = value.get("group_size")
    if group is not None:
        _check_group_size(group, f"{where}.group_size")
    quantizer = value.get("quantizer")
    if quantizer is not None and quantizer not in registry.names("quantizer"):
        raise InvalidInput(f"{where}.quantizer: {quantizer!r} is not valid; expected one of "
                           f"{', '.join(registry.names('quantizer'))}")
    scale_bits = value.get("scale_bits")
    if scale_bits is not None:
        _check_scale_bits(scale_bits, f"{where}.scale_bits")
    return ModuleSetting(bits=int(bits), sparsity=float(sparsity), rank_ratio=float(rank), group_size=group,
                         quantizer=quantizer, scale_bits=scale_bits)


def _check_scale_bits(v, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v not in SCALE_BITS:
        raise InvalidInput(f"{where}: {v!r} is not valid; expected an integer 2..8 (quantised group scales) "
                           f"or 16 (float16)")


def _check_group_size(g, where: str) -> None:
    if isinstance(g, bool) or not isinstance(g, int) or not (g == -1 or g >= 8):
        raise InvalidInput(f"{where}: {g!r}; expected an integer >= 8, or -1 for per-channel")


def parse_methods(value, source: str) -> Methods:
    if not isinstance(value, dict):
        raise InvalidInput(f"{source}: methods: expected a mapping")
    valid = Methods.__dataclass_fields__
    unknown = set(value) - set(valid)
    if unknown:
        raise InvalidInput(f"{source}: methods: unknown key(s) {key_list(unknown)}; valid: {', '.join(valid)}")
    m = Methods(**value)
    checks = [(family, getattr(m, family), registry.names(family)) for family in registry.FAMILIES]
    checks.append(("prune_pattern", m.prune_pattern, PRUNE_PATTERNS))
    for name, got, allowed in checks:
        if got not in allowed:
            raise InvalidInput(f"{source}: methods.{name}: {got!r} is not valid; expected one of {', '.join(allowed)}")
    _check_group_size(m.group_size, f"{source}: methods.group_size")
    _check_scale_bits(m.scale_bits, f"{source}: methods.scale_bits")
    if not isinstance(m.symmetric, bool) and m.symmetric != "auto":
        raise InvalidInput(f"{source}: methods.symmetric: {m.symmetric!r} is not valid; expected true, false or auto")
    return m

