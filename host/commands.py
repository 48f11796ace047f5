"""Request payloads and response parsing for the link commands (host side).

Everything here is derived from the one definition the gateware also builds from
(``accel/``): buffer word shapes (``accel.layouts.buffer_shapes``), argument and identify
layouts (``accel.protocol``), the descriptor layout and its rules (``accel.layouts``) and
the counter map (``accel.counters``). Sans-IO: nothing here sends or receives; the driver
(``host.driver``) and the cocotb bench (``sim.cocotb_top``) send what it builds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from accel.config import AccelConfig
from accel.counters import COUNTERS
from accel.layouts import (
    LOADABLE,
    BufId,
    buffer_shapes,
    descriptor_errors,
    descriptor_layout,
    unpack_int,
    word_packer,
)
from accel.protocol import (
    BUF_ARGS,
    LOAD_ARGS,
    MAX_PAYLOAD,
    Cmd,
    ident_layout,
    nbytes,
    word_bytes,
)
from accel.resident import DramImage
from accel.tiling import TileImage
from models.contract import low_bits


def buf_args(buf: BufId, addr: int, count: int) -> bytes:
    """WRITE_BUF / READ_BUF argument bytes."""
    bits = BUF_ARGS.const({"buf": BufId(buf).value, "addr": addr, "count": count}).as_bits()
    return bits.to_bytes(nbytes(BUF_ARGS.size), "little")


def load_payload(buf: BufId, addr: int, count: int, src: int) -> bytes:
    """LOAD payload: ``count`` words of ``buf`` at ``addr ..`` from memory word ``src``."""
    bits = LOAD_ARGS.const({"buf": BufId(buf).value, "addr": addr, "count": count,
                            "src": src}).as_bits()
    return bits.to_bytes(nbytes(LOAD_ARGS.size), "little")


def write_buf_payloads(cfg: AccelConfig, buf: BufId, words: list, addr: int = 0,
                       max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """WRITE_BUF payloads for ``words`` starting at ``addr``, split to fit ``max_payload``."""
    shape, depth = buffer_shapes(cfg)[buf]
    if addr + len(words) > depth:
        raise ValueError(f"{buf.name}: {len(words)} words at {addr} exceed depth {depth}")
    bpw = word_bytes(cfg)[buf]
    per = max(1, (max_payload - nbytes(BUF_ARGS.size)) // bpw)
    pack = word_packer(shape)
    out = []
    for i in range(0, len(words), per):
        chunk = words[i : i + per]
        body = b"".join(pack(w).to_bytes(bpw, "little") for w in chunk)
        out.append(buf_args(buf, addr + i, len(chunk)) + body)
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
    return layout.const(descriptor).as_bits().to_bytes(nbytes(layout.size), "little")


def parse_ident(payload: bytes) -> dict:
    """IDENTIFY response as a dict."""
    layout = ident_layout()
    if len(payload) != nbytes(layout.size):
        raise ValueError(f"IDENTIFY: {len(payload)} bytes, expected {nbytes(layout.size)}")
    v = layout.from_bits(int.from_bytes(payload, "little"))
    return {name: int(getattr(v, name)) for name, _ in layout}


def parse_counters(cfg: AccelConfig, payload: bytes) -> dict[str, int]:
    """READ_COUNTERS response as ``{name: value}`` in map order."""
    cb = nbytes(cfg.counter_bits)
    if len(payload) != cb * len(COUNTERS):
        raise ValueError(f"READ_COUNTERS: {len(payload)} bytes, expected "
                         f"{cb * len(COUNTERS)} ({len(COUNTERS)} counters of {cb} bytes)")
    return {name: int.from_bytes(payload[i * cb : (i + 1) * cb], "little")
            for i, name in enumerate(COUNTERS)}


#: Buffers only the host writes (a write of words they already hold may be skipped).
HOST_WRITTEN = LOADABLE  # the same buffers: what the host writes, a LOAD may fill


class BufferMirror:
    """What every address of the host-written buffers is known to hold (None: unknown).

    Sans-IO: the driver and the cocotb bench both keep one and ask :func:`tile_writes`
    which writes a tile needs. A write whose range already holds its words is skipped;
    the datapath's own buffers (ACC, OUT) are never mirrored."""

    def __init__(self, cfg: AccelConfig):
        self.depth = {b: d for b, (_, d) in buffer_shapes(cfg).items()}
        self.narrow_bits = cfg.narrow_bits
        self.words: dict[BufId, list] = {}

    def holds(self, buf: BufId, words: list, addr: int = 0) -> bool:
        """Whether ``buf`` is known to hold ``words`` at ``addr ..``."""
        known = self.words.get(buf)
        return known is not None and known[addr:addr + len(words)] == list(words)

    def set(self, buf: BufId, addr: int, words: list | None, count: int = 0) -> None:
        """Record ``words`` at ``addr ..`` (``None``: ``count`` addresses now unknown)."""
        if buf not in HOST_WRITTEN:
            return
        n = count if words is None else len(words)
        self._put(buf, addr, words, n)
        # WEIGHTS4 writes the narrow halves of WEIGHTS rows: whole rows are then unknown;
        # a whole row written makes its narrow half known
        if buf == BufId.WEIGHTS4:
            self._put(BufId.WEIGHTS, addr, None, n)
        elif buf == BufId.WEIGHTS:
            self._put(BufId.WEIGHTS4, addr, None if words is None else [
                [low_bits(int(v), self.narrow_bits) for v in row] for row in words], n)

    def _put(self, buf: BufId, addr: int, words: list | None, n: int) -> None:
        known = self.words.setdefault(buf, [None] * self.depth[buf])
        known[addr:addr + n] = [None] * n if words is None else list(words)

    def forget(self) -> None:
        """Everything unknown (a device that may have been reloaded)."""
        self.words.clear()


def tile_writes(cfg: AccelConfig, img: TileImage,
                mirror: BufferMirror) -> list[tuple[BufId, int, list]]:
    """The buffer writes ``(buffer, address, words)`` that tile image ``img``
    (``accel.tiling.TileImage``) needs before its RUN: its words the buffers do not already
    hold."""
    return [(buf, img.base.get(buf, 0), words) for buf, words in img.words.items()
            if not mirror.holds(buf, words, img.base.get(buf, 0))]


class Request(NamedTuple):
    """One request to send: its command and payload. ``completes`` is set on the last
    WRITE_BUF frame of a buffer write, to the whole write ``(buffer, address, words)`` it
    completes (the driver reads weights back there when asked to verify them)."""

    cmd: Cmd
    payload: bytes
    completes: tuple[BufId, int, list] | None = None


def write_requests(cfg: AccelConfig, mirror: BufferMirror, buf: BufId, words: list,
                   addr: int = 0, max_payload: int = MAX_PAYLOAD,
                   image: DramImage | None = None) -> Iterator[Request]:
    """The WRITE_BUF requests that write ``words`` at ``addr ..`` of ``buf``, keeping
    ``mirror`` true whatever happens to them; one LOAD instead when the device's external
    memory holds them (``image``, ``accel.resident``).

    Sans-IO: the caller sends each request and asks for the next one only once it was
    acknowledged. The range is unknown to ``mirror`` from the first request on (a failure
    midway leaves some of it old and some new) and known to hold ``words`` only when the
    caller comes back after the last one; a caller that stops early leaves it unknown."""
    src = None if image is None else image.find(buf, words)
    if src is not None:
        mirror.set(buf, addr, None, len(words))
        yield Request(Cmd.LOAD, load_payload(buf, addr, len(words), src), (buf, addr, words))
        mirror.set(buf, addr, words)
        return
    payloads = write_buf_payloads(cfg, buf, words, addr=addr, max_payload=max_payload)
    mirror.set(buf, addr, None, len(words))
    for i, p in enumerate(payloads):
        yield Request(Cmd.WRITE_BUF, p, (buf, addr, words) if i == len(payloads) - 1 else None)
    mirror.set(buf, addr, words)


def tile_requests(cfg: AccelConfig, img: TileImage, mirror: BufferMirror,
                  max_payload: int = MAX_PAYLOAD, image: DramImage | None = None,
                  following: TileImage | None = None) -> Iterator[Request]:
    """Every request tile image ``img`` needs, in order: the writes of its words the
    buffers do not already hold (:func:`tile_writes`, each as :func:`write_requests`), then
    its RUN (refused with ``ValueError`` as :func:`run_payload` refuses, before it is
    sent). With the model in the external memory (``image``), writes it holds are LOADs,
    and the weights of the tile run next (``following``) are loaded before this RUN when
    they go to the other half of the weight buffer (:func:`prefetch`), so that the copy
    overlaps the run. The host driver and the cocotb bench both send exactly these."""
    for buf, addr, words in tile_writes(cfg, img, mirror):
        yield from write_requests(cfg, mirror, buf, words, addr, max_payload, image)
    if image is not None and following is not None:
        for buf, addr, words in prefetch(cfg, img, following, mirror, image):
            yield from write_requests(cfg, mirror, buf, words, addr, max_payload, image)
    yield Request(Cmd.RUN, run_payload(cfg, img.descriptor, img.where))


def prefetch(cfg: AccelConfig, img: TileImage, following: TileImage, mirror: BufferMirror,
             image: DramImage) -> list[tuple[BufId, int, list]]:
    """The weight writes of ``following`` that may be LOADed while ``img`` runs: held by
    ``image``, not yet in the buffer, and in the half of the weight buffer that ``img``'s
    rows do not touch (the executor runs a RUN beside a LOAD only then)."""
    half = cfg.weight_depth // 2
    if not half:
        return []
    base = img.descriptor["w_base"]
    rows = len(img.words.get(BufId.WEIGHTS) or img.words[BufId.WEIGHTS4])
    if base // half != (base + rows - 1) // half:
        return []  # this tile's rows span both halves
    return [(buf, addr, words) for buf, addr, words in tile_writes(cfg, following, mirror)
            if buf in (BufId.WEIGHTS, BufId.WEIGHTS4) and image.find(buf, words) is not None
            and addr // half == (addr + len(words) - 1) // half != base // half]
