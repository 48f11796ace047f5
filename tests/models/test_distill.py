"""Quantization-aware distillation (models/distill.py): the straight-through rounding, the
fake-quantized model, and the converter option (deterministic, exported as an ordinary
bundle the golden model runs)."""

from dataclasses import replace

import pytest
import torch

from models.arch import ModelInputError
from models.bundle import load_bundle, save_bundle
from models.convert import ConvertOptions, builtin_text, convert
from models.distill import FakeQuantOps, _loss, _TapOps, ste_round
from models.encodings import Encoding
from models.golden import run_golden
from models.graph import forward

OPTS = ConvertOptions(calib_sentences=4, distill_epochs=1, distill_lr=0.05)


def test_ste_round_passes_the_gradient_only_where_the_code_is_not_clamped():
    v = torch.tensor([-9.2, -2.6, 0.4, 3.5, 7.4, 8.1], requires_grad=True)
    q = ste_round(v, -7, 7)
    assert q.tolist() == [-7.0, -3.0, 0.0, 4.0, 7.0, 7.0]
    q.sum().backward()
    assert v.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_distillation_is_deterministic_and_changes_the_model(tiny_opt):
    a, b = convert(tiny_opt, OPTS), convert(tiny_opt, OPTS)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    plain = convert(tiny_opt, replace(OPTS, distill_epochs=0))
    # the plans are the converter's own: distillation only trains codes, biases and norms
    # (a reference step may differ by the headroom a requantizer ratio gives back)
    assert all(replace(a.nodes[n].act, step=0.0) == replace(plain.nodes[n].act, step=0.0)
               for n in a.nodes)
    changed = {k.rsplit(".", 1)[1] for k in a.tensors
               if not torch.equal(a.tensors[k], plain.tensors[k])}
    assert {"w", "bias"} <= changed
    assert a.options["distill_epochs"] == 1 and a.options["distill_lr"] == 0.05


def test_a_distilled_bundle_runs_in_the_golden_model_after_a_round_trip(tiny_llama, tmp_path):
    cm = convert(tiny_llama, OPTS)
    ids = tiny_llama.tokenize(builtin_text("eval_sentences")[0])
    hidden, events = run_golden(cm, ids)
    again, _ = run_golden(load_bundle(save_bundle(cm, tmp_path / "b")), ids)
    assert torch.equal(hidden, again) and bool(torch.isfinite(hidden).all())
    assert all(int(cm.tensors[f"{n}.w"].abs().max()) <= 7 for n in cm.nodes
               if cm.nodes[n].kind == "linear")
    assert sum(ev.spikes for ev in events.values()) > 0


def test_distillation_lowers_the_fake_quantized_error_on_calibration_text(tiny_opt,
                                                                          monkeypatch):
    # capture the fake-quantized model before and after training through the converter's
    # call, and compare its loss against the float model on the calibration sentences
    import models.convert as mc
    from models.distill import distill

    seen = {}

    def spy(lm, nodes, codes, steps, biases, w_scales, signs, texts, *args, **kw):
        out = distill(lm, nodes, codes, steps, biases, w_scales, signs, texts, *args, **kw)

        def loss(c, b, params) -> float:
            u = {n: v.to(torch.float32) for n, v in c.items()}
            bb = {n: v.to(torch.float32) for n, v in b.items()}
            st = {n: v.to(torch.float32) for n, v in steps.items()}
            total = 0.0
            with torch.no_grad():
                for ids in texts:
                    ref = _TapOps(lm.spec, lm.params)
                    t = forward(lm.spec, lm.params, ids, ref)
                    ops = FakeQuantOps(lm.spec, params, nodes, u, st, bb, w_scales, signs)
                    s = forward(lm.spec, params, ids, ops)
                    total += float(_loss([*ops.taps, s], [*ref.taps, t]))
            return total

        seen["before"] = loss(codes, biases, lm.params)
        seen["after"] = loss(*out)
        return out

    monkeypatch.setattr(mc, "distill", spy)
    convert(tiny_opt, replace(OPTS, calib_sentences=16, distill_epochs=4, distill_lr=0.01))
    assert seen["after"] < 0.9 * seen["before"]


@pytest.mark.parametrize("opts, message", [
    (dict(distill_epochs=-1), r"option distill_epochs: must be an integer >= 0, not -1"),
    (dict(distill_epochs=1.5), r"option distill_epochs: must be an integer >= 0"),
    (dict(distill_lr=0), r"option distill_lr: must be a number in \[1e-06, 1\], not 0"),
    (dict(distill_epochs=1, encoding=Encoding("if-adaptive", steps=4)),
     r"option distill_epochs: must be 0 for if-adaptive"),
])
def test_bad_distillation_options_are_refused_by_name(tiny_opt, opts, message):
    with pytest.raises(ModelInputError, match=message):
        convert(tiny_opt, ConvertOptions(**opts))


def test_cli_takes_the_second_round_options(tmp_path, capsys):
    from models.__main__ import main

    out = tmp_path / "b"
    assert main(["convert", "--model", "tiny-opt", "--out", str(out), "--distill", "1",
                 "--distill-lr", "0.02", "--unsigned-nonneg", "--outlier-shift", "max",
                 "--calib-sentences", "4", "--quiet"]) == 0
    o = load_bundle(out).options
    assert (o["distill_epochs"], o["distill_lr"], o["unsigned_nonneg"],
            o["outlier_shift"]) == (1, 0.02, True, "max")
    assert main(["eval", "--model", "tiny-opt", "--sentences", "heldout_sentences",
                 "--quiet"]) == 0
    assert "hybrid W4A4&8" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_opt"])
def test_sequences_laid_end_to_end_give_each_sequence_alone(request, model, monkeypatch):
    # the distillation runs BATCH sequences as one (own positions, attention inside each,
    # PV's keys quantized per sequence): the float taps and the fake-quantized loss equal
    # the one-at-a-time forwards' (rotary LLaMA and absolute-position OPT; lengths differ)
    import models.convert as mc
    from models.distill import batch_loss, distill, float_taps

    lm = request.getfixturevalue(model)
    seen = {}

    def spy(lm_, nodes, codes, steps, biases, w_scales, signs, texts, *args, **kw):
        seen.update(lm=lm_, nodes=nodes, signs=signs, w_scales=w_scales, texts=texts,
                    u={n: v.to(torch.float32) for n, v in codes.items()},
                    st={n: v.to(torch.float32) for n, v in steps.items()},
                    b={n: v.to(torch.float32) for n, v in biases.items()})
        return distill(lm_, nodes, codes, steps, biases, w_scales, signs, texts, *args, **kw)

    monkeypatch.setattr(mc, "distill", spy)
    convert(lm, replace(OPTS, calib_sentences=5, distill_epochs=1))
    lm_, texts = seen["lm"], seen["texts"]
    assert len({len(t) for t in texts}) > 1
    taps = float_taps(lm_, texts)

    def fake():
        return FakeQuantOps(lm_.spec, lm_.params, seen["nodes"], seen["u"], seen["st"],
                            seen["b"], seen["w_scales"], seen["signs"])

    with torch.no_grad():
        one = []
        for ids, t in zip(texts, taps, strict=True):
            ref = _TapOps(lm_.spec, lm_.params)
            y = forward(lm_.spec, lm_.params, ids, ref)
            for a, c in zip([*ref.taps, y], t, strict=True):
                torch.testing.assert_close(a.to(torch.float32), c, rtol=1e-5, atol=1e-5)
            ops = fake()
            s = forward(lm_.spec, lm_.params, ids, ops)
            one.append(float(_loss([*ops.taps, s], t)))
        together = float(batch_loss(fake(), texts, taps))
    assert together == pytest.approx(sum(one) / len(one), rel=1e-4)
    with pytest.raises(ValueError, match="lengths"):
        forward(lm_.spec, lm_.params, torch.cat(texts), fake(), lengths=[1, 2])
