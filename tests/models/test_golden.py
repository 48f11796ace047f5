"""Golden model: spike-domain execution equals the integer path; events; determinism."""

import pytest
import torch

from models.contract import ContractError, Events
from models.convert import ConvertOptions, convert
from models.encodings import Encoding
from models.golden import gemm, run_golden, total_events
from models.graph import FloatOps, forward, gemm_nodes

TEXT = "the spiking accelerator must give the same bits as the golden model"


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.mean(0), b.mean(0), dim=0))


@pytest.mark.parametrize("enc", [Encoding("ttfs", 4), Encoding("ttfs-signed", 4),
                                 Encoding("rate", steps=8), Encoding("graded", steps=5, levels=3),
                                 Encoding("ternary", steps=4), Encoding("int", 8)],
                         ids=lambda e: e.name())
def test_spike_trains_give_the_same_bits_and_events_as_integer_path(tiny_llama, enc):
    cm = convert(tiny_llama, ConvertOptions(encoding=enc, calib_sentences=4))
    ids = tiny_llama.tokenize(TEXT)
    fast, ev_fast = run_golden(cm, ids)
    slow, ev_slow = run_golden(cm, ids, spike_domain=True)
    assert torch.equal(fast, slow)
    assert ev_fast == ev_slow


def test_golden_is_bit_repeatable(tiny_opt_cm, tiny_opt):
    ids = tiny_opt.tokenize(TEXT)
    a, ea = run_golden(tiny_opt_cm, ids)
    b, eb = run_golden(tiny_opt_cm, ids)
    assert torch.equal(a, b) and ea == eb


def test_golden_tracks_the_float_model(tiny_opt_cm, tiny_opt):
    ids = tiny_opt.tokenize(TEXT)
    ref = forward(tiny_opt.spec, tiny_opt.params, ids, FloatOps(tiny_opt.spec, tiny_opt.params))
    assert _cos(run_golden(tiny_opt_cm, ids)[0], ref) > 0.98


def test_events_cover_every_gemm_in_order(tiny_opt_cm, tiny_opt):
    ids = tiny_opt.tokenize(TEXT)
    _, ev = run_golden(tiny_opt_cm, ids)
    assert list(ev) == [n["name"] for n in gemm_nodes(tiny_opt.spec)]
    m, spec = len(ids), tiny_opt.spec
    up = ev["layers.0.up"]
    assert (up.weights_in, up.acts_in, up.outs) == (spec.ffn * spec.hidden, m * spec.hidden,
                                                    m * spec.ffn)
    qk = ev["layers.0.qk"]
    assert qk.gemms == spec.heads and qk.outs == spec.heads * m * m
    tot = total_events(ev)
    assert tot.spikes == sum(e.spikes for e in ev.values())
    assert tot.time_steps == 15  # the longest window: PV's unsigned TTFS (the others 7)
    assert ev["layers.0.av"].time_steps == 15 and ev["layers.0.up"].time_steps == 7


def test_gemm_events_by_hand():
    # 2 rows, 4 inputs (input 3 is an outlier), 3 outputs, TTFS 4-bit.
    codes = torch.tensor([[[0, 5, 15, -100], [1, 0, 0, 7]]])
    mask = torch.tensor([[False, False, False, True]])
    w = torch.tensor([[[1, -2, 3, 4], [0, 1, 0, -1], [7, 7, -7, 2]]])
    shifts = torch.tensor([[0, 0, 0, 2]])
    acc, ev = gemm(codes, mask, shifts, Encoding("ttfs", 4), w, torch.tensor([10, 0, -1]), "t")
    want = torch.tensor([[[-10 + 45 - 1600 + 10, 5 + 400, 35 - 105 - 800 - 1],
                          [1 + 112 + 10, -28, 7 + 56 - 1]]])
    assert torch.equal(acc, want)
    assert ev == Events(gemms=1, spikes=3, spike_units=3, acc_spike=9, acc_step=15 * 2 * 3,
                        macs=2 * 1 * 3, time_steps=15, weights_in=12, acts_in=8, outs=6)


def test_int32_overflow_is_refused_with_the_layer_name():
    codes = torch.full((1, 1, 40000), 127)
    w = torch.full((1, 1, 40000), 127)
    with pytest.raises(ContractError, match="layers.9.down: accumulator overflow"):
        gemm(codes, torch.ones(1, 40000, dtype=torch.bool), torch.full((1, 40000), 4),
             Encoding("ttfs", 4), w, None,
             "layers.9.down")


@pytest.mark.slow
def test_minilm_hybrid_real_weights_spike_domain_exact_and_accurate():
    from models.arch import load_model
    from models.convert import builtin_text
    from models.evaluate import PURE, embed

    lm = load_model("minilm")
    # every GEMM spiking, not distilled: minutes less; the default's mixed GEMMs and trained
    # codes are exact on the tiny models (tests/models/test_mixed.py, the device tests)
    cm = convert(lm, ConvertOptions(**PURE))
    sents = builtin_text("eval_sentences")[::10]
    cos = []
    for s in sents:
        ids = lm.tokenize(s)
        hidden, _ = run_golden(cm, ids)
        ref = forward(lm.spec, lm.params, ids, FloatOps(lm.spec, lm.params))
        cos.append(float(embed(hidden) @ embed(ref)))
    assert sum(cos) / len(cos) > 0.93
    ids = lm.tokenize(sents[0])
    fast, ev_fast = run_golden(cm, ids)
    slow, ev_slow = run_golden(cm, ids, spike_domain=True)
    assert torch.equal(fast, slow) and ev_fast == ev_slow


def test_trace_records_every_gemm_as_the_accelerator_sees_it(tiny_opt_cm, tiny_opt):
    from models.contract import requantize

    trace = []
    ids = tiny_opt.tokenize(TEXT)
    run_golden(tiny_opt_cm, ids, trace=trace)
    spec = tiny_opt.spec
    per_layer = 4 + 2 * spec.heads + 2 + (1 if spec.gated else 0)  # q k v o, heads, up down
    assert len(trace) == spec.layers * per_layer
    for call in trace:  # replaying each call through gemm + requantize gives its outputs
        acc, _ = gemm(call.codes[None], call.int_mask[None], call.shifts[None], call.encoding,
                      call.w[None], call.start, call.name)
        c = call.consts
        y = requantize(acc[0], c["mcol"], call.shift, call.mrow, c["bias"], c["zp"], c["lo"],
                       c["hi"])
        assert torch.equal(y, call.y), call.name


def test_execute_gets_a_node_at_a_time_its_heads_together(tiny_opt_cm, tiny_opt):
    """``execute`` is handed each node's GEMMs as one batch (a linear layer alone, an
    attention matmul's heads together: the ``GemmCall.batch`` it marks a trace with, which
    ``accel.tiling.batches`` reads), and what it returns is what the rest of the pass
    uses: a wrong head's result changes the final hidden states."""
    from accel.tiling import batches

    ids = tiny_opt.tokenize(TEXT)
    trace, seen = [], []

    def execute(calls):
        seen.append([(c.name, c.head) for c in calls])
        return [c.y for c in calls]

    golden, _ = run_golden(tiny_opt_cm, ids, trace=trace)
    hidden, _ = run_golden(tiny_opt_cm, ids, execute=execute)
    assert torch.equal(hidden, golden)
    heads = tiny_opt.spec.heads
    assert {len(b) for b in seen} == {1, heads}
    assert all(len(b) == 1 or (len({n for n, _ in b}) == 1 and [h for _, h in b]
                               == list(range(heads))) for b in seen)
    assert seen == [[(trace[i].name, trace[i].head) for i in b] for b in batches(trace)]

    def wrong_head(calls):
        ys = [c.y for c in calls]
        if len(calls) > 1 and calls[0].name.endswith("av"):
            ys[-1] = ys[-1] + 1  # PV's last head one code off
        return ys

    assert not torch.equal(run_golden(tiny_opt_cm, ids, execute=wrong_head)[0], golden)
    with pytest.raises(ValueError, match="returned 0 results"):
        run_golden(tiny_opt_cm, ids, execute=lambda calls: [])
