"""8N1 UART receiver and transmitter with byte streams, for the board's USB serial link.

``divisor`` is clock cycles per bit (25 MHz / 1 Mbaud = 25 on the ULX3S). The receiver
samples mid-bit after a start edge and drops a byte whose stop bit is low (a framing
error); the link's CRC catches what that loses.
"""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accel.board import MIN_DIVISOR


class UartRx(wiring.Component):
    """Serial line in, bytes out (no back-pressure on the line: the consumer must keep up,
    which the board top ensures with a FIFO)."""

    rx: In(1, init=1)
    out: Out(stream.Signature(8))

    def __init__(self, divisor: int):
        if divisor < MIN_DIVISOR:
            raise ValueError(f"UART divisor must be at least {MIN_DIVISOR} cycles per bit, "
                             f"not {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        sync_rx = Signal(2, init=0b11)  # two flip-flops against metastability
        m.d.sync += sync_rx.eq((sync_rx << 1) | self.rx)
        line = sync_rx[1]
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bits = Signal(8)
        n = Signal(range(9))
        with m.If(self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += [timer.eq(self.divisor * 3 // 2 - 1), n.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [bits.eq((bits >> 1) | (line << 7)), n.eq(n + 1),
                                 timer.eq(self.divisor - 1)]
                    with m.If(n == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.out.payload.eq(bits), self.out.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m


class UartTx(wiring.Component):
    """Bytes in, serial line out."""

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)  # stop, data[7:0], start (LSB first)
        n = Signal(range(11))
        timer = Signal(range(self.divisor))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(n == 0)]
        with m.If(n == 0):
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq((1 << 9) | (self.data.payload << 1)), n.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq((shreg >> 1) | (1 << 9)), n.eq(n - 1),
                         timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m
