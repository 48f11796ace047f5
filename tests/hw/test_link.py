# amaranth: UnusedElaboratable=no
"""Link gateware in the Amaranth simulator: frames in and out with random stalls on every
stream; CRC, length and timeout errors and the recovery after them.

The first line silences Amaranth's unused-elaboratable warning for the ``Link`` objects
whose constructor is expected to refuse its arguments.
"""

import random
import zlib
from dataclasses import dataclass, field

import pytest
from amaranth import Module, Signal, Value
from amaranth.sim import Simulator

from accel.protocol import HEADER, SOF, Cmd, Frame, FrameDecoder, FrameError, Status, encode_frame
from hw.link import ERR_LAYOUT, Link, LinkRx, LinkTx, crc32_update
from sim.streams import Stalls, put, samples, seed, stream_rules

KNOWN = {c.value for c in Cmd}


def echo_core(frame: Frame) -> tuple[int, bytes]:
    """Scripted core: known commands get OK and their payload reversed, others ERR_COMMAND."""
    if frame.cmd in KNOWN:
        return Status.OK.value, frame.payload[::-1]
    return Status.ERR_COMMAND.value, b""


def ok(seq: int, payload: bytes) -> Frame:
    """The reply :func:`echo_core` gives a known command."""
    return Frame(Status.OK.value, seq, payload[::-1])


def err(status: Status, seq: int) -> Frame:
    """An error reply (empty payload)."""
    return Frame(status.value, seq, b"")


async def take(ctx, stream, stall: Stalls):
    """:func:`sim.streams.get`, and a check that ``valid`` does not depend on ``ready``.

    Each cycle ``valid`` is read with ``ready`` low and high before the real choice is set:
    a source whose ``valid`` waits for ``ready`` deadlocks against a sink that waits for
    ``valid``, which random stalls alone do not reveal.
    """
    while True:
        ready = not stall()
        ctx.set(stream.ready, 0)
        low = ctx.get(stream.valid)
        ctx.set(stream.ready, 1)
        assert ctx.get(stream.valid) == low, "valid depends on ready"
        ctx.set(stream.ready, int(ready))
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            ctx.set(stream.ready, 0)
            return payload


@dataclass
class Bench:
    """What one simulation saw."""

    cmds: list = field(default_factory=list)  #: frames the core received
    replies: list = field(default_factory=list)  #: what the host decoder made of tx
    tx: bytearray = field(default_factory=bytearray)  #: raw bytes sent by the link
    rx_sent: int = 0  #: bytes the host got accepted on rx
    strobes: dict = field(default_factory=lambda: {"rx_byte": 0, "tx_byte": 0,
                                                   "frame_err": 0})


def run_link(link: Link, script, n_replies: int, *, stall_p: float = 0.3, rng=None,
             answer=echo_core, done=None, max_cycles: int = 40_000) -> Bench:
    """Drive ``link`` with a host, a scripted core and a checker, all with random stalls.

    ``script`` items are ``bytes`` (sent on rx) or ``int`` (cycles of silence on rx).
    The run ends once the host has sent everything and ``done(bench)`` holds (default: at
    least ``n_replies`` decoded replies), then listens ``min(timeout_cycles, 200) + 50``
    more cycles so that a spurious extra reply would be caught.
    """
    rng = rng or random.Random(seed())
    st = [Stalls(stall_p, random.Random(rng.random())) for _ in range(6)]
    s_rx, s_cmd, s_data, s_resp, s_rdata, s_tx = st
    done = done or (lambda b: len(b.replies) >= n_replies)
    bench, host_done = Bench(), [False]
    dec = FrameDecoder(max_payload=0xFFFF)
    sim = Simulator(link)
    sim.add_clock(1e-8)

    async def host(ctx):
        for item in script:
            if isinstance(item, int):
                await ctx.tick().repeat(item)
                continue
            for b in item:
                await put(ctx, link.rx, b, s_rx)
                bench.rx_sent += 1
        host_done[0] = True

    async def core(ctx):
        while True:
            h = await take(ctx, link.cmd, s_cmd)
            n, body = int(h.length), bytearray()
            for i in range(n):
                d = await take(ctx, link.data, s_data)
                assert int(d.last) == (i == n - 1), f"last={int(d.last)} on byte {i} of {n}"
                body.append(int(d.byte))
            frame = Frame(int(h.cmd), int(h.seq), bytes(body))
            bench.cmds.append(frame)
            status, payload = answer(frame)
            await put(ctx, link.resp, HEADER.const({"cmd": status, "seq": frame.seq,
                                                    "length": len(payload)}), s_resp)
            for b in payload:
                await put(ctx, link.resp_data, b, s_rdata)

    streams = {"tx": link.tx, "cmd": link.cmd, "data": link.data}

    async def monitor(ctx):
        """The strobes counted, and no payload byte offered before its command (the
        lib.stream rules on these streams: ``stream_rules`` below)."""
        data_due = 0  # payload bytes the data stream may still offer
        sigs = [link.rx_byte, link.tx_byte, link.frame_err]
        for s in streams.values():
            sigs += [s.valid, s.ready, Value.cast(s.payload)]
        async for _clk, _rst, *v in ctx.tick().sample(*sigs):
            for name, x in zip(bench.strobes, v[:3], strict=True):
                bench.strobes[name] += x
            cmd_v, cmd_r, cmd_p, data_v, data_r = v[6:11]
            assert not data_v or data_due > 0, "data offered before its cmd was accepted"
            if cmd_v and cmd_r:
                data_due = HEADER.from_bits(cmd_p).length
            data_due -= data_v and data_r

    async def sink(ctx):
        while True:
            byte = await take(ctx, link.tx, s_tx)
            bench.tx.append(byte)
            bench.replies += dec.feed(bytes([byte]))

    async def watchdog(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
            if host_done[0] and done(bench):
                await ctx.tick().repeat(min(link.timeout_cycles, 200) + 50)
                return
        raise AssertionError(f"no end after {max_cycles} cycles: host done {host_done[0]}, "
                             f"core got {bench.cmds}, replies {bench.replies}")

    sim.add_testbench(host, background=True)
    sim.add_testbench(core, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(stream_rules(streams), background=True)
    sim.add_testbench(sink, background=True)
    sim.add_testbench(watchdog)
    sim.run()
    assert bench.strobes["rx_byte"] == bench.rx_sent
    assert bench.strobes["tx_byte"] == len(bench.tx)
    return bench


def test_crc32_update_matches_zlib():
    m = Module()
    crc, byte = Signal(32), Signal(8)
    nxt = crc32_update(m, crc, byte)
    rng = random.Random(seed())
    msgs = [b"", b"123456789"] + [rng.randbytes(rng.randrange(1, 40)) for _ in range(samples(8))]
    sim = Simulator(m)

    async def bench(ctx):
        for msg in msgs:
            c = 0xFFFFFFFF
            for b in msg:
                ctx.set(crc, c)
                ctx.set(byte, b)
                c = ctx.get(nxt)
            assert c ^ 0xFFFFFFFF == zlib.crc32(msg), msg

    sim.add_testbench(bench)
    sim.run()


def test_frames_of_length_0_1_300_round_trip_with_stalls():
    frames = [(Cmd.IDENTIFY.value, 1, b""), (Cmd.WRITE_BUF.value, 2, b"\x07"),
              (Cmd.READ_BUF.value, 3, random.Random(seed()).randbytes(300))]
    wire = [encode_frame(*f) for f in frames]
    b = run_link(Link(max_payload=512), wire, 3)
    assert b.cmds == [Frame(*f) for f in frames]
    assert b.replies == [ok(s, p) for _, s, p in frames]
    # the reply bytes are exactly what the host encoder makes: header order and CRC agree
    assert bytes(b.tx) == b"".join(encode_frame(Status.OK, s, p[::-1]) for _, s, p in frames)
    assert b.strobes["frame_err"] == 0


def test_random_frames_round_trip_with_heavy_stalls():
    rng = random.Random(seed() + 1)
    frames = [(rng.choice(list(Cmd)).value, rng.randrange(256),
               rng.randbytes(rng.choice([0, 1, rng.randrange(64), 64])))
              for _ in range(samples(6))]
    b = run_link(Link(max_payload=64), [encode_frame(*f) for f in frames], len(frames),
                 stall_p=0.6, rng=rng)
    assert b.cmds == [Frame(*f) for f in frames]
    assert b.replies == [ok(s, p) for _, s, p in frames]


def test_unknown_command_reaches_the_core_which_answers_err_command():
    wire = [encode_frame(0x42, 5, b"abc"), encode_frame(Cmd.RUN, 6, b"d")]
    b = run_link(Link(max_payload=16), wire, 2)
    assert b.cmds == [Frame(0x42, 5, b"abc"), Frame(Cmd.RUN.value, 6, b"d")]
    assert b.replies == [err(Status.ERR_COMMAND, 5), ok(6, b"d")]


@pytest.mark.parametrize("where", [1, 5, 8, 11], ids=["cmd", "payload", "crc0", "crc3"])
def test_corrupted_frame_gets_err_crc_and_the_next_frame_works(where):
    bad = bytearray(encode_frame(Cmd.WRITE_BUF, 5, b"hello"))
    bad[where] ^= 0x40
    b = run_link(Link(max_payload=64), [bytes(bad), encode_frame(Cmd.RUN, 6, b"ok")], 2)
    assert b.cmds == [Frame(Cmd.RUN.value, 6, b"ok")]
    assert b.replies == [err(Status.ERR_CRC, 5), ok(6, b"ok")]
    assert b.strobes["frame_err"] == 1


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 9, 14], ids=lambda c: f"after{c}")
def test_truncated_frame_gets_err_timeout_and_the_next_frame_works(cut):
    timeout = 50
    part = encode_frame(Cmd.WRITE_BUF, 9, bytes(range(6)))[:cut]  # 15 bytes when whole
    before, after = encode_frame(Cmd.RUN, 77, b"r"), encode_frame(Cmd.IDENTIFY, 10, b"")
    wire = [before, part, timeout + 30, after]
    b = run_link(Link(max_payload=64, timeout_cycles=timeout), wire, 3)
    # seq is byte 2 of the frame: before it arrives there is no seq to echo (and the
    # previous frame's 77 must not leak into the reply)
    timeout_reply = err(Status.ERR_TIMEOUT, 9 if cut > 2 else 0)
    assert b.replies == [ok(77, b"r"), timeout_reply, ok(10, b"")]
    assert b.cmds == [Frame(Cmd.RUN.value, 77, b"r"), Frame(Cmd.IDENTIFY.value, 10, b"")]
    assert b.strobes["frame_err"] == 1


@pytest.mark.parametrize("gap, status", [(50, Status.OK), (51, Status.ERR_TIMEOUT)])
def test_timeout_fires_only_after_more_than_timeout_cycles_of_silence(gap, status):
    frame = encode_frame(Cmd.WRITE_BUF, 3, b"abcd")
    assert SOF not in frame[6:]  # after a timeout the rest is hunted through: no false SOF
    # put() returns on the edge that took the byte; the next byte is taken ``gap`` + 1
    # edges later, so ``gap`` edges pass without a byte
    wire = [frame[:6], gap, frame[6:]]
    b = run_link(Link(max_payload=64, timeout_cycles=50), wire, 1, stall_p=0.0)
    assert b.replies == [ok(3, b"abcd") if status == Status.OK else err(status, 3)]


def test_garbage_before_a_frame_is_skipped():
    rng = random.Random(seed() + 2)
    garbage = bytes(rng.choice([x for x in range(256) if x != SOF]) for _ in range(40))
    b = run_link(Link(max_payload=64), [garbage + encode_frame(Cmd.IDENTIFY, 7, b"a")], 1)
    assert b.cmds == [Frame(Cmd.IDENTIFY.value, 7, b"a")]
    assert b.replies == [ok(7, b"a")]


def test_garbage_with_false_sofs_is_answered_with_errors_then_the_next_frame_works():
    rng = random.Random(seed() + 3)
    timeout = 50
    garbage = bytes(rng.choice([SOF, rng.randrange(256)]) for _ in range(30))
    wire = [garbage, timeout + 30, encode_frame(Cmd.RUN, 200, b"xy")]
    b = run_link(Link(max_payload=16, timeout_cycles=timeout), wire, 0, rng=rng,
                 done=lambda b: ok(200, b"xy") in b.replies)
    assert b.cmds == [Frame(Cmd.RUN.value, 200, b"xy")]
    assert b.replies[-1] == ok(200, b"xy")
    errors = {Status.ERR_CRC.value, Status.ERR_LENGTH.value, Status.ERR_TIMEOUT.value}
    assert all(r.cmd in errors for r in b.replies[:-1])
    assert b.strobes["frame_err"] == len(b.replies) - 1 >= 1


@pytest.mark.parametrize("length, status", [(16, Status.OK), (17, Status.ERR_LENGTH),
                                            (0xFFFF, Status.ERR_LENGTH)])
def test_length_above_max_payload_gets_err_length_and_the_next_frame_works(length, status):
    seq = 8
    # a 64 KiB payload is not worth simulating: the error comes right after the header
    frame = encode_frame(Cmd.WRITE_BUF, seq, bytes(length))[: 5 if length > 100 else None]
    # hunting resumes after the header, so the rest of the frame must not hold a false SOF
    assert SOF not in frame[1:]
    wire = [frame, encode_frame(Cmd.IDENTIFY, 10, b"z")]
    b = run_link(Link(max_payload=16), wire, 2)
    first = ok(seq, bytes(length)) if status == Status.OK else err(status, seq)
    assert b.replies == [first, ok(10, b"z")]
    assert b.strobes["frame_err"] == (status != Status.OK)


def test_response_longer_than_max_payload_is_sent():
    big = random.Random(seed()).randbytes(100)
    b = run_link(Link(max_payload=4), [encode_frame(Cmd.READ_BUF, 1, b"r")], 1,
                 answer=lambda f: (Status.OK.value, big))
    assert b.replies == [Frame(Status.OK.value, 1, big)]
    assert not any(isinstance(r, FrameError) for r in b.replies)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_payload=0), "max_payload must be an integer in 1..65535, not 0"),
    (dict(max_payload=65536), "max_payload must be an integer in 1..65535, not 65536"),
    (dict(max_payload=4.0), "max_payload must be an integer in 1..65535, not 4.0"),
    (dict(timeout_cycles=0), "timeout_cycles must be a positive integer, not 0"),
    (dict(timeout_cycles=None), "timeout_cycles must be a positive integer, not None"),
])
@pytest.mark.parametrize("cls", [Link, LinkRx])
def test_bad_link_parameters_are_refused(kwargs, message, cls):
    with pytest.raises(ValueError) as exc:
        cls(**kwargs)
    assert str(exc.value) == message


def test_link_ports():
    link = Link(max_payload=8, timeout_cycles=5)
    assert list(link.signature.members.keys()) == [
        "rx", "tx", "cmd", "data", "resp", "resp_data", "rx_byte", "tx_byte", "frame_err"]
    assert link.cmd.payload.shape() == HEADER == link.resp.payload.shape()


def test_receiver_and_transmitter_join_through_the_error_stream():
    rx, tx = LinkRx(max_payload=8, timeout_cycles=5), LinkTx()
    assert rx.err.signature.flip() == tx.err.signature  # wiring.connect joins them in Link
    assert rx.err.payload.shape() == ERR_LAYOUT
    assert "resp_sent" in rx.signature.members and "resp_sent" in tx.signature.members


def test_transmitter_takes_an_error_request_only_once_its_frame_is_out():
    """The receiver hunts again only when its error reply is out: ``err`` is taken on the
    cycle the reply's last byte goes, not when the transmitter starts on it."""
    tx = LinkTx()
    sim = Simulator(tx)
    sim.add_clock(1e-8)
    sent, taken_at = bytearray(), []

    async def bench(ctx):
        ctx.set(tx.err.payload, ERR_LAYOUT.const({"status": Status.ERR_CRC, "seq": 9}))
        ctx.set(tx.err.valid, 1)
        ctx.set(tx.tx.ready, 1)
        for _ in range(40):
            _, _, valid, byte, ready = await ctx.tick().sample(tx.tx.valid, tx.tx.payload,
                                                                tx.err.ready)
            if ready:
                taken_at.append(len(sent))
                ctx.set(tx.err.valid, 0)
            if valid:
                sent.append(byte)

    sim.add_testbench(bench)
    sim.run()
    frame = encode_frame(Status.ERR_CRC, 9, b"")
    assert bytes(sent) == frame and taken_at == [len(frame) - 1]
