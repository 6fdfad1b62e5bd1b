"""Stage 9, formats: how a compressed model is stored, one `Format` per file format.

    fmt = get_format("gguf")                          # or "toggle"
    info = toggle.api.write_artifact(lm, plan, "out/model.gguf", "gguf")   # priced by the cost model
    lm2 = read_artifact("out/model")                  # a toggle artifact directory, back as a model

FORMATS is the registry: adding a format is one file (a Format subclass) and one entry here.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInput
from .base import ArtifactInfo, Format
from .gguf import GGUFFormat
from .toggle_dir import ToggleFormat, read_manifest

FORMATS: dict[str, Format] = {f.name: f for f in (ToggleFormat(), GGUFFormat())}


def get_format(name: str | Format) -> Format:
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidInput(f"format {name!r} is not valid; expected one of {', '.join(FORMATS)}") from None


def read_artifact(path: str | Path, **kwargs):
    """A toggle artifact directory as a toggle.loaded.LoadedModel."""
    return FORMATS["toggle"].read(Path(path).resolve(), **kwargs)


__all__ = ["FORMATS", "ArtifactInfo", "Format", "GGUFFormat", "ToggleFormat", "get_format", "read_artifact",
           "read_manifest"]
