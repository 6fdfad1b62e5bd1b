"""Search profiles (search/NAME.yaml): which knobs, at which granularity, with which values.

    granularity: block_part        # block | block_part | block_part_width | module
    trials: 60
    seed: 0
    knobs:     {bits: [16, 8, 4, 3], sparsity: [0.0, 0.3], rank_ratio: [1.0, 0.5]}
    embedding: {bits: [16, 8]}     # the embedding / LM head group
    methods:   {quantizer: rtn, group_size: 64, pruner: wanda, ...}   # as in plan.yaml
    sensitivity: {prompts: 4, levels: {bits: [4, 3]}}

Every error names the file, the field and what would be valid (exit code 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput, key_list
from ..files import read_yaml, resource_dir, search_profile
from ..formats import FORMATS
from ..compress import registry
from ..plan import ALLOWED_BITS, SCALE_BITS, Methods, parse_methods

GRANULARITIES = ("block", "block_part", "block_part_width", "module")
# group_size, quantizer and scale_bits override the profile's methods per group (None: the
# methods' own); they matter only where bits < 16.
KNOBS = ("bits", "group_size", "scale_bits", "quantizer", "sparsity", "rank_ratio")
UNTOUCHED_VALUE = {"bits": 16, "group_size": None, "scale_bits": None, "quantizer": None, "sparsity": 0.0,
                   "rank_ratio": 1.0}
METHODS = ("single", "measured")  # sensitivity profiling methods
_TOP_KEYS = ("granularity", "format", "trials", "seed", "knobs", "embedding", "methods", "sensitivity")


def compression_order(knob: str, values) -> tuple:
    """Values sorted from least to most compression (more bits, smaller groups, less sparsity, more
    rank first); quantisers keep the profile's order (the first is the default)."""
    if knob == "quantizer":
        return tuple(dict.fromkeys(values))
    if knob == "group_size":  # None (the methods' own) first, per-channel (-1) last
        return tuple(sorted(set(values), key=lambda g: (g is not None, g == -1, g or 0)))
    if knob == "scale_bits":  # None (the methods' own) first, then more bits first
        return tuple(sorted(set(values), key=lambda b: (b is not None, -(b or 0))))
    return tuple(sorted(set(values), reverse=(knob in ("bits", "rank_ratio"))))


@dataclass(frozen=True)
class Sensitivity:
    prompts: int = 4  # calibration prompts used for profiling
    levels: dict[str, tuple] = field(default_factory=lambda: {"bits": (4, 3)})
    # "single": every group alone at each of `levels` (full evaluations on `prompts`); "measured":
    # output errors of every option from calibration statistics, one probe evaluation per group
    method: str = "single"


@dataclass(frozen=True)
class SearchProfile:
    name: str
    granularity: str
    knobs: dict[str, tuple]  # knob -> allowed values, least compressed first
    embedding: dict[str, tuple]
    methods: Methods
    trials: int = 60
    seed: int = 0
    sensitivity: Sensitivity = field(default_factory=Sensitivity)
    source: str = ""
    format: str = "toggle"  # the artifact whose bytes the search counts (a toggle.formats name)

    @property
    def needs_stats(self) -> bool:
        """Whether a plan of this profile may use a method that reads calibration statistics: one of
        the methods' own, or a quantiser a `quantizer` knob offers (e.g. ggml's importance matrix)."""
        return bool(registry.stats_families(self.methods)
                    or any(registry.method("quantizer", q).needs_stats for q in self.quantizers))

    @property
    def quantizers(self) -> set[str]:
        """Every quantiser a plan of this profile may use: the methods' and those `quantizer` knobs offer."""
        offered = {q for knobs in (self.knobs, self.embedding) for q in knobs.get("quantizer", ()) if q}
        return offered | {self.methods.quantizer}

    @property
    def needs_llama_cpp(self) -> list[str]:
        """The quantisers of this profile that are llama.cpp's own (ggml, ggml_iq): they need it installed."""
        return sorted(q for q in self.quantizers if registry.method("quantizer", q).ggml)


def load_profile(name_or_path: str | Path) -> SearchProfile:
    """A bare name ('default') is looked up in search/; anything else is a path."""
    path = search_profile(str(name_or_path))
    if not path.exists():
        shipped = sorted(p.stem for p in resource_dir("search").glob("*.yaml"))
        raise InvalidInput(f"{name_or_path}: no such search profile (no such file, and no shipped profile of that "
                           f"name); shipped profiles: {', '.join(shipped) or 'none'}")
    return parse_profile(read_yaml(path, what="search profile"), name=path.stem, source=str(path))


def parse_profile(data, *, name: str = "profile", source: str = "profile") -> SearchProfile:
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a search profile is a mapping with keys {', '.join(_TOP_KEYS)}")
    _no_unknown(data, _TOP_KEYS, source)
    granularity = data.get("granularity", "block_part")
    if granularity not in GRANULARITIES:
        raise InvalidInput(f"{source}: granularity: {granularity!r} is not valid; expected one of {', '.join(GRANULARITIES)}")
    fmt = data.get("format", "toggle")
    if fmt not in FORMATS:
        raise InvalidInput(f"{source}: format: {fmt!r} is not valid; expected one of {', '.join(FORMATS)}")
    trials = _int(data.get("trials", 60), f"{source}: trials", minimum=1)
    seed = _int(data.get("seed", 0), f"{source}: seed", minimum=0)
    if "knobs" not in data:
        raise InvalidInput(f"{source}: knobs: missing; give the allowed values, e.g. knobs: {{bits: [16, 8, 4]}}")
    knobs = _knobs(data["knobs"], f"{source}: knobs")
    embedding = _knobs(data.get("embedding") or {"bits": [16]}, f"{source}: embedding")
    methods = parse_methods(data.get("methods") or {}, source)
    sensitivity = _sensitivity(data.get("sensitivity") or {}, f"{source}: sensitivity", knobs)
    return SearchProfile(name=name, granularity=granularity, knobs=knobs, embedding=embedding, methods=methods,
                         trials=trials, seed=seed, sensitivity=sensitivity, source=source, format=fmt)


def _knobs(value, where: str) -> dict[str, tuple]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a mapping of knob -> list of values ({', '.join(KNOBS)})")
    _no_unknown(value, KNOBS, where)
    out = {}
    for knob in KNOBS:
        values = value.get(knob, [UNTOUCHED_VALUE[knob]])
        if not isinstance(values, list) or not values:
            raise InvalidInput(f"{where}.{knob}: expected a non-empty list of values, e.g. {_example(knob)}")
        for v in values:
            _check_value(knob, v, f"{where}.{knob}")
        out[knob] = compression_order(knob, [_typed(knob, v) for v in values])
    return out


def _typed(knob: str, v):
    if v is None or knob == "quantizer":
        return v
    return int(v) if knob in ("bits", "group_size", "scale_bits") else float(v)


def _check_value(knob: str, v, where: str) -> None:
    if knob == "quantizer":
        if v is not None and v not in registry.names("quantizer"):
            raise InvalidInput(f"{where}: {v!r} is not valid; quantizers: {', '.join(registry.names('quantizer'))}")
        return
    if knob == "group_size" and v is not None and (isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v >= 8)):
        raise InvalidInput(f"{where}: {v!r} is not valid; group sizes are integers >= 8, or -1 for per-channel")
    if knob == "group_size":
        return
    if knob == "scale_bits":
        if v is not None and (isinstance(v, bool) or v not in SCALE_BITS):
            raise InvalidInput(f"{where}: {v!r} is not valid; scale_bits are integers 2..8 (quantised group "
                               f"scales) or 16 (float16)")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidInput(f"{where}: {v!r} is not a number; expected values like {_example(knob)}")
    if knob == "bits" and (not float(v).is_integer() or int(v) not in ALLOWED_BITS):
        raise InvalidInput(f"{where}: {v!r} is not valid; bits are integers 2..8, or 16 for untouched")
    if knob == "sparsity" and not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise InvalidInput(f"{where}: {v!r} is not valid; sparsity is a fraction in [0, 1)")
    if knob == "rank_ratio" and not (math.isfinite(v) and 0.0 < v <= 1.0):
        raise InvalidInput(f"{where}: {v!r} is not valid; rank_ratio is a fraction in (0, 1]")


def _sensitivity(value, where: str, knobs: dict[str, tuple]) -> Sensitivity:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a mapping with prompts and levels")
    _no_unknown(value, ("prompts", "levels", "method"), where)
    method = value.get("method", "single")
    if method not in METHODS:
        raise InvalidInput(f"{where}.method: {method!r} is not valid; expected one of {', '.join(METHODS)}")
    prompts = _int(value.get("prompts", 4), f"{where}.prompts", minimum=1)
    raw = value.get("levels", {"bits": [v for v in knobs["bits"] if v != 16][-2:]})
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}.levels: expected a mapping of knob -> list of values ({', '.join(KNOBS)})")
    _no_unknown(raw, KNOBS, f"{where}.levels")
    levels = {}
    for knob, values in raw.items():
        if not isinstance(values, list) or not values:
            raise InvalidInput(f"{where}.levels.{knob}: expected a non-empty list of values, e.g. {_example(knob)}")
        for v in values:
            _check_value(knob, v, f"{where}.levels.{knob}")
            if v not in knobs[knob]:
                raise InvalidInput(f"{where}.levels.{knob}: {v!r} is not one of the allowed knobs.{knob} values "
                                   f"{list(knobs[knob])}")
        levels[knob] = compression_order(knob, [_typed(knob, v) for v in values])
    return Sensitivity(prompts=prompts, levels=levels, method=method)


def _no_unknown(mapping: dict, valid, where: str) -> None:
    unknown = [k for k in mapping if k not in valid]
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {key_list(unknown)}; valid keys: {', '.join(valid)}")


def _int(v, where: str, *, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise InvalidInput(f"{where}: {v!r} is not valid; expected an integer >= {minimum}")
    return v


def _example(knob: str) -> str:
    return {"bits": "[16, 8, 4]", "group_size": "[32, 64, 128]", "scale_bits": "[16, 8, 6]", "quantizer": "[rtn, gptq]",
            "sparsity": "[0.0, 0.25, 0.5]", "rank_ratio": "[1.0, 0.5]"}[knob]
