"""Threshold calibration (models/calibrate.py): Dual conversion and FAS stage 2."""

from dataclasses import replace
from fractions import Fraction

import pytest
import torch

from models.arch import ModelInputError
from models.bundle import load_bundle, save_bundle
from models.calibrate import (
    MAX_HEADROOM_BITS,
    OFFSET_GRID,
    OutputError,
    calibrate_plan,
    dual_encoding,
    fit_plan,
    ref_headroom_bits,
)
from models.contract import requantize
from models.convert import ConvertOptions, _rows, calibrate, convert, plan_activation
from models.encodings import Encoding
from models.evaluate import PURE
from models.golden import run_golden
from models.quant import ActPlan, dequantize_act, quantize_act, row_multipliers, token_steps

RATE4 = Encoding("rate", steps=4)


@pytest.fixture(scope="module")
def llama_rows(tiny_llama):
    """Float calibration inputs of tiny-llama's linear layers: (first 12 sentences, the next
    12, which calibration does not see)."""
    rec = calibrate(tiny_llama, ConvertOptions(calib_sentences=24))
    names = sorted({n for n, r in rec if r == "x" and n.startswith("layers.")
                    and not n.endswith((".qk", ".av"))})  # lm_head: models.lm_head
    return {n: (_rows(rec[(n, "x")][:12]), _rows(rec[(n, "x")][12:])) for n in names}


def _error(x, plan, w) -> float:
    """|(X_hat - X) W^T|^2, centred per output channel, on every row (float64)."""
    d = dequantize_act(*quantize_act(x, plan), plan) - x
    e = (d - d.mean(0)) @ w.t()
    return float((e * e).sum())


@pytest.mark.parametrize("enc", [RATE4, dual_encoding(2)], ids=["rate4", "graded2x8"])
def test_calibration_lowers_the_layer_output_error(tiny_llama, llama_rows, enc):
    opts = ConvertOptions(encoding=enc, outlier_count=0, **PURE)
    for method in ("dual", "fas"):
        totals = torch.zeros(4, dtype=torch.float64)  # plain / calibrated, seen / held out
        changed = 0
        for node, (x, held) in llama_rows.items():
            w = tiny_llama.params[node + ".w"].to(torch.float64)
            host = not node.endswith(".o")  # o's input comes from PV: a static step
            plain = plan_activation(x, opts, per_token=host, rotate_=False, static_weights=True)
            p = calibrate_plan(x, plain, w, method, centre=True)
            e = torch.tensor([_error(x, plain, w), _error(x, p, w), _error(held, plain, w),
                              _error(held, p, w)], dtype=torch.float64)
            # never worse on the calibration rows, by the search's own measure and by this one
            assert OutputError(x, w, True)(p) <= OutputError(x, w, True)(plain), (method, node)
            assert e[1] <= e[0] * 1.001, (method, node)
            totals += e / e[0]  # every layer counts alike
            changed += p != plain
            if method == "fas" and p != plain:
                assert len(set(p.scales)) > 1 and p.offset == 0  # per-channel, v(0) = theta/2
        assert changed >= len(llama_rows) // 2, method
        # on the calibration rows (per-channel thresholds gain most; Dual's per-layer theta
        # and v(0) gain 1% to 9% here) ...
        assert totals[1] < (0.95 if method == "fas" else 1.0) * totals[0], (method, totals)
        assert totals[3] < totals[2], (method, totals)  # ... and on text it did not see


def test_dual_encoding_covers_n_bit_codes():
    for t in range(1, 9):
        enc = dual_encoding(t)
        assert enc.kind == "graded" and enc.steps == t
        assert enc.qmax >= 15 and (enc.levels - 1) * t < 15  # the fewest levels that cover 4 bits
    assert dual_encoding(5).qmax == dual_encoding(3).qmax == dual_encoding(1).qmax == 15
    assert dual_encoding(4, bits=6).levels == 16


@pytest.mark.parametrize("offset", [0.0, *OFFSET_GRID])
def test_an_offset_is_the_if_neurons_initial_membrane(offset):
    """A soft-reset IF neuron driven by a real input x for T steps, threshold theta = T * s
    (binary spikes), v(0) = theta * (offset + 1/2), fires the code the host quantizer gives
    with that offset (static step; exact rationals for the neuron)."""
    t_steps, s = 8, 0.25
    plan = ActPlan(Encoding("rate", steps=t_steps), 0, s, False, offset=offset)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 400, generator=g, dtype=torch.float64) * s * t_steps * 0.999
    codes, _ = quantize_act(x, plan)
    theta = Fraction(t_steps) * Fraction(s)
    v0 = theta * (Fraction(offset) + Fraction(1, 2))
    for xi, q in zip(x[0].tolist(), codes[0].tolist(), strict=True):
        v, count = v0, 0
        for _ in range(t_steps):
            v += Fraction(xi)
            if v >= theta:
                v, count = v - theta, count + 1
        assert count == q, (xi, offset)


@pytest.mark.parametrize("offset", OFFSET_GRID)
def test_an_offset_folded_into_a_requantizer_bias_is_the_same_neuron(offset):
    """fold_offsets adds round(offset * 2**15) to the producer's bias: the requantizer then
    gives floor(v + 1/2 + offset) of its fixed-point value v, the IF neuron with that v(0)."""
    acc = torch.arange(-3000, 3000, 7, dtype=torch.int64)[None, :, None]
    mcol, shift, mrow = torch.tensor([19_661]), 16, torch.tensor([[40_000]])
    bias = torch.tensor([round(offset * 2**15)])
    big = torch.tensor([10**6])
    u = requantize(acc, mcol, shift, mrow, bias, torch.tensor([0]), -big, big)
    t = ((acc * 19_661 + 2**15) >> 16)  # the first stage, as the contract rounds it
    v = [Fraction(int(a) * 40_000, 2**15) for a in t.flatten()]
    want = [int((vi + Fraction(1, 2) + Fraction(round(offset * 2**15), 2**15)) // 1) for vi in v]
    assert u.flatten().tolist() == want


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_opt"])
@pytest.mark.parametrize("method", ["dual", "fas"])
def test_a_calibrated_model_is_exact_and_round_trips(request, tmp_path, model, method):
    """The calibrated thresholds are contract numbers: the spike-domain golden model (real
    spike trains and neurons) equals the integer one bit for bit, and the bundle keeps them."""
    lm = request.getfixturevalue(model)
    enc = RATE4 if method == "fas" else dual_encoding(4)
    opts = ConvertOptions(encoding=enc, outlier_count=0, calib_sentences=6, **PURE,
                          threshold_calib=method)
    cm = convert(lm, opts)
    acts = [n.act for n in cm.nodes.values() if n.kind == "linear"]
    if method == "fas":
        ks = [n.K for n in cm.nodes.values() if n.kind == "linear"]
        assert any(a.scales for a in acts)
        assert all(len(a.scales) in (0, k) for a, k in zip(acts, ks, strict=True))
    else:
        assert any(a.offset for a in acts) and not any(a.scales for a in acts)
    ids = lm.tokenize("Calibrated thresholds are still the contract's steps.")
    hidden, events = run_golden(cm, ids)
    spiking, events2 = run_golden(cm, ids, spike_domain=True)
    assert torch.equal(hidden, spiking) and events == events2
    back = load_bundle(save_bundle(cm, tmp_path / "b"))
    assert [n.act for n in back.nodes.values()] == [n.act for n in cm.nodes.values()]
    assert torch.equal(run_golden(back, ids)[0], hidden)
    # the uncalibrated model differs (the thresholds did something) and is as close to float
    plain = convert(lm, ConvertOptions(encoding=enc, outlier_count=0, calib_sentences=6,
                                       **PURE))
    assert not torch.equal(run_golden(plain, ids)[0], hidden)


def test_bad_threshold_options_are_refused_by_name():
    with pytest.raises(ModelInputError, match="option threshold_calib: must be one of "
                                              "'none', 'dual', 'fas', not 'qcfs'"):
        ConvertOptions(threshold_calib="qcfs").check()
    with pytest.raises(ModelInputError, match="threshold_calib"):
        ConvertOptions(layers={"layers.*.up": {"threshold_calib": 1}}).check()
    for bad in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="time steps T must be an integer in 1..8"):
            dual_encoding(bad)
    act = ActPlan(RATE4).to_json()
    for field, value, msg in (("offset", 0.5, "offset: must be a number in"),
                              ("offset", "x", "offset: must be a number in"),
                              ("scales", [1.0, -2.0], "scales: must be a list of positive"),
                              ("scales", 3, "scales: must be a list of positive")):
        with pytest.raises(ModelInputError, match=f"act.{msg}"):
            ActPlan.from_json(act | {field: value})
    with pytest.raises(ModelInputError, match="act.scales has 2 entries, the GEMM input has 3"):
        quantize_act(torch.zeros(1, 3, dtype=torch.float64), ActPlan(RATE4, scales=[1.0, 1.0]))


def test_cli_refuses_bad_calibration_arguments(capsys):
    from models.__main__ import main

    with pytest.raises(SystemExit):
        main(["convert", "--model", "tiny-opt", "--out", "x", "--threshold-calib", "qcfs"])
    assert "--threshold-calib: invalid choice: 'qcfs'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", "tiny-opt", "--calibration", "--steps", "2,9"])
    assert "time steps T must be an integer in 1..8, not 9" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-opt", "--only-calibration"]) == 2
    assert "--only-calibration needs --calibration" in capsys.readouterr().err


@pytest.mark.slow
def test_a_calibrated_model_runs_bit_exactly_on_the_simulated_device(tiny_llama, tmp_path):
    """The pattern of tests/host/test_driver.py with calibrated thresholds: per-channel
    steps and initial membranes only change which codes the host and the requantizers
    produce, so the accelerator (Verilator) stays bit-exact with counters equal."""
    from accel.config import AccelConfig
    from host.driver import Device
    from host.run import run_model
    from host.transport import SerialTransport
    from sim.device import SimDevice

    from ..helpers import FAST, simulator_binary

    cfg = AccelConfig(lanes=16, mac_units=4, weight_depth=64, max_rows=32,
                      spike_event_depth=4096, mac_event_depth=256)  # tests/host's CFG
    ids = tiny_llama.tokenize("Calibrated thresholds, on simulated hardware.")
    with SimDevice(simulator_binary(cfg, tmp_path)) as sim:
        for enc, method in ((RATE4, "fas"), (dual_encoding(4), "dual")):
            cm = convert(tiny_llama, ConvertOptions(encoding=enc, outlier_count=0, **PURE,
                                                    calib_sentences=6, threshold_calib=method))
            t = SerialTransport(sim.url)
            res = run_model(cm, ids, Device(t, cfg, **FAST))
            t.close()
            assert res.bit_exact, method
            assert all(r.exact and r.counters_match for r in res.records), method
            assert {r.name for r in res.records} == set(res.golden_events)


# -- plan rules of issue 14's second round ----------------------------------------------------


def test_outlier_shift_by_error_lets_one_rare_row_saturate():
    # 10,000 rows of an outlier channel spread over +-100 steps and one row at 300: fitting
    # the maximum needs shift 2 (step 4) for every row; the least-error rule takes shift 1
    # (step 2) and lets that row saturate at 254
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(10_001, 8, dtype=torch.float64)
    x[:-1, 3] = torch.rand(10_000, generator=g, dtype=torch.float64) * 200 - 100
    x[-1, 3] = 300.0
    plan = lambda: ActPlan(Encoding("ttfs-signed", 4), step=1.0, outliers=[3],  # noqa: E731
                           outlier_shifts=[0])
    assert fit_plan(x, plan(), "max").outlier_shifts == [2]
    chosen = fit_plan(x, plan(), "error")
    assert chosen.outlier_shifts == [1]
    err = lambda p: float((dequantize_act(*quantize_act(x, p), p) - x)[:, 3].pow(2).sum())  # noqa: E731
    assert err(chosen) < err(fit_plan(x, plan(), "max"))


def test_per_token_reference_step_has_headroom_for_the_requantizer():
    # rows of even range: the reference step is 2**8 times the largest row step, so the
    # row multipliers stay below 2**7 and the requantizer's first rounding (before the row
    # multiplier) gets 8 fraction bits; rows 100 times smaller than the rest leave it 1
    g = torch.Generator().manual_seed(1)
    sign = torch.randint(0, 2, (400, 1), generator=g).to(torch.float64) * 2 - 1
    x = sign * torch.linspace(-1.0, 2.0, 16, dtype=torch.float64)  # every row's range: 2
    plan = fit_plan(x, ActPlan(Encoding("ttfs-signed", 4), step=0.0, per_token=True))
    largest = float(token_steps(x, replace(plan, step=1.0)).max())
    assert plan.step == pytest.approx(largest * 2**MAX_HEADROOM_BITS)
    assert int(row_multipliers(x, plan).max()) <= 2 ** (15 - MAX_HEADROOM_BITS)
    assert ref_headroom_bits(torch.tensor([1.0, 1.0, 0.01] * 40), True) == 1
    assert ref_headroom_bits(torch.tensor([1.0, 0.5]), False) == 0  # static: mrow is 2**15


def test_never_negative_inputs_get_the_unsigned_code(tiny_opt):
    # softmax probabilities are never negative: 15 levels above zero with zero silent,
    # instead of sign-magnitude's 7; OPT's ReLU outputs are rotated first (signed again),
    # so the down projection keeps the signed code, and so does everything without rotation
    # off (the rotation is what makes them signed)
    cm = convert(tiny_opt, ConvertOptions(calib_sentences=4, unsigned_nonneg=True))
    for i in range(2):
        av = cm.nodes[f"layers.{i}.av"].act
        assert av.encoding == Encoding("ttfs", 4) and av.zero_point == 0
        assert cm.nodes[f"layers.{i}.down"].act.encoding == Encoding("ttfs-signed", 4)
    plain = convert(tiny_opt, ConvertOptions(calib_sentences=4, rotate=False,
                                             unsigned_nonneg=True))
    assert plain.nodes["layers.0.down"].act.encoding == Encoding("ttfs", 4)
    off = convert(tiny_opt, ConvertOptions(calib_sentences=4, unsigned_nonneg=False))
    assert {n.act.encoding for n in off.nodes.values()} == {Encoding("ttfs-signed", 4)}
