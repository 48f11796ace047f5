"""The board UART: bytes sent by UartTx come out of UartRx, with gaps and back-to-back."""

import random

from amaranth import Module
from amaranth.sim import Simulator

from hw.uart import UartRx, UartTx
from sim.streams import seed


def test_uart_loopback():
    m = Module()
    m.submodules.tx = tx = UartTx(6)
    m.submodules.rx = rx = UartRx(6)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(seed())
    sent = [rng.randrange(256) for _ in range(24)] + [0x00, 0xFF, 0xA5]
    got = []

    async def source(ctx):
        for b in sent:
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
            for _ in range(rng.choice([0, 0, 13])):
                await ctx.tick()

    async def sink(ctx):
        ctx.set(rx.out.ready, 1)
        while len(got) < len(sent):
            _, _, valid, payload = await ctx.tick().sample(rx.out.valid, rx.out.payload)
            if valid:
                got.append(payload)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-6 * 6 * 10 * (len(sent) + 30))
    assert got == sent
