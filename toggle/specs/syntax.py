"""The `.stl` file format (described in __init__.py): loading files (spec_files, load_specs,
check_files), --set / --relax (parse_overrides), const and option declarations, the per-file
statement parser, and the per-property lexing, checking and parse with rtamt: rtamt's syntax.
Its semantics, evaluation, are in semantics.py; the analysis of the parsed formula in analysis.py."""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener

from ..errors import InvalidInput
from ..files import default_specs
from ..signals import ANSWER, SIGNALS, STEP, SignalOptions
from .analysis import _const_signs, _horizon, _type_check
from .model import Const, Property, SpecError, SpecSet

# The furthest step an interval may name: a trace is generated that far for every prompt, and
# 100,000 steps took minutes on a 2-layer model.
MAX_BOUND = 16384
OUT = "toggle_out"  # rtamt's output variable; not a valid signal, const or property name
_PREFIX = f"{OUT} = "
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")
OPTIONS = {
    "hidden_layer": "a block index (negative counts from the last block) or a depth fraction such as 0.7",
    "attn_layers": "'all' or a comma-separated list of block indices, depth fractions or ranges A:B",
    "attn_span": "a positive integer (number of early prompt tokens)",
    "topk": "a positive integer (how many most likely tokens topk_overlap compares)",
}


# --- loading -------------------------------------------------------------------------------

def spec_files(paths=None) -> list[Path]:
    """Expand paths (files or directories of .stl files); None means the shipped specs/."""
    if not paths:
        files = default_specs()
        if not files:
            raise InvalidInput("no spec files given and the shipped specs/ directory has none")
        return files
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.stl"))
            if not found:
                raise InvalidInput(f"{path}: directory holds no .stl spec files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InvalidInput(f"{path}: no such spec file")
    # a file named twice (again, by another path, or inside a directory also given) is read once
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def load_specs(paths=None, overrides: dict | None = None, relax: float = 0.0) -> SpecSet:
    """Parse and check spec files; apply `--set` overrides, then `--relax`.

    Raises SpecError (exit 2) listing every problem of every file as FILE:LINE:COL: message.
    """
    files = spec_files(paths)
    if isinstance(relax, bool) or not isinstance(relax, (int, float)) or not (0.0 <= relax < 1.0):
        raise InvalidInput(f"--relax: {relax} is not valid; expected a fraction in [0, 1), e.g. 0.1")
    errors: list[str] = []
    parsed = [_parse_file(f, errors) for f in files]
    seen: dict[str, str] = {}
    options: dict[str, tuple[object, str]] = {}
    for pf in parsed:
        for prop in pf.properties:
            if prop.name in seen and seen[prop.name] != prop.where:
                errors.append(f"{prop.where}:1: duplicate property name {prop.name!r}: also defined at {seen[prop.name]}")
            seen.setdefault(prop.name, prop.where)
        for name, (value, where) in pf.options.items():
            if name in options and options[name][0] != value:
                errors.append(f"{where}: option {name} = {_fmt_option(value)} conflicts with "
                              f"{_fmt_option(options[name][0])} at {options[name][1]}")
            options.setdefault(name, (value, where))
    if errors:
        raise SpecError(errors)
    consts = _apply_overrides(parsed, overrides or {}, relax)
    properties = []
    for pf in parsed:
        for prop in pf.properties:
            prop.consts = {c: consts[pf.file][c].value for c in prop.consts}
            properties.append(prop)
    if not properties:
        raise InvalidInput(f"{', '.join(str(f) for f in files)}: no properties defined")
    return SpecSet(tuple(pf.file for pf in parsed), properties, consts,
                   SignalOptions(**{k: v for k, (v, _) in options.items()}),
                   {k: where for k, (_, where) in options.items()})


def check_files(paths) -> dict[str, list[str]]:
    """Every problem of every file (file -> messages); for `toggle specs check`."""
    result = {}
    for f in spec_files(paths):
        errors: list[str] = []
        _parse_file(f, errors)
        result[str(f)] = errors
    return result


def parse_overrides(items) -> dict[str, float]:
    """`--set NAME=VALUE` arguments -> {NAME: value}."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = str(item).partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _NAME.match(name):
            raise InvalidInput(f"--set {item!r}: expected NAME=NUMBER, e.g. --set eps=0.2")
        if not _NUMBER.match(value):
            raise InvalidInput(f"--set {item!r}: {value!r} is not a number; expected NAME=NUMBER, e.g. --set eps=0.2")
        if not math.isfinite(float(value)):
            raise InvalidInput(f"--set {item!r}: {value!r} is too large to be a number here; expected a finite number")
        out[name] = float(value)
    return out


def _apply_overrides(parsed, overrides: dict, relax: float) -> dict[str, dict[str, Const]]:
    declared = {c for pf in parsed for c in pf.consts}
    unknown = [n for n in overrides if n not in declared]
    if unknown:
        known = ", ".join(sorted(declared)) or "(none declared)"
        raise InvalidInput(f"--set {unknown[0]}: unknown const; the specs declare: {known}")
    for name, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInput(f"--set {name}={value!r}: expected a finite number")
    errors = []
    out: dict[str, dict[str, Const]] = {}
    for pf in parsed:
        out[pf.file] = {}
        for name, c in pf.consts.items():
            value = float(overrides.get(name, c.value))
            if relax and c.used:
                if c.direction is None:
                    errors.append(f"{c.file}:{c.line}:{c.col}: --relax cannot loosen const {name}: {c.why_unknown}; "
                                  f"use --set {name}=VALUE instead")
                else:
                    value += c.direction * relax * abs(value)
                    if not math.isfinite(value):
                        errors.append(f"{c.file}:{c.line}:{c.col}: --relax {relax:g} takes const {name} past the "
                                      f"largest float; use --set {name}=VALUE instead")
            out[pf.file][name] = replace(c, value=value)
    if errors:
        raise SpecError(errors)
    return out


def _fmt_option(value) -> str:
    if value is None:
        return "all"
    if isinstance(value, tuple):
        return ",".join(f"{v[0]}:{v[1]}" if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


# --- one file --------------------------------------------------------------------------------

@dataclass
class _ParsedFile:
    file: str
    properties: list[Property]
    consts: dict[str, Const]
    options: dict[str, tuple[object, str]]


@dataclass
class _Statement:
    name: str
    line: int
    col: int  # 1-based column of the name
    text_lines: list[tuple[int, int, str]]  # (file line, 0-based column of the text, text)


def _parse_file(path: Path, errors: list[str]) -> _ParsedFile:
    """Parse one file, appending its problems to `errors` in line order."""
    mine: list[str] = []
    parsed = _parse_file_unsorted(path, mine)
    if not mine and not parsed.properties:  # consts are a file's own: without a property it checks nothing
        mine.append(f"{path}:1:1: no properties defined; expected lines like `NAME = FORMULA`, "
                    f"e.g. coherence = always[0:31] (jsd <= 0.1)")
    errors.extend(sorted(mine, key=_position))
    return parsed


def _position(message: str) -> tuple[int, int]:
    m = re.search(r":(\d+):(\d+): ", message)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _parse_file_unsorted(path: Path, errors: list[str]) -> _ParsedFile:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Windows editors) is not text
    except UnicodeDecodeError:
        errors.append(f"{file}:1:1: not UTF-8 text")
        return _ParsedFile(file, [], {}, {})
    except OSError as e:
        errors.append(f"{file}:1:1: cannot read: {e.strerror or e}")
        return _ParsedFile(file, [], {}, {})

    consts: dict[str, Const] = {}
    options: dict[str, tuple[object, str]] = {}
    statements: list[_Statement] = []
    declared: set[str] = set()  # const names declared, well or not (a bad one is reported once, at its line)
    last_was_property = False
    # lines end at \n, \r\n or \r only, as editors and grep -n count them (str.splitlines also
    # splits at form feeds, U+2028, ...)
    for lineno, raw in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if line[0] in " \t":
            if last_was_property:
                statements[-1].text_lines.append((lineno, 0, line))
            else:
                errors.append(f"{file}:{lineno}:1: indented line continues nothing: continuation lines "
                              f"must follow a property (NAME = FORMULA)")
            continue
        last_was_property = False
        head, sep, rest = line.partition("=")
        words = head.split()
        where = f"{file}:{lineno}"
        if words and words[0] in ("const", "option") and len(words) <= 2:
            kind = words[0]
            if not sep or len(words) != 2 or not _NAME.match(words[1]):
                errors.append(f"{where}:1: malformed {kind}: expected `{kind} NAME = "
                              f"{'NUMBER' if kind == 'const' else 'VALUE'}`")
                continue
            name, value = words[1], rest.strip()
            col = line.index(name, len(kind)) + 1
            vcol = len(head) + 1 + (len(rest) - len(rest.lstrip())) + 1
            if kind == "const":
                declared.add(name)
                _declare_const(name, value, file, lineno, col, vcol, consts, statements, errors)
            else:
                _declare_option(name, value, f"{where}:{col}", f"{where}:{vcol}", options, errors)
            continue
        if not sep or len(words) != 1:
            errors.append(f"{where}:1: expected `const NAME = NUMBER`, `option NAME = VALUE` "
                          f"or `NAME = FORMULA`")
            continue
        name = words[0]
        col = line.index(name) + 1
        problem = _bad_name(name, "property")
        if problem:
            errors.append(f"{where}:{col}: {problem}")
            continue
        previous = next((s for s in statements if s.name == name), None)
        if previous:
            errors.append(f"{where}:{col}: duplicate property name {name!r}: already defined at line {previous.line}")
            continue
        if name in consts:
            errors.append(f"{where}:{col}: {name!r} is already a const (line {consts[name].line}); "
                          f"properties and consts need different names")
            continue
        statements.append(_Statement(name, lineno, col, [(lineno, len(head) + 1, rest)]))
        last_was_property = True

    for s in statements:
        if s.name in consts:
            errors.append(f"{file}:{s.line}:{s.col}: {s.name!r} is already a const (line {consts[s.name].line}); "
                          f"properties and consts need different names")
    properties = []
    directions: dict[str, set] = {c: set() for c in consts}
    for s in statements:
        prop = _parse_property(s, file, consts, {t.name for t in statements}, directions, errors,
                               rejected=declared - set(consts), topk=options.get("topk", (SignalOptions.topk,))[0])
        if prop is not None:
            properties.append(prop)
    for name, dirs in directions.items():
        c = consts[name]
        if not dirs:
            continue
        signs = {d for d, _ in dirs}
        if len(signs) == 1 and None not in signs:
            consts[name] = replace(c, direction=signs.pop(), used=True)
        else:
            why = next((w for d, w in dirs if d is None), "") or \
                "it is used both as an upper and as a lower bound"
            consts[name] = replace(c, direction=None, why_unknown=why, used=True)
    return _ParsedFile(file, properties, consts, options)


def _bad_name(name: str, what: str) -> str | None:
    if not _NAME.match(name):
        return f"{name!r} is not a valid {what} name (letters, digits and _, not starting with a digit)"
    if name in _keywords():
        return f"{name!r} is an STL keyword; choose another {what} name"
    if name in SIGNALS:
        return f"{name!r} is a signal; choose another {what} name"
    if name == OUT:
        return f"{name!r} is reserved; choose another {what} name"
    return None


def _declare_const(name, value, file, line, col, vcol, consts, statements, errors) -> None:
    where = f"{file}:{line}"
    problem = _bad_name(name, "const")
    if problem:
        errors.append(f"{where}:{col}: {problem}")
    elif name in consts:
        errors.append(f"{where}:{col}: const {name} is already declared at line {consts[name].line}")
    elif not value:
        errors.append(f"{where}:{vcol}: malformed const {name}: missing value; expected `const {name} = NUMBER`")
    elif not _NUMBER.match(value) or not math.isfinite(float(value)):
        errors.append(f"{where}:{vcol}: malformed const {name}: {value!r} is not a number "
                      f"(e.g. 0.1, -2, 1e-3)")
    else:
        consts[name] = Const(name, float(value), file, line, col)


def _declare_option(name, value, where_name, where_value, options, errors) -> None:
    if name not in OPTIONS:
        errors.append(f"{where_name}: unknown option {name!r}; options: {', '.join(OPTIONS)}")
        return
    if name in options:
        errors.append(f"{where_name}: option {name} is already set at {options[name][1]}")
        return
    try:
        if name == "attn_layers":
            parsed = None if value.strip() == "all" else tuple(_layer_item(v) for v in value.split(","))
        elif name == "hidden_layer":
            parsed = _layer(value)
        else:
            parsed = int(value)
            if parsed < 1:
                raise ValueError
    except ValueError:
        errors.append(f"{where_value}: option {name}: {value!r} is not valid; expected {OPTIONS[name]}")
        return
    options[name] = (parsed, where_name)


def _layer(text: str):
    """'20' / '-1' -> block index; '0.7' -> depth fraction in [0, 1]."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if _NUMBER.match(text) and 0.0 <= float(text) <= 1.0:
        return float(text)
    raise ValueError(text)


def _layer_item(text: str):
    if ":" in text:
        lo, hi = text.split(":", 1)
        return (_layer(lo), _layer(hi))
    return _layer(text)


# --- one property: lex, check, parse with rtamt, analyse -----------------------------------

# A chance constraint ends a property: `NAME = FORMULA on P% of prompts` (split off before rtamt sees it).
_SHARE = re.compile(r"(?<!\S)on\s+(?P<share>\S+)\s+of\s+prompts\s*\Z", re.IGNORECASE)
_SHARE_LIKE = re.compile(r"(?<!\S)on\s+\S*%|(?<!\S)of\s+prompts\s*\Z|(?<!\S)on\s+\S+\s+of\s+\S+\s*\Z",
                         re.IGNORECASE)
_PERCENT = re.compile(r"(\d+(\.\d*)?|\.\d+)%\Z")


def _split_share(s: _Statement, file: str, errors: list[str]) -> float | None:
    """Remove a trailing `on P% of prompts` from `s` and return P / 100 (None: no chance constraint)."""
    ln, col0, last = s.text_lines[-1]
    m = _SHARE.search(last)
    if m is None:
        for ln_before, col_before, text_before in s.text_lines[:-1]:
            early = _SHARE.search(text_before) or _SHARE_LIKE.search(text_before)
            if early:
                errors.append(f"{file}:{ln_before}:{col_before + early.start() + 1}: property {s.name}: the chance "
                              f"constraint `on P% of prompts` must end the property, on its last line")
                return None
        bad = _SHARE_LIKE.search(last)
        if bad:
            errors.append(f"{file}:{ln}:{col0 + bad.start() + 1}: property {s.name}: "
                          f"malformed chance constraint; expected `FORMULA on P% of prompts`, e.g. on 95% of prompts")
        return None
    s.text_lines[-1] = (ln, col0, last[:m.start()])
    text = m.group("share")
    value = float(text[:-1]) if _PERCENT.match(text) else math.nan
    if not 0.0 < value <= 100.0:
        errors.append(f"{file}:{ln}:{col0 + m.start('share') + 1}: property {s.name}: share {text!r} is not valid; "
                      f"expected a percentage above 0% and at most 100%, e.g. on 95% of prompts")
        return None
    return value / 100.0


def _parse_property(s: _Statement, file: str, consts: dict[str, Const], properties: set[str],
                    directions: dict[str, set], errors: list[str], rejected: set[str] = frozenset(),
                    topk: int = SignalOptions.topk) -> Property | None:
    n_share = len(errors)
    share = _split_share(s, file, errors)
    if len(errors) > n_share:
        return None
    lines = [(ln, col0) for ln, col0, _ in s.text_lines]
    formula = "\n".join(t for _, _, t in s.text_lines)

    def at(line: int, column: int) -> str:
        """rtamt (line, 0-based column) -> FILE:LINE:COL."""
        line = max(1, min(line, len(lines)))
        ln, col0 = lines[line - 1]
        col = column - len(_PREFIX) if line == 1 else column
        return f"{file}:{ln}:{max(col, 0) + col0 + 1}"

    n_before = len(errors)
    if not formula.strip():
        errors.append(f"{at(1, len(_PREFIX))}: property {s.name} has no formula; expected `{s.name} = FORMULA`")
        return None

    text = _PREFIX + formula
    ast = _new_spec().ast
    listener = _Listener()
    lexer = ast.antrlLexerType(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = [t for t in lexer.getAllTokens() if t.channel == 0]
    if listener.errors:
        line, column, msg, _ = listener.errors[0]
        bad = msg.split("at: ", 1)[-1]
        errors.append(f"{at(line, column)}: syntax error: unexpected character {bad}")
        return None

    # names and intervals, checked on the tokens so every error has its own position
    names = lexer.symbolicNames
    used_signals, used_consts = [], []
    uses_rejected = False
    known = _known_names_hint()
    bracket = False  # inside an interval: a name there is reported once, as a bound (_check_interval)
    for i, tok in enumerate(tokens[2:], 2):  # skip `toggle_out =`
        kind = names[tok.type] if 0 <= tok.type < len(names) else ""
        if kind in ("LBRACK", "RBRACK"):
            bracket = kind == "LBRACK"
        if kind == "Identifier" and not bracket:
            name = tok.text
            if not _NAME.match(name):
                errors.append(f"{at(tok.line, tok.column)}: syntax error: unexpected {name!r}; names are "
                              f"letters, digits and _")
            elif name in SIGNALS:
                used_signals.append(name)
            elif name in consts:
                used_consts.append(name)
            elif name in rejected:
                uses_rejected = True  # its declaration's error is reported already
            else:
                near = difflib.get_close_matches(name, list(SIGNALS) + list(consts), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                what = "a property" if name in properties else "unknown signal or const"
                errors.append(f"{at(tok.line, tok.column)}: {what} {name!r}{hint}; properties can use "
                              f"the signals {known}" + (f" and the consts {', '.join(consts)}" if consts else ""))
        elif kind == "LBRACK":
            _check_interval(tokens, i, names, at, errors)
        elif kind in ("IntegerLiteral", "RealLiteral") and not bracket and not math.isfinite(float(tok.text)):
            errors.append(f"{at(tok.line, tok.column)}: number {tok.text} is too large for a float; a threshold "
                          f"must be finite")
        elif kind == "NotOperator" and tok.text == "!" and i + 1 < len(tokens) and tokens[i + 1].text == "=" \
                and tokens[i + 1].column == tok.column + 1:
            errors.append(f"{at(tok.line, tok.column)}: syntax error: rtamt writes 'not equal' as !== (not !=)")
        elif kind == "MINUS" and _unary_minus_of_term(tokens, i, names):
            nxt = tokens[i + 1]
            operand = nxt.text if names[nxt.type] == "Identifier" else "(...)"
            errors.append(f"{at(tok.line, tok.column)}: syntax error: a minus sign negates numbers only (rtamt's "
                          f"grammar); write (0 - {operand}) to negate a signal or a formula")
    if len(errors) > n_before or uses_rejected:
        return None

    # rtamt parse; syntax errors come back through our listener, never as rtamt exceptions
    spec = _new_spec()
    for v in set(used_signals) | set(used_consts):
        spec.declare_var(v, "float")
    spec.declare_var(OUT, "float")
    spec.spec = text
    parser = spec.ast.antrlParserType(CommonTokenStream(_quiet_lexer(spec.ast, text)))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    first = s.text_lines[0][2]
    start = at(1, len(_PREFIX) + len(first) - len(first.lstrip()))  # where the formula begins
    try:
        ctx = parser.specification_file()
    except RecursionError:
        errors.append(f"{start}: property {s.name}: the formula is nested too deeply to parse; split it into "
                      f"several properties")
        return None
    if listener.errors:
        line, column, msg, token = listener.errors[0]
        errors.append(f"{at(line, column)}: syntax error: {_explain(msg, token)}")
        return None
    misread = _misreadings(ctx.specification(), consts, topk)
    if misread:
        errors.extend(f"{at(tok.line, tok.column)}: property {s.name}: {why}" for tok, why in misread)
        return None
    try:
        spec.ast.visit(ctx.specification())
        root = spec.ast.specs[-1]
    except Exception as e:  # rtamt's semantic checks: say what, never its raw exception
        errors.append(f"{at(1, len(_PREFIX))}: property {s.name}: rtamt cannot build this formula ({type(e).__name__}: "
                      f"{str(e)[:120]})")
        return None

    kind_problem = _type_check(root)
    if kind_problem:
        errors.append(f"{start}: property {s.name}: {kind_problem}")
        return None
    axes = {SIGNALS[n].axis for n in used_signals}
    if len(axes) > 1:
        step = sorted({n for n in used_signals if SIGNALS[n].axis == STEP})
        ans = sorted({n for n in used_signals if SIGNALS[n].axis == ANSWER})
        errors.append(f"{start}: property {s.name} mixes answer signals ({', '.join(ans)}) with generation-step "
                      f"signals ({', '.join(step)}); they run on different time axes: split it in two properties")
        return None
    for name, sign, why in _const_signs(root, set(used_consts)):
        directions[name].add((sign, why))
    horizon = _horizon(root)
    if horizon is not None and horizon > MAX_BOUND:
        errors.append(f"{start}: property {s.name} reads {horizon + 1} generation steps (its nested windows add up), "
                      f"beyond {MAX_BOUND}; shorten the windows")
        return None
    return Property(
        name=s.name, formula=" ".join(formula.split()), file=file, line=s.line,
        signals=tuple(sorted(set(used_signals))), consts={c: consts[c].value for c in sorted(set(used_consts))},
        axis=axes.pop() if axes else STEP, steps_needed=None if horizon is None else horizon + 1, _rtamt=spec,
        share=share,
    )


# --- what rtamt's grammar reads otherwise than it is written -------------------------------
# rtamt gives each binary operator its own precedence (* over /, / over +, + over -, and the logic
# ones left-associative), so these parse without error into another formula. Checked on the
# parse tree, where brackets are still visible: (operator, operand index, operand) -> why.
_MISREAD = {
    ("ExprSubtractionContext", 2, "ExprAdditionContext"):
        "a - b + c reads as a - (b + c) in rtamt's grammar (+ binds tighter than -); write (a - b) + c",
    ("ExprDivisionContext", 2, "ExprMultiplicationContext"):
        "a / b * c reads as a / (b * c) in rtamt's grammar (* binds tighter than /); write (a / b) * c",
    ("ExprImpliesContext", 0, "ExprImpliesContext"):
        "a -> b -> c reads as (a -> b) -> c in rtamt's grammar; write the brackets you mean, e.g. a -> (b -> c)",
}
_EQUALITY = ("`{op}` has no margin in STL's robustness (rtamt scores a == b as -|a - b|, at best 0, and a !== b as "
             "|a - b|, which holds even where a equals b); compare with a threshold, e.g. abs(x - c) <= 0.01, or for "
             "a signal of whole values, x >= 0.5")


def _misreadings(tree, consts: dict[str, Const], topk: int) -> list[tuple[object, str]]:
    """(token, why) for each place of the parse tree that rtamt reads otherwise than a reader
    would: operator precedence, equality, a whole-valued signal compared with one of its values."""
    found = []
    stack = [tree]
    while stack:  # iterative: formulas may nest deeply
        node = stack.pop()
        count = node.getChildCount() if hasattr(node, "getChildCount") else 0
        kids = [node.getChild(i) for i in range(count)]
        kind = type(node).__name__
        for i, kid in enumerate(kids):
            why = _MISREAD.get((kind, i, type(kid).__name__))
            if why:
                operator = kids[1]
                found.append((operator.symbol if hasattr(operator, "symbol") else operator.start, why))
        if kind == "ExprPredicateContext" and count == 3:
            found.extend(_comparison_problems(kids, consts, topk))
        stack.extend(reversed([k for k in kids if hasattr(k, "getChildCount")]))
    return found


def _comparison_problems(kids, consts: dict[str, Const], topk: int) -> list[tuple[object, str]]:
    left, op_ctx, right = kids
    op = op_ctx.getText()
    token = op_ctx.start
    if op in ("==", "!=="):
        return [(token, _EQUALITY.format(op=op))]
    sides = [_unwrap(left), _unwrap(right)]
    for i, side in enumerate(sides):
        # a signal of whole values (Signal.values) compared with one of its own: margin 0 where it holds
        signal = SIGNALS.get(side.getText()) if type(side).__name__ == "ExprIdContext" else None
        grid = signal.grid(topk) if signal is not None else None
        value = _number(sides[1 - i], consts)
        if grid is None or value is None:
            continue
        step, lo, hi, values = grid
        if not (lo <= value <= hi and abs(value / step - round(value / step)) < 1e-9):
            continue
        name = side.getText()
        op_signal_left = op if i == 0 else {"<=": ">=", ">=": "<=", "<": ">", ">": "<"}[op]
        moved = value + step / 2 if op_signal_left in (">", "<=") else value - step / 2
        better = {">": ">=", "<": "<="}.get(op_signal_left, op_signal_left)
        return [(token, f"{name} takes only {values}, so compared with {value:g} its margin is exactly 0 where it "
                        f"equals {value:g}, which `not`, the left side of `->`, rise and fall read as holding; compare "
                        f"it with a value between two of its own: {name} {better} {moved:g}")]
    return []


def _unwrap(ctx):
    while type(ctx).__name__ == "ExprParenContext":
        ctx = ctx.getChild(1)
    return ctx


def _number(ctx, consts: dict[str, Const]) -> float | None:
    """The value of a literal (signed) or of a const, else None."""
    text = ctx.getText()
    if type(ctx).__name__ == "ExprIdContext":
        return consts[text].value if text in consts else None
    if type(ctx).__name__ == "ExprLiteralContext":
        try:
            return float(text)
        except ValueError:
            return None
    return None


# Tokens that end a value: a minus after one subtracts, anywhere else it is a sign.
_VALUE_END = {"Identifier", "IntegerLiteral", "RealLiteral", "RPAREN", "RBRACK"}


def _unary_minus_of_term(tokens, i, names) -> bool:
    """tokens[i] is a sign (not a subtraction) in front of something other than a number."""
    prev = names[tokens[i - 1].type] if tokens[i - 1].type < len(names) else ""
    nxt = names[tokens[i + 1].type] if i + 1 < len(tokens) and tokens[i + 1].type < len(names) else ""
    return prev not in _VALUE_END and nxt not in ("IntegerLiteral", "RealLiteral", "")


def _check_interval(tokens, i, names, at, errors) -> None:
    """tokens[i] is '['; expect INT ':' INT ']' with start <= end."""
    where = at(tokens[i].line, tokens[i].column)
    inner = []
    for tok in tokens[i + 1:]:
        if names[tok.type] == "RBRACK":
            break
        inner.append(tok)
    else:
        return  # unclosed: the parser reports it
    kinds = [names[t.type] for t in inner]
    shown = "[" + "".join(t.text for t in inner) + "]"
    if not inner:
        errors.append(f"{where}: empty interval []: expected [START:END] in whole steps, e.g. [0:31]")
        return
    if "COLON" not in kinds:
        errors.append(f"{where}: interval {shown} needs two bounds: [START:END] in whole steps")
        return
    colon = kinds.index("COLON")
    bounds = [inner[:colon], inner[colon + 1:]]
    values = []
    for part in bounds:
        if len(part) != 1 or names[part[0].type] != "IntegerLiteral":
            text = "".join(t.text for t in part)
            what = ("a constant" if any(names[t.type] == "Identifier" for t in part)
                    else "a unit" if any(names[t.type] in ("SEC", "MSEC", "USEC", "NSEC", "PSEC") for t in part)
                    else f"written with a leading zero, which rtamt does not read: write {int(text)}" if text.isdigit()
                    else "not a whole number" if text else "missing")
            errors.append(f"{where}: interval {shown}: bound {text!r} is {what}; bounds are whole numbers "
                          f"of generation steps, e.g. [0:31]")
            return
        values.append(int(part[0].text))
        if values[-1] > MAX_BOUND:
            errors.append(f"{where}: interval {shown}: bound {values[-1]} is beyond {MAX_BOUND} generation steps; "
                          f"a property reads at most that many, e.g. [0:31]")
            return
    if values[1] < values[0]:
        errors.append(f"{where}: reversed interval {shown}: the start must not exceed the end (e.g. [{values[1]}:{values[0]}])")


class _Listener(ErrorListener):
    """antlr error listener that records instead of printing or raising."""

    def __init__(self):
        super().__init__()
        self.errors = []

    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802 - antlr API
        self.errors.append((line, column, msg, offendingSymbol))

    def reportAmbiguity(self, *args):  # noqa: N802
        pass

    def reportAttemptingFullContext(self, *args):  # noqa: N802
        pass

    def reportContextSensitivity(self, *args):  # noqa: N802
        pass


def _quiet_lexer(ast, text):
    lexer = ast.antrlLexerType(InputStream(text))
    lexer.removeErrorListeners()
    return lexer


def _explain(msg: str, token) -> str:
    """antlr's message without its token soup: 'unexpected X' (+ what was expected when short)."""
    text = getattr(token, "text", None)
    if text is None or text == "<EOF>" or "<EOF>" in msg.split(" expecting")[0]:
        got = "end of formula"
    else:
        got = repr(text)
    if msg.startswith("missing "):
        return f"{msg.split(' at ')[0]} before {got}"
    expected = ""
    if " expecting " in msg:
        options = [o.strip() for o in msg.split(" expecting ", 1)[1].strip("{} ").split(",")]
        options = [o for o in options if o and o != "<INVALID>"]
        if {"Identifier", "IntegerLiteral", "'('"} & set(options):
            expected = " (expected a signal, a number or '(')"
        elif 0 < len(options) <= 4:
            expected = f" (expected {' or '.join(options)})".replace("<EOF>", "end of formula")
    return f"unexpected {got}{expected}"


def _new_spec():
    # imported here, on the first parse: at module level rtamt would add about 0.1 s to
    # `import toggle.specs`, so to every `import toggle`, and only parsing a property needs it
    import rtamt

    return rtamt.StlDiscreteTimeOfflineSpecification()


_KEYWORDS: set[str] | None = None


def _keywords() -> set[str]:
    """Words rtamt's lexer does not read as identifiers (always, G, until, abs, ms, ...)."""
    global _KEYWORDS
    if _KEYWORDS is None:
        ast = _new_spec().ast
        candidates = ["always", "eventually", "until", "unless", "historically", "once", "since", "next",
                      "prev", "implies", "iff", "xor", "and", "or", "not", "true", "false", "rise", "fall",
                      "abs", "sqrt", "exp", "pow", "s", "ms", "us", "ns", "ps", "topic", "import", "input",
                      "output", "internal", "const", "real", "float", "long", "complex", "int", "bool",
                      "assertion", "specification", "from", "TRUE", "FALSE", "precedes", "oracle"]
        candidates += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        kws = set()
        for word in candidates:
            lexer = _quiet_lexer(ast, word)
            toks = lexer.getAllTokens()
            if not (len(toks) == 1 and lexer.symbolicNames[toks[0].type] == "Identifier"):
                kws.add(word)
        _KEYWORDS = kws
    return _KEYWORDS


def _known_names_hint() -> str:
    return ", ".join(SIGNALS)
