"""The spike encoder writes exactly ``accel.tiling.spike_words`` of the code buffer's codes,
in ``accel.cycles.encode_cycles`` cycles, and ``accel.tiling.mac_words`` of a channel table
and int8 values in ``accel.encoder.mac_cycles``; it refuses what it cannot do without
writing outside the host's range."""

import random

import pytest
import torch
from amaranth import Module
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from accel.config import CODES_PER_WORD, AccelConfig
from accel.encoder import encode_cycles, mac_cycles, mac_groups
from accel.layouts import (
    BufId,
    code_word_layout,
    code_words,
    mac_event_layout,
    spike_event_layout,
    word_packer,
)
from accel.protocol import EXPAND_ARGS, unpack_args
from accel.tiling import mac_words, spike_words
from hw.encoder import SpikeEncoder
from models.encodings import Encoding


def _cfg(spike_rows=4, weight_depth=64, depth=512):
    return AccelConfig(lanes=4, mac_units=2, weight_depth=weight_depth, max_rows=16,
                       spike_event_depth=depth, mac_event_depth=64, spike_rows=spike_rows,
                       max_steps=15, spike_encoder=True)


def _run(cfg, words, args, buf=BufId.SPIKE_EV):
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
                assert ctx.get(enc.host.wr_buf) == buf
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


def _mac_cfg(spike_rows=4, depth=64, max_shift=7):
    return AccelConfig(lanes=4, mac_units=2, weight_depth=64, max_rows=16,
                       spike_event_depth=64, mac_event_depth=depth, spike_rows=spike_rows,
                       max_steps=15, max_shift=max_shift, spike_encoder=True)


def _mac_words(rng, cfg, rows, chans):
    """A tile's MAC words (``accel.tiling.mac_words``): ``chans`` integer channels of the
    K tile, in order, each with a shift, and int8 values (zeros among them)."""
    ks = sorted(rng.sample(range(cfg.k_tile), chans))
    mask = torch.zeros(cfg.k_tile, dtype=torch.bool)
    mask[ks] = True
    shifts = torch.tensor([rng.randint(0, cfg.max_shift) for _ in range(cfg.k_tile)])
    codes = torch.tensor([[rng.choice([0, -128, 127, rng.randint(-128, 127)])
                           for _ in range(cfg.k_tile)] for _ in range(rows)])
    return mac_words(codes, mask, shifts)


def _mac_run(cfg, words, dst):
    """Each EXPAND of ``mac_groups`` run over its code-buffer words: the MAC-event words
    written ({addr: word}), whether any was refused, and each one's cycles."""
    written, bads, cycles = {}, [], []
    for g in mac_groups(cfg, words, dst):
        code = [[0] * CODES_PER_WORD for _ in range(cfg.code_words)]
        for at, block in g.blocks:
            code[at:at + len(block)] = block
        args = unpack_args(EXPAND_ARGS, g.payload)
        w, bad, n = _run(cfg, code[:max(a + len(b) for a, b in g.blocks)],
                         {f: int(getattr(args, f)) for f in EXPAND_ARGS.members},
                         buf=BufId.MAC_EV)
        assert not set(w) & set(written)
        written |= w
        bads.append(bad)
        cycles.append((n, mac_cycles(int(args.rows), int(args.k))))
    return written, bads, cycles


@pytest.mark.parametrize("seed", range(8))
def test_encoder_writes_the_mac_words_of_a_table_and_values(seed):
    """The MAC mode: random channels, shifts and int8 values (0, -128, 127 among them),
    one row to more rows than one EXPAND's code buffer holds: every word as
    ``accel.tiling.mac_words`` packs it, in ``accel.encoder.mac_cycles`` cycles."""
    rng = random.Random(seed)
    cfg = _mac_cfg(spike_rows=rng.choice([2, 4, 8]), depth=rng.choice([256, 1024]),
                   max_shift=rng.choice([1, 7, 15]))
    # the most channels whose table and one row of values the code buffer holds
    most = max(c for c in range(1, cfg.k_tile + 1) if -(-c // 2) + -(-c // 4) <= cfg.code_words)
    chans = rng.choice([1, most, rng.randint(1, most)])
    rows = rng.randint(1, max(1, (cfg.mac_event_depth - 1) // (chans + 1)))
    words = _mac_words(rng, cfg, rows, chans)
    assert len(mac_groups(cfg, words, 0)) == -(-rows // min(
        255, (cfg.code_words - -(-chans // 2)) * 4 // chans))
    dst = rng.randint(0, cfg.mac_event_depth - len(words))
    written, bads, cycles = _mac_run(cfg, words, dst)
    pack = word_packer(mac_event_layout(cfg))
    assert not any(bads)
    assert [written.get(dst + i) for i in range(len(words))] == [pack(w) for w in words]
    assert len(written) == len(words)
    assert all(n == want for n, want in cycles)


def test_mac_groups_refuse_what_the_encoder_cannot_make():
    """Rows naming other channels or shifts, a value that is not int8, a table the code
    buffer cannot hold beside a row: the host writes the words (None)."""
    cfg = _mac_cfg()
    rng = random.Random(1)
    words = _mac_words(rng, cfg, 3, 5)
    assert mac_groups(cfg, words, 0) is not None
    other = [dict(w) for w in words]
    other[7]["shift"] = (other[7]["shift"] + 1) % 8
    assert mac_groups(cfg, other, 0) is None
    wide = [dict(w) for w in words]
    wide[2]["q"] = 200
    assert mac_groups(cfg, wide, 0) is None
    assert mac_groups(_mac_cfg(spike_rows=1), _mac_words(rng, cfg, 2, cfg.k_tile), 0) is None


@pytest.mark.parametrize("change", [dict(rows=0), dict(k=0), dict(k=33), dict(steps=1),
                                    dict(signed=1), dict(mac=2), dict(dst=120),
                                    dict(count=17), dict(count=19),
                                    dict(rows=12, count=72, dst=0)])
def test_encoder_refuses_a_mac_expand_it_cannot_do(change):
    """A MAC EXPAND with no rows or channels, more channels than a K tile, a window or
    sign, words past the buffer's end, a count other than the words (17, 19 for 18), more
    rows than the code buffer holds (12 rows of 5 values after a table of 3 words: a read
    past its 16 words, with the count those rows make): refused, nothing written outside
    ``dst .. dst + count - 1``."""
    cfg = _mac_cfg(depth=128)
    assert cfg.code_words == 16
    words = _mac_words(random.Random(2), cfg, 3, 5)
    g, = mac_groups(cfg, words, 4)
    assert [(at, len(b)) for at, b in g.blocks] == [(0, 3), (3, 4)]
    code = [[0] * CODES_PER_WORD for _ in range(cfg.code_words)]
    for at, block in g.blocks:
        code[at:at + len(block)] = block
    args = unpack_args(EXPAND_ARGS, g.payload)
    args = {f: int(getattr(args, f)) for f in EXPAND_ARGS.members} | change
    written, bad, _ = _run(cfg, code, args, buf=BufId.MAC_EV)
    assert bad
    assert all(args["dst"] <= a < args["dst"] + args["count"] for a in written)
