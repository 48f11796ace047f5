"""Shared fixtures: small converted models, built once per session."""

import pytest

from models.arch import load_model
from models.convert import ConvertOptions, convert


@pytest.fixture(scope="session")
def tiny_opt():
    return load_model("tiny-opt")


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_opt_cm(tiny_opt):
    return convert(tiny_opt, ConvertOptions(calib_sentences=6))
