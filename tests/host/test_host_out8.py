"""A model whose outputs to the host are 8 bits (``ConvertOptions.host_out_bits``) runs
bit-exact on the simulated device, reading them back through OUT8 at the bytes the pricing
predicts: half those of 16-bit outputs."""

import pytest

from accel.baselines import trace
from accel.linkcost import link_parts, run_link_cost
from models.convert import ConvertOptions, convert
from models.options import host_out

from .conftest import CFG, run_resident

TEXT = "Eight bits of every output the host reads back."


def _converted(tiny_opt, bits):
    """tiny-opt with every output to the host at ``bits`` bits (the scores too)."""
    return convert(tiny_opt, host_out(ConvertOptions(calib_sentences=6), [("*", bits)]))


@pytest.fixture(scope="module")
def out8(tiny_opt):
    return _converted(tiny_opt, 8)


def test_8_bit_host_outputs_are_priced_as_reads_of_out8_at_half_the_bytes(tiny_opt, out8):
    ids = tiny_opt.tokenize(TEXT)
    wide, narrow = (link_parts(run_link_cost(CFG, trace(cm, ids)))
                    for cm in (_converted(tiny_opt, 16), out8))
    for kind in ("qk", "o", "up", "down"):
        assert narrow[kind].get("read out16", 0) == 0, kind
        # the same words, a byte each instead of two, plus their read requests' arguments
        n8, n16 = narrow[kind]["read out8"], wide[kind]["read out16"]
        assert n16 / 2 <= n8 < 0.6 * n16, (kind, n8, n16)


def test_a_model_with_8_bit_host_outputs_runs_bit_exact(sim, tiny_opt, out8):
    res = run_resident(sim, out8, tiny_opt.tokenize(TEXT))
    assert res.bit_exact
    assert all(r.counters_match for r in res.records)
    assert all(r.link == r.predicted_link for r in res.records)
    assert all(r.counters["busy"] == r.predicted_cycles for r in res.records)
