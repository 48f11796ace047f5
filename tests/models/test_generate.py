"""Golden generation with a KV cache: every decode step equals, bit for bit, the last row of a
forward pass over the whole sequence; the cache holds the full pass's int8 K and V codes."""

import pytest
import torch

from models.arch import load_model, random_model, spec_from_config, tiny_config
from models.bundle import BundleError, load_bundle, save_bundle
from models.contract import int_matmul
from models.convert import ConvertOptions, convert
from models.generate import (
    Decoder,
    check_length,
    float_tokens,
    generate,
    kv_cache_bytes,
    pass_traces,
    teacher_forced,
)
from models.golden import GemmCall, GoldenOps, run_golden
from models.graph import FloatOps, KVCache, forward
from models.lm_head import HEAD_PARAM, greedy, head_logits

PROMPT = "a prompt of some odd length for the decoder"


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory):
    """LLaMA at odd sizes with grouped-query attention (6 heads over 3 KV heads, head_dim 6)."""
    d = tmp_path_factory.mktemp("odd-llama")
    random_model(tiny_config("llama", hidden=36, heads=6, kv_heads=3, ffn=70, layers=2,
                             vocab=500), seed=3).save_pretrained(d)
    lm = load_model(d)
    return lm, convert(lm, ConvertOptions(calib_sentences=4))


@pytest.fixture(scope="module")
def odd_gpt2(tmp_path_factory):
    """GPT-2 at odd sizes (hidden 40, 5 heads, FFN 100): learned absolute positions."""
    d = tmp_path_factory.mktemp("odd-gpt2")
    random_model(tiny_config("gpt2", hidden=40, heads=5, ffn=100, layers=1, vocab=1000),
                 seed=2).save_pretrained(d)
    lm = load_model(d)
    return lm, convert(lm, ConvertOptions(calib_sentences=4))


def _models(request, which):
    if which in ("odd-llama", "odd-gpt2"):
        return request.getfixturevalue(which.replace("-", "_"))
    return request.getfixturevalue("tiny_opt"), request.getfixturevalue("tiny_opt_cm")


@pytest.mark.parametrize("which", ["odd-llama", "tiny-opt", "odd-gpt2"])
def test_decode_steps_equal_the_full_pass(request, which):
    lm, cm = _models(request, which)
    spec = cm.spec
    ids = lm.tokenize(PROMPT)
    gen = generate(cm, ids, 4)
    assert [p.phase for p in gen.passes] == ["prefill"] + ["decode"] * 4
    assert [p.cached for p in gen.passes] == [0, *range(len(ids), len(ids) + 4)]
    full_ids = torch.cat([ids, torch.tensor(gen.tokens[:-1])])
    full, full_events = run_golden(cm, full_ids)
    # the prefill is the full pass over the prompt; each decode step is one more row of it
    assert torch.equal(gen.prefill.hidden, run_golden(cm, ids)[0])
    for i, p in enumerate(gen.decode):
        row = len(ids) + i
        assert p.ids.tolist() == [full_ids[row].item()]
        assert torch.equal(p.hidden, full[row:row + 1]), f"decode step {i}"
    # greedy: each token is the argmax of the output projection (a GEMM) of the full pass's
    # row, and only the last row of each pass runs it (M = 1)
    ops = GoldenOps(cm)
    assert gen.tokens[1:] == [greedy(ops.head(full[r:r + 1])[0])
                              for r in range(len(ids), len(full_ids))]
    assert all(p.events["lm_head"].acts_in == spec.hidden for p in gen.passes)
    assert all(p.events["lm_head"].outs == spec.vocab for p in gen.passes)
    # decode events are one row's: every GEMM has M = 1 (acts_in = K per head)
    ev = gen.decode[-1].events
    assert ev["layers.0.q"].acts_in == spec.hidden
    assert ev["layers.0.qk"].outs == spec.heads * len(full_ids)  # one row over every key
    assert ev["layers.0.av"].acts_in == spec.heads * len(full_ids)
    assert full_events["layers.0.qk"].outs == spec.heads * len(full_ids) ** 2


def test_decode_gemms_run_over_the_full_pass_codes(odd_llama):
    lm, cm = odd_llama
    ids = lm.tokenize(PROMPT)
    full: list[GemmCall] = []
    run_golden(cm, ids, trace=full)
    steps: list[GemmCall] = []
    passes = teacher_forced(cm, ids, 3, trace=steps)  # the text's own last 3 tokens
    assert [p.cached for p in passes] == [0, len(ids) - 3, len(ids) - 2, len(ids) - 1]
    # the last decode step: every GEMM is the full pass's last row; QK^T and PV run over
    # the cache, which holds exactly the full pass's K and V codes (GQA: 2 heads per KV head)
    assert steps[-1].name == "lm_head" and steps[-1].codes.shape[0] == 1  # each pass's head
    last = steps[-len(full) - 1:-1]
    for got, want in zip(last, full, strict=True):
        assert (got.name, got.head) == (want.name, want.head)
        assert got.codes.shape[0] == 1 and torch.equal(got.codes[0], want.codes[-1]), got.name
        assert torch.equal(got.y[0], want.y[-1]), got.name
        if got.name.endswith((".qk", ".av")):
            assert torch.equal(got.w, want.w), got.name
    spec = cm.spec
    assert spec.heads // spec.kv_heads == 2
    assert kv_cache_bytes(cm, 10) == 2 * spec.layers * spec.kv_heads * spec.head_dim * 10


def test_cache_codes_are_int8_tensors(odd_llama):
    lm, cm = odd_llama
    dec = Decoder(cm)
    dec.run(lm.tokenize(PROMPT))
    k, v = dec.cache.layers[0]
    spec = cm.spec
    assert k.codes.dtype == v.codes.dtype == torch.int8
    assert k.codes.shape == v.codes.shape == (dec.cache.length, spec.kv_heads * spec.head_dim)


def test_float_cache_tracks_the_float_full_pass(tiny_llama):
    spec, params = tiny_llama.spec, tiny_llama.params
    ids = tiny_llama.tokenize(PROMPT)
    full = forward(spec, params, ids, FloatOps(spec, params))
    cache = KVCache(spec.layers)
    forward(spec, params, ids[:-2], FloatOps(spec, params), cache)
    rows = [forward(spec, params, ids[i:i + 1], FloatOps(spec, params), cache)
            for i in range(len(ids) - 2, len(ids))]
    assert cache.length == len(ids)
    assert torch.allclose(torch.cat(rows), full[-2:], rtol=0, atol=1e-9)


def test_bad_generations_are_refused_by_name(tiny_opt_cm, tiny_opt):
    ids = tiny_opt.tokenize(PROMPT)
    with pytest.raises(ValueError, match="decode steps must be 0 or more, not -1"):
        generate(tiny_opt_cm, ids, -1)
    with pytest.raises(ValueError, match="exceed the model's 512 positions"):
        generate(tiny_opt_cm, ids, 600)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(tiny_opt_cm, ids[:0], 2)
    with pytest.raises(ValueError, match=r"decode steps must be in 1\.\."):
        teacher_forced(tiny_opt_cm, ids, len(ids))


def test_an_encoder_cannot_use_a_cache():
    spec = spec_from_config(tiny_config("bert", hidden=32, heads=2, ffn=64, layers=1,
                                        vocab=200), "bert")
    with pytest.raises(ValueError, match="a KV cache needs a causal"):
        forward(spec, {}, torch.tensor([1, 2]), None, KVCache(spec.layers))


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory):
    """A causal-LM LLaMA checkpoint with its own output projection (``lm_head.weight``,
    ``tie_word_embeddings`` false), odd sizes, GQA."""
    from transformers import AutoModelForCausalLM

    d = tmp_path_factory.mktemp("untied-llama")
    torch.manual_seed(5)
    cfg = tiny_config("llama", hidden=36, heads=6, kv_heads=3, ffn=70, layers=2, vocab=300)
    cfg.tie_word_embeddings = False
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(d)
    lm = load_model(d)
    return lm, convert(lm, ConvertOptions(calib_sentences=4)), hf


def test_an_untied_head_is_imported_and_converted(untied_llama):
    lm, cm, hf = untied_llama
    w = hf.lm_head.weight.detach()
    assert torch.equal(lm.params[HEAD_PARAM], w)
    assert not torch.equal(w, lm.params["embed.tok.w"])
    # the float model's logits are the checkpoint's causal LM's
    ids = lm.tokenize(PROMPT)
    spec = lm.spec
    ops = FloatOps(spec, lm.params)
    logits = ops.head(forward(spec, lm.params, ids, ops))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0].to(torch.float64)
    assert torch.allclose(logits, ref, atol=1e-4, rtol=1e-4)
    assert float_tokens(spec, lm.params, ids, 3)[0] == int(ref[-1].argmax())
    # converted: W4 codes per output channel of the head's own weights, not the embeddings'
    h = cm.head
    assert (h.name, h.kind, h.K, h.N, h.direct, h.shift) == ("lm_head", "linear", 36, 300,
                                                               False, 0)
    assert h.act.encoding == ConvertOptions().encoding and h.act.outliers and h.act.rotate
    assert cm.tensors["lm_head.w"].shape == (300, 36)
    assert int(cm.tensors["lm_head.w"].abs().max()) <= 7
    # the golden head's trace: one raw GEMM of the last row
    calls: list[GemmCall] = []
    gen = generate(cm, ids, 1, trace=calls)
    heads = [c for c in calls if c.name == "lm_head"]
    assert len(heads) == 2 and all(c.raw and c.codes.shape == (1, 36) for c in heads)
    assert torch.equal(gen.passes[-1].logits, GoldenOps(cm).head(gen.passes[-1].hidden)[0])
    # independently: the traced head is the contract's integer GEMM, and the pass's logits
    # are its accumulators dequantized
    c = heads[-1]
    scale = torch.where(c.int_mask, torch.pow(2, c.shifts), torch.ones_like(c.shifts))
    acc = int_matmul(c.codes * scale, c.w.t()) + c.start
    assert torch.equal(c.y, acc)
    assert torch.equal(gen.passes[-1].logits, head_logits(cm, acc, c.mrow)[0])


def test_converted_tokens_against_the_float_model(untied_llama):
    """The converted model's greedy tokens may differ from the float model's (quantization);
    both are deterministic, and the logits' ranking mostly agrees at the first step."""
    lm, cm, _ = untied_llama
    ids = lm.tokenize(PROMPT)
    ft = float_tokens(lm.spec, lm.params, ids, 4)
    gt = generate(cm, ids, 4).tokens
    assert len(ft) == len(gt) == 5 and ft == float_tokens(lm.spec, lm.params, ids, 4)
    # the float top-1 is among the converted model's top 10 after the prompt
    logits = generate(cm, ids, 0).passes[0].logits
    assert ft[0] in logits.topk(10).indices.tolist()


def test_bundles_keep_the_head_and_old_ones_are_refused_for_generation(untied_llama,
                                                                      tmp_path):
    import json

    lm, cm, _ = untied_llama
    save_bundle(cm, tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    assert back.head == cm.head and torch.equal(back.tensors["lm_head.w"],
                                                cm.tensors["lm_head.w"])
    ids = lm.tokenize(PROMPT)
    assert generate(back, ids, 2).tokens == generate(cm, ids, 2).tokens
    # a bundle from before the head: loads (plain runs work), generation is refused by name
    mf = tmp_path / "b" / "manifest.json"
    m = json.loads(mf.read_text())
    head = m.pop("head")
    mf.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="unexpected tensor"):  # its tensors are extra
        load_bundle(tmp_path / "b")
    from safetensors.torch import save_file
    old = {k: v for k, v in cm.tensors.items() if not k.startswith("lm_head.")}
    save_file({k: v.contiguous().clone() for k, v in old.items()},
              str(tmp_path / "b" / "tensors.safetensors"))
    # a bundle from before the head: version 1, int8 weights
    m["tensors"] = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                    for k, v in old.items()}
    m["version"] = 1
    mf.write_text(json.dumps(m))
    legacy = load_bundle(tmp_path / "b")
    assert legacy.head is None
    # the same body as the bundle it came from (only the head is gone)
    assert torch.equal(run_golden(legacy, ids)[0], run_golden(cm, ids)[0])
    with pytest.raises(ValueError, match=r"no output projection \(lm_head GEMM\)"):
        check_length(legacy, len(ids), 2)
    # a head of the wrong shape is refused naming the field
    m["head"] = head | {"N": 299}
    mf.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"head: N=299, the output projection"):
        load_bundle(tmp_path / "b")


def test_pass_traces_follow_the_generation(odd_llama):
    lm, cm = odd_llama
    ids = lm.tokenize(PROMPT)
    gen = generate(cm, ids, 2)
    traces = pass_traces(cm, ids, gen.tokens[:-1])
    assert len(traces) == 3
    assert [c.name for c in traces[1]][-1] == "lm_head"
    assert all(c.codes.shape[0] == 1 for t in traces[1:] for c in t)
