"""Applying a plan: compose the operators per module and swap the result into the model.

For one module and its setting, the stored form is built in this order:
  1. low-rank (rank_ratio < 1): W -> A (out, k) @ B (k, in); the steps below act on each factor
     (B first: A's input statistics are those of B's output),
  2. pruning (sparsity > 0): zero the lowest-ranked weights of every row,
  3. quantisation (bits < 16): codes + float16 scales; bits == 16 stores float16 values.
The effective weight is what a loader decodes from that stored form, so evaluating a plan
with `PlanApplier` sees exactly the model `toggle apply` writes.

`PlanApplier` keeps the loaded weights, per-module results that plans share (de-quantisable
codes per (module, bits, quantiser), the SVD per module, the pruning order per module, AWQ's
scales per module and bit-width), and
a byte-bounded LRU of effective weights. `apply(plan)` points each changed module's weight
parameter at its effective weight (the same Parameter objects, new data: no copy, and a
plan seen before costs nothing), skipping modules whose setting did not change;
`restore()` points them back at the loaded weights. `with applier.applied(plan):` does both,
restoring on the way out (on an error too). The model's weights then alias cached tensors: do
not modify them in place while an applier manages the model.

Which method does what, needs what and stores what is read from the registry (registry.py).
"""
from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from ..modules import ModuleRef, compressible_modules, weight_matrix
from ..plan import Methods, ModuleSetting, Plan
from . import prune, registry
from .calibrate import ActivationStats
from .linalg import single_threaded
from .lowrank import SVDFactors, rank_for
from .packing import matrix_bytes
from .prune import keep_mask, kept_per_row
from .quant import QuantConfig, QuantizedMatrix
from .rules import methods_key, setting_problem


@dataclass
class StoredMatrix:
    """One matrix as the artifact stores it."""

    bits: int
    values: torch.Tensor | None  # float16 (out, in) when bits == 16; pruned entries are 0
    quant: QuantizedMatrix | None  # when bits < 16 (a compress.ggml.GGMLMatrix for the ggml quantizers)
    mask: torch.Tensor | None  # bool (out, in) kept positions, when pruned
    keep: int  # weights kept per row

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape) if self.quant is None else self.quant.shape

    @property
    def zero_exact(self) -> bool:
        """Pruned positions decode to exactly 0 without a mask."""
        return self.quant is None or self.quant.symmetric

    def storage(self) -> tuple[int, str]:
        """(stored bytes, sparse encoding), the same formula the cost model uses."""
        out_f, in_f = self.shape
        if self.quant is None:
            return matrix_bytes(out_f, in_f, self.keep, 16)
        q = self.quant
        return matrix_bytes(out_f, in_f, self.keep, q.bits, group_size=q.group_size, symmetric=q.symmetric,
                            input_scales=q.input_scales is not None, scale_bits=getattr(q, "scale_bits", 16))

    def dequantize(self) -> torch.Tensor:
        w = self.values.float() if self.quant is None else self.quant.dequantize()
        if self.mask is None or self.zero_exact:  # pruned positions already decode to 0
            return w
        return w.mul_(self.mask)


@dataclass
class StoredModule:
    ref: ModuleRef
    setting: ModuleSetting
    matrices: list[StoredMatrix]  # [W] or, factorised, [A (out, k), B (k, in)]

    @property
    def factorised(self) -> bool:
        return len(self.matrices) == 2

    def weight(self) -> torch.Tensor:
        """The effective (out, in) float32 weight."""
        if self.factorised:
            return self.matrices[0].dequantize() @ self.matrices[1].dequantize()
        return self.matrices[0].dequantize()


def validate_plan(plan: Plan, refs: list[ModuleRef], stats: ActivationStats | None = None) -> None:
    """Every module exists, every setting applies to its module, and methods that need
    calibration statistics have them. Raises InvalidInput naming the module and the field."""
    plan.validate_for(r.name for r in refs)
    by_name = {r.name: r for r in refs}
    for name, setting in plan.modules.items():
        problem = setting_problem(by_name[name], setting, plan.methods)
        if problem:
            raise InvalidInput(f"plan for {plan.model}: modules.{name}: {problem}")
    missing: dict[tuple[str, str], list[str]] = {}  # (family, method) -> modules without statistics
    for name, setting in plan.modules.items():
        methods = plan.methods.for_setting(setting)
        for family in registry.stats_families(methods):
            if registry.acts(family, setting) and by_name[name].is_linear and (stats is None or name not in stats):
                missing.setdefault((family, getattr(methods, family)), []).append(name)
    for (family, method), names in missing.items():
        raise InvalidInput(
            f"plan for {plan.model}: methods.{family}: {method} needs calibration activation "
            f"statistics for {names[0]}{' and others' if len(names) > 1 else ''}; collect them with "
            f"toggle.compress.collect_stats (or record them in the plan's meta.calibration_stats)"
        )


class PlanApplier:
    """Swap plans' effective weights into `model` in place; `restore()` puts the base back.

        applier = PlanApplier(lm.model, stats=stats)
        applier.apply(plan)      # the model now computes what the artifact of `plan` computes
        ...evaluate lm.model...
        applier.restore()

    Memory: the loaded weights, the caches, and the effective weights of the applied plan
    (shared with the LRU when they fit in it); never a model copy per plan.
    """

    def __init__(self, model: torch.nn.Module, refs: list[ModuleRef] | None = None,
                 stats: ActivationStats | None = None, cache_limit_bytes: int = 2 << 30):
        self.model = model
        self.refs = list(refs) if refs is not None else compressible_modules(model)
        self.stats = stats
        self.cache_limit_bytes = int(cache_limit_bytes)
        self._by_name = {r.name: r for r in self.refs}
        self._modules = {r.name: model.get_submodule(r.name) for r in self.refs}
        # The loaded weights are kept as they are (restore() points the model back at them); a
        # GPT-2 Conv1D (stored (in, out)) also gets an (out, in) copy to compute from.
        self._original = {r.name: self._modules[r.name].weight.data for r in self.refs}
        self._base = {r.name: weight_matrix(self._modules[r.name], r).detach().contiguous() for r in self.refs}
        self._dtype = next(iter(self._base.values())).dtype
        self._applied: dict[str, tuple] = {}  # module -> key of the setting in the model; absent: base
        self._quant: dict[tuple, QuantizedMatrix] = {}  # dense full-rank codes per (module, bits, quantiser)
        self._order: dict[tuple, torch.Tensor] = {}  # pruning order per (module, pruner, pattern)
        self._svd: dict[tuple, SVDFactors] = {}  # full-rank factors per (module, method)
        self._prepared: dict[tuple, object] = {}  # a quantiser's per-matrix state (AWQ's input scales)
        self._samples: OrderedDict[tuple, tuple] = OrderedDict()  # output_error's per-module inputs
        # output_error may be called from several threads (measure.all_group_errors): what it
        # reads from or writes to the caches is done under this lock
        self._lock = threading.RLock()
        self._lru: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # effective weights
        self._lru_bytes = 0
        self.counters = {"applied": 0, "skipped": 0, "lru_hits": 0, "composed": 0}

    # --- public -------------------------------------------------------------------------
    def apply(self, plan: Plan) -> list[str]:
        """Make the model compute `plan`. Returns the names of the modules that changed."""
        validate_plan(plan, self.refs, self.stats)
        changed = []
        for ref in self.refs:
            setting = plan.setting(ref.name)
            key = (setting, methods_key(setting, plan.methods))
            if self._applied.get(ref.name) == key:
                self.counters["skipped"] += 1
                continue
            weight = self.effective_weight(ref, setting, plan.methods)
            self._modules[ref.name].weight.data = weight.t() if ref.transposed else weight
            self._applied[ref.name] = key
            changed.append(ref.name)
        self.counters["applied"] += len(changed)
        return changed

    def restore(self) -> list[str]:
        """Put the base weights back into every module a plan changed."""
        changed = list(self._applied)
        for name in changed:
            self._modules[name].weight.data = self._original[name]
        self._applied.clear()
        return changed

    @contextmanager
    def applied(self, plan: Plan | None):
        """The model computes `plan` inside the block (None: the base model) and its own weights
        again after it, however the block ends."""
        if plan is None:
            self.restore()
        else:
            self.apply(plan)
        try:
            yield self.model
        finally:
            self.restore()

    def block_signatures(self, blocks: int) -> list[tuple]:
        """Per transformer block, what the model now holds in the embedding and in every block up
        to and including it (each module's applied setting, or None for its loaded weights): two
        moments with equal signatures for a block give it the same output on the same inputs
        (trace/replay.py). An LM head outside the blocks changes no block's output."""
        embed, per_block = [], [[] for _ in range(blocks)]
        for ref in self.refs:
            state = (ref.name, self._applied.get(ref.name))
            if ref.block is not None and ref.block < blocks:
                per_block[ref.block].append(state)
            elif ref.part == "embed":
                embed.append(state)
        out, signature = [], tuple(embed)
        for states in per_block:
            signature = (signature, tuple(states))
            out.append(signature)
        return out

    def release_caches(self, keep: Plan | None = None) -> int:
        """Drop the effective weights of every plan but `keep` (which `apply(keep)` then finds
        without composing them) and output_error's samples: what a finished search no longer
        needs before its held-out audit. The quantised codes, pruning orders, factors and
        prepared states stay (writing the winner's artifact reads them). Returns the bytes
        dropped; freed memory goes back to the system where the C library allows it."""
        wanted = set()
        if keep is not None:
            wanted = {(r.name, s, methods_key(s, keep.methods)) for r in self.refs for s in [keep.setting(r.name)]}
        samples = self.cache_bytes["error_samples"]
        lru = 0
        for key in [k for k in self._lru if k not in wanted]:
            lru += self._lru.pop(key).nbytes
        self._lru_bytes -= lru
        self._samples.clear()
        trim_heap()
        return lru + samples

    def base_weight(self, name: str) -> torch.Tensor:
        return self._base[name]

    def effective_weight(self, ref: ModuleRef | str, setting: ModuleSetting, methods: Methods) -> torch.Tensor:
        """The (out, in) weight the stored form of `setting` decodes to, in the model's dtype."""
        ref = self._by_name[ref] if isinstance(ref, str) else ref
        key = (ref.name, setting, methods_key(setting, methods))
        cached = self._lru.get(key)
        if cached is not None:
            self._lru.move_to_end(key)
            self.counters["lru_hits"] += 1
            return cached
        stored = self.stored(ref, setting, methods)
        with single_threaded():
            weight = stored.weight().to(self._dtype)
        self._remember(key, weight)
        return weight

    def stored(self, ref: ModuleRef | str, setting: ModuleSetting, methods: Methods) -> StoredModule:
        """The stored form of one module under `setting` (what the artifact writer serialises)."""
        ref = self._by_name[ref] if isinstance(ref, str) else ref
        methods = methods.for_setting(setting)
        problem = setting_problem(ref, setting, methods)
        if problem:
            raise InvalidInput(f"{ref.name}: {problem}")
        self.counters["composed"] += 1
        gram = self._gram(ref) if registry.needs_stats(setting, methods) else None
        with single_threaded():  # many small ops: see linalg.py
            if setting.rank_ratio < 1:
                return StoredModule(ref, setting, self._factor_matrices(ref, setting, methods, gram))
            return StoredModule(ref, setting, [self._full_matrix(ref, setting, methods, gram)])

    def output_error(self, ref: ModuleRef | str, setting: ModuleSetting, methods: Methods, *,
                     max_rows: int = 512, full: bool = False) -> float:
        """Relative output error of one module under `setting`: E||(W' - W) x||^2 / E||W x||^2 over
        the calibration inputs (tr(dW G dW^T) / tr(W G W^T) with the input Gram matrix G), or the
        relative Frobenius error for a module without statistics. Up to `max_rows` evenly spaced
        rows are used: an estimate of the same ratio at a fraction of the cost. For round-to-nearest
        quantisation alone, whose errors are independent across a row's inputs, the cross terms
        of tr(dW G dW^T) average out and its diagonal part is used: sum_i G_ii ||dW[:, i]||^2, the
        statistic llama.cpp's importance matrix weights its quantisers by (0.96-1.03 times the full
        product for 90% of the default profile's options on SmolLM2-135M, with no matmul;
        benchmarks/bench_output_error.py). `full`: the full product whatever the method."""
        ref = self._by_name[ref] if isinstance(ref, str) else ref
        rows, w, gram, energy = self._error_sample(ref, max_rows)
        diff = self._rows_weight(ref, setting, methods, rows) - w
        if gram is None:
            return float(diff.pow(2).sum()) / energy
        if not full and self._plain_rounding(setting, methods):
            return float((diff.pow(2).sum(0) * torch.diagonal(gram)).sum()) / energy
        return float(((diff @ gram) * diff).sum()) / energy

    def _error_sample(self, ref: ModuleRef, max_rows: int) -> tuple:
        """output_error's per-module inputs, the same for every option: the sampled rows, their
        float weights, the summed Gram matrix (the ratio does not depend on G's scale) and the
        denominator. The last few modules are kept: profiling prices a group's options module by
        module, so a group's modules come round once per option."""
        key = (ref.name, max_rows)
        with self._lock:
            if key in self._samples:
                self._samples.move_to_end(key)
                return self._samples[key]
            w = self._base[ref.name]
            rows = torch.linspace(0, w.shape[0] - 1, min(max_rows, w.shape[0])).round().long().unique()
            w = w[rows].float()
            gram = self._gram(ref, summed=True)
            gram = None if gram is None else gram.float()
            energy = w.pow(2).sum() if gram is None else ((w @ gram) * w).sum()
            sample = self._samples[key] = (rows, w, gram, float(energy.clamp(min=1e-30)))
            if len(self._samples) > 16:
                self._samples.popitem(last=False)
            return sample

    def _plain_rounding(self, setting: ModuleSetting, methods: Methods) -> bool:
        """Whether `setting` only rounds each weight on its own (round-to-nearest quantisation, no
        statistics, no pruning or factors): its errors are then independent of the inputs."""
        quantizer = registry.chosen("quantizer", methods.for_setting(setting))
        return _row_by_row(setting, quantizer) and not quantizer.needs_stats

    def _rows_weight(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` of the effective weight under `setting`. Plain quantisation is row by row,
        so only those rows are quantised, and nothing is cached: profiling prices every option
        of every module once, and caching them all would hold a model's worth of codes per option."""
        m = methods.for_setting(setting)
        has_stats = self._has_stats(ref)
        if not _row_by_row(setting, registry.chosen("quantizer", m, has_stats=has_stats)):
            with self._lock:  # composed through the applier's caches
                return self.stored(ref, setting, methods).weight().float()[rows]
        problem = setting_problem(ref, setting, m)
        if problem:
            raise InvalidInput(f"{ref.name}: {problem}")
        with single_threaded():
            part = self._base[ref.name][rows]
            gram = self._gram(ref) if has_stats and registry.needs_stats(setting, m) else None
            return self._matrix(part, setting, m, gram, key=None).dequantize().float()

    @property
    def cache_bytes(self) -> dict[str, int]:
        """Bytes held by each cache ('base_copies': (out, in) copies of Conv1D weights)."""
        return {
            "base_copies": sum(t.nbytes for n, t in self._base.items()
                               if t.data_ptr() != self._original[n].data_ptr()),
            "quantised": sum(q.nbytes for q in self._quant.values()),
            "prepared": sum(getattr(t, "nbytes", 0) for t in self._prepared.values()),
            "prune_order": sum(t.nbytes for t in self._order.values()),
            "svd": sum(f.nbytes for f in self._svd.values()),
            "effective_lru": self._lru_bytes,
            "error_samples": sum(t.nbytes for sample in self._samples.values() for t in sample[1:3] if t is not None),
        }

    # --- composition ----------------------------------------------------------------------
    def _has_stats(self, ref: ModuleRef) -> bool:
        return self.stats is not None and ref.name in self.stats

    def _gram(self, ref: ModuleRef, *, summed: bool = False) -> torch.Tensor | None:
        """The module's input Gram matrix E[x x^T] (or its sum over tokens), on the weights' device."""
        if not self._has_stats(ref):
            return None
        gram = self.stats.gram_sum(ref.name) if summed else self.stats.gram(ref.name)
        return gram.to(self._base[ref.name].device)

    def _full_matrix(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods,
                     gram: torch.Tensor | None) -> StoredMatrix:
        w = self._base[ref.name]
        order = None
        if setting.sparsity > 0:
            pruner = registry.chosen("pruner", methods, has_stats=gram is not None)
            key = (ref.name, pruner.name, methods.prune_pattern)
            order = self._order.get(key)
            if order is None:
                order = self._order[key] = _prune_order(pruner, w, methods.prune_pattern, gram)
        elif setting.bits < 16:
            qcfg = _quant_config(setting, methods, gram)
            key = (ref.name, qcfg)
            q = self._quant.get(key)
            if q is None:
                q = self._quant[key] = self._quantize(w, w, qcfg, gram, None, key=(ref.name,))
            return StoredMatrix(bits=setting.bits, values=None, quant=q, mask=None, keep=ref.in_features)
        return self._matrix(w, setting, methods, gram, order=order, key=(ref.name,))

    def _factor_matrices(self, ref: ModuleRef, setting: ModuleSetting, methods: Methods,
                         gram: torch.Tensor | None) -> list[StoredMatrix]:
        """[A, B] of a factorised module, each pruned and quantised; B first, since A's
        input statistics are those of B's output."""
        k = rank_for(setting.rank_ratio, ref.out_features, ref.in_features)
        factors = self._factors(ref, methods, gram)
        a, b = factors.truncate(k)
        order_b = order_a = None
        if setting.sparsity > 0:
            pruner = registry.chosen("pruner", methods, has_stats=gram is not None)
            pattern = methods.prune_pattern
            # B's rows are a prefix of the full factor's rows: one ordering serves every rank.
            key = (ref.name, "B", methods.lowrank, pruner.name, pattern)
            full = self._order.get(key)
            if full is None:
                full = self._order[key] = _prune_order(pruner, factors.right, pattern, gram)
            order_b = full[:k]
            if not pruner.needs_stats:  # A's ordering depends on k only
                key = (ref.name, "A", methods.lowrank, pruner.name, pattern, k)
                order_a = self._order.get(key)
                if order_a is None:
                    order_a = self._order[key] = _prune_order(pruner, a, pattern, None)
        stored_b = self._matrix(b, setting, methods, gram, order=order_b, key=(ref.name, "B", k))
        gram_a = None
        a_needs_stats = any(registry.acts(f, setting) and registry.chosen(f, methods).needs_stats
                            for f in ("quantizer", "pruner"))
        if gram is not None and a_needs_stats:
            b_eff = stored_b.dequantize()
            gram_a = b_eff @ gram @ b_eff.T  # E[(B x)(B x)^T]: what factor A sees
        return [self._matrix(a, setting, methods, gram_a, order=order_a), stored_b]

    def _matrix(self, w: torch.Tensor, setting: ModuleSetting, methods: Methods, gram: torch.Tensor | None,
                order: torch.Tensor | None = None, key: tuple | None = None) -> StoredMatrix:
        """Prune then quantise one matrix (a full weight or a factor)."""
        mask, keep, pruned = None, w.shape[1], w
        if setting.sparsity > 0:
            if order is None:
                pruner = registry.chosen("pruner", methods, has_stats=gram is not None)
                order = _prune_order(pruner, w, methods.prune_pattern, gram)
            mask = keep_mask(order, setting.sparsity, methods.prune_pattern)
            keep = kept_per_row(w.shape[1], setting.sparsity, methods.prune_pattern)
            pruned = w * mask
        if setting.bits == 16:
            return StoredMatrix(bits=16, values=pruned.half(), quant=None, mask=mask, keep=keep)
        q = self._quantize(w, pruned, _quant_config(setting, methods, gram), gram, mask, key)
        return StoredMatrix(bits=setting.bits, values=None, quant=q, mask=mask, keep=keep)

    def _quantize(self, unpruned: torch.Tensor, w: torch.Tensor, qcfg: QuantConfig, gram: torch.Tensor | None,
                  mask: torch.Tensor | None, key: tuple | None) -> QuantizedMatrix:
        """A quantiser's prepared state (AWQ's scales) is computed once per (matrix, bits, group,
        symmetric) on the unpruned matrix and reused for its pruned versions; a matrix without a
        cache key (a factor whose shape depends on the rank) is quantised from scratch."""
        method = registry.method("quantizer", qcfg.method)
        prepared = None
        if method.prepare is not None and key is not None:
            prepared = self._prepared.get((*key, qcfg))
            if prepared is None:
                prepared = self._prepared[(*key, qcfg)] = method.prepare(unpruned, qcfg, gram)
        return method.quantize(w, qcfg, gram, mask, prepared)

    def _factors(self, ref: ModuleRef, methods: Methods, gram: torch.Tensor | None) -> SVDFactors:
        method = registry.chosen("lowrank", methods, has_stats=gram is not None)
        key = (ref.name, method.name)
        factors = self._svd.get(key)
        if factors is None:
            factors = self._svd[key] = method.factor(self._base[ref.name], gram)
        return factors

    def _remember(self, key: tuple, weight: torch.Tensor) -> None:
        size = weight.nbytes
        if size > self.cache_limit_bytes:
            return
        self._lru[key] = weight
        self._lru_bytes += size
        while self._lru_bytes > self.cache_limit_bytes:
            _, old = self._lru.popitem(last=False)
            self._lru_bytes -= old.nbytes


def _quant_config(setting: ModuleSetting, methods: Methods, gram: torch.Tensor | None) -> QuantConfig:
    # Without statistics (an untied embedding is a lookup, not a matmul) awq/gptq fall back to RTN.
    method = registry.chosen("quantizer", methods, has_stats=gram is not None).name
    return QuantConfig(bits=setting.bits, group_size=methods.group_size, symmetric=methods.symmetric_for(setting.bits),
                       method=method, scale_bits=methods.scale_bits)


def _prune_order(pruner: registry.Method, w: torch.Tensor, pattern: str, gram: torch.Tensor | None) -> torch.Tensor:
    return prune.prune_order(pruner.score(w, _norm(gram)), pattern)


def _norm(gram: torch.Tensor | None) -> torch.Tensor | None:
    # Wanda ranks within a row, so the norm's overall scale (mean vs sum over tokens) is irrelevant.
    return None if gram is None else torch.diagonal(gram).clamp(min=0).sqrt()


def _row_by_row(setting: ModuleSetting, quantizer) -> bool:
    """Whether `setting` is quantisation alone by a method that quantises each row on its own
    (nothing prepared from the whole matrix): then a few rows can be quantised by themselves."""
    return setting.sparsity == 0 and setting.rank_ratio == 1 and setting.bits < 16 and quantizer.prepare is None


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim): torch frees many
    tensors of a few MB each into the heap, which glibc otherwise keeps (the process's resident
    size stays at its high-water mark). A no-op where the C library has no malloc_trim."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
