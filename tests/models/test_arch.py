"""Model import: every family maps onto the canonical graph and matches transformers."""

import json

import pytest
import torch

from models.arch import UnsupportedModelError, load_model, random_model, tiny_config
from models.graph import FloatOps, forward, gemm_nodes


def _hf_hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None]).last_hidden_state[0].to(torch.float64)


def _ours(lm, ids):
    return forward(lm.spec, lm.params, ids, FloatOps(lm.spec, lm.params))


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def test_minilm_loads_real_weights_and_matches_transformers(minilm):
    assert (minilm.spec.family, minilm.spec.layers, minilm.spec.hidden) == ("bert", 6, 384)
    ids = minilm.tokenize("Spiking networks trade multipliers for accumulates.")
    assert torch.allclose(_ours(minilm, ids), _hf_hidden(minilm.hf_model, ids), atol=2e-4)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_tiny_builtins_match_transformers(name):
    lm = load_model(name)
    ids = lm.tokenize("a small random model for fast tests")
    assert torch.allclose(_ours(lm, ids), _hf_hidden(lm.hf_model, ids), atol=2e-4)


def test_tiny_builtins_are_deterministic():
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


# Odd sizes: hidden 40, 5 heads (head dim 8), FFN 100, saved to a directory and loaded back.
@pytest.mark.parametrize("family, kv", [("bert", None), ("gpt2", None), ("opt", None),
                                        ("llama", None), ("llama", 1)])
def test_odd_sized_directory_of_every_family(tmp_path, family, kv):
    cfg = tiny_config(family, hidden=40, heads=5, ffn=100, layers=2, vocab=1000, kv_heads=kv)
    random_model(cfg, seed=3).save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert (lm.spec.hidden, lm.spec.heads, lm.spec.ffn) == (40, 5, 100)
    ids = lm.tokenize("odd sizes must work too")
    assert int(ids.max()) < 1000
    assert torch.allclose(_ours(lm, ids), _hf_hidden(lm.hf_model, ids), atol=2e-4)


def test_gemm_nodes_in_execution_order_with_shapes(minilm):
    nodes = gemm_nodes(minilm.spec)
    assert [n["name"] for n in nodes[:8]] == [f"layers.0.{s}" for s in
                                              ("q", "k", "v", "qk", "av", "o", "up", "down")]
    assert len(nodes) == 6 * 8
    up = nodes[6]
    assert (up["K"], up["N"]) == (384, 1536)
    assert (nodes[3]["K"], nodes[3]["heads"]) == (32, 12)


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 't5'"):
        load_model(tmp_path)


def test_unsupported_option_is_refused_by_name(tmp_path):
    cfg = tiny_config("opt", hidden=40, heads=5, ffn=100, layers=1, vocab=1000)
    cfg.do_layer_norm_before = False
    random_model(cfg).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="post-norm OPT"):
        load_model(tmp_path)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in model"):
        load_model(tmp_path / "nope")
