"""The combiner: each row's two partial sums (spike array, MAC array) plus its start value,
lane by lane, into the output unit or back into the accumulator buffer.

One lane per cycle, the output unit's pace, in three stages: C0 issues lane ``j`` of row
``r`` (the synchronous reads of its start value or partial sum and of its row
multiplier), C1 registers the three operands (the block RAM and LUT RAM reads end there,
for timing), C2 adds them and hands the sum to the output unit (``out``) or, for a tile
that keeps its partial sums (``keep``), writes it back to ACC (``acc_w``). A row is issued
once both arrays have committed it; its slots in both are released once its last lane's
operands are registered.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from accel.config import AccelConfig
from accel.layouts import (
    BufId,
    descriptor_layout,
    lane_in_layout,
    onchip_shapes,
    spike_vector_layout,
)

from .rings import rows_signature


class Combiner(wiring.Component):
    """Adds the partial sums of the descriptor's rows (``desc``, while ``active``; ``start``
    pulses as a descriptor starts: its rows count from 0).

    ``spike``, ``mac``: the two arrays' finished rows (:func:`hw.rings.rows_signature`);
    ``acc_rd``, ``start_rd``, ``rows_rd``: read ports of ACC (partial sums, ``resume``), START
    (start values) and ROWS (row multipliers); ``acc_w``: the sum written back to ACC
    (``acc_we`` at ``acc_w_addr``, the sum in ``out.payload.acc``, for ``keep``; the engine
    shares the port with the host); ``out``: the sum, lane and row multiplier for the output
    unit. ``drained``: every row issued and none in C1/C2;
    ``leftover``: a row committed by an array and not issued (more row ends than rows);
    ``issue``: a lane issued this cycle (progress); ``acc_rd_strobe`` / ``start_rd_strobe``:
    the counters' strobes."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        shapes = onchip_shapes(cfg)

        def port(b: BufId) -> memory.ReadPort.Signature:  # as the buffer's memory makes it
            shape, depth = shapes[b]
            return memory.ReadPort.Signature(addr_width=(depth - 1).bit_length(), shape=shape)

        spike_elem = spike_vector_layout(cfg).elem_shape
        super().__init__({
            "desc": In(descriptor_layout(cfg)),
            "active": In(1),
            "start": In(1),
            "spike": In(rows_signature(spike_elem, cfg.spike_fifo_depth, cfg.lanes)),
            "mac": In(rows_signature(signed(cfg.acc_bits), cfg.row_fifo_depth, cfg.lanes)),
            "acc_rd": In(port(BufId.ACC)),
            "start_rd": In(port(BufId.START)),
            "rows_rd": In(port(BufId.ROWS)),
            "out": Out(stream.Signature(lane_in_layout(cfg))),
            "acc_we": Out(1),
            "acc_w_addr": Out((shapes[BufId.ACC][1] - 1).bit_length()),
            "drained": Out(1),
            "leftover": Out(1),
            "issue": Out(1),
            "acc_rd_strobe": Out(1),
            "start_rd_strobe": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, desc = self.cfg, self.desc
        srcs = (self.spike, self.mac)
        # per array: rows committed and not yet issued, the slot of the next one to issue,
        # the slot of the row being issued
        depths = {"spike": cfg.spike_fifo_depth, "mac": cfg.row_fifo_depth}
        avail = [Signal(range(d + 1), name=f"avail_{n}") for n, d in depths.items()]
        nxt = [Signal(range(d), name=f"next_{n}") for n, d in depths.items()]
        cur = [Signal.like(x, name=f"cur_{i}") for i, x in enumerate(nxt)]
        r = Signal(range(cfg.max_rows + 1))  # rows issued
        # the next lane of the row being issued, 0 between rows; whether it is the row's last
        # lane is a register too (``last_j``), worked out a lane ahead: the add and compare on
        # ``j`` fed ``going`` and the enables behind it in one cycle (a 64-lane critical path)
        j = Signal(range(cfg.lanes))
        last_j = Signal()  # lane j is the last (valid while going)
        going = Signal()  # a row is being issued
        acc_addr = len(self.acc_w_addr)
        c1_valid, c1_lane, c1_last = Signal(), Signal(range(cfg.lanes)), Signal()
        c1_addr = Signal(acc_addr)
        c1_slot = [Signal.like(x, name=f"c1_slot{i}") for i, x in enumerate(nxt)]
        c2_valid, c2_lane, c2_last = Signal(), Signal.like(c1_lane), Signal()
        c2_addr = Signal(acc_addr)
        c2_mrow = Signal.like(self.rows_rd.data)
        c2 = {k: Signal(signed(cfg.acc_bits), name=f"c2_{k}") for k in ("start", "spike", "mac")}
        # C2 moves unless the output unit does not take its lane
        adv = ~(c2_valid & ~desc.keep & ~self.out.ready)
        begin = Signal()  # C0 starts row r
        issue = Signal()  # C0 issues a lane
        lane = j
        last = Mux(going, last_j, desc.n_active <= 1)
        m.d.comb += [begin.eq(self.active & adv & ~going & (r < desc.rows) & (avail[0] != 0)
                              & (avail[1] != 0)),
                     issue.eq(begin | (adv & going)), self.issue.eq(issue)]
        addr = Signal.like(c1_addr)
        m.d.comb += [
            addr.eq((desc.row_base + r) * cfg.lanes + lane),
            self.acc_rd.addr.eq(addr), self.acc_rd.en.eq(issue & desc.resume),
            self.start_rd.addr.eq(lane), self.start_rd.en.eq(issue & ~desc.resume),
            self.rows_rd.addr.eq(desc.row_base + r), self.rows_rd.en.eq(begin),
            self.acc_rd_strobe.eq(issue & desc.resume),
            self.start_rd_strobe.eq(issue & ~desc.resume),
        ]
        for i in range(2):
            m.d.sync += avail[i].eq(avail[i] + srcs[i].commit - begin)
            with m.If(begin):
                d = list(depths.values())[i]
                m.d.sync += [cur[i].eq(nxt[i]), nxt[i].eq(Mux(nxt[i] == d - 1, 0, nxt[i] + 1))]
        with m.If(issue):
            m.d.sync += [j.eq(Mux(last, 0, lane + 1)), last_j.eq(lane + 2 >= desc.n_active),
                         going.eq(~last)]
            with m.If(last):
                m.d.sync += r.eq(r + 1)
        with m.If(self.start):  # no lane is issued then (not yet active)
            m.d.sync += r.eq(0)
        with m.If(adv):
            m.d.sync += [c1_valid.eq(issue), c1_lane.eq(lane), c1_last.eq(last),
                         c1_addr.eq(addr)]
            for i in range(2):
                m.d.sync += c1_slot[i].eq(Mux(going, cur[i], nxt[i]))
        # C1: lane c1_lane's operands; the row's slots are free once its last lane's are
        # registered
        for i in range(2):
            m.d.comb += [srcs[i].slot.eq(c1_slot[i]), srcs[i].lane.eq(c1_lane),
                         srcs[i].release.eq(c1_valid & c1_last & adv)]
        with m.If(adv):
            m.d.sync += [c2_valid.eq(c1_valid), c2_lane.eq(c1_lane), c2_last.eq(c1_last),
                         c2_addr.eq(c1_addr),
                         c2["start"].eq(Mux(desc.resume, self.acc_rd.data,
                                            self.start_rd.data)),
                         c2["spike"].eq(self.spike.data), c2["mac"].eq(self.mac.data),
                         c2_mrow.eq(self.rows_rd.data)]
        # C2: the sum of lane c2_lane
        summed = Signal(signed(cfg.acc_bits))
        m.d.comb += summed.eq(c2["start"] + c2["spike"] + c2["mac"])
        m.d.comb += [self.out.payload.acc.eq(summed), self.out.payload.mrow.eq(c2_mrow),
                     self.out.payload.lane.eq(c2_lane), self.out.payload.last.eq(c2_last),
                     self.out.valid.eq(c2_valid & ~desc.keep),
                     self.acc_we.eq(c2_valid & desc.keep), self.acc_w_addr.eq(c2_addr),
                     self.drained.eq((r == desc.rows) & ~c1_valid & ~c2_valid),
                     self.leftover.eq((avail[0] != 0) | (avail[1] != 0))]
        return m
