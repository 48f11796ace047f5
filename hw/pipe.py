"""Pipeline registers on a ``lib.stream`` stream, for timing.

:class:`Register` takes a word whenever it is empty or its word leaves, so a stream through
it keeps one word per cycle and gains one cycle of latency; ``ready`` still runs back
combinationally (only the forward path, payload and valid, is cut). :class:`Skid` cuts the
ready path too, with a second register.
"""

from amaranth import Module, Signal
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


class Skid(wiring.Component):
    """``i`` in, ``o`` out one cycle later, at full throughput, with ``i.ready`` from a
    register: a second register (the skid) takes the word that arrives in the cycle ``o``
    stalls, so no ready path runs through it from ``o`` back to ``i`` (timing: a reader's
    block RAM enable behind an array's stall decode). It gains one cycle of latency, like
    :class:`Register`, and no bubble when ``o`` resumes."""

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        full = Signal()  # the skid holds a word
        skid = Signal.like(self.i.payload)
        take = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(~full)
        with m.If(take):
            with m.If(full):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(skid), full.eq(0)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        with m.Elif(self.i.valid & ~full):
            m.d.sync += [skid.eq(self.i.payload), full.eq(1)]
        return m
