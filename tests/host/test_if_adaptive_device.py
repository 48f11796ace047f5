"""SNN2ANN's inexact neuron (``if-adaptive``) on the simulated device: the host builds its
unit spike events (``accel.tiling`` -> ``models.encodings.spike_events``), the spike array
adds them like rate-coded spikes, and the result equals the golden model's GEMMs computed
from the neuron's spike counts, bit for bit, with the counters equal to its events."""

import pytest

from host.driver import Device
from host.run import run_model
from host.transport import SerialTransport
from models.convert import ConvertOptions, convert
from models.encodings import Encoding

from .conftest import CFG, FAST


@pytest.mark.slow
def test_tiny_model_with_the_adaptive_neuron_is_bit_exact_on_the_device(sim, tiny_opt):
    cm = convert(tiny_opt, ConvertOptions(encoding=Encoding("if-adaptive", steps=4),
                                          calib_sentences=6))
    assert {n.act.encoding.kind for n in cm.nodes.values()} == {"if-adaptive"}
    t = SerialTransport(sim.url)
    res = run_model(cm, tiny_opt.tokenize("Hard reset, adaptive threshold."), Device(t, CFG,
                                                                                       **FAST))
    t.close()
    assert res.bit_exact
    assert all(r.exact and r.counters_match for r in res.records)
    assert sum(r.counters["spikes"] for r in res.records) > 0
    assert all(r.counters["acc_step"] == 0 for r in res.records)  # no TTFS window
