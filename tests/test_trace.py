"""Trace: greedy paths, one teacher-forced pass reproducing plain forwards, attention and
hidden capture against transformers' own outputs, and the memory / disk cache."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

import toggle.trace as trace_mod
import toggle.trace.build as build_mod
import toggle.trace.generate as generate_mod
import toggle.trace.prefix as prefix_mod
import toggle.trace.score as score_mod
from toggle.errors import ToggleError
from toggle.load import load_model
from toggle.modules import find_blocks
from toggle.prompts import suite_from_records
from toggle.signals import SignalOptions
from toggle.trace import (GenerationSettings, TokenPath, TraceCache, build_trace, encode_suite, generate_paths,
                          score_paths, trace_along)
from toggle.trace.limits import context_note
from toggle.trace.record import generate_recorded

ALL = {"logprobs", "attention", "hidden", "gold"}
RECORDS = [
    {"id": "fact", "prompt": "The capital of France is", "answer": "Paris", "chat": False},
    {"id": "chat", "prompt": "What is two plus two?", "answer": "four"},
    {"id": "long", "prompt": "Once upon a time a small robot learned to read the stars. " * 4},
    {"id": "held", "prompt": "def add(a, b):", "split": "heldout", "chat": False},
]
OPTIONS = SignalOptions(hidden_layer=0, attn_layers=(1,), attn_span=6)
# prompts that start alike, as a system prompt makes them: their opening is run once per pass
OPENING = "You are a careful assistant. Answer briefly. "
ONE_OPENING = [{"id": f"q{i}", "prompt": OPENING + q, "answer": "four" if i == 0 else None}
               for i, q in enumerate(["What is two plus two?", "Name a colour.",
                                      "Once upon a time a small robot learned to read.", "def add(a, b):"])]


@pytest.fixture(scope="module")
def tiny_gemma2_dir(tmp_path_factory):
    from tiny_models import make_tiny_model  # tests/ is on sys.path (conftest)

    return make_tiny_model("gemma2", tmp_path_factory.mktemp("tiny-gemma2"))


# gemma2: soft-capped attention logits, which SDPA cannot compute (the capture runs eager there)
@pytest.fixture(params=["llama", "gpt2", "gemma2"])
def tiny(request, tiny_llama_dir, tiny_gpt2_dir, tiny_gemma2_dir):
    return load_model(str({"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir, "gemma2": tiny_gemma2_dir}[request.param]))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOGGLE_CACHE_DIR", str(tmp_path / "cache"))
    trace_mod.DEFAULT_CACHE.clear()
    yield
    trace_mod.DEFAULT_CACHE.clear()


def test_paths_are_greedy_and_stop_at_eos(tiny):
    suite = suite_from_records(RECORDS)
    trace = build_trace(tiny, suite, steps=6, needs=ALL, options=OPTIONS)
    assert trace.prompt_ids == ["fact", "chat", "long"]  # calibration split only
    eos = tiny.model.generation_config.eos_token_id
    for path, lp in zip(trace.paths, torch.split(trace.base.logprobs, trace.base.steps)):
        assert 1 <= len(path.tokens) <= 6
        assert all(t != eos for t in path.tokens[:-1])
        # greedy: each generated token is the base model's argmax at its step
        assert lp.argmax(-1).tolist() == list(path.tokens)
    assert trace.paths[0].answer and trace.base.gold_logprob.shape == (sum(len(p.answer) for p in trace.paths[:2]),)


def test_batched_pass_matches_plain_forward_and_transformers_outputs(tiny):
    encoded = encode_suite(suite_from_records(RECORDS[:3]), tiny.tokenizer)
    tokens = generate_paths(tiny.model, tiny.tokenizer, encoded, GenerationSettings(steps=5))
    paths = [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, tokens)]
    implementation = tiny.model.config._attn_implementation  # sdpa; eager for Gemma 2
    out = score_paths(tiny.model, paths, ALL, OPTIONS.resolved(2), batch_tokens=4096)
    assert tiny.model.config._attn_implementation == implementation  # the capture implementation is removed again
    rows = 0
    tiny.model.set_attn_implementation("eager")
    try:
        for p in paths:
            n = len(p.tokens)
            ids = torch.tensor([list(p.prompt_ids) + list(p.tokens[:-1])])
            with torch.no_grad():
                ref = tiny.model(ids, output_attentions=True, output_hidden_states=True)
            lp = torch.log_softmax(ref.logits[0, -n:].float(), -1)
            torch.testing.assert_close(out.logprobs[rows:rows + n], lp, atol=1e-4, rtol=1e-4)
            attn = ref.attentions[1][0].mean(0)[-n:, p.content[0]:min(p.content[1], p.content[0] + 6)]
            torch.testing.assert_close(out.attn[rows:rows + n, :attn.shape[1]], attn, atol=1e-5, rtol=1e-4)
            # hidden_states[1] is the output of block 0
            torch.testing.assert_close(out.hidden[rows:rows + n], ref.hidden_states[1][0, -n:], atol=1e-4, rtol=1e-4)
            rows += n
    finally:
        tiny.model.set_attn_implementation(implementation)


def test_batch_size_does_not_change_results_beyond_float_noise(tiny):
    suite = suite_from_records(RECORDS)
    trace = build_trace(tiny, suite, steps=4, needs=ALL, options=OPTIONS)
    one_by_one = score_paths(tiny.model, trace.paths, ALL, trace.options, batch_tokens=1)
    torch.testing.assert_close(one_by_one.logprobs, trace.base.logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one_by_one.gold_logprob, trace.base.gold_logprob, atol=1e-4, rtol=1e-4)


def test_cache_in_memory_and_on_disk(tiny, monkeypatch):
    suite = suite_from_records(RECORDS)
    first = build_trace(tiny, suite, steps=4, needs=ALL, options=OPTIONS)
    assert first.timings["generate"] > 0 and all(f.is_file() for f in first.files)
    assert build_trace(tiny, suite, steps=4, needs=ALL, options=OPTIONS) is first
    trace_mod.DEFAULT_CACHE.clear()

    def no_model_work(*a, **k):
        raise AssertionError("base work repeated")

    with monkeypatch.context() as m:
        m.setattr(build_mod, "generate_recorded", no_model_work)
        m.setattr(build_mod, "score_paths", no_model_work)
        again = build_trace(tiny, suite, steps=4, needs=ALL, options=OPTIONS)
    assert again.timings == {"generate": 0.0, "score": 0.0}
    assert again.key == first.key and [p.tokens for p in again.paths] == [p.tokens for p in first.paths]
    for name, t in first.base.tensors().items():
        assert torch.equal(again.base.tensors()[name], t)

    # other needs: paths are reused (no generation), scores are new, from a teacher-forced pass
    with monkeypatch.context() as m:
        m.setattr(build_mod, "generate_recorded", no_model_work)
        other = build_trace(tiny, suite, steps=4, needs={"logprobs"}, options=OPTIONS)
    assert other.key != first.key and other.timings == {"generate": 0.0, "score": other.timings["score"]}
    assert other.timings["score"] > 0
    torch.testing.assert_close(other.base.logprobs, first.base.logprobs, atol=1e-4, rtol=1e-4)
    # and are read back under their own key
    trace_mod.DEFAULT_CACHE.clear()
    with monkeypatch.context() as m:
        m.setattr(build_mod, "generate_recorded", no_model_work)
        m.setattr(build_mod, "score_paths", no_model_work)
        assert build_trace(tiny, suite, steps=4, needs={"logprobs"}, options=OPTIONS).key == other.key
    # other steps or prompts: new paths
    assert build_trace(tiny, suite, steps=3, needs={"logprobs"}).timings["generate"] > 0
    changed = suite_from_records([dict(RECORDS[0], prompt="The capital of Italy is")] + RECORDS[1:])
    assert build_trace(tiny, changed, steps=4, needs={"logprobs"}).timings["generate"] > 0


def test_damaged_cache_is_rebuilt(tiny):
    suite = suite_from_records(RECORDS)
    first = build_trace(tiny, suite, steps=3, needs={"logprobs"})
    for f in first.files:
        f.write_bytes(b"not safetensors")
    trace_mod.DEFAULT_CACHE.clear()
    again = build_trace(tiny, suite, steps=3, needs={"logprobs"})
    assert again.timings["generate"] > 0
    assert torch.equal(again.base.logprobs, first.base.logprobs)


def test_own_cache_is_isolated_from_the_default(tiny, tmp_path):
    suite = suite_from_records(RECORDS)
    own = TraceCache(tmp_path / "own", memory_limit=1)
    first = build_trace(tiny, suite, steps=3, needs={"logprobs"}, cache=own)
    assert first.key in own and len(own) == 1 and len(trace_mod.DEFAULT_CACHE) == 0
    assert [f.parent for f in first.files] == [tmp_path / "own"] * 2 and all(f.is_file() for f in first.files)
    assert first.files[0].name.startswith("paths-") and first.files[1].name == f"scores-{first.key}.safetensors"
    assert build_trace(tiny, suite, steps=3, needs={"logprobs"}, cache=own) is first
    # the default cache holds neither the trace nor its files: it builds the same one again
    default = build_trace(tiny, suite, steps=3, needs={"logprobs"})
    assert default is not first and default.key == first.key and default.timings["generate"] > 0
    assert torch.equal(default.base.logprobs, first.base.logprobs)
    # a full memory drops the trace stored first; its files stay and are read back
    second = build_trace(tiny, suite, steps=2, needs={"logprobs"}, cache=own)
    assert second.key in own and first.key not in own and len(own) == 1
    again = build_trace(tiny, suite, steps=3, needs={"logprobs"}, cache=own)
    assert again is not first and again.timings == {"generate": 0.0, "score": 0.0}
    own.clear()
    assert len(own) == 0 and all(f.is_file() for f in first.files)
    # use_cache=False neither reads nor writes the cache it is given
    unused = TraceCache(tmp_path / "unused")
    assert build_trace(tiny, suite, steps=3, needs={"logprobs"}, use_cache=False, cache=unused).files == ()
    assert len(unused) == 0 and not unused.directory.exists()


def test_cache_memory_drops_the_trace_stored_first(tmp_path):
    cache = TraceCache(tmp_path / "own", memory_limit=2)
    a, b, c = (SimpleNamespace(key=k) for k in "abc")
    cache.put(a)
    cache.put(b)
    assert cache.get("a") is a and cache.get("x") is None
    cache.put(c)  # a was stored first: it goes, although it was read last
    assert "a" not in cache and cache.get("b") is b and cache.get("c") is c
    assert TraceCache().directory == tmp_path / "cache" / "traces"  # $TOGGLE_CACHE_DIR (fixture), read at use


def test_subset_and_trace_along(tiny):
    trace = build_trace(tiny, suite_from_records(RECORDS), steps=4, needs=ALL, options=OPTIONS)
    sub = trace.subset(["long", "fact"])
    assert sub.prompt_ids == ["long", "fact"]
    n_long = len(trace.paths[2].tokens)
    torch.testing.assert_close(sub.base.logprobs[:n_long], trace.base.logprobs[-n_long:])
    with pytest.raises(ToggleError, match="no prompt 'x'"):
        trace.subset(["x"])
    # score the base model along someone else's path (free-running audit)
    other = [TokenPath(p.prompt_id, p.prompt_ids, p.content, tuple(reversed(p.tokens)), p.answer) for p in trace.paths]
    along = trace_along(tiny, other, ALL, OPTIONS)
    assert along.base.steps == trace.base.steps
    assert not torch.equal(along.base.logprobs, trace.base.logprobs) or all(len(p.tokens) == 1 for p in other)


def test_errors(tiny):
    suite = suite_from_records(RECORDS)
    with pytest.raises(ToggleError, match="no prompt has an answer|no calibration prompt has an answer"):
        build_trace(tiny, suite_from_records([{"prompt": "x"}]), needs={"gold"})
    with pytest.raises(ToggleError, match="block 7 does not exist; this model has 2 blocks"):
        build_trace(tiny, suite, needs={"hidden"}, options=SignalOptions(hidden_layer=7))
    with pytest.raises(ToggleError, match="no prompts in split 'heldout'"):
        build_trace(tiny, suite_from_records(RECORDS[:1]), split="heldout")
    assert len(find_blocks(tiny.model)[1]) == 2


def test_option_past_the_model_names_its_declaration(tiny, tmp_path):
    from toggle.specs import load_specs
    spec = tmp_path / "deep.stl"
    spec.write_text("option attn_span = 8\noption attn_layers = 0, 5\np = always[0:3] (attn_cos >= 0.5)\n")
    with pytest.raises(ToggleError) as e:
        build_trace(tiny, suite_from_records(RECORDS), load_specs([spec]))
    assert e.value.exit_code == 2
    assert str(e.value).startswith(f"{spec}:2:8: option attn_layers: block 5 does not exist; this model has 2 blocks"), \
        str(e.value)
    spec.write_text("option hidden_layer = -4\np = always[0:3] (hidden_cos >= 0.5)\n")
    with pytest.raises(ToggleError, match=r"deep.stl:1:8: option hidden_layer: block -4 does not exist"):
        build_trace(tiny, suite_from_records(RECORDS), load_specs([spec]))


def test_generation_batches_cap_rows_and_padded_tokens():
    from toggle.trace.generate import generation_batches
    lengths = [1, 5, 3, 600, 2, 7]
    assert generation_batches(lengths, 2, 10**9) == [[0, 4], [2, 1], [5, 3]]  # rows only: pairs in length order
    # 4 rows x 5 tokens fit in 20; the 7-token prompt does not join them; 600 > 20 stands alone
    assert generation_batches(lengths, 32, 20) == [[0, 4, 2, 1], [5], [3]]


@pytest.mark.parametrize("prompts", ["varied", "one opening"])
def test_recorded_generation_matches_the_teacher_forced_pass(tiny, monkeypatch, prompts):
    """The base trace's outputs are recorded while generating; step t must be the output a
    teacher-forced pass gives at step t of the same path (to float rounding), also for rows
    that stop early beside longer ones, in batches with padding, and when the prompts' shared
    opening is run once: against generation and scoring with every row run whole."""
    records = RECORDS[:3] if prompts == "varied" else ONE_OPENING
    encoded = encode_suite(suite_from_records(records), tiny.tokenizer)
    settings = GenerationSettings(steps=6)
    free = generate_paths(tiny.model, tiny.tokenizer, encoded, GenerationSettings(steps=6, stop_at_eos=False))
    # make a token of the first prompt's continuation end it (the tiny model rarely picks EOS);
    # a continuation that repeats one token (tiny Gemma 2's) has none to offer
    stop = next((k for k in range(1, 6) if free[0][k] not in free[0][:k]), None)
    if stop is not None:
        monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", free[0][stop])
    needs, options = {"logprobs", "attention", "hidden"}, SignalOptions(hidden_layer=0, attn_layers=(1,),
                                                                         attn_span=64).resolved(2)
    runs = []
    real = generate_mod.prefix_cache
    monkeypatch.setattr(generate_mod, "prefix_cache", lambda model, ids, device: runs.append(len(ids)) or real(model, ids, device))
    tokens, out = generate_recorded(tiny.model, tiny.tokenizer, encoded, settings, needs, options, batch_size=4)
    assert len(runs) == (prompts == "one opening")
    if stop is not None:
        assert len(tokens[0]) == stop + 1 and max(len(t) for t in tokens) > stop + 1
    assert out.steps == tuple(len(t) for t in tokens)
    monkeypatch.setattr(prefix_mod, "PREFIX_MIN", 10**6)  # the reference: every row run whole
    assert tokens == generate_paths(tiny.model, tiny.tokenizer, encoded, settings)
    paths = [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, tokens)]
    teacher = score_paths(tiny.model, paths, needs, options)
    torch.testing.assert_close(out.logprobs, teacher.logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.attn, teacher.attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.hidden, teacher.hidden, atol=1e-4, rtol=1e-4)
    assert out.gold_logprob is None  # answers are off the path: build_trace scores them apart


def test_token_capped_generation_gives_the_same_paths(tiny):
    encoded = encode_suite(suite_from_records(RECORDS), tiny.tokenizer)
    settings = GenerationSettings(steps=5)
    wide = generate_paths(tiny.model, tiny.tokenizer, encoded, settings, batch_tokens=10**9)
    one_each = generate_paths(tiny.model, tiny.tokenizer, encoded, settings, batch_tokens=1)
    assert wide == one_each and all(len(t) >= 1 for t in wide)


def test_a_shared_prefix_is_run_once_and_changes_nothing(tiny, monkeypatch):
    """Prompts that start alike (a system prompt) are scored from one cached forward of the shared
    tokens: the same outputs as running every row whole, attention to the prompt's first tokens
    included, whether those tokens lie in the shared part or after it."""
    encoded = encode_suite(suite_from_records(ONE_OPENING), tiny.tokenizer)
    tokens = generate_paths(tiny.model, tiny.tokenizer, encoded, GenerationSettings(steps=5))
    paths = [TokenPath(e.prompt.id, e.ids, e.content, t, e.answer_ids) for e, t in zip(encoded, tokens)]
    options = SignalOptions(hidden_layer=0, attn_layers=(1,), attn_span=64).resolved(2)
    runs = []
    real = score_mod.prefix_cache
    monkeypatch.setattr(score_mod, "prefix_cache", lambda model, ids, device: runs.append(len(ids)) or real(model, ids, device))
    shared = score_paths(tiny.model, paths, ALL, options, batch_tokens=4096)  # one batch: rows padded
    first = encoded[0].content[0]
    assert len(runs) == 1 and runs[0] > first + 1  # once, for the step pass and the gold pass
    assert runs[0] < first + 64  # attention spans the shared tokens and the ones after them
    monkeypatch.setattr(prefix_mod, "PREFIX_MIN", 10**6)
    whole = score_paths(tiny.model, paths, ALL, options, batch_tokens=4096)
    assert len(runs) == 1
    for name, t in whole.tensors().items():
        torch.testing.assert_close(shared.tensors()[name], t, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("counts", [(4, 1, 3), (4, 4, 4), (1, 4, 2, 3), (2, 2, 4, 4, 1)])
def test_recorded_log_probabilities_are_packed_in_place(counts):
    # generation writes each prompt's rows into one (prompts, steps, vocabulary) tensor; packing
    # moves them together without a second copy of them all (the result shares its memory)
    from toggle.trace.record import packed

    rows = torch.randn(len(counts), 4, 5)
    want = torch.cat([rows[i, :n] for i, n in enumerate(counts)])
    got = packed(rows, counts)
    assert torch.equal(got, want)
    assert got.untyped_storage().data_ptr() == rows.untyped_storage().data_ptr()


def test_a_prompt_past_learned_positions_is_named_before_any_tracing(tiny_gpt2_dir, tiny_llama_dir):
    lm = load_model(str(tiny_gpt2_dir))  # learned position embeddings: n_positions 1024
    long = suite_from_records([{"id": "essay", "prompt": "the robot reads the stars " * 250, "chat": False}])
    assert len(encode_suite(long, lm.tokenizer)[0].ids) + 8 > 1024
    with pytest.raises(ToggleError, match="prompt 'essay' is .* needs .* positions; this model's learned position "
                                          "embeddings hold 1024"):
        build_trace(lm, long, needs={"logprobs"}, steps=8)
    rotary = load_model(str(tiny_llama_dir))  # rotary positions have no table to run out of: it runs, with a note
    encoded = encode_suite(long, rotary.tokenizer)
    assert rotary.model.config.max_position_embeddings == 512 < len(encoded[0].ids)
    assert build_trace(rotary, long, needs={"logprobs"}, steps=2).paths
    assert context_note(rotary.model, encoded, 2, "p.yaml") == (
        f"p.yaml: 1 prompt with 2 steps run past this model's declared context of 512 positions (prompt 'essay': "
        f"{len(encoded[0].ids) + 1}); the model runs there, on positions it was not trained on")
    short = encode_suite(suite_from_records(RECORDS[:1]), rotary.tokenizer)
    assert context_note(rotary.model, short, 2, "p.yaml") is None
    # the edge: a prompt and its steps read len + steps - 1 positions (the last step is predicted,
    # never fed); a gold answer longer than the steps reads len + answer - 1
    from toggle.trace.limits import check_lengths

    edge = [dataclasses.replace(encoded[0], ids=encoded[0].ids[:1021])]
    check_lengths(lm.model, edge, 4, {"logprobs"}, SignalOptions(), "p.yaml")  # 1024 positions: fits
    with pytest.raises(ToggleError, match="with the 5 steps the properties read it needs 1025 positions"):
        check_lengths(lm.model, edge, 5, {"logprobs"}, SignalOptions(), "p.yaml")
    answered = [dataclasses.replace(edge[0], answer_ids=(5,) * 6)]
    check_lengths(lm.model, answered, 4, {"logprobs"}, SignalOptions(), "p.yaml")  # answers unread without gold
    with pytest.raises(ToggleError, match="with its 6-token gold answer it needs 1026 positions"):
        check_lengths(lm.model, answered, 4, {"logprobs", "gold"}, SignalOptions(), "p.yaml")
    assert context_note(lm.model, encode_suite(long, lm.tokenizer), 8, "p.yaml") is None  # learned: an error instead


def test_attention_pooled_past_a_sliding_window_is_named(tmp_path):
    from tiny_models import make_tiny_model

    lm = load_model(str(make_tiny_model("mistral", tmp_path / "mistral")))
    lm.model.config.sliding_window = 8  # every layer attends within the last 8 tokens
    suite = suite_from_records(RECORDS[:1])
    with pytest.raises(ToggleError, match=r"option attn_layers: layer 1 of this model attends within a sliding "
                                          r"window of 8 tokens, and prompt 'fact' .* with its 5 steps is 9"):
        build_trace(lm, suite, needs={"logprobs", "attention"}, options=OPTIONS, steps=5)
    assert len(encode_suite(suite, lm.tokenizer)[0].ids) == 5  # 5 + 4 - 1 = 8 positions: within the window
    assert build_trace(lm, suite, needs={"logprobs", "attention"}, options=OPTIONS, steps=4).paths
    assert build_trace(lm, suite, needs={"logprobs", "hidden"}, options=OPTIONS, steps=4).paths  # no attention read
    lm.model.config.layer_types = ["sliding_attention", "full_attention"]  # Gemma 3 style: layer 1 is full
    assert build_trace(lm, suite, needs={"logprobs", "attention"}, options=OPTIONS, steps=4).paths
    with pytest.raises(ToggleError, match=r"layer 0 .* pool only full-attention layers \(option attn_layers = 1\)"):
        build_trace(lm, suite, needs={"logprobs", "attention"}, options=SignalOptions(hidden_layer=0, attn_layers=(0, 1),
                                                                                       attn_span=6), steps=5)


def test_paths_ignore_the_model_s_own_sampling_settings(tiny_llama_dir):
    """A checkpoint's generation_config.json (repetition_penalty, no_repeat_ngram_size, ...) must not
    bend the base paths: they are the model's argmax at every step."""
    lm = load_model(str(tiny_llama_dir))
    encoded = encode_suite(suite_from_records(RECORDS[:1] + RECORDS[2:3]), lm.tokenizer)
    plain = generate_paths(lm.model, lm.tokenizer, encoded, GenerationSettings(steps=8, stop_at_eos=False))
    for path, e in zip(plain, encoded):  # the argmax path, step by step
        ids = list(e.ids)
        for token in path:
            with torch.no_grad():
                assert int(lm.model(torch.tensor([ids])).logits[0, -1].argmax()) == token
            ids.append(token)
    assert any(len(set(p)) < len(p) for p in plain)  # a repeat, which the settings below would forbid
    lm.model.generation_config.update(repetition_penalty=1.5, no_repeat_ngram_size=1, min_new_tokens=8)
    assert generate_paths(lm.model, lm.tokenizer, encoded, GenerationSettings(steps=8, stop_at_eos=False)) == plain
    assert lm.model.generation_config.no_repeat_ngram_size == 1  # the model's own settings are left as they were
