"""The driver against the simulated device: identify, a whole model bit-exact, faults."""

import pytest

from accel.config import PRESETS
from accel.counters import TRAFFIC
from accel.layouts import BufId, buffer_shapes, descriptor_layout, pack_word
from accel.payloads import buf_args, write_buf_payloads
from accel.protocol import BUF_ARGS, FRAME_OVERHEAD, Cmd, chain_payload, nbytes, word_bytes
from host import driver
from host.driver import Device, DeviceError, LinkError
from host.run import run_model
from host.transport import FAULTS, FaultyTransport, SerialTransport

from .conftest import CFG, FAST


def test_identify_and_refuse_another_config(sim, monkeypatch):
    t = SerialTransport(sim.url)
    assert Device(t, CFG, **FAST).identify()["lanes"] == CFG.lanes
    with pytest.raises(DeviceError, match="config hash .* differs from the bundle's"):
        Device(t, PRESETS["tiny"], **FAST).identify()
    # a core of the same configuration built by another protocol version is refused too
    # (a LOAD of the code buffer, say, would be refused halfway through a GEMM)
    monkeypatch.setattr(driver, "PROTOCOL_VERSION", driver.PROTOCOL_VERSION + 1)
    with pytest.raises(DeviceError, match=f"speaks link protocol {driver.PROTOCOL_VERSION - 1}"):
        Device(t, CFG, **FAST).identify()
    t.close()


def test_write_read_back_and_verify(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, verify_weights=True, **FAST)
    rows = [[(i * 7 + j) % 15 - 7 for j in range(CFG.lanes)] for i in range(40)]
    dev.write(BufId.WEIGHTS, rows, 3)
    raw = dev.read(BufId.WEIGHTS, 3, 40)
    shape, _ = buffer_shapes(CFG)[BufId.WEIGHTS]
    assert len(raw) == 40
    assert raw == [pack_word(shape, r) for r in rows]
    with pytest.raises(DeviceError, match="READ_BUF .* refused: ERR_ARG"):
        dev.read(BufId.WEIGHTS, CFG.weight_depth - 1, 2)  # past the end: the core refuses
    t.close()


def test_a_buffer_request_of_the_wrong_length_is_refused_and_the_next_one_runs(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    wb = word_bytes(CFG)[BufId.START]
    for cmd, count, extra in ((Cmd.WRITE_BUF, 2, -1), (Cmd.WRITE_BUF, 2, 1),
                              (Cmd.WRITE_BUF, 0, 1), (Cmd.READ_BUF, 2, 1)):
        body = 2 * wb if cmd == Cmd.WRITE_BUF else 0  # what count words take
        payload = buf_args(BufId.START, 5, count) + bytes(range(body + extra))
        with pytest.raises(DeviceError, match=f"{cmd.name} .* refused: ERR_ARG"):
            dev.request(cmd, payload)
    # the refused payloads were drained: a write and its read-back are whole
    dev.mirror.forget()
    words = [-1 - 1000 * i for i in range(3)]
    dev.write(BufId.START, words, 5)
    assert dev.read(BufId.START, 5, 3) == words
    t.close()


def test_a_chain_runs_its_requests_in_order_and_stops_at_the_first_refused(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)

    def write(addr, words):  # a WRITE_BUF of START words, as a CHAIN part
        (payload,) = write_buf_payloads(CFG, BufId.START, words, addr)
        return Cmd.WRITE_BUF, payload

    old = [-7] * 12
    dev.write(BufId.START, old, 0)
    assert dev.request(Cmd.CHAIN, chain_payload([write(0, [1, 2]), write(4, [3])])) == b""
    assert dev.read(BufId.START, 0, 6) == [1, 2, -7, -7, 3, -7]
    # refused in the middle (past the buffer's end; a read; a header the frame cannot
    # hold): the requests before it ran, none after it, and the link is clean after it
    past = (Cmd.WRITE_BUF, buf_args(BufId.START, buffer_shapes(CFG)[BufId.START][1], 1)
            + bytes(word_bytes(CFG)[BufId.START]))
    read = (Cmd.READ_BUF, buf_args(BufId.START, 0, 1))
    with pytest.raises(ValueError, match="cannot carry READ_BUF"):
        chain_payload([read])  # the host does not build it; the core refuses it too
    # a RUN whose descriptor breaks a rule (rows 0) is refused after its payload is in
    desc = (Cmd.RUN, bytes(nbytes(descriptor_layout(CFG).size)))
    for bad, tail in ((past, b""), (read, b""), (desc, b""), (write(9, [9]), b"\x02\x05")):
        dev.write(BufId.START, old, 0)
        payload = b"".join(bytes([c.value]) + len(p).to_bytes(2, "little") + p
                           for c, p in (write(1, [5]), bad)) + tail
        if tail == b"":
            payload += chain_payload([write(2, [6])])
        with pytest.raises(DeviceError, match="CHAIN .* refused: ERR_ARG"):
            dev.request(Cmd.CHAIN, payload)
        got = dev.read(BufId.START, 0, 12)
        assert got[1] == 5 and got[2] == -7, bad[0]
        assert got[9] == (9 if tail else -7)  # before the bad tail: it ran
    # a request claiming more bytes than the frame has left is not run
    (p,) = write_buf_payloads(CFG, BufId.START, [8], 3)
    with pytest.raises(DeviceError, match="CHAIN .* refused: ERR_ARG"):
        dev.request(Cmd.CHAIN, bytes([Cmd.WRITE_BUF.value]) + (len(p) + 1).to_bytes(2, "little")
                    + p)
    assert dev.read(BufId.START, 3, 1) == [-7]
    # sent again with its seq (its answer lost), a CHAIN is answered OK and not run again
    dev.request(Cmd.CHAIN, chain_payload([write(0, [11]), write(1, [12])]))
    assert dev._transact(Cmd.CHAIN, chain_payload([write(0, [21]), write(1, [22])]), dev.seq,
                         1.0) == b""
    assert dev.read(BufId.START, 0, 2) == [11, 12]
    t.close()


def test_narrow_weight_rows_write_half_the_bytes_and_keep_the_high_halves(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, verify_weights=True, **FAST)
    wide = [[(i * 37 + j * 11) % 255 - 127 for j in range(CFG.lanes)] for i in range(5)]
    narrow = [[(i * 5 + j) % 16 - 8 for j in range(CFG.lanes)] for i in range(5)]
    dev.write(BufId.WEIGHTS, wide, 7)
    sent = dev.stats["bytes_tx"]
    dev.write(BufId.WEIGHTS4, narrow, 7)  # verified: the narrow halves read back
    assert dev.stats["bytes_tx"] - sent < 5 * CFG.lanes  # the whole rows' bytes
    # exactly: without the read-back, the frames of 4 bits a weight and nothing else
    plain = Device(t, CFG, **FAST)
    sent = plain.stats["bytes_tx"]
    plain.write(BufId.WEIGHTS4, narrow, 7)
    frames = write_buf_payloads(CFG, BufId.WEIGHTS4, narrow, addr=7,
                                max_payload=plain.max_payload)
    assert plain.stats["bytes_tx"] - sent == sum(len(p) + FRAME_OVERHEAD for p in frames)
    assert sum(len(p) - nbytes(BUF_ARGS.size) for p in frames) == 5 * CFG.lanes * 4 // 8

    def merged(w, v):  # the high half of w and the low 4 bits of v, as a signed 8-bit weight
        x = (w & 0xF0) | (v & 0x0F)
        return x - 256 if x & 0x80 else x

    assert dev.weight_rows(7, 5) == [[merged(w, v) for w, v in zip(wr, nr, strict=True)]
                                     for wr, nr in zip(wide, narrow, strict=True)]
    # the mirror: whole rows are unknown after a narrow write; narrow halves are known
    assert not dev.mirror.holds(BufId.WEIGHTS, wide, 7)
    assert dev.mirror.holds(BufId.WEIGHTS4, narrow, 7)
    dev.write(BufId.WEIGHTS, wide, 7)
    assert dev.mirror.holds(BufId.WEIGHTS4, [[((x + 8) & 15) - 8 for x in r] for r in wide], 7)
    with pytest.raises(DeviceError, match="READ_BUF .* refused: ERR_ARG"):
        dev.read(BufId.WEIGHTS4, 7, 1)  # a write-only view
    t.close()


@pytest.mark.slow
def test_whole_model_bit_exact_with_counters_and_cycles(sim, tiny_llama, tiny_llama_cm):
    lm, cm = tiny_llama, tiny_llama_cm
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    res = run_model(cm, lm.tokenize("A small model, run on simulated hardware."), dev)
    t.close()
    assert res.bit_exact
    assert all(r.exact and r.counters_match for r in res.records)
    # the generator's cycle model predicts every GEMM's busy counter exactly, and its
    # buffer-traffic counters (what the energy model charges as SRAM accesses)
    assert all(r.counters["busy"] == r.predicted_cycles for r in res.records)
    for r in res.records:
        assert {k: r.counters[k] for k in TRAFFIC} == r.predicted_traffic, r.name
    assert {r.name for r in res.records} == set(res.golden_events)


@pytest.mark.slow
def test_faults_at_a_high_rate_still_exact(sim, tiny_llama, tiny_llama_cm):
    lm, cm = tiny_llama, tiny_llama_cm
    t = FaultyTransport(SerialTransport(sim.url), rate=0.15, seed=3)
    dev = Device(t, CFG, **FAST, retries=12)
    res = run_model(cm, lm.tokenize("Noise on the line."), dev)
    t.close()
    assert res.bit_exact
    kinds = {k.split(":")[1] for k in t.injected}
    assert kinds == set(FAULTS), t.injected  # every kind was exercised ...
    assert {k.split(":")[0] for k in t.injected} == {"tx", "rx"}  # ... in both directions
    assert dev.stats["retries"] > 10 and dev.stats["bad_frames"] > 0


class _Deaf:
    """A transport to a device that never answers."""

    def send(self, data):
        pass

    def recv(self, timeout):
        return b""

    def close(self):
        pass


def test_exhausted_retries_are_a_clear_error():
    dev = Device(_Deaf(), CFG, timeout=0.01, quiet=0.0, retries=3)
    with pytest.raises(LinkError, match=r"IDENTIFY \(seq 1\): no good answer after 4 attempts "
                                        r"\(timeout, timeout, timeout, timeout\)"):
        dev.identify()


def test_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultyTransport(_Deaf(), 0.1, kinds=("flip", "melt"))


def test_gemm_with_row_blocks_k_and_n_tiles(sim):
    """Rows split into blocks by the event buffer, K over several weight loads, N over
    several lane slices: the interleaved schedule writes each K tile's weights once and
    the outputs equal the golden model's."""
    import torch

    from accel.tiling import plan_gemm
    from models.contract import requantize
    from models.encodings import Encoding
    from models.golden import gemm

    g = torch.Generator().manual_seed(4)
    m, k, n = 32, 200, 40
    # rate code, dense: every input fires several times, so the rows of one K tile (64
    # inputs) need more spike words than the buffer holds and are cut into blocks
    enc = Encoding("rate", steps=8)
    q = torch.randint(1, 9, (m, k), generator=g)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[:3] = True
    q[:, :3] = torch.randint(-127, 128, (m, 3), generator=g)
    shifts = torch.zeros(k, dtype=torch.int64)
    w = torch.randint(-7, 8, (n, k), generator=g)
    start = torch.randint(-100, 100, (n,), generator=g)
    consts = {"mcol": torch.randint(1, 2**15, (n,), generator=g),
              "bias": torch.zeros(n, dtype=torch.int64), "zp": torch.zeros(n, dtype=torch.int64),
              "lo": torch.full((n,), -127), "hi": torch.full((n,), 127)}
    mrow = torch.randint(1, 2**16, (m,), generator=g)
    plan = plan_gemm(CFG, q, mask, shifts, enc, w, start=start, consts=consts, mrow=mrow,
                     shift=20)
    blocks = {(r0, r1) for r0, r1, *_ in plan.slices}
    assert len(blocks) > 1 and plan.rows_resident
    assert max(len(imgs) for *_, imgs in plan.slices) > 1
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.reset_counters()
    got = dev.gemm(plan)
    c = dev.counters()
    t.close()
    acc, ev = gemm(q[None], mask[None], shifts[None], enc, w[None], start, "t",
                   k_tile=CFG.k_tile, n_tile=CFG.lanes)
    want = requantize(acc[0], consts["mcol"], 20, mrow, consts["bias"], consts["zp"],
                      consts["lo"], consts["hi"])
    assert torch.equal(got, want)
    assert (c["spikes"], c["macs"], c["acc_step"]) == (ev.spike_units, ev.macs, ev.acc_step)
    # weights: each (N slice, K tile) written once, whatever the number of row blocks
    n_tiles, k_tiles = -(-n // CFG.lanes), -(-k // CFG.k_tile)
    assert dev.stats["writes_skipped"] >= (len(blocks) - 1) * n_tiles * k_tiles


def _resident_call(m: int, mrow, seed: int, dense: bool):
    """A GEMM of ``m <= max_rows`` rows with row multipliers ``mrow``; ``dense`` rows fire
    so often that the event buffer cuts them into row blocks (each at its own row base)."""
    import torch

    from models.encodings import Encoding
    from models.golden import GemmCall, gemm

    g = torch.Generator().manual_seed(seed)
    k, n = CFG.weight_depth, 6
    enc = Encoding("rate", steps=8)
    codes = (torch.randint(7, 9, (m, k), generator=g) if dense
             else torch.zeros(m, k, dtype=torch.int64))
    mask = torch.zeros(k, dtype=torch.bool)
    shifts = torch.zeros(k, dtype=torch.int64)
    w = torch.randint(-7, 8, (n, k), generator=g)
    acc, _ = gemm(codes[None], mask[None], shifts[None], enc, w[None], None, "r")
    consts = {"mcol": torch.full((n,), 1 << 14), "bias": torch.zeros(n, dtype=torch.int64),
              "zp": torch.zeros(n, dtype=torch.int64), "lo": torch.full((n,), -30000),
              "hi": torch.full((n,), 30000)}
    from models.contract import requantize

    y = requantize(acc[0], consts["mcol"], 14, mrow, consts["bias"], consts["zp"],
                   consts["lo"], consts["hi"])
    return GemmCall("r", None, codes, mask, shifts, enc, w, None, consts, mrow, 14, y)


def test_resident_words_replaced_by_an_overlapping_write_are_rewritten(sim):
    """GEMM A (two row blocks, row multipliers 1.0), GEMM B (one block, a multiplier per
    row), GEMM A again: the driver used to skip A's second row block's multipliers as
    cached at their start address although B had overwritten them."""
    import torch

    from accel.tiling import plan_call
    from host.run import run_gemm
    from models.contract import ROW_FRAC

    m = 20
    a = _resident_call(m, torch.full((m,), 1 << ROW_FRAC), 1, dense=True)
    b = _resident_call(m, torch.arange(1, m + 1) * 1000, 2, dense=False)
    assert len(plan_call(CFG, a).slices) == 2 and len(plan_call(CFG, b).slices) == 1
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    for call in (a, b, a):
        _, rec, _ = run_gemm(dev, call)
        assert rec.exact and rec.counters_match, call.name
    assert dev.stats["writes_skipped"] > 0  # the cache still saves what it can
    t.close()


def test_one_token_opt_runs_exactly_with_all_integer_attention(sim, tiny_opt_cm):
    """tiny-opt on one token: the PV GEMMs have K = 1 channel, an outlier, so no spike
    channel: the device used to run a TTFS window for it anyway and count its steps."""
    import torch

    t = SerialTransport(sim.url)
    res = run_model(tiny_opt_cm, torch.tensor([1037]), Device(t, CFG, **FAST))
    t.close()
    av = [r for r in res.records if r.name.endswith(".av")]
    assert av and all(r.k == 1 and r.counters["acc_step"] == 0 for r in av)
    assert res.bit_exact


def test_packed_words_cross_the_link_at_their_width_and_read_back_equal(sim):
    """Buffers whose words are not whole bytes (event words) are written
    packed (``accel.protocol.PACKED``): fewer bytes, the same words; the core refuses a
    packed READ_BUF and a packed write of a byte-wide buffer."""
    import random

    from accel.layouts import packable
    from accel.payloads import buf_args
    from accel.protocol import PACKED, Cmd

    pk = packable(CFG)
    assert BufId.MAC_EV in pk and BufId.WEIGHTS4 not in pk and BufId.START not in pk
    rng = random.Random(7)
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST, max_payload=256)  # several frames, each its own bit string
    # MAC events (not whole bytes): spike events are packed alike but have no host read port
    shape, _ = buffer_shapes(CFG)[BufId.MAC_EV]
    width = pk[BufId.MAC_EV]
    assert width % 8
    for count in (1, 2, 7, 8, 9, 200):
        words = [{"op": rng.randrange(2), "k": rng.randrange(CFG.weight_depth),
                  "q": rng.randrange(-128, 128), "shift": rng.randrange(CFG.max_shift + 1)}
                 for _ in range(count)]
        addr = rng.randrange(CFG.mac_event_depth - count)
        payloads = write_buf_payloads(CFG, BufId.MAC_EV, words, addr, max_payload=256)
        per = (256 - nbytes(BUF_ARGS.size)) * 8 // width  # words a frame
        assert [len(p) - nbytes(BUF_ARGS.size) for p in payloads] == [
            nbytes(min(per, count - i) * width) for i in range(0, count, per)]
        dev.mirror.forget()
        dev.write(BufId.MAC_EV, words, addr)
        assert dev.read(BufId.MAC_EV, addr, count) == [pack_word(shape, w) for w in words]
    for buf, cmd in ((BufId.MAC_EV, Cmd.READ_BUF), (BufId.START, Cmd.WRITE_BUF)):
        payload = buf_args(buf, 0, 1)
        payload = bytes([payload[0] | PACKED]) + payload[1:]
        with pytest.raises(DeviceError, match=f"{cmd.name} .* refused: ERR_ARG"):
            dev.request(cmd, payload + (b"\x00" * 4 if cmd == Cmd.WRITE_BUF else b""))
    # spike events have no host read port (``accel.layouts.HOST_READABLE``)
    with pytest.raises(DeviceError, match="READ_BUF .* refused: ERR_ARG"):
        dev.request(Cmd.READ_BUF, buf_args(BufId.SPIKE_EV, 0, 1))
    t.close()
