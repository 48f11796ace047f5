"""The model in the external memory, on the simulated device: the memory written and read
through the link, LOADs (checked by the core), the image's header, and GEMMs whose weights,
constants and start values come from the memory bit-exact, with the next tile's weights
loaded while a tile runs."""

import dataclasses

import pytest
import torch

from accel.layouts import BufId, buffer_shapes, dram_words, pack_word, to_dram_words
from accel.payloads import load_payload, parse_load_payload
from accel.protocol import BUF_ARGS, EXPAND_ARGS, Cmd, unpack_args, word_bytes
from accel.requests import BufferMirror, gemm_requests, named_buffer
from accel.resident import DramImage, model_image
from accel.tiling import PassPlanner, constant_tiles, plan_call
from host.driver import Device, DeviceError, LinkError
from host.run import run_gemm, run_model
from host.transport import SerialTransport
from models.contract import requantize
from models.encodings import Encoding
from models.golden import GemmCall, gemm

from .conftest import CFG, FAST


def _call(seed: int, m: int = 12, k: int = 150, n: int = 40) -> GemmCall:
    """A linear layer (``constant``) with K and N tiles and an odd last tile of each."""
    g = torch.Generator().manual_seed(seed)
    enc = Encoding("ttfs", steps=7)
    codes = torch.randint(0, 8, (m, k), generator=g) * (torch.rand(m, k, generator=g) < 0.3)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[[2, k - 3]] = True
    codes[:, mask] = torch.randint(-127, 128, (m, 2), generator=g)
    shifts = torch.zeros(k, dtype=torch.int64)
    w = torch.randint(-8, 8, (n, k), generator=g)
    start = torch.randint(-500, 500, (n,), generator=g)
    consts = {"mcol": torch.randint(1, 2**15, (n,), generator=g),
              "bias": torch.randint(-50, 50, (n,), generator=g),
              "zp": torch.zeros(n, dtype=torch.int64), "lo": torch.full((n,), -127),
              "hi": torch.full((n,), 127)}
    mrow = torch.randint(1, 2**16, (m,), generator=g)
    acc, _ = gemm(codes[None], mask[None], shifts[None], enc, w[None], start, "t")
    y = requantize(acc[0], consts["mcol"], 20, mrow, consts["bias"], consts["zp"],
                   consts["lo"], consts["hi"])
    return GemmCall(f"lin{seed}", None, codes, mask, shifts, enc, w, start, consts, mrow, 20,
                    y, constant=True)


def _attn(seed: int, m: int = 9, k: int = 20, n: int = 17) -> GemmCall:
    """An attention GEMM (QK^T of one head): its weights are activations (int8 keys, one
    row per key token: ``n`` of them), its requantizer constants one value per head
    expanded to every lane, no start values (``models.golden.GoldenOps.attn_scores``)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-7, 8, (m, k), generator=g) * (torch.rand(m, k, generator=g) < 0.4)
    mask, shifts = torch.zeros(k, dtype=torch.bool), torch.zeros(k, dtype=torch.int64)
    w = torch.randint(-127, 128, (n, k), generator=g)
    one = {"mcol": 20000 + seed, "bias": seed - 3, "zp": 0, "lo": -127, "hi": 127}
    consts = {c: torch.full((n,), v) for c, v in one.items()}
    mrow = torch.randint(1, 2**16, (m,), generator=g)
    acc, _ = gemm(codes[None], mask[None], shifts[None], Encoding("ttfs-signed", steps=7),
                  w[None], None, "qk")
    y = requantize(acc[0], consts["mcol"], 18, mrow, consts["bias"], consts["zp"],
                   consts["lo"], consts["hi"])
    return GemmCall("qk", 0, codes, mask, shifts, Encoding("ttfs-signed", steps=7), w, None,
                    consts, mrow, 18, y)


def _written(reqs) -> set[BufId]:
    """The buffers ``reqs`` write through the link."""
    return {BufId(r.payload[0] & 0x7F) for r in reqs if r.cmd in (Cmd.WRITE_BUF, Cmd.WRITE_ROWS)}


def test_attention_constants_are_loaded_whatever_the_sequence_length():
    """Sans-IO: an image traced on two key tokens holds a head's constants ``lanes`` wide
    and the zero start values, so a QK^T over any number of key tokens (one N slice or
    several) loads them instead of writing them; its key rows still cross the link."""
    image = model_image(CFG, [_attn(1, n=2), _attn(2, n=2)])
    assert len(image) == 3  # two heads' constants, one block of zero start values
    for n in (1, 17, CFG.lanes, CFG.lanes + 5):
        for seed in (1, 2):
            reqs = list(gemm_requests(CFG, plan_call(CFG, _attn(seed, n=n)),
                                      BufferMirror(CFG), image=image))
            assert BufId.PARAMS not in _written(reqs) and BufId.START not in _written(reqs)
            assert _written(reqs) & {BufId.WEIGHTS, BufId.WEIGHTS4}
            assert any(r.cmd in (Cmd.LOAD, Cmd.LOAD_RUN) for r in reqs)
    # another head's constants are not there: written as before
    other = list(gemm_requests(CFG, plan_call(CFG, _attn(3)), BufferMirror(CFG), image=image))
    assert BufId.PARAMS in _written(other)


def test_each_gemm_loads_the_next_ones_first_weights_beside_its_last_tile():
    """Sans-IO: with a pass planned by one PassPlanner, each GEMM's last RUN follows a LOAD
    of the next linear layer's first weights into the half of the weight buffer that GEMM
    starts in, the other one than its own last tile's, and the next GEMM then does not
    load them again before its first RUN."""
    calls = [_call(1, k=150, n=40), _call(2, k=CFG.k_tile - 5, n=17), _call(3, k=70, n=9)]
    image, planner, mirror = model_image(CFG, calls), PassPlanner(CFG), BufferMirror(CFG)
    for i, call in enumerate(calls):
        plan = planner.plan(call)
        first = next(plan.steps())[0]
        lead = planner.lead(calls[i + 1] if i + 1 < len(calls) else None)
        reqs = list(gemm_requests(CFG, plan, mirror, image=image, lead=lead))
        # each RUN goes with its tile's last LOAD (one LOAD_RUN request)
        runs = [j for j, r in enumerate(reqs) if r.cmd in (Cmd.RUN, Cmd.LOAD_RUN)]
        assert reqs[runs[-1]].cmd == Cmd.LOAD_RUN or lead is None
        weights = lambda r: [c for c in r.completes  # noqa: E731
                             if c[0] in (BufId.WEIGHTS, BufId.WEIGHTS4)]
        if i:  # loaded beside the previous GEMM's last tile, not before its own first RUN
            # (the weights loaded there are the next tile's, into the other half)
            assert not any(c[1] == first.descriptor["w_base"]
                           for r in reqs[:runs[0] + 1] for c in weights(r)), call.name
        if lead is None:
            assert i == len(calls) - 1
            continue
        before_last = [c for r in reqs[runs[-2] + 1:runs[-1] + 1] for c in weights(r)]
        lead_base = lead.base[BufId.WEIGHTS4]
        assert (BufId.WEIGHTS4, lead_base, lead.words[BufId.WEIGHTS4]) in before_last
        last_base = [img for img, _ in plan.steps()][-1].descriptor["w_base"]
        assert lead_base // (CFG.weight_depth // 2) != last_base // (CFG.weight_depth // 2)


def test_external_memory_written_and_read_through_the_link(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    words = [(i * 2654435761) & 0xFFFFFFFF for i in range(300)]
    top = (1 << CFG.dram_addr_bits) - len(words)
    dev.write(BufId.DRAM, words, top)  # the last words of the memory
    assert dev.read(BufId.DRAM, top, len(words)) == words
    with pytest.raises(DeviceError, match="READ_BUF .* refused: ERR_ARG"):
        dev.read(BufId.DRAM, top, len(words) + 1)  # past the end
    t.close()


def test_load_copies_buffer_words_and_the_core_refuses_bad_loads(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    shape, _ = buffer_shapes(CFG)[BufId.WEIGHTS]
    rows = [[(i * 5 + j) % 255 - 127 for j in range(CFG.lanes)] for i in range(9)]
    mem = to_dram_words(CFG, BufId.WEIGHTS, [pack_word(shape, r) for r in rows])
    dev.write(BufId.DRAM, mem, 1000)
    dev.request(Cmd.LOAD, load_payload((BufId.WEIGHTS, 20, 9, 1000)))
    assert dev.read(BufId.WEIGHTS, 20, 9) == [pack_word(shape, r) for r in rows]
    n = dram_words(CFG, BufId.WEIGHTS)
    bad = {"the external memory itself": (BufId.DRAM, 0, 1, 0),
           "a datapath buffer": (BufId.ACC, 0, 1, 0),
           "a read-only view": (BufId.OUT8, 0, 1, 0),
           "past the buffer": (BufId.WEIGHTS, CFG.weight_depth - 2, 3, 0),
           "past the memory": (BufId.WEIGHTS, 0, 2, (1 << CFG.dram_addr_bits) - 2 * n + 1)}
    for why, args in bad.items():
        with pytest.raises(DeviceError, match="LOAD .* refused: ERR_ARG"):
            dev.request(Cmd.LOAD, load_payload(args))
            pytest.fail(why)
    with pytest.raises(DeviceError, match="LOAD .* refused: ERR_ARG"):
        dev.request(Cmd.LOAD, load_payload((BufId.WEIGHTS, 0, 1, 0))[:-1])  # short payload
    # the last word of the memory is reachable
    dev.request(Cmd.LOAD, load_payload((BufId.START, 0, 1, (1 << CFG.dram_addr_bits) - 1)))
    assert dev.read(BufId.START, 0, 1) == [0]
    t.close()


def test_a_load_carries_several_copies_and_stops_at_a_refused_one(sim):
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.write(BufId.DRAM, list(range(100, 164)), 5000)
    dev.write(BufId.START, [0] * CFG.lanes)
    dev.write(BufId.ROWS, [0] * 8)
    copies = [(BufId.START, 0, 4, 5000), (BufId.ROWS, 2, 3, 5010), (BufId.START, 6, 2, 5020)]
    assert parse_load_payload(load_payload(*copies)) == copies
    dev.request(Cmd.LOAD, load_payload(*copies))
    assert dev.read(BufId.START, 0, 8) == [100, 101, 102, 103, 0, 0, 120, 121]
    assert dev.read(BufId.ROWS, 0, 6) == [0, 0, 110, 111, 112, 0]
    # the second copy runs past its buffer: the first has run, the third never does
    with pytest.raises(DeviceError, match="LOAD .* refused: ERR_ARG"):
        dev.request(Cmd.LOAD, load_payload((BufId.ROWS, 0, 1, 5030),
                                           (BufId.START, CFG.lanes - 1, 2, 5000),
                                           (BufId.START, 0, 1, 5040)))
    assert dev.read(BufId.ROWS, 0, 1) == [130] and dev.read(BufId.START, 0, 1) == [100]
    payload = load_payload((BufId.START, 0, 1, 5000))
    for bad in (b"\x00" + payload[1:], b"\x02" + payload[1:], payload + b"\x00"):
        with pytest.raises(DeviceError, match="LOAD .* refused: ERR_ARG"):
            dev.request(Cmd.LOAD, bad)  # a count that disagrees with the length
    with pytest.raises(ValueError, match="a LOAD carries 1..255 copies, not 0"):
        load_payload()
    assert dev.read(BufId.START, 0, 1) == [100]
    t.close()


def test_resident_gemms_are_exact_load_their_words_and_prefetch(sim):
    # K within half the weight buffer (one K tile) and beyond it (several)
    calls = [_call(1, k=CFG.weight_depth // 2 - 3, n=40), _call(2, k=150, n=17),
             _attn(7, n=CFG.lanes + 3)]
    image = model_image(CFG, [*calls[:2], _attn(7, n=1)])  # attention traced on one token
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.identify()
    # without the image: every word crosses the link
    plain = [run_gemm(dev, c)[1] for c in calls]
    dev.load_image(image)
    assert dev.use_image(image)
    dev.forget()
    before = dev.counters()
    resident = []
    for c in calls:
        _, rec, before = run_gemm(dev, c, before=before)
        resident.append(rec)
    t.close()
    wb = word_bytes(CFG)
    for c, p, r in zip(calls, plain, resident, strict=True):
        assert p.exact and r.exact and r.counters_match, r.name
        # weights, constants and start values no longer cross the link: a LOAD request
        # and its answer (29 bytes) replace each block's words
        blocks = [(b, w) for words in constant_tiles(CFG, c) for b, w in words.items()
                  if c.constant or b in (BufId.PARAMS, BufId.START)]
        moved = sum(len(w) * wb[b] for b, w in blocks)
        assert p.link_bytes - r.link_bytes > moved - 29 * len(blocks), r.name
        assert r.counters["busy"] == r.predicted_cycles
        assert r.counters["loads"] > 0 and r.counters["dram_rd"] > 0
        # the link traffic is what accel.requests prices, with and without the image
        assert p.link == p.predicted_link and r.link == r.predicted_link, r.name
    # K tiles are at most half the weight buffer (AccelConfig.k_tile), so every next
    # tile's weights may be loaded beside a run (whether a prefetch overlaps depends on the
    # host's latency here: sim/cocotb_top.py checks it cycle by cycle)
    assert all(len(img.words.get(BufId.WEIGHTS4) or img.words[BufId.WEIGHTS]) <= CFG.k_tile
               for c in calls for img, _ in plan_call(CFG, c).steps())
    assert dev.stats["loads"] == sum(r.counters["loads"] for r in resident)


def _loaded(requests) -> set:
    """The buffers the LOADs among ``requests`` (and their CHAINs' parts) copy into."""
    return {buf for req in requests for r in req.parts or (req,)
            if r.cmd in (Cmd.LOAD, Cmd.LOAD_RUN) for buf, *_ in parse_load_payload(r.payload)}


def test_spike_codes_staged_once_are_loaded_and_expanded_for_each_n_slice(sim):
    # 96 rows of 150 inputs: the spike events of all K tiles do not fit the event buffer
    # together, so each of the 3 N slices needs them again; their codes (4 bits an input)
    # are staged in the memory instead of the event words (17 bits a spike)
    call = _call(9, m=96, k=150, n=40)
    image = model_image(CFG, [call])
    plan = plan_call(CFG, call)
    requests = list(gemm_requests(CFG, plan, BufferMirror(CFG), image=image))
    assert BufId.CODES in _loaded(requests) and BufId.SPIKE_EV not in _loaded(requests)
    writes = [r for r in requests if r.cmd == Cmd.WRITE_BUF]
    args = [unpack_args(BUF_ARGS, r.payload) for r in writes]
    events = {image.key(b, w): (b, w) for img, _ in plan.steps()
              for b, w in img.words.items() if b == BufId.SPIKE_EV}
    event_words = sum(len(w) * dram_words(CFG, b) for b, w in events.values())
    staged_words = sum(int(a.count) for r, a in zip(writes, args, strict=True)
                       if named_buffer(r) == BufId.DRAM)
    assert 0 < staged_words < event_words / 2
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.load_image(image)
    _, rec, _ = run_gemm(dev, call)
    t.close()
    assert rec.exact and rec.counters_match and rec.link == rec.predicted_link
    assert rec.counters["busy"] == rec.predicted_cycles
    assert dev.stats["loads"] == rec.counters["loads"]  # the code buffer's copies too
    # every tile's spike words made on chip, from codes written or loaded, and the MAC
    # words the MAC EXPANDs make (the integer channels' values a byte each)
    macs = [unpack_args(EXPAND_ARGS, r.payload)
            for req in requests for r in req.parts or (req,) if r.cmd == Cmd.EXPAND]
    made = sum(int(a.count) for a in macs if a.mac)
    mac_sets = {image.key(b, w): w for img, _ in plan.steps()
                for b, w in img.words.items() if b == BufId.MAC_EV}
    # staged as their values (a byte each) too, and made again for each N slice that
    # needs them, not written as words
    assert made > sum(len(w) for w in mac_sets.values()) > 0
    assert not any(named_buffer(r) == BufId.MAC_EV for r in writes)
    assert rec.counters["enc_wr"] == made + sum(len(w) for img, _ in plan.steps()
                                                for b, w in img.words.items()
                                                if b == BufId.SPIKE_EV)


@pytest.mark.parametrize("density,staged", [(0.02, BufId.SPIKE_EV), (1.0, BufId.CODES)])
def test_staged_spikes_are_codes_or_event_words_whichever_crosses_less(density, staged):
    # K tiles of 512 inputs: a row's codes take 256 bytes whatever its spikes; its event
    # words (a spike's, a STEP a step, an END) 4 bytes each. At 2 % a tile's event words
    # are fewer bytes than its codes, at _call's 26 % more: whichever is cheaper is staged
    cfg = dataclasses.replace(CFG, weight_depth=1024)
    call = _call(9, m=320, k=900, n=40)
    g = torch.Generator().manual_seed(1)
    keep = (torch.rand(call.codes.shape, generator=g) < density) | call.codes.abs().gt(7)
    # no integer channels: their MAC words are staged by the same rule, but as bytes
    call = dataclasses.replace(call, codes=call.codes * keep * ~call.int_mask,
                               int_mask=torch.zeros_like(call.int_mask))
    loaded = _loaded(gemm_requests(cfg, plan_call(cfg, call), BufferMirror(cfg),
                                   image=model_image(cfg, [call])))
    other = ({BufId.SPIKE_EV, BufId.CODES} - {staged}).pop()
    assert staged in loaded and other not in loaded


def test_an_image_is_used_only_where_the_device_holds_it(sim):
    a, b = model_image(CFG, [_call(3)]), model_image(CFG, [_call(4)])
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.load_image(a)
    assert dev.use_image(a) and not dev.use_image(b)
    assert dev.image is None  # a run then writes every word itself
    # a load cut short leaves no header: the image is not taken for a whole one
    dev.write(BufId.DRAM, [0] * a.base)
    assert not dev.use_image(a)
    t.close()


def test_a_load_that_reads_back_wrong_is_an_error(sim):
    image = model_image(CFG, [_call(5)])
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    real = dev.read_raw

    def damaged(buf, addr, count):
        raw = bytearray(real(buf, addr, count))
        raw[len(raw) // 2] ^= 1
        return bytes(raw)

    dev.read_raw = damaged
    with pytest.raises(LinkError, match="read back with CRC-32"):
        dev.load_image(image)
    dev.read_raw = real
    assert dev.image is None and not dev.use_image(image)
    t.close()


def test_image_stores_each_block_once_and_refuses_what_does_not_fit():
    call = _call(6)
    image = model_image(CFG, [call, call])
    assert len(model_image(CFG, [call])) == len(image)
    assert image.find(BufId.ROWS, [12345]) is None
    # an activation-weighted GEMM (attention) keeps only its constants and start values
    dyn = model_image(CFG, [dataclasses.replace(call, constant=False)])
    assert len(dyn) == len({(b, repr(w)) for words in constant_tiles(CFG, call)
                            for b, w in words.items() if b in (BufId.PARAMS, BufId.START)})
    assert not any(dyn.find(b, w) for words in constant_tiles(CFG, call)
                   for b, w in words.items() if b in (BufId.WEIGHTS, BufId.WEIGHTS4))
    small = dataclasses.replace(CFG, dram_addr_bits=8)
    with pytest.raises(ValueError, match="more than the 256 of the external memory"):
        model_image(small, [call])
    with pytest.raises(ValueError, match="DRAM words cannot be loaded"):
        DramImage(CFG).add(BufId.DRAM, [1])


@pytest.mark.slow
def test_whole_model_resident_bit_exact(sim, tiny_llama, tiny_llama_cm):
    from accel.baselines import trace
    from accel.chain import PassChains
    from accel.resident import resident_image

    lm, cm = tiny_llama, tiny_llama_cm
    ids = lm.tokenize("A small model, run from the external memory.")
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    plain = run_model(cm, ids, dev)
    dev.load_image(resident_image(CFG, cm))
    res = run_model(cm, ids, dev)
    t.close()
    assert plain.bit_exact and res.bit_exact
    assert all(r.exact and r.counters_match for r in res.records)
    assert all(r.counters["busy"] == r.predicted_cycles for r in res.records)
    # each GEMM's traffic, the next one's first weights loaded with its last tile included
    assert all(r.link == r.predicted_link for r in res.records)
    assert sum(r.link_bytes for r in res.records) < 0.7 * sum(r.link_bytes
                                                              for r in plain.records)
    # the value projections' outputs stay on the device as PV's weights (STOREd, LOADed):
    # not read back, checked through PV's outputs (accel.chain)
    chains = PassChains(CFG, trace(cm, ids), resident_image(CFG, cm))
    chained = {calls.name for calls in (trace(cm, ids)[i] for i in chains.by_call)}
    assert chained and all(name.endswith(".v") for name in chained)
    v = [r for r in res.records if r.name in chained]
    pv = [p for p in plain.records if p.name in chained]
    assert all(r.exact is True for r in v)
    # no output read: fewer bytes than the plain run's outputs read
    assert sum(r.link_bytes for r in v) < sum(p.link_bytes for p in pv)


@pytest.mark.slow
@pytest.mark.parametrize("dram_bits", [16, 64])
def test_resident_gemms_on_other_memory_widths(tmp_path_factory, dram_bits):
    """Memory words narrower and wider than the default (a weight row, a constants word and
    a start value each take a different number of them), a small memory and odd shapes."""
    from sim.device import SimDevice

    from ..helpers import simulator_binary

    cfg = dataclasses.replace(CFG, lanes=8, mac_units=2, weight_depth=32, dram_bits=dram_bits,
                              dram_addr_bits=14)
    calls = [_call(7, m=5, k=13, n=11), _call(8, m=9, k=40, n=19)]
    image = model_image(cfg, calls)
    binary = simulator_binary(cfg, tmp_path_factory.mktemp(f"dram{dram_bits}"))
    with SimDevice(binary) as sim:
        t = SerialTransport(sim.url)
        dev = Device(t, cfg, **FAST)
        dev.identify()
        dev.load_image(image)
        before = dev.counters()
        for c in calls:
            _, rec, before = run_gemm(dev, c, before=before)
            assert rec.exact and rec.counters_match and rec.link == rec.predicted_link, c.name
            assert rec.counters["busy"] == rec.predicted_cycles
            assert rec.counters["loads"] > 0
        t.close()


def test_link_costs_of_several_images_equal_each_priced_alone(tiny_llama, tiny_llama_cm):
    # gen build prices the pass streamed and resident with each GEMM planned once
    from accel.linkcost import gemm_label, link_parts, run_link_cost, run_link_costs
    from models.golden import run_golden

    calls = []
    run_golden(tiny_llama_cm, tiny_llama.tokenize("Priced once, sent twice."), trace=calls)
    image = model_image(CFG, calls)
    both = run_link_costs(CFG, calls, [None, image])
    assert both == [run_link_cost(CFG, calls), run_link_cost(CFG, calls, image)]
    assert both[0]["bytes_tx"] > both[1]["bytes_tx"] > 0
    # the breakdown: every GEMM kind, parts that add up to the bytes, and the resident
    # pass LOADs the weights the streamed one writes
    for cost in both:
        parts = link_parts(cost)
        assert set(parts) == {gemm_label(c.name) for c in calls}
        assert sum(sum(row.values()) for row in parts.values()) == (cost["bytes_tx"]
                                                                   + cost["bytes_rx"])
    weights = [sum(v for k, v in c.items() if k.endswith(("write weights", "write weights4")))
               for c in both]
    loads = [sum(v for k, v in c.items() if k.endswith(("load", "load_run"))) for c in both]
    assert weights[0] > weights[1] and loads[1] > loads[0] == 0
