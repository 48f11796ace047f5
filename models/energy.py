"""Energy per operation and the energy of counted events (shared by gen/ and host/).

The table is data: the default is Horowitz (ISSCC 2014, 45 nm), the figures the spiking-LLM
papers use (``shared/research.md``); :func:`load_table` reads a user's JSON file with the
same keys. Energies are attributed to the events of :class:`models.contract.Events` and to
buffer traffic, never estimated from anything that was not counted:

=============== ====================================================================
event           energy
=============== ====================================================================
spike accumulate ``acc_spike + acc_step`` lane additions at the lanes' width (``add_bits``):
                ``int32_add`` at 32 bits, interpolated from the table's 8/16/32-bit adds
                for narrower lanes (:func:`add_energy`)
MAC             ``macs``: ``int8_mult + int32_add`` each (a 4/8-bit by 8-bit product)
requantize      ``outs``: two multiplies and two additions (``int32_mult``, ``int32_add``)
SRAM            bits read or written in on-chip buffers: ``sram_64b`` per 64 bits
FP16 MAC        the ANN baseline: ``fp16_mult + fp16_add`` per multiply-accumulate
=============== ====================================================================
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from .contract import Events

#: pJ per operation, 45 nm (Horowitz, ISSCC 2014).
DEFAULT_TABLE: dict[str, float] = {
    "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "int8_mult": 0.2,
    "int32_mult": 3.1, "fp16_add": 0.4, "fp16_mult": 1.1, "fp32_add": 0.9, "fp32_mult": 3.7,
    "sram_64b": 10.0,
}


def load_table(path: str | Path | None) -> dict[str, float]:
    """The default table, or a JSON file's (every key of the default, in pJ)."""
    if path is None:
        return dict(DEFAULT_TABLE)
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"energy table {path}: {e}") from None
    missing = sorted(set(DEFAULT_TABLE) - set(table))
    bad = sorted(k for k, v in table.items() if not isinstance(v, int | float) or v < 0)
    if missing or bad:
        raise ValueError(f"energy table {path}: missing {missing}, not a number >= 0: {bad}")
    return {k: float(table[k]) for k in DEFAULT_TABLE}


def add_energy(bits: int, table: dict[str, float]) -> float:
    """pJ of one ``bits``-wide integer addition: the table's 8-, 16- and 32-bit additions,
    linear in the width between them (a ripple adder's energy grows with its bits), and
    proportional to the width beyond 32."""
    points = [(8, table["int8_add"]), (16, table["int16_add"]), (32, table["int32_add"])]
    if bits <= 8:
        return points[0][1]
    for (b0, e0), (b1, e1) in itertools.pairwise(points):
        if bits <= b1:
            return e0 + (e1 - e0) * (bits - b0) / (b1 - b0)
    return table["int32_add"] * bits / 32


def event_energy(ev: Events, table: dict[str, float], sram_bits: int = 0,
                 add_bits: int = 32) -> dict[str, float]:
    """Energy in pJ of counted events, by kind (and ``total``). ``add_bits``: the width of
    the spike lanes' additions (``accel.config.AccelConfig.lane_bits``)."""
    out = {
        "spike_accumulate": (ev.acc_spike + ev.acc_step) * add_energy(add_bits, table),
        "mac": ev.macs * (table["int8_mult"] + table["int32_add"]),
        "requantize": ev.outs * 2 * (table["int32_mult"] + table["int32_add"]),
        "sram": sram_bits / 64 * table["sram_64b"],
    }
    out["total"] = sum(out.values())
    return out


def fp16_energy(macs: int, table: dict[str, float], sram_bits: int = 0) -> dict[str, float]:
    """Energy in pJ of an FP16 ANN doing ``macs`` multiply-accumulates."""
    out = {"fp16_mac": macs * (table["fp16_mult"] + table["fp16_add"]),
           "sram": sram_bits / 64 * table["sram_64b"]}
    out["total"] = sum(out.values())
    return out
