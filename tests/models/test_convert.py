"""Converter choices, per-layer overrides, rotations, and the command line."""

import json
from dataclasses import replace

import pytest
import torch

from models.__main__ import main
from models.arch import (
    LoadedModel,
    ModelInputError,
    canonical_params,
    random_model,
    spec_from_config,
    tiny_config,
)
from models.bundle import load_bundle
from models.convert import (
    ConvertOptions,
    _rows,
    builtin_text,
    calibrate,
    convert,
    fold_head_rotations,
    smooth_vo,
)
from models.encodings import Encoding
from models.evaluate import PURE, spike_share
from models.golden import GoldenOps, run_golden
from models.graph import FloatOps, forward
from models.options import DEFAULT_MIN_SPIKE_SHARE
from models.quant import rotate


def _in_memory(family, **kw):
    model = random_model(tiny_config(family, hidden=40, heads=5, ffn=100, layers=2,
                                     vocab=1000, **kw), seed=7)
    spec = spec_from_config(model.config)
    return LoadedModel(family, spec, canonical_params(spec, model.state_dict()), None, model)


def test_folded_head_rotations_leave_the_float_model_unchanged():
    for lm in (_in_memory("bert"), _in_memory("llama", kv_heads=1)):
        ids = torch.arange(3, 15)
        folded = fold_head_rotations(lm.spec, lm.params, seed=0)
        assert not torch.equal(folded["layers.0.o.w"], lm.params["layers.0.o.w"])
        a = forward(lm.spec, lm.params, ids, FloatOps(lm.spec, lm.params))
        b = forward(lm.spec, folded, ids, FloatOps(lm.spec, folded))
        assert torch.allclose(a, b, atol=1e-5)


def test_per_layer_overrides_pick_the_encoding_and_outliers(tiny_opt):
    opts = ConvertOptions(calib_sentences=4, layers={
        "layers.0.down": {"encoding": Encoding("int", 8)},
        "layers.1.*": {"outlier_count": 0}})
    cm = convert(tiny_opt, opts)
    assert cm.nodes["layers.0.down"].act.encoding == Encoding("int", 8)
    assert cm.nodes["layers.0.up"].act.encoding.kind == "ttfs-signed"
    assert cm.nodes["layers.0.up"].act.outliers
    assert all(not cm.nodes[f"layers.1.{n}"].act.outliers for n in ("q", "up", "down"))
    assert cm.options["layers"]["layers.0.down"]["encoding"]["kind"] == "int"


def test_default_hybrid_is_sign_magnitude_so_zero_is_silent(tiny_opt_cm):
    # the default code puts real zero at code 0, which sends no spike, in a 7-step window;
    # PV's never-negative probabilities get its unsigned form (``unsigned_nonneg``, default):
    # zero still code 0, 15 levels in a 15-step window
    for name, node in tiny_opt_cm.nodes.items():
        pv = name.endswith(".av")
        assert node.act.encoding == Encoding("ttfs" if pv else "ttfs-signed", 4), name
        assert node.act.zero_point == 0 and node.act.encoding.time_steps == (15 if pv else 7)


def test_attention_inputs_get_a_form_without_zero_point(tiny_opt):
    cm = convert(tiny_opt, ConvertOptions(encoding=Encoding("ttfs", 4), calib_sentences=4))
    qk = cm.nodes["layers.0.qk"].act
    av = cm.nodes["layers.0.av"].act
    assert qk.encoding.kind == "ttfs-signed" and qk.zero_point == 0  # Q is signed
    assert av.encoding.kind == "ttfs" and av.zero_point == 0  # softmax is not
    up = cm.nodes["layers.0.up"].act
    assert up.per_token and up.rotate and 0 < up.zero_point < 15
    assert len(up.outlier_shifts) == len(up.outliers) == round(64 / 32)


def test_cli_convert_writes_a_valid_bundle(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["convert", "--model", "tiny-llama", "--out", str(out), "--encoding",
                 "graded:5x3", "--outliers", "3", "--distill", "0", "--min-spike-share",
                 "0"]) == 0
    cm = load_bundle(out)
    assert (cm.options["distill_epochs"], cm.options["min_spike_share"]) == (0, 0)
    assert cm.nodes["layers.0.up"].act.encoding == Encoding("graded", steps=5, levels=3)
    assert len(cm.nodes["layers.0.up"].act.outliers) == 3


def test_cli_eval_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "tiny-opt", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hybrid W4A4&8" in text and "rate-coded IF T=8" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 5 and rows[0]["cosine"] == 1.0
    assert all(0.0 < r["cosine"] <= 1.0 + 1e-9 for r in rows)


def test_cli_refuses_unsupported_model_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv"}))
    assert main(["convert", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unsupported architecture 'rwkv'" in capsys.readouterr().err


# -- accuracy levers (issue 14) ----------------------------------------------------------------


@pytest.mark.parametrize("opts, message", [
    (dict(gptq_damp=0), r"option gptq_damp: must be a number in \[1e-06, 10\], not 0"),
    (dict(gptq_damp="0.1"), r"option gptq_damp: must be a number"),
    (dict(gptq_damp=True), r"option gptq_damp: must be a number"),
    (dict(act_order=1), r"option act_order: must be True or False"),
    (dict(bias_correction="yes"), r"option bias_correction: must be True or False"),
    (dict(weight_search="mse"), r"option weight_search: must be one of 'weight', 'output'"),
    (dict(gptq_target="int"), r"option gptq_target: must be one of 'float', 'quantized'"),
    (dict(outlier_rule="max"), r"option outlier_rule: must be one of 'magnitude', 'effect'"),
    (dict(outlier_shift="min"), r"option outlier_shift: must be one of 'max', 'error'"),
    (dict(unsigned_nonneg=1), r"option unsigned_nonneg: must be True or False"),
    (dict(smooth_vo=1.5), r"option smooth_vo: must be a number in \[0, 1\], not 1.5"),
    (dict(smooth_vo=-0.1), r"option smooth_vo: must be a number in \[0, 1\]"),
    (dict(layers={"layers.0.*": {"gptq_damp": -1.0}}), r"option gptq_damp: must be a number"),
])
def test_bad_lever_options_are_refused_by_name(tiny_opt, opts, message):
    with pytest.raises(ModelInputError, match=message):
        convert(tiny_opt, ConvertOptions(**opts))


def test_lever_options_are_recorded_and_change_the_model(tiny_opt):
    base = ConvertOptions(calib_sentences=4, gptq_damp=0.1, act_order=True,
                          weight_search="weight", gptq_target="float", bias_correction=False,
                          smooth_vo=0.0, outlier_rule="magnitude", unsigned_nonneg=False)
    ref = convert(tiny_opt, base)
    for field_, value in (("gptq_damp", 0.01), ("act_order", False),
                          ("weight_search", "output"), ("gptq_target", "quantized"),
                          ("bias_correction", True), ("smooth_vo", 0.5),
                          ("outlier_rule", "effect"), ("unsigned_nonneg", True)):
        # (outlier_shift: tests/models/test_calibrate.py; on this model both rules agree)
        cm = convert(tiny_opt, replace(base, **{field_: value}))
        assert cm.options[field_] == value, field_
        changed = [k for k in ref.tensors if not torch.equal(ref.tensors[k], cm.tensors[k])]
        changed += [n for n in ref.nodes if ref.nodes[n].act != cm.nodes[n].act]
        assert changed, f"{field_}={value!r} changed nothing"


def test_smoothing_v_into_o_leaves_the_float_model_unchanged(tiny_llama):
    lm = tiny_llama
    opts = ConvertOptions(calib_sentences=2)
    rec = calibrate(lm, opts)
    before = _rows(rec[("layers.0.o", "x")])
    params = smooth_vo(lm.spec, lm.params, rec, 0.5)
    assert not torch.equal(params["layers.0.o.w"], lm.params["layers.0.o.w"])
    ids = lm.tokenize("Smoothing moves range from activations into weights.")
    a = forward(lm.spec, lm.params, ids, FloatOps(lm.spec, lm.params))
    b = forward(lm.spec, params, ids, FloatOps(lm.spec, params))
    assert torch.allclose(a, b, atol=1e-4)
    # the recorded o inputs were rescaled with the weights: channel ranges are more even
    after = _rows(rec[("layers.0.o", "x")])
    spread = lambda x: float(x.abs().amax(0).max() / x.abs().amax(0).min())  # noqa: E731
    assert spread(after) < spread(before)


def test_bias_correction_removes_the_typical_output_error_on_calibration(tiny_opt):
    # run the converted layer (golden) on its float calibration inputs: the median of the
    # output error per channel shrinks once the conversion folds the calibration median
    # into the bias (the median, not the mean: a token with a massive activation must not
    # decide it)
    opts = ConvertOptions(calib_sentences=4, gptq=False, **PURE)  # no training on top
    rec = calibrate(tiny_opt, opts)

    def median_err(cm, name) -> float:
        x, y = _rows(rec[(name, "x")]), _rows(rec[(name, "y")])
        return float((GoldenOps(cm).linear(name, x) - y).median(0).values.abs().mean())

    plain = convert(tiny_opt, replace(opts, bias_correction=False))
    corrected = convert(tiny_opt, replace(opts, bias_correction=True))
    for name in ("layers.0.up", "layers.1.down"):
        assert median_err(corrected, name) < 0.5 * median_err(plain, name), name


def test_outlier_shifts_are_fitted_to_the_accumulator(tiny_opt, monkeypatch):
    # a narrower accumulator (2**22): the converter lowers the outlier shifts of the
    # attention-probability input until no input can overflow, warns, and the model runs
    wide = convert(tiny_opt, ConvertOptions(calib_sentences=6, outlier_count=24))
    top = max(wide.nodes["layers.0.av"].act.outlier_shifts)
    lim = 2**21 - 1
    for mod in ("models.contract", "models.bundle", "models.convert"):
        monkeypatch.setattr(f"{mod}.ACC_MAX", lim)
    monkeypatch.setattr("models.contract.ACC_MIN", -lim - 1)
    with pytest.warns(UserWarning, match=r"layers\.\d\.av: outlier shifts capped at \d+ .*"
                                         r"outlier_count=24, --outliers"):
        cm = convert(tiny_opt, ConvertOptions(calib_sentences=6, outlier_count=24))
    av = cm.nodes["layers.0.av"].act
    assert len(av.outliers) == 24 and max(av.outlier_shifts) < top
    assert all(cm.acc_bound(n) <= lim for n in cm.nodes.values())
    long = " ".join(builtin_text("eval_sentences")[:6])
    hidden, _ = run_golden(cm, tiny_opt.tokenize(long))
    assert bool(torch.isfinite(hidden).all())


def test_outliers_that_cannot_fit_even_unshifted_are_refused_by_layer_and_option(
        tiny_opt, monkeypatch):
    monkeypatch.setattr("models.convert.ACC_MAX", 3000)
    with pytest.raises(ModelInputError, match=r"layers\.0\.q: options encoding=ttfs-signed4 "
                                              r"and outlier_count=24 \(--outliers\).*even with "
                                              r"outlier shifts of 0"):
        convert(tiny_opt, ConvertOptions(calib_sentences=2, outlier_count=24))


def test_conversion_is_deterministic_and_reports_its_spike_share(tiny_llama):
    opts = ConvertOptions(calib_sentences=3)
    a, b = convert(tiny_llama, opts), convert(tiny_llama, opts)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    share = spike_share(a)
    lin = [n for n in a.nodes.values() if n.kind == "linear"]
    k = sum(int(n.K) for n in lin)
    spiking = [n for n in lin if n.act.encoding.is_spiking]
    assert share == pytest.approx(sum(int(n.K) - len(n.act.outliers) for n in spiking) / k)
    # the default is a mixed hybrid: never below its floor
    assert DEFAULT_MIN_SPIKE_SHARE <= share < 1.0
    assert a.options["min_spike_share"] == DEFAULT_MIN_SPIKE_SHARE
    assert {n.name for n in lin if not n.act.encoding.is_spiking} == set(
        a.options["integer_gemms"])
    w4a8 = convert(tiny_llama, replace(opts, encoding=Encoding("int", 8)))
    assert spike_share(w4a8) == 0.0


def test_cli_convert_takes_the_lever_options(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["convert", "--model", "tiny-opt", "--out", str(out), "--damp", "0.05",
                 "--no-act-order", "--weight-search", "output", "--gptq-target", "quantized",
                 "--bias-correction", "--smooth-vo", "0.3", "--outlier-rule", "effect",
                 "--calib-sentences", "3", "--quiet"]) == 0
    opts = load_bundle(out).options
    assert (opts["gptq_damp"], opts["act_order"], opts["weight_search"], opts["gptq_target"],
            opts["bias_correction"], opts["smooth_vo"], opts["outlier_rule"],
            opts["calib_sentences"]) == (0.05, False, "output", "quantized", True, 0.3,
                                         "effect", 3)
    assert main(["convert", "--model", "tiny-opt", "--out", str(tmp_path / "c"), "--damp", "0",
                 "--quiet"]) == 2
    assert "option gptq_damp: must be a number" in capsys.readouterr().err


def test_plans_of_rotated_inputs_are_taken_on_the_rotated_rows(tiny_opt):
    # the host rotates these inputs before quantizing them: outliers, steps and clip come
    # from the rotated calibration rows, not the raw ones
    opts = ConvertOptions(calib_sentences=4, gptq=False)
    cm = convert(tiny_opt, opts)
    rec = calibrate(tiny_opt, opts)
    for name in ("layers.0.q", "layers.0.up", "layers.1.down"):
        act = cm.nodes[name].act
        x = _rows(rec[(name, "x")])
        xr = rotate(x, cm.tensors[f"rot.{x.shape[1]}"])
        assert act.rotate
        top = torch.topk(xr.abs().amax(0), len(act.outliers)).indices
        assert sorted(top.tolist()) == act.outliers, name
