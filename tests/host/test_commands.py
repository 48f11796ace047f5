"""The sans-IO request builders the driver and the cocotb bench share
(``accel.requests.write_requests`` / ``tile_requests``): which requests, and what the buffer
mirror knows after each, with no device at all."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from accel.layouts import BufId
from accel.payloads import run_payload
from accel.protocol import Cmd
from accel.requests import BufferMirror, tile_requests, write_requests
from accel.tiling import build_tile
from models.encodings import Encoding

from .conftest import CFG


def _tile(seed: int = 0, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    k, n = 5, cfg.lanes - 1
    codes = torch.randint(0, 16, (2, k), generator=g)
    mask = torch.zeros(k, dtype=torch.bool)
    w = torch.randint(-7, 8, (n, k), generator=g)
    return build_tile(cfg, codes, mask, torch.zeros(k, dtype=torch.int64),
                      Encoding("ttfs", 4), w, raw=True)


@pytest.mark.parametrize("encoder", [False, True])
def test_tile_requests_write_every_buffer_then_run(encoder):
    """With the spike encoder (CFG's), the spike events are its codes' write and an
    EXPAND; without it, a write like every other buffer's."""
    cfg = replace(CFG, spike_encoder=encoder)
    img = _tile(cfg=cfg)
    reqs = list(tile_requests(cfg, img, BufferMirror(cfg)))
    cmds = [r.cmd for r in reqs[:-1]]
    if encoder:
        i = cmds.index(Cmd.EXPAND)
        assert reqs[i - 1].payload[0] == BufId.CODES.value and cmds.count(Cmd.EXPAND) == 1
        assert reqs[i].completes == ((BufId.SPIKE_EV, 0, img.words[BufId.SPIKE_EV]),)
        del cmds[i]
    assert cmds == [Cmd.WRITE_BUF] * len(cmds)
    assert reqs[-1][:3] == (Cmd.RUN, run_payload(cfg, img.descriptor), ())
    done = [c[0] for r in reqs for c in r.completes]
    assert done == list(img.words)  # one completed write per buffer, in image order


def test_a_tile_run_again_writes_nothing():
    img, mirror = _tile(), BufferMirror(CFG)
    list(tile_requests(CFG, img, mirror))
    assert [r.cmd for r in tile_requests(CFG, img, mirror)] == [Cmd.RUN]


def test_a_write_stopped_midway_leaves_its_range_unknown():
    mirror = BufferMirror(CFG)
    rows = [[1] * CFG.lanes for _ in range(40)]
    reqs = write_requests(CFG, mirror, BufId.WEIGHTS, rows, 3, max_payload=64)
    first = next(reqs)
    assert first.cmd == Cmd.WRITE_BUF and first.completes == ()  # several frames
    assert not mirror.holds(BufId.WEIGHTS, rows, 3)
    reqs.close()  # the caller gave up (no acknowledgement)
    assert not mirror.holds(BufId.WEIGHTS, rows, 3)
    reqs = write_requests(CFG, mirror, BufId.WEIGHTS, rows, 3, max_payload=64)
    last = next(r for r in reqs if r.completes)
    assert last.completes == ((BufId.WEIGHTS, 3, rows),)
    assert not mirror.holds(BufId.WEIGHTS, rows, 3)  # the last frame is not acknowledged yet
    with pytest.raises(StopIteration):
        next(reqs)  # acknowledged: the caller comes back
    assert mirror.holds(BufId.WEIGHTS, rows, 3)


def test_a_write_past_the_buffer_is_refused_before_the_mirror_changes():
    mirror = BufferMirror(CFG)
    rows = [[0] * CFG.lanes]
    list(write_requests(CFG, mirror, BufId.WEIGHTS, rows, 0))
    with pytest.raises(ValueError, match="exceed depth"):
        next(write_requests(CFG, mirror, BufId.WEIGHTS, rows, CFG.weight_depth))
    assert mirror.holds(BufId.WEIGHTS, rows, 0)
