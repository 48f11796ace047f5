"""External memory: the behavioural memory keeps what is written through its port (with
refresh and row changes), and the LOAD copier writes buffer words exactly as
``accel.layouts.to_dram_words`` lays them out, whatever the memory's timing."""

import random

import pytest
from amaranth import Module, Shape
from amaranth.lib import wiring
from amaranth.sim import Simulator

from accel.config import AccelConfig
from accel.layouts import LOADABLE, BufId, buffer_shapes, dram_words, loadable, to_dram_words
from hw.mem import Dma, MemModel


def _cfg(dram_bits, lanes=4, spike_encoder=False):
    return AccelConfig(lanes=lanes, mac_units=2, weight_depth=64, max_rows=8,
                       spike_event_depth=256, mac_event_depth=64, spike_rows=4, max_steps=15,
                       dram_bits=dram_bits, dram_addr_bits=10, spike_encoder=spike_encoder)


@pytest.mark.parametrize("timing", [dict(), dict(latency=1, row_cycles=0, refresh_cycles=0,
                                                  refresh_every=1 << 20),
                                    dict(latency=3, word_cycles=2, row_bits=3, row_cycles=5,
                                         refresh_every=37, refresh_cycles=6)])
def test_memory_model_returns_what_was_written_in_command_order(timing):
    mem = MemModel(10, 32, **timing)
    rng = random.Random(1)
    want, script = {}, []
    for _ in range(300):
        a = rng.randrange(1 << 10) if rng.random() < 0.5 else rng.randrange(16)
        if rng.random() < 0.5:
            v = rng.getrandbits(32)
            want[a] = v
            script.append((a, 1, v))
        else:
            script.append((a, 0, want.get(a, 0)))
    expect = [v for a, we, v in script if not we]
    got = []

    async def driver(ctx):
        p = mem.port
        for a, we, v in script:
            ctx.set(p.cmd.payload.addr, a)
            ctx.set(p.cmd.payload.we, we)
            ctx.set(p.wdata.payload, v)
            ctx.set(p.cmd.valid, 1)
            ctx.set(p.wdata.valid, we)
            await ctx.tick().until(p.cmd.ready)
            ctx.set(p.cmd.valid, 0)
            ctx.set(p.wdata.valid, 0)
            for _ in range(rng.choice([0, 0, 0, 1, 3])):
                await ctx.tick()
        for _ in range(40):
            await ctx.tick()

    async def monitor(ctx):
        ctx.set(mem.port.rdata.ready, 1)
        async for _clk, _rst, v, d in ctx.tick().sample(mem.port.rdata.valid,
                                                       mem.port.rdata.payload):
            if v:
                got.append(d)

    sim = Simulator(mem)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_process(monitor)
    sim.run()
    assert got == expect


@pytest.mark.parametrize("dram_bits,lanes,encoder", [(8, 4, False), (16, 8, True), (32, 4, True),
                                                     (64, 8, False), (128, 4, True)])
def test_load_copies_buffer_words_from_their_memory_layout(dram_bits, lanes, encoder):
    cfg = _cfg(dram_bits, lanes, encoder)
    assert (BufId.CODES in loadable(cfg)) == encoder  # the code buffer too, where it is
    rng = random.Random(dram_bits + lanes)
    shapes = buffer_shapes(cfg)
    image = {}
    loads = []
    next_src = 0
    for buf in sorted(loadable(cfg), key=lambda b: b.value):
        width = Shape.cast(shapes[buf][0]).width
        depth = shapes[buf][1]
        count = rng.randint(1, min(depth, 9))
        addr = rng.randrange(depth - count + 1)
        raw = [rng.getrandbits(width) for _ in range(count)]
        words = to_dram_words(cfg, buf, raw)
        src = next_src + rng.randrange(5)  # disjoint, in random order below
        next_src = src + len(words)
        for i, w in enumerate(words):
            image[src + i] = w
        loads.append((buf, addr, count, src, raw))
    rng.shuffle(loads)
    assert next_src <= 1 << cfg.dram_addr_bits
    dma = Dma(cfg)
    mem = MemModel(cfg.dram_addr_bits, cfg.dram_bits, latency=rng.randint(1, 7),
                   word_cycles=rng.randint(1, 2), row_bits=4, row_cycles=3,
                   refresh_every=53, refresh_cycles=5,
                   init=[image.get(a, 0) for a in range(1 << cfg.dram_addr_bits)])
    top = Module()
    top.submodules.dma, top.submodules.mem = dma, mem
    wiring.connect(top, dma.mem, mem.port)
    writes = []

    async def tb(ctx):
        for buf, addr, count, src, _raw in loads:
            ctx.set(dma.control.start.payload, {"buf": buf.value, "addr": addr,
                                                "count": count, "src": src})
            ctx.set(dma.control.start.valid, 1)
            await ctx.tick().until(dma.control.start.ready)
            ctx.set(dma.control.start.valid, 0)
            await ctx.tick()
            n = dram_words(cfg, buf)
            width = Shape.cast(shapes[buf][0]).width
            for _ in range(count * n * 12 + 200):
                if ctx.get(dma.host.wr_en):
                    writes.append((ctx.get(dma.host.wr_buf), ctx.get(dma.host.wr_addr),
                                   ctx.get(dma.host.wr_data) & ((1 << width) - 1)))
                if not ctx.get(dma.control.busy):
                    break
                await ctx.tick()
            assert not ctx.get(dma.control.busy), f"LOAD of {buf.name} never finished"

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    expect = [(buf, addr + i, w) for buf, addr, _count, _src, raw in loads
              for i, w in enumerate(raw)]
    assert writes == expect
    assert BufId.DRAM not in LOADABLE


def test_bad_memory_settings_are_refused_by_name():
    from hw.device import SimTop

    with pytest.raises(ValueError, match="dram must be one of model, litedram, not 'ddr'"):
        SimTop(_cfg(32), dram="ddr")
    with pytest.raises(ValueError, match="refresh_every must be at least 9, not 8"):
        MemModel(8, 32, refresh_cycles=8, refresh_every=8)
    with pytest.raises(ValueError, match="storage must be 'memory' or 'verilog', not 'x'"):
        MemModel(8, 32, storage="x")
