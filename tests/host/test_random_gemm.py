"""Constrained-random GEMMs through one simulated device per odd configuration.

Every GEMM's outputs, every counter the golden model defines, the datapath traffic counters
and the ``busy`` cycles are compared with the golden model and the cycle model; on the
configuration with the spike encoder, its TTFS events are made on chip (EXPAND) and its
counters are compared with ``accel.encoder.encoder_counts``. Shapes sit
at and around every tile and buffer boundary; encodings, outlier counts (0 to K), fills
and requantizer constants are drawn at random. ``SPIKELLM_SEED`` / ``SPIKELLM_SAMPLES``
(GEMMs per configuration) set the run; the benchmark run is
``SPIKELLM_SAMPLES=3400 pytest -m benchmark tests/host/test_random_gemm.py`` (3 x 3,400).
"""

from __future__ import annotations

import os

import pytest
import torch

from accel.config import AccelConfig
from accel.encoder import mac_expandable
from accel.protocol import EXPAND_ARGS, Cmd, unpack_args
from accel.requests import BufferMirror, gemm_requests
from accel.tiling import plan_call
from host.driver import Device
from host.run import run_gemm
from host.transport import SerialTransport
from models.contract import (
    HOST_OUT_QMAX,
    MAX_REQ_SHIFT,
    ROW_FRAC,
    ContractError,
    check_acc,
    requantize,
)
from models.encodings import Encoding
from models.golden import GemmCall, gemm
from sim.device import SimDevice
from sim.streams import seed

from ..helpers import FAST, simulator_binary

#: Odd configurations, none of them a preset: every lanes/MAC ratio, FIFO depths 1 to 3,
#: small buffers so that row blocks, K tiles and N tiles all occur.
CONFIGS = {
    "l8m2": AccelConfig(lanes=8, mac_units=2, weight_depth=32, max_rows=8,
                        spike_event_depth=512, mac_event_depth=64, row_fifo_depth=2,
                        max_steps=15, spike_rows=8, spike_encoder=True),
    "l4m4": AccelConfig(lanes=4, mac_units=4, weight_depth=16, max_rows=4,
                        spike_event_depth=256, mac_event_depth=32, row_fifo_depth=1,
                        max_steps=31, max_shift=7, spike_rows=1),
    "l16m1": AccelConfig(lanes=16, mac_units=1, weight_depth=64, max_rows=16,
                         spike_event_depth=1024, mac_event_depth=128, row_fifo_depth=3,
                         max_steps=15, spike_rows=2),
}


def samples(default: int) -> int:
    return int(os.environ.get("SPIKELLM_SAMPLES", default))


def encodings(cfg: AccelConfig) -> list[Encoding]:
    """Every encoding kind, at parameters the configuration's window allows."""
    out = [Encoding("ttfs", 1), Encoding("ttfs", 4), Encoding("ttfs-signed", 2),
           Encoding("ttfs-signed", 4), Encoding("rate", steps=1), Encoding("rate", steps=8),
           Encoding("graded", steps=2, levels=3), Encoding("graded", steps=3, levels=1),
           Encoding("ternary", steps=4), Encoding("ternary", steps=2, levels=2),
           Encoding("int", 8)]
    if cfg.max_steps >= 31:
        out.append(Encoding("ttfs", 5))
    return [e for e in out if not e.is_spiking or e.time_steps <= cfg.max_steps]


def around(g: torch.Generator, bounds: list[int], hi: int) -> int:
    """A size at, just below or just above a boundary, or anywhere up to ``hi``."""
    choice = [b + d for b in bounds for d in (-1, 0, 1) if 1 <= b + d <= hi]
    if torch.rand(1, generator=g) < 0.25:
        return int(torch.randint(1, hi + 1, (1,), generator=g))
    return choice[int(torch.randint(len(choice), (1,), generator=g))]


def random_call(cfg: AccelConfig, g: torch.Generator, i: int) -> GemmCall:
    """One GEMM as the accelerator sees it, with its golden outputs."""
    rnd = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    encs = encodings(cfg)
    enc = encs[i % len(encs)]
    m = around(g, [1, cfg.max_rows, 2 * cfg.max_rows], 2 * cfg.max_rows + 1)
    k = around(g, [1, cfg.k_tile, cfg.weight_depth, 2 * cfg.weight_depth],
               2 * cfg.weight_depth + 1)
    n = around(g, [1, cfg.lanes, 2 * cfg.lanes], 2 * cfg.lanes + 1)
    # integer (outlier) channels: none, all, a few, or K-tile-aligned blocks of them
    mode = rnd(0, 3) if enc.is_spiking else 1
    mask = torch.zeros(k, dtype=torch.bool)
    if mode == 1:
        mask[:] = True
    elif mode == 2:
        mask[torch.randperm(k, generator=g)[: rnd(1, min(k, 6))]] = True
    elif mode == 3:  # whole K tiles of integers (a K tile without spikes has no window)
        for k0 in range(0, k, cfg.k_tile):
            if rnd(0, 1):
                mask[k0:k0 + cfg.k_tile] = True
    codes = torch.randint(enc.qmin, enc.qmax + 1, (m, k), generator=g)
    fill = ["random", "extreme", "silent", "firing", "sparse", "uneven"][rnd(0, 5)]
    if fill == "extreme":
        codes = torch.where(codes % 2 == 0, enc.qmin, enc.qmax)
    elif fill == "silent":
        codes[:] = 0
    elif fill == "firing":
        codes[:] = enc.qmax
    elif fill == "sparse":
        codes[torch.rand(m, k, generator=g) < 0.9] = 0
    elif fill == "uneven":
        codes[torch.rand(m, generator=g) < 0.5] = 0
    ints = torch.randint(-127, 128, (m, k), generator=g)
    codes = torch.where(mask, ints, codes)
    wide = rnd(0, 1)  # int8 weight operands, as K and V of the attention matmuls
    w = torch.randint(-127 if wide else -7, 128 if wide else 8, (n, k), generator=g)
    shifts = torch.where(mask, torch.randint(0, cfg.max_shift + 1, (k,), generator=g), 0)
    start = torch.randint(-1000, 1001, (n,), generator=g) if rnd(0, 1) else None
    for _ in range(cfg.max_shift + 1):
        try:
            acc, _ = gemm(codes[None], mask[None], shifts[None], enc, w[None], start, "rnd")
            break
        except ContractError:  # too many large shifted outliers for 32 bits: fewer shifts
            shifts = shifts // 2
    acc = check_acc(acc[0], "rnd")
    raw = bool(rnd(0, 3) == 0)
    consts = {"mcol": torch.randint(1, 2**15, (n,), generator=g),
              "bias": torch.randint(-2**20, 2**20, (n,), generator=g),
              "zp": torch.randint(-3, 4, (n,), generator=g),
              "lo": torch.full((n,), -HOST_OUT_QMAX), "hi": torch.full((n,), HOST_OUT_QMAX)}
    mrow = torch.randint(1, 2**16, (m,), generator=g) if rnd(0, 1) else \
        torch.full((m,), 1 << ROW_FRAC)
    shift = rnd(0, MAX_REQ_SHIFT)
    y = acc if raw else requantize(acc, consts["mcol"], shift, mrow, consts["bias"],
                                   consts["zp"], consts["lo"], consts["hi"])
    return GemmCall(f"rnd{i}.{enc.name()}.{fill}", None, codes, mask, shifts, enc, w, start,
                    consts, mrow, shift, y, raw=raw)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def device(request, tmp_path_factory):
    cfg = CONFIGS[request.param]
    binary = simulator_binary(cfg, tmp_path_factory.mktemp(f"sim-{request.param}"))
    with SimDevice(binary) as sim:
        t = SerialTransport(sim.url)
        dev = Device(t, cfg, **FAST)
        dev.identify()
        yield dev
        t.close()


def run_random(dev: Device, count: int, base_seed: int) -> list[str]:
    """``count`` random GEMMs on one device; the list of what disagreed (empty: none)."""
    g = torch.Generator().manual_seed(base_seed)
    bad, counters = [], dev.counters()
    for i in range(count):
        call = random_call(dev.cfg, g, i)
        _, rec, counters = run_gemm(dev, call, before=counters)
        why = []
        if not rec.exact:
            why.append("outputs")
        if not rec.counters_match:
            why.append(f"events {rec.counters} vs {rec.expected}")
        if rec.counters["busy"] != rec.predicted_cycles:
            why.append(f"busy {rec.counters['busy']} vs predicted {rec.predicted_cycles}")
        got = {c: rec.counters[c] for c in rec.predicted_traffic}
        if got != rec.predicted_traffic:
            why.append(f"traffic {got} vs predicted {rec.predicted_traffic}")
        got = {c: rec.counters[c] for c in rec.predicted_encoder}
        if got != rec.predicted_encoder:
            why.append(f"encoder {got} vs predicted {rec.predicted_encoder}")
        if rec.counters["faults"]:
            why.append("fault")
        if why:
            bad.append(f"{call.name} M={rec.m} K={rec.k} N={rec.n}: {'; '.join(why)}")
    return bad


def mac_expands(cfg: AccelConfig, count: int, base_seed: int) -> int:
    """How many of the EXPANDs :func:`run_random`'s GEMMs send make MAC words (each GEMM
    planned on its own: what reaches the device may be fewer, where it holds them)."""
    g = torch.Generator().manual_seed(base_seed)
    n = 0
    for i in range(count):
        plan = plan_call(cfg, random_call(cfg, g, i))
        n += sum(bool(unpack_args(EXPAND_ARGS, r.payload).mac)
                 for req in gemm_requests(cfg, plan, BufferMirror(cfg))
                 for r in req.parts or (req,) if r.cmd == Cmd.EXPAND)
    return n


def test_random_gemms_equal_golden_counters_and_cycle_model(device):
    bad = run_random(device, samples(12), seed())
    assert not bad, f"{len(bad)} mismatches:\n" + "\n".join(bad[:10])
    # with the encoder's MAC mode, integer channels' words are made on chip too
    if mac_expandable(device.cfg) and samples(12) >= 12:
        assert mac_expands(device.cfg, samples(12), seed()) > 0


@pytest.mark.benchmark
def test_random_gemms_long_run(device):
    count = samples(3400)
    bad = run_random(device, count, seed() + 1)
    print(f"\n{device.cfg.lanes} lanes / {device.cfg.mac_units} MAC units: {count} GEMMs, "
          f"{len(bad)} mismatches")
    assert not bad, "\n".join(bad[:10])
