"""The host's choice between writing a tile's MAC-event words and having the encoder make
them (``accel.requests.expand_cheaper``), checked against the exact pricing of both
(``accel.linkcost.link_cost``), without a device (the device runs them in
``test_resident.py`` and ``test_random_gemm.py``)."""

import pytest
import torch

import accel.requests as requests
from accel.layouts import BufId
from accel.linkcost import link_cost
from accel.protocol import EXPAND_ARGS, Cmd, unpack_args
from accel.requests import BufferMirror, gemm_requests, named_buffer
from accel.tiling import plan_call
from models.encodings import Encoding
from models.golden import GemmCall

from .conftest import CFG


def _call(m: int, chans: int, k: int = 30, n: int = 20, seed: int = 0) -> GemmCall:
    """A TTFS GEMM whose first ``chans`` inputs are integer channels (int8 values)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 8, (m, k), generator=g)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[:chans] = True
    codes[:, mask] = torch.randint(-127, 128, (m, chans), generator=g)
    shifts = torch.randint(0, 3, (k,), generator=g)
    ones = {c: torch.ones(n, dtype=torch.int64) for c in ("mcol", "bias", "zp", "lo", "hi")}
    return GemmCall("t", None, codes, mask, shifts, Encoding("ttfs", steps=7),
                    torch.randint(-8, 8, (n, k), generator=g), None, ones,
                    torch.ones(m, dtype=torch.int64), 0, torch.zeros(m, n, dtype=torch.int64))


def _requests(call):
    return list(gemm_requests(CFG, plan_call(CFG, call), BufferMirror(CFG)))


def _mac_expands(reqs) -> int:
    return sum(bool(unpack_args(EXPAND_ARGS, r.payload).mac)
               for req in reqs for r in req.parts or (req,) if r.cmd == Cmd.EXPAND)


def _bytes(reqs) -> int:
    c = link_cost(CFG, reqs)
    return c["bytes_tx"] + c["bytes_rx"]


@pytest.mark.parametrize("m,chans", [(1, 1), (2, 1), (24, 1), (5, 3), (24, 12), (32, 30)])
def test_the_host_takes_whichever_crosses_fewer_bytes(monkeypatch, m, chans):
    """Priced exactly, what the host sends is never more than either way forced: MAC
    words from the encoder or written by the host."""
    call = _call(m, chans)
    chosen = _requests(call)
    monkeypatch.setattr(requests, "expand_cheaper", lambda *a: True)
    on_chip = _requests(call)
    monkeypatch.setattr(requests, "expand_cheaper", lambda *a: False)
    written = _requests(call)
    assert _mac_expands(on_chip) > 0 and _mac_expands(written) == 0
    assert _bytes(chosen) <= min(_bytes(on_chip), _bytes(written))
    # a row or two of a few values: their words are cheaper than a table and an EXPAND
    assert bool(_mac_expands(chosen)) == (m * chans >= 24)


def test_many_integer_channels_are_made_on_chip_at_a_byte_a_value():
    """24 rows of 12 integer channels: the encoder makes the 312 MAC words (23 bits each
    on the link) from a 12-entry table and 288 bytes; no MAC word crosses."""
    reqs = _requests(_call(24, 12))
    assert _mac_expands(reqs) > 0
    parts = [r for req in reqs for r in req.parts or (req,)]
    assert not any(r.cmd == Cmd.WRITE_BUF and named_buffer(r) == BufId.MAC_EV for r in parts)
