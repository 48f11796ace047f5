"""``report.json``, ``report.md`` and the per-layer plot of a build (keys: ``docs/gen.md``).
The baselines and reductions are ``accel.baselines``'s, as in ``host run``'s report."""

from __future__ import annotations

import json
import math
from pathlib import Path

from accel import baselines
from accel.config import AccelConfig
from accel.counters import sram_bits
from accel.cycles import GemmPrediction
from accel.layouts import BufId
from accel.protocol import FRAME_OVERHEAD, MAX_PAYLOAD, word_bytes
from accel.workload import GemmWork
from models.contract import Events
from models.energy import event_energy

from .placed import stale_warning

#: Version of the report's key set; bumped when a key changes meaning or goes away.
SCHEMA = 2


def link_payload(cfg: AccelConfig, p: GemmPrediction, raw: bool = False) -> dict:
    """Payload bytes a GEMM's buffer traffic puts on the host link: ``weights`` (rows
    narrow or whole), ``events`` (the event words the host writes) and ``outputs`` (a byte
    each unless ``raw``: requantized outputs are 8-bit codes, read as ``BufId.OUT8``)."""
    wb = word_bytes(cfg)
    return {"weights": (p.weight_rows - p.wide_rows) * wb[BufId.WEIGHTS4]
            + p.wide_rows * wb[BufId.WEIGHTS],
            "events": p.spike_written * wb[BufId.SPIKE_EV] + p.mac_written * wb[BufId.MAC_EV],
            "outputs": p.outputs * wb[BufId.OUT if raw else BufId.OUT8]}


def link_bytes(cfg: AccelConfig, p: GemmPrediction, raw: bool = False) -> int:
    """Bytes on the host link for a GEMM's buffer traffic (:func:`link_payload`, in frames
    of ``MAX_PAYLOAD``)."""
    payload = sum(link_payload(cfg, p, raw).values())
    return payload + math.ceil(payload / MAX_PAYLOAD) * FRAME_OVERHEAD


def layer_rows(cfg: AccelConfig, works: list[GemmWork], preds: list[GemmPrediction],
               events: dict[str, Events], table: dict) -> list[dict]:
    """One row per GEMM node (attention heads summed), in forward order."""
    rows: dict[str, dict] = {}
    for g, p in zip(works, preds, strict=True):
        r = rows.setdefault(g.name, {
            "name": g.name, "m": g.m, "k": g.k, "n": 0, "heads": 0, "encoding": g.encoding.kind,
            "time_steps": g.encoding.time_steps, "outlier_channels": g.n_int,
            "silent_fraction": 0.0, "predicted_cycles": 0, "descriptors": 0,
            "spike_array_cycles": 0, "mac_array_cycles": 0, "output_cycles": 0,
            "traffic": {"weight_rows": 0, "spike_events": 0, "mac_events": 0, "outputs": 0,
                        "weight_reads": 0, "link_bytes": 0, "sram_bits": 0}})
        r["n"] = g.n if g.head is None else r["n"] + g.n
        r["heads"] += g.head is not None
        r["silent_fraction"] += g.silent_fraction
        r["predicted_cycles"] += p.cycles
        r["descriptors"] += p.descriptors
        r["spike_array_cycles"] += p.spike_cycles
        r["mac_array_cycles"] += p.mac_cycles
        r["output_cycles"] += p.out_cycles
        t = r["traffic"]
        for key in ("weight_rows", "spike_events", "mac_events", "outputs", "weight_reads"):
            t[key] += getattr(p, key)
        t["link_bytes"] += link_bytes(cfg, p, g.raw)
        t["sram_bits"] += sram_bits(cfg, p.traffic())
    for r in rows.values():
        r["silent_fraction"] /= max(1, r["heads"])
        ev = events[r["name"]]
        r["events"] = {"spikes": ev.spikes, "spike_units": ev.spike_units,
                       "accumulates": ev.accumulates, "acc_spike": ev.acc_spike,
                       "acc_step": ev.acc_step, "macs": ev.macs, "outs": ev.outs}
        r["energy_pj"] = event_energy(ev, table, r["traffic"]["sram_bits"],
                                      cfg.lane_bits(r["time_steps"]))
    return list(rows.values())


def totals(rows: list[dict], tokens: int) -> dict:
    """Sums over layers, and per token."""
    cyc = sum(r["predicted_cycles"] for r in rows)
    energy = sum(r["energy_pj"]["total"] for r in rows)
    return {"predicted_cycles": cyc, "cycles_per_token": cyc / tokens, "tokens": tokens,
            "descriptors": sum(r["descriptors"] for r in rows),
            "accumulates": sum(r["events"]["accumulates"] for r in rows),
            "macs": sum(r["events"]["macs"] for r in rows),
            "spike_units": sum(r["events"]["spike_units"] for r in rows),
            "link_bytes": sum(r["traffic"]["link_bytes"] for r in rows),
            "energy_pj": energy, "energy_pj_per_token": energy / tokens}


def link_lines(link: dict) -> list[str]:
    """The host link and board time section of a report (``gen.build.board_link``)."""
    lines = ["## Host link and board time (predicted, request by request)", "",
             f"The model streamed over the link, or resident in the external memory "
             f"({link['image_bytes']:,} bytes, written once by `host load`). "
             f"{link['resident']['board']['assumes']}.", "",
             "| model | link bytes/token | requests/token | round trips/token "
             "| tokens/s at 1 Mbaud | tokens/s at 3 Mbaud |", "|---|---|---|---|---|---|"]
    for name in ("streamed", "resident"):
        r = link[name]
        by = r["board"]["by_baud"]
        lines.append(f"| {name} | {r['bytes_per_token']:,.0f} | "
                     f"{r['requests_per_token']:,.1f} | {r['round_trips_per_token']:,.1f} | "
                     f"{by['1000000']['tokens_per_s']:.2f} | "
                     f"{by['3000000']['tokens_per_s']:.2f} |")
    return lines + parts_lines(link["resident"].get("parts", {}))


def parts_lines(parts: dict[str, dict[str, float]], widest: int = 6) -> list[str]:
    """What crosses the link with the model resident, bytes a token per GEMM kind (every
    layer's together) by what the requests carry (``accel.linkcost.carries``): the
    ``widest`` largest columns over all GEMMs, the rest as ``other``."""
    if not parts:
        return []
    total: dict[str, float] = {}
    for row in parts.values():
        for what, b in row.items():
            total[what] = total.get(what, 0.0) + b
    cols = sorted(total, key=lambda w: -total[w])[:widest]
    lines = ["", "What crosses with the model resident, bytes a token (payloads both ways, "
             "every layer of a kind together; `framing`: frame overhead and CHAIN "
             "sub-headers):", "",
             "| GEMM | " + " | ".join(cols) + " | other | total |",
             "|---" * (len(cols) + 3) + "|"]
    for label, row in [*parts.items(), ("all", total)]:
        rest = sum(b for w, b in row.items() if w not in cols)
        lines.append(f"| {label} | " + " | ".join(f"{row.get(w, 0.0):,.0f}" for w in cols)
                     + f" | {rest:,.0f} | {sum(row.values()):,.0f} |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    """A human-readable summary of ``report``."""
    c, t = report["config"], report["totals"]
    lines = [f"# Build report: {report['model']['name']} on {report['target']}", "",
             f"Configuration `{report['config_hash']}`: {c['lanes']} spike lanes, "
             f"{c['mac_units']} MAC units, weight buffer {c['weight_depth']} rows, "
             f"{c['max_rows']} rows per tile, event buffers {c['spike_event_depth']} / "
             f"{c['mac_event_depth']}.", "", f"Why: {report['choice']['why']}.", "",
             *_proof_lines(report["choice"].get("clock_proof")),
             f"Predicted: {t['predicted_cycles']:,} cycles for {t['tokens']} tokens "
             f"({t['cycles_per_token']:,.0f} cycles/token), {t['energy_pj'] / 1e6:,.3f} uJ "
             f"({report['energy_table']} table).", ""]
    res = report["resources"]
    lines += ["## Resources", "", "| | LUT4 | FF | MULT18X18D | DP16KD |", "|---|---|---|---|---|"]
    for kind in ("estimate", "synth"):
        if res.get(kind):
            r = res[kind]
            lines.append(f"| {kind} | {r['lut4']} | {r['ff']} | {r['mult18x18d']} | "
                         f"{r['dp16kd']} |")
    b = report["budget"]
    lines.append(f"| budget | {b['lut4']} | | {b['mult18x18d']} | {b['dp16kd']} |")
    if report.get("fmax_mhz"):
        clock = report["choice"].get("clock_mhz")
        met = "" if clock is None else (
            f" (the clock the sizer chose for, {clock:g} MHz: "
            f"{'met' if report['fmax_mhz'] >= clock else 'MISSED'})")
        lines += ["", f"Fmax after place and route: {report['fmax_mhz']:.1f} MHz{met}."]
        if clock is not None and report["fmax_mhz"] < clock:
            # at 64 lanes one design's seeds spread over 14.5 MHz (docs/gen.md, seeds)
            lines += ["", "The Fmax of a design depends on the placement seed as much as on "
                      "the design: place it with more seeds (`--seeds N`, the best kept)"
                      + _seed_hint(report["choice"].get("clock_proof")) + "."]
    if report.get("link"):
        lines += ["", *link_lines(report["link"])]
    lines += ["", "## Layers", "",
              "| layer | M | K | N | encoding | T | outliers | silent | cycles | spike units "
              "| accumulates | MACs | link bytes | energy (nJ) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        e = r["events"]
        lines.append(
            f"| {r['name']} | {r['m']} | {r['k']} | {r['n']} | {r['encoding']} | "
            f"{r['time_steps']} | {r['outlier_channels']} | {r['silent_fraction']:.0%} | "
            f"{r['predicted_cycles']:,} | {e['spike_units']:,} | {e['accumulates']:,} | "
            f"{e['macs']:,} | {r['traffic']['link_bytes']:,} | "
            f"{r['energy_pj']['total'] / 1e3:,.1f} |")
    if report.get("baselines"):
        lines += ["", "## Against the baselines (predicted; operations only, and with memory "
                  "traffic)", ""]
        lines += baselines.markdown(report["hybrid"], "hybrid (predicted)",
                                    report["baselines"], report["reductions"])
    lines += ["", "## Candidates", "",
              "| lanes | MAC units | weight rows | LUT4 | DSP | BRAM | cycles | clock proven "
              "by | bound |", "|---|---|---|---|---|---|---|---|---|"]
    for k in report["choice"]["candidates"]:
        r = k["resources"]
        lines.append(f"| {k['lanes']} | {k['mac_units']} | {k['weight_depth']} | {r['lut4']} | "
                     f"{r['mult18x18d']} | {r['dp16kd']} | {k['cycles'] or '-'} | "
                     f"{_proven(k.get('placed'))} | {k['bound']} |")
    path.write_text("\n".join(lines) + "\n")


def _seed_hint(proof: dict | None) -> str:
    """The seed that met the clock, when this very design was placed before."""
    if proof and proof["same_config"] and proof["current"]:
        return f"; this design met {proof['fmax_mhz']:g} MHz at `--seed {proof['seed']}`"
    return ""


def _proof_lines(proof: dict | None) -> list[str]:
    """What the clock rests on: the placed design, and whether it is still this gateware's."""
    if not proof:
        return []
    what = "this configuration" if proof["same_config"] else "a design no smaller"
    warn = stale_warning(proof)
    return [f"Clock proof: {what}, {proof['name']}, placed and routed at "
            f"{proof['fmax_mhz']:g} MHz (seed {proof['seed']}, {proof['commit']}); "
            + (f"**STALE**: {warn}." if warn else "the present gateware emits the same design."),
            ""]


def _proven(placed: dict | None) -> str:
    return f"{placed['name']} at {placed['fmax_mhz']:g} MHz" if placed else "-"


def plot(report: dict, path: Path) -> None:
    """PNG: predicted cycles and energy per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    names = [r["name"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.25), 7), sharex=True)
    a.bar(names, [r["predicted_cycles"] for r in rows], color="tab:blue")
    a.set_ylabel("predicted cycles")
    a.set_title(f"{report['model']['name']} on {report['target']} "
                f"({report['config']['lanes']} lanes, {report['config']['mac_units']} MAC)")
    bottom = [0.0] * len(rows)
    for kind, color in (("spike_accumulate", "tab:green"), ("mac", "tab:red"),
                        ("requantize", "tab:purple"), ("sram", "tab:gray")):
        vals = [r["energy_pj"][kind] / 1e3 for r in rows]
        b.bar(names, vals, bottom=bottom, label=kind, color=color)
        bottom = [x + y for x, y in zip(bottom, vals, strict=True)]
    b.set_ylabel("energy (nJ)")
    b.legend(fontsize=7)
    b.tick_params(axis="x", labelrotation=90, labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(report: dict, path: Path) -> None:
    """``report.json`` (sorted keys, stable)."""
    path.write_text(json.dumps(report, indent=1, sort_keys=True))
