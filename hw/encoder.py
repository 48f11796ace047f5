"""The on-chip spike encoder: a row group's 4-bit TTFS codes in, its spike-event words out.

The host sends codes at 4 bits each (``BufId.CODES``, ``accel.layouts.code_words``) and an
``EXPAND`` request (``accel.protocol.EXPAND_ARGS``) instead of the event words, which take
2 to 3 bytes a spike plus a STEP per row and time step. The encoder writes exactly the
words ``accel.tiling.spike_words`` makes for those codes (TTFS, one group of
``spike_rows`` rows): for each time step ``t``, for each input ``k``, for each row (slot)
``s``, a SPIKE when the code spikes at step ``t``; then a STEP per row; after the window an
END per row. When each code spikes, and with which sign, is a table made at elaboration
by ``models.encodings.spike_events`` (``accel.encoder.spike_table``), one row per encoding
it runs: the TTFS timing rule is not written again here.

It scans every code once per time step, one code a cycle, so an EXPAND takes
``accel.encoder.encode_cycles`` cycles: ``rows x (k x steps + steps + 1)`` plus a fixed
overhead. That is slower than a counting sort, and it does not matter here: the link
takes longer to bring the codes than the scan takes to expand them.

With ``EXPAND_ARGS.mac`` it makes a tile's MAC-event words instead (``accel.encoder.
mac_groups``): the code buffer holds a table of the tile's integer channels (each entry its
weight row and shift) from word 0 and, after it, the rows' int8 values, a byte each, row
after row; for
each row, each channel in table order, it reads the channel's entry, then its value, and
writes the MAC word (two cycles a word), then an END: ``accel.encoder.mac_cycles``.

It trusts nothing: a row count, width or window the code buffer or the event buffer
cannot hold, a read past the code buffer, a window no encoding it runs has, a code
outside the encoding, or a number of words other than the host's ``count`` ends the
request with ``bad`` (the executor answers ``ERR_ARG``); it never writes outside ``dst ..
dst + count - 1``.

The encoder writes the spike-event (or MAC-event) buffer through the engine's host bus
(``hw.engine.host_bus_signature``) like the executor and the copier do, while the
executor waits for it (``hw.top.Top`` shares the bus), and reads the code buffer through
a read port of its own (``hw.engine.code_read_signature``: the code buffer is not
host-readable, and the host's read data passes a select across every buffer).
"""

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accel.config import CODE_BITS, CODES_PER_WORD, AccelConfig
from accel.encoder import TABLE_BITS, VALUE_BITS, WORD_BITS, mac_expandable, spike_table
from accel.layouts import BufId, MacOp, SpikeOp, mac_event_layout, spike_event_layout
from accel.protocol import EXPAND_ARGS

from .engine import code_read_signature, host_bus_signature

#: Bits of a code's index within its word (``CODES_PER_WORD`` is a power of two).
WORD_SHIFT = (CODES_PER_WORD - 1).bit_length()
#: Bits of a MAC EXPAND's table entry's index within its word, and of a value's.
TABLE_SHIFT = (WORD_BITS // TABLE_BITS - 1).bit_length()
VALUE_SHIFT = (WORD_BITS // VALUE_BITS - 1).bit_length()


class SpikeEncoder(wiring.Component):
    """``start`` takes an ``EXPAND``'s arguments; ``busy`` until the cycle after ``done``,
    a pulse with ``bad`` (the request is refused) valid beside it. ``host``: the engine's
    host bus (its write half: ``SPIKE_EV``); ``codes``: its own read port on the code
    buffer. ``word_wr``: a word was written (the ``enc_wr`` counter)."""

    def __init__(self, cfg: AccelConfig):
        if not cfg.spike_encoder:
            raise ValueError("SpikeEncoder needs AccelConfig(spike_encoder=True)")
        self.cfg = cfg
        super().__init__({
            "start": In(stream.Signature(EXPAND_ARGS)),
            "busy": Out(1), "done": Out(1), "bad": Out(1),
            "host": Out(host_bus_signature(cfg)),
            "codes": In(code_read_signature(cfg)),
            "word_wr": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        args = Signal(EXPAND_ARGS)
        rows_m1 = Signal(8)  # the last slot
        k_m1 = Signal(16)  # the last input
        stride = Signal(16)  # code-buffer words per row
        k = Signal(16)
        s = Signal(8)
        t = Signal(8)  # the time step
        table = spike_table(cfg)  # (signed, steps) -> what each raw code does
        enc_id = Signal(range(len(table) + 1))  # the request's row of it (len: none)
        rowbase = Signal(range(cfg.code_words + 1))  # the word of row s's first code
        bad = Signal()
        room = Signal(24)  # words the host's count still allows
        wa = Signal(24)  # next event-buffer address
        ev = spike_event_layout(cfg)

        # the item pipeline: A issues (a code read, or a STEP / END), B has the read's
        # word at the block RAM's output, R has it registered, C has the code and writes
        # the word if it spikes (timing: the block RAM's clock-to-out, 5.8 ns, and the
        # code select were one path, the 16-lane design's critical one)
        kind_a = Signal(SpikeOp)
        valid_a = Signal()
        vb, vr, vc = Signal(), Signal(), Signal()
        kind_b, kind_r, kind_c = Signal(SpikeOp), Signal(SpikeOp), Signal(SpikeOp)
        k_b, k_r, k_c = Signal(16), Signal(16), Signal(16)
        s_b, s_r, s_c = Signal(8), Signal(8), Signal(8)
        t_b, t_r, t_c = Signal(8), Signal(8), Signal(8)
        word_r = Signal.like(Value.cast(self.codes.data))
        code_c = Signal(CODE_BITS)
        m.d.sync += [vb.eq(valid_a), kind_b.eq(kind_a), k_b.eq(k), s_b.eq(s), t_b.eq(t),
                     vr.eq(vb), kind_r.eq(kind_b), k_r.eq(k_b), s_r.eq(s_b), t_r.eq(t_b),
                     word_r.eq(self.codes.data),
                     vc.eq(vr), kind_c.eq(kind_r), k_c.eq(k_r), s_c.eq(s_r), t_c.eq(t_r)]
        m.d.sync += code_c.eq(word_r.word_select(k_r[:WORD_SHIFT],
                                                 CODE_BITS))
        m.d.comb += self.codes.addr.eq(rowbase + (k >> WORD_SHIFT))

        # stage C: the code's spike, from the table (models.encodings.spike_events)
        neg, fires, invalid = Signal(), Signal(), Signal()
        when = Signal(8)  # the step it spikes at
        with m.Switch(Cat(code_c, enc_id)):
            for i, row in enumerate(table.values()):
                for raw, what in enumerate(row):
                    with m.Case(raw | (i << CODE_BITS)):
                        if what is None:
                            m.d.comb += invalid.eq(1)
                        elif what[0] >= 0:
                            m.d.comb += [fires.eq(1), when.eq(what[0]), neg.eq(what[1])]
        is_read = kind_c == SpikeOp.SPIKE
        emit = vc & (~is_read | (fires & (when == t_c)))
        out = Signal(ev)
        m.d.comb += [out.op.eq(kind_c), out.slot.eq(s_c),
                     out.k.eq(Mux(is_read, k_c, 0)), out.neg.eq(is_read & neg)]
        with m.If(emit & (room != 0)):
            m.d.comb += [self.host.wr_en.eq(1), self.host.wr_buf.eq(BufId.SPIKE_EV),
                         self.host.wr_addr.eq(wa), self.host.wr_data.eq(out),
                         self.word_wr.eq(1)]
            m.d.sync += [room.eq(room - 1), wa.eq(wa + 1)]
        with m.If((emit & (room == 0)) | (vc & is_read & invalid)):
            m.d.sync += bad.eq(1)

        mac = mac_expandable(cfg)
        if mac:
            mac_check, mac_scan = self._mac(m, args, bad, room, wa)
        drain = Signal(2)
        with m.FSM():
            with m.State("IDLE"):
                # only the arguments are taken here: the executor's start is its state
                # machine's decode, from across the die, and it fanned out to every
                # register below as their enable (timing: 64 lanes at 71.6 MHz)
                m.d.comb += self.start.ready.eq(1)
                with m.If(self.start.valid):
                    m.d.sync += [args.eq(self.start.payload), bad.eq(0)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                # what the buffers cannot hold, or a window a 4-bit code cannot fill; the
                # scan's registers start from the arguments
                m.d.comb += self.busy.eq(1)
                a = args
                this_id = Signal.like(enc_id)
                m.d.comb += this_id.eq(len(table))
                for i, (signed, steps) in enumerate(table):
                    with m.If((a.signed == signed) & (a.steps == steps)):
                        m.d.comb += this_id.eq(i)
                m.d.sync += [room.eq(a.count), wa.eq(a.dst),
                             rows_m1.eq(a.rows - 1), k_m1.eq(a.k - 1),
                             stride.eq((a.k + CODES_PER_WORD - 1) >> WORD_SHIFT),
                             k.eq(0), s.eq(0), rowbase.eq(0), t.eq(0), enc_id.eq(this_id)]
                wrong = Cat(
                    args.rows == 0, args.rows > cfg.spike_rows,
                    args.k == 0, args.k > cfg.k_tile,
                    this_id == len(table),  # no encoding it runs has this window
                    args.dst + args.count > cfg.spike_event_depth).any()
                if mac:
                    wrong = Mux(args.mac == 0, wrong, mac_check)
                    with m.If(args.mac != 0):
                        mac_scan(m)
                else:
                    wrong = wrong | (args.mac != 0)
                with m.If(wrong):
                    m.d.sync += bad.eq(1)
                    m.next = "DONE"
                with m.Elif(args.mac != 0):
                    m.next = "MAC_TABLE"
                with m.Else():
                    m.next = "READ"
            with m.State("READ"):  # every code of the group, input by input
                m.d.comb += [self.busy.eq(1), valid_a.eq(1), kind_a.eq(SpikeOp.SPIKE),
                             self.codes.en.eq(1)]
                with m.If(s == rows_m1):
                    m.d.sync += [s.eq(0), rowbase.eq(0), k.eq(k + 1)]
                    with m.If(k == k_m1):
                        m.d.sync += k.eq(0)
                        m.next = "STEP"
                with m.Else():
                    m.d.sync += [s.eq(s + 1), rowbase.eq(rowbase + stride)]
            with m.State("STEP"):  # the end of the time step, a STEP per row
                m.d.comb += [self.busy.eq(1), valid_a.eq(1), kind_a.eq(SpikeOp.STEP)]
                m.d.sync += s.eq(s + 1)
                with m.If(s == rows_m1):
                    m.d.sync += [s.eq(0), t.eq(t + 1)]
                    with m.If(t == args.steps - 1):
                        m.next = "END"
                    with m.Else():
                        m.next = "READ"
            with m.State("END"):
                m.d.comb += [self.busy.eq(1), valid_a.eq(1), kind_a.eq(SpikeOp.END)]
                m.d.sync += s.eq(s + 1)
                with m.If(s == rows_m1):
                    m.d.sync += drain.eq(3)
                    m.next = "DRAIN"
            if mac:
                self._mac_states(m, drain)
            with m.State("DRAIN"):  # the last items through B, R and C
                m.d.comb += self.busy.eq(1)
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 1):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1), self.bad.eq(bad | (room != 0))]
                m.next = "IDLE"
        return m

    def _mac(self, m: Module, args, bad: Signal, room: Signal, wa: Signal):
        """The MAC mode's registers and item pipeline: A reads an item's table entry (the
        state ``MAC_TABLE``) and its value (``MAC_VALUE``, which issues the item; an END in
        ``MAC_END``), B has the value word at the block RAM's output (the table word was
        registered the cycle before), C selects the entry and the byte from registered
        words and registers the MAC word, D writes it. Returns the CHECK state's refusal
        and a function that starts the scan's registers from the arguments there."""
        cfg = self.cfg
        self._m = SimpleNamespace(
            j=Signal(16), r=Signal(8), chans_m1=Signal(16), rows_m1=Signal(8),
            valbase=Signal(16), v=Signal(24), issue=Signal(), end=Signal(),
            table_read=Signal(), raddr=Signal(25))
        s = self._m
        check = Cat(args.rows == 0, args.k == 0, args.k > cfg.k_tile, args.steps != 0,
                    args.signed != 0, args.mac != 1,
                    args.dst + args.count > cfg.mac_event_depth).any()

        def scan(m: Module) -> None:
            m.d.sync += [s.j.eq(0), s.r.eq(0), s.v.eq(0), s.chans_m1.eq(args.k - 1),
                         s.rows_m1.eq(args.rows - 1),
                         s.valbase.eq((args.k + (1 << TABLE_SHIFT) - 1) >> TABLE_SHIFT)]

        # a read past the code buffer: refused (the port's address would wrap)
        with m.If(s.table_read | s.issue & ~s.end):
            m.d.comb += [self.codes.addr.eq(s.raddr), self.codes.en.eq(1)]
            with m.If(s.raddr >= cfg.code_words):
                m.d.sync += bad.eq(1)
        table_b = Signal()  # the table word is at the block RAM's output
        tw, vw = Signal(WORD_BITS), Signal(WORD_BITS)
        vb, eb, vc, ec, vd = Signal(), Signal(), Signal(), Signal(), Signal()
        # the entry's place in its word (the channel's), and the byte's (the value's)
        jb, jc = Signal(TABLE_SHIFT), Signal(TABLE_SHIFT)
        bb, bc = Signal(VALUE_SHIFT), Signal(VALUE_SHIFT)
        m.d.sync += [table_b.eq(s.table_read), vb.eq(s.issue), eb.eq(s.end),
                     jb.eq(s.j[:TABLE_SHIFT]), bb.eq(s.v[:VALUE_SHIFT]),
                     vc.eq(vb), ec.eq(eb), jc.eq(jb), bc.eq(bb), vd.eq(vc)]
        with m.If(table_b):
            m.d.sync += tw.eq(self.codes.data)
        with m.If(vb):
            m.d.sync += vw.eq(self.codes.data)
        entry = tw.word_select(jc, TABLE_BITS)
        word = Signal(mac_event_layout(cfg))
        m.d.sync += [word.op.eq(Mux(ec, MacOp.END, MacOp.MAC)),
                     word.k.eq(Mux(ec, 0, entry[:cfg.k_bits])),
                     word.shift.eq(Mux(ec, 0, entry[cfg.k_bits:cfg.k_bits + cfg.shift_bits])),
                     word.q.eq(Mux(ec, 0, vw.word_select(bc, VALUE_BITS).as_signed()))]
        with m.If(vd & (room != 0)):
            m.d.comb += [self.host.wr_en.eq(1), self.host.wr_buf.eq(BufId.MAC_EV),
                         self.host.wr_addr.eq(wa), self.host.wr_data.eq(word),
                         self.word_wr.eq(1)]
            m.d.sync += [room.eq(room - 1), wa.eq(wa + 1)]
        with m.If(vd & (room == 0)):
            m.d.sync += bad.eq(1)
        return check, scan

    def _mac_states(self, m: Module, drain: Signal) -> None:
        """The MAC mode's scan: per row, per channel its table entry's read, then its
        value's; then the row's END."""
        s = self._m
        with m.State("MAC_TABLE"):
            m.d.comb += [self.busy.eq(1), s.table_read.eq(1),
                         s.raddr.eq(s.j >> TABLE_SHIFT)]
            m.next = "MAC_VALUE"
        with m.State("MAC_VALUE"):
            m.d.comb += [self.busy.eq(1), s.issue.eq(1),
                         s.raddr.eq(s.valbase + (s.v >> VALUE_SHIFT))]
            m.d.sync += [s.j.eq(s.j + 1), s.v.eq(s.v + 1)]
            with m.If(s.j == s.chans_m1):
                m.d.sync += s.j.eq(0)
                m.next = "MAC_END"
            with m.Else():
                m.next = "MAC_TABLE"
        with m.State("MAC_END"):
            m.d.comb += [self.busy.eq(1), s.issue.eq(1), s.end.eq(1)]
            m.d.sync += s.r.eq(s.r + 1)
            with m.If(s.r == s.rows_m1):
                m.d.sync += drain.eq(3)
                m.next = "DRAIN"
            with m.Else():
                m.next = "MAC_TABLE"
