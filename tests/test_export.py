"""Artifacts: toggle format and GGUF round trips (logits match the applier's simulation),
accounted bytes against bytes on disk, manifest validation, atomic writes, `toggle apply`."""
from functools import partial
import json
import os
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tiny_models import make_tiny_model
from toggle import llama_cpp
from toggle.cli import main
from toggle.compress.apply import PlanApplier
from toggle.errors import InvalidInput, ModelLoadError
from toggle.api import write_artifact
from toggle.formats import read_artifact
from toggle.load import load_model
from toggle.modules import compressible_modules
from toggle.plan import Methods, ModuleSetting, Plan
from toggle.signals import compute_signals
from toggle.trace import TokenPath, score_paths

write_gguf = partial(write_artifact, fmt="gguf")

TEXT = "The capital of France is Paris. Once upon a time a small robot"


def _mixed_plan(lm, methods=Methods()):
    """Every kind of stored matrix: quantised at several widths, pruned (all three encodings),
    factorised, the embedding quantised, one module untouched."""
    names = [r.name for r in compressible_modules(lm.model)]
    settings = [ModuleSetting(bits=4), ModuleSetting(bits=8, sparsity=0.5), ModuleSetting(bits=3, sparsity=0.3, rank_ratio=0.5),
                ModuleSetting(bits=16, sparsity=0.9), ModuleSetting(bits=2, scale_bits=8), ModuleSetting(rank_ratio=0.25),
                ModuleSetting(bits=16, sparsity=0.05)]
    modules = {n: settings[i % len(settings)] for i, n in enumerate(names[1:-1])}
    modules[names[0]] = ModuleSetting(bits=6, sparsity=0.2)
    return Plan(lm.model_id, modules, methods, meta={"fingerprint": lm.fingerprint})


def _simulate(lm, plan, ids, stats=None, new_tokens=0):
    applier = PlanApplier(lm.model, stats=stats)
    applier.apply(plan)
    try:
        with torch.no_grad():
            logits = lm.model(ids).logits
            generated = lm.model.generate(ids, max_new_tokens=new_tokens, do_sample=False) if new_tokens else None
    finally:
        applier.restore()
    return logits, generated, applier


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("methods", [Methods(), Methods(group_size=32, symmetric=True, pruner="wanda", quantizer="awq",
                                                        lowrank="asvd"),
                                     Methods(group_size=32, quantizer="gptq", scale_bits=6)],
                         ids=["rtn", "aware", "scaled"])
def test_toggle_round_trip(arch, methods, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    from toggle.compress import collect_stats

    lm = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir))
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids
    stats = collect_stats(lm.model, [ids[0]])
    plan = _mixed_plan(lm, methods)
    expected, _, applier = _simulate(lm, plan, ids, stats)
    info = write_artifact(lm, plan, tmp_path / "art", applier=applier)
    assert {"config.json", "generation_config.json", "model.safetensors", "toggle.json"} <= {p.name for p in info.path.iterdir()}
    assert (info.path / "tokenizer.json").is_file() or (info.path / "vocab.json").is_file()
    encodings = {e for per_module in info.encodings.values() for e in per_module}
    assert encodings == {"dense", "bitmask", "indices"}
    # Accounted bytes are exactly the tensor data written.
    from safetensors import safe_open

    with safe_open(str(info.path / "model.safetensors"), framework="pt") as f:
        on_disk = sum(f.get_tensor(k).nbytes for k in f.keys())
    assert on_disk == info.tensor_bytes_on_disk == info.cost.tensor_bytes == info.cost.bytes

    back = read_artifact(info.path)
    with torch.no_grad():
        got = back.model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert (got - expected).abs().max() < 1e-2 * (expected.abs().max())  # and not trivially: it did change
    assert back.extra["base_model"] == lm.model_id and back.extra["plan"].modules == plan.modules
    factorised = [n for n, m in back.model.named_modules() if type(m).__name__ == "LowRankLinear"]
    assert factorised and all(plan.modules[n].rank_ratio < 1 for n in factorised)
    # The general loader recognises the directory too.
    again = load_model(str(info.path))
    assert again.source == "toggle"
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, got, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gguf_round_trip_generates_like_the_simulation(arch, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    lm = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir))
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids
    names = [r.name for r in compressible_modules(lm.model)]
    kinds = [ModuleSetting(bits=4), ModuleSetting(bits=8, sparsity=0.5), ModuleSetting(bits=5),
             ModuleSetting(bits=16, sparsity=0.3)]
    plan = Plan(lm.model_id, {n: kinds[i % len(kinds)] for i, n in enumerate(names)},
                Methods(group_size=32, symmetric=True))
    expected, generated, _ = _simulate(lm, plan, ids, new_tokens=8)
    info = write_gguf(lm, plan, tmp_path / "model.gguf")
    assert info.tensor_bytes_on_disk == info.cost.tensor_bytes  # tensor data, alignment padding included
    assert info.weights_file_bytes == info.cost.bytes  # and the header: the whole file, exactly
    assert set(info.encodings[names[0]]) <= {"Q4_0", "Q8_0", "Q5_0", "F16"}
    back = load_model(str(info.path))
    assert back.source == "gguf"
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, expected, rtol=0, atol=1e-5)
        out = back.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8
    assert torch.equal(out, generated)
    # The asymmetric types hold the same plan when nothing is pruned.
    asym = Plan(lm.model_id, {n: ModuleSetting(bits=4 if i % 2 else 5) for i, n in enumerate(names)},
                Methods(group_size=32, symmetric=False))
    expected, _, _ = _simulate(lm, asym, ids)
    info = write_gguf(lm, asym, tmp_path / "asym.gguf")
    assert {e for v in info.encodings.values() for e in v} == {"Q4_1", "Q5_1"}
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(info.path)).model(ids).logits, expected, rtol=0, atol=1e-5)


def _fields(path) -> dict:
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()
            if not k.startswith(("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"))}


def test_gguf_metadata_copies_the_source_tokenizer_keys_and_names_the_file_type(tiny_llama_dir, tmp_path):
    """A model loaded from a GGUF file is written with that file's pre-tokenizer and BOS/space
    flags (llama.cpp splits text by them); general.file_type names the type of most weight bytes."""
    from toggle.formats.gguf import write_gguf as write_raw

    lm = load_model(str(tiny_llama_dir))
    names = [r.name for r in compressible_modules(lm.model)]
    plan = Plan(lm.model_id, {n: ModuleSetting(bits=4 if i else 16) for i, n in enumerate(names)},
                Methods(group_size=32, symmetric=False))  # Q4_1 blocks, the embedding F16
    first = write_gguf(lm, plan, tmp_path / "a.gguf")
    fields = _fields(first.path)
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # a safetensors source: what its tokenizer.json describes
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_1)
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    # a GGUF source with its own pre-tokenizer and flags: they travel to the file toggle writes
    source_keys = {"tokenizer.ggml.pre": "smollm", "tokenizer.ggml.add_bos_token": False,
                   "tokenizer.ggml.add_space_prefix": False}
    back = load_model(str(first.path))
    tensors = {f"{n}.weight": ("F32", t.detach().float().numpy()) for n, t in
               ((n, m.weight) for n, m in back.model.named_modules() if n in names)}
    from toggle.modules import stored_other_tensors

    for n, t in stored_other_tensors(back.model, compressible_modules(back.model)).items():
        tensors.setdefault(n, ("F32", t.detach().float().numpy()))
    write_raw(tmp_path / "src.gguf", back.model, back.tokenizer, tensors, name="src", source=source_keys)
    src = load_model(str(tmp_path / "src.gguf"))
    assert _fields(tmp_path / "src.gguf")["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    # transformers builds a tokenizer from a GGUF with one more token than the file has rows for
    rows = src.model.get_input_embeddings().weight.shape[0]
    assert len(src.tokenizer) == rows + 1
    again = write_gguf(src, plan, tmp_path / "b.gguf")
    fields = _fields(again.path)
    # one token per embedding row, as in the file it came from (llama.cpp refuses any other count)
    tokens = [gguf.GGUFReader(str(f)).fields["tokenizer.ggml.tokens"].contents() for f in (tmp_path / "src.gguf",
                                                                                          again.path)]
    assert tokens[1] == tokens[0] and len(tokens[1]) == rows
    for key, value in source_keys.items():
        assert fields[key] == value, key
    assert again.weights_file_bytes == again.cost.bytes  # the copied keys are in the accounted header


_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_TOKENIZER_CORPUS = [
    "The year 2024 had 365 days and 12345 visitors.", "It's what HE'S done; we'VE seen 3.14159 and 1000000.",
    "def f(x):\n\treturn x * 42\n\n\n", "  indented   text   with    spaces", "Ünïcödé wörds and 日本語 text 123",
    "!!! ??? ... --- === ''' \"\"\"", "a'b c'd 'quoted' words", "email: a.b@c.com, url http://x.y/z?q=1"] * 30


def _byte_level_tokenizer(kind: str):
    """A small BPE tokenizer trained with the pre-tokenizer of GPT-2, SmolLM, Llama 3 or Qwen2."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind in ("gpt2", "smollm"))
    tok.pre_tokenizer = {
        "gpt2": byte_level,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
        "llama3": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), "isolated"), byte_level]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN2_SPLIT), "isolated"), byte_level]),
    }[kind]
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_TOKENIZER_CORPUS, trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def _tiny_llama_with(tokenizer, path):
    """A one-block random Llama using `tokenizer`, saved at `path` and loaded through the loader."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=2))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(str(path))


@pytest.mark.skipif(not llama_cpp.available(), reason=f"llama.cpp is not installed: {llama_cpp.HOW}")
@pytest.mark.parametrize("kind, pre", [("gpt2", "gpt-2"), ("smollm", "smollm"), ("llama3", "llama-bpe"),
                                       ("qwen2", "qwen2")])
def test_llama_cpp_tokenizes_a_gguf_of_a_safetensors_model_as_its_tokenizer_does(kind, pre, tmp_path):
    """The pre-tokenizer decides where BPE may merge; a file written with llama.cpp's "default"
    one split each of these tokenizers' text otherwise (checked: 50-71 tokens became 66-78)."""
    tokenizer = _byte_level_tokenizer(kind)
    lm = _tiny_llama_with(tokenizer, tmp_path / "src")
    names = [r.name for r in compressible_modules(lm.model)]
    info = write_gguf(lm, Plan.uniform(lm.model_id, names, ModuleSetting(bits=16)), tmp_path / "f.gguf")
    assert _fields(info.path)["tokenizer.ggml.pre"] == pre
    text = ("In 2024, it's 12345 and 3.14159!  We'VE got\n\n\tdef f(x):  return 1000000 ??? 日本語 'quoted' "
            "a.b@c.com   end")
    out = subprocess.run([str(llama_cpp.tool("llama-tokenize")), "-m", str(info.path), "-p", text, "--ids",
                          "--log-disable", "--no-bos"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == lm.tokenizer(text, add_special_tokens=False).input_ids
    assert info.meta["pre_tokenizer"] == {"name": pre, "from": "the tokenizer's pre-tokenizer (tokenizer.json)"}


@pytest.mark.skipif(not llama_cpp.available(), reason=f"llama.cpp is not installed: {llama_cpp.HOW}")
def test_llama_cpp_adds_the_bos_a_post_processor_adds(tmp_path):
    """Llama 3 adds BOS by its tokenizer.json post-processor, not by add_bos_token: the file says to add it."""
    from tokenizers import processors

    tokenizer = _byte_level_tokenizer("llama3")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    assert tokenizer("hi").input_ids[0] == 1 and not getattr(tokenizer, "add_bos_token", False)
    lm = _tiny_llama_with(tokenizer, tmp_path / "src")
    names = [r.name for r in compressible_modules(lm.model)]
    info = write_gguf(lm, Plan.uniform(lm.model_id, names, ModuleSetting(bits=16)), tmp_path / "f.gguf")
    assert _fields(info.path)["tokenizer.ggml.add_bos_token"] is True
    text = "The year 2024 had 365 days"
    out = subprocess.run([str(llama_cpp.tool("llama-tokenize")), "-m", str(info.path), "-p", text, "--ids",
                          "--log-disable"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == lm.tokenizer(text).input_ids  # BOS first, as transformers


def test_an_unrecognised_pre_tokenizer_is_written_as_default_with_a_note(tmp_path, capsys):
    from tokenizers import pre_tokenizers

    tokenizer = _byte_level_tokenizer("gpt2")
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    lm = _tiny_llama_with(tokenizer, tmp_path / "src")
    names = [r.name for r in compressible_modules(lm.model)]
    Plan.uniform(lm.model_id, names, ModuleSetting(bits=16)).save(tmp_path / "plan.yaml")
    assert main(["apply", str(tmp_path / "plan.yaml"), str(tmp_path / "src"), "--out", str(tmp_path / "f.gguf"),
                 "--format", "gguf"]) == 0
    assert _fields(tmp_path / "f.gguf")["tokenizer.ggml.pre"] == "default"
    assert ("toggle: note: the tokenizer's pre-tokenizer is not one toggle maps to llama.cpp's (gpt-2, smollm, "
            "llama-bpe, qwen2), so the file has llama.cpp's 'default' one") in capsys.readouterr().out


def test_gguf_refuses_what_it_cannot_hold(tiny_llama_dir, tmp_path):
    lm = load_model(str(tiny_llama_dir))
    up = "model.layers.0.mlp.up_proj"
    cases = [
        (Plan(lm.model_id, {up: ModuleSetting(bits=4)}, Methods(group_size=128)), "group_size 128, symmetric false has no GGUF type"),
        # the legacy types are rtn's and gptq's; llama.cpp's quantisers are named with their own menus
        (Plan(lm.model_id, {up: ModuleSetting(bits=3)}, Methods(group_size=32)),
         r"3 bits with quantizer rtn, .*with group_size 32 and quantizer rtn or gptq, 8 bits symmetric \(Q8_0\), .*; "
         r"llama.cpp's own types by bits, quantizer ggml: 2 \(Q2_K\), 3 \(Q3_K\), 4 \(Q4_K\), 5 \(Q5_K\), 6 \(Q6_K\), "
         r"8 \(Q8_0\); quantizer ggml_iq: 2 \(IQ2_S\), 3 \(IQ3_S\), 4 \(IQ4_XS\)"),
        (Plan(lm.model_id, {up: ModuleSetting(rank_ratio=0.5)}), "GGUF has no factorised matrices"),
        (Plan(lm.model_id, {up: ModuleSetting(bits=4, sparsity=0.5)}, Methods(group_size=32)),
         "Q4_1: its per-block minimum cannot represent the pruned zeros"),
        (Plan(lm.model_id, {up: ModuleSetting(bits=4, scale_bits=8)}, Methods(group_size=32)),
         "scale_bits 8: GGUF's legacy blocks store float16 scales"),
    ]
    for plan, reason in cases:
        with pytest.raises(InvalidInput, match=f"modules.{up}: .*{reason}"):
            write_gguf(lm, plan, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


LONG_TEXT = "The capital of France is Paris. Once upon a time a small robot learned to read the stars. " * 6


def _rope_paths(lm):
    ids = lm.tokenizer(LONG_TEXT).input_ids  # 130-odd positions: where scaled and plain rope part ways
    return [TokenPath("a", tuple(ids), (0, len(ids)), (5, 9, 11, 7, 3, 8))]


def test_llama3_rope_scaling_travels_through_gguf(tmp_path, monkeypatch):
    """Llama 3.x's rope scaling is written as llama.cpp's rope_freqs tensor (priced in the
    accounted size) and read back: transformers alone would ignore it and build another model."""
    from toggle.formats import gguf as gguf_format

    lm = load_model(str(make_tiny_model("llama3", tmp_path / "src")))
    names = [r.name for r in compressible_modules(lm.model)]
    plan = Plan.uniform(lm.model_id, names, ModuleSetting(bits=16))
    info = write_gguf(lm, plan, tmp_path / "own.gguf")
    assert info.weights_file_bytes == info.cost.bytes
    factors = next(t for t in gguf.GGUFReader(str(info.path)).tensors if t.name == "rope_freqs.weight")
    assert factors.data.shape == (16,) and factors.data[0] == 1.0 and factors.data[-1] == pytest.approx(32.0)
    source = score_paths(lm.model, _rope_paths(lm), {"logprobs"}, None)

    def reread_matches(path):
        back = load_model(str(path))
        assert back.model.config.rope_parameters["rope_type"] == "llama3"
        again = score_paths(back.model, _rope_paths(lm), {"logprobs"}, None)
        # float16 weights against float32 ones: ~1e-6; the same weights with plain rope: ~2e-3
        return compute_signals(["jsd"], again, source)["jsd"].max() < 1e-4

    assert reread_matches(info.path)  # toggle's own file: the settings are in toggle.rope_parameters
    # a file from elsewhere (llama.cpp's converter) has the factors only
    with monkeypatch.context() as m:
        m.setattr(gguf_format, "ROPE_KEY", "other.key")
        foreign = write_gguf(lm, plan, tmp_path / "foreign.gguf").path
        m.setattr(gguf_format, "_extra_tensors",
                  lambda model: {"rope_freqs.weight": np.linspace(1, 3, 16, dtype=np.float32)})
        odd = write_gguf(lm, plan, tmp_path / "odd.gguf").path
    assert reread_matches(foreign)  # Llama 3.x's factors are recognised
    # factors that are no Llama 3.x's are refused: the model would not be the one llama.cpp runs
    with pytest.raises(ModelLoadError, match="rope frequency factors .* that are not Llama 3.x's rope scaling") as e:
        load_model(str(odd))
    assert str(e.value).startswith(f"{odd}: the file holds")  # toggle's reason as it is, not re-wrapped


def test_gguf_refuses_a_model_llama_cpp_would_run_differently(tiny_llama_dir, tmp_path, monkeypatch):
    """Rope scaling other than Llama 3's (YaRN, ...) and sliding-window attention are not written: a file
    without them would run in llama.cpp with other positions or attention than the model searched."""
    lm = load_model(str(tiny_llama_dir))
    names = [r.name for r in compressible_modules(lm.model)]
    plan = Plan.uniform(lm.model_id, names, ModuleSetting(bits=16))
    monkeypatch.setattr(lm.model.config, "rope_parameters",
                        {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 32.0}, raising=False)
    with pytest.raises(InvalidInput, match=r"this llama model's rope scaling 'yarn' \(config.json rope_scaling / "
                                           r"rope_parameters\) is not written .*; use --format toggle"):
        write_gguf(lm, plan, tmp_path / "x.gguf")
    monkeypatch.setattr(lm.model.config, "rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    monkeypatch.setattr(lm.model.config, "model_type", "qwen2")
    monkeypatch.setattr(lm.model.config, "use_sliding_window", True, raising=False)
    monkeypatch.setattr(lm.model.config, "sliding_window", 64, raising=False)
    with pytest.raises(InvalidInput, match=r"this qwen2 model uses sliding-window attention \(config.json "
                                           r"sliding_window 64\), which llama.cpp's qwen2 does not"):
        write_gguf(lm, plan, tmp_path / "x.gguf")
    monkeypatch.setattr(lm.model.config, "use_sliding_window", False)  # Qwen2's window, switched off: written
    write_gguf(lm, plan, tmp_path / "off.gguf")
    (tmp_path / "off.gguf").unlink()
    # Mistral has no use_sliding_window: a sliding_window below the context is on (Mistral-7B-v0.1's 4096)
    monkeypatch.setattr(lm.model.config, "model_type", "mistral")
    monkeypatch.delattr(lm.model.config, "use_sliding_window")
    monkeypatch.setattr(lm.model.config, "max_position_embeddings", 128)
    with pytest.raises(InvalidInput, match=r"this mistral model uses sliding-window attention \(config.json "
                                           r"sliding_window 64\), which llama.cpp's llama does not"):
        write_gguf(lm, plan, tmp_path / "x.gguf")
    monkeypatch.setattr(lm.model.config, "sliding_window", None)  # Mistral v0.2 and later: none
    write_gguf(lm, plan, tmp_path / "none.gguf")
    (tmp_path / "none.gguf").unlink()
    assert not list(tmp_path.iterdir())


def test_accounted_size_is_the_file_size_within_one_percent(tmp_path):
    """On a model large enough for headers to be small, the files are the accounted size."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "medium")
    tok.save_pretrained(tmp_path / "medium")
    lm = load_model(str(tmp_path / "medium"))
    names = [r.name for r in compressible_modules(lm.model)]
    plan = Plan(lm.model_id, {n: ModuleSetting(bits=4, sparsity=0.5 if i % 3 == 0 else 0.0)
                              for i, n in enumerate(names)}, Methods(group_size=32, symmetric=True))
    for info in (write_artifact(lm, plan, tmp_path / "art"), write_gguf(lm, plan, tmp_path / "m.gguf")):
        assert abs(info.weights_file_bytes - info.cost.bytes) / info.cost.bytes < 0.01, info
        assert info.cost.size_reduction > 0.65


def test_manifest_is_validated_before_use(tiny_llama_dir, tmp_path):
    lm = load_model(str(tiny_llama_dir))
    good = write_artifact(lm, Plan(lm.model_id, {"model.layers.0.mlp.up_proj": ModuleSetting(bits=4)}),
                                 tmp_path / "good").path

    def variant(name, edit):
        d = tmp_path / name
        shutil.copytree(good, d)
        manifest = json.loads((d / "toggle.json").read_text())
        edit(manifest, d)
        (d / "toggle.json").write_text(json.dumps(manifest))
        return d

    escape = variant("escape", lambda m, d: m.update(weights="../good/model.safetensors"))
    with pytest.raises(InvalidInput, match="weights: '../good/model.safetensors' must be a file name inside"):
        read_artifact(escape)
    absolute = variant("absolute", lambda m, d: m.update(weights=str(good / "model.safetensors")))
    with pytest.raises(InvalidInput, match="must be a file name inside the artifact"):
        read_artifact(absolute)

    def symlink(m, d):
        os.symlink(good / "model.safetensors", d / "elsewhere.safetensors")
        m.update(weights="elsewhere.safetensors")

    with pytest.raises(InvalidInput, match="points outside the artifact directory"):
        read_artifact(variant("symlink", symlink))
    with pytest.raises(InvalidInput, match="format_version: 99 is not supported"):
        read_artifact(variant("version", lambda m, d: m.update(format_version=99)))
    with pytest.raises(InvalidInput, match=r"modules.model.layers.0.mlp.up_proj.matrices\[0\].bits: 9"):
        read_artifact(variant("bits", lambda m, d: m["modules"]["model.layers.0.mlp.up_proj"]["matrices"][0].update(bits=9)))

    def drop_tensor(m, d):
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(d / "model.safetensors"))
        del tensors["model.layers.0.mlp.up_proj.scales"]
        save_file(tensors, str(d / "model.safetensors"))

    with pytest.raises(InvalidInput, match="tensor model.layers.0.mlp.up_proj.scales named by toggle.json is missing"):
        read_artifact(variant("missing", drop_tensor))
    with pytest.raises(InvalidInput, match="does not hold model.norm.weight"):
        read_artifact(variant("others", lambda m, d: m["others"].remove("model.norm.weight")))

    def float_codes(m, d):
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(d / "model.safetensors"))
        tensors["model.layers.0.mlp.up_proj.codes"] = tensors["model.layers.0.mlp.up_proj.codes"].float()
        save_file(tensors, str(d / "model.safetensors"))

    with pytest.raises(InvalidInput, match="model.layers.0.mlp.up_proj.codes: packed bits are stored as uint8, this "
                                           "tensor is float32"):
        read_artifact(variant("float-codes", float_codes))
    nested = variant("nested", lambda m, d: None)
    (nested / "toggle.json").write_text("[" * 100000)
    with pytest.raises(InvalidInput, match="toggle.json: not valid JSON"):
        read_artifact(nested)
    assert read_artifact(good).model is not None


def test_writes_are_atomic(tiny_llama_dir, tmp_path, monkeypatch):
    import toggle.formats.toggle_dir

    lm = load_model(str(tiny_llama_dir))
    plan = Plan(lm.model_id, {"model.layers.0.mlp.up_proj": ModuleSetting(bits=4)})
    first = write_artifact(lm, plan, tmp_path / "art")
    before = (first.path / "model.safetensors").read_bytes()
    mask = os.umask(0)
    os.umask(mask)
    # every file as readable as the user's others (safetensors writes its own 0600)
    assert {f.name: f.stat().st_mode & 0o777 for f in first.path.iterdir()} == {
        f.name: 0o666 & ~mask for f in first.path.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(toggle.formats.toggle_dir, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_artifact(lm, plan.with_setting("model.layers.1.mlp.up_proj", ModuleSetting(bits=2)), tmp_path / "art")
    with pytest.raises(RuntimeError, match="disk full"):
        write_artifact(lm, plan, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary leftovers, no half artifact
    assert (first.path / "model.safetensors").read_bytes() == before  # the old artifact is intact
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(InvalidInput, match="exists and is not a toggle artifact"):
        write_artifact(lm, plan, tmp_path / "notes")


def test_cli_apply(tiny_llama_dir, tmp_path, capsys):
    lm = load_model(str(tiny_llama_dir))
    names = [r.name for r in compressible_modules(lm.model)]
    plan_path = Plan.uniform(lm.model_id, names, ModuleSetting(bits=4), Methods(group_size=32, symmetric=True)).save(
        tmp_path / "plan.yaml")
    assert main(["apply", str(plan_path), str(tiny_llama_dir), "--out", str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'art'} (toggle format)" in out
    assert "accounted bytes:" in out and "16-bit dense model:" in out and "% smaller" in out
    assert main(["apply", str(plan_path), str(tiny_llama_dir), "--out", str(tmp_path / "g"), "--format", "gguf"]) == 0
    assert (tmp_path / "g" / "model.gguf").is_file() and "(gguf format)" in capsys.readouterr().out
    assert load_model(str(tmp_path / "g")).source == "gguf"
    # an --out ending in .gguf means GGUF without --format (it wrote a toggle directory of that name)
    assert main(["apply", str(plan_path), str(tiny_llama_dir), "--out", str(tmp_path / "m.gguf")]) == 0
    assert (tmp_path / "m.gguf").is_file() and "(gguf format)" in capsys.readouterr().out

    other = Plan(model="someone/else", modules={}).save(tmp_path / "other.yaml")
    assert main(["apply", str(other), str(tiny_llama_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "the plan was made for 'someone/else'" in err and str(other) in err
    unknown = Plan(lm.model_id, {"model.layers.7.mlp.up_proj": ModuleSetting(bits=4)}).save(tmp_path / "unknown.yaml")
    assert main(["apply", str(unknown), str(tiny_llama_dir), "--out", str(tmp_path / "x")]) == 2
    assert "unknown module(s) model.layers.7.mlp.up_proj" in capsys.readouterr().err
    awq = Plan(lm.model_id, {names[1]: ModuleSetting(bits=4)}, Methods(quantizer="awq")).save(tmp_path / "awq.yaml")
    assert main(["apply", str(awq), str(tiny_llama_dir), "--out", str(tmp_path / "x")]) == 2
    assert "awq needs calibration activation statistics" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # an --out beneath a file: said before the model is loaded, not a traceback after the work
    for out in (tmp_path / "m.gguf" / "x.gguf", tmp_path / "m.gguf" / "dir"):
        assert main(["apply", str(plan_path), "no-such-model-is-loaded", "--out", str(out)]) == 2
        assert f"--out {out}: {tmp_path / 'm.gguf'} is a file, not a folder" in capsys.readouterr().err


def test_cli_apply_unmappable_gguf_is_one_line(tiny_llama_dir, tmp_path):
    lm = load_model(str(tiny_llama_dir))
    plan = Plan(lm.model_id, {"model.layers.0.self_attn.q_proj": ModuleSetting(bits=3)}).save(tmp_path / "p.yaml")
    proc = subprocess.run([sys.executable, "-m", "toggle.cli", "apply", str(plan), str(tiny_llama_dir),
                           "--out", str(tmp_path / "m.gguf"), "--format", "gguf"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "modules.model.layers.0.self_attn.q_proj: 3 bits" in lines[0]


@pytest.mark.integration
def test_builtin_model_artifacts(builtin_model, tmp_path):
    """SmolLM2-135M at Q4_0 with a Q8_0 embedding: both formats hold exactly the accounted
    tensor bytes, the toggle artifact reproduces the simulation and still answers."""
    lm = builtin_model
    names = [r.name for r in compressible_modules(lm.model)]
    plan = Plan.uniform(lm.model_id, names, ModuleSetting(bits=4), Methods(group_size=32, symmetric=True))
    plan = plan.with_setting(names[0], ModuleSetting(bits=8))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    expected, generated, applier = _simulate(lm, plan, ids, new_tokens=8)
    toggle_info = write_artifact(lm, plan, tmp_path / "q4", applier=applier)
    gguf_info = write_gguf(lm, plan, tmp_path / "q4.gguf", applier=applier)
    for info in (toggle_info, gguf_info):
        assert info.tensor_bytes_on_disk == info.cost.tensor_bytes
        assert abs(info.weights_file_bytes - info.cost.bytes) / info.cost.bytes < 0.01
        assert 0.65 < info.cost.size_reduction < 0.67  # 4.5 bits per weight, 8.5 for the 21% in the embedding (+ GGUF header)
    assert gguf_info.weights_file_bytes == gguf_info.cost.bytes  # the GGUF header is accounted exactly
    # llama.cpp tokenises with the source's pre-tokenizer and flags, not "default"
    fields = _fields(gguf_info.path)
    source = _fields(lm.source_path)
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert fields[key] == source[key], key
    assert fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert fields["general.quantization_version"] == source["general.quantization_version"] == 2
    assert toggle_info.cost.tensor_bytes == gguf_info.cost.tensor_bytes  # same layout per block of 32; no padding at these shapes
    assert abs(toggle_info.weights_file_bytes - toggle_info.cost.bytes) / toggle_info.cost.bytes < 0.01
    back = read_artifact(toggle_info.path)
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, expected, rtol=0, atol=1e-4)
    answer = lm.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_damaged_statistics_file_is_named(tmp_path):
    from toggle.compress.calibrate import ActivationStats

    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (tmp_path / "text.safetensors").write_text("meta: {}\n")
    for name in ("cut.safetensors", "text.safetensors"):
        with pytest.raises(InvalidInput, match=f"{name}: not a toggle calibration statistics file"):
            ActivationStats.load(tmp_path / name)
