"""Evaluator: identical model, perturbed models, infeasible candidates, prompt subsets, and
(integration) the shipped specs on the built-in model: unmodified and 8-bit pass, 3-bit fails."""
import math
from pathlib import Path

import pytest
import torch
from appliers import BreakingApplier, NoiseApplier, RTNApplier

import toggle.trace as trace_mod
from toggle.errors import ToggleError
from toggle.evaluate import Evaluator
from toggle.load import load_model
from toggle.plan import Methods, ModuleSetting, Plan
from toggle.prompts import load_prompts, suite_from_records
from toggle.files import default_specs
from toggle.specs import load_specs
from toggle.trace import build_trace

RECORDS = [
    {"id": "fact", "prompt": "The capital of France is", "answer": "Paris", "chat": False},
    {"id": "qa", "prompt": "Question: what is two plus two? Answer:", "answer": "four", "chat": False},
    {"id": "chat", "prompt": "Water boils at 100 degrees Celsius at sea level."},
    {"id": "long", "prompt": "Once upon a time a small robot learned to read the stars. " * 6},
]
# The tiny models have 2 blocks: point the model-internal signals at them.
TINY_SPEC = """\
option hidden_layer = -1
option attn_span = 8
const eps = 0.05
coherence = always[0:7] (jsd <= eps)
longrange = always[0:7] (attn_cos >= 0.9)
context = always[0:7] (hidden_cos >= 0.9)
factual = always (gold_p_ratio >= 0.5)
"""


@pytest.fixture(scope="module")
def base_setup(tmp_path_factory):
    from tiny_models import make_tiny_model  # tests/ is on sys.path (conftest)

    model_dir = make_tiny_model("llama", tmp_path_factory.mktemp("tiny-eval"))
    loaded = load_model(str(model_dir))
    spec_file = tmp_path_factory.mktemp("specs") / "tiny.stl"
    spec_file.write_text(TINY_SPEC)
    specs = load_specs([spec_file])
    trace = build_trace(loaded, suite_from_records(RECORDS), specs)
    return loaded, specs, trace


@pytest.fixture
def setup(base_setup):
    """The module's tiny model, its weights put back after each test (appliers change them in place)."""
    loaded = base_setup[0]
    weights = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    yield base_setup
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            p.copy_(weights[n])


def test_identical_model_gives_exact_signals_and_positive_robustness(setup):
    loaded, specs, trace = setup
    result = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model)).evaluate(None)
    assert result.feasible and result.reason is None and result.satisfied
    # the base outputs were recorded while generating: equal to this pass's to float rounding
    assert 0.0 <= result.signals["jsd"]["max"] < 1e-6
    assert result.signals["hidden_cos"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert result.signals["attn_cos"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert result.signals["gold_p_ratio"]["min"] == 1.0  # gold answers: the same teacher-forced pass
    assert result.robustness == pytest.approx({"coherence": 0.05, "longrange": 0.1, "context": 0.1, "factual": 0.5})
    assert set(result.per_prompt["coherence"]) == {"fact", "qa", "chat", "long"}
    assert set(result.per_prompt["factual"]) == {"fact", "qa"}  # only prompts with an answer
    assert set(result.timings) == {"apply", "forward", "signals", "rtamt", "total"}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shipped_specs_hold_for_the_identical_tiny_model(arch, tiny_llama_dir, tiny_gpt2_dir, tmp_path, monkeypatch):
    # the shipped specs give layers as depth fractions, so they fit a 2-block model too
    monkeypatch.setenv("TOGGLE_CACHE_DIR", str(tmp_path))
    loaded = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir))
    specs = load_specs(default_specs())
    trace = build_trace(loaded, suite_from_records(RECORDS), specs)
    result = Evaluator(loaded, specs, trace).evaluate(None)
    assert result.satisfied
    assert all(v > 0 for v in result.robustness.values()), result.robustness


def test_robustness_falls_as_perturbation_grows(setup):
    loaded, specs, trace = setup
    evaluator = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model))
    untouched = evaluator.evaluate(None).signals["jsd"]["max"]
    assert untouched < 1e-6
    margins = [evaluator.evaluate(scale).robustness["coherence"] for scale in (0.0, 0.05, 0.5)]
    assert margins[0] == pytest.approx(0.05)
    assert margins[0] > margins[1] > margins[2]
    heavy = evaluator.evaluate(1.0)
    assert heavy.feasible and heavy.robustness["coherence"] < 0 and not heavy.satisfied
    assert heavy.signals["jsd"]["max"] > 0.1
    # back to the base weights: exactly what they gave before
    assert evaluator.evaluate(None).signals["jsd"]["max"] == untouched


def test_rtn_plans_through_the_applier(setup):
    loaded, specs, trace = setup
    applier = RTNApplier(loaded.model)
    evaluator = Evaluator(loaded, specs, trace, applier)
    names = list(applier.refs)
    results = {b: evaluator.evaluate(Plan.uniform(loaded.model_id, names, ModuleSetting(bits=b), Methods(group_size=32)))
               for b in (8, 2)}
    assert results[8].signals["jsd"]["max"] < results[2].signals["jsd"]["max"]
    assert results[8].robustness["coherence"] > results[2].robustness["coherence"]


@pytest.mark.parametrize("kind, reason", [("nan", "NaN or infinite logits"), ("zero", "zero-norm")])
def test_broken_candidates_are_infeasible_not_crashes(setup, kind, reason):
    loaded, specs, trace = setup
    applier = BreakingApplier(loaded.model)
    try:
        result = Evaluator(loaded, specs, trace, applier).evaluate(kind)
    finally:
        applier.restore()
    assert not result.feasible and not result.satisfied
    assert reason in result.reason
    assert result.robustness == {name: -math.inf for name in specs.names}
    assert "forward" in result.timings


def test_prompt_subsets(setup):
    loaded, specs, trace = setup
    evaluator = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model))
    full = evaluator.evaluate(0.3)
    sub = evaluator.evaluate(0.3, prompts=["chat", "long"])
    assert set(sub.per_prompt["coherence"]) == {"chat", "long"}
    for pid in ("chat", "long"):
        assert sub.per_prompt["coherence"][pid] == pytest.approx(full.per_prompt["coherence"][pid], abs=1e-6)
    assert sub.robustness["factual"] == math.inf  # no prompt with an answer in the subset: vacuous


def test_misuse_is_a_clear_error(setup, tmp_path):
    loaded, specs, trace = setup
    with pytest.raises(ToggleError, match="needs an applier"):
        Evaluator(loaded, specs, trace).evaluate(Plan(loaded.model_id))
    narrow = build_trace(loaded, suite_from_records(RECORDS), needs={"logprobs"}, steps=8)
    with pytest.raises(ToggleError, match="built without attention, gold, hidden"):
        Evaluator(loaded, specs, narrow)
    with pytest.raises(ToggleError, match="gold-answer signals but no calibration prompt has an answer"):
        build_trace(loaded, suite_from_records(RECORDS[2:]), specs)


def test_audit_shapes_another_model_against_the_base_trace(setup, tmp_path):
    """Teacher mode: another model scored along the base paths; free mode: along its own
    generations, with the base scored along them too (trace_along)."""
    from tiny_models import make_tiny_model

    from toggle.trace import GenerationSettings, TokenPath, encode_suite, generate_paths, trace_along

    loaded, specs, trace = setup
    other = load_model(str(make_tiny_model("llama", tmp_path / "other", seed=1)))
    teacher = Evaluator(other, specs, trace).evaluate(None)
    assert teacher.feasible and teacher.signals["jsd"]["max"] > 0.05 and not teacher.satisfied

    encoded = encode_suite(suite_from_records(RECORDS), other.tokenizer)
    own = generate_paths(other.model, other.tokenizer, encoded, GenerationSettings(steps=8))
    paths = [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, own)]
    free_trace = trace_along(loaded, paths, specs.needs, specs.options)
    free = Evaluator(other, specs, free_trace).evaluate(None)
    assert free.feasible and set(free.per_prompt["coherence"]) == {"fact", "qa", "chat", "long"}
    assert Evaluator(loaded, specs, free_trace).evaluate(None).signals["jsd"]["max"] == 0.0


# --- integration: the shipped specs on the built-in model -------------------------------------

SUITE = Path(__file__).parent / "data" / "suite.yaml"  # 8 calibration prompts: keeps the test near a minute


@pytest.mark.integration
def test_builtin_model_unmodified_and_8bit_pass_3bit_fails(builtin_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TOGGLE_CACHE_DIR", str(tmp_path))
    trace_mod.DEFAULT_CACHE.clear()
    specs = load_specs(default_specs())
    trace = build_trace(builtin_model, load_prompts(SUITE), specs)
    assert len(trace.paths) == 8 and trace.settings.steps == 32
    applier = RTNApplier(builtin_model.model)
    evaluator = Evaluator(builtin_model, specs, trace, applier)
    blocks = [n for n, r in applier.refs.items() if r.block is not None]
    try:
        base = evaluator.evaluate(None)
        q8 = evaluator.evaluate(Plan.uniform(builtin_model.model_id, blocks, ModuleSetting(bits=8)))
        q3 = evaluator.evaluate(Plan.uniform(builtin_model.model_id, blocks, ModuleSetting(bits=3)))
    finally:
        applier.restore()
    # the base outputs were recorded while generating: equal to a teacher-forced pass's to rounding
    assert 0.0 <= base.signals["jsd"]["max"] < 1e-6 and base.signals["gold_p_ratio"]["min"] == 1.0
    assert base.signals["hidden_cos"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert base.signals["attn_cos"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert base.satisfied and all(v > 0 for v in base.robustness.values())
    assert q8.satisfied, q8.robustness
    assert all(v < 0 for v in q3.robustness.values()), q3.robustness
    assert q3.robustness["coherence"] < -0.5  # clearly, not marginally


def test_early_exit_checks_every_few_prompts_until_half_the_suite():
    from toggle.evaluate import early_chunks

    assert early_chunks(30) == [4, 4, 4, 18]  # the built-in calibration suite: checks after 4, 8, 12
    assert early_chunks(283) == [4, 4, 4, 6, 9, 13, 20, 30, 45, 148]  # few passes on a large suite
    assert early_chunks(4) == [1, 1, 2]
    assert early_chunks(1) == [1] and early_chunks(3) == [1, 2]
    assert all(sum(early_chunks(n)) == n and min(early_chunks(n)) >= 1 for n in range(1, 80))


def test_early_exit_stops_on_the_hardest_prompts_with_an_upper_bound(setup):
    """A violating candidate scored with stop_below=0 stops after the first chunk of prompts; its
    robustness is an upper bound of the full evaluation's; a passing one is scored on all of them."""
    loaded, specs, trace = setup
    evaluator = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model))
    full = evaluator.evaluate(1.0)  # also teaches the evaluator which prompts are hardest
    assert not full.partial and full.prompts_evaluated == full.prompts_total == 4
    early = evaluator.evaluate(1.0, stop_below=0.0)
    assert early.partial and early.prompts_evaluated < 4 and not early.satisfied
    # the hardest prompt went first: lowest margin relative to its property's largest |margin|
    scale = {name: max(abs(v) for v in by_prompt.values()) for name, by_prompt in full.per_prompt.items()}
    relative = {pid: min(by_prompt[pid] / scale[name] for name, by_prompt in full.per_prompt.items()
                         if pid in by_prompt) for pid in full.per_prompt["coherence"]}
    hardest = {pid for pid, r in relative.items() if r <= min(relative.values()) + 1e-9}  # ties are common
    assert hardest & set(early.per_prompt["coherence"]), (relative, early.per_prompt)
    for name, value in early.robustness.items():
        assert value >= full.robustness[name] - 1e-9
    fine = evaluator.evaluate(0.0, stop_below=0.0)
    assert not fine.partial and fine.prompts_evaluated == 4 and fine.satisfied
    assert fine.robustness == pytest.approx(evaluator.evaluate(0.0).robustness, abs=1e-6)


def test_a_share_of_prompts_is_an_order_statistic_and_early_exit_respects_it(setup, tmp_path):
    loaded, _, trace = setup
    spec = tmp_path / "share.stl"
    spec.write_text("option hidden_layer = -1\noption attn_span = 8\nconst eps = 0.05\n"
                    "coherence = always[0:7] (jsd <= eps) on 75% of prompts\n")  # 3 of 4 must hold: one may fail
    specs = load_specs([spec])
    assert specs.properties[0].share == 0.75
    evaluator = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model))
    result = evaluator.evaluate(0.3)
    values = sorted(result.per_prompt["coherence"].values())
    assert result.robustness["coherence"] == values[1]  # the second smallest: one failure allowed


def test_the_specs_topk_reaches_the_signals_and_the_trace_is_shared(setup, tmp_path):
    loaded, _, trace = setup  # built without option topk
    spec = tmp_path / "topk.stl"
    spec.write_text("option hidden_layer = -1\noption attn_span = 8\noption topk = 1\n"
                    "overlap = always[0:7] (topk_overlap >= 0.5)\nagree = always[0:7] (top1_agree >= 0.5)\n")
    specs = load_specs([spec])
    result = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model)).evaluate(0.02)
    # with k = 1 the overlap is 1 exactly when the top tokens agree: the same robustness per prompt
    # (with the default k = 5 it is fractional, e.g. -0.4 where the top tokens all agree)
    assert result.per_prompt["overlap"] == result.per_prompt["agree"]
    assert sorted(set(result.per_prompt["agree"].values())) == [-0.5, 0.5]  # some prompts agree, some do not


def test_a_large_trace_is_scored_in_pieces_of_bounded_outputs(setup, monkeypatch):
    # The candidate's outputs of a piece are dropped once its signals are computed: with a limit
    # below the whole trace's outputs, the scorer sees pieces within it, and the result is the same.
    from toggle.evaluate import pieces

    loaded, specs, trace = setup
    per_step = sum(t[0].numel() * t.element_size() for t in (trace.base.logprobs, trace.base.attn, trace.base.hidden))
    steps = {p.prompt_id: len(p.tokens) for p in trace.paths}
    limit = per_step * 2 * max(steps.values())  # two prompts' outputs
    assert sum(steps.values()) * per_step > limit
    copies = []
    subset = type(trace).subset
    monkeypatch.setattr(type(trace), "subset", lambda self, ids: copies.append(ids) or subset(self, ids))
    lazy = pieces(trace, limit)
    first = next(lazy)
    assert len(copies) == 1  # a piece's copy of the base outputs is made when it is reached
    cut = [first, *lazy]
    assert sorted(pid for piece in cut for pid in piece.prompt_ids) == sorted(steps)  # each prompt once
    assert len(cut) == 2 and all(sum(steps[p] for p in piece.prompt_ids) * per_step <= limit for piece in cut)
    assert "long" in cut[-1].prompt_ids  # similar lengths together: the longest prompt in the last piece
    assert list(pieces(trace, sum(steps.values()) * per_step)) == [trace]  # a trace that fits is not copied
    monkeypatch.undo()

    seen = []

    def scorer(paths, needs, options, **kw):
        seen.append(sum(len(p.tokens) for p in paths) * per_step)
        return trace_mod.score_paths(loaded.model, paths, needs, options, **kw)

    applier = NoiseApplier(loaded.model)
    whole = Evaluator(loaded, specs, trace, applier).evaluate(0.3)
    cut_up = Evaluator(loaded, specs, trace, applier, scorer=scorer, piece_bytes=limit).evaluate(0.3)
    assert len(seen) == 2 and max(seen) <= limit
    assert cut_up.feasible and cut_up.prompts_evaluated == 4
    for name, values in whole.per_prompt.items():
        assert cut_up.per_prompt[name] == pytest.approx(values, abs=1e-5), name
    assert cut_up.signals["jsd"]["max"] == pytest.approx(whole.signals["jsd"]["max"], abs=1e-6)
    assert cut_up.signals["jsd"]["mean"] == pytest.approx(whole.signals["jsd"]["mean"], abs=1e-6)


NO_ATTENTION_SPEC = """\
option hidden_layer = 0
const eps = 0.05
coherence = always[0:7] (jsd <= eps)
context = always[0:7] (hidden_cos >= 0.9)
factual = always (gold_p_ratio >= 0.5)
"""


def test_block_replay_reuses_outputs_computed_under_the_same_weights_only(base_setup, tmp_path):
    # Profiling's plans change one group of the untouched model at a time: the blocks before it
    # are replayed from an earlier pass over the same batch, and give exactly what running them
    # gives; a block whose weights (or an earlier block's) differ runs again.
    from toggle.compress.apply import PlanApplier
    from toggle.modules import compressible_modules

    loaded = base_setup[0]
    spec_file = tmp_path / "no-attention.stl"
    spec_file.write_text(NO_ATTENTION_SPEC)  # hidden state at block 0: its hook sees a replayed output
    specs = load_specs([spec_file])
    trace = build_trace(loaded, suite_from_records(RECORDS), specs)
    refs = compressible_modules(loaded.model)
    applier = PlanApplier(loaded.model, refs)
    evaluator = Evaluator(loaded, specs, trace, applier)
    last_block = Plan.uniform(loaded.model_id, [r.name for r in refs if r.block == 1], ModuleSetting(bits=3),
                              Methods(group_size=32))
    every_block = Plan.uniform(loaded.model_id, [r.name for r in refs if r.block is not None], ModuleSetting(bits=3),
                               Methods(group_size=32))
    try:
        expected_last, expected_every = (evaluator.evaluate(p).per_prompt for p in (last_block, every_block))
        counters = evaluator._replay.counters
        evaluator.evaluate(Plan(loaded.model_id), replay=True)  # the untouched model: every block kept
        assert counters["replayed"] == 0 and counters["run"] > 0
        replayed = evaluator.evaluate(last_block, replay=True)
        assert counters["replayed"] > 0  # block 0: the same weights as in the untouched pass
        assert replayed.per_prompt == expected_last
        before = dict(counters)
        changed = evaluator.evaluate(every_block, replay=True)
        assert counters["replayed"] == before["replayed"]  # block 0 changed: nothing replayed
        assert changed.per_prompt == expected_every
        assert changed.per_prompt != replayed.per_prompt
    finally:
        applier.restore()


def test_block_replay_stops_before_the_blocks_whose_attention_is_pooled(setup):
    from toggle.compress.apply import PlanApplier
    from toggle.modules import compressible_modules

    loaded, specs, trace = setup  # attn_cos pools every block: no block may be replayed
    refs = compressible_modules(loaded.model)
    applier = PlanApplier(loaded.model, refs)
    evaluator = Evaluator(loaded, specs, trace, applier)
    last_block = Plan.uniform(loaded.model_id, [r.name for r in refs if r.block == 1], ModuleSetting(bits=3),
                              Methods(group_size=32))
    try:
        expected = evaluator.evaluate(last_block)
        evaluator.evaluate(Plan(loaded.model_id), replay=True)
        assert evaluator.evaluate(last_block, replay=True).per_prompt == expected.per_prompt
        assert evaluator._replay.counters["replayed"] == 0 and not evaluator._replay.kept
    finally:
        applier.restore()


def test_a_plan_scored_on_every_prompt_is_given_back_when_reuse_is_asked(setup):
    from toggle.compress.apply import PlanApplier
    from toggle.modules import compressible_modules

    loaded, specs, trace = setup
    refs = compressible_modules(loaded.model)
    applier = PlanApplier(loaded.model, refs)
    evaluator = Evaluator(loaded, specs, trace, applier)
    names = [r.name for r in refs if r.block is not None]
    plan = Plan.uniform(loaded.model_id, names, ModuleSetting(bits=3), Methods(group_size=32))
    other = Plan.uniform(loaded.model_id, names, ModuleSetting(bits=4), Methods(group_size=32))
    try:
        first = evaluator.evaluate(plan)
        assert "forward" in first.timings
        # the same weights (meta and untouched modules named or not do not change them): given back
        same = Plan.uniform(loaded.model_id, names, ModuleSetting(bits=3), Methods(group_size=32), meta={"trial": 7})
        outside = next(r.name for r in refs if r.block is None)  # the embedding, named untouched
        same.modules[outside] = ModuleSetting()
        again = evaluator.evaluate(same, reuse=True)
        assert again.timings == {"reused": 1.0}
        assert again.per_prompt == first.per_prompt and again.robustness == first.robustness
        assert "forward" in evaluator.evaluate(plan).timings  # without reuse: scored again
        assert "forward" in evaluator.evaluate(other, reuse=True).timings  # never scored: scored
        # a partial evaluation (stopped early) or one on a subset is not kept
        subset = Evaluator(loaded, specs, trace, applier)
        subset.evaluate(plan, prompts=["chat", "long"])
        assert "forward" in subset.evaluate(plan, reuse=True).timings
    finally:
        applier.restore()


def test_a_plans_shared_prefix_is_run_once_for_all_its_passes_and_only_under_its_weights(setup):
    # Prompts that open alike: every pass that scores one plan (pieces, the gold-answer pass)
    # continues one cached forward of the opening; another plan's weights get their own, and a
    # cache is never handed to a pass under other weights.
    from toggle.compress.apply import PlanApplier
    from toggle.modules import compressible_modules

    loaded, specs, _ = setup
    opening = "You are a careful assistant who answers briefly and exactly. "
    records = [{"id": f"q{i}", "prompt": opening + q, "answer": "four" if i == 0 else None}
               for i, q in enumerate(["What is two plus two?", "Name a colour.", "def add(a, b):"])]
    trace = build_trace(loaded, suite_from_records(records), specs, use_cache=False)
    refs = compressible_modules(loaded.model)
    blocks = [r.name for r in refs if r.block is not None]
    a = Plan.uniform(loaded.model_id, blocks, ModuleSetting(bits=3), Methods(group_size=32))
    b = Plan.uniform(loaded.model_id, blocks, ModuleSetting(bits=2), Methods(group_size=32))
    applier = PlanApplier(loaded.model, refs)
    try:
        fresh_b = Evaluator(loaded, specs, trace, applier).evaluate(b)
        evaluator = Evaluator(loaded, specs, trace, applier, piece_bytes=1)  # one prompt per piece
        counters = evaluator._prefixes.counters
        first_a = evaluator.evaluate(a)
        assert counters == {"computed": 1, "reused": 2}  # 3 pieces (the gold pass shares the first's)
        got_b = evaluator.evaluate(b).per_prompt
        for name, values in fresh_b.per_prompt.items():
            assert got_b[name] == pytest.approx(values, abs=1e-5), name
        assert counters["computed"] == 2
        assert evaluator.evaluate(a).per_prompt == first_a.per_prompt
        assert counters == {"computed": 2, "reused": 7}
    finally:
        applier.restore()


def test_the_base_model_against_itself_scores_each_property_without_a_pass(setup, tmp_path, monkeypatch):
    # Its own outputs as the candidate's: jsd 0, cosines 1, gold ratio 1, exactly; a property the
    # original fails (a signal of the base alone, or a threshold it misses) is named with its line.
    from toggle.api import base_failures
    import toggle.evaluate as evaluate_mod

    loaded, tiny_specs, trace = setup
    spec_file = tmp_path / "mixed.stl"
    spec_file.write_text("option hidden_layer = -1\noption attn_span = 8\n"
                         "coherence = always[0:7] (jsd <= 0.05)\n"
                         "context = always[0:7] (hidden_cos >= 0.9)\n"
                         "sure = always[0:3] (base_p >= 1.5)\n")
    specs = load_specs([spec_file])
    evaluator = Evaluator(loaded, specs, trace, NoiseApplier(loaded.model))
    monkeypatch.setattr(evaluate_mod, "score_paths", lambda *a, **k: pytest.fail("no pass is needed"))
    robustness, per_prompt = evaluator.base_against_itself()
    assert robustness["coherence"] == pytest.approx(0.05, abs=1e-9)
    assert robustness["context"] == pytest.approx(0.1, abs=1e-6)
    assert -1.5 < robustness["sure"] < -0.5 and set(per_prompt["sure"]) == {p.prompt_id for p in trace.paths}
    failing = base_failures(specs, evaluator)
    assert set(failing["properties"]) == {"sure"}
    assert failing["properties"]["sure"]["prompts_failing"] == len(trace.paths)
    assert f"the base model itself fails sure (mixed.stl:5) on {len(trace.paths)} of {len(trace.paths)} prompts" \
        in failing["note"].replace(str(spec_file), "mixed.stl")
    assert base_failures(tiny_specs, Evaluator(loaded, tiny_specs, trace, NoiseApplier(loaded.model))) is None
