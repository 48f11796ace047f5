"""Outputs that stay on the device as later GEMMs' weights (``accel.chain``): the plan's
STOREs gather exactly the weight blocks the consumers' tiles LOAD, a whole model runs
bit-exact with keys and values never crossing the link, and what does not fit a STORE is
read back and written as before."""

import dataclasses

import pytest
import torch

from accel.baselines import trace
from accel.chain import PassChains, gathered, store_supported
from accel.layouts import BufId, buffer_shapes, code_words, to_dram_words, word_packer
from accel.linkcost import run_link_cost
from accel.payloads import parse_load_payload
from accel.requests import BufferMirror, Cmd, gemm_requests
from accel.resident import DramImage, resident_image
from accel.tiling import PassPlanner, out_read, tile_constants, tiles

from .conftest import CFG, run_resident
from .test_resident import _attn, _call


def _packed(buf, words) -> list[int]:
    """A block's memory words, as a LOAD reads them."""
    pack = word_packer(buffer_shapes(CFG)[buf][0])
    return to_dram_words(CFG, buf, [pack(w) for w in words])


def _words_at(image, src: int, count: int) -> list[int]:
    """The memory words ``src ..`` of ``image`` or the images it follows."""
    while not image.base <= src < image.base + len(image.words):
        image = image.parent
    return image.words[src - image.base:src - image.base + count]


def _out_after(cfg, plan, upto: int) -> dict[int, int]:
    """What the output buffer holds after step ``upto`` of ``plan``: address -> the
    producer's output ``(m, c)``."""
    out = {}
    for i, (img, done) in enumerate(plan.steps()):
        if done is not None:
            _, base, _ = out_read(cfg, img)
            for m in range(done.r0, done.r1):
                for c in range(done.n0, done.n1):
                    out[base + (m - done.r0) * (done.n1 - done.n0) + (c - done.n0)] = (m, c)
        if i == upto:
            return out
    raise AssertionError("no such step")


def test_stores_gather_the_blocks_the_consumers_load(tiny_opt, tiny_opt_cm):
    ids = tiny_opt.tokenize("Keys and values stay on the board.")
    calls = trace(tiny_opt_cm, ids)
    image = resident_image(CFG, tiny_opt_cm)
    chains = PassChains(CFG, calls, image)
    names = {calls[i].name.rsplit(".", 1)[1] for i in chains.by_call}
    # k and v feed QK^T's and PV's weights, q QK^T's input codes, in OPT: no rotary
    assert names == {"q", "k", "v"}
    depth = buffer_shapes(CFG)[BufId.OUT][1]
    stored = {}
    for i, chain in chains.by_call.items():
        y = calls[i].y
        plan = PassPlanner(CFG).plan(calls[i])
        for step, gathers in chain.stores.items():
            held = _out_after(CFG, plan, step)
            out = [0] * depth
            for a, (m, c) in held.items():
                out[a] = int(y[m, c])
            for g in gathers:
                stored[g.dst] = gathered(CFG, g, out)
    # every weight block a consumer loads is one the STOREs wrote, word for word
    mirror = BufferMirror(CFG)
    loads = codes = 0
    planner = PassPlanner(CFG)
    for i, call in enumerate(calls):
        reqs = list(gemm_requests(CFG, planner.plan(call), mirror, image=chains.image_for(i),
                                  chain=chains.by_call.get(i)))
        if i in chains.by_call:
            chain = chains.by_call[i]
            # only the slices the chain reads are read back
            assert sum(r.cmd == Cmd.READ_BUF for r in reqs) >= len(chain.reads)
            assert bool(chain.reads) == any(r.cmd == Cmd.READ_BUF for r in reqs)
            assert sum(r.cmd == Cmd.STORE for r in reqs) == sum(
                len(g) for g in chain.stores.values())
        for r in reqs:
            if r.cmd in (Cmd.LOAD, Cmd.LOAD_RUN):
                for buf, _addr, words in r.completes:
                    src = chains.image_for(i).find(buf, words)
                    if buf in (BufId.WEIGHTS, BufId.WEIGHTS4) and src in stored:
                        assert stored[src] == _packed(buf, words)
                        loads += 1
            if r.cmd == Cmd.LOAD:  # the encoder's codes (their LOADs complete no tile write)
                for buf, _addr, count, src in parse_load_payload(r.payload):
                    if buf == BufId.CODES and src in stored:
                        # the words the consumer's codes are in the memory: the STORE's
                        assert stored[src] == _words_at(chains.image_for(i), src, count)
                        codes += 1
    assert codes  # QK^T's input codes, q's outputs STOREd
    assert loads + codes >= sum(len(c.consumers) for c in chains.by_call.values())
    # and it crosses fewer bytes than reading the outputs and writing the weights
    assert run_link_cost(CFG, calls, image)["bytes_tx"] < run_link_cost(CFG, calls, None)[
        "bytes_tx"]


def test_a_model_runs_bit_exact_with_keys_and_values_on_the_device(sim, tiny_opt,
                                                                  tiny_opt_cm):
    res = run_resident(sim, tiny_opt_cm, tiny_opt.tokenize("Keys and values stay on the board."))
    assert res.bit_exact
    # k and v wholly on the board; q's slices with an outlier channel read, the rest not
    chained = [r for r in res.records if r.name.endswith((".q", ".k", ".v"))]
    assert len(chained) == 6 and all(r.exact is True and r.counters_match for r in chained)
    assert all(r.link == r.predicted_link for r in res.records)
    assert all(r.counters["busy"] == r.predicted_cycles for r in res.records)


def _stored_blocks(cfg, calls, chains) -> dict[int, list[int]]:
    """Memory word -> the words the plan's STOREs write there, from the producers' golden
    outputs placed in the output buffer as their tiles leave them."""
    depth = buffer_shapes(cfg)[BufId.OUT][1]
    stored = {}
    for i, chain in chains.by_call.items():
        plan = PassPlanner(cfg).plan(calls[i])
        for step, gathers in chain.stores.items():
            out = [0] * depth
            for a, (m, c) in _out_after(cfg, plan, step).items():
                out[a] = int(calls[i].y[m, c])
            for g in gathers:
                stored[g.dst] = gathered(cfg, g, out)
    return stored


@pytest.mark.parametrize("m", [12, CFG.max_rows + 9])  # rows in OUT at once, or in two turns
def test_only_outputs_a_store_covers_go_unread(m):
    producer = dataclasses.replace(_call(11, m=m, k=40, n=20), name="L.v")
    y = producer.y
    consumer = dataclasses.replace(_attn(3), name="L.av", head=0)
    full = dataclasses.replace(consumer, w=y[:, :20].t().contiguous())
    other = dataclasses.replace(consumer, w=-y[:, :20].t().contiguous())
    image = DramImage(CFG)
    chains = PassChains(CFG, [producer, full], image)
    assert list(chains.by_call) == [0] and chains.by_call[0].consumers == [("L.av", 0)]
    stored = _stored_blocks(CFG, [producer, full], chains)
    n, k = full.w.shape
    blocks = [next((b, w) for b, w in tile_constants(CFG, full.w[t.n0:t.n1, t.k0:t.k1]).items()
                   if b in (BufId.WEIGHTS, BufId.WEIGHTS4)) for t in tiles(CFG, [(0, 1)], n, k)]
    assert len(stored) == len(blocks) > (1 if m > CFG.max_rows else 0)
    for buf, w in blocks:  # each block the consumer loads is a STORE's words
        src = chains.image_for(1).find(buf, w)
        assert stored[src] == _packed(buf, w)
    assert not chains.by_call[0].reads  # every output checked where it is used
    # a consumer of some channels leaves the rest unchecked: a slice with any of those is
    # read back as before (one of CFG.lanes channels, the first slice, is not)
    steps = list(PassPlanner(CFG).plan(producer).steps())
    for w, unread in ((y[:, :10], ()), (y[:, :CFG.lanes], (0,))):
        chain = PassChains(CFG, [producer, dataclasses.replace(consumer, w=w.t().contiguous())],
                           DramImage(CFG)).by_call[0]
        assert chain.stores and chain.reads == {
            i for i, (_, d) in enumerate(steps) if d is not None and d.n0 not in unread}
    assert not PassChains(CFG, [producer, other], DramImage(CFG)).by_call
    # a later layer's GEMM is not a consumer
    assert not PassChains(CFG, [producer, dataclasses.replace(full, name="M.av")],
                          DramImage(CFG)).by_call


def test_a_consumers_input_codes_are_stored_and_outlier_channels_are_read_back():
    """q -> QK^T: a consumer whose input codes are a window of the producer's outputs LOADs
    its code blocks from the producer's STOREs; a block with an outlier (integer) channel,
    whose value crosses as a MAC word, leaves that output to be read back."""
    producer = dataclasses.replace(_call(14, m=12, k=40, n=40), name="L.q")
    producer = dataclasses.replace(producer, y=producer.y.clamp(-7, 7))  # 4-bit codes
    y = producer.y
    assert (y[:, 16 + 3] != 0).any()
    head = dataclasses.replace(_attn(5, m=12, k=16), name="L.qk", head=0, codes=y[:, :16])
    mask = torch.zeros(16, dtype=torch.bool)
    mask[3] = True
    other = dataclasses.replace(head, head=1, codes=y[:, 16:32], int_mask=mask)
    calls = [producer, head, other]
    chains = PassChains(CFG, calls, DramImage(CFG))
    chain = chains.by_call[0]
    assert chain.consumers == [("L.qk", 0)]  # head 1 loads none of its blocks
    assert {g.buf for gs in chain.stores.values() for g in gs} == {BufId.CODES}
    # channels 0..15 all checked by head 0: not read; 16..31 hold head 1's outlier, and
    # nothing uses 32..39: read
    steps = list(PassPlanner(CFG).plan(producer).steps())
    assert chain.reads == {i for i, (_, d) in enumerate(steps) if d is not None and d.n0 != 0}
    # head 0's codes are what the STOREs write, and what its EXPANDs LOAD
    stored = _stored_blocks(CFG, calls, chains)
    img = next(i for i, _ in PassPlanner(CFG).plan(head).steps())
    words = code_words(img.codes)
    src = chains.image_for(1).find(BufId.CODES, words)
    assert src is not None and stored[src] == _packed(BufId.CODES, words)
    reqs = list(gemm_requests(CFG, PassPlanner(CFG).plan(head), BufferMirror(CFG),
                              image=chains.image_for(1)))
    assert any(r.cmd == Cmd.LOAD and parse_load_payload(r.payload)[0][0] == BufId.CODES
               for r in reqs)
    assert not any(r.cmd == Cmd.WRITE_BUF and r.payload[0] & 0x7F == BufId.CODES
                   for r in reqs)
    # head 1's block (its outlier's code zeroed, the output is not) is not the gather's
    img = next(i for i, _ in PassPlanner(CFG).plan(other).steps())
    assert chains.image_for(2).find(BufId.CODES, code_words(img.codes)) is None


def test_a_block_is_found_only_once_it_is_stored_and_only_where_this_gemm_stores_it():
    producer = dataclasses.replace(_call(12, m=12, k=40, n=CFG.lanes), name="L1.v")
    w = producer.y.t().contiguous()  # one tile: one block
    before = dataclasses.replace(_attn(4), name="L0.av", head=0, w=w)  # equal, earlier
    after = dataclasses.replace(before, name="L1.av")
    calls = [before, producer, after]
    chains = PassChains(CFG, calls, DramImage(CFG))
    assert list(chains.by_call) == [1]
    (block,) = [x for b, x in tile_constants(CFG, w).items() if b == BufId.WEIGHTS]
    (g,) = [g for gs in chains.by_call[1].stores.values() for g in gs]
    # the GEMM before the producer finds nothing (not yet stored); the one after, its STORE
    assert chains.image_for(0).find(BufId.WEIGHTS, block) is None
    assert chains.image_for(2).find(BufId.WEIGHTS, block) == g.dst
    # where the model's image holds equal words, the consumer would LOAD those: no chain
    model = DramImage(CFG)
    model.add(BufId.WEIGHTS, block)
    assert not PassChains(CFG, calls, model).by_call


def test_a_core_whose_lanes_a_store_cannot_gather_has_no_store_and_no_chains():
    from amaranth.back import rtlil

    from hw.executor import Executor

    cfg = dataclasses.replace(CFG, weight_bits=6)
    assert store_supported(CFG) and not store_supported(cfg)
    rtlil.convert(Executor(cfg))  # elaborates, without STORE (ERR_COMMAND)
    producer = dataclasses.replace(_call(12, m=12, k=40, n=20), name="L1.v")
    user = dataclasses.replace(_attn(4), name="L1.av", head=0,
                               w=producer.y[:, :20].t().contiguous())
    assert not PassChains(cfg, [producer, user], DramImage(cfg)).by_call


def test_a_consumer_s_window_is_found_aligned_or_not_as_they_are_or_transposed(monkeypatch):
    from accel import chain

    y = torch.arange(5 * 40).view(5, 40)
    assert chain._window(y, y[:, 8:16]) == (False, 8)  # a head's channels: aligned
    assert chain._window(y, y[:, 3:11]) == (False, 3)  # anywhere, small enough
    assert chain._window(y, y[:, 3:9].t()) == (True, 3)  # as rows
    assert chain._window(y, -y[:, 3:11]) is None
    monkeypatch.setattr(chain, "SEARCH_LIMIT", 0)  # a large output: aligned windows only
    assert chain._window(y, y[:, 8:16]) == (False, 8) and chain._window(y, y[:, 3:11]) is None
