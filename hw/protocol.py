"""The host link protocol: the one definition used by the gateware, the host and the benches.

Frames (both directions)::

    SOF (0xA5) | header: cmd u8, seq u8, length u16 (little-endian) | payload | CRC-32

The CRC is zlib's CRC-32 (reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF)
of header and payload (not the SOF), sent little-endian. A response carries a
:class:`Status` in ``cmd`` and echoes ``seq``. Commands, statuses, argument layouts, the
IDENTIFY word and buffer word sizes are defined here; ``docs/link.md`` explains recovery.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from amaranth import Shape, unsigned
from amaranth.lib import data, enum

SOF = 0xA5
MAX_PAYLOAD = 4096
PROTOCOL_VERSION = 1

#: Frame header after the SOF byte.
HEADER = data.StructLayout({"cmd": unsigned(8), "seq": unsigned(8), "length": unsigned(16)})
HEADER_BYTES = HEADER.size // 8
CRC_BYTES = 4


class Cmd(enum.Enum, shape=8):
    """Request codes."""

    IDENTIFY = 0x01
    WRITE_BUF = 0x02
    READ_BUF = 0x03
    RUN = 0x04
    READ_COUNTERS = 0x05
    RESET_COUNTERS = 0x06


class Status(enum.Enum, shape=8):
    """Response codes (in the ``cmd`` field of a response)."""

    OK = 0x80
    ERR_CRC = 0x81
    ERR_LENGTH = 0x82
    ERR_COMMAND = 0x83
    ERR_ARG = 0x84
    ERR_TIMEOUT = 0x85


#: WRITE_BUF / READ_BUF arguments (the first bytes of the payload).
BUF_ARGS = data.StructLayout({"buf": unsigned(8), "addr": unsigned(24), "count": unsigned(24)})


def nbytes(bits: int) -> int:
    """Bytes that carry ``bits`` bits."""
    return (bits + 7) // 8


def ident_layout() -> data.StructLayout:
    """IDENTIFY response: config hash, protocol version and the sizes a host needs."""
    return data.StructLayout({"hash": unsigned(32), "version": unsigned(8),
                              "lanes": unsigned(16), "mac_units": unsigned(16),
                              "weight_depth": unsigned(16), "max_rows": unsigned(16),
                              "counters": unsigned(8), "counter_bytes": unsigned(8)})


def word_bytes(cfg) -> dict:
    """Bytes per word of every engine buffer on the link (``{BufId: n}``)."""
    from .engine import buffer_shapes

    return {b: nbytes(Shape.cast(s).width) for b, (s, _) in buffer_shapes(cfg).items()}


def crc32(data_: bytes) -> int:
    """The frame CRC."""
    return zlib.crc32(data_) & 0xFFFFFFFF


def encode_frame(cmd: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame, ready to send."""
    if not 0 <= cmd <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"cmd and seq are bytes, not {cmd}, {seq}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit the 16-bit length")
    hdr = HEADER.const({"cmd": cmd, "seq": seq, "length": len(payload)}).as_bits()
    body = hdr.to_bytes(HEADER_BYTES, "little") + bytes(payload)
    return bytes([SOF]) + body + crc32(body).to_bytes(CRC_BYTES, "little")


@dataclass(frozen=True)
class Frame:
    """A well-formed frame."""

    cmd: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class FrameError:
    """A frame that failed its checks (``reason``: ``crc`` or ``length``)."""

    reason: str
    seq: int | None = None


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes, get the frames (and errors) they complete.

    Garbage before a SOF is skipped. After a bad frame the search resumes at the byte after
    its SOF, so a good frame hidden behind a false SOF is still found.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self.buf = bytearray()

    def feed(self, data_: bytes) -> list[Frame | FrameError]:
        """Add bytes; return what they complete, in order."""
        self.buf.extend(data_)
        out: list[Frame | FrameError] = []
        while True:
            start = self.buf.find(SOF)
            if start < 0:
                self.buf.clear()
                return out
            del self.buf[:start]
            if len(self.buf) < 1 + HEADER_BYTES:
                return out
            hdr = HEADER.from_bits(int.from_bytes(self.buf[1 : 1 + HEADER_BYTES], "little"))
            length, seq = int(hdr.length), int(hdr.seq)
            if length > self.max_payload:
                out.append(FrameError("length", seq))
                del self.buf[:1]
                continue
            end = 1 + HEADER_BYTES + length + CRC_BYTES
            if len(self.buf) < end:
                return out
            body = bytes(self.buf[1 : end - CRC_BYTES])
            if crc32(body) != int.from_bytes(self.buf[end - CRC_BYTES : end], "little"):
                out.append(FrameError("crc", seq))
                del self.buf[:1]
                continue
            out.append(Frame(int(hdr.cmd), seq, body[HEADER_BYTES:]))
            del self.buf[:end]
