"""AST analysis of a parsed property: that it is a condition (_type_check), how many steps it
reads (_horizon) and the direction of each const for --relax (_const_signs)."""
from __future__ import annotations

from fractions import Fraction


def _cls(node) -> str:
    return type(node).__name__


_NUMERIC = {"Variable", "Constant", "Abs", "Addition", "Subtraction", "Multiplication", "Division", "Exp",
            "Pow", "Sqrt"}


def _type_check(node) -> str | None:
    """A property must be a condition: comparisons combined by logic and temporal operators."""
    name = _cls(node)
    if name in _NUMERIC:
        return (f"the formula is a number ({node.name}), not a condition; compare it, e.g. "
                f"`always[0:31] (jsd <= 0.1)`")
    if name in _NOT_BOOLEAN:
        return _NOT_BOOLEAN[name]
    if name == "Predicate":
        return _operand_problem(node)
    for child in node.children:
        if _cls(child) in _NUMERIC:
            return (f"`{child.name}` is a number where a condition is expected; compare it, "
                    f"e.g. ({child.name} <= 0.1)")
        problem = _type_check(child)
        if problem:
            return problem
    return None


# rtamt accepts these and scores them as -|a - b| and |a - b| of the two sides' robustness, which
# is not their Boolean meaning (`iff` of two conditions that both hold comes out negative).
_NOT_BOOLEAN = {
    "Iff": "`iff` is not supported: rtamt scores it as -|a - b| of the two sides' margins, which fails when both "
           "hold by different margins; write ((a -> b) and (b -> a))",
    "Xor": "`xor` is not supported: rtamt scores it as |a - b| of the two sides' margins, which holds when both hold "
           "by different margins; write ((a and not b) or (b and not a))",
}


def _operand_problem(node) -> str | None:
    """Comparisons and arithmetic take numbers: a condition there (a <= b <= c reads as
    (a <= b) <= c in rtamt, and compares a margin with c) is an error, not a silent number."""
    for child in node.children:
        if _cls(child) not in _NUMERIC:
            chained = " (a <= b <= c reads as (a <= b) <= c; write (a <= b) and (b <= c))" \
                if _cls(child) == "Predicate" and _cls(node) == "Predicate" else ""
            return f"`{child.name}` is a condition where a number is expected{chained}"
        problem = _operand_problem(child)
        if problem:
            return problem
    return None


def _horizon(node) -> int | None:
    """How many steps after time 0 the formula reads (None: unbounded)."""
    name = _cls(node)
    kids = [_horizon(c) for c in node.children]
    if any(k is None for k in kids):
        return None
    inner = max(kids, default=0)
    if name in ("Always", "Eventually", "Until"):
        return None
    if name in ("TimedAlways", "TimedEventually", "TimedUntil", "TimedPrecedes"):
        return int(Fraction(node.end)) + inner
    if name in ("Next", "StrongNext"):
        return 1 + inner
    return inner  # atoms, logic, and past operators (they read earlier steps only)


_FLIP_LOGIC = {"Neg"}
_AMBIGUOUS = {"Iff": "iff", "Xor": "xor", "Rise": "rise", "Fall": "fall", "Abs": "abs()", "Pow": "pow()"}


def _const_signs(node, consts: set[str], sign: int | None = 1, why: str = ""):
    """Yield (const, sign of d robustness / d const or None, reason) for every occurrence."""
    name = _cls(node)
    if name == "Variable":
        if node.var in consts:
            yield node.var, sign, why
        return
    if name == "Constant":
        return
    if sign is not None and name in _AMBIGUOUS:
        sign, why = None, f"it is used inside {_AMBIGUOUS[name]}"
    kids = node.children
    if name == "Predicate":
        op = str(node.operator)  # == and !== are refused by the parser (syntax._misreadings)
        if op.startswith("<"):  # a <= b: robustness b - a
            signs = (-1, 1)
        else:  # a >= b: robustness a - b
            signs = (1, -1)
        for child, s in zip(kids, signs):
            yield from _const_signs(child, consts, None if sign is None or s is None else sign * s, why)
        return
    if name in _FLIP_LOGIC:
        yield from _const_signs(kids[0], consts, None if sign is None else -sign, why)
        return
    if name == "Implies":
        yield from _const_signs(kids[0], consts, None if sign is None else -sign, why)
        yield from _const_signs(kids[1], consts, sign, why)
        return
    if name == "Subtraction":
        yield from _const_signs(kids[0], consts, sign, why)
        yield from _const_signs(kids[1], consts, None if sign is None else -sign, why)
        return
    if name in ("Multiplication", "Division"):
        for i, child in enumerate(kids):
            other = kids[1 - i]
            if _cls(other) == "Constant" and not (name == "Division" and i == 1) and other.val != 0:
                s = None if sign is None else sign * (1 if other.val > 0 else -1)
                yield from _const_signs(child, consts, s, why)
            else:
                yield from _const_signs(child, consts, None,
                                        why or "it is multiplied or divided by a signal, or is a denominator")
        return
    # and, or, temporal operators, addition, exp, sqrt keep the direction
    for child in kids:
        yield from _const_signs(child, consts, sign, why)
