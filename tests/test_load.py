"""Model loading through the real loader: directories, GGUF files, the built-in alias, bad input."""
import json
import subprocess
import sys

import pytest
import torch

from tiny_models import make_tiny_model

from toggle.errors import ModelLoadError
from toggle.api import final_lines, search, write_artifact
from toggle.cli import main
from toggle.formats.gguf import write_gguf
from toggle.files import cache_dir
from toggle.load import load_model, resolve
from toggle.modules import (compressible_modules, parameter_counts, stored_other_tensors, uncompressed_note,
                             weight_matrix)
from toggle.plan import Methods, ModuleSetting, Plan


def _logits(lm, text="The capital of France"):
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    return lm.model(ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_load_directory(arch, tiny_llama_dir, tiny_gpt2_dir):
    path = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    lm = load_model(str(path))
    assert lm.source == "dir"
    assert lm.model_id == str(path.resolve())
    assert lm.source_bytes == sum(f.stat().st_size for f in path.glob("*.safetensors")) > 0
    assert lm.model.config.model_type == arch
    assert not lm.model.training
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert _logits(lm).shape[-1] == lm.model.config.vocab_size
    # The fingerprint is stable across loads of the same directory.
    assert load_model(str(path)).fingerprint == lm.fingerprint


def test_module_map_llama(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    refs = compressible_modules(lm.model)
    assert refs[0].part == "embed" and refs[0].tied  # tied head is the embedding
    block0 = [r.component for r in refs if r.block == 0]
    assert block0 == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    k = next(r for r in refs if r.name == "model.layers.1.self_attn.k_proj")
    assert (k.out_features, k.in_features, k.part, k.transposed) == (32, 64, "attn", False)
    assert len(refs) == 1 + 2 * 7
    counts = parameter_counts(lm.model)
    assert counts["compressible"] == sum(r.numel for r in refs)
    assert counts["other"] == 2 * 2 * 64 + 64  # two RMSNorms per block plus the final norm


def test_parameters_no_plan_compresses_are_named(tiny_llama_dir, tmp_path, capsys):
    # transformers stores a mixture-of-experts block's experts as 3-D tensors, which no plan reaches
    lm = load_model(str(make_tiny_model("mixtral", tmp_path / "moe")))
    note = uncompressed_note(lm.model, compressible_modules(lm.model))
    experts = 2 * (4 * 256 * 64 + 4 * 64 * 128)  # gate_up_proj and down_proj of 4 experts in 2 blocks
    routers = 2 * 4 * 64  # each block's router: a 2-D parameter, not a Linear
    assert note["parameters"] == experts + routers
    assert note["fraction"] == pytest.approx((experts + routers) / parameter_counts(lm.model)["total"])
    assert [t["name"] for t in note["tensors"][:2]] == ["model.layers.0.mlp.experts.gate_up_proj",
                                                         "model.layers.1.mlp.experts.gate_up_proj"]
    assert note["tensors"][0]["shape"] == [4, 256, 64] and note["dtype"] == "float32"
    assert note["note"].startswith(f"{100 * note['fraction']:.1f}% of the model's parameters are in tensors toggle "
                                   "does not compress, kept as loaded (float32) in every plan: "
                                   "model.layers.0.mlp.experts.gate_up_proj (4x256x64), ")
    assert "and 4 more" in note["note"] and "fused mixture-of-experts" in note["note"]
    assert main(["modules", str(tmp_path / "moe")]) == 0
    assert "note: " + note["note"] in capsys.readouterr().out.replace("\n", "")
    # a model whose weights are all in compressible matrices has nothing to say
    plain = load_model(str(tiny_llama_dir))
    assert uncompressed_note(plain.model, compressible_modules(plain.model)) is None
    assert main(["modules", str(tiny_llama_dir)]) == 0 and "note:" not in capsys.readouterr().out


def test_a_search_says_which_parameters_it_leaves_as_loaded(tiny_gpt2_dir, tmp_path):
    # the tiny GPT-2's learned position embeddings (1024 x 64) are a third of its parameters
    (tmp_path / "p.yaml").write_text('- {prompt: "The capital of France is", split: calibration}\n'
                                     '- {prompt: "Water boils at", split: heldout}\n')
    (tmp_path / "s.stl").write_text("coherence = always[0:3] (jsd <= 0.3)\n")
    result = search(str(tiny_gpt2_dir), "1MB", specs=[str(tmp_path / "s.stl")], prompts=str(tmp_path / "p.yaml"),
                    trials=1, sampler="uniform", out=tmp_path / "run", progress=False, write_model=False)
    note = json.loads((tmp_path / "run" / "summary.json").read_text())["uncompressed"]
    assert [(t["name"], t["shape"]) for t in note["tensors"]] == [("transformer.wpe.weight", [1024, 64])]
    assert note["note"].startswith(f"{100 * note['fraction']:.1f}% of the model's parameters")
    assert "note: " + note["note"] in final_lines(result)


def test_module_map_gpt2_conv1d(tiny_gpt2_dir):
    lm = load_model(str(tiny_gpt2_dir))
    refs = compressible_modules(lm.model)
    block0 = {r.component: r for r in refs if r.block == 0}
    assert set(block0) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    c_attn = block0["attn.c_attn"]
    assert c_attn.transposed and (c_attn.out_features, c_attn.in_features) == (192, 64)
    assert block0["mlp.c_proj"].part == "mlp" and block0["attn.c_proj"].part == "attn"
    module = lm.model.get_submodule(c_attn.name)
    assert weight_matrix(module, c_attn).shape == (192, 64)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gguf_round_trip(arch, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    """A GGUF file of float weights loads back with identical logits (F32) and a Q8_0 file with
    close logits, and each is cached as safetensors after the first load."""
    src = load_model(str(tiny_llama_dir if arch == "llama" else tiny_gpt2_dir))
    refs = compressible_modules(src.model)
    tensors = {f"{r.name}.weight": ("F32", weight_matrix(src.model.get_submodule(r.name), r).detach().numpy())
               for r in refs}
    tensors.update({n: ("F32", t.detach().numpy()) for n, t in stored_other_tensors(src.model, refs).items()})
    f32 = write_gguf(tmp_path / "tiny-f32.gguf", src.model, src.tokenizer, tensors)
    loaded = load_model(str(f32))
    assert loaded.source == "gguf" and loaded.source_quantization in ("ALL_F32", "gguf")
    assert loaded.source_bytes == f32.stat().st_size
    torch.testing.assert_close(_logits(loaded), _logits(src), rtol=0, atol=1e-5)

    q8_plan = Plan.uniform(src.model_id, [r.name for r in refs], ModuleSetting(bits=8),
                           Methods(group_size=32, symmetric=True))
    q8 = write_artifact(src, q8_plan, tmp_path / "tiny-q8.gguf", "gguf").path
    loaded_q8 = load_model(str(q8))
    diff = (_logits(loaded_q8) - _logits(src)).abs().max().item()
    assert 0 < diff < 0.1  # really quantised, still close
    cached = list((cache_dir() / "models").glob("gguf-*"))
    assert len(cached) >= 2 and all((c / "model.safetensors").exists() for c in cached)
    meta = json.loads((cache_dir() / "models" / loaded_q8.fingerprint / "toggle-cache.json").read_text())
    assert meta["source"] == str(q8.resolve())


def test_bad_models(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="no such model.*built-in"):
        resolve("not-a-model")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model"):
        resolve(str(tmp_path / "notes.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve(str(empty))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ModelLoadError, match="broken.gguf: damaged or truncated GGUF file"):
        load_model(str(bad))


def test_pickle_only_directory_is_refused(tiny_llama_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle files are not loaded"):
        load_model(str(d))


def test_truncated_safetensors(tiny_llama_dir, tmp_path):
    import shutil

    d = tmp_path / "truncated"
    shutil.copytree(tiny_llama_dir, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated/model.safetensors: truncated safetensors file"):
        load_model(str(d))


@pytest.mark.parametrize("model", ["missing-model", "/nonexistent/dir", "./x.gguf"])
def test_cli_bad_model_exit_2(model):
    proc = subprocess.run([sys.executable, "-m", "toggle.cli", "modules", model], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and model in lines[0] and lines[0].startswith("toggle: error:")


@pytest.mark.integration
def test_builtin_model_answers_capital(builtin_model, user_cache):
    lm = builtin_model
    assert lm.source == "builtin" and lm.model_id == "smollm2-135m"
    assert lm.source_quantization == "Q4_1"
    assert (user_cache / "models" / lm.fingerprint / "model.safetensors").is_file()
    refs = compressible_modules(lm.model)
    assert len(refs) == 1 + 30 * 7 and refs[0].tied
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_quick_gguf_parsing_reads_what_gguf_reads_and_restores_it(tmp_path):
    import gguf
    import numpy as np

    from toggle.formats.gguf import quick_gguf_parsing, read_header

    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list([f"tok{i}" for i in range(300)])
    writer.add_uint32("llama.block_count", 2)
    writer.add_tensor("w", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    plain_get, plain_map = gguf.GGUFReader._get, gguf.get_tensor_name_map
    want = gguf.GGUFReader(str(path))
    got = read_header(path)
    assert type(got.data) is np.ndarray and type(want.data) is np.memmap  # the quick path was taken
    assert list(got.fields) == list(want.fields)
    assert all(got.fields[k].contents() == want.fields[k].contents() for k in want.fields)
    assert np.array_equal(got.tensors[0].data, want.tensors[0].data) and got.data_offset == want.data_offset
    with quick_gguf_parsing():
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)  # built once
    assert (gguf.GGUFReader._get, gguf.get_tensor_name_map) == (plain_get, plain_map)


def test_a_directory_s_fingerprint_is_its_files_contents(tmp_path):
    import os
    import shutil

    from toggle.loaded import dir_fingerprint

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, weights in ((a, b"\x00" * 4096), (b, b"\x00" * 4095 + b"\x01")):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(weights)
        for f in d.iterdir():
            os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    # other weights with the same names, sizes and times (tar, rsync -a, cp -p): another model
    assert dir_fingerprint(a) != dir_fingerprint(b)
    shutil.copytree(a, c, copy_function=shutil.copy)  # new times, the same contents: the same model
    assert dir_fingerprint(c) == dir_fingerprint(a)


@pytest.mark.parametrize("device, message", [
    ("bogus", "--device 'bogus': not a torch device; expected cpu, cuda, cuda:N or mps"),
    ("meta", "--device 'meta': toggle runs models on cpu, cuda or mps; expected cpu"),
])
def test_a_bad_device_is_one_line_before_loading(tiny_llama_dir, capsys, device, message):
    from toggle.cli import main

    assert main(["modules", str(tiny_llama_dir), "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch can use CUDA")
def test_cuda_without_cuda_is_one_line(tiny_llama_dir):
    from toggle.errors import InvalidInput

    with pytest.raises(InvalidInput, match="--device 'cuda': this torch build cannot use it; expected cpu"):
        load_model(str(tiny_llama_dir), device="cuda")
