"""Counter file: increments, clear, read by index, width."""

from amaranth.sim import Simulator

from accel.config import PRESETS
from accel.counters import COUNTERS, INDEX
from hw.counters import CounterFile


def test_counters_add_increments_clear_and_read_by_index():
    cfg = PRESETS["tiny"]
    dut = CounterFile(cfg, inc_bits=3)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.inc.spikes, 3)
        ctx.set(dut.inc.cycles, 1)
        for _ in range(5):
            await ctx.tick()
        ctx.set(dut.inc.spikes, 0)
        for name in ("spikes", "cycles", "macs"):
            ctx.set(dut.sel, INDEX[name])
            await ctx.delay(1e-9)
            seen[name] = ctx.get(dut.value)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.sel, INDEX["spikes"])
        await ctx.delay(1e-9)
        seen["after_clear"] = ctx.get(dut.value)

    sim.add_testbench(tb)
    sim.run()
    assert seen == {"spikes": 15, "cycles": 5, "macs": 0, "after_clear": 0}
    assert len(dut.value) == cfg.counter_bits >= 48
    assert len(COUNTERS) == len(INDEX)
