"""Analytical cycle model of the GEMM engine, driven by measured spike statistics.

The engine (``hw/engine.py``) runs one descriptor at a time. Inside a descriptor three
stages work on the rows of the tile, decoupled by ``row_fifo_depth``-deep FIFOs:

* the spike array takes one event per cycle: a row costs its unit spikes, one STEP per time
  step (TTFS only) and one END;
* the MAC array spends ``lanes / mac_units`` cycles per integer (outlier) channel and one
  cycle on END (two after MAC events: the last product is still being added);
* the combiner pops a row when both partials are there (two cycles), and the output unit
  requantizes one lane per cycle (``n_active`` cycles per row; none for a ``keep`` tile,
  whose sums go back to the accumulator buffer).

:func:`tile_cycles` replays that pipeline row by row (a max-plus recurrence, no gate-level
detail), so it knows where spikes are dense and where they are sparse. Its constants are
fitted to the Amaranth/Verilator engine and checked by ``tests/gen/test_cycles.py``.
The figure it predicts is the engine's ``busy`` counter: cycles from descriptor to done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.config import AccelConfig

#: Cycles from accepting a descriptor to the first event reaching an array.
START = 2
#: Cycles from an array emitting a row to the combiner seeing it (FIFO latency).
FIFO_LAT = 1
#: Combiner cycles per row (COUNT, SUM).
COMBINE = 2
#: Output-unit pipeline depth after its last lane.
TAIL = 6
#: Cycles from the last row's result to ``done`` and the sequencer back in IDLE.
DONE = 3


@dataclass(frozen=True)
class TileWork:
    """What one descriptor asks of the engine."""

    spike_cost: np.ndarray  #: per row: unit spikes + steps + 1 (END)
    mac_cost: int  #: per row: :func:`mac_row_cost`
    n_active: int  #: output lanes in use
    keep: bool  #: partial sums stay on chip (no output unit)


def mac_row_cost(cfg: AccelConfig, n_int: int) -> int:
    """MAC-array cycles of one row with ``n_int`` integer channels."""
    return n_int * cfg.mac_cycles + 1 + (n_int > 0)


def tile_cycles(cfg: AccelConfig, work: TileWork) -> int:
    """Predicted busy cycles of one descriptor."""
    depth = cfg.row_fifo_depth
    rows = len(work.spike_cost)
    if rows == 0:
        return START + TAIL
    s = np.zeros(rows, dtype=np.int64)  # cycle the spike array emits row r
    m = np.zeros(rows, dtype=np.int64)  # cycle the MAC array emits row r
    pop = np.zeros(rows, dtype=np.int64)  # cycle the combiner pops row r
    per_row = COMBINE if work.keep else max(COMBINE, work.n_active)
    prev_s = prev_m = START - 1
    prev_pop = -per_row
    for r in range(rows):
        # an array may not emit row r before the combiner has popped row r - depth
        free = pop[r - depth] + 1 if r >= depth else 0
        s[r] = max(prev_s + int(work.spike_cost[r]), free)
        m[r] = max(prev_m + work.mac_cost, free)
        pop[r] = max(max(s[r], m[r]) + FIFO_LAT + COMBINE - 1, prev_pop + per_row)
        prev_s, prev_m, prev_pop = s[r], m[r], pop[r]
    last = pop[-1] + (COMBINE - 1 if work.keep else work.n_active + TAIL - 1)
    return int(last) + DONE


@dataclass
class GemmPrediction:
    """Predicted engine work of one GEMM under one configuration."""

    cycles: int  #: busy cycles, all descriptors
    descriptors: int
    spike_cycles: int  #: cycles the spike array has work (events)
    mac_cycles: int  #: cycles the MAC array has work
    out_cycles: int  #: cycles the output unit has work
    weight_rows: int  #: weight-buffer rows written (each tile's weights are loaded once)
    spike_events: int  #: spike-event words written
    mac_events: int  #: MAC-event words written
    outputs: int  #: output words read back
    weight_reads: int  #: weight-buffer row reads by both arrays (counter ``w_rd``)
    acc_reads: int  #: accumulator rows read by the combiner (counter ``acc_rd``)
    acc_writes: int  #: accumulator rows written back for the next K tile (``acc_wr``)

    def traffic(self) -> dict:
        """The :data:`hw.counters.TRAFFIC` counters this GEMM will count."""
        return {"w_rd": self.weight_reads, "ev_rd": self.spike_events + self.mac_events,
                "acc_rd": self.acc_reads, "acc_wr": self.acc_writes, "out_wr": self.outputs}


def gemm_cycles(cfg: AccelConfig, g) -> GemmPrediction:
    """Predicted work of a :class:`gen.workload.GemmWork` cut the way
    :func:`hw.tile.plan_gemm` cuts it (row groups x N tiles x K tiles)."""
    from hw.tile import k_slices, row_groups_of

    kt = k_slices(cfg, g.k)
    # unit spikes and integer channels per row and K tile
    cum = np.concatenate([np.zeros((g.m, 1), np.int64), np.cumsum(g.units, axis=1)], axis=1)
    icum = np.concatenate([[0], np.cumsum(g.int_mask)])
    tile_units = np.stack([cum[:, k1] - cum[:, k0] for k0, k1 in kt], axis=1)
    tile_int = [int(icum[k1] - icum[k0]) for k0, k1 in kt]
    # a K tile whose channels are all integer runs no TTFS window (hw.tile.spike_words)
    tile_steps = [g.steps if n_int < k1 - k0 else 0
                  for (k0, k1), n_int in zip(kt, tile_int, strict=True)]
    groups = row_groups_of(cfg, tile_units, tile_steps, tile_int)
    cyc = desc = s_work = m_work = o_work = wrows = s_ev = m_ev = outs = wrd = 0
    acc_rd = acc_wr = 0
    for r0, r1 in groups:
        for n0 in range(0, g.n, cfg.lanes):
            n_act = min(g.n, n0 + cfg.lanes) - n0
            for i, (k0, k1) in enumerate(kt):
                last = i == len(kt) - 1
                units = tile_units[r0:r1, i]
                n_int = tile_int[i]
                work = TileWork(units + tile_steps[i] + 1, mac_row_cost(cfg, n_int), n_act,
                                not last)
                cyc += tile_cycles(cfg, work)
                desc += 1
                s_work += int(work.spike_cost.sum())
                m_work += work.mac_cost * (r1 - r0)
                o_work += 0 if not last else n_act * (r1 - r0)
                wrows += k1 - k0
                s_ev += int(work.spike_cost.sum())
                m_ev += (n_int + 1) * (r1 - r0)
                outs += 0 if not last else n_act * (r1 - r0)
                wrd += int(units.sum()) + n_int * (r1 - r0)
                acc_rd += r1 - r0
                acc_wr += 0 if last else r1 - r0
    return GemmPrediction(cyc, desc, s_work, m_work, o_work, wrows, s_ev, m_ev, outs, wrd,
                          acc_rd, acc_wr)


def tile_work(cfg: AccelConfig, img) -> TileWork:
    """The :class:`TileWork` of a built tile (``hw.tile.TileImage``), read off its event
    words (for checking the model against a simulation of the same tile)."""
    from hw.arrays import MacOp, SpikeOp
    from hw.engine import BufId

    costs, c = [], 0
    for w in img.words[BufId.SPIKE_EV]:
        c += 1
        if w["op"] == SpikeOp.END:
            costs.append(c)
            c = 0
    n_int = next(i for i, w in enumerate(img.words[BufId.MAC_EV]) if w["op"] == MacOp.END)
    d = img.descriptor
    return TileWork(np.array(costs), mac_row_cost(cfg, n_int), d["n_active"], bool(d["keep"]))
