"""The command executor: turns the link's request frames (``accel.protocol``) into engine
operations, buffer and external-memory accesses, copies and counter reads, and answers
them (``hw.top.Top`` joins it to the link, the engine, the copier and the counters):

================ ============================================ ==============================
command          request payload                              response payload (status OK)
================ ============================================ ==============================
IDENTIFY         none                                         :func:`ident_layout` word
WRITE_BUF        :data:`BUF_ARGS` + ``count`` words           none
READ_BUF         :data:`BUF_ARGS`                             ``count`` words
RUN              one descriptor (``engine.descriptor_layout``) none, sent when the tile is done
READ_COUNTERS    none                                         every counter, in map order
RESET_COUNTERS   none                                         none
ABORT            none                                         none
LOAD             copies (a byte, 1..255), each :data:`LOAD_ARGS` none, once the last has started
LOAD_RUN         a LOAD's copies, then a RUN's descriptor     as RUN
EXPAND           :data:`EXPAND_ARGS`                          none, once the words are written
WRITE_ROWS       :data:`ROW_ARGS` + ``count`` rows' low lanes   none
CHAIN            requests of ``CHAINABLE``, each after its    none, once the last is done
                 ``SUB_HEADER``
STORE            :data:`STORE_ARGS`                           none, once the rows are written
================ ============================================ ==============================

A CHAIN's requests are checked and run as frames of their own would be (the length each
declares, against what is left of the frame), in order; the first refused ends it: the rest
of the frame is drained, not run, and the answer carries its status. A CHAIN repeated with
the seq of the last RUN, EXPAND or CHAIN is answered OK without running (its RUNs and
EXPANDs do not set that seq themselves: the CHAIN does, once it is done).

WRITE_ROWS writes whole weight rows (``BufId.WEIGHTS`` only, lanes of whole bytes,
:func:`~accel.layouts.row_lane_bytes`) from their low ``lanes`` lanes, the other lanes
zero: each row's bytes come most significant first and are shifted in at the bottom of
the assembly register, cleared for each row, so no byte is moved by a variable amount.

EXPAND exists with the spike encoder only (``AccelConfig.spike_encoder``, ``hw.encoder``;
else ``ERR_COMMAND``): it waits for a copy in flight (the copier may be writing the
event buffer the encoder writes, spike or MAC, or the code buffer it reads), then for the
encoder, and answers ``ERR_ARG`` if the encoder refused.
Like a RUN, an EXPAND repeated with the seq of the last RUN or EXPAND is answered OK
without running again (its counters would count it twice).

WRITE_BUF and READ_BUF also reach the external memory (``BufId.DRAM``, through ``dram``).
A LOAD copies words from there into a buffer (``hw.mem.Dma``) and is answered as soon as
its last copy has started; each copy starts when the one before it is done. Commands that
touch the memory, write a buffer or read the buffer being written wait for the copy in
flight (reading another buffer does not: its read port is not the copy's); a RUN runs
beside it only when
the copy writes the half of WEIGHTS that the descriptor's ``w_base`` is not in (and the
engine faults an event that reads that half meanwhile), else it waits too. A refused copy
(its buffer, range or source) ends the LOAD with ``ERR_ARG``; the copies before it have
started.

A RUN whose descriptor breaks :func:`~accel.layouts.descriptor_rules` gets ``ERR_ARG`` without
running; a RUN the engine stops (its watchdog, events that disagree with the descriptor)
gets ``ERR_FAULT`` once the engine is idle again. ABORT returns the engine to idle (the
engine never stays busy longer than its watchdog, so ABORT is taken between requests)
and forgets the last RUN's ``seq``; buffer contents are kept.

Words travel little-endian in ``ceil(width / 8)`` bytes (:func:`word_bytes`). A request
with a wrong length or an out-of-range buffer argument gets ``ERR_ARG``, an unknown command
``ERR_COMMAND``; the payload is drained first, so the next frame starts clean.
"""

import operator
from functools import reduce
from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accel.chain import store_supported
from accel.config import AccelConfig
from accel.counters import COUNTERS
from accel.layouts import (
    PACK_BITS,
    VIEWS,
    BufId,
    buffer_shapes,
    descriptor_layout,
    descriptor_rules,
    loadable,
    packable,
    row_lane_bytes,
)
from accel.protocol import (
    BUF_ARGS,
    EXPAND_ARGS,
    HEADER,
    LOAD_ARGS,
    READ_ONLY,
    ROW_ARGS,
    RUNS_ONCE,
    STORE_ARGS,
    SUB_HEADER,
    SUB_HEADER_BYTES,
    Cmd,
    Status,
    ident_layout,
    ident_value,
    nbytes,
    word_bytes,
)

from .counters import counter_read_signature
from .engine import host_bus_signature
from .executor_buf import load_states, read_states, row_states, write_port, write_states
from .executor_store import STORE_PREFIX, store_states
from .link import DATA_LAYOUT
from .mem import copier_signature, dram_port
from .pipe import Register

#: The executor's counter strobes (``exec.<name>`` among the counters' sources,
#: ``accel.counters``), one bit each.
EXEC_STROBES = ("host_wr", "host_rd", "descriptors", "loads", "dram_rd", "dram_wr",
                "load_wait", "store_busy")


def encoder_signature() -> wiring.Signature:
    """The spike encoder's control, from the executor's side: ``start`` takes an EXPAND's
    arguments; ``done`` pulses with ``bad`` beside it (``hw.encoder.SpikeEncoder``)."""
    return wiring.Signature({"start": Out(stream.Signature(EXPAND_ARGS)),
                             "done": In(1), "bad": In(1)})


def run_signature(cfg: AccelConfig) -> wiring.Signature:
    """The hand-off of a checked descriptor to the engine, from the executor's side: the
    descriptor (``run``), ``w_half`` (it may run beside a LOAD into the other half of the
    weight buffer, held for the RUN), ``abort``, and the engine's ``done`` and ``fault``
    pulses (``hw.engine.Engine``'s ports of those names)."""
    return wiring.Signature({
        "run": Out(stream.Signature(descriptor_layout(cfg))),
        "w_half": Out(1), "abort": Out(1), "done": In(1), "fault": In(1),
    })


class Executor(wiring.Component):
    """The command executor between the link (``hw.link.Link``: ``cmd``, ``data`` in;
    ``resp``, ``resp_data`` out) and the rest of the core: the buffers through the engine's
    host bus (``host``, shared with the copier's writes by ``hw.top.Top``), the external
    memory (``dram``, the copier's while a LOAD runs), the engine (``engine``), the copier
    (``copier``), the counters' read side (``counters``) and its own counter strobes
    (``strobes``, :data:`EXEC_STROBES`).

    Payload bytes and response bytes each pass a register inside it (``data_in``,
    ``resp_data``): no path runs from the link's frame buffer into the executor, nor from
    the engine's read port into the link, in one cycle (timing)."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(HEADER)),
            "data": In(stream.Signature(DATA_LAYOUT)),
            "resp": Out(stream.Signature(HEADER)),
            "resp_data": Out(stream.Signature(8)),
            "host": Out(host_bus_signature(cfg)),
            "dram": Out(dram_port(cfg)),
            "engine": Out(run_signature(cfg)),
            "copier": Out(copier_signature(cfg)),
            "counters": Out(counter_read_signature(cfg)),
            "strobes": Out(wiring.Signature({n: Out(1) for n in EXEC_STROBES})),
        } | ({"encoder": Out(encoder_signature())} if cfg.spike_encoder else {}))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        cp, ec, hb = self.copier, self.engine, self.host
        x_cmd, x_wdata = self.dram.cmd, self.dram.wdata
        # payload bytes pass a register on their way from the link's frame buffer (block
        # RAM, no output register) into the executor's shifts and the buffers' write ports
        # (timing: the 16-lane critical path ended in the START LUT RAM)
        m.submodules.data_in = data_in = Register(DATA_LAYOUT)
        wiring.connect(m, wiring.flipped(self.data), data_in.i)

        shapes = buffer_shapes(cfg)
        wbytes = word_bytes(cfg)
        width = 8 * max(max(wbytes.values()), nbytes(BUF_ARGS.size), nbytes(LOAD_ARGS.size),
                        nbytes(descriptor_layout(cfg).size), nbytes(EXPAND_ARGS.size),
                        nbytes(STORE_ARGS.size))
        sr = Signal(width)  # assembles incoming words and arguments (from the top)
        # outgoing words shift out of a register of their own (an identity, a counter, a
        # memory word): the wide one above then has four sources instead of eight, each a
        # select fanned out to every one of its bits (timing: a 64-lane weight row)
        so = Signal(8 * max(nbytes(ident_layout().size), nbytes(cfg.counter_bits),
                            nbytes(cfg.dram_bits)))
        rbyte = Signal(range(max(wbytes.values()) + 1))  # byte of a READ_BUF word being sent
        hdr = Signal(HEADER)
        # the frame's payload bytes not yet consumed (hdr.length at the header: a CHAIN's
        # frame's), counted down, so that whether any are left is a test for zero, not a
        # compare of two counts (timing: got >= frame_len -> DRAIN's next state -> the
        # link's frame buffer address was a 16-lane critical path); the top bit would mean
        # more consumed than the frame has, which no state does
        lbits = len(hdr.length)
        rest = Signal(lbits + 1)
        over, left = rest[lbits], rest[:lbits]  # more consumed than the frame has; bytes left
        spent = Signal()  # no byte left
        m.d.comb += spent.eq(over | (left == 0))
        chain = Signal()  # running a CHAIN's requests
        chain_head = Signal()  # its first is next: a repeated CHAIN is not run
        sub_over = Signal()  # the CHAIN's request claims more than the frame has left
        # whether the frame has bytes left (at least a SUB_HEADER's), registers: up to date
        # a cycle after the last byte taken, which SUB_END always is (RESP before it)
        frame_more = Signal()
        frame_more3 = Signal()
        m.d.sync += [frame_more.eq(~spent),
                     frame_more3.eq(~over & (left >= SUB_HEADER_BYTES))]
        # the payload's bytes after the fixed arguments, a register set with the header: the
        # length checks compare it with the bytes the words need, with no add before the
        # compare (timing: hdr.length != args_bytes + req_bytes -> the FSM, the 16-lane
        # critical path at 9901575)
        body = Signal(16)
        todo = Signal(16)  # bytes left in the current field
        args = Signal(BUF_ARGS)
        words = Signal(24)
        addr = Signal(24)
        status = Signal(Status, init=Status.OK)
        resp_len = Signal(16)
        ctr = Signal(range(len(COUNTERS) + 1))
        # counters left to send, a register: the FSM does not read ``ctr``, whose decode
        # Yosys shares with the counters' read select beside them (timing: ctr -> that
        # select -> across the die -> the FSM's next state, the 69.4 MHz path)
        ctr_more = Signal()
        desc_bytes = nbytes(descriptor_layout(cfg).size)
        exp_bytes = nbytes(EXPAND_ARGS.size)
        rows_bytes = nbytes(ROW_ARGS.size)
        lane_bytes = row_lane_bytes(cfg)
        row_lanes = Signal(8)  # WRITE_ROWS: the lanes each row brings
        row_len = Signal(range(cfg.lanes * max(1, lane_bytes) + 1))  # and their bytes
        rows_need = Signal(32)  # the rows' bytes (count x row_len)
        args_bytes = nbytes(BUF_ARGS.size)
        load_bytes = nbytes(LOAD_ARGS.size)
        largs = Signal(LOAD_ARGS)
        nload = Signal(8)  # copies of the LOAD still to start (0: their number not read yet)
        in_run = Signal()  # a LOAD_RUN's copies have started: its descriptor follows
        # the LOAD's length for its number of copies, made from the shift register as the
        # number is taken (a multiply ahead of the compare, not before it: timing)
        load_need = Signal(range(1 + 255 * load_bytes + 1))
        pk = packable(cfg)  # buffers written packed, by width
        packed = Signal()  # the WRITE_BUF's words are packed at their width
        pk_acc = Signal(PACK_BITS + 8)  # packed bits received and not yet written
        pk_have = Signal(range(PACK_BITS + 8))
        joined = Signal(PACK_BITS + 8)  # pk_acc with the byte in (hw.executor_buf.write_port)
        # the packed word's width and whether the next byte completes a word, registers:
        # the write decision is the byte's valid and one flip-flop, not the buffer id's
        # decode and a compare (timing: args.buf -> pk_have + 8 >= width -> the host write
        # strobe into the counters, the 70.4 MHz path)
        pk_w = Signal(range(PACK_BITS + 1))
        pk_full = Signal()  # pk_have + 8 >= pk_w
        load_words = Signal(32)  # external-memory words the LOAD reads
        load_bad = Signal()  # a bad buffer or range (registered in LOAD_SIZE)
        is_dram = Signal()
        m.d.comb += is_dram.eq(args.buf == BufId.DRAM)
        reads_dma_buf = Signal()  # args.buf is (a view of) the memory the copy writes
        with m.Switch(args.buf):
            for b in BufId:
                same = [x for x in sorted(loadable(cfg), key=lambda x: x.value)
                        if VIEWS.get(x, x) == VIEWS.get(b, b)]
                if same:
                    with m.Case(b):
                        m.d.comb += reads_dma_buf.eq(
                            reduce(operator.or_, (cp.buf == x for x in same)))
        w_half = Signal()  # the RUN reads one half of WEIGHTS while a LOAD writes the other
        run_half = Signal()  # the checked descriptor may run beside the LOAD in flight
        dram_done = Signal(2)  # a host write's command and data taken by the memory
        cb = nbytes(cfg.counter_bits)
        # bytes per word of args.buf (an ACC word is 4 x lanes bytes: 256 at 64 lanes)
        bpw = Signal(range(max(wbytes.values()) + 1))
        with m.Switch(args.buf):
            for b, n in wbytes.items():
                with m.Case(b):
                    m.d.comb += bpw.eq(n)
        req_bytes = Signal(range((1 << 24) * max(wbytes.values())))  # count x bytes per word
        products = {c: Signal(range((1 << 24) * c), name=f"count_x{c}")  # count x constant
                    for c in sorted({*wbytes.values(), *pk.values()})}
        depth_ok = Signal()
        args_bad = Signal()  # a bad buffer, range or direction (registered in SIZE)
        with m.Switch(args.buf):
            for b, (_, depth) in shapes.items():
                with m.Case(b):
                    m.d.comb += depth_ok.eq(args.addr + args.count <= depth)

        byte_in = data_in.o.payload.byte
        shifted_in = (sr >> 8) | (byte_in << (width - 8))

        def word_from_sr(nb: int):
            return sr >> (width - 8 * nb)

        # response bytes pass a register on their way to the link: the engine's read port
        # (block RAM), the buffer select and the byte select end there instead of running
        # on into the link's CRC (timing)
        m.submodules.resp_data = resp_data = Register(8)
        wiring.connect(m, resp_data.o, wiring.flipped(self.resp_data))
        m.d.comb += [self.resp.payload.cmd.eq(status), self.resp.payload.seq.eq(hdr.seq),
                     self.resp.payload.length.eq(resp_len),
                     hb.rd_byte.eq(rbyte),
                     resp_data.i.payload.eq(Mux((hdr.cmd == Cmd.READ_BUF) & ~is_dram,
                                                hb.rd_byte_data, so[:8]))]
        m.d.comb += self.counters.sel.eq(ctr)

        m.d.comb += [self.dram.rdata.ready.eq(1), ec.w_half.eq(w_half)]

        # A RUN repeated with the seq of the last RUN (a retry after a lost response, or a
        # duplicated frame) is answered OK without running again: partial sums of a
        # K-split tile and the counters must not be added twice. Reads in between do not
        # forget it (the host pipelines them behind a RUN, accel.requests.pipeline_groups,
        # and retries the RUN if its answer is lost); any other command does, so a wrapped
        # seq cannot match by accident (the host never gives a new RUN the last one's seq).
        last_run_seq = Signal(8)
        last_run_valid = Signal()
        # CHECK decides from registers (timing: the seq compare and the LOAD_RUN mux ran
        # through the FSM's next-state logic into its state, the 64-lane critical path).
        # Both are registered every cycle; ``hdr``, ``in_run`` and the last RUN's seq are
        # set at least one ARGS cycle before CHECK, so the registers hold them there.
        check_cmd = Signal(Cmd, init=Cmd.RUN)  # what CHECK checks (a LOAD_RUN's descriptor: RUN)
        repeat = Signal()  # the request repeats the last RUN's (or EXPAND's) seq
        desc_ok = Signal()  # the descriptor in sr passes every rule (RUN_CHECK)
        m.d.sync += [check_cmd.eq(Mux(in_run, Cmd.RUN, hdr.cmd)),
                     repeat.eq(last_run_valid & (last_run_seq == hdr.seq))]
        # sr's three moves are chosen by flags registered as the FSM moves (``goto``), not
        # decoded from its state: each select reaches the 512 bits from a flip-flop (timing)
        sr_moves = {"down": ("ARGS", "WR_BYTES", "SUB_HDR"), "up": ("WR_ROW",),
                    "clear": ("ROWS_CHECK", "WR_ROW_WORD")}
        sr_move = {k: Signal(name=f"sr_{k}") for k in sr_moves}
        row_word = Signal()  # in WR_ROW_WORD: the host write's word is sr's row (write_port)
        in_store = Signal()  # in a STORE state (its cycles counted: store_busy)
        # every flag the FSM's moves register, and whether a state sets it
        flags = [*((sr_move[k], sr_moves[k].__contains__) for k in sr_moves),
                 (row_word, "WR_ROW_WORD".__eq__),
                 (in_store, lambda state: state.startswith(STORE_PREFIX))]

        def goto(state: str):
            m.next = state
            m.d.sync += [sig.eq(sets(state)) for sig, sets in flags]

        with m.If(sr_move["clear"]):
            m.d.sync += sr.eq(0)
        with m.Elif(data_in.o.valid & sr_move["down"]):  # the byte taken in ARGS, WR_BYTES
            m.d.sync += sr.eq(shifted_in)
        with m.Elif(data_in.o.valid & sr_move["up"]):  # in WR_ROW
            m.d.sync += sr.eq(Cat(byte_in, sr[:-8]))
        def take_bytes(then: str):
            """Take ``todo`` payload bytes (into sr, by the state's move flag), then go
            to ``then``."""
            m.d.comb += data_in.o.ready.eq(1)
            with m.If(data_in.o.valid):
                m.d.sync += [rest.eq(rest - 1), todo.eq(todo - 1)]
                with m.If(todo == 1):
                    goto(then)

        # what the request families' states (hw.executor_buf) read and write, by name
        e = SimpleNamespace(
            addr=addr, args=args, args_bad=args_bad, body=body, bpw=bpw,
            byte_in=byte_in, cfg=cfg, cp=cp, data_in=data_in, depth_ok=depth_ok,
            desc_bytes=desc_bytes, dram_done=dram_done, rest=rest, goto=goto, hb=hb, hdr=hdr,
            in_run=in_run, in_store=in_store, is_dram=is_dram, joined=joined, largs=largs,
            load_bad=load_bad, load_bytes=load_bytes, load_need=load_need,
            load_words=load_words, nload=nload, packed=packed, pk=pk, pk_acc=pk_acc,
            pk_full=pk_full, pk_have=pk_have, pk_w=pk_w,
            products=products, rbyte=rbyte, reads_dma_buf=reads_dma_buf, req_bytes=req_bytes,
            resp_len=resp_len, row_lanes=row_lanes, row_len=row_len, row_word=row_word,
            rows_need=rows_need, shapes=shapes, so=so, sr=sr, status=status, todo=todo,
            wbytes=wbytes, word_from_sr=word_from_sr, words=words, x_cmd=x_cmd, x_wdata=x_wdata,
            take_bytes=take_bytes, strobes=self.strobes, dram=self.dram)
        write_port(m, e)
        def dispatch(h, sub: bool):
            """Start request ``h`` (a frame's header, or a CHAIN's ``sub`` request's): check
            its length against its command and go where its payload is taken."""
            with m.Switch(h.cmd):
                if not sub:  # none of these in a CHAIN: they answer with data, or stop it
                    with m.Case(Cmd.IDENTIFY, Cmd.READ_COUNTERS, Cmd.RESET_COUNTERS,
                                Cmd.ABORT):
                        with m.If(h.length != 0):
                            m.d.sync += status.eq(Status.ERR_ARG)
                            goto("DRAIN")
                        with m.Else():
                            goto("EXEC")
                    with m.Case(Cmd.CHAIN):  # its first request's header first
                        m.d.sync += [chain.eq(1), chain_head.eq(1), todo.eq(SUB_HEADER_BYTES)]
                        with m.If(h.length < SUB_HEADER_BYTES):
                            m.d.sync += status.eq(Status.ERR_ARG)
                            goto("DRAIN")
                        with m.Else():
                            goto("SUB_HDR")
                with m.Case(Cmd.LOAD, Cmd.LOAD_RUN):  # the number of copies first
                    m.d.sync += [todo.eq(1), nload.eq(0)]
                    with m.If(h.length < 1 + load_bytes
                              + Mux(h.cmd == Cmd.LOAD_RUN, desc_bytes, 0)):
                        m.d.sync += status.eq(Status.ERR_ARG)
                        goto("DRAIN")
                    with m.Else():
                        goto("ARGS")
                # commands whose fixed arguments come first: their bytes, and whether that
                # is the whole payload (else the least of it)
                fixed = {(Cmd.RUN,): (desc_bytes, True),
                         (Cmd.WRITE_BUF,) if sub else (Cmd.WRITE_BUF, Cmd.READ_BUF):
                         (args_bytes, False)}
                if cfg.spike_encoder:
                    fixed[(Cmd.EXPAND,)] = (exp_bytes, True)
                if store_supported(cfg):
                    fixed[(Cmd.STORE,)] = (nbytes(STORE_ARGS.size), True)
                if lane_bytes:
                    fixed[(Cmd.WRITE_ROWS,)] = (rows_bytes, False)
                for cmds, (n, whole) in fixed.items():
                    with m.Case(*cmds):
                        m.d.sync += [todo.eq(n), body.eq(h.length - n)]
                        with m.If((h.length != n) if whole else (h.length < n)):
                            m.d.sync += status.eq(Status.ERR_ARG)
                            goto("DRAIN")
                        with m.Else():
                            goto("ARGS")
                with m.Default():  # in a CHAIN, what it may not carry is a bad argument
                    m.d.sync += status.eq(Status.ERR_ARG if sub else Status.ERR_COMMAND)
                    goto("DRAIN")

        # the engine's done and fault, registered here: its done is an AND across the
        # engine (rows combined, results stored, readers and arrays idle) and reached
        # the state register's enable in the same cycle (a 16-lane critical path). The
        # cycle it adds per RUN is outside the engine's busy count (the cycle model's)
        done_q, fault_q = Signal(), Signal()
        m.d.sync += [done_q.eq(ec.done), fault_q.eq(ec.fault)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    h = self.cmd.payload
                    m.d.sync += [hdr.eq(h), rest.eq(h.length), resp_len.eq(0),
                                 status.eq(Status.OK), in_run.eq(0), chain.eq(0)]
                    # the last RUN's seq is kept across these (accel.protocol)
                    keeps = [*READ_ONLY, *(c for c in RUNS_ONCE
                                           if cfg.spike_encoder or c != Cmd.EXPAND)]
                    with m.If(~Cat(h.cmd == c for c in keeps).any()):
                        m.d.sync += last_run_valid.eq(0)
                    dispatch(h, sub=False)
            # a CHAIN's requests: each one's SUB_HEADER into sr, then into hdr (cmd and
            # length; the seq stays the frame's), checked against the frame's rest, run
            with m.State("SUB_HDR"):
                take_bytes("SUB_LATCH")
            with m.State("SUB_LATCH"):
                sh = SUB_HEADER(word_from_sr(SUB_HEADER_BYTES)[:SUB_HEADER.size])
                m.d.sync += [hdr.cmd.eq(sh.cmd), hdr.length.eq(sh.length),
                             sub_over.eq(over | (sh.length > left))]
                goto("SUB_GO")
            with m.State("SUB_GO"):
                m.d.sync += [in_run.eq(0), chain_head.eq(0)]
                with m.If(chain_head & repeat):  # run before: drained, answered OK
                    goto("DRAIN")
                with m.Elif(sub_over):  # longer than what is left of the frame
                    m.d.sync += status.eq(Status.ERR_ARG)
                    goto("DRAIN")
                with m.Else():
                    dispatch(hdr, sub=True)
            with m.State("SUB_END"):  # one done: the next, or the CHAIN's answer
                with m.If(~frame_more):
                    m.d.sync += [chain.eq(0), last_run_seq.eq(hdr.seq), last_run_valid.eq(1)]
                    goto("RESP")
                with m.Elif(~frame_more3):  # a byte or two: not a request's header
                    m.d.sync += status.eq(Status.ERR_ARG)
                    goto("DRAIN")
                with m.Else():
                    m.d.sync += todo.eq(SUB_HEADER_BYTES)
                    goto("SUB_HDR")
            with m.State("ARGS"):  # collect the fixed arguments into sr
                take_bytes("CHECK")
            with m.State("CHECK"):
                with m.Switch(check_cmd):
                    with m.Case(Cmd.RUN):
                        layout = descriptor_layout(cfg)
                        desc = layout(word_from_sr(desc_bytes)[:layout.size])
                        ok = reduce(operator.and_, (rule(desc) for rule in
                                                    descriptor_rules(cfg).values()))
                        # it may run beside a LOAD that writes the other half of WEIGHTS
                        # (the engine faults an event that reads into that half)
                        top_ = cfg.k_bits - 1
                        if top_ >= 0:
                            m.d.sync += run_half.eq(
                                ((cp.buf == BufId.WEIGHTS) | (cp.buf == BufId.WEIGHTS4))
                                & (cp.lo[top_] == (cp.hi - 1)[top_])
                                & (cp.lo[top_] != desc.w_base[top_]))
                        else:
                            m.d.sync += run_half.eq(0)
                        m.d.sync += desc_ok.eq(ok)
                        goto("RUN_CHECK")
                    with m.Case(Cmd.LOAD, Cmd.LOAD_RUN):
                        with m.If(nload == 0):
                            count = word_from_sr(1)[:8]
                            m.d.sync += [nload.eq(count), load_need.eq(
                                1 + count * load_bytes
                                + Mux(hdr.cmd == Cmd.LOAD_RUN, desc_bytes, 0))]
                            goto("LOAD_LEN")
                        with m.Else():
                            m.d.sync += largs.eq(word_from_sr(load_bytes))
                            goto("LOAD_SIZE")
                    if cfg.spike_encoder:
                        with m.Case(Cmd.EXPAND):
                            # repeated with the seq of the last RUN or EXPAND: done already
                            # (its counters must not count it twice)
                            with m.If(repeat):
                                goto("RESP")
                            with m.Else():
                                goto("EXPAND")
                    if store_supported(cfg):
                        with m.Case(Cmd.STORE):
                            goto("STORE_LATCH")
                    if lane_bytes:
                        with m.Case(Cmd.WRITE_ROWS):
                            ra = Signal(ROW_ARGS)
                            m.d.comb += ra.eq(word_from_sr(rows_bytes))
                            m.d.sync += [args.buf.eq(ra.buf), args.addr.eq(ra.addr),
                                         args.count.eq(ra.count), words.eq(ra.count),
                                         addr.eq(ra.addr), row_lanes.eq(ra.lanes),
                                         row_len.eq(ra.lanes * lane_bytes)]
                            goto("ROWS_SIZE")
                    with m.Default():
                        a = Signal(BUF_ARGS)
                        m.d.comb += a.eq(word_from_sr(args_bytes))
                        m.d.sync += [args.eq(a), words.eq(a.count), addr.eq(a.addr),
                                     # the PACKED flag is the buffer code's top bit
                                     args.buf.eq(a.buf[:7]), packed.eq(a.buf[7]),
                                     pk_have.eq(0), pk_acc.eq(0)]
                        goto("PRODUCTS")
            with m.State("RUN_CHECK"):  # the descriptor's rules, registered (timing)
                with m.If(repeat):
                    goto("RESP")
                with m.Elif(~desc_ok):
                    m.d.sync += status.eq(Status.ERR_ARG)
                    goto("RESP")
                with m.Else():
                    goto("SUBMIT")
            with m.State("SUBMIT"):
                # the descriptor goes to the engine from registers, a cycle after its check
                # (the rules' compares and the engine's start are not one path: timing)
                with m.If(cp.busy & ~run_half):
                    m.d.comb += self.strobes.load_wait.eq(1)
                with m.Else():
                    m.d.comb += [ec.run.payload.eq(word_from_sr(desc_bytes)),
                                 ec.run.valid.eq(1)]
                    with m.If(ec.run.ready):
                        m.d.comb += self.strobes.descriptors.eq(1)
                        m.d.sync += w_half.eq(cp.busy)
                        goto("WAIT_DONE")
            if cfg.spike_encoder:
                en = self.encoder
                with m.State("EXPAND"):  # after a copy in flight: it may write the buffers
                    with m.If(cp.busy):
                        m.d.comb += self.strobes.load_wait.eq(1)
                    with m.Else():
                        m.d.comb += [en.start.payload.eq(word_from_sr(exp_bytes)),
                                     en.start.valid.eq(1)]
                        with m.If(en.start.ready):
                            goto("EXPAND_WAIT")
                with m.State("EXPAND_WAIT"):
                    with m.If(en.done):
                        with m.If(en.bad):
                            m.d.sync += status.eq(Status.ERR_ARG)
                        with m.Elif(~chain):  # a CHAIN's seq is kept once it is done
                            m.d.sync += [last_run_seq.eq(hdr.seq), last_run_valid.eq(1)]
                        goto("RESP")
            if lane_bytes:
                row_states(m, e)
            load_states(m, e)
            if store_supported(cfg):
                store_states(m, e)
            write_states(m, e)
            with m.State("WAIT_DONE"):
                with m.If(done_q):
                    with m.If(~chain):  # a CHAIN's seq is kept once it is done
                        m.d.sync += [last_run_seq.eq(hdr.seq), last_run_valid.eq(1)]
                    goto("RESP")
                with m.Elif(fault_q):
                    m.d.sync += status.eq(Status.ERR_FAULT)
                    goto("RESP")
            with m.State("EXEC"):
                with m.Switch(hdr.cmd):
                    with m.Case(Cmd.IDENTIFY):
                        m.d.sync += resp_len.eq(nbytes(ident_layout().size))
                    with m.Case(Cmd.READ_COUNTERS):
                        m.d.sync += [resp_len.eq(len(COUNTERS) * cb), ctr.eq(0),
                                     ctr_more.eq(1)]
                    with m.Case(Cmd.RESET_COUNTERS):
                        m.d.comb += self.counters.clear.eq(1)
                    with m.Case(Cmd.ABORT):
                        m.d.comb += ec.abort.eq(1)
                goto("RESP")
            with m.State("DRAIN"):  # swallow the rest of a refused request's frame
                with m.If(spent):
                    goto("RESP")
                with m.Else():
                    m.d.comb += data_in.o.ready.eq(1)
                    with m.If(data_in.o.valid):
                        m.d.sync += rest.eq(rest - 1)
            with m.State("RESP"):
                with m.If(chain & (status == Status.OK)):  # a CHAIN answers once, at its end
                    goto("SUB_END")
                with m.Elif(chain & frame_more):  # refused in a CHAIN: the rest drained first
                    goto("DRAIN")
                with m.Else():
                    m.d.comb += self.resp.valid.eq(1)
                    with m.If(self.resp.ready):
                        with m.If((status != Status.OK) | (resp_len == 0)):
                            goto("IDLE")
                        with m.Elif(hdr.cmd == Cmd.IDENTIFY):
                            m.d.sync += [so.eq(ident_layout().const(ident_value(cfg)).as_bits()),
                                         todo.eq(nbytes(ident_layout().size))]
                            goto("SEND")
                        with m.Elif(hdr.cmd == Cmd.READ_COUNTERS):
                            goto("LOAD_CTR")
                        with m.Else():
                            goto("RD_WORD")
            with m.State("LOAD_CTR"):  # ``ctr`` was set a cycle or more ago (RESP, SEND)
                m.d.sync += [so.eq(self.counters.value), todo.eq(cb), ctr.eq(ctr + 1),
                             ctr_more.eq(ctr + 1 < len(COUNTERS))]
                goto("SEND")
            read_states(m, e)
            with m.State("SEND"):
                m.d.comb += resp_data.i.valid.eq(1)
                with m.If(resp_data.i.ready):
                    m.d.sync += [so.eq(so >> 8), todo.eq(todo - 1), rbyte.eq(rbyte + 1)]
                    with m.If((todo != 1) & (hdr.cmd == Cmd.READ_BUF) & ~is_dram):
                        goto("RD_BYTE")
                    with m.If(todo == 1):
                        with m.If((hdr.cmd == Cmd.READ_COUNTERS) & ctr_more):
                            goto("LOAD_CTR")
                        with m.Elif((hdr.cmd == Cmd.READ_BUF) & (words != 0)):
                            goto("RD_WORD")
                        with m.Else():
                            goto("IDLE")
        return m
