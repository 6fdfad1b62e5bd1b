import pytest
from hypothesis import given, strategies as st

from toggle.errors import InvalidInput
from toggle.units import parse_budget, parse_size


@pytest.mark.parametrize("text,expected", [
    ("4GB", 4 * 10**9), ("3.5GiB", int(3.5 * 2**30)), ("512MB", 512 * 10**6), ("40MiB", 40 * 2**20),
    ("123456", 123456), ("100 mb", 100 * 10**6), ("1kb", 1000), ("2KiB", 2048), ("1e3", 1000),
])
def test_sizes(text, expected):
    assert parse_budget(text).bytes == expected


def test_bpw_budget_resolves_against_the_model():
    b = parse_budget("4.5bpw")
    assert b.bpw == 4.5 and b.bytes is None
    assert b.resolve(compressible_params=1000, other_bytes=100) == 562 + 100


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
