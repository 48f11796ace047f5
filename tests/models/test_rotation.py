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
from models.rotation import _OInput, fold_learned_rotations, learn_host_rotation, learn_rotation

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


# -- learned host rotations (learn_host_rotation) -------------------------------------------
HOST = ConvertOptions(calib_sentences=4, learn_host_rotation=10)


def test_a_learned_host_rotation_lowers_the_error_and_is_orthogonal():
    # every row carries the same large offset along one direction (as a norm's bias gives):
    # spread over every channel it costs every row's step; a learned rotation does better
    g = torch.Generator().manual_seed(1)
    k = 32
    beta = torch.randn(k, generator=g, dtype=F)
    x = torch.randn(400, k, generator=g, dtype=F) + 3 * beta / beta.norm() * k ** 0.5
    w = torch.randn(20, k, generator=g, dtype=F)
    q, before, after = learn_host_rotation(x, w, qmax=7, n_out=1, per_token=True, steps=40)
    assert q.dtype == F and q.shape == (k, k)
    assert torch.allclose(q @ q.t(), torch.eye(k, dtype=F), atol=1e-5)
    assert after < 0.97 * before  # the identity is where it starts; the best is kept
    again = learn_host_rotation(x, w, qmax=7, n_out=1, per_token=True, steps=40)
    assert torch.equal(q, again[0])
    assert learn_host_rotation(x, w, 7, 1, True, 0)[2] == pytest.approx(before)  # 0: identity


def test_host_rotations_are_shared_by_the_layers_of_one_input_and_round_trip(tiny_opt,
                                                                            tmp_path):
    cm = convert(tiny_opt, HOST)
    learned = {n for n, node in cm.nodes.items() if node.act.learned_rotation}
    # every host-rotated input of tiny OPT is narrow enough; o's input is not host-rotated
    assert learned == {n for n, node in cm.nodes.items() if node.act.rotate}
    assert "layers.0.o" not in learned and "layers.0.q" in learned
    t = cm.tensors
    assert torch.equal(t["layers.0.q.rotq"], t["layers.0.k.rotq"])
    assert torch.equal(t["layers.0.q.rotq"], t["layers.0.v.rotq"])
    assert not torch.equal(t["layers.0.q.rotq"], t["layers.0.up.rotq"])
    assert cm.options["learn_host_rotation"] == 10
    ids = tiny_opt.tokenize(builtin_text("eval_sentences")[2])
    hidden, _ = run_golden(cm, ids)
    back = load_bundle(save_bundle(cm, tmp_path / "b"))
    assert back.nodes["layers.0.up"].act.learned_rotation
    assert torch.equal(hidden, run_golden(back, ids)[0])
    ref = forward(tiny_opt.spec, tiny_opt.params, ids, FloatOps(tiny_opt.spec, tiny_opt.params))
    assert float(torch.nn.functional.cosine_similarity(hidden.mean(0), ref.mean(0), dim=0)) \
        > 0.95
    # the golden model applies the rotation: without it the model is something else
    plain = convert(tiny_opt, replace(HOST, learn_host_rotation=0))
    assert not any(k.endswith(".rotq") for k in plain.tensors)
    assert not torch.equal(hidden, run_golden(plain, ids)[0])


def test_a_bundle_with_a_rotation_that_is_not_orthogonal_is_refused(tiny_opt, tmp_path):
    from models.bundle import BundleError
    from models.quant import ActPlan

    cm = convert(tiny_opt, HOST)
    cm.tensors["layers.1.up.rotq"] = cm.tensors["layers.1.up.rotq"] * 1.01
    with pytest.raises(BundleError, match=r"layers\.1\.up\.rotq: a learned rotation must be "
                                          r"orthogonal"):
        cm.validate()
    d = cm.nodes["layers.0.q"].act.to_json()
    assert d["learned_rotation"] is True
    with pytest.raises(ModelInputError, match="learned_rotation"):
        ActPlan.from_json(d | {"rotate": False})
    assert "learned_rotation" not in convert(tiny_opt, replace(HOST, learn_host_rotation=0)
                                             ).nodes["layers.0.q"].act.to_json()


@pytest.mark.slow
def test_learned_rotations_run_bit_exactly_on_the_simulated_device(tiny_llama, tmp_path):
    """The pattern of tests/host/test_driver.py: the host's extra rotation only changes the
    codes it sends, the folded V -> o rotation only the weights, so the accelerator
    (Verilator) stays bit-exact with counters equal."""
    from accel.config import AccelConfig
    from host.driver import Device
    from host.run import run_model
    from host.transport import SerialTransport
    from sim.device import SimDevice

    from ..helpers import FAST, simulator_binary

    cfg = AccelConfig(lanes=16, mac_units=4, weight_depth=64, max_rows=32,
                      spike_event_depth=4096, mac_event_depth=256)  # tests/host's CFG
    ids = tiny_llama.tokenize("Learned rotations, on simulated hardware.")
    cm = convert(tiny_llama, ConvertOptions(calib_sentences=6, learn_host_rotation=10,
                                            learn_rotation=10))
    assert any(n.act.learned_rotation for n in cm.nodes.values())
    with SimDevice(simulator_binary(cfg, tmp_path)) as sim:
        t = SerialTransport(sim.url)
        res = run_model(cm, ids, Device(t, cfg, **FAST))
        t.close()
    assert res.bit_exact
    assert all(r.exact and r.counters_match for r in res.records)


def test_a_layer_that_learns_no_host_rotation_does_not_see_its_neighbours(tiny_opt):
    # v kept all-integer reads q's input: q and k learn a rotation, v must be converted from
    # the input as the host gives it to v (no learned rotation), exactly as without learning
    from models.encodings import Encoding

    over = {"layers.0.v": {"encoding": Encoding("int", 8)}}
    cm = convert(tiny_opt, replace(HOST, layers=over))
    plain = convert(tiny_opt, replace(HOST, learn_host_rotation=0, layers=over))
    assert cm.nodes["layers.0.q"].act.learned_rotation
    assert not cm.nodes["layers.0.v"].act.learned_rotation
    assert "layers.0.v.rotq" not in cm.tensors
    assert cm.nodes["layers.0.v"].act == plain.nodes["layers.0.v"].act
    assert torch.equal(cm.tensors["layers.0.v.w"], plain.tensors["layers.0.v.w"])
