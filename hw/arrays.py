"""The two compute arrays: a multiplier-free spike-accumulate array and an integer MAC array.

Both read weight rows from the shared weight buffer (one row = the weights of input ``k``
for the ``lanes`` output channels of the tile) through their own read port, and each
produces its partial sums for a row of the activation matrix; the combiner adds the two and
the start value lane by lane (``docs/hw.md``).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from accel.config import AccelConfig
from accel.layouts import (
    MacOp,
    SpikeOp,
    mac_event_layout,
    spike_event_layout,
    spike_vector_layout,
    weight_row_layout,
)
from models.encodings import TTFS_KINDS

from .rings import rows_signature


class SpikeArray(wiring.Component):
    """Multiplier-free spike-accumulate array: ``lanes`` adders and, per lane, the synaptic
    current I and membrane V of ``spike_rows`` rows (row slots) in two small memories.

    Takes one event per cycle (three-stage pipeline: weight read; the weights and the
    slot's I and V registered; add and write back, the result forwarded to the next event
    if it has the same slot). Each event names a row slot. With ``ttfs`` set it runs the
    two-level TTFS neuron (a spike adds its weight row into the slot's I, ``STEP`` adds I
    into V); otherwise (rate, graded, ternary) spikes add straight into V. Silent inputs
    send no event, so work is proportional to spikes plus steps.

    Weight fetches are shared: the host orders a slot group's spikes by time step, then
    input, then slot, and a SPIKE of the input whose row the weight port holds (the
    previous event was a SPIKE of the same ``k``) reuses it instead of reading the buffer
    again, so one read serves every row that spikes on that input at that step. A STEP or
    END ends the reuse. Whether an event repeats the row is decided a stage ahead, by the
    register that feeds the array (:func:`row_reuse`, the ``reuse`` input), so the weight
    read enable is one gate from flip-flops (timing: it fans out to every block of the
    weight buffer, across the die). The lane registers are as wide as the contract's bounds
    for one K tile (``cur_bits``, ``mem_bits``); a slot is zero until its first write after
    an END or a reset (``live_i``, ``live_v``), whatever its memory holds.

    The stages have no enable: an END waits at the array's input until the ring of
    finished rows (``hw.rings.RowRing``, ``spike_fifo_depth`` rows, freed by ``release``)
    has room for it counting the ENDs already in the stages, so an END never waits in the
    last stage and ``out`` is never refused (timing: a stall from the ring's count would
    enable every lane's stage registers, a net across the die at 64 lanes). The held END
    reaches the ring :data:`accel.cycles.SPIKE_HOLD` cycles after it is taken.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "ev": In(stream.Signature(spike_event_layout(cfg))),
            #: a finished row (at an END): the ring always has room, ``ready`` is not read
            "out": Out(stream.Signature(spike_vector_layout(cfg))),
            "release": In(1),  #: the ring frees its oldest row (room from the next cycle)
            #: with ``ev``: the event repeats the weight row the port holds (:func:`row_reuse`)
            "reuse": In(1),
            "ttfs": In(1),
            "w_addr": Out(cfg.k_bits),
            "w_en": Out(1),
            "w_data": In(weight_row_layout(cfg)),
            "busy": Out(1),
            "idle": Out(1),  #: no event in the pipeline
            "spike": Out(1),  #: strobe: one spike event executed
            "step": Out(1),  #: strobe: one membrane step (V += I) executed
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        slots = cfg.spike_rows
        # one row of I (V) per slot, all lanes side by side (LUT RAM, asynchronous read)
        m.submodules.cur = cur = memory.Memory(
            shape=data.ArrayLayout(signed(cfg.cur_bits), cfg.lanes), depth=slots, init=[])
        m.submodules.mem = mem = memory.Memory(shape=spike_vector_layout(cfg), depth=slots,
                                               init=[])
        cur_rd, mem_rd = cur.read_port(domain="comb"), mem.read_port(domain="comb")
        cur_wr, mem_wr = cur.write_port(), mem.write_port()
        live_i, live_v = Signal(slots), Signal(slots)
        # three stages, one event per cycle: the weight read (s1); the weights registered
        # and the slot's I and V read and registered (s2); the add and the write back (s3).
        # A slot's read-modify-write spans two cycles, so no path runs from the slot
        # address through the LUT RAM read and the adder into the write (timing); an
        # event whose slot s3 is writing takes s3's result instead of the memory's
        # (forwarding). The flags that steer s2 are computed a stage earlier (s1 -> s2),
        # from registers, so the slot address reaches nothing but the LUT RAMs.
        s2, s3 = (SimpleNamespace(valid=Signal(name=f"{n}_valid"),
                                  op=Signal(SpikeOp, name=f"{n}_op"), neg=Signal(name=f"{n}_neg"),
                                  slot=Signal(cfg.slot_bits, name=f"{n}_slot"),
                                  wr_i=Signal(name=f"{n}_wr_i"), wr_v=Signal(name=f"{n}_wr_v"))
                  for n in ("s2", "s3"))
        # s2's flags: take s3's new I (V) (same slot, s3 writes it), or read the memory
        # (the slot's I (V) is live: written since its END), or zero
        # (one-hot: a forwarded slot is not read; each select a register of its own, so
        # that every lane's bit takes the two selects straight from flip-flops)
        fwd_i, fwd_v = Signal(name="fwd_i"), Signal(name="fwd_v")
        keep_i, keep_v = Signal(name="keep_i"), Signal(name="keep_v")
        s3_end = Signal()  # s3 holds an END (``s3.valid & s3.op == END``)
        ev = self.ev.payload
        is_spike = self.ev.valid & (ev.op == SpikeOp.SPIKE)
        # ring slots neither holding a finished row nor promised to an END in the stages:
        # an END is taken only while one is left (``roomy``, registered: the count's
        # compare does not reach the reader's stall)
        depth = cfg.spike_fifo_depth
        room = Signal(range(depth + 1), init=depth)
        roomy = Signal(init=1)
        is_end = ev.op == SpikeOp.END
        take = self.ev.valid & (~is_end | roomy)
        room_nxt = Signal.like(room)
        m.d.comb += room_nxt.eq(room - (take & is_end) + self.release)
        m.d.sync += [room.eq(room_nxt), roomy.eq(room_nxt != 0)]
        m.d.comb += [
            self.ev.ready.eq(~is_end | roomy),
            self.w_addr.eq(ev.k),
            # only spikes read a weight row, and only if the port does not hold it already
            self.w_en.eq(is_spike & ~self.reuse),
            self.out.valid.eq(s3_end),
            self.busy.eq(s3.valid),
            self.idle.eq(~s2.valid & ~s3.valid),
            cur_rd.addr.eq(s2.slot), mem_rd.addr.eq(s2.slot),
            cur_wr.addr.eq(s3.slot), mem_wr.addr.eq(s3.slot),
            cur_wr.en.eq(s3.wr_i), mem_wr.en.eq(s3.wr_v),  # only SPIKE and STEP write
        ]
        # which memory an event in s1 will write when it reaches s3
        ev_spike, ev_step = ev.op == SpikeOp.SPIKE, ev.op == SpikeOp.STEP
        ev_wr_i = self.ev.valid & ev_spike & self.ttfs
        ev_wr_v = self.ev.valid & (ev_step | (ev_spike & ~self.ttfs))
        # a slot's I (V) reads as zero until its first write after an END or a reset,
        # whatever the memory holds: one bit per slot instead of clearing every lane. These
        # are the live bits after this cycle's s3 (an END frees its slot, a write sets it)
        live_i_nxt, live_v_nxt = Signal(slots), Signal(slots)
        m.d.comb += [live_i_nxt.eq(live_i), live_v_nxt.eq(live_v)]
        with m.If(s3.valid):
            with m.If(s3.wr_i):
                m.d.comb += live_i_nxt.bit_select(s3.slot, 1).eq(1)
            with m.If(s3.wr_v):
                m.d.comb += live_v_nxt.bit_select(s3.slot, 1).eq(1)
            with m.If(s3.op == SpikeOp.END):
                m.d.comb += [live_i_nxt.bit_select(s3.slot, 1).eq(0),
                             live_v_nxt.bit_select(s3.slot, 1).eq(0)]
        m.d.sync += [live_i.eq(live_i_nxt), live_v.eq(live_v_nxt)]
        # x - w as x + ~w + 1: the inversion is one LUT per bit before the weight register
        # (merged with the weight buffer's sign extension) and the +1 the adder's carry-in,
        # no negation carry chain
        adds = Signal(weight_row_layout(cfg), name="s3_w")
        flip = s2.neg.replicate(cfg.weight_bits)
        i_old = Signal(data.ArrayLayout(signed(cfg.cur_bits), cfg.lanes), name="s3_i")
        v_old = Signal(spike_vector_layout(cfg), name="s3_v")
        # every stage moves on every cycle (a held END leaves a bubble behind it)
        # the event in s1 meets, in s3, the event now in s2: same slot?
        same = s2.valid & (ev.slot == s2.slot)
        ends = same & (s2.op == SpikeOp.END)  # s2's END frees the slot first
        # an END in s3 is a register of its own: the ring's write enable, on every lane's
        # LUT RAM, leaves a flip-flop (timing)
        m.d.sync += s3_end.eq(s2.valid & (s2.op == SpikeOp.END))
        m.d.sync += [s2.valid.eq(take), s2.op.eq(ev.op), s2.neg.eq(ev.neg),
                     s2.slot.eq(ev.slot), s2.wr_i.eq(ev_wr_i), s2.wr_v.eq(ev_wr_v),
                     fwd_i.eq(same & s2.wr_i), fwd_v.eq(same & s2.wr_v),
                     keep_i.eq(live_i_nxt.bit_select(ev.slot, 1) & ~ends & ~(same & s2.wr_i)),
                     keep_v.eq(live_v_nxt.bit_select(ev.slot, 1) & ~ends & ~(same & s2.wr_v)),
                     s3.valid.eq(s2.valid), s3.op.eq(s2.op), s3.neg.eq(s2.neg),
                     s3.slot.eq(s2.slot), s3.wr_i.eq(s2.wr_i), s3.wr_v.eq(s2.wr_v)]
        m.d.sync += [adds[j].eq((self.w_data[j].as_unsigned() ^ flip).as_signed())
                     for j in range(cfg.lanes)]
        # s2's read (or s3's result, or zero) into s3's operand registers
        m.d.sync += [i_old[j].eq(Mux(fwd_i, cur_wr.data[j], 0) | Mux(keep_i, cur_rd.data[j], 0))
                     for j in range(cfg.lanes)]
        m.d.sync += [v_old[j].eq(Mux(fwd_v, mem_wr.data[j], 0) | Mux(keep_v, mem_rd.data[j], 0))
                     for j in range(cfg.lanes)]
        for j in range(cfg.lanes):
            m.d.comb += [self.out.payload[j].eq(v_old[j]),
                         cur_wr.data[j].eq(i_old[j] + adds[j] + s3.neg)]
        # V takes I on STEP (TTFS) or the weight on SPIKE (the other kinds); a config without
        # one of the two families builds no adder for it
        timed = any(e in TTFS_KINDS for e in cfg.encodings)
        direct = any(e not in (*TTFS_KINDS, "int") for e in cfg.encodings)
        for j in range(cfg.lanes):
            step_v, spike_v = v_old[j] + i_old[j], v_old[j] + adds[j] + s3.neg
            m.d.comb += mem_wr.data[j].eq(
                Mux(s3.op == SpikeOp.STEP, step_v, spike_v) if timed and direct
                else step_v if timed else spike_v)
        with m.If(s3.valid):
            with m.Switch(s3.op):
                with m.Case(SpikeOp.SPIKE):
                    m.d.comb += self.spike.eq(1)
                with m.Case(SpikeOp.STEP):
                    m.d.comb += self.step.eq(1)
        return m


def row_reuse(m: Module, taken, ev, k) -> Signal:
    """The :class:`SpikeArray`'s ``reuse`` for the event entering the register that feeds
    it: ``ev`` (a ``spike_event_layout`` view) with weight row ``k`` enters when ``taken``.
    It repeats the row the weight port holds when it is a SPIKE and the event that entered
    before it was a SPIKE of the same row: every event that enters reaches the array in
    order (the array takes all but an END, which reads no row), so the event before it in
    the register is the event before it at the port. Register the result beside the event;
    the comparison ends there instead of in the weight buffer's read enable (timing)."""
    prev_k = Signal(len(k), name="reuse_prev_k")
    prev_spike = Signal(name="reuse_prev_spike")  # the event before was a SPIKE
    spike = ev.op == SpikeOp.SPIKE
    with m.If(taken):
        m.d.sync += [prev_k.eq(k), prev_spike.eq(spike)]
    reuse = Signal(name="reuse_next")
    m.d.comb += reuse.eq(spike & prev_spike & (k == prev_k))
    return reuse


class MacArray(wiring.Component):
    """Integer MAC array: ``mac_units`` multipliers sweep a weight row in ``lanes/mac_units``
    cycles, adding ``(w * q) << shift`` into the row's accumulators. The weight buffer's
    address and read enable are registers (``w_addr``, ``w_en``: the event taken in the
    last cycle of the current row is read in the first of its own), so rows follow back to
    back and the read enable reaches the block RAMs from a flip-flop (timing: it fans out
    to every block of the buffer, across the die). The row read, the row registered at the
    block RAM's output, the selected weights, then the products come before the shift and
    add (a five-stage datapath, for timing: the row's words reach the select from a
    register rather than from the block RAMs' pins), so a row's END takes
    :data:`accel.cycles.MAC_DRAIN` more cycles when MAC events precede it.

    The accumulators are ``row_fifo_depth`` rows of LUT RAM, one word per cycle of the sweep
    holding ``mac_units`` lanes (``rows``, :func:`hw.rings.rows_signature`): the array adds
    into one row while the combiner reads finished ones lane by lane, and waits with its
    next event while every row holds a finished row. A row's first MAC event writes its
    products over whatever the LUT RAM holds, and a row with no MAC event reads as zero
    (one bit per row, ``has_mac``), so a row is never cleared lane by lane."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "ev": In(stream.Signature(mac_event_layout(cfg))),
            "rows": Out(rows_signature(signed(cfg.acc_bits), cfg.row_fifo_depth, cfg.lanes)),
            "w_addr": Out(cfg.k_bits),
            "w_en": Out(1),
            "w_data": In(weight_row_layout(cfg)),
            #: weights are whole rows; otherwise only the low ``narrow_bits`` of each are
            #: valid, and the array sign-extends the weight each unit selects
            "wide": In(1),
            "busy": Out(1),
            "idle": Out(1),  #: no event and no product in the pipeline
            "mac": Out(1),  #: strobe: ``mac_units`` multiplies executed this cycle
            "row": Out(1),  #: strobe: one MAC event (weight row) finished
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        banks, mc, units = cfg.row_fifo_depth, cfg.mac_cycles, cfg.mac_units
        m.submodules.acc = acc = memory.Memory(
            shape=data.ArrayLayout(signed(cfg.acc_bits), units), depth=banks * mc, init=[])
        rmw, out_rd = acc.read_port(domain="comb"), acc.read_port(domain="comb")
        acc_wr = acc.write_port()
        has_mac = Signal(banks)  # the finished row in each slot had a MAC event
        later = Signal()  # a MAC event of row wb has been swept: the next one adds to it
        wb = Signal(range(banks))  # the row being accumulated
        count = Signal(range(banks + 1))  # finished rows not yet released
        # ``take`` (the event stall, the weight read enable) decides from flip-flops only
        # (timing): whether a row is free, the sweep's last cycle and products in flight
        # are registers kept beside the counts they summarise
        free = Signal(init=1)  # count < banks: row wb holds no finished row
        valid = Signal()
        op = Signal(MacOp)
        q = Signal(signed(cfg.act_bits))
        shift = Signal(unsigned(cfg.shift_bits))
        c = Signal(range(mc))
        last = Signal(init=mc == 1)  # c == mc - 1
        is_end = op == MacOp.END
        # four stages per word of the sweep, each within a cycle (timing): the weight row is
        # registered (BRAM -> register), the selected weights (select), the products
        # (multiply), then they are shifted and added (shift -> add); END waits for the
        # last pending product
        b_valid = Signal()  # weight row being read (the block RAM's output next cycle)
        r_valid = Signal()  # weight row registered
        a_valid = Signal()  # selected weights registered
        p_valid = Signal()  # products registered
        pending = Signal()  # b_valid | r_valid | a_valid | p_valid
        run = valid & free  # the event in hand may proceed
        done = run & Mux(is_end, ~pending, last)  # event finishes now
        take = ~valid | done
        commit = done & is_end
        m.d.comb += [
            self.ev.ready.eq(take),
            self.busy.eq(run),  # an event waiting for a free row is not work
            self.idle.eq(~valid & ~pending),
            self.rows.commit.eq(commit),
        ]
        # the port reads the row of the event taken a cycle ago, from registers
        m.d.sync += self.w_en.eq(take & self.ev.valid & (self.ev.payload.op == MacOp.MAC))
        with m.If(take):
            m.d.sync += [self.w_addr.eq(self.ev.payload.k), valid.eq(self.ev.valid),
                         op.eq(self.ev.payload.op), q.eq(self.ev.payload.q),
                         shift.eq(self.ev.payload.shift), c.eq(0), last.eq(mc == 1)]
        with m.Elif(run & ~is_end):  # not the last cycle (that one is ``done``)
            m.d.sync += [c.eq(c + 1), last.eq(c == mc - 2)]
        # one multiplier per unit: unit u takes lane c * mac_units + u in cycle c (selecting
        # the weight before the multiply keeps synthesis from building one per lane)
        # the row register follows the block RAM's output every cycle: the port holds its
        # data between reads (the next row is read in the first cycle of its sweep, ``b``,
        # so the current row's last word is registered from it the cycle after), and
        # ``r_row`` is the row of the word ``r_c`` selects from
        r_row = Signal.like(self.w_data, name="r_row")
        b_c, r_c, a_c, p_c = (Signal.like(c, name=n) for n in ("b_c", "r_c", "a_c", "p_c"))
        b_shift, r_shift, a_shift, p_shift = (Signal.like(shift, name=n)
                                              for n in ("b_shift", "r_shift", "a_shift", "p_shift"))
        b_q, r_q, a_q = (Signal.like(q, name=n) for n in ("b_q", "r_q", "a_q"))
        b_live, r_live, a_live, p_live = (Signal(name=n) for n in
                                          ("b_live", "r_live", "a_live", "p_live"))
        m.d.sync += r_row.eq(self.w_data)
        prods = []
        for u in range(units):
            w_sel = Signal(signed(cfg.weight_bits), name=f"w_sel{u}")
            with m.Switch(r_c):
                for cyc in range(mc):
                    with m.Case(cyc):
                        m.d.comb += w_sel.eq(r_row[cyc * units + u])
            if cfg.narrow_bits < cfg.weight_bits:
                w_ext = Signal.like(w_sel, name=f"w_ext{u}")
                m.d.comb += w_ext.eq(Mux(self.wide, w_sel, w_sel[:cfg.narrow_bits].as_signed()))
                w_sel = w_ext
            a_w = Signal.like(w_sel, name=f"a_w{u}")
            prod = Signal(signed(cfg.weight_bits + cfg.act_bits), name=f"prod{u}")
            with m.If(r_valid):
                m.d.sync += a_w.eq(w_sel)
            with m.If(a_valid):
                m.d.sync += prod.eq(a_w * a_q)
            prods.append(prod)
        m.d.sync += [b_valid.eq(run & ~is_end), r_valid.eq(b_valid), a_valid.eq(r_valid),
                     p_valid.eq(a_valid),
                     pending.eq((run & ~is_end) | b_valid | r_valid | a_valid)]
        with m.If(run & ~is_end):
            m.d.sync += [b_c.eq(c), b_shift.eq(shift), b_q.eq(q), b_live.eq(later)]
            m.d.comb += self.mac.eq(1)
            m.d.comb += self.row.eq(last)
        with m.If(b_valid):
            m.d.sync += [r_c.eq(b_c), r_shift.eq(b_shift), r_q.eq(b_q), r_live.eq(b_live)]
        with m.If(r_valid):
            m.d.sync += [a_c.eq(r_c), a_shift.eq(r_shift), a_q.eq(r_q), a_live.eq(r_live)]
        # read-modify-write of the word the pending products belong to. Every MAC event
        # sweeps all ``mc`` words of row ``wb``, so a word holds a sum exactly when an
        # earlier MAC event of the row was swept (``later``, set on a MAC event's last
        # cycle, cleared when the row commits): that bit travels with the products
        # (``*_live``), and the add needs no per-word lookup (timing: a word-indexed
        # ``touched`` vector through a banks x mc mux was the 64-lane critical path). With
        # one sweep cycle a row, consecutive products add into the same word: the LUT RAM's
        # read port is asynchronous, so it sees the write of the cycle before. ``wb`` holds
        # while products are in flight (a row commits only once they are added).
        word = Signal(range(banks * mc))
        m.d.comb += [word.eq(wb * mc + p_c), rmw.addr.eq(word), acc_wr.addr.eq(word),
                     acc_wr.en.eq(p_valid)]
        with m.If(a_valid):
            m.d.sync += [p_c.eq(a_c), p_shift.eq(a_shift), p_live.eq(a_live)]
        for u in range(units):
            m.d.comb += acc_wr.data[u].eq(Mux(p_live, rmw.data[u], 0) + (prods[u] << p_shift))
        with m.If(done & ~is_end):
            m.d.sync += later.eq(1)
        with m.If(commit):  # the slot's row is finished: whether it holds sums or reads 0
            m.d.sync += [later.eq(0), has_mac.bit_select(wb, 1).eq(later)]
            m.d.sync += wb.eq(Mux(wb == banks - 1, 0, wb + 1))
        # the combiner's lane: word (slot, lane // units), unit lane % units
        lane_u = units.bit_length() - 1  # units and lanes are powers of two
        rd_word = Signal(range(banks * mc))
        m.d.comb += [rd_word.eq(self.rows.slot * mc + (self.rows.lane >> lane_u)),
                     out_rd.addr.eq(rd_word)]
        unit_data = out_rd.data[self.rows.lane[:lane_u]] if lane_u else out_rd.data[0]
        m.d.comb += self.rows.data.eq(Mux(has_mac.bit_select(self.rows.slot, 1), unit_data, 0))
        count_nxt = Signal.like(count)
        m.d.comb += count_nxt.eq(count + commit - self.rows.release)
        m.d.sync += [count.eq(count_nxt), free.eq(count_nxt < banks)]
        return m
