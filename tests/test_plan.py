import pytest

from toggle.errors import InvalidInput
from toggle.plan import Methods, ModuleSetting, Plan


def test_round_trip(tmp_path):
    plan = Plan(model="m", profile="default", methods=Methods(quantizer="rtn", pruner="wanda"),
                modules={"a": ModuleSetting(4, 0.25, 1.0), "b": ModuleSetting(16, 0.0, 0.5),
                         "c": ModuleSetting(4, group_size=64, scale_bits=6)})
    path = plan.save(tmp_path / "plan.yaml")
    back = Plan.load(path)
    assert back.modules == plan.modules and back.methods == plan.methods and back.model == "m"
    assert back.setting("missing").untouched
    assert plan.methods.for_setting(back.modules["c"]).scale_bits == 6 and back.methods.scale_bits == 16
    assert ModuleSetting(16, scale_bits=8).scale_bits is None  # nothing to quantise at 16 bits
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize("modules,needle", [
    ({"a": {"bits": 1}}, "modules.a.bits: 1 is not valid; expected an integer 2..8, or 16"),
    ({"a": {"bits": 12}}, "modules.a.bits: 12"),
    ({"a": {"sparsity": 1.0}}, "modules.a.sparsity: 1.0 is not valid; expected a number in [0, 1)"),
    ({"a": {"sparsity": -0.1}}, "modules.a.sparsity"),
    ({"a": {"rank_ratio": 0}}, "modules.a.rank_ratio: 0 is not valid; expected a number in (0, 1]"),
    ({"a": {"bitz": 4}}, "unknown key(s) bitz"),
    ({"a": {"bits": 4, "scale_bits": 12}}, "modules.a.scale_bits: 12 is not valid; expected an integer 2..8"),
    ({"a": {"bits": 4, "scale_bits": "8"}}, "modules.a.scale_bits: '8' is not valid"),
    ({"a": 4}, "modules.a: expected a mapping"),
])
def test_bad_settings(modules, needle):
    with pytest.raises(InvalidInput) as e:
        Plan.from_dict({"model": "m", "modules": modules}, source="p.yaml")
    assert needle in e.value.message and e.value.message.startswith("p.yaml")


def test_bad_methods_and_keys(tmp_path):
    with pytest.raises(InvalidInput, match="methods.quantizer: 'fancy' is not valid; expected one of rtn, awq, gptq"):
        Plan.from_dict({"model": "m", "methods": {"quantizer": "fancy"}})
    with pytest.raises(InvalidInput, match=r"methods.scale_bits: 1 is not valid; expected an integer 2..8 \(quantised"):
        Plan.from_dict({"model": "m", "methods": {"scale_bits": 1}})
    with pytest.raises(InvalidInput, match="unknown key"):
        Plan.from_dict({"model": "m", "extra": 1})
    with pytest.raises(InvalidInput, match="model: expected"):
        Plan.from_dict({"modules": {}})
    f = tmp_path / "bad.yaml"
    f.write_text("model: m\nmodules: [\n")
    with pytest.raises(InvalidInput, match=r"bad.yaml:\d+:\d+: not valid YAML"):
        Plan.load(f)
    with pytest.raises(InvalidInput, match="no such plan file"):
        Plan.load(tmp_path / "none.yaml")


def test_unknown_module_names():
    plan = Plan(model="m", modules={"model.layers.99.mlp.up_proj": ModuleSetting(4)})
    with pytest.raises(InvalidInput, match="unknown module"):
        plan.validate_for(["model.layers.0.mlp.up_proj"])
