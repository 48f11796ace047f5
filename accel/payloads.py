"""Request payloads and response parsing for the link commands: the bytes of each
command's arguments and data, and the answers read back, built from the one definition the
gateware also builds from (buffer word shapes, ``accel.layouts.buffer_shapes``; argument and
identify layouts, ``accel.protocol``; the descriptor layout and its rules,
``accel.layouts``; the counter map, ``accel.counters``). Sans-IO, like
``accel.requests``, which builds a tile's and a GEMM's requests from these.
"""

from __future__ import annotations

from .config import AccelConfig
from .counters import COUNTERS
from .layouts import (
    BufId,
    buffer_shapes,
    descriptor_errors,
    descriptor_layout,
    packable,
    row_lane_bytes,
    unpack_int,
    word_packer,
)
from .protocol import (
    BUF_ARGS,
    LOAD_ARGS,
    MAX_PAYLOAD,
    PACKED,
    ROW_ARGS,
    ident_layout,
    nbytes,
    pack_args,
    unpack_args,
    word_bytes,
)

#: Copies one LOAD request carries at most (their number is a byte).
MAX_LOADS = 255


def buf_args(buf: BufId, addr: int, count: int, packed: bool = False) -> bytes:
    """WRITE_BUF / READ_BUF argument bytes (``packed``: the words follow packed at their
    width, ``accel.protocol.PACKED``)."""
    code = BufId(buf).value | (PACKED if packed else 0)
    return pack_args(BUF_ARGS, {"buf": code, "addr": addr, "count": count})


def load_payload(*loads: tuple[BufId, int, int, int]) -> bytes:
    """LOAD payload for copies ``(buf, addr, count, src)``: ``count`` words of ``buf`` at
    ``addr ..`` from memory word ``src`` on, each: their number (a byte), then each one's
    :data:`~accel.protocol.LOAD_ARGS`."""
    if not 1 <= len(loads) <= MAX_LOADS:
        raise ValueError(f"a LOAD carries 1..{MAX_LOADS} copies, not {len(loads)}")
    return bytes([len(loads)]) + b"".join(
        pack_args(LOAD_ARGS, {"buf": BufId(buf).value, "addr": addr, "count": count, "src": src})
        for buf, addr, count, src in loads)


def parse_load_payload(payload: bytes) -> list[tuple[BufId, int, int, int]]:
    """The copies ``(buf, addr, count, src)`` a LOAD (or LOAD_RUN: its copies first)
    payload carries, as :func:`load_payload` builds them."""
    size = nbytes(LOAD_ARGS.size)
    out = []
    for i in range(payload[0]):
        a = unpack_args(LOAD_ARGS, payload[1 + i * size:1 + (i + 1) * size])
        out.append((BufId(int(a.buf)), int(a.addr), int(a.count), int(a.src)))
    return out


def write_buf_payloads(cfg: AccelConfig, buf: BufId, words: list, addr: int = 0,
                       max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """WRITE_BUF payloads for ``words`` starting at ``addr``, split to fit ``max_payload``;
    packed at their width where the buffer's words are not whole bytes
    (``accel.layouts.packable``)."""
    shape, depth = buffer_shapes(cfg)[buf]
    if addr + len(words) > depth:
        raise ValueError(f"{buf.name}: {len(words)} words at {addr} exceed depth {depth}")
    bpw = word_bytes(cfg)[buf]
    room = max_payload - nbytes(BUF_ARGS.size)
    pack = word_packer(shape)
    width = packable(cfg).get(buf)
    if width is not None:
        per = max(1, room * 8 // width)
        return [buf_args(buf, addr + i, len(chunk), packed=True)
                + sum(pack(w) << (j * width) for j, w in enumerate(chunk)).to_bytes(
                    nbytes(len(chunk) * width), "little")
                for i in range(0, len(words), per) for chunk in [words[i:i + per]]]
    per = max(1, room // bpw)
    out = []
    for i in range(0, len(words), per):
        chunk = words[i : i + per]
        body = b"".join(pack(w).to_bytes(bpw, "little") for w in chunk)
        out.append(buf_args(buf, addr + i, len(chunk)) + body)
    return out


def row_lanes(cfg: AccelConfig, buf: BufId, words: list) -> int:
    """The lanes a WRITE_ROWS of weight rows ``words`` needs (every lane above them zero in
    every row), or 0 when a WRITE_BUF is as short (the rows use every lane, or the core has
    no WRITE_ROWS for ``buf``)."""
    if buf != BufId.WEIGHTS or not row_lane_bytes(cfg) or not words:
        return 0
    used = max(max((j for j, v in enumerate(row) if v), default=-1) for row in words)
    return max(1, used + 1) if used + 1 < cfg.lanes else 0


def write_rows_payloads(cfg: AccelConfig, words: list, lanes: int, addr: int = 0,
                        max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """WRITE_ROWS payloads (:data:`~accel.protocol.ROW_ARGS`) for weight rows ``words`` at
    ``addr ..``, each row by its low ``lanes`` lanes (the rest zero: :func:`row_lanes`),
    split to fit ``max_payload``."""
    shape, depth = buffer_shapes(cfg)[BufId.WEIGHTS]
    if addr + len(words) > depth:
        raise ValueError(f"WEIGHTS: {len(words)} words at {addr} exceed depth {depth}")
    pack = word_packer(shape)
    size = lanes * row_lane_bytes(cfg)
    mask = (1 << (8 * size)) - 1
    per = max(1, (max_payload - nbytes(ROW_ARGS.size)) // size)
    out = []
    for i in range(0, len(words), per):
        chunk = words[i:i + per]
        args = pack_args(ROW_ARGS, {"buf": BufId.WEIGHTS.value, "addr": addr + i,
                                    "count": len(chunk), "lanes": lanes})
        out.append(args + b"".join(
            (pack(row) & mask).to_bytes(size, "big") for row in chunk))
    return out


def parse_words(cfg: AccelConfig, buf: BufId, payload: bytes) -> list[int]:
    """Integer words of a READ_BUF response (sign-extended where the buffer is signed)."""
    shape, _ = buffer_shapes(cfg)[buf]
    bpw = word_bytes(cfg)[buf]
    if len(payload) % bpw:
        raise ValueError(f"READ_BUF {buf.name}: {len(payload)} bytes is not a whole number "
                         f"of {bpw}-byte words")
    return [unpack_int(shape, int.from_bytes(payload[i : i + bpw], "little"))
            for i in range(0, len(payload), bpw)]


def run_payload(cfg: AccelConfig, descriptor: dict, where: str = "RUN") -> bytes:
    """RUN payload for a descriptor dict; refuses one the core would refuse, naming the
    fields (``accel.layouts.descriptor_rules``)."""
    layout = descriptor_layout(cfg)
    unknown = sorted(set(descriptor) - {name for name, _ in layout})
    if unknown:
        raise ValueError(f"{where}: unknown descriptor field(s) {', '.join(unknown)}")
    for name, field in layout:
        width = field.width
        if not 0 <= int(descriptor.get(name, 0)) < 1 << width:
            raise ValueError(f"{where}: descriptor field {name}={descriptor[name]} does not "
                             f"fit its {width} bits")
    bad = descriptor_errors(cfg, descriptor)
    if bad:
        raise ValueError(f"{where}: the core would refuse this descriptor: "
                         f"{'; '.join(bad)} (accel.layouts.descriptor_rules)")
    return pack_args(layout, descriptor)


def parse_ident(payload: bytes) -> dict:
    """IDENTIFY response as a dict."""
    layout = ident_layout()
    if len(payload) != nbytes(layout.size):
        raise ValueError(f"IDENTIFY: {len(payload)} bytes, expected {nbytes(layout.size)}")
    v = unpack_args(layout, payload)
    return {name: int(getattr(v, name)) for name, _ in layout}


def parse_counters(cfg: AccelConfig, payload: bytes) -> dict[str, int]:
    """READ_COUNTERS response as ``{name: value}`` in map order."""
    cb = nbytes(cfg.counter_bits)
    if len(payload) != cb * len(COUNTERS):
        raise ValueError(f"READ_COUNTERS: {len(payload)} bytes, expected "
                         f"{cb * len(COUNTERS)} ({len(COUNTERS)} counters of {cb} bytes)")
    return {name: int.from_bytes(payload[i * cb : (i + 1) * cb], "little")
            for i, name in enumerate(COUNTERS)}
