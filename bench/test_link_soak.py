"""Benchmark: a long soak of the link with faults. 100,000 frames (SPIKELLM_SOAK_FRAMES)
of writes, read-backs, tile runs and counter reads through the fault-injecting transport
to the simulated device; every answer is checked. Prints frames/s, faults and retries.

Run: ``python -m pytest -m benchmark bench/test_link_soak.py -s``.
"""

import os
import random
import time

import pytest
import torch

from accel.config import AccelConfig
from accel.layouts import BufId, buffer_shapes, pack_word
from accel.tiling import build_tile, out_read
from host.driver import Device
from host.transport import FaultyTransport, SerialTransport
from hw.device import emit_verilog
from models.contract import requantize
from models.encodings import Encoding
from models.golden import gemm
from sim.device import SimDevice, build_simulator

CFG = AccelConfig(lanes=8, mac_units=2, weight_depth=64, max_rows=8, spike_event_depth=1024,
                  mac_event_depth=128, spike_rows=4)


@pytest.mark.benchmark
def test_link_soak_with_faults(tmp_path):
    frames = int(os.environ.get("SPIKELLM_SOAK_FRAMES", "100000"))
    rate = float(os.environ.get("SPIKELLM_SOAK_RATE", "0.01"))
    binary = build_simulator(emit_verilog(CFG, link_timeout=20_000), tmp_path)
    rng = random.Random(11)
    g = torch.Generator().manual_seed(11)
    enc = Encoding("ttfs", 4)
    w_shape, _ = buffer_shapes(CFG)[BufId.WEIGHTS]
    with SimDevice(binary) as sim:
        t = FaultyTransport(SerialTransport(sim.url), rate, seed=5)
        dev = Device(t, CFG, timeout=0.1, run_timeout=0.5, quiet=0.05, retries=12)
        dev.identify()
        t0 = time.perf_counter()
        checks = 0
        while dev.stats["frames_tx"] < frames:
            if rng.random() < 0.5:  # weights: write, read back, compare
                rows = [[rng.randrange(-7, 8) for _ in range(CFG.lanes)]
                        for _ in range(rng.randrange(1, 32))]
                addr = rng.randrange(CFG.weight_depth - len(rows))
                dev.write(BufId.WEIGHTS, rows, addr)
                assert dev.read(BufId.WEIGHTS, addr, len(rows)) == [
                    pack_word(w_shape, r) for r in rows]
            else:  # a small tile, checked against the golden model, with its counters
                m, k = rng.randrange(1, 5), rng.randrange(4, 40)
                q = torch.randint(0, 16, (m, k), generator=g)
                mask = torch.zeros(k, dtype=torch.bool)
                mask[:2] = True
                q[:, :2] = torch.randint(-127, 128, (m, 2), generator=g)
                shifts = torch.zeros(k, dtype=torch.int64)
                w = torch.randint(-7, 8, (CFG.lanes, k), generator=g)
                consts = {c: torch.full((CFG.lanes,), 1 if c == "mcol" else 0)
                          for c in ("mcol", "bias", "zp", "lo", "hi")}
                consts["lo"] -= 2**31
                consts["hi"] += 2**31 - 1
                acc, ev = gemm(q[None], mask[None], shifts[None], enc, w[None], None, "soak")
                before = dev.counters()
                img = build_tile(CFG, q, mask, shifts, enc, w, consts=consts)
                dev.forget()  # the weight writes above overwrite resident words
                dev.run_tile(img)
                got = torch.tensor(dev.read(*out_read(CFG, img))).view(m, CFG.lanes)
                want = requantize(acc[0], consts["mcol"], 0, torch.full((m,), 2**15),
                                  consts["bias"], consts["zp"], consts["lo"], consts["hi"])
                assert torch.equal(got, want)
                after = dev.counters()
                assert after["macs"] - before["macs"] == ev.macs
                assert after["spikes"] - before["spikes"] == ev.spike_units
            checks += 1
        wall = time.perf_counter() - t0
        t.close()
    s = dev.stats
    print(f"\nsoak: {s['frames_tx']} frames in {wall:.1f} s ({s['frames_tx'] / wall:.0f} "
          f"frames/s), {checks} checked operations, {sum(t.injected.values())} faults "
          f"injected ({dict(t.injected)}), {s['retries']} retries, {s['timeouts']} timeouts, "
          f"{s['bad_frames']} bad frames, {s['stale_frames']} stale frames; all exact")

