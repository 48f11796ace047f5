"""Bundle: round trip and refusal of bad bundles with clear messages."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.arch import load_model, random_model, tiny_config
from models.bundle import BundleError, load_bundle, pack_weights, save_bundle, unpack_weights
from models.convert import ConvertOptions, convert
from models.golden import run_golden


@pytest.fixture
def saved(tmp_path, tiny_opt_cm):
    return save_bundle(tiny_opt_cm, tmp_path / "b")


def test_round_trip_gives_identical_tensors_and_identical_golden_bits(saved, tiny_opt_cm, tiny_opt):
    cm = load_bundle(saved)
    assert set(cm.tensors) == set(tiny_opt_cm.tensors)
    assert all(torch.equal(cm.tensors[k], tiny_opt_cm.tensors[k]) for k in cm.tensors)
    assert cm.spec == tiny_opt_cm.spec
    assert {k: n.to_json() for k, n in cm.nodes.items()} == \
           {k: n.to_json() for k, n in tiny_opt_cm.nodes.items()}
    ids = tiny_opt.tokenize("round trip")
    a, ea = run_golden(cm, ids)
    b, eb = run_golden(tiny_opt_cm, ids)
    assert torch.equal(a, b) and ea == eb


def test_manifest_lists_graph_shapes_and_integer_weights(saved):
    m = json.loads((saved / "manifest.json").read_text())
    assert m["format"] == "spikellm-bundle" and m["version"] == 2
    up = next(n for n in m["graph"] if n["name"] == "layers.0.up")
    assert (up["K"], up["N"]) == (64, 128)
    assert up["act"]["encoding"]["kind"] == "ttfs-signed"
    # 4-bit weights are stored two a byte
    assert m["tensors"]["layers.0.up.w4"] == {"dtype": "uint8", "shape": [128, 32]}
    assert "layers.0.up.w" not in m["tensors"]


def test_weights_pack_two_a_byte_and_unpack_exactly():
    g = torch.Generator().manual_seed(3)
    for k in (1, 2, 7, 64):
        w = torch.randint(-8, 8, (5, k), generator=g, dtype=torch.int8)
        p = pack_weights(w)
        assert p.dtype == torch.uint8 and p.shape == (5, (k + 1) // 2)
        assert torch.equal(unpack_weights(p, k), w)
    assert pack_weights(torch.tensor([[-1, 2]], dtype=torch.int8)).tolist() == [[0x2F]]


def test_a_version_1_bundle_with_int8_weights_still_loads(saved):
    want = load_bundle(saved)
    m = json.loads((saved / "manifest.json").read_text())
    t = load_file(str(saved / "tensors.safetensors"))
    for name in [k for k in t if k.endswith(".w4")]:
        w = want.tensors[name[:-1]]
        t[name[:-1]] = w.clone()
        del t[name], m["tensors"][name]
        m["tensors"][name[:-1]] = {"dtype": "int8", "shape": list(w.shape)}
    m["version"] = 1
    save_file(t, str(saved / "tensors.safetensors"))
    (saved / "manifest.json").write_text(json.dumps(m))
    got = load_bundle(saved)
    assert got.tensors.keys() == want.tensors.keys()
    assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors)


def _mutate(saved, fn):
    t = load_file(str(saved / "tensors.safetensors"))
    fn(t)
    save_file(t, str(saved / "tensors.safetensors"))


@pytest.mark.parametrize("fn, message", [
    (lambda t: t.pop("layers.1.down.w4"), "missing tensor.*layers.1.down.w"),
    (lambda t: t.update({"layers.0.q.w": torch.zeros(64, 64, dtype=torch.int8)}),
     "layers.0.q.w: stored twice"),
    (lambda t: t.update(stray=torch.zeros(1)), "unexpected tensor.*stray"),
    (lambda t: t.update({"layers.0.q.w4": torch.zeros(3, 3, dtype=torch.uint8)}),
     r"layers.0.q.w4: uint8 \[3, 3\], expected uint8 \[N, 32\]"),
    (lambda t: t.update({"layers.0.q.mcol": t["layers.0.q.mcol"].to(torch.int64)}),
     "layers.0.q.mcol: dtype torch.int64"),
    (lambda t: t["layers.0.o.scale"].__setitem__(0, float("nan")),
     "layers.0.o.scale: contains NaN"),
    (lambda t: t["layers.0.up.w4"].__setitem__((0, 0), 0x88),  # -8, a nibble's only
     r"layers.0.up.w: codes outside \+-7"),  # code outside the contract's +-7
])
def test_bad_tensors_are_refused_by_name(saved, fn, message):
    _mutate(saved, fn)
    with pytest.raises(BundleError, match=message):
        load_bundle(saved)


def test_unknown_version_is_refused(saved):
    m = json.loads((saved / "manifest.json").read_text())
    m["version"] = 99
    (saved / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="unknown bundle version 99"):
        load_bundle(saved)


def test_garbage_manifest_and_missing_files_are_refused(saved, tmp_path):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_odd_sized_model_directory_converts_and_round_trips(tmp_path):
    cfg = tiny_config("llama", hidden=40, heads=5, ffn=100, layers=2, vocab=1000, kv_heads=1)
    random_model(cfg, seed=5).save_pretrained(tmp_path / "hf")
    lm = load_model(tmp_path / "hf")
    cm = load_bundle(save_bundle(convert(lm, ConvertOptions(calib_sentences=4)), tmp_path / "b"))
    hidden, ev = run_golden(cm, lm.tokenize("odd sizes"))
    assert hidden.shape[1] == 40 and "layers.1.down" in ev
