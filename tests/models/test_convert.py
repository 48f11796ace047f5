"""Converter choices, per-layer overrides, rotations, and the command line."""

import json

import torch

from models.__main__ import main
from models.arch import LoadedModel, canonical_params, random_model, spec_from_config, tiny_config
from models.bundle import load_bundle
from models.convert import ConvertOptions, convert, fold_head_rotations
from models.encodings import Encoding
from models.graph import FloatOps, forward


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
    # the default code puts real zero at code 0, which sends no spike, in a 7-step window
    for node in tiny_opt_cm.nodes.values():
        assert node.act.encoding == Encoding("ttfs-signed", 4), node.name
        assert node.act.zero_point == 0 and node.act.encoding.time_steps == 7


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
                 "graded:5x3", "--outliers", "3"]) == 0
    cm = load_bundle(out)
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
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    assert main(["convert", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unsupported architecture 'mamba'" in capsys.readouterr().err
