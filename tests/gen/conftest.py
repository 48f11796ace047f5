"""Fixtures of the generator's tests."""

import pytest

import gen.build as gen_build


@pytest.fixture
def fast_model(tiny_llama_cm, tiny_llama, monkeypatch):
    """Builds from the session's converted tiny-llama (no loading or converting)."""
    monkeypatch.setattr(gen_build, "load", lambda name: tiny_llama)
    monkeypatch.setattr(gen_build.cache, "converted",
                        lambda lm_, opts, use=True, progress=False: (tiny_llama_cm, False))
