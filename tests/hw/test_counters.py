"""Counter file: increments, clear, read by index, width."""

from amaranth.sim import Simulator

from accel.config import PRESETS
from accel.counters import COUNTERS, INDEX
from hw.counters import CounterFile


def test_counters_add_increments_clear_and_read_by_index():
    """Increments land one cycle late (they are registered); clear is registered too: it drops
    the increment in flight and the events of the cycle after it."""
    cfg = PRESETS["tiny"]
    dut = CounterFile(cfg, inc_bits=3)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    async def read(ctx, name):  # the value is registered: a cycle after the select
        ctx.set(dut.read.sel, INDEX[name])
        await ctx.tick()
        return ctx.get(dut.read.value)

    async def tb(ctx):
        ctx.set(dut.inc.spikes, 3)
        ctx.set(dut.inc.cycles, 1)
        for _ in range(5):
            await ctx.tick()
        ctx.set(dut.inc.spikes, 0)
        ctx.set(dut.inc.cycles, 0)
        seen["lagging"] = await read(ctx, "spikes")  # the fifth increment is in flight
        await ctx.tick()
        for name in ("spikes", "cycles", "macs"):
            seen[name] = await read(ctx, name)
        ctx.set(dut.inc.spikes, 3)
        await ctx.tick()  # this increment is in flight while clear is high
        ctx.set(dut.inc.spikes, 0)
        ctx.set(dut.read.clear, 1)
        await ctx.tick()
        ctx.set(dut.read.clear, 0)
        ctx.set(dut.inc.spikes, 5)  # the cycle after clear: dropped (clear is registered)
        await ctx.tick()
        ctx.set(dut.inc.spikes, 7)  # the next one counts
        await ctx.tick()
        ctx.set(dut.inc.spikes, 0)
        await ctx.tick()
        seen["after_clear"] = await read(ctx, "spikes")

    sim.add_testbench(tb)
    sim.run()
    assert seen == {"lagging": 12, "spikes": 15, "cycles": 5, "macs": 0, "after_clear": 7}
    assert len(dut.read.value) == cfg.counter_bits >= 48
    assert len(COUNTERS) == len(INDEX)
