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
