"""``gen build``'s report carries the same baselines and reductions as ``host run``'s,
from the same functions (``accel.baselines``), with the hybrid as predicted."""

import json

import pytest

from accel import baselines
from gen.__main__ import main


@pytest.mark.slow
def test_build_report_has_the_baselines_with_and_without_memory(tmp_path):
    assert main(["build", "--model", "tiny-opt", "--out", str(tmp_path), "--quiet", "--fix",
                 "lanes=8,mac_units=2", "--tokens", "16"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    h, t, layers = rep["hybrid"], rep["totals"], rep["layers"]
    # the hybrid row is the build's prediction: its totals, its predicted traffic
    assert h["energy_pj"]["total"] == pytest.approx(t["energy_pj"])
    assert h["predicted_cycles"] == t["predicted_cycles"]
    assert h["sram_bits"] == sum(r["traffic"]["sram_bits"] for r in layers) > 0
    assert h["memory_model"] == baselines.MEMORY_MODELS["predicted"]
    assert h["time_steps"] == max(r["time_steps"] for r in layers if r["encoding"] != "int")
    # each GEMM is charged its own window's lanes: PV's unsigned probabilities (15 steps,
    # ``unsigned_nonneg``, default) beside the others' sign-magnitude 7; per window, the
    # hybrid's operations energy is that of the layers with that window
    assert rep["model"]["options"]["unsigned_nonneg"] is True
    assert {r["time_steps"] for r in layers if r["name"].endswith(".av")} == {15}
    assert {r["time_steps"] for r in layers if r["name"].endswith(".q")} == {7}
    wins = {w["time_steps"]: w for w in h["windows"]}
    assert {7, 15} <= set(wins) and wins[15]["lane_bits"] > wins[7]["lane_bits"]
    assert h["lane_bits"] == wins[15]["lane_bits"]
    for steps, w in wins.items():
        assert w["compute_energy_pj"] == pytest.approx(sum(
            r["energy_pj"]["total"] - r["energy_pj"]["sram"] for r in layers
            if r["time_steps"] == steps))
    assert sum(w["compute_energy_pj"] for w in wins.values()) == pytest.approx(
        h["compute_energy_pj"])
    base, reds = rep["baselines"], rep["reductions"]
    assert [b["name"] for b in base] == list(baselines.NAMES)
    for b, r in zip(base, reds, strict=True):
        assert r == baselines.reductions(h, b)  # the host's computation
        assert b["memory_model"] and r["energy_reduction_pct"] is not None
        assert r["compute_energy_reduction_pct"] is not None
    fp16, dense = base[0], base[1]
    assert fp16["macs"] == dense["macs"] == sum(r["m"] * r["k"] * r["n"] for r in layers)
    assert fp16["sram_bits"] == 16 * sum(r["k"] * r["n"] + r["m"] * r["k"] * max(1, r["heads"])
                                         + r["m"] * r["n"] for r in layers)
    assert dense["energy_pj"]["total"] >= fp16["energy_pj"]["total"]
    if h["sram_bits"] > fp16["sram_bits"]:  # memory eats into the advantage over FP16
        assert reds[0]["energy_reduction_pct"] < reds[0]["compute_energy_reduction_pct"]
    for b in base[2:]:
        assert b["predicted_cycles"] > 0 and b["sram_bits"] > 0
        assert b["memory_model"] == baselines.MEMORY_MODELS["converted"]
    md = (tmp_path / "report.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "reduction, with memory" in md and "hybrid (predicted)" in rows
    for b, r in zip(base, reds, strict=True):
        assert b["memory_model"] in rows[b["name"]]
        assert f"{r['energy_reduction_pct']:.2f} %" in rows[b["name"]]
