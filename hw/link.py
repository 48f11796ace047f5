"""Host link gateware: frames in, commands out; responses in, frames out (``accel.protocol``).

:class:`Link` joins a receiver (:class:`LinkRx`: SOF hunt, header, payload into the frame
buffer, CRC check) and a transmitter (:class:`LinkTx`: core responses and the receiver's
error replies framed with their CRC).

The receiver stores a whole frame's payload in a frame buffer and checks its CRC before the
core sees anything, so a corrupted request never reaches the engine's buffers. The link
answers by itself a bad CRC (``ERR_CRC``), a length above ``max_payload`` (``ERR_LENGTH``)
and a frame whose bytes stop for more than ``timeout_cycles`` cycles (``ERR_TIMEOUT``);
after any of them it hunts for the next SOF. Unknown command codes are not filtered: the
core sees them and answers ``ERR_COMMAND``. One request is answered before the next one is
taken, so responses leave in request order and the frame buffer needs one slot only.
"""

# no "from __future__ import annotations": wiring reads the port annotations as objects
from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from accel.protocol import CRC_BYTES, HEADER, HEADER_BYTES, LENGTH_LIMIT, MAX_PAYLOAD, SOF, Status

#: Reflected CRC-32 polynomial (zlib's).
CRC_POLY = 0xEDB88320
CRC_INIT = 0xFFFFFFFF

#: One payload byte on the ``data`` stream; ``last`` marks the frame's final byte.
DATA_LAYOUT = data.StructLayout({"byte": unsigned(8), "last": unsigned(1)})
#: An error reply the receiver asks the transmitter to send (empty payload).
ERR_LAYOUT = data.StructLayout({"status": Status, "seq": unsigned(8)})


def crc32_update(m: Module, crc, byte, *, name: str = "crc") -> Signal:
    """Combinational CRC-32 (zlib, reflected) update of ``crc`` by one byte.

    Eight bitwise steps, least significant bit first. Each step is its own signal: written
    as one nested expression the eight steps share nothing and the emitted Verilog grows
    as 2**8; as signals, synthesis still flattens them into 32 small XOR trees.

    Parameters
    ----------
    m : Module
        Module that receives the combinational assignments.
    crc : Value
        The 32-bit CRC register (before the final xor).
    byte : Value
        The 8-bit byte.
    name : str
        Prefix of the step signals' names.

    Returns
    -------
    Signal
        The updated 32-bit CRC.
    """
    c = crc
    for i in range(8):
        step = Signal(32, name=f"{name}_step{i}")
        m.d.comb += step.eq((c >> 1) ^ Mux(c[0] ^ byte[i], CRC_POLY, 0))
        c = step
    return c


class _Params:
    """The receiver's parameters, checked (``LinkRx`` and ``Link`` take the same)."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, timeout_cycles: int = 100_000):
        if (not isinstance(max_payload, int) or isinstance(max_payload, bool)
                or not 1 <= max_payload <= LENGTH_LIMIT):
            raise ValueError(f"max_payload must be an integer in 1..{LENGTH_LIMIT}, "
                             f"not {max_payload!r}")
        if (not isinstance(timeout_cycles, int) or isinstance(timeout_cycles, bool)
                or timeout_cycles < 1):
            raise ValueError(f"timeout_cycles must be a positive integer, "
                             f"not {timeout_cycles!r}")
        self.max_payload = max_payload
        self.timeout_cycles = timeout_cycles
        super().__init__()


class LinkRx(_Params, wiring.Component):
    """The link's receiver: whole, CRC-checked request frames in; commands and their
    payload bytes out; error replies requested from the transmitter.

    Parameters and the ``rx``, ``cmd``, ``data``, ``rx_byte`` and ``frame_err`` members:
    as :class:`Link`'s.

    Attributes
    ----------
    err : Out(stream.Signature(ERR_LAYOUT))
        An error reply to send (a bad CRC, a length above ``max_payload``, a timeout).
        Taken once the reply is out: the receiver hunts for the next SOF only then.
    resp_sent : In(1)
        Strobe: the core's response to the delivered command is out; the next request may
        come (one request at a time keeps responses in request order).
    """

    rx: In(stream.Signature(8))
    cmd: Out(stream.Signature(HEADER))
    data: Out(stream.Signature(DATA_LAYOUT))
    err: Out(stream.Signature(ERR_LAYOUT))
    resp_sent: In(1)
    rx_byte: Out(1)
    frame_err: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.frame = mem = memory.Memory(shape=8, depth=self.max_payload, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        # a read port is enabled unless told otherwise; held, its data waits for the sink
        m.d.comb += rp.en.eq(0)

        hdr_bits = Signal(HEADER.size, name="rx_hdr")
        hdr = data.View(HEADER, hdr_bits)
        crc = Signal(32, name="rx_crc")
        crc_rx = Signal(32, name="rx_crc_received")
        cnt = Signal(16, name="rx_cnt")
        # the payload's last byte's index, a register set with the header: the byte counts
        # compare equal to it, with no subtract (a carry chain) before the compare (timing:
        # hdr.length - 1 == cnt -> the frame buffer's read and the executor's byte, the
        # 16-lane critical path at 3d601f2)
        last_at = Signal(16, name="rx_last_at")
        idle = Signal(range(self.timeout_cycles + 1), name="rx_idle")
        err = Signal(Status, init=Status.ERR_CRC, name="err_status")
        err_seq = Signal(8)

        byte = self.rx.payload
        took = self.rx.valid & self.rx.ready
        m.d.comb += self.rx_byte.eq(took)
        crc_next = crc32_update(m, crc, byte, name="rx_crc")

        def fail(status, seq):
            m.d.sync += [err.eq(status), err_seq.eq(seq)]
            m.d.comb += self.frame_err.eq(1)
            m.next = "REPORT"

        with m.FSM(name="rx_fsm"):
            with m.State("HUNT"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(took & (byte == SOF)):
                    # a cleared header makes a timeout before the seq byte report seq 0
                    m.d.sync += [cnt.eq(0), crc.eq(CRC_INIT), idle.eq(0), hdr_bits.eq(0)]
                    m.next = "HDR"

            for state in ("HDR", "PAYLOAD", "CRC"):
                with m.State(state):
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(took):
                        m.d.sync += [idle.eq(0), cnt.eq(cnt + 1)]
                    with m.Elif(idle == self.timeout_cycles):
                        fail(Status.ERR_TIMEOUT, hdr.seq)
                    with m.Else():
                        m.d.sync += idle.eq(idle + 1)

                    if state == "HDR":
                        with m.If(took):
                            m.d.sync += [hdr_bits.word_select(cnt[:2], 8).eq(byte),
                                         crc.eq(crc_next)]
                            with m.If(cnt == HEADER_BYTES - 1):
                                # the length's high byte is still on rx.payload
                                length = Cat(hdr.length[:8], byte)
                                m.d.sync += [cnt.eq(0), last_at.eq(length - 1)]
                                with m.If(length > self.max_payload):
                                    fail(Status.ERR_LENGTH, hdr.seq)
                                with m.Elif(length == 0):
                                    m.next = "CRC"
                                with m.Else():
                                    m.next = "PAYLOAD"
                    elif state == "PAYLOAD":
                        m.d.comb += [wp.addr.eq(cnt), wp.data.eq(byte), wp.en.eq(took)]
                        with m.If(took):
                            m.d.sync += crc.eq(crc_next)
                            with m.If(cnt == last_at):
                                m.d.sync += cnt.eq(0)
                                m.next = "CRC"
                    else:
                        with m.If(took):
                            m.d.sync += crc_rx.word_select(cnt[:2], 8).eq(byte)
                            with m.If(cnt == CRC_BYTES - 1):
                                with m.If(Cat(crc_rx[:24], byte) == (crc ^ CRC_INIT)):
                                    m.next = "DELIVER"
                                with m.Else():
                                    fail(Status.ERR_CRC, hdr.seq)

            with m.State("DELIVER"):
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.eq(hdr)]
                with m.If(self.cmd.ready):
                    # fetch byte 0 now so that it is on the read port when STREAM starts
                    m.d.comb += [rp.addr.eq(0), rp.en.eq(1)]
                    m.d.sync += cnt.eq(0)
                    with m.If(hdr.length == 0):
                        m.next = "WAIT_RESP"
                    with m.Else():
                        m.next = "STREAM"

            with m.State("STREAM"):
                last = cnt == last_at
                m.d.comb += [self.data.valid.eq(1), self.data.payload.byte.eq(rp.data),
                             self.data.payload.last.eq(last)]
                with m.If(self.data.ready):
                    m.d.comb += [rp.addr.eq(cnt + 1), rp.en.eq(1)]
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(last):
                        m.next = "WAIT_RESP"

            with m.State("WAIT_RESP"):
                with m.If(self.resp_sent):
                    m.next = "HUNT"

            with m.State("REPORT"):
                m.d.comb += [self.err.valid.eq(1), self.err.payload.status.eq(err),
                             self.err.payload.seq.eq(err_seq)]
                with m.If(self.err.ready):
                    m.next = "HUNT"
        return m


class LinkTx(wiring.Component):
    """The link's transmitter: response frames out, SOF, header, payload and CRC.

    ``tx``, ``resp``, ``resp_data`` and ``tx_byte``: as :class:`Link`'s.

    Attributes
    ----------
    err : In(stream.Signature(ERR_LAYOUT))
        An error reply to send; taken when its last byte is out (the receiver waits for it).
        Sent before a pending core response, though the receiver never lets both pend.
    resp_sent : Out(1)
        Strobe: the last byte of a core response is out.
    """

    tx: Out(stream.Signature(8))
    resp: In(stream.Signature(HEADER))
    resp_data: In(stream.Signature(8))
    err: In(stream.Signature(ERR_LAYOUT))
    resp_sent: Out(1)
    tx_byte: Out(1)

    def elaborate(self, platform):
        m = Module()
        t_hdr_bits = Signal(HEADER.size, name="tx_hdr")
        t_hdr = data.View(HEADER, t_hdr_bits)
        t_crc = Signal(32, name="tx_crc")
        t_cnt = Signal(16, name="tx_cnt")
        t_is_err = Signal()
        sent = self.tx.valid & self.tx.ready
        m.d.comb += self.tx_byte.eq(sent)
        t_crc_next = crc32_update(m, t_crc, self.tx.payload, name="tx_crc")

        with m.FSM(name="tx_fsm"):
            with m.State("IDLE"):
                # the receiver waits for each response, so an error and a core response
                # are never pending together; the priority only makes that explicit
                with m.If(self.err.valid):
                    m.d.sync += [t_hdr.cmd.eq(self.err.payload.status),
                                 t_hdr.seq.eq(self.err.payload.seq), t_hdr.length.eq(0),
                                 t_is_err.eq(1)]
                    m.next = "SOF"
                with m.Elif(self.resp.valid):
                    m.d.comb += self.resp.ready.eq(1)
                    m.d.sync += [t_hdr.eq(self.resp.payload), t_is_err.eq(0)]
                    m.next = "SOF"

            with m.State("SOF"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(SOF)]
                with m.If(sent):
                    m.d.sync += [t_cnt.eq(0), t_crc.eq(CRC_INIT)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += [self.tx.valid.eq(1),
                             self.tx.payload.eq(t_hdr_bits.word_select(t_cnt[:2], 8))]
                with m.If(sent):
                    m.d.sync += [t_crc.eq(t_crc_next), t_cnt.eq(t_cnt + 1)]
                    with m.If(t_cnt == HEADER_BYTES - 1):
                        m.d.sync += t_cnt.eq(0)
                        with m.If(t_hdr.length == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                # a pass-through: responses need no buffer, whatever their length
                m.d.comb += [self.tx.valid.eq(self.resp_data.valid),
                             self.tx.payload.eq(self.resp_data.payload),
                             self.resp_data.ready.eq(self.tx.ready)]
                with m.If(sent):
                    m.d.sync += [t_crc.eq(t_crc_next), t_cnt.eq(t_cnt + 1)]
                    with m.If(t_cnt == t_hdr.length - 1):
                        m.d.sync += t_cnt.eq(0)
                        m.next = "CRC"

            with m.State("CRC"):
                final = t_crc ^ CRC_INIT
                m.d.comb += [self.tx.valid.eq(1),
                             self.tx.payload.eq(final.word_select(t_cnt[:2], 8))]
                with m.If(sent):
                    m.d.sync += t_cnt.eq(t_cnt + 1)
                    with m.If(t_cnt == CRC_BYTES - 1):
                        with m.If(t_is_err):
                            m.d.comb += self.err.ready.eq(1)
                        with m.Else():
                            m.d.comb += self.resp_sent.eq(1)
                        m.next = "IDLE"
        return m


class Link(_Params, wiring.Component):
    """Framed, CRC-checked command link over 8-bit streams.

    Parameters
    ----------
    max_payload : int
        Largest request payload (the depth of the frame buffer), 1..65535.
    timeout_cycles : int
        A frame whose next byte does not arrive within this many cycles is abandoned with
        ``ERR_TIMEOUT``. Set it above the longest gap of the byte source (one UART character
        at the slowest baud rate, plus host jitter).

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Bytes from the host (UART receiver).
    tx : Out(stream.Signature(8))
        Bytes to the host (UART transmitter).
    cmd : Out(stream.Signature(HEADER))
        The header of a received frame, offered only once the whole frame is in the frame
        buffer and its CRC is good. ``cmd.payload.cmd`` is the raw code byte.
    data : Out(stream.Signature(DATA_LAYOUT))
        That frame's ``length`` payload bytes, after ``cmd`` was accepted; ``last`` marks
        the final one. Nothing for an empty payload.
    resp : In(stream.Signature(HEADER))
        The core's response header (a :class:`~accel.protocol.Status` in ``cmd``). Expected
        once per delivered command; the link takes no new request until it has been sent.
    resp_data : In(stream.Signature(8))
        Exactly ``resp.length`` response payload bytes, following ``resp``.
    rx_byte, tx_byte : Out(1)
        Strobes: a byte was taken from ``rx`` / sent on ``tx`` this cycle.
    frame_err : Out(1)
        Strobe: the link rejected a frame (CRC, length or timeout) this cycle.
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    cmd: Out(stream.Signature(HEADER))
    data: Out(stream.Signature(DATA_LAYOUT))
    resp: In(stream.Signature(HEADER))
    resp_data: In(stream.Signature(8))
    rx_byte: Out(1)
    tx_byte: Out(1)
    frame_err: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = rx = LinkRx(self.max_payload, self.timeout_cycles)
        m.submodules.transmitter = tx = LinkTx()
        wiring.connect(m, wiring.flipped(self.rx), rx.rx)
        wiring.connect(m, rx.cmd, wiring.flipped(self.cmd))
        wiring.connect(m, rx.data, wiring.flipped(self.data))
        wiring.connect(m, rx.err, tx.err)
        wiring.connect(m, wiring.flipped(self.resp), tx.resp)
        wiring.connect(m, wiring.flipped(self.resp_data), tx.resp_data)
        wiring.connect(m, tx.tx, wiring.flipped(self.tx))
        m.d.comb += [rx.resp_sent.eq(tx.resp_sent), self.rx_byte.eq(rx.rx_byte),
                     self.tx_byte.eq(tx.tx_byte), self.frame_err.eq(rx.frame_err)]
        return m
