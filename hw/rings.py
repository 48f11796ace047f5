"""Finished rows waiting for the combiner, read back one lane at a time.

Both arrays finish rows of ``lanes`` partial sums that the combiner adds lane by lane (one
lane per cycle, the output unit's pace). Reading a row lane by lane out of LUT RAM costs a
lane select per bit instead of a register per bit, so neither array keeps a row register
or a vector FIFO: the MAC array accumulates straight into rows of LUT RAM
(``hw.arrays.MacArray``) and the spike array's finished membranes go into a
:class:`RowRing`. Both offer the same :func:`rows_signature`.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out


def rows_signature(shape, depth: int, lanes: int) -> wiring.Signature:
    """Lane-by-lane access to up to ``depth`` finished rows, kept in the order they were
    finished: ``commit`` pulses when a row is finished (readable from the next cycle, at
    slot ``0, 1, .., depth - 1, 0, ..`` in turn); ``data`` is lane ``lane`` of the row at
    ``slot`` (combinational); ``release`` frees the oldest row's slot (from the next
    cycle). The reader keeps its own count of rows committed and not yet taken."""
    return wiring.Signature({
        "commit": Out(1),
        "slot": In(range(depth)),
        "lane": In(range(lanes)),
        "data": Out(shape),
        "release": In(1),
    })


class RowRing(wiring.Component):
    """Up to ``depth`` rows (``layout``, an ``ArrayLayout`` of lanes) written whole from a
    stream and read lane by lane (:func:`rows_signature`). It takes every row offered
    (``ready`` is constant): its writer counts the room left, releases included (a release
    frees its slot from the next cycle; ``hw.arrays.SpikeArray``). A full ring's
    ``ready`` would gate the write enable of every lane's LUT RAM (timing: a logic-driven
    net of hundreds of sinks at 64 lanes)."""

    def __init__(self, layout: data.ArrayLayout, depth: int):
        self.layout, self.depth = layout, depth
        super().__init__({"w": In(stream.Signature(layout)),
                          "rd": Out(rows_signature(layout.elem_shape, depth, layout.length))})

    def elaborate(self, platform):
        m = Module()
        depth = self.depth
        m.submodules.mem = mem = memory.Memory(shape=self.layout, depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        wptr = Signal(range(depth))
        push = Signal()
        m.d.comb += [
            self.w.ready.eq(1),
            push.eq(self.w.valid),
            wp.addr.eq(wptr), wp.data.eq(self.w.payload), wp.en.eq(push),
            self.rd.commit.eq(push),
            rp.addr.eq(self.rd.slot),
            self.rd.data.eq(rp.data[self.rd.lane]),
        ]
        with m.If(push):
            m.d.sync += wptr.eq(Mux(wptr == depth - 1, 0, wptr + 1))
        return m
