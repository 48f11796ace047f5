"""Pipelined requests: which requests may be sent before the answer to the one ahead
(``accel.requests.pipeline_groups``), the round trips ``link_cost`` counts for them, and
the driver recovering from a lost answer inside a group without running a RUN twice."""

import dataclasses

import pytest
import torch

from accel.cycles import gemm_cycles
from accel.encoder import encoder_counts
from accel.layouts import BufId
from accel.linkcost import PART, link_cost
from accel.payloads import buf_args
from accel.protocol import (
    EXPAND_ARGS,
    FRAME_OVERHEAD,
    LENGTH_LIMIT,
    RX_FIFO_BYTES,
    SUB_HEADER_BYTES,
    Cmd,
    FrameDecoder,
    encode_frame,
    nbytes,
    pack_args,
)
from accel.requests import (
    BufferMirror,
    Request,
    answer_bytes,
    chained,
    gemm_requests,
    pipeline_groups,
)
from accel.tiling import PassPlanner, plan_call, slice_rows
from accel.workload import GemmWork
from host.driver import Device
from host.transport import SerialTransport

from .conftest import CFG, FAST
from .test_resident import _attn, _call


def _w(buf: BufId, n: int = 8) -> Request:
    return Request(Cmd.WRITE_BUF, buf_args(buf, 0, n) + bytes(n))


def _r(buf: BufId, n: int = 8) -> Request:
    return Request(Cmd.READ_BUF, buf_args(buf, 0, n))


RUN = Request(Cmd.RUN, b"\0" * 8)
COUNTERS = Request(Cmd.READ_COUNTERS, b"")


def _cmds(groups) -> list[list[str]]:
    return [[r.cmd.name for r in g] for g in groups]


def test_groups_keep_runs_first_and_reads_off_what_the_group_writes():
    reqs = [_w(BufId.SPIKE_EV), _w(BufId.MAC_EV), _r(BufId.OUT8), RUN, _r(BufId.OUT8),
            _r(BufId.OUT16), COUNTERS, _w(BufId.PARAMS), _r(BufId.OUT),
            Request(Cmd.LOAD_RUN, b"\1" * 16), _w(BufId.START), RUN]
    assert _cmds(pipeline_groups(reqs)) == [
        ["WRITE_BUF", "WRITE_BUF", "READ_BUF"],          # reads and writes behind writes
        ["RUN", "READ_BUF", "READ_BUF", "READ_COUNTERS"],  # only reads behind a RUN
        ["WRITE_BUF", "READ_BUF"],
        ["LOAD_RUN"],                                      # a write never follows a run
        ["WRITE_BUF"],
        ["RUN"]]                                           # nor a run a write
    # a read of a memory the group writes (OUT8 is a view of OUT) starts a group
    assert _cmds(pipeline_groups([_w(BufId.OUT), _r(BufId.OUT8), _r(BufId.ROWS)])) == [
        ["WRITE_BUF"], ["READ_BUF", "READ_BUF"]]
    # an EXPAND is a RUN's like: it follows nothing and only reads follow it (a write
    # behind it could change its codes before it is sent again, and makes the core forget
    # its seq), and it writes the spike-event buffer
    expand = Request(Cmd.EXPAND, bytes(nbytes(EXPAND_ARGS.size)))
    assert _cmds(pipeline_groups([_w(BufId.CODES), expand, _w(BufId.MAC_EV),
                                  _r(BufId.SPIKE_EV), expand, _r(BufId.OUT8), RUN])) == [
        ["WRITE_BUF"], ["EXPAND"], ["WRITE_BUF", "READ_BUF"], ["EXPAND", "READ_BUF"], ["RUN"]]
    # ... and with ``mac`` set the MAC-event buffer instead
    mac = Request(Cmd.EXPAND, pack_args(EXPAND_ARGS, {"mac": 1}))
    assert _cmds(pipeline_groups([expand, _r(BufId.MAC_EV), _r(BufId.SPIKE_EV), mac,
                                  _r(BufId.SPIKE_EV), _r(BufId.MAC_EV)])) == [
        ["EXPAND", "READ_BUF"], ["READ_BUF"], ["EXPAND", "READ_BUF"], ["READ_BUF"]]
    # window 0: every request waits for the answer before it
    assert [len(g) for g in pipeline_groups(reqs, 0)] == [1] * len(reqs)


def test_what_follows_the_first_request_fits_the_receive_fifo():
    full = RX_FIFO_BYTES - FRAME_OVERHEAD  # a payload whose frame fills the FIFO
    reqs = [RUN, _w(BufId.ROWS, 1), Request(Cmd.WRITE_BUF, b"\x05" + bytes(full - 1)),
            Request(Cmd.WRITE_BUF, b"\x05" + bytes(full - 2)), _r(BufId.OUT8)]
    groups = list(pipeline_groups(reqs))
    # the FIFO-sized write fits behind a small one, the next does not fit behind it
    assert _cmds(groups) == [["RUN"], ["WRITE_BUF", "WRITE_BUF"], ["WRITE_BUF", "READ_BUF"]]
    for g in groups:
        assert sum(len(r.payload) + FRAME_OVERHEAD for r in g[1:]) <= RX_FIFO_BYTES
    cost = link_cost(CFG, reqs, max_payload=None)  # each request its own frame
    assert (cost["waits"], cost["frames_tx"]) == (3, 5)
    assert link_cost(CFG, reqs, 0, max_payload=None)["waits"] == 5
    # as the driver sends them: the RUN and the writes are one CHAIN, the read behind it
    cost = link_cost(CFG, reqs)
    assert (cost["waits"], cost["frames_tx"]) == (1, 2)
    assert cost["bytes_tx"] == sum(len(r.payload) + SUB_HEADER_BYTES for r in reqs[:4]) + len(
        reqs[4].payload) + 2 * FRAME_OVERHEAD
    # by what they carry: each request of the CHAIN by its own, the read's answer with it,
    # both frames' overhead and the CHAIN's four sub-headers as framing
    parts = {k: v for k, v in link_cost(CFG, reqs, label="g").items() if k.startswith(PART)}
    words = answer_bytes(CFG, reqs[4])
    assert words > 0 and parts == {
        "part:g:run": len(RUN.payload),
        "part:g:write rows": len(reqs[1].payload),
        "part:g:write params": len(reqs[2].payload) + len(reqs[3].payload),
        "part:g:read out8": len(reqs[4].payload) + words,
        "part:g:framing": 4 * FRAME_OVERHEAD + 4 * SUB_HEADER_BYTES}
    assert sum(parts.values()) == cost["bytes_tx"] + cost["bytes_rx"]


class _LoseAnswer:
    """A transport that loses the answer to the first ``cmd`` request it sends that
    others were sent behind before its answer came (a request inside a pipelined group),
    or (``grouped`` False) to the first ``cmd`` request."""

    def __init__(self, inner, cmd: Cmd, grouped: bool = True):
        self.inner, self.cmd, self.grouped = inner, cmd.value, grouped
        self.decoder = FrameDecoder(LENGTH_LIMIT)
        self.last: tuple[int, int] | None = None  # (cmd, seq) of the frame sent before
        self.target: int | None = None
        self.lost = 0

    def send(self, data: bytes) -> None:
        cmd, seq = data[1], data[2]
        if self.target is None and not self.grouped and cmd == self.cmd:
            self.target = seq
        if self.target is None and self.last is not None and self.last[0] == self.cmd:
            self.target = self.last[1]  # a request follows it before its answer
        self.last = (cmd, seq)
        self.inner.send(data)

    def recv(self, timeout: float) -> bytes:
        out = b""
        self.last = None  # waiting for answers: what was sent before is a group's end
        for f in self.decoder.feed(self.inner.recv(timeout)):
            if f.seq == self.target and not self.lost:
                self.lost += 1
                continue
            out += encode_frame(f.cmd, f.seq, f.payload)
        return out

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("cmd", [(Cmd.CHAIN, True), (Cmd.READ_BUF, True), (Cmd.CHAIN, False)])
def test_a_lost_answer_in_a_group_is_recovered_without_running_twice(sim, cmd):
    """A tile's writes, EXPAND (CFG has the encoder) and RUN go as one CHAIN, reads behind
    it: a CHAIN whose answer is lost is sent again with its seq and not run again (the
    busy cycles and the encoder's counters equal the prediction)."""
    call = _call(11, m=20, k=45, n=CFG.lanes + 9)  # two output slices, K tiles
    t = _LoseAnswer(SerialTransport(sim.url), *cmd)
    dev = Device(t, CFG, **FAST)
    dev.identify()
    before = dev.counters()
    y, after = dev.gemm_counted(plan_call(CFG, call))
    t.close()
    assert t.lost == 1 and dev.stats["retries"] >= 1
    assert torch.equal(y, call.y)
    # every RUN ran once: the busy cycles are the cycle model's for the GEMM
    assert after["busy"] - before["busy"] == gemm_cycles(CFG, GemmWork.of(call)).cycles
    reqs = gemm_requests(CFG, plan_call(CFG, call), BufferMirror(CFG))
    assert {k: after[k] - before[k] for k in ("enc_busy", "enc_wr")} == encoder_counts(reqs)
    assert dev.stats["waits"] < dev.stats["frames_tx"]  # requests were pipelined
    assert cmd[0] != Cmd.EXPAND or dev.stats["timeouts"] == 1  # it was the one lost


def test_pipelined_gemm_moves_what_link_cost_predicts(sim):
    call = _call(12, m=9, k=70, n=21)
    dev = Device(SerialTransport(sim.url), CFG, **FAST)
    dev.identify()
    plan = plan_call(CFG, call)
    s0 = dict(dev.stats)
    predicted = link_cost(CFG, [*gemm_requests(CFG, plan, BufferMirror(CFG)), COUNTERS])
    y, _ = dev.gemm_counted(plan)
    dev.t.close()
    assert torch.equal(y, call.y)
    got = {k: dev.stats[k] - s0.get(k, 0) for k in ("frames_tx", "waits", "bytes_tx",
                                                     "bytes_rx")}
    assert got == {k: predicted[k] for k in got}
    assert got["waits"] < got["frames_tx"]


def test_slices_take_copies_of_the_rows_so_their_runs_share_round_trips(sim):
    # 7 output slices of 10 rows: max_rows 32 holds 3 copies of the rows, so slices 0..2
    # run at rows 0, 10, 20 and are read after the third RUN; 3..5 and 6 likewise
    call = _call(13, m=10, k=30, n=7 * CFG.lanes - 3)
    plan = plan_call(CFG, call)
    bases = [img.descriptor["row_base"] for img, _ in plan.steps()]
    assert bases == [slice_rows(CFG, 10, n0) for n0 in range(0, 7 * CFG.lanes, CFG.lanes)]
    assert bases == [0, 10, 20, 0, 10, 20, 0]
    reqs = list(gemm_requests(CFG, plan, BufferMirror(CFG)))
    groups = list(pipeline_groups(chained(reqs)))
    runs = [sum(p.cmd in (Cmd.RUN, Cmd.LOAD_RUN) for r in g for p in (r.parts or (r,)))
            for g in groups]
    assert [n for n in runs if n] == [3, 3, 1]  # one round trip for each three RUNs
    dev = Device(SerialTransport(sim.url), CFG, **FAST)
    dev.identify()
    before = dev.counters()
    s0 = dict(dev.stats)
    y, after = dev.gemm_counted(plan)
    dev.t.close()
    assert torch.equal(y, call.y)
    assert after["busy"] - before["busy"] == gemm_cycles(CFG, GemmWork.of(call)).cycles
    predicted = link_cost(CFG, [*reqs, COUNTERS])
    got = {k: dev.stats[k] - s0.get(k, 0) for k in ("frames_tx", "waits", "bytes_tx",
                                                     "bytes_rx")}
    assert got == {k: predicted[k] for k in got}
    assert got["waits"] == 3  # three groups of RUNs and reads, the counters behind the last


def test_a_nodes_heads_run_as_one_stream_with_their_counters_read_once(sim):
    """An attention node's heads (6 QK^T heads of 9 rows, 2 output slices each) as one
    request stream: each head's slices go on from the copies of the rows the head before
    took (3 copies in max_rows 32), so reads wait behind three RUNs whatever head they
    belong to, and the counters are read once, after the last head, against the heads'
    golden events summed. Bit-exact, cycles = the model, link = the prediction."""
    from host.run import run_gemm, run_gemms

    calls = [dataclasses.replace(_attn(20 + h), head=h) for h in range(6)]
    plan = PassPlanner(CFG).plan_batch(calls)
    bases = [img.descriptor["row_base"] for img, _ in plan.steps()]
    assert bases == [0, 9, 18] * 4
    assert plan.offsets == [9 * h for h in range(6)]
    reqs = list(gemm_requests(CFG, plan, BufferMirror(CFG)))
    groups = list(pipeline_groups(chained([*reqs, COUNTERS])))
    runs = [sum(p.cmd in (Cmd.RUN, Cmd.LOAD_RUN) for r in g for p in (r.parts or (r,)))
            for g in groups]
    assert [n for n in runs if n] == [3, 3, 3, 3]
    assert sum(r.cmd == Cmd.READ_COUNTERS for g in groups for r in g) == 1
    dev = Device(SerialTransport(sim.url), CFG, **FAST)
    dev.identify()
    ys, rec, _ = run_gemms(dev, calls)
    alone = [run_gemm(dev, c)[1] for c in calls]  # the same heads one at a time
    dev.t.close()
    assert all(torch.equal(y, c.y) for y, c in zip(ys, calls, strict=True))
    assert rec.exact and rec.counters_match and rec.heads == tuple(range(6))
    assert rec.counters["busy"] == rec.predicted_cycles == sum(a.predicted_cycles
                                                               for a in alone)
    assert rec.link == rec.predicted_link and rec.link["waits"] == 4
    assert all(a.exact and a.counters_match and a.link["waits"] == 1 for a in alone)
    # one counter read instead of six: fewer bytes back than the heads alone
    assert rec.link["bytes_rx"] < sum(a.link["bytes_rx"] for a in alone)


@pytest.mark.parametrize("m,k,n,heads", [(1, 20, 17, 3), (17, 70, 16, 2), (33, 20, 5, 2),
                                         (16, 7, 40, 5)])
def test_batches_of_odd_heads_are_exact_with_counters_cycles_and_link_predicted(sim, m, k, n,
                                                                                heads):
    """Heads of one row (decode), of rows filling half the row buffers (one copy each, no
    room for two), of more rows than the row buffers hold (row blocks, no copies), K split
    over several tiles, and N over several slices: as one request stream each is
    bit-exact, its counters equal the heads' golden events summed, its busy cycles the
    model's, its link traffic the prediction, and it takes no more round trips than the
    heads one at a time."""
    from host.run import run_gemm, run_gemms

    calls = [dataclasses.replace(_attn(40 + h, m=m, k=k, n=n), head=h) for h in range(heads)]
    dev = Device(SerialTransport(sim.url), CFG, **FAST)
    dev.identify()
    ys, rec, _ = run_gemms(dev, calls)
    dev.forget()
    alone = [run_gemm(dev, c)[1] for c in calls]
    dev.t.close()
    assert all(torch.equal(y, c.y) for y, c in zip(ys, calls, strict=True))
    assert rec.exact and rec.counters_match
    assert rec.counters["busy"] == rec.predicted_cycles
    assert rec.link == rec.predicted_link
    assert rec.link["waits"] <= sum(a.link["waits"] for a in alone)
    assert all(a.exact and a.counters_match for a in alone)
