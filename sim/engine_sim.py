"""Amaranth-simulator harness of the GEMM engine: write tile images, run descriptors,
read results back, count the engine's event strobes."""

from __future__ import annotations

import random

import torch
from amaranth.sim import Simulator

from accel.config import AccelConfig
from accel.layouts import descriptor_layout, onchip_shapes, pack_word, unpack_int
from accel.tiling import TileImage, out_read
from hw.engine import STROBES, Engine

from .blocks import count_strobes


def rtl_engine(cfg: AccelConfig, tiles: list[TileImage], rows: int, n: int,
               seed: int = 0) -> tuple[torch.Tensor, dict[str, int]]:
    """Run ``tiles`` in order (a tile with no words reuses what is resident); return OUT
    rows ``[rows, n]`` and strobe counts (plus cycles)."""
    dut = Engine(cfg)
    shapes = onchip_shapes(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    counts = dict.fromkeys(STROBES, 0) | {"cycles": 0, "busy": 0}
    result: list[list[int]] = []
    finished = []

    async def write(ctx, buf, addr, word):
        ctx.set(dut.host.wr_buf, buf)
        ctx.set(dut.host.wr_addr, addr)
        ctx.set(dut.host.wr_data, pack_word(shapes[buf][0], word))
        ctx.set(dut.host.wr_en, 1)
        await ctx.tick()
        ctx.set(dut.host.wr_en, 0)

    async def host(ctx):
        for tile in tiles:
            for buf, words in tile.words.items():
                for addr, word in enumerate(words, start=tile.base.get(buf, 0)):
                    await write(ctx, buf, addr, word)
            for _ in range(rng.randrange(3)):
                await ctx.tick()
            ctx.set(dut.run.payload, descriptor_layout(cfg).const(tile.descriptor))
            ctx.set(dut.run.valid, 1)
            await ctx.tick().until(dut.run.ready)
            ctx.set(dut.run.valid, 0)
            await ctx.tick().until(dut.done)
        # each output tile's rows, packed n_active apart from row_base * lanes; a later
        # tile's rows replace an earlier one's
        result.extend([0] * n for _ in range(rows))
        for tile in tiles:
            d = tile.descriptor
            if d["keep"]:
                continue
            buf, base, _ = out_read(cfg, tile)
            for r in range(min(d["rows"], rows - d["row_base"])):
                for j in range(min(n, d["n_active"])):
                    ctx.set(dut.host.rd_buf, buf)
                    ctx.set(dut.host.rd_addr, base + r * d["n_active"] + j)
                    ctx.set(dut.host.rd_en, 1)
                    await ctx.tick()  # the engine registers the request,
                    ctx.set(dut.host.rd_en, 0)
                    await ctx.tick()  # then reads the word
                    result[d["row_base"] + r][j] = unpack_int(shapes[buf][0],
                                                              ctx.get(dut.host.rd_data))
        ctx.set(dut.host.rd_en, 0)
        finished.append(True)

    sim.add_testbench(host)
    strobes = {**{n: getattr(dut.strobes, n) for n in STROBES}, "busy": dut.busy}
    sim.add_testbench(count_strobes(strobes, counts, finished), background=True)
    sim.run()
    return torch.tensor(result, dtype=torch.int64), counts
