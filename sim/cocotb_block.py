"""cocotb bench: one complete MiniLM transformer block through the Verilator top.

Every GEMM of block 0 (q, k, v, o, the per-head QK^T and PV, up, down) with the real 4-bit
weights of the converted all-MiniLM-L6-v2 and the real activations of a sentence, exactly
as the golden model's trace gives them (``models.golden.GemmCall``), tiled by
``accel.tiling.plan_call`` (as the host tiles them) and sent over the framed link with
random stalls. Each output must equal the golden model's requantized output bit for bit,
and the summed counters must equal the golden events.
"""

from __future__ import annotations

import json
import os

import cocotb
import torch

from accel.config import AccelConfig
from accel.payloads import parse_counters
from accel.protocol import Cmd
from accel.tiling import plan_call, tiled_events
from models.arch import load_model
from models.convert import ConvertOptions, convert
from models.golden import run_golden
from sim import cocotb_top
from sim.cocotb_top import Testbench

BLOCK_CFG = (AccelConfig.from_json(json.loads(os.environ["SPIKELLM_CONFIG_JSON"]))
             if "SPIKELLM_CONFIG_JSON" in os.environ else None)
TEXT = "The rover collected rock samples on the surface of Mars."


@cocotb.test()
async def minilm_block0_bit_exact(dut):
    cfg = BLOCK_CFG
    cocotb_top.CFG = cfg  # the testbench helpers address this instance's buffers
    lm = load_model("minilm")
    cm = convert(lm, ConvertOptions(calib_sentences=8))
    trace = []
    run_golden(cm, lm.tokenize(TEXT), trace=trace)
    calls = [c for c in trace if c.name.startswith("layers.0.")]
    tb = Testbench(dut, stall_p=0.2)
    await tb.start()
    await tb.request(Cmd.RESET_COUNTERS)
    want_acc_spike = want_acc_step = want_macs = want_spikes = 0
    for call in calls:
        plan = plan_call(cfg, call)
        got = await tb.gemm(plan, *call.y.shape)
        assert torch.equal(got, call.y), f"{call.name} head {call.head}"
        ev = tiled_events(cfg, call)
        want_spikes += ev.spike_units
        want_acc_spike += ev.acc_spike
        want_acc_step += ev.acc_step
        want_macs += ev.macs
    c = parse_counters(cfg, await tb.request(Cmd.READ_COUNTERS))
    assert (c["spikes"], c["acc_spike"], c["acc_step"], c["macs"]) == \
        (want_spikes, want_acc_spike, want_acc_step, want_macs), c
    dut._log.info("block 0: %d GEMMs, %d cycles, %d link bytes in", len(calls), c["cycles"],
                  c["link_rx"])
