"""Benchmark: the full ULX3S 85F flow for MiniLM (synthesis, then place and route with a
seed sweep, one nextpnr process per core): resources, Fmax, the critical path and the
place-and-route time, for the generator's own sizing (the largest design placed at 75 MHz
or faster, ``gen/placed.json``) and for the design the speed objective would pick without
that envelope (128 lanes / 128 MAC units: never placed; a run that meets 75 MHz is a row to
add to ``placed.json``).

Run: ``python -m pytest -m benchmark bench/test_flow_ulx3s.py -s`` (``PNR_SEEDS=N`` seeds,
default one per core; each run takes tens of minutes at 64 lanes on one core).
"""

import json
import os
import time

import pytest

from gen.__main__ import main

DESIGNS = {"default": [], "128-lane": ["--fix", "lanes=128,mac_units=128"]}


@pytest.mark.benchmark
@pytest.mark.parametrize("design", DESIGNS)
def test_minilm_ulx3s_synth_and_pnr(tmp_path, design):
    out = tmp_path / "minilm"
    seeds = int(os.environ.get("PNR_SEEDS", os.cpu_count() or 1))
    t0 = time.monotonic()
    assert main(["build", "--model", "minilm", "--out", str(out), *DESIGNS[design], "--pnr",
                 "--seeds", str(seeds), "--quiet"]) == 0
    wall = time.monotonic() - t0
    rep = json.loads((out / "report.json").read_text())
    res, p = rep["resources"]["synth"], rep["pnr"]
    print(f"\n{design}: config {rep['config_hash']}: {rep['config']['lanes']} lanes, "
          f"{rep['config']['mac_units']} MAC units; synth {res}; Fmax {p['fmax_mhz']} MHz "
          f"(seeds {p['seeds'] or p['seed']}); P&R {p['seconds']} s of the best seed, build "
          f"{wall:.0f} s; critical path {p['critical_path']}; board {rep['board']}; the "
          f"sizer's clock {rep['choice']['clock_mhz']} MHz "
          f"{'met' if p['fmax_mhz'] >= rep['choice']['clock_mhz'] else 'missed'}")
    b = rep["budget"]
    assert res["lut4"] <= b["lut4"] and res["dp16kd"] <= b["dp16kd"]
    assert res["mult18x18d"] <= b["mult18x18d"]
    assert p["fmax_mhz"] and (out / "synth" / "timing.md").exists()
    assert rep["board"]["clock_hz"] <= p["fmax_mhz"] * 1e6
    # the row that records this measurement in gen/placed.json (gen.placed)
    row = rep["placed_row"]
    assert row["design"] == p["design"] and row["fmax_mhz"] == p["fmax_mhz"]
    print("placed.json row:", json.dumps(row))
