"""LiteDRAM's SDRAM controller for the ULX3S, generated to Verilog (``docs/sdram.md``).

Built with LiteDRAM's Python API (the pieces ``litedram_gen`` assembles, without its SoC:
``litedram_gen`` initialises an SDR chip with a soft CPU and its BIOS, or leaves it to the
user over a Wishbone bus; here a small sequencer plays LiteDRAM's own SDR init sequence,
``litedram.init``, on the DFI injector's external port at reset):

- PHY: ``HalfRateGENSDRPHY`` (two 16-bit SDR beats per controller cycle, so one 32-bit
  word per cycle at the native port) on the board's pins, or ``SDRAMPHYModel`` with the
  same settings for simulation;
- ``LiteDRAMCore``: DFI injector, controller (bank machines, refresher, multiplexer),
  crossbar; one native port of ``data_bits`` (LiteDRAM's converter if not 32);
- the port crosses into the user (core) clock domain through LiteX asynchronous FIFOs;
- on the board, an ECP5 PLL (LiteX's ``ECP5PLL``) makes ``sys``, ``sys2x`` and the
  chip's 180-degree clock from the 25 MHz oscillator, as LiteX's ULX3S target does.

Port names are ``hw.sdram``'s (``Sdram`` instantiates the module). :func:`verilog` caches
the text by its inputs (:class:`SdramConfig`, the LiteDRAM/LiteX/Migen versions, this
file); generation runs in a fresh interpreter, so the text does not depend on what else
the process has built (Migen's and LiteX's global name counters).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path

from hw.sdram import CORE_NAME, PINS, SIM_CORE_NAME

#: The SDR parts the ULX3S has carried and LiteDRAM knows (litex-boards' choices);
#: ``MT48LC16M16`` is the default: it drives the IS42S16160G of most 85F boards too
#: (``docs/sdram.md``, litex-boards issue #66).
ULX3S_MODULES = ("MT48LC16M16", "AS4C16M16", "AS4C32M16", "IS42S16160")


@dataclass(frozen=True)
class SdramConfig:
    """What the generated core is built for (every field is part of the cache key)."""

    module: str = "MT48LC16M16"  #: ``litedram.modules`` class of the chip
    sys_hz: float = 50e6  #: controller clock; the SDRAM runs at twice this
    data_bits: int = 32  #: user-port word
    addr_bits: int = 23  #: user-port word address (at most the chip's)
    sim: bool = False  #: PHY model instead of pins and PLL
    ref_hz: float = 25e6  #: board oscillator (the PLL's input)
    device: str = "LFE5U-85F-6BG381C"
    init_us: float = 200.0  #: power-up wait before the first command (SDR: 100-200 us)
    cmd_depth: int = 8  #: clock-crossing FIFO depths
    wdata_depth: int = 16
    rdata_depth: int = 16
    timing_checker: bool = False  #: sim only: LiteDRAM's DFI timing checker ($display)

    @property
    def name(self) -> str:
        """The Verilog module name."""
        return SIM_CORE_NAME if self.sim else CORE_NAME

    @property
    def sdram_hz(self) -> float:
        """The chip's clock."""
        return 2 * self.sys_hz

    def key(self) -> str:
        """Cache key: the settings, the generator's source and LiteDRAM's versions."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(Path(__file__).read_bytes())
        for dist in ("litedram", "litex", "migen"):
            h.update(f"{dist}={metadata.version(dist)}".encode())
        return h.hexdigest()[:24]


def cache_dir() -> Path:
    """Where generated cores are kept: ``$SPIKELLM_CACHE/sdram`` (``gen.cache``'s root,
    ``~/.cache/spikellm`` by default)."""
    return Path(os.environ.get("SPIKELLM_CACHE", Path.home() / ".cache" / "spikellm")) / "sdram"


def verilog(cfg: SdramConfig = SdramConfig(), use_cache: bool = True) -> str:
    """The core's Verilog text (module ``cfg.name``), from the cache when possible."""
    return verilog_file(cfg, use_cache).read_text()


def verilog_file(cfg: SdramConfig = SdramConfig(), use_cache: bool = True,
                 out: Path | None = None) -> Path:
    """Generate (or find in the cache) the core's Verilog; returns its file
    (``<cache>/<key>/<name>.v``, or ``out``)."""
    _module(cfg)  # bad settings fail here, not in the generator's interpreter
    where = cache_dir() / cfg.key()
    cached = where / f"{cfg.name}.v"
    if use_cache and cached.exists() and out is None:
        return cached
    target = out or cached
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".v.tmp")
    proc = subprocess.run([sys.executable, "-m", "gen.sdram", json.dumps(asdict(cfg)),
                           str(tmp)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode or not tmp.exists():
        raise RuntimeError(f"LiteDRAM core generation failed:\n{proc.stderr[-3000:]}")
    tmp.replace(target)
    return target


def add_to_platform(platform, cfg: SdramConfig = SdramConfig()) -> None:
    """Add the core's Verilog to an Amaranth platform build (Yosys reads it with the
    design; ``hw.sdram.Sdram`` instantiates it)."""
    platform.add_file(f"{cfg.name}.v", verilog(cfg))


def geometry(cfg: SdramConfig) -> dict:
    """The chip's geometry and the timings (controller cycles) LiteDRAM derives for
    ``cfg``: what the documentation and the tests quote."""
    from litedram.common import get_default_cl

    mod = _module(cfg)
    t = mod.timing_settings
    return {"module": cfg.module, "nbanks": mod.nbanks, "nrows": mod.nrows,
            "ncols": mod.ncols, "bytes": mod.nbanks * mod.nrows * mod.ncols * 2,
            "cl": get_default_cl("SDR", 1 / cfg.sdram_hz),
            "tRP": t.tRP, "tRCD": t.tRCD, "tWR": t.tWR, "tRFC": t.tRFC, "tREFI": t.tREFI}


def _module(cfg: SdramConfig):
    """LiteDRAM's module object for ``cfg`` (timings at the controller clock, half rate),
    after checking the settings (``ValueError`` names the bad one)."""
    from litedram import modules

    mod_cls = getattr(modules, cfg.module, None)
    if not isinstance(mod_cls, type):
        raise ValueError(f"unknown LiteDRAM module {cfg.module!r}")
    if getattr(mod_cls, "memtype", None) != "SDR":
        raise ValueError(f"{cfg.module} is not an SDR module")
    if cfg.data_bits < 8 or cfg.data_bits & (cfg.data_bits - 1):
        raise ValueError(f"data_bits must be a power of two >= 8, not {cfg.data_bits}")
    module = mod_cls(cfg.sys_hz, "1:2")
    g = module.geom_settings
    # the chip's bytes (16-bit words x 2) in user words of data_bits / 8 bytes
    port_bits = g.rowbits + g.colbits + g.bankbits + 1 - ((cfg.data_bits // 8).bit_length() - 1)
    if not 1 <= cfg.addr_bits <= port_bits:
        raise ValueError(f"addr_bits must be in 1..{port_bits} for {cfg.module} at "
                         f"{cfg.data_bits} bits, not {cfg.addr_bits}")
    return module


# The generator proper: Migen/LiteX, imported only here (and in the fresh interpreter).

def _build(cfg: SdramConfig) -> str:
    """Build the Migen design of ``cfg`` and convert it to Verilog."""
    import logging

    from litedram.common import get_default_cl
    from litedram.core import LiteDRAMCore
    from litedram.core.controller import ControllerSettings
    from litedram.phy import HalfRateGENSDRPHY
    from litedram.phy.model import SDRAMPHYModel
    from litex.build.io import DDROutput
    from litex.build.lattice.common import lattice_ecp5_trellis_special_overrides
    from litex.build.sim.common import sim_special_overrides
    from litex.gen.fhdl import verilog as litex_verilog
    from litex.soc.cores.clock import ECP5PLL
    from litex.soc.interconnect import stream
    from migen import (
        Case,
        ClockDomain,
        ClockSignal,
        If,
        Module,
        Record,
        ResetSignal,
        Signal,
    )
    from migen.fhdl.specials import Tristate
    from migen.genlib.cdc import MultiReg
    from migen.genlib.resetsync import AsyncResetSynchronizer

    logging.getLogger("ECP5PLL").setLevel(logging.WARNING)

    module = _module(cfg)
    geom = module.geom_settings
    native_bits = 2 * 16  # two phases of the 16-bit chip

    class Core(Module):
        def __init__(self):
            self.ios = set()

            made = {}

            def port(name, width=1):
                if name not in made:  # one signal per port, however often it is named
                    made[name] = Signal(width, name_override=name)
                    self.ios.add(made[name])
                return made[name]

            # clocks and resets
            self.clock_domains.cd_sys = cd_sys = ClockDomain()
            self.clock_domains.cd_user = cd_user = ClockDomain()
            clk, rst = port("clk"), port("rst")
            self.comb += [cd_user.clk.eq(port("user_clk")), cd_user.rst.eq(port("user_rst"))]
            cl = get_default_cl("SDR", 1 / cfg.sdram_hz)  # of the chip's clock, not sys's
            if cfg.sim:
                self.comb += cd_sys.clk.eq(clk)
                self.specials += AsyncResetSynchronizer(cd_sys, rst)
                # the real PHY's settings, so the controller is the board's
                pads = Record([(n, w) for n, (w, _) in PINS.items() if n != "clk"])
                settings = HalfRateGENSDRPHY(pads, cfg.sys_hz, cl).settings
                self.submodules.phy = phy = SDRAMPHYModel(
                    module, settings, clk_freq=cfg.sys_hz,
                    verbosity=1 if cfg.timing_checker else 0)
            else:
                self.clock_domains.cd_sys2x = ClockDomain()
                self.clock_domains.cd_sys2x_ps = ClockDomain()
                self.submodules.pll = pll = ECP5PLL()
                self.comb += pll.reset.eq(rst)
                pll.register_clkin(clk, cfg.ref_hz)
                pll.create_clkout(cd_sys, cfg.sys_hz)
                pll.create_clkout(self.cd_sys2x, cfg.sdram_hz)
                pll.create_clkout(self.cd_sys2x_ps, cfg.sdram_hz, phase=180)
                pads = Record([(n, w) for n, (w, _) in PINS.items()])
                for n in PINS:
                    getattr(pads, n).name_override = f"sdram_{n}"
                    self.ios.add(getattr(pads, n))
                self.specials += DDROutput(1, 0, pads.clk, ClockSignal("sys2x_ps"))
                self.submodules.phy = phy = HalfRateGENSDRPHY(pads, cfg.sys_hz, cl)
            assert phy.settings.nphases * phy.settings.dfi_databits == native_bits

            self.submodules.core = core = LiteDRAMCore(
                phy, geom, module.timing_settings, cfg.sys_hz,
                controller_settings=ControllerSettings())
            self.submodules.init = init = _InitSequencer(core.dfii, phy.settings,
                                                         module.timing_settings, cfg)
            if cfg.sim:
                self.submodules.stats = _DfiCounters(phy.dfi, init.done)

            # the user port, in the user domain
            p = core.crossbar.get_port(
                data_width=None if cfg.data_bits == native_bits else cfg.data_bits)
            # one reset for both sides of each FIFO (either side's reset resets both)
            self.clock_domains.cd_ufifo = ClockDomain()
            self.clock_domains.cd_sfifo = ClockDomain()
            both = Signal()
            self.comb += [both.eq(ResetSignal("sys") | ResetSignal("user")),
                          self.cd_ufifo.clk.eq(ClockSignal("user")),
                          self.cd_sfifo.clk.eq(ClockSignal("sys"))]
            self.specials += [AsyncResetSynchronizer(self.cd_ufifo, both),
                              AsyncResetSynchronizer(self.cd_sfifo, both)]
            aw, dw = cfg.addr_bits, cfg.data_bits
            cmd = stream.ClockDomainCrossing([("we", 1), ("addr", aw)], "ufifo", "sfifo",
                                             cfg.cmd_depth)
            wdata = stream.ClockDomainCrossing([("data", dw)], "ufifo", "sfifo",
                                               cfg.wdata_depth)
            rdata = stream.ClockDomainCrossing([("data", dw)], "sfifo", "ufifo",
                                               cfg.rdata_depth)
            self.submodules += cmd, wdata, rdata
            done = Signal()
            self.specials += MultiReg(init.done, done, "user")
            # LiteDRAM pulls a write's data when it performs the write, without looking
            # at wdata.valid: a write command is taken only once its word is (``ahead``
            # words taken before their commands, or the word taken in the same cycle)
            ahead = Signal(max=cfg.wdata_depth + 2)
            w_in, c_ok, c_wr = Signal(), Signal(), Signal()
            cmd_we = port("cmd_we")
            self.comb += [
                w_in.eq(port("wdata_valid") & wdata.sink.ready),
                c_ok.eq(done & (~cmd_we | w_in | (ahead != 0))),
                c_wr.eq(cmd.sink.valid & cmd.sink.ready & cmd_we)]
            self.sync.ufifo += ahead.eq(ahead + w_in - c_wr)  # reset with the FIFOs
            self.comb += [
                cmd.sink.valid.eq(port("cmd_valid") & c_ok),
                port("cmd_ready").eq(cmd.sink.ready & c_ok),
                cmd.sink.we.eq(cmd_we), cmd.sink.addr.eq(port("cmd_addr", aw)),
                p.cmd.valid.eq(cmd.source.valid), cmd.source.ready.eq(p.cmd.ready),
                p.cmd.we.eq(cmd.source.we), p.cmd.addr.eq(cmd.source.addr),
                wdata.sink.valid.eq(port("wdata_valid")),
                port("wdata_ready").eq(wdata.sink.ready),
                wdata.sink.data.eq(port("wdata_data", dw)),
                p.wdata.valid.eq(wdata.source.valid), wdata.source.ready.eq(p.wdata.ready),
                p.wdata.data.eq(wdata.source.data), p.wdata.we.eq((1 << dw // 8) - 1),
                rdata.sink.valid.eq(p.rdata.valid), p.rdata.ready.eq(rdata.sink.ready),
                rdata.sink.data.eq(p.rdata.data),
                port("rdata_valid").eq(rdata.source.valid),
                rdata.source.ready.eq(port("rdata_ready")),
                port("rdata_data", dw).eq(rdata.source.data),
                port("init_done").eq(done),
            ]

    class _InitSequencer(Module):
        """LiteDRAM's SDR init sequence (``litedram.init``: CKE high and the power-up
        wait, precharge all, mode register, two auto refreshes, mode register) played on
        the DFI injector's external port, then the DFI handed to the controller (``done``).
        Waits are the sequence's or 16 controller cycles (>= tRP, tRFC, tMRD), whichever
        is longer; the power-up wait (CKE high, no command) is ``init_us``."""

        def __init__(self, dfii, phy_settings, timing_settings, cfg):
            from litedram.init import get_sdram_phy_init_sequence

            self.done = Signal()
            seq, _ = get_sdram_phy_init_sequence(phy_settings, timing_settings)
            steps = []
            for i, (_, a, ba, cmd, delay) in enumerate(seq):
                flags = set(cmd.split("|"))
                # the sequence's delays count BIOS busy-loop turns, not cycles: the
                # power-up wait is ``init_us``, the others at least 16 cycles
                wait = max(round(cfg.init_us * 1e-6 * cfg.sys_hz), 1) if i == 0 else max(delay, 16)
                steps.append((a, ba, flags, wait))
            step = Signal(max=len(steps) + 1)
            timer = Signal(max=max(s[3] for s in steps) + 1)
            cke = Signal()
            issue = Signal()
            self.comb += [dfii.ext_dfi_sel.eq(~self.done),
                          issue.eq(~self.done & (timer == 0) & (step < len(steps)))]
            for n, ph in enumerate(dfii.ext_dfi.phases):
                self.comb += [ph.cke.eq(cke), ph.cs_n.eq(1), ph.ras_n.eq(1), ph.cas_n.eq(1),
                              ph.we_n.eq(1)]
                if hasattr(ph, "reset_n"):
                    self.comb += ph.reset_n.eq(1)
                if n:
                    continue  # commands on phase 0 only; phase 1 stays NOP
                cases = {}
                for i, (a, ba, flags, _) in enumerate(steps):
                    cases[i] = [ph.address.eq(a), ph.bank.eq(ba),
                                If(issue,
                                   ph.cs_n.eq(int("DFII_COMMAND_CS" not in flags)),
                                   ph.ras_n.eq(int("DFII_COMMAND_RAS" not in flags)),
                                   ph.cas_n.eq(int("DFII_COMMAND_CAS" not in flags)),
                                   ph.we_n.eq(int("DFII_COMMAND_WE" not in flags)))]
                self.comb += Case(step, cases)
            waits = {i: [timer.eq(w - 1)] + ([cke.eq(1)] if "DFII_CONTROL_CKE" in f else [])
                     for i, (_, _, f, w) in enumerate(steps)}
            self.sync += [
                If(timer != 0, timer.eq(timer - 1))
                .Elif(issue, Case(step, waits), step.eq(step + 1))
                .Elif(~self.done & (step == len(steps)), self.done.eq(1))]

    class _DfiCounters(Module):
        """Simulation statistics: commands on the DFI (both phases), 32-bit counters
        named ``stat_<cmd>``, and ``stat_ref_gap_max``, the most controller cycles between
        two of the controller's refreshes (those after ``done``: the init sequence's own
        come at their own times). Read by the Verilator tests through the hierarchy."""

        def __init__(self, dfi, done):
            codes = {"act": (0, 1, 1), "pre": (0, 1, 0), "ref": (0, 0, 1),
                     "rd": (1, 0, 1), "wr": (1, 0, 0)}  # (ras_n, cas_n, we_n)
            for name, (ras, cas, we) in codes.items():
                c = Signal(32, name_override=f"stat_{name}")
                hits = [(~ph.cs_n[0]) & (ph.ras_n == ras) & (ph.cas_n == cas) & (ph.we_n == we)
                        for ph in dfi.phases]
                self.sync += c.eq(c + sum(hits))
                if name == "ref":
                    gap, seen = Signal(32), Signal()
                    gap_max = Signal(32, name_override="stat_ref_gap_max")
                    self.sync += If((sum(hits) != 0) & done,
                                    seen.eq(1), gap.eq(1),
                                    If(seen & (gap > gap_max), gap_max.eq(gap))
                                    ).Else(gap.eq(gap + 1))

    core = Core()
    if cfg.sim:
        overrides, platform = dict(sim_special_overrides), None
    else:
        # the data pins stay plain Verilog tristates (``inout``), not LiteX's TRELLIS_IO:
        # nextpnr folds a tristate on a top-level pin into that pin's buffer, but puts a
        # TRELLIS_IO inside the core in series with the pin's own (and then cannot pack
        # the data registers into the pin's IOLOGIC)
        overrides = dict(lattice_ecp5_trellis_special_overrides)
        del overrides[Tristate]
        platform = None
    out = litex_verilog.convert(core, ios=core.ios, name=cfg.name, platform=platform,
                                special_overrides=overrides, regular_comb=True)
    text = out.main_source
    if out.data_files:
        raise RuntimeError(f"the core needs data files: {sorted(out.data_files)}")
    # LiteX stamps the time of generation: drop it, the text is a function of the inputs
    text = re.sub(r"^//.*(Date|Auto-Generated by LiteX on).*\n", "", text, flags=re.M)
    # LiteDRAM's controller assigns its write-data split twice, identically: keep one (two
    # drivers of one net are a lint error in Verilator and a warning in Yosys)
    lines, seen = [], set()
    for line in text.splitlines(keepends=True):
        if line.startswith("assign "):
            if line in seen:
                continue
            seen.add(line)
        lines.append(line)
    return "".join(lines)


def _main(argv: list[str]) -> int:
    """``python -m gen.sdram CONFIG_JSON OUT``: the fresh-interpreter half of
    :func:`verilog_file`."""
    known = {f.name for f in fields(SdramConfig)}
    raw = json.loads(argv[0])
    unknown = set(raw) - known
    if unknown:
        print(f"unknown settings: {sorted(unknown)}", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(_build(SdramConfig(**raw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
