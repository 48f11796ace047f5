"""The core trusts no descriptor: every RUN field at 0, at its maximum and past the end of
what it addresses, and the descriptors that hung or corrupted the core before it checked
them. After each, the device answers and the next valid GEMM is exact with exact counters.
"""

from __future__ import annotations

import pytest
import torch

from accel.layouts import BufId, descriptor_errors, descriptor_layout
from accel.payloads import run_payload
from accel.protocol import Cmd, nbytes, parse_chain
from accel.tiling import REQ_CONSTS, build_tile
from host.driver import Device, DeviceError, LinkError
from host.run import run_gemm
from host.transport import SerialTransport
from models.contract import ROW_FRAC
from models.encodings import Encoding
from models.golden import GemmCall, gemm

from .conftest import CFG, FAST

ENC = Encoding("ttfs", 4)


def small_call(m: int, seed: int) -> GemmCall:
    """A GEMM with raw outputs that fits one tile of ``CFG``."""
    g = torch.Generator().manual_seed(seed)
    k, n = 5, CFG.lanes - 1
    codes = torch.randint(0, 16, (m, k), generator=g)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[1] = True
    codes[:, 1] = torch.randint(-127, 128, (m,), generator=g)
    shifts = torch.zeros(k, dtype=torch.int64)
    w = torch.randint(-7, 8, (n, k), generator=g)
    acc, _ = gemm(codes[None], mask[None], shifts[None], ENC, w[None], None, "small")
    ones = {c: torch.full((n,), 1 if c == "mcol" else 0) for c in REQ_CONSTS}
    return GemmCall("small", None, codes, mask, shifts, ENC, w, None, ones,
                    torch.full((m,), 1 << ROW_FRAC), 0, acc[0], raw=True)


def image(call: GemmCall):
    return build_tile(CFG, call.codes, call.int_mask, call.shifts, call.encoding, call.w,
                      consts=call.consts, raw=True)


def raw_run(dev: Device, desc: dict) -> str:
    """Send a RUN with ``desc`` as it is (fields cut to their widths), unchecked by the host;
    the status name it gets."""
    layout = descriptor_layout(CFG)
    bits = 0
    for name, f in layout:
        bits |= (int(desc.get(name, 0)) & ((1 << f.width) - 1)) << f.offset
    try:
        dev.request(Cmd.RUN, bits.to_bytes(nbytes(layout.size), "little"))
    except DeviceError as e:
        return str(e).rsplit(" ", 1)[-1]
    return "OK"


def still_exact(dev: Device, seed: int) -> None:
    assert dev.identify()["lanes"] == CFG.lanes
    _, rec, _ = run_gemm(dev, small_call(3, seed))
    assert rec.exact and rec.counters_match and rec.counters["faults"] == 0, rec
    assert rec.counters["busy"] == rec.predicted_cycles


def field_values(name: str, width: int) -> set[int]:
    """0, the field's maximum, and the first value past what it addresses."""
    past = {"rows": CFG.max_rows + 1, "n_active": CFG.lanes + 1,
            "spike_events": CFG.spike_event_depth + 1, "mac_events": CFG.mac_event_depth + 1,
            "w_base": CFG.weight_depth - 1, "spike_base": CFG.spike_event_depth - 1,
            "mac_base": CFG.mac_event_depth - 1, "row_base": CFG.max_rows - 1}
    vals = {0, (1 << width) - 1}
    if name in past:
        vals.add(min(past[name], (1 << width) - 1))
    return vals


@pytest.fixture
def dev(sim):
    t = SerialTransport(sim.url)
    d = Device(t, CFG, **FAST)
    yield d
    t.close()


def test_every_descriptor_field_at_zero_max_and_past_the_end(dev):
    call = small_call(3, 0)
    img = image(call)
    outcomes: dict[str, int] = {}
    for i, (name, f) in enumerate(descriptor_layout(CFG)):
        for v in sorted(field_values(name, f.width)):
            dev.run_tile(img)  # buffers as the valid descriptor expects them
            desc = dict(img.descriptor, **{name: v})
            got = raw_run(dev, desc)
            want_arg = bool(descriptor_errors(CFG, desc))
            assert (got == "ERR_ARG") == want_arg, (name, v, got)
            assert got in ("OK", "ERR_ARG", "ERR_FAULT"), (name, v, got)
            outcomes[got] = outcomes.get(got, 0) + 1
            if want_arg:  # the host refuses it before sending, naming the field
                with pytest.raises(ValueError, match=f"{name}={v}"):
                    run_payload(CFG, desc)
            still_exact(dev, i)
    print(f"\ndescriptor fuzz: {sum(outcomes.values())} RUNs: {outcomes}")
    assert outcomes.get("ERR_ARG") and outcomes.get("OK")


@pytest.mark.parametrize("case", ["no_events", "fewer_ends", "more_ends", "lanes",
                                  "w_base_wraps"])
def test_descriptors_that_hung_or_corrupted_the_core(dev, case):
    """rows=1 with no events and rows=4 with 2 row ends hung the core; n_active > lanes
    wedged the next RUN; rows=2 with 4 row ends left rows in the FIFOs that corrupted the
    next GEMM; a w_base near the end wrapped silently."""
    call = small_call(4 if case == "more_ends" else 2, 1)
    img = image(call)
    dev.run_tile(img)
    dev.reset_counters()
    d = dict(img.descriptor)
    want = "ERR_FAULT"
    if case == "no_events":
        d.update(rows=1, spike_events=0, mac_events=0)
        want = "ERR_ARG"
    elif case == "fewer_ends":
        d.update(rows=4, spike_events=max(4, d["spike_events"]),
                 mac_events=max(4, d["mac_events"]))
    elif case == "more_ends":
        d.update(rows=2)
    elif case == "lanes":
        d.update(n_active=CFG.lanes + 1)
        want = "ERR_ARG"
    else:
        d.update(w_base=CFG.weight_depth - 2)
    assert raw_run(dev, d) == want
    assert dev.counters()["faults"] == (want == "ERR_FAULT")
    still_exact(dev, 7)


def test_abort_keeps_the_buffers(dev):
    rows = [[(3 * i + j) % 15 - 7 for j in range(CFG.lanes)] for i in range(9)]
    dev.write(BufId.WEIGHTS, rows, 11)
    before = dev.read(BufId.WEIGHTS, 11, 9)
    dev.abort()
    assert dev.read(BufId.WEIGHTS, 11, 9) == before
    still_exact(dev, 3)


def test_driver_aborts_after_a_run_that_never_answers(dev, monkeypatch):
    sent = []
    real = Device.request

    def deaf_to_run(self, cmd, payload=b"", timeout=None):
        sent.append(cmd)
        parts = [c for c, _ in parse_chain(payload)] if cmd == Cmd.CHAIN else [cmd.value]
        if Cmd.RUN.value in parts:  # a RUN, or a CHAIN with one (the tile's writes and RUN)
            raise LinkError("RUN: no good answer")
        return real(self, cmd, payload, timeout)

    monkeypatch.setattr(Device, "request", deaf_to_run)
    with pytest.raises(LinkError):
        dev.run_tile(image(small_call(2, 5)))
    assert sent[-2:] == [Cmd.CHAIN, Cmd.ABORT]
