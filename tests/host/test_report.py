"""The baselines of the run report (``accel.baselines``, shared with ``gen build``): both
FP16 memory models, operations-only and with-memory reductions, one memory model per row,
in ``report.json`` and ``report.md``."""

import json

import pytest

from accel import baselines
from accel.board import board_estimate
from accel.config import PRESETS
from accel.counters import COUNTERS, TRAFFIC, sram_bits
from host import report
from models.encodings import Encoding
from models.energy import DEFAULT_TABLE

CFG = PRESETS["tiny"]
SHAPES = [(3, 5, 10), (7, 16, 4)]  # (M, K, N); lanes = 4: 3 and 1 output tiles


def test_fp16_operands_once_and_on_the_dense_dataflow():
    once = baselines.fp16_operands(SHAPES)
    dense = baselines.fp16_operands(SHAPES, CFG.lanes)
    assert once == {"weights": 5 * 10 + 16 * 4, "activations": 3 * 5 + 7 * 16,
                    "outputs": 3 * 10 + 7 * 4}
    # each row re-reads its tile's weights; activations once per output tile
    assert dense == {"weights": 3 * 5 * 10 + 7 * 16 * 4, "activations": 3 * 5 * 3 + 7 * 16,
                     "outputs": once["outputs"]}
    a = baselines.fp16_baseline(baselines.FP16, SHAPES, DEFAULT_TABLE)
    b = baselines.fp16_baseline(baselines.FP16_DENSE, SHAPES, DEFAULT_TABLE, CFG.lanes)
    assert a["macs"] == b["macs"] == 3 * 5 * 10 + 7 * 16 * 4
    assert a["compute_energy_pj"] == b["compute_energy_pj"] == pytest.approx(
        a["macs"] * (DEFAULT_TABLE["fp16_mult"] + DEFAULT_TABLE["fp16_add"]))
    assert a["sram_bits"] == 16 * sum(once.values())
    assert b["energy_pj"]["sram"] == pytest.approx(
        16 * sum(dense.values()) / 64 * DEFAULT_TABLE["sram_64b"])
    assert b["energy_pj"]["total"] > a["energy_pj"]["total"]
    assert a["memory_model"] != b["memory_model"]


def _layer(scale: int) -> dict:
    """A layer row as ``report.layer_rows`` makes it: every counter's delta."""
    c = dict.fromkeys(COUNTERS, 0)
    c.update(busy=1000 * scale, spikes=50 * scale, acc_spike=200 * scale,
             acc_step=70 * scale, macs=30 * scale)
    for k in TRAFFIC:  # whatever the traffic counters are called
        c[k] = 40 * scale
    return {"counters": c, "measured_cycles": c["busy"], "time_steps": 7}


def test_the_measured_hybrid_charges_each_layer_its_own_window():
    """A 7-step and a 15-step layer (PV's unsigned window beside the others): each layer's
    spike additions at its own lane width, as the build's prediction charges them."""
    a, b = _layer(1), {**_layer(2), "time_steps": 15}
    h = report.hybrid(CFG, [a, b], 15, DEFAULT_TABLE)
    none = dict.fromkeys(TRAFFIC, 0)

    def alone(rows, steps):
        ev = baselines.total(report.counted_events(r["counters"]) for r in rows)
        return baselines.scheme("x", steps, ev, DEFAULT_TABLE, none,
                                baselines.MEMORY_MODELS["measured"], CFG)["compute_energy_pj"]

    assert h["compute_energy_pj"] == pytest.approx(alone([a], 7) + alone([b], 15))
    assert h["compute_energy_pj"] < alone([a, b], 15)  # both at the longest window: more


def _versus(traffic_scale: int = 1):
    layers = [_layer(traffic_scale), _layer(2 * traffic_scale)]
    hybrid = report.hybrid(CFG, layers, 7, DEFAULT_TABLE)
    acc = baselines.scheme("w4a8 (int8, T=1)", 1, report.counted_events(_layer(3)["counters"]),
                           DEFAULT_TABLE, {k: 1 for k in TRAFFIC},
                           baselines.MEMORY_MODELS["converted"], CFG)
    return layers, hybrid, baselines.compare(CFG, DEFAULT_TABLE, hybrid, SHAPES, [acc])


def test_the_measured_hybrid_is_charged_its_traffic_counters():
    layers, hybrid, _ = _versus()
    bits = sum(sram_bits(CFG, r["counters"]) for r in layers)
    assert hybrid["sram_bits"] == bits > 0
    assert hybrid["traffic"] == {k: 40 + 80 for k in TRAFFIC}
    assert hybrid["measured_cycles"] == 3000
    assert hybrid["energy_pj"]["total"] == pytest.approx(
        hybrid["compute_energy_pj"] + bits / 64 * DEFAULT_TABLE["sram_64b"])
    assert hybrid["memory_model"] == baselines.MEMORY_MODELS["measured"]


def test_reductions_with_and_without_memory():
    _, hybrid, versus = _versus(traffic_scale=20)
    base, reds = versus["baselines"], versus["reductions"]
    assert [b["name"] for b in base] == [baselines.FP16, baselines.FP16_DENSE,
                                         "w4a8 (int8, T=1)"]
    assert [r["baseline"] for r in reds] == [b["name"] for b in base]
    for b, r in zip(base, reds, strict=True):
        assert r["memory_model"] == b["memory_model"] and b["memory_model"]
        for key, mine, theirs in (
                ("compute_energy_reduction_pct", hybrid["compute_energy_pj"],
                 b["compute_energy_pj"]),
                ("energy_reduction_pct", hybrid["energy_pj"]["total"], b["energy_pj"]["total"]),
                ("time_step_reduction_pct", hybrid["time_steps"], b["time_steps"])):
            if key == "time_step_reduction_pct" and b["name"].startswith("fp16"):
                assert r[key] is None  # an ANN has no time steps
                continue
            assert r[key] == pytest.approx(100 * (1 - mine / theirs))
    fp16, dense = base[0], base[1]
    # the hybrid moves more bits than FP16 moved once: memory eats into its advantage
    assert hybrid["sram_bits"] > fp16["sram_bits"]
    assert reds[0]["energy_reduction_pct"] < reds[0]["compute_energy_reduction_pct"]
    assert dense["energy_pj"]["total"] >= fp16["energy_pj"]["total"]
    assert reds[1]["energy_reduction_pct"] >= reds[0]["energy_reduction_pct"]
    assert reds[1]["compute_energy_reduction_pct"] == reds[0]["compute_energy_reduction_pct"]


def test_report_md_and_json_carry_both_fp16_rows_and_memory_models(tmp_path):
    _, hybrid, versus = _versus()
    rep = {"model": "tiny-llama", "tokens": 14, "bit_exact": True, "device": "simulator",
           "config_hash": CFG.hash_text, "wall_s": 1.0, "link": {"bytes": 10, "retries": 0},
           "layers": [], "hybrid": hybrid, **versus}
    report.write(rep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "reduction, operations only" in md and "reduction, with memory" in md
    for b, r in zip(versus["baselines"], versus["reductions"], strict=True):
        row = rows[b["name"]]
        assert b["memory_model"] in row
        assert f"{r['compute_energy_reduction_pct']:.2f} %" in row
        assert f"{r['energy_reduction_pct']:.2f} %" in row
    assert baselines.MEMORY_MODELS["measured"] in rows["hybrid (this run, device)"]
    assert list(rows).index("fp16") < list(rows).index("fp16 (dense dataflow)")
    back = json.loads((tmp_path / "report.json").read_text())
    assert back["reductions"][1]["energy_reduction_pct"] == pytest.approx(
        versus["reductions"][1]["energy_reduction_pct"])
    assert (tmp_path / "energy.png").stat().st_size > 0


@pytest.mark.slow
def test_a_converted_baseline_is_predicted_on_this_accelerator(tiny_opt):
    """The one prediction pipeline: golden events under the device's tiling, the cycle
    model's traffic, whether or not the caller has the predictions already."""
    from accel.cycles import gemm_cycles
    from accel.tiling import tiled_events
    from accel.workload import GemmWork
    from models.convert import convert

    ids = tiny_opt.tokenize("A few tokens for the baselines.")
    cm = convert(tiny_opt, baselines.options(Encoding("ttfs", 8)))
    b = baselines.converted_baseline(CFG, "ttfs 8-bit (T=255)", cm, ids, DEFAULT_TABLE)
    calls = baselines.trace(cm, ids)
    preds = [gemm_cycles(CFG, GemmWork.of(c)) for c in calls]
    again, layers = baselines.predicted(CFG, b["name"], 255, calls, DEFAULT_TABLE,
                                        b["memory_model"], preds=preds)
    assert again == b
    assert b["time_steps"] == 255 and b["predicted_cycles"] == sum(p.cycles for p in preds)
    assert b["sram_bits"] == sum(sram_bits(CFG, p.traffic()) for p in preds) > 0
    assert set(layers) == {c.name for c in calls}
    acc_step = sum(tiled_events(CFG, c).acc_step for c in calls)
    assert sum(e.acc_step for e in layers.values()) == acc_step > 0
    assert b["energy_pj"]["total"] > b["compute_energy_pj"] > 0
    with pytest.raises(ValueError, match="predictions"):
        baselines.predicted(CFG, "x", 1, calls, DEFAULT_TABLE, "", preds=preds[1:])


def test_board_estimate_adds_link_time_round_trips_and_compute():
    # 1,000 bytes out, 500 back, 14 requests in 10 round trips, 250,000 cycles, 5 tokens
    b = board_estimate({"bytes_tx": 1000, "bytes_rx": 500, "frames_tx": 14, "waits": 10},
                              250_000, 5)
    assert b["compute_s"] == pytest.approx(0.01)  # 25 MHz
    one = b["by_baud"]["1000000"]
    assert one["link_s"] == pytest.approx(0.015)  # 15,000 bits at 1 Mbaud
    assert one["round_trips_s"] == pytest.approx(0.01)
    assert one["total_s"] == pytest.approx(0.035)
    assert one["tokens_per_s"] == pytest.approx(5 / 0.035)
    assert one["link_share"] == pytest.approx(0.025 / 0.035)
    assert b["by_baud"]["3000000"]["link_s"] == pytest.approx(0.005)
    # at the bundle's board clock (board.json): 75 MHz makes the compute three times shorter
    fast = board_estimate({"bytes_tx": 1000, "bytes_rx": 500, "frames_tx": 14, "waits": 10},
                                 250_000, 5, clock_hz=75e6)
    assert fast["compute_s"] == pytest.approx(0.01 / 3) and "75 MHz" in fast["assumes"]
