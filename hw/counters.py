"""Event counters: the one counter map, and the counter file gateware.

Every counter is ``counter_bits`` wide (>= 48), counts up by a per-cycle increment, is
reset together with the others, and is read by index over the link (READ_COUNTERS returns
them all, in :data:`COUNTERS` order, each as ``counter_bits/8`` little-endian bytes).
Definitions match the golden model's events (``docs/contract.md``); the relation per GEMM
tile with ``n`` active lanes is in the right-hand column.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from accel.config import AccelConfig
from accel.counters import COUNTERS


def counter_read_signature(cfg: AccelConfig) -> wiring.Signature:
    """The counters' read side, from the reader's side (the executor): ``value`` is counter
    ``sel`` (its index in :data:`COUNTERS`) a cycle later (registered); ``clear`` zeroes
    them all (two cycles later, dropping the events up to then)."""
    return wiring.Signature({"sel": Out(range(len(COUNTERS))), "value": In(cfg.counter_bits),
                             "clear": Out(1)})


class CounterFile(wiring.Component):
    """All counters; ``inc[name]`` is added every cycle; ``read`` reads one of them by
    index, or clears them all (:func:`counter_read_signature`)."""

    def __init__(self, cfg: AccelConfig, inc_bits: int):
        self.cfg = cfg
        super().__init__({
            #: one increment per counter of the map, by name (``inc.busy``, ``inc["busy"]``)
            "inc": In(data.StructLayout({n: unsigned(inc_bits) for n in COUNTERS})),
            "read": In(counter_read_signature(cfg))})

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(unsigned(self.cfg.counter_bits), name=f"c_{n}") for n in COUNTERS]
        # the increments are registered first (timing: the strobes come from all over the
        # chip and a 48-bit carry chain follows), so a counter shows a cycle's events one
        # cycle late; the host only reads counters between requests. ``clear`` is
        # registered too (it resets every counter bit, about 1,000, from the executor's
        # decode): the counters are zero two cycles after it, the events of the cycles up
        # to then dropped (the increment in flight too).
        clear = Signal(name="clear_q")
        m.d.sync += clear.eq(self.read.clear)
        inc = Signal.like(self.inc, name="inc_q")
        m.d.sync += inc.eq(Mux(clear, 0, self.inc))
        for n, reg in zip(COUNTERS, regs, strict=True):
            with m.If(clear):
                m.d.sync += reg.eq(0)
            with m.Else():
                m.d.sync += reg.eq(reg + inc[n])
        # the select across every counter is registered (timing: at 16 lanes it ran into
        # the executor's response shift register, 76.1 MHz); the executor selects a
        # counter cycles before it loads it
        with m.Switch(self.read.sel):
            for i, reg in enumerate(regs):
                with m.Case(i):
                    m.d.sync += self.read.value.eq(reg)
        return m
