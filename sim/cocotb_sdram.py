"""cocotb bench of LiteDRAM's controller on its PHY model behind ``hw.sdram.Sdram``
(``sim.sdram_bench`` builds it; ``docs/sdram.md`` has the figures).

One test, in phases, each checked word for word:

1. random writes (uniform addresses, rows of one bank that conflict, sequential runs),
   command and write-data streams stalled independently (data ahead of or behind its
   command);
2. read-back of every word in random order, random command stalls and random read-data
   back-pressure (at most ``rdata_depth`` reads outstanding, the port's rule);
3. a random mix of reads and writes on a few rows of one bank (read-after-write order);
4. sequential reads and writes with no stalls: sustained words per core cycle.

DFI command counters in the core (``stat_*``) give refreshes, activates and precharges
per phase. Clocks: core ``SDRAM_USER_NS`` (default 16 ns, 62.5 MHz), controller
``SDRAM_SYS_NS`` (20 ns, 50 MHz; the chip at twice that). Seed and sizes:
``SPIKELLM_SEED``, ``SPIKELLM_SAMPLES`` (words in phase 1), ``SDRAM_SEQ_WORDS``.
The report goes to ``SDRAM_REPORT`` (JSON).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb.utils import get_sim_time

from .streams import samples, seed

AW = int(os.environ.get("SDRAM_ADDR_BITS", "23"))
DW = int(os.environ.get("SDRAM_DATA_BITS", "32"))
USER_NS = float(os.environ.get("SDRAM_USER_NS", "16"))
SYS_NS = float(os.environ.get("SDRAM_SYS_NS", "20"))
RDATA_DEPTH = 16
#: user-port address fields (LiteDRAM's ROW_BANK_COL mapping of a 32-bit port on the
#: 16-bit, 512-column chip: 256 words a row)
COL_BITS, BANK_BITS = 8, 2
STATS = ("act", "pre", "ref", "rd", "wr", "ref_gap_max")


class Bench:
    def __init__(self, dut):
        self.dut = dut
        self.rng = random.Random(seed())
        self.cycle = 0  # core cycles since reset
        self.report: dict = {"user_ns": USER_NS, "sys_ns": SYS_NS}

    async def start(self) -> None:
        d = self.dut
        cocotb.start_soon(Clock(d.clk, USER_NS, unit="ns").start())
        cocotb.start_soon(Clock(d.sdram_clk, SYS_NS, unit="ns").start())
        d.rst.value = d.sdram_rst.value = 1
        for s in (d.port__cmd__valid, d.port__wdata__valid, d.port__rdata__ready,
                  d.port__cmd__payload, d.port__wdata__payload):
            s.value = 0
        await ClockCycles(d.sdram_clk, 8)
        d.rst.value = d.sdram_rst.value = 0
        for n in range(200_000):
            await RisingEdge(d.clk)
            if int(d.init_done.value):
                self.report["init_cycles"] = n
                self.report["init_ns"] = get_sim_time(unit="ns")
                return
        raise AssertionError("init_done never rose")

    def stats(self) -> dict:
        core = self.dut.sdram.core
        return {k: int(getattr(core, f"stat_{k}").value) for k in STATS}

    async def traffic(self, ops, stall: float = 0.0, max_reads: int | None = None,
                      limit: int = 200_000) -> dict:
        """Run ``ops`` ((we, addr, data) in command order) through the port; returns the
        read words (in order), the cycle of each, the first command's cycle, the cycle
        count and the DFI counters' deltas. Write data runs on its own stream, in order,
        independently stalled; read data is taken with back-pressure ``stall``."""
        d, rng = self.dut, self.rng
        words = [x for we, _, x in ops if we]
        n_reads = len(ops) - len(words)
        ci = wi = accepted_reads = 0
        cmd_on = w_on = False
        rd_ready = 0
        got: list[int] = []
        at: list[int] = []
        first = None
        before = self.stats()
        start = self.cycle
        while ci < len(ops) or wi < len(words) or len(got) < n_reads:
            await RisingEdge(d.clk)
            self.cycle += 1
            now = self.cycle - start
            if now > limit:
                raise AssertionError(f"traffic stuck: {ci}/{len(ops)} commands, "
                                     f"{wi}/{len(words)} words, {len(got)}/{n_reads} reads")
            if cmd_on and int(d.port__cmd__ready.value):
                first = now if first is None else first
                accepted_reads += not ops[ci][0]
                ci, cmd_on = ci + 1, False
            if w_on and int(d.port__wdata__ready.value):
                wi, w_on = wi + 1, False
            if rd_ready and int(d.port__rdata__valid.value):
                got.append(int(d.port__rdata__payload.value))
                at.append(now)
            if not cmd_on and ci < len(ops) and not (stall and rng.random() < stall):
                we, addr, _ = ops[ci]
                if we or max_reads is None or accepted_reads - len(got) < max_reads:
                    cmd_on = True
                    d.port__cmd__payload.value = addr | (int(we) << AW)
            d.port__cmd__valid.value = int(cmd_on)
            if not w_on and wi < len(words) and not (stall and rng.random() < stall):
                w_on = True
                d.port__wdata__payload.value = words[wi]
            d.port__wdata__valid.value = int(w_on)
            rd_ready = int(not (stall and rng.random() < stall))
            d.port__rdata__ready.value = rd_ready
        d.port__cmd__valid.value = d.port__wdata__valid.value = 0
        after = self.stats()
        return {"got": got, "at": at, "first": first, "cycles": self.cycle - start,
                "stats": {k: after[k] - before[k] for k in STATS if k != "ref_gap_max"}}


def addr_of(row: int, bank: int, col: int) -> int:
    return ((row << BANK_BITS | bank) << COL_BITS | col) & ((1 << AW) - 1)


def random_addresses(rng: random.Random, n: int) -> list[int]:
    """``n`` distinct addresses: a third uniform, a third in 8 rows of one bank (each
    access a row conflict), a third in sequential runs."""
    out: dict[int, None] = {}
    rows = [rng.getrandbits(AW - COL_BITS - BANK_BITS) for _ in range(8)]
    while len(out) < n:
        kind = rng.randrange(3)
        if kind == 0:
            out[rng.getrandbits(AW)] = None
        elif kind == 1:
            out[addr_of(rng.choice(rows), 1, rng.getrandbits(COL_BITS))] = None
        else:
            base = rng.getrandbits(AW)
            for k in range(rng.randrange(4, 33)):
                out[(base + k) & ((1 << AW) - 1)] = None
    return list(out)[:n]


@cocotb.test()
async def random_traffic_and_sequential_bandwidth(dut):
    b = Bench(dut)
    await b.start()
    rng, mask = b.rng, (1 << DW) - 1
    rep = b.report

    # 1. random writes, both streams stalled
    addrs = random_addresses(rng, samples(1200))
    mem = {a: rng.getrandbits(DW) & mask for a in addrs}
    r = await b.traffic([(True, a, mem[a]) for a in addrs], stall=0.3)
    rep["random_write"] = {"words": len(addrs), "cycles": r["cycles"], **r["stats"]}

    # 2. read-back in random order, stalls and read back-pressure
    order = addrs[:]
    rng.shuffle(order)
    r = await b.traffic([(False, a, 0) for a in order], stall=0.3, max_reads=RDATA_DEPTH)
    bad = [(hex(a), hex(g), hex(mem[a])) for a, g in zip(order, r["got"], strict=True)
           if g != mem[a]]
    assert not bad, f"{len(bad)} words read back wrong, first {bad[:4]}"
    rep["random_read"] = {"words": len(order), "cycles": r["cycles"], **r["stats"]}

    # 3. reads and writes mixed on rows of one bank: each read sees the last write before it
    few = [a for a in addrs if (a >> COL_BITS) & 3 == 1][:48] or addrs[:48]
    ops, model, want = [], dict(mem), []
    for _ in range(samples(1200)):
        a = rng.choice(few)
        if rng.random() < 0.5:
            model[a] = rng.getrandbits(DW) & mask
            ops.append((True, a, model[a]))
        else:
            ops.append((False, a, 0))
            want.append(model[a])
    r = await b.traffic(ops, stall=0.2, max_reads=RDATA_DEPTH)
    assert r["got"] == want, "read-after-write order broken in the mixed phase"
    rep["mixed"] = {"ops": len(ops), "cycles": r["cycles"], **r["stats"]}

    # 4. sustained sequential bandwidth, no stalls
    n = int(os.environ.get("SDRAM_SEQ_WORDS", "4096"))
    base = addr_of(rng.getrandbits(8), 0, 0)
    data = [rng.getrandbits(DW) & mask for _ in range(n)]
    r = await b.traffic([(True, base + i, data[i]) for i in range(n)])
    rep["seq_write"] = {"words": n, "cycles": r["cycles"] - r["first"] + 1,
                        "words_per_cycle": n / (r["cycles"] - r["first"] + 1), **r["stats"]}
    r = await b.traffic([(False, base + i, 0) for i in range(n)])
    assert r["got"] == data, "sequential read-back wrong"
    span = r["at"][-1] - r["first"] + 1
    steady = (n - 1) / (r["at"][-1] - r["at"][0])
    rep["seq_read"] = {"words": n, "cycles": span, "latency": r["at"][0] - r["first"],
                       "words_per_cycle": n / span, "steady_words_per_cycle": steady,
                       **r["stats"]}
    rep["total_cycles"] = b.cycle
    rep["sim_ns"] = get_sim_time(unit="ns")
    rep["total_stats"] = b.stats()
    assert rep["total_stats"]["ref"] > 0, "no refresh in the whole run"
    if os.environ.get("SDRAM_REPORT"):
        with open(os.environ["SDRAM_REPORT"], "w") as f:
            json.dump(rep, f, indent=1)
