import pytest
import yaml

from toggle.cli import main
from toggle.errors import InvalidInput
from toggle.search.profile import load_profile, parse_profile


def test_shipped_profiles_load_with_values_ordered_least_compressed_first():
    default = load_profile("default")
    assert default.granularity == "block_part"
    assert default.knobs["bits"][0] == 16 and list(default.knobs["bits"]) == sorted(default.knobs["bits"], reverse=True)
    assert default.knobs["group_size"] == (32, 64, 128) and default.embedding["group_size"] == (32, 64, 128)
    assert default.knobs["scale_bits"] == (16, 8, 6) == default.embedding["scale_bits"]  # float16 first
    assert default.knobs["sparsity"] == (0.0,) and default.knobs["rank_ratio"] == (1.0,)
    assert default.sensitivity.method == "measured" and default.methods.pruner == "wanda"
    pruning = load_profile("prune-lowrank")
    assert pruning.knobs["sparsity"][0] == 0.0 and pruning.knobs["rank_ratio"][0] == 1.0
    assert pruning.sensitivity.method == "single"
    quant = load_profile("quant-only")
    assert quant.knobs["sparsity"] == (0.0,) and quant.knobs["rank_ratio"] == (1.0,)


def test_gguf_profile_only_holds_what_gguf_stores():
    g = load_profile("gguf")
    for knobs in (g.knobs, g.embedding):
        assert set(knobs["bits"]) <= {4, 5, 8, 16}
        assert knobs["sparsity"] == (0.0,) and knobs["rank_ratio"] == (1.0,)
    assert g.methods.quantizer == "rtn" and g.methods.group_size == 32 and g.format == "gguf"


def test_a_profile_needs_statistics_when_a_method_or_a_quantizer_it_offers_reads_them():
    plain = {"knobs": {"bits": [16, 4]}, "methods": {"quantizer": "rtn", "pruner": "magnitude"}}
    assert not parse_profile(plain).needs_stats
    assert parse_profile({**plain, "methods": {"quantizer": "rtn", "pruner": "wanda"}}).needs_stats
    assert parse_profile({**plain, "knobs": {"bits": [16, 4], "quantizer": ["rtn", "gptq"]}}).needs_stats
    assert parse_profile({**plain, "embedding": {"bits": [16, 4], "quantizer": ["rtn", "awq"]}}).needs_stats
    assert not parse_profile({**plain, "knobs": {"bits": [16, 4], "quantizer": ["rtn"]}}).needs_stats
    mixed = load_profile("gguf-mixed")  # llama.cpp's whole menu: legacy types, K- and i-quants
    assert mixed.format == "gguf" and mixed.needs_stats
    assert mixed.knobs["quantizer"] == ("rtn", "ggml", "ggml_iq") and mixed.embedding["quantizer"] == ("rtn", "ggml")


def test_profile_given_as_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({"granularity": "module", "knobs": {"bits": [8, 16, 4]}}))
    prof = load_profile(str(p))
    assert prof.name == "mine" and prof.granularity == "module"
    assert prof.knobs["bits"] == (16, 8, 4)
    assert prof.embedding["bits"] == (16,)  # embedding untouched unless the profile says otherwise


@pytest.mark.parametrize("data, message", [
    ({"knobs": {"bits": [4]}, "colour": 1}, "unknown key(s) colour; valid keys: granularity"),
    ({"knobs": {"bits": []}}, "knobs.bits: expected a non-empty list"),
    ({"knobs": {"bits": "4"}}, "knobs.bits: expected a non-empty list"),
    ({"knobs": {"bits": [1]}}, "knobs.bits: 1 is not valid; bits are integers 2..8, or 16"),
    ({"knobs": {"sparsity": [1.0]}}, "knobs.sparsity: 1.0 is not valid; sparsity is a fraction in [0, 1)"),
    ({"knobs": {"rank_ratio": ["x"]}}, "knobs.rank_ratio: 'x' is not a number"),
    ({"knobs": {"scale_bits": [16, 9]}}, "knobs.scale_bits: 9 is not valid; scale_bits are integers 2..8"),
    ({"knobs": {"bitz": [4]}}, "knobs: unknown key(s) bitz; valid keys: bits, group_size, scale_bits, quantizer, sparsity, rank_ratio"),
    ({"knobs": {"bits": [4]}, "granularity": "layer"}, "granularity: 'layer' is not valid; expected one of block, block_part, block_part_width, module"),
    ({"knobs": {"bits": [4]}, "trials": 0}, "trials: 0 is not valid; expected an integer >= 1"),
    ({"knobs": {"bits": [16, 4]}, "sensitivity": {"levels": {"bits": [3]}}}, "sensitivity.levels.bits: 3 is not one of the allowed"),
    ({"knobs": {"bits": [4]}, "methods": {"quantizer": "magic"}}, "methods.quantizer: 'magic' is not valid"),
    ({}, "knobs: missing"),
])
def test_bad_profiles_name_file_field_and_what_is_valid(tmp_path, data, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidInput) as e:
        load_profile(str(p))
    assert str(p) in str(e.value) and message in str(e.value)


SHIPPED = "shipped profiles: default, gguf, gguf-kquant, gguf-mixed, prune-lowrank, quant-only"


def test_missing_profile_lists_shipped_ones(tmp_path, monkeypatch):
    with pytest.raises(InvalidInput, match="^nonexistent: no such search profile .*; " + SHIPPED):
        load_profile("nonexistent")
    monkeypatch.chdir(tmp_path)  # not the repository: the shipped list is still the shipped one
    with pytest.raises(InvalidInput, match="^elsewhere/mine.yaml: no such search profile .*; " + SHIPPED):
        load_profile("elsewhere/mine.yaml")


def test_profile_written_as_help_shows_it_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_profile("search/prune-lowrank.yaml").name == "prune-lowrank"  # --help's metavar search/NAME.yaml
    own = tmp_path / "search"
    own.mkdir()
    (own / "prune-lowrank.yaml").write_text("knobs: {bits: [8, 4]}\n")
    assert load_profile("search/prune-lowrank.yaml").knobs["bits"] == (8, 4)  # a file there is the user's own


def test_cli_bad_profile_exits_2_before_loading_a_model(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("knobs: {bits: [17]}\n")
    code = main(["search", "no-such-model", "--budget", "10MB", "--profile", str(p)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{p}: knobs.bits: 17 is not valid" in err and "Traceback" not in err


def test_cli_bad_set_exits_2(capsys):
    code = main(["search", "m", "--budget", "1MB", "--set", "eps"])
    assert code == 2
    assert "--set 'eps': expected NAME=NUMBER" in capsys.readouterr().err


def test_parse_profile_rejects_a_non_mapping():
    with pytest.raises(InvalidInput, match="a search profile is a mapping"):
        parse_profile([1, 2], source="x.yaml")
