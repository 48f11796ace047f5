"""The requests a tile and a GEMM need (what the host sends), from the payloads of
``accel.payloads``, and how they cross the link (CHAINs, pipelined groups, answer sizes).

Everything here is derived from the one definition the gateware also builds from
(``accel/``): buffer word shapes (``accel.layouts.buffer_shapes``), the protocol
(``accel.protocol``), the tiling (``accel.tiling``). Sans-IO: nothing here sends or
receives; the driver (``host.driver``) and the cocotb bench (``sim.cocotb_top``) send what
it builds, and the generator prices it (``accel.linkcost``) without a device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from models.contract import low_bits

from .chain import Chain, store_payload
from .config import AccelConfig
from .counters import COUNTERS
from .encoder import ExpandGroup, expand_groups, expand_writes, mac_groups
from .layouts import (
    LOADABLE,
    VIEWS,
    BufId,
    buffer_shapes,
    dram_words,
)
from .payloads import (
    MAX_LOADS,
    buf_args,
    load_payload,
    row_lanes,
    run_payload,
    write_buf_payloads,
    write_rows_payloads,
)
from .protocol import (
    BUF_ARGS,
    CHAINABLE,
    FRAME_OVERHEAD,
    LOAD_ARGS,
    MAX_PAYLOAD,
    PACKED,
    READ_ONLY,
    RX_FIFO_BYTES,
    SUB_HEADER_BYTES,
    Cmd,
    chain_payload,
    ident_layout,
    nbytes,
    unpack_args,
    word_bytes,
)
from .resident import DramImage
from .tiling import Slice, TileImage, out_read

#: Buffers only the host writes (a write of words they already hold may be skipped).
HOST_WRITTEN = LOADABLE  # the same buffers: what the host writes, a LOAD may fill
#: Bytes of a READ_BUF answer at most, by default (the driver's ``read_chunk``): a whole
#: frame (fewer round trips; a noisy line may want shorter answers, cheaper to retry).
READ_CHUNK = MAX_PAYLOAD


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

    def copy(self) -> BufferMirror:
        """An independent mirror knowing the same (to price requests without sending them:
        the word lists are replaced by writes, never changed in place)."""
        twin = BufferMirror.__new__(BufferMirror)
        twin.depth, twin.narrow_bits = self.depth, self.narrow_bits
        twin.words = {b: list(v) for b, v in self.words.items()}
        return twin


def tile_writes(cfg: AccelConfig, img: TileImage,
                mirror: BufferMirror) -> list[tuple[BufId, int, list]]:
    """The buffer writes ``(buffer, address, words)`` that tile image ``img``
    (``accel.tiling.TileImage``) needs before its RUN: its words the buffers do not already
    hold."""
    return [(buf, img.base.get(buf, 0), words) for buf, words in img.words.items()
            if not mirror.holds(buf, words, img.base.get(buf, 0))]


class Request(NamedTuple):
    """One request to send: its command and payload. ``completes``: the whole buffer
    writes ``(buffer, address, words)`` this request completes (the last WRITE_BUF frame of
    one, or the copies of a LOAD; the driver reads weights back there when asked to verify
    them).
    ``reads``: a READ_BUF of a finished output slice's results (``(slice, buffer)``; the
    slice's answers, in order, are its rows). ``where``: the tile, for messages.
    ``parts``: a CHAIN's requests (:func:`chained`)."""

    cmd: Cmd
    payload: bytes
    completes: tuple[tuple[BufId, int, list], ...] = ()
    reads: tuple | None = None
    where: str = ""
    parts: tuple[Request, ...] = ()


def write_requests(cfg: AccelConfig, mirror: BufferMirror, buf: BufId, words: list,
                   addr: int = 0, max_payload: int = MAX_PAYLOAD) -> Iterator[Request]:
    """The WRITE_BUF requests (WRITE_ROWS for weight rows whose high lanes are all zero,
    :func:`row_lanes`) that write ``words`` at ``addr ..`` of ``buf``, keeping
    ``mirror`` true whatever happens to them.

    Sans-IO: the caller sends each request and asks for the next one only once it was
    acknowledged. The range is unknown to ``mirror`` from the first request on (a failure
    midway leaves some of it old and some new) and known to hold ``words`` only when the
    caller comes back after the last one; a caller that stops early leaves it unknown."""
    lanes = row_lanes(cfg, buf, words)
    cmd = Cmd.WRITE_ROWS if lanes else Cmd.WRITE_BUF
    payloads = (write_rows_payloads(cfg, words, lanes, addr, max_payload) if lanes else
                write_buf_payloads(cfg, buf, words, addr=addr, max_payload=max_payload))
    mirror.set(buf, addr, None, len(words))
    for i, p in enumerate(payloads):
        yield Request(cmd, p, ((buf, addr, words),) if i == len(payloads) - 1 else ())
    mirror.set(buf, addr, words)


def encoder_groups(cfg: AccelConfig, img: TileImage, buf: BufId, words: list,
                   addr: int) -> list[ExpandGroup] | None:
    """The EXPANDs with which the on-chip encoder would write tile ``img``'s ``words`` of
    ``buf`` at ``addr ..``: its spike words from their codes (``accel.encoder.
    expand_groups``, where the tile has them), its MAC words from their channel table and
    values (``accel.encoder.mac_groups``); None where the host writes the words."""
    if buf == BufId.SPIKE_EV and img.codes is not None and img.enc is not None:
        return expand_groups(cfg, img.codes, img.enc, words, addr)
    if buf == BufId.MAC_EV:
        return mac_groups(cfg, words, addr)
    return None


def link_bytes_of_write(cfg: AccelConfig, buf: BufId, words: list, addr: int = 0) -> int:
    """Payload bytes (and CHAIN sub-headers) a write of ``words`` at ``addr`` of ``buf``
    puts on the link."""
    return sum(len(p) + SUB_HEADER_BYTES
               for p in write_buf_payloads(cfg, buf, words, addr=addr))


def expand_cheaper(cfg: AccelConfig, mirror: BufferMirror, buf: BufId, words: list,
                   addr: int, groups: list[ExpandGroup],
                   image: DramImage | None = None) -> bool:
    """Whether ``groups`` (:func:`encoder_groups`) put fewer bytes on the link than
    writing ``words`` themselves: their code-buffer words the buffer does not hold
    (written, or LOADed where ``image`` holds them, as :func:`expand_requests` sends them)
    and their EXPANDs, against the words (a sparse row group's few spike words, a head's
    handful of MAC words, may cost less than its codes, table and EXPAND)."""
    cost = 0
    sent: dict[int, list] = {}  # the blocks written so far, by address
    for g in groups:
        for at, codes in g.blocks:
            fresh = (sent[at] != codes if at in sent
                     else not mirror.holds(BufId.CODES, codes, at))
            if fresh and image is not None and image.find(BufId.CODES, codes) is not None:
                cost += nbytes(LOAD_ARGS.size) + SUB_HEADER_BYTES
            elif fresh:
                cost += link_bytes_of_write(cfg, BufId.CODES, codes, at)
            sent[at] = codes
        cost += len(g.payload) + SUB_HEADER_BYTES
    return cost < link_bytes_of_write(cfg, buf, words, addr)


def expand_requests(cfg: AccelConfig, mirror: BufferMirror, buf: BufId, addr: int,
                    words: list, groups: list[ExpandGroup], where: str = "",
                    max_payload: int = MAX_PAYLOAD,
                    image: DramImage | None = None) -> Iterator[Request]:
    """The requests that have the on-chip encoder write ``words`` at ``addr ..`` of
    ``buf`` (:func:`encoder_groups`): per group, its code-buffer words (nothing where the
    buffer holds them already; a LOAD where ``image`` holds them, :func:`staged_events`)
    and its EXPAND, keeping ``mirror`` true as :func:`write_requests` does."""
    mirror.set(buf, addr, None, len(words))
    for i, group in enumerate(groups):
        for at, codes in group.blocks:
            src = None if image is None else image.find(BufId.CODES, codes)
            if mirror.holds(BufId.CODES, codes, at):
                pass
            elif src is not None:  # the tile's write is the events, below
                yield from (r._replace(completes=()) for r in
                            load_requests(mirror, [(BufId.CODES, at, codes, src)]))
            else:
                for req in write_requests(cfg, mirror, BufId.CODES, codes, at, max_payload):
                    yield req._replace(completes=())
        yield Request(Cmd.EXPAND, group.payload, ((buf, addr, words),)
                      if i == len(groups) - 1 else (), where=where)
    mirror.set(buf, addr, words)


def load_requests(mirror: BufferMirror, loads: list[tuple[BufId, int, list, int]],
                  max_payload: int = MAX_PAYLOAD,
                  run: Request | None = None) -> Iterator[Request]:
    """The LOAD requests that copy ``(buffer, address, words, src)`` from the external
    memory, as many copies a frame as fit, keeping ``mirror`` true (as
    :func:`write_requests`); then ``run`` (a RUN request), joined to the last LOAD as one
    ``LOAD_RUN`` when both fit a frame (one round trip fewer)."""
    per = min(MAX_LOADS, (max_payload - 1) // nbytes(LOAD_ARGS.size))
    for i in range(0, len(loads), per):
        batch = loads[i:i + per]
        for buf, addr, words, _ in batch:
            mirror.set(buf, addr, None, len(words))
        payload = load_payload(*((b, a, len(w), src) for b, a, w, src in batch))
        done = tuple((b, a, w) for b, a, w, _ in batch)
        if (run is not None and i + per >= len(loads)
                and len(payload) + len(run.payload) <= max_payload):
            yield Request(Cmd.LOAD_RUN, payload + run.payload, done, where=run.where)
            run = None
        else:
            yield Request(Cmd.LOAD, payload, done)
        for buf, addr, words, _ in batch:
            mirror.set(buf, addr, words)
    if run is not None:
        yield run


def tile_requests(cfg: AccelConfig, img: TileImage, mirror: BufferMirror,
                  max_payload: int = MAX_PAYLOAD, image: DramImage | None = None,
                  following: TileImage | None = None) -> Iterator[Request]:
    """Every request tile image ``img`` needs, in order: the writes of its words the
    buffers do not already hold (:func:`tile_writes`, each as :func:`write_requests`), then
    its RUN (refused with ``ValueError`` as :func:`run_payload` refuses, before it is
    sent). With the model in the external memory (``image``), writes it holds are LOADs
    (after the other writes, several copies a frame; the last joined to the RUN as a
    ``LOAD_RUN``), and the weights of the tile run next
    (``following``) are loaded last, before this RUN, when they go to the other half of the
    weight buffer (:func:`prefetch`), so that the copy overlaps the run. The host driver
    and the cocotb bench both send exactly these."""
    loads: list[tuple[BufId, int, list, int]] = []  # copied by LOADs after the writes
    for buf, addr, words in tile_writes(cfg, img, mirror):
        src = None if image is None else image.find(buf, words)
        groups = None if src is not None else encoder_groups(cfg, img, buf, words, addr)
        if groups is not None and expand_cheaper(cfg, mirror, buf, words, addr, groups,
                                                 image):
            yield from expand_requests(cfg, mirror, buf, addr, words, groups, img.where,
                                       max_payload, image)
        elif src is None:
            yield from write_requests(cfg, mirror, buf, words, addr, max_payload)
        else:
            loads.append((buf, addr, words, src))
    if image is not None and following is not None:
        loads += prefetch(cfg, img, following, mirror, image)
    yield from load_requests(mirror, loads, max_payload,
                             Request(Cmd.RUN, run_payload(cfg, img.descriptor, img.where),
                                     where=img.where))


def read_requests(cfg: AccelConfig, buf: BufId, addr: int, count: int,
                  read_chunk: int = READ_CHUNK) -> Iterator[Request]:
    """The READ_BUF requests for ``count`` words of ``buf`` at ``addr ..``, each answer at
    most ``read_chunk`` bytes (short answers are cheaper to retry on a noisy link)."""
    per = max(1, read_chunk // word_bytes(cfg)[buf])
    for a in range(addr, addr + count, per):
        yield Request(Cmd.READ_BUF, buf_args(buf, a, min(per, addr + count - a)))


def gemm_requests(cfg: AccelConfig, plan, mirror: BufferMirror,
                  max_payload: int = MAX_PAYLOAD, read_chunk: int = READ_CHUNK,
                  image: DramImage | None = None, lead: TileImage | None = None,
                  chain: Chain | None = None) -> Iterator[Request]:
    """Every request of a planned GEMM (``accel.tiling.GemmTiles``) in run order
    (``GemmTiles.steps``): each tile's :func:`tile_requests` (the next tile's weights
    loaded beside it where they may be; beside the last, ``lead``: the first weights of
    the GEMM that follows, ``accel.tiling.PassPlanner.lead``), and each output slice read
    back once its last K tile has run, or, for a GEMM whose outputs are later GEMMs'
    weights or input codes (``chain``, ``accel.chain.PassChains``), STOREd into the
    external memory as the chain says and read only where the chain still reads them.
    The reads wait until a tile is to write the OUT rows of a slice not read yet (slices
    take copies of the rows in turn, ``accel.tiling.slice_rows``), or the end: the tiles'
    requests between then cross as one CHAIN, in one round trip.
    The driver sends exactly these; :func:`accel.linkcost.link_cost` prices them."""
    steps = list(plan.steps())
    if image is not None:
        image = yield from staged_events(cfg, [img for img, _ in steps], mirror, max_payload,
                                         image)
    # output slices not read yet (``accel.tiling.slice_rows`` gives consecutive slices
    # rows of their own): all are read once a tile is to write the OUT rows of one, or
    # at the end, so that the tiles between make one CHAIN and one round trip
    unread: list[tuple[Slice, BufId, int, int]] = []

    def read_unread() -> Iterator[Request]:
        for done, buf, addr, count in unread:
            for req in read_requests(cfg, buf, addr, count, read_chunk):
                yield req._replace(reads=(done, buf))
        unread.clear()

    for i, (img, done) in enumerate(steps):
        lo = img.descriptor["row_base"] * cfg.lanes
        hi = lo + img.descriptor["rows"] * cfg.lanes
        if any(a < hi and a + count > lo for _, _, a, count in unread):
            yield from read_unread()
        following = steps[i + 1][0] if i + 1 < len(steps) else lead
        yield from tile_requests(cfg, img, mirror, max_payload, image, following)
        if chain is not None:
            for g in chain.stores.get(i, ()):
                yield Request(Cmd.STORE, store_payload(g), where=img.where)
        if done is not None and (chain is None or i in chain.reads):
            unread.append((done, *out_read(cfg, img)))
    yield from read_unread()


def staged_events(cfg: AccelConfig, imgs: list[TileImage], mirror: BufferMirror,
                  max_payload: int, image: DramImage):
    """Event words that several tiles of a GEMM would write (they do not all fit the event
    buffers, so each N slice writes them again) go into the external memory once, after the
    model's image (:meth:`DramImage.staging`), and are LOADed from there for each tile.
    Words the encoder makes (:func:`encoder_groups`) are staged as its code-buffer words
    instead, when those take fewer memory words, and each tile LOADs them into the code
    buffer and EXPANDs them (:func:`expand_requests`): a 4-bit code an input, not a 17-bit
    word a spike; a byte an integer value, not a 23-bit MAC word. Yields those memory
    writes; returns the image that holds them too."""
    seen: dict = {}
    ahead = mirror.copy()  # what the buffers will hold tile by tile
    for img in imgs:
        for buf, addr, words in tile_writes(cfg, img, ahead):
            if buf in (BufId.SPIKE_EV, BufId.MAC_EV):
                key = image.key(buf, words)
                first = seen.get(key, (buf, words, img, addr, 0))
                seen[key] = (*first[:4], first[4] + 1)
            ahead.set(buf, addr, words)
    staged = image.staging()
    for buf, words, img, addr, uses in seen.values():
        if uses < 2:
            continue
        blocks = [(buf, words)]
        groups = encoder_groups(cfg, img, buf, words, addr)
        if groups is not None:
            codes = [(BufId.CODES, c) for g in groups for _, c in g.blocks]
            # each use: a LOAD of each group's codes and its EXPAND, in a CHAIN
            use = sum(len(load_payload((BufId.CODES, 0, len(c), 0))) + SUB_HEADER_BYTES
                      for g in groups for _, c in g.blocks)
            use += sum(len(g.payload) + SUB_HEADER_BYTES for g in groups)
            if staging_bytes(cfg, codes, uses, use) < staging_bytes(cfg, blocks, uses):
                blocks = codes
        for b, w in blocks:
            if staged.find(b, w) is None:
                src = staged.add(b, w)
                dram = staged.words[src - staged.base:]
                yield from write_requests(cfg, mirror, BufId.DRAM, dram, src, max_payload)
    return staged


def staging_bytes(cfg: AccelConfig, blocks: list[tuple[BufId, list]], uses: int,
                  use: int | None = None) -> int:
    """Link bytes (payloads) of staging ``blocks`` ``(buffer, words)`` in the external
    memory and copying them ``uses`` times: their memory words written once, then ``use``
    bytes a use (default: a copy of each block within a LOAD). What decides whether
    :func:`staged_events` stages a tile's codes or its spike words (the encoder's cycles
    are not link time: not counted)."""
    wb = word_bytes(cfg)[BufId.DRAM]
    if use is None:
        use = len(blocks) * nbytes(LOAD_ARGS.size)
    return sum(len(w) * dram_words(cfg, b) * wb for b, w in blocks) + uses * use


def chained(requests: Iterator[Request] | list[Request],
            max_payload: int = MAX_PAYLOAD) -> Iterator[Request]:
    """``requests`` with each run of consecutive :data:`~accel.protocol.CHAINABLE` ones
    sent as one CHAIN request, as many as fit ``max_payload`` (a run of one stays as it
    is): a tile's writes, EXPAND and LOAD_RUN cross in one frame and one round trip. The
    core runs them in order and stops at the first refused; a CHAIN is retried whole, and
    one already run is answered OK without running again (``accel.protocol.Cmd.CHAIN``).
    Like :func:`pipeline_groups`, it asks for the request after a run before sending it
    (a sans-IO request's buffer mirror runs one request ahead)."""
    run: list[Request] = []
    size = 0

    def close() -> Iterator[Request]:
        if len(run) == 1:
            yield run[0]
        elif run:
            where = [r.where for r in run if r.where]
            yield Request(Cmd.CHAIN, chain_payload([(r.cmd, r.payload) for r in run]),
                          tuple(c for r in run for c in r.completes),
                          where=where[-1] if where else "", parts=tuple(run))

    for req in requests:
        part = SUB_HEADER_BYTES + len(req.payload)
        if req.cmd not in CHAINABLE or size + part > max_payload:
            yield from close()
            run, size = [], 0
        if req.cmd in CHAINABLE:
            run.append(req)
            size += part
        else:
            yield req
    yield from close()


def answer_bytes(cfg: AccelConfig, req: Request) -> int:
    """Payload bytes of the OK answer to ``req`` (``docs/link.md``)."""
    if req.cmd == Cmd.READ_BUF:
        args = unpack_args(BUF_ARGS, req.payload)
        return int(args.count) * word_bytes(cfg)[BufId(int(args.buf))]
    if req.cmd == Cmd.READ_COUNTERS:
        return len(COUNTERS) * nbytes(cfg.counter_bits)
    if req.cmd == Cmd.IDENTIFY:
        return nbytes(ident_layout().size)
    return 0


#: What :func:`link_cost` counts (the driver's ``stats`` keys).
LINK_KEYS = ("frames_tx", "bytes_tx", "bytes_rx", "waits")


#: The requests that write words the host gives (the same words if sent again).
WRITES = frozenset({Cmd.WRITE_BUF, Cmd.WRITE_ROWS})


def named_buffer(req: Request) -> BufId:
    """The buffer or view a WRITE_BUF, WRITE_ROWS or READ_BUF names."""
    return BufId(req.payload[0] & ~PACKED & 0xFF)


def _memory(req: Request) -> BufId:
    """The memory a WRITE_BUF, WRITE_ROWS or READ_BUF names (a view's own memory)."""
    buf = named_buffer(req)
    return VIEWS.get(buf, buf)


def pipeline_groups(requests: Iterator[Request] | list[Request],
                    window: int = RX_FIFO_BYTES) -> Iterator[list[Request]]:
    """``requests`` in the groups the host sends without waiting in between: one wait for
    answers (one round trip's latency) a group. A group starts with any request; what may
    follow it is what is still right to have sent when an earlier request of the group
    fails, since the driver then sends again from the failed one on, one at a time:
    reads (no side effects: read again) and, behind a write, writes (to other words:
    written again, the same words). Never a RUN, LOAD, LOAD_RUN, EXPAND or CHAIN: one may not be
    repeated (an EXPAND, like a RUN, is not run again for its own seq, so its counters count
    it once; a write behind it would make the core forget its seq, or change its codes)
    (a RUN with a new seq accumulates again) and would run on buffers a lost write left
    stale. A read does not follow a write to its own memory in a group, and the requests
    after the first fit ``window`` bytes together (they wait in the board's receive FIFO,
    :data:`~accel.protocol.RX_FIFO_BYTES`, while it handles the first)."""
    group: list[Request] = []
    ahead = 0  # frame bytes after the group's first request
    written: set[BufId] = set()
    for req in requests:
        size = len(req.payload) + FRAME_OVERHEAD
        joins = bool(group) and ahead + size <= window and (
            (req.cmd in READ_ONLY and not (req.cmd == Cmd.READ_BUF and _memory(req) in written))
            or (req.cmd in WRITES and group[0].cmd in WRITES))
        if joins:
            group.append(req)
            ahead += size
        else:
            if group:
                yield group
            group, ahead, written = [req], 0, set()
        for part in req.parts or (req,):  # a CHAIN's writes count as its requests'
            if part.cmd in WRITES:
                written.add(_memory(part))
            elif part.cmd == Cmd.EXPAND:
                written.add(expand_writes(part.payload))
    if group:
        yield group


def prefetch(cfg: AccelConfig, img: TileImage, following: TileImage, mirror: BufferMirror,
             image: DramImage) -> list[tuple[BufId, int, list, int]]:
    """The weight writes ``(buffer, address, words, src)`` of ``following`` that may be
    LOADed while ``img`` runs: held by ``image`` (at memory word ``src``), not yet in the
    buffer, and in the half of the weight buffer that ``img``'s rows do not touch (the
    executor runs a RUN beside a LOAD only then)."""
    half = cfg.half_rows
    if not half:
        return []
    base = img.descriptor["w_base"]
    rows = len(img.words.get(BufId.WEIGHTS) or img.words[BufId.WEIGHTS4])
    if base // half != (base + rows - 1) // half:
        return []  # this tile's rows span both halves
    out: list[tuple[BufId, int, list, int]] = []
    for buf, addr, words in tile_writes(cfg, following, mirror):
        if (buf in (BufId.WEIGHTS, BufId.WEIGHTS4)
                and addr // half == (addr + len(words) - 1) // half != base // half):
            src = image.find(buf, words)  # hashed once, here
            if src is not None:
                out.append((buf, addr, words, src))
    return out
