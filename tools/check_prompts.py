"""Check a prompt suite: fields, counts per split and tag, token lengths, fact accuracy.

    PYTHONPATH=. python tools/check_prompts.py [prompts/default.yaml] [--generate]

A maintenance script for the shipped suite, not the library loader (toggle/prompts.py).
It validates every item, prints counts per split and tag and token statistics measured with
the model's tokenizer and chat template (what the trace stage feeds the model), and with
--generate greedily generates an answer for every prompt that carries a gold `answer` and
reports whether the generation contains it. Exit code 2 on an invalid suite, 1 when
--generate finds a wrong answer, 0 otherwise.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

SPLITS = ("calibration", "confirmation", "heldout")
FIELDS = ("id", "prompt", "answer", "split", "tags")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Tags (optional): every tag is a kind or a domain, and a tagged item has at least one kind (`docs`: made from
# Python standard-library docstrings by tools/build_heldout.py).
KINDS = ("fact", "long", "instruction", "code", "math", "reasoning", "narrative", "dialogue",
         "summary", "continuation")
DOMAINS = ("geography", "science", "history", "literature", "cooking", "travel", "sport",
           "everyday", "tech", "nature", "docs")
# Length expectations of the shipped suite (tokens with the chat template applied).
LONG_MIN_TOKENS = 300
SHORT_MAX_TOKENS = 100


@dataclass(frozen=True)
class Item:
    index: int
    id: str
    prompt: str
    answer: str | None
    split: str
    tags: tuple[str, ...]


def validate(path: Path) -> tuple[list[Item], list[str]]:
    """Parse the suite with yaml.safe_load; return its items and every problem found."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return [], [f"{path}: cannot read as YAML: {exc}"]
    if not isinstance(data, list):
        return [], [f"{path}: the top level must be a list of prompt objects"]
    items: list[Item] = []
    errors: list[str] = []
    seen_ids: dict[str, int] = {}
    for index, raw in enumerate(data):
        where = f"{path}: item {index}"
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a mapping with a 'prompt' field")
            continue
        problems = []
        unknown = sorted(set(raw) - set(FIELDS))
        if unknown:
            problems.append(f"unknown field(s) {unknown}; valid fields are {list(FIELDS)}")
        item_id = raw.get("id")
        if not isinstance(item_id, str) or not ID_PATTERN.match(item_id):
            problems.append(f"field 'id': {item_id!r} must be a lowercase slug (a-z, 0-9, -)")
        elif item_id in seen_ids:
            problems.append(f"field 'id': {item_id!r} already used by item {seen_ids[item_id]}")
        else:
            seen_ids[item_id] = index
        prompt = raw.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append("field 'prompt': must be a non-empty string")
        answer = raw.get("answer")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            problems.append("field 'answer': must be a non-empty string when present")
        split = raw.get("split", "calibration")
        if split not in SPLITS:
            problems.append(f"field 'split': {split!r} is not one of {list(SPLITS)}")
        tags = raw.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            problems.append("field 'tags': must be a list of non-empty strings")
        else:
            unknown_tags = [t for t in tags if t not in KINDS + DOMAINS]
            if unknown_tags:
                problems.append(f"field 'tags': {unknown_tags} not allowed; kinds are {list(KINDS)}, "
                                f"domains {list(DOMAINS)}")
            elif tags and not any(t in KINDS for t in tags):
                problems.append(f"field 'tags': {tags} has no kind (one of {list(KINDS)})")
        if problems:
            errors.extend(f"{where} ({item_id}): {p}" for p in problems)
            continue
        items.append(Item(index, item_id, prompt, answer, split, tuple(tags)))
    return items, errors


def print_counts(items: list[Item]) -> None:
    per_split = Counter(item.split for item in items)
    print(f"{len(items)} prompts: " + ", ".join(f"{s} {per_split[s]}" for s in SPLITS))
    with_answer = Counter(item.split for item in items if item.answer)
    print("with gold answer: " + ", ".join(f"{s} {with_answer[s]}" for s in SPLITS))
    tags = sorted({t for item in items for t in item.tags})
    print(f"\n{'tag':<14}" + "".join(f"{s:>13}" for s in SPLITS) + f"{'total':>8}")
    for tag in tags:
        counts = Counter(item.split for item in items if tag in item.tags)
        print(f"{tag:<14}" + "".join(f"{counts[s]:>13}" for s in SPLITS) + f"{sum(counts.values()):>8}")


def chat_ids(tokenizer, prompt: str) -> dict:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )


def describe(lengths: list[int]) -> str:
    if not lengths:
        return "none"
    return (f"n={len(lengths)} min={min(lengths)} median={statistics.median(lengths):g} "
            f"mean={statistics.mean(lengths):.1f} max={max(lengths)} total={sum(lengths)}")


def print_token_stats(items: list[Item], tokenizer) -> list[str]:
    """Print token statistics; return warnings for prompts outside the suite's length rules."""
    raw = {item.id: len(tokenizer(item.prompt)["input_ids"]) for item in items}
    templated = {item.id: chat_ids(tokenizer, item.prompt)["input_ids"].shape[1] for item in items}
    print("\ntokens (chat template applied; raw prompt text in brackets)")
    for split in SPLITS:
        for kind, selected in (("long", True), ("short", False)):
            ids = [i.id for i in items if i.split == split and ("long" in i.tags) == selected]
            print(f"  {split:<12}{kind:<6}{describe([templated[i] for i in ids])}"
                  f"  [{describe([raw[i] for i in ids])}]")
        ids = [i.id for i in items if i.split == split]
        print(f"  {split:<12}{'all':<6}{describe([templated[i] for i in ids])}")
    warnings = []
    for item in items:
        n = templated[item.id]
        if "long" in item.tags and n < LONG_MIN_TOKENS:
            warnings.append(f"{item.id}: tagged long but only {n} tokens (want >= {LONG_MIN_TOKENS})")
        if "long" not in item.tags and n > SHORT_MAX_TOKENS:
            warnings.append(f"{item.id}: {n} tokens but not tagged long (want <= {SHORT_MAX_TOKENS})")
    return warnings


def contains_answer(text: str, answer: str) -> bool:
    """Case-insensitive whole-word match, so '8' does not match '18'."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, re.IGNORECASE) is not None


def answer_step(tokenizer, generated: list[int], answer: str) -> int | None:
    """Generation step (0-based) whose token completes the answer, None if it never appears.

    Factual properties look at the steps where the answer is produced; this says which.
    """
    for step in range(len(generated)):
        if contains_answer(tokenizer.decode(generated[: step + 1], skip_special_tokens=True), answer):
            return step
    return None


def check_answers(items: list[Item], lm, max_new_tokens: int) -> int:
    """Greedy-generate every prompt with an answer; print each verdict and the step where the
    answer is complete (ok @STEP); return the number wrong."""
    import torch

    facts = [item for item in items if item.answer]
    wrong = 0
    start = time.perf_counter()
    print(f"\ngreedy generation, {max_new_tokens} new tokens, {len(facts)} prompts with an answer")
    for item in facts:
        ids = chat_ids(lm.tokenizer, item.prompt)
        with torch.no_grad():
            out = lm.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        generated = out[0, ids["input_ids"].shape[1]:].tolist()
        text = lm.tokenizer.decode(generated, skip_special_tokens=True)
        step = answer_step(lm.tokenizer, generated, item.answer)
        wrong += step is None
        verdict = "BAD     " if step is None else f"ok @{step:<4}"
        print(f"  {verdict} {item.split:<12}{item.id:<24}{item.answer!r:<14}"
              f"-> {' '.join(text.split())[:80]!r}")
    seconds = time.perf_counter() - start
    print(f"fact accuracy: {len(facts) - wrong}/{len(facts)} "
          f"({sum(1 for i in facts if i.split == 'calibration')} calibration, "
          f"{sum(1 for i in facts if i.split == 'heldout')} heldout); generation took {seconds:.1f} s")
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "prompts" / "default.yaml"
    parser.add_argument("suite", nargs="?", type=Path, default=default)
    parser.add_argument("--model", default="smollm2-135m", help="model for tokens and generation")
    parser.add_argument("--generate", action="store_true", help="check the gold answers by generating")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--no-tokens", action="store_true", help="skip loading the model for token counts")
    args = parser.parse_args(argv)

    items, errors = validate(args.suite)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    print(f"{args.suite}: valid")
    print_counts(items)
    if args.no_tokens and not args.generate:
        return 0

    from toggle.load import load_model

    lm = load_model(args.model)
    for warning in print_token_stats(items, lm.tokenizer):
        print(f"warning: {warning}")
    if args.generate and check_answers(items, lm, args.max_new_tokens):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
