"""Mamba models (issue 15, part 2): import against transformers' own forward at odd sizes,
refusals by name, the host functions, conversion and golden-model consistency, and a
bit-exact run of tiny-mamba on the simulated device with counters equal."""

import json

import pytest
import torch

from models import nonlinear as nl
from models.arch import ModelInputError, UnsupportedModelError, load_model
from models.bundle import load_bundle, save_bundle
from models.convert import ConvertOptions, convert
from models.encodings import Encoding
from models.golden import run_golden, total_events
from models.graph import FloatOps, forward, gemm_nodes
from models.mamba import (
    MambaSpec,
    mamba_params,
    random_mamba,
    spec_from_mamba_dict,
    tiny_mamba_config,
)

#: MAR's ternary spikes with SpikingMamba's signed levels: codes -8..8 in 4 steps.
TERNARY = Encoding("ternary", steps=4, levels=2)

#: Odd sizes: hidden not a multiple of 16, odd state, conv width and time-step rank,
#: biases on and off, expand 3 and 1.
ODD = [dict(hidden=37, layers=3, state=5, expand=3, conv=3, vocab=101, dt_rank=3,
            use_bias=True),
       dict(hidden=22, layers=2, state=7, expand=1, conv=5, vocab=77, dt_rank="auto",
            use_conv_bias=False, layer_norm_epsilon=1e-3)]


@pytest.fixture(scope="module")
def tiny_mamba():
    return load_model("tiny-mamba")


def _hf(model, ids):
    with torch.no_grad():
        return model(ids[None]).last_hidden_state[0].to(torch.float64)


def _close(ours, ref):
    """float64 graph against transformers' float32 forward: float32 rounding only."""
    assert ours.shape == ref.shape
    err = float((ours - ref).abs().max())
    assert err <= 2e-5 * max(1.0, float(ref.abs().max())), err


@pytest.mark.parametrize("kw", ODD)
def test_float_graph_equals_transformers_forward_at_odd_sizes(kw):
    m = random_mamba(tiny_mamba_config(**kw), seed=3)
    spec = spec_from_mamba_dict(m.config.to_dict())
    assert spec.inner == int(kw["expand"] * kw["hidden"])
    params = mamba_params(spec, m.state_dict())
    for n in (1, 2, 13):  # one token (the conv's padding only), and longer sequences
        ids = torch.randint(0, kw["vocab"], (n,), generator=torch.Generator().manual_seed(n))
        _close(forward(spec, params, ids, FloatOps(spec, params)), _hf(m, ids))


def test_tiny_mamba_builtin_equals_transformers_and_is_seeded(tiny_mamba):
    spec = tiny_mamba.spec
    assert isinstance(spec, MambaSpec)
    assert (spec.hidden, spec.inner, spec.state, spec.dt_rank) == (64, 128, 8, 4)
    ids = tiny_mamba.tokenize("State spaces remember what attention forgets.")
    _close(forward(spec, tiny_mamba.params, ids, FloatOps(spec, tiny_mamba.params)),
           _hf(tiny_mamba.hf_model, ids))
    again = load_model("tiny-mamba")
    assert all(torch.equal(again.params[k], v) for k, v in tiny_mamba.params.items())
    assert [g["name"] for g in gemm_nodes(spec)[:4]] == [
        "layers.0.in_proj", "layers.0.x_proj", "layers.0.dt_proj", "layers.0.out_proj"]


def _save_dir(tmp_path, **kw):
    from transformers import MambaForCausalLM

    cfg = tiny_mamba_config(**(ODD[0] | kw))
    torch.manual_seed(1)
    model = MambaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


def test_a_hugging_face_directory_imports_offline(tmp_path):
    model = _save_dir(tmp_path)
    lm = load_model(tmp_path)
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    _close(forward(lm.spec, lm.params, ids, FloatOps(lm.spec, lm.params)),
           _hf(model.backbone, ids))


def _config(tmp_path, **changes):
    _save_dir(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(("changes", "named"), [
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(model_type="mamba2"), "model_type 'mamba2'"),
    (dict(model_type="falcon_mamba"), "model_type 'falcon_mamba'"),
    (dict(intermediate_size=64), "intermediate_size=64"),
    (dict(time_step_rank="big"), "time_step_rank"),
    (dict(state_size=0), "state_size"),
    (dict(layer_norm_epsilon=float("inf")), "layer_norm_epsilon"),
    (dict(use_conv_bias="yes"), "use_conv_bias"),
])
def test_unsupported_or_malformed_config_options_are_refused_by_name(tmp_path, changes, named):
    _config(tmp_path, **changes)
    with pytest.raises(ModelInputError) as e:
        load_model(tmp_path)
    assert named in str(e.value) and "config.json" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    if "model_type" in changes or "hidden_act" in changes:
        assert isinstance(e.value, UnsupportedModelError)


def test_weights_that_disagree_with_the_config_are_refused_by_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    _save_dir(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(str(f))
    save_file(sd | {"backbone.layers.0.mixer.extra.weight": torch.zeros(2)}, str(f))
    with pytest.raises(UnsupportedModelError, match="layers.0.mixer.extra.weight"):
        load_model(tmp_path)
    sd["backbone.layers.1.mixer.A_log"] = torch.zeros(3, 3)
    save_file(sd, str(f))
    with pytest.raises(ModelInputError, match=r"layers.1.mixer.A_log has shape \[3, 3\]"):
        load_model(tmp_path)
    del sd["backbone.layers.1.mixer.A_log"]
    save_file(sd, str(f))
    with pytest.raises(UnsupportedModelError, match="no layers.1.A_log"):
        load_model(tmp_path)


def test_host_functions_match_torch_and_repeat_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((9, 6), (6, 4), (6,)))
    ref = torch.nn.functional.conv1d(x.t()[None], w[:, None], b, padding=3, groups=6)[0, :, :9]
    assert torch.allclose(nl.causal_conv1d(x, w, b), ref.t(), atol=1e-12)
    assert torch.allclose(nl.causal_conv1d(x, w, None), ref.t() - b, atol=1e-12)
    v = torch.linspace(-40, 40, 801, dtype=torch.float64)
    assert torch.allclose(nl.softplus(v), torch.nn.functional.softplus(v), atol=1e-15)
    u, dt = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.rand(9, 6, generator=g)
    a_log, bb, c = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((6, 3), (9, 3),
                                                                                 (9, 3)))
    d = torch.randn(6, generator=g, dtype=torch.float64)
    y = nl.selective_scan(u, dt.to(torch.float64), a_log, bb, c, d)
    # the recurrence written out for one channel and token
    a = -torch.exp(a_log[2])
    h = torch.zeros(3, dtype=torch.float64)
    for t in range(5):
        h = torch.exp(a * dt[t, 2]) * h + dt[t, 2] * u[t, 2] * bb[t]
    assert torch.isclose(y[4, 2], (h * c[4]).sum() + d[2] * u[4, 2], atol=1e-12)
    assert torch.equal(y, nl.selective_scan(u, dt.to(torch.float64), a_log, bb, c, d))


@pytest.mark.parametrize("enc", [TERNARY, Encoding("ternary", steps=8),
                                 Encoding("ttfs-signed", 4), Encoding("int", 8)])
def test_conversion_and_golden_model_are_consistent(tiny_mamba, tmp_path, enc):
    cm = convert(tiny_mamba, ConvertOptions(encoding=enc, calib_sentences=16))
    spec = tiny_mamba.spec
    assert [n.name for n in cm.nodes.values()] == [g["name"] for g in gemm_nodes(spec)]
    assert all(n.act.encoding == enc for n in cm.nodes.values())
    ids = tiny_mamba.tokenize("A selective scan runs on the host, the projections on spikes.")
    hidden, events = run_golden(cm, ids)
    ref = forward(spec, tiny_mamba.params, ids, FloatOps(spec, tiny_mamba.params))
    cos = torch.nn.functional.cosine_similarity(hidden, ref, dim=-1)
    assert float(cos.min()) > 0.93, cos
    # the spike trains, actually run through the neurons, give the same bits and events
    h2, ev2 = run_golden(cm, ids, spike_domain=True)
    assert torch.equal(hidden, h2) and ev2 == events
    tot = total_events(events)
    m, n_layers = len(ids), spec.layers
    assert tot.gemms == 4 * n_layers
    lin = sum(g["K"] * g["N"] for g in gemm_nodes(spec))
    assert tot.weights_in == lin and tot.outs == m * sum(g["N"] for g in gemm_nodes(spec))
    if enc.kind == "ternary":  # signed spikes in -L..L, no TTFS membrane steps
        assert tot.acc_step == 0 and tot.spikes > 0 and tot.time_steps == enc.steps
        assert tot.spike_units >= tot.spikes
    if enc.kind == "int":
        assert tot.spikes == 0 and tot.macs == m * lin
    # the bundle round-trips and runs to the same bits
    back = load_bundle(save_bundle(cm, tmp_path / "b"))
    assert isinstance(back.spec, MambaSpec) and back.spec == spec
    h3, ev3 = run_golden(back, ids)
    assert torch.equal(hidden, h3) and ev3 == events


def test_generation_is_refused_by_name(tiny_mamba, tmp_path):
    from gen.build import BuildError, BuildOptions, build
    from models.graph import KVCache

    ops = FloatOps(tiny_mamba.spec, tiny_mamba.params)
    with pytest.raises(ValueError, match="mamba: generation with a KV cache"):
        forward(tiny_mamba.spec, tiny_mamba.params, torch.tensor([1, 2]), ops, KVCache(2))
    with pytest.raises(BuildError, match="tiny-mamba is a Mamba model"):
        build(BuildOptions(model="tiny-mamba", out=tmp_path / "b", workload="decode",
                           progress=False, cache=False))
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_tiny_mamba_runs_bit_exactly_on_the_simulated_device(tiny_mamba, tmp_path):
    """Every projection on the Verilator top (tests/host's small configuration: several N
    and K tiles), the rest on the host: outputs, counters and final hidden states equal the
    golden model's, for ternary (MAR / SpikingMamba) spikes and for the hybrid."""
    from accel.config import AccelConfig
    from host.driver import Device
    from host.run import run_model
    from host.transport import SerialTransport
    from sim.device import SimDevice

    from ..helpers import FAST, simulator_binary

    cfg = AccelConfig(lanes=16, mac_units=4, weight_depth=64, max_rows=32,
                      spike_event_depth=4096, mac_event_depth=256)
    ids = tiny_mamba.tokenize("Ternary spikes, selective scan.")
    with SimDevice(simulator_binary(cfg, tmp_path)) as sim:
        for enc in (TERNARY, Encoding("ttfs-signed", 4)):
            cm = convert(tiny_mamba, ConvertOptions(encoding=enc, calib_sentences=6))
            t = SerialTransport(sim.url)
            res = run_model(cm, ids, Device(t, cfg, **FAST))
            t.close()
            assert res.bit_exact, enc
            assert len(res.records) == 4 * tiny_mamba.spec.layers
            assert all(r.exact and r.counters_match for r in res.records), enc
