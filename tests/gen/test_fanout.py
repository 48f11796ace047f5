"""The fanout report ranks the nets driven by logic by their sinks, and leaves out the nets
a register drives straight."""

import json

from gen.fanout import fanout_report, wide_nets


def _netlist(fanout_lut: int, fanout_ff: int) -> dict:
    # bit 2: a LUT of bits 1 (input a) and 3 (a register's output) driving ``fanout_lut``
    # sinks; bit 3: the register, driving ``fanout_ff`` sinks
    cells = {
        "lut": {"type": "LUT4", "port_directions": {"A": "input", "B": "input", "Z": "output"},
                "connections": {"A": [1], "B": [3], "Z": [2]}},
        "ff": {"type": "TRELLIS_FF", "port_directions": {"DI": "input", "Q": "output"},
               "connections": {"DI": [1], "Q": [3]}},
    }
    for i in range(fanout_lut):
        cells[f"s{i}"] = {"type": "LUT4", "port_directions": {"A": "input"},
                          "connections": {"A": [2]}}
    for i in range(fanout_ff):
        cells[f"t{i}"] = {"type": "LUT4", "port_directions": {"A": "input"},
                          "connections": {"A": [3]}}
    nets = {"a": {"bits": [1]}, "en_decoded": {"bits": [2]}, "state": {"bits": [3]},
            "state_alias_with_a_longer_name": {"bits": [3]}}
    return {"modules": {"top": {"attributes": {"top": 1}, "cells": cells, "netnames": nets}}}


def test_logic_driven_nets_ranked_register_driven_left_out(tmp_path):
    rows = wide_nets(_netlist(70, 500), min_fanout=64)
    assert rows == [{"net": "en_decoded", "fanout": 70, "driver": "LUT4",
                     "inputs": ["a", "state"]}]
    assert wide_nets(_netlist(63, 500), min_fanout=64) == []  # below the floor
    path = tmp_path / "top.json"
    path.write_text(json.dumps(_netlist(100, 0)))
    text = fanout_report(path)
    assert "| 100 | LUT4 | `en_decoded` | `a`, `state` |" in text
