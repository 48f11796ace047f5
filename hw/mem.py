"""The accelerator's external memory (the board's SDRAM): its port, the LOAD copier, and a
behavioural memory for simulation.

The core sees ``2 ** dram_addr_bits`` words of ``dram_bits`` (``AccelConfig``) through one
port shaped like LiteDRAM's native user port (``litedram.common.LiteDRAMNativePort``: a
command stream, a write-data stream, a read-data stream), so that the LiteDRAM core
(``hw.sdram``) and :class:`MemModel` plug in alike. Unlike LiteDRAM's port there is no
``last`` on the command (every command is one word) and no byte enables (whole words).

Rules of the port (LiteDRAM's):
- a write command is followed, in order, by one word on ``wdata``;
- a read command returns one word on ``rdata``, in command order;
- the memory may hold ``cmd.ready`` low for any number of cycles (refresh, row opens);
- the core always takes ``rdata`` (``ready`` is 1), so it never has to buffer it.
"""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from accel.config import AccelConfig
from accel.layouts import BufId, dram_words, loadable
from accel.protocol import LOAD_ARGS

from .engine import host_bus_signature


def mem_cmd_layout(addr_bits: int) -> data.StructLayout:
    """One command: the word address and whether it writes."""
    return data.StructLayout({"addr": addr_bits, "we": 1})


def mem_port_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """The port as the core (the initiator) sees it."""
    return wiring.Signature({
        "cmd": Out(stream.Signature(mem_cmd_layout(addr_bits))),
        "wdata": Out(stream.Signature(data_bits)),
        "rdata": In(stream.Signature(data_bits)),
    })


def dram_port(cfg: AccelConfig) -> wiring.Signature:
    """:func:`mem_port_signature` of ``cfg``'s external memory."""
    return mem_port_signature(cfg.dram_addr_bits, cfg.dram_bits)


def copier_signature(cfg: AccelConfig) -> wiring.Signature:
    """The copier's control, from the side that drives it (the executor): ``start`` takes a
    checked LOAD; ``busy``, ``buf``, ``lo`` and ``hi`` tell the copy in flight (its buffer
    and row range, for the executor's interlock)."""
    return wiring.Signature({
        "start": Out(stream.Signature(LOAD_ARGS)),
        "busy": In(1), "buf": In(BufId), "lo": In(24), "hi": In(25),
    })


def load_word_bits(cfg: AccelConfig) -> int:
    """Width of the word a LOAD assembles: the widest loadable buffer word, in whole
    external-memory words."""
    return max(dram_words(cfg, b) for b in loadable(cfg)) * cfg.dram_bits


class Dma(wiring.Component):
    """The LOAD copier: reads ``count`` words of a buffer from the external memory, from
    word ``src`` on (:func:`accel.layouts.dram_words` memory words each, low bits first),
    and writes them into the buffer from ``addr`` on through the engine's host bus (``host``,
    ``hw.engine.host_bus_signature``: its write half; the read half stays idle).

    ``control.start`` takes a LOAD whose arguments the executor has checked, only while
    idle. ``control.busy`` holds until its last word is written and ``settle`` cycles more
    (the register stages between ``host`` and the buffers, so that what waits for busy
    reads the new word: ``hw.top``); ``control.buf``, ``lo`` and ``hi`` name the range it
    writes meanwhile (for the executor's interlock). Commands are issued as fast as the
    memory takes them; every returned word is taken at once."""

    def __init__(self, cfg: AccelConfig, settle: int = 0):
        self.cfg = cfg
        self.settle = settle
        super().__init__({
            "control": In(copier_signature(cfg)),
            "mem": Out(dram_port(cfg)),
            "host": Out(host_bus_signature(cfg)),
            "word_rd": Out(1),  #: strobe: one external-memory word arrived
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        ctl = self.control
        b = cfg.dram_bits
        per = {buf: dram_words(cfg, buf) for buf in loadable(cfg)}
        n = Signal(range(max(per.values()) + 1))  # memory words per buffer word
        issue = Signal(32)  # memory words still to request
        cmd_addr = Signal(cfg.dram_addr_bits)
        got = Signal(range(max(per.values())))  # memory words of this buffer word so far
        left = Signal(25)  # buffer words still to write
        word = Signal(load_word_bits(cfg))
        wr = Signal()  # a whole buffer word is in ``word`` (written this cycle)
        addr = Signal(24)

        # busy is a register (set by a start, cleared with the last word written), not a
        # compare of ``left``: it selects the memory port and the buffers' write port for
        # the whole core (timing: left -> busy -> port mux -> counters -> executor was the
        # 16-lane critical path at 74 MHz)
        busy = Signal()
        tail = Signal(range(self.settle + 1))  # cycles busy still holds after the last write
        m.d.comb += [ctl.busy.eq(busy), ctl.start.ready.eq(~busy)]
        with m.If(ctl.start.valid & ctl.start.ready):
            a = ctl.start.payload
            m.d.sync += [ctl.buf.eq(a.buf), addr.eq(a.addr), left.eq(a.count),
                         busy.eq(a.count != 0),
                         ctl.lo.eq(a.addr), ctl.hi.eq(a.addr + a.count),
                         cmd_addr.eq(a.src), got.eq(0)]
            with m.Switch(a.buf):
                for buf, k in per.items():
                    with m.Case(buf):
                        m.d.sync += [n.eq(k), issue.eq(a.count * k)]

        m.d.comb += [self.mem.cmd.valid.eq(issue != 0), self.mem.cmd.payload.addr.eq(cmd_addr),
                     self.mem.cmd.payload.we.eq(0), self.mem.rdata.ready.eq(1)]
        with m.If(self.mem.cmd.valid & self.mem.cmd.ready):
            m.d.sync += [issue.eq(issue - 1), cmd_addr.eq(cmd_addr + 1)]

        m.d.comb += self.word_rd.eq(self.mem.rdata.valid)
        m.d.sync += wr.eq(0)
        with m.If(self.mem.rdata.valid):
            last = got == n - 1
            m.d.sync += [word.word_select(got, b).eq(self.mem.rdata.payload),
                         got.eq(Mux(last, 0, got + 1)), wr.eq(last)]
        m.d.comb += [self.host.wr_en.eq(wr), self.host.wr_buf.eq(ctl.buf),
                     self.host.wr_addr.eq(addr), self.host.wr_data.eq(word)]
        with m.If(wr):
            m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
            with m.If(left == 1):
                if self.settle:
                    m.d.sync += tail.eq(self.settle)
                else:
                    m.d.sync += busy.eq(0)
        with m.If(tail != 0):
            m.d.sync += tail.eq(tail - 1)
            with m.If(tail == 1):
                m.d.sync += busy.eq(0)
        return m


#: The storage of :class:`MemModel` for Verilator (``storage="verilog"``): a plain array
#: with no initial block. Amaranth writes an initial value for every word of a memory, 8 M
#: lines for the ULX3S's SDRAM; this array starts as Verilator's zeros.
DRAM_STORAGE_V = """\
module spikellm_dram_storage #(parameter AW = 8, parameter DW = 32) (
  input clk, input [AW-1:0] raddr, output reg [DW-1:0] rdata,
  input we, input [AW-1:0] waddr, input [DW-1:0] wdata);
  reg [DW-1:0] mem [0:(1 << AW) - 1];
  always @(posedge clk) begin
    if (we) mem[waddr] <= wdata;
    rdata <= mem[raddr];
  end
endmodule
"""


class MemModel(wiring.Component):
    """A behavioural SDRAM behind the port, for simulation: the timing an SDR controller
    shows at its user port, not a model of the chip's pins.

    - A command is taken at most once every ``word_cycles`` cycles (a 32-bit word over a
      16-bit chip at the core's clock takes two).
    - Memory words lie in rows of ``2 ** row_bits`` words; a command outside the open
      row first waits ``row_cycles`` (precharge, activate).
    - Every ``refresh_every`` cycles the memory refreshes: ``refresh_cycles`` without
      commands, and the open row closed.
    - Read data returns ``latency`` cycles after its command (CAS latency plus the
      controller's pipeline).

    ``storage``: ``"memory"`` (an Amaranth memory, for Amaranth's simulator and small
    depths; ``init``: its first words) or ``"verilog"`` (an instance of
    :data:`DRAM_STORAGE_V`, for Verilator)."""

    def __init__(self, addr_bits: int, data_bits: int, *, latency: int = 6,
                 word_cycles: int = 1, row_bits: int = 8, row_cycles: int = 4,
                 refresh_every: int = 468, refresh_cycles: int = 8,
                 storage: str = "memory", init=()):
        if storage not in ("memory", "verilog"):
            raise ValueError(f"storage must be 'memory' or 'verilog', not {storage!r}")
        for name, v, lo in (("latency", latency, 1), ("word_cycles", word_cycles, 1),
                            ("row_cycles", row_cycles, 0), ("refresh_cycles", refresh_cycles, 0),
                            ("refresh_every", refresh_every, refresh_cycles + 1)):
            if v < lo:
                raise ValueError(f"{name} must be at least {lo}, not {v}")
        self.addr_bits, self.data_bits = addr_bits, data_bits
        self.latency, self.word_cycles = latency, word_cycles
        self.row_bits, self.row_cycles = min(row_bits, addr_bits), row_cycles
        self.refresh_every, self.refresh_cycles = refresh_every, refresh_cycles
        self.storage, self.init = storage, list(init)
        super().__init__({"port": In(mem_port_signature(addr_bits, data_bits))})

    def elaborate(self, platform):
        m = Module()
        p = self.port
        aw, dw = self.addr_bits, self.data_bits
        raddr, waddr = Signal(aw), Signal(aw)
        rdata, wdata, we = Signal(dw), Signal(dw), Signal()
        if self.storage == "memory":
            m.submodules.storage = mem = memory.Memory(shape=dw, depth=1 << aw, init=self.init)
            rp, wp = mem.read_port(), mem.write_port()
            m.d.comb += [rp.addr.eq(raddr), rdata.eq(rp.data),
                         wp.addr.eq(waddr), wp.data.eq(wdata), wp.en.eq(we)]
        else:
            m.submodules.storage = Instance(
                "spikellm_dram_storage", p_AW=aw, p_DW=dw, i_clk=ClockSignal("sync"),
                i_raddr=raddr, o_rdata=rdata, i_we=we, i_waddr=waddr, i_wdata=wdata)

        wait = Signal(range(max(self.row_cycles, self.refresh_cycles, self.word_cycles) + 1))
        timer = Signal(range(self.refresh_every))
        row = Signal(aw - self.row_bits + 1)
        row_open = Signal()
        cmd = p.cmd.payload
        hit = row_open & (row == cmd.addr[self.row_bits:])
        take = Signal()
        m.d.comb += take.eq((wait == 0) & p.cmd.valid & hit & (~cmd.we | p.wdata.valid)
                            & (timer != self.refresh_every - 1))
        m.d.sync += timer.eq(Mux(timer == self.refresh_every - 1, 0, timer + 1))
        with m.If(timer == self.refresh_every - 1):
            m.d.sync += [wait.eq(self.refresh_cycles), row_open.eq(0)]
        with m.Elif(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        with m.Elif(p.cmd.valid & ~hit):
            m.d.sync += [wait.eq(self.row_cycles), row.eq(cmd.addr[self.row_bits:]),
                         row_open.eq(1)]
        with m.Elif(take):
            m.d.sync += wait.eq(self.word_cycles - 1)
        m.d.comb += [p.cmd.ready.eq(take), p.wdata.ready.eq(take & cmd.we),
                     raddr.eq(cmd.addr), waddr.eq(cmd.addr), wdata.eq(p.wdata.payload),
                     we.eq(take & cmd.we)]
        # read data: a cycle in the storage, then latency - 1 register stages
        valid = Signal()
        m.d.sync += valid.eq(take & ~cmd.we)
        v, d = valid, rdata
        for i in range(self.latency - 1):
            v2, d2 = Signal(name=f"rv{i}"), Signal(dw, name=f"rd{i}")
            m.d.sync += [v2.eq(v), d2.eq(d)]
            v, d = v2, d2
        m.d.comb += [p.rdata.valid.eq(v), p.rdata.payload.eq(d)]
        return m
