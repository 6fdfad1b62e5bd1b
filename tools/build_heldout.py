"""Build the held-out and confirmation splits of prompts/default.yaml from sources no
calibration prompt came from.

    PYTHONPATH=. python tools/build_heldout.py           # rewrite the generated splits in place
    PYTHONPATH=. python tools/build_heldout.py --check   # exit 1 if the file differs from a rebuild
    PYTHONPATH=. python tools/build_heldout.py --stdout  # print the generated split only

Sources (nothing here is downloaded, and nothing comes from the calibration prompts):

1. Docstrings of Python standard-library modules, functions and classes, read with
   `inspect.getdoc` from the running interpreter (they ship with every Python). MODULES is a
   fixed, sorted list; inside a module the public names (its `__all__`, else `dir()`) are taken
   in sorted order. `pydoc_data` (Python's documentation topics) is deliberately NOT used: the
   benchmarks score perplexity on it (benchmarks/textdata.py), and the two must stay apart.
   From each docstring the script makes one short prompt of one kind, in rotation:
     instruction   "Explain in one sentence what this Python function does:" + name, signature,
                   first paragraph
     summary       "Summarise this passage ... in one sentence:" + a later paragraph
     continuation  "Continue this documentation of `NAME`:" + the first half of a paragraph
     code          "Write a short Python example that uses `NAME` ..." + its first sentence
   and, per module in LONG_MODULES, one `long` prompt (300+ tokens): the docstrings of several
   of its functions, numbered, followed by a question about the first one ("what is the name of
   the first function documented above?"), a detail stated in the passage's first line.
2. FACTS: short questions with 1-3 word gold answers, written by hand for this split (different
   questions from the calibration facts, not the same question with another country). Only those
   that SmolLM2-135M-Instruct answered correctly under greedy decoding are kept
   (`tools/check_prompts.py --generate`); FACTS_DROPPED lists the ones it got wrong.

The confirmation split (CONFIRM_*) is made the same way from other modules and other facts, so
that it shares no docstring, module or question with the held-out split: the search confirms each
new best plan on it (toggle.search.study), and the held-out split stays unseen by the search.

The output depends only on this file and the interpreter's docstrings: the same Python minor
version gives the same split (the version used is written in the generated comment). The
calibration split and everything above the heldout marker line are copied unchanged.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

import yaml

SUITE = Path(__file__).resolve().parent.parent / "prompts" / "default.yaml"
MARKER = "# ---------------------------------------------------------------- heldout"

MODULES = sorted([
    "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "difflib", "enum", "filecmp", "fnmatch", "fractions", "functools", "glob", "gzip",
    "hashlib", "heapq", "html", "ipaddress", "itertools", "json", "keyword", "math", "operator",
    "os.path", "pathlib", "pprint", "queue", "random", "re", "secrets", "shlex", "shutil",
    "statistics", "string", "struct", "tempfile", "textwrap", "threading", "urllib.parse",
    "uuid", "warnings", "zipfile", "zlib",
])
LONG_MODULES = sorted([
    "calendar", "collections", "contextlib", "csv", "difflib", "functools", "itertools", "json",
    "pathlib", "random", "re", "shutil", "statistics", "tempfile", "textwrap", "zipfile",
])
PER_MODULE = 6            # short prompts taken from one module at most
SHORT_CHARS = (60, 190)   # excerpt length of a short prompt (keeps it under ~75 tokens)
SHORT_PIECES = 42         # words + punctuation marks of that excerpt at most
LONG_CHARS = 1200         # text of a long prompt (300+ tokens with the chat template)
ENTRY_CHARS = 700         # one docstring's share of a long prompt at most
KINDS = ("instruction", "summary", "continuation", "code")

# The confirmation split: none of these modules is in MODULES or LONG_MODULES (a test checks).
CONFIRM_MODULES = sorted(["argparse", "ast", "binascii", "io", "locale", "logging", "platform", "types"])
CONFIRM_LONG_MODULES = sorted(["inspect", "traceback"])
CONFIRM_PER_MODULE = 3
# Checked like FACTS (tools/check_prompts.py --generate); 12 written, these 5 kept. Dropped: an
# insect's legs ("8"), 8 plus 4, which animal says moo ("the kangaroo"), the sky's colour on a
# clear day, which planet we live on ("Xanarada"); two more right ones (opposite of fast, hours
# in half a day) were left out to keep the split's share of facts near the held-out split's.
CONFIRM_FACTS = [
    ("square-sides", "Answer with a number: how many sides does a square have?", "4", "math"),
    ("three-times-three", "Answer with a number: what is 3 times 3?", "9", "math"),
    ("april-days", "Answer with a number: how many days are in the month of April?", "30", "everyday"),
    ("opposite-big", "Answer with one word: what is the opposite of big?", "small", "everyday"),
    ("plural-foot", "Answer with one word: what is the plural of foot?", "feet", "literature"),
]

# (id, question, answer, domain). Prefixes as in the calibration facts so the answer comes early.
FACTS = [
    ("spider-legs", "Answer with a number: how many legs does a spider have?", "8", "nature"),
    ("minutes-hour", "Answer with a number: how many minutes are in one hour?", "60", "science"),
    ("months-year", "Answer with a number: how many months are in a year?", "12", "everyday"),
    ("cm-in-metre", "Answer with a number: how many centimetres are in one metre?", "100", "science"),
    ("water-boils", "Answer with a number: at how many degrees Celsius does water boil at sea level?", "100", "science"),
    ("triangle-sides", "Answer with a number: how many sides does a triangle have?", "3", "math"),
    ("seven-plus-five", "Answer with a number: what is 7 plus 5?", "12", "math"),
    ("ten-times-ten", "Answer with a number: what is 10 times 10?", "100", "math"),
    ("sqrt-81", "Answer with a number: what is the square root of 81?", "9", "math"),
    ("half-of-fifty", "Answer with a number: what is half of 50?", "25", "math"),
    ("continents", "Answer with a number: how many continents are there on Earth?", "7", "geography"),
    ("red-planet", "Answer with one word: which planet is known as the Red Planet?", "Mars", "science"),
    ("ringed-planet", "Answer with one word: which planet is famous for its large bright rings?", "Saturn", "science"),
    ("bees-make", "Answer with one word: what sweet food do bees make?", "honey", "nature"),
    ("largest-mammal", "Answer briefly: what is the largest mammal on Earth?", "blue whale", "nature"),
    ("jungle-king", "Answer with one word: which animal is called the king of the jungle?", "lion", "nature"),
    ("panda-food", "Answer with one word: what plant do giant pandas mainly eat?", "bamboo", "nature"),
    ("trunk-animal", "Answer with one word: which large grey animal has a long trunk?", "elephant", "nature"),
    ("largest-bird", "Answer with one word: what is the largest living bird?", "ostrich", "nature"),
    ("baby-cat", "Answer with one word: what is a baby cat called?", "kitten", "nature"),
    ("baby-dog", "Answer with one word: what is a baby dog called?", "puppy", "nature"),
    ("mix-blue-yellow", "Answer with one word: what colour do you get by mixing blue and yellow paint?", "green", "everyday"),
    ("opposite-hot", "Answer with one word: what is the opposite of hot?", "cold", "everyday"),
    ("plural-mouse", "Answer with one word: what is the plural of mouse?", "mice", "literature"),
    ("same-meaning-word", "Answer with one word: what do we call a word that means the same as another word?", "synonym", "literature"),
    ("heart-organ", "Answer with one word: which organ pumps blood around the body?", "heart", "science"),
    ("frozen-water", "Answer with one word: what is frozen water called?", "ice", "science"),
    ("liquid-metal", "Answer with one word: which metal is liquid at room temperature?", "mercury", "science"),
    ("hardest-substance", "Answer with one word: what is the hardest natural substance?", "diamond", "science"),
    ("falling-force", "Answer with one word: which force makes objects fall to the ground?", "gravity", "science"),
    ("atom-centre", "Answer with one word: what is the centre of an atom called?", "nucleus", "science"),
    ("force-unit", "Answer with one word: what is the SI unit of force?", "newton", "science"),
    ("thermometer", "Answer with one word: which instrument measures temperature?", "thermometer", "science"),
    ("sun-rises", "Answer with one word: in which direction does the sun rise?", "east", "geography"),
    ("piano-keys", "Answer with one word: which musical instrument has 88 black and white keys?", "piano", "everyday"),
    ("shuttlecock", "Answer with one word: which sport is played with a shuttlecock?", "badminton", "sport"),
    ("eight-sides", "Answer with one word: what is a shape with eight sides called?", "octagon", "math"),
    ("four-equal-sides", "Answer with one word: what shape has four equal sides and four right angles?", "square", "math"),
    ("iceberg-ship", "Answer with one word: which famous ship sank in 1912 after hitting an iceberg?", "Titanic", "history"),
    ("baker-street", "Answer with a name: which fictional detective lives at 221B Baker Street?", "Sherlock Holmes", "literature"),
    ("never-grows-up", "Answer with a name: who is the boy who never grows up in J. M. Barrie's story?", "Peter Pan", "literature"),
    ("caterpillar", "Answer with one word: what does a caterpillar turn into?", "butterfly", "nature"),
    ("after-summer", "Answer with one word: which season comes after summer?", "autumn", "everyday"),
    ("grams-kilogram", "Answer with a number: how many grams are in one kilogram?", "1000", "science"),
    ("hours-day", "Answer with a number: how many hours are in one day?", "24", "everyday"),
    ("football-players", "Answer with a number: how many players does a football team have on the field?", "11", "sport"),
    ("days-week", "Answer with a number: how many days are in one week?", "7", "everyday"),
    ("dog-legs", "Answer with a number: how many legs does a dog have?", "4", "nature"),
    ("bicycle-wheels", "Answer with a number: how many wheels does a bicycle have?", "2", "everyday"),
    ("nine-plus-six", "Answer with a number: what is 9 plus 6?", "15", "math"),
    ("twenty-minus-eight", "Answer with a number: what is 20 minus 8?", "12", "math"),
    ("six-times-five", "Answer with a number: what is 6 times 5?", "30", "math"),
    ("hundred-by-four", "Answer with a number: what is 100 divided by 4?", "25", "math"),
    ("seconds-minute", "Answer with a number: how many seconds are in one minute?", "60", "science"),
    ("leap-year-days", "Answer with a number: how many days are in a leap year?", "366", "everyday"),
    ("mm-in-cm", "Answer with a number: how many millimetres are in one centimetre?", "10", "science"),
    ("alphabet-letters", "Answer with a number: how many letters are in the English alphabet?", "26", "literature"),
    ("hexagon-sides", "Answer with a number: how many sides does a hexagon have?", "6", "math"),
    ("guitar-strings", "Answer with a number: how many strings does a standard guitar have?", "6", "everyday"),
    ("opposite-up", "Answer with one word: what is the opposite of up?", "down", "everyday"),
    ("opposite-night", "Answer with one word: what is the opposite of night?", "day", "everyday"),
    ("opposite-ancient", "Answer with one word: what is the opposite of ancient?", "modern", "literature"),
    ("plural-child", "Answer with one word: what is the plural of child?", "children", "literature"),
    ("plural-tooth", "Answer with one word: what is the plural of tooth?", "teeth", "literature"),
    ("past-tense-go", "Answer with one word: what is the past tense of go?", "went", "literature"),
    ("poem-writer", "Answer with one word: what do you call a person who writes poems?", "poet", "literature"),
    ("banana-colour", "Answer with one word: what colour are ripe bananas?", "yellow", "cooking"),
    ("breathe-gas", "Answer with one word: which gas do humans need to breathe to stay alive?", "oxygen", "science"),
    ("breathing-organ", "Answer with one word: which organs do humans breathe with?", "lungs", "science"),
    ("solar-system-star", "Answer with one word: which star is at the centre of our solar system?", "Sun", "science"),
    ("earth-satellite", "Answer with one word: what is the natural satellite of the Earth called?", "Moon", "science"),
    ("study-of-life", "Answer with one word: what is the study of living things called?", "biology", "science"),
    ("study-of-stars", "Answer with one word: what is the study of stars and planets called?", "astronomy", "science"),
    ("after-january", "Answer with one word: which month comes after January?", "February", "everyday"),
    ("after-monday", "Answer with one word: which day comes after Monday?", "Tuesday", "everyday"),
    ("tallest-animal", "Answer with one word: what is the tallest animal in the world?", "giraffe", "nature"),
    ("wool-animal", "Answer with one word: which farm animal gives us wool?", "sheep", "nature"),
    ("young-frog", "Answer with one word: what is a young frog called?", "tadpole", "nature"),
]
# Ids of FACTS the base model got wrong under greedy decoding (24 new tokens, chat template, the
# check of tools/check_prompts.py --generate), or right only by accident ("continents": "There
# are 7,981,176,..."); they are not in the suite. 78 written, 41 dropped, 37 kept.
FACTS_DROPPED = [
    "minutes-hour", "sqrt-81", "red-planet", "ringed-planet", "bees-make", "jungle-king",
    "trunk-animal", "largest-bird", "baby-cat", "baby-dog", "mix-blue-yellow",
    "same-meaning-word", "heart-organ", "frozen-water", "liquid-metal", "hardest-substance",
    "force-unit", "shuttlecock", "eight-sides", "baker-street", "never-grows-up", "caterpillar",
    "after-summer", "grams-kilogram", "football-players", "continents",
    "bicycle-wheels", "six-times-five", "seconds-minute", "leap-year-days", "mm-in-cm",
    "guitar-strings", "past-tense-go", "banana-colour", "breathe-gas", "solar-system-star",
    "study-of-life", "after-january", "after-monday", "tallest-animal", "young-frog",
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring, each on one line; code, tables and lists are skipped."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        raw = block.strip("\n").splitlines()
        if any(line[:1].isspace() for line in raw):
            continue  # indented: a parameter list ("wbits\n  The window size") or code
        lines = [line.strip() for line in raw]
        if not lines or any(l.startswith((">>>", "...", "-", "*", "|", "+", "=")) or "::" in l for l in lines):
            continue
        text = " ".join(lines)
        if len(text.split()) >= 5 and text[0].isalpha() and text.endswith("."):
            out.append(text[0].upper() + text[1:])
    return out


def first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


def members(module_name: str):
    """(qualified name, object, docstring) of the module's documented public names, sorted."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if obj is None or inspect.ismodule(obj) or not callable(obj):
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue  # exception classes: one-line docstrings that say little
        doc = inspect.getdoc(obj)
        if doc:
            yield f"{module_name}.{name}", obj, doc


def signature(obj, limit: int | None = None) -> str:
    """The call signature; a default whose repr names a memory address
    (`<function f at 0x7f...>`) is shown as `...`, so the text is the same on every run.
    Longer than `limit` characters: `(...)`."""
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    text = re.sub(r"<[^<>]* at 0x[0-9a-f]+>", "...", text)
    return "(...)" if limit is not None and len(text) > limit else text


def fits(text: str) -> bool:
    """Short enough for a short prompt: SHORT_CHARS characters and at most SHORT_PIECES words
    and punctuation marks (code-like text such as `src` needs more tokens per character)."""
    pieces = len(re.findall(r"\w+|[^\w\s]", text))
    return SHORT_CHARS[0] <= len(text) <= SHORT_CHARS[1] and pieces <= SHORT_PIECES


def short_prompt(kind: str, qual: str, obj, doc: str) -> str | None:
    paras = paragraphs(doc)
    if kind == "instruction" and paras and 30 <= len(paras[0]) <= SHORT_CHARS[1] and not inspect.isclass(obj):
        return f"Explain in one sentence what this Python function does:\n\n{qual}{signature(obj, 60)}\n{paras[0]}"
    if kind == "summary":
        later = [p for p in paras[1:] if fits(p) and len(p) >= 100]
        if later:
            return f"Summarise this passage from the documentation of `{qual}` in one sentence: {later[0]}"
    if kind == "continuation":
        usable = [p for p in paras if 100 <= len(p) <= 2 * SHORT_CHARS[1]]
        if usable:
            words = usable[0].split()
            return f"Continue this documentation of `{qual}`:\n\n" + " ".join(words[: max(8, len(words) // 2)])
    if kind == "code" and paras and 20 <= len(first_sentence(paras[0])) <= 160:
        return (f"Write a short Python example that uses `{qual}`. "
                f"Its documentation says: \"{first_sentence(paras[0])}\"")
    return None


def long_prompt(module_name: str) -> str | None:
    """Numbered docstrings of the module's names (each cut to ENTRY_CHARS at a line end) until
    the text reaches LONG_CHARS, then a question about the first entry's name; None when the
    module has too little documentation."""
    entries, size = [], 0
    for qual, obj, doc in members(module_name):
        if len(doc) < 150:
            continue
        lines, length = [], 0
        for line in doc.splitlines():
            if length + len(line) > ENTRY_CHARS:
                break
            lines.append(line.rstrip())
            length += len(line) + 1
        entries.append(f"{len(entries) + 1}. {qual}{signature(obj)}\n" + "\n".join(lines).strip())
        size += len(entries[-1])
        if size >= LONG_CHARS:
            break
    if size < LONG_CHARS or len(entries) < 2:
        return None
    body = "\n\n".join(entries)
    return (f"Below is the documentation of {len(entries)} names from the Python module "
            f"`{module_name}`. Read it, then answer the question at the end.\n\n{body}\n\n"
            "Question: what is the name of the first function or class documented above? "
            "Answer with its name only.")


def clean(text: str) -> str:
    """Plain, YAML-block-friendly text: tabs expanded, no trailing spaces, ASCII quotes kept."""
    return "\n".join(line.rstrip() for line in text.expandtabs(4).splitlines()).strip()


def build() -> list[dict]:
    """The generated items: the confirmation split, then the held-out split (split_items)."""
    return (split_items("confirmation", CONFIRM_MODULES, CONFIRM_PER_MODULE, CONFIRM_LONG_MODULES, CONFIRM_FACTS, ())
            + split_items("heldout", MODULES, PER_MODULE, LONG_MODULES, FACTS, FACTS_DROPPED))


def split_items(split: str, modules, per_module: int, long_modules, facts, dropped_facts) -> list[dict]:
    """One split's items, in a fixed order: short docstring prompts module by module, then the
    long ones, then the facts. Each docstring gives at most one short prompt, of the kind made
    least often so far that it can give (ties: KINDS order), so the kinds stay balanced."""
    items: list[dict] = []
    made = dict.fromkeys(KINDS, 0)
    seen_docs: set[str] = set()  # aliases (bisect.bisect is bisect_right) give one prompt
    for module_name in modules:
        taken = 0
        for qual, obj, doc in members(module_name):
            if taken == per_module:
                break
            if doc in seen_docs:
                continue
            for kind in sorted(KINDS, key=lambda k: (made[k], KINDS.index(k))):
                text = short_prompt(kind, qual, obj, doc)
                if text:
                    items.append({"id": f"doc-{kind[:4]}-{slug(qual)}", "prompt": clean(text),
                                  "split": split, "tags": [kind, "docs"]})
                    made[kind] += 1
                    taken += 1
                    seen_docs.add(doc)
                    break
    for module_name in long_modules:
        text = long_prompt(module_name)
        if text:
            items.append({"id": f"doc-long-{slug(module_name)}", "prompt": clean(text),
                          "split": split, "tags": ["long", "docs"]})
    dropped = set(dropped_facts)
    for fact_id, question, answer, domain in facts:
        if fact_id not in dropped:
            items.append({"id": f"fact-{fact_id}", "prompt": question, "answer": answer,
                          "split": split, "tags": ["fact", domain]})
    return items


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(items: list[dict]) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    head = (f"{MARKER}\n"
            f"# Generated by tools/build_heldout.py (Python {version} docstrings + hand-written facts):\n"
            "# the confirmation split, then the heldout split; edit that script and rerun it, do not edit\n"
            "# these splits by hand.\n")
    body = yaml.dump(items, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    text = head + body
    if yaml.safe_load(body) != items:
        raise SystemExit("build_heldout: the YAML does not read back as the items it was made from")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=SUITE)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the suite differs from a rebuild")
    mode.add_argument("--stdout", action="store_true", help="print the generated splits, write nothing")
    args = parser.parse_args(argv)

    items = build()
    section = render(items)
    if args.stdout:
        sys.stdout.write(section)
        return 0
    current = args.suite.read_text(encoding="utf-8")
    if MARKER not in current:
        raise SystemExit(f"{args.suite}: no line {MARKER!r} separating the heldout split")
    new = current[: current.index(MARKER)] + section
    if args.check:
        same = new == current
        print(f"{args.suite}: generated splits {'match' if same else 'DIFFER from'} a rebuild "
              f"({len(items)} prompts)")
        return 0 if same else 1
    args.suite.write_text(new, encoding="utf-8")
    for split in ("confirmation", "heldout"):
        kinds = {}
        for item in (i for i in items if i["split"] == split):
            kinds[item["tags"][0]] = kinds.get(item["tags"][0], 0) + 1
        print(f"{args.suite}: wrote {sum(kinds.values())} {split} prompts: "
              + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
