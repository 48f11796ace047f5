"""Benchmark: array utilisation and cycles vs the ideal bound on MiniLM-shaped layers.

Real activations of the converted all-MiniLM-L6-v2 (layer 0 inputs of q, up and down, so K
is 384 and 1536) and its real 4-bit weights, one output tile of ``lanes`` channels, data on
chip (buffer writes are not counted: ``busy`` cycles run from descriptor to done). The
Amaranth simulator of the engine gives the cycles; the figures printed are

- utilisation of each array: its busy cycles / the tile's cycles;
- bound ratio: tile cycles / max(accumulates / lanes, MACs / MAC units).

Run: ``python -m pytest -m benchmark bench/test_engine_util.py -s``.
"""

import pytest
import torch

from accel.config import AccelConfig
from accel.tiling import build_tile
from models.arch import load_model
from models.convert import ConvertOptions, builtin_text, convert
from models.golden import gemm
from models.graph import FloatOps, forward
from models.quant import quantize_act, rotate
from sim.engine_sim import rtl_engine


def _layer_inputs(lm, cm, names, text):
    seen = {}

    def rec(node, role, t):
        if node in names and role == "x":
            seen[node] = t

    forward(lm.spec, lm.params, lm.tokenize(text), FloatOps(lm.spec, lm.params, rec))
    out = {}
    for n in names:
        plan = cm.nodes[n].act
        x = seen[n]
        if plan.rotate:
            x = rotate(x, cm.tensors[f"rot.{x.shape[-1]}"])
        out[n] = quantize_act(x, plan)[0], plan
    return out


@pytest.mark.benchmark
@pytest.mark.parametrize("lanes, mac_units", [(16, 1), (16, 4), (32, 1)])
def test_engine_utilisation_on_minilm_layers(lanes, mac_units):
    cfg = AccelConfig(lanes=lanes, mac_units=mac_units, weight_depth=2048, max_rows=16,
                      spike_event_depth=32768, mac_event_depth=2048)
    lm = load_model("minilm")
    cm = convert(lm, ConvertOptions())
    text = builtin_text("eval_sentences")[5] + " " + builtin_text("eval_sentences")[40]
    names = ["layers.0.q", "layers.0.up", "layers.0.down"]
    print(f"\nlanes={cfg.lanes} mac_units={mac_units}")
    for name, (codes, plan) in _layer_inputs(lm, cm, names, text).items():
        codes = codes[:cfg.max_rows]
        k = codes.shape[1]
        mask, shifts = plan.outlier_mask(k), plan.shifts(k)
        w = cm.tensors[name + ".w"].to(torch.int64)[: cfg.lanes]
        acc, ev = gemm(codes[None], mask[None], shifts[None], plan.encoding, w[None],
                       cm.tensors[name + ".zcorr"].to(torch.int64)[: cfg.lanes], name)
        ones = {c: [1 if c == "mcol" else 0] * cfg.lanes for c in ("mcol", "bias", "zp", "lo",
                                                                  "hi")}
        tile = build_tile(cfg, codes, mask, shifts, plan.encoding, w,
                          start=cm.tensors[name + ".zcorr"].to(torch.int64)[: cfg.lanes],
                          consts=ones, raw=True)
        got, c = rtl_engine(cfg, [tile], codes.shape[0], cfg.lanes)
        assert torch.equal(got, acc[0])
        bound = max((ev.acc_spike + ev.acc_step) / cfg.lanes, ev.macs / cfg.mac_units)
        print(f"{name:14s} M={codes.shape[0]} K={k}: cycles {c['busy']}, spike array "
              f"{c['spike_busy'] / c['busy']:.1%}, MAC array {c['mac_busy'] / c['busy']:.1%}, "
              f"cycles/bound {c['busy'] / bound:.3f}")
