"""SNN2ANN's neuron (``if-adaptive``): IF with hard reset and an adaptive threshold.

Hand-worked trains, the vectorised neuron against a literal scalar one for every code, the
golden GEMM computing from the actual spike counts (not the codes), its quantized
reference, and bad parameters refused by name."""

import pytest
import torch

from models.arch import load_model
from models.contract import int_matmul
from models.convert import ConvertOptions, convert
from models.encodings import (
    FINE,
    Encoding,
    accumulate,
    adaptive_table,
    decode,
    encode,
    spike_counts,
    spike_events,
    spike_values,
)
from models.evaluate import PURE
from models.golden import gemm, run_golden


def scalar_neuron(m: int, steps: int) -> list[int]:
    """The neuron of docs/encodings.md, literally, one input."""
    theta0 = FINE * steps
    base = theta0 - (7 * theta0) // 16
    v, th, out = 0, base, []
    for _ in range(steps):
        v += m
        if v >= th:
            out.append(1)
            v = 0  # hard reset
            th = min(th + FINE // 2, theta0)  # adapts upward after a spike, at most theta0
        else:
            out.append(0)
            th -= (th - base) // 8  # relaxes back toward base
    return out


# T = 8: theta0 = 64, base threshold 64 - floor(448 / 16) = 36, rise 4, relax 1/8
HAND = [
    (0, [0, 0, 0, 0, 0, 0, 0, 0]),  # silent
    (8, [0, 0, 0, 0, 1, 0, 0, 0]),  # v 8..40: fires at 40 >= 36; then 8..24 < 40
    # 20, 40 >= 36 fires, v = 0 (the excess 4 is lost); 20, 40 >= 40 fires (theta 44);
    # 20 (theta 43), 40 < 43 (theta 43), 60 >= 43 fires (theta 47); 20: 3 spikes for 2.5
    (20, [0, 1, 0, 1, 0, 0, 1, 0]),
    (32, [0, 1, 0, 1, 0, 1, 0, 1]),  # exactly 32 / 8 = 4
    (36, [1, 0, 1, 0, 1, 0, 1, 0]),  # at the base threshold: fires, then theta 40 > 36
    (64, [1, 1, 1, 1, 1, 1, 1, 1]),  # the largest code: every step (theta reaches 64)
]


@pytest.mark.parametrize("m, train", HAND)
def test_hand_worked_trains(m, train):
    enc = Encoding("if-adaptive", steps=8)
    assert scalar_neuron(m, 8) == train
    assert encode(torch.tensor([m]), enc).view(-1).tolist() == train
    assert encode(torch.tensor([-m]), enc).view(-1).tolist() == [-s for s in train]


def test_hard_reset_loses_the_excess_and_the_threshold_adapts():
    enc = Encoding("if-adaptive", steps=8)
    # 20: a soft-reset neuron with the same thresholds would keep the excess 4 after the
    # first spike and fire again at step 2; the hard reset starts from 0 and fires at step 3
    assert encode(torch.tensor([20]), enc).view(-1).tolist()[1:4] == [1, 0, 1]
    # 36 fires at once (theta = 36), and not at the next step: theta rose to 40
    assert encode(torch.tensor([36]), enc).view(-1).tolist()[:2] == [1, 0]
    # 37 > 36 but 37 < 40: without the rise it would fire every step (8 spikes, not 4-5)
    assert int(spike_values(torch.tensor([37]), enc)) == 4
    # not exact: the count is not code / FINE
    assert int(spike_values(torch.tensor([20]), enc)) == 3 != 20 // FINE


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 31])
def test_vectorised_neuron_equals_the_scalar_one_for_every_code(steps):
    table = adaptive_table(steps)
    assert table.shape == (FINE * steps + 1, steps)
    for m in range(FINE * steps + 1):
        assert table[m].tolist() == scalar_neuron(m, steps), m
    counts = table.sum(1)
    assert int(counts[0]) == 0 and int(counts[-1]) == steps  # silent zero, full scale


@pytest.mark.parametrize("steps, bound", [(4, 0.30), (8, 0.45), (16, 0.90)])
def test_count_error_over_all_codes_is_what_the_docs_say(steps, bound):
    """docs/encodings.md: mean |count - q/FINE| over all codes 0.27 / 0.42 / 0.86 spikes
    at T = 4 / 8 / 16, mean signed error within +-0.1 spike (no systematic bias)."""
    q = torch.arange(FINE * steps + 1)
    err = adaptive_table(steps).sum(1).to(torch.float64) - q / FINE
    assert float(err.abs().mean()) < bound
    assert abs(float(err.mean())) < 0.1


def test_events_counts_and_spike_domain_agree():
    enc = Encoding("if-adaptive", steps=4)
    q = torch.arange(enc.qmin, enc.qmax + 1).view(5, 13)
    train = encode(q, enc)
    assert torch.equal(decode(train, enc), spike_values(q, enc))
    n, units = spike_counts(q, enc)
    assert n == units == int(train.abs().sum()) == len(spike_events(q, enc))
    w = torch.randint(-7, 8, (6, 13), generator=torch.Generator().manual_seed(1))
    assert torch.equal(accumulate(train, w, enc), int_matmul(spike_values(q, enc), w.t()))


def test_golden_gemm_computes_from_spike_counts_not_codes():
    enc = Encoding("if-adaptive", steps=8)
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(-64, 65, (1, 5, 12), generator=g)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 3] = True  # one integer (outlier) channel, shifted by 2
    shifts = torch.zeros(1, 12, dtype=torch.int64)
    shifts[0, 3] = 2
    w = torch.randint(-7, 8, (1, 4, 12), generator=g)
    start = torch.arange(4)
    acc, ev = gemm(codes, mask, shifts, enc, w, start, "t")
    spk = codes.masked_fill(mask.view(1, 1, -1), 0)
    ints = codes.masked_fill(~mask.view(1, 1, -1), 0) << 2
    hw = int_matmul(spike_values(spk, enc), w.transpose(1, 2)) + int_matmul(ints, w.transpose(
        1, 2)) + start
    assert torch.equal(acc, hw)
    assert not torch.equal(acc, int_matmul(spk, w.transpose(1, 2)) // FINE
                           + int_matmul(ints, w.transpose(1, 2)) + start)
    acc_sd, ev_sd = gemm(codes, mask, shifts, enc, w, start, "t", spike_domain=True)
    assert torch.equal(acc, acc_sd) and ev == ev_sd
    assert ev.spike_units == int(spike_values(spk, enc).abs().sum())
    assert ev.acc_step == 0 and ev.time_steps == 8
    # the quantized reference: codes, every other term at FINE times the scale
    ideal, _ = gemm(codes, mask, shifts, enc, w, start, "t", ideal=True)
    assert torch.equal(ideal, int_matmul(spk, w.transpose(1, 2))
                       + FINE * (int_matmul(ints, w.transpose(1, 2)) + start))
    # exact encodings: the reference is the hardware's GEMM
    tern = Encoding("ternary", steps=64)
    assert torch.equal(gemm(codes, mask, shifts, tern, w, start, "t", ideal=True)[0],
                       gemm(codes, mask, shifts, tern, w, start, "t")[0])


@pytest.fixture(scope="module")
def tiny():
    lm = load_model("tiny-llama")
    cm = convert(lm, ConvertOptions(encoding=Encoding("if-adaptive", steps=4), **PURE,
                                    calib_sentences=6))
    return lm, cm


def test_converted_model_spike_domain_and_quantized_reference(tiny):
    lm, cm = tiny
    ids = lm.tokenize("Hard reset loses the excess charge.")
    assert {n.act.encoding.kind for n in cm.nodes.values()} == {"if-adaptive"}
    h, ev = run_golden(cm, ids)
    h_sd, ev_sd = run_golden(cm, ids, spike_domain=True)
    assert torch.equal(h, h_sd) and ev == ev_sd
    hq, evq = run_golden(cm, ids, ideal=True)
    assert set(evq) == set(ev)  # the same GEMMs (its own codes, so its own events)
    assert not torch.equal(h, hq)  # the neuron is not exact ...
    cos = torch.nn.functional.cosine_similarity(h, hq, dim=-1)
    assert float(cos.min()) > 0.9  # ... but close to its quantized model
    # codes the requantizer produces for an if-adaptive consumer are on the fine grid
    act = cm.nodes["layers.0.o"].act
    hi = cm.tensors["layers.0.av.hi"].to(torch.int64)
    spike = ~act.outlier_mask(len(hi))
    assert hi[spike].unique().tolist() == [act.encoding.qmax] == [FINE * 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "if-adaptive steps must be in 1..31"),
    (dict(steps=32), r"if-adaptive steps must be in 1..31 \(codes 8\*T must fit 8 bits\)"),
    (dict(steps=8, levels=2), "levels is only for graded and ternary spikes, not if-adaptive"),
])
def test_bad_parameters_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Encoding("if-adaptive", **kwargs)


def test_bad_uses_are_refused_by_name(tiny):
    from models.arch import ModelInputError
    from models.encodings import check_codes

    enc = Encoding("if-adaptive", steps=4)
    with pytest.raises(ValueError, match=r"spike_values input: codes span \[0, 33\], outside "
                                         r"\[-32, 32\] of if-adaptive T=4"):
        spike_values(torch.tensor([0, 33]), enc)
    check_codes(torch.tensor([-32, 32]), enc)
    with pytest.raises(ModelInputError, match="option threshold_calib: must be 'none' for "
                                              "if-adaptive T=4"):
        ConvertOptions(encoding=enc, threshold_calib="dual").check()
    with pytest.raises(ValueError, match="ideal is the quantized reference"):
        run_golden(tiny[1], torch.tensor([1, 2]), ideal=True, trace=[])
