"""The emitted top-level Verilog in Verilator, driven by cocotb over the framed link.

Bit-exact GEMM tiles and counters against the golden model, with random valid/ready stalls
on both link streams, and recovery from corrupted, truncated and garbage frames.
Seed and sample count: ``SPIKELLM_SEED``, ``SPIKELLM_SAMPLES``.
"""

from pathlib import Path

import pytest

from accel.config import PRESETS
from hw.device import emit_verilog
from sim.verilator import run_cocotb

BUILD = Path(__file__).resolve().parents[2] / "build" / "verilator"


@pytest.mark.slow
def test_top_in_verilator_bit_exact_and_recovers_from_bad_frames(monkeypatch):
    timeout = 3000
    monkeypatch.setenv("SPIKELLM_CONFIG", "tiny")
    monkeypatch.setenv("SPIKELLM_LINK_TIMEOUT", str(timeout))
    verilog = emit_verilog(PRESETS["tiny"], link_timeout=timeout)
    run_cocotb(verilog, "spikellm_top", "sim.cocotb_top", BUILD,
               extra_env={"SPIKELLM_CONFIG": "tiny", "SPIKELLM_LINK_TIMEOUT": str(timeout)})
