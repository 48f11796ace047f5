"""Amaranth-simulator harnesses for the compute blocks: ``rtl_*`` functions that run a block
on integer inputs and return the same Python types as the golden reference (``models``).

Each harness preloads the weight buffer (a real ``lib.memory.Memory``), drives the block's
input stream and drains its output stream with seeded random stalls, and counts the
block's event strobes.
"""

from __future__ import annotations

import random

import torch
from amaranth import Elaboratable, Module
from amaranth.lib import memory
from amaranth.sim import Simulator

from hw.arrays import (
    MacArray,
    SpikeArray,
    mac_event_layout,
    spike_event_layout,
    weight_row_layout,
)
from hw.config import AccelConfig
from hw.tile import mac_words, spike_words
from models.encodings import TTFS_KINDS, Encoding

from .streams import Stalls, get, put


def weight_rows(cfg: AccelConfig, w: torch.Tensor) -> list[list[int]]:
    """Weight buffer image: row ``k`` holds ``w[:, k]`` for the tile's lanes (zero padded)."""
    n, k = w.shape
    if n > cfg.lanes or k > cfg.weight_depth:
        raise ValueError(f"weight tile {n}x{k} exceeds {cfg.lanes} lanes x {cfg.weight_depth}")
    rows = torch.zeros(cfg.weight_depth, cfg.lanes, dtype=torch.int64)
    rows[:k, :n] = w.t()
    return rows.tolist()


class _WithWeights(Elaboratable):
    def __init__(self, cfg: AccelConfig, dut, rows):
        self.cfg, self.dut, self.rows = cfg, dut, rows

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.submodules.mem = mem = memory.Memory(shape=weight_row_layout(self.cfg),
                                               depth=self.cfg.weight_depth, init=self.rows)
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(self.dut.w_addr), rp.en.eq(self.dut.w_en),
                     self.dut.w_data.eq(rp.data)]
        return m


def _run(cfg, dut, w, events, layout, rows_out, stall_p, seed, strobes, setup=None):
    top = _WithWeights(cfg, dut, weight_rows(cfg, w))
    sim = Simulator(top)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    src = Stalls(stall_p, random.Random(rng.random()))
    snk = Stalls(stall_p, random.Random(rng.random()))
    result: list[list[int]] = []
    counts = dict.fromkeys(strobes, 0)
    counts["cycles"] = 0
    done = []

    async def producer(ctx):
        if setup:
            setup(ctx)
        for e in events:
            await put(ctx, dut.ev, layout.const(e), src)

    async def consumer(ctx):
        for _ in range(rows_out):
            p = await get(ctx, dut.out, snk)
            result.append([int(p[j]) for j in range(cfg.lanes)])
        await ctx.tick()  # let the monitor see the cycle of the last transfer
        done.append(True)

    async def monitor(ctx):
        async for vals in ctx.tick().sample(*[getattr(dut, s) for s in strobes]):
            if done:
                return
            counts["cycles"] += 1
            for s, v in zip(strobes, vals[2:], strict=True):
                counts[s] += int(v)

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return torch.tensor(result, dtype=torch.int64)[:, : w.shape[0]], counts


def rtl_spike_array(cfg: AccelConfig, codes: torch.Tensor, w: torch.Tensor, enc: Encoding,
                    stall_p: float = 0.2, seed: int = 0):
    """Spike-array accumulators ``[M, N]`` for spike codes ``[M, K]`` and weights ``[N, K]``,
    with counts of its ``spike`` and ``step`` strobes and of cycles."""
    events = spike_words(codes, enc)
    dut = SpikeArray(cfg)
    ttfs = int(enc.kind in TTFS_KINDS)
    return _run(cfg, dut, w, events, spike_event_layout(cfg), codes.shape[0], stall_p, seed,
                ("spike", "step", "busy"), setup=lambda ctx: ctx.set(dut.ttfs, ttfs))


def rtl_mac_array(cfg: AccelConfig, codes: torch.Tensor, shifts: torch.Tensor,
                  channels: list[int], w: torch.Tensor, stall_p: float = 0.2, seed: int = 0):
    """MAC-array accumulators ``[M, N]`` for the integer channels ``channels`` of codes
    ``[M, K]`` (shift per channel), every channel sent whatever its value."""
    mask = torch.zeros(codes.shape[1], dtype=torch.bool)
    mask[channels] = True
    events = mac_words(codes, mask, shifts)
    return _run(cfg, MacArray(cfg), w, events, mac_event_layout(cfg), codes.shape[0], stall_p,
                seed, ("mac", "row", "busy"))


class _WithParams(Elaboratable):
    def __init__(self, cfg: AccelConfig, dut, params):
        self.cfg, self.dut, self.params = cfg, dut, params

    def elaborate(self, platform):
        from hw.neuron import param_layout

        m = Module()
        m.submodules.dut = self.dut
        m.submodules.mem = mem = memory.Memory(shape=param_layout(), depth=self.cfg.lanes,
                                               init=self.params)
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(self.dut.p_addr), rp.en.eq(self.dut.p_en),
                     self.dut.p_data.eq(rp.data)]
        return m


def rtl_output_unit(cfg: AccelConfig, acc: torch.Tensor, mrow: torch.Tensor, consts: dict,
                    shift: int, relu: bool = False, raw: bool = False, stall_p: float = 0.2,
                    seed: int = 0) -> torch.Tensor:
    """Output-unit results ``[M, N]`` for accumulators ``[M, N]`` (N <= lanes), per-row
    ``mrow`` and per-lane constants ``consts`` (``mcol``, ``bias``, ``zp``, ``lo``, ``hi``)."""
    from hw.neuron import OutputUnit, row_in_layout

    m_rows, n = acc.shape
    params = [{k: int(consts[k][j]) for k in ("mcol", "bias", "zp", "lo", "hi")}
              for j in range(n)] + [dict(mcol=0, bias=0, zp=0, lo=0, hi=0)] * (cfg.lanes - n)
    dut = OutputUnit(cfg)
    sim = Simulator(_WithParams(cfg, dut, params))
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    src = Stalls(stall_p, random.Random(rng.random()))
    snk = Stalls(stall_p, random.Random(rng.random()))
    layout = row_in_layout(cfg)
    out: list[list[int]] = [[] for _ in range(m_rows)]

    async def producer(ctx):
        ctx.set(dut.shift, shift)
        ctx.set(dut.relu, int(relu))
        ctx.set(dut.raw, int(raw))
        for r in range(m_rows):
            vec = [int(v) for v in acc[r]] + [0] * (cfg.lanes - n)
            await put(ctx, dut.rows, layout.const({"acc": vec, "mrow": int(mrow[r]),
                                                   "n_active": n}), src)

    async def consumer(ctx):
        for r in range(m_rows):
            for j in range(n):
                v = await get(ctx, dut.out, snk)
                assert (int(v.lane), int(v.last)) == (j, int(j == n - 1)), (r, j)
                out[r].append(int(v.value))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return torch.tensor(out, dtype=torch.int64)
