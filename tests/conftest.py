import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_tiny_model  # noqa: E402


from toggle.files import cache_dir  # noqa: E402

# The built-in model's de-quantised cache is worth keeping between test runs (30 s to build);
# everything else caches into a per-session temporary directory.
USER_CACHE = cache_dir()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    old = os.environ.get("TOGGLE_CACHE_DIR")
    os.environ["TOGGLE_CACHE_DIR"] = str(tmp_path_factory.mktemp("toggle-cache"))
    yield
    if old is None:
        os.environ.pop("TOGGLE_CACHE_DIR", None)
    else:
        os.environ["TOGGLE_CACHE_DIR"] = old


@pytest.fixture
def user_cache(monkeypatch):
    """Point toggle at the user's real cache (for the built-in model)."""
    monkeypatch.setenv("TOGGLE_CACHE_DIR", str(USER_CACHE))
    return USER_CACHE


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return make_tiny_model("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def builtin_model():
    """The built-in SmolLM2-135M model; loaded once per session (integration tests only)."""
    from toggle.load import builtin_gguf_path, load_model
    from toggle.errors import ModelLoadError

    try:
        builtin_gguf_path("smollm2-135m")
    except ModelLoadError as e:
        pytest.skip(str(e))
    old = os.environ.get("TOGGLE_CACHE_DIR")
    os.environ["TOGGLE_CACHE_DIR"] = str(USER_CACHE)
    try:
        return load_model("smollm2-135m")
    finally:
        if old is not None:
            os.environ["TOGGLE_CACHE_DIR"] = old
