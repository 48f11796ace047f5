"""Fixtures of the generator's tests."""

import pytest

from ..helpers import reuse_conversion


@pytest.fixture
def fast_model(tiny_llama_cm, tiny_llama, monkeypatch):
    """Builds from the session's converted tiny-llama (no loading or converting)."""
    reuse_conversion(monkeypatch, tiny_llama, tiny_llama_cm)
