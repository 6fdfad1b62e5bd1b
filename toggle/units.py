"""Budgets and sizes: '4GB', '3.5GiB', '512MB', '40MiB', '123456', '4.5bpw'.

Decimal units are powers of 1000, binary units powers of 1024. A bits-per-weight budget
depends on the model, so it parses to a `Budget` that `resolve` turns into bytes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

from .errors import InvalidInput

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
VALID_FORMS = "a size such as 4GB, 3.5GiB, 512MB, 40MiB or 123456 (bytes), or bits per weight such as 4.5bpw"


@dataclass(frozen=True)
class Budget:
    """A size budget: either absolute bytes or average bits per compressible weight."""

    bytes: int | None = None
    bpw: float | None = None
    text: str = ""

    def resolve(self, compressible_params: int, other_bytes: int) -> int:
        """Bytes allowed: a bpw budget covers the compressible weights at `bpw` bits plus
        every other tensor as the output format stores it and the file's fixed header
        (`other_bytes`: both)."""
        if self.bytes is not None:
            return self.bytes
        return int(math.floor(self.bpw * compressible_params / 8)) + other_bytes

    def __str__(self) -> str:
        return self.text or (f"{self.bpw}bpw" if self.bpw is not None else format_bytes(self.bytes))


def parse_budget(text: str, *, field: str = "--budget") -> Budget:
    """Parse a budget; raises InvalidInput naming `field` and the valid forms."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{field}: empty budget; expected {VALID_FORMS}")
    raw = text.strip()
    if raw.lower().endswith("bpw"):
        number = raw[:-3].strip()
        try:
            bpw = float(number)
            if number.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise ValueError(number)
        except ValueError:
            raise InvalidInput(f"{field}: '{text}' is not a number of bits per weight; expected {VALID_FORMS}") from None
        if not math.isfinite(bpw) or not 0 < bpw <= 32:
            raise InvalidInput(f"{field}: '{text}': bits per weight must be in (0, 32]")
        return Budget(bpw=bpw, text=raw)
    return Budget(bytes=parse_size(raw, field=field), text=raw)


def parse_size(text: str, *, field: str = "size") -> int:
    """Parse a byte size with optional decimal or binary unit; must be positive."""
    m = _PATTERN.match(text)
    if not m:
        if text.strip().startswith("-"):
            raise InvalidInput(f"{field}: '{text}': a size must be positive; expected {VALID_FORMS}")
        raise InvalidInput(f"{field}: '{text}' is not a size; expected {VALID_FORMS}")
    number, unit = m.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise InvalidInput(
            f"{field}: '{text}': unknown unit '{unit}'; use B, KB, MB, GB, TB (powers of 1000), "
            f"KiB, MiB, GiB, TiB (powers of 1024) or bpw"
        )
    value = float(number) * factor
    if not math.isfinite(value):
        raise InvalidInput(f"{field}: '{text}' is too large to be a size; expected {VALID_FORMS}")
    if value < 1:
        raise InvalidInput(f"{field}: '{text}': a size must be at least 1 byte")
    # whole bytes, rounded down (a budget of 100.6 bytes allows 100), in exact decimal arithmetic:
    # 0.3MB is 300000 bytes, not float's 299999.99999999994
    return int(Decimal(number) * factor)


def format_bytes(n: int | float | None) -> str:
    """Human size with decimal units, e.g. 98.4 MB."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_reduction(reduction: float) -> str:
    """'12.5% smaller' for a saved fraction of 0.125; '8.0% larger' for -0.08 (a plan can be
    larger than its reference: parameters kept as loaded in float32, say)."""
    return f"{100 * abs(reduction):.1f}% {'smaller' if reduction >= 0 else 'larger'}"
