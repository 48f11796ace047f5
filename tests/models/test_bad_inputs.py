"""Bad model directories, bad bundles, bad options: one clear line naming the file and the
field (exit status 2 from the command line), never a traceback, never a silent wrong model.

Each case mutates a small synthetic Hugging Face directory (random weights, hidden 16) or a
small bundle; everything is refused before transformers allocates a model.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from models.__main__ import main
from models.arch import (
    LoadedModel,
    ModelInputError,
    _tokenizer_for,
    canonical_params,
    load_model,
    random_model,
    spec_from_config,
    tiny_config,
)
from models.bundle import BundleError, load_bundle, save_bundle
from models.checkpoint import check_model_dir
from models.convert import ConvertOptions, builtin_text, convert, plan_activation
from models.encodings import Encoding
from models.golden import run_golden
from models.quant import MAX_OUTLIER_SHIFT, ActPlan, quantize_act

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("gpt2", "bert", "opt", "llama")


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """One tiny saved model directory per family (2 layers, hidden 16, FFN 32, vocab 100)."""
    root = tmp_path_factory.mktemp("hf")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            cfg = tiny_config(family, hidden=16, heads=2, ffn=32, layers=2, vocab=100)
            random_model(cfg, seed=1).save_pretrained(root / family)
            made[family] = root / family
        return made[family]

    return get


@pytest.fixture
def no_model_allocation(monkeypatch):
    """Fail the test if transformers is asked to build the model (the checks come first)."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the checks refused it")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", boom)


def _set(**kw):
    return lambda d, p: d.update(kw)


def _config_text(text):
    return lambda d, p: (p / "config.json").write_text(text)


def _weights(fn):
    """Mutate the safetensors file with ``fn(tensors)``."""
    def go(d, p):
        t = load_file(str(p / "model.safetensors"))
        fn(t)
        save_file(t, str(p / "model.safetensors"))
    return go


def _rm_weights(d, p):
    (p / "model.safetensors").unlink()


def _garbage_weights(d, p):
    (p / "model.safetensors").write_bytes(b"\x00garbage" * 8)


# (family, id, mutation, regex the one-line message must match)
BAD_DIRS = [
    ("gpt2", "config-is-a-list", _config_text("[1, 2]"), r"config\.json: must be a JSON object"),
    ("gpt2", "config-not-json", _config_text("{n_embd: 16,"), r"config\.json: not valid JSON"),
    ("gpt2", "config-not-utf8", lambda d, p: (p / "config.json").write_bytes(b"\xff\xfe{"),
     r"config\.json: not UTF-8"),
    ("gpt2", "no-weights", _rm_weights, r"no weights file \(model\.safetensors"),
    ("gpt2", "garbage-weights", _garbage_weights, r"model\.safetensors: unreadable weights"),
    ("gpt2", "n_embd-string", _set(n_embd="16"), r"n_embd must be an integer, not '16'"),
    ("gpt2", "n_embd-float", _set(n_embd=16.0), r"n_embd must be an integer, not 16\.0"),
    ("gpt2", "n_embd-negative", _set(n_embd=-16), r"n_embd must be in 1\.\.\d+, not -16"),
    ("gpt2", "n_embd-wrong", _set(n_embd=32), r"n_embd=32 does not match the weights: wte"),
    ("gpt2", "n_head-zero", _set(n_head=0), r"n_head must be in 1\.\.\d+, not 0"),
    ("gpt2", "n_head-not-divisor", _set(n_head=3), r"n_embd=16 is not a multiple of n_head=3"),
    ("gpt2", "n_inner-wrong", _set(n_inner=64), r"n_inner=64 does not match the weights: "
                                                r"h\.0\.mlp\.c_fc\.weight"),
    ("gpt2", "n_inner-null", _set(n_inner=None), r"4\*n_embd \(n_inner is null\)=64 does not"),
    ("gpt2", "eps-nan", _set(layer_norm_epsilon=math.nan),
     r"layer_norm_epsilon must be a finite number in \(0, 1\], not nan"),
    ("gpt2", "eps-negative", _set(layer_norm_epsilon=-1e-5), r"layer_norm_epsilon must be"),
    ("gpt2", "vocab-1e10", _set(vocab_size=1e10), r"vocab_size must be an integer"),
    ("gpt2", "vocab-10**10", _set(vocab_size=10**10), r"vocab_size must be in 1\.\.\d+"),
    ("gpt2", "vocab-wrong", _set(vocab_size=200), r"vocab_size=200 does not match the weights"),
    ("gpt2", "n_positions-wrong", _set(n_positions=1024), r"n_positions=1024 does not match"),
    ("gpt2", "n_layer-negative", _set(n_layer=-2), r"n_layer must be in 1\.\.\d+, not -2"),
    ("gpt2", "n_layer-too-few", _set(n_layer=1), r"n_layer=1 but .*holds 2 layer\(s\)"),
    ("gpt2", "n_layer-too-many", _set(n_layer=3), r"n_layer=3 but .*holds 2 layer\(s\)"),
    ("gpt2", "n_layer-bool", _set(n_layer=True), r"n_layer must be an integer, not True"),
    ("gpt2", "activation-list", _set(activation_function=["gelu"]),
     r"activation_function must be a string"),
    ("gpt2", "activation-unknown", _set(activation_function="swish"),
     r"unsupported activation_function 'swish'"),
    ("gpt2", "model_type-unknown", _set(model_type="t5"), r"unsupported architecture 't5'"),
    ("gpt2", "model_type-missing", _set(model_type=None), r"unsupported architecture None"),
    ("gpt2", "extra-tensor", _weights(lambda t: t.update({"h.0.attn.rogue.weight":
                                                          torch.zeros(2)})),
     r"tensor\(s\) that .*config\.json does not explain: h\.0\.attn\.rogue\.weight"),
    ("gpt2", "missing-tensor", _weights(lambda t: t.pop("ln_f.bias")),
     r"missing tensor\(s\) that .*config\.json asks for: ln_f\.bias"),
    ("gpt2", "integer-weights", _weights(lambda t: t.update({"ln_f.bias": torch.zeros(
        16, dtype=torch.int32)})), r"tensor ln_f\.bias has dtype I32"),
    ("gpt2", "nan-weights", _weights(lambda t: t["ln_f.weight"].__setitem__(0, math.nan)),
     r"parameter final_norm\.w contains NaN or Inf"),
    ("bert", "hidden-wrong", _set(hidden_size=24), r"hidden_size=24 does not match the weights"),
    ("bert", "layers-too-many", _set(num_hidden_layers=3),
     r"num_hidden_layers=3 but .*holds 2 layer\(s\) \(encoder\.layer\.0"),
    ("bert", "type_vocab-wrong", _set(type_vocab_size=1), r"type_vocab_size=1 does not match"),
    ("bert", "eps-zero", _set(layer_norm_eps=0), r"layer_norm_eps must be a finite number"),
    ("bert", "intermediate-string", _set(intermediate_size="32"),
     r"intermediate_size must be an integer"),
    ("opt", "ffn-wrong", _set(ffn_dim=64), r"ffn_dim=64 does not match the weights: "
                                           r"decoder\.layers\.0\.fc1\.weight"),
    ("opt", "positions-wrong", _set(max_position_embeddings=100),
     r"max_position_embeddings\+2=102 does not match"),
    ("opt", "layers-string", _set(num_hidden_layers="2"), r"num_hidden_layers must be an integer"),
    ("opt", "heads-zero", _set(num_attention_heads=0), r"num_attention_heads must be in 1\.\."),
    ("llama", "kv_heads-not-divisor", _set(num_key_value_heads=3),
     r"num_attention_heads=2 is not a multiple of num_key_value_heads=3"),
    ("llama", "kv_heads-wrong", _set(num_key_value_heads=1),
     r"num_key_value_heads\*head_dim=8 does not match the weights"),
    ("llama", "head_dim-odd", _set(head_dim=5), r"head_dim must be even"),
    ("llama", "rope_theta-inf", _set(rope_parameters={"rope_theta": math.inf,
                                                      "rope_type": "default"}),
     r"rope_theta must be a finite number"),
    ("llama", "rope_scaling-string", _set(rope_scaling="linear"),
     r"rope_scaling must be an object or null"),
    ("llama", "attention_bias-without-biases", _set(attention_bias=True),
     r"missing tensor\(s\) .*q_proj\.bias"),
    ("llama", "positions-huge", _set(max_position_embeddings=10**12),
     r"max_position_embeddings must be in 1\.\.\d+"),
    ("llama", "eps-string", _set(rms_norm_eps="1e-6"), r"rms_norm_eps must be a finite number"),
    ("llama", "layers-too-few", _set(num_hidden_layers=1),
     r"num_hidden_layers=1 but .*holds 2 layer\(s\) \(layers\.0 \.\. layers\.1\)"),
]


def _bad_dir(hf_base, tmp_path, family, mutate) -> Path:
    p = tmp_path / "m"
    shutil.copytree(hf_base(family), p)
    d = json.loads((p / "config.json").read_text())
    before = (p / "config.json").read_text()
    mutate(d, p)
    if (p / "config.json").read_bytes() == before.encode():
        (p / "config.json").write_text(json.dumps(d))  # NaN is written as the JSON extension
    return p


@pytest.mark.parametrize("family, mutate, message",
                         [c[:1] + c[2:] for c in BAD_DIRS], ids=[c[1] for c in BAD_DIRS])
def test_bad_model_directory_is_refused_in_one_line(hf_base, tmp_path, family, mutate, message,
                                                    request):
    p = _bad_dir(hf_base, tmp_path, family, mutate)
    if "nan-weights" in request.node.name:  # values are only seen once loaded
        with pytest.raises(ModelInputError, match=message) as e:
            load_model(p)
    else:
        with pytest.raises(ModelInputError, match=message) as e:
            check_model_dir(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["n_layer-too-many", "vocab-10**10", "garbage-weights"])
def test_load_model_refuses_before_building_the_model(hf_base, tmp_path, case,
                                                      no_model_allocation):
    family, _, mutate, message = next(c for c in BAD_DIRS if c[1] == case)
    with pytest.raises(ModelInputError, match=message):
        load_model(_bad_dir(hf_base, tmp_path, family, mutate))


@pytest.mark.parametrize("case", ["config-is-a-list", "eps-nan", "n_layer-too-few"])
def test_cli_convert_exits_2_with_one_line_naming_file_and_field(hf_base, tmp_path, case):
    family, _, mutate, message = next(c for c in BAD_DIRS if c[1] == case)
    p = _bad_dir(hf_base, tmp_path, family, mutate)
    r = subprocess.run([sys.executable, "-m", "models", "convert", "--model", str(p), "--out",
                        str(tmp_path / "out"), "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(p / "config.json") in err[0], r.stderr
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()


def test_cli_in_process_bad_directory_and_options(hf_base, tmp_path, capsys):
    p = _bad_dir(hf_base, tmp_path, "gpt2", _set(n_head=0))
    assert main(["convert", "--model", str(p), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
    assert main(["convert", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "neither a built-in model" in capsys.readouterr().err
    for bad in (["--outliers", "-1"], ["--encoding", "ttfs:40"]):
        with pytest.raises(SystemExit) as e:
            main(["convert", "--model", "tiny-opt", "--out", str(tmp_path / "o"), *bad])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'-1' is not a whole number >= 0" in err and "ttfs bits must be in 1..16" in err


def test_good_directories_of_every_family_still_load(hf_base):
    for family in FAMILIES:
        spec, _ = check_model_dir(hf_base(family))
        assert (spec.family, spec.layers, spec.hidden, spec.ffn) == (family, 2, 16, 32)


def test_task_model_checkpoint_with_prefix_and_head_is_accepted(tmp_path):
    from transformers import GPT2LMHeadModel

    cfg = tiny_config("gpt2", hidden=16, heads=2, ffn=32, layers=1, vocab=100)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)  # transformer.h.0..., lm_head (tied)
    spec, _ = check_model_dir(tmp_path)
    assert spec.layers == 1


# -- bundles ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A 1-layer OPT (hidden 16) converted with a short calibration, saved once."""
    model = random_model(tiny_config("opt", hidden=16, heads=2, ffn=32, layers=1, vocab=100),
                         seed=2)
    spec = spec_from_config(model.config)
    lm = LoadedModel("small-opt", spec, canonical_params(spec, model.state_dict()),
                     _tokenizer_for(None), model)
    cm = convert(lm, ConvertOptions(calib_sentences=2, gptq=False))
    return lm, save_bundle(cm, tmp_path_factory.mktemp("bundle") / "b")


def _node(m, name="layers.0.q"):
    return next(n for n in m["graph"] if n["name"] == name)


def _arch(**kw):
    return lambda m: m["arch"].update(kw)


def _act(name="layers.0.q", **kw):
    return lambda m: _node(m, name)["act"].update(kw)


def _many_outliers(m):
    av = _node(m, "layers.0.av")["act"]
    av["outliers"], av["outlier_shifts"] = list(range(64)), [MAX_OUTLIER_SHIFT] * 64


# (id, manifest mutation, regex)
BAD_MANIFESTS = [
    ("manifest-is-a-list", lambda m: ("replace", [m]), r"manifest\.json: must be a JSON object"),
    ("format", lambda m: m.update(format="onnx"), r"not a spikellm-bundle"),
    ("version", lambda m: m.update(version=3), r"unknown bundle version 3"),
    ("no-graph", lambda m: m.pop("graph"), r"manifest\.json: missing graph"),
    ("graph-not-list", lambda m: m.update(graph={}), r"graph must be a JSON list"),
    ("arch-not-object", lambda m: m.update(arch=[1]), r"arch must be a JSON object"),
    ("arch-missing-field", lambda m: m["arch"].pop("hidden"), r"arch: missing field\(s\) hidden"),
    ("arch-unknown-field", _arch(colour="red"), r"arch: unknown field\(s\) colour"),
    ("hidden-1e9", _arch(hidden=10**9), r"arch\.hidden: must be in 1\.\.\d+, not 1000000000"),
    ("hidden-float", _arch(hidden=1e9), r"arch\.hidden: must be a JSON int, not 1000000000\.0"),
    ("hidden-disagrees", _arch(hidden=32), r"arch\.head_dim: times heads=2 must equal hidden=32"),
    ("hidden-and-head_dim-disagree", _arch(hidden=32, head_dim=16),
     r"graph node layers\.0\.q: K=16 disagrees with arch \(.*hidden=32"),
    ("vocab-disagrees-with-tensors", _arch(vocab=200),  # the decoder's head is checked first
     r"head: N=100, the output projection of arch \(hidden=16, vocab=200\) needs 200"),
    ("layers-1e6", _arch(layers=10**6), r"arch\.layers: must be in 1\.\.\d+"),
    ("layers-string", _arch(layers="1"), r"arch\.layers: must be a JSON int, not '1'"),
    ("layers-more-than-graph", _arch(layers=2), r"graph: 8 distinct nodes, but arch "
                                                r"\(layers=2, .*\) implies 16"),
    ("norm-batchnorm", _arch(norm="batchnorm"), r"arch\.norm: must be one of layernorm, rmsnorm"),
    ("act-unknown", _arch(act="swish"), r"arch\.act: must be one of"),
    ("norm_eps-nan", _arch(norm_eps=math.nan), r"arch\.norm_eps: must be a finite number"),
    ("family-unknown", _arch(family="t5"), r"arch\.family: must be one of"),
    ("node-not-object", lambda m: m["graph"].__setitem__(0, "q"),
     r"graph\[0\]: must be a JSON object"),
    ("node-kind", lambda m: _node(m).update(kind="conv"), r"\(layers\.0\.q\)\.kind: must be one"),
    ("node-K-disagrees", lambda m: _node(m).update(K=17),
     r"graph node layers\.0\.q: K=17 disagrees with arch"),
    ("node-shift-99", lambda m: _node(m).update(shift=99), r"\.shift: must be an integer in "
                                                           r"0\.\.47, not 99"),
    ("node-duplicated", lambda m: m["graph"].insert(1, m["graph"][0]),
     r"graph\[1\]: node layers\.0\.q appears twice"),
    ("outlier-negative", _act(outliers=[-1], outlier_shifts=[0]),
     r"act\.outliers: must be a list of channel indices \(integers >= 0\), not \[-1\]"),
    ("outlier-1e6", _act(outliers=[10**6], outlier_shifts=[0]),
     r"layers\.0\.q: act\.outliers: channel 1000000 outside 0\.\.15"),
    ("outlier-float", _act(outliers=[1e6], outlier_shifts=[0]), r"act\.outliers: must be a list"),
    ("outliers-unsorted", _act(outliers=[3, 1], outlier_shifts=[0, 0]),
     r"act\.outliers: must be strictly increasing"),
    ("outlier-shift-40", _act(outliers=[1], outlier_shifts=[40]),
     r"act\.outlier_shifts: must be integers in 0\.\.15"),
    ("outlier-shifts-length", _act(outliers=[1, 2], outlier_shifts=[0]),
     r"act\.outlier_shifts: must be a list of 2 shifts"),
    ("zero-point-1e9", _act(zero_point=10**9, encoding={"kind": "ttfs", "bits": 4, "steps": 0,
                                                   "levels": 1}),
     r"act\.zero_point: must be in 0\.\.15"),
    ("zero-point-float", _act(zero_point=1e9), r"act\.zero_point: must be an integer"),
    ("zero-point-signed", _act("layers.0.qk", zero_point=3),
     r"act\.zero_point: must be 0 for the signed encoding ttfs-signed4"),
    ("encoding-unknown", _act(encoding={"kind": "morse", "bits": 4, "steps": 0, "levels": 1}),
     r"act\.encoding: unknown encoding 'morse'"),
    ("encoding-bits-string", _act(encoding={"kind": "ttfs", "bits": "4", "steps": 0,
                                            "levels": 1}), r"act\.encoding\.bits: wrong type"),
    ("step-negative", _act(step=-1.0), r"act\.step: must be a positive finite number"),
    ("clip-2", _act(clip=2.0), r"act\.clip: must be a positive finite number at most 1"),
    ("accumulator-overflow", _many_outliers,
     r"node layers\.0\.av: the 32-bit accumulator can overflow"),
    ("tensors-table-shape", lambda m: m["tensors"]["layers.0.q.w4"].update(shape=[16, 17]),
     r"tensors table entry layers\.0\.q\.w4 is .*\[16, 17\].*holds .*\[16, 8\]"),
    ("tensors-table-missing", lambda m: m["tensors"].pop("layers.0.q.w4"),
     r"tensors table lacks layers\.0\.q\.w4"),
    ("tensors-table-extra", lambda m: m["tensors"].update(ghost={"dtype": "int8", "shape": [1]}),
     r"tensors table lists ghost, which tensors\.safetensors lacks"),
    ("host-params-missing", lambda m: m["host_params"].remove("embed.tok.w"),
     r"host_params: missing embed\.tok\.w"),
    ("host-params-not-names", lambda m: m.update(host_params=[1]),
     r"host_params must be a list of names"),
]


def _bad_bundle(small_bundle, tmp_path, mutate) -> Path:
    b = tmp_path / "b"
    shutil.copytree(small_bundle[1], b)
    m = json.loads((b / "manifest.json").read_text())
    out = mutate(m)
    replaced = isinstance(out, tuple) and out[0] == "replace"
    (b / "manifest.json").write_text(json.dumps(out[1] if replaced else m))
    return b


@pytest.mark.parametrize("mutate, message", [c[1:] for c in BAD_MANIFESTS],
                         ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused_in_one_line(small_bundle, tmp_path, mutate, message):
    b = _bad_bundle(small_bundle, tmp_path, mutate)
    with pytest.raises(BundleError, match=message) as e:
        load_bundle(b)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ModelInputError)


BAD_TENSORS = [
    ("lo-above-hi", lambda t: t["layers.0.q.lo"].__setitem__(0, 100),
     r"layers\.0\.q\.lo: above layers\.0\.q\.hi"),
    ("zp-huge", lambda t: t["layers.0.up.zp"].__setitem__(0, 10**9), r"layers\.0\.up\.zp: outside"),
    ("scale-negative", lambda t: t["layers.0.o.scale"].__setitem__(0, -1.0),
     r"layers\.0\.o\.scale: steps must be positive"),
    ("rotation-sign", lambda t: t["rot.16"].__setitem__(0, 2), r"rot\.16: rotation signs"),
]


@pytest.mark.parametrize("mutate, message", [c[1:] for c in BAD_TENSORS],
                         ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensor_values_are_refused(small_bundle, tmp_path, mutate, message):
    b = tmp_path / "b"
    shutil.copytree(small_bundle[1], b)
    t = load_file(str(b / "tensors.safetensors"))
    mutate(t)
    save_file(t, str(b / "tensors.safetensors"))
    with pytest.raises(BundleError, match=message):
        load_bundle(b)


def test_good_bundle_still_loads(small_bundle):
    assert load_bundle(small_bundle[1]).spec.hidden == 16


# -- conversion --------------------------------------------------------------------------------
@pytest.mark.parametrize("opts, message", [
    (dict(outlier_count=-1), r"option outlier_count: must be an integer >= 0"),
    (dict(outlier_fraction=2.0), r"option outlier_fraction: must be a number in \[0, 1\]"),
    (dict(calib_sentences=0), r"option calib_sentences: must be a positive integer"),
    (dict(layers={"layers.*": {"colour": 1}}), r"option layers: unknown option\(s\) colour"),
])
def test_bad_convert_options_are_refused_by_name(small_bundle, opts, message):
    with pytest.raises(ModelInputError, match=message):
        convert(small_bundle[0], ConvertOptions(**opts))


def test_convert_refuses_a_model_its_contract_would_refuse(small_bundle, monkeypatch):
    monkeypatch.setattr("models.convert.ACC_MAX", 1000)
    with pytest.raises(ModelInputError, match=r"layers\.0\.q: options encoding=ttfs-signed4 and "
                                              r"outlier_count=3 \(--outliers\).*overflow"):
        convert(small_bundle[0], ConvertOptions(calib_sentences=2, gptq=False, outlier_count=3))


def test_outliers_holding_every_calibrated_channel_convert_and_run(small_bundle):
    # more outliers than channels (and than calibration tokens, for PV): the spike channels
    # have no calibration range; the converter must still give a model that runs
    lm = small_bundle[0]
    cm = convert(lm, ConvertOptions(calib_sentences=2, gptq=False, outlier_count=10**4))
    assert max(max(n.act.outlier_shifts, default=0) for n in cm.nodes.values()) \
        <= MAX_OUTLIER_SHIFT
    long = " ".join(builtin_text("eval_sentences")[:5])
    hidden, _ = run_golden(cm, lm.tokenize(long))
    assert bool(torch.isfinite(hidden).all())


def test_outlier_shift_fits_the_row_step_the_row_really_gets():
    # an attention-sink-like channel next to channels that are almost silent in one row:
    # that row's step is clamped by the 16-bit row multiplier, and the shift must be chosen
    # for the clamped step (it was chosen for the unclamped one: shift 27 > the hardware's
    # 4-bit field, and the outlier rounded to 0 even in that row)
    x = torch.rand(8, 16, dtype=torch.float64) * 0.05
    x[:, 0] = 0.9
    x[3, 1:] = 1e-9
    plan = plan_activation(x, ConvertOptions(outlier_count=1), True, False, False)
    assert plan.outliers == [0] and plan.outlier_shifts[0] <= MAX_OUTLIER_SHIFT
    codes, _ = quantize_act(x, plan)
    assert int(codes[3, 0]) > 0
    # never negative: the unsigned form of the default code (``unsigned_nonneg``, default)
    assert isinstance(plan, ActPlan) and plan.encoding == Encoding("ttfs", 4)


def test_evaluate_shows_progress(small_bundle, capsys):
    from models.evaluate import evaluate

    rows = evaluate(small_bundle[0], {"hybrid": ConvertOptions(calib_sentences=2, gptq=False)},
                    sentences=["one small sentence", "and another one"], progress=True)
    err = capsys.readouterr().err
    assert len(rows) == 2
    assert "[1/1] hybrid: converting" in err and "[1/1] hybrid: cosine" in err
