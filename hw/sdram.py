"""The board's SDRAM controller: LiteDRAM's core, generated to Verilog by ``gen.sdram``
and instantiated here behind ``hw.mem``'s port (``docs/sdram.md``).

Two generated modules share one user-port interface:

- :data:`CORE_NAME`: for the ULX3S. LiteDRAM's half-rate SDR PHY (``HalfRateGENSDRPHY``)
  on the board's 16-bit chip, its own ECP5 PLL on the 25 MHz oscillator (controller clock
  ``sys``, SDRAM clock ``sys2x``), the hardware init sequence, and the user port in the
  core's clock domain (asynchronous FIFOs between the two).
- :data:`SIM_CORE_NAME`: the same controller on LiteDRAM's PHY model
  (``litedram.phy.model.SDRAMPHYModel``) for Verilator: refresh, bank activate and
  precharge, CAS latency are the real controller's, the chip is a memory array.

``hw/`` does not import ``gen/``: the port names below are the contract both sides use.
"""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, ResetSignal
from amaranth.hdl import IOPort
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .mem import mem_port_signature

#: Verilog module name of the ULX3S core (``gen.sdram``).
CORE_NAME = "spikellm_sdram"
#: Verilog module name of the simulation core (PHY model instead of pins and PLL).
SIM_CORE_NAME = "spikellm_sdram_sim"

#: SDRAM pins of the ULX3S core: name -> (width, direction). ``clk`` is the chip's clock
#: (an ODDRX1F on a 180-degree PLL output, as LiteX's ULX3S target drives it).
PINS = {"clk": (1, "o"), "cke": (1, "o"), "cs_n": (1, "o"), "ras_n": (1, "o"),
        "cas_n": (1, "o"), "we_n": (1, "o"), "ba": (2, "o"), "a": (13, "o"),
        "dm": (2, "o"), "dq": (16, "io")}

#: amaranth-boards' ``SDRAMResource`` subsignal of each pin (``platform.request("sdram",
#: 0, dir="-")``); its active-low pins are wired raw (``.io``): LiteDRAM drives them low.
RESOURCE_PINS = {"clk": "clk", "cke": "clk_en", "cs_n": "cs", "ras_n": "ras", "cas_n": "cas",
                 "we_n": "we", "ba": "ba", "a": "a", "dm": "dqm", "dq": "dq"}


class Sdram(wiring.Component):
    """The external memory behind ``hw.mem``'s port: ``port`` is the memory side
    (``In(mem_port_signature(...))``: it takes ``cmd`` and ``wdata``, gives ``rdata``).

    Clocks and resets:

    - ``domain`` (default ``sync``): the core's domain; the user port lives in it.
    - ``sdram_domain`` (default ``sdram``): on the board, the 25 MHz reference of the
      core's own PLL (its reset resets the PLL; the controller is held in reset until the
      PLL locks); in simulation (``sim=True``), the controller's clock itself.

    ``init_done`` (``domain``) rises once the chip is initialised; until then ``cmd`` is
    not taken. Rules beyond ``hw.mem``'s: ``wdata`` may come before, with or after its
    command; ``rdata.ready`` may be low only while at most ``rdata_depth`` (16) reads are
    outstanding (LiteDRAM's read path has no back-pressure: the FIFO into ``domain``
    absorbs it). Reset ``domain`` only with no command outstanding.

    ``pins``: on the board, ``platform.request("sdram", 0, dir="-")``; without it (and
    without ``sim``) the pins become top-level ports named ``sdram_*``.
    """

    def __init__(self, addr_bits: int, data_bits: int, *, sim: bool = False,
                 domain: str = "sync", sdram_domain: str = "sdram", pins=None):
        if sim and pins is not None:
            raise ValueError("the simulation core has no pins")
        self.addr_bits, self.data_bits, self.sim = addr_bits, data_bits, sim
        self.domain, self.sdram_domain, self.pins = domain, sdram_domain, pins
        super().__init__({"port": In(mem_port_signature(addr_bits, data_bits)),
                          "init_done": Out(1)})

    @property
    def core_name(self) -> str:
        """The Verilog module this instantiates (add ``gen.sdram.verilog`` of the same
        settings to the build)."""
        return SIM_CORE_NAME if self.sim else CORE_NAME

    def elaborate(self, platform):
        m = Module()
        p = self.port
        ports = dict(
            i_clk=ClockSignal(self.sdram_domain), i_rst=ResetSignal(self.sdram_domain),
            i_user_clk=ClockSignal(self.domain), i_user_rst=ResetSignal(self.domain),
            i_cmd_valid=p.cmd.valid, o_cmd_ready=p.cmd.ready, i_cmd_we=p.cmd.payload.we,
            i_cmd_addr=p.cmd.payload.addr,
            i_wdata_valid=p.wdata.valid, o_wdata_ready=p.wdata.ready,
            i_wdata_data=p.wdata.payload,
            o_rdata_valid=p.rdata.valid, i_rdata_ready=p.rdata.ready,
            o_rdata_data=p.rdata.payload,
            o_init_done=self.init_done)
        if not self.sim:
            for name, (width, direction) in PINS.items():
                if self.pins is not None:
                    io = getattr(self.pins, RESOURCE_PINS[name]).io
                else:
                    io = IOPort(width, name=f"sdram_{name}")
                ports[f"{direction}_sdram_{name}"] = io
        m.submodules.core = Instance(self.core_name, **ports)
        return m

