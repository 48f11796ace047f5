"""The ULX3S board top level: the accelerator behind the board's USB UART (FT231X).

The same framed protocol as the simulator (``accel.protocol``), 8N1, at the build's link
rate. The core runs from an ECP5 PLL (EHXPLLL) on the 25 MHz oscillator, at the clock the
generator chose from the place-and-route result (``accel.board.choose_clock``); the
design is held in reset until the PLL locks. A receive FIFO absorbs bytes while the
executor is busy with a frame; LED 0 shows receive activity.
"""

from amaranth import ClockDomain, ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import fifo, wiring

from accel.board import LINK_TIMEOUT_S, BoardClock, choose_clock
from accel.config import AccelConfig
from accel.protocol import BAUD, RX_FIFO_BYTES

from .sdram import Sdram
from .top import Top
from .uart import UartRx, UartTx


def pll(m: Module, clock: BoardClock, clk_in, locked) -> Signal:
    """Instantiate the EHXPLLL for ``clock`` (feedback from CLKOP, phase 0, as Lattice's
    ``ecppll`` writes it) on ``clk_in``; returns the core clock."""
    p = clock.pll
    out = Signal(name="pll_clkop")
    m.submodules.pll = Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{p.f_in_hz / 1e6:g}",
        a_FREQUENCY_PIN_CLKOP=f"{p.f_out_hz / 1e6:.6f}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
        p_CLKOP_CPHASE=p.clkop_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
        p_CLKFB_DIV=p.clkfb_div,
        i_RST=0, i_STDBY=0, i_CLKI=clk_in, o_CLKOP=out, i_CLKFB=out,
        i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
        i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
    return out


class Ulx3sTop(wiring.Component):
    """Elaborated against an ``amaranth_boards.ulx3s`` platform (without one, as in the
    simulator, the core runs on the ``sync`` domain it is given and no PLL is built)."""

    def __init__(self, cfg: AccelConfig, clock: BoardClock | None = None):
        self.cfg = cfg
        self.clock = clock or choose_clock(25.0, BAUD)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        clock = self.clock
        m.submodules.core = core = Top(self.cfg,
                                       link_timeout=round(clock.clock_hz * LINK_TIMEOUT_S))
        m.submodules.uart_rx = urx = UartRx(clock.divisor)
        m.submodules.uart_tx = utx = UartTx(clock.divisor)
        m.submodules.rx_fifo = q = fifo.SyncFIFOBuffered(width=8, depth=RX_FIFO_BYTES)
        wiring.connect(m, urx.out, q.w_stream)
        wiring.connect(m, q.r_stream, core.rx)
        wiring.connect(m, core.tx, utx.data)
        if platform is not None:
            m.domains.sync = ClockDomain("sync")
            locked = Signal()
            clk25 = platform.request("clk25", 0).i
            clk = pll(m, clock, clk25, locked)
            # the SDRAM: LiteDRAM's controller (gen.sdram adds its Verilog to the build) on
            # its own PLL from the oscillator, its user port crossed into the core's clock
            m.domains.sdram = ClockDomain("sdram")
            m.d.comb += [ClockSignal("sdram").eq(clk25), ResetSignal("sdram").eq(0)]
            m.submodules.sdram = sdram = Sdram(self.cfg.dram_addr_bits, self.cfg.dram_bits,
                                               pins=platform.request("sdram", 0, dir="-"))
            wiring.connect(m, core.dram, sdram.port)
            # held in reset until the PLL locks (two flip-flops on the core clock)
            m.domains.por = ClockDomain("por", reset_less=True)
            sync_lock = Signal(2)
            m.d.comb += ClockSignal("por").eq(clk)
            m.d.por += sync_lock.eq((sync_lock << 1) | locked)
            m.d.comb += [ClockSignal("sync").eq(clk), ResetSignal("sync").eq(~sync_lock[1])]
            uart = platform.request("uart", 0)
            m.d.comb += [urx.rx.eq(uart.rx.i), uart.tx.o.eq(utx.tx)]
            led = platform.request("led", 0)
            m.d.comb += led.o.eq(~urx.rx)
        return m
