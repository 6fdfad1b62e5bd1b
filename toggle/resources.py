"""Where the shipped specs, search profiles and prompt suite live.

They sit at the top of the repository (readable, copyable); an editable install finds them
there, a regular install finds the copies placed under <prefix>/share/toggle.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def resource_dir(kind: str) -> Path:
    """Directory of shipped resources: kind is 'specs', 'search' or 'prompts'."""
    for base in (REPO_ROOT, Path(sys.prefix) / "share" / "toggle"):
        candidate = base / kind
        if candidate.is_dir():
            return candidate
    return REPO_ROOT / kind


def default_specs() -> list[Path]:
    return sorted(resource_dir("specs").glob("*.stl"))


def default_prompts() -> Path:
    return resource_dir("prompts") / "default.yaml"


def search_profile(name: str) -> Path:
    """A profile given as a path is used as is; a bare name ('default') is looked up in search/."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and (path.exists() or path.parent != Path(".")):
        return path
    return resource_dir("search") / f"{path.stem}.yaml"
