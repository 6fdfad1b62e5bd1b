"""The `Format` interface: how a compressed model is stored on disk.

A format says which settings it can store exactly (`problem`), how many bytes one module
takes (`module_bytes`) and what the rest of the file costs (`other_bytes`, `header_bytes`),
writes a plan applied to a model (`write`) and reads an artifact back (`read`). The cost model
takes a Format, so the bytes a search is charged are the bytes the writer puts on disk; nothing
outside toggle/formats/ branches on a format's name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput


@dataclass
class ArtifactInfo:
    """What was written, and the bytes accounted for it against the bytes on disk."""

    path: Path
    fmt: str
    cost: object  # toggle.cost.Cost: the cost model's figures for the plan in this format (accounted bytes)
    tensor_bytes_on_disk: int  # tensor data in the weights file (what the cost model's tensor bytes account)
    weights_file_bytes: int  # the safetensors / GGUF file, headers and metadata included
    total_bytes: int  # everything written (config, tokenizer, manifest included)
    encodings: dict[str, list[str]] = field(default_factory=dict)  # module -> encoding (or type) per matrix
    # how it was made, where a format has more to say (GGUF: modules quantised with an importance
    # matrix, types that fell back); copied into summary.json's artifact block
    meta: dict = field(default_factory=dict)


class Format(ABC):
    name: str = ""  # what --format and search profiles call it
    label: str = ""  # how messages name it
    description: str = ""

    @abstractmethod
    def problem(self, ref, setting, methods) -> str | None:
        """Why this module's setting cannot be stored exactly in this format, or None."""

    @abstractmethod
    def module_bytes(self, ref, setting, methods) -> tuple[int, tuple[str, ...]]:
        """Stored bytes of one compressible module and the encoding (or type) of each stored matrix."""

    @abstractmethod
    def other_bytes(self, model, refs) -> int:
        """Bytes of every tensor that is not a compressible weight (norms, biases), as stored."""

    def check_plan(self, plan, refs) -> None:
        """Raise InvalidInput naming the first module whose setting this format cannot store, and why."""
        bad = [(r.name, p) for r in refs
               if (p := self.problem(r, plan.setting(r.name), plan.methods.for_setting(plan.setting(r.name))))]
        if bad:
            name, problem = bad[0]
            more = f" ({len(bad) - 1} more modules have the same kind of problem)" if len(bad) > 1 else ""
            raise InvalidInput(f"plan cannot be written as {self.label}: modules.{name}: {problem}{more}")

    def header_bytes(self, loaded) -> int:
        """Bytes of the weights file that do not depend on the plan (metadata, tokenizer)."""
        return 0

    def output_path(self, out: str | Path) -> Path:
        """Where `toggle apply --out OUT` writes this format."""
        return Path(out)

    @abstractmethod
    def write(self, loaded, plan, out: Path, applier, cost) -> ArtifactInfo:
        """Write `plan` applied to `loaded` at `out` (temporary name, then rename), with the
        weights `applier` builds; `cost` (toggle.cost.Cost, priced in this format) is recorded."""

    @abstractmethod
    def read(self, path: Path, *, device="cpu", dtype=None, attn_implementation=None):
        """The artifact at `path` as a toggle.loaded.LoadedModel."""
