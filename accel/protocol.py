"""The host link protocol: the one definition used by the gateware, the host and the benches.

Frames
------
Requests (host to device) and responses (device to host) share one frame format::

    SOF 0xA5 | header (4 bytes) | payload (``length`` bytes) | CRC-32 (4 bytes)

The header is :data:`HEADER`, ``StructLayout({"cmd": 8, "seq": 8, "length": 16})``, packed
little-endian (``cmd`` is byte 0, ``seq`` byte 1, ``length`` bytes 2-3, low byte first).
The CRC is zlib's CRC-32 (reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF)
over header and payload, not the SOF, sent little-endian. A payload holds at most
``max_payload`` bytes (:data:`MAX_PAYLOAD` unless the gateware was built otherwise).

Commands and statuses
---------------------
A request carries a :class:`Cmd` in ``cmd`` and any ``seq`` the host likes. The response
carries a :class:`Status` in ``cmd`` and echoes ``seq``. The header's ``cmd`` field is a
plain byte rather than ``Cmd``, because the same layout carries statuses and because codes
the gateware does not know still travel: the link hands every well-formed frame to the core,
and the core answers an unknown code with ``ERR_COMMAND`` (the link does not filter).
Request and response payloads of each command are defined by the core (``hw/top.py``):
:data:`BUF_ARGS` and :func:`ident_layout` live here so that host and gateware share them.

Errors and recovery
-------------------
The link itself answers, with an empty payload, a frame whose CRC is wrong (``ERR_CRC``,
``seq`` echoed), whose ``length`` exceeds ``max_payload`` (``ERR_LENGTH``, sent as soon as
the header is in), or whose bytes stop for more than ``timeout_cycles`` cycles
(``ERR_TIMEOUT``; ``seq`` is echoed if it had arrived, else 0). After any of these it hunts
for the next SOF, skipping whatever else arrives. It does not look back into a bad frame's
bytes: the host retransmits after an error reply. One request is answered before the next
one is taken.

The host's :class:`FrameDecoder` is more thorough, because it can afford a buffer: after a
bad frame it resumes its search one byte after that frame's SOF, so a good frame that a
false SOF (a stray 0xA5 in line noise) had swallowed is still found.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from amaranth import Shape, unsigned
from amaranth.lib import data, enum

from .config import AccelConfig
from .counters import COUNTERS
from .layouts import buffer_shapes

#: The board link's rate (8N1): the ULX3S top's UART and the host's serial default.
BAUD = 1_000_000
#: Bits a UART sends per byte (8N1: a start bit, eight data bits, a stop bit).
UART_BITS_PER_BYTE = 10
#: Start-of-frame byte.
SOF = 0xA5
#: Default largest payload the gateware buffers (its ``max_payload`` parameter).
MAX_PAYLOAD = 4096
#: Bytes of requests the board holds while its core handles the request before them (the
#: receive FIFO between its UART and the link, ``hw.board``; the link takes no byte while
#: a request is handled, and the UART has no flow control): what the host may send ahead
#: without waiting for an answer (``accel.requests.pipeline_groups``).
RX_FIFO_BYTES = 512
#: Reported by IDENTIFY; bumped whenever a frame, command or payload layout changes.
#: 2: a repeated RUN is not re-run; 3: ABORT, ERR_FAULT, RUN checked; 4: DRAM, LOAD;
#: 5: LOAD_RUN; 6: reads do not make the core forget the last RUN's seq (pipelining);
#: 7: EXPAND and the code buffer (the on-chip spike encoder), WRITE_ROWS; 8: CHAIN;
#: 9: LOAD into the code buffer; 10: STORE; 11: STORE of code rows (``CODES``); 12: EXPAND
#: of MAC-event words (``EXPAND_ARGS.mac``)
PROTOCOL_VERSION = 12

#: Frame header after the SOF byte (little-endian on the wire).
HEADER = data.StructLayout({"cmd": unsigned(8), "seq": unsigned(8), "length": unsigned(16)})
#: Bytes of a packed :data:`HEADER`.
HEADER_BYTES = HEADER.size // 8
#: Bytes of the CRC trailer.
CRC_BYTES = 4
#: Bytes a frame adds to its payload (SOF, header, CRC).
FRAME_OVERHEAD = 1 + HEADER_BYTES + CRC_BYTES
#: Largest payload the 16-bit ``length`` field can declare.
LENGTH_LIMIT = (1 << Shape.cast(HEADER["length"].shape).width) - 1


class Cmd(enum.Enum, shape=8):
    """Request codes (the ``cmd`` field of a request)."""

    IDENTIFY = 0x01  #: report the configuration hash, protocol version and sizes
    WRITE_BUF = 0x02  #: write words into an engine buffer
    READ_BUF = 0x03  #: read words from an engine buffer
    RUN = 0x04  #: run one tile descriptor; answered when the tile is done
    READ_COUNTERS = 0x05  #: read every event counter
    RESET_COUNTERS = 0x06  #: clear every event counter
    ABORT = 0x07  #: return the engine and its FIFOs to idle; buffer contents are kept
    #: start copying words from the external memory into a buffer (:data:`LOAD_ARGS`);
    #: answered when the copy has started, and it runs on while RUNs execute
    LOAD = 0x08
    #: a LOAD's copies, then a RUN's descriptor, in one request (one round trip instead
    #: of two): answered as the RUN
    LOAD_RUN = 0x09
    #: the spike encoder turns the code buffer's codes into one row group's spike-event
    #: words (:data:`EXPAND_ARGS`); answered when they are written
    EXPAND = 0x0A
    #: write whole rows of a buffer of byte-wide lanes from their low ``lanes`` lanes
    #: (:data:`ROW_ARGS`; the rest of each row becomes zero): an attention operand's rows
    #: for a few key tokens cross the link at those lanes' bytes
    WRITE_ROWS = 0x0B
    #: several requests without answer payloads in one frame (:data:`CHAINABLE`, each
    #: :data:`SUB_HEADER` and its payload), run in order and answered once: one round trip
    #: for a tile's writes, EXPAND and LOAD_RUN instead of three (:func:`chain_payload`)
    CHAIN = 0x0C
    #: weight rows gathered from the output buffer's codes into the external memory
    #: (:data:`STORE_ARGS`), where a LOAD finds them: one GEMM's outputs become a later
    #: GEMM's weights (K of QK^T, V of PV) without crossing the link; answered when written
    STORE = 0x0D

    def __hash__(self):
        # by value, as ``accel.layouts.BufId``: sets of commands iterate in one order
        return hash(self.value)


class Status(enum.Enum, shape=8):
    """Response codes (the ``cmd`` field of a response); all have the top bit set."""

    OK = 0x80  #: done; the payload is the command's result
    ERR_CRC = 0x81  #: the request's CRC was wrong (answered by the link)
    ERR_LENGTH = 0x82  #: the request declared more than ``max_payload`` bytes (link)
    ERR_COMMAND = 0x83  #: unknown command code (answered by the core)
    ERR_ARG = 0x84  #: the request's payload is malformed or out of range (core)
    ERR_TIMEOUT = 0x85  #: the request's bytes stopped arriving (link)
    #: a RUN the engine could not finish: no progress for its watchdog's cycles, events
    #: that disagree with the descriptor, or a weight address past the buffer. The engine
    #: was returned to idle (buffers kept); the tile's results are not valid (core)
    ERR_FAULT = 0x86


#: Requests without side effects: the core keeps the last RUN's seq across them (a RUN
#: retried behind them is not run again; protocol 6), so the host may pipeline them behind
#: anything (``accel.requests.pipeline_groups``). IDENTIFY, which starts a session, is not.
READ_ONLY = frozenset({Cmd.READ_BUF, Cmd.READ_COUNTERS})
#: Requests the core does not run again when one comes with the seq of the last of them it
#: ran (a retry after a lost answer): it answers OK. The host never gives a new one that
#: seq (``host.driver.Device``).
RUNS_ONCE = frozenset({Cmd.RUN, Cmd.LOAD_RUN, Cmd.EXPAND, Cmd.CHAIN})
#: The requests a CHAIN may carry: those answered with no payload that the core runs
#: without the host in between. A CHAIN stops at the first one refused (the rest of its
#: payload is drained, not run) and is answered with that one's status, else OK; repeated
#: with the seq of the last RUN, EXPAND or CHAIN it is answered OK without running again.
CHAINABLE = frozenset({Cmd.WRITE_BUF, Cmd.WRITE_ROWS, Cmd.RUN, Cmd.LOAD, Cmd.LOAD_RUN,
                       Cmd.EXPAND, Cmd.STORE})
#: Header of each request inside a CHAIN's payload (little-endian), its payload after it.
SUB_HEADER = data.StructLayout({"cmd": unsigned(8), "length": unsigned(16)})
#: Bytes of a packed :data:`SUB_HEADER`.
SUB_HEADER_BYTES = SUB_HEADER.size // 8


def chain_payload(parts: list[tuple[Cmd, bytes]]) -> bytes:
    """A CHAIN's payload: each ``(cmd, payload)`` of :data:`CHAINABLE` after its
    :data:`SUB_HEADER`. Raises ``ValueError`` for a command a CHAIN cannot carry."""
    out = bytearray()
    for cmd, payload in parts:
        if cmd not in CHAINABLE:
            raise ValueError(f"a CHAIN cannot carry {cmd.name}")
        out += pack_args(SUB_HEADER, {"cmd": cmd.value, "length": len(payload)}) + payload
    return bytes(out)


def parse_chain(payload: bytes) -> list[tuple[int, bytes]]:
    """A CHAIN's requests as ``(cmd code, payload)``, the inverse of :func:`chain_payload`.
    Raises ``ValueError`` where a request's header or payload runs past the end."""
    out, i = [], 0
    while i < len(payload):
        if i + SUB_HEADER_BYTES > len(payload):
            raise ValueError(f"CHAIN: {len(payload) - i} stray bytes at {i}, not a header")
        head = unpack_args(SUB_HEADER, payload[i:i + SUB_HEADER_BYTES])
        n = int(head.length)
        body = payload[i + SUB_HEADER_BYTES:i + SUB_HEADER_BYTES + n]
        if len(body) != n:
            raise ValueError(f"CHAIN: the request at {i} declares {n} bytes, {len(body)} left")
        out.append((int(head.cmd), body))
        i += SUB_HEADER_BYTES + n
    return out


#: WRITE_BUF / READ_BUF arguments (the first bytes of the payload).
BUF_ARGS = data.StructLayout({"buf": unsigned(8), "addr": unsigned(24), "count": unsigned(24)})
#: Flag in ``BUF_ARGS.buf`` of a WRITE_BUF: the words are packed at their exact width, low
#: bits first, with no padding but the last byte's (buffers of ``accel.layouts.packable``).
PACKED = 0x80  # the code's top bit: buffer ids stay below it
#: LOAD arguments (its whole payload): ``count`` words of ``buf`` from ``addr`` on, read from
#: the external memory's word ``src`` on (``accel.layouts.dram_words`` words each).
LOAD_ARGS = data.StructLayout({"buf": unsigned(8), "addr": unsigned(24), "count": unsigned(24),
                               "src": unsigned(32)})


#: EXPAND arguments (its whole payload). ``mac`` 0: the TTFS spike-event words of the code
#: buffer's ``rows`` rows of ``k`` codes (``signed``: sign-magnitude codes, else unsigned),
#: a window of ``steps`` time steps, written at ``dst ..`` of the spike-event buffer.
#: ``mac`` 1: the MAC-event words of ``rows`` rows of ``k`` integer channels, written at
#: ``dst ..`` of the MAC-event buffer, from the code buffer's channel table and int8 values
#: (``accel.encoder.mac_groups``; ``steps`` and ``signed`` 0). Either way the host says how
#: many words that is (``count``), and the core refuses the request (``ERR_ARG``) when the
#: codes make any other number, or a code does not fit the window.
EXPAND_ARGS = data.StructLayout({"dst": unsigned(24), "count": unsigned(24),
                                 "rows": unsigned(8), "k": unsigned(16), "steps": unsigned(8),
                                 "signed": unsigned(8), "mac": unsigned(8)})


#: WRITE_ROWS arguments: ``count`` rows of ``buf`` from ``addr`` on, each given by its low
#: ``lanes`` lanes; the payload then carries each row's ``lanes x lane bytes`` bytes, the
#: highest lane's most significant byte first (the core shifts each byte in at the bottom
#: of the row it assembles, so the row's other lanes end up zero).
ROW_ARGS = data.StructLayout({"buf": unsigned(8), "addr": unsigned(24), "count": unsigned(24),
                              "lanes": unsigned(8)})


#: STORE arguments (its whole payload): ``rows`` words of ``buf`` (``WEIGHTS``: lanes of
#: ``weight_bits``; ``WEIGHTS4``: of ``narrow_bits``; ``CODES``, with the spike encoder: a
#: row of ``lanes`` 4-bit codes, ``ceil(lanes / CODES_PER_WORD)`` code-buffer words as
#: ``accel.layouts.code_words`` pads a row) assembled from the output buffer and
#: written into the external memory from word ``dst`` on, laid out as a LOAD of them reads
#: them (``accel.layouts.to_dram_words``). Lane ``l < lanes`` of row ``r`` is the low bits
#: of OUT word ``src + r * row_stride + l * lane_stride`` (a code the requantizer clamped to
#: the lane's range), the other lanes zero. Every OUT word it names must lie in the buffer,
#: and every memory word in the memory, or the core refuses it (``ERR_ARG``).
STORE_ARGS = data.StructLayout({"buf": unsigned(8), "src": unsigned(24), "rows": unsigned(16),
                                "lanes": unsigned(8), "row_stride": unsigned(16),
                                "lane_stride": unsigned(16), "dst": unsigned(32)})


def nbytes(bits: int) -> int:
    """Bytes that carry ``bits`` bits.

    Parameters
    ----------
    bits : int
        Width of a word.

    Returns
    -------
    int
        ``ceil(bits / 8)``.
    """
    return (bits + 7) // 8


def pack_args(layout: data.StructLayout, fields: dict) -> bytes:
    """``fields`` (those absent are zero) as ``layout``'s bytes on the link: little-endian,
    ``nbytes(layout.size)`` of them. The one encoder of every request's arguments."""
    return layout.const(fields).as_bits().to_bytes(nbytes(layout.size), "little")


def unpack_args(layout: data.StructLayout, payload: bytes) -> Any:
    """The ``layout`` at the start of ``payload`` (what follows it is ignored), as a
    ``data.Const`` view (``.field``; typed ``Any``: its fields are attributes made at run
    time): the inverse of :func:`pack_args`."""
    return layout.from_bits(int.from_bytes(payload[:nbytes(layout.size)], "little"))


def ident_layout() -> data.StructLayout:
    """Layout of the IDENTIFY response payload.

    Returns
    -------
    data.StructLayout
        Config hash, protocol version and the sizes a host needs to drive the device.
    """
    return data.StructLayout({"hash": unsigned(32), "version": unsigned(8),
                              "lanes": unsigned(16), "mac_units": unsigned(16),
                              "weight_depth": unsigned(16), "max_rows": unsigned(16),
                              "counters": unsigned(8), "counter_bytes": unsigned(8)})


def word_bytes(cfg) -> dict:
    """Bytes per word of every engine buffer on the link.

    Parameters
    ----------
    cfg : accel.config.AccelConfig
        The accelerator instance.

    Returns
    -------
    dict
        ``{BufId: bytes per word}``.
    """
    return {b: nbytes(Shape.cast(s).width) for b, (s, _) in buffer_shapes(cfg).items()}


def crc32(data_: bytes) -> int:
    """The frame CRC (zlib's CRC-32) of header and payload bytes.

    Parameters
    ----------
    data_ : bytes
        Header and payload, without the SOF.

    Returns
    -------
    int
        The 32-bit CRC, sent little-endian after the payload.
    """
    return zlib.crc32(data_) & 0xFFFFFFFF


def _code(value, what: str) -> int:
    if isinstance(value, (Cmd, Status)):
        return value.value
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFF:
        raise ValueError(f"{what} must be a byte (0..255), not {value!r}")
    return value


def encode_header(cmd: int, seq: int, length: int) -> bytes:
    """Pack a frame header (through :data:`HEADER`, little-endian).

    Parameters
    ----------
    cmd : int or Cmd or Status
        The ``cmd`` byte.
    seq : int
        The sequence byte.
    length : int
        Payload length in bytes.

    Returns
    -------
    bytes
        :data:`HEADER_BYTES` bytes.

    Raises
    ------
    ValueError
        If a field is out of range; the message names the field.
    """
    cmd, seq = _code(cmd, "cmd"), _code(seq, "seq")
    if not 0 <= length <= LENGTH_LIMIT:
        raise ValueError(f"payload of {length} bytes does not fit the 16-bit length field "
                         f"(at most {LENGTH_LIMIT})")
    bits = HEADER.const({"cmd": cmd, "seq": seq, "length": length}).as_bits()
    return bits.to_bytes(HEADER_BYTES, "little")


def decode_header(raw: bytes) -> data.Const:
    """Unpack a frame header.

    Parameters
    ----------
    raw : bytes
        Exactly :data:`HEADER_BYTES` bytes, as they follow the SOF.

    Returns
    -------
    data.Const
        A :data:`HEADER` constant (fields ``cmd``, ``seq``, ``length``).
    """
    if len(raw) != HEADER_BYTES:
        raise ValueError(f"a header is {HEADER_BYTES} bytes, not {len(raw)}")
    return unpack_args(HEADER, raw)


def encode_frame(cmd: int, seq: int, payload: bytes = b"") -> bytes:
    """One complete frame, ready to send.

    Parameters
    ----------
    cmd : int or Cmd or Status
        Command code (request) or status code (response), 0..255.
    seq : int
        Sequence byte, 0..255; a response echoes its request's.
    payload : bytes
        At most 65535 bytes (the device accepts at most its ``max_payload``; larger frames
        are still encodable so that the error path can be tested).

    Returns
    -------
    bytes
        SOF, header, payload and CRC-32.

    Raises
    ------
    ValueError
        If ``cmd`` or ``seq`` is not a byte or the payload does not fit the length field.
    TypeError
        If ``payload`` is not bytes-like.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    body = encode_header(cmd, seq, len(payload)) + bytes(payload)
    return bytes([SOF]) + body + crc32(body).to_bytes(CRC_BYTES, "little")


@dataclass(frozen=True)
class Frame:
    """A frame that passed its CRC check.

    Attributes
    ----------
    cmd : int
        The ``cmd`` byte: a :class:`Cmd` code in a request, a :class:`Status` in a response.
    seq : int
        Sequence byte.
    payload : bytes
        The payload.
    """

    cmd: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class FrameError:
    """A frame that failed its checks.

    Attributes
    ----------
    reason : str
        ``"crc"`` (CRC mismatch), ``"length"`` (declared length above ``max_payload``) or
        ``"truncated"`` (the stream ended inside the frame, see :meth:`FrameDecoder.flush`).
    seq : int or None
        The frame's sequence byte, None if its header never arrived.
    detail : str
        A sentence saying what was wrong (not part of equality).
    """

    reason: str
    seq: int | None = None
    detail: str = field(default="", compare=False)


class FrameDecoder:
    """Incremental frame decoder: :meth:`feed` it bytes, get the frames they complete.

    Bytes before a SOF are skipped. A frame with a bad CRC or an oversized length is
    reported as a :class:`FrameError` and the search for SOF resumes at the byte after its
    SOF, so a good frame hidden behind a false SOF is still found.

    Parameters
    ----------
    max_payload : int
        Longest payload accepted; a header declaring more is an error at once (rather than a
        wait for up to 64 KiB that may never come).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        if not isinstance(max_payload, int) or not 0 <= max_payload <= LENGTH_LIMIT:
            raise ValueError(f"max_payload must be in 0..{LENGTH_LIMIT}, not {max_payload!r}")
        self.max_payload = max_payload
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data_: bytes) -> list[Frame | FrameError]:
        """Add received bytes.

        Parameters
        ----------
        data_ : bytes
            Any number of bytes; frames may be split across calls anywhere.

        Returns
        -------
        list of Frame or FrameError
            What these bytes complete, in stream order.
        """
        self._buf.extend(data_)
        return self._scan(final=False)

    def flush(self) -> list[Frame | FrameError]:
        """End of stream (for example a receive timeout): decide on the bytes held back.

        An incomplete frame is reported as ``FrameError("truncated", seq)`` and the search
        resumes after its SOF, so complete frames it had swallowed are still returned.
        The decoder is empty afterwards.

        Returns
        -------
        list of Frame or FrameError
            What remained, in stream order.
        """
        return self._scan(final=True)

    def _scan(self, final: bool) -> list[Frame | FrameError]:
        buf = self._buf
        out: list[Frame | FrameError] = []
        while True:
            start = buf.find(SOF)
            if start < 0:
                buf.clear()
                return out
            del buf[:start]
            if len(buf) < 1 + HEADER_BYTES:
                if not final:
                    return out
                out.append(FrameError("truncated", None,
                                      f"stream ended {len(buf) - 1} byte(s) into a header"))
                del buf[:1]
                continue
            # Any: a data.Const's fields are attributes made at run time from HEADER
            hdr: Any = decode_header(bytes(buf[1 : 1 + HEADER_BYTES]))
            length, seq = int(hdr.length), int(hdr.seq)
            if length > self.max_payload:
                out.append(FrameError("length", seq, f"frame seq {seq} declares {length} "
                                      f"payload bytes, more than {self.max_payload}"))
                del buf[:1]
                continue
            end = FRAME_OVERHEAD + length
            if len(buf) < end:
                if not final:
                    return out
                out.append(FrameError("truncated", seq, f"stream ended after {len(buf)} of "
                                      f"the {end} bytes of frame seq {seq}"))
                del buf[:1]
                continue
            body = bytes(buf[1 : end - CRC_BYTES])
            got = int.from_bytes(buf[end - CRC_BYTES : end], "little")
            if crc32(body) != got:
                out.append(FrameError("crc", seq, f"frame seq {seq} carries CRC {got:#010x}, "
                                      f"its bytes give {crc32(body):#010x}"))
                del buf[:1]
                continue
            out.append(Frame(int(hdr.cmd), seq, body[HEADER_BYTES:]))
            del buf[:end]


def ident_value(cfg: AccelConfig) -> dict:
    """The IDENTIFY word of a configuration."""
    return {"hash": cfg.hash32(), "version": PROTOCOL_VERSION, "lanes": cfg.lanes,
            "mac_units": cfg.mac_units, "weight_depth": cfg.weight_depth,
            "max_rows": cfg.max_rows, "counters": len(COUNTERS),
            "counter_bytes": nbytes(cfg.counter_bits)}
