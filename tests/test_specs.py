"""Spec files: parsing, every error kind with its position, rtamt semantics pinned on
hand-made traces, --set / --relax, and fuzzing (only ToggleError, never a traceback)."""
import math
from dataclasses import replace
from pathlib import Path
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toggle.errors import InvalidInput, ToggleError
from toggle.files import default_specs, resource_dir
from toggle.signals import SIGNALS
from toggle.specs import SpecError, check_files, load_specs, parse_overrides


def write(tmp_path, text, name="p.stl"):
    path = tmp_path / name
    path.write_text(text)
    return path


def prop(tmp_path, formula, consts=""):
    return load_specs([write(tmp_path, f"{consts}\nphi = {formula}\n")]).properties[0]


def errors_of(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_specs([path])
    return [line.replace(str(path), "F") for line in e.value.errors]


# --- semantics on hand-made traces ---------------------------------------------------------

def test_bounded_always_is_min_over_window(tmp_path):
    # x <= 0.5 has robustness 0.5 - x; always[1:3] takes the min over steps 1..3 only
    p = prop(tmp_path, "always[1:3] (jsd <= 0.5)")
    assert p.robustness({"jsd": [0.9, 0.1, 0.2, 0.4, 0.95]}) == pytest.approx(0.1)
    assert p.steps_needed == 4


def test_bounded_eventually_is_max_over_window(tmp_path):
    p = prop(tmp_path, "eventually[2:4] (p_ratio >= 0.5)")
    assert p.robustness({"p_ratio": [0.9, 0.1, 0.2, 0.4, 0.7, 0.99]}) == pytest.approx(0.2)
    assert p.steps_needed == 5


def test_bounded_until_uses_left_operand_before_the_witness(tmp_path):
    # (a >= 0) until[1:3] (b >= 0) at 0 = max over t' in 1..3 of min(b[t'], min a[0..t'-1]):
    # t'=1: min(-2, 1) = -2; t'=2: min(0.3, 1) = 0.3; t'=3: min(0.9, min(1, 2, 0.5)) = 0.5
    p = prop(tmp_path, "(p_ratio >= 0) until[1:3] (kl >= 0)")
    assert p.robustness({"p_ratio": [1, 2, 0.5, 0.1, 5], "kl": [-1, -2, 0.3, 0.9, -1]}) == pytest.approx(0.5)
    assert p.steps_needed == 4


def test_nested_and_logic_and_next(tmp_path):
    # always[0:2] eventually[0:1] (x >= 1): windows {0,1},{1,2},{2,3} -> max(x-1) = 1, 0.5, 2 -> min 0.5
    p = prop(tmp_path, "always[0:2] eventually[0:1] (p_ratio >= 1)")
    assert p.robustness({"p_ratio": [2, 1, 1.5, 3, -9]}) == pytest.approx(0.5)
    assert p.steps_needed == 4
    q = prop(tmp_path, "next (kl <= 1) and not (kl > 3)")
    # next: 1 - kl[1] = -1; not (kl > 3) at 0: -(kl[0] - 3) = 2.5 -> min = -1
    assert q.robustness({"kl": [0.5, 2.0]}) == pytest.approx(-1.0)
    assert q.steps_needed == 2


def test_negative_numbers_and_subtraction_still_parse(tmp_path):
    # a sign in front of a number is rtamt's literal; after a value a minus subtracts
    p = prop(tmp_path, "always (kl * -2 >= -1 - -0.5)")
    # -2 kl >= -0.5 at every step: min(-2 kl + 0.5) = -2 * 0.4 + 0.5
    assert p.robustness({"kl": [0.1, 0.4]}) == pytest.approx(-0.3)


def test_unbounded_operators_cover_the_whole_trace(tmp_path):
    p = prop(tmp_path, "always (hidden_cos >= 0.9)")
    assert p.steps_needed is None
    assert p.robustness({"hidden_cos": [1.0, 0.95, 0.99, 0.85]}) == pytest.approx(-0.05)


def test_steps_needed_reach_the_furthest_window_beside_unbounded_properties(tmp_path):
    # an unbounded property beside a window past the default 32 steps: the trace must reach the window
    late = write(tmp_path, "u = always (kl <= 100)\nlate = always[40:60] (jsd >= 1)\n", "late.stl")
    assert load_specs([late]).steps_needed == 61
    near = write(tmp_path, "u = always (kl <= 100)\nnear = always[0:7] (jsd <= 1)\n", "near.stl")
    assert load_specs([near]).steps_needed == 32  # the unbounded one still reads the default steps
    alone = write(tmp_path, "u = always (kl <= 100)\n", "alone.stl")
    assert load_specs([alone]).steps_needed is None


def test_consts_take_their_values(tmp_path):
    p = prop(tmp_path, "always[0:1] (jsd <= eps)", consts="const eps = 0.25")
    assert p.consts == {"eps": 0.25}
    assert p.robustness({"jsd": [0.05, 0.2]}) == pytest.approx(0.05)


def test_spec_set_min_over_prompts_keeps_per_prompt(tmp_path):
    path = write(tmp_path, "a = always[0:2] (jsd <= 0.1)\nf = always (gold_p_ratio >= 0.5)\n")
    specs = load_specs([path])
    assert specs.signals == ["gold_p_ratio", "jsd"]
    assert specs.needs == {"logprobs", "gold"}
    assert specs.steps_needed == 3
    per = specs.evaluate({"x": {"jsd": [0.0, 0.05, 0.02]}, "y": {"jsd": [0.3, 0.0, 0.0]}},
                         {"x": {"gold_p_ratio": [0.9, 0.7]}})
    assert per["a"] == pytest.approx({"x": 0.05, "y": -0.2})
    assert per["f"] == pytest.approx({"x": 0.2})  # only prompts with an answer


def test_chance_constraint_syntax_sets_the_share(tmp_path):
    path = write(tmp_path, "const eps = 0.1\nc = always[0:2] (jsd <= eps) on 75% of prompts\n"
                           "d = always[0:2] (jsd <= eps)\n    and always[0:2] (kl <= 1)\n    on 99.5% of prompts\n"
                           "e = always[0:2] (jsd <= eps)\n")
    c, d, e = load_specs([path]).properties
    assert (c.formula, c.share, c.steps_needed) == ("always[0:2] (jsd <= eps)", 0.75, 3)
    assert (d.formula, d.share) == ("always[0:2] (jsd <= eps) and always[0:2] (kl <= 1)", 0.995)
    assert e.share is None


def test_chance_constraint_over_suite_is_the_order_statistic(tmp_path):
    path = write(tmp_path, "c = always[0:1] (jsd <= 0.5) on 75% of prompts\nm = always[0:1] (jsd <= 0.5)\n")
    specs = load_specs([path])
    traces = {"a": {"jsd": [0.8, 0.0]}, "b": {"jsd": [0.4, 0.3]}, "c": {"jsd": [0.1, 0.3]}, "d": {"jsd": [0.45, 0.0]}}
    per = specs.evaluate(traces)
    assert per["c"] == pytest.approx({"a": -0.3, "b": 0.1, "c": 0.2, "d": 0.05})
    # 4 prompts, 75%: ceil(3) = 3 must hold, one may fail: the 2nd smallest; without a share: the minimum
    assert specs.over_suite(per) == pytest.approx({"c": 0.05, "m": -0.3})
    traces["b"] = {"jsd": [0.6, 0.0]}  # a second failure: the property is violated, by b's margin
    assert specs.over_suite(specs.evaluate(traces))["c"] == pytest.approx(-0.1)


def test_rtamt_spec_is_parsed_once_and_reused(tmp_path):
    p = prop(tmp_path, "always (jsd <= 0.5)")
    first = p._rtamt
    for trace in ([0.1], [0.2, 0.3], [0.9, 0.1, 0.0]):
        p.robustness({"jsd": trace})
    assert p._rtamt is first
    assert p.robustness({"jsd": [0.1, 0.2]}) == pytest.approx(0.3)


def test_continuation_lines_and_comments(tmp_path):
    path = write(tmp_path, "# header\nconst eps = 0.1  # threshold\nphi = always[0:3] (jsd <= eps)\n"
                           "    and always[0:3] (kl <= 1)   # second half\n\n")
    p = load_specs([path]).properties[0]
    assert p.formula == "always[0:3] (jsd <= eps) and always[0:3] (kl <= 1)"
    assert p.signals == ("jsd", "kl")


def test_options(tmp_path):
    path = write(tmp_path, "option hidden_layer = -3\noption attn_layers = 4, 5,6\noption attn_span = 16\n"
                           "h = always (hidden_cos >= 0.9)\n")
    o = load_specs([path]).options
    assert (o.hidden_layer, o.attn_layers, o.attn_span) == (-3, (4, 5, 6), 16)
    path = write(tmp_path, "option hidden_layer = 0.7\noption attn_layers = 0.5:1.0, 2\nh = hidden_cos >= 0.9\n")
    o = load_specs([path]).options
    assert (o.hidden_layer, o.attn_layers) == (0.7, ((0.5, 1.0), 2))
    assert o.resolved(30).hidden_layer == 20 and o.resolved(30).attn_layers == (2,) + tuple(range(14, 30))
    assert replace(o, attn_layers=None).resolved(2).hidden_layer == 1  # the same file fits a 2-block model
    path = write(tmp_path, "option topk = 3\nt = always (topk_overlap >= 0.5)\n")
    assert load_specs([path]).options.topk == 3


def test_conflicting_options_across_files(tmp_path):
    a = write(tmp_path, "option hidden_layer = 3\nphi = hidden_cos >= 0.9\n", "a.stl")
    b = write(tmp_path, "option hidden_layer = 0.5\npsi = hidden_cos >= 0.8\n", "b.stl")
    with pytest.raises(SpecError, match=r"b.stl:1:8: option hidden_layer = 0.5 conflicts with 3 at .*a.stl:1:8"):
        load_specs([a, b])


# --- every error kind, with FILE:LINE:COL --------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("phi = always[0:3] (jsd <= \n", "F:1:26: syntax error: unexpected end of formula"),
    ("phi = always[0:3] (jsd <= 1))\n", "F:1:29: syntax error: unexpected ')'"),
    ("phi = jsd <= 1 $ 2\n", "F:1:16: syntax error: unexpected '$'"),
    ("phi = always[0:5] (0.9 <= p_ratio <= 1.1)\n", "F:1:7: property phi: `(0.9)<=(p_ratio)` is a condition where a "
                                                  "number is expected (a <= b <= c reads as (a <= b) <= c; write "
                                                  "(a <= b) and (b <= c))"),
    ("phi = always (abs(jsd <= 0.1) >= 0)\n", "F:1:7: property phi: `(jsd)<=(0.1)` is a condition where a number"),
    ("phi = always ((jsd <= 0.1) + (kl <= 1) >= 1)\n", "F:1:7: property phi: `(jsd)<=(0.1)` is a condition"),
    ("phi = always ((jsd >= 0) iff (base_p >= 0))\n", "F:1:7: property phi: `iff` is not supported: rtamt scores it "
                                                     "as -|a - b|"),
    ("phi = always ((jsd >= 0) xor (base_p >= 0))\n", "F:1:7: property phi: `xor` is not supported"),
    ("a = always[0:16384] (eventually[0:16384] (jsd <= 0.1))\n", "F:1:5: property a reads 32769 generation steps "
                                                               "(its nested windows add up), beyond 16384"),
    ("phi = always (jsd <= 1e400)\n", "F:1:22: number 1e400 is too large for a float; a threshold must be finite"),
    ("phi = " + "(" * 1500 + "jsd <= 1" + ")" * 1500 + "\n", "F:1:7: property phi: the formula is nested too deeply"),
    ("phi = always (top1_agree != 0)\n", "F:1:26: syntax error: rtamt writes 'not equal' as !== (not !=)"),
    # what rtamt would parse into another formula than the one written
    ("phi = always ((jsd - kl + 1) <= 10)\n", "F:1:20: property phi: a - b + c reads as a - (b + c) in rtamt's grammar "
                                            "(+ binds tighter than -); write (a - b) + c"),
    ("phi = always ((jsd / kl * 2) <= 10)\n", "F:1:20: property phi: a / b * c reads as a / (b * c)"),
    ("phi = always (((jsd <= 1) -> (kl <= 1)) -> (jsd <= 2) -> (kl <= 2))\n",
     "F:1:55: property phi: a -> b -> c reads as (a -> b) -> c"),
    ("phi = always (top1_agree !== 0)\n", "F:1:26: property phi: `!==` has no margin in STL's robustness"),
    ("phi = always (not (top1_agree >= 1))\n", "F:1:31: property phi: top1_agree takes only 0 and 1, so compared with 1 "
                                             "its margin is exactly 0 where it equals 1, which `not`, the left side of "
                                             "`->`, rise and fall read as holding; compare it with a value between two "
                                             "of its own: top1_agree >= 0.5"),
    ("const one = 1\nphi = always ((one <= token_match) -> (jsd <= 0.1))\n",
     "F:2:20: property phi: token_match takes only 0 and 1, so compared with 1 its margin is exactly 0 where it "
     "equals 1, which `not`, the left side of `->`, rise and fall read as holding; compare it with a value between "
     "two of its own: token_match >= 0.5"),
    ("phi = always (0 < base_stop)\n", "F:1:17: property phi: base_stop takes only 0 and 1, so compared with 0 its "
                                     "margin is exactly 0"),
    ("phi = always (base_rank <= 3)\n", "F:1:25: property phi: base_rank takes only whole numbers"),
    ("option topk = 4\nphi = always (topk_overlap >= 0.75)\n",
     "F:2:28: property phi: topk_overlap takes only multiples of 1/4 (option topk = 4), so compared with 0.75 its "
     "margin is exactly 0 where it equals 0.75, which `not`, the left side of `->`, rise and fall read as holding; "
     "compare it with a value between two of its own: topk_overlap >= 0.625"),
    ("phi = always (-jsd >= -0.1)\n", "F:1:15: syntax error: a minus sign negates numbers only (rtamt's grammar); "
                                      "write (0 - jsd) to negate a signal or a formula"),
    ("phi = always (kl * -(jsd + 1) <= 1)\n", "F:1:20: syntax error: a minus sign negates numbers only"),
    ("\n\nphi = always[0:3] (jsdd <= 0.1)\n", "F:3:20: unknown signal or const 'jsdd' (did you mean jsd?)"),
    ("phi = always[5:2] (jsd <= 0.1)\n", "F:1:13: reversed interval [5:2]"),
    ("phi = always[] (jsd <= 0.1)\n", "F:1:13: empty interval []"),
    ("# only a comment\nconst eps = 0.1\n", "F:1:1: no properties defined; expected lines like `NAME = FORMULA`"),
    ("", "F:1:1: no properties defined"),
    ("phi = always[0:031] (jsd <= 0.1)\n", "F:1:13: interval [0:031]: bound '031' is written with a leading zero, "
                                          "which rtamt does not read: write 31"),
    ("phi = always[0:2.5] (jsd <= 0.1)\n", "F:1:13: interval [0:2.5]: bound '2.5' is not a whole number"),
    ("phi = always[0:3ms] (jsd <= 0.1)\n", "F:1:13: interval [0:3ms]: bound '3ms' is a unit"),
    ("const eps = 0.1\nphi = always[0:eps] (jsd <= 0.1)\n", "F:2:13: interval [0:eps]: bound 'eps' is a constant"),
    ("const eps = 1O\nphi = jsd <= eps\n", "F:1:13: malformed const eps: '1O' is not a number"),
    ("const eps =\nphi = jsd <= 1\n", "F:1:12: malformed const eps: missing value"),
    ("const = 3\nphi = jsd <= 1\n", "F:1:1: malformed const: expected `const NAME = NUMBER`"),
    ("const eps = 0.1\nconst eps = 0.2\nphi = jsd <= eps\n", "F:2:7: const eps is already declared at line 1"),
    ("phi = jsd <= 1\nphi = kl <= 1\n", "F:2:1: duplicate property name 'phi': already defined at line 1"),
    ("phi = jsd <= tau\n", "F:1:14: unknown signal or const 'tau'"),
    ("phi = always[0:3] jsd\n", "F:1:7: property phi: `jsd` is a number where a condition is expected"),
    ("phi = jsd + 1\n", "F:1:7: property phi: the formula is a number"),
    ("phi = always (jsd <= 0.1) and always (gold_p_ratio >= 0.5)\n", "F:1:7: property phi mixes answer signals"),
    ("jsd = kl <= 1\n", "F:1:1: 'jsd' is a signal; choose another property name"),
    ("always = kl <= 1\n", "F:1:1: 'always' is an STL keyword"),
    ("phi =\n", "F:1:6: property phi has no formula"),
    ("this is not a spec\n", "F:1:1: expected `const NAME = NUMBER`"),
    ("   kl <= 1\n", "F:1:1: indented line continues nothing"),
    ("option depth = 3\nphi = kl <= 1\n", "F:1:8: unknown option 'depth'; options: hidden_layer"),
    ("option attn_span = 0\nphi = kl <= 1\n", "F:1:20: option attn_span: '0' is not valid"),
    ("phi = kl <= 1 on 150% of prompts\n", "F:1:18: property phi: share '150%' is not valid; expected a percentage "
                                           "above 0% and at most 100%"),
    ("phi = kl <= 1 on 0% of prompts\n", "F:1:18: property phi: share '0%' is not valid"),
    ("phi = kl <= 1 on 0.95 of prompts\n", "F:1:18: property phi: share '0.95' is not valid"),
    ("phi = kl <= 1\n    on 95% prompts\n", "F:2:5: property phi: malformed chance constraint; expected "
                                          "`FORMULA on P% of prompts`"),
    ("phi = kl <= 1 on 95% of the prompts\n", "F:1:15: property phi: malformed chance constraint"),
    ("phi = kl <= 1 on 95% of prompts\n    and jsd <= 1\n", "F:1:15: property phi: the chance constraint `on P% of "
                                                          "prompts` must end the property, on its last line"),
    ("phi = on 95% of prompts\n", "F:1:6: property phi has no formula"),
    ("option topk = -2\nphi = kl <= 1\n", "F:1:15: option topk: '-2' is not valid; expected a positive integer"),
    ("option hidden_layer = 1.5\nphi = kl <= 1\n", "F:1:23: option hidden_layer: '1.5' is not valid"),
    ("option attn_layers = 1:x\nphi = kl <= 1\n", "F:1:22: option attn_layers: '1:x' is not valid"),
])
def test_error_kinds_with_position(tmp_path, text, expected):
    errors = errors_of(tmp_path, text)
    assert any(e.startswith(expected) for e in errors), errors


def test_unknown_signal_lists_the_known_signals(tmp_path):
    (error,) = errors_of(tmp_path, "phi = always (perplexity <= 3)\n")
    for name in SIGNALS:
        assert name in error


def test_a_name_as_an_interval_bound_is_one_error(tmp_path):
    # the bound's error says what is wrong; the names are not also reported as unknown signals
    assert errors_of(tmp_path, "phi = always[a:b] (jsd <= 0.1)\n") == [
        "F:1:13: interval [a:b]: bound 'a' is a constant; bounds are whole numbers of generation steps, e.g. [0:31]"]


def test_all_errors_of_a_file_are_collected_in_line_order(tmp_path):
    errors = errors_of(tmp_path, "const a = x\nphi = always[3:1] (jsd <= 1)\npsi = foo <= 1\nchi = (kl <= \n")
    assert [e.split(": ")[0] for e in errors] == ["F:1:11", "F:2:13", "F:3:7", "F:4:13"]


def test_duplicate_across_files(tmp_path):
    a = write(tmp_path, "phi = jsd <= 1\n", "a.stl")
    b = write(tmp_path, "\nphi = kl <= 1\n", "b.stl")
    with pytest.raises(SpecError) as e:
        load_specs([a, b])
    assert f"{b}:2:1: duplicate property name 'phi': also defined at {a}:1" in str(e.value)


def test_rtamt_exceptions_never_leak(tmp_path):
    # rtamt alone raises KeyError for an unknown variable and ValueError for a reversed interval
    for text in ("phi = always (nope <= 1)\n", "phi = always[3:1] (jsd <= 1)\n", "phi = ((((\n"):
        with pytest.raises(SpecError) as e:
            load_specs([write(tmp_path, text)])
        assert "RTAMT" not in str(e.value) and "KeyError" not in str(e.value) and "expecting {" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ToggleError, match="no such spec file"):
        load_specs([tmp_path / "nope.stl"])
    with pytest.raises(ToggleError, match="holds no .stl"):
        load_specs([tmp_path])
    write(tmp_path, "phi = jsd <= 1\n", "x.stl")
    assert load_specs([tmp_path]).names == ["phi"]


# --- --set and --relax ----------------------------------------------------------------------

RELAX_SPEC = """\
const eps = 0.1
const tau = 0.8
const lo = -2
const mid = 0.5
const rev = 0.3
upper = always (jsd <= eps)
lower = always (p_ratio >= tau)
neg = always (gold_logprob >= lo)
flipped = not (kl > mid) and (rev <= top1_agree)
"""


def consts_of(specs, path):
    return {n: c.value for n, c in specs.consts[str(path)].items()}


def test_relax_loosens_in_the_right_direction(tmp_path):
    path = write(tmp_path, RELAX_SPEC.replace("neg = always (gold_logprob >= lo)",
                                              "neg = always (gold_logprob >= lo)"))
    # gold and step signals are in different properties, so the file is valid
    relaxed = consts_of(load_specs([path], relax=0.1), path)
    assert relaxed == pytest.approx({"eps": 0.11, "tau": 0.72, "lo": -2.2, "mid": 0.55, "rev": 0.27})


def test_relax_makes_properties_easier(tmp_path):
    path = write(tmp_path, RELAX_SPEC)
    trace = {"jsd": [0.105], "p_ratio": [0.75], "kl": [0.52], "top1_agree": [0.28]}
    strict = {p.name: p.robustness(trace) for p in load_specs([path]).properties if p.name != "neg"}
    loose = {p.name: p.robustness(trace) for p in load_specs([path], relax=0.1).properties if p.name != "neg"}
    for name in strict:
        assert strict[name] < 0 <= loose[name], name


def test_set_overrides_then_relax(tmp_path):
    path = write(tmp_path, RELAX_SPEC)
    specs = load_specs([path], overrides=parse_overrides(["eps=0.2", "tau = 0.5"]), relax=0.5)
    assert consts_of(specs, path)["eps"] == pytest.approx(0.3)
    assert consts_of(specs, path)["tau"] == pytest.approx(0.25)
    assert specs.properties[0].consts == {"eps": pytest.approx(0.3)}


def test_set_unknown_const_lists_consts(tmp_path):
    path = write(tmp_path, RELAX_SPEC)
    with pytest.raises(ToggleError, match=r"--set delta: unknown const; the specs declare: eps, lo, mid, rev, tau"):
        load_specs([path], overrides={"delta": 1.0})
    for bad in ("eps", "eps=abc", "=3", "1x=2"):
        with pytest.raises(ToggleError, match="--set"):
            parse_overrides([bad])
    with pytest.raises(ToggleError, match=r"--set 'eps=1e400': '1e400' is too large"):  # not reported as inf
        parse_overrides(["eps=1e400"])


def test_relax_refuses_a_const_without_direction(tmp_path):
    path = write(tmp_path, "const c = 0.5\nconst eps = 0.1\nphi = always (abs(entropy_delta - c) <= eps)\n")
    load_specs([path])  # valid as it is
    with pytest.raises(SpecError, match=r":1:7: --relax cannot loosen const c: it is used inside abs\(\)"):
        load_specs([path], relax=0.1)
    both = write(tmp_path, "const e = 0.1\nphi = always (jsd <= e) and always (kl >= e)\n", "both.stl")
    with pytest.raises(SpecError, match="used both as an upper and as a lower bound"):
        load_specs([both], relax=0.1)
    assert consts_of(load_specs([path], overrides={"c": 0.7}), path)["c"] == 0.7
    denominator = write(tmp_path, "const e = 10\nphi = always (jsd <= 1 / e)\n", "denominator.stl")
    with pytest.raises(SpecError, match=r":1:7: --relax cannot loosen const e: it is multiplied or divided by a signal, "
                                        r"or is a denominator"):
        load_specs([denominator], relax=0.1)
    equal = write(tmp_path, "const e = 0.5\nphi = always (jsd == e)\n", "equal.stl")
    with pytest.raises(SpecError, match=r"equal.stl:2:19: property phi: `==` has no margin in STL's robustness"):
        load_specs([equal])  # refused as written, not only under --relax


def test_relax_out_of_range(tmp_path):
    path = write(tmp_path, RELAX_SPEC)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ToggleError, match="--relax"):
            load_specs([path], relax=bad)


# --- shipped specs and the CLI --------------------------------------------------------------

def test_shipped_specs_are_valid_and_cover_the_four_properties():
    specs = load_specs(default_specs())
    used = set(specs.signals)
    assert {"jsd", "attn_cos", "hidden_cos"} <= used
    assert used & {"gold_p_ratio", "gold_logprob"}
    assert len(specs.properties) >= 4
    assert all(math.isfinite(v.value) for consts in specs.consts.values() for v in consts.values())
    load_specs(default_specs(), relax=0.2)  # every shipped const has a relax direction


ASSISTANT = resource_dir("specs") / "assistant"


def test_assistant_specs_load_as_a_set_and_are_not_defaults():
    specs = load_specs([ASSISTANT])
    assert [Path(f).name for f in specs.files] == ["coherence_95.stl", "confident_agreement.stl", "recovery.stl", "stops.stl"]
    by = {p.name: p for p in specs.properties}
    assert by["coherence_95"].share == 0.95 and by["recovery"].share is None
    assert {p.steps_needed for p in specs.properties} == {32}
    assert not set(by) & set(load_specs(default_specs()).names)  # loadable together with the defaults
    load_specs([ASSISTANT], relax=0.2)  # every const has a relax direction


@pytest.mark.parametrize("jsd, expected", [
    ([0.05, 0.3, 0.2, 0.08], 0.02),  # the spike at 1 recovers at 3, the last step: windows are cut to the trace
    ([0.05, 0.05, 0.4], -0.3),  # a spike at the last step has no steps left: not recovered, e - jsd = -0.3
    ([0.4], -0.3),  # the same on a one-step trace
    ([0.3, 0.2, 0.2, 0.2, 0.05], -0.1),  # still above e three steps after the spike at 0: -0.1 at best
    ([0.0] * 30 + [0.5] * 10, 0.1),  # spikes after step 28 are not checked; step 30 is only a window's end
])
def test_recovery_at_the_end_of_a_trace(jsd, expected):
    # robustness = min over t in 0..28 of max(e - jsd[t], max over t+1..t+3 of (e - jsd)), e = 0.1,
    # and rtamt's eventually over an empty window (past the end) is -inf
    (p,) = load_specs([ASSISTANT / "recovery.stl"]).properties
    assert p.robustness({"jsd": jsd}) == pytest.approx(expected)


@pytest.mark.parametrize("base, cand, base_p, with_base, not_early", [
    ([0, 0, 0, 0], [0, 0, 0, 0], [0.9] * 4, 0.5, 0.5),  # nobody stops: both implications hold vacuously, margin 0.5
    ([0, 0, 0, 1], [0, 0, 0, 1], [0.9] * 4, 0.5, 0.5),  # both stop at the last step (teacher: the base's path ends there)
    ([0, 0, 0, 1], [0, 0, 0, 0], [0.9] * 4, -0.2, 0.5),  # the base stops sure (0.9), the trace ends, the candidate never did: c - 0.9
    ([0, 0, 0, 1], [0, 0, 0, 0], [0.9, 0.9, 0.9, 0.6], 0.1, 0.5),  # the base stops unsure (0.6 < c): passes by c - 0.6
    ([0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0.9] * 5, 0.5, -0.2),  # 2 steps late: inside the window 1..3; but the base
    #   does not stop in 3..5 (cut to 3..4), so no_early_stop is broken at step 3
    ([0, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0.9] * 5, -0.2, -0.2),  # 3 steps late: outside the window
    ([0, 0, 0, 0], [0, 1, 0, 0], [0.9] * 4, 0.5, -0.2),  # the candidate stops where the base is sure to go on
    ([0, 0, 0, 0], [0, 1, 0, 0], [0.9, 0.3, 0.9, 0.9], 0.5, 0.4),  # ... where the base is torn (0.3): passes by c - 0.3
    ([0, 0, 0, 1], [0, 0, 0, 0], [0.1] * 4, 0.6, 0.6),  # a base this unsure everywhere: every step passes by c - 0.1
])
def test_stops_at_the_end_of_a_trace(base, cand, base_p, with_base, not_early):
    # min over t of max(0.5 - base_stop[t], c - base_p[t], max over t..t+2 of (cand_stop - 0.5)), c = 0.7
    by = {p.name: p for p in load_specs([ASSISTANT / "stops.stl"]).properties}
    signals = {"base_stop": base, "cand_stop": cand, "base_p": base_p}
    assert by["stops_with_base"].robustness(signals) == pytest.approx(with_base)
    assert by["no_early_stop"].robustness(signals) == pytest.approx(not_early)


def test_confident_agreement_and_coherence_95_by_hand():
    specs = load_specs([ASSISTANT])
    by = {p.name: p for p in specs.properties}
    agree = by["confident_agreement"]  # min over t of max(0.7 - base_p, top1_agree - 0.5)
    assert agree.robustness({"base_p": [0.9, 0.3, 0.8], "top1_agree": [1, 0, 1]}) == pytest.approx(0.4)
    assert agree.robustness({"base_p": [0.9, 0.3, 0.8], "top1_agree": [1, 0, 0]}) == pytest.approx(-0.1)
    assert agree.robustness({"base_p": [0.9, 0.3, 0.6], "top1_agree": [1, 0, 0]}) == pytest.approx(0.1)  # 0.6 < c: not sure
    assert agree.robustness({"base_p": [0.4, 0.3], "top1_agree": [0, 0]}) == pytest.approx(0.3)
    # 20 prompts at 95%: ceil(19) = 19 must hold, one may fail: the 2nd smallest per-prompt value
    per = {"coherence_95": {f"p{i}": 0.2 - 0.01 * i for i in range(18)} | {"bad": -0.4, "worse": -0.5}}
    assert specs.over_suite(per)["coherence_95"] == pytest.approx(-0.4)  # two fail: violated
    per["coherence_95"]["worse"] = 0.5
    assert specs.over_suite(per)["coherence_95"] == pytest.approx(0.03)  # one fails: holds, by p17's margin
    del per["coherence_95"]["worse"]
    assert specs.over_suite(per)["coherence_95"] == pytest.approx(-0.4)  # 19 prompts: ceil(18.05) = 19, none may fail


def cli(*args):
    return subprocess.run([sys.executable, "-m", "toggle.cli", *args], capture_output=True, text=True)


def test_cli_specs_check(tmp_path):
    good = write(tmp_path, "phi = always[0:3] (jsd <= 0.1)\n", "good.stl")
    bad = write(tmp_path, "phi = always[0:3] (jsdx <= 0.1)\npsi = (\n", "bad.stl")
    out = cli("specs", "check", str(good))
    assert out.returncode == 0 and f"{good}: OK" in out.stdout
    share = write(tmp_path, "phi = always[0:3] (jsd <= 0.1) on 95% of prompts\n", "share.stl")
    out = cli("specs", "check", str(share))
    assert out.returncode == 0 and f"{share}: OK\n{share}:1: phi must hold on at least 95% of prompts" in out.stdout
    out = cli("specs", "check", str(good), str(bad))
    assert out.returncode == 2
    assert f"{good}: OK" in out.stdout
    assert f"{bad}:1:20: unknown signal or const 'jsdx'" in out.stderr
    assert f"{bad}:2:8: syntax error" in out.stderr
    assert "Traceback" not in out.stderr
    out = cli("specs", "check", str(tmp_path / "missing.stl"))
    assert out.returncode == 2 and "no such spec file" in out.stderr and "Traceback" not in out.stderr


def test_cli_signals_lists_every_signal():
    out = cli("signals")
    assert out.returncode == 0
    for name, s in SIGNALS.items():
        assert name in out.stdout
        assert s.formula.split("=")[0].strip() in out.stdout


# --- fuzzing: any text gives a SpecSet or a ToggleError -------------------------------------

ATOMS = ["jsd", "kl", "p_ratio", "eps", "0.1", "-2", "1e-3", "always", "eventually", "until", "since", "next",
         "prev", "and", "or", "not", "implies", "iff", "abs", "(", ")", "[", "]", "0", "3", ":", "<=", ">=",
         "==", "!==", "<", ">", "+", "-", "*", "/", "=", "G", "F", "U", ".", ",", "ms", "s", "x", "$", "@",
         "{", "}", ";", "//", "/*", "#", "\n", "\n  ", "gold_p_ratio", "hidden_cos", "rise", "pow", "sqrt",
         "historically", "once", "unless", "xor", "out", "toggle_out", "const", "option"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ATOMS), max_size=14))
def test_fuzz_formulas(tmp_path, atoms):
    text = "const eps = 0.1\nphi = " + " ".join(atoms) + "\n"
    try:
        specs = load_specs([write(tmp_path, text)])
    except ToggleError:
        return
    for p in specs.properties:  # whatever parses must also evaluate
        p.robustness({s: [0.1, 0.2, 0.3] for s in p.signals})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=120))
def test_fuzz_any_text(tmp_path, text):
    try:
        load_specs([write(tmp_path, text)])
    except ToggleError:
        pass
    check_files([tmp_path / "p.stl"])  # never raises for file content


def test_one_step_traces(tmp_path):
    # one-token gold answers give one-step traces (rtamt's own evaluate() fails on them)
    p = prop(tmp_path, "always[0:3] (gold_p_ratio >= 0.5)")
    assert p.robustness({"gold_p_ratio": [0.7]}) == pytest.approx(0.2)
    q = prop(tmp_path, "eventually (gold_logprob >= -1) and always (gold_logprob <= 0)")
    assert q.robustness({"gold_logprob": [-0.25]}) == pytest.approx(0.25)


def test_bounds_past_the_longest_trace_and_division_by_zero_are_named(tmp_path):
    far = write(tmp_path, "a = always[0:99999999999999999999999] (jsd <= 0.1)\n", "far.stl")
    with pytest.raises(ToggleError, match=r"far.stl:1:\d+: interval \[0:99999999999999999999999\]: bound .* is beyond "
                                           r"16384 generation steps"):
        load_specs([far])
    assert load_specs([write(tmp_path, "a = always[0:16384] (jsd <= 0.1)\n", "edge.stl")]).steps_needed == 16385
    zero = load_specs([write(tmp_path, "const e = 0\nz = always (jsd <= 1 / e)\n", "zero.stl")])
    with pytest.raises(InvalidInput, match=r"zero.stl:2: property 'z' divides by zero"):
        zero.evaluate({"p": {"jsd": [0.1, 0.2]}})
    with pytest.raises(InvalidInput, match="divides by zero"):  # one sample takes rtamt's other path
        zero.evaluate({"p": {"jsd": [0.1]}})


def test_files_read_as_editors_show_them_once_each(tmp_path):
    # a byte-order mark, and a form feed / U+2028 that str.splitlines would take for line breaks
    path = tmp_path / "bom.stl"
    path.write_bytes("\ufeffconst eps = 0.1\n# see \u2028 eps above\n\f\nphi = always[0:3] (jsdd <= eps)\n".encode())
    with pytest.raises(SpecError) as e:
        load_specs([path])
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith(f"{path}:4:20: unknown signal or const 'jsdd'")
    # one file named twice, by another path, or inside a directory also given: read once
    (tmp_path / "d").mkdir()
    one = write(tmp_path / "d", "a = always (jsd <= 0.1)\n", "a.stl")
    specs = load_specs([one, tmp_path / "d" / ".." / "d" / "a.stl", tmp_path / "d"])
    assert [p.name for p in specs.properties] == ["a"] and len(specs.files) == 1


def test_relax_past_the_largest_float_and_math_errors_are_named(tmp_path):
    path = write(tmp_path, "const e = 0.1\nphi = always (jsd <= e)\n", "r.stl")
    with pytest.raises(SpecError, match=r"r.stl:1:7: --relax 0.5 takes const e past the largest float"):
        load_specs([path], {"e": 1.7e308}, relax=0.5)
    root = load_specs([write(tmp_path, "root = always (sqrt(entropy_delta) <= 10)\n", "sqrt.stl")])
    with pytest.raises(InvalidInput, match=r"sqrt.stl:1: property 'root' cannot be computed on this trace \(math domain "
                                           r"error: e.g. sqrt"):
        root.evaluate({"p": {"entropy_delta": [0.5, -0.5]}})
    assert root.evaluate({"p": {"entropy_delta": [0.25, 4.0]}})["root"]["p"] == pytest.approx(8.0)


def test_const_values_list_a_name_per_file_when_its_files_disagree(tmp_path):
    one = write(tmp_path, "const eps = 0.1\nconst c = 2\na = always (jsd <= eps) and always (kl <= c)\n", "one.stl")
    two = write(tmp_path, "const eps = 0.5\nconst c = 2\nb = always (jsd <= eps) and always (kl <= c)\n", "two.stl")
    specs = load_specs([one, two], relax=0.1)
    assert specs.const_values == pytest.approx({"one.stl:eps": 0.11, "c": 2.2, "two.stl:eps": 0.55})
    assert load_specs([one]).const_values == {"eps": 0.1, "c": 2.0}
