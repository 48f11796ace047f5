"""Verilator bench of LiteDRAM's controller on its PHY model, behind ``hw.sdram.Sdram``
(``docs/sdram.md``): a harness top (the wrapper alone, its port at the top level), built
with the simulation core's Verilog (``gen.sdram.verilog(SdramConfig(sim=True))``, passed
in: ``sim/`` does not import ``gen/``) and driven by ``sim/cocotb_sdram.py``, which writes
its measurements to ``report.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.mem import mem_port_signature
from hw.sdram import Sdram

from .verilator import VERILATOR_ARGS, ensure_verilator

#: Verilog module name of the harness.
TOP = "sdram_harness"


class Harness(wiring.Component):
    """:class:`hw.sdram.Sdram` (``sim=True``) with its port and ``init_done`` at the top;
    domains ``sync`` (the core's: ``clk``/``rst``) and ``sdram`` (the controller's:
    ``sdram_clk``/``sdram_rst``)."""

    def __init__(self, addr_bits: int = 23, data_bits: int = 32):
        self.addr_bits, self.data_bits = addr_bits, data_bits
        super().__init__({"port": In(mem_port_signature(addr_bits, data_bits)),
                          "init_done": Out(1)})

    def elaborate(self, platform):
        from amaranth import Module

        m = Module()
        m.submodules.sdram = s = Sdram(self.addr_bits, self.data_bits, sim=True)
        wiring.connect(m, wiring.flipped(self.port), s.port)
        m.d.comb += self.init_done.eq(s.init_done)
        return m


def harness_verilog(core_verilog: str, addr_bits: int = 23, data_bits: int = 32) -> str:
    """The harness's Verilog followed by the simulation core's."""
    top = verilog.convert(Harness(addr_bits, data_bits), name=TOP, emit_src=False)
    return top + "\n" + core_verilog


def run(core_verilog: str, build_base: Path, env: dict[str, str] | None = None,
        addr_bits: int = 23, data_bits: int = 32) -> dict:
    """Build the harness with Verilator (once per Verilog text, under ``build_base``), run
    the cocotb bench and return its report (``report.json``) with ``log``: the simulator's
    output (LiteDRAM's timing checker prints its violations there)."""
    ensure_verilator()
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    text = harness_verilog(core_verilog, addr_bits, data_bits)
    bdir = Path(build_base) / hashlib.sha256(text.encode()).hexdigest()[:16]
    bdir.mkdir(parents=True, exist_ok=True)
    src = bdir / f"{TOP}.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    runner = get_runner("verilator")
    runner.build(sources=[src], hdl_toplevel=TOP, build_dir=bdir, always=False,
                 build_args=[*VERILATOR_ARGS, "-Wno-COMBDLY", "-Wno-MULTIDRIVEN",
                             "-j", str(min(os.cpu_count() or 1, 2))])
    report, log = bdir / "report.json", bdir / "sim.log"
    report.unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    full_env = {**(env or {}), "SDRAM_REPORT": str(report),
                "SDRAM_ADDR_BITS": str(addr_bits), "SDRAM_DATA_BITS": str(data_bits),
                "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    results = runner.test(hdl_toplevel=TOP, test_module="sim.cocotb_sdram", build_dir=bdir,
                          test_dir=bdir, extra_env=full_env, log_file=log)
    _, failed = get_results(results)
    if failed:
        raise AssertionError(f"{failed} cocotb test(s) failed; see {log}")
    out = json.loads(report.read_text())
    out["log"] = log.read_text()
    return out
