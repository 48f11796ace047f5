"""One complete MiniLM transformer block (real weights, real activations) through the
emitted top in Verilator, bit-exact against the golden model's trace (``sim/cocotb_block.py``).

Long run (about 8 minutes: 3.5 MB of weights and events cross the simulated link):
``.venv/bin/python -m pytest -m benchmark tests/sim/test_block_verilator.py``."""

import json
from pathlib import Path

import pytest

from accel.config import AccelConfig
from hw.device import emit_verilog
from sim.verilator import run_cocotb

BUILD = Path(__file__).resolve().parents[2] / "build" / "verilator"
CFG = AccelConfig(lanes=16, mac_units=4, weight_depth=512, max_rows=16, max_steps=15,
                  spike_event_depth=8192, mac_event_depth=1024)


@pytest.mark.benchmark  # about 8 minutes on 2 cores: a long run, not in `make test`
def test_minilm_block0_through_verilator_top():
    run_cocotb(emit_verilog(CFG), "spikellm_top", "sim.cocotb_block", BUILD,
               extra_env={"SPIKELLM_CONFIG_JSON": json.dumps(CFG.to_json())})
