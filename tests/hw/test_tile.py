"""Host-side tile images: row blocks sized per K tile, no TTFS window without spikes, and
the golden model's window count agreeing with the STEP words."""

import pytest
import torch

from accel.config import AccelConfig
from accel.layouts import BufId, SpikeOp
from accel.tiling import build_tile, plan_gemm, row_groups
from models.encodings import Encoding
from models.golden import gemm

CFG = AccelConfig(lanes=8, mac_units=2, weight_depth=64, max_rows=16,
                  spike_event_depth=2048, mac_event_depth=512, max_steps=15, spike_rows=4)
TTFS = Encoding("ttfs", 4)


def test_rows_are_grouped_by_the_events_of_each_k_tile_not_all_of_k():
    """A row firing on every input of K = 2048 needs 2048 spike words over all of K (more
    than the buffer's 2048 with its steps and END), but only 32 + 15 + 1 per K tile of 32:
    the GEMM fits, 16 rows to a block (max_rows); this was refused ("row 0 alone needs
    2064 spike events")."""
    m, k = 20, 2048
    codes = torch.full((m, k), 7)
    mask = torch.zeros(k, dtype=torch.bool)
    assert row_groups(CFG, codes, mask, TTFS) == [(0, 16), (16, 20)]
    plan = plan_gemm(CFG, codes[:2], mask, torch.zeros(k, dtype=torch.int64), TTFS,
                     torch.ones(3, k, dtype=torch.int64))
    (_, _, _, _, images), = plan.slices
    assert len(images) == k // CFG.k_tile
    assert all(len(img.words[BufId.SPIKE_EV]) == 2 * (CFG.k_tile + 15 + 1) for img in images)


def test_a_row_too_dense_for_one_k_tile_is_refused_by_name():
    enc = Encoding("graded", steps=8, levels=8)  # up to 64 unit spikes per input
    codes = torch.full((1, 64), 64)
    # a K tile of 32 inputs at 64 unit spikes each, and the END
    with pytest.raises(ValueError, match=rf"row 0 alone needs {CFG.k_tile * 64 + 1} spike"):
        row_groups(CFG, codes, torch.zeros(64, dtype=torch.bool), enc)


@pytest.mark.parametrize("k", [1, 32, 50, 100])
def test_a_k_tile_of_integer_channels_only_runs_no_window(k):
    """The STEP words the tiles carry equal the golden model's windows: none in a K tile
    whose channels are all outliers (K = 1 with its one channel an outlier: the PV GEMM
    of a one-token sequence)."""
    g = torch.Generator().manual_seed(k)
    m, n = 3, 5
    mask = torch.zeros(k, dtype=torch.bool)
    kt = CFG.k_tile
    mask[: min(k, kt)] = True  # the first K tile is all integer
    codes = torch.where(mask, torch.randint(-127, 128, (m, k), generator=g),
                        torch.randint(0, 16, (m, k), generator=g))
    shifts = torch.zeros(k, dtype=torch.int64)
    w = torch.randint(-7, 8, (n, k), generator=g)
    plan = plan_gemm(CFG, codes, mask, shifts, TTFS, w)
    steps = sum(sum(wd["op"] == SpikeOp.STEP for wd in img.words[BufId.SPIKE_EV])
                for *_, imgs in plan.slices for img in imgs)
    _, ev = gemm(codes[None], mask[None], shifts[None], TTFS, w[None], None, "t",
                 k_tile=CFG.k_tile, n_tile=CFG.lanes)
    assert steps * n == ev.acc_step
    spike_tiles = -(-(k - kt) // kt) if k > kt else 0
    assert ev.acc_step == TTFS.time_steps * m * n * spike_tiles


def test_an_integer_encoding_with_spike_channels_is_refused():
    codes = torch.ones(2, 4, dtype=torch.int64)
    mask = torch.tensor([True, False, True, True])
    with pytest.raises(ValueError, match="every input channel must be an integer channel"):
        build_tile(CFG, codes, mask, torch.zeros(4, dtype=torch.int64), Encoding("int", 8),
                   torch.ones(2, 4, dtype=torch.int64))


@pytest.mark.parametrize("what, kwargs, message", [
    ("code", dict(codes=torch.full((2, 4), 9)), r"a spike code of 9 exceeds the 7 the spike "
                                                 r"lanes are sized for"),
    ("kind", dict(enc=Encoding("rate", steps=4)), r"does not run rate spikes"),
    ("weights", dict(w=torch.full((3, 4), 200)), r"weights span \[200, 200\], outside the "
                                                  r"8-bit weight buffer"),
])
def test_a_tile_the_lanes_cannot_hold_is_refused(what, kwargs, message):
    cfg = AccelConfig(lanes=8, mac_units=2, weight_depth=64, max_rows=16, max_steps=7,
                      encodings=("ttfs-signed", "int"), spike_rows=4)
    args = dict(codes=torch.ones(2, 4, dtype=torch.int64), enc=Encoding("ttfs-signed", 4),
                w=torch.ones(3, 4, dtype=torch.int64)) | kwargs
    with pytest.raises(ValueError, match=message):
        build_tile(cfg, args["codes"], torch.zeros(4, dtype=torch.bool),
                   torch.zeros(4, dtype=torch.int64), args["enc"], args["w"], where=what)


def test_only_tiles_with_weights_past_four_bits_read_the_high_half():
    codes = torch.ones(2, 4, dtype=torch.int64)
    mask, shifts = torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.int64)
    narrow = build_tile(CFG, codes, mask, shifts, TTFS, torch.tensor([[-8, 7, 0, 1]]))
    wide = build_tile(CFG, codes, mask, shifts, TTFS, torch.tensor([[-9, 7, 0, 1]]))
    assert narrow.descriptor["wide"] == 0 and wide.descriptor["wide"] == 1
