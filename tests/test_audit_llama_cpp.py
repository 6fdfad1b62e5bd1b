"""`toggle audit FILE.gguf --engine llama.cpp`: the compressed model's logits come from llama.cpp
running the file (toggle-llama-logits), the torch scores of the same file are reported beside
them, internal signals come from torch with a note, and what cannot work says so with exit 2.
Tests that run llama.cpp skip when it is not installed (tools/build_llama_cpp.sh; CI builds it)."""
from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from toggle import llama_cpp
from toggle.api import write_artifact
from toggle.cli import main
from toggle.load import load_model
from toggle.modules import compressible_modules
from toggle.plan import Methods, ModuleSetting, Plan
from toggle.signals import compute_signals
from toggle.trace import TokenPath, score_paths
from toggle.trace.llama_cpp import LlamaCppScorer

from tiny_models import make_tiny_model

write_gguf = partial(write_artifact, fmt="gguf")


def _helper_installed() -> bool:
    try:
        llama_cpp.tool("toggle-llama-logits")
    except llama_cpp.LlamaCppNotFound:
        return False
    return True


needs_llama_cpp = pytest.mark.skipif(not _helper_installed(), reason=f"llama.cpp is not installed: {llama_cpp.HOW}")

PROMPTS = """
- {id: c1, prompt: "The capital of France is", answer: Paris}
- {id: h1, prompt: "def add(a, b):", split: heldout}
- {id: h2, prompt: "Question: what is two plus two? Answer:", answer: four, split: heldout}
- {id: h3, prompt: "Once upon a time a small robot", split: heldout}
"""
LOGIT_SPECS = """
const eps = 0.2
coherence = always[0:7] (jsd <= eps)
factual = always (gold_p_ratio >= 0.5)
"""
HIDDEN_SPEC = "option hidden_layer = -1\ncontext = always[0:7] (hidden_cos >= 0.98)\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_llama_dir):
    d = tmp_path_factory.mktemp("audit-llama")
    (d / "p.yaml").write_text(PROMPTS)
    (d / "logits.stl").write_text(LOGIT_SPECS)
    (d / "hidden.stl").write_text(HIDDEN_SPEC)
    lm = load_model(str(tiny_llama_dir))
    names = [r.name for r in compressible_modules(lm.model)]
    write_gguf(lm, Plan.uniform(lm.model_id, names, ModuleSetting(bits=16)), d / "f16.gguf")
    blocks = [r.name for r in compressible_modules(lm.model) if r.block is not None]
    write_gguf(lm, Plan.uniform(lm.model_id, blocks, ModuleSetting(bits=8), Methods(group_size=32, symmetric=True)),
               d / "q8.gguf")
    return d, tiny_llama_dir


@needs_llama_cpp
def test_llama_cpp_logits_are_the_files_next_token_distributions(files):
    """llama.cpp's log-probabilities of an F16 file along given paths agree with torch's of the
    same file: same shape and order, nearly the same distribution, the same greedy token."""
    d, _ = files
    lm = load_model(str(d / "f16.gguf"))
    ids = [lm.tokenizer(t).input_ids for t in ("The capital of France is", "Once upon a time a small robot")]
    paths = [TokenPath("a", tuple(ids[0]), (0, len(ids[0])), (5, 9, 11, 7), answer=(4, 4)),
             TokenPath("b", tuple(ids[1]), (0, len(ids[1])), (3, 8, 2))]
    ours = LlamaCppScorer(d / "f16.gguf", threads=1)(paths, {"logprobs", "gold"})
    theirs = score_paths(lm.model, paths, {"logprobs", "gold"}, None)
    assert ours.steps == (4, 3) and ours.logprobs.shape == theirs.logprobs.shape
    assert torch.allclose(ours.logprobs.exp().sum(-1), torch.ones(7), atol=1e-4)
    jsd = compute_signals(["jsd"], ours, theirs)["jsd"]
    assert jsd.max() < 1e-3, jsd
    assert torch.equal(ours.logprobs.argmax(-1), theirs.logprobs.argmax(-1))
    assert ours.gold_logprob.shape == (2,) and torch.allclose(ours.gold_logprob, theirs.gold_logprob, atol=0.02)


@needs_llama_cpp
@pytest.mark.parametrize("arch, read_as", [("qwen2", "Qwen2Config"), ("qwen3", "Qwen3Config"), ("mistral", "LlamaConfig")])
def test_gguf_of_other_llama_like_architectures_runs_the_same_model_in_llama_cpp(arch, read_as, tmp_path):
    """Qwen2 (q/k/v biases), Qwen3 (q/k norms, heads wider than hidden / heads) and Mistral
    (written as llama.cpp's "llama"): llama.cpp's next-token distributions of toggle's F16 file
    are the source model's, and toggle reads the file back as the same model."""
    source = load_model(str(make_tiny_model(arch, tmp_path / f"tiny-{arch}")))
    names = [r.name for r in compressible_modules(source.model)]
    path = tmp_path / f"{arch}.gguf"
    write_gguf(source, Plan.uniform(source.model_id, names, ModuleSetting(bits=16)), path)
    ids = [source.tokenizer(t).input_ids for t in ("The capital of France is", "Once upon a time a small robot")]
    paths = [TokenPath("a", tuple(ids[0]), (0, len(ids[0])), (5, 9, 11, 7)),
             TokenPath("b", tuple(ids[1]), (0, len(ids[1])), (3, 8, 2))]
    ours = LlamaCppScorer(path, threads=1)(paths, {"logprobs"})
    reread = load_model(str(path))
    assert type(reread.model.config).__name__ == read_as
    for model in (source.model, reread.model):
        theirs = score_paths(model, paths, {"logprobs"}, None)
        jsd = compute_signals(["jsd"], ours, theirs)["jsd"]
        assert jsd.max() < 1e-3, (arch, jsd)
        assert torch.equal(ours.logprobs.argmax(-1), theirs.logprobs.argmax(-1))


@needs_llama_cpp
def test_a_llama_with_biases_runs_in_llama_cpp_as_the_source_model_and_is_not_read_back_without_them(tmp_path):
    """attention_bias: the q/k biases take the rope's row order too (else llama.cpp's positions after
    the first differ); transformers' GGUF loader drops Llama biases, so reading the file back is refused."""
    from toggle.errors import ModelLoadError

    source = load_model(str(make_tiny_model("llama-bias", tmp_path / "tiny")))
    names = [r.name for r in compressible_modules(source.model)]
    path = tmp_path / "bias.gguf"
    write_gguf(source, Plan.uniform(source.model_id, names, ModuleSetting(bits=16)), path)
    ids = source.tokenizer("The capital of France is").input_ids
    paths = [TokenPath("a", tuple(ids), (0, len(ids)), (5, 9, 11, 7, 3, 8))]
    ours = LlamaCppScorer(path, threads=1)(paths, {"logprobs"})
    theirs = score_paths(source.model, paths, {"logprobs"}, None)
    jsd = compute_signals(["jsd"], ours, theirs)["jsd"]
    assert jsd.max() < 1e-3, jsd
    with pytest.raises(ModelLoadError, match=r"bias.gguf: the file holds 14 bias tensors \(blk.0.attn_q.bias, "):
        load_model(str(path))


@needs_llama_cpp
def test_llama_cpp_runs_a_llama3_rope_gguf_as_the_source_model(tmp_path, monkeypatch):
    """Llama 3.x rope scaling reaches llama.cpp through rope_freqs.weight: without it llama.cpp
    would compute plain rope, which on 130 positions differs by a JSD of ~2e-3 on this model."""
    from toggle.formats import gguf as gguf_format

    source = load_model(str(make_tiny_model("llama3", tmp_path / "src")))
    names = [r.name for r in compressible_modules(source.model)]
    plan = Plan.uniform(source.model_id, names, ModuleSetting(bits=16))
    ids = source.tokenizer("The capital of France is Paris. Once upon a time a small robot learned to read. " * 7).input_ids
    paths = [TokenPath("a", tuple(ids), (0, len(ids)), (5, 9, 11, 7, 3, 8))]
    theirs = score_paths(source.model, paths, {"logprobs"}, None)

    def llama_cpp_jsd(path):
        return compute_signals(["jsd"], LlamaCppScorer(path, threads=1)(paths, {"logprobs"}), theirs)["jsd"].max()

    assert llama_cpp_jsd(write_gguf(source, plan, tmp_path / "f16.gguf").path) < 1e-4
    monkeypatch.setattr(gguf_format, "_extra_tensors", lambda model: {})
    assert llama_cpp_jsd(write_gguf(source, plan, tmp_path / "plain.gguf").path) > 1e-3


@needs_llama_cpp
def test_cli_audit_with_llama_cpp_reports_both_engines(files, tmp_path, capsys):
    d, base = files
    out = tmp_path / "a.json"
    code = main(["audit", str(d / "q8.gguf"), "--base", str(base), "--specs", str(d / "logits.stl"),
                 "--prompts", str(d / "p.yaml"), "--engine", "llama.cpp", "--threads", "1", "--json", str(out)])
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert code == (0 if data["satisfied"] else 1)
    assert data["engine"] == "llama.cpp" and data["prompts_audited"] == 3
    cross = data["cross_check"]
    assert cross["engine"] == "torch" and set(cross["properties"]) == {"coherence", "factual"}
    assert cross["properties"]["factual"]["prompts"] == 1 == data["properties"]["factual"]["prompts"]
    gap = cross["jsd_between_engines"]
    assert 3 <= gap["steps"] <= 3 * 8  # the 3 held-out paths, at most 8 steps each
    assert 0 <= gap["mean"] <= gap["max"] < 0.05  # 8-bit codes, two engines' kernels: close, not equal
    # the two engines' minima differ by less than the largest JSD between them
    ll, tt = data["properties"]["coherence"]["min"], cross["properties"]["coherence"]["min"]
    assert abs(ll - tt) <= gap["max"] + 1e-6
    assert "run by llama.cpp" in text and "the same file in torch" in text and "JSD between llama.cpp and torch" in text
    speed = data["speed"]  # llama-bench on the file: reading a prompt and generating
    assert speed["threads"] == 1 and speed["prompt_tokens_per_s"] > 0 and speed["gen_tokens_per_s"] > 0
    assert "generation" in text and "tokens/s" in text


@needs_llama_cpp
def test_internal_signals_come_from_torch_with_a_note(files, tmp_path, capsys):
    d, base = files
    out = tmp_path / "a.json"
    main(["audit", str(d / "q8.gguf"), "--base", str(base), "--specs", str(d / "logits.stl"), str(d / "hidden.stl"),
          "--prompts", str(d / "p.yaml"), "--engine", "llama.cpp", "--threads", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert any("does not expose hidden" in n and "context" in n for n in data["notes"]), data["notes"]
    # hidden_cos is torch's in both columns: the same values
    assert data["properties"]["context"]["min"] == pytest.approx(data["cross_check"]["properties"]["context"]["min"])


@needs_llama_cpp
def test_an_audit_in_pieces_gives_what_one_in_a_single_piece_gives(files, tmp_path, monkeypatch):
    # A large suite is scored a piece at a time (bounded memory): both engines cut the trace into
    # the same pieces, llama.cpp's piece takes torch's hidden states of the same prompts, and the
    # JSD between the engines covers every step.
    import toggle.evaluate

    d, base = files
    args = ["audit", str(d / "q8.gguf"), "--base", str(base), "--specs", str(d / "logits.stl"), str(d / "hidden.stl"),
            "--prompts", str(d / "p.yaml"), "--engine", "llama.cpp", "--threads", "1", "--json"]
    main(args + [str(tmp_path / "whole.json")])
    monkeypatch.setattr(toggle.evaluate, "PIECE_BYTES", 1)  # every prompt a piece of its own
    calls = []
    real = LlamaCppScorer.__call__
    monkeypatch.setattr(LlamaCppScorer, "__call__", lambda self, paths, *a, **k: calls.append(len(paths)) or
                        real(self, paths, *a, **k))
    main(args + [str(tmp_path / "pieces.json")])
    whole, cut = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "pieces"))
    assert calls == [1, 1, 1]  # the 3 held-out prompts, one at a time
    for name in ("coherence", "factual", "context"):
        for result in (lambda r: r["properties"], lambda r: r["cross_check"]["properties"]):
            a, b = result(whole)[name], result(cut)[name]
            assert (a["prompts"], a["holds"]) == (b["prompts"], b["holds"]), name
            assert a["min"] == pytest.approx(b["min"], abs=1e-5), name
    assert cut["cross_check"]["jsd_between_engines"]["steps"] == whole["cross_check"]["jsd_between_engines"]["steps"]
    assert cut["cross_check"]["jsd_between_engines"]["max"] == pytest.approx(
        whole["cross_check"]["jsd_between_engines"]["max"], abs=1e-6)


def test_llama_cpp_engine_refuses_what_it_cannot_do(files, tmp_path, capsys, monkeypatch):
    d, base = files
    common = ["--base", str(base), "--specs", str(d / "logits.stl"), "--prompts", str(d / "p.yaml"), "--engine", "llama.cpp"]
    assert main(["audit", str(d / "q8.gguf"), "--mode", "free", *common]) == 2
    assert "teacher mode" in capsys.readouterr().err
    assert main(["audit", str(base), *common]) == 2  # a model directory, not a .gguf file
    assert "runs a .gguf file" in capsys.readouterr().err
    monkeypatch.setenv("TOGGLE_LLAMA_CPP", str(tmp_path / "nowhere"))
    assert main(["audit", str(d / "q8.gguf"), *common]) == 2
    err = capsys.readouterr().err
    assert "toggle-llama-logits" in err and "tools/build_llama_cpp.sh" in err
    # a search whose profile quantises with llama.cpp says so before loading and tracing anything
    assert main(["search", "no-such-model", "--budget", "1MB", "--profile", "gguf-kquant", "--specs",
                 str(d / "logits.stl"), "--prompts", str(d / "p.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert ("--profile gguf-kquant: quantizer ggml is llama.cpp's own, and llama.cpp is not installed; run "
            "tools/build_llama_cpp.sh") in err and "loading" not in err and not (tmp_path / "run").exists()
