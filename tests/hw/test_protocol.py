"""Host-side frame encoding and the resynchronising decoder."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.protocol import SOF, Frame, FrameDecoder, FrameError, encode_frame


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600))
def test_frames_round_trip(cmd, seq, payload):
    assert FrameDecoder().feed(encode_frame(cmd, seq, payload)) == [Frame(cmd, seq, payload)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), min_size=1,
                max_size=6), st.integers(1, 7))
def test_every_frame_recovered_from_garbage_and_split_feeds(parts, split):
    stream, want = b"", []
    for i, (garbage, payload) in enumerate(parts):
        stream += garbage.replace(bytes([SOF]), b"\x00") + encode_frame(3, i, payload)
        want.append(Frame(3, i, payload))
    dec, got = FrameDecoder(), []
    for i in range(0, len(stream), split):
        got += dec.feed(stream[i : i + split])
    assert [f for f in got if isinstance(f, Frame)] == want


def test_bad_crc_is_reported_and_next_frame_found():
    bad = bytearray(encode_frame(2, 9, b"abcdef"))
    bad[7] ^= 0xFF
    got = FrameDecoder().feed(bytes(bad) + encode_frame(1, 10, b"ok"))
    assert got[0] == FrameError("crc", 9) and got[-1] == Frame(1, 10, b"ok")


def test_oversized_length_is_an_error_not_a_hang():
    frame = bytes([SOF, 1, 2, 0xFF, 0xFF]) + encode_frame(1, 3, b"")
    got = FrameDecoder(max_payload=100).feed(frame)
    assert got[0] == FrameError("length", 2) and got[-1] == Frame(1, 3, b"")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cmd and seq are bytes"):
        encode_frame(256, 0)
    with pytest.raises(ValueError, match="does not fit the 16-bit length"):
        encode_frame(1, 0, bytes(70000))
