"""Stage 5, specs: `.stl` property files, checked up front and evaluated with rtamt.

File format (DESIGN.md, extended compatibly):

    # a comment (to the end of the line)
    const eps = 0.1                               # a threshold --set and --relax can change
    option hidden_layer = 0.7                     # where model-internal signals look
    coherence = always[0:31] (jsd <= eps)         # a property: NAME = FORMULA
    factual = always (gold_p_ratio >= 0.5)
        and eventually (gold_logprob >= -1)       # indented lines continue the property above
    smooth = always (kl <= 1) on 95% of prompts   # a chance constraint: P in (0, 100]

Formulas are rtamt discrete-time STL over the signals of toggle.signals (no declarations
needed); time is the generation step, 0 = first generated token. Interval bounds are whole
steps. Arithmetic is +, -, *, / and abs(...); a minus sign in front of a number is part of the
number (`-0.5`), in front of a signal or a bracket it is an error (rtamt's grammar): write
`(0 - jsd)`. A property's robustness on one prompt is rtamt's robustness at time 0; over a suite
it is the minimum over prompts (per-prompt values are kept), or with `on P% of prompts` the
order statistic that is >= 0 exactly when at least P% of the prompts satisfy it. A trace
that ends (EOS) before a bounded operator's window does is evaluated on the steps it has.

Every problem in a file is reported, as `FILE:LINE:COL: message`, before any model work;
rtamt's own exceptions never reach the user. What rtamt parses into another formula than the
one written is refused with its rewrite (docs/specs.md): `a - b + c` and `a / b * c` (rtamt's
precedence), `a -> b -> c`, `==` / `!==`, and a whole-valued signal compared with one of its own
values (`top1_agree >= 1`: margin 0 where it holds, which `not` and `->` misread).

`--relax R` loosens every const by the fraction R, in the direction that makes the
properties that use it easier to satisfy: the direction is the sign of d(robustness)/d(const),
read off the formula (e.g. `jsd <= eps`: robustness = eps - jsd grows with eps, so eps
becomes eps + R|eps|; `p_ratio >= tau`: tau - ... shrinks, so tau becomes tau - R|tau|;
`not`, the left side of `implies`, subtraction and negative factors flip the sign). A const
whose direction cannot be told (inside abs, rise/fall, a product of signals,
a denominator, or used both ways) cannot be relaxed; `--relax` then fails naming it.

The package: syntax.py reads and checks the files and parses each property with rtamt,
analysis.py reads the parsed formula (its type, horizon and const directions), semantics.py
evaluates it with rtamt, and model.py holds what loading gives (SpecSet, Property, Const) and
SpecError. This module re-exports the public names.
"""
from __future__ import annotations

from .model import Const, Property, SpecError, SpecSet
from .syntax import OPTIONS, OUT, check_files, load_specs, parse_overrides, spec_files

__all__ = ["OPTIONS", "OUT", "Const", "Property", "SpecError", "SpecSet", "check_files", "load_specs",
           "parse_overrides", "spec_files"]
