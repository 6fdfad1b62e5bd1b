"""Evaluation with rtamt: the robustness of a parsed property on one trace, of a spec set per
property per prompt, and the one-sample workaround (rtamt's semantics; the parse, rtamt's
syntax, is in syntax.py)."""
from __future__ import annotations

import math

from ..errors import InvalidInput
from ..signals import STEP


def robustness(prop, signals: dict, length: int | None = None) -> float:
    """Property.robustness: rtamt robustness at time 0 of one trace of `prop`."""
    n = length if length is not None else len(signals[prop.signals[0]]) if prop.signals else 1
    if n == 0:
        return math.inf  # nothing to check on an empty trace (never produced by the trace stage)
    data = {"time": list(range(n))}
    for s in prop.signals:
        data[s] = [float(v) for v in signals[s]]
    for c, v in prop.consts.items():
        data[c] = [v] * n
    try:
        if n > 1:
            return float(prop._rtamt.evaluate(data)[0][1])
        return _evaluate_one_sample(prop._rtamt, data)
    except ZeroDivisionError:
        raise InvalidInput(f"{prop.where}: property {prop.name!r} divides by zero (a constant or a signal that is 0 "
                           f"on this trace); divide only by what cannot be 0, e.g. (x + 1e-9)") from None
    except (ValueError, OverflowError) as e:  # math.sqrt of a negative, exp or pow past a float, ...
        raise InvalidInput(f"{prop.where}: property {prop.name!r} cannot be computed on this trace ({e}: e.g. sqrt "
                           f"or pow of a negative value, or exp past the largest float); keep such arguments in "
                           f"range, e.g. sqrt(abs(x))") from None


def evaluate(specs, traces: dict[str, dict], answers: dict[str, dict] | None = None) -> dict[str, dict[str, float]]:
    """SpecSet.evaluate: robustness per property of `specs` per prompt."""
    out: dict[str, dict[str, float]] = {}
    for prop in specs.properties:
        source = traces if prop.axis == STEP else (answers or {})
        out[prop.name] = {pid: prop.robustness(sig) for pid, sig in source.items()}
    return out


def allowed_failures(prop, prompts: int) -> int:
    """How many of `prompts` prompts a property may fail: 0, or with a share s (a chance constraint:
    it must hold on at least s of the prompts) prompts - ceil(s * prompts)."""
    if prop.share is None:
        return 0
    return prompts - math.ceil(prop.share * prompts - 1e-9)


def over_suite(prop, values, prompts: int | None = None) -> float:
    """A property's robustness over a suite from its per-prompt values: the minimum; with a share,
    the (k+1)-th smallest value for k allowed failures, so it is >= 0 exactly when the property
    holds on at least that share of the prompts. +inf when no prompt applies (vacuously true).
    `prompts`: the suite's size when `values` cover only some of its prompts; the result is then
    an upper bound of the whole suite's value (more values can only lower an order statistic)."""
    ordered = sorted(values)
    if not ordered:
        return math.inf
    k = allowed_failures(prop, prompts if prompts is not None else len(ordered))
    return ordered[k] if k < len(ordered) else math.inf


def decided_below(prop, values, prompts: int, threshold: float = 0.0) -> bool:
    """Whether `values` (some of the `prompts` per-prompt values) already prove the property's
    robustness over the suite below `threshold`, whatever the others are: more of them below it
    than the property may fail. threshold 0: the property is violated."""
    return sum(v < threshold for v in values) > allowed_failures(prop, prompts)


def _evaluate_one_sample(spec, data) -> float:
    """rtamt 0.4.10's offline evaluate() fails on a one-sample trace (an unbound variable in
    its sampling-period check, after the robustness is computed); this is the same evaluation
    without that check. One-step traces are common: a one-token gold answer."""
    interpreter = spec.offline_interpreter
    if not spec.set_ast_flag:
        interpreter.set_ast(spec.ast)
        spec.set_ast_flag = True
    interpreter.set_variable_to_ast_from_dataset(data)
    interpreter.ast.offline_results["time"] = data["time"]
    robustness = interpreter.visitAst(interpreter.ast, 1)
    return float(robustness[-1][0])
