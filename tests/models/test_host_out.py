"""Host outputs at 8 bits (``ConvertOptions.host_out_bits``): only the GEMMs named get the
narrow range and the coarser step, the golden model then clamps them to int8, and a bad
width or a pattern that names no GEMM is refused by name."""

import pytest
import torch

from models.__main__ import main
from models.arch import ModelInputError
from models.bundle import load_bundle
from models.contract import HOST_OUT_QMAX, host_out_qmax
from models.convert import ConvertOptions, convert
from models.golden import run_golden
from models.options import host_out8

OPTS = ConvertOptions(calib_sentences=4)


@pytest.fixture(scope="module")
def pair(tiny_opt):
    """tiny-opt converted as is and with its up projections' outputs at 8 bits."""
    return convert(tiny_opt, OPTS), convert(tiny_opt, host_out8(OPTS, ("layers.*.up",)))


def test_only_the_named_gemms_send_8_bit_outputs_at_a_coarser_step(pair):
    ref, up8 = pair
    assert host_out_qmax(8) == 127 and host_out_qmax(16) == HOST_OUT_QMAX
    narrowed = []
    for name in ref.nodes:
        a, b = ref.tensors, up8.tensors
        if name.endswith(".up"):
            narrowed.append(name)
            assert int(b[name + ".lo"].min()) == -127 and int(b[name + ".hi"].max()) == 127
            # the same calibration peak at 127 levels instead of 32,767
            ratio = b[name + ".scale"].double() / a[name + ".scale"].double()
            assert torch.allclose(ratio, torch.full_like(ratio, HOST_OUT_QMAX / 127))
        elif int(a[name + ".hi"].max()) == HOST_OUT_QMAX:  # other outputs to the host
            assert torch.equal(a[name + ".hi"], b[name + ".hi"]), name
            assert torch.equal(a[name + ".scale"], b[name + ".scale"]), name
    assert narrowed == ["layers.0.up", "layers.1.up"]


def test_the_golden_model_runs_with_8_bit_outputs_close_to_the_16_bit_one(pair, tiny_opt):
    ref, up8 = pair
    ids = tiny_opt.tokenize("Half the bytes of the GELU's inputs cross the link.")
    h16, _ = run_golden(ref, ids)
    h8, _ = run_golden(up8, ids)
    assert not torch.equal(h16, h8)  # the coarser step changes the result ...
    cos = torch.nn.functional.cosine_similarity(h16.flatten(), h8.flatten(), dim=0)
    assert cos > 0.95  # ... a little (tiny-opt's random weights; MiniLM: docs/quantization.md)


@pytest.mark.parametrize("opts, message", [
    (ConvertOptions(host_out_bits=12), r"option host_out_bits: must be one of 8, 16, not 12"),
    (ConvertOptions(host_out_bits=True), r"option host_out_bits: must be one of 8, 16"),
    (ConvertOptions(layers={"layers.*.up": {"host_out_bits": 4}}),
     r"option host_out_bits: must be one of 8, 16, not 4"),
    (host_out8(OPTS, ("layers.*.gate",)), r"option layers: 'layers.\*.gate' names no GEMM "
                                          r"of tiny-opt"),
])
def test_bad_widths_and_patterns_that_match_nothing_are_refused_by_name(tiny_opt, opts,
                                                                       message):
    with pytest.raises(ModelInputError, match=message):
        convert(tiny_opt, opts)


def test_the_convert_command_takes_host_out8(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["convert", "--model", "tiny-opt", "--out", str(out), "--calib-sentences",
                 "3", "--distill", "0", "--host-out8", "layers.1.*", "--quiet"]) == 0
    cm = load_bundle(out)
    assert cm.options["layers"] == {"layers.1.*": {"host_out_bits": 8}}
    assert int(cm.tensors["layers.1.down.hi"].max()) == 127
    assert int(cm.tensors["layers.0.down.hi"].max()) == HOST_OUT_QMAX
    assert main(["convert", "--model", "tiny-opt", "--out", str(tmp_path / "c"),
                 "--host-out8", "layers.9.up", "--quiet"]) == 2
    assert "option layers: 'layers.9.up' names no GEMM" in capsys.readouterr().err
