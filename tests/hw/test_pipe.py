"""The stream registers keep every word, in order, one a cycle, whatever the stalls on
both sides; the skid register's ``i.ready`` does not follow ``o.ready`` in the same cycle."""

import random

import pytest
from amaranth.sim import Simulator

from hw.pipe import Register, Skid
from sim.streams import Stalls, get, put, seed, stream_rules


@pytest.mark.parametrize("cls", [Register, Skid])
@pytest.mark.parametrize("stall_p", [0.0, 0.3, 0.7])
def test_words_pass_in_order_under_stalls(cls, stall_p):
    rng = random.Random(seed() * 100 + int(stall_p * 10))
    dut = cls(12)
    words = [rng.randrange(4096) for _ in range(200)]
    got: list[int] = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def producer(ctx):
        for w in words:
            await put(ctx, dut.i, w, Stalls(stall_p, rng))

    async def consumer(ctx):
        snk = Stalls(stall_p, random.Random(rng.random()))
        for _ in words:
            got.append(int(await get(ctx, dut.o, snk)))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(stream_rules({"o": dut.o}), background=True)
    sim.run()
    assert got == words


def test_full_rate_and_registered_ready():
    dut = Skid(8)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        for v in range(4):  # one word a cycle, out a cycle later
            ctx.set(dut.i.payload, v)
            await ctx.tick()
            assert (ctx.get(dut.o.valid), ctx.get(dut.o.payload)) == (1, v)
        ctx.set(dut.o.ready, 0)  # the sink stalls: i.ready stays up this cycle
        seen["ready_in_stall"] = ctx.get(dut.i.ready)
        ctx.set(dut.i.payload, 4)
        await ctx.tick()  # word 4 went into the skid
        seen["ready_when_full"] = ctx.get(dut.i.ready)
        ctx.set(dut.i.payload, 5)  # word 4 was taken: the source moves on
        ctx.set(dut.o.ready, 1)
        await ctx.tick()  # the skid's word leaves first; 5 waits (i.ready low)
        seen["after"] = [(ctx.get(dut.o.valid), ctx.get(dut.o.payload))]
        seen["ready_after"] = ctx.get(dut.i.ready)
        await ctx.tick()  # then 5, with no bubble
        seen["after"].append((ctx.get(dut.o.valid), ctx.get(dut.o.payload)))
        ctx.set(dut.i.valid, 0)
        await ctx.tick()
        seen["after"].append((ctx.get(dut.o.valid),))

    sim.add_testbench(tb)
    sim.run()
    assert seen["ready_in_stall"] == 1 and seen["ready_when_full"] == 0
    assert seen["ready_after"] == 1
    assert seen["after"] == [(1, 4), (1, 5), (0,)]
