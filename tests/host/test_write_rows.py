"""WRITE_ROWS: weight rows whose high lanes are zero (an attention operand's rows for a
few key tokens) cross the link at their low lanes' bytes, and the core writes whole rows,
the other lanes zero; it refuses what does not fit."""

import random

import pytest

from accel.layouts import BufId
from accel.payloads import row_lanes, write_rows_payloads
from accel.protocol import ROW_ARGS, Cmd, nbytes, pack_args
from accel.requests import BufferMirror, write_requests
from host.driver import Device, DeviceError
from host.transport import SerialTransport

from .conftest import CFG, FAST


def _rows(rng, n, lanes):
    return [[rng.randint(-128, 127) if j < lanes else 0 for j in range(CFG.lanes)]
            for _ in range(n)]


def test_rows_with_zero_high_lanes_are_sent_at_their_low_lanes():
    rng = random.Random(0)
    rows = _rows(rng, 5, 3)
    rows[2][2] = 0  # the widest row sets the lanes
    assert row_lanes(CFG, BufId.WEIGHTS, rows) == 3
    assert row_lanes(CFG, BufId.WEIGHTS, [[0] * CFG.lanes]) == 1
    assert row_lanes(CFG, BufId.WEIGHTS, _rows(rng, 2, CFG.lanes)) == 0  # no shorter
    assert row_lanes(CFG, BufId.MAC_EV, rows) == 0
    reqs = list(write_requests(CFG, BufferMirror(CFG), BufId.WEIGHTS, rows, 7))
    assert [r.cmd for r in reqs] == [Cmd.WRITE_ROWS]
    assert len(reqs[0].payload) == nbytes(ROW_ARGS.size) + 5 * 3
    # split to fit a payload, whole rows each
    parts = write_rows_payloads(CFG, rows, 3, 7, max_payload=nbytes(ROW_ARGS.size) + 7)
    assert [len(p) - nbytes(ROW_ARGS.size) for p in parts] == [6, 6, 3]


def test_write_rows_writes_whole_rows_and_refuses_what_does_not_fit(sim):
    rng = random.Random(1)
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.identify()
    full = _rows(rng, 6, CFG.lanes)
    dev.write(BufId.WEIGHTS, full, 10)
    for lanes in (1, 5, CFG.lanes - 1):
        rows = _rows(rng, 4, lanes)
        sent = write_requests(CFG, BufferMirror(CFG), BufId.WEIGHTS, rows, 11)
        assert [r.cmd for r in sent] == [Cmd.WRITE_ROWS]  # what the driver sends
        dev.write(BufId.WEIGHTS, rows, 11)
        # the rows' other lanes are now zero, the rows around them untouched
        assert dev.weight_rows(10, 6) == [full[0], *rows, full[5]]
    bad = {"lanes 0": (BufId.WEIGHTS, 0, 2, 0), "too many lanes": (BufId.WEIGHTS, 0, 2, 17),
           "not WEIGHTS": (BufId.MAC_EV, 0, 2, 2),
           "past the end": (BufId.WEIGHTS, CFG.weight_depth - 1, 2, 2)}
    held = dev.weight_rows(0, 2), dev.weight_rows(CFG.weight_depth - 1, 1)
    for why, (buf, addr, count, lanes) in bad.items():
        args = pack_args(ROW_ARGS, {"buf": buf.value, "addr": addr, "count": count,
                                    "lanes": lanes})
        with pytest.raises(DeviceError, match="WRITE_ROWS .* refused: ERR_ARG"):
            dev.request(Cmd.WRITE_ROWS, args + bytes(count * max(lanes, 1)))
        # nothing written
        assert (dev.weight_rows(0, 2), dev.weight_rows(CFG.weight_depth - 1, 1)) == held, why
    ok = write_rows_payloads(CFG, _rows(rng, 2, 2), 2, 12)[0]
    # a count past the buffer whose low bits agree with the payload's length (the core
    # sizes the rows' bytes from the count's bits up to the buffer's depth only)
    n_args = nbytes(ROW_ARGS.size)
    huge = pack_args(ROW_ARGS, {"buf": BufId.WEIGHTS.value, "addr": 12,
                                "count": 2 + (1 << CFG.weight_depth.bit_length()), "lanes": 2})
    held_12 = dev.weight_rows(12, 2)
    for payload in (ok[:-1], ok + b"\0",  # a length that disagrees with the rows
                    huge + ok[n_args:]):
        with pytest.raises(DeviceError, match="WRITE_ROWS .* refused: ERR_ARG"):
            dev.request(Cmd.WRITE_ROWS, payload)
        assert dev.weight_rows(12, 2) == held_12
    assert dev.counters()["faults"] == 0  # and the core still answers
    t.close()
