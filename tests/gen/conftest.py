"""Shared fixtures: a converted tiny model."""

import pytest

from models.arch import load_model
from models.convert import ConvertOptions, convert


@pytest.fixture(scope="session")
def tiny_llama_cm():
    lm = load_model("tiny-llama")
    return convert(lm, ConvertOptions(calib_sentences=6)), lm
