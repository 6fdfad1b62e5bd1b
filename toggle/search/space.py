"""The search space: a profile applied to a model's compressible modules.

A *group* is a set of modules that share one setting (a block, a block's attention or MLP
part, a part's modules of one input width, or one module, per the profile's granularity; the
embedding / LM head is its own group).
Each group has up to three ordinal knobs (bits, sparsity, rank_ratio) whose values are ordered
from least to most compression. A knob with more than one allowed value is a *dimension*: an
Optuna categorical parameter named 'GROUP:KNOB', e.g. 'b03.attn:bits'.

Points are handled three ways: Optuna params (dict), a Plan, and an integer index vector
(one ordinal index per dimension, 0 = least compressed) that the samplers work on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from optuna.distributions import CategoricalDistribution

from ..modules import ModuleRef
from ..plan import Methods, ModuleSetting, Plan
from .profile import KNOBS, UNTOUCHED_VALUE, SearchProfile


@dataclass(frozen=True)
class Group:
    name: str
    modules: tuple[str, ...]
    choices: dict[str, tuple]  # knob -> allowed values, least compressed first
    signature: tuple  # shapes and roles of its modules: groups with equal signatures cost the same


@dataclass(frozen=True)
class Dim:
    group: int  # index into SearchSpace.groups
    knob: str
    choices: tuple

    def param(self, groups) -> str:
        return f"{groups[self.group].name}:{self.knob}"


def _group_key(ref: ModuleRef, granularity: str) -> str:
    if ref.block is None:
        return "embed"
    if granularity == "block":
        return f"b{ref.block:02d}"
    if granularity in ("block_part", "block_part_width"):  # the latter split by width afterwards
        return f"b{ref.block:02d}.{ref.part}"
    return f"b{ref.block:02d}.{ref.component}"


def _split_by_width(members: dict[str, list[ModuleRef]]) -> dict[str, list[ModuleRef]]:
    """Granularity block_part_width: a block part whose modules' rows differ in length is split by
    row length (the input width), since formats choose block types per row length (llama.cpp's
    K-quants need rows of a multiple of 256 weights: on a Llama-style model the MLP's down
    projection can take them where its gate and up projections cannot). A split group is named
    after its modules, e.g. 'b03.mlp.gate_proj+up_proj' and 'b03.mlp.down_proj'."""
    out: dict[str, list[ModuleRef]] = {}
    for key, rs in members.items():
        widths = sorted({r.in_features for r in rs})
        if len(widths) == 1:
            out[key] = rs
            continue
        for w in widths:
            part = [r for r in rs if r.in_features == w]
            out[f"{key}.{'+'.join(r.component.split('.')[-1] for r in part)}"] = part
    return out


class SearchSpace:
    def __init__(self, model_id: str, refs: list[ModuleRef], profile: SearchProfile):
        self.model_id = model_id
        self.profile = profile
        self.methods = profile.methods
        members: dict[str, list[ModuleRef]] = {}
        for ref in refs:
            members.setdefault(_group_key(ref, profile.granularity), []).append(ref)
        if profile.granularity == "block_part_width":
            members = _split_by_width(members)
        self.groups: list[Group] = []
        for key, rs in members.items():
            choices = profile.embedding if key == "embed" else profile.knobs
            signature = tuple((r.out_features, r.in_features, r.part, r.tied, r.transposed) for r in rs)
            self.groups.append(Group(key, tuple(r.name for r in rs), dict(choices), signature))
        self.dims: list[Dim] = [
            Dim(gi, knob, g.choices[knob]) for gi, g in enumerate(self.groups) for knob in KNOBS if len(g.choices[knob]) > 1
        ]
        self.params = [d.param(self.groups) for d in self.dims]
        self.sizes = np.array([len(d.choices) for d in self.dims], dtype=np.int64)
        self._index = {p: i for i, p in enumerate(self.params)}
        self._doc: dict | None = None

    # --- Optuna -----------------------------------------------------------------------------
    def distributions(self) -> dict[str, CategoricalDistribution]:
        return {p: CategoricalDistribution(list(d.choices)) for p, d in zip(self.params, self.dims)}

    def suggest(self, trial) -> dict:
        """Ask the trial for every dimension (the sampler has usually decided them already)."""
        return {p: trial.suggest_categorical(p, list(d.choices)) for p, d in zip(self.params, self.dims)}

    # --- conversions ------------------------------------------------------------------------
    def plan(self, params: dict, **meta) -> Plan:
        return plan_from_groups(self.to_dict(), params, **meta)

    def to_dict(self) -> dict:
        """The groups as space.json stores them: enough to turn trial parameters into a plan."""
        if self._doc is None:
            self._doc = {
                "model": self.model_id, "profile": self.profile.name, "granularity": self.profile.granularity,
                "methods": asdict(self.methods),
                "groups": [{"name": g.name, "modules": list(g.modules), "choices": {k: list(v) for k, v in g.choices.items()}}
                           for g in self.groups],
            }
        return self._doc

    def to_index(self, params: dict) -> np.ndarray:
        return np.array([d.choices.index(params[p]) if p in params else 0 for p, d in zip(self.params, self.dims)],
                        dtype=np.int64)

    def to_params(self, index) -> dict:
        return {p: d.choices[int(i)] for p, d, i in zip(self.params, self.dims, index)}

    def unit(self, index: np.ndarray) -> np.ndarray:
        """Index vectors scaled to [0, 1] per dimension (GP inputs)."""
        return np.asarray(index, dtype=np.float64) / np.maximum(self.sizes - 1, 1)

    def dim_of(self, group: str, knob: str) -> int | None:
        return self._index.get(f"{group}:{knob}")

    # --- special points ---------------------------------------------------------------------
    def untouched(self) -> np.ndarray:
        return np.zeros(len(self.dims), dtype=np.int64)

    def most_compressed(self) -> np.ndarray:
        return self.sizes - 1

    def uniform(self, setting: dict) -> np.ndarray:
        """Every group at `setting` (knob -> value); a group that does not allow a value takes the
        closest allowed one that compresses no more (the embedding group has its own values)."""
        index = self.untouched()
        for i, d in enumerate(self.dims):
            want = setting.get(d.knob, d.choices[0])
            if want in d.choices:
                index[i] = d.choices.index(want)
            else:
                rank = _compression_rank(d.knob, want)
                ok = [j for j, v in enumerate(d.choices) if _compression_rank(d.knob, v) <= rank]
                index[i] = max(ok) if ok else 0
        return index

    def uniform_ladder(self) -> list[dict]:
        """Every uniform setting of the block groups (the product of their allowed values)."""
        block = next((g for g in self.groups if g.name != "embed"), self.groups[0])
        ladder = [{}]
        for knob in KNOBS:
            ladder = [dict(s, **{knob: v}) for s in ladder for v in block.choices[knob]]
        return ladder

    def describe(self) -> str:
        return (f"{len(self.groups)} groups ({self.profile.granularity}), {len(self.dims)} dimensions, "
                f"{float(np.prod(self.sizes.astype(float))):.2e} plans")


def plan_from_groups(doc: dict, params: dict, **meta) -> Plan:
    """The plan of a point: every group's modules at the group's setting, knobs missing from
    `params` at their least compressed value (`doc`: SearchSpace.to_dict(), or space.json)."""
    modules = {}
    for g in doc["groups"]:
        values = {k: params.get(f"{g['name']}:{k}", g["choices"].get(k, [UNTOUCHED_VALUE[k]])[0]) for k in KNOBS}
        setting = setting_of(values)
        if not setting.untouched:
            modules.update({name: setting for name in g["modules"]})
    return Plan(model=doc["model"], modules=modules, methods=Methods(**doc["methods"]), profile=doc["profile"],
                meta=dict(meta))


def setting_of(values: dict) -> ModuleSetting:
    """The module setting of a group's knob values (knob -> value)."""
    return ModuleSetting(bits=int(values["bits"]), sparsity=float(values["sparsity"]),
                         rank_ratio=float(values["rank_ratio"]), group_size=values.get("group_size"),
                         quantizer=values.get("quantizer"), scale_bits=values.get("scale_bits"))


def _compression_rank(knob: str, value) -> float:
    """Larger = more compression, comparable across values of one knob (quantisers: none)."""
    if knob == "quantizer":
        return 0.0
    if knob == "group_size":
        return float("inf") if value == -1 else float(value or 0)
    if knob == "scale_bits":
        return -float(value or 16)
    return -float(value) if knob in ("bits", "rank_ratio") else float(value)
