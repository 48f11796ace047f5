"""Analytical cycle model of the GEMM engine, driven by measured spike statistics.

The engine (``hw/engine.py``) runs one descriptor at a time. Inside a descriptor three
stages work on the rows of the tile, decoupled by the arrays' finished rows (a ring of
``spike_fifo_depth`` membrane rows; ``row_fifo_depth`` rows of MAC accumulators):

* the spike array takes one event per cycle: a row costs its unit spikes, one STEP per time
  step (TTFS only) and one END;
* the MAC array spends ``lanes / mac_units`` cycles per integer (outlier) channel and one
  cycle on END (three after MAC events: the last products are still being multiplied and
  added);
* the combiner takes a row once both arrays have finished it and adds it lane by lane,
  one lane per cycle, into the output unit (or back into the accumulator buffer for a
  ``keep`` tile).

:func:`tile_cycles` replays that pipeline row by row (a max-plus recurrence, no per-cycle
simulation), so it knows where spikes are dense and where they are sparse. It is derived
from the RTL's registers, not fitted, and it equals the engine's ``busy`` counter (cycles
from taking the descriptor to ``done``) for every tile: ``tests/gen/test_cycles.py``
checks it on random tiles against the Amaranth engine, ``sim/cocotb_top.py`` against the
Verilator top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accel.config import AccelConfig
from models.encodings import TTFS_KINDS

# Times below count from the cycle the engine takes the descriptor (cycle 0); ``busy`` is
# the cycle of ``done``.

#: Cycle the first event word is at both arrays' inputs (the readers start their pointers
#: on cycle 0, read the event buffer on cycle 1, register the word as it leaves the block
#: RAMs on cycle 2 and present it on cycle 3 to two registers, the word's skid and the
#: event stage's, which hold it from cycles 4 and 5). A row
#: of an array whose previous END
#: left at cycle ``w`` (:data:`FIRST_END` for the first row) has its END ready to leave at
#: ``w + cost``: the readers deliver one word per cycle, and a held END stalls the reader
#: without a bubble.
FIRST = 5
#: Per array, the ``w`` of its first row: the MAC array takes an END in the cycle it
#: arrives; the spike array's END leaves from its third stage (weight read, weights
#: registered, add), one cycle later.
FIRST_END = {"spike": FIRST + 1, "mac": FIRST}
#: Cycles from the combiner issuing a row's last lane to ``done``: its operands registered
#: (C1), the lane's sum (C2), then the output unit's nine stages, the store into OUT, and
#: the count of stored rows reaching the descriptor's.
TAIL = 11
#: Cycles from a ``keep`` tile's last lane issued to ``done`` (its operands registered,
#: then its sum written back).
DRAIN = 2
#: Cycles a MAC row's END waits behind its last product: the weight row read from
#: registered address and enable, registered at the block RAM's output, the selected
#: weights registered, the products registered (the MAC array's four stages before the
#: add, for timing).
MAC_DRAIN = 4
#: Cycles from the spike array taking an END that waited at its input for room in the ring
#: of finished rows to the END committing its row (its two stages after the input: the
#: stages have no stall, ``hw.arrays.SpikeArray``).
SPIKE_HOLD = 2
#: Cycles of a descriptor with no rows (the host refuses one; the engine is done at once).
EMPTY = 1


@dataclass(frozen=True)
class TileWork:
    """What one descriptor asks of the engine."""

    spike_cost: np.ndarray  #: per row: unit spikes + steps + 1 (END)
    mac_cost: int  #: per row: :func:`mac_row_cost`
    n_active: int  #: output lanes in use
    keep: bool  #: partial sums stay on chip (no output unit)


def mac_row_cost(cfg: AccelConfig, n_int: int) -> int:
    """MAC-array cycles of one row with ``n_int`` integer channels."""
    return n_int * cfg.mac_cycles + 1 + MAC_DRAIN * (n_int > 0)


def tile_cycles(cfg: AccelConfig, work: TileWork) -> int:
    """Predicted busy cycles of one descriptor (exact: the engine's ``busy`` counter).

    Row by row, with ``B(r)`` the cycle the combiner issues row ``r``'s first lane (it
    issues one lane per cycle, ``n = n_active`` of them, and releases the row's slot in
    both arrays at ``B(r) + n``, free from the cycle after) and, for each array, ``W(r)``
    the cycle it finishes row ``r`` (its END commits the row; the combiner sees it from
    ``W(r) + 1``):

    * ``B(r) = max(Ws(r) + 1, Wm(r) + 1, B(r-1) + n)``;
    * spike array, a ring of ``spike_fifo_depth`` rows: the END waits at the array's
      input (stalling its event reader) until the ring has room, then passes its stages,
      ``Ws(r) = max(Ws(r-1) + cost(r), B(r - depth) + n + 1 + SPIKE_HOLD)``;
    * MAC array, ``row_fifo_depth`` rows of accumulators including the one it adds into:
      a row's first event waits until a row is free,
      ``Wm(r) = max(Wm(r-1), B(r - depth) + n) + cost``.
    """
    costs = np.asarray(work.spike_cost).tolist()
    if not costs:
        return EMPTY  # nothing to combine (the host refuses such a descriptor)
    mac = int(work.mac_cost)
    n = int(work.n_active)
    ds, dm = cfg.spike_fifo_depth, cfg.row_fifo_depth
    b: list[int] = []
    ws, wm = FIRST_END["spike"], FIRST_END["mac"]
    for r, c in enumerate(costs):
        ws = max(ws + c, b[r - ds] + n + 1 + SPIKE_HOLD if r >= ds else 0)
        wm = max(wm, b[r - dm] + n if r >= dm else 0) + mac
        b.append(max(ws + 1, wm + 1, b[-1] + n if b else 0))
    return b[-1] + n + (DRAIN if work.keep else TAIL)


@dataclass
class GemmPrediction:
    """Predicted engine work of one GEMM under one configuration."""

    cycles: int  #: busy cycles, all descriptors
    descriptors: int
    spike_cycles: int  #: cycles the spike array has work (events)
    mac_cycles: int  #: cycles the MAC array has work
    out_cycles: int  #: cycles the output unit has work
    weight_rows: int  #: weight-buffer rows written (each tile's weights are loaded once)
    wide_rows: int  #: of which whole rows (``BufId.WEIGHTS``; the others narrow halves)
    spike_events: int  #: spike-event words the engine reads (every tile's)
    mac_events: int  #: MAC-event words the engine reads
    outputs: int  #: output words read back
    weight_reads: int  #: weight-buffer row reads by both arrays (counter ``w_rd``)
    wide_reads: int  #: of which also read the high half of the row (``w_rd_hi``)
    #: event words the host writes: each row block's and K tile's once when they all fit the
    #: event buffers together (``accel.tiling.event_bases``), else every tile's
    spike_written: int
    mac_written: int
    acc_reads: int  #: accumulator words read by the combiner (counter ``acc_rd``)
    acc_writes: int  #: accumulator words written back for the next K tile (``acc_wr``)
    start_reads: int  #: start values read (``start_rd``)
    param_reads: int  #: requantizer constants read (``par_rd``)

    def traffic(self) -> dict:
        """The :data:`accel.counters.TRAFFIC` counters this GEMM will count."""
        return {"w_rd": self.weight_reads, "w_rd_hi": self.wide_reads,
                "spike_ev_rd": self.spike_events, "mac_ev_rd": self.mac_events,
                "acc_rd": self.acc_reads, "acc_wr": self.acc_writes,
                "start_rd": self.start_reads, "par_rd": self.param_reads,
                "out_wr": self.outputs}


def slot_costs(units: np.ndarray, steps: int, slots: int) -> np.ndarray:
    """Spike-array words before each row's END, rows taken ``slots`` at a time
    (``accel.tiling.spike_words``): the first row of a slot group carries the group's unit
    spikes and STEPs and its END, every other row only its END."""
    units = np.asarray(units, dtype=np.int64)
    cost = np.ones(len(units), dtype=np.int64)
    for g0 in range(0, len(units), slots):
        g1 = min(len(units), g0 + slots)
        cost[g0] += int(units[g0:g1].sum()) + steps * (g1 - g0)
    return cost


def shared_fetches(g, groups: list[tuple[int, int]], kt: list[tuple[int, int]],
                   slots: int) -> np.ndarray:
    """Spike-array weight reads per slot group and K tile ``[groups, K tiles]`` (slot
    groups numbered in row order across the row groups): one per distinct (step, input)
    among the group's TTFS spikes (STEPs separate the steps), one per distinct input for
    the other kinds (no STEPs: the group's spikes go by input). Without measured spike
    times (``g.spikes`` None), one read per unit spike."""
    sg = np.zeros(g.m, dtype=np.int64)  # slot group of each row
    n_sg = 0
    for r0, r1 in groups:
        sg[r0:r1] = n_sg + (np.arange(r1 - r0) // slots)
        n_sg += -(-(r1 - r0) // slots)
    bounds = np.array([k0 for k0, _ in kt[1:]], dtype=np.int64)
    out = np.zeros((n_sg, len(kt)), dtype=np.int64)
    if g.spikes is None:  # no sharing known: every unit spike reads
        kti = np.searchsorted(bounds, np.arange(g.k), side="right")
        per_row = np.zeros((g.m, len(kt)), dtype=np.int64)
        for i in range(len(kt)):
            per_row[:, i] = np.asarray(g.units)[:, kti == i].sum(axis=1)
        np.add.at(out, sg, per_row)
        return out
    sp = np.asarray(g.spikes, dtype=np.int64).reshape(-1, 3).copy()
    if g.encoding.kind not in TTFS_KINDS:  # no STEPs: a group's spikes go by input, any step
        sp[:, 1] = 0
    kti = np.searchsorted(bounds, sp[:, 2], side="right")
    key = ((sg[sp[:, 0]] * len(kt) + kti) * (int(sp[:, 1].max(initial=0)) + 1)
           + sp[:, 1]) * g.k + sp[:, 2]
    cell = np.unique(key) // ((int(sp[:, 1].max(initial=0)) + 1) * g.k)
    np.add.at(out.reshape(-1), cell, 1)
    return out


def _wide_tiles(g, n_tiles: list[tuple[int, int]], kt: list[tuple[int, int]]) -> np.ndarray:
    """Whether each (N tile, K tile) of the GEMM's weights is wide ``[N tiles, K tiles]``."""
    if isinstance(g.wide, bool | np.bool_):
        return np.full((len(n_tiles), len(kt)), bool(g.wide))
    w = np.asarray(g.wide, dtype=bool)
    return np.array([[bool(w[n0:n1, k0:k1].any()) for k0, k1 in kt] for n0, n1 in n_tiles])


def gemm_cycles(cfg: AccelConfig, g) -> GemmPrediction:
    """Predicted work of a :class:`accel.workload.GemmWork` cut the way
    :func:`accel.tiling.plan_gemm` cuts it (row groups x N tiles x K tiles)."""
    from .tiling import events_resident, k_slices, row_groups_of, tiles

    kt = k_slices(cfg, g.k)
    slots = cfg.spike_rows
    # the cut and the shared reads depend on the buffers, not the lanes: kept per GEMM for
    # the next configuration with the same buffers (the sizer tries every lane count)
    split_key = (tuple(kt), cfg.max_rows, cfg.spike_event_depth, cfg.mac_event_depth, slots)
    memo_split = getattr(g, "split_memo", None)  # (a GemmWork; tests pass plain records)
    if memo_split is not None and split_key in memo_split:
        tile_units, tile_int, tile_steps, groups, fetches = memo_split[split_key]
    else:
        # unit spikes and integer channels per row and K tile
        cum = np.concatenate([np.zeros((g.m, 1), np.int64), np.cumsum(g.units, axis=1)],
                             axis=1)
        icum = np.concatenate([[0], np.cumsum(g.int_mask)])
        tile_units = np.stack([cum[:, k1] - cum[:, k0] for k0, k1 in kt], axis=1)
        tile_int = [int(icum[k1] - icum[k0]) for k0, k1 in kt]
        # a K tile whose channels are all integer runs no TTFS window
        # (accel.tiling.spike_words)
        tile_steps = [g.steps if n_int < k1 - k0 else 0
                      for (k0, k1), n_int in zip(kt, tile_int, strict=True)]
        groups = row_groups_of(cfg, tile_units, tile_steps, tile_int)
        fetches = shared_fetches(g, groups, kt, slots)
        if memo_split is not None:
            memo_split[split_key] = (tile_units, tile_int, tile_steps, groups, fetches)
    first_sg = {}  # first slot group of each row group
    n_sg = 0
    for r0, r1 in groups:
        first_sg[r0] = n_sg
        n_sg += -(-(r1 - r0) // slots)
    n_tiles = [(n0, min(g.n, n0 + cfg.lanes)) for n0 in range(0, g.n, cfg.lanes)]
    wide = _wide_tiles(g, n_tiles, kt)
    cyc = desc = s_work = m_work = o_work = wrows = wide_w = s_ev = m_ev = outs = wrd = 0
    wide_rd = 0
    acc_rd = acc_wr = start_rd = par_rd = 0
    # N tiles of a row group differ only in n_active (the last one): replay each distinct
    # tile once
    memo: dict[tuple[int, int, int, bool], int] = {}
    sets: dict[tuple[int, int], tuple[int, int]] = {}  # event words per row block, K tile
    for t in tiles(cfg, groups, g.n, g.k):
        rows = t.r1 - t.r0
        units = tile_units[t.r0:t.r1, t.ki]
        n_int = tile_int[t.ki]
        work = TileWork(slot_costs(units, tile_steps[t.ki], slots), mac_row_cost(cfg, n_int),
                        t.n_active, not t.last)
        key = (t.r0, t.ki, t.n_active, t.last)
        if key not in memo:
            memo[key] = tile_cycles(cfg, work)
        cyc += memo[key]
        desc += 1
        words = int(work.spike_cost.sum())
        s_work += words
        m_work += work.mac_cost * rows
        o_work += 0 if not t.last else t.n_active * rows
        wrows += t.k1 - t.k0
        wide_w += t.k1 - t.k0 if wide[t.n0 // cfg.lanes, t.ki] else 0
        s_ev += words
        m_ev += (n_int + 1) * rows
        sets[t.r0, t.ki] = (words, (n_int + 1) * rows)
        outs += 0 if not t.last else t.n_active * rows
        sg0 = first_sg[t.r0]
        reads = int(fetches[sg0:sg0 + -(-rows // slots), t.ki].sum()) + n_int * rows
        wrd += reads
        wide_rd += reads if wide[t.n0 // cfg.lanes, t.ki] else 0
        lanes = rows * t.n_active  # the combiner's work, lane by lane
        acc_rd += lanes if t.ki else 0
        start_rd += 0 if t.ki else lanes
        acc_wr += 0 if t.last else lanes
        par_rd += lanes if t.last and not g.raw else 0
    s_once, m_once = (sum(v[i] for v in sets.values()) for i in (0, 1))
    if events_resident(cfg, s_once, m_once):
        s_wr, m_wr = s_once, m_once
    else:
        s_wr, m_wr = s_ev, m_ev
    return GemmPrediction(
        cycles=cyc, descriptors=desc, spike_cycles=s_work, mac_cycles=m_work,
        out_cycles=o_work, weight_rows=wrows, wide_rows=wide_w, spike_events=s_ev,
        mac_events=m_ev, outputs=outs, weight_reads=wrd, wide_reads=wide_rd,
        spike_written=s_wr, mac_written=m_wr, acc_reads=acc_rd, acc_writes=acc_wr,
        start_reads=start_rd, param_reads=par_rd)


def tile_work(cfg: AccelConfig, img) -> TileWork:
    """The :class:`TileWork` of a built tile (``accel.tiling.TileImage``), read off its event
    words (for checking the model against a simulation of the same tile)."""
    from accel.layouts import BufId, MacOp, SpikeOp

    costs, c = [], 0
    for w in img.words[BufId.SPIKE_EV]:
        c += 1
        if w["op"] == SpikeOp.END:
            costs.append(c)
            c = 0
    n_int = next(i for i, w in enumerate(img.words[BufId.MAC_EV]) if w["op"] == MacOp.END)
    d = img.descriptor
    return TileWork(np.array(costs), mac_row_cost(cfg, n_int), d["n_active"], bool(d["keep"]))
