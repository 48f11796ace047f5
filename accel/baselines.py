"""The baselines a hybrid model is compared with, and the reductions against them: one
computation for ``host run`` (the hybrid as the device counted it) and ``gen build`` (the
hybrid as the cycle model predicts it), so both reports carry the same rows, figures and
memory models (``docs/host.md``).

Every scheme is charged twice: **operations only** (``compute_energy_pj``: accumulates,
MACs and requantizations, or FP16 multiply-accumulates; the figure the spiking-LLM papers
report) and **with memory** (``energy_pj.total``: the same plus on-chip buffer traffic at
``sram_64b`` per 64 bits). Which traffic each scheme is charged is its ``memory_model``:

* hybrid: the device's traffic counters (``host run``) or the cycle model's predicted
  traffic (``gen build``), in bits by :func:`accel.counters.sram_bits`;
* ``fp16`` (operands moved once): every weight, activation and output moved once at 16 bits,
  the memory model most favourable to FP16;
* ``fp16 (dense dataflow)``: FP16 on a dense dataflow like this engine's: each activation
  row re-reads the ``K x lanes`` weights of its output tile (``M * K * N`` weights), the
  activations are read once per output tile, the outputs written once, all at 16 bits;
* the accelerator baselines (W4A8, rate, TTFS 8-bit): that conversion's golden events on the
  same tokens under the device's tiling, and the traffic the cycle model predicts for it on
  this accelerator.

Pure Python on top of ``models`` and ``accel`` (no gateware, nothing of ``gen`` or ``host``):
the caller converts the baselines (the host directly, the generator through its cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from accel.config import AccelConfig
from accel.counters import TRAFFIC, sram_bits
from accel.cycles import GemmPrediction, gemm_cycles
from accel.tiling import tiled_events
from accel.workload import GemmWork
from models.contract import Events
from models.convert import ConvertedModel, ConvertOptions
from models.encodings import Encoding
from models.energy import event_energy, fp16_energy
from models.golden import GemmCall, run_golden

#: The FP16 ANN with its operands moved once (the memory model most favourable to FP16).
FP16 = "fp16"
#: The FP16 ANN on a dense dataflow like this engine's.
FP16_DENSE = "fp16 (dense dataflow)"
#: Baselines converted from the same model and run on this accelerator: (name, encoding).
CONVERTED: tuple[tuple[str, Encoding], ...] = (
    ("w4a8 (int8, T=1)", Encoding("int", 8)), ("rate T=8", Encoding("rate", steps=8)),
    ("ttfs 8-bit (T=255)", Encoding("ttfs", 8)))
#: Every baseline, in report order.
NAMES = (FP16, FP16_DENSE, *(n for n, _ in CONVERTED))

#: What each scheme's "with memory" energy charges, in one line (the ``memory_model`` key).
MEMORY_MODELS = {
    "measured": "SRAM traffic counted by the device's traffic counters",
    "predicted": "SRAM traffic the cycle model predicts on this accelerator",
    FP16: "every weight, activation and output moved once at 16 bits (most favourable "
          "to FP16)",
    FP16_DENSE: "dense dataflow like this engine's: each activation row re-reads its output "
                "tile's K x lanes weights, activations read once per output tile, outputs "
                "written once, 16 bits",
    "converted": "SRAM traffic the cycle model predicts for this conversion on this "
                 "accelerator",
}


def options(enc: Encoding) -> ConvertOptions:
    """Conversion options of an accelerator baseline: only its event counts are used, so a
    light calibration is enough."""
    return ConvertOptions(encoding=enc, calib_sentences=8, gptq=False, weight_search="weight",
                          bias_correction=False, smooth_vo=0, distill_epochs=0,
                          min_spike_share=0)


def time_steps(cm: ConvertedModel) -> int:
    """Time steps of the model's longest spiking window (1 when nothing spikes)."""
    return max((n.act.encoding.time_steps for n in cm.nodes.values()
                if n.act.encoding.is_spiking), default=1)


def total(events: Iterable[Events]) -> Events:
    """The sum of per-layer events."""
    out = Events()
    for ev in events:
        out = out + ev
    return out


def traffic_sum(traffic: Iterable[dict]) -> dict:
    """:data:`accel.counters.TRAFFIC` counts summed over GEMMs or layers."""
    out = dict.fromkeys(TRAFFIC, 0)
    for t in traffic:
        for k in TRAFFIC:
            out[k] += t[k]
    return out


def windows(pairs: Iterable[tuple[int, Events]]) -> dict[int, Events]:
    """Events summed per time-step window: ``pairs`` of (a GEMM's or layer's window, its
    events), e.g. ``(encoding.time_steps, events)`` of every layer. What :func:`scheme`
    charges, each window's spike additions at the lane width that window needs."""
    out: dict[int, Events] = {}
    for steps, ev in pairs:
        out[steps] = out.get(steps, Events()) + ev
    return out


def scheme(name: str, steps: int, events: Events | Mapping[int, Events], table: dict,
           traffic: dict, memory_model: str, cfg: AccelConfig) -> dict:
    """A scheme on this accelerator: energy of its events, operations only and with the SRAM
    bits of its :data:`~accel.counters.TRAFFIC` counts. ``events``: one :class:`Events`,
    whose spike lanes' additions are charged at the width a window of ``steps`` needs
    (``AccelConfig.lane_bits``: codes up to ``steps``), or the events per window
    (:func:`windows`), each window's additions at its own width (a model whose GEMMs have
    different windows, e.g. PV's unsigned 15-step window beside the others' 7: the sum of
    its layers' energies). ``steps`` is the scheme's reported time steps (its longest
    window); ``windows`` in the result gives each window's lane width and energy."""
    per = dict(events) if isinstance(events, Mapping) else {steps: events}
    bits = sram_bits(cfg, traffic)
    energy = dict.fromkeys(("spike_accumulate", "mac", "requantize", "sram"), 0.0)
    rows = []
    for w in sorted(per):
        add = cfg.lane_bits(w)  # the lanes an accelerator for this window needs
        e = event_energy(per[w], table, add_bits=add)
        for k in energy:
            energy[k] += e[k]
        rows.append({"time_steps": w, "lane_bits": add, "compute_energy_pj": e["total"]})
    energy["sram"] = event_energy(Events(), table, bits)["sram"]
    energy["total"] = sum(energy.values())
    return {"name": name, "time_steps": steps,
            "lane_bits": max((r["lane_bits"] for r in rows), default=cfg.lane_bits(steps)),
            "windows": rows, "compute_energy_pj": sum(r["compute_energy_pj"] for r in rows),
            "energy_pj": energy, "traffic": dict(traffic), "sram_bits": bits,
            "memory_model": memory_model}


def fp16_operands(shapes: Iterable[tuple[int, int, int]], lanes: int | None = None) -> dict:
    """16-bit values an FP16 ANN moves for GEMMs of shapes ``(M, K, N)``: weights,
    activations and outputs once each (``lanes`` None), or on a dense dataflow with output
    tiles of ``lanes`` channels (each activation row re-reads its tile's ``K x lanes``
    weights: ``M * K * N``; activations read once per output tile; outputs written once)."""
    w = a = o = 0
    for m, k, n in shapes:
        tiles = 1 if lanes is None else math.ceil(n / lanes)
        w += k * n * (1 if lanes is None else m)
        a += m * k * tiles
        o += m * n
    return {"weights": w, "activations": a, "outputs": o}


def fp16_baseline(name: str, shapes: list[tuple[int, int, int]], table: dict,
                  lanes: int | None = None) -> dict:
    """An FP16 ANN baseline: dense multiply-accumulates x (fp16 mult + add), and the 16-bit
    operands of :func:`fp16_operands` as SRAM traffic."""
    macs = sum(m * k * n for m, k, n in shapes)
    moved = fp16_operands(shapes, lanes)
    bits = 16 * sum(moved.values())
    e = fp16_energy(macs, table, bits)
    return {"name": name, "time_steps": 1, "macs": macs, "compute_energy_pj": e["fp16_mac"],
            "energy_pj": e, "operands_moved": moved, "sram_bits": bits,
            "memory_model": MEMORY_MODELS[name]}


def trace(cm: ConvertedModel, ids) -> list[GemmCall]:
    """Every GEMM of one golden forward pass of ``cm`` on ``ids`` (heads separately)."""
    calls: list[GemmCall] = []
    run_golden(cm, ids, trace=calls)
    return calls


def predicted(cfg: AccelConfig, name: str, steps: int, calls: list[GemmCall], table: dict,
              memory_model: str, preds: list[GemmPrediction] | None = None,
              ) -> tuple[dict, dict[str, Events]]:
    """A scheme as the generator predicts it on this accelerator (the one prediction pipeline
    of ``gen build`` and the host's baselines): the golden events of every traced GEMM under
    the device's tiling (``accel.tiling.tiled_events``: what the counters will count), each
    GEMM's spike additions charged at the lane width of its own window
    (``encoding.time_steps``, :func:`windows`), and the cycles and traffic
    ``accel.cycles.gemm_cycles`` predicts (``preds``, when the caller has them already, in
    trace order). ``steps``: the scheme's reported time steps (its longest window,
    :func:`time_steps`). Returns the scheme and its events per layer."""
    if preds is None:
        preds = [gemm_cycles(cfg, GemmWork.of(c)) for c in calls]
    if len(preds) != len(calls):
        raise ValueError(f"{len(preds)} predictions for {len(calls)} GEMMs")
    layers: dict[str, Events] = {}
    per_window: list[tuple[int, Events]] = []
    for c in calls:
        ev = tiled_events(cfg, c)
        layers[c.name] = layers.get(c.name, Events()) + ev
        per_window.append((c.encoding.time_steps, ev))
    s = scheme(name, steps, windows(per_window), table,
               traffic_sum(p.traffic() for p in preds), memory_model, cfg)
    s["predicted_cycles"] = sum(p.cycles for p in preds)
    return s, layers


def converted_baseline(cfg: AccelConfig, name: str, cm: ConvertedModel, ids,
                       table: dict) -> dict:
    """An accelerator baseline: ``cm`` (a conversion of the same model) on the same tokens,
    predicted on this accelerator (:func:`predicted`)."""
    return predicted(cfg, name, time_steps(cm), trace(cm, ids), table,
                     MEMORY_MODELS["converted"])[0]


def _pct(a: float, b: float) -> float | None:
    return None if not b else 100.0 * (1 - a / b)


def reductions(hybrid: dict, base: dict) -> dict:
    """The hybrid against one baseline, in percent (100 x (1 - hybrid / baseline)): energy
    operations only, energy with memory, time steps."""
    return {"baseline": base["name"], "memory_model": base["memory_model"],
            "compute_energy_reduction_pct": _pct(hybrid["compute_energy_pj"],
                                                 base["compute_energy_pj"]),
            "energy_reduction_pct": _pct(hybrid["energy_pj"]["total"],
                                         base["energy_pj"]["total"]),
            # an FP16 ANN has no time steps to compare with (null, not -600 %)
            "time_step_reduction_pct": None if base["name"] in (FP16, FP16_DENSE)
            else _pct(hybrid["time_steps"], base["time_steps"])}


def compare(cfg: AccelConfig, table: dict, hybrid: dict, shapes: list[tuple[int, int, int]],
            converted: list[dict]) -> dict:
    """The report's ``baselines`` (FP16 moved once, FP16 on the dense dataflow, then the
    ``converted`` accelerator baselines) and ``reductions`` (one per baseline, same order).
    ``shapes``: ``(M, K, N)`` of every GEMM the hybrid ran (attention heads separately)."""
    base = [fp16_baseline(FP16, shapes, table), fp16_baseline(FP16_DENSE, shapes, table,
                                                              cfg.lanes), *converted]
    return {"baselines": base, "reductions": [reductions(hybrid, b) for b in base]}


def _fmt_pct(p: float | None) -> str:
    return "" if p is None else f"{p:.2f} %"


def markdown(hybrid: dict, hybrid_label: str, baselines: list[dict],
             reds: list[dict]) -> list[str]:
    """The baselines table of ``report.md`` (both reports), and what its columns count."""
    lines = ["| | memory model | time steps | operations only (uJ) | with memory (uJ) | cycles "
             "| reduction, operations only | reduction, with memory | time-step reduction |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cycles(s):
        for k, how in (("measured_cycles", "measured"), ("predicted_cycles", "predicted")):
            if k in s:
                return f"{s[k]:,} ({how})"
        return ""

    lines.append(f"| {hybrid_label} | {hybrid['memory_model']} | {hybrid['time_steps']} | "
                 f"{hybrid['compute_energy_pj'] / 1e6:.3f} | "
                 f"{hybrid['energy_pj']['total'] / 1e6:.3f} | {cycles(hybrid)} | | | |")
    for b, r in zip(baselines, reds, strict=True):
        lines.append(f"| {b['name']} | {b['memory_model']} | {b['time_steps']} | "
                     f"{b['compute_energy_pj'] / 1e6:.3f} | {b['energy_pj']['total'] / 1e6:.3f}"
                     f" | {cycles(b)} | {_fmt_pct(r['compute_energy_reduction_pct'])} | "
                     f"{_fmt_pct(r['energy_reduction_pct'])} | "
                     f"{_fmt_pct(r['time_step_reduction_pct'])} |")
    lines += ["", "Operations only: accumulates, MACs and requantizations (FP16: multiply-"
              "accumulates x (fp16 mult + add)), as the spiking-LLM papers count. With memory: "
              "plus on-chip buffer traffic at `sram_64b` per 64 bits, charged by each row's "
              "memory model. Reductions: 100 x (1 - hybrid / baseline). Accelerator "
              "baselines: golden events of that conversion on the same tokens."]
    return lines
