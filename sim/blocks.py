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
from amaranth.lib import data, memory, wiring
from amaranth.sim import Simulator

from accel.config import AccelConfig
from accel.layouts import (
    MacOp,
    mac_event_layout,
    spike_event_layout,
    weight_row_layout,
    wide_weights,
)
from accel.tiling import REQ_CONSTS, mac_words, spike_words
from hw.arrays import MacArray, SpikeArray, row_reuse
from hw.pipe import Register
from models.encodings import TTFS_KINDS, Encoding

from .streams import Stalls, get, put, ring_rows, stream_rules, take_rows


def weight_rows(cfg: AccelConfig, w: torch.Tensor) -> list[list[int]]:
    """Weight buffer image: row ``k`` holds ``w[:, k]`` for the tile's lanes (zero padded)."""
    n, k = w.shape
    if n > cfg.lanes or k > cfg.weight_depth:
        raise ValueError(f"weight tile {n}x{k} exceeds {cfg.lanes} lanes x {cfg.weight_depth}")
    rows = torch.zeros(cfg.weight_depth, cfg.lanes, dtype=torch.int64)
    rows[:k, :n] = w.t()
    return rows.tolist()


class WithMemory(Elaboratable):
    """Wraps ``dut`` with a preloaded ``Memory`` on one of its read-port interfaces
    (``{prefix}_addr``, ``{prefix}_en``, ``{prefix}_data``)."""

    def __init__(self, dut, prefix: str, shape, depth: int, init):
        self.dut, self.prefix, self.shape, self.depth, self.init = dut, prefix, shape, depth, init

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.submodules.mem = mem = memory.Memory(shape=self.shape, depth=self.depth,
                                               init=self.init)
        rp = mem.read_port()
        port = lambda s: getattr(self.dut, f"{self.prefix}_{s}")  # noqa: E731
        m.d.comb += [rp.addr.eq(port("addr")), rp.en.eq(port("en")), port("data").eq(rp.data)]
        return m


class FedSpikeArray(wiring.Component):
    """The spike array behind the register that feeds it in the engine (``hw.engine``): the
    register carries each event's ``reuse`` (:func:`hw.arrays.row_reuse`), one cycle of
    latency. Its ports are the array's but ``reuse``."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.array = SpikeArray(cfg)
        super().__init__(wiring.Signature({n: mb for n, mb in self.array.signature.members.items()
                                           if n != "reuse"}))

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = arr = self.array
        m.submodules.stage = st = Register(data.StructLayout(
            {"ev": spike_event_layout(self.cfg), "reuse": 1}))
        m.d.comb += [st.i.valid.eq(self.ev.valid), self.ev.ready.eq(st.i.ready),
                     st.i.payload.ev.eq(self.ev.payload),
                     st.i.payload.reuse.eq(row_reuse(m, self.ev.valid & st.i.ready,
                                                     self.ev.payload, self.ev.payload.k)),
                     arr.ev.valid.eq(st.o.valid), st.o.ready.eq(arr.ev.ready),
                     arr.ev.payload.eq(st.o.payload.ev), arr.reuse.eq(st.o.payload.reuse)]
        for name, member in self.signature.members.items():
            if name == "ev":
                continue
            if name == "out":
                wiring.connect(m, arr.out, wiring.flipped(self.out))
            elif member.flow == wiring.Out:
                m.d.comb += getattr(self, name).eq(getattr(arr, name))
            else:
                m.d.comb += getattr(arr, name).eq(getattr(self, name))
        return m


def count_strobes(strobes: dict, counts: dict, finished: list):
    """A background testbench adding up 1-bit strobes (``{name: signal}``; and cycles) into
    ``counts`` until ``finished`` is non-empty."""
    names = list(strobes)

    async def monitor(ctx):
        async for vals in ctx.tick().sample(*strobes.values()):
            if finished:
                return
            counts["cycles"] = counts.get("cycles", 0) + 1
            for s, v in zip(names, vals[2:], strict=True):
                counts[s] = counts.get(s, 0) + int(v)

    return monitor


def _run(cfg, dut, w, events, layout, rows_out, stall_p, seed, strobes, setup=None,
         rows_port=None):
    """Run an array on ``events``; its finished rows come from ``rows_port`` (a
    :func:`hw.rings.rows_signature` port of ``row_fifo_depth`` slots, the MAC array), or
    from its output into a ring of ``spike_fifo_depth`` rows that the block must not
    overfill (``dut.release`` frees one; the spike array)."""
    top = WithMemory(dut, "w", weight_row_layout(cfg), cfg.weight_depth, weight_rows(cfg, w))
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
        if rows_port is not None:
            await take_rows(ctx, rows_port, rows_out, cfg.lanes, cfg.row_fifo_depth, snk,
                            result)
        else:
            await ring_rows(ctx, dut.out, dut.release, rows_out, cfg.spike_fifo_depth, snk,
                            result)
        await ctx.tick()  # let the monitor see the cycle of the last transfer
        done.append(True)

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(count_strobes({s: getattr(dut, s) for s in strobes}, counts, done),
                      background=True)
    sim.run()
    return torch.tensor(result, dtype=torch.int64)[:, : w.shape[0]], counts


def rtl_spike_array(cfg: AccelConfig, codes: torch.Tensor, w: torch.Tensor, enc: Encoding,
                    stall_p: float = 0.2, seed: int = 0):
    """Spike-array accumulators ``[M, N]`` for spike codes ``[M, K]`` and weights ``[N, K]``,
    with counts of its ``spike`` and ``step`` strobes, its weight reads (``w_en``) and of
    cycles. Rows are interleaved ``cfg.spike_rows`` at a time."""
    events = spike_words(codes, enc, slots=cfg.spike_rows)
    dut = FedSpikeArray(cfg)
    ttfs = int(enc.kind in TTFS_KINDS)
    return _run(cfg, dut, w, events, spike_event_layout(cfg), codes.shape[0], stall_p, seed,
                ("spike", "step", "busy", "w_en"), setup=lambda ctx: ctx.set(dut.ttfs, ttfs))


def rtl_mac_array(cfg: AccelConfig, codes: torch.Tensor, shifts: torch.Tensor,
                  channels: list[int], w: torch.Tensor, stall_p: float = 0.2, seed: int = 0,
                  bare_rows: frozenset[int] = frozenset()):
    """MAC-array accumulators ``[M, N]`` for the integer channels ``channels`` of codes
    ``[M, K]`` (shift per channel), every channel sent whatever its value, except in the
    rows ``bare_rows``: those get their END only (the array must read them as zero, even
    in a slot an earlier row left sums in)."""
    mask = torch.zeros(codes.shape[1], dtype=torch.bool)
    mask[channels] = True
    events, row = [], 0
    for e in mac_words(codes, mask, shifts):
        if e["op"] == MacOp.END or row not in bare_rows:
            events.append(e)
        row += e["op"] == MacOp.END
    dut = MacArray(cfg)
    # whole rows only when the weights need them: narrow tiles sign-extend the low bits
    wide = int(bool(wide_weights(w, cfg.narrow_bits).any()))
    return _run(cfg, dut, w, events, mac_event_layout(cfg), codes.shape[0], stall_p, seed,
                ("mac", "row", "busy"), setup=lambda ctx: ctx.set(dut.wide, wide),
                rows_port=dut.rows)


def rtl_output_unit(cfg: AccelConfig, acc: torch.Tensor, mrow: torch.Tensor, consts: dict,
                    shift: int, relu: bool = False, raw: bool = False, stall_p: float = 0.2,
                    seed: int = 0) -> torch.Tensor:
    """Output-unit results ``[M, N]`` for accumulators ``[M, N]`` (N <= lanes), per-row
    ``mrow`` and per-lane constants ``consts`` (``mcol``, ``bias``, ``zp``, ``lo``, ``hi``),
    the lanes sent one at a time as the combiner sends them."""
    from accel.layouts import lane_in_layout, param_layout
    from hw.neuron import OutputUnit

    m_rows, n = acc.shape
    params = [{k: int(consts[k][j]) for k in REQ_CONSTS}
              for j in range(n)] + [dict.fromkeys(REQ_CONSTS, 0)] * (cfg.lanes - n)
    dut = OutputUnit(cfg)
    sim = Simulator(WithMemory(dut, "p", param_layout(), cfg.lanes, params))
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    src = Stalls(stall_p, random.Random(rng.random()))
    snk = Stalls(stall_p, random.Random(rng.random()))
    layout = lane_in_layout(cfg)
    out: list[list[int]] = [[] for _ in range(m_rows)]

    async def producer(ctx):
        ctx.set(dut.shift, shift)
        ctx.set(dut.relu, int(relu))
        ctx.set(dut.raw, int(raw))
        for r in range(m_rows):
            for j in range(n):
                await put(ctx, dut.inp, layout.const({"acc": int(acc[r, j]),
                                                      "mrow": int(mrow[r]), "lane": j,
                                                      "last": int(j == n - 1)}), src)

    async def consumer(ctx):
        for r in range(m_rows):
            for j in range(n):
                v = await get(ctx, dut.out, snk)
                assert (int(v.lane), int(v.last)) == (j, int(j == n - 1)), (r, j)
                out[r].append(int(v.value))

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(stream_rules({"out": dut.out}), background=True)
    sim.run()
    return torch.tensor(out, dtype=torch.int64)
