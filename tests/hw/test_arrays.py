"""Spike-accumulate and MAC arrays against the golden model, bit for bit, with stalls."""

import random
from dataclasses import replace

import pytest
import torch

from accel.config import AccelConfig
from accel.cycles import mac_row_cost
from accel.layouts import SpikeOp, spike_event_layout
from accel.tiling import fetch_count, spike_words
from models.encodings import TTFS_KINDS, Encoding
from models.golden import gemm
from sim.blocks import FedSpikeArray, _run, rtl_mac_array, rtl_spike_array
from sim.streams import samples, seed

CFG = AccelConfig(lanes=4, mac_units=2, weight_depth=64, max_steps=15, spike_rows=2)
ENCODINGS = [Encoding("ttfs", 4), Encoding("ttfs-signed", 4), Encoding("rate", steps=8),
             Encoding("graded", steps=5, levels=3), Encoding("ternary", steps=4),
             Encoding("ternary", steps=3, levels=2)]


def _case(rng, enc, m, k, n, fill=None):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    if fill == "silent":
        q = torch.zeros(m, k, dtype=torch.int64)
    elif fill == "extreme":
        q = torch.where(torch.rand(m, k, generator=g) < 0.5, enc.qmin, enc.qmax)
    else:
        q = torch.randint(enc.qmin, enc.qmax + 1, (m, k), generator=g)
    w = torch.randint(-128, 128, (n, k), generator=g)
    return q, w


@pytest.mark.parametrize("enc", ENCODINGS, ids=lambda e: e.name())
@pytest.mark.parametrize("fill", [None, "extreme", "silent"])
@pytest.mark.parametrize("slots", [1, 2, 4])
def test_spike_array_equals_golden(enc, fill, slots):
    rng = random.Random(seed() + slots)
    cfg = replace(CFG, spike_rows=slots)
    for _ in range(samples(1)):
        m, k, n = rng.randrange(1, 6), rng.randrange(1, 38), rng.randrange(1, CFG.lanes + 1)
        q, w = _case(rng, enc, m, k, n, fill)
        want, ev = gemm(q[None], torch.zeros(1, k, dtype=torch.bool),
                        torch.zeros(1, k, dtype=torch.int64), enc, w[None], None, "t")
        got, counts = rtl_spike_array(cfg, q, w, enc, stall_p=0.25, seed=rng.random())
        assert torch.equal(got, want[0])
        assert counts["spike"] == ev.spike_units
        assert counts["spike"] * n == ev.acc_spike
        assert counts["step"] * n == ev.acc_step
        assert counts["step"] == (m * enc.time_steps if enc.kind in TTFS_KINDS else 0)
        assert counts["w_en"] == fetch_count(spike_words(q, enc, slots=slots))


def test_rows_spiking_on_one_input_at_one_step_share_a_weight_read():
    # 4 rows, all code 7 on input 0 and 3 on input 1: at each of the two spike times one
    # read serves every row, instead of one read per spike
    enc = Encoding("ttfs-signed", 4)
    q = torch.tensor([[7, 3], [-7, 3], [7, -3], [7, 3]])
    w = torch.tensor([[1, 10], [-2, 20], [3, 30], [4, -40]])
    for slots, reads in ((4, 2), (2, 4), (1, 8)):
        got, counts = rtl_spike_array(replace(CFG, spike_rows=slots), q, w, enc, stall_p=0.3)
        assert torch.equal(got, q @ w.t())
        assert counts["spike"] == 8 and counts["w_en"] == reads, slots


def test_spike_array_work_is_proportional_to_spikes():
    enc = Encoding("ttfs", 4)
    q = torch.zeros(2, 30, dtype=torch.int64)
    q[0, 3] = 5
    w = torch.ones(4, 30, dtype=torch.int64)
    got, counts = rtl_spike_array(CFG, q, w, enc, stall_p=0.0)
    assert got[0].tolist() == [5] * 4 and got[1].tolist() == [0] * 4
    assert counts["spike"] == 1
    # busy: 1 spike + 2*15 steps + 2 ends, independent of K = 30
    assert counts["busy"] == 1 + 2 * 15 + 2


def _mac_case(rng, enc, m, k, n, fill):
    """Codes and weights (``_case``) with a random set of integer channels (the others
    zero), their shifts, and the golden accumulators and events."""
    q, w = _case(rng, enc, m, k, n, fill)
    chans = sorted(rng.sample(range(k), rng.randrange(1, k + 1)))
    mask = torch.zeros(k, dtype=torch.bool)
    mask[chans] = True
    shifts = torch.where(mask, torch.randint(0, 8, (k,)), 0)
    q = q.masked_fill(~mask, 0)
    want, ev = gemm(q[None], mask[None], shifts[None], Encoding("ttfs", 4), w[None], None, "t")
    return q, w, chans, shifts, want, ev


@pytest.mark.parametrize("fill", [None, "extreme"])
def test_mac_array_equals_golden(fill):
    rng = random.Random(seed() + 7)
    enc = Encoding("int", 8)
    for _ in range(samples(2)):
        m, k, n = 3, rng.randrange(1, 38), rng.randrange(1, CFG.lanes + 1)
        q, w, chans, shifts, want, ev = _mac_case(rng, enc, m, k, n, fill)
        got, counts = rtl_mac_array(CFG, q, shifts, chans, w, stall_p=0.25, seed=rng.random())
        assert torch.equal(got, want[0])
        assert counts["row"] * n == ev.macs
        assert counts["mac"] == counts["row"] * CFG.mac_cycles


def test_mac_array_rows_follow_back_to_back():
    q = torch.ones(1, 8, dtype=torch.int64)
    w = torch.ones(4, 8, dtype=torch.int64)
    _, counts = rtl_mac_array(CFG, q, torch.zeros(8, dtype=torch.int64), list(range(8)), w,
                              stall_p=0.0)
    # 8 rows of mac_cycles, then END (five cycles: the last row is read, registered, its
    # weights selected, multiplied and added first), as the cycle model says
    assert counts["busy"] == 8 * CFG.mac_cycles + 5 == mac_row_cost(CFG, 8)


def _wrap(x: int, bits: int) -> int:
    return (x + 2 ** (bits - 1)) % 2**bits - 2 ** (bits - 1)


def _spike_array_model(cfg, events, w, ttfs):
    """Rows the spike array emits for arbitrary event words (one per END, in END order):
    per slot I and V, zero after an END or a reset, wrapping at the lane widths."""
    lanes = range(w.shape[0])
    cur = [[0] * w.shape[0] for _ in range(cfg.spike_rows)]
    mem = [[0] * w.shape[0] for _ in range(cfg.spike_rows)]
    rows = []
    for e in events:
        i, v = cur[e["slot"]], mem[e["slot"]]
        if e["op"] == SpikeOp.SPIKE:
            sign = -1 if e["neg"] else 1
            acc, bits = (i, cfg.cur_bits) if ttfs else (v, cfg.mem_bits)
            for j in lanes:
                acc[j] = _wrap(acc[j] + sign * int(w[j, e["k"]]), bits)
        elif e["op"] == SpikeOp.STEP:
            for j in lanes:
                v[j] = _wrap(v[j] + i[j], cfg.mem_bits)
        else:
            rows.append(list(v))
            cur[e["slot"]] = [0] * w.shape[0]
            mem[e["slot"]] = [0] * w.shape[0]
    return torch.tensor(rows, dtype=torch.int64)


@pytest.mark.parametrize("case", range(12))
def test_spike_array_back_to_back_same_slot(case):
    # Arbitrary event streams (not only the tile builder's order), mostly on the slot of
    # the event before: a slot's read-modify-write spans two stages, so an event must see
    # the previous event's write (forwarding), an END's freeing, and a write two events
    # back, with and without bubbles and a stalled sink, over odd configurations.
    rng = random.Random(seed() * 1000 + case)
    for _ in range(samples(6)):
        enc = rng.choice([("ttfs",), ("rate",), ("ttfs-signed", "ternary")])
        cfg = AccelConfig(lanes=rng.choice([1, 2, 4, 8]), mac_units=1,
                          weight_bits=rng.choice([4, 5, 8]),
                          weight_depth=rng.choice([2, 4, 16]), max_steps=rng.choice([1, 3, 7]),
                          spike_rows=rng.choice([1, 2, 4, 8]), encodings=enc,
                          row_fifo_depth=rng.choice([1, 2, 4]))  # the ring: 1 row and up
        ttfs = enc[0] in TTFS_KINDS if len(enc) == 1 else rng.random() < 0.5
        n = rng.randrange(1, cfg.lanes + 1)
        lim = 2 ** (cfg.weight_bits - 1)
        w = torch.randint(-lim, lim, (n, cfg.weight_depth),
                          generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        events, slot = [], 0
        for _ in range(rng.randrange(1, 60)):
            if rng.random() < 0.4:
                slot = rng.randrange(cfg.spike_rows)
            r = rng.random()
            op = (SpikeOp.END if r < 0.15 else SpikeOp.STEP if ttfs and r < 0.35
                  else SpikeOp.SPIKE)
            events.append({"op": op, "k": rng.randrange(cfg.weight_depth),
                           "neg": rng.randrange(2) if op == SpikeOp.SPIKE else 0,
                           "slot": slot})
        events += [{"op": SpikeOp.END, "k": 0, "neg": 0, "slot": s}
                   for s in range(cfg.spike_rows)]
        dut = FedSpikeArray(cfg)
        ends = sum(e["op"] == SpikeOp.END for e in events)
        got, counts = _run(cfg, dut, w, events, spike_event_layout(cfg), ends,
                           rng.choice([0.0, 0.3, 0.6]), rng.random(),
                           ("spike", "step", "busy", "w_en"),
                           setup=lambda ctx, d=dut, t=ttfs: ctx.set(d.ttfs, int(t)))
        assert torch.equal(got, _spike_array_model(cfg, events, w, ttfs)), (cfg, events)
        assert counts["spike"] == sum(e["op"] == SpikeOp.SPIKE for e in events)
        assert counts["step"] == sum(e["op"] == SpikeOp.STEP for e in events)
        assert counts["busy"] == len(events)
        assert counts["w_en"] == fetch_count(events)


@pytest.mark.parametrize("case", range(6))
def test_mac_array_odd_configs(case):
    # one sweep cycle a row (lanes == mac_units: every product adds into the word the last
    # one wrote), few accumulator rows reused many times, stalls: whether a word holds a
    # sum travels with the products and must agree with the write in flight
    rng = random.Random(seed() * 1000 + 100 + case)
    enc = Encoding("int", 8)
    for _ in range(samples(3)):
        lanes = rng.choice([1, 2, 4, 8])
        cfg = AccelConfig(lanes=lanes, mac_units=rng.choice([u for u in (1, 2, 4, 8)
                                                             if u <= lanes]),
                          weight_depth=16, row_fifo_depth=rng.randrange(1, 4), spike_rows=1)
        m, k, n = rng.randrange(1, 9), rng.randrange(1, 17), rng.randrange(1, lanes + 1)
        q, w, chans, shifts, want, ev = _mac_case(rng, enc, m, k, n,
                                                  rng.choice([None, "extreme"]))
        got, counts = rtl_mac_array(cfg, q, shifts, chans, w, stall_p=rng.choice([0.0, 0.4]),
                                    seed=rng.random())
        assert torch.equal(got, want[0]), cfg
        assert counts["row"] * n == ev.macs
        # rows with no MAC event (their END alone) read as zero, though their slot held an
        # earlier row's sums, and the rows after them start their sums afresh
        bare = frozenset(r for r in range(m) if rng.random() < 0.4)
        got, counts = rtl_mac_array(cfg, q, shifts, chans, w, stall_p=rng.choice([0.0, 0.4]),
                                    seed=rng.random(), bare_rows=bare)
        want_bare = want[0].clone()
        want_bare[sorted(bare)] = 0
        assert torch.equal(got, want_bare), (cfg, bare)
        assert counts["row"] == len(chans) * (m - len(bare))
