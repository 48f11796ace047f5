"""``accel.baselines.scheme`` charges each time-step window's spike additions at the lane
width that window needs: a model with GEMMs of different windows (PV's unsigned 15 steps
beside the others' 7) is the sum of its parts, not all of it at the longest window."""

import pytest

from accel import baselines
from accel.config import PRESETS
from accel.counters import TRAFFIC, sram_bits
from models.contract import Events
from models.energy import DEFAULT_TABLE, event_energy

CFG = PRESETS["tiny"]
TRAFFIC_ = {k: 100 for k in TRAFFIC}


def _ev(scale: int) -> Events:
    return Events(spikes=10 * scale, acc_spike=300 * scale, acc_step=40 * scale,
                  macs=20 * scale, outs=5 * scale)


def test_windows_sum_events_per_window():
    w = baselines.windows([(7, _ev(1)), (15, _ev(2)), (7, _ev(3)), (1, _ev(4))])
    assert sorted(w) == [1, 7, 15]
    assert w[7] == _ev(1) + _ev(3) and w[15] == _ev(2) and w[1] == _ev(4)
    assert baselines.total(w.values()) == baselines.total([_ev(1), _ev(2), _ev(3), _ev(4)])


def test_a_scheme_with_several_windows_is_the_sum_of_its_windows():
    assert CFG.lane_bits(15) > CFG.lane_bits(7)  # else this test shows nothing
    per = {7: _ev(1), 15: _ev(2)}
    s = baselines.scheme("hybrid", 15, per, DEFAULT_TABLE, TRAFFIC_, "m", CFG)
    parts = {w: event_energy(ev, DEFAULT_TABLE, add_bits=CFG.lane_bits(w))
             for w, ev in per.items()}
    assert s["compute_energy_pj"] == pytest.approx(sum(e["total"] for e in parts.values()))
    assert [(w["time_steps"], w["lane_bits"]) for w in s["windows"]] == [
        (7, CFG.lane_bits(7)), (15, CFG.lane_bits(15))]
    for w in s["windows"]:
        assert w["compute_energy_pj"] == pytest.approx(parts[w["time_steps"]]["total"])
    bits = sram_bits(CFG, TRAFFIC_)
    assert s["sram_bits"] == bits > 0
    e = s["energy_pj"]
    assert e["sram"] == pytest.approx(bits / 64 * DEFAULT_TABLE["sram_64b"])
    assert e["total"] == pytest.approx(s["compute_energy_pj"] + e["sram"])
    for k in ("spike_accumulate", "mac", "requantize"):
        assert e[k] == pytest.approx(sum(p[k] for p in parts.values()))
    assert s["time_steps"] == 15 and s["lane_bits"] == CFG.lane_bits(15)
    # all of it at the longest window (the single-window form) charges more
    longest = baselines.scheme("hybrid", 15, baselines.total(per.values()), DEFAULT_TABLE,
                               TRAFFIC_, "m", CFG)
    assert longest["compute_energy_pj"] > s["compute_energy_pj"]
    assert [w["time_steps"] for w in longest["windows"]] == [15]


def test_one_window_is_the_single_events_form():
    a = baselines.scheme("x", 7, _ev(3), DEFAULT_TABLE, TRAFFIC_, "m", CFG)
    b = baselines.scheme("x", 7, {7: _ev(3)}, DEFAULT_TABLE, TRAFFIC_, "m", CFG)
    assert a == b
    e = event_energy(_ev(3), DEFAULT_TABLE, sram_bits(CFG, TRAFFIC_), CFG.lane_bits(7))
    assert a["energy_pj"] == pytest.approx(e)
    assert a["compute_energy_pj"] == pytest.approx(e["total"] - e["sram"])


@pytest.mark.slow
def test_predicted_charges_each_gemm_its_own_window(tiny_opt, tiny_opt_cm):
    """The prediction of ``gen build``: PV (unsigned, 15 steps, the default) and the other
    GEMMs (7) each at their own lanes; the per-window events are the traced GEMMs'."""
    from accel.tiling import tiled_events

    cm = tiny_opt_cm
    ids = tiny_opt.tokenize("A few tokens for the windows.")
    calls = baselines.trace(cm, ids)
    assert {c.encoding.time_steps for c in calls} == {7, 15}
    assert baselines.time_steps(cm) == 15
    s, layers = baselines.predicted(CFG, "hybrid", baselines.time_steps(cm), calls,
                                    DEFAULT_TABLE, "m")
    for w in s["windows"]:
        ev = baselines.total(tiled_events(CFG, c) for c in calls
                             if c.encoding.time_steps == w["time_steps"])
        assert w["compute_energy_pj"] == pytest.approx(event_energy(
            ev, DEFAULT_TABLE, add_bits=CFG.lane_bits(w["time_steps"]))["total"])
    assert s["compute_energy_pj"] == pytest.approx(sum(
        event_energy(ev, DEFAULT_TABLE, add_bits=CFG.lane_bits(
            next(c.encoding.time_steps for c in calls if c.name == name)))["total"]
        for name, ev in layers.items()))
