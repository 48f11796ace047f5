"""The spike encoder writes exactly ``accel.tiling.spike_words`` of the code buffer's codes,
in ``accel.cycles.encode_cycles`` cycles, and refuses what it cannot do without writing
outside the host's range."""

import random

import pytest
import torch
from amaranth import Module
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from accel.config import AccelConfig
from accel.encoder import encode_cycles
from accel.layouts import BufId, code_word_layout, code_words, spike_event_layout, word_packer
from accel.tiling import spike_words
from hw.encoder import SpikeEncoder
from models.encodings import Encoding


def _cfg(spike_rows=4, weight_depth=64, depth=512):
    return AccelConfig(lanes=4, mac_units=2, weight_depth=weight_depth, max_rows=16,
                       spike_event_depth=depth, mac_event_depth=64, spike_rows=spike_rows,
                       max_steps=15, spike_encoder=True)


def _run(cfg, words, args):
    """Runs one EXPAND over code-buffer ``words``: (written {addr: word}, bad, cycles from
    the start's acceptance to ``done``)."""
    m = Module()
    m.submodules.enc = enc = SpikeEncoder(cfg)
    m.submodules.mem = mem = memory.Memory(shape=code_word_layout(), depth=cfg.code_words,
                                           init=[])
    wiring.connect(m, mem.read_port(), enc.codes)
    wp = mem.write_port()
    sim = Simulator(m)
    sim.add_clock(1e-6)
    written, res = {}, {}

    async def bench(ctx):
        for a, w in enumerate(words):
            ctx.set(wp.addr, a)
            ctx.set(wp.data, w)
            ctx.set(wp.en, 1)
            await ctx.tick()
        ctx.set(wp.en, 0)
        for f, v in args.items():
            ctx.set(getattr(enc.start.payload, f), v)
        ctx.set(enc.start.valid, 1)
        await ctx.tick().until(enc.start.ready)
        ctx.set(enc.start.valid, 0)
        n = 0
        while True:
            n += 1
            if ctx.get(enc.host.wr_en):
                assert ctx.get(enc.host.wr_buf) == BufId.SPIKE_EV
                a = ctx.get(enc.host.wr_addr)
                assert a not in written
                written[a] = ctx.get(enc.host.wr_data)
            if ctx.get(enc.done):
                res["bad"] = ctx.get(enc.bad)
                break
            assert n < 200_000
            await ctx.tick()
        res["cycles"] = n
        await ctx.tick()
        assert not ctx.get(enc.busy)

    sim.add_testbench(bench)
    sim.run()
    return written, res["bad"], res["cycles"]


def _expect(cfg, codes, enc):
    pack = word_packer(spike_event_layout(cfg))
    return [pack(w) for w in spike_words(codes, enc, True, cfg.spike_rows)]


ENCODINGS = [Encoding("ttfs-signed", 4), Encoding("ttfs", 4), Encoding("ttfs", 1),
             Encoding("ttfs-signed", 2), Encoding("ttfs", 3)]


@pytest.mark.parametrize("seed", range(8))
def test_encoder_writes_the_spike_words_of_its_codes(seed):
    rng = random.Random(seed)
    cfg = _cfg(spike_rows=rng.choice([1, 2, 4, 8]), weight_depth=rng.choice([2, 16, 64]))
    enc = rng.choice(ENCODINGS)
    rows = rng.randint(1, cfg.spike_rows)
    k = rng.choice([1, cfg.k_tile, rng.randint(1, cfg.k_tile)])
    t = enc.time_steps
    lo = -t if enc.signed else 0
    density = rng.choice([0.0, 0.3, 1.0])
    codes = torch.tensor([[rng.randint(lo, t) if rng.random() < density else 0
                           for _ in range(k)] for _ in range(rows)])
    want = _expect(cfg, codes, enc)
    dst = rng.randint(0, cfg.spike_event_depth - len(want))
    written, bad, cycles = _run(cfg, code_words(codes), dict(
        dst=dst, count=len(want), rows=rows, k=k, steps=t, signed=int(enc.signed)))
    assert not bad
    assert [written.get(dst + i) for i in range(len(want))] == want
    assert len(written) == len(want)
    assert cycles == encode_cycles(rows, k, t)


def test_encoder_refuses_a_wrong_count_and_stays_in_range():
    cfg = _cfg()
    enc = Encoding("ttfs-signed", 4)
    codes = torch.tensor([[3, -7, 0, 1, 5], [0, 0, 2, -2, 7]])
    want = _expect(cfg, codes, enc)
    args = dict(dst=10, rows=2, k=5, steps=7, signed=1)
    written, bad, _ = _run(cfg, code_words(codes), args | dict(count=len(want) - 3))
    assert bad and sorted(written) == list(range(10, 10 + len(want) - 3))
    _, bad, _ = _run(cfg, code_words(codes), args | dict(count=len(want) + 1))
    assert bad


@pytest.mark.parametrize("change", [dict(rows=0), dict(rows=5), dict(k=0), dict(k=33),
                                    dict(steps=0), dict(steps=16), dict(signed=2),
                                    dict(dst=500), dict(steps=3)])
def test_encoder_refuses_what_it_cannot_do(change):
    """Rows beyond its slots, inputs beyond a K tile, a window a 4-bit code cannot fill,
    events past the buffer's end, a code larger than the window (steps=3 with codes
    of 7): refused."""
    cfg = _cfg()
    enc = Encoding("ttfs-signed", 4)
    codes = torch.tensor([[3, -7, 0, 1], [0, 0, 2, -2]])
    want = _expect(cfg, codes, enc)
    args = dict(dst=0, count=len(want), rows=2, k=4, steps=7, signed=1) | change
    written, bad, _ = _run(cfg, code_words(codes), args)
    assert bad
    assert all(args["dst"] <= a < args["dst"] + args["count"] for a in written)
