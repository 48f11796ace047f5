"""A pipeline register on a ``lib.stream`` stream, for timing.

It takes a word whenever it is empty or its word leaves, so a stream through it keeps one
word per cycle and gains one cycle of latency; ``ready`` still runs back combinationally
(only the forward path, payload and valid, is cut).
"""

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class Register(wiring.Component):
    """``i`` in, ``o`` out one cycle later, at full throughput."""

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        take = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(take)
        with m.If(take):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m
