"""Output neuron unit against the contract's requantizer, bit for bit, with stalls."""

import random

import pytest
import torch

from accel.config import AccelConfig
from models.contract import requantize
from sim.blocks import rtl_output_unit
from sim.streams import samples, seed

CFG = AccelConfig(lanes=4, mac_units=2, weight_depth=64, max_steps=15)


def _consts(g, n, extreme):
    if extreme:
        mcol = torch.full((n,), 2**15 - 1)
        bias = torch.tensor([2**31 - 1, -(2**31), 0, 12345])[:n]
    else:
        mcol = torch.randint(0, 2**15, (n,), generator=g)
        bias = torch.randint(-(2**20), 2**20, (n,), generator=g)
    zp = torch.randint(0, 16, (n,), generator=g)
    lo = torch.where(torch.rand(n, generator=g) < 0.5, 0, -127)
    hi = torch.where(lo == 0, 15, 127)
    return dict(mcol=mcol, bias=bias, zp=zp, lo=lo, hi=hi)


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_output_unit_equals_contract_requantizer(extreme, relu):
    rng = random.Random(seed() + 11)
    for _ in range(samples(2)):
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        m, n = 3, rng.randrange(1, CFG.lanes + 1)
        if extreme:
            acc = torch.tensor([[2**31 - 1, -(2**31), 0, -1][:n]] * m)
        else:
            acc = torch.randint(-(2**31), 2**31, (m, n), generator=g)
        mrow = torch.randint(1, 2**16, (m,), generator=g)
        shift = rng.choice([0, 1, 17, 30, 47])
        c = _consts(g, n, extreme)
        want = requantize(acc, c["mcol"], shift, mrow, c["bias"], c["zp"], c["lo"], c["hi"],
                          relu=relu)
        got = rtl_output_unit(CFG, acc, mrow, c, shift, relu=relu, stall_p=0.3,
                              seed=rng.random())
        assert torch.equal(got, want)


def test_output_unit_raw_passes_accumulators():
    acc = torch.tensor([[5, -7, 2**31 - 1], [0, 1, -(2**31)]])
    c = dict(mcol=[1] * 3, bias=[0] * 3, zp=[0] * 3, lo=[0] * 3, hi=[0] * 3)
    got = rtl_output_unit(CFG, acc, torch.tensor([1, 1]), c, 0, raw=True)
    assert torch.equal(got, acc)
