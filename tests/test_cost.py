"""Cost model: bytes, encodings, FLOPs and bit-operations computed by hand on the tiny models."""
import random

import pytest

from toggle.compress.apply import PlanApplier
from toggle.cost import CostModel
from toggle.formats.gguf import gguf_type_for
from toggle.formats.gguf import tensor_bytes as gguf_tensor_bytes
from toggle.errors import InvalidInput
from toggle.load import load_model
from toggle.modules import compressible_modules
from toggle.plan import Methods, ModuleSetting, Plan

GATE = "model.layers.0.mlp.gate_proj"  # (128, 64) in the tiny Llama


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model(str(tiny_llama_dir))


def _module_bytes(cm, name, setting, methods=Methods()):
    ref = next(r for r in cm.refs if r.name == name)
    return cm.module_cost(ref, setting, methods)


def test_reference_sizes(llama):
    cm = CostModel(llama.model)
    # embedding (tied head) 384x64, per block 36,864 matrix weights and two norms of 64, final norm 64
    params = 384 * 64 + 2 * (36_864 + 128) + 64
    assert cm.parameter_count == params
    assert cm.base16_bytes == 2 * params
    assert cm.loaded_bytes == 4 * params  # loaded as float32
    assert cm.other_bytes == 4 * (2 * 128 + 64)  # norms are stored as loaded
    empty = cm.of(Plan(llama.model_id, {}))
    assert empty.bytes == 2 * (384 * 64 + 2 * 36_864) + cm.other_bytes
    assert empty.flops_per_token == cm.base_flops_per_token and empty.flops_reduction == 1.0


def test_quantised_module_bytes_by_hand(llama):
    cm = CostModel(llama.model)
    n = 128 * 64
    assert _module_bytes(cm, GATE, ModuleSetting(bits=4), Methods(group_size=32)).bytes == n // 2 + 128 * 2 * 4
    assert _module_bytes(cm, GATE, ModuleSetting(bits=4), Methods(group_size=32, symmetric=True)).bytes == n // 2 + 128 * 2 * 2
    assert _module_bytes(cm, GATE, ModuleSetting(bits=4), Methods(group_size=-1, symmetric=True)).bytes == n // 2 + 128 * 2
    # 3 bits, group 128 wider than the 64 inputs: one (partial) group per row
    assert _module_bytes(cm, GATE, ModuleSetting(bits=3), Methods(group_size=128)).bytes == 3 * n // 8 + 128 * 4
    awq = _module_bytes(cm, GATE, ModuleSetting(bits=4), Methods(group_size=32, quantizer="awq")).bytes
    assert awq == n // 2 + 128 * 2 * 4 + 2 * 64  # plus one float16 scale per input channel
    # quantised group parameters: 2 groups per row at 8 bits for scales and for minimums, plus a
    # float16 step and base per row for each
    scaled = _module_bytes(cm, GATE, ModuleSetting(bits=4, scale_bits=8), Methods(group_size=32)).bytes
    assert scaled == n // 2 + 2 * (128 * 2 + 128 * 4)
    six = _module_bytes(cm, GATE, ModuleSetting(bits=4), Methods(group_size=32, symmetric=True, scale_bits=6)).bytes
    assert six == n // 2 + (128 * 2 * 6 // 8 + 128 * 4)


def test_sparse_encodings_pick_the_cheapest(llama):
    cm = CostModel(llama.model)
    n = 128 * 64
    low = _module_bytes(cm, GATE, ModuleSetting(sparsity=0.05))  # keeps 61 of 64 per row
    assert low.encodings == ("dense",) and low.bytes == 2 * n
    half = _module_bytes(cm, GATE, ModuleSetting(sparsity=0.5))
    assert half.encodings == ("bitmask",) and half.bytes == n // 8 + 2 * 128 * 32
    high = _module_bytes(cm, GATE, ModuleSetting(sparsity=0.9))  # keeps 6 per row
    assert high.encodings == ("indices",) and high.bytes == 128 * 6 * (1 + 2)
    # Asymmetric codes cannot decode a pruned weight to 0: never dense when pruned.
    asym = _module_bytes(cm, GATE, ModuleSetting(bits=4, sparsity=0.05), Methods(group_size=32))
    assert asym.encodings == ("bitmask",) and asym.bytes == n // 8 + (128 * 61 * 4 + 7) // 8 + 128 * 2 * 4
    sym = _module_bytes(cm, GATE, ModuleSetting(bits=4, sparsity=0.05), Methods(group_size=32, symmetric=True))
    assert sym.encodings == ("dense",)


def test_flops_and_bitops(llama):
    cm = CostModel(llama.model, context_length=100)
    attention = 2 * 4 * 100 * 4 * 16  # layers x (QK + AV) x context x heads x head_dim
    assert cm.attention_flops_per_token == attention
    assert cm.base_flops_per_token == attention + 2 * (384 * 64 + 2 * 36_864)  # the tied head is a matmul
    dense = _module_bytes(cm, GATE, ModuleSetting())
    assert dense.flops == 2 * 128 * 64 and dense.bitops == 128 * 64 * 16 * 16
    four = _module_bytes(cm, GATE, ModuleSetting(bits=4))
    assert four.flops == dense.flops and four.bitops == 128 * 64 * 4 * 16
    factored = _module_bytes(cm, GATE, ModuleSetting(rank_ratio=0.5))  # k = 32: two smaller matmuls
    assert factored.flops == 2 * (128 * 32 + 32 * 64) and factored.bytes == 2 * (128 * 32 + 32 * 64)
    both = _module_bytes(cm, GATE, ModuleSetting(sparsity=0.5, rank_ratio=0.5))
    assert both.flops == 2 * (128 * 16 + 32 * 32)
    assert both.encodings == ("bitmask", "bitmask")
    plan = Plan(llama.model_id, {GATE: ModuleSetting(sparsity=0.5)})
    cost = cm.of(plan)
    assert cost.flops_per_token == cm.base_flops_per_token - 128 * 64
    assert cost.flops_reduction > 1


def test_monotone_in_bits_sparsity_and_rank(llama):
    cm = CostModel(llama.model)
    for ref in cm.refs:
        by_bits = [cm.module_cost(ref, ModuleSetting(bits=b), Methods()).bytes for b in (2, 3, 4, 5, 6, 7, 8, 16)]
        assert by_bits == sorted(by_bits) and len(set(by_bits)) == len(by_bits)
        by_sparsity = [cm.module_cost(ref, ModuleSetting(sparsity=s), Methods()).flops for s in (0, 0.25, 0.5, 0.75)]
        assert by_sparsity == sorted(by_sparsity, reverse=True)
        if ref.part != "embed":
            by_rank = [cm.module_cost(ref, ModuleSetting(rank_ratio=r), Methods()).bytes for r in (0.1, 0.25, 0.5)]
            assert by_rank == sorted(by_rank)


def test_cost_matches_what_the_applier_stores(llama):
    """The cost model's formulas and the stored matrices agree for random settings."""
    cm = CostModel(llama.model)
    applier = PlanApplier(llama.model)
    rng = random.Random(0)
    for _ in range(40):
        ref = rng.choice(cm.refs)
        setting = ModuleSetting(bits=rng.choice([2, 3, 4, 5, 8, 16]), sparsity=rng.choice([0, 0.3, 0.5, 0.95]),
                                rank_ratio=1.0 if ref.part == "embed" else rng.choice([1.0, 0.5, 0.2]))
        methods = Methods(group_size=rng.choice([32, 128, -1]), symmetric=rng.choice([True, False]),
                          scale_bits=rng.choice([16, 16, 8, 5]))
        stored = applier.stored(ref, setting, methods)
        expected = cm.module_cost(ref, setting, methods)
        assert sum(m.storage()[0] for m in stored.matrices) == expected.bytes
        assert tuple(m.storage()[1] for m in stored.matrices) == expected.encodings


def test_min_bytes(llama):
    cm = CostModel(llama.model)
    names = [r.name for r in cm.refs]
    allowed = [ModuleSetting(bits=b) for b in (16, 8, 4)]
    assert cm.min_bytes(allowed) == cm.of(Plan.uniform(llama.model_id, names, ModuleSetting(bits=4))).bytes
    per_module = {names[1]: [ModuleSetting(bits=2)]}  # others untouched
    assert cm.min_bytes(per_module) == cm.of(Plan(llama.model_id, {names[1]: ModuleSetting(bits=2)})).bytes
    # Settings a module cannot take are skipped: the embedding has no low-rank form.
    assert cm.min_bytes([ModuleSetting(rank_ratio=0.1)]) == cm.of(
        Plan(llama.model_id, {n: ModuleSetting(rank_ratio=0.1) for n in names[1:]})).bytes


def test_gguf_accounting_and_mapping(llama):
    assert gguf_type_for(4, "rtn", 32, True) == "Q4_0"
    assert gguf_type_for(4, "gptq", 32, False) == "Q4_1"
    assert gguf_type_for(5, "rtn", 32, True) == "Q5_0" and gguf_type_for(5, "rtn", 32, False) == "Q5_1"
    assert gguf_type_for(8, "rtn", 32, True) == "Q8_0" and gguf_type_for(16) == "F16"
    for unmapped in [(8, "rtn", 32, False), (4, "rtn", 128, True), (4, "awq", 32, True), (3, "rtn", 32, True),
                     (6, "rtn", 32, True), (2, "rtn", 32, True)]:
        assert gguf_type_for(*unmapped) is None
    cm = CostModel(llama.model, fmt="gguf")
    names = [r.name for r in cm.refs]
    plan = Plan.uniform(llama.model_id, names, ModuleSetting(bits=4), Methods(group_size=32, symmetric=True))
    weights = sum(gguf_tensor_bytes("Q4_0", r.numel) for r in cm.refs)
    assert weights == sum(r.numel // 32 * 18 for r in cm.refs)  # these sizes need no alignment padding
    assert cm.of(plan).bytes == weights + 5 * 64 * 4  # five norm vectors as F32
    with pytest.raises(InvalidInput, match=r"modules\.model\.layers\.0\.self_attn\.q_proj: cannot be stored in GGUF"):
        cm.of(Plan(llama.model_id, {names[1]: ModuleSetting(bits=3)}, Methods(group_size=32)))


def test_gpt2_other_tensors(tiny_gpt2_dir):
    lm = load_model(str(tiny_gpt2_dir))
    cm = CostModel(lm.model)
    refs = compressible_modules(lm.model)
    biases = sum(r.out_features for r in refs if r.has_bias)
    norms = (2 * 2 + 1) * 2 * 64  # ln_1, ln_2 per block and ln_f, weight and bias each
    assert cm.other_bytes == 4 * (1024 * 64 + biases + norms)  # position embeddings stay as loaded
