"""Test-wide settings and fixtures: Hypothesis without wall-clock checks; the build cache
(gen/cache.py) lives in a temporary folder; simulators are built once per run, whatever
the number of test workers; the small models every test tree uses, loaded and converted
once per session (the built-in tiny ones by name, odd-sized ones through the
:func:`small_model` factory)."""

import os

import pytest
from hypothesis import HealthCheck, settings

from models.arch import load_model, random_model, tiny_config
from models.convert import ConvertOptions, convert

# The machines are shared: Hypothesis's wall-clock checks (input generation "too slow",
# per-example deadlines) fail on load, not on a defect. Every example still runs.
settings.register_profile("shared", suppress_health_check=[HealthCheck.too_slow],
                          deadline=None)
settings.load_profile("shared")


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
def sim_builds(tmp_path_factory):
    """Where simulators are built in this run: one folder shared by parallel test workers
    (pytest-xdist, ``make test``), which take turns building a design
    (``sim.verilator.build_lock``) and then share its binary."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder = base / "sim-builds"
    folder.mkdir(exist_ok=True)
    return folder


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


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """A factory ``small_checkpoint(family, seed=0, **sizes) -> Path``: the folder of a
    seeded random Hugging Face checkpoint of ``models.arch.tiny_config(family, **sizes)``,
    saved once per session for each set of arguments (callers only read it)."""
    made = {}

    def make(family: str, seed: int = 0, **sizes):
        key = (family, seed, tuple(sorted(sizes.items())))
        if key not in made:
            d = tmp_path_factory.mktemp(f"{family}-seed{seed}")
            random_model(tiny_config(family, **sizes), seed=seed).save_pretrained(d)
            made[key] = d
        return made[key]

    return make


@pytest.fixture(scope="session")
def small_model(small_checkpoint):
    """A factory ``small_model(family, seed=0, **sizes) -> (LoadedModel, ConvertedModel)``:
    :func:`small_checkpoint` loaded and converted with 4 calibration sentences, once per
    session for each set of arguments (odd sizes: no multiple of the lanes)."""
    made = {}

    def make(family: str, seed: int = 0, **sizes):
        key = (family, seed, tuple(sorted(sizes.items())))
        if key not in made:
            lm = load_model(small_checkpoint(family, seed, **sizes))
            made[key] = lm, convert(lm, ConvertOptions(calib_sentences=4))
        return made[key]

    return make
