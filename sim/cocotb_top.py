"""cocotb bench of the whole top level (link + executor + engine + counters) in Verilator.

Run from pytest (``tests/sim/test_top_verilator.py``) through :func:`sim.verilator.run_cocotb`.
Structured like cocotb's matrix-multiplier example: a :class:`Testbench` owns the clock,
reset, a byte driver and a byte monitor on the link (both with random valid/ready stalls),
the host-side frame encoder/decoder, the golden reference and the checks.
"""

from __future__ import annotations

import collections
import os
import random

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from accel.config import PRESETS
from accel.cycles import tile_cycles, tile_work
from accel.layouts import BufId
from accel.payloads import (
    buf_args,
    load_payload,
    parse_counters,
    parse_ident,
    parse_words,
    run_payload,
    write_buf_payloads,
)
from accel.protocol import PROTOCOL_VERSION, Cmd, Frame, FrameDecoder, Status, encode_frame
from accel.requests import BufferMirror, tile_requests
from accel.resident import model_image
from accel.tiling import REQ_CONSTS, build_tile, out_read, plan_gemm
from models.contract import requantize
from models.encodings import Encoding
from models.golden import GemmCall, gemm
from sim.streams import samples, seed

CFG = PRESETS[os.environ.get("SPIKELLM_CONFIG", "tiny")]
LINK_TIMEOUT = int(os.environ.get("SPIKELLM_LINK_TIMEOUT", "3000"))


class Testbench:
    """Clock, reset, link driver and monitor, and host-side request/response helpers."""

    def __init__(self, dut, stall_p: float = 0.3):
        self.dut = dut
        self.rng = random.Random(seed())
        self.stall_p = stall_p
        self.tx_q: collections.deque[int] = collections.deque()
        self.decoder = FrameDecoder()
        self.replies: collections.deque = collections.deque()
        self.seq = 0
        self.mirror = BufferMirror(CFG)  # what the buffers hold: unchanged words are kept
        self.broken: list[str] = []  # stream-rule violations seen by the monitor

    async def start(self) -> None:
        d = self.dut
        cocotb.start_soon(Clock(d.clk, 10, unit="ns").start())
        d.rst.value = 1
        d.rx__valid.value = 0
        d.rx__payload.value = 0
        d.tx__ready.value = 0
        await ClockCycles(d.clk, 4)
        d.rst.value = 0
        cocotb.start_soon(self._driver())
        cocotb.start_soon(self._monitor())

    def _stall(self) -> bool:
        return self.rng.random() < self.stall_p

    async def _driver(self) -> None:
        """Byte source on rx: sampled at each rising edge like cocotbext-axi."""
        d = self.dut
        current = None
        while True:
            await RisingEdge(d.clk)
            if current is not None and int(d.rx__valid.value) and int(d.rx__ready.value):
                current = None
            if current is None and self.tx_q and not self._stall():
                current = self.tx_q.popleft()
            d.rx__valid.value = int(current is not None)
            d.rx__payload.value = current or 0

    async def _monitor(self) -> None:
        """Byte sink on tx with random ready; feeds the host frame decoder. Checks the
        ``lib.stream`` rule on tx as ``sim.streams.stream_rules`` does in the Amaranth
        harnesses: a byte offered without ready stays offered, unchanged, until taken."""
        d = self.dut
        held, cycle = None, 0
        while True:
            await RisingEdge(d.clk)
            cycle += 1
            valid, byte = int(d.tx__valid.value), int(d.tx__payload.value)
            ready = int(d.tx__ready.value)
            if held is not None and not (valid and byte == held):
                self.broken.append(f"tx: valid dropped or payload changed before ready "
                                   f"(cycle {cycle})")
            if valid and ready:
                self.replies.extend(self.decoder.feed(bytes([byte])))
            held = byte if valid and not ready else None
            d.tx__ready.value = int(not self._stall())

    def send_raw(self, data: bytes) -> None:
        self.tx_q.extend(data)

    async def reply(self, max_cycles: int = 2_000_000):
        for _ in range(max_cycles):
            assert not self.broken, self.broken[0]
            if self.replies:
                return self.replies.popleft()
            await RisingEdge(self.dut.clk)
        raise AssertionError("no reply from the device")

    async def request(self, cmd: Cmd | int, payload: bytes = b"", expect=Status.OK) -> bytes:
        name = getattr(cmd, "name", hex(cmd) if isinstance(cmd, int) else str(cmd))
        self.seq = (self.seq + 1) & 0xFF
        self.send_raw(encode_frame(cmd.value if isinstance(cmd, Cmd) else cmd, self.seq,
                                   payload))
        r = await self.reply()
        assert isinstance(r, Frame), f"{name}: bad response frame {r}"
        assert (r.cmd, r.seq) == (expect.value, self.seq), \
            f"{name}: status {r.cmd:#x} seq {r.seq}, expected {expect.value:#x} {self.seq}"
        return r.payload

    async def run_tile(self, tile, image=None, following=None) -> None:
        """Send the requests the host driver sends for a tile: its writes (words already
        resident skipped; LOADs of what ``image`` holds, the ``following`` tile's weights
        loaded meanwhile) and its RUN (``accel.requests.tile_requests``)."""
        for req in tile_requests(CFG, tile, self.mirror, image=image, following=following):
            await self.request(req.cmd, req.payload)

    async def gemm(self, plan, rows: int, n: int, image=None) -> torch.Tensor:
        """Run every tile of a planned GEMM in the driver's order
        (``accel.tiling.GemmTiles.steps``); return its outputs ``[rows, n]``."""
        out = torch.zeros(rows, n, dtype=torch.int64)
        steps = list(plan.steps())
        for i, (img, done) in enumerate(steps):
            await self.run_tile(img, image, steps[i + 1][0] if i + 1 < len(steps) else None)
            if done is not None:
                out[done.r0:done.r1, done.n0:done.n1] = await self.read_out(img)
        return out

    async def read_out(self, img) -> torch.Tensor:
        """An output tile's results ``[rows, n_active]`` (``accel.tiling.out_read``)."""
        buf, addr, count = out_read(CFG, img)
        p = await self.request(Cmd.READ_BUF, buf_args(buf, addr, count))
        d = img.descriptor
        return torch.tensor(parse_words(CFG, buf, p), dtype=torch.int64).view(
            d["rows"], d["n_active"])


def _gemm_case(rng: random.Random, enc: Encoding, m: int, k: int, n: int, n_int: int):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    q = torch.randint(enc.qmin, enc.qmax + 1, (m, k), generator=g)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[rng.sample(range(k), n_int)] = True
    q = torch.where(mask, torch.randint(-127, 128, (m, k), generator=g), q)
    shifts = torch.where(mask, torch.randint(0, 5, (k,), generator=g), 0)
    w = torch.randint(-8, 8, (n, k), generator=g)
    start = torch.randint(-500, 500, (n,), generator=g)
    consts = dict(mcol=torch.randint(1, 2**15, (n,), generator=g),
                  bias=torch.randint(-(2**18), 2**18, (n,), generator=g),
                  zp=torch.zeros(n, dtype=torch.int64), lo=torch.full((n,), -127),
                  hi=torch.full((n,), 127))
    mrow = torch.randint(1, 2**16, (m,), generator=g)
    return q, mask, shifts, w, start, consts, mrow


@cocotb.test()
async def identify_reports_config_hash(dut):
    tb = Testbench(dut)
    await tb.start()
    ident = parse_ident(await tb.request(Cmd.IDENTIFY))
    assert ident["hash"] == CFG.hash32() and ident["lanes"] == CFG.lanes
    assert ident["version"] == PROTOCOL_VERSION


@cocotb.test()
async def gemm_tiles_bit_exact_with_counters(dut):
    tb = Testbench(dut)
    await tb.start()
    rng = random.Random(seed() + 1)
    encs = [Encoding("ttfs", 4), Encoding("ttfs-signed", 4), Encoding("rate", steps=8)]
    for i in range(samples(len(encs))):
        enc = encs[i % len(encs)]
        m, k, n = 3, 37, rng.randrange(1, CFG.lanes + 1)
        q, mask, shifts, w, start, consts, mrow = _gemm_case(rng, enc, m, k, n, 3)
        acc, ev = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t")
        want = requantize(acc[0], consts["mcol"], 18, mrow, consts["bias"], consts["zp"],
                          consts["lo"], consts["hi"])
        await tb.request(Cmd.RESET_COUNTERS)
        tile = build_tile(CFG, q, mask, shifts, enc, w, start=start, mrow=mrow,
                          consts=consts, shift=18)
        await tb.run_tile(tile)
        run_seq = tb.seq
        # the same RUN again with the same seq (a retry, a duplicated frame): OK, not re-run,
        # also after a read in between (the host pipelines reads behind a RUN)
        await tb.request(Cmd.READ_COUNTERS)
        tb.send_raw(encode_frame(Cmd.RUN.value, run_seq, run_payload(CFG, tile.descriptor)))
        r = await tb.reply()
        assert (r.cmd, r.seq) == (Status.OK.value, run_seq), r
        got = await tb.read_out(tile)
        assert torch.equal(got, want), f"{enc.name()}: {got.tolist()} != {want.tolist()}"
        c = parse_counters(CFG, await tb.request(Cmd.READ_COUNTERS))
        # the generator's cycle model predicts the busy counter of the Verilator top
        assert c["busy"] == tile_cycles(CFG, tile_work(CFG, tile)), c["busy"]
        assert c["spikes"] == ev.spike_units
        assert c["acc_spike"] == ev.acc_spike and c["acc_step"] == ev.acc_step
        assert c["macs"] == ev.macs and c["out_wr"] == m * n and c["descriptors"] == 1
        assert c["frame_errors"] == 0


@cocotb.test()
async def bad_frames_get_error_replies_and_corrupt_nothing(dut):
    tb = Testbench(dut)
    await tb.start()
    rng = random.Random(seed() + 2)
    enc = Encoding("ttfs", 4)
    q, mask, shifts, w, start, consts, mrow = _gemm_case(rng, enc, 2, 20, CFG.lanes, 2)
    tile = build_tile(CFG, q, mask, shifts, enc, w, start=start, mrow=mrow, consts=consts,
                      shift=18)
    await tb.run_tile(tile)
    before = await tb.read_out(tile)
    # 1. a corrupted WRITE_BUF that would overwrite the weights: CRC error, nothing written
    frame = bytearray(encode_frame(Cmd.WRITE_BUF.value, 77,
                                   write_buf_payloads(CFG, BufId.OUT, [0] * 4)[0]))
    frame[8] ^= 0x10
    tb.send_raw(bytes(frame))
    r = await tb.reply()
    assert getattr(r, "cmd", None) == Status.ERR_CRC.value
    # 2. garbage, then a good frame
    tb.send_raw(bytes(rng.randrange(256) for _ in range(50)).replace(b"\xa5", b"\x00"))
    assert parse_ident(await tb.request(Cmd.IDENTIFY))["hash"] == CFG.hash32()
    # 3. a truncated frame: the link times out, then the next good frame works
    tb.send_raw(encode_frame(Cmd.WRITE_BUF.value, 9, b"\x00" * 30)[:12])
    r = await tb.reply(max_cycles=LINK_TIMEOUT * 10)
    assert getattr(r, "cmd", None) == Status.ERR_TIMEOUT.value
    # 4. bad arguments and unknown commands are refused after draining their payload
    await tb.request(Cmd.READ_BUF, bytes([max(b.value for b in BufId) + 1]) + b"\x00" * 6,
                     expect=Status.ERR_ARG)
    await tb.request(0x42, b"abc", expect=Status.ERR_COMMAND)
    await tb.request(Cmd.READ_BUF, buf_args(BufId.ACC, 0, 1), expect=Status.ERR_ARG)
    # the views: WEIGHTS4 is write-only, OUT8 read-only
    await tb.request(Cmd.READ_BUF, buf_args(BufId.WEIGHTS4, 0, 1), expect=Status.ERR_ARG)
    await tb.request(Cmd.WRITE_BUF, write_buf_payloads(CFG, BufId.OUT8, [5])[0],
                     expect=Status.ERR_ARG)
    assert torch.equal(await tb.read_out(tile), before)
    c = parse_counters(CFG, await tb.request(Cmd.READ_COUNTERS))
    assert c["frame_errors"] >= 2


@cocotb.test()
async def gemm_k37_n70_m3_every_encoding_extremes_silent_firing(dut):
    """Shapes that are not multiples of the array (N over several lane tiles, K over two
    weight loads in the tiny config), every encoding, random, extreme, all-silent and
    all-firing activations; outputs as raw int32 accumulators and counters summed."""
    tb = Testbench(dut)
    await tb.start()
    rng = random.Random(seed() + 3)
    encs = [Encoding("ttfs", 4), Encoding("ttfs-signed", 4), Encoding("rate", steps=8),
            Encoding("graded", steps=5, levels=3), Encoding("ternary", steps=4),
            Encoding("int", 8)]
    fills = ["random", "extreme", "silent", "firing"]
    m, k, n = 3, 37 + CFG.weight_depth * int(os.environ.get("SPIKELLM_WIDE_K", "1")), 70
    for i in range(samples(len(encs))):
        enc, fill = encs[i % len(encs)], fills[i % len(fills)]
        q, mask, shifts, w, start, _, _ = _gemm_case(rng, enc, m, k, n, 3 if enc.is_spiking
                                                     else 0)
        if enc.kind == "int":
            mask[:] = True
        if i % 2:  # int8 weight operands, as K and V of the attention matmuls
            w = torch.randint(-127, 128, w.shape, generator=torch.Generator().manual_seed(i))
        spk = ~mask
        if fill == "extreme":
            q = torch.where(spk, torch.where(q % 2 == 0, enc.qmin, enc.qmax), q)
        elif fill == "silent":
            q = torch.where(spk, 0, q)
        elif fill == "firing":
            q = torch.where(spk, enc.qmax, q)
        acc, ev = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t",
                       k_tile=CFG.k_tile, n_tile=CFG.lanes)
        await tb.request(Cmd.RESET_COUNTERS)
        ones = {c: torch.full((n,), 1 if c == "mcol" else 0) for c in REQ_CONSTS}
        plan = plan_gemm(CFG, q, mask, shifts, enc, w, start=start, consts=ones, raw=True)
        got = await tb.gemm(plan, m, n)
        assert torch.equal(got, acc[0]), f"{enc.name()} {fill}"
        c = parse_counters(CFG, await tb.request(Cmd.READ_COUNTERS))
        assert (c["acc_spike"], c["acc_step"], c["macs"]) == \
            (ev.acc_spike, ev.acc_step, ev.macs), f"{enc.name()} {fill}: {c}"
        assert c["spikes"] == ev.spike_units
        assert c["out_wr"] == m * n


@cocotb.test()
async def resident_weights_load_beside_runs_and_the_loaded_half_is_guarded(dut):
    """A linear layer whose weights, constants and start values come from the external
    memory: exact, with the next N slice's weights loaded into the other half of the
    weight buffer while a tile runs (requests back to back, as a fast host sends them).
    Then a RUN whose events read the half a LOAD is writing is stopped (ERR_FAULT)."""
    tb = Testbench(dut)
    await tb.start()
    rng = random.Random(seed() + 4)
    enc = Encoding("ttfs", 4)
    half = CFG.half_rows
    m, k, n = 3, half - 1, 3 * CFG.lanes - 1
    q, mask, shifts, w, start, consts, mrow = _gemm_case(rng, enc, m, k, n, 2)
    acc, _ = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t")
    want = requantize(acc[0], consts["mcol"], 18, mrow, consts["bias"], consts["zp"],
                      consts["lo"], consts["hi"])
    call = GemmCall("lin", None, q, mask, shifts, enc, w, start, consts, mrow, 18, want,
                    constant=True)
    image = model_image(CFG, [call])
    for p in write_buf_payloads(CFG, BufId.DRAM, image.words, image.base):
        await tb.request(Cmd.WRITE_BUF, p)
    await tb.request(Cmd.RESET_COUNTERS)
    plan = plan_gemm(CFG, q, mask, shifts, enc, w, start=start, consts=consts, mrow=mrow,
                     shift=18)
    got = await tb.gemm(plan, m, n, image)
    assert torch.equal(got, want), f"{got.tolist()} != {want.tolist()}"
    c = parse_counters(CFG, await tb.request(Cmd.READ_COUNTERS))
    assert c["loads"] > 0 and c["load_overlap"] > 0, c
    assert c["busy"] == sum(tile_cycles(CFG, tile_work(CFG, img)) for img, _ in plan.steps())
    # the last tile again as one LOAD_RUN (its constants copied, then its descriptor): OK
    # and run; resent with its seq (a retry): OK, copied again, not re-run; one byte
    # short: refused
    last, done = list(plan.steps())[-1]
    params = last.words[BufId.PARAMS]
    payload = (load_payload((BufId.PARAMS, 0, len(params), image.find(BufId.PARAMS, params)))
               + run_payload(CFG, last.descriptor))
    before = parse_counters(CFG, await tb.request(Cmd.READ_COUNTERS))["descriptors"]
    await tb.request(Cmd.LOAD_RUN, payload)
    tb.send_raw(encode_frame(Cmd.LOAD_RUN.value, tb.seq, payload))
    r = await tb.reply()
    assert (r.cmd, r.seq) == (Status.OK.value, tb.seq), r
    await tb.request(Cmd.LOAD_RUN, payload[:-1], expect=Status.ERR_ARG)
    c = parse_counters(CFG, await tb.request(Cmd.READ_COUNTERS))
    assert c["descriptors"] == before + 1, (before, c["descriptors"])
    assert torch.equal(await tb.read_out(last), want[done.r0:done.r1, done.n0:done.n1])
    # a tile at w_base 0 whose only spikes are on inputs of the upper half, sent right
    # behind a LOAD into the upper half: the engine stops it
    q2 = torch.zeros(1, half + 4, dtype=torch.int64)
    q2[0, half + 1] = 3
    tile = build_tile(CFG, q2, torch.zeros(half + 4, dtype=torch.bool),
                      torch.zeros(half + 4, dtype=torch.int64), enc,
                      torch.ones(CFG.lanes, half + 4, dtype=torch.int64))
    for req in tile_requests(CFG, tile, tb.mirror):
        if req.cmd != Cmd.RUN:
            await tb.request(req.cmd, req.payload)
    tb.seq = (tb.seq + 1) & 0xFF
    tb.send_raw(encode_frame(Cmd.LOAD.value, tb.seq,
                             load_payload((BufId.WEIGHTS4, half, half, image.base))))
    tb.send_raw(encode_frame(Cmd.RUN.value, (tb.seq + 1) & 0xFF,
                             run_payload(CFG, tile.descriptor)))
    r1, r2 = await tb.reply(), await tb.reply()
    tb.seq = (tb.seq + 1) & 0xFF
    assert (r1.cmd, r2.cmd) == (Status.OK.value, Status.ERR_FAULT.value), (r1, r2)
    # after the LOAD, the same tile runs
    await tb.request(Cmd.RUN, run_payload(CFG, tile.descriptor))
