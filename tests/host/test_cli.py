"""``python -m host run --bundle DIR --sim`` on a generated bundle, end to end."""

import json

import pytest

from gen.__main__ import main as gen_main
from host.__main__ import main


@pytest.mark.slow
def test_run_a_generated_bundle_on_the_simulator(tmp_path, capsys):
    out = tmp_path / "b"
    assert gen_main(["build", "--model", "tiny-opt", "--out", str(out), "--quiet", "--fix",
                     "lanes=8,mac_units=2", "--tokens", "16"]) == 0
    assert main(["run", "--bundle", str(out), "--sim", "--quiet", "--text",
                 "Twelve tokens or so of text for the tiny model."]) == 0
    assert "BIT-EXACT" in capsys.readouterr().out
    rep = json.loads((out / "run" / "report.json").read_text())
    assert rep["bit_exact"] is True
    assert rep["totals"]["measured_cycles"] == rep["totals"]["predicted_cycles"] > 0
    names = [b["name"] for b in rep["baselines"]]
    assert names[0] == "fp16" and len(rep["reductions"]) == len(names)
    for r in rep["layers"]:
        assert r["bit_exact"] and r["counters_match"] and r["cycle_ratio"] == 1.0
        assert r["energy_pj"]["total"] > 0
    for f in ("report.md", "cycles.png", "energy.png"):
        assert (out / "run" / f).exists()
    # a compiled program that tiles a layer differently is refused, naming the layer
    prog = json.loads((out / "program.json").read_text())
    prog["gemms"][1]["tiles"] = prog["gemms"][1]["tiles"][:1]
    (out / "program.json").write_text(json.dumps(prog))
    assert main(["run", "--bundle", str(out), "--sim", "--quiet"]) == 2
    assert f"program.json: {prog['gemms'][1]['gemm']} is tiled" in capsys.readouterr().err


def test_not_a_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--bundle", str(tmp_path), "--sim"]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_run_an_odd_sized_model_directory(tmp_path, capsys, small_checkpoint):
    src = small_checkpoint("gpt2", 2, hidden=40, heads=5, ffn=100, layers=1, vocab=1000)
    out = tmp_path / "b"
    assert gen_main(["build", "--model", str(src), "--out", str(out), "--quiet", "--fix",
                     "lanes=8,mac_units=2", "--tokens", "12"]) == 0
    assert main(["run", "--bundle", str(out), "--sim", "--quiet", "--text",
                 "odd sizes run on the accelerator too"]) == 0
    assert "BIT-EXACT" in capsys.readouterr().out
    rep = json.loads((out / "run" / "report.json").read_text())
    assert rep["bit_exact"] and {r["k"] for r in rep["layers"]} >= {40, 100}


@pytest.mark.slow
def test_load_then_run_from_the_external_memory(tmp_path, capsys, small_checkpoint):
    """``host load`` writes the model into a running simulated device's memory (verified);
    a later ``host run`` on the same device uses it and moves fewer link bytes than a run
    that does not (``--no-resident``)."""
    from host.__main__ import simulator

    src = small_checkpoint("gpt2", 3, hidden=40, heads=5, ffn=100, layers=1, vocab=1000)
    out = tmp_path / "b"
    assert gen_main(["build", "--model", str(src), "--out", str(out), "--quiet", "--fix",
                     "lanes=8,mac_units=2", "--tokens", "12"]) == 0
    text = ["--text", "weights from the memory"]
    with simulator(out) as dev:
        assert main(["load", "--bundle", str(out), "--port", dev.url, "--quiet"]) == 0
        assert "verified by CRC-32" in capsys.readouterr().out
        runs = {}
        for flag in ("--no-resident", None):
            args = ["run", "--bundle", str(out), "--port", dev.url, "--quiet", *text,
                    "--json", str(tmp_path / f"{flag}.json")]
            assert main(args + ([flag] if flag else [])) == 0
            runs[flag] = json.loads((tmp_path / f"{flag}.json").read_text())
    plain, resident = runs["--no-resident"], runs[None]
    assert resident["resident"]["used"] and not plain["resident"]["used"]
    assert plain["bit_exact"] and resident["bit_exact"]
    assert resident["link"]["bytes"] < plain["link"]["bytes"]
    for rep in (plain, resident):
        assert rep["link"]["gemms_measured"] == rep["link"]["gemms_predicted"]
        # the board time charges the core's counted cycles: the engine's, the encoder's,
        # the RUNs' waits for their weights' copies and the STOREs'
        core = rep["totals"]["measured_cycles"] + sum(
            r["counters"]["enc_busy"] + r["counters"]["load_wait"] + r["counters"]["store_busy"]
            for r in rep["layers"])
        assert rep["board"]["compute_s"] * rep["board"]["clock_hz"] == pytest.approx(core)
    assert sum(r["counters"]["load_wait"] for r in resident["layers"]) > 0
    # GPT-2's keys and values stay on the board (STOREd), and only there
    assert sum(r["counters"]["store_busy"] for r in resident["layers"]) > 0
    assert sum(r["counters"]["store_busy"] for r in plain["layers"]) == 0
