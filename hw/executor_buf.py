"""The executor's buffer requests, as states of its FSM (``hw.executor.Executor``):
WRITE_BUF (bytes or packed words, into a buffer or the external memory), READ_BUF, WRITE_ROWS
and LOAD. Each function adds its states to the FSM open in ``m``; ``e`` holds the
executor's registers, ports and helpers by their names in ``Executor.elaborate`` (``goto``
moves the FSM and the assembly register's flags together, ``word_from_sr`` takes a word
from the top of the assembly register ``sr``)."""

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal

from accel.layouts import (
    HOST_READABLE,
    HOST_WRITABLE,
    BufId,
    dram_words,
    loadable,
)
from accel.protocol import LENGTH_LIMIT, Cmd, Status


def write_port(m: Module, e: SimpleNamespace) -> None:
    """The host write port's buffer, address and word, driven in every state from
    registers; only its enable is the states' (WR_ROW_WORD, WR_PACKED, WR_WORD).

    Timing: gated by the write states, the 512-bit word's and the address' registers
    (``exec_wr_*_q`` in ``hw.top``) took the state machine's decode as their reset, one net
    across the die (64 lanes at 67.3 MHz: the FSM's state -> that decode -> the address'
    next value). The engine takes nothing without the enable. A WRITE_ROWS names WEIGHTS
    (ROWS_CHECK refuses any other buffer), so ``args.buf`` is the buffer of all three."""
    m.d.comb += [e.hb.wr_buf.eq(e.args.buf), e.hb.wr_addr.eq(e.addr),
                 e.joined.eq(e.pk_acc | (e.byte_in << e.pk_have))]
    with m.If(e.row_word):  # a row, in at the bottom of sr
        m.d.comb += e.hb.wr_data.eq(e.sr)
    with m.Elif(e.packed):  # the packed word the byte completes
        with m.Switch(e.args.buf):
            for b, w in e.pk.items():
                with m.Case(b):
                    m.d.comb += e.hb.wr_data.eq(e.joined[:w])
    with m.Else():  # a word's bytes, in at the top of sr
        with m.Switch(e.args.buf):
            for b, n in e.wbytes.items():
                with m.Case(b):
                    m.d.comb += e.hb.wr_data.eq(e.word_from_sr(n))


def row_states(m: Module, e: SimpleNamespace) -> None:
    """WRITE_ROWS: the size and checks, then each row's bytes shifted in at the
    bottom of ``sr`` and written as one weight row."""
    with m.State("ROWS_SIZE"):
        # the rows' bytes and the checks, registered (timing, as in SIZE). A count the
        # weight buffer cannot hold is refused by ``depth_ok`` whatever its bytes, so the
        # product takes only the count's bits up to the buffer's depth: one multiplier
        # block, no adder of partial products after it (timing: the 24-bit count's
        # product was the 16-lane design's critical path, 10.7 ns)
        cbits = e.shapes[BufId.WEIGHTS][1].bit_length()
        m.d.sync += [e.rows_need.eq(e.args.count[:cbits] * e.row_len),
                     e.args_bad.eq((e.args.buf != BufId.WEIGHTS) | ~e.depth_ok
                                 | (e.row_lanes == 0) | (e.row_lanes > e.cfg.lanes))]
        e.goto("ROWS_CHECK")
    with m.State("ROWS_CHECK"):
        # sr is cleared whatever the checks decide (a refused request does not
        # need it): its 512 bits' select is then the state alone (timing)
        with m.If(e.cp.busy):  # the engine's host write port is the copier's
            m.d.comb += e.strobes.load_wait.eq(1)
        with m.Elif(e.args_bad | (e.body != e.rows_need)):
            m.d.sync += e.status.eq(Status.ERR_ARG)
            e.goto("DRAIN")
        with m.Elif(e.args.count == 0):
            e.goto("RESP")
        with m.Else():
            m.d.sync += e.todo.eq(e.row_len)
            e.goto("WR_ROW")
    with m.State("WR_ROW"):  # a row's bytes in at the bottom, top lane first
        e.take_bytes("WR_ROW_WORD")
    with m.State("WR_ROW_WORD"):
        m.d.comb += [e.hb.wr_en.eq(1), e.strobes.host_wr.eq(1)]  # sr's row (write_port)
        m.d.sync += [e.addr.eq(e.addr + 1), e.words.eq(e.words - 1), e.todo.eq(e.row_len)]
        with m.If(e.words == 1):
            e.goto("RESP")
        with m.Else():
            e.goto("WR_ROW")


def load_states(m: Module, e: SimpleNamespace) -> None:
    """LOAD and LOAD_RUN's copies: each copy's arguments checked, then started
    once the copier takes it; a LOAD_RUN's descriptor follows the last (back to ARGS)."""
    with m.State("LOAD_LEN"):
        with m.If((e.nload == 0) | (e.hdr.length != e.load_need)):
            m.d.sync += e.status.eq(Status.ERR_ARG)
            e.goto("DRAIN")
        with m.Else():
            m.d.sync += e.todo.eq(e.load_bytes)
            e.goto("ARGS")
    with m.State("LOAD_SIZE"):
        # memory words the LOAD reads (a constant multiple per buffer) and the checks
        # of its buffer range, registered (timing, as in SIZE)
        m.d.sync += e.load_bad.eq(1)
        with m.Switch(e.largs.buf):
            for b in sorted(loadable(e.cfg), key=lambda b: b.value):
                with m.Case(b):
                    m.d.sync += [e.load_words.eq(e.largs.count * dram_words(e.cfg, b)),
                                 e.load_bad.eq(e.largs.addr + e.largs.count > e.shapes[b][1])]
        e.goto("LOAD_SRC")
    with m.State("LOAD_SRC"):
        # and the source range, registered too: the add and its compare do not feed the
        # FSM's next state (timing: load_words -> this compare -> the FSM, the 16-lane
        # critical path once CHAIN had grown the FSM)
        with m.If(e.largs.src + e.load_words > 1 << e.cfg.dram_addr_bits):
            m.d.sync += e.load_bad.eq(1)
        e.goto("LOAD_CHECK")
    with m.State("LOAD_CHECK"):
        # a refused copy ends the request (the ones before it have started)
        with m.If(e.load_bad):
            m.d.sync += e.status.eq(Status.ERR_ARG)
            e.goto("DRAIN")
        with m.Elif(e.largs.count == 0):
            e.goto("LOAD_NEXT")
        with m.Else():
            e.goto("LOAD_START")
    with m.State("LOAD_START"):  # after the copy before it, if one still runs
        m.d.comb += [e.cp.start.payload.eq(e.largs), e.cp.start.valid.eq(1)]
        with m.If(e.cp.start.ready):
            m.d.comb += e.strobes.loads.eq(1)
            e.goto("LOAD_NEXT")
        with m.Else():
            m.d.comb += e.strobes.load_wait.eq(1)
    with m.State("LOAD_NEXT"):  # answered once the last copy has started
        m.d.sync += e.nload.eq(e.nload - 1)
        with m.If((e.nload == 1) & (e.hdr.cmd == Cmd.LOAD_RUN)):
            # then the descriptor, checked and run as a RUN's
            m.d.sync += [e.todo.eq(e.desc_bytes), e.in_run.eq(1)]
            e.goto("ARGS")
        with m.Elif(e.nload == 1):
            e.goto("RESP")
        with m.Else():
            m.d.sync += e.todo.eq(e.load_bytes)
            e.goto("ARGS")


def write_states(m: Module, e: SimpleNamespace) -> None:
    """WRITE_BUF and READ_BUF: the byte count and checks (three registered
    steps), then a WRITE_BUF's words, packed or whole bytes, into a buffer or the memory."""
    with m.State("PRODUCTS"):
        # the count times every constant a byte count may need, each into its own
        # register: selected after the multiply, a buffer id never reaches a
        # multiplier's operand (Yosys would share one multiplier behind a select
        # of the constants: buffer id -> DSP -> carry chain, the critical path)
        for c, r in e.products.items():
            m.d.sync += r.eq(e.args.count * c)
        e.goto("SIZE")
    with m.State("SIZE"):
        # bytes the words take, and the checks that need no byte count, registered
        # here so that no multiplier or range compare sits in the FSM's next-state
        # logic (timing)
        with m.Switch(e.args.buf):
            for b, n in e.wbytes.items():
                with m.Case(b):
                    if b in e.pk:
                        m.d.sync += [e.pk_w.eq(e.pk[b]), e.pk_full.eq(e.pk[b] <= 8)]
                    if b in e.pk:  # packed: whole bytes of count x width bits
                        m.d.sync += e.req_bytes.eq(Mux(e.packed,
                                                     (e.products[e.pk[b]] + 7) >> 3,
                                                     e.products[n]))
                    else:
                        m.d.sync += e.req_bytes.eq(e.products[n])
        valid_buf = e.args.buf <= max(b.value for b in BufId)
        # packed words: only a WRITE_BUF of a packable buffer
        valid_buf &= ~e.packed | ((e.hdr.cmd == Cmd.WRITE_BUF)
                                & e.args.buf.matches(*(b.value for b in e.pk)))
        unreadable = (e.hdr.cmd == Cmd.READ_BUF) & (
            e.args.buf.matches(*(b.value for b in BufId if b not in HOST_READABLE)))
        unreadable |= (e.hdr.cmd == Cmd.WRITE_BUF) & (
            e.args.buf.matches(*(b.value for b in BufId if b not in HOST_WRITABLE)))
        m.d.sync += e.args_bad.eq(~valid_buf | ~e.depth_ok | unreadable)
        e.goto("CHECK_BUF")
    with m.State("CHECK_BUF"):
        need = Mux(e.hdr.cmd == Cmd.WRITE_BUF, e.req_bytes, 0)  # after the arguments
        # a READ_BUF answer must fit the 16-bit length field
        too_long = (e.hdr.cmd == Cmd.READ_BUF) & (e.req_bytes > LENGTH_LIMIT)
        # the memory and the engine's host write port are the copy's while it runs,
        # and so is the buffer it writes; reading another buffer need not wait
        with m.If(e.cp.busy & (e.is_dram | (e.hdr.cmd == Cmd.WRITE_BUF) | e.reads_dma_buf)):
            m.d.comb += e.strobes.load_wait.eq(1)
        with m.Elif(e.args_bad | (e.body != need) | too_long):
            m.d.sync += e.status.eq(Status.ERR_ARG)
            e.goto("DRAIN")
        with m.Elif(e.hdr.cmd == Cmd.WRITE_BUF):
            m.d.sync += e.todo.eq(e.bpw)
            with m.If(e.args.count == 0):
                e.goto("RESP")
            with m.Elif(e.packed):
                e.goto("WR_PACKED")
            with m.Else():
                e.goto("WR_BYTES")
        with m.Else():
            m.d.sync += e.resp_len.eq(e.req_bytes)
            e.goto("RESP")
    with m.State("WR_PACKED"):
        # each byte joins the bits held; a word is written once its bits are in (the
        # last byte's spare bits are padding)
        m.d.comb += e.data_in.o.ready.eq(1)
        joined = e.joined
        have = Signal.like(e.pk_have)  # bits held after this byte
        m.d.comb += have.eq(e.pk_have + 8 - Mux(e.pk_full, e.pk_w, 0))
        with m.If(e.data_in.o.valid):
            m.d.sync += [e.rest.eq(e.rest - 1), e.pk_acc.eq(joined), e.pk_have.eq(have),
                         e.pk_full.eq(have + 8 >= e.pk_w)]
            with m.If(e.pk_full):
                m.d.comb += [e.hb.wr_en.eq(1), e.strobes.host_wr.eq(1)]
                m.d.sync += [e.addr.eq(e.addr + 1), e.words.eq(e.words - 1)]
                with m.Switch(e.args.buf):
                    for b, w in e.pk.items():
                        with m.Case(b):
                            m.d.sync += e.pk_acc.eq(joined >> w)
                with m.If(e.words == 1):
                    e.goto("RESP")
    with m.State("WR_BYTES"):
        m.d.comb += e.data_in.o.ready.eq(1)
        with m.If(e.data_in.o.valid):
            m.d.sync += [e.rest.eq(e.rest - 1), e.todo.eq(e.todo - 1)]
            with m.If(e.todo == 1):
                m.d.sync += e.dram_done.eq(0)
                e.goto("WR_WORD")
    with m.State("WR_WORD"):
        written = Signal()
        with m.If(e.is_dram):
            # the memory may take the command and the data in different cycles
            c_ok = e.dram_done[0] | e.x_cmd.ready
            d_ok = e.dram_done[1] | e.x_wdata.ready
            m.d.comb += [e.x_cmd.valid.eq(~e.dram_done[0]), e.x_cmd.payload.addr.eq(e.addr),
                         e.x_cmd.payload.we.eq(1), e.x_wdata.valid.eq(~e.dram_done[1]),
                         e.x_wdata.payload.eq(e.word_from_sr(e.wbytes[BufId.DRAM])),
                         written.eq(c_ok & d_ok),
                         e.strobes.dram_wr.eq(c_ok & d_ok)]
            m.d.sync += e.dram_done.eq(Mux(c_ok & d_ok, 0, Cat(c_ok, d_ok)))
        with m.Else():
            m.d.comb += [e.hb.wr_en.eq(1), written.eq(1)]
        with m.If(written):
            m.d.comb += e.strobes.host_wr.eq(1)
            m.d.sync += [e.addr.eq(e.addr + 1), e.words.eq(e.words - 1), e.todo.eq(e.bpw)]
            with m.If(e.words == 1):
                e.goto("RESP")
            with m.Else():
                e.goto("WR_BYTES")


def read_states(m: Module, e: SimpleNamespace) -> None:
    """READ_BUF's words: each read from the engine's read port or the external
    memory, then sent a byte at a time by ``SEND``."""
    with m.State("RD_WORD"):
        with m.If(e.is_dram):
            m.d.comb += [e.x_cmd.valid.eq(1), e.x_cmd.payload.addr.eq(e.addr)]
            with m.If(e.x_cmd.ready):
                m.d.comb += [e.strobes.host_rd.eq(1), e.strobes.dram_rd.eq(1)]
                m.d.sync += [e.addr.eq(e.addr + 1), e.words.eq(e.words - 1)]
                e.goto("RD_DRAM")
        with m.Else():
            m.d.comb += [e.hb.rd_en.eq(1), e.hb.rd_buf.eq(e.args.buf),
                         e.hb.rd_addr.eq(e.addr), e.strobes.host_rd.eq(1)]
            m.d.sync += [e.addr.eq(e.addr + 1), e.words.eq(e.words - 1), e.rbyte.eq(0)]
            e.goto("RD_WAIT")
    with m.State("RD_WAIT"):  # the engine registers the request
        e.goto("RD_WAIT2")
    with m.State("RD_WAIT2"):  # the engine registers the word first
        e.goto("RD_LATCH")
    with m.State("RD_DRAM"):  # the word comes back into so and goes out from there
        with m.If(e.dram.rdata.valid):
            m.d.sync += [e.so.eq(e.dram.rdata.payload), e.todo.eq(e.bpw)]
            e.goto("SEND")
    with m.State("RD_LATCH"):
        # the word stays on the engine's read port (nothing else reads it while the
        # executor sends it) and goes out byte by byte from there, not through so;
        # the engine registers the byte first (rd_byte_data), so each byte takes a
        # cycle here before SEND
        m.d.sync += e.todo.eq(e.bpw)
        e.goto("SEND")
    with m.State("RD_BYTE"):
        e.goto("SEND")
