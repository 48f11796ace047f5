"""Test-wide settings and fixtures: the build cache (gen/cache.py) lives in a temporary
folder; the small models every test tree uses, loaded and converted once per session."""

import os

import pytest

from models.arch import load_model
from models.convert import ConvertOptions, convert


@pytest.fixture(scope="session", autouse=True)
def _private_build_cache(tmp_path_factory):
    old = os.environ.get("SPIKELLM_CACHE")
    os.environ["SPIKELLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SPIKELLM_CACHE", None)
    else:
        os.environ["SPIKELLM_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llama():
    """The built-in seeded tiny LLaMA (a ``LoadedModel``)."""
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_cm(tiny_llama):
    """``tiny_llama`` converted with the default options (6 calibration sentences)."""
    return convert(tiny_llama, ConvertOptions(calib_sentences=6))


@pytest.fixture(scope="session")
def tiny_opt():
    """The built-in seeded tiny OPT."""
    return load_model("tiny-opt")


@pytest.fixture(scope="session")
def tiny_opt_cm(tiny_opt):
    """``tiny_opt`` converted with the default options (6 calibration sentences)."""
    return convert(tiny_opt, ConvertOptions(calib_sentences=6))
