"""Test-wide settings: the build cache (gen/cache.py) lives in a temporary folder."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_build_cache(tmp_path_factory):
    old = os.environ.get("SPIKELLM_CACHE")
    os.environ["SPIKELLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SPIKELLM_CACHE", None)
    else:
        os.environ["SPIKELLM_CACHE"] = old
