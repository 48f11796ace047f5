"""``python -m gen build`` end to end on small models (no synthesis)."""

import json

import pytest

from accel.board import BOARD_CLOCK_HZ, BOARD_FILE, read_board
from accel.config import AccelConfig
from accel.linkcost import gemm_label
from gen.__main__ import main
from gen.placed import load
from gen.report import write_markdown
from models.arch import random_model, tiny_config
from models.bundle import load_bundle


def _check_bundle(out):
    for f in ("spikellm_top.v", "config.json", "program.json", "link.json", "report.json",
              "report.md", "report.png", "model/manifest.json"):
        assert (out / f).exists(), f
    rep = json.loads((out / "report.json").read_text())
    cfg = AccelConfig.from_json(rep["config"])
    assert rep["config_hash"] == f"0x{cfg.hash32():08x}"
    assert json.loads((out / "config.json").read_text())["hash"] == rep["config_hash"]
    assert "module spikellm_top" in (out / "spikellm_top.v").read_text()
    link = json.loads((out / "link.json").read_text())
    assert link["ident_value"]["hash"] == cfg.hash32()
    assert link["commands"]["RUN"] == 4
    prog = json.loads((out / "program.json").read_text())
    assert {g["gemm"] for g in prog["gemms"]} == {r["name"] for r in rep["layers"]}
    for g in prog["gemms"]:
        assert all(t["n"][1] - t["n"][0] <= cfg.lanes for t in g["tiles"])
        assert all(t["k"][1] - t["k"][0] <= cfg.k_tile for t in g["tiles"])
    t = rep["totals"]
    assert t["predicted_cycles"] == sum(r["predicted_cycles"] for r in rep["layers"]) > 0
    assert t["energy_pj"] > 0
    for r in rep["layers"]:
        assert r["energy_pj"]["total"] == pytest.approx(sum(
            v for k, v in r["energy_pj"].items() if k != "total"))
    # the host link, priced request by request: the resident model moves fewer bytes
    lk = rep["link"]
    assert 0 < lk["resident"]["bytes_per_token"] < lk["streamed"]["bytes_per_token"]
    for name in ("streamed", "resident"):
        r, b = lk[name], lk[name]["board"]
        assert r["bytes_per_token"] == (r["bytes_tx"] + r["bytes_rx"]) / rep["model"]["tokens"]
        # a round trip per group of pipelined requests: fewer than the requests
        assert b["round_trips"] == r["waits"] < r["frames_tx"] == b["requests"]
        assert set(b["by_baud"]) == {"1000000", "3000000"}
    # what crosses, per GEMM kind: the parts add up to the resident bytes
    parts, res = lk["resident"]["parts"], lk["resident"]
    assert {gemm_label(g["gemm"]) for g in prog["gemms"]} == set(parts)
    # bytes a token: whole bytes again once multiplied back, equal to the resident pass's
    assert round(sum(b for row in parts.values() for b in row.values())
                 * rep["model"]["tokens"]) == res["bytes_tx"] + res["bytes_rx"]
    text = (out / "report.md").read_text()
    assert "Host link and board time" in text and "What crosses with the model resident" in text
    load_bundle(out / "model")
    return rep


@pytest.mark.slow
def test_build_tiny_opt_for_the_simulator(tmp_path, capsys):
    assert main(["build", "--model", "tiny-opt", "--out", str(tmp_path), "--target", "sim",
                 "--tokens", "24", "--quiet", "--fix", "lanes=16"]) == 0
    rep = _check_bundle(tmp_path)
    assert rep["config"]["lanes"] == 16 and rep["target"] == "sim"
    assert "cycles/token" in capsys.readouterr().out


@pytest.mark.slow
def test_build_an_odd_sized_model_directory(tmp_path):
    src = tmp_path / "hf"
    random_model(tiny_config("gpt2", hidden=40, heads=5, ffn=100, layers=1, vocab=1000),
                 seed=2).save_pretrained(src)
    out = tmp_path / "out"
    assert main(["build", "--model", str(src), "--out", str(out), "--tokens", "19",
                 "--quiet", "--fix", "lanes=8", "--encoding", "rate:4"]) == 0
    rep = _check_bundle(out)
    assert {r["k"] for r in rep["layers"]} >= {40, 100}
    assert {r["encoding"] for r in rep["layers"]} >= {"rate"}


def test_refusals_are_clear(tmp_path, capsys):
    assert main(["build", "--model", "tiny-opt", "--out", str(tmp_path), "--quiet",
                 "--budget", "lut=2000"]) == 3
    assert "does not fit" in capsys.readouterr().err
    assert main(["build", "--model", str(tmp_path / "none"), "--out", str(tmp_path),
                 "--quiet"]) == 2
    with pytest.raises(SystemExit):
        main(["build", "--model", "tiny-opt", "--out", str(tmp_path), "--budget", "luts=1"])


@pytest.mark.slow
def test_a_second_build_reuses_the_conversion_and_the_verilog(tmp_path):
    args = ["build", "--model", "tiny-llama", "--quiet", "--fix", "lanes=8", "--tokens", "16"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    # b also names the clock a place and route met before (--freq without --pnr)
    assert main([*args, "--out", str(tmp_path / "b"), "--freq", "60"]) == 0
    assert main([*args, "--out", str(tmp_path / "c"), "--no-cache"]) == 0
    reps = [json.loads((tmp_path / d / "report.json").read_text()) for d in "abc"]
    # without --freq or --pnr the board estimate charges the 25 MHz oscillator, with it
    # the PLL clock at or below it, recorded for the host (board.json)
    assert not (tmp_path / "a" / BOARD_FILE).exists() and "board" not in reps[0]
    board = read_board(tmp_path / "b")
    assert board == reps[1]["board"] and board["clock_from"] == "freq"
    assert 55e6 < board["clock_hz"] <= 60e6
    for name in ("streamed", "resident"):
        clocks = [r["link"][name]["board"]["clock_hz"] for r in reps]
        assert clocks == [BOARD_CLOCK_HZ, board["clock_hz"], BOARD_CLOCK_HZ]
    assert [r["model"]["conversion_cached"] for r in reps] == [False, True, False]
    # the sizer's clock is --freq, else 75 MHz; the choice names the placed design that
    # vouches for it (gen.placed)
    assert [r["choice"]["clock_mhz"] for r in reps] == [75.0, 60.0, 75.0]
    chosen = [c for c in reps[0]["choice"]["candidates"] if c["lanes"] == 8 and c["fits"]]
    assert chosen and all(c["placed"]["fmax_mhz"] >= 75.0 for c in chosen)
    # ... and the report says whether the present gateware still emits the design that
    # measurement placed
    proof = reps[0]["choice"]["clock_proof"]
    row = next(p for p in load() if p.name == proof["name"])
    assert proof["fmax_mhz"] == row.fmax_mhz >= 75.0 and not proof["same_config"]
    assert proof["current"] == row.current()
    md = (tmp_path / "a" / "report.md").read_text()
    assert f"Clock proof: a design no smaller, {row.name}, placed and routed at" in md
    # a place and route that misses the sizer's clock is told to sweep seeds, and the seed
    # that met it when this very design was placed before
    live = {**proof, "same_config": True, "current": True}
    again = f"met {row.fmax_mhz:g} MHz at `--seed {row.seed}`"
    for fmax, clock_proof, says in ((80.0, proof, None), (60.0, proof, "`--seeds N`"),
                                    (60.0, live, again)):
        rep = {**reps[0], "fmax_mhz": fmax,
               "choice": {**reps[0]["choice"], "clock_proof": clock_proof}}
        write_markdown(rep, tmp_path / "r.md")
        md = (tmp_path / "r.md").read_text()
        assert f"Fmax after place and route: {fmax:.1f} MHz" in md
        assert ("MISSED" in md) == (says is not None)
        assert ("place it with more seeds" in md) == (says is not None)
        assert says is None or says in md
    for d in "bc":
        for f in ("spikellm_top.v", "model/tensors.safetensors", "program.json"):
            assert (tmp_path / d / f).read_bytes() == (tmp_path / "a" / f).read_bytes(), f
    assert reps[1]["totals"] == reps[0]["totals"]
