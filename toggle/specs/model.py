"""What loading spec files gives: SpecSet (the properties, consts and signal options of a set of
files), Property, Const, and SpecError for the problems found instead."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ToggleError
from ..signals import DEFAULT_STEPS, SIGNALS, STEP, SignalOptions
from . import semantics


class SpecError(ToggleError):
    """One or more problems in spec files; the message holds every one, one per line."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class Const:
    name: str
    value: float
    file: str
    line: int
    col: int
    direction: int | None = None  # +1: raising it loosens, -1: lowering it loosens, None: unknown
    why_unknown: str = ""  # why the direction is unknown (for --relax errors)
    used: bool = False


@dataclass
class Property:
    """One named property, parsed by rtamt once and evaluated on any number of traces."""

    name: str
    formula: str  # source text, consts by name
    file: str
    line: int
    signals: tuple[str, ...]
    consts: dict[str, float]  # the values this property's consts have after --set / --relax
    axis: str  # signals.STEP or signals.ANSWER
    steps_needed: int | None  # steps of trace the formula looks at from time 0 (None: all of it)
    _rtamt: object = field(repr=False, default=None)
    share: float | None = None  # must hold on at least this share of the prompts (None: on every prompt)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def robustness(self, signals: dict, length: int | None = None) -> float:
        """rtamt robustness at time 0 of one trace; `signals` maps name -> sequence of floats."""
        return semantics.robustness(self, signals, length)


@dataclass
class SpecSet:
    files: tuple[str, ...]
    properties: list[Property]
    consts: dict[str, dict[str, Const]]  # file -> name -> const (values after --set / --relax)
    options: SignalOptions = SignalOptions()
    option_where: dict[str, str] = field(default_factory=dict)  # option -> FILE:LINE:COL of its declaration

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.properties]

    @property
    def signals(self) -> list[str]:
        return sorted({s for p in self.properties for s in p.signals})

    @property
    def const_values(self) -> dict[str, float]:
        """Every const's value after --set / --relax, by name; a name whose files give it other
        values (consts are each file's own) is listed per file, as FILE:NAME."""
        values: dict[str, set] = {}
        for consts in self.consts.values():
            for name, c in consts.items():
                values.setdefault(name, set()).add(c.value)
        return {(name if len(values[name]) == 1 else f"{Path(file).name}:{name}"): c.value
                for file, consts in self.consts.items() for name, c in consts.items()}

    @property
    def needs(self) -> frozenset[str]:
        """What the trace must cache: a subset of logprobs, attention, hidden, gold."""
        return frozenset(SIGNALS[s].needs for s in self.signals)

    @property
    def steps_needed(self) -> int | None:
        """Steps of generation the step-axis properties look at: the furthest bound, and at least
        DEFAULT_STEPS when a property reads every step (an unbounded `always`) beside them; None
        when no property is bounded (DEFAULT_STEPS applies)."""
        step_props = [p for p in self.properties if p.axis == STEP]
        bounded = [p.steps_needed for p in step_props if p.steps_needed is not None]
        if not bounded:
            return None
        if len(bounded) < len(step_props):  # the unbounded ones read DEFAULT_STEPS, the others their windows
            return max(bounded + [DEFAULT_STEPS])
        return max(bounded)

    def evaluate(self, traces: dict[str, dict], answers: dict[str, dict] | None = None) -> dict[str, dict[str, float]]:
        """Robustness per property per prompt.

        `traces`: prompt id -> {signal -> per-step values} on the step axis; `answers`: the same
        on the answer axis, only for prompts with a gold answer.
        """
        return semantics.evaluate(self, traces, answers)

    def over_suite(self, per_prompt: dict[str, dict[str, float]]) -> dict[str, float]:
        """Robustness per property over the suite from `evaluate`'s per-prompt values (the minimum,
        or the order statistic a chance constraint asks for; +inf where no prompt applies)."""
        by_name = {p.name: p for p in self.properties}
        return {name: semantics.over_suite(by_name[name], values.values()) for name, values in per_prompt.items()}
