"""A memory built as side-by-side columns, so that no read passes a deep mux across block
RAMs (``accel.bram``: the column width, and why)."""

from __future__ import annotations

from amaranth import Elaboratable, Module, Shape, Value
from amaranth.lib import memory

from accel.bram import column_mode, in_logic


class ColumnMemory(Elaboratable):
    """A ``lib.memory.Memory`` stand-in (``shape``, ``depth``; contents start undefined):
    ``read_port()`` (synchronous) and ``write_port()`` give ports of the memory's own
    signatures over the whole word, and the word is stored in columns of
    :func:`accel.bram.column_mode`'s width, one memory each (one memory when that is the
    whole word, or when the memory is built from logic)."""

    def __init__(self, *, shape, depth: int):
        self.shape, self.depth = shape, depth
        self.width = Shape.cast(shape).width
        self.column = (self.width if in_logic(self.width, depth)
                       else min(self.width, column_mode(self.width, depth)[0]))
        self._abits = (depth - 1).bit_length()
        self._read: list = []
        self._write: list = []

    def read_port(self):
        """A synchronous read port (``memory.ReadPort.Signature``)."""
        port = memory.ReadPort.Signature(addr_width=self._abits, shape=self.shape).create(
            path=(f"rd{len(self._read)}",))
        self._read.append(port)
        return port

    def write_port(self):
        """A write port of whole words (``memory.WritePort.Signature``)."""
        port = memory.WritePort.Signature(addr_width=self._abits, shape=self.shape).create(
            path=(f"wr{len(self._write)}",))
        self._write.append(port)
        return port

    def elaborate(self, platform):
        m = Module()
        for i, lo in enumerate(range(0, self.width, self.column)):
            hi = min(self.width, lo + self.column)
            m.submodules[f"c{i}"] = mem = memory.Memory(shape=hi - lo, depth=self.depth,
                                                        init=[])
            for p in self._read:
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(p.addr), rp.en.eq(p.en),
                             Value.cast(p.data)[lo:hi].eq(rp.data)]
            for p in self._write:
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(p.addr), wp.en.eq(p.en),
                             wp.data.eq(Value.cast(p.data)[lo:hi])]
        return m
