"""Host-side images of one GEMM tile: the words to write into each engine buffer.

This is where activation codes become the spike arrays' event stream (the unit spike
events of :func:`models.encodings.spike_events`, a STEP after every TTFS step, an END per
row) and the MAC array's outlier entries (every integer channel of every row, whatever its
value: the MAC array is not event-driven). The host driver and the test benches both use
it; nothing else builds buffer images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch

from models.contract import ROW_FRAC, Events
from models.encodings import TTFS_KINDS, Encoding, spike_events
from models.golden import gemm_events

from .config import AccelConfig
from .encoder import encodable
from .layouts import OUT_VIEWS, BufId, MacOp, SpikeOp, param_layout, wide_weights

#: The requantizer constants a PARAMS word holds per output lane (``mcol``, ``bias``,
#: ``zp``, ``lo``, ``hi``), in its layout's order: ``consts`` dicts carry these keys.
REQ_CONSTS = tuple(name for name, _ in param_layout())


@dataclass
class TileImage:
    """Buffer words (``{BufId: list}``, each list written from address 0) and descriptor."""

    words: dict[BufId, list] = field(default_factory=dict)
    descriptor: dict = field(default_factory=dict)
    base: dict[BufId, int] = field(default_factory=dict)  #: first address of each buffer
    where: str = "tile"  #: the GEMM and tile, for messages
    #: the spike codes ``[M, K]`` (integer channels zeroed) whose spike words the on-chip
    #: encoder can make (``accel.encoder``), and their encoding; None: it cannot
    codes: torch.Tensor | None = None
    enc: Encoding | None = None


def spike_words(codes: torch.Tensor, enc: Encoding, window: bool = True,
                slots: int = 1) -> list[dict]:
    """Spike-array events for spike codes ``[M, K]`` (integer channels already zeroed).

    Rows run ``slots`` at a time (``AccelConfig.spike_rows``): row ``m`` uses slot
    ``m % slots``, and a group's END words (one per row, in row order) follow its spikes.
    TTFS: time step by time step, the unit spikes in order of input ``k`` then slot, then a
    STEP per row of the group. The other kinds add spikes straight into V, where order does
    not matter: all of the group's spikes by input, slot, step. Either way consecutive
    spikes of one input share one weight-row read (:func:`fetch_count`). ``window``: run
    the TTFS window; False for a tile whose input channels are all integer: it has no
    spikes to wait for (``models.golden.windows`` counts no window for it), so each row is
    a bare END."""
    ev = spike_events(codes, enc).numpy()  # (m, t, k, sign), sorted by m, t, k
    m_rows = codes.shape[0]
    timed = enc.kind in TTFS_KINDS
    if timed and not window and len(ev):
        raise ValueError(f"{len(ev)} spikes for a tile that runs no TTFS window")
    group = ev[:, 0] // slots
    # stable sorts: repeats of a graded spike stay together
    keys = (ev[:, 0], ev[:, 2], ev[:, 1], group) if timed else (ev[:, 1], ev[:, 0], ev[:, 2],
                                                                 group)
    order = np.lexsort(keys)
    ev, group = ev[order], group[order]
    spikes = [{"op": SpikeOp.SPIKE, "k": int(k), "neg": int(sg < 0), "slot": int(m % slots)}
              for m, _, k, sg in ev.tolist()]
    out: list[dict] = []
    i = 0
    for gi, g0 in enumerate(range(0, m_rows, slots)):
        rows = range(g0, min(m_rows, g0 + slots))
        for t in range(enc.time_steps if timed and window else 1):
            j = i
            while j < len(ev) and group[j] == gi and (not timed or ev[j, 1] == t):
                j += 1
            out += spikes[i:j]
            i = j
            if timed and window:
                out.extend({"op": SpikeOp.STEP, "k": 0, "neg": 0, "slot": r - g0} for r in rows)
        out.extend({"op": SpikeOp.END, "k": 0, "neg": 0, "slot": r - g0} for r in rows)
    return out


def fetch_count(words: list[dict]) -> int:
    """Weight-row reads the spike array makes for these event words: a SPIKE reads unless
    the previous word was a SPIKE of the same input (``hw.arrays.SpikeArray``)."""
    n, prev = 0, None
    for w in words:
        k = w["k"] if w["op"] == SpikeOp.SPIKE else None
        n += k is not None and k != prev
        prev = k
    return n


def tile_events(cfg: AccelConfig, codes: torch.Tensor, int_mask: torch.Tensor,
                shifts: torch.Tensor, enc: Encoding) -> tuple[list, list]:
    """Spike and MAC words of one tile's codes ``[M, K]`` (the K slice of a tile)."""
    return (spike_words(codes.masked_fill(int_mask, 0), enc, bool((~int_mask).any()),
                        cfg.spike_rows),
            mac_words(codes, int_mask, shifts))


def mac_words(codes: torch.Tensor, int_mask: torch.Tensor, shifts: torch.Tensor) -> list[dict]:
    """MAC-array events: every integer channel of every row, then END."""
    chans = int_mask.nonzero().view(-1).tolist()
    out = []
    for m in range(codes.shape[0]):
        for k in chans:
            out.append({"op": MacOp.MAC, "k": k, "q": int(codes[m, k]), "shift": int(shifts[k])})
        out.append({"op": MacOp.END, "k": 0, "q": 0, "shift": 0})
    return out


def build_tile(cfg: AccelConfig, codes: torch.Tensor, int_mask: torch.Tensor,
               shifts: torch.Tensor, enc: Encoding, w: torch.Tensor, *,
               start: torch.Tensor | None = None, mrow: torch.Tensor | None = None,
               consts: dict | None = None, shift: int = 0, relu: bool = False,
               raw: bool = False, resume: bool = False, keep: bool = False,
               bases: dict[BufId, int] | None = None, where: str = "tile",
               events: tuple[list, list] | None = None) -> TileImage:
    """Images for codes ``[M, K]``, weights ``[N, K]`` (N <= lanes, K <= weight_depth).

    ``start`` (``[N]``) is the accumulator start value (zero-point correction) used unless
    ``resume``; ``consts`` the per-lane requantizer constants; ``raw`` passes accumulators.
    ``bases`` places the tile's words (WEIGHTS, SPIKE_EV, MAC_EV; ROWS for the row buffers,
    accumulator and output rows) so that several tiles can stay resident. ``events`` (spike
    and MAC words of these codes, as :func:`spike_words` and :func:`mac_words` make them)
    saves rebuilding them for every N tile of the same rows.
    """
    bases = {b: 0 for b in (BufId.WEIGHTS, BufId.SPIKE_EV, BufId.MAC_EV, BufId.ROWS)} | (
        bases or {})
    m, k = codes.shape
    n = w.shape[0]
    if (n > cfg.lanes or k + bases[BufId.WEIGHTS] > cfg.weight_depth
            or m + bases[BufId.ROWS] > cfg.max_rows):
        raise ValueError(f"{where}: tile M={m} K={k} N={n} exceeds the config "
                         f"(rows {cfg.max_rows}, weight rows {cfg.weight_depth}, "
                         f"lanes {cfg.lanes})")
    if not enc.is_spiking and not bool(int_mask.all()):
        raise ValueError(f"{where}: the {enc.kind} encoding sends no spikes, so every input "
                         f"channel must be an integer channel ({int((~int_mask).sum())} "
                         f"are not)")
    if shifts.numel() and int(shifts.max()) > cfg.max_shift:
        raise ValueError(f"{where}: an outlier shift of {int(shifts.max())} exceeds the "
                         f"accelerator's max_shift {cfg.max_shift}")
    if enc.is_spiking and enc.time_steps > cfg.max_steps:
        raise ValueError(f"{where}: the {enc.name()} window of {enc.time_steps} steps is "
                         f"longer than the accelerator's max_steps {cfg.max_steps}")
    if enc.kind not in cfg.encodings:
        raise ValueError(f"{where}: the accelerator does not run {enc.kind} spikes (its "
                         f"encodings: {', '.join(cfg.encodings)})")
    spk = codes.masked_fill(int_mask, 0)
    if enc.is_spiking and spk.numel() and int(spk.abs().max()) > cfg.spike_code_max:
        raise ValueError(f"{where}: a spike code of {int(spk.abs().max())} exceeds the "
                         f"{cfg.spike_code_max} the spike lanes are sized for")
    if bool(wide_weights(w, cfg.weight_bits).any()):
        raise ValueError(f"{where}: weights span [{int(w.min())}, {int(w.max())}], outside "
                         f"the {cfg.weight_bits}-bit weight buffer")
    img = TileImage(where=where)
    img.words = tile_constants(cfg, w, start=start, consts=consts, resume=resume)
    wide = BufId.WEIGHTS in img.words
    # the event words depend on the activations only: a caller tiling N passes them in once
    spike_ev, mac_ev = events or tile_events(cfg, codes, int_mask, shifts, enc)
    img.words[BufId.SPIKE_EV] = spike_ev
    img.words[BufId.MAC_EV] = mac_ev
    # the encoder takes a K tile's codes (a wider tile, built by hand, sends its words)
    if encodable(cfg, enc) and bool((~int_mask).any()) and k <= cfg.k_tile:
        img.codes, img.enc = spk, enc
    for b, depth in ((BufId.SPIKE_EV, cfg.spike_event_depth),
                     (BufId.MAC_EV, cfg.mac_event_depth)):
        if len(img.words[b]) + bases[b] > depth:
            raise ValueError(f"{where}: {len(img.words[b])} {b.name} events exceed the "
                             f"buffer's {depth}; split the tile over fewer rows")
    mrow = mrow if mrow is not None else torch.full((m,), 2**ROW_FRAC)
    img.words[BufId.ROWS] = [int(v) for v in mrow]
    img.descriptor = {"rows": m, "n_active": n, "spike_events": len(img.words[BufId.SPIKE_EV]),
                      "mac_events": len(img.words[BufId.MAC_EV]),
                      "ttfs": int(enc.kind in TTFS_KINDS), "shift": shift, "relu": int(relu),
                      "raw": int(raw), "resume": int(resume), "keep": int(keep),
                      "wide": int(wide),
                      "w_base": bases[BufId.WEIGHTS], "spike_base": bases[BufId.SPIKE_EV],
                      "mac_base": bases[BufId.MAC_EV], "row_base": bases[BufId.ROWS]}
    img.base = {BufId.WEIGHTS: bases[BufId.WEIGHTS], BufId.WEIGHTS4: bases[BufId.WEIGHTS],
                BufId.SPIKE_EV: bases[BufId.SPIKE_EV],
                BufId.MAC_EV: bases[BufId.MAC_EV], BufId.ROWS: bases[BufId.ROWS],
                BufId.PARAMS: 0, BufId.START: 0}
    return img


def tile_constants(cfg: AccelConfig, w: torch.Tensor, *, start: torch.Tensor | None = None,
                   consts: dict | None = None, resume: bool = False) -> dict[BufId, list]:
    """The words of a tile that depend on its GEMM's weights ``[N, K]`` and constants only,
    not on the activations: the weight rows (``WEIGHTS4``, the narrow halves, when every
    weight fits them: half the bytes; else whole ``WEIGHTS`` rows), the requantizer
    constants (``PARAMS``, with ``consts``) and the start values (``START``, unless
    ``resume``). What a linear layer may keep in the external memory
    (``accel.resident``)."""
    n, k = w.shape
    rows = torch.zeros(k, cfg.lanes, dtype=torch.int64)
    rows[:, :n] = w.t()
    words: dict[BufId, list] = {
        BufId.WEIGHTS if is_wide(cfg, w) else BufId.WEIGHTS4: rows.tolist()}
    if consts is not None:
        words[BufId.PARAMS] = [{c: int(consts[c][j]) for c in REQ_CONSTS} for j in range(n)]
    if not resume:
        st = start if start is not None else torch.zeros(n, dtype=torch.int64)
        words[BufId.START] = [int(v) for v in st]
    return words


def constant_tiles(cfg: AccelConfig, call) -> Iterator[dict[BufId, list]]:
    """:func:`tile_constants` of every output slice and K tile of a traced GEMM
    (``models.golden.GemmCall``), as :func:`plan_call` slices them (whatever its rows)."""
    n, k = call.w.shape
    for t in tiles(cfg, [(0, 1)], n, k):
        yield tile_constants(cfg, call.w[t.n0:t.n1, t.k0:t.k1], **_constants_of(call, t))


def _constants_of(call, t: Tile) -> dict:
    """The ``start``, ``consts`` and ``resume`` of tile ``t`` of a GEMM whose ``start``
    and ``consts`` are per output channel (``call`` has them as attributes)."""
    return {"start": None if call.start is None else call.start[t.n0:t.n1],
            "consts": None if call.consts is None or not t.last
            else {c: v[t.n0:t.n1] for c, v in call.consts.items()},
            "resume": t.ki > 0}


def out_read(cfg: AccelConfig, img: TileImage) -> tuple[BufId, int, int]:
    """Where an output tile's results lie: ``(buffer, first address, words)``. The engine
    packs a tile's rows ``n_active`` words apart from ``row_base * lanes``; they are read
    back through the narrowest view of OUT that holds their codes (``OUT_VIEWS``: OUT8, a
    byte a word, for codes clamped within int8; OUT16 within int16), else as OUT (32-bit
    accumulators)."""
    d = img.descriptor
    params = img.words.get(BufId.PARAMS) or []
    buf = BufId.OUT
    if not d["raw"] and params:
        lo, hi = min(p["lo"] for p in params), max(p["hi"] for p in params)
        fits = [v for v, bits in OUT_VIEWS.items()
                if -(1 << bits - 1) <= lo and hi < 1 << bits - 1]
        buf = min(fits, key=OUT_VIEWS.__getitem__, default=BufId.OUT)
    return buf, d["row_base"] * cfg.lanes, d["rows"] * d["n_active"]


def is_wide(cfg: AccelConfig, w: torch.Tensor) -> bool:
    """Whether weights ``w`` need more than the weight buffer's narrow half (then a tile
    reads whole rows; 4-bit weights read only the narrow half)."""
    return bool(wide_weights(w, cfg.narrow_bits).any())


@dataclass
class GemmTiles:
    """A whole GEMM cut into tiles: for each block of rows ``[r0, r1)`` and output slice
    ``[n0, n1)``, the K-tile images, run in order (all but the last keep their partial sums
    on chip).

    When all rows fit the row buffers at once (``rows_resident``: M <= ``max_rows``), each
    row block has its own rows there (``row_base = r0``, plus the slice's copy of the rows,
    :func:`slice_rows`), so the K tiles of different row blocks may interleave:
    :meth:`schedule` then runs, per output slice and K tile, every row block back to back,
    and the weights of that K tile are written once, not once per row block. Either way a
    slice's outputs are in OUT rows ``row_base ..`` once its last K tile has run."""

    slices: list[Slice]
    rows_resident: bool = False
    #: the half of the weight buffer the last tile's weights lie in (None: the whole
    #: buffer), set by :func:`alternate_halves`
    last_half: int | None = None

    def schedule(self) -> list[tuple[int, int]]:
        """(slice index, K-tile index) in run order."""
        order = [(i, k) for i, s in enumerate(self.slices) for k in range(len(s.images))]
        if self.rows_resident:  # by output slice, then K tile, then row block
            order.sort(key=lambda ik: (self.slices[ik[0]].n0, ik[1], self.slices[ik[0]].r0))
        return order

    def steps(self) -> Iterator[tuple[TileImage, Slice | None]]:
        """Every tile image in run order (:meth:`schedule`), each with its slice when that
        slice's outputs are complete once it has run (read them back then), else ``None``.
        The host driver and the cocotb bench both walk this."""
        for i, k in self.schedule():
            s = self.slices[i]
            yield s.images[k], s if k == len(s.images) - 1 else None


class Tile(NamedTuple):
    """One descriptor's place in its GEMM: rows ``[r0, r1)``, outputs ``[n0, n1)``, inputs
    ``[k0, k1)``, the K tile's index and whether it is the last (the one that outputs)."""

    r0: int
    r1: int
    n0: int
    n1: int
    k0: int
    k1: int
    ki: int
    last: bool

    @property
    def n_active(self) -> int:
        """Output lanes in use."""
        return self.n1 - self.n0


def tiles(cfg: AccelConfig, groups: list[tuple[int, int]], n: int, k: int) -> Iterator[Tile]:
    """The tiling every consumer walks (tile builder, cycle model, program compiler): for
    each row group, each output slice of ``lanes`` channels, each K tile of
    ``k_tile`` rows, in that order (:meth:`GemmTiles.schedule` reorders runs)."""
    ks = k_slices(cfg, k)
    for r0, r1 in groups:
        for n0 in range(0, n, cfg.lanes):
            for i, (k0, k1) in enumerate(ks):
                yield Tile(r0, r1, n0, min(n, n0 + cfg.lanes), k0, k1, i, i == len(ks) - 1)


class Slice(NamedTuple):
    """The K-tile images of one row block ``[r0, r1)`` and output slice ``[n0, n1)``."""

    r0: int
    r1: int
    n0: int
    n1: int
    images: list


def k_slices(cfg: AccelConfig, k: int) -> list[tuple[int, int]]:
    """The K tiles ``[k0, k1)`` of a GEMM with ``k`` input channels (weight buffer rows)."""
    return [(k0, min(k, k0 + cfg.k_tile)) for k0 in range(0, k, cfg.k_tile)]


def row_groups(cfg: AccelConfig, codes: torch.Tensor, int_mask: torch.Tensor,
               enc: Encoding) -> list[tuple[int, int]]:
    """Consecutive row blocks whose events fit both event buffers and ``max_rows``, in
    every K tile (each K tile's events are written on their own)."""
    spk = codes.masked_fill(int_mask, 0)
    m, k = codes.shape
    ks = k_slices(cfg, k)
    ev = spike_events(spk, enc)
    tile_of = torch.div(ev[:, 2], cfg.k_tile, rounding_mode="floor")
    units = torch.zeros(m * len(ks), dtype=torch.int64)
    units.index_add_(0, ev[:, 0] * len(ks) + tile_of, torch.ones_like(tile_of))
    ttfs_steps = enc.time_steps if enc.kind in TTFS_KINDS else 0
    steps = [ttfs_steps if bool((~int_mask[k0:k1]).any()) else 0 for k0, k1 in ks]
    n_int = [int(int_mask[k0:k1].sum()) for k0, k1 in ks]
    return row_groups_of(cfg, units.view(m, len(ks)).numpy(), steps, n_int)


def row_groups_of(cfg: AccelConfig, units: np.ndarray, steps: list[int],
                  n_int: list[int]) -> list[tuple[int, int]]:
    """:func:`row_groups` from the unit spikes of each row in each K tile (``[M, K tiles]``),
    the STEP events per row and the integer channels of each K tile (the generator's cycle
    model calls this with measured statistics)."""
    units = np.asarray(units, dtype=np.int64).reshape(len(units), len(steps))
    se = units + np.asarray(steps, dtype=np.int64) + 1  # spike words per row and K tile
    me = max(n_int) + 1  # MAC words per row, in the K tile with the most integer channels
    groups, r0 = [], 0
    s_ev = np.zeros(len(steps), dtype=np.int64)
    m_ev = 0
    for r in range(len(se)):
        worst = int(se[r].max())
        if worst > cfg.spike_event_depth or me > cfg.mac_event_depth:
            raise ValueError(f"row {r} alone needs {worst} spike / {me} MAC events in one K "
                             f"tile, more than the buffers hold ({cfg.spike_event_depth} / "
                             f"{cfg.mac_event_depth})")
        if (r - r0 == cfg.max_rows or int((s_ev + se[r]).max()) > cfg.spike_event_depth
                or m_ev + me > cfg.mac_event_depth):
            groups.append((r0, r))
            r0, s_ev, m_ev = r, np.zeros_like(s_ev), 0
        s_ev, m_ev = s_ev + se[r], m_ev + me
    groups.append((r0, len(se)))
    return groups


def plan_gemm(cfg: AccelConfig, codes: torch.Tensor, int_mask: torch.Tensor,
              shifts: torch.Tensor, enc: Encoding, w: torch.Tensor, *,
              start: torch.Tensor | None = None, mrow: torch.Tensor | None = None,
              consts: dict | None = None, shift: int = 0, relu: bool = False,
              raw: bool = False, where: str = "gemm", copy: int = 0) -> GemmTiles:
    """Cut ``codes [M, K] x w[N, K]^T`` into row blocks that fit the event buffers, N tiles
    of ``lanes`` and K tiles of ``k_tile`` rows. ``start``, ``consts`` are per output
    channel ``[N]``; ``mrow`` per row ``[M]``. ``copy``: the copy of the rows its first
    output slice takes (:func:`slice_rows`; a batch's later GEMMs go on from the copies
    the earlier ones took, :meth:`PassPlanner.plan_batch`)."""
    n, k = w.shape
    resident = codes.shape[0] <= cfg.max_rows
    groups = row_groups(cfg, codes, int_mask, enc)
    # the event words of each row block and K tile, shared by the N tiles
    events = {(r0, k0): tile_events(cfg, codes[r0:r1, k0:k1], int_mask[k0:k1],
                                    shifts[k0:k1], enc)
              for r0, r1 in groups for k0, k1 in k_slices(cfg, k)}
    ev_base = event_bases(cfg, events)
    images: dict[tuple[int, int, int, int], list[TileImage]] = {}
    per_channel = SimpleNamespace(start=start, consts=consts)
    for t in tiles(cfg, groups, n, k):
        rows, ks = slice(t.r0, t.r1), slice(t.k0, t.k1)
        images.setdefault((t.r0, t.r1, t.n0, t.n1), []).append(build_tile(
            cfg, codes[rows, ks], int_mask[ks], shifts[ks], enc, w[t.n0:t.n1, ks],
            mrow=None if mrow is None else mrow[rows], shift=shift, relu=relu, raw=raw,
            keep=not t.last, **_constants_of(per_channel, t),
            bases=({BufId.ROWS: t.r0 + slice_rows(cfg, codes.shape[0], t.n0, copy)}
                   if resident else {}) | ev_base[t.r0, t.k0],
            events=events[t.r0, t.k0],
            where=f"{where}[m {t.r0}:{t.r1}, n {t.n0}:{t.n1}, k {t.k0}:{t.k1}]"))
    out = GemmTiles([Slice(*key, imgs) for key, imgs in images.items()], resident)
    alternate_halves(cfg, out)
    return out


def slice_rows(cfg: AccelConfig, m: int, n0: int, first: int = 0) -> int:
    """The first row (of ``max_rows``: the row, accumulator and output buffers) of the
    output slice at channel ``n0`` of a GEMM of ``m`` rows that all fit at once, past its
    row blocks' own ``row_base = r0``. Consecutive slices take the ``max_rows // m`` copies
    of the ``m`` rows in turn, from copy ``first``, so a slice's outputs stay in OUT while
    the next slices run: the host reads several slices after their RUNs, which then cross
    in one CHAIN and one round trip (``accel.requests.gemm_requests``) instead of one each."""
    copies = max(1, cfg.max_rows // max(1, m))
    return (first + n0 // cfg.lanes) % copies * m


def alternate_halves(cfg: AccelConfig, gt: GemmTiles, first: int = 0) -> None:
    """Place each run's weights in the half of the weight buffer the run before did not
    use, whenever they change and fit half the buffer, so that the next tile's weights can
    be loaded from the external memory while this one runs (the executor lets a RUN run
    beside a LOAD into the other half only). Weights that do not change keep their place
    (they are not written again). The first tile's go into half ``first``: a forward
    pass starts each GEMM in the half the GEMM before it ended outside of
    (:class:`PassPlanner`), so that its first tile is loaded while that one's last runs."""
    half_rows = cfg.half_rows
    prev, half = None, 1 - first
    for img, _ in gt.steps():
        buf = BufId.WEIGHTS if BufId.WEIGHTS in img.words else BufId.WEIGHTS4
        rows = img.words[buf]
        if len(rows) > half_rows or not half_rows:
            base, half = 0, 0
        elif rows != prev:
            half ^= 1
            base = half * half_rows
        else:
            base = half * half_rows
        prev = rows
        img.base[BufId.WEIGHTS] = img.base[BufId.WEIGHTS4] = base
        img.descriptor["w_base"] = base
        gt.last_half = half if half_rows and len(rows) <= half_rows else None


def lead_image(cfg: AccelConfig, w: torch.Tensor, half: int) -> TileImage:
    """The weight words of the first tile a GEMM with weights ``w [N, K]`` runs, placed in
    half ``half`` of the weight buffer, as :func:`plan_gemm` and :func:`alternate_halves`
    (``first=half``) place them whatever the activations: what may be loaded while the GEMM
    before it runs its last tile (``accel.requests.prefetch``)."""
    n, k = w.shape
    words = tile_constants(cfg, w[:min(n, cfg.lanes), :min(k, cfg.k_tile)])
    buf = BufId.WEIGHTS if BufId.WEIGHTS in words else BufId.WEIGHTS4
    base = half * cfg.half_rows
    return TileImage({buf: words[buf]}, base={BufId.WEIGHTS: base, BufId.WEIGHTS4: base},
                     where="lead")


class PassPlanner:
    """Plans a forward pass's GEMMs one after another as the device runs them: each one's
    first tile in the half of the weight buffer the GEMM before it did not end in, and the
    weights of the next linear layer's first tile (:func:`lead_image`) known while the last
    tile of the GEMM before it runs. The host (a GEMM at a time) and the generator's link
    prices (a traced pass) both walk one."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.last_half: int | None = None  # where the previous GEMM's last tile lies

    @property
    def next_half(self) -> int:
        """The half the next GEMM's first tile goes into."""
        return 0 if self.last_half is None else 1 - self.last_half

    def plan(self, call, copy: int = 0) -> GemmTiles:
        """:func:`plan_call` of the next GEMM, placed after the one before."""
        gt = plan_call(self.cfg, call, copy)
        if self.next_half:
            alternate_halves(self.cfg, gt, first=self.next_half)
        self.last_half = gt.last_half
        return gt

    def plan_batch(self, calls: list) -> GemmTiles | BatchTiles:
        """The GEMMs of a batch (:func:`batches`) planned one after another, each one's
        output slices going on from the copies of the rows the one before took
        (:func:`slice_rows`), as one :class:`BatchTiles` (a batch of one: its plan)."""
        if len(calls) == 1:
            return self.plan(calls[0])
        plans, copy = [], 0
        for call in calls:
            plans.append(self.plan(call, copy))
            copy += len({s.n0 for s in plans[-1].slices})
        return BatchTiles(plans)

    def lead(self, call) -> TileImage | None:
        """The first tile's weights of ``call`` (the GEMM that follows the one planned
        last), if it is a linear layer (weights that the external memory may hold)."""
        if call is None or not getattr(call, "constant", False):
            return None
        return lead_image(self.cfg, call.w, self.next_half)


def plan_call(cfg: AccelConfig, call, copy: int = 0) -> GemmTiles:
    """:func:`plan_gemm` of a traced GEMM (``models.golden.GemmCall``): the tiling the host
    runs and the benches check, with the call's name (and head) in every tile's messages.
    ``copy``: :func:`plan_gemm`'s."""
    where = call.name + ("" if call.head is None else f"[head {call.head}]")
    return plan_gemm(cfg, call.codes, call.int_mask, call.shifts, call.encoding, call.w,
                     start=call.start, consts=call.consts, mrow=call.mrow, shift=call.shift,
                     raw=call.raw, where=where, copy=copy)


@dataclass
class BatchTiles:
    """The GEMMs of a batch (:func:`batches`: an attention node's heads) as one request
    stream: each GEMM's :meth:`GemmTiles.steps` in turn, its slices' rows moved past the
    GEMMs' before it, as if their outputs were stacked (``[sum M, max N]``), so that the
    driver reads them as one GEMM's, and the reads of earlier GEMMs wait behind the
    later ones' RUNs as a GEMM's slices do (their OUT rows are other copies of the rows,
    :meth:`PassPlanner.plan_batch`). ``plans[i]``'s outputs are rows ``offsets[i] ..``."""

    plans: list[GemmTiles]

    @property
    def offsets(self) -> list[int]:
        """The first stacked row of each GEMM's outputs."""
        m = [max(s.r1 for s in p.slices) for p in self.plans]
        return [sum(m[:i]) for i in range(len(m))]

    @property
    def slices(self) -> list[Slice]:
        """Every GEMM's slices, their rows stacked."""
        return [s._replace(r0=s.r0 + off, r1=s.r1 + off)
                for p, off in zip(self.plans, self.offsets, strict=True) for s in p.slices]

    @property
    def last_half(self) -> int | None:
        """Where the last GEMM's last tile lies (:attr:`GemmTiles.last_half`)."""
        return self.plans[-1].last_half

    def steps(self) -> Iterator[tuple[TileImage, Slice | None]]:
        """Every GEMM's steps in turn, each completed slice with its rows stacked."""
        for p, off in zip(self.plans, self.offsets, strict=True):
            for img, done in p.steps():
                yield img, None if done is None else done._replace(r0=done.r0 + off,
                                                                   r1=done.r1 + off)

    def outputs(self, out: torch.Tensor, calls: list) -> list[torch.Tensor]:
        """Each GEMM's outputs ``[M, N]`` from the stacked ``out``."""
        return [out[off:off + c.codes.shape[0], :c.w.shape[0]]
                for off, c in zip(self.offsets, calls, strict=True)]


def batches(calls: list) -> list[list[int]]:
    """The positions of a traced pass's GEMMs (``models.golden.GemmCall``) grouped as the
    golden model handed them to ``execute``: consecutive calls of one ``batch`` (an
    attention node's heads) together, a call without one alone. The golden model marks the
    groups; this only reads them."""
    out: list[list[int]] = []
    for i, call in enumerate(calls):
        if out and call.batch is not None and calls[i - 1].batch == call.batch:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def events_resident(cfg: AccelConfig, spike_words: int, mac_words: int) -> bool:
    """Whether a GEMM's event words (every row block's and K tile's, ``spike_words`` and
    ``mac_words`` in all) stay resident: they all fit the event buffers side by side
    (:func:`event_bases`; the cycle model's written-word count uses the same rule)."""
    return spike_words <= cfg.spike_event_depth and mac_words <= cfg.mac_event_depth


def event_bases(cfg: AccelConfig, events: dict) -> dict:
    """Where each row block's and K tile's event words go (``{key: {BufId: base}}`` for
    ``events``, ``{key: (spike words, MAC words)}``): one after another when they all fit
    the event buffers, so that they stay resident and the host writes them once, not once
    per output slice; otherwise every set at address 0 (written again for each tile)."""
    s_len = [len(s) for s, _ in events.values()]
    m_len = [len(mw) for _, mw in events.values()]
    fits = events_resident(cfg, sum(s_len), sum(m_len))
    s0 = np.cumsum([0, *s_len[:-1]]) if fits else np.zeros(len(s_len), dtype=np.int64)
    m0 = np.cumsum([0, *m_len[:-1]]) if fits else np.zeros(len(m_len), dtype=np.int64)
    return {key: {BufId.SPIKE_EV: int(a), BufId.MAC_EV: int(b)}
            for key, a, b in zip(events, s0, m0, strict=True)}


def tiled_events(cfg: AccelConfig, call) -> Events:
    """The golden events of a traced GEMM (``models.golden.GemmCall``) under this tiling:
    spikes repeat per N tile of ``lanes``, TTFS windows run per K tile of ``k_tile`` rows
    that holds a spike channel. What the device's counters must equal."""
    return gemm_events(call.codes[None], call.int_mask[None], call.encoding, call.w.shape[0],
                       k_tile=cfg.k_tile, n_tile=cfg.lanes)
