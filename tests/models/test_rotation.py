"""Learned per-head V -> o rotations (models/rotation.py, ``learn_rotation``): orthogonal,
never worse on the calibration rows, the float model unchanged, deterministic, and exported
as an ordinary bundle the golden model runs."""

from dataclasses import replace

import pytest
import torch

from models.arch import ModelInputError
from models.bundle import load_bundle, save_bundle
from models.contract import F
from models.convert import ConvertOptions, builtin_text, calibrate, convert, fold_head_rotations
from models.golden import run_golden
from models.graph import FloatOps, forward
from models.rotation import _OInput, fold_learned_rotations, learn_rotation

OPTS = ConvertOptions(calib_sentences=4, learn_rotation=20)


def test_learned_rotation_is_orthogonal_and_not_worse():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=g, dtype=F)
    x[:, 2] *= 6  # a strong channel for the rotation to deal with
    w = torch.randn(12, 16, generator=g, dtype=F)
    rot, before, after = learn_rotation(x, w, kv_heads=2, group=2, qmax=7, n_out=1, steps=30)
    assert rot.shape == (2, 4, 4)
    eye = torch.eye(4, dtype=F).expand(2, 4, 4)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-5)
    assert after < before  # the identity is where it starts; the best iterate is kept
    assert float(_OInput(x, w, 7, 1, 2).loss(rot.to(torch.float32))) == pytest.approx(after)
    again = learn_rotation(x, w, kv_heads=2, group=2, qmax=7, n_out=1, steps=30)
    assert torch.equal(rot, again[0])


def test_folded_rotations_leave_the_float_model_unchanged(tiny_opt):
    lm = replace(tiny_opt, params=fold_head_rotations(tiny_opt.spec, tiny_opt.params, 0))
    rec = calibrate(lm, OPTS)
    x_o = [t.clone() for t in rec[("layers.0.o", "x")]]
    params, errors = fold_learned_rotations(lm.spec, lm.params, rec, OPTS)
    assert set(errors) == {f"layers.{i}.o" for i in range(lm.spec.layers)}
    assert all(after <= before for before, after in errors.values())
    assert not torch.equal(params["layers.0.o.w"], lm.params["layers.0.o.w"])
    ids = lm.tokenize(builtin_text("eval_sentences")[0])
    a = forward(lm.spec, lm.params, ids, FloatOps(lm.spec, lm.params))
    b = forward(lm.spec, params, ids, FloatOps(lm.spec, params))
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # the recorded o inputs are rotated like the model's: the same o outputs
    w0, w1 = lm.params["layers.0.o.w"].to(F), params["layers.0.o.w"].to(F)
    for old, new in zip(x_o, rec[("layers.0.o", "x")], strict=True):
        assert torch.allclose(old.to(F) @ w0.t(), new.to(F) @ w1.t(), atol=1e-4)


def test_a_learned_rotation_bundle_is_deterministic_and_runs_in_the_golden_model(
        tiny_opt, tmp_path):
    a, b = convert(tiny_opt, OPTS), convert(tiny_opt, OPTS)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    plain = convert(tiny_opt, replace(OPTS, learn_rotation=0))
    assert not torch.equal(a.tensors["layers.0.o.w"], plain.tensors["layers.0.o.w"])
    assert a.options["learn_rotation"] == 20
    ids = tiny_opt.tokenize(builtin_text("eval_sentences")[1])
    hidden, events = run_golden(a, ids)
    again, _ = run_golden(load_bundle(save_bundle(a, tmp_path / "b")), ids)
    assert torch.equal(hidden, again) and bool(torch.isfinite(hidden).all())
    ref = forward(tiny_opt.spec, tiny_opt.params, ids, FloatOps(tiny_opt.spec, tiny_opt.params))
    cos = torch.nn.functional.cosine_similarity(hidden.mean(0), ref.mean(0), dim=0)
    assert float(cos) > 0.95
    assert sum(ev.spikes for ev in events.values()) > 0


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_learn_rotation_is_refused_by_name(tiny_opt, value):
    with pytest.raises(ModelInputError, match=r"option learn_rotation: must be an integer >= 0"):
        convert(tiny_opt, ConvertOptions(learn_rotation=value))
