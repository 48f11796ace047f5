"""The stream-rule monitor the block harnesses run (sim.streams.stream_rules) catches a
block that breaks the rules, and passes one that keeps them."""

import pytest
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from sim.streams import stream_rules


class Counter(wiring.Component):
    """Offers 0, 1, 2, ...; ``rude`` drops valid every other cycle whether taken or not."""

    out: Out(stream.Signature(8))

    def __init__(self, rude: bool):
        self.rude = rude
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        tick = Signal()
        m.d.sync += tick.eq(~tick)
        m.d.comb += self.out.valid.eq(~tick if self.rude else 1)
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.payload.eq(self.out.payload + 1)
        return m


def _run(rude: bool) -> list[str]:
    dut = Counter(rude)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    failures: list[str] = []

    async def sink(ctx):  # takes one transfer in three cycles
        for i in range(30):
            ctx.set(dut.out.ready, int(i % 3 == 0))
            await ctx.tick()

    sim.add_testbench(sink)
    sim.add_testbench(stream_rules({"out": dut.out}, failures), background=True)
    sim.run()
    return failures


@pytest.mark.parametrize("rude", [False, True])
def test_the_monitor_flags_exactly_the_block_that_drops_valid(rude):
    failures = _run(rude)
    assert bool(failures) == rude
    assert all(f.startswith("out: valid dropped or payload changed") for f in failures)
