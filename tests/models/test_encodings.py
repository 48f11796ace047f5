"""Exactness of every spike encoding: exhaustive round trips and hypothesis dot products."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.contract import int_matmul
from models.encodings import (
    Encoding,
    accumulate,
    decode,
    encode,
    if_fire,
    if_neuron_stepwise,
    spike_counts,
    spike_events,
    ttfs_fire,
)

ENCODINGS = [
    Encoding("ttfs", 1),
    Encoding("ttfs", 4),
    Encoding("ttfs", 8),
    Encoding("ttfs-signed", 2),
    Encoding("ttfs-signed", 4),
    Encoding("ttfs-signed", 8),
    Encoding("rate", steps=1),
    Encoding("rate", steps=8),
    Encoding("rate", steps=15),
    Encoding("graded", steps=5, levels=3),  # L*T = 15 = 2**4 - 1
    Encoding("graded", steps=3, levels=85),  # L*T = 255 = 2**8 - 1
    Encoding("graded", steps=4, levels=2),
    Encoding("ternary", steps=1),
    Encoding("ternary", steps=8),
    Encoding("int", 4),
    Encoding("int", 8),
]


def all_codes(enc):
    return torch.arange(enc.qmin, enc.qmax + 1)


@pytest.mark.parametrize("enc", ENCODINGS, ids=lambda e: e.name())
def test_every_code_round_trips_through_its_spike_train(enc):
    q = all_codes(enc)
    train = encode(q, enc)
    assert train.shape == (enc.time_steps, q.numel())
    assert torch.equal(decode(train, enc), q)
    # Accumulating the train against a weight of 1 gives the code back (the neuron's job).
    assert torch.equal(accumulate(train.unsqueeze(2), torch.ones(1, 1, dtype=torch.int64), enc)
                       .view(-1), q)


@pytest.mark.parametrize("enc", [e for e in ENCODINGS if e.kind in ("ttfs", "ttfs-signed")],
                         ids=lambda e: e.name())
def test_ttfs_single_spike_at_t_minus_value_and_zero_silent(enc):
    q = all_codes(enc)
    train = ttfs_fire(q, enc)
    fired = train.ne(0)
    assert torch.equal(fired.sum(0), q.ne(0).to(torch.int64))  # one spike, zero silent
    t_fire = fired.to(torch.int64).argmax(0)
    nz = q != 0
    assert torch.equal(t_fire[nz], enc.time_steps - q[nz].abs())
    assert torch.equal(train.sum(0)[nz].to(torch.int64), torch.sign(q[nz]))


@pytest.mark.parametrize("enc", [e for e in ENCODINGS if e.kind in ("rate", "graded", "ternary")],
                         ids=lambda e: e.name())
def test_if_closed_form_equals_stepwise_neuron(enc):
    q = all_codes(enc)
    assert torch.equal(if_fire(q, enc), if_neuron_stepwise(q, enc))
    train = if_fire(q, enc)
    lo, hi = {"rate": (0, 1), "graded": (0, enc.levels),
              "ternary": (-enc.levels, enc.levels)}[enc.kind]
    assert int(train.min()) >= lo and int(train.max()) <= hi


@pytest.mark.parametrize("enc", ENCODINGS, ids=lambda e: e.name())
def test_spike_counts_closed_form_equal_train(enc):
    q = all_codes(enc)
    train = encode(q, enc)
    events, units = spike_counts(q, enc)
    if enc.is_spiking:
        assert events == int(train.count_nonzero())
        assert units == int(train.abs().to(torch.int64).sum())
    else:
        assert (events, units) == (0, 0)


def test_rate_uses_half_threshold_initial_potential():
    enc = Encoding("rate", steps=8)
    assert (enc.threshold, enc.v0) == (8, 4)
    # q = 1 with v(0) = theta/2 crosses theta after 4 steps: a spike at step 3, not step 7.
    assert if_fire(torch.tensor([1]), enc).view(-1).tolist() == [0, 0, 0, 1, 0, 0, 0, 0]


def test_graded_exact_for_all_n_bit_values():
    enc = Encoding("graded", steps=5, levels=3)
    assert enc.qmax == 2**4 - 1
    assert torch.equal(decode(encode(torch.arange(16), enc), enc), torch.arange(16))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="spiky"), "unknown encoding 'spiky'"),
        (dict(kind="rate", steps=0), "rate steps must be in 1..4096, not 0"),
        (dict(kind="ttfs-signed", bits=1), "ttfs-signed bits must be in 2..16, not 1"),
        (dict(kind="ttfs", levels=2), "levels is only for graded and ternary spikes, not ttfs"),
    ],
)
def test_bad_encoding_is_refused_with_exact_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Encoding(**kwargs)


def test_out_of_range_code_is_refused():
    with pytest.raises(ValueError, match=r"outside \[0, 15\] of ttfs4"):
        encode(torch.tensor([16]), Encoding("ttfs", 4))


def test_decode_refuses_two_spikes_in_ttfs():
    enc = Encoding("ttfs", 2)
    with pytest.raises(ValueError, match="more than one spike"):
        decode(torch.tensor([[1], [1], [0]], dtype=torch.int8), enc)


@st.composite
def gemm_case(draw):
    enc = draw(st.sampled_from(ENCODINGS))
    m = draw(st.integers(1, 5))
    k = draw(st.integers(1, 40))
    n = draw(st.integers(1, 7))
    wmax = draw(st.sampled_from([7, 127]))
    extreme = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if extreme:  # every input and weight at an end of its range
        q = torch.where(torch.rand(m, k, generator=g) < 0.5, enc.qmin, enc.qmax)
        w = torch.where(torch.rand(n, k, generator=g) < 0.5, -wmax, wmax)
    else:
        q = torch.randint(enc.qmin, enc.qmax + 1, (m, k), generator=g)
        w = torch.randint(-wmax, wmax + 1, (n, k), generator=g)
    return enc, q.to(torch.int64), w.to(torch.int64)


@settings(max_examples=300, deadline=None)
@given(gemm_case())
def test_spike_domain_dot_product_equals_integer_dot_product(case):
    enc, q, w = case
    spiking = accumulate(encode(q, enc), w, enc)
    assert torch.equal(spiking, int_matmul(q, w.t()))


@pytest.mark.parametrize("enc", [Encoding("ttfs", 1), Encoding("ttfs", 4), Encoding("ttfs", 8),
                                 Encoding("ttfs-signed", 2), Encoding("ttfs-signed", 4)],
                         ids=lambda e: e.name())
def test_ttfs_spike_events_in_closed_form_equal_the_spike_train(enc):
    g = torch.Generator().manual_seed(enc.bits)
    for m, k in ((1, 1), (3, 17), (9, 64)):
        q = torch.randint(enc.qmin, enc.qmax + 1, (m, k), generator=g)
        q[torch.rand(m, k, generator=g) < 0.3] = 0
        train = encode(q, enc).to(torch.int64)
        t, mm, kk = train.nonzero(as_tuple=True)
        order = torch.argsort((mm * enc.time_steps + t) * k + kk)
        want = torch.stack([mm, t, kk, train[t, mm, kk]], 1)[order]
        assert torch.equal(spike_events(q, enc), want)
