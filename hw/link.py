"""Host link gateware: frames in, commands out; responses in, frames out (``hw.protocol``).

The receiver stores a whole frame's payload in a frame buffer and checks its CRC before the
core sees anything: a bad frame never reaches the buffers. Errors the link answers itself:
bad CRC (``ERR_CRC``), a length above ``max_payload`` (``ERR_LENGTH``), a frame whose bytes
stop for more than ``timeout_cycles`` (``ERR_TIMEOUT``, a truncated frame). After any of
them it hunts for the next SOF. One request is answered before the next is taken.
"""


import operator
from functools import reduce

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .protocol import CRC_BYTES, HEADER, HEADER_BYTES, MAX_PAYLOAD, SOF, Status

CRC_POLY = 0xEDB88320


def _crc_step(c: int, b: int) -> int:
    c ^= b
    for _ in range(8):
        c = (c >> 1) ^ CRC_POLY if c & 1 else c >> 1
    return c


# The byte update is linear over GF(2): each new CRC bit is the XOR of fixed subsets of the
# old CRC bits and the byte bits. Precomputing the subsets gives 32 small XOR trees instead
# of an 8-deep mux chain (which also exploded the emitted Verilog).
_FROM_CRC = [_crc_step(1 << j, 0) for j in range(32)]
_FROM_BYTE = [_crc_step(0, 1 << j) for j in range(8)]


def crc32_byte(crc, byte):
    """Combinational CRC-32 (zlib) update of ``crc`` (32-bit) by one byte, reflected."""
    bits = []
    for i in range(32):
        terms = [crc[j] for j in range(32) if _FROM_CRC[j] >> i & 1]
        terms += [byte[j] for j in range(8) if _FROM_BYTE[j] >> i & 1]
        bits.append(reduce(operator.xor, terms))
    return Cat(*bits)


class Link(wiring.Component):
    """Framed, CRC-checked command link over 8-bit streams."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    cmd: Out(stream.Signature(HEADER))
    data: Out(stream.Signature(data.StructLayout({"byte": unsigned(8), "last": unsigned(1)})))
    resp: In(stream.Signature(HEADER))
    resp_data: In(stream.Signature(8))
    rx_byte: Out(1)
    tx_byte: Out(1)
    frame_err: Out(1)

    def __init__(self, max_payload: int = MAX_PAYLOAD, timeout_cycles: int = 100_000):
        if not 1 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload must be in 1..65535, not {max_payload}")
        if timeout_cycles < 1:
            raise ValueError(f"timeout_cycles must be positive, not {timeout_cycles}")
        self.max_payload, self.timeout_cycles = max_payload, timeout_cycles
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.frame = mem = memory.Memory(shape=8, depth=self.max_payload, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += rp.en.eq(0)  # a read port is enabled by default: hold data unless asked

        hdr_bits = Signal(HEADER_BYTES * 8)
        hdr = data.View(HEADER, hdr_bits)
        crc = Signal(32)
        crc_rx = Signal(32)
        cnt = Signal(16)
        idle = Signal(range(self.timeout_cycles + 2))
        err = Signal(Status, init=Status.ERR_CRC)  # error for the transmitter to report
        err_req = Signal()
        err_seq = Signal(8)
        resp_done = Signal()
        have = Signal()  # the frame-buffer read port holds the next payload byte
        byte = self.rx.payload
        took = self.rx.valid & self.rx.ready
        m.d.comb += self.rx_byte.eq(took)

        def fail(status, seq):
            m.d.sync += [err.eq(status), err_req.eq(1), err_seq.eq(seq)]
            m.d.comb += self.frame_err.eq(1)
            m.next = "REPORT"

        with m.FSM(name="rx_fsm"):
            with m.State("HUNT"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(took & (byte == SOF)):
                    m.d.sync += [cnt.eq(0), crc.eq(0xFFFFFFFF), idle.eq(0)]
                    m.next = "HDR"
            for state in ("HDR", "PAYLOAD", "CRC"):
                with m.State(state):
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(took):
                        m.d.sync += idle.eq(0)
                    with m.Elif(idle == self.timeout_cycles):
                        fail(Status.ERR_TIMEOUT, hdr.seq)
                    with m.Else():
                        m.d.sync += idle.eq(idle + 1)
                    with m.If(took):
                        if state == "HDR":
                            new_hdr = Signal.like(hdr_bits)
                            m.d.comb += new_hdr.eq((hdr_bits >> 8)
                                                   | (byte << 8 * (HEADER_BYTES - 1)))
                            m.d.sync += [hdr_bits.eq(new_hdr), crc.eq(crc32_byte(crc, byte)),
                                         cnt.eq(cnt + 1)]
                            with m.If(cnt == HEADER_BYTES - 1):
                                length = data.View(HEADER, new_hdr).length
                                m.d.sync += cnt.eq(0)
                                with m.If(length > self.max_payload):
                                    fail(Status.ERR_LENGTH, data.View(HEADER, new_hdr).seq)
                                with m.Elif(length == 0):
                                    m.next = "CRC"
                                with m.Else():
                                    m.next = "PAYLOAD"
                        elif state == "PAYLOAD":
                            m.d.comb += [wp.addr.eq(cnt), wp.data.eq(byte), wp.en.eq(1)]
                            m.d.sync += [crc.eq(crc32_byte(crc, byte)), cnt.eq(cnt + 1)]
                            with m.If(cnt == hdr.length - 1):
                                m.d.sync += cnt.eq(0)
                                m.next = "CRC"
                        else:
                            new_crc = Signal(32)
                            m.d.comb += new_crc.eq((crc_rx >> 8) | (byte << 24))
                            m.d.sync += [crc_rx.eq(new_crc), cnt.eq(cnt + 1)]
                            with m.If(cnt == CRC_BYTES - 1):
                                with m.If(new_crc == (crc ^ 0xFFFFFFFF)):
                                    m.next = "DELIVER"
                                with m.Else():
                                    fail(Status.ERR_CRC, hdr.seq)
            with m.State("DELIVER"):
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.eq(hdr)]
                with m.If(self.cmd.ready):
                    m.d.sync += [cnt.eq(0), have.eq(0)]
                    with m.If(hdr.length == 0):
                        m.next = "WAIT_RESP"
                    with m.Else():
                        m.next = "STREAM"
            with m.State("STREAM"):  # the payload from the frame buffer (read latency 1)
                with m.If(~have):
                    m.d.comb += [rp.addr.eq(cnt), rp.en.eq(1)]
                    m.d.sync += have.eq(1)
                with m.Else():
                    m.d.comb += [self.data.valid.eq(1), self.data.payload.byte.eq(rp.data),
                                 self.data.payload.last.eq(cnt == hdr.length - 1)]
                    with m.If(self.data.ready):
                        m.d.comb += [rp.addr.eq(cnt + 1), rp.en.eq(1)]
                        m.d.sync += cnt.eq(cnt + 1)
                        with m.If(cnt == hdr.length - 1):
                            m.d.sync += have.eq(0)
                            m.next = "WAIT_RESP"
            with m.State("WAIT_RESP"):
                with m.If(resp_done):
                    m.next = "HUNT"
            with m.State("REPORT"):
                with m.If(~err_req):
                    m.next = "HUNT"

        # -- transmitter -------------------------------------------------------------------
        t_hdr_bits = Signal(HEADER_BYTES * 8)
        t_hdr = data.View(HEADER, t_hdr_bits)
        t_crc = Signal(32)
        t_cnt = Signal(16)
        t_is_err = Signal()
        out_byte = Signal(8)
        m.d.comb += [self.tx.payload.eq(out_byte)]
        sent = self.tx.valid & self.tx.ready
        m.d.comb += self.tx_byte.eq(sent)
        with m.FSM(name="tx_fsm"):
            with m.State("IDLE"):
                with m.If(err_req):
                    m.d.sync += [t_hdr.cmd.eq(err), t_hdr.seq.eq(err_seq), t_hdr.length.eq(0),
                                 t_is_err.eq(1)]
                    m.next = "SOF"
                with m.Elif(self.resp.valid):
                    m.d.comb += self.resp.ready.eq(1)
                    m.d.sync += [t_hdr.eq(self.resp.payload), t_is_err.eq(0)]
                    m.next = "SOF"
            with m.State("SOF"):
                m.d.comb += [self.tx.valid.eq(1), out_byte.eq(SOF)]
                with m.If(sent):
                    m.d.sync += [t_cnt.eq(0), t_crc.eq(0xFFFFFFFF)]
                    m.next = "THDR"
            with m.State("THDR"):
                b = t_hdr_bits.word_select(t_cnt[:2], 8)
                m.d.comb += [self.tx.valid.eq(1), out_byte.eq(b)]
                with m.If(sent):
                    m.d.sync += [t_crc.eq(crc32_byte(t_crc, b)), t_cnt.eq(t_cnt + 1)]
                    with m.If(t_cnt == HEADER_BYTES - 1):
                        m.d.sync += t_cnt.eq(0)
                        with m.If(t_hdr.length == 0):
                            m.next = "TCRC"
                        with m.Else():
                            m.next = "TDATA"
            with m.State("TDATA"):
                m.d.comb += [self.tx.valid.eq(self.resp_data.valid),
                             out_byte.eq(self.resp_data.payload),
                             self.resp_data.ready.eq(self.tx.ready)]
                with m.If(sent):
                    m.d.sync += [t_crc.eq(crc32_byte(t_crc, self.resp_data.payload)),
                                 t_cnt.eq(t_cnt + 1)]
                    with m.If(t_cnt == t_hdr.length - 1):
                        m.d.sync += t_cnt.eq(0)
                        m.next = "TCRC"
            with m.State("TCRC"):
                final = t_crc ^ 0xFFFFFFFF
                m.d.comb += [self.tx.valid.eq(1), out_byte.eq(final.word_select(t_cnt[:2], 8))]
                with m.If(sent):
                    m.d.sync += t_cnt.eq(t_cnt + 1)
                    with m.If(t_cnt == CRC_BYTES - 1):
                        with m.If(t_is_err):
                            m.d.sync += err_req.eq(0)
                        with m.Else():
                            m.d.comb += resp_done.eq(1)
                        m.next = "IDLE"
        return m
