"""Design study of issue 11: what each lever does to MiniLM's cycles, weight reads and energy,
predicted with the generator's cost model (``accel.cycles``, exact to the RTL's counters).

Run: ``.venv/bin/python bench/design_study.py [--tokens 15 128]``; prints a markdown table
(``docs/efficiency.md`` has the one from the last run). Every row is the same model, text
and accelerator size (64 spike lanes, 16 MAC units, 1024 weight rows, 128 rows per tile);
the levers are switched on one after another:

* ``unsigned`` / ``signed``: the spike code (unsigned 4-bit TTFS with a zero point, T = 15;
  sign-magnitude, T = 7, where zero is silent);
* ``8-bit rows`` / ``4-bit rows``: whether a 4-bit weight tile reads whole 8-bit rows or only
  the weight buffer's narrow half (and, with the narrow rows, lanes as wide as the contract's
  bounds need, their additions charged at that width; before, 32-bit lanes);
* ``R``: row slots of the spike array (rows sharing a weight-row read per input and step).

Energy: the golden events of the conversion x the pJ table (``models.energy``), plus SRAM
bits of the predicted buffer traffic (``accel.counters.sram_bits``). FP16: dense MACs, with
every operand moved once (the memory model most favourable to FP16) and on this engine's
dense dataflow (each activation row re-reads its tile's weights).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from accel.config import AccelConfig
from accel.counters import sram_bits
from accel.cycles import gemm_cycles
from accel.workload import measure, sample_ids
from gen.cache import converted
from models.arch import load_model
from models.convert import ConvertOptions
from models.encodings import Encoding
from models.energy import DEFAULT_TABLE, event_energy, fp16_energy
from models.golden import total_events

BASE = AccelConfig(lanes=64, mac_units=16, weight_depth=1024, max_rows=128,
                   spike_event_depth=16384, mac_event_depth=4096)
LEVERS = [  # (name, encoding, narrow rows, row slots)
    ("unsigned T=15, 8-bit rows, R=1", Encoding("ttfs", 4), False, 1),
    ("signed T=7, 8-bit rows, R=1", Encoding("ttfs-signed", 4), False, 1),
    ("signed, 4-bit rows, R=1", Encoding("ttfs-signed", 4), True, 1),
    ("signed, 4-bit rows, R=4", Encoding("ttfs-signed", 4), True, 4),
    ("signed, 4-bit rows, R=8", Encoding("ttfs-signed", 4), True, 8),
    ("signed, 4-bit rows, R=16 (built)", Encoding("ttfs-signed", 4), True, 16),
    ("signed, 4-bit rows, R=32", Encoding("ttfs-signed", 4), True, 32),
]


def study(tokens: int) -> list[str]:
    """Markdown rows for one sequence length."""
    lm = load_model("minilm")
    ids = sample_ids(lm, tokens)
    rows, cache = [], {}
    fp = None
    for name, enc, narrow, slots in LEVERS:
        if enc not in cache:
            cm, _ = converted(lm, ConvertOptions(encoding=enc))
            cache[enc] = measure(cm, ids)
        works, events = cache[enc]
        cfg = replace(BASE, spike_rows=slots, encodings=(enc.kind,), max_steps=enc.time_steps)
        preds = [gemm_cycles(cfg, w if narrow else replace(w, wide=True)) for w in works]
        traffic = {k: sum(p.traffic()[k] for p in preds) for k in preds[0].traffic()}
        ev = total_events(events)
        e = event_energy(ev, DEFAULT_TABLE, sram_bits(cfg, traffic),
                         cfg.lane_bits(enc.time_steps) if narrow else 32)
        ops = e["total"] - e["sram"]
        silent = sum(w.silent_fraction * w.m * int((~w.int_mask).sum()) for w in works) / sum(
            w.m * int((~w.int_mask).sum()) for w in works)
        if fp is None:
            macs = sum(w.m * w.k * w.n for w in works)
            once = sum(16 * (w.k * w.n + w.m * w.k + w.m * w.n) for w in works)
            dense = sum(16 * (w.m * w.k * w.n + w.k * w.m * -(-w.n // cfg.lanes) + w.m * w.n)
                        for w in works)
            fp = (fp16_energy(macs, DEFAULT_TABLE, once), fp16_energy(macs, DEFAULT_TABLE, dense))
        pct = lambda a, b: 100 * (1 - a / b)  # noqa: E731
        rows.append(
            f"| {len(ids)} | {name} | {enc.time_steps} | {silent:.1%} | "
            f"{sum(p.cycles for p in preds):,} | {traffic['w_rd']:,} | "
            f"{ops / 1e6:.2f} | {e['sram'] / 1e6:.2f} | {e['total'] / 1e6:.2f} | "
            f"{pct(ops, fp[0]['fp16_mac']):.1f} % | {pct(e['total'], fp[0]['total']):.1f} % | "
            f"{pct(e['total'], fp[1]['total']):.1f} % |")
    rows.append(f"| {len(ids)} | FP16 (operands once / dense dataflow) | - | - | - | - | "
                f"{fp[0]['fp16_mac'] / 1e6:.2f} | {fp[0]['sram'] / 1e6:.2f} / "
                f"{fp[1]['sram'] / 1e6:.2f} | {fp[0]['total'] / 1e6:.2f} / "
                f"{fp[1]['total'] / 1e6:.2f} | | | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[15, 128])
    a = ap.parse_args()
    print("| tokens | design | T | silent | cycles | weight-row reads | ops (uJ) | SRAM (uJ) "
          "| total (uJ) | ops vs FP16 | total vs FP16 once | total vs FP16 dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in a.tokens:
        for r in study(t):
            print(r, flush=True)


if __name__ == "__main__":
    main()
