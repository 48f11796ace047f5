"""The synthesised netlist's widest logic-driven nets, by name (``synth/fanout.md``).

nextpnr reports one critical path per clock pair. At 64 lanes every path it reported was a
net fanned out across the die (a stall enable, a reset, a block RAM mux), so the
generator also lists, from Yosys' JSON netlist, the nets driven by logic (not straight by a
flip-flop) with the most sinks, each with the driver's inputs: the candidates for the next
register stage, ranked before a place and route of an hour.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

#: Cell types whose output is a register's: a net they drive has no logic in front of it.
REGISTERS = frozenset({"TRELLIS_FF"})


def wide_nets(netlist: dict, limit: int = 40, min_fanout: int = 64) -> list[dict]:
    """The ``limit`` logic-driven nets with at least ``min_fanout`` sinks, widest first:
    ``{"net", "fanout", "driver", "inputs"}`` (the driver's cell type and its input nets)."""
    mod = next(iter(netlist["modules"].values()))
    for m in netlist["modules"].values():
        if m.get("attributes", {}).get("top"):
            mod = m
    names: dict[int, str] = {}
    for n, nd in mod["netnames"].items():
        for i, b in enumerate(nd["bits"]):
            label = f"{n}[{i}]" if len(nd["bits"]) > 1 else n
            if isinstance(b, int) and (b not in names or len(label) < len(names[b])):
                names[b] = label
    driver: dict[int, dict] = {}
    sinks: Counter = Counter()
    for cell in mod["cells"].values():
        for port, bits in cell["connections"].items():
            out = cell["port_directions"].get(port) == "output"
            for b in bits:
                if isinstance(b, int):
                    if out:
                        driver[b] = cell
                    else:
                        sinks[b] += 1
    rows = []
    for b, n in sinks.items():
        cell = driver.get(b)
        if cell is None or cell["type"] in REGISTERS or n < min_fanout:
            continue
        inputs = [names.get(x, str(x)) for p, bits in cell["connections"].items()
                  if cell["port_directions"].get(p) == "input"
                  for x in bits if isinstance(x, int)]
        rows.append({"net": names.get(b, f"<bit {b}>"), "fanout": n, "driver": cell["type"],
                     "inputs": inputs})
    rows.sort(key=lambda r: (-r["fanout"], r["net"]))
    return rows[:limit]


def fanout_report(top_json: Path, limit: int = 40, min_fanout: int = 64) -> str:
    """:func:`wide_nets` of a Yosys JSON netlist as Markdown."""
    rows = wide_nets(json.loads(Path(top_json).read_text()), limit, min_fanout)
    lines = ["# Widest logic-driven nets (Yosys netlist)", "",
             f"Nets with at least {min_fanout} sinks whose driver is logic, not a register "
             "(`gen/fanout.py`).", "", "| sinks | driver | net | driver inputs |",
             "|---|---|---|---|"]
    for r in rows:
        ins = ", ".join(f"`{i}`" for i in r["inputs"])
        lines.append(f"| {r['fanout']} | {r['driver']} | `{r['net']}` | {ins} |")
    return "\n".join(lines) + "\n"
