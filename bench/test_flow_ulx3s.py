"""Benchmark: the full ULX3S 85F flow for MiniLM (synthesis and place and route, many
minutes single-threaded). Prints resources, Fmax and the per-lane costs.

Run: ``python -m pytest -m benchmark bench/test_flow_ulx3s.py -s``.
"""

import json

import pytest

from gen.__main__ import main


@pytest.mark.benchmark
def test_minilm_ulx3s_synth_and_pnr(tmp_path):
    out = tmp_path / "minilm"
    assert main(["build", "--model", "minilm", "--out", str(out), "--fix",
                 "lanes=64,mac_units=16", "--pnr", "--quiet"]) == 0
    rep = json.loads((out / "report.json").read_text())
    res = rep["resources"]["synth"]
    print(f"\nconfig {rep['config_hash']}: {rep['config']['lanes']} lanes, "
          f"{rep['config']['mac_units']} MAC units; synth {res}; Fmax {rep['fmax_mhz']} MHz")
    b = rep["budget"]
    assert res["lut4"] <= b["lut4"] and res["dp16kd"] <= b["dp16kd"]
    assert res["mult18x18d"] <= b["mult18x18d"]
