"""The ULX3S board top level: the accelerator behind the board's USB UART (FT231X).

The same framed protocol as the simulator (``accel.protocol``) at :data:`BAUD` baud, 8N1, on
the 25 MHz board clock. A receive FIFO absorbs bytes while the executor is busy with a
frame; LED 0 shows receive activity.
"""

from amaranth import Module
from amaranth.lib import fifo, wiring

from accel.config import AccelConfig
from accel.protocol import BAUD

from .top import Top
from .uart import UartRx, UartTx

#: Board clock (``clk25``) and UART rate: 25 cycles per bit, exact.
CLOCK_HZ = 25_000_000
#: Receive FIFO depth (bytes).
RX_FIFO = 512


class Ulx3sTop(wiring.Component):
    """Elaborated against an ``amaranth_boards.ulx3s`` platform."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        divisor = CLOCK_HZ // BAUD
        m.submodules.core = core = Top(self.cfg)
        m.submodules.uart_rx = urx = UartRx(divisor)
        m.submodules.uart_tx = utx = UartTx(divisor)
        m.submodules.rx_fifo = q = fifo.SyncFIFOBuffered(width=8, depth=RX_FIFO)
        m.d.comb += [q.w_data.eq(urx.out.payload), q.w_en.eq(urx.out.valid),
                     urx.out.ready.eq(1),
                     core.rx.payload.eq(q.r_data), core.rx.valid.eq(q.r_rdy),
                     q.r_en.eq(core.rx.ready)]
        wiring.connect(m, core.tx, utx.data)
        if platform is not None:
            uart = platform.request("uart", 0)
            m.d.comb += [urx.rx.eq(uart.rx.i), uart.tx.o.eq(utx.tx)]
            led = platform.request("led", 0)
            m.d.comb += led.o.eq(~urx.rx)
        return m
