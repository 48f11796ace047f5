"""The simulated device: :class:`~hw.top.Top` with a simulated external memory, and its
Verilog (what the generator writes as ``spikellm_top.v`` for Verilator)."""

from amaranth import ClockDomain, ClockSignal, Module, ResetSignal, Signal
from amaranth.back import verilog
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accel.config import AccelConfig

from .mem import DRAM_STORAGE_V, MemModel
from .sdram import Sdram
from .top import Top


class SimTop(wiring.Component):
    """:class:`Top` with a simulated external memory: the simulated device, with the same
    ``rx``/``tx`` as the board's. ``dram``: ``"model"``, the behavioural memory
    (``hw.mem.MemModel``, timing :data:`SIM_DRAM`), or ``"litedram"``, LiteDRAM's
    controller on its PHY model (``hw.sdram.Sdram(sim=True)``; its Verilog comes from
    ``gen.sdram``) at half the core's clock (``dram_half_clock``; on the board a 50 MHz
    controller runs beside a 60 MHz core: between half and the same clock)."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def __init__(self, cfg: AccelConfig, *, storage: str = "verilog", dram: str = "model",
                 dram_half_clock: bool = True, **kw):
        if dram not in SIM_DRAMS:
            raise ValueError(f"dram must be one of {', '.join(SIM_DRAMS)}, not {dram!r}")
        self.cfg, self.storage, self.dram, self.kw = cfg, storage, dram, kw
        self.dram_half_clock = dram_half_clock
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = Top(self.cfg, **self.kw)
        if self.dram == "litedram":
            m.submodules.dram = mem = Sdram(self.cfg.dram_addr_bits, self.cfg.dram_bits,
                                            sim=True, sdram_domain="sdram"
                                            if self.dram_half_clock else "sync")
            if self.dram_half_clock:
                m.domains.sdram = ClockDomain("sdram")
                half = Signal()
                m.d.sync += half.eq(~half)
                m.d.comb += [ClockSignal("sdram").eq(half),
                             ResetSignal("sdram").eq(ResetSignal())]
            wiring.connect(m, core.dram, mem.port)
        else:
            m.submodules.dram = model = MemModel(self.cfg.dram_addr_bits, self.cfg.dram_bits,
                                                 storage=self.storage, **SIM_DRAM)
            wiring.connect(m, core.dram, model.port)
        wiring.connect(m, wiring.flipped(self.rx), core.rx)
        wiring.connect(m, core.tx, wiring.flipped(self.tx))
        return m


#: The simulated device's memory timing (``hw.mem.MemModel``): an SDR chip 16 bits wide
#: at the core's clock (two cycles a 32-bit word), CAS latency 2 behind a controller
#: pipeline, 1 KB rows, a refresh every 7.8 us at 60 MHz.
SIM_DRAM = dict(latency=6, word_cycles=2, row_bits=8, row_cycles=4, refresh_every=468,
                refresh_cycles=8)


#: The simulated device's external memories (:class:`SimTop`).
SIM_DRAMS = ("model", "litedram")


def emit_verilog(cfg: AccelConfig, name: str = "spikellm_top", dram: str = "model",
                 **kw) -> str:
    """Verilog of the simulated device for ``cfg`` (:class:`SimTop`, with its memory's
    storage module): what the generator writes as ``spikellm_top.v``. With
    ``dram="litedram"`` the controller's own Verilog (``gen.sdram.verilog``) must be added
    (the generator does)."""
    top = SimTop(cfg, dram=dram, **kw)
    return verilog.convert(top, name=name, emit_src=False) + (DRAM_STORAGE_V
                                                              if dram == "model" else "")
