"""Mixed hybrids (``models.mixed``, ``ConvertOptions.min_spike_share``): the converter moves
the linear GEMMs whose spike inputs cost most on the calibration text to int8 inputs, never
below the spike-share floor, and the result is an ordinary bundle."""

import pytest

from models.bundle import NodeInfo, load_bundle, save_bundle
from models.convert import ConvertOptions, convert
from models.encodings import Encoding
from models.evaluate import spike_share
from models.golden import run_golden
from models.mixed import choose, spike_channels
from models.quant import ActPlan

TTFS = Encoding("ttfs-signed", 4)


def _node(name: str, k: int, outliers: int = 0, enc: Encoding = TTFS) -> NodeInfo:
    plan = ActPlan(enc, outliers=list(range(outliers)), outlier_shifts=[0] * outliers)
    return NodeInfo(name, "linear", k, 8, 1, False, plan, 0, 0)


def test_choice_takes_gain_per_spike_channel_and_keeps_the_floor():
    nodes = {n.name: n for n in (_node("a", 100), _node("b", 400, outliers=10), _node("c", 100),
                                 _node("d", 100), _node("e", 300, enc=Encoding("int", 8)))}
    assert spike_channels(nodes) == (690, 1000)
    # per spike channel: b 0.9/390 = 2.3e-3 best, then a 2e-3, c 1e-3; d gains nothing
    gains = {"a": 0.2, "b": 0.9, "c": 0.1, "d": 0.0}
    assert choose(nodes, gains, 0.0) == ["a", "b", "c"]
    # floor 0.2: b (690 -> 300) fits, a would leave 200 >= 200 and fits, c would not
    assert choose(nodes, gains, 0.2) == ["a", "b"]
    # floor 0.4: b would break it (300 < 400) and is skipped; the narrower a and c fit
    assert choose(nodes, gains, 0.4) == ["a", "c"]
    assert choose(nodes, gains, 0.7) == []
    assert choose(nodes, {"a": -1.0}, 0.0) == []  # a loss is never taken


@pytest.fixture(scope="module")
def mixed(tiny_llama):
    plain = convert(tiny_llama, ConvertOptions(calib_sentences=6, min_spike_share=0))
    floor = 0.9
    cm = convert(tiny_llama, ConvertOptions(calib_sentences=6, min_spike_share=floor))
    return plain, cm, floor


def test_conversion_moves_gemms_to_int8_above_the_floor_and_says_which(mixed):
    plain, cm, floor = mixed
    moved = cm.options["integer_gemms"]
    assert moved, "the tiny model has room for one integer GEMM at a 0.9 floor"
    assert "integer_gemms" not in plain.options
    spikes, total = spike_channels(plain.nodes)
    given_up = sum(plain.nodes[n].K - len(plain.nodes[n].act.outliers) for n in moved)
    assert spike_channels(cm.nodes) == (spikes - given_up, total)
    assert spike_share(cm) >= floor
    for name, node in cm.nodes.items():
        want = Encoding("int", 8) if name in moved else plain.nodes[name].act.encoding
        assert node.act.encoding == want, name
        if name in moved:
            assert node.act.outliers == [] and node.act.per_token == plain.nodes[name].act.per_token


def test_a_gemm_whose_encoding_is_set_per_layer_is_not_moved(tiny_llama, mixed):
    _, cm, floor = mixed
    first = cm.options["integer_gemms"][0]
    pinned = convert(tiny_llama, ConvertOptions(calib_sentences=6, min_spike_share=floor,
                                                layers={first: {"encoding": TTFS}}))
    assert first not in pinned.options["integer_gemms"]
    assert pinned.nodes[first].act.encoding == TTFS


def test_a_mixed_bundle_round_trips_and_runs_in_the_golden_model(tiny_llama, mixed, tmp_path):
    _, cm, _ = mixed
    ids = tiny_llama.tokenize("Mixed hybrid round trip.")
    back = load_bundle(save_bundle(cm, tmp_path / "b"))
    assert back.options["integer_gemms"] == cm.options["integer_gemms"]
    h1, ev1 = run_golden(cm, ids)
    h2, ev2 = run_golden(back, ids)
    assert h1.equal(h2) and ev1 == ev2
    macs = {n: e.macs for n, e in ev1.items()}
    for n in cm.options["integer_gemms"]:
        assert ev1[n].spikes == 0 and macs[n] > 0, n


@pytest.mark.parametrize("share", [-0.1, 1.5, True])
def test_a_bad_floor_is_refused_by_name(tiny_llama, share):
    from models.arch import ModelInputError

    with pytest.raises(ModelInputError, match="min_spike_share"):
        convert(tiny_llama, ConvertOptions(calib_sentences=4, min_spike_share=share))
