"""The per-token estimate's tables (:mod:`gen.estimate`): the summary as plain text and
``estimate.md``, and the files ``estimate.json`` / ``estimate.md``."""

from __future__ import annotations

import json
from pathlib import Path


def eng(x: float, unit: str) -> str:
    """``x`` in engineering notation with an SI prefix (``1.5 MB/s``)."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"),
                          (1e-6, "u"), (1e-9, "n")):
        if abs(x) >= scale:
            return f"{x / scale:,.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def summary_rows(rep: dict) -> list[list[str]]:
    """The summary table: one row per target and phase."""
    rows = []
    for t in rep["targets"]:
        c = t["config"]
        for ph in ("prefill", "decode"):
            p = t["phases"][ph]
            rows.append([
                t["name"], f"{c['lanes']}/{c['mac_units']}", ph,
                f"{p['cycles_per_token']:,.0f}", f"{t['clock_mhz']:g}",
                eng(p["compute_s_per_token"], "s"), eng(p["time_s_per_token"], "s"),
                eng(p["energy_pj_per_token"]["operations"] * 1e-12, "J"),
                eng(p["energy_pj_per_token"]["with_sram"] * 1e-12, "J"),
                eng(p["weight_bytes_per_token"], "B"),
                eng(p["bandwidth_needed_bytes_per_s"] or 0, "B/s"),
                eng(p["available_bytes_per_s"], "B/s"),
                f"{-p['fp16'][0]['compute_energy_reduction_pct']:+.1f}%", p["bound"]])
    return rows


HEADER = ["target", "lanes/MAC", "phase", "cycles/token", "MHz", "compute/token",
          "time/token", "energy ops", "energy +SRAM", "weight bytes", "BW needed",
          "BW available", "vs FP16 ops", "bound"]


def format_table(rep: dict) -> str:
    """A plain-text table of :func:`summary_rows`."""
    rows = [HEADER, *summary_rows(rep)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def write_markdown(rep: dict, path: Path) -> None:
    """``estimate.md``."""
    a = rep["arch"]
    s = a["spec"]
    lines = [f"# Per-token estimate: {a['name']}", "",
             f"{s['family']}, {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads "
             f"({s['kv_heads']} KV), FFN {s['ffn']}{' gated' if s['gated'] else ''}; "
             f"{a['bytes']['linear_weights'] / 1e9:,.2f} G GEMM weights "
             f"({a['bytes']['linear_4bit'] / 2**20:,.0f} MiB at 4 bits). Prefill of "
             f"{rep['tokens']} tokens and one decode step with {rep['tokens']} cached "
             f"tokens.", "",
             f"Spike statistics: {rep['statistics']['source']}.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(rep)]
    for t in rep["targets"]:
        c = t["config"]
        lines += ["", f"## {t['name']}", "", f"{t['description']}. Configuration "
                  f"`{t['config_hash']}`: {c['lanes']} lanes, {c['mac_units']} MAC units, "
                  f"weight buffer {c['weight_depth']} rows, {c['max_rows']} rows, event "
                  f"buffers {c['spike_event_depth']} / {c['mac_event_depth']} "
                  f"({t['config_why']}). Memory: {t['memory']}; link: {t['link']}.", ""]
        for ph in ("prefill", "decode"):
            p = t["phases"][ph]
            lines += [f"**{ph}**: bound by {p['bound']} ({p['bound_why']}); weights from "
                      f"{p['weights_from']}; spike array {p['spike_util']:.0%} busy, MAC "
                      f"array {p['mac_util']:.0%}.", "",
                      "| kind | M | K | N | heads x layers | outliers | silent | cycles/token "
                      "| weight bytes/token |", "|---|---|---|---|---|---|---|---|---|"]
            for r in p["kinds"]:
                lines.append(f"| {r['kind']} | {r['m']} | {r['k']} | {r['n']} | "
                             f"{r['heads']} x {r['layers']} | {r['outlier_channels']} | "
                             f"{r['silent_fraction']:.0%} | {r['cycles_per_token']:,.0f} | "
                             f"{r['weight_bytes_per_token']:,.0f} |")
            lines += ["", "| FP16 baseline | memory model | FP16 ops/token | FP16 +SRAM/token "
                      "| reduction ops | reduction +SRAM |", "|---|---|---|---|---|---|"]
            for b in p["fp16"]:
                e = b["energy_pj_per_token"]
                lines.append(f"| {b['name']} | {b['memory_model']} | "
                             f"{eng(e['operations'] * 1e-12, 'J')} | "
                             f"{eng(e['with_sram'] * 1e-12, 'J')} | "
                             f"{-b['compute_energy_reduction_pct']:+.2f} % | "
                             f"{-b['energy_reduction_pct']:+.2f} % |")
            lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in rep["notes"]]
    path.write_text("\n".join(lines) + "\n")


def write(rep: dict, out: Path) -> None:
    """``estimate.json`` and ``estimate.md`` in ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimate.json").write_text(json.dumps(rep, indent=1, sort_keys=True))
    write_markdown(rep, out / "estimate.md")
