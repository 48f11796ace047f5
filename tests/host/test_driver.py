"""The driver against the simulated device: identify, a whole model bit-exact, faults."""

import pytest

from host.driver import Device, DeviceError, LinkError
from host.run import run_model
from host.transport import FAULTS, FaultyTransport, SerialTransport
from hw.config import PRESETS
from hw.engine import BufId

from .conftest import CFG, FAST


def test_identify_and_refuse_another_config(sim):
    t = SerialTransport(sim.url)
    assert Device(t, CFG, **FAST).identify()["lanes"] == CFG.lanes
    with pytest.raises(DeviceError, match="config hash .* differs from the bundle's"):
        Device(t, PRESETS["tiny"], **FAST).identify()
    t.close()


def test_write_read_back_and_verify(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, verify_weights=True, **FAST)
    rows = [[(i * 7 + j) % 15 - 7 for j in range(CFG.lanes)] for i in range(40)]
    dev.write(BufId.WEIGHTS, rows, 3)
    raw = dev.read(BufId.WEIGHTS, 3, 40)
    assert len(raw) == 40
    with pytest.raises(DeviceError, match="READ_BUF .* refused: ERR_ARG"):
        dev.read(BufId.WEIGHTS, CFG.weight_depth - 1, 2)  # past the end: the core refuses
    t.close()


@pytest.mark.slow
def test_whole_model_bit_exact_with_counters_and_cycles(sim, tiny_llama):
    lm, cm = tiny_llama
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    res = run_model(cm, lm.tokenize("A small model, run on simulated hardware."), dev)
    t.close()
    assert res.bit_exact
    assert all(r.exact and r.counters_match for r in res.records)
    # the generator's cycle model predicts every GEMM's busy counter exactly
    assert all(r.counters["busy"] == r.predicted_cycles for r in res.records)
    assert {r.name for r in res.records} == set(res.golden_events)


@pytest.mark.slow
def test_faults_at_a_high_rate_still_exact(sim, tiny_llama):
    lm, cm = tiny_llama
    t = FaultyTransport(SerialTransport(sim.url), rate=0.15, seed=3)
    dev = Device(t, CFG, **FAST, retries=12)
    res = run_model(cm, lm.tokenize("Noise on the line."), dev)
    t.close()
    assert res.bit_exact
    kinds = {k.split(":")[1] for k in t.injected}
    assert kinds == set(FAULTS), t.injected  # every kind was exercised ...
    assert {k.split(":")[0] for k in t.injected} == {"tx", "rx"}  # ... in both directions
    assert dev.stats["retries"] > 10 and dev.stats["bad_frames"] > 0


class _Deaf:
    """A transport to a device that never answers."""

    def send(self, data):
        pass

    def recv(self, timeout):
        return b""

    def close(self):
        pass


def test_exhausted_retries_are_a_clear_error():
    dev = Device(_Deaf(), CFG, timeout=0.01, quiet=0.0, retries=3)
    with pytest.raises(LinkError, match=r"IDENTIFY \(seq 1\): no good answer after 4 attempts "
                                        r"\(timeout, timeout, timeout, timeout\)"):
        dev.identify()


def test_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultyTransport(_Deaf(), 0.1, kinds=("flip", "melt"))
