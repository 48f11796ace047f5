"""Generation on the simulated device: a prefill and greedy decode steps with a KV cache,
every GEMM on the device (QK^T and PV over the cached K and V codes), bit-exact against the
golden generation, tokens identical; and the report's prefill/decode figures."""

import pytest
import torch

from accel.counters import TRAFFIC
from host.driver import Device
from host.report import generation, generation_lines
from host.run import run_generation
from host.transport import SerialTransport
from models.arch import load_model, tiny_config
from models.convert import ConvertOptions, convert
from models.energy import load_table
from models.generate import generate, pass_traces

from ..helpers import reuse_conversion
from .conftest import CFG, FAST


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory):
    """LLaMA at odd sizes (hidden 36, FFN 70: no multiple of the 16 lanes) with grouped-query
    attention (6 heads over 3 KV heads) and its own output projection (untied, vocab 500)."""
    from transformers import AutoModelForCausalLM

    d = tmp_path_factory.mktemp("odd-llama")
    cfg = tiny_config("llama", hidden=36, heads=6, kv_heads=3, ffn=70, layers=2, vocab=500)
    cfg.tie_word_embeddings = False
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(d)
    lm = load_model(d)
    assert "lm_head.w" in lm.params
    return lm, convert(lm, ConvertOptions(calib_sentences=4))


@pytest.fixture(scope="module")
def odd_opt(small_model):
    """OPT at odd sizes (hidden 40, 5 heads, FFN 90; tied head over a vocabulary of 333)."""
    return small_model("opt", 4, hidden=40, heads=5, ffn=90, layers=2, vocab=333)


@pytest.fixture(scope="module")
def odd_gpt2(small_model):
    """GPT-2 at odd sizes (hidden 40, 5 heads, FFN 100; tied head over a vocabulary of 271)."""
    return small_model("gpt2", 2, hidden=40, heads=5, ffn=100, layers=1, vocab=271)


def _generate_on(sim, cm, prompt, steps):
    t = SerialTransport(sim.url)
    try:
        return run_generation(cm, prompt, steps, Device(t, CFG, **FAST))
    finally:
        t.close()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["odd-llama", "odd-opt", "odd-gpt2"])
def test_generation_is_bit_exact_on_the_device(request, sim, which):
    lm, cm = request.getfixturevalue(which.replace("-", "_"))
    prompt = lm.tokenize("seven or so tokens of prompt")[:-1]
    steps = 3
    res = _generate_on(sim, cm, prompt, steps)
    assert res.bit_exact
    assert res.tokens == res.golden.tokens == generate(cm, prompt, steps).tokens
    assert [p.phase for p in res.passes] == ["prefill"] + ["decode"] * steps
    spec = cm.spec
    per_pass = len(res.passes[0].records)
    for p in res.passes:
        assert len(p.records) == per_pass and torch.equal(p.hidden, p.golden_hidden)
        # the output projection ran on the device, on the pass's last row only, raw
        head = p.records[-1]
        assert (head.name, head.m, head.k, head.n) == ("lm_head", 1, spec.hidden, spec.vocab)
        assert torch.equal(p.logits, p.golden_logits) and p.token == int(p.logits.argmax())
        for r in p.records:
            assert r.exact and r.counters_match, r.name
            assert r.counters["busy"] == r.predicted_cycles, r.name  # the cycle model
            assert {k: r.counters[k] for k in TRAFFIC} == r.predicted_traffic, r.name
            assert r.m == (1 if r.name == "lm_head" else p.rows)
        # QK^T and PV run over every cached token and the new ones
        keys = p.cached + p.rows
        last = f"layers.{spec.layers - 1}."
        qk = [r for r in p.records if r.name == last + "qk"]
        av = [r for r in p.records if r.name == last + "av"]
        # each node's heads ran as one request stream, its counters read once
        assert [r.heads for r in qk] == [r.heads for r in av] == [tuple(range(spec.heads))]
        assert {(r.k, r.n) for r in qk} == {(spec.head_dim, keys)}
        assert {(r.k, r.n) for r in av} == {(keys, spec.head_dim)}

    g = generation(CFG, res, 7, load_table(None))
    pre, dec = g["prefill"], g["decode"]
    assert (g["prompt_tokens"], g["decode_steps"], pre["tokens"], dec["tokens"]) == (
        len(prompt), steps, len(prompt), steps)
    assert g["bit_exact"] and g["tokens_match"] and pre["bit_exact"] and dec["bit_exact"]
    busy = [sum(r.counters["busy"] for r in p.records) for p in res.passes]
    assert pre["measured_cycles"] == busy[0] == pre["predicted_cycles"]
    assert dec["measured_cycles"] == sum(busy[1:])
    assert [d["measured_cycles"] for d in g["decode_steps_detail"]] == busy[1:]
    assert [d["cached"] for d in g["decode_steps_detail"]] == list(
        range(len(prompt), len(prompt) + steps))
    assert dec["per_token"]["cycles"] == pytest.approx(sum(busy[1:]) / steps)
    assert g["decode_vs_prefill"]["cycles"] == pytest.approx(
        dec["per_token"]["cycles"] / pre["per_token"]["cycles"])
    for ph in (pre, dec):
        t = ph["per_token"]
        assert 0 < t["compute_energy_pj"] < t["energy_pj"]  # memory traffic costs energy
        assert t["link_bytes"] > 0
        assert sum(r["measured_cycles"] for r in ph["layers"]) == ph["measured_cycles"]
        assert sum(r["link_bytes"] for r in ph["layers"]) == ph["link_bytes"]
    # one row per step: each decode token moves more weights over the link than a prefill
    # token, whose weight loads are shared by the prompt's rows
    assert g["decode_vs_prefill"]["link_bytes"] > 1
    # the counted events are the golden events of the decode steps under the device tiling
    recs = [r for p in res.passes[1:] for r in p.records]
    for key in ("accumulates", "macs", "spikes"):
        assert dec["events"][key] == sum(getattr(r.expected, key) for r in recs), key
        assert dec["per_token"]["events"][key] == pytest.approx(dec["events"][key] / steps)
    lines = generation_lines(g)
    assert lines[-1].startswith("decode / prefill") and len(lines) == 4


@pytest.mark.slow
def test_host_run_generate_writes_the_report(sim, odd_llama, tmp_path, monkeypatch, capsys):
    """``host run --generate`` on a bundle of the session simulator's configuration (the
    odd-size untied LLaMA: a vocabulary of 500 keeps the output projection small)."""
    import contextlib
    import json

    import gen.build as gen_build
    import host.__main__ as host_main

    lm, cm = odd_llama
    reuse_conversion(monkeypatch, lm, cm)
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in CFG.to_json().items()}
    out = tmp_path / "b"
    rep = gen_build.build(gen_build.BuildOptions(model="tiny-llama", out=out, tokens=16,
                                                 fixed=fixed, progress=False))
    assert rep["config_hash"] == CFG.hash_text
    monkeypatch.setattr(host_main, "simulator", lambda bundle: contextlib.nullcontext(sim))
    args = ["run", "--bundle", str(out), "--sim", "--quiet", "--text", "A prompt to continue"]
    assert host_main.main([*args, "--generate", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("BIT-EXACT: prefill of ") and "decode / prefill" in printed
    rep = json.loads((out / "run" / "report.json").read_text())
    g = rep["generation"]
    assert rep["bit_exact"] and g["bit_exact"] and g["tokens"] == g["golden_tokens"]
    assert g["decode_steps"] == 2 and len(g["tokens"]) == 3
    assert g["prompt_tokens"] == rep["tokens"]  # the top-level run is the prefill
    assert rep["totals"]["measured_cycles"] == g["prefill"]["measured_cycles"]
    spec = cm.spec
    assert g["kv_cache_bytes"] == 2 * spec.layers * spec.kv_heads * spec.head_dim * (
        g["prompt_tokens"] + 2)
    assert set(g["decode_vs_prefill"]) >= {"cycles", "compute_energy_pj", "energy_pj",
                                           "link_bytes"}
    assert [r["name"] for r in g["decode"]["layers"]] == [r["name"] for r in rep["layers"]]
    assert rep["layers"][-1]["name"] == "lm_head" and rep["layers"][-1]["m"] == 1
    # the float model's tokens beside the device's, and how often they agree
    assert len(g["float_tokens"]) == 3 and 0 <= g["float_agreement"] <= 1
    assert g["float_agreement"] == sum(
        a == b for a, b in zip(g["float_tokens"], g["tokens"], strict=True)) / 3
    # the decode steps against the same baselines as the prefill (same passes and tokens)
    dec = g["decode"]
    assert [b["name"] for b in dec["baselines"]] == [b["name"] for b in rep["baselines"]]
    assert len(dec["reductions"]) == len(dec["baselines"])
    assert dec["hybrid"]["compute_energy_pj"] == pytest.approx(dec["compute_energy_pj"])
    prompt = host_main.prompt_ids(lm, lm.tokenize("A prompt to continue"))
    calls = [c for t in pass_traces(cm, prompt, g["tokens"][:-1])[1:] for c in t]
    assert dec["baselines"][0]["macs"] == sum(c.codes.shape[0] * c.codes.shape[1] *
                                              c.w.shape[0] for c in calls)
    md = (out / "run" / "report.md").read_text()
    assert "## Generation: prefill of" in md and "### Decode steps against the baselines" in md
    # a negative count is refused by name
    with pytest.raises(SystemExit) as e:
        host_main.main([*args, "--generate", "-1"])
    assert e.value.code == 2
    assert "must be 0 or more decode steps, not -1" in capsys.readouterr().err
