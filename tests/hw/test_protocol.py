"""Host side of the link protocol: frame encoding and the resynchronising decoder."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accel.protocol import (
    CHAINABLE,
    CRC_BYTES,
    FRAME_OVERHEAD,
    HEADER,
    HEADER_BYTES,
    MAX_PAYLOAD,
    SOF,
    SUB_HEADER_BYTES,
    Cmd,
    Frame,
    FrameDecoder,
    FrameError,
    Status,
    chain_payload,
    crc32,
    decode_header,
    encode_frame,
    encode_header,
    parse_chain,
)


def test_codes_are_the_documented_ones():
    # the codes are a wire contract with host tools outside this repository: a renumbering
    # must be deliberate (and bump PROTOCOL_VERSION)
    assert {c.name: c.value for c in Cmd} == {
        "IDENTIFY": 0x01, "WRITE_BUF": 0x02, "READ_BUF": 0x03, "RUN": 0x04,
        "READ_COUNTERS": 0x05, "RESET_COUNTERS": 0x06, "ABORT": 0x07, "LOAD": 0x08,
        "LOAD_RUN": 0x09, "EXPAND": 0x0A, "WRITE_ROWS": 0x0B, "CHAIN": 0x0C,
        "STORE": 0x0D}
    assert {s.name: s.value for s in Status} == {
        "OK": 0x80, "ERR_CRC": 0x81, "ERR_LENGTH": 0x82, "ERR_COMMAND": 0x83,
        "ERR_ARG": 0x84, "ERR_TIMEOUT": 0x85, "ERR_FAULT": 0x86}
    assert SOF == 0xA5 and MAX_PAYLOAD == 4096


def test_header_is_little_endian_through_the_layout():
    assert HEADER_BYTES == 4 and FRAME_OVERHEAD == 9
    assert encode_header(0x12, 0x34, 0x0102) == bytes([0x12, 0x34, 0x02, 0x01])
    h = decode_header(bytes([0x12, 0x34, 0x02, 0x01]))
    assert (h.cmd, h.seq, h.length) == (0x12, 0x34, 0x0102)
    assert HEADER.from_bits(int.from_bytes(encode_header(7, 8, 9), "little")).length == 9


def test_crc_is_zlib_crc32_over_header_and_payload_little_endian():
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    frame = encode_frame(Cmd.RUN, 3, b"ab")
    assert frame[0] == SOF
    assert frame[-CRC_BYTES:] == crc32(frame[1:-CRC_BYTES]).to_bytes(4, "little")
    assert frame.hex() == "a50403020061627c0ba018"


def test_enum_members_and_their_values_encode_alike():
    assert encode_frame(Cmd.RUN, 1, b"x") == encode_frame(Cmd.RUN.value, 1, b"x")
    assert encode_frame(Status.ERR_ARG, 2) == encode_frame(0x84, 2)


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600))
def test_frames_round_trip(cmd, seq, payload):
    dec = FrameDecoder()
    assert dec.feed(encode_frame(cmd, seq, payload)) == [Frame(cmd, seq, payload)]
    assert dec.pending == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=24), st.integers(0, 255), st.binary(max_size=40)),
                min_size=1, max_size=6),
       st.binary(max_size=24), st.lists(st.integers(1, 400), max_size=8))
def test_every_frame_recovered_from_garbage_with_false_sofs_and_split_feeds(parts, tail, cuts):
    # garbage is drawn so that false SOFs are common: each can declare a length that
    # swallows the following real frame, which the decoder must then find again
    stream, want = b"", []
    for i, (garbage, seq, payload) in enumerate(parts):
        garbage = bytes(SOF if b % 3 == 0 else b for b in garbage)
        stream += garbage + encode_frame(i + 1, seq, payload)
        want.append(Frame(i + 1, seq, payload))
    stream += bytes(SOF if b % 3 == 0 else b for b in tail)
    dec, got, at = FrameDecoder(max_payload=64), [], 0
    for cut in sorted(cuts):
        got += dec.feed(stream[at:cut])
        at = max(at, cut)
    got += dec.feed(stream[at:]) + dec.flush()
    assert [f for f in got if isinstance(f, Frame)] == want
    assert dec.pending == 0


def test_frame_split_byte_by_byte():
    frame = encode_frame(Cmd.WRITE_BUF, 4, bytes(range(20)))
    dec = FrameDecoder()
    got = [r for b in frame for r in dec.feed(bytes([b]))]
    assert got == [Frame(Cmd.WRITE_BUF.value, 4, bytes(range(20)))]


def test_bad_crc_is_reported_and_the_next_frame_found():
    bad = bytearray(encode_frame(Cmd.WRITE_BUF, 9, b"abcdef"))
    bad[7] ^= 0xFF
    got = FrameDecoder().feed(bytes(bad) + encode_frame(Cmd.IDENTIFY, 10, b"ok"))
    assert got == [FrameError("crc", 9), Frame(Cmd.IDENTIFY.value, 10, b"ok")]
    assert "frame seq 9 carries CRC" in got[0].detail


def test_good_frame_behind_a_false_sof_is_found():
    # the false SOF declares 3 payload bytes: its "frame" ends inside the real one
    false = bytes([SOF, 0x01, 0x77, 0x03, 0x00, 0x10])
    got = FrameDecoder().feed(false + encode_frame(Cmd.RUN, 5, b"xyz"))
    assert got == [FrameError("crc", 0x77), Frame(Cmd.RUN.value, 5, b"xyz")]


def test_oversized_length_is_an_error_at_once_not_a_wait():
    frame = bytes([SOF, 1, 2, 0xFF, 0xFF]) + encode_frame(Cmd.IDENTIFY, 3, b"")
    got = FrameDecoder(max_payload=100).feed(frame)
    assert got == [FrameError("length", 2), Frame(Cmd.IDENTIFY.value, 3, b"")]
    assert got[0].detail == "frame seq 2 declares 65535 payload bytes, more than 100"


def test_payload_of_exactly_max_payload_is_accepted():
    dec = FrameDecoder(max_payload=5)
    assert dec.feed(encode_frame(1, 1, bytes(5))) == [Frame(1, 1, bytes(5))]
    assert dec.feed(encode_frame(1, 2, bytes(6))) == [FrameError("length", 2)]


def test_flush_reports_truncated_frames_with_seq_once_the_header_is_in():
    dec = FrameDecoder()
    assert dec.feed(encode_frame(Cmd.RUN, 6, b"abc")[:7]) == []
    assert dec.pending == 7
    assert dec.flush() == [FrameError("truncated", 6)]
    assert dec.feed(bytes([SOF, 1, 2])) == []
    got = dec.flush()
    assert got == [FrameError("truncated", None)]
    assert got[0].detail == "stream ended 2 byte(s) into a header"
    assert dec.pending == 0 and dec.flush() == []


def test_garbage_without_sof_is_dropped_not_kept():
    dec = FrameDecoder()
    assert dec.feed(bytes(1000)) == [] and dec.pending == 0


@pytest.mark.parametrize("args, error, message", [
    ((256, 0), ValueError, "cmd must be a byte (0..255), not 256"),
    ((1, -1), ValueError, "seq must be a byte (0..255), not -1"),
    ((True, 0), ValueError, "cmd must be a byte (0..255), not True"),
    ((1, 0, bytes(70000)), ValueError,
     "payload of 70000 bytes does not fit the 16-bit length field (at most 65535)"),
    ((1, 0, "text"), TypeError, "payload must be bytes, not str"),
])
def test_bad_frame_arguments_are_refused(args, error, message):
    with pytest.raises(error) as exc:
        encode_frame(*args)
    assert str(exc.value) == message


def test_bad_decoder_arguments_are_refused():
    with pytest.raises(ValueError) as exc:
        FrameDecoder(max_payload=70000)
    assert str(exc.value) == "max_payload must be in 0..65535, not 70000"
    with pytest.raises(ValueError) as exc:
        decode_header(b"\x01\x02")
    assert str(exc.value) == "a header is 4 bytes, not 2"


def test_a_chain_payload_parses_back_and_refuses_what_it_cannot_carry():
    parts = [(Cmd.WRITE_BUF, bytes(range(9))), (Cmd.EXPAND, b""), (Cmd.RUN, b"\x01" * 300)]
    payload = chain_payload(parts)
    assert len(payload) == sum(SUB_HEADER_BYTES + len(p) for _, p in parts)
    assert payload[:3] == bytes([Cmd.WRITE_BUF.value, 9, 0])  # cmd, length little-endian
    assert parse_chain(payload) == [(c.value, p) for c, p in parts]
    for cmd in set(Cmd) - CHAINABLE:
        with pytest.raises(ValueError, match=f"cannot carry {cmd.name}"):
            chain_payload([(cmd, b"")])
    with pytest.raises(ValueError, match="2 stray bytes"):
        parse_chain(payload + b"\x02\x00")
    with pytest.raises(ValueError, match="declares 300 bytes, 299 left"):
        parse_chain(payload[:-1])
