"""A memory built as side-by-side columns, so that no read passes a deep mux across block
RAMs (``accel.bram``: the column width, and why)."""

from __future__ import annotations

from amaranth import Elaboratable, Module, Shape, Value
from amaranth.lib import memory

from accel.bram import columns, in_logic


class ColumnMemory(Elaboratable):
    """A ``lib.memory.Memory`` stand-in (``shape``, ``depth``; contents start undefined):
    ``read_port()`` (synchronous) and ``write_port()`` give ports of the memory's own
    signatures over the whole word, and the word is stored in
    :func:`accel.bram.columns`, one memory each (in LUT RAM where
    :func:`accel.bram.in_logic` says so)."""

    def __init__(self, *, shape, depth: int):
        self.shape, self.depth = shape, depth
        self.width = Shape.cast(shape).width
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
        lo = 0
        for i, col in enumerate(columns(self.width, self.depth)):
            hi = lo + col
            # a column the resource model counts as logic is built so (LUT RAM), not left
            # to Yosys, which would put a 64-deep one in block RAM
            attrs = {"ram_style": "distributed"} if in_logic(col, self.depth) else None
            m.submodules[f"c{i}"] = mem = memory.Memory(shape=col, depth=self.depth, init=[],
                                                        attrs=attrs)
            for p in self._read:
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(p.addr), rp.en.eq(p.en),
                             Value.cast(p.data)[lo:hi].eq(rp.data)]
            for p in self._write:
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(p.addr), wp.en.eq(p.en),
                             wp.data.eq(Value.cast(p.data)[lo:hi])]
            lo = hi
        return m
