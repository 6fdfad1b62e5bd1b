"""Files: atomic writes, YAML and JSON read with located errors, the cache directory, and
where the shipped specs, search profiles and prompt suite live.

Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.
JSON is written strictly: a non-finite float (a -inf robustness, a NaN) becomes null, since
JSON has no such numbers; readers treat null as "not a finite value".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import InvalidInput

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- atomic writes ----------------------------------------------------------------------------

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; a run directory is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def check_output_file(path: str | Path, option: str) -> None:
    """An output file a command writes at its end can be written: checked before its work starts."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"{option} {path}: is a directory; expected a file name, e.g. {path / 'audit.json'}")
    check_output_place(path, option)


def check_output_place(path: str | Path, option: str) -> None:
    """Where an output (a file or a folder) goes can be written: its nearest existing ancestor is a
    folder this process may write in (not a file, not read-only)."""
    path = Path(path)
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir():
        raise InvalidInput(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"{option} {path}: {folder} cannot be written to; choose another path")


def atomic_write_yaml(path: str | Path, obj) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, width=120))


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path to write a file (or directory) at; rename on success.

    An existing target is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        _default_modes(tmp)
        if path.is_dir() and not path.is_symlink():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _default_modes(tmp: Path) -> None:
    """Files as readable as any the user creates (safetensors writes its files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for f in ([tmp] if tmp.is_file() else [p for p in tmp.rglob("*") if p.is_file()] if tmp.is_dir() else []):
        if not f.is_symlink():
            os.chmod(f, 0o666 & ~mask)


def json_digest(obj, length: int = 16) -> str:
    """A short content hash of `obj` as canonical JSON (sorted keys; other values by str()): cache
    keys and study identities."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def finite_or_none(value):
    """A finite float, or None for None / inf / NaN (how JSON and trial attributes store them)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# A vacuously true property (nothing to check on a prompt) has robustness +inf, which strict
# JSON cannot hold: caches store it as this string; null stays "could not be scored" (-inf, NaN).
VACUOUS = "inf"


def robustness_to_json(value):
    """A robustness as a cache stores it: a finite float, VACUOUS for +inf, None for -inf / NaN."""
    if value is not None and float(value) == math.inf:
        return VACUOUS
    return finite_or_none(value)


def robustness_from_json(value) -> float:
    """Inverse of robustness_to_json: VACUOUS -> +inf, None -> -inf (not scored, a violation)."""
    if value == VACUOUS:
        return math.inf
    return -math.inf if value is None else float(value)


def jsonable(obj):
    """obj with numpy scalars and arrays as Python numbers and lists, paths as text, tuples as
    lists and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return jsonable(obj.tolist())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, else what open() would give a new file (0666 minus umask)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once (at import, single-threaded)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        _unlink(p)


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


# --- reading, with errors that say where ---------------------------------------------------------

def read_text(path: str | Path, *, what: str, expected: str | None = None) -> str:
    """A UTF-8 text file; a missing or unreadable one is a one-line error: "no such `what`", or
    what was expected instead (`expected`, default `what`)."""
    path = Path(path)
    expected = expected or what
    try:
        return path.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Windows editors) is not text
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory; expected a {expected}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text; expected a {expected}") from None
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read: {e.strerror or e}") from None


class _StrictLoader(yaml.SafeLoader):
    """safe_load without aliases (a few hundred bytes of nested *refs expand to gigabytes once
    written out: the 'billion laughs') and without repeated keys (the last one silently won)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias *{event.anchor} is not read here (anchors and aliases are refused); write the "
                f"value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in this mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str):
    """YAML through a safe loader (no Python tags, no aliases, no repeated keys); a syntax error is
    reported as FILE:LINE:COL."""
    try:
        loader = _StrictLoader(text)  # its reader already refuses control characters
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise InvalidInput(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise InvalidInput(f"{source}: not valid YAML: nested too deeply") from None


def read_yaml(path: str | Path, *, what: str, expected: str | None = None):
    return parse_yaml(read_text(path, what=what, expected=expected), str(path))


def read_json(path: str | Path, *, missing_ok: bool = True, hint: str = "rerun the search to rewrite it"):
    """A JSON file, or None when it is absent (and `missing_ok`); a damaged one is a clear error."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{path}: not valid JSON ({e}); {hint}") from None


# --- the cache directory and shipped resources ---------------------------------------------------

def cache_dir() -> Path:
    """Cache root: $TOGGLE_CACHE_DIR, else $XDG_CACHE_HOME/toggle, else ~/.cache/toggle."""
    env = os.environ.get("TOGGLE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "toggle"


def resource_dir(kind: str) -> Path:
    """Directory of shipped resources: kind is 'specs', 'search' or 'prompts'. They sit at the
    top of the repository (readable, copyable); an editable install finds them there, a
    regular install finds the copies placed under <prefix>/share/toggle."""
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
    """A profile file that exists is used as is; a bare name ('default'), or search/NAME.yaml as
    `--help` writes it from any folder, is the shipped profile of that name; any other path is
    the user's own (and missing)."""
    path = Path(name)
    if path.exists() or (path.suffix in (".yaml", ".yml") and path.parent.name not in ("", "search")):
        return path
    return resource_dir("search") / f"{path.stem}.yaml"
