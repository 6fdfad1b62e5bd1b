"""Stage 2, prompts: the prompt suite a model is checked on.

A suite file is YAML (a list of prompt objects, or a mapping `{chat: BOOL, prompts: [...]}`)
or JSONL (one prompt object per line). A prompt object:

    {id: capital-fr, prompt: "What is the capital of France?", answer: "Paris",
     split: calibration, tags: [fact], chat: true}

`prompt` is required; `id` defaults to `p<N>` (N = position in the file, from 1), `answer`
(a gold answer for factual properties, as text: quote numbers) to none, `split` to `calibration` (`confirmation`
prompts are scored only for a search's new best plans, to confirm them; `heldout` prompts only
by audit), `tags` to none, `chat` to the suite's `chat` (default: apply the
tokenizer's chat template when it has one).

A gold answer is scored as the tokens that follow the prompt: through the chat template as the
assistant's reply, or in plain text after the prompt, where an answer is given a leading space
when neither the prompt ends with whitespace nor the answer starts with it ("... is" + " Paris").

Errors name the file, the line (JSONL) or item index (YAML, from 1) and the field.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInput, key_list
from .files import default_prompts, parse_yaml, read_text

SPLITS = ("calibration", "confirmation", "heldout")
FIELDS = ("id", "prompt", "answer", "split", "tags", "chat")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    answer: str | None = None
    split: str = "calibration"
    tags: tuple[str, ...] = ()
    chat: bool | None = None  # None: use the chat template when the tokenizer has one

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.text, "answer": self.answer, "split": self.split,
                "tags": list(self.tags), "chat": self.chat}


@dataclass(frozen=True)
class PromptSuite:
    path: Path | None
    prompts: tuple[Prompt, ...]
    name: str = "all"  # which split this suite holds: 'all' or one of SPLITS
    _fingerprint: str = field(default="", compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    def split(self, name: str) -> "PromptSuite":
        """The prompts of one split (SPLITS), or all of them ('all')."""
        if name == "all":
            return self
        if name not in SPLITS:
            raise InvalidInput(f"split {name!r} is not valid; expected {', '.join(SPLITS)} or all")
        return PromptSuite(self.path, tuple(p for p in self.prompts if p.split == name), name=name)

    def subset(self, ids) -> "PromptSuite":
        """The prompts with the given ids, in suite order."""
        wanted = set(ids)
        unknown = wanted - {p.id for p in self.prompts}
        if unknown:
            raise InvalidInput(f"{self.source}: no prompt with id {', '.join(sorted(unknown))}")
        return PromptSuite(self.path, tuple(p for p in self.prompts if p.id in wanted), name=self.name)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<prompts>"

    @property
    def fingerprint(self) -> str:
        """Content hash of the prompts (not of the path): a cache key for traces."""
        if not self._fingerprint:
            text = json.dumps([p.to_dict() for p in self.prompts], sort_keys=True, ensure_ascii=False)
            object.__setattr__(self, "_fingerprint", hashlib.sha256(text.encode()).hexdigest()[:16])
        return self._fingerprint


def load_prompts(path: str | Path | None = None) -> PromptSuite:
    """Read a suite file (YAML or JSONL); None means the shipped default suite."""
    path = Path(default_prompts() if path is None else path)
    text = read_text(path, what="prompt suite file", expected=".yaml or .jsonl prompt suite")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        prompts = _parse_jsonl(text, str(path))
    elif suffix in (".yaml", ".yml"):
        prompts = _parse_yaml(text, str(path))
    else:
        raise InvalidInput(f"{path}: unknown prompt suite format {suffix or '(no extension)'!r}; "
                           f"expected .yaml, .yml or .jsonl")
    return PromptSuite(path, tuple(prompts))


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model sees it: token ids, and where the user's text sits in them."""

    prompt: Prompt
    ids: tuple[int, ...]
    content: tuple[int, int]  # [start, end) token indices of the prompt's own text
    chat: bool  # whether the chat template was applied
    answer_ids: tuple[int, ...] | None = None  # gold answer tokens, to follow the prompt


def uses_chat(prompt: Prompt, tokenizer) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt.chat and not has_template:
        raise InvalidInput(f"prompt {prompt.id!r}: field 'chat': true, but this model's tokenizer has no "
                           f"chat template; set chat: false")
    return has_template if prompt.chat is None else prompt.chat


def encode(prompt: Prompt, tokenizer) -> EncodedPrompt:
    """Tokenise a prompt: through the chat template when it applies, else as plain text.

    The chat template is rendered to text and tokenised once, so the character offsets of
    the user's text map to token indices (`content`); signals that look at "the prompt's
    early tokens" use that span, not the template's system preamble.
    """
    chat = uses_chat(prompt, tokenizer)
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.text}], add_generation_prompt=True, tokenize=False)
        start = _content_offset(tokenizer, prompt.text, rendered)
        add_special = False  # the template already holds the special tokens it wants
    else:
        rendered, start, add_special = prompt.text, 0, True
    enc = tokenizer(rendered, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = tuple(int(i) for i in enc["input_ids"])
    end_char = start + len(prompt.text)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end_char and b > start]
    content = (inside[0], inside[-1] + 1) if inside else (0, len(ids))
    answer_ids = None
    if prompt.answer is not None:
        answer = prompt.answer
        if not chat and not rendered[-1:].isspace() and not answer[:1].isspace():
            answer = " " + answer  # a plain-text continuation: "... is" + " Paris"
        answer_ids = tuple(int(i) for i in tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not answer_ids:
            raise InvalidInput(f"prompt {prompt.id!r}: field 'answer': {prompt.answer!r} has no tokens")
    return EncodedPrompt(prompt, ids, content, chat, answer_ids)


def _content_offset(tokenizer, text: str, rendered: str) -> int:
    """Character offset of the user's text inside the rendered template."""
    marker = "\x00toggle-content\x00"
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False)
    at = probe.find(marker)
    if at >= 0 and rendered == probe[:at] + text + probe[at + len(marker):]:
        return at
    found = rendered.rfind(text)  # templates that alter the text (strip, escape)
    return max(found, 0)


def suite_from_records(records: list[dict], *, source: str = "<prompts>", chat: bool | None = None) -> PromptSuite:
    """Build a suite in code from prompt objects (same fields and checks as a file)."""
    prompts = [_parse_prompt(r, f"{source}: item {i}", i, chat) for i, r in enumerate(records, 1)]
    return PromptSuite(None, tuple(_check_suite(prompts, source, [f"{source}: item {i}" for i in range(1, len(prompts) + 1)])))


# --- parsing ------------------------------------------------------------------------------

def _parse_jsonl(text: str, source: str) -> list[Prompt]:
    prompts, where_each = [], []
    # lines end at \n only: JSON strings may hold U+2028 and other characters str.splitlines splits at
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{where}:{e.colno}: not valid JSON: {e.msg}") from None
        except RecursionError:
            raise InvalidInput(f"{where}: not valid JSON: nested too deeply") from None
        prompts.append(_parse_prompt(obj, where, len(prompts) + 1, None))
        where_each.append(where)
    return _check_suite(prompts, source, where_each)


def _parse_yaml(text: str, source: str) -> list[Prompt]:
    data = parse_yaml(text, source)
    chat = None
    if isinstance(data, dict):
        unknown = set(data) - {"chat", "prompts"}
        if unknown:
            raise InvalidInput(f"{source}: unknown top-level key(s) {key_list(unknown, quote=True)}; "
                               f"expected a list of prompts, or a mapping with keys chat, prompts")
        chat = data.get("chat")
        if chat is not None and not isinstance(chat, bool):
            raise InvalidInput(f"{source}: field 'chat': {chat!r} is not valid; expected true or false")
        data = data.get("prompts")
    if data is None:
        raise InvalidInput(f"{source}: the suite is empty; expected a list of prompts")
    if not isinstance(data, list):
        raise InvalidInput(f"{source}: expected a list of prompt objects, got {type(data).__name__}")
    prompts = [_parse_prompt(item, f"{source}: item {i}", i, chat) for i, item in enumerate(data, 1)]
    return _check_suite(prompts, source, [f"{source}: item {i}" for i in range(1, len(prompts) + 1)])


def _parse_prompt(obj, where: str, index: int, suite_chat: bool | None) -> Prompt:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}: expected a prompt object with fields {', '.join(FIELDS)}; "
                           f"got {type(obj).__name__}")
    unknown = set(obj) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {key_list(unknown, quote=True)}; valid fields: {', '.join(FIELDS)}")
    text = obj.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{where}: field 'prompt': expected non-empty text, got {_show(text)}")
    pid = obj.get("id", f"p{index}")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise InvalidInput(f"{where}: field 'id': expected a short non-empty name, got {_show(pid)}")
    answer = obj.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        # YAML and JSON read 3.10 as 3.1, 010 as 8, 12:30 as 750: the text as written is gone
        raise InvalidInput(f"{where}: field 'answer': {_show(answer)} was read as a number, which may not be the text "
                           f"written; quote it, e.g. answer: \"3.10\"")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise InvalidInput(f"{where}: field 'answer': expected non-empty text (the gold answer), got {_show(answer)}")
    for field_name, value in (("prompt", text), ("answer", answer)):
        if value is not None and not _encodable(value):
            raise InvalidInput(f"{where}: field '{field_name}': holds a lone surrogate (an escape like \\ud800 that "
                               f"is half of a character); it is not text a tokenizer can read")
    split = obj.get("split", "calibration")
    if split not in SPLITS:
        raise InvalidInput(f"{where}: field 'split': {_show(split)} is not valid; expected one of {', '.join(SPLITS)}")
    tags = obj.get("tags", [])
    if tags is None:
        tags = []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InvalidInput(f"{where}: field 'tags': expected a list of words, got {_show(tags)}")
    chat = obj.get("chat", suite_chat)
    if chat is not None and not isinstance(chat, bool):
        raise InvalidInput(f"{where}: field 'chat': {_show(chat)} is not valid; expected true or false")
    return Prompt(id=str(pid).strip(), text=text, answer=None if answer is None else str(answer),
                  split=split, tags=tuple(tags), chat=chat)


def _check_suite(prompts: list[Prompt], source: str, where: list[str]) -> list[Prompt]:
    """`where`: each prompt's location (FILE: item N, or FILE:LINE for JSONL), for the messages."""
    if not prompts:
        raise InvalidInput(f"{source}: the suite is empty; expected at least one prompt")
    first: dict[str, str] = {}
    for p, at in zip(prompts, where):
        if p.id in first:
            raise InvalidInput(f"{at}: field 'id': {p.id!r} is used twice (first at {first[p.id]}); ids must be unique")
        first[p.id] = at
    return prompts


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
