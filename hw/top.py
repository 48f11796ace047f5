"""Top level: host link + command executor + GEMM engine + copier + spike encoder +
counters.

:class:`Top` is wiring only: the link (``hw.link``) hands request frames to the command
executor (``hw.executor``, which documents the commands), the executor drives the engine
(``hw.engine``), the LOAD copier (``hw.mem.Dma``) and the counters' read side
(``hw.counters``), and everything's strobes count into the counter file. Two things are
shared here: the external memory (``dram``) and the engine's host write port are the
copier's while a LOAD runs, else the executor's (which waits for the LOAD before it
touches the memory or a buffer the copier writes).
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accel.board import BOARD_OSC_HZ, LINK_TIMEOUT_S
from accel.config import AccelConfig
from accel.counters import COUNTERS

from .counters import CounterFile
from .encoder import SpikeEncoder
from .engine import HOST_WRITE_STAGES, STROBES, Engine
from .executor import EXEC_STROBES, Executor
from .link import Link
from .mem import Dma, dram_port

#: Cycles without a byte after which the link drops a half-received frame:
#: ``LINK_TIMEOUT_S`` (10 ms) on the 25 MHz oscillator (the board top scales it to its PLL
#: clock), about 0.2 s in the simulator. The host stays quiet longer than this before it
#: retransmits after a timeout (``host.driver.Device.quiet``).
LINK_TIMEOUT = round(BOARD_OSC_HZ * LINK_TIMEOUT_S)
#: Register stages of the host bus between the writers' mux and the engine (below).
BUS_STAGES = 1


class Top(wiring.Component):
    """The accelerator behind an 8-bit byte stream (UART or simulator socket), with its
    external memory on ``dram`` (``hw.mem``)."""

    def __init__(self, cfg: AccelConfig, *, link_timeout: int = LINK_TIMEOUT):
        self.cfg = cfg
        self.link_timeout = link_timeout
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                          "dram": Out(dram_port(cfg))})

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        m.submodules.link = link = Link(timeout_cycles=self.link_timeout)
        m.submodules.executor = exe = Executor(cfg)
        m.submodules.engine = eng = Engine(cfg)
        m.submodules.counters = cnt = CounterFile(cfg, inc_bits=(cfg.lanes).bit_length() + 1)
        # the copier stays busy until its last word is in its buffer: the bus register
        # below and the engine's own (a RUN, EXPAND or host read that waits for it reads
        # the new word; tests/host/test_load_interlock.py)
        m.submodules.dma = dma = Dma(cfg, settle=BUS_STAGES + HOST_WRITE_STAGES)
        enc = None
        if cfg.spike_encoder:
            m.submodules.encoder = enc = SpikeEncoder(cfg)
            wiring.connect(m, exe.encoder.start, enc.start)
            m.d.comb += [exe.encoder.done.eq(enc.done), exe.encoder.bad.eq(enc.bad)]
            wiring.connect(m, enc.codes, eng.codes_rd)
        wiring.connect(m, wiring.flipped(self.rx), link.rx)
        wiring.connect(m, link.tx, wiring.flipped(self.tx))
        wiring.connect(m, link.cmd, exe.cmd)
        wiring.connect(m, link.data, exe.data)
        wiring.connect(m, exe.resp, link.resp)
        wiring.connect(m, exe.resp_data, link.resp_data)
        wiring.connect(m, exe.copier, dma.control)
        wiring.connect(m, exe.counters, cnt.read)
        # the engine's control is flat ports (its benches drive them by name)
        wiring.connect(m, exe.engine.run, eng.run)
        m.d.comb += [eng.abort.eq(exe.engine.abort), eng.w_half.eq(exe.engine.w_half),
                     exe.engine.done.eq(eng.done), exe.engine.fault.eq(eng.fault)]

        # The external memory is the copier's while a LOAD runs (busy is a register: the
        # port select starts at a flip-flop), else the executor's. The executor takes read
        # data only in a state it enters with the copier idle, so its rdata is not gated.
        busy, x = dma.control.busy, exe.dram
        m.d.comb += [
            self.dram.cmd.valid.eq(Mux(busy, dma.mem.cmd.valid, x.cmd.valid)),
            self.dram.cmd.payload.eq(Mux(busy, dma.mem.cmd.payload, x.cmd.payload)),
            dma.mem.cmd.ready.eq(busy & self.dram.cmd.ready),
            x.cmd.ready.eq(~busy & self.dram.cmd.ready),
            self.dram.wdata.valid.eq(~busy & x.wdata.valid),
            self.dram.wdata.payload.eq(x.wdata.payload),
            x.wdata.ready.eq(~busy & self.dram.wdata.ready),
            dma.mem.rdata.valid.eq(busy & self.dram.rdata.valid),
            dma.mem.rdata.payload.eq(self.dram.rdata.payload),
            x.rdata.valid.eq(self.dram.rdata.valid),
            x.rdata.payload.eq(self.dram.rdata.payload),
            self.dram.rdata.ready.eq(1),
        ]
        # The engine's host bus (executor, copier and encoder drive one each): reads are
        # the executor's; a write is the encoder's while it is busy, else the copier's
        # while it is busy, else the executor's (the executor writes only with the copier
        # and the encoder idle, the copier only while busy, the encoder only while the
        # executor waits for it with the copier idle).
        hb, xh, ch = eng.host, exe.host, dma.host
        # The writer is chosen by who is busy (the copier's busy is a register, the
        # encoder's its state), not by the executor's write enable: that one is its state
        # machine's decode, and it would select among 512 bits (timing). The enables are
        # ORed: only one source writes at a time.
        names = ("wr_buf", "wr_addr", "wr_data")
        # The executor's write leaves a register before the mux: its enable, buffer and
        # word are its state machine's decode, which reached the bus register and the
        # host-write counter across the die (timing: 64 lanes at 62.7 MHz once STORE had
        # grown the FSM). Nothing it writes is read that soon, and neither the copier nor
        # the encoder starts within a cycle of its last write (each is a later request).
        xq = {n: Signal.like(getattr(xh, n), name=f"exec_{n}_q", reset_less=True)
              for n in ("wr_en", *names)}
        m.d.sync += [xq[n].eq(getattr(xh, n)) for n in xq]
        pick = {n: Mux(dma.control.busy, getattr(ch, n), xq[n]) for n in names}
        wr_en = xq["wr_en"] | ch.wr_en
        if enc is not None:
            pick = {n: Mux(enc.busy, getattr(enc.host, n), pick[n]) for n in names}
            wr_en |= enc.host.wr_en
        # The chosen write is registered here, and again in the engine before its buffers
        # (timing: at 64 lanes the executor's packed-word logic, this mux and the engine's
        # buffer decode were one path, 14 of its 17 ns routing between the executor and
        # the engine). Reset-less, like the engine's stage: a flush loses no write. The
        # copier's busy covers both stages (``settle``).
        bus = {n: Signal.like(getattr(hb, n), name=f"bus_{n}_q", reset_less=True)
               for n in ("wr_en", *names)}
        m.d.sync += [bus["wr_en"].eq(wr_en), *(bus[n].eq(pick[n]) for n in names)]
        m.d.comb += [getattr(hb, n).eq(v) for n, v in bus.items()]
        m.d.comb += [
            hb.rd_en.eq(xh.rd_en), hb.rd_buf.eq(xh.rd_buf), hb.rd_addr.eq(xh.rd_addr),
            hb.rd_byte.eq(xh.rd_byte),
            xh.rd_data.eq(hb.rd_data), xh.rd_byte_data.eq(hb.rd_byte_data),
        ]

        # the executor's strobes registered on their way to the counters (as its writes:
        # its state decode does not cross the die to the counter file in one cycle); a
        # count lands a cycle later, long before any READ_COUNTERS can read it
        exec_q = {n: Signal(name=f"exec_{n}_q") for n in EXEC_STROBES}
        m.d.sync += [q.eq(getattr(exe.strobes, n)) for n, q in exec_q.items()]
        # the counters' sources by name (accel.counters.Counter.sources)
        strobe = {"one": 1, **{f"engine.{n}": getattr(eng.strobes, n) for n in STROBES},
                  "engine.busy": eng.busy, "engine.fault": eng.fault,
                  "link.rx_byte": link.rx_byte, "link.tx_byte": link.tx_byte,
                  "link.frame_err": link.frame_err, "dma.word_rd": dma.word_rd,
                  "dma.busy": busy,
                  **{f"exec.{n}": s for n, s in exec_q.items()},
                  "exec.load_overlap": busy & eng.busy,
                  "enc.busy": 0 if enc is None else enc.busy,
                  "enc.word_wr": 0 if enc is None else enc.word_wr}
        n_act = Signal(range(cfg.lanes + 1))
        with m.If(eng.run.valid & eng.run.ready):
            m.d.sync += n_act.eq(eng.run.payload.n_active)

        # every counter from its sources in the one counter map (accel.counters)
        for name, c in COUNTERS.items():
            inc = sum(strobe[src] for src in c.sources)
            m.d.comb += cnt.inc[name].eq(Mux(inc, n_act, 0) if c.scaled else inc)
        return m
