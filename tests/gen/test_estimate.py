"""``gen estimate``: shapes from a configuration, the synthetic workload, the events and the
scaling of the per-token figures (fast: tiny configurations, synthetic statistics)."""

import json

import numpy as np
import pytest

from accel.config import PRESETS
from accel.cycles import gemm_cycles
from accel.tiling import tiled_events
from accel.workload import GemmWork, measure, sample_ids
from gen.__main__ import main
from gen.estimate import (
    EstimateOptions,
    Stats,
    estimate,
    kind_cost,
    phase_shapes,
    read_arch,
    synth_work,
    work_events,
)
from gen.spike_stats import stats_from_works, synthetic_stats
from models.arch import ModelInputError
from models.golden import run_golden
from models.graph import gemm_nodes

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
        "vocab_size": 1000, "max_position_embeddings": 256, "hidden_act": "silu",
        "rms_norm_eps": 1e-6}
SYN = synthetic_stats("synthetic:silent=0.6,outliers=0.0625")


def _config(tmp_path, d=None, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(TINY if d is None else d))
    return str(p)


def _opts(arch, **kw):
    return EstimateOptions(arch, **({"tokens": 16, "targets": ["ulx3s-85f"]} | kw))


@pytest.mark.parametrize("tokens", [1, 7, 33])
def test_shapes_are_gemm_nodes(tmp_path, tokens):
    _, spec = read_arch(_config(tmp_path))
    nodes = gemm_nodes(spec)
    for phase in ("prefill", "decode"):
        shapes = {s.kind: s for s in phase_shapes(spec, phase, tokens)}
        assert sum(s.layers for s in shapes.values()) == len(nodes)
        for nd in nodes:
            s = shapes[nd["name"].rsplit(".", 1)[1]]
            assert (s.k, s.n, s.heads) == tuple(
                tokens if nd[x] == "tokens" else nd[x] for x in ("K", "N", "heads"))
            assert s.m == (tokens if phase == "prefill" else 1)  # decode: one row per GEMM
            assert s.layers == spec.layers
        assert shapes["av"].causal == (phase == "prefill")


def test_builtin_configs():
    _, ll = read_arch("llama-2-7b")
    assert (ll.hidden, ll.layers, ll.heads, ll.kv_heads, ll.ffn, ll.vocab) == (
        4096, 32, 32, 32, 11008, 32000)
    assert (ll.position, ll.norm, ll.act, ll.gated) == ("rotary", "rmsnorm", "silu", True)
    _, op = read_arch("opt-2.7b")
    assert (op.hidden, op.layers, op.heads, op.ffn) == (2560, 32, 32, 10240)
    assert (op.position, op.norm, op.act, op.gated) == ("absolute", "layernorm", "relu", False)
    kinds = [s.kind for s in phase_shapes(ll, "decode", 128)]
    assert kinds == ["q", "k", "v", "qk", "av", "o", "gate", "up", "down"]
    assert "gate" not in [s.kind for s in phase_shapes(op, "decode", 128)]


@pytest.mark.parametrize("field, value", [("hidden_size", "big"), ("num_hidden_layers", 0),
                                          ("num_key_value_heads", 3), ("hidden_act", "gelu")])
def test_bad_config_is_refused_by_field(tmp_path, capsys, field, value):
    path = _config(tmp_path, TINY | {field: value})
    with pytest.raises(ModelInputError, match=field):
        read_arch(path)
    assert main(["estimate", "--arch", path, "--stats", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0]


def test_unknown_arch_and_family_refused(tmp_path, capsys):
    assert main(["estimate", "--arch", str(tmp_path / "nope.json")]) == 2
    assert "neither a built-in" in capsys.readouterr().err
    with pytest.raises(ModelInputError, match="t5"):
        read_arch(_config(tmp_path, {"model_type": "t5"}))
    with pytest.raises(ModelInputError, match="--tokens"):
        estimate(_opts(_config(tmp_path), tokens=0), SYN)
    with pytest.raises(ModelInputError, match="silent"):
        synthetic_stats("synthetic:silent=2")
    with pytest.raises(ModelInputError, match="--clock-mhz"):
        estimate(_opts(_config(tmp_path), clock_mhz=0.0), SYN)
    assert main(["estimate", "--arch", _config(tmp_path), "--stats", "synthetic",
                 "--budget", "lut=2000"]) == 3  # nothing fits that budget
    assert "does not fit" in capsys.readouterr().err


def test_decode_one_row_and_scaling(tmp_path):
    one = estimate(_opts(_config(tmp_path)), SYN)
    two = estimate(_opts(_config(tmp_path, TINY | {"num_hidden_layers": 4}, "two.json")), SYN)
    for ph in ("prefill", "decode"):
        a, b = one["targets"][0]["phases"][ph], two["targets"][0]["phases"][ph]
        assert b["cycles"] == 2 * a["cycles"]
        for key in ("operations", "with_sram"):
            assert b["energy_pj_per_token"][key] == pytest.approx(
                2 * a["energy_pj_per_token"][key])
        assert b["weight_bytes_per_token"] == 2 * a["weight_bytes_per_token"]
    dec = one["targets"][0]["phases"]["decode"]
    assert {r["m"] for r in dec["kinds"]} == {1}
    qk = next(r for r in dec["kinds"] if r["kind"] == "qk")
    assert (qk["k"], qk["n"], qk["heads"]) == (16, 16, 4)  # head_dim, cached keys, heads
    # decode writes every weight once per token; a resident prefill shares them over rows
    pre = one["targets"][0]["phases"]["prefill"]
    assert dec["weight_bytes_per_token"] == pytest.approx(16 * pre["weight_bytes_per_token"])


def test_prefill_cost_is_the_sum_over_every_call(tmp_path):
    """One layer and one head times their count equals every GEMM of the forward run
    through the cycle model (the synthetic draw is the same for every call of a kind)."""
    _, spec = read_arch(_config(tmp_path))
    cfg = PRESETS["tiny"]
    for sh in phase_shapes(spec, "prefill", 12):
        st = SYN.of(sh.kind)
        cost = kind_cost(cfg, sh, st, seed=3)
        assert len(cost.n_int) == 1
        rng = np.random.default_rng([3, sh.m, sh.k, sh.n, round(st.outlier_fraction * 1e6)])
        g = synth_work(sh, st, st.outlier_fraction, rng)
        assert cost.cycles == gemm_cycles(cfg, g).cycles * sh.calls
        assert cost.events.macs == work_events(cfg, g).macs * sh.calls


def test_synthetic_work_follows_the_statistics(tmp_path):
    _, spec = read_arch(_config(tmp_path))
    sh = next(s for s in phase_shapes(spec, "prefill", 200) if s.kind == "up")
    g = synth_work(sh, SYN.of("up"), 0.0625, np.random.default_rng(0))
    assert isinstance(g, GemmWork) and g.units.shape == (200, 64)
    assert g.n_int == 4 and not g.units[:, g.int_mask].any()
    assert g.silent_fraction == pytest.approx(0.6, abs=0.02)
    av = next(s for s in phase_shapes(spec, "prefill", 20) if s.kind == "av")
    g = synth_work(av, SYN.of("av"), 0.0, np.random.default_rng(0))
    assert not np.triu(g.units, 1).any()  # causal: no input for later keys


def test_events_equal_the_device_tiling(tiny_llama, tiny_llama_cm):
    """The events charged for a workload equal accel.tiling.tiled_events of the same
    GEMM (what the device's counters count)."""
    trace = []
    run_golden(tiny_llama_cm, tiny_llama.tokenize("Spikes are cheap, weights are not."),
               trace=trace)
    cfg = PRESETS["tiny"]
    for call in trace:
        assert work_events(cfg, GemmWork.of(call)) == tiled_events(cfg, call), call.name


def test_own_statistics_predict_own_cost(tmp_path, tiny_llama, tiny_llama_cm):
    """The estimate of tiny-llama's own shapes from its own measured statistics is close to
    the cycle model on the measured workload (what gen build predicts)."""
    ids = sample_ids(tiny_llama, 24)
    works, _ = measure(tiny_llama_cm, ids)
    cfg = PRESETS["tiny"]
    measured = sum(gemm_cycles(cfg, g).cycles for g in works)
    stats = stats_from_works(works, "tiny-llama")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_llama.hf_model.config.to_dict()))
    fixed = {k: v for k, v in cfg.to_json().items() if k != "encodings"}
    rep = estimate(_opts(str(path), tokens=int(ids.numel()), fixed=fixed), stats)
    assert rep["targets"][0]["config"] == cfg.to_json()
    est = rep["targets"][0]["phases"]["prefill"]["cycles"]
    print(f"estimated {est} cycles, measured workload {measured}")
    assert est == pytest.approx(measured, rel=0.1)


def test_cli_writes_report_and_reuses_statistics(tmp_path, capsys):
    path = _config(tmp_path)
    out = tmp_path / "est"
    assert main(["estimate", "--arch", path, "--tokens", "16", "--stats",
                 "synthetic:silent=0.5", "--target", "ulx3s-85f", "--budget",
                 "lut=200000,dsp=300,bram=400", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prefill" in text and "decode" in text and "synthetic" in text
    rep = json.loads((out / "estimate.json").read_text())
    assert [t["name"] for t in rep["targets"]] == ["ulx3s-85f", "budget"]
    assert rep["targets"][1]["budget"]["lut4"] == 200000
    for t in rep["targets"]:
        for ph in ("prefill", "decode"):
            p = t["phases"][ph]
            assert p["cycles"] > 0 and p["bound"]
            assert p["energy_pj_per_token"]["with_sram"] > p["energy_pj_per_token"]["operations"]
    assert "## ulx3s-85f" in (out / "estimate.md").read_text()
    again = estimate(_opts(path, stats=str(out / "estimate.json")))
    assert isinstance(Stats.from_json(rep, "x"), Stats)
    assert again["targets"][0]["phases"] == rep["targets"][0]["phases"]
