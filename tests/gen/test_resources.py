"""The resource model against what Yosys counted for the designs that were placed and
routed (``gen/placed.json``'s ``synth``: measured, not estimated). The sizer compares
candidates with these designs on the estimate's scale, so an estimate that drifts from the
gateware makes it choose wrongly; the full sweep the model is fitted to is a benchmark
(``bench/test_resource_fit.py``)."""

import json

import pytest

from gen.placed import PLACED_JSON, load
from gen.resources import estimate

ROWS = json.loads(PLACED_JSON.read_text())["placed"]


@pytest.mark.parametrize("i", range(len(ROWS)), ids=[r["name"] for r in ROWS])
def test_estimate_is_within_the_fit_of_each_placed_designs_synthesis(i):
    placed, synth = load()[i], ROWS[i]["synth"]
    est = estimate(placed.cfg)
    assert abs(est.lut4 / synth["lut4"] - 1) <= 0.035, (est, synth)
    assert abs(est.ff / synth["ff"] - 1) <= 0.035, (est, synth)
    assert est.bram == synth["dp16kd"]
    assert synth["mult18x18d"] <= est.dsp <= synth["mult18x18d"] + 2
