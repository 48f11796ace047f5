"""Host outputs at 8 bits (``ConvertOptions.host_out_bits``): by default the up projection
of a non-gated MLP and QK^T's scores, else only the GEMMs named get the narrow range and
the coarser step;
the golden model then clamps them to int8; a bad width or a pattern that names no GEMM is
refused by name."""

import pytest
import torch

from models.__main__ import main
from models.arch import ModelInputError
from models.bundle import load_bundle
from models.contract import HOST_OUT_QMAX, host_out_qmax
from models.convert import HOST_HEADROOM, ConvertOptions, convert
from models.golden import run_golden
from models.options import host_out

OPTS = ConvertOptions(calib_sentences=4)


@pytest.fixture(scope="module")
def pair(tiny_opt):
    """tiny-opt converted with every output to the host at 16 bits, and by default (its
    up projections' and scores' at 8: OPT's MLP is not gated)."""
    return convert(tiny_opt, host_out(OPTS, [("*", 16)])), convert(tiny_opt, OPTS)


def test_by_default_a_plain_mlp_s_up_and_the_scores_send_8_bit_outputs_at_a_coarser_step(
        pair):
    ref, up8 = pair
    assert host_out_qmax(8) == 127 and host_out_qmax(16) == HOST_OUT_QMAX
    narrowed = []
    for name in ref.nodes:
        a, b = ref.tensors, up8.tensors
        if name.endswith((".up", ".qk")):
            narrowed.append(name)
            assert int(b[name + ".lo"].min()) == -127 and int(b[name + ".hi"].max()) == 127
            # the same calibration peak at 127 levels instead of 32,767, each with its
            # width's headroom
            ratio = b[name + ".scale"].double() / a[name + ".scale"].double()
            want = HOST_HEADROOM[8] / 127 / (HOST_HEADROOM[16] / HOST_OUT_QMAX)
            assert torch.allclose(ratio, torch.full_like(ratio, want))
        elif int(a[name + ".hi"].max()) == HOST_OUT_QMAX:  # other outputs to the host
            assert torch.equal(a[name + ".hi"], b[name + ".hi"]), name
            assert torch.equal(a[name + ".scale"], b[name + ".scale"]), name
    assert narrowed == ["layers.0.qk", "layers.0.up", "layers.1.qk", "layers.1.up"]


def test_a_gated_mlp_keeps_16_bits_unless_told(tiny_llama_cm, tiny_llama):
    # LLaMA's up meets SiLU(gate) in a product, not an activation function on its own
    for name in ("layers.0.up", "layers.0.gate", "layers.0.down"):
        assert int(tiny_llama_cm.tensors[name + ".hi"].max()) == HOST_OUT_QMAX, name
    assert int(tiny_llama_cm.tensors["layers.0.qk.hi"].max()) == 127  # the scores: 8 bits
    cm = convert(tiny_llama, host_out(ConvertOptions(calib_sentences=2, distill_epochs=0),
                                      [("layers.1.gate", 8)]))
    assert int(cm.tensors["layers.1.gate.hi"].max()) == 127
    assert int(cm.tensors["layers.0.gate.hi"].max()) == HOST_OUT_QMAX


def test_the_golden_model_runs_with_8_bit_outputs_close_to_the_16_bit_one(pair, tiny_opt):
    ref, up8 = pair
    ids = tiny_opt.tokenize("Half the bytes of the GELU's inputs cross the link.")
    h16, _ = run_golden(ref, ids)
    h8, _ = run_golden(up8, ids)
    assert not torch.equal(h16, h8)  # the coarser step changes the result ...
    cos = torch.nn.functional.cosine_similarity(h16.flatten(), h8.flatten(), dim=0)
    assert cos > 0.95  # ... a little (tiny-opt's random weights; MiniLM: docs/quantization.md)


def test_a_shared_step_puts_every_channel_of_up_on_the_widest_channel_s_step(pair, tiny_opt):
    _, up8 = pair
    cm = convert(tiny_opt, ConvertOptions(calib_sentences=4,
                                          layers={"layers.*.up": {"host_out_shared_step": True}}))
    for name in up8.nodes:
        a, b = up8.tensors[name + ".scale"], cm.tensors[name + ".scale"]
        if name.endswith(".up"):  # one step: the per-channel steps' largest
            assert len(set(a.tolist())) > 1
            assert torch.equal(b, torch.full_like(b, float(a.max())))
        else:
            assert torch.equal(a, b), name
    assert cm.options["layers"] == {"layers.*.up": {"host_out_shared_step": True}}


@pytest.mark.parametrize("opts, message", [
    (ConvertOptions(host_out_bits=12), r"option host_out_bits: must be one of 8, 16, not 12"),
    (ConvertOptions(host_out_bits=True), r"option host_out_bits: must be one of 8, 16"),
    (ConvertOptions(layers={"layers.*.up": {"host_out_bits": 4}}),
     r"option host_out_bits: must be one of 8, 16, not 4"),
    (host_out(OPTS, [("layers.*.gate", 8)]), r"option layers: 'layers.\*.gate' names no GEMM "
                                             r"of tiny-opt"),
    (ConvertOptions(layers={"layers.*.up": {"host_out_shared_step": 1}}),
     r"option host_out_shared_step: must be True or False, not 1"),
])
def test_bad_widths_and_patterns_that_match_nothing_are_refused_by_name(tiny_opt, opts,
                                                                       message):
    with pytest.raises(ModelInputError, match=message):
        convert(tiny_opt, opts)


def test_the_convert_command_takes_host_out_widths_the_last_match_winning(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["convert", "--model", "tiny-opt", "--out", str(out), "--calib-sentences",
                 "3", "--distill", "0", "--host-out8", "layers.1.*", "--host-out16",
                 "layers.*.up", "--quiet"]) == 0
    cm = load_bundle(out)
    assert cm.options["layers"] == {"layers.1.*": {"host_out_bits": 8},
                                    "layers.*.up": {"host_out_bits": 16}}
    assert int(cm.tensors["layers.1.down.hi"].max()) == 127
    for name in ("layers.0.down", "layers.0.up", "layers.1.up"):
        assert int(cm.tensors[name + ".hi"].max()) == HOST_OUT_QMAX, name
    assert main(["convert", "--model", "tiny-opt", "--out", str(tmp_path / "c"),
                 "--host-out8", "layers.9.up", "--quiet"]) == 2
    assert "option layers: 'layers.9.up' names no GEMM" in capsys.readouterr().err
