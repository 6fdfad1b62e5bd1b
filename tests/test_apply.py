"""PlanApplier: in-place swaps, restore, skipping unchanged modules, composition, caches, errors;
calibration statistics."""
import pytest
import torch

from toggle.compress import collect_stats
from toggle.compress.apply import PlanApplier
from toggle.compress.calibrate import ActivationStats, stats_cache_path
from toggle.compress.prune import kept_per_row
from toggle.errors import InvalidInput
from toggle.load import load_model
from toggle.modules import compressible_modules, weight_matrix
from toggle.plan import Methods, ModuleSetting, Plan


def _ids(lm, text="The capital of France is Paris. Water boils at 100 degrees."):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids).logits


def _names(lm):
    return [r.name for r in compressible_modules(lm.model)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_apply_restore_and_skip_unchanged(arch, tiny_llama_dir, tiny_gpt2_dir):
    lm = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir))
    ids, names = _ids(lm), _names(lm)
    base = _logits(lm, ids)
    applier = PlanApplier(lm.model)
    param = lm.model.get_submodule(names[1]).weight
    loaded_ptr = param.data_ptr()
    plan = Plan.uniform(lm.model_id, names, ModuleSetting(bits=3, sparsity=0.25))
    assert applier.apply(plan) == names
    assert lm.model.get_submodule(names[1]).weight is param  # same parameter, new data
    assert param.data_ptr() != loaded_ptr
    compressed = _logits(lm, ids)
    assert (compressed - base).abs().max() > 1e-2
    assert applier.apply(plan) == []  # nothing changed: nothing touched
    one = plan.with_setting(names[2], ModuleSetting(bits=8))
    assert applier.apply(one) == [names[2]]
    # A method change touches only the modules whose settings use that method.
    pruned_only = Plan(lm.model_id, {names[1]: ModuleSetting(sparsity=0.5), names[2]: ModuleSetting(bits=4)})
    applier.apply(pruned_only)
    assert applier.apply(Plan(lm.model_id, pruned_only.modules, Methods(pruner="magnitude", symmetric=True))) == [names[2]]
    assert set(applier.restore()) == set(names)
    assert torch.equal(_logits(lm, ids), base)
    assert param.data_ptr() == loaded_ptr  # the loaded weights themselves, no copy kept
    again = applier.apply(plan)  # caches warm: same result as the first time
    assert len(again) == len(names)
    torch.testing.assert_close(_logits(lm, ids), compressed, rtol=0, atol=0)
    applier.restore()


def test_sixteen_bits_is_the_float16_model(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    applier = PlanApplier(lm.model)
    refs = compressible_modules(lm.model)
    base = {r.name: weight_matrix(lm.model.get_submodule(r.name), r).clone() for r in refs}
    applier.apply(Plan(lm.model_id, {}))
    for r in refs:
        w = weight_matrix(lm.model.get_submodule(r.name), r)
        assert torch.equal(w, base[r.name].half().float())
        assert not torch.equal(w, base[r.name])
    applier.restore()


def test_composition_low_rank_then_pruning_then_quantisation(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    applier = PlanApplier(lm.model)
    name = "model.layers.0.mlp.gate_proj"  # (128, 64)
    setting = ModuleSetting(bits=4, sparsity=0.5, rank_ratio=0.5)
    stored = applier.stored(name, setting, Methods(group_size=32, symmetric=True))
    a, b = stored.matrices
    assert stored.factorised and a.shape == (128, 32) and b.shape == (32, 64)
    for m, in_f in ((a, 32), (b, 64)):
        assert m.quant is not None and m.quant.bits == 4  # each factor is pruned, then quantised
        assert torch.all(m.mask.sum(1) == kept_per_row(in_f, 0.5))
        assert torch.all(m.dequantize()[~m.mask] == 0)
    torch.testing.assert_close(stored.weight(), a.dequantize() @ b.dequantize())
    applier.apply(Plan(lm.model_id, {name: setting}, Methods(group_size=32, symmetric=True)))
    assert torch.equal(lm.model.get_submodule(name).weight, stored.weight())
    applier.restore()


def test_tied_embedding_and_conv1d(tiny_llama_dir, tiny_gpt2_dir):
    lm = load_model(str(tiny_llama_dir))
    applier = PlanApplier(lm.model)
    embed = compressible_modules(lm.model)[0]
    assert embed.tied
    applier.apply(Plan(lm.model_id, {embed.name: ModuleSetting(bits=4)}))
    head = lm.model.get_output_embeddings().weight
    expected = applier.effective_weight(embed, ModuleSetting(bits=4), Methods())
    assert torch.equal(head, expected) and not torch.equal(head, applier.base_weight(embed.name))
    applier.restore()

    gpt2 = load_model(str(tiny_gpt2_dir))
    applier = PlanApplier(gpt2.model)
    ref = next(r for r in compressible_modules(gpt2.model) if r.component == "attn.c_attn")
    setting = ModuleSetting(bits=5, sparsity=0.3)
    applier.apply(Plan(gpt2.model_id, {ref.name: setting}))
    stored = gpt2.model.get_submodule(ref.name).weight  # Conv1D keeps (in, out)
    assert stored.shape == (64, 192)
    assert torch.equal(stored.t(), applier.effective_weight(ref, setting, Methods()))
    applier.restore()


def test_bad_plans_are_refused_with_the_module_named(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    applier = PlanApplier(lm.model)
    names = _names(lm)
    with pytest.raises(InvalidInput, match="unknown module.*model.layers.9.mlp.up_proj"):
        applier.apply(Plan(lm.model_id, {"model.layers.9.mlp.up_proj": ModuleSetting(bits=4)}))
    with pytest.raises(InvalidInput, match=r"modules\.model\.layers\.0\.mlp\.up_proj: sparsity 0.3 with the 2:4 pattern"):
        applier.apply(Plan(lm.model_id, {"model.layers.0.mlp.up_proj": ModuleSetting(sparsity=0.3)},
                           Methods(prune_pattern="2:4")))
    with pytest.raises(InvalidInput, match="rank_ratio < 1 is not supported for the token embedding"):
        applier.apply(Plan(lm.model_id, {names[0]: ModuleSetting(rank_ratio=0.5)}))
    with pytest.raises(InvalidInput, match="methods.quantizer: awq needs calibration activation statistics"):
        applier.apply(Plan(lm.model_id, {names[1]: ModuleSetting(bits=4)}, Methods(quantizer="awq")))
    # Nothing was half applied.
    assert applier.restore() == []


def test_lru_is_bounded_in_bytes(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    names = _names(lm)
    limit = 100_000
    applier = PlanApplier(lm.model, cache_limit_bytes=limit)
    for bits in (2, 3, 4, 5, 6, 8):
        applier.apply(Plan.uniform(lm.model_id, names, ModuleSetting(bits=bits)))
        assert applier.cache_bytes["effective_lru"] <= limit
    # The most recent entry (the last module at 8 bits) is still there; the oldest are not.
    applier.effective_weight(names[-1], ModuleSetting(bits=8), Methods())
    assert applier.counters["lru_hits"] == 1
    applier.effective_weight(names[1], ModuleSetting(bits=2), Methods())
    assert applier.counters["lru_hits"] == 1
    assert applier.cache_bytes["quantised"] > 0



def test_release_caches_keeps_only_the_plan_it_is_told_to(tiny_llama_dir):
    # A finished search drops every other plan's effective weights before its held-out audit;
    # the kept plan is applied again from the cache, to the same weights, without composing.
    lm = load_model(str(tiny_llama_dir))
    names = _names(lm)
    applier = PlanApplier(lm.model)
    keep = Plan.uniform(lm.model_id, names, ModuleSetting(bits=4), Methods(group_size=32))
    other = Plan.uniform(lm.model_id, names, ModuleSetting(bits=3), Methods(group_size=32))
    applier.apply(keep)
    kept_weights = {n: lm.model.get_submodule(n).weight.detach().clone() for n in names}
    applier.apply(other)
    before = applier.cache_bytes
    assert before["effective_lru"] > 0
    dropped = applier.release_caches(keep=keep)
    after = applier.cache_bytes
    assert dropped > 0 and after["effective_lru"] == before["effective_lru"] - dropped
    assert after["effective_lru"] == sum(w.nbytes for w in kept_weights.values())  # exactly the kept plan's
    assert after["quantised"] == before["quantised"]  # codes stay: writing the artifact reads them
    applier.restore()
    composed, hits = applier.counters["composed"], applier.counters["lru_hits"]
    applier.apply(keep)
    assert applier.counters["composed"] == composed and applier.counters["lru_hits"] == hits + len(names)
    for n in names:
        assert torch.equal(lm.model.get_submodule(n).weight, kept_weights[n])
    applier.restore()
    assert applier.release_caches() == after["effective_lru"] and applier.cache_bytes["effective_lru"] == 0

def test_calibration_statistics(tiny_llama_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TOGGLE_CACHE_DIR", str(tmp_path))
    lm = load_model(str(tiny_llama_dir))
    seqs = [_ids(lm)[0], _ids(lm, "def add(a, b): return a + b")[0]]
    assert len(seqs[0]) != len(seqs[1])  # so the batch is padded
    # Reference: the real inputs of one module, captured with a hook, one sequence at a time.
    captured = []
    up = lm.model.get_submodule("model.layers.1.mlp.up_proj")
    handle = up.register_forward_pre_hook(lambda m, args: captured.append(args[0].reshape(-1, 64)))
    for seq in seqs:
        _logits(lm, seq[None])
    handle.remove()
    x = torch.cat(captured)
    # collect_stats runs both sequences in one right-padded forward and counts only their tokens
    forwards = []
    handle = lm.model.get_submodule("model.embed_tokens").register_forward_hook(lambda m, a, out: forwards.append(out.shape))
    stats = collect_stats(lm.model, seqs, fingerprint=lm.fingerprint)
    handle.remove()
    assert forwards == [(2, max(len(s) for s in seqs), 64)]
    assert stats.n_tokens == sum(len(s) for s in seqs) == x.shape[0]
    torch.testing.assert_close(stats.channel_norm("model.layers.1.mlp.up_proj"), x.norm(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.gram("model.layers.1.mlp.up_proj"), x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)
    # q/k/v read the same tensor: one shared matrix. The tied embedding gets the head's input.
    assert stats.aliases["model.layers.0.self_attn.k_proj"] == "model.layers.0.self_attn.q_proj"
    assert stats.aliases["model.layers.0.mlp.up_proj"] == "model.layers.0.mlp.gate_proj"
    assert stats.gram("model.embed_tokens").shape == (64, 64)
    # Cached on disk by fingerprint and data; a different data set is a different entry.
    path = stats_cache_path(lm.fingerprint, stats.data_hash)
    assert path.is_file()
    again = ActivationStats.load(path)
    assert torch.equal(again.gram_sum("model.layers.0.self_attn.q_proj"), stats.gram_sum("model.layers.0.self_attn.q_proj"))
    other = collect_stats(lm.model, seqs[:1], fingerprint=lm.fingerprint)
    assert other.data_hash != stats.data_hash and other.n_tokens < stats.n_tokens
    with pytest.raises(InvalidInput, match="no token sequences"):
        collect_stats(lm.model, [])


def test_calibration_statistics_of_routed_inputs_one_sequence_at_a_time(tiny_llama_dir):
    """A module fed tokens instead of the batch's (batch, tokens, features) layout (mixture-of-experts
    routing: pads of a batch would be routed too) makes the statistics come from one sequence per
    forward, equal to the unbatched collection's."""
    lm = load_model(str(tiny_llama_dir))
    seqs = [_ids(lm)[0], _ids(lm, "def add(a, b): return a + b")[0], _ids(lm, "x = 1")[0]]
    alone = collect_stats(lm.model, seqs, cache=False, batch_tokens=0)
    mlp = lm.model.get_submodule("model.layers.1.mlp")
    own = mlp.forward
    # as a router hands its experts a (tokens, features) matrix
    mlp.forward = lambda x: own(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    forwards = []
    handle = lm.model.get_submodule("model.embed_tokens").register_forward_hook(lambda m, a, out: forwards.append(out.shape[0]))
    try:
        stats = collect_stats(lm.model, seqs, cache=False)
    finally:
        handle.remove()
        del mlp.forward
    assert forwards == [3, 1, 1, 1]  # the batched try stopped at the routed input
    assert stats.n_tokens == alone.n_tokens == sum(len(s) for s in seqs)
    assert stats.aliases == alone.aliases
    for name in stats.grams:
        torch.testing.assert_close(stats.grams[name], alone.grams[name], rtol=1e-5, atol=1e-5)


def test_activation_aware_plan_applies_and_is_deterministic(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    ids = _ids(lm)
    stats = collect_stats(lm.model, [ids[0]])
    names = _names(lm)
    methods = Methods(quantizer="gptq", pruner="wanda", lowrank="asvd", group_size=32)
    plan = Plan(lm.model_id, {n: ModuleSetting(bits=4, sparsity=0.2, rank_ratio=0.75 if i else 1.0)
                              for i, n in enumerate(names)}, methods)
    first = PlanApplier(lm.model, stats=stats)
    first.apply(plan)
    logits = _logits(lm, ids)
    first.restore()
    second = PlanApplier(lm.model, stats=stats)
    second.apply(plan)
    assert torch.equal(_logits(lm, ids), logits)
    second.restore()


def test_awq_scales_are_searched_once_per_module_and_width(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    stats = collect_stats(lm.model, [_ids(lm)[0]])
    applier = PlanApplier(lm.model, stats=stats)
    methods = Methods(quantizer="awq", group_size=32, symmetric=True)
    name = "model.layers.1.mlp.down_proj"
    dense = applier.stored(name, ModuleSetting(bits=4), methods).matrices[0].quant
    pruned = applier.stored(name, ModuleSetting(bits=4, sparsity=0.5), methods).matrices[0].quant
    other_width = applier.stored(name, ModuleSetting(bits=3, sparsity=0.5), methods).matrices[0].quant
    assert torch.equal(dense.input_scales, pruned.input_scales)  # reused, not searched again
    assert not torch.equal(dense.codes, pruned.codes)
    assert len(applier._prepared) == 2 and other_width.input_scales is not None


def test_a_module_setting_can_carry_its_own_group_size_and_quantiser(tiny_llama_dir, tmp_path):
    from toggle.api import write_artifact
    from toggle.compress.quant import QuantConfig, quantize_rtn
    from toggle.cost import CostModel
    from toggle.formats import read_artifact

    lm = load_model(str(tiny_llama_dir))
    name = "model.layers.0.mlp.down_proj"  # 128 inputs: groups of 32 or 64
    plan = Plan(lm.model_id, {name: ModuleSetting(bits=3, group_size=64)}, Methods(group_size=32))
    back = Plan.from_dict(plan.to_dict())
    assert back.modules[name] == ModuleSetting(bits=3, group_size=64)
    assert "group_size" not in Plan(lm.model_id, {name: ModuleSetting(bits=3)}).to_dict()["modules"][name]
    applier = PlanApplier(lm.model)
    ref = {r.name: r for r in compressible_modules(lm.model)}[name]
    expected = quantize_rtn(weight_matrix(lm.model.get_submodule(name), ref), QuantConfig(3, 64)).dequantize()
    assert torch.equal(applier.effective_weight(name, plan.modules[name], plan.methods), expected)
    costs = CostModel(lm.model)
    g32 = Plan(lm.model_id, {name: ModuleSetting(bits=3)}, Methods(group_size=32))
    assert costs.of(plan).bytes < costs.of(g32).bytes  # half the scales and minimums
    info = write_artifact(lm, plan, tmp_path / "art", applier=applier)
    assert info.cost.bytes == costs.of(plan).bytes == info.tensor_bytes_on_disk
    assert torch.equal(weight_matrix(read_artifact(info.path).model.get_submodule(name), ref), expected)
    with pytest.raises(InvalidInput, match="group_size 64, symmetric false has no GGUF type"):
        write_artifact(lm, plan, tmp_path / "m.gguf", "gguf", applier=applier)
    assert ModuleSetting(bits=16, group_size=64) == ModuleSetting()  # an untouched module has no group size


def test_quantised_scales_need_a_quantizer_that_chooses_its_scales():
    from toggle.compress.rules import setting_problem
    from toggle.modules import ModuleRef

    ref = ModuleRef("model.layers.0.mlp.down_proj", 0, "mlp.down_proj", "mlp", 64, 256, False, False)
    assert setting_problem(ref, ModuleSetting(bits=4, scale_bits=8), Methods(quantizer="gptq")) is None
    problem = setting_problem(ref, ModuleSetting(bits=4, scale_bits=8), Methods(quantizer="ggml"))
    assert "scale_bits 8 needs a quantizer whose group parameters toggle chooses" in problem
    assert setting_problem(ref, ModuleSetting(bits=16, scale_bits=8), Methods(quantizer="ggml")) is None


def test_output_error_of_sampled_rows_is_that_of_the_stored_matrix_and_caches_nothing(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    ids = _ids(lm)
    stats = collect_stats(lm.model, [ids[0]])
    applier = PlanApplier(lm.model, stats=stats)
    ref = next(r for r in applier.refs if r.component == "mlp.gate_proj")  # 128 rows
    for setting, methods in [(ModuleSetting(bits=3, group_size=32, scale_bits=6), Methods()),
                             (ModuleSetting(bits=4), Methods(quantizer="gptq", group_size=32)),
                             (ModuleSetting(bits=4, sparsity=0.5), Methods(pruner="wanda"))]:
        got = applier.output_error(ref, setting, methods, max_rows=40)
        fresh = PlanApplier(lm.model, stats=stats)  # the whole matrix, as evaluation stores it
        w_hat = fresh.stored(ref, setting, methods).weight()
        rows = torch.linspace(0, ref.out_features - 1, 40).round().long().unique()
        w, gram = fresh._base[ref.name].float()[rows], stats.gram(ref.name).float()
        diff = w_hat[rows] - w
        full = float(((diff @ gram) * diff).sum() / ((w @ gram) * w).sum())
        if methods.quantizer == "rtn" and setting.sparsity == 0:
            # round-to-nearest alone: the diagonal part of tr(dW G dW^T), an estimate of the full product
            want = float((diff.pow(2).sum(0) * torch.diagonal(gram)).sum() / ((w @ gram) * w).sum())
            assert want == pytest.approx(full, rel=0.1) and want != pytest.approx(full, rel=1e-5)
        else:  # errors the method shapes with the statistics: the full product
            want = full
        assert got == pytest.approx(want, rel=1e-5) and got > 0
    assert applier.cache_bytes["quantised"] == 0  # the plain quantisations were not kept


def test_output_errors_of_every_group_in_threads_equal_those_one_group_at_a_time(tiny_llama_dir, monkeypatch):
    # Profiling prices groups two at a time: the applier's caches (error samples, the low-rank
    # and pruned matrices composed through stored()) must give what a single thread gets.
    from types import SimpleNamespace

    from toggle.compress.linalg import single_threaded
    from toggle.search import load_profile
    from toggle.search.costs import CostTable
    from toggle.search.measure import all_group_errors, group_errors
    from toggle.search.space import SearchSpace

    lm = load_model(str(tiny_llama_dir))
    stats = collect_stats(lm.model, [_ids(lm)[0]])
    space = SearchSpace(lm.model_id, compressible_modules(lm.model), load_profile("prune-lowrank"))

    def objective(applier):
        return SimpleNamespace(output_error=lambda modules, setting, methods: sum(
            applier.output_error(name, setting, methods) for name in modules))

    costs = CostTable(space, lambda plan: SimpleNamespace(bytes=1.0, flops_per_token=1.0))
    with single_threaded():
        serial = [group_errors(space, costs, objective(PlanApplier(lm.model, stats=stats)), gi)
                  for gi in range(len(space.groups))]
    threads = []
    real = group_errors.__globals__["group_errors"]
    monkeypatch.setitem(group_errors.__globals__, "group_errors",
                        lambda *a: threads.append(__import__("threading").current_thread().name) or real(*a))
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two workers, whatever this machine has
    try:
        assert all_group_errors(space, costs, objective(PlanApplier(lm.model, stats=stats))) == serial
    finally:
        torch.set_num_threads(before)
    assert len(threads) == len(space.groups) and all(t.startswith("toggle-errors") for t in threads)
    assert any(e > 0 for errors in serial for e in errors)
