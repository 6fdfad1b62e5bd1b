import pytest
from hypothesis import given, strategies as st

from toggle.errors import InvalidInput
from toggle.units import parse_budget, parse_size


@pytest.mark.parametrize("text,expected", [
    ("4GB", 4 * 10**9), ("3.5GiB", int(3.5 * 2**30)), ("512MB", 512 * 10**6), ("40MiB", 40 * 2**20),
    ("123456", 123456), ("100 mb", 100 * 10**6), ("1kb", 1000), ("2KiB", 2048), ("1e3", 1000),
    ("100.6", 100), ("1.5", 1), ("0.3MB", 300_000), ("4.35MB", 4_350_000), ("1.1KiB", 1126),
])
def test_sizes(text, expected):
    assert parse_budget(text).bytes == expected


def test_bpw_budget_resolves_against_the_model():
    b = parse_budget("4.5bpw")
    assert b.bpw == 4.5 and b.bytes is None
    assert b.resolve(compressible_params=1000, other_bytes=100) == 562 + 100


def test_a_bpw_budget_of_a_gguf_search_holds_the_file_s_header(tiny_llama_dir):
    """8.5bpw is every weight at Q8_0 plus what the file holds besides: its metadata and tokenizer too."""
    from toggle.cost import CostModel
    from toggle.formats import get_format
    from toggle.load import load_model
    from toggle.modules import compressible_modules
    from toggle.plan import Methods, ModuleSetting, Plan

    lm = load_model(str(tiny_llama_dir))
    refs = compressible_modules(lm.model)
    cost = CostModel.for_model(lm, get_format("gguf"), refs)
    q8 = cost.of(Plan(lm.model_id, {r.name: ModuleSetting(bits=8) for r in refs}, Methods(group_size=32, symmetric=True)))
    assert cost.header_bytes > 0
    assert q8.bytes <= cost.budget_bytes(parse_budget("8.5bpw"))
    assert q8.bytes > parse_budget("8.5bpw").resolve(cost.compressible_params, cost.other_bytes)  # without the header


@pytest.mark.parametrize("text,needle", [
    ("4XB", "unknown unit 'XB'"), ("-1GB", "must be positive"), ("0", "at least 1 byte"), ("", "empty budget"),
    ("GB", "is not a size"), ("0bpw", "must be in (0, 32]"), ("abcbpw", "not a number of bits"),
])
def test_bad_budgets_name_the_field(text, needle):
    with pytest.raises(InvalidInput) as e:
        parse_budget(text)
    assert e.value.message.startswith("--budget:") and needle in e.value.message
    assert e.value.exit_code == 2


@given(st.text(max_size=20))
def test_budget_parser_never_crashes(text):
    try:
        b = parse_budget(text)
    except InvalidInput:
        return
    assert (b.bytes is not None and b.bytes >= 1) or (b.bpw is not None and 0 < b.bpw <= 32)


@given(st.integers(min_value=1, max_value=10**15))
def test_plain_bytes_round_trip(n):
    assert parse_size(str(n)) == n
