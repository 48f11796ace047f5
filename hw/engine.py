"""The GEMM engine: shared on-chip buffers, both arrays, the output unit and the sequencer.

One *descriptor* runs one tile: ``M`` activation rows against the weight rows in the weight
buffer, for ``n_active <= lanes`` output channels. Buffers (``lib.memory.Memory``):

========== ===================================== =========================================
buffer     word                                  written by / read by
========== ===================================== =========================================
WEIGHTS    one weight row (``lanes`` weights)    host / spike array and MAC array (2 ports)
SPIKE_EV   a spike-array event                   host, encoder / spike-event reader only
MAC_EV     a MAC-array event                     host / MAC-event reader
ROWS       per-row requantizer multiplier        host / combiner
ACC        one lane's partial sum of one row     combiner (and host) / combiner
PARAMS     requantizer constants per lane        host / output unit
OUT        one output value                      output unit / host
START      one lane's accumulator start value    host / combiner
========== ===================================== =========================================

Both arrays add into their own partial sums (LUT RAM rows) while they sweep a row; the
combiner adds the two partials to the lane's start value (START, or the row's own partial
sum from the previous K tile in ACC), one lane per cycle, and either writes the sum back
(more K tiles to come) or sends it through the output unit into OUT. Design notes:
``docs/hw.md``.
"""

from __future__ import annotations

from amaranth import (
    Cat,
    Const,
    Elaboratable,
    Module,
    Mux,
    ResetInserter,
    Shape,
    Signal,
)
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from accel.config import AccelConfig
from accel.layouts import (
    HOST_READABLE,
    VIEWS,
    BufId,
    MacOp,
    SpikeOp,
    buffer_shapes,
    descriptor_layout,
    high_row_layout,
    mac_event_layout,
    narrow_row_layout,
    onchip_shapes,
    spike_event_layout,
    spike_vector_layout,
    watchdog_cycles,
    weight_row_layout,
)
from accel.protocol import nbytes

from .arrays import MacArray, SpikeArray, row_reuse
from .bram import ColumnMemory
from .combiner import Combiner
from .neuron import OutputUnit
from .pipe import Register, Skid
from .rings import RowRing

#: Strobes the engine exposes for the counters (name -> meaning).
#: Register stages between the engine's host bus and its buffers' write ports: a word the
#: bus presents in cycle t is in its buffer for a read in cycle t + 1 + HOST_WRITE_STAGES.
HOST_WRITE_STAGES = 1

STROBES = {
    "spike": "unit spike events executed by the spike array",
    "step": "TTFS membrane steps (V += I) executed",
    "mac_row": "weight rows finished by the MAC array",
    "spike_busy": "cycles the spike array has an event in flight",
    "stall": "cycles a descriptor runs with both arrays idle",
    "mac_busy": "cycles the MAC array has an event in flight",
    "w_rd_spike": "weight-buffer row reads by the spike array",
    "w_rd_mac": "weight-buffer row reads by the MAC array",
    "w_rd_hi_spike": "spike-array weight reads that also read the high half of the row",
    "w_rd_hi_mac": "MAC-array weight reads that also read the high half of the row",
    "spike_ev_rd": "spike-event buffer reads",
    "mac_ev_rd": "MAC-event buffer reads",
    "acc_rd": "accumulator-buffer word reads (a lane's sum of the previous K tile)",
    "acc_wr": "accumulator-buffer word writes (a lane's sum for the next K tile)",
    "start_rd": "start-value buffer reads (a lane's accumulator start value)",
    "par_rd": "parameter-buffer reads (a lane's requantizer constants)",
    "out_wr": "output-buffer writes",
}


def strobe_signature() -> wiring.Signature:
    """The engine's counter strobes (:data:`STROBES`), one bit each, from the engine's
    side; ``accel.counters`` names each counter's source among them."""
    return wiring.Signature({name: Out(1) for name in STROBES})


def code_read_signature(cfg: AccelConfig) -> memory.ReadPort.Signature:
    """A read port on the code buffer (``BufId.CODES``), as its memory has it: the spike
    encoder drives ``addr`` and ``en`` and takes ``data`` a cycle later."""
    shape, depth = buffer_shapes(cfg)[BufId.CODES]
    return memory.ReadPort.Signature(addr_width=ceil_log2(depth), shape=shape)


def host_bus_signature(cfg: AccelConfig) -> wiring.Signature:
    """The engine's host port, from the side that drives it (the executor, or the copier
    while a LOAD runs): a word written into any buffer (``wr_*``), and a word read from any
    readable buffer (``rd_*``) and sent byte by byte: ``rd_byte_data`` is byte ``rd_byte``
    of the word read, a cycle after ``rd_data`` (registered per buffer: the read port's
    block RAM output ends there, for timing)."""
    shapes = onchip_shapes(cfg)
    widest = max(Shape.cast(s).width for s, _ in shapes.values())
    abits = max(d for _, d in shapes.values()).bit_length()
    return wiring.Signature({
        "wr_en": Out(1), "wr_buf": Out(BufId), "wr_addr": Out(abits), "wr_data": Out(widest),
        "rd_en": Out(1), "rd_buf": Out(BufId), "rd_addr": Out(abits), "rd_data": In(widest),
        "rd_byte": Out(range(max(1, nbytes(widest)))), "rd_byte_data": In(8),
    })


class _Reader(wiring.Component):
    """Streams words ``base .. base+count-1`` of a memory through a synchronous read port,
    each word registered once more as it leaves the block RAMs.

    ``base`` and ``count`` are taken on ``start`` (the cycle reads nothing): the pointer
    and the end are registers from then on. ``start`` comes only while the reader is idle
    (the engine takes a descriptor once the last one's events are all consumed, or after a
    flush, which empties the reader), so the read enable needs no term of ``start``: the
    descriptor hand-off (the executor's state machine, through the engine's ``active``)
    reaches the pointer's registers only, not the enables of the event buffer's block
    RAMs across the die (timing: that net was 5.9 ns of a 13.9 ns critical path at 64
    lanes).

    Two stages, one enable: the read (the block RAMs' output) and a register of the word
    (``out``), both moving whenever ``out`` is empty or taken. The register ends the block
    RAMs' 5.8 ns clock-to-data near their columns instead of across the die (timing: the
    32,768-deep spike-event buffer's output into the event skid was the 64-lane critical
    path at 72 MHz); it is the extra cycle of ``accel.cycles.FIRST``."""

    def __init__(self, shape, depth: int):
        super().__init__({
            "start": In(1),
            "base": In(range(depth)),
            "count": In(range(depth + 1)),
            "out": Out(stream.Signature(shape)),
            #: the memory's read port (``memory.ReadPort.Signature``, joined with
            #: ``wiring.connect``)
            "port": In(memory.ReadPort.Signature(addr_width=(depth - 1).bit_length(),
                                                 shape=shape)),
            "idle": Out(1),  #: every word up to ``base + count`` delivered
        })
        self._depth = depth

    def elaborate(self, platform):
        m = Module()
        ptr = Signal(range(2 * self._depth + 1))
        end = Signal.like(ptr)
        left = ptr < end
        read = Signal()  # the port's data is a word (read in the last cycle that moved)
        take = ~self.out.valid | self.out.ready
        m.d.comb += [self.port.addr.eq(ptr), self.port.en.eq(take & left),
                     self.idle.eq(~left & ~read & ~self.out.valid)]
        with m.If(self.start):
            m.d.sync += [ptr.eq(self.base), end.eq(self.base + self.count),
                         read.eq(0), self.out.valid.eq(0)]
        with m.Elif(take):
            m.d.sync += [read.eq(left), self.out.valid.eq(read),
                         self.out.payload.eq(self.port.data)]
            with m.If(left):
                m.d.sync += ptr.eq(ptr + 1)
        return m


class WeightBuffer(Elaboratable):
    """The weight buffer: the narrow half (``narrow_row_layout``) and the high half
    (``high_row_layout``) of every row in two memories with one write port for whole rows
    (``weight_row_layout``, what the host writes). :meth:`read_port` gives a port that reads
    whole rows, shaped like a memory's (``memory.ReadPort.Signature``); given ``wide`` it
    reads the high half only while ``wide`` is set and otherwise sign-extends the narrow
    half, so a narrow row read moves half the bits."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.wr_addr = Signal(cfg.k_bits)
        self.wr_data = Signal(weight_row_layout(cfg).size)
        self.wr_en = Signal()
        #: with ``wr_en``: ``wr_data`` is a narrow row (``narrow_row_layout``), written into
        #: the narrow half only (``BufId.WEIGHTS4``)
        self.wr_narrow = Signal()
        self._ports: list = []

    def read_port(self, wide=None, extend: bool = True) -> wiring.PureInterface:
        """A port with ``addr``, ``en`` and ``data`` (a whole row, ``weight_row_layout``), of
        ``memory.ReadPort.Signature`` like ``Memory.read_port()``'s, so that a reader joins
        either with ``wiring.connect``. With ``extend`` False a narrow read leaves the high
        halves stale: the reader sign-extends what it selects (``hw.arrays.MacArray``: per
        unit, not per lane)."""
        cfg = self.cfg
        sig = memory.ReadPort.Signature(addr_width=cfg.k_bits, shape=weight_row_layout(cfg))
        port = sig.create(path=(f"w_rd{len(self._ports)}",))
        self._ports.append((port, wide, extend))
        return port

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        nb, hb = cfg.narrow_bits, cfg.weight_bits - cfg.narrow_bits
        m.submodules.lo = lo = ColumnMemory(shape=narrow_row_layout(cfg),
                                            depth=cfg.weight_depth)
        row = data.View(weight_row_layout(cfg), self.wr_data)
        narrow = data.View(narrow_row_layout(cfg), self.wr_data[:narrow_row_layout(cfg).size])
        lo_wp = lo.write_port()
        m.d.comb += [lo_wp.addr.eq(self.wr_addr), lo_wp.en.eq(self.wr_en)]
        for j in range(cfg.lanes):
            m.d.comb += lo_wp.data[j].eq(Mux(self.wr_narrow, narrow[j], row[j][:nb]))
        if hb:
            m.submodules.hi = hi = ColumnMemory(shape=high_row_layout(cfg),
                                                depth=cfg.weight_depth)
            hi_wp = hi.write_port()
            m.d.comb += [hi_wp.addr.eq(self.wr_addr), hi_wp.en.eq(self.wr_en & ~self.wr_narrow)]
            for j in range(cfg.lanes):
                m.d.comb += hi_wp.data[j].eq(row[j][nb:])
        for p, p_wide, p_extend in self._ports:
            lo_rp = lo.read_port()
            m.d.comb += [lo_rp.addr.eq(p.addr), lo_rp.en.eq(p.en)]
            if not hb:
                for j in range(cfg.lanes):
                    m.d.comb += p.data[j].eq(lo_rp.data[j])
                continue
            hi_rp = hi.read_port()
            wide = 1 if p_wide is None else p_wide
            m.d.comb += [hi_rp.addr.eq(p.addr), hi_rp.en.eq(p.en & wide)]
            for j in range(cfg.lanes):
                whole = Cat(lo_rp.data[j], hi_rp.data[j]).as_signed()
                m.d.comb += p.data[j].eq(Mux(wide, whole, lo_rp.data[j]) if p_extend else whole)
        return m


class Engine(wiring.Component):
    """Buffers + arrays + output unit + sequencer for one descriptor at a time.

    Host access: ``wr`` writes one word of a buffer (it lands the next cycle); ``rd_*``
    reads one (data two cycles later: the request is registered, then the word read).
    ``run`` takes a descriptor; ``done`` pulses when its last result is stored.

    The engine trusts no descriptor: ``fault`` pulses instead of ``done``, and everything
    but the buffer contents returns to its reset state, when the descriptor makes no
    progress for :func:`watchdog_cycles` (fewer row ends than rows), when rows are left
    over once its rows are done (more row ends than rows), when a weight address runs
    past the weight buffer (``w_base`` too large) or, with ``w_half``, into the half of it
    that ``w_base`` is not in, or an outlier shift exceeds ``max_shift``. ``abort`` does the
    same on the host's request.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        shapes = onchip_shapes(cfg)
        self.shapes = shapes
        widest = max(Shape.cast(s).width for s, _ in shapes.values())
        members = {
            "host": In(host_bus_signature(cfg)),
            "strobes": Out(strobe_signature()),
            "run": In(stream.Signature(descriptor_layout(cfg))),
            "done": Out(1),
            "busy": Out(1),
            #: return to idle (from the cycle after next; buffer contents are kept)
            "abort": In(1),
            "fault": Out(1),  #: pulse: the running descriptor was stopped (see below)
            #: the running descriptor may read only the half of the weight buffer that holds
            #: its ``w_base`` (a LOAD is writing the other half): held for the whole RUN
            "w_half": In(1),
        }
        if cfg.spike_encoder:
            #: the spike encoder's read port on the code buffer (``hw.encoder``): its own,
            #: not the host's, whose read data passes the select across every buffer
            members["codes_rd"] = Out(code_read_signature(cfg))
        self.word_bits = widest
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()  # everything here returns to reset on ``flush``, except memory contents
        cfg = self.cfg
        shapes = self.shapes
        flush = Signal()
        mems = {}
        for b, (shape, depth) in shapes.items():
            if b == BufId.WEIGHTS or b in VIEWS:
                continue  # two memories, below; a view uses its buffer's memory
            mems[b] = ColumnMemory(shape=shape, depth=depth)  # columns: accel.bram
            m.submodules[f"buf_{b.name.lower()}"] = mems[b]
        # The weight buffer is two memories side by side: the narrow half of every row (a
        # 4-bit weight entire) is read for every tile, the high half only for wide tiles
        # (int8 operands), so a 4-bit row read moves half the bits.
        weights = WeightBuffer(cfg)
        m.submodules.buf_weights = weights

        # Host writes land a cycle after the bus presents them (HOST_WRITE_STAGES):
        # address, data and each buffer's enable leave registers (timing: a word's bits fan
        # out to every block RAM of a buffer, 64 lanes' weight rows across the die, and the
        # bus is a mux of the executor, the copier and the encoder behind their state
        # machines). What reads a word the copier wrote waits for the copier's busy, which
        # holds until its writes have landed (``hw.mem.Dma``'s ``settle``). The registers
        # are reset-less, so that a flush (fault or abort) loses no write.
        wr_addr = Signal.like(self.host.wr_addr, name="wr_addr_q", reset_less=True)
        wr_data = Signal.like(self.host.wr_data, name="wr_data_q", reset_less=True)
        wr_narrow = Signal(name="wr_narrow_q", reset_less=True)
        m.d.sync += [wr_addr.eq(self.host.wr_addr), wr_data.eq(self.host.wr_data),
                     wr_narrow.eq(self.host.wr_buf == BufId.WEIGHTS4)]

        def wr_en(*bufs: BufId) -> Signal:
            en = Signal(name=f"wr_en_{bufs[0].name.lower()}_q", reset_less=True)
            m.d.sync += en.eq(self.host.wr_en & Cat(self.host.wr_buf == b for b in bufs).any())
            return en

        # host write ports (one per buffer) and read ports (muxed by rd_buf, registered)
        for b, mem in mems.items():
            if b in (BufId.ACC, BufId.OUT):
                continue  # shared with the datapath below
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(wr_addr), wp.data.eq(wr_data), wp.en.eq(wr_en(b))]
        m.d.comb += [weights.wr_addr.eq(wr_addr), weights.wr_data.eq(wr_data),
                     weights.wr_en.eq(wr_en(BufId.WEIGHTS, BufId.WEIGHTS4)),
                     weights.wr_narrow.eq(wr_narrow)]
        if cfg.spike_encoder:
            wiring.connect(m, mems[BufId.CODES].read_port(), wiring.flipped(self.codes_rd))
        # A host read's request (address, and each buffer's enable) is registered too, so
        # the executor's state machine does not reach the block RAMs' enables in the cycle
        # it asks (timing); its word comes a cycle later (the executor's ``RD_WAIT2``).
        host_rd = {}
        rd_addr = Signal.like(self.host.rd_addr, name="rd_addr_q")
        m.d.sync += rd_addr.eq(self.host.rd_addr)
        # in buffer-id order, not a set's (DRAM: hw.mem, not here)
        for b in sorted((HOST_READABLE - VIEWS.keys()) & shapes.keys(), key=lambda b: b.value):
            rp = weights.read_port() if b == BufId.WEIGHTS else mems[b].read_port()
            # a readable view (OUT8: OUT a byte a word) reads through its buffer's port
            views = sorted((v for v in HOST_READABLE & VIEWS.keys() if VIEWS[v] == b),
                           key=lambda v: v.value)
            names = [b, *views]
            en = Signal(name=f"rd_en_{b.name.lower()}_q")
            m.d.sync += en.eq(self.host.rd_en & Cat(self.host.rd_buf == n for n in names).any())
            m.d.comb += [rp.addr.eq(rd_addr), rp.en.eq(en)]
            for n in names:
                host_rd[n] = rp
        rd_sel = Signal(BufId)
        with m.If(self.host.rd_en):
            m.d.sync += rd_sel.eq(self.host.rd_buf)
        # the host's byte path: each buffer's word registered as it leaves the block RAMs,
        # its byte ``rd_byte`` registered, then the buffer select (a byte wide, not a
        # word). The deep buffers' outputs pass a mux across their blocks, and a 64-lane
        # weight row a 64-to-1 byte select: each was critical at 64 lanes straight from the
        # block RAMs' pins (5.8 ns). The executor waits a cycle more (``RD_WAIT2``) for the
        # first byte of every word.
        byte_q = {b: Signal(8, name=f"rd_byte_{b.name.lower()}") for b in host_rd}
        for b, rp in host_rd.items():
            width = Shape.cast(shapes[b][0]).width
            word = Signal(width, name=f"rd_word_{b.name.lower()}")
            m.d.sync += word.eq(rp.data)
            padded = Cat(word, Const(0, 8 * nbytes(width) - width))
            m.d.sync += byte_q[b].eq(padded.word_select(self.host.rd_byte, 8))
        with m.Switch(rd_sel):
            for b in host_rd:
                with m.Case(b):
                    m.d.comb += self.host.rd_byte_data.eq(byte_q[b])
        # the widest buffer (a weight row) drives every bit, the others only their own: bits
        # above a word's width are never sent, so they need no select
        widest_b = max(host_rd, key=lambda b: Shape.cast(shapes[b][0]).width)
        m.d.comb += self.host.rd_data.eq(host_rd[widest_b].data)
        with m.Switch(rd_sel):
            for b, rp in host_rd.items():
                if b != widest_b:
                    with m.Case(b):
                        width = Shape.cast(shapes[b][0]).width
                        m.d.comb += self.host.rd_data[:width].eq(rp.data)

        # datapath blocks
        desc = Signal(descriptor_layout(cfg))
        m.submodules.spikes = sa = SpikeArray(cfg)
        m.submodules.macs = ma = MacArray(cfg)
        m.submodules.neuron = nu = OutputUnit(cfg)
        m.submodules.spike_rd = sr = _Reader(spike_event_layout(cfg), cfg.spike_event_depth)
        m.submodules.mac_rd = mr = _Reader(mac_event_layout(cfg), cfg.mac_event_depth)
        for reader, b in ((sr, BufId.SPIKE_EV), (mr, BufId.MAC_EV)):
            wiring.connect(m, mems[b].read_port(), reader.port)
        # Each event passes a register (hw.pipe.Register) on its way to its array, where
        # its ``k`` becomes the weight buffer address (``k + w_base``): the event buffer's
        # output and the address adder end there instead of running on into the weight
        # ports (timing). An event whose address runs past the weight buffer (it would wrap
        # to row 0) or whose outlier shift exceeds ``max_shift`` is flagged there
        # (``bad``) and stops the descriptor when its array takes it.
        bad = Signal()  # an event the descriptor cannot have meant, taken this cycle
        m.d.comb += ma.wide.eq(desc.wide)
        event_regs = []  # both registers of both event streams (empty before done)
        for name, reader, arr, op in (("spike", sr, sa, SpikeOp.SPIKE),
                                      ("mac", mr, ma, MacOp.MAC)):
            # the event buffer's word (registered by the reader as it leaves the block
            # RAMs) passes a skid register: the array's stall reaches the reader (and the event
            # buffer's read enable) from a register, not through the stage register below
            raw = Skid(reader.out.payload.shape())
            m.submodules[f"{name}_word"] = raw
            wiring.connect(m, reader.out, raw.i)
            ev = raw.o.payload
            # the MAC array's stall (its ``take``, four LUT levels from its flip-flops)
            # ends at this stage's skid: through a plain register it ran on into the word
            # skid's ``full`` (64 lanes: 74.9 MHz, 10.8 of 13.4 ns routing)
            st = (Skid if arr is ma else Register)(
                data.StructLayout({"ev": ev.shape(), "bad": 1, "reuse": 1}))
            m.submodules[f"{name}_stage"] = st
            event_regs += [raw, st]
            w_addr = Signal(cfg.k_bits + 1, name=f"w_addr_{name}")
            flag = (ev.op == op) & w_addr[-1]
            if cfg.k_bits:  # a row in the half a LOAD is writing
                top = cfg.k_bits - 1
                flag |= (ev.op == op) & self.w_half & (w_addr[top] != desc.w_base[top])
            if arr is ma and cfg.max_shift < 2**cfg.shift_bits - 1:
                flag |= (ev.op == op) & (ev.shift > cfg.max_shift)
            m.d.comb += [w_addr.eq(ev.k + desc.w_base),
                         st.i.valid.eq(raw.o.valid), raw.o.ready.eq(st.i.ready),
                         st.i.payload.ev.eq(ev), st.i.payload.ev.k.eq(w_addr[:-1]),
                         st.i.payload.bad.eq(flag),
                         arr.ev.valid.eq(st.o.valid), arr.ev.payload.eq(st.o.payload.ev),
                         st.o.ready.eq(arr.ev.ready)]
            if arr is sa:  # whether the spike repeats the row the weight port holds
                m.d.comb += [st.i.payload.reuse.eq(row_reuse(
                                 m, st.i.valid & st.i.ready, ev, w_addr[:-1])),
                             sa.reuse.eq(st.o.payload.reuse)]
            with m.If(st.o.valid & st.o.ready & st.o.payload.bad):
                m.d.comb += bad.eq(1)
            rp = weights.read_port(desc.wide, extend=arr is sa)
            m.d.comb += [rp.addr.eq(arr.w_addr), rp.en.eq(arr.w_en), arr.w_data.eq(rp.data),
                         getattr(self.strobes, f"w_rd_{name}").eq(arr.w_en),
                         getattr(self.strobes, f"w_rd_hi_{name}").eq(arr.w_en & desc.wide)]
        prp = mems[BufId.PARAMS].read_port()
        m.d.comb += [prp.addr.eq(nu.p_addr), prp.en.eq(nu.p_en), nu.p_data.eq(prp.data)]

        active = Signal()
        m.d.comb += [sa.ttfs.eq(desc.ttfs), nu.shift.eq(desc.shift), nu.relu.eq(desc.relu),
                     nu.raw.eq(desc.raw), self.busy.eq(active)]

        # combiner: each row's two partials + its start value, lane by lane (hw.combiner)
        m.submodules.spike_rows = ring = RowRing(spike_vector_layout(cfg), cfg.spike_fifo_depth)
        wiring.connect(m, sa.out, ring.w)
        m.d.comb += sa.release.eq(ring.rd.release)  # the array counts the ring's room
        m.submodules.combiner = comb = Combiner(cfg)
        acc_rp, acc_wp = mems[BufId.ACC].read_port(), mems[BufId.ACC].write_port()
        out_wp = mems[BufId.OUT].write_port()
        wiring.connect(m, ring.rd, comb.spike)
        wiring.connect(m, ma.rows, comb.mac)
        wiring.connect(m, acc_rp, comb.acc_rd)
        wiring.connect(m, mems[BufId.START].read_port(), comb.start_rd)
        wiring.connect(m, mems[BufId.ROWS].read_port(), comb.rows_rd)
        wiring.connect(m, comb.out, nu.inp)
        issue = comb.issue
        m.d.comb += [comb.desc.eq(desc), comb.active.eq(active),
                     self.strobes.acc_rd.eq(comb.acc_rd_strobe),
                     self.strobes.start_rd.eq(comb.start_rd_strobe),
                     self.strobes.par_rd.eq(nu.p_en)]
        # host access to ACC and OUT shares their single write ports with the datapath
        # (the datapath's first write comes cycles after a RUN starts: a host write still in
        # the register stage above lands before it)
        m.d.comb += [acc_wp.addr.eq(wr_addr), acc_wp.data.eq(wr_data),
                     acc_wp.en.eq(wr_en(BufId.ACC)),
                     out_wp.addr.eq(wr_addr), out_wp.data.eq(wr_data),
                     out_wp.en.eq(wr_en(BufId.OUT))]
        with m.If(comb.acc_we):
            m.d.comb += [acc_wp.addr.eq(comb.acc_w_addr), acc_wp.data.eq(comb.out.payload.acc),
                         acc_wp.en.eq(1), self.strobes.acc_wr.eq(1)]
        base = Signal(range(cfg.max_rows * cfg.lanes))
        # rows whose every result is stored (a row's last lane is flagged): a count of
        # rows, not of results, needs no rows x n_active multiply at the start (timing)
        rows_out = Signal(range(cfg.max_rows + 1))
        m.d.comb += nu.out.ready.eq(1)
        with m.If(nu.out.valid):
            m.d.comb += [out_wp.addr.eq(base + nu.out.payload.lane),
                         out_wp.data.eq(nu.out.payload.value), out_wp.en.eq(1),
                         self.strobes.out_wr.eq(1)]
            with m.If(nu.out.payload.last):
                m.d.sync += [base.eq(base + desc.n_active),  # rows packed: n_active apart
                             rows_out.eq(rows_out + 1)]

        m.d.comb += [self.run.ready.eq(~active),
                     sr.base.eq(self.run.payload.spike_base),
                     sr.count.eq(self.run.payload.spike_events),
                     mr.base.eq(self.run.payload.mac_base),
                     mr.count.eq(self.run.payload.mac_events)]
        leftover = Signal()
        with m.If(~active & self.run.valid):
            d = self.run.payload
            m.d.sync += [desc.eq(d), active.eq(1),
                         base.eq(d.row_base * cfg.lanes),
                         rows_out.eq(0)]
            m.d.comb += [sr.start.eq(1), mr.start.eq(1), comb.start.eq(1)]
        # done once every row is combined, every result stored and every event consumed,
        # with no row left over; a row left over means more row ends than rows (the next
        # tile would take it)
        stored = desc.keep | (rows_out == desc.rows)
        combined = active & comb.drained & stored
        clean = (sr.idle & mr.idle & sa.idle & ma.idle
                 & ~Cat(*(reg.o.valid for reg in event_regs)).any())
        stopping = Signal()  # the fault is registered (timing): no done in between
        with m.If(combined & comb.leftover):
            m.d.comb += leftover.eq(1)
        with m.Elif(combined & clean & ~stopping):
            m.d.comb += self.done.eq(1)
            m.d.sync += active.eq(0)

        # watchdog: cycles of a running descriptor since the last progress
        idle_cycles = Signal(range(watchdog_cycles(cfg) + 1))
        progress = sr.port.en | mr.port.en | issue | self.strobes.out_wr
        with m.If(~active | progress):
            m.d.sync += idle_cycles.eq(0)
        with m.Else():
            m.d.sync += idle_cycles.eq(idle_cycles + 1)
        hung = active & (idle_cycles == watchdog_cycles(cfg))
        # the fault pulses the cycle after its cause, and so does the flush that resets
        # the whole engine: a net that reaches every register (about 6,400 at 64 lanes)
        # starts from one register, not from an OR of the fault and the executor's decode
        # of an ABORT (which takes a cycle more)
        cause = active & (bad | leftover) | hung
        m.d.sync += stopping.eq(cause)
        m.d.comb += self.fault.eq(stopping)

        m.d.comb += [
            self.strobes.spike.eq(sa.spike), self.strobes.step.eq(sa.step),
            self.strobes.mac_row.eq(ma.row),
            self.strobes.spike_busy.eq(sa.busy), self.strobes.mac_busy.eq(ma.busy),
            self.strobes.stall.eq(active & ~sa.busy & ~ma.busy),
            self.strobes.spike_ev_rd.eq(sr.port.en), self.strobes.mac_ev_rd.eq(mr.port.en),
        ]
        wrapper = Module()
        wrapper.d.sync += flush.eq(cause | self.abort)  # not reset by itself: outside m
        wrapper.submodules.core = ResetInserter(flush)(m)
        return wrapper


