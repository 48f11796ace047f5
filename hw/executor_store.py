"""The executor's STORE (``accel.protocol.STORE_ARGS``), as states of its FSM
(``hw.executor.Executor``; ``e`` as in ``hw.executor_buf``): weight rows (or, with the
spike encoder, rows of spike codes) gathered from the output buffer's codes and written
into the external memory, laid out as a LOAD of them reads them, so that one GEMM's
outputs become a later GEMM's weights (K of QK^T, V of PV) or its input codes (Q of QK^T)
without crossing the link.

A weight row is one buffer word (``lanes`` lanes of the array, the rest zero); a code row
is ``ceil(lanes / CODES_PER_WORD)`` code-buffer words (``accel.layouts.code_words``: each
row padded to whole words), so its length comes from ``lanes``.

The gather is sequential: each lane's OUT word is read through the engine's host read
port (its byte path: the word's low byte, registered in the engine, five cycles a lane)
and shifted in at the top of a register one memory word wide, which is written once its
lanes are in. Lanes past ``lanes`` are zeros and take a cycle each. No multiplier is on the
way: the addresses step by ``row_stride`` and ``lane_stride``; the range checks' two
products are registered before they are compared (timing, as ``SIZE``)."""

from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal

from accel.chain import store_bufs, store_lanes
from accel.config import CODES_PER_WORD
from accel.layouts import BufId, dram_words
from accel.protocol import STORE_ARGS, Status, nbytes

#: Cycles from a host read's request to its byte on ``rd_byte_data`` (``hw.engine``: the
#: request, the read and the word registered, then the byte).
READ_CYCLES = 4

#: What every STORE state's name starts with (and no other's): ``store_busy`` is a flag
#: ``goto`` sets on entering a state so named (``hw.executor``), not a decode of the state,
#: so a STORE state added later is counted without a list to keep.
STORE_PREFIX = "STORE_"


def store_states(m: Module, e: SimpleNamespace) -> None:
    """STORE: its arguments latched and checked (buffer, lanes, the OUT words and memory
    words it names), then each row gathered lane by lane and written a memory word at a
    time, each write once the memory port is free of a copy in flight."""
    cfg = e.cfg
    m.d.comb += e.strobes.store_busy.eq(e.in_store)  # every cycle in a STORE_ state
    out_depth = e.shapes[BufId.OUT][1]
    db = cfg.dram_bits
    shape = {b: (*store_lanes(cfg, b), dram_words(cfg, b)) for b in store_bufs(cfg)}
    codes = BufId.CODES in shape
    # a code row's memory words: whole code words of CODES_PER_WORD codes
    assert not codes or (shape[BufId.CODES][0] == cfg.narrow_bits
                         and CODES_PER_WORD & (CODES_PER_WORD - 1) == 0)
    per_shift = CODES_PER_WORD.bit_length() - 1
    sa = Signal(STORE_ARGS)
    narrow = Signal()  # 4-bit lanes: WEIGHTS4 or CODES
    is_codes = Signal()
    code_row = Signal(range((255 >> per_shift) + 2))  # a code row's code words
    bad = Signal()
    p_rows = Signal(32)  # (rows - 1) x row_stride
    p_lanes = Signal(24)  # (lanes - 1) x lane_stride
    need = {b: Signal(32, name=f"store_need_{b.name.lower()}") for b in shape}
    row_ptr, lane_ptr = Signal(34), Signal(34)
    dst = Signal(cfg.dram_addr_bits)
    left = Signal(16)  # rows still to write
    # lanes of a row's memory words (a code row: up to 255 lanes, padded to a code word)
    most = max([n * w for b, (_, n, w) in shape.items() if b != BufId.CODES]
               + [256 if codes else 0])
    lane = Signal(range(most + 1))
    c = Signal(range(most + 1))  # lanes in the memory word so far
    wi = Signal(range(most + 1))  # memory words of the row so far
    acc = Signal(db)
    c_last = Mux(narrow, shape[BufId.WEIGHTS4][1] - 1, shape[BufId.WEIGHTS][1] - 1)
    w_last = Signal(range(most + 1))  # the row's last memory word, set by STORE_SIZE

    def shift_in(value):
        """``value``'s lane bits in at the top of ``acc``; the next lane, and the memory
        word written once its last lane is in."""
        wide_b, narrow_b = shape[BufId.WEIGHTS][0], shape[BufId.WEIGHTS4][0]
        m.d.sync += [acc.eq(Mux(narrow, Cat(acc[narrow_b:], value[:narrow_b]),
                                Cat(acc[wide_b:], value[:wide_b]))),
                     lane.eq(lane + 1), c.eq(c + 1)]
        with m.If(c == c_last):
            m.d.sync += e.dram_done.eq(0)
            e.goto("STORE_WR")
        with m.Else():
            e.goto("STORE_LANE")

    with m.State("STORE_LATCH"):
        m.d.sync += sa.eq(e.word_from_sr(nbytes(STORE_ARGS.size)))
        e.goto("STORE_SIZE")
    with m.State("STORE_SIZE"):
        words = ((sa.lanes + CODES_PER_WORD - 1) >> per_shift) if codes else 0
        m.d.sync += [narrow.eq(sa.buf.matches(BufId.WEIGHTS4, BufId.CODES)),
                     is_codes.eq((sa.buf == BufId.CODES) if codes else 0),
                     bad.eq(~sa.buf.matches(*shape) | (sa.lanes == 0)
                            | (sa.lanes > cfg.lanes)),
                     p_rows.eq((sa.rows - 1) * sa.row_stride),
                     p_lanes.eq((sa.lanes - 1) * sa.lane_stride),
                     code_row.eq(words),
                     *(need[b].eq(sa.rows * n) for b, (_, _, n) in shape.items()
                       if b != BufId.CODES)]
        e.goto("STORE_CODES")
    with m.State("STORE_CODES"):  # a code row's length known: its memory words
        if codes:
            cw = shape[BufId.CODES][2]
            m.d.sync += need[BufId.CODES].eq(sa.rows * (code_row * cw))
        m.d.sync += w_last.eq(Mux(narrow, shape[BufId.WEIGHTS4][2] - 1,
                                  shape[BufId.WEIGHTS][2] - 1))
        if codes:
            with m.If(is_codes):
                m.d.sync += w_last.eq(code_row * shape[BufId.CODES][2] - 1)
        e.goto("STORE_RANGE")
    with m.State("STORE_RANGE"):  # the products registered, then the sums and compares
        last_out = sa.src + p_rows + p_lanes
        end = sa.dst + Mux(narrow, need[BufId.WEIGHTS4], need[BufId.WEIGHTS])
        if codes:
            end = Mux(is_codes, sa.dst + need[BufId.CODES], end)
        # (no rows: nothing to range-check; rows - 1 would wrap)
        with m.If((sa.rows != 0) & ((last_out >= out_depth) | (end > 1 << cfg.dram_addr_bits))):
            m.d.sync += bad.eq(1)
        e.goto("STORE_CHECK")
    with m.State("STORE_CHECK"):
        # no wait for a copy in flight: it writes no OUT word, and the memory takes the
        # STORE's writes once the copy is done (``hw.top``: the port is the copier's while
        # it is busy), so the gather runs beside the copy of the next GEMM's weights
        with m.If(bad):
            m.d.sync += e.status.eq(Status.ERR_ARG)
            e.goto("RESP")
        with m.Elif(sa.rows == 0):
            e.goto("RESP")
        with m.Else():
            m.d.sync += [row_ptr.eq(sa.src), dst.eq(sa.dst), left.eq(sa.rows), e.rbyte.eq(0)]
            e.goto("STORE_ROW")
    with m.State("STORE_ROW"):
        m.d.sync += [lane_ptr.eq(row_ptr), lane.eq(0), c.eq(0), wi.eq(0)]
        e.goto("STORE_LANE")
    with m.State("STORE_LANE"):  # a lane's OUT word asked for, or a zero lane
        with m.If(lane < sa.lanes):
            m.d.comb += [e.hb.rd_en.eq(1), e.hb.rd_buf.eq(BufId.OUT),
                         e.hb.rd_addr.eq(lane_ptr), e.strobes.host_rd.eq(1)]
            e.goto("STORE_W1")
        with m.Else():
            shift_in(Const(0, 8))
    for i in range(1, READ_CYCLES):
        with m.State(f"STORE_W{i}"):
                e.goto(f"STORE_W{i + 1}" if i + 1 < READ_CYCLES else "STORE_GET")
    with m.State("STORE_GET"):
        m.d.sync += lane_ptr.eq(lane_ptr + sa.lane_stride)
        shift_in(e.hb.rd_byte_data)
    with m.State("STORE_WR"):  # the memory may take the command and the data apart
        c_ok = e.dram_done[0] | e.x_cmd.ready
        d_ok = e.dram_done[1] | e.x_wdata.ready
        m.d.comb += [e.x_cmd.valid.eq(~e.dram_done[0]), e.x_cmd.payload.addr.eq(dst),
                     e.x_cmd.payload.we.eq(1), e.x_wdata.valid.eq(~e.dram_done[1]),
                     e.x_wdata.payload.eq(acc), e.strobes.dram_wr.eq(c_ok & d_ok)]
        m.d.sync += e.dram_done.eq(Mux(c_ok & d_ok, 0, Cat(c_ok, d_ok)))
        with m.If(c_ok & d_ok):
            m.d.sync += [dst.eq(dst + 1), wi.eq(wi + 1), c.eq(0)]
            with m.If(wi != w_last):
                e.goto("STORE_LANE")
            with m.Elif(left == 1):
                e.goto("RESP")
            with m.Else():
                m.d.sync += [left.eq(left - 1), row_ptr.eq(row_ptr + sa.row_stride)]
                e.goto("STORE_ROW")
