"""Shared fixtures: a simulated device (Verilator, built once per session)."""

import pytest

from accel.config import AccelConfig
from accel.resident import resident_image
from host.driver import Device
from host.run import RunResult, run_model
from host.transport import SerialTransport
from sim.device import SimDevice

from ..helpers import FAST, LINK_TIMEOUT, simulator_binary  # noqa: F401 (re-exported)

#: Small enough to build quickly, with several N and K tiles for tiny-llama; with the spike
#: encoder, so that every host test's TTFS tiles go through it.
CFG = AccelConfig(lanes=16, mac_units=4, weight_depth=64, max_rows=32,
                  spike_event_depth=4096, mac_event_depth=256, spike_encoder=True)


@pytest.fixture(scope="session")
def sim_binary(sim_builds):
    return simulator_binary(CFG, sim_builds)


@pytest.fixture
def sim(sim_binary):
    with SimDevice(sim_binary) as dev:
        yield dev


def run_resident(sim, cm, ids) -> RunResult:
    """``cm`` run on ``ids`` on the simulated device ``sim``, its model loaded into the
    device's memory first (``accel.resident.resident_image``)."""
    t = SerialTransport(sim.url)
    try:
        dev = Device(t, CFG, **FAST)
        dev.load_image(resident_image(CFG, cm))
        return run_model(cm, ids, dev)
    finally:
        t.close()
