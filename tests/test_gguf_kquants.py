"""llama.cpp's own types in toggle's GGUF files (quantizers ggml and ggml_iq, compress/ggml.py):
the bytes are llama-quantize's, the accounted size is the file size, the file decodes to the
weights toggle evaluated, short rows get llama.cpp's fallback, and llama.cpp runs the files and
tokenises them like the source. Tests that call llama.cpp skip when it is not installed
(tools/build_llama_cpp.sh; CI runs it)."""
from __future__ import annotations

import csv
import io
import struct
import subprocess
from functools import partial

import gguf
import numpy as np
import pytest
import torch

from toggle import llama_cpp
from toggle.api import write_artifact
from toggle.compress import collect_stats
from toggle.compress import ggml
from toggle.compress.apply import PlanApplier
from toggle.errors import InvalidInput
from toggle.formats.gguf import _permute_qk, tensor_bytes, write_gguf as write_raw
from toggle.load import load_model
from toggle.modules import compressible_modules, stored_other_tensors
from toggle.plan import Methods, ModuleSetting, Plan

needs_llama_cpp = pytest.mark.skipif(not llama_cpp.available(),
                                     reason=f"llama.cpp is not installed: {llama_cpp.HOW}")
write_gguf = partial(write_artifact, fmt="gguf")
TEXT = "The capital of France is Paris. Once upon a time a small robot learned to read the stars."
MENU = [(q, b) for q, menu in ggml.TYPES.items() for b in menu]  # every (quantizer, bits) toggle offers


@pytest.fixture(scope="module")
def kq_dir(tmp_path_factory):
    """A tiny Llama whose rows suit K-quants: hidden 256 (embedding, attention, gate/up rows of 256)
    and intermediate 320 (down_proj rows of 320: not a multiple of 256, so it falls back)."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from tiny_models import make_tokenizer

    path = tmp_path_factory.mktemp("kq-llama")
    tok = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=320, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def kq(kq_dir):
    lm = load_model(str(kq_dir))
    refs = compressible_modules(lm.model)
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids[0]
    stats = collect_stats(lm.model, [ids], refs=refs)
    return lm, refs, stats


def _names(refs):
    return [r.name for r in refs]


def _gguf_name(lm, hf_name: str) -> str:
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, lm.model.config.num_hidden_layers)
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def _tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


# --- without llama.cpp: the type rules and the bytes --------------------------------------------

def test_type_menu_and_llama_cpp_fallback():
    assert ggml.ggml_type("ggml", 4, 512) == ("Q4_K", None)
    # llama.cpp's tensor_type_fallback: a row not a multiple of 256
    assert ggml.ggml_type("ggml", 2, 576) == ("Q4_0", "Q2_K")
    assert ggml.ggml_type("ggml", 3, 576) == ("Q4_0", "Q3_K")
    assert ggml.ggml_type("ggml", 4, 576) == ("Q5_0", "Q4_K")
    assert ggml.ggml_type("ggml", 5, 576) == ("Q5_1", "Q5_K")
    assert ggml.ggml_type("ggml", 6, 576) == ("Q8_0", "Q6_K")
    assert ggml.ggml_type("ggml", 8, 576) == ("Q8_0", None)
    assert ggml.ggml_type("ggml_iq", 4, 576) == ("IQ4_NL", "IQ4_XS")
    assert ggml.ggml_type("ggml", 4, 200) == ("F16", "Q4_K")  # not even blocks of 32
    assert ggml.ggml_type("ggml", 7, 512) == (None, None)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_S", "IQ3_S", "IQ4_XS", "IQ4_NL"])
def test_tensor_bytes_are_the_types_block_sizes(qtype):
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    assert tensor_bytes(qtype, 4 * 512) == -(-(4 * 512 // block * size) // 32) * 32
    assert ggml.row_bytes(qtype, 512) == 512 // block * size


def test_gguf_refuses_what_the_ggml_quantizers_cannot_hold(kq, tmp_path):
    lm, refs, stats = kq
    up = "model.layers.0.mlp.up_proj"
    cases = [(ModuleSetting(bits=7), "7 bits: quantizer ggml has no GGML type for it; its bits are 2 \\(Q2_K\\)"),
             (ModuleSetting(bits=4, sparsity=0.5), "does not keep pruned weights at exactly 0"),
             (ModuleSetting(bits=4, rank_ratio=0.5), "GGUF has no factorised matrices")]
    for setting, reason in cases:
        plan = Plan(lm.model_id, {up: setting}, Methods(quantizer="ggml"))
        with pytest.raises(InvalidInput, match=f"modules.{up}: .*{reason}"):
            write_gguf(lm, plan, tmp_path / "x.gguf", stats=stats)
    for given in (stats, None):  # without statistics too: the format is the problem, not the statistics
        with pytest.raises(InvalidInput, match="quantizer ggml makes llama.cpp's GGML blocks, which only the GGUF "
                                               "format"):
            write_artifact(lm, Plan(lm.model_id, {up: ModuleSetting(bits=4)}, Methods(quantizer="ggml")),
                           tmp_path / "art", stats=given)
    assert not list(tmp_path.iterdir())


# --- with llama.cpp ------------------------------------------------------------------------------

def _write_imatrix(path, lm, refs, stats) -> None:
    """llama.cpp's legacy imatrix file (imatrix-loader.cpp): per tensor the mean x^2 per input
    channel with ncall 1, so llama-quantize reads exactly the values toggle passes."""
    entries = []
    for r in refs:
        diag = torch.diagonal(stats.gram(r.name)).float().clamp(min=0).numpy().astype(np.float32)
        entries.append((f"{_gguf_name(lm, r.name + '.weight')}", diag))
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, values in entries:
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, values.size) + values.tobytes())
        f.write(struct.pack("<i", 1) + struct.pack("<i", 4) + b"test")


def _f32_source(lm, refs, path) -> None:
    """The model's base weights as an F32 GGUF file (what llama-quantize starts from)."""
    tensors = {f"{r.name}.weight": ("F32", PlanApplier(lm.model, refs).base_weight(r.name).float().numpy())
               for r in refs}
    for n, t in stored_other_tensors(lm.model, refs).items():
        tensors.setdefault(n, ("F32", t.detach().float().numpy()))
    write_raw(path, lm.model, lm.tokenizer, tensors, name="src")


@needs_llama_cpp
@pytest.mark.parametrize("quantizer,bits", MENU, ids=[f"{q}-{b}" for q, b in MENU])
def test_bytes_are_llama_quantizes(kq, tmp_path, quantizer, bits):
    """Every type of the menu (and the fallback of the 320-long down_proj rows), with the importance
    matrix: toggle's tensors are byte for byte what llama-quantize --pure --imatrix writes from the
    same float32 weights, the accounted size is the file size, and the file decodes to exactly the
    weights toggle evaluates."""
    lm, refs, stats = kq
    names = _names(refs)
    plan = Plan(lm.model_id, {n: ModuleSetting(bits=bits) for n in names}, Methods(quantizer=quantizer))
    applier = PlanApplier(lm.model, refs, stats)
    info = write_gguf(lm, plan, tmp_path / "toggle.gguf", applier=applier)
    assert info.weights_file_bytes == info.cost.bytes == (tmp_path / "toggle.gguf").stat().st_size
    assert info.tensor_bytes_on_disk == info.cost.tensor_bytes
    wanted = ggml.TYPES[quantizer][bits]
    down = [n for n in names if n.endswith("down_proj")]
    assert {info.encodings[n][0] for n in names if n not in down} == {wanted}
    assert {info.encodings[n][0] for n in down} == {ggml.ggml_type(quantizer, bits, 320)[0]}
    if wanted != "Q8_0":  # Q8_0 has no use for an importance matrix (llama.cpp ignores it)
        fallback_q8 = ggml.ggml_type(quantizer, bits, 320)[0] == "Q8_0"
        assert info.meta["imatrix"]["modules"] == len(names) - (len(down) if fallback_q8 else 0)
        assert set(info.meta["fallbacks"]) == set(down)

    _f32_source(lm, refs, tmp_path / "src.gguf")
    _write_imatrix(tmp_path / "imatrix.dat", lm, refs, stats)
    # --tensor-type names the type: the preset IQ2_S alone would make IQ2_XS (llama.cpp's mapping)
    proc = subprocess.run([str(llama_cpp.tool("llama-quantize")), "--pure", "--tensor-type", f"weight={wanted.lower()}",
                           "--imatrix", str(tmp_path / "imatrix.dat"),
                           str(tmp_path / "src.gguf"), str(tmp_path / "ref.gguf"), wanted, "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, ref = _tensors(tmp_path / "toggle.gguf"), _tensors(tmp_path / "ref.gguf")
    assert set(ours) == set(ref)
    for name, t in ref.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(t.data)), f"{name}: bytes differ"

    # the file decodes (gguf package) to the weights the applier evaluated, bit for bit
    config = lm.model.config
    for ref_ in refs:
        w = applier.effective_weight(ref_, plan.setting(ref_.name), plan.methods).float().numpy()
        if ref_.name.endswith("q_proj"):
            w = _permute_qk(w, config.num_attention_heads)
        elif ref_.name.endswith("k_proj"):
            w = _permute_qk(w, config.num_key_value_heads)
        t = ours[_gguf_name(lm, ref_.name + '.weight')]
        decoded = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        assert np.array_equal(decoded, w), ref_.name


@needs_llama_cpp
def test_library_decoding_matches_the_gguf_package():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 512)).astype(np.float32)
    for qtype in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_S", "IQ3_S", "IQ4_XS", "IQ4_NL", "Q4_0", "Q8_0"):
        raw = ggml.quantize_rows(w, qtype)
        assert raw.shape == (8, ggml.library_row_bytes(qtype, 512)) == (8, ggml.row_bytes(qtype, 512))
        ours = ggml.dequantize_rows(raw, qtype, 512)
        assert np.array_equal(ours, gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(8, 512))
        assert np.abs(ours - w).mean() < 0.3  # a quantisation of w, not noise
        # the importance matrix changes the result (it weights the fit)
        if qtype != "Q8_0":
            weights = np.linspace(0.01, 10, 512, dtype=np.float32)
            assert not np.array_equal(ggml.quantize_rows(w, qtype, weights), raw), qtype


def _run(tool: str, *args: str, complete=bool) -> str:
    # The llama.cpp these tests build (llama-cpp-python 0.3.36's vendored copy) prints through an
    # asynchronous logger that now and then stops mid-run and exits 0 with its output cut short:
    # nothing on stdout (seen in CI and here, about one short run in five, with stderr cut after
    # "threadpool init"), or part of it (CI: "The capital of" for a prompt of "The capital of
    # France"). Such a run says nothing about the file, so it is run again, at most five times,
    # until `complete` holds for what it printed; the caller then checks what that says.
    for _ in range(5):
        proc = subprocess.run([str(llama_cpp.tool(tool)), *args], capture_output=True, text=True, errors="replace",
                              timeout=300)
        assert proc.returncode == 0, f"{tool} {' '.join(args)}: {proc.stderr[-2000:]}"
        if complete(proc.stdout):
            break
    return proc.stdout


def _completion(path, prompt: str, *args: str) -> str:
    """llama-completion's greedy text for `prompt`, the prompt echoed first; an output shorter than
    the prompt is a cut-off run (see _run), not an answer."""
    return _run("llama-completion", "-m", str(path), "-p", prompt, "--temp", "0", "-no-cnv", *args,
                complete=lambda out: len(out) >= len(prompt))


def _tokens(path, text: str) -> str:
    out = _run("llama-tokenize", "-m", str(path), "-p", text, "--ids", "--log-disable",
               complete=lambda out: out.rstrip().endswith("]"))
    return out.strip().splitlines()[-1]


@needs_llama_cpp
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_llama_cpp_runs_every_gguf_toggle_writes(arch, tiny_llama_dir, tiny_gpt2_dir, kq, tmp_path):
    """The legacy types (both architectures) and the ggml types load and generate in llama.cpp,
    and tokenize the text as the source model's tokenizer does."""
    plans = []
    lm = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir))
    names = _names(compressible_modules(lm.model))
    kinds = [ModuleSetting(bits=4), ModuleSetting(bits=8), ModuleSetting(bits=5), ModuleSetting(bits=16)]
    plans.append((lm, Plan(lm.model_id, {n: kinds[i % 4] for i, n in enumerate(names)},
                           Methods(group_size=32, symmetric=True)), None))
    if arch == "llama":
        klm, refs, stats = kq
        plans.append((klm, Plan(klm.model_id, {n: ModuleSetting(bits=(2, 3, 4, 5, 6, 8)[i % 6])
                                               for i, n in enumerate(_names(refs))}, Methods(quantizer="ggml")), stats))
        plans.append((klm, Plan(klm.model_id, {n: ModuleSetting(bits=(2, 3, 4)[i % 3]) for i, n in enumerate(_names(refs))},
                                Methods(quantizer="ggml_iq")), stats))
    for i, (model, plan, stats) in enumerate(plans):
        path = tmp_path / f"m{i}.gguf"
        write_gguf(model, plan, path, stats=stats)
        out = _completion(path, "The capital of France", "-n", "4", "-t", "1")
        # The prompt comes back through llama.cpp's tokenizer and detokenizer. What a random tiny
        # model generates may be end-of-text at once (seen in CI), so generation is shown by
        # llama-bench's timed 4-token generation instead of by the completion's text.
        assert out.startswith("The capital of France")
        bench = _run("llama-bench", "-m", str(path), "-p", "8", "-n", "4", "-t", "1", "-r", "1", "-o", "csv",
                     complete=lambda out: len(out.strip().splitlines()) >= 3)  # the header and two rows
        rows = list(csv.DictReader(io.StringIO(bench)))
        assert [(r["n_prompt"], r["n_gen"]) for r in rows] == [("8", "0"), ("0", "4")]
        assert all(float(r["avg_ts"]) > 0 for r in rows)
        expected = model.tokenizer(TEXT).input_ids
        got = [int(x) for x in _tokens(path, TEXT).strip("[]").split(",")]
        assert got[-len(expected):] == expected


@needs_llama_cpp
@pytest.mark.integration
def test_builtin_model_kquants_tokenize_like_the_source_and_run(builtin_model, tmp_path):
    """SmolLM2-135M with the ggml quantizer at 4 bits: down_proj (rows of 1536) gets Q4_K, every
    other tensor (rows of 576) llama.cpp's fallback Q5_0; llama.cpp tokenises a text with the
    file exactly as with the shipped file, and generates."""
    lm = builtin_model
    refs = compressible_modules(lm.model)
    ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids[0]
    stats = collect_stats(lm.model, [ids], refs=refs)
    plan = Plan.uniform(lm.model_id, _names(refs), ModuleSetting(bits=4), Methods(quantizer="ggml"))
    info = write_gguf(lm, plan, tmp_path / "k.gguf", stats=stats)
    assert info.weights_file_bytes == info.cost.bytes
    kinds = {n: e[0] for n, e in info.encodings.items()}
    assert {kinds[n] for n in kinds if n.endswith("down_proj")} == {"Q4_K"}
    assert {kinds[n] for n in kinds if not n.endswith("down_proj")} == {"Q5_0"}
    for text in (TEXT, "def f(x):\n    return x * 12  # twelve\n", "  Spaces,\ttabs and ünïcödé 123456"):
        assert _tokens(info.path, text) == _tokens(lm.source_path, text), text
    out = _completion(info.path, "The capital of France is", "-n", "4", "-t", "2")
    assert out.startswith("The capital of France is") and len(out) > len("The capital of France is")
