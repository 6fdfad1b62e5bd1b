"""Stated confidence for a violation rate: k failed prompts of n, and the one-sided upper
Clopper-Pearson bound at a level (default 95%).

    upper_bound(0, 30)            # 0.0950: at most 9.5% of such prompts fail, at 95% confidence
    Confidence.of(2, 30, 0.95).to_dict()

The bound is exact (a beta quantile, not a normal approximation), so it holds on small suites:
with k failures out of n, the true rate p satisfies P(Binomial(n, p) <= k) >= 1 - level for every
p up to the bound. It speaks about prompts drawn like these ones, nothing wider.
"""
from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import beta

from .errors import InvalidInput

DEFAULT_LEVEL = 0.95
METHOD = "one-sided Clopper-Pearson"


def check_level(level, option: str = "--confidence") -> float:
    """A confidence level from 0.5 up to (not including) 1, or a clear InvalidInput. Below 0.5 a
    one-sided upper bound falls below the observed rate: no "at most" statement."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(level, bool) or not 0.5 <= value < 1.0:
        raise InvalidInput(f"{option}: {level} is not valid; expected a level from 0.5 up to (not including) 1, "
                           f"e.g. 0.95")
    return value


def upper_bound(k: int, n: int, level: float = DEFAULT_LEVEL) -> float:
    """One-sided upper Clopper-Pearson bound of a rate with k events in n trials (1.0 when k == n,
    and when n == 0: nothing was observed)."""
    if n <= 0 or k >= n:
        return 1.0
    return float(beta.ppf(level, k + 1, n - k))


@dataclass(frozen=True)
class Confidence:
    """k violations of n prompts, the observed rate and its upper bound at `level`."""

    violations: int
    prompts: int
    level: float = DEFAULT_LEVEL

    @classmethod
    def of(cls, violations: int, prompts: int, level: float = DEFAULT_LEVEL) -> "Confidence":
        return cls(int(violations), int(prompts), float(level))

    @property
    def rate(self) -> float | None:
        return self.violations / self.prompts if self.prompts else None

    @property
    def upper(self) -> float:
        return upper_bound(self.violations, self.prompts, self.level)

    def to_dict(self) -> dict:
        return {"violations": self.violations, "prompts": self.prompts, "violation_rate": self.rate,
                "upper_bound": self.upper, "level": self.level, "method": METHOD}

    def sentence(self) -> str:
        """e.g. 'violation rate 0/30, at most 9.5% at 95% confidence (one-sided Clopper-Pearson) on these prompts'"""
        return describe(self.to_dict())


def describe(d: dict) -> str:
    """The sentence for a Confidence.to_dict() (how the report and the CLI word it)."""
    return (f"violation rate {d['violations']}/{d['prompts']}, at most {percent(d['upper_bound'])} at "
            f"{percent(d['level'])} confidence ({d.get('method', METHOD)}) on these prompts")


def percent(v: float) -> str:
    """0.095 -> '9.5%', 0.95 -> '95%' (one decimal, a trailing .0 dropped; more where one decimal
    would round a level such as 0.999999 up to 100%, or 1e-9 down to 0%)."""
    digits = 1
    while digits < 12 and 0 < v < 1 and (round(100 * v, digits) >= 100 or round(100 * v, digits) == 0):
        digits += 1
    text = f"{100 * v:.{digits}f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"
