"""One GEMM's outputs as a later GEMM's weights, without the link: the core gathers them
from its output buffer into the external memory (``STORE``, ``accel.protocol.STORE_ARGS``)
laid out as weight rows, and the later GEMM LOADs them as it LOADs a linear layer's.

In a transformer block the keys and values are such outputs (``models.graph``: k and v are
``direct``, their int8 codes are QK^T's and PV's weights, ``models.golden``): for head
``h``, QK^T's weight row ``d`` holds key channel ``c0 + d`` of every key token (a
transpose of k's output), PV's weight row ``j`` holds value token ``j``'s channels
``c0 ..`` (v's output row as it is). :func:`gathers` finds, for each weight block a
consumer's tiles will load, the STORE that makes it from the producer's output slice,
checked against the golden values (it plans nothing it cannot show to be equal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from amaranth import Shape

from models.contract import low_bits

from .config import CODE_BITS, AccelConfig
from .layouts import BufId, buffer_shapes, code_words, to_dram_words, word_packer
from .protocol import STORE_ARGS, pack_args
from .resident import DramImage
from .tiling import k_slices, out_read, plan_call, tile_constants, tiles


class Gather(NamedTuple):
    """One STORE (:data:`~accel.protocol.STORE_ARGS`): ``rows`` words of ``buf``, lane ``l``
    of row ``r`` the code at OUT word ``src + r * row_stride + l * lane_stride`` (``l <
    lanes``; the other lanes zero), written at memory word ``dst ..``."""

    buf: BufId
    src: int
    rows: int
    lanes: int
    row_stride: int
    lane_stride: int
    dst: int


def store_payload(g: Gather) -> bytes:
    """The STORE request's payload."""
    return pack_args(STORE_ARGS, {**g._asdict(), "buf": BufId(g.buf).value})


def gathered(cfg: AccelConfig, g: Gather, out: list[int]) -> list[int]:
    """The memory words a STORE writes when the output buffer holds ``out`` (its words as
    integers, the requantized codes): what the core computes, as the host predicts it."""
    lanes = [[out[g.src + r * g.row_stride + j * g.lane_stride] for j in range(g.lanes)]
             for r in range(g.rows)]
    pack = word_packer(buffer_shapes(cfg)[g.buf][0])
    if g.buf == BufId.CODES:  # rows of codes, each padded to whole code words
        words = code_words(np.asarray(lanes, dtype=np.int64).reshape(g.rows, g.lanes))
        return to_dram_words(cfg, g.buf, [pack(w) for w in words])
    bits = cfg.weight_bits if g.buf == BufId.WEIGHTS else cfg.narrow_bits
    rows = [pack([low_bits(v, bits) for v in row]  # the contract's two's complement
                 + [0] * (cfg.lanes - g.lanes)) for row in lanes]
    return to_dram_words(cfg, g.buf, rows)



@dataclass
class Chain:
    """A GEMM whose outputs are STOREd as later GEMMs' weights instead of read back:
    ``stores[i]`` are the STOREs to send after step ``i`` of its plan
    (``accel.tiling.GemmTiles.steps``: each once the OUT words it gathers are all there,
    before a later tile overwrites them); ``consumers`` are the GEMMs ``(name, head)``
    that LOAD them (its outputs are checked through theirs)."""

    stores: dict[int, list[Gather]] = field(default_factory=dict)
    consumers: list[tuple[str, int | None]] = field(default_factory=list)
    #: steps whose output slice is still read back: some of its outputs are in no STOREd
    #: block (or only in an integer channel of one, which the consumer takes from the host)
    reads: set[int] = field(default_factory=set)


def store_supported(cfg: AccelConfig) -> bool:
    """Whether a core of ``cfg`` has STORE: its lanes (``weight_bits``, ``narrow_bits``)
    fit the byte the gather reads a lane from and divide a memory word."""
    return all(b <= 8 and cfg.dram_bits % b == 0 for b in (cfg.weight_bits, cfg.narrow_bits))


def store_lanes(cfg: AccelConfig, buf: BufId) -> tuple[int, int]:
    """``(bits, lanes)`` of one memory word of a STORE into ``buf``'s layout: a lane's bits
    and how many lanes a memory word holds (whole lanes of at most a byte: the core has
    STORE only then, ``accel.chain.store_supported``)."""
    bits = {BufId.WEIGHTS: cfg.weight_bits, BufId.CODES: CODE_BITS}.get(buf, cfg.narrow_bits)
    return bits, cfg.dram_bits // bits


def store_bufs(cfg: AccelConfig) -> tuple[BufId, ...]:
    """The layouts a STORE of a core of ``cfg`` writes: weight rows, and code rows where it
    has the spike encoder's code buffer."""
    return (BufId.WEIGHTS, BufId.WEIGHTS4) + ((BufId.CODES,) if cfg.code_words else ())


class PassChains:
    """The chains of a traced forward pass (``models.golden.GemmCall`` in run order, with
    the model in the external memory: ``image``): ``by_call[i]``, the :class:`Chain` of
    ``calls[i]`` where it has one, and :meth:`image_for`, what each GEMM finds in the
    memory.

    A linear layer's output (requantized codes) chains when later GEMMs of its layer
    (``layers.3.k`` -> ``layers.3.*``) that are not linear layers have weights equal to a
    window of its channels, as they are (V of PV, transposed in the weight rows) or as
    rows (K of QK^T), and when every weight block their tiles LOAD (``accel.tiling.
    tiles``, :func:`accel.tiling.tile_constants`) is one STORE of the output buffer as the
    producer's tiles leave it (every OUT word of the block there at once, at addresses
    ``src + r * row_stride + l * lane_stride``), those blocks cover every output, and the
    consumers would LOAD them from where this producer stores them (not equal words that
    the model or an earlier producer holds: its outputs are checked through them).
    Anything else is read back and written as before.

    Each chaining GEMM's blocks lie after the model's image and the earlier ones' (a layer
    of its own, :meth:`DramImage.staging`); a GEMM finds the blocks of the chains up to its
    own (stored before it runs, or its own: none of its tiles loads those) and stages its
    events after them. The blocks of a pass may take half the memory the model leaves; the
    rest is for staging."""

    def __init__(self, cfg: AccelConfig, calls: list, image: DramImage):
        self.by_call: dict[int, Chain] = {}
        self._layers: list[tuple[int, DramImage]] = [(-1, image)]
        if not store_supported(cfg):
            return
        room = image.base + len(image.words) + ((1 << cfg.dram_addr_bits)
                                                - image.base - len(image.words)) // 2
        for i, call in enumerate(calls):
            if not call.constant or call.raw:
                continue
            layer = call.name.rsplit(".", 1)[0]
            users = [c for c in calls[i + 1:] if not c.constant
                     and c.name.rsplit(".", 1)[0] == layer]
            stored = self._layers[-1][1].staging()
            chain = _chain(cfg, call, users, stored)
            if chain is not None and stored.base + len(stored.words) <= room:
                self.by_call[i] = chain
                self._layers.append((i, stored))

    def image_for(self, i: int) -> DramImage:
        """What GEMM ``i`` of the pass finds in the external memory: the model and the
        blocks of every chain up to it."""
        return next(img for at, img in reversed(self._layers) if at <= i)


#: Largest comparison (elements) an unaligned window search may make (a window at any
#: channel, where the aligned ones, multiples of its width, found none).
SEARCH_LIMIT = 1 << 24


def _window(y: torch.Tensor, w: torch.Tensor,
            transposes: tuple[bool, ...] = (False, True)) -> tuple[bool, int] | None:
    """``(transposed, c0)`` such that ``w [N, K]`` is ``y[:, c0:c0 + K]`` (False) or
    ``y[:, c0:c0 + N]`` transposed (True), the first such ``c0``; None if neither (of those
    ``transposes`` allows). Windows at multiples of their width (a head's channels) are
    tried first; any other only while the search stays within :data:`SEARCH_LIMIT`."""
    m, n_y = y.shape
    n, k = w.shape
    for transposed, width, rows in ((False, k, n), (True, n, k)):
        if transposed not in transposes or rows != m or width > n_y:
            continue
        want = w.t() if transposed else w  # [m, width]
        for c0 in range(0, n_y - width + 1, width):
            if torch.equal(y[:, c0:c0 + width], want):
                return transposed, c0
        if m * (n_y - width + 1) * width <= SEARCH_LIMIT:
            win = y.unfold(1, width, 1)  # [m, windows, width]
            hits = (win == want[:, None, :]).all(dim=2).all(dim=0).nonzero()
            if len(hits):
                return transposed, int(hits[0])
    return None


class _Block(NamedTuple):
    """A block of buffer words a consumer's tiles LOAD (``rows``, as the tiling builds
    them), ``outputs[r, l]`` the producer output (``m * n_y + c``) that lane ``l`` of row
    ``r`` holds, and ``checked``, those of them a wrong value of would change the
    consumer's outputs (a code of an integer channel is zero in the block: the consumer
    takes that input from the host)."""

    buf: BufId
    rows: list
    outputs: np.ndarray
    checked: np.ndarray


def _blocks(cfg: AccelConfig, user, transposed: bool, c0: int, n_y: int):
    """Each weight :class:`_Block` the tiles of ``user`` load."""
    n, k = user.w.shape
    for t in tiles(cfg, [(0, 1)], n, k):
        words = tile_constants(cfg, user.w[t.n0:t.n1, t.k0:t.k1])
        (buf, rows), = ((b, v) for b, v in words.items() if b in (BufId.WEIGHTS,
                                                                  BufId.WEIGHTS4))
        ks = torch.arange(t.k0, t.k1)[:, None]
        ns = torch.arange(t.n0, t.n1)[None, :]
        m, c = (ks, c0 + ns) if transposed else (ns, c0 + ks)
        index = (m * n_y + c).numpy()
        yield _Block(buf, rows, index, np.ones(index.shape, dtype=bool))


def _code_blocks(cfg: AccelConfig, user, y: torch.Tensor, c0: int):
    """Each code :class:`_Block` the spike encoder of ``user``'s tiles LOADs (a row group's
    codes, ``accel.encoder.expand_groups``) whose words a STORE of the producer's outputs
    ``y`` makes: ``user``'s input codes are ``y[:, c0 ..]``, so a group's spike codes are
    those outputs, unless an integer channel of the group has a nonzero one (zero in the
    block) or a code row is wider than a STORE's lanes."""
    if BufId.CODES not in buffer_shapes(cfg):
        return
    n_y = y.shape[1]
    plan = plan_call(cfg, user)
    ks = k_slices(cfg, user.codes.shape[1])
    flat = y.reshape(-1).numpy()
    for s in plan.slices:
        for (k0, k1), img in zip(ks, s.images, strict=True):
            if img.codes is None or k1 - k0 > cfg.lanes:
                continue
            for g0 in range(0, img.codes.shape[0], cfg.spike_rows):
                block = img.codes[g0:g0 + cfg.spike_rows]
                ms = np.arange(s.r0 + g0, s.r0 + g0 + block.shape[0])[:, None]
                index = ms * n_y + c0 + np.arange(k0, k1)[None, :]
                rows = code_words(block)
                if code_words(flat[index]) != rows:
                    continue
                spike = ~user.int_mask[k0:k1].numpy()
                yield _Block(BufId.CODES, rows, index,
                             np.broadcast_to(spike[None, :], index.shape))


def _chain(cfg: AccelConfig, call, users: list, image: DramImage) -> Chain | None:
    """:class:`Chain` of ``call`` for ``users`` (None if it does not chain); its blocks
    added to ``image``."""
    y = call.y
    m_y, n_y = y.shape
    pending: list[_Block] = []
    consumers = []
    for user in users:
        found = []
        win = _window(y, user.w)
        if win is not None:
            found += list(_blocks(cfg, user, *win, n_y))
        win = _window(y, user.codes, transposes=(False,))
        if win is not None:
            found += list(_code_blocks(cfg, user, y, win[1]))
        if found:
            consumers.append((user.name, user.head))
            pending += found
    if not pending:
        return None
    # where each output is in OUT as the producer's tiles complete (-1: not there)
    pos = np.full(m_y * n_y, -1, dtype=np.int64)
    owner = np.full(buffer_shapes(cfg)[BufId.OUT][1], -1, dtype=np.int64)
    stores: dict[int, list] = {}
    steps = list(plan_call(cfg, call).steps())
    for i, (img, done) in enumerate(steps):
        if done is None:
            continue
        _, base, _ = out_read(cfg, img)
        ms = np.arange(done.r0, done.r1)[:, None]
        cs = np.arange(done.n0, done.n1)[None, :]
        addrs = base + (ms - done.r0) * (done.n1 - done.n0) + (cs - done.n0)
        old = owner[addrs]
        pos[old[old >= 0]] = -1
        owner[addrs] = ms * n_y + cs
        pos[ms * n_y + cs] = addrs
        left = []
        for b in pending:
            at = pos[b.outputs]
            if (at < 0).any():
                left.append(b)
                continue
            g = _gather(b.buf, at)
            if g is not None:  # else not one STORE: the consumer's words come from the host
                stores.setdefault(i, []).append((g, b))
        pending = left
    # into this GEMM's own layer of the memory (``image``: fresh, dropped with the chain)
    chain = Chain(consumers=consumers)
    covered = np.zeros(m_y * n_y, dtype=bool)
    seen: set[int] = set()
    for i, gs in stores.items():
        for g, b in gs:
            at = image.find(g.buf, b.rows)
            if at is not None and at < image.base:
                # the model or an earlier GEMM holds these words: the consumer LOADs
                # those, and does not check these outputs
                continue
            try:
                dst = image.add(g.buf, b.rows)  # equal blocks of this GEMM: stored once
            except ValueError:  # past the memory
                continue
            covered[b.outputs[b.checked]] = True
            if dst not in seen:
                seen.add(dst)
                chain.stores.setdefault(i, []).append(g._replace(dst=dst))
    if not chain.stores:
        return None
    # a slice is read back unless a consumer checks every one of its outputs
    grid = covered.reshape(m_y, n_y)
    chain.reads = {i for i, (_, d) in enumerate(steps)
                   if d is not None and not grid[d.r0:d.r1, d.n0:d.n1].all()}
    return chain


def _gather(buf: BufId, at: np.ndarray) -> Gather | None:
    """The STORE of the OUT words ``at[r, l]`` (lane ``l`` of row ``r``), if they are
    ``src + r * row_stride + l * lane_stride`` with strides a STORE can carry."""
    rows, lanes = at.shape
    src = int(at[0, 0])
    rs = int(at[1, 0] - src) if rows > 1 else 0
    ls = int(at[0, 1] - src) if lanes > 1 else 0
    r = np.arange(rows)[:, None]
    lane = np.arange(lanes)[None, :]
    limit = 1 << Shape.cast(STORE_ARGS["row_stride"].shape).width
    if not (0 <= rs < limit and 0 <= ls < limit and rows < limit
            and (at == src + r * rs + lane * ls).all()):
        return None
    return Gather(buf, src, rows, lanes, rs, ls, 0)
