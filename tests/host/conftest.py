"""Shared fixtures: a simulated device (Verilator, built once per session)."""

import pytest

from accel.config import AccelConfig
from hw.top import emit_verilog
from sim.device import SimDevice, build_simulator

#: Small enough to build quickly, with several N and K tiles for tiny-llama.
CFG = AccelConfig(lanes=16, mac_units=4, weight_depth=64, max_rows=32,
                  spike_event_depth=4096, mac_event_depth=256)
#: A short link timeout (cycles) keeps fault recovery quick in the tests.
LINK_TIMEOUT = 20_000
#: Driver settings that go with it (seconds).
FAST = {"timeout": 0.3, "run_timeout": 2.0, "quiet": 0.05}


@pytest.fixture(scope="session")
def sim_binary(tmp_path_factory):
    return build_simulator(emit_verilog(CFG, link_timeout=LINK_TIMEOUT),
                           tmp_path_factory.mktemp("sim"))


@pytest.fixture
def sim(sim_binary):
    with SimDevice(sim_binary) as dev:
        yield dev
