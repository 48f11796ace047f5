"""AccelConfig: validation messages, JSON round trip, hash."""

import pytest

from accel.config import PRESETS, AccelConfig


@pytest.mark.parametrize("kwargs, message", [
    (dict(lanes=0), "lanes must be a positive power of two, not 0"),
    (dict(lanes=12), "lanes must be a positive power of two, not 12"),
    (dict(mac_units=32, lanes=16), r"mac_units must be a power of two no larger than lanes \(16\)"),
    (dict(weight_bits=3), "weight_bits must be in 4..16, not 3"),
    (dict(acc_bits=24), "acc_bits must be the contract's 32, not 24"),
    (dict(weight_depth=1000), "weight_depth must be a positive power of two, not 1000"),
    (dict(max_rows=100), "max_rows must be a positive power of two, not 100"),
    (dict(counter_bits=32), "counter_bits must be at least 48, not 32"),
    (dict(encodings=("ttfs", "morse")), "encodings must be a non-empty subset"),
    (dict(spike_rows=3), r"spike_rows must be a power of two in 1..min\(64, max_rows=128\)"),
    (dict(spike_rows=16, max_rows=8), r"spike_rows must be .*max_rows=8\), not 16"),
])
def test_bad_config_is_refused_with_exact_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AccelConfig(**kwargs)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip_and_hash(name):
    cfg = PRESETS[name]
    again = AccelConfig.from_json(cfg.to_json())
    assert again == cfg and again.hash32() == cfg.hash32()


def test_hash_changes_with_any_field_and_unknown_keys_are_refused():
    assert AccelConfig().hash32() != AccelConfig(lanes=32).hash32()
    with pytest.raises(ValueError, match="unknown config key.*colour"):
        AccelConfig.from_json(AccelConfig().to_json() | {"colour": 1})


def test_lane_widths_follow_the_contract_bounds_of_one_k_tile():
    # MiniLM's build: sign-magnitude codes up to 7, 8-bit weights, 1024 weight rows:
    # |I| <= 128 * 1024 = 2**17 and |V| <= 128 * 7 * 1024 < 2**20
    cfg = AccelConfig(lanes=64, mac_units=16, weight_depth=1024, encodings=("ttfs-signed",),
                      max_steps=7)
    assert (cfg.spike_code_max, cfg.cur_bits, cfg.mem_bits) == (7, 19, 21)
    assert cfg.lane_bits(255) == 26 and cfg.lane_bits(2**30) == 32  # never past the contract
    # graded and ternary codes are bounded by the activation width, not the window
    assert AccelConfig(encodings=("graded",), max_steps=7).spike_code_max == 255
    assert AccelConfig().spike_fifo_depth == 16  # a 16-slot group, one LUT RAM deep
    assert AccelConfig(spike_rows=1, row_fifo_depth=1).spike_fifo_depth == 1
    assert AccelConfig(spike_rows=2, row_fifo_depth=4).spike_fifo_depth == 4


@pytest.mark.parametrize(("depth", "half", "k_tile"), [(1024, 512, 512), (2, 1, 1), (1, 0, 1)])
def test_half_rows_is_half_the_weight_buffer_and_k_tile_at_least_one_row(depth, half, k_tile):
    cfg = AccelConfig(weight_depth=depth)
    assert (cfg.half_rows, cfg.k_tile) == (half, k_tile)
