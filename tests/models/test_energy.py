"""The energy table and what events cost (models/energy.py)."""

import pytest

from models.contract import Events
from models.energy import DEFAULT_TABLE, add_energy, event_energy


def test_additions_cost_the_table_at_its_widths_and_in_between_linearly():
    t = DEFAULT_TABLE
    assert add_energy(8, t) == t["int8_add"] and add_energy(4, t) == t["int8_add"]
    assert add_energy(16, t) == t["int16_add"] and add_energy(32, t) == t["int32_add"]
    assert add_energy(24, t) == pytest.approx((t["int16_add"] + t["int32_add"]) / 2)
    assert add_energy(64, t) == pytest.approx(2 * t["int32_add"])
    widths = range(1, 65)
    costs = [add_energy(b, t) for b in widths]
    assert costs == sorted(costs)  # never cheaper for more bits


def test_spike_accumulates_are_charged_at_the_lane_width_and_nothing_else_is():
    ev = Events(acc_spike=1000, acc_step=500, macs=70, outs=9)
    wide, narrow = event_energy(ev, DEFAULT_TABLE, 640), event_energy(ev, DEFAULT_TABLE, 640, 21)
    assert wide["spike_accumulate"] == pytest.approx(1500 * DEFAULT_TABLE["int32_add"])
    assert narrow["spike_accumulate"] == pytest.approx(1500 * add_energy(21, DEFAULT_TABLE))
    for k in ("mac", "requantize", "sram"):
        assert wide[k] == narrow[k]
    assert narrow["total"] == pytest.approx(sum(v for k, v in narrow.items() if k != "total"))
