"""STORE on the simulated device: weight rows gathered from the output buffer's codes into
the external memory exactly as ``accel.chain.gathered`` predicts them (transposed or
not, wide or narrow lanes, some lanes, odd strides) and code rows (4-bit codes, rows of
whole code words), where a LOAD finds them; and the STOREs the core must refuse."""

import random

import pytest

from accel.chain import Gather, gathered, store_lanes, store_payload
from accel.layouts import BufId, buffer_shapes, dram_words
from accel.payloads import load_payload
from accel.protocol import Cmd, chain_payload
from host.driver import Device, DeviceError
from host.transport import SerialTransport

from .conftest import CFG, FAST


def test_store_gathers_codes_into_weight_rows_a_load_reads(sim):
    rng = random.Random(5)
    depth = buffer_shapes(CFG)[BufId.OUT][1]
    out = [rng.randint(-127, 127) for _ in range(depth)]
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.identify()
    dev.write(BufId.OUT, [v & 0xFFFFFFFF for v in out])
    cases = [Gather(BufId.WEIGHTS, 5, 7, CFG.lanes, 1, 31, 100),  # a transpose (K of QK^T)
             Gather(BufId.WEIGHTS, 40, 9, 11, 23, 1, 300),  # rows as they are (V of PV)
             Gather(BufId.WEIGHTS4, 3, 4, 5, 2, 3, 500),  # narrow lanes: low 4 bits
             Gather(BufId.WEIGHTS, depth - 1, 1, 1, 0, 0, 700),  # the buffer's last word
             # code rows (Q of QK^T): 4-bit codes, each row whole code words
             Gather(BufId.CODES, 7, 5, 13, 17, 1, 800),  # 13 codes: two words a row
             Gather(BufId.CODES, 2, 3, CFG.lanes, 1, 2, 900),  # a row of every lane
             Gather(BufId.CODES, 0, 1, 1, 0, 0, 950)]  # one code, seven zeros
    for g in cases:
        want = gathered(CFG, g, out)
        before = dev.counters()["store_busy"]
        dev.request(Cmd.STORE, store_payload(g))
        assert dev.read(BufId.DRAM, g.dst, len(want)) == want, g
        # store_busy counts its cycles: at least five a lane read, one a zero lane and a
        # memory word, and its five of arguments (the memory may hold a write longer)
        per = store_lanes(CFG, g.buf)[1]
        row = per * (len(want) // g.rows)  # lanes of a row's memory words
        least = 5 + g.rows * (1 + 5 * g.lanes + (row - g.lanes) + len(want) // g.rows)
        spent = dev.counters()["store_busy"] - before
        assert least <= spent <= least + 20 * len(want), (g, spent, least)
    # a LOAD of the first one's rows puts them in the weight buffer
    g = cases[0]
    dev.request(Cmd.LOAD, load_payload((BufId.WEIGHTS, 0, g.rows, g.dst)))
    rows = dev.weight_rows(0, g.rows)
    assert rows == [[out[g.src + r + j * g.lane_stride] for j in range(CFG.lanes)]
                    for r in range(g.rows)]
    # code rows: each code's low 4 bits, the first in the low bits, rows of whole words
    # (the code buffer is not readable: tests/host/test_chain.py EXPANDs such LOADs)
    g = cases[4]
    assert gathered(CFG, g, out) == [sum((out[g.src + r * g.row_stride + j] & 15) << (4 * (j % 8))
                        for j in range(w * 8, min(g.lanes, w * 8 + 8)))
                    for r in range(g.rows) for w in range(2)]
    # a STORE right behind a long copy gathers beside it and writes once it is done: both
    # land whole (the memory port is the copier's meanwhile)
    n = dram_words(CFG, BufId.WEIGHTS)
    long = [rng.getrandbits(32) for _ in range(CFG.weight_depth * n)]
    dev.write(BufId.DRAM, long, 2000)
    g = cases[1]._replace(dst=1000)
    dev.request(Cmd.CHAIN, chain_payload([
        (Cmd.LOAD, load_payload((BufId.WEIGHTS, 0, CFG.weight_depth, 2000))),
        (Cmd.STORE, store_payload(g))]))
    assert dev.read(BufId.DRAM, g.dst, g.rows * n) == gathered(CFG, g, out)
    assert dev.read(BufId.WEIGHTS, 0, CFG.weight_depth) == [
        sum(w << (32 * i) for i, w in enumerate(long[r * n:(r + 1) * n]))
        for r in range(CFG.weight_depth)]
    n = dram_words(CFG, BufId.WEIGHTS)
    top = 1 << CFG.dram_addr_bits
    bad = {"no weight layout": Gather(BufId.OUT, 0, 1, 1, 0, 0, 0),
           "no lanes": Gather(BufId.WEIGHTS, 0, 1, 0, 0, 1, 0),
           "more lanes than the array": Gather(BufId.WEIGHTS, 0, 1, CFG.lanes + 1, 0, 1, 0),
           "a lane past OUT": Gather(BufId.WEIGHTS, depth - 3, 1, 4, 0, 1, 0),
           "a row past OUT": Gather(BufId.WEIGHTS, 10, 3, 1, (depth - 10) // 2, 0, 0),
           "past the memory": Gather(BufId.WEIGHTS, 0, 2, 1, 1, 1, top - 2 * n + 1),
           "more codes than the array": Gather(BufId.CODES, 0, 1, CFG.lanes + 1, 0, 1, 0),
           "code rows past the memory": Gather(BufId.CODES, 0, 3, 9, 9, 1, top - 5)}
    before = dev.read(BufId.DRAM, 0, 8)
    for why, g in bad.items():
        with pytest.raises(DeviceError, match="STORE .* refused: ERR_ARG"):
            dev.request(Cmd.STORE, store_payload(g))
            pytest.fail(why)
    assert dev.read(BufId.DRAM, 0, 8) == before  # a refused STORE writes nothing
    with pytest.raises(DeviceError, match="STORE .* refused: ERR_ARG"):
        dev.request(Cmd.STORE, store_payload(cases[0])[:-1])  # a short payload
    # the last memory word is reachable, and no rows is nothing to do
    g = Gather(BufId.WEIGHTS, 0, 1, 2, 0, 1, top - n)
    dev.request(Cmd.STORE, store_payload(g))
    assert dev.read(BufId.DRAM, top - n, n) == gathered(CFG, g, out)
    g = Gather(BufId.CODES, 0, 2, 9, 1, 1, top - 4)  # two rows of two words: the last
    dev.request(Cmd.STORE, store_payload(g))
    assert dev.read(BufId.DRAM, top - 4, 4) == gathered(CFG, g, out)
    dev.request(Cmd.STORE, store_payload(Gather(BufId.WEIGHTS, 0, 0, 1, 9, 9, 0)))
    assert dev.read(BufId.DRAM, 0, 8) == before
    with pytest.raises(DeviceError, match="STORE .* refused: ERR_ARG"):  # still a bad one
        dev.request(Cmd.STORE, store_payload(Gather(BufId.OUT, 0, 0, 1, 0, 0, 0)))
    t.close()
