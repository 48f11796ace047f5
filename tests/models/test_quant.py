"""Quantizer, fixed-point requantizer, rotation and weight rounding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.contract import ContractError, check_acc, requantize, rshift_round
from models.encodings import Encoding
from models.quant import (
    ONE,
    ActPlan,
    dequantize_act,
    fixed_point,
    gptq_inverse,
    gptq_rows,
    quantize_act,
    quantize_weight_gptq,
    quantize_weight_rtn,
    rotate,
    rotation_signs,
    weight_scale,
)

F = torch.float64


@given(st.integers(-(2**40), 2**40), st.integers(0, 40))
def test_rshift_round_is_round_half_up(x, s):
    got = int(rshift_round(torch.tensor([x]), s)[0])
    assert got == math.floor(x / 2**s + 0.5) if s else got == x
    assert got == (x + (1 << (s - 1))) >> s if s else True


def test_requantize_matches_its_definition_exhaustively_on_small_range():
    acc = torch.arange(-3000, 3000).view(-1, 1)
    mcol, shift = torch.tensor([12345]), 20
    mrow = torch.full((acc.shape[0],), ONE + 77)
    bias, zp = torch.tensor([-999]), torch.tensor([3])
    lo, hi = torch.tensor([0]), torch.tensor([15])
    y = requantize(acc, mcol, shift, mrow, bias, zp, lo, hi).view(-1).tolist()
    for a, got in zip(acc.view(-1).tolist(), y, strict=True):
        t = (a * 12345 + (1 << 19)) >> 20
        u = (t * (ONE + 77) - 999 + (1 << 14)) >> 15
        assert got == min(max(u + 3, 0), 15)


def test_accumulator_overflow_names_the_layer():
    with pytest.raises(ContractError, match="layers.3.up: accumulator overflow"):
        check_acc(torch.tensor([2**31]), "layers.3.up")


def test_fixed_point_multiplier_precision():
    ratio = torch.tensor([0.0123, 0.5, 3e-5], dtype=F)
    mcol, shift = fixed_point(ratio, "x")
    assert int(mcol.max()) < 2**15
    assert torch.allclose(mcol.to(F) / 2.0**shift, ratio, rtol=1e-3, atol=2.0**-shift)


@pytest.mark.parametrize("enc, z", [(Encoding("ttfs", 4), 5), (Encoding("ttfs-signed", 4), 0),
                                    (Encoding("int", 8), 0), (Encoding("rate", steps=8), 2)])
@pytest.mark.parametrize("per_token", [False, True])
def test_quantize_act_error_within_half_step_and_outliers_use_shifted_int8(enc, z, per_token):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 40, generator=g, dtype=F)
    x[:, 7] *= 40  # an outlier channel
    plan = ActPlan(enc, z, 0.0, per_token, [7], [3])
    spk = x.clone()
    spk[:, 7] = 0
    from models.quant import token_steps

    plan.step = float(token_steps(spk if enc.is_spiking else x, plan).max())
    q, mrow = quantize_act(x, plan)
    assert int(mrow.min()) >= 1 and int(mrow.max()) <= 2**16 - 1
    assert (mrow == ONE).all() if not per_token else True
    xhat = dequantize_act(q, mrow, plan)
    s = plan.step * mrow.to(F) / ONE
    step_per = s.unsqueeze(-1) * (8.0 if enc.is_spiking else 1.0)
    err = (xhat - x).abs()
    if enc.is_spiking:
        assert int(q[:, 7].abs().max()) <= 127
        keep = torch.ones(40, dtype=torch.bool)
        keep[7] = False
        assert bool((err[:, keep] <= s.unsqueeze(-1) / 2 + 1e-12).all())
        assert bool((err[:, 7] <= step_per[:, 0] / 2 + 1e-9).all())
    else:
        assert bool((err <= s.unsqueeze(-1) / 2 + 1e-12).all())


def test_rotation_is_orthogonal_and_weights_absorb_it():
    g = torch.Generator().manual_seed(2)
    for n in (40, 384, 1536):
        x = torch.randn(5, n, generator=g, dtype=F)
        w = torch.randn(7, n, generator=g, dtype=F)
        sg = rotation_signs(n, 0)
        xr, wr = rotate(x, sg), rotate(w, sg)
        assert torch.allclose(xr.norm(dim=1), x.norm(dim=1))
        assert torch.allclose(xr @ wr.t(), x @ w.t(), atol=1e-9)


def test_rotation_spreads_an_outlier_channel():
    x = torch.zeros(1, 128, dtype=F)
    x[0, 5] = 100.0
    xr = rotate(x, rotation_signs(128, 0))
    assert float(xr.abs().max()) == pytest.approx(100 / math.sqrt(128))


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(64, 64, generator=g, dtype=F)
    x = torch.randn(512, 64, generator=g, dtype=F) @ mix  # correlated features
    w = torch.randn(32, 64, generator=g, dtype=F)
    s = weight_scale(w, 7)
    rtn = quantize_weight_rtn(w, s, 7)
    gq = quantize_weight_gptq(w, s, 7, x.t() @ x)
    assert int(gq.abs().max()) <= 7
    err = lambda q: float(((x @ (q * s[:, None]).t() - x @ w.t()) ** 2).mean())  # noqa: E731
    assert err(gq) < 0.8 * err(rtn)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_weight_scale_search_never_worse_than_max(seed):
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(seed), dtype=F)
    e = lambda s: ((quantize_weight_rtn(w, s, 7) * s[:, None] - w) ** 2).sum(1)  # noqa: E731
    assert bool((e(weight_scale(w, 7)) <= e(weight_scale(w, 7, search=False)) + 1e-12).all())


def test_gptq_on_stacked_rows_and_batches_equals_gptq_per_layer():
    # rows are independent given the Hessian: q, k, v stacked along N, and layers of one
    # shape along the batch axis, give the codes of quantizing each on its own
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(300, 48, generator=g, dtype=F) @ torch.randn(48, 48, generator=g,
                                                                   dtype=F) for _ in range(2)]
    ws = [torch.randn(24, 48, generator=g, dtype=F) for _ in range(2)]
    ss = [weight_scale(w, 7) for w in ws]
    alone = [quantize_weight_gptq(w, s, 7, x.t() @ x, block=16, damp=0.1, act_order=False)
             for w, s, x in zip(ws, ss, xs, strict=True)]
    us = [gptq_inverse(x.t() @ x, 0.1)[0] for x in xs]
    stacked = gptq_rows(torch.cat(ws)[None], torch.cat(ss)[None], 7, us[0][None], 16)[0]
    assert torch.equal(stacked[:24], alone[0])
    batched = gptq_rows(torch.stack(ws), torch.stack(ss), 7, torch.stack(us), 16)
    assert torch.equal(batched[0], alone[0]) and torch.equal(batched[1], alone[1])


def test_output_aware_weight_steps_never_lose_on_the_output_error():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(400, 32, generator=g, dtype=F) * torch.linspace(0.1, 3.0, 32, dtype=F)
    w = torch.randn(16, 32, generator=g, dtype=F)
    h = x.t() @ x
    out_err = lambda s: (((quantize_weight_rtn(w, s, 7) * s[:, None] - w) @ x.t()) ** 2).sum(1)  # noqa: E731
    by_out, by_w = weight_scale(w, 7, hess=h), weight_scale(w, 7)
    assert bool((out_err(by_out) <= out_err(by_w) * (1 + 1e-4)).all())
    assert bool((out_err(by_out) < out_err(by_w)).any())


def test_gptq_damping_and_act_order_are_used():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 32, generator=g, dtype=F) @ torch.randn(32, 32, generator=g, dtype=F)
    w = torch.randn(16, 32, generator=g, dtype=F)
    s = weight_scale(w, 7)
    h = x.t() @ x
    base = quantize_weight_gptq(w, s, 7, h, damp=0.01)
    assert not torch.equal(base, quantize_weight_gptq(w, s, 7, h, damp=1.0))
    assert not torch.equal(base, quantize_weight_gptq(w, s, 7, h, act_order=False))
