"""Cycle and energy reports of a model run on the accelerator, with the baselines.

Per layer (heads summed): measured cycles (``busy`` counter) beside the generator's
prediction, array utilisation, time steps, counted events, buffer traffic, link bytes and
energy (counted events x the per-operation table, ``models.energy``). Side by side for the
same model and tokens (``accel.baselines``, the computation ``gen build`` uses too): an FP16
ANN with its operands moved once and on a dense dataflow like this engine's, all-integer
W4A8, a rate-coded multi-spike SNN (T = 8) and the 8-bit single-spike window (TTFS, 255
steps) on this accelerator; each charged operations only and with memory traffic, each
with its memory model. Keys: ``docs/host.md``.

A generation (``host run --generate N``) adds :func:`generation`: the prefill and the decode
steps side by side, per token and per layer, and their ratio (keys: ``docs/generate.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accel import baselines
from accel.config import AccelConfig
from accel.counters import GOLDEN_EVENTS, TRAFFIC, sram_bits
from models.contract import Events
from models.energy import event_energy

from .run import GenerationResult, RunResult

SCHEMA = 2


def counted_events(c: dict) -> Events:
    """Events as the device counted them (``accel.counters.GOLDEN_EVENTS``)."""
    return Events(spikes=c["spikes"], **{f: c[k] for k, f in GOLDEN_EVENTS.items()})


def layer_rows(cfg: AccelConfig, res: RunResult, table: dict) -> list[dict]:
    """One row per GEMM node, in forward order."""
    rows: dict[str, dict] = {}
    for r in res.records:
        row = rows.setdefault(r.name, {"name": r.name, "m": r.m, "k": r.k, "n": 0, "heads": 0,
                                       "counters": {}, "predicted_cycles": 0, "link_bytes": 0,
                                       "predicted_traffic": dict.fromkeys(TRAFFIC, 0),
                                       "bit_exact": True, "counters_match": True})
        row["n"] = r.n if not r.heads else row["n"] + r.n * len(r.heads)
        row["heads"] += len(r.heads)
        for k, v in r.counters.items():
            row["counters"][k] = row["counters"].get(k, 0) + v
        row["predicted_cycles"] += r.predicted_cycles
        for k in TRAFFIC:
            row["predicted_traffic"][k] += r.predicted_traffic[k]
        row["link_bytes"] += r.link_bytes
        row["bit_exact"] &= bool(r.exact)
        row["counters_match"] &= r.counters_match
    out = []
    for row in rows.values():
        c = row["counters"]
        ev = counted_events(c)
        busy = max(1, c["busy"])
        enc = res.golden_events[row["name"]]
        row.update({
            "measured_cycles": c["busy"],
            "cycle_ratio": c["busy"] / row["predicted_cycles"] if row["predicted_cycles"]
            else None,
            "spike_util": c["spike_busy"] / busy, "mac_util": c["mac_busy"] / busy,
            "time_steps": enc.time_steps, "spike_events": c["spikes"],
            "accumulates": c["acc_spike"] + c["acc_step"], "macs": c["macs"],
            "traffic": {k: c[k] for k in (*TRAFFIC, "host_wr", "host_rd")},
            "energy_pj": event_energy(ev, table, sram_bits(cfg, c),
                                      cfg.lane_bits(enc.time_steps)),
        })
        out.append(row)
    return out


def hybrid(cfg: AccelConfig, layers: list[dict], steps: int, table: dict) -> dict:
    """The hybrid as the device ran it: counted events, each layer's at the lane width of its
    own window (``accel.baselines.windows``, as the build's prediction charges them), and
    the SRAM traffic of its counters."""
    h = baselines.scheme(
        "hybrid", steps,
        baselines.windows((r["time_steps"], counted_events(r["counters"])) for r in layers),
        table,
        baselines.traffic_sum(r["counters"] for r in layers), baselines.MEMORY_MODELS["measured"],
        cfg)
    h["measured_cycles"] = sum(r["measured_cycles"] for r in layers)
    return h


#: The events a generation report gives: those the device counts, and their sum.
COUNTED = ("spikes", *GOLDEN_EVENTS.values(), "accumulates")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def phase_summary(cfg: AccelConfig, res: RunResult, tokens: int, passes: int, steps: int,
                  table: dict) -> dict:
    """One phase of a generation (the prefill, or every decode step together) as the device
    ran it: totals and per-token figures (``tokens`` tokens processed in ``passes`` passes),
    and per layer (GEMM node, heads and passes summed)."""
    layers = layer_rows(cfg, res, table)
    h = hybrid(cfg, layers, steps, table)
    ev = baselines.total(counted_events(r["counters"]) for r in layers)
    link = sum(r["link_bytes"] for r in layers)
    out = {"tokens": tokens, "passes": passes, "gemms": len(res.records),
           "measured_cycles": h["measured_cycles"],
           "predicted_cycles": sum(r["predicted_cycles"] for r in layers),
           "compute_energy_pj": h["compute_energy_pj"], "energy_pj": h["energy_pj"],
           "traffic": h["traffic"], "sram_bits": h["sram_bits"], "link_bytes": link,
           "events": {k: v for k, v in ev.as_dict().items() if k in COUNTED},
           "bit_exact": all(r["bit_exact"] and r["counters_match"] for r in layers)}
    out["per_token"] = {
        "cycles": h["measured_cycles"] / tokens,
        "compute_energy_pj": h["compute_energy_pj"] / tokens,
        "energy_pj": h["energy_pj"]["total"] / tokens, "link_bytes": link / tokens,
        "sram_bits": h["sram_bits"] / tokens,
        "events": {k: v / tokens for k, v in ev.as_dict().items() if k in COUNTED}}
    out["layers"] = []
    for r in layers:
        ops = r["energy_pj"]["total"] - r["energy_pj"]["sram"]
        out["layers"].append({
            "name": r["name"], "measured_cycles": r["measured_cycles"],
            "predicted_cycles": r["predicted_cycles"],
            "cycles_per_token": r["measured_cycles"] / tokens,
            "spike_events": r["spike_events"], "accumulates": r["accumulates"],
            "macs": r["macs"], "compute_energy_pj": ops, "energy_pj": r["energy_pj"]["total"],
            "compute_energy_pj_per_token": ops / tokens,
            "energy_pj_per_token": r["energy_pj"]["total"] / tokens,
            "link_bytes": r["link_bytes"], "link_bytes_per_token": r["link_bytes"] / tokens,
            "bit_exact": r["bit_exact"] and r["counters_match"]})
    return out


def generation(cfg: AccelConfig, res: GenerationResult, steps: int, table: dict) -> dict:
    """The ``generation`` key of a generation run's report: tokens, the prefill and the
    decode steps (:func:`phase_summary`), each decode step's cost as its cache grows, and
    the decode/prefill ratio of every per-token figure."""
    pre = res.passes[0]
    out: dict[str, Any] = {"prompt_tokens": pre.rows, "decode_steps": len(res.passes) - 1,
           "tokens": res.tokens, "golden_tokens": res.golden.tokens,
           "tokens_match": res.tokens == res.golden.tokens, "bit_exact": res.bit_exact,
           "wall_s": res.wall_s,
           "prefill": phase_summary(cfg, res.phase("prefill"), pre.rows, 1, steps, table)}
    if len(res.passes) == 1:
        return out
    dec = [p for p in res.passes if p.phase == "decode"]
    out["decode"] = phase_summary(cfg, res.phase("decode"), sum(p.rows for p in dec),
                                  len(dec), steps, table)
    out["decode_steps_detail"] = [
        {"cached": p.cached, "measured_cycles": sum(r.counters["busy"] for r in p.records),
         "link_bytes": sum(r.link_bytes for r in p.records), "bit_exact": p.bit_exact}
        for p in dec]
    a, b = out["decode"]["per_token"], out["prefill"]["per_token"]
    out["decode_vs_prefill"] = {k: _ratio(a[k], b[k]) for k in
                                ("cycles", "compute_energy_pj", "energy_pj", "link_bytes",
                                 "sram_bits")}
    out["decode_vs_prefill"]["events"] = {k: _ratio(a["events"][k], b["events"][k])
                                          for k in a["events"]}
    return out


def generation_lines(g: dict) -> list[str]:
    """A short table of a ``generation`` report: per token, prefill, decode, their ratio."""
    head = (f"{'':<26}{'cycles/token':>14}{'energy ops':>14}{'with memory':>14}"
            f"{'link B/token':>14}")
    rows = [("prefill", g["prefill"]), ("decode", g.get("decode"))]
    lines = [head + "   (energy in nJ/token)"]
    for name, ph in rows:
        if ph is None:
            continue
        t = ph["per_token"]
        what = (f"{name} ({ph['tokens']} tok)" if name == "prefill"
                else f"{name} ({ph['passes']} steps)")
        lines.append(f"{what:<26}{t['cycles']:>14,.0f}{t['compute_energy_pj'] / 1e3:>14,.2f}"
                     f"{t['energy_pj'] / 1e3:>14,.2f}{t['link_bytes']:>14,.0f}")
    if "decode_vs_prefill" in g:
        r = g["decode_vs_prefill"]
        cell = lambda v: f"{v:>13.2f}x" if v is not None else f"{'-':>14}"  # noqa: E731
        lines.append(f"{'decode / prefill':<26}{cell(r['cycles'])}"
                     f"{cell(r['compute_energy_pj'])}{cell(r['energy_pj'])}"
                     f"{cell(r['link_bytes'])}")
    return lines


def shapes(res: RunResult) -> list[tuple[int, int, int]]:
    """``(M, K, N)`` of every GEMM of the run (attention heads separately): the FP16 ANN's."""
    return [(r.m, r.k, r.n) for r in res.records for _ in r.heads or (None,)]


def write(report: dict, out: Path) -> None:
    """``report.json``, ``report.md`` and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    lines = [f"# Run report: {report['model']} ({report['tokens']} tokens)", "",
             f"Bit-exact against the golden model: **{report['bit_exact']}** "
             f"(every GEMM's outputs and counters, and the final hidden states).", "",
             f"Device: {report['device']}, config {report['config_hash']}; wall time "
             f"{report['wall_s']:.1f} s; link {report['link']['bytes']:,} bytes, "
             f"{report['link']['retries']} retries.", "",
             "| layer | M | K | N | T | cycles | predicted | ratio | spike util | MAC util | "
             "spikes | accumulates | MACs | link bytes | energy (nJ) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {r['m']} | {r['k']} | {r['n']} | {r['time_steps']} | "
            f"{r['measured_cycles']:,} | {r['predicted_cycles']:,} | {r['cycle_ratio']:.4f} | "
            f"{r['spike_util']:.0%} | {r['mac_util']:.0%} | {r['spike_events']:,} | "
            f"{r['accumulates']:,} | {r['macs']:,} | {r['link_bytes']:,} | "
            f"{r['energy_pj']['total'] / 1e3:,.1f} |")
    if "generation" in report:
        g = report["generation"]
        lines += ["", f"## Generation: prefill of {g['prompt_tokens']} tokens, "
                      f"{g['decode_steps']} decode steps", "",
                  f"Tokens {g['tokens']} (golden {g['golden_tokens']}); bit-exact: "
                  f"**{g['bit_exact']}**. The per-layer table above is the prefill's.", "",
                  "```", *generation_lines(g), "```"]
        if "float_tokens" in g:
            lines += ["", f"The float model's tokens: {g['float_tokens']} (agreement with the "
                          f"device's: {g['float_agreement']:.0%})."]
        if "baselines" in g.get("decode", {}):
            lines += ["", "### Decode steps against the baselines", ""]
            lines += baselines.markdown(g["decode"]["hybrid"], "hybrid (decode, device)",
                                        g["decode"]["baselines"], g["decode"]["reductions"])
        if "decode" in g:
            lines += ["", "| layer | prefill cycles/token | decode cycles/token | prefill nJ/token "
                      "(with memory) | decode nJ/token (with memory) | prefill link B/token | "
                      "decode link B/token |", "|---|---|---|---|---|---|---|"]
            for p, d in zip(g["prefill"]["layers"], g["decode"]["layers"], strict=True):
                lines.append(
                    f"| {p['name']} | {p['cycles_per_token']:,.0f} | "
                    f"{d['cycles_per_token']:,.0f} | {p['energy_pj_per_token'] / 1e3:,.2f} | "
                    f"{d['energy_pj_per_token'] / 1e3:,.2f} | "
                    f"{p['link_bytes_per_token']:,.0f} | {d['link_bytes_per_token']:,.0f} |")
    lines += ["", "## Against the baselines (operations only, and with memory traffic)", ""]
    lines += baselines.markdown(report["hybrid"], "hybrid (this run, device)",
                                report["baselines"], report["reductions"])
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(report, out)


def _plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    names = [r["name"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.25), 4))
    ax.bar([i - 0.2 for i in x], [r["predicted_cycles"] for r in rows], 0.4, label="predicted")
    ax.bar([i + 0.2 for i in x], [r["measured_cycles"] for r in rows], 0.4, label="measured")
    ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax.set_ylabel("cycles")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cycles.png", dpi=110)
    plt.close(fig)
    _energy_plot(report, out / "energy.png", plt)


#: What each bar of ``energy.png`` counts, per scheme (the plot's footnote).
ENERGY_NOTE = ("operations: accumulates, MACs and requantizations counted on the device "
               "(hybrid) or in the golden events of that conversion (W4A8, rate, TTFS 8-bit); "
               "FP16: dense multiply-accumulates x (fp16 mult + add). Memory: + SRAM traffic "
               "(hybrid: the device's counters; W4A8, rate, TTFS: predicted on this "
               "accelerator; FP16 operands once: every weight, activation and output moved "
               "once; FP16 dense dataflow: weights re-read per activation row per output "
               "tile, activations once per output tile, outputs once; 16-bit operands).")

#: Tick labels of the FP16 rows.
_LABELS = {baselines.FP16: "fp16 ANN\n(operands once)",
           baselines.FP16_DENSE: "fp16 ANN\n(dense dataflow)"}


def _energy_plot(report: dict, path: Path, plt) -> None:
    """Operations-only energy and energy with memory traffic, side by side per scheme, on a
    linear axis from zero (the hybrid on the accelerator first, then the baselines)."""
    schemes = [("hybrid W4A4&8\n(this run, device)", report["hybrid"])]
    schemes += [(_LABELS.get(b["name"]) or b["name"].replace(" (", "\n("), b)
                for b in report["baselines"]]
    ops = [s["compute_energy_pj"] / 1e6 for _, s in schemes]
    mem = [s["energy_pj"]["total"] / 1e6 for _, s in schemes]
    x = list(range(len(schemes)))
    fig, ax = plt.subplots(figsize=(9, 5))
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], ops, w, label="operations only")
    b2 = ax.bar([i + w / 2 for i in x], mem, w, label="operations + SRAM traffic")
    for bars in (b1, b2):
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
    ax.set_xticks(x, [name for name, _ in schemes], fontsize=8)
    ax.set_ylim(0, max([*mem, *ops, 1e-9]) * 1.12)
    ax.set_ylabel("energy for the whole input (µJ)")
    ax.set_title(f"Energy of {report['model']} on {report['tokens']} tokens, per scheme "
                 f"(linear axis from 0)", fontsize=10)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, ENERGY_NOTE, fontsize=6.5, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
