"""GEMM engine (buffers + both arrays + output unit + sequencer) against the golden model."""

import random

import pytest
import torch

from accel.config import PRESETS
from accel.tiling import build_tile
from models.contract import requantize
from models.encodings import Encoding
from models.golden import gemm
from sim.engine_sim import rtl_engine
from sim.streams import samples, seed

CFG = PRESETS["tiny"]


def _operands(rng, enc, m, k, n, n_int):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    q = torch.randint(enc.qmin, enc.qmax + 1, (m, k), generator=g)
    chans = rng.sample(range(k), n_int)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[chans] = True
    q = torch.where(mask, torch.randint(-127, 128, (m, k), generator=g), q)
    shifts = torch.where(mask, torch.randint(0, 6, (k,), generator=g), 0)
    w = torch.randint(-8, 8, (n, k), generator=g)
    start = torch.randint(-1000, 1000, (n,), generator=g)
    return q, mask, shifts, w, start


@pytest.mark.parametrize("enc", [Encoding("ttfs", 4), Encoding("ttfs-signed", 4),
                                 Encoding("rate", steps=8), Encoding("ternary", steps=3)],
                         ids=lambda e: e.name())
def test_engine_tile_requantized_equals_golden(enc):
    rng = random.Random(seed() + 3)
    # one active lane (the combiner's row is its first lane's), some, and all lanes
    widths = [w for _ in range(samples(1)) for w in (1, rng.randrange(2, CFG.lanes), CFG.lanes)]
    for n in widths:
        m, k = 3, rng.randrange(8, 40)
        q, mask, shifts, w, start = _operands(rng, enc, m, k, n, rng.randrange(0, 4))
        acc, ev = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t")
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        consts = dict(mcol=torch.randint(1, 2**15, (n,), generator=g),
                      bias=torch.randint(-(2**20), 2**20, (n,), generator=g),
                      zp=torch.zeros(n, dtype=torch.int64), lo=torch.full((n,), -127),
                      hi=torch.full((n,), 127))
        mrow = torch.randint(1, 2**16, (m,), generator=g)
        shift = 20
        want = requantize(acc[0], consts["mcol"], shift, mrow, consts["bias"], consts["zp"],
                          consts["lo"], consts["hi"])
        tile = build_tile(CFG, q, mask, shifts, enc, w, start=start, mrow=mrow, consts=consts,
                          shift=shift)
        got, counts = rtl_engine(CFG, [tile], m, n, seed=rng.random())
        assert torch.equal(got, want)
        assert counts["spike"] * n == ev.acc_spike
        assert counts["step"] * n == ev.acc_step
        assert counts["mac_row"] * n == ev.macs
        assert counts["out_wr"] == m * n


def test_engine_k_tiled_over_two_weight_loads_accumulates_on_chip():
    rng = random.Random(seed() + 5)
    enc = Encoding("ttfs", 4)
    m, k, n = 3, 2 * CFG.weight_depth - 9, CFG.lanes  # K larger than the weight buffer
    q, mask, shifts, w, start = _operands(rng, enc, m, k, n, 3)
    acc, _ = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t")
    ones = dict(mcol=[1] * n, bias=[0] * n, zp=[0] * n, lo=[0] * n, hi=[0] * n)
    half = CFG.weight_depth
    t1 = build_tile(CFG, q[:, :half], mask[:half], shifts[:half], enc, w[:, :half],
                    start=start, keep=True)
    t2 = build_tile(CFG, q[:, half:], mask[half:], shifts[half:], enc, w[:, half:],
                    consts=ones, raw=True, resume=True)
    got, counts = rtl_engine(CFG, [t1, t2], m, n)
    assert torch.equal(got, acc[0])
    # lane by lane: the first K tile reads the start values and keeps its sums, the second
    # reads them back; raw results read no requantizer constants
    assert (counts["start_rd"], counts["acc_wr"], counts["acc_rd"], counts["par_rd"]) == (
        m * n, m * n, m * n, 0)


def test_engine_all_silent_rows_cost_only_steps():
    enc = Encoding("ttfs", 4)
    q = torch.zeros(2, 20, dtype=torch.int64)
    z = torch.zeros(20, dtype=torch.bool)
    w = torch.ones(CFG.lanes, 20, dtype=torch.int64)
    ones = dict(mcol=[1] * 4, bias=[0] * 4, zp=[0] * 4, lo=[0] * 4, hi=[0] * 4)
    tile = build_tile(CFG, q, z, torch.zeros(20, dtype=torch.int64), enc, w,
                      start=torch.tensor([1, 2, 3, 4]), consts=ones, raw=True)
    got, counts = rtl_engine(CFG, [tile], 2, 4)
    assert got.tolist() == [[1, 2, 3, 4]] * 2
    assert counts["spike"] == 0 and counts["step"] == 2 * 15 and counts["w_rd_spike"] == 0


def test_engine_rows_faster_than_the_output_unit_wait_without_corruption():
    # rate T=1: a row costs a few cycles, the output unit needs 16 per row: the combiner
    # must hold its start value and partials while the unit is busy
    from accel.config import AccelConfig

    cfg = AccelConfig(lanes=16, mac_units=16, weight_depth=64, max_rows=8,
                      spike_event_depth=512, mac_event_depth=128, spike_rows=8)
    enc = Encoding("rate", steps=1)
    rng = random.Random(seed() + 9)
    q, mask, shifts, w, start = _operands(rng, enc, 8, 12, 16, 1)
    acc, _ = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t")
    ones = dict(mcol=[1] * 16, bias=[0] * 16, zp=[0] * 16, lo=[0] * 16, hi=[0] * 16)
    start_tile = build_tile(cfg, q, mask, shifts, enc, w, start=start, consts=ones, raw=True)
    got, _ = rtl_engine(cfg, [start_tile], 8, 16)
    assert torch.equal(got, acc[0])


def test_engine_tiles_at_base_addresses_stay_resident():
    from dataclasses import replace

    from accel.layouts import BufId

    enc = Encoding("ttfs", 4)
    rng = random.Random(seed() + 13)
    ones = dict(mcol=[1] * 4, bias=[0] * 4, zp=[0] * 4, lo=[0] * 4, hi=[0] * 4)
    cases = []
    for bases in ({}, {BufId.WEIGHTS: 30, BufId.SPIKE_EV: 700, BufId.MAC_EV: 40,
                       BufId.ROWS: 4}):
        q, mask, shifts, w, start = _operands(rng, enc, 3, 20, 4, 2)
        acc, _ = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t")
        tile = build_tile(CFG, q, mask, shifts, enc, w, start=start, consts=ones, raw=True,
                          bases=bases)
        cases.append((tile, acc[0]))
    (ta, want_a), (tb, want_b) = cases
    # A, then B at other addresses, then A again from what is still resident (only the
    # start values, at the same addresses for both, are rewritten)
    again = replace(ta, words={BufId.START: ta.words[BufId.START]})
    got, _ = rtl_engine(CFG, [ta, tb, again], 7, 4)
    assert torch.equal(got[0:3], want_a) and torch.equal(got[4:7], want_b)


def test_fast_word_packing_equals_amaranth_const():
    """pack_word computes the bits itself; they must be Amaranth's, for every buffer."""
    import random

    from amaranth import Shape
    from amaranth.lib import data

    from accel.config import PRESETS, AccelConfig
    from accel.layouts import buffer_shapes, pack_word

    rng = random.Random(1)

    def rand_word(shape):
        if isinstance(shape, data.StructLayout):
            return {n: rand_word(f.shape) for n, f in shape}
        if isinstance(shape, data.ArrayLayout):
            return [rand_word(shape.elem_shape) for _ in range(shape.length)]
        if isinstance(shape, type):
            return rng.choice(list(shape))
        s = Shape.cast(shape)
        lo = -(1 << (s.width - 1)) if s.signed else 0
        return rng.randrange(lo, lo + (1 << s.width))

    for cfg in (PRESETS["tiny"], PRESETS["ulx3s-85f"], AccelConfig(lanes=8, mac_units=2)):
        for shape, _ in buffer_shapes(cfg).values():
            for _ in range(30):
                w = rand_word(shape)
                want = (shape.const(w).as_bits() if isinstance(shape, data.Layout)
                        else w & ((1 << Shape.cast(shape).width) - 1))
                assert pack_word(shape, w) == want


@pytest.mark.parametrize("abort", [False, True])
def test_host_writes_land_beside_an_abort_and_back_to_back(abort):
    """Host writes pass a register stage before the buffers: a word written in the cycle
    of an abort (the engine's flush) is kept, and back-to-back writes to every buffer the
    host can read back hold what was written, read from two cycles after the last."""
    from amaranth.hdl import Shape
    from amaranth.sim import Simulator

    from accel.layouts import HOST_READABLE, VIEWS, BufId, onchip_shapes
    from hw.engine import Engine

    rng = random.Random(seed() + 17)
    dut = Engine(CFG)
    shapes = onchip_shapes(CFG)
    bufs = sorted((HOST_READABLE - VIEWS.keys()) & shapes.keys(), key=lambda b: b.value)
    wrote = {}

    async def tb(ctx):
        for b in bufs:
            shape, depth = shapes[b]
            addr, bits = rng.randrange(depth), rng.getrandbits(Shape.cast(shape).width)
            ctx.set(dut.host.wr_buf, b)
            ctx.set(dut.host.wr_addr, addr)
            ctx.set(dut.host.wr_data, bits)
            ctx.set(dut.host.wr_en, 1)
            ctx.set(dut.abort, abort)
            await ctx.tick()
            wrote[b] = (addr, bits)
        ctx.set(dut.host.wr_en, 0)
        ctx.set(dut.abort, 0)
        await ctx.tick().repeat(2)
        for b, (addr, bits) in wrote.items():
            ctx.set(dut.host.rd_buf, b)
            ctx.set(dut.host.rd_addr, addr)
            ctx.set(dut.host.rd_en, 1)
            await ctx.tick()  # the request is registered, then the word read
            ctx.set(dut.host.rd_en, 0)
            await ctx.tick()
            width = Shape.cast(shapes[b][0]).width
            assert ctx.get(dut.host.rd_data) & ((1 << width) - 1) == bits, b.name

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert BufId.WEIGHTS in wrote and len(wrote) >= 5
