"""``gen estimate``: the per-token cost of a model at its full size, from its configuration
alone (no weights), on a given accelerator (docs/estimate.md).

* **Shapes**: the model's configuration (a Hugging Face ``config.json``, or a built-in one
  in ``gen/archs/``) is read by :func:`models.arch.spec_from_dict` and its GEMMs listed by
  :func:`models.graph.gemm_nodes`, exactly as for a converted model.
* **Spike statistics** are borrowed: per GEMM kind (``q``, ``k``, ``v``, ``qk``, ``av``,
  ``o``, ``gate``, ``up``, ``down``) the encoding, the distribution of per-row silent
  fractions of the spike channels, the unit spikes of a sending input and the outlier
  (integer) channel fraction, measured on a converted model's forward pass of calibration
  text (:func:`accel.workload.measure`; MiniLM by default), or a synthetic distribution.
* **Workload**: synthetic :class:`accel.workload.GemmWork` of each kind drawn from those
  statistics (seeded), one layer and one head of each outlier class (every layer and head
  of a kind has the same shape and statistics, so their cost is the one computed times the
  count); prefill has ``tokens`` rows per GEMM (causal attention: row ``i`` sees keys
  ``<= i``), decode one row with ``tokens`` keys in the KV cache.
* **Cost**: the validated cycle model (:func:`accel.cycles.gemm_cycles`), buffer traffic
  (:func:`accel.counters.sram_bits`) and energy (:func:`models.energy.event_energy`) of the
  events the device counts under its tiling, per token, with the off-chip bytes, the
  bandwidth needed to keep the arrays busy at the clock, and what bounds the token rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from accel.config import PRESETS, AccelConfig
from accel.counters import sram_bits
from accel.cycles import GemmPrediction, gemm_cycles
from accel.layouts import BufId
from accel.protocol import BAUD, FRAME_OVERHEAD, MAX_PAYLOAD, UART_BITS_PER_BYTE, word_bytes
from accel.tiling import k_slices
from accel.workload import GemmWork
from models.arch import FAMILIES, ArchSpec, ModelInputError, _show, spec_from_dict
from models.checkpoint import read_json
from models.contract import WEIGHT_BITS, Events
from models.energy import event_energy
from models.golden import counted_events
from models.graph import gemm_nodes

from .estimate_report import eng
from .report import link_payload
from .resources import TARGETS as BUDGETS
from .resources import Budget
from .spike_stats import (
    KindStats,
    Stats,
    kind_of,
    load_stats,
)

#: Version of ``estimate.json``'s key set.
SCHEMA = 1
#: Built-in model configurations (Hugging Face ``config.json`` files, no weights).
ARCH_DIR = Path(__file__).parent / "archs"
#: Prefill GEMMs with more rows are evaluated in blocks of this many rows (or ``max_rows``
#: when larger): the ``[rows, K]`` unit arrays and spike lists stay small (docs/estimate.md).
ROW_BLOCK = 256
#: Fields of the workload record (optional ones are passed only where it has them).


def builtin_archs() -> list[str]:
    """Names of the built-in configurations."""
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


# -- the model's shapes -----------------------------------------------------------------
def read_arch(arch: str) -> tuple[str, ArchSpec]:
    """(label, spec) of a built-in name, a ``config.json`` file or a model directory.

    The file's fields go over the family's defaults as transformers would read them (the
    same merge as :func:`models.checkpoint.read_config`); every refusal is one line naming
    the file and field (:class:`~models.arch.ModelInputError`)."""
    if arch in builtin_archs():
        path = ARCH_DIR / f"{arch}.json"
    else:
        path = Path(arch)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelInputError(f"--arch {arch!r}: neither a built-in configuration "
                                  f"({', '.join(builtin_archs())}) nor a config.json file or "
                                  f"a directory holding one")
    where = str(path)
    raw = read_json(path)
    mt = raw.get("model_type")
    d = dict(raw)
    if isinstance(mt, str) and mt in FAMILIES:
        from transformers import CONFIG_MAPPING

        cls = CONFIG_MAPPING[mt]
        defaults = cls().to_dict()
        for k in ("head_dim", "num_key_value_heads", "n_inner", "word_embed_proj_dim"):
            defaults.pop(k, None)  # derived from other sizes when absent
        amap = getattr(cls, "attribute_map", {}) or {}
        d = defaults | {amap.get(k, k): v for k, v in raw.items()}
    spec = spec_from_dict(d, where)
    return (arch if arch in builtin_archs() else where), spec




@dataclass(frozen=True)
class KindShape:
    """One GEMM kind of a phase: the shape of one call (one head) and how many calls a
    token (prefill: the whole prompt) makes."""

    kind: str
    m: int
    k: int
    n: int
    heads: int  #: calls per layer (attention heads; 1 for linear layers)
    layers: int  #: layers holding it
    causal: bool  #: PV of a causal prefill: row i has inputs only for keys <= i

    @property
    def calls(self) -> int:
        """Calls per forward."""
        return self.heads * self.layers


def phase_shapes(spec: ArchSpec, phase: str, tokens: int) -> list[KindShape]:
    """The GEMM kinds of one forward, from :func:`models.graph.gemm_nodes`: ``prefill``
    (``tokens`` rows) or ``decode`` (one row; ``tokens`` keys in the KV cache, the new one
    included)."""
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be prefill or decode, not {phase!r}")
    m = tokens if phase == "prefill" else 1
    by_kind: dict[str, dict] = {}
    count: dict[str, int] = {}
    for nd in gemm_nodes(spec):
        kd = kind_of(nd["name"])
        shape = {x: tokens if nd[x] == "tokens" else nd[x] for x in ("K", "N")} | {
            "heads": nd["heads"]}
        if by_kind.setdefault(kd, shape) != shape:  # every layer is the same, by construction
            raise AssertionError(f"{nd['name']}: shape {shape} differs from {by_kind[kd]}")
        count[kd] = count.get(kd, 0) + 1
    return [KindShape(kd, m, s["K"], s["N"], s["heads"], count[kd],
                      spec.causal and kd == "av" and phase == "prefill")
            for kd, s in by_kind.items()]


# -- the synthetic workload ---------------------------------------------------------------
def outlier_split(st: KindStats, heads: int) -> list[tuple[float, int]]:
    """(integer-channel fraction, calls) for ``heads`` calls per layer: a linear layer
    (one call) gets the mean fraction, heads are shared among the measured fractions by
    largest remainder."""
    if heads == 1:
        return [(st.outlier_fraction, 1)]
    items = sorted(st.outliers.items())
    total = sum(s for _, s in items)
    want = [s / total * heads for _, s in items]
    got = [math.floor(w) for w in want]
    for i in sorted(range(len(items)), key=lambda i: got[i] - want[i])[:heads - sum(got)]:
        got[i] += 1
    return [(f, c) for (f, _), c in zip(items, got, strict=True) if c]


def synth_work(sh: KindShape, st: KindStats, frac: float, rng: np.random.Generator, *,
               rows: tuple[int, int] | None = None, name: str | None = None) -> GemmWork:
    """A :class:`GemmWork` of shape ``sh`` (rows ``rows = (r0, r1)`` of it) whose inputs
    follow ``st``: integer channels evenly spread (``round(frac * K)`` of them), each row's
    silent fraction from the measured per-row distribution (stratified, shuffled, then
    shifted to the measured mean), sending inputs' unit spikes from the measured
    distribution. The causal PV of a prefill has no input for keys after its row."""
    r0, r1 = rows or (0, sh.m)
    m, k = r1 - r0, sh.k
    enc = st.encoding
    int_mask = np.zeros(k, dtype=bool)
    if not enc.is_spiking:
        int_mask[:] = True
    else:
        n_int = min(k, round(frac * k))
        if n_int:
            int_mask[np.linspace(0, k, n_int, endpoint=False).astype(int)] = True
    q = np.asarray(st.row_silent, dtype=np.float64)
    levels = (np.arange(r0, r1) + 0.5) / sh.m
    silent = np.interp(levels, np.linspace(0, 1, len(q)), q)
    rng.shuffle(silent)
    silent = np.clip(silent + (st.silent_fraction - silent.mean()), 0, 1)
    send = rng.random((m, k), dtype=np.float32) >= silent[:, None].astype(np.float32)
    if sh.causal:
        send &= np.arange(k)[None, :] <= np.arange(r0, r1)[:, None]
    send[:, int_mask] = False
    vals = sorted(st.units)
    dtype = np.int8 if max(vals) < 128 else np.int16
    if vals == [1] or not enc.is_spiking:
        units = send.astype(dtype)
    else:
        p = np.array([st.units[v] for v in vals])
        units = np.where(send, rng.choice(np.array(vals, dtype=dtype), size=(m, k),
                                          p=p / p.sum()), 0).astype(dtype)
    if not enc.is_spiking:
        units[:] = 0
    # linear layers' weights are the contract's 4-bit codes; QK^T and PV multiply by int8
    # K and V (wider than the weight buffer's narrow half, where the cycle model has one)
    extra: dict = {"wide": sh.kind in ("qk", "av")}
    if enc.is_spiking and vals == [1]:
        # each sending input's one unit spike at a time step drawn from the measured ones
        # (the spike array's row slots share a weight read per step and input)
        r, c = np.nonzero(units)
        t = rng.choice(len(st.step_probs()), size=len(r), p=st.step_probs())
        extra["spikes"] = np.stack([r, t, c], axis=1).astype(np.int64)
    return GemmWork(name=name or f"layers.*.{sh.kind}", head=0 if sh.heads > 1 else None,
                    m=m, k=k, n=sh.n, encoding=enc, int_mask=int_mask, units=units, **extra)


def work_events(cfg: AccelConfig, g: GemmWork) -> Events:
    """The events the device counts for one GEMM under ``cfg``'s tiling (what
    :func:`accel.tiling.tiled_events` gives for a traced call): spikes repeat per output
    slice of ``lanes``, a TTFS window per K tile of ``k_tile`` rows that holds a spike
    channel. ``spikes`` counts unit spikes (equal for TTFS and binary rate spikes)."""
    units = int(g.units[:, ~g.int_mask].sum(dtype=np.int64))
    return counted_events(g.encoding, g.m, g.n, torch.from_numpy(~g.int_mask)[None], units,
                          units, cfg.k_tile, cfg.lanes)


@dataclass
class KindCost:
    """Cost of every call of one GEMM kind in one forward (all layers and heads)."""

    shape: KindShape
    n_int: list[int] = field(default_factory=list)  #: integer channels of each call class
    silent_fraction: float = 0.0
    cycles: int = 0
    spike_cycles: int = 0
    mac_cycles: int = 0
    out_cycles: int = 0
    descriptors: int = 0
    events: Events = field(default_factory=Events)
    sram_bits: int = 0
    weight_rows: int = 0  #: weight-buffer rows the host writes (resident rows reuse them)
    event_bytes: int = 0  #: event words the host writes (once when they stay resident)
    event_bytes_once: int = 0  #: the same if each row block's events were written once
    output_bytes: int = 0
    weight_bytes: int = 0  #: device format (``lanes``-wide rows, 4 or ``weight_bits`` bits)
    weight_bytes_once: int = 0  #: the same if every weight were written once per forward


def _scaled(ev: Events, c: int) -> Events:
    return Events(**{f.name: getattr(ev, f.name) * (c if f.name != "time_steps" else 1)
                     for f in fields(ev)})


def kind_cost(cfg: AccelConfig, sh: KindShape, st: KindStats, seed: int = 0) -> KindCost:
    """Predicted cost of every call of ``sh`` (one synthetic call per outlier class, in
    row blocks of :data:`ROW_BLOCK`, times its count)."""
    cost = KindCost(sh)
    wb = word_bytes(cfg)
    n_slices = -(-sh.n // cfg.lanes)
    k_tiles = len(k_slices(cfg, sh.k))
    silent_w = 0.0
    for frac, heads in outlier_split(st, sh.heads):
        rng = np.random.default_rng([seed, sh.m, sh.k, sh.n, round(frac * 1e6)])
        calls = heads * sh.layers
        groups = 0
        block = max(ROW_BLOCK, cfg.max_rows)
        for r0 in range(0, sh.m, block):
            g = synth_work(sh, st, frac, rng, rows=(r0, min(sh.m, r0 + block)))
            p: GemmPrediction = gemm_cycles(cfg, g)
            groups += p.descriptors // (n_slices * k_tiles)
            cost.cycles += p.cycles * calls
            cost.spike_cycles += p.spike_cycles * calls
            cost.mac_cycles += p.mac_cycles * calls
            cost.out_cycles += p.out_cycles * calls
            cost.descriptors += p.descriptors * calls
            cost.sram_bits += sram_bits(cfg, p.traffic()) * calls
            link = link_payload(cfg, p, g.raw)  # what gen build's report counts
            cost.event_bytes += link["events"] * calls
            cost.event_bytes_once += (p.spike_events * wb[BufId.SPIKE_EV]
                                      + p.mac_events * wb[BufId.MAC_EV]) * calls // n_slices
            cost.output_bytes += link["outputs"] * calls
            cost.events = cost.events + _scaled(work_events(cfg, g), calls)
            silent_w += g.silent_fraction * g.m * calls
        cost.n_int.append(int(g.n_int))
        # the host writes a K tile's weights once when all rows are resident (M <= max_rows;
        # accel.requests.BufferMirror keeps them), else once per row block
        loads = 1 if sh.m <= cfg.max_rows or n_slices * k_tiles == 1 else groups
        rows = sh.k * n_slices * calls
        cost.weight_rows += rows * loads
        # 4-bit weights cross the link as narrow rows (BufId.WEIGHTS4); the int8 K and V
        # of QK^T and PV (synth_work's ``wide``) as whole rows
        row_bytes = wb[BufId.WEIGHTS if g.wide else BufId.WEIGHTS4]
        cost.weight_bytes += rows * loads * row_bytes
        cost.weight_bytes_once += rows * row_bytes
    cost.silent_fraction = silent_w / (sh.m * sh.calls)
    return cost


# -- targets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """An accelerator instance and what feeds it."""

    name: str
    description: str
    budget: Budget
    config: AccelConfig | None  #: fixed configuration; None: sized for the budget
    clock_mhz: float
    memory: str  #: the off-chip weight store
    memory_bytes: int
    memory_bps: float  #: bytes per second
    link: str
    link_bps: float  #: bytes per second

    def as_dict(self) -> dict:
        """JSON form."""
        return {"name": self.name, "description": self.description,
                "budget": self.budget.as_dict(), "clock_mhz": self.clock_mhz,
                "memory": self.memory, "memory_bytes": self.memory_bytes,
                "memory_bytes_per_s": self.memory_bps, "link": self.link,
                "link_bytes_per_s": self.link_bps}


def uart(baud: int) -> tuple[str, float]:
    """A UART link's description and bytes per second (8N1: ten bits a byte)."""
    return f"UART {baud:,} baud 8N1", baud / UART_BITS_PER_BYTE


#: The named targets (``--target``).
TARGETS = {
    "ulx3s-85f": Target(
        "ulx3s-85f", "ULX3S 85F (LFE5U-85F), the ulx3s-85f preset (64 lanes, 16 MAC units), "
        "at the board top's 25 MHz clock", BUDGETS["ulx3s-85f"], PRESETS["ulx3s-85f"], 25.0,
        "SDRAM 32 MiB, 16-bit at 100 MHz", 32 * 2**20, 2 * 100e6, *uart(BAUD)),
    "large": Target(
        "large", "a larger ECP5-class device: 4x the LFE5U-85F budget, configuration sized "
        "by gen.sizing, at the 100 MHz goal clock", Budget(4 * 83_640, 4 * 156, 4 * 208),
        None, 100.0, "DDR3-1600 x64, 8 GiB", 8 * 2**30, 12.8e9, "PCIe Gen2 x4", 2.0e9),
}


def size_for(target: Target, spec: ArchSpec, stats: Stats, tokens: int, fixed: dict,
             seed: int = 0) -> tuple[AccelConfig, str]:
    """The target's configuration: its fixed one, or :func:`gen.sizing.size` on one layer
    of the prefill workload (at most 128 rows; heads repeated) with spike lanes 32..256."""
    if target.config is not None and not fixed:
        return target.config, "fixed preset"
    if target.config is not None:
        return replace(target.config, **fixed), "preset with --fix"
    from .sizing import size

    works = []
    for sh in phase_shapes(spec, "prefill", min(tokens, 128)):
        st = stats.of(sh.kind)
        for frac, heads in outlier_split(st, sh.heads):
            rng = np.random.default_rng([seed, sh.m, sh.k, sh.n, round(frac * 1e6)])
            works += [synth_work(sh, st, frac, rng)] * heads
    lanes = (fixed["lanes"],) if "lanes" in fixed else (32, 64, 128, 256)
    s = size(works, target.budget, lanes=lanes, fixed=fixed)
    return s.chosen.cfg, s.why


# -- the estimate ---------------------------------------------------------------------------
def phase_cost(cfg: AccelConfig, target: Target, spec: ArchSpec, stats: Stats, phase: str,
               tokens: int, table: dict, seed: int = 0) -> dict:
    """Per-token cost of one phase on one configuration (the report's ``phases`` entry)."""
    costs = [kind_cost(cfg, sh, stats.of(sh.kind), seed)
             for sh in phase_shapes(spec, phase, tokens)]
    per = tokens if phase == "prefill" else 1  # tokens the forward produces
    ev = Events()
    for c in costs:
        ev = ev + c.events
    cyc = sum(c.cycles for c in costs)
    sram = sum(c.sram_bits for c in costs)
    w_bytes = sum(c.weight_bytes for c in costs)
    w_once = sum(c.weight_bytes_once for c in costs)
    ev_bytes = sum(c.event_bytes for c in costs)
    ev_once = sum(c.event_bytes_once for c in costs)
    out_bytes = sum(c.output_bytes for c in costs)
    off = w_bytes + ev_bytes + out_bytes
    link = off + math.ceil(off / MAX_PAYLOAD) * FRAME_OVERHEAD
    compute_s = cyc / per / (target.clock_mhz * 1e6)
    # where the weights live: the off-chip memory when the model's weights (device format)
    # and KV cache fit it, else the host sends everything over the link
    store = model_bytes(spec, tokens, cfg.weight_bits)
    in_memory = store["device_total"] <= target.memory_bytes
    src, bps = (target.memory, target.memory_bps) if in_memory else (target.link,
                                                                     target.link_bps)
    moved = off if in_memory else link
    transfer_s = moved / per / bps
    work = {"spike array": sum(c.spike_cycles for c in costs),
            "MAC array": sum(c.mac_cycles for c in costs),
            "output unit": sum(c.out_cycles for c in costs)}
    if transfer_s <= compute_s:
        bound = max(work, key=work.get)
        why = f"the {bound} has the most work; the arrays outpace {src}"
    elif (moved - w_bytes - ev_bytes + w_once + ev_once) / per / bps <= compute_s:
        bound = "on-chip buffers"
        why = (f"the host writes the weights {w_bytes / w_once:.1f}x (rows beyond max_rows="
               f"{cfg.max_rows}) and the event words {ev_bytes / max(1, ev_once):.1f}x (once "
               f"per output slice) per forward; written once each, {src} would keep up")
    else:
        bound = ("memory" if in_memory else "link") + " bandwidth"
        why = (f"{src} moves {eng(bps, 'B/s')}, the arrays need "
               f"{eng(moved / per / compute_s, 'B/s')}")
        if not in_memory:
            why += (f" (the weights, {store['device_total'] / 2**20:,.0f} MiB in device "
                    f"format, do not fit {target.memory})")
    add = cfg.lane_bits(max(1, ev.time_steps))  # the spike lanes' additions at their width
    ops = event_energy(ev, table, 0, add)
    full = event_energy(ev, table, sram, add)
    base = fp16_rows(costs, cfg, table, per, ops["total"], full["total"])
    return {
        "phase": phase, "tokens": tokens, "rows": tokens if phase == "prefill" else 1,
        "cycles": cyc, "cycles_per_token": cyc / per,
        "compute_s_per_token": compute_s,
        "transfer_s_per_token": transfer_s,
        "time_s_per_token": max(compute_s, transfer_s),
        "time_s_per_token_serial": compute_s + transfer_s,
        "energy_pj_per_token": {"operations": ops["total"] / per, "with_sram": full["total"] / per,
                                "breakdown": {k: v / per for k, v in full.items()}},
        "events_per_token": {k: v / per for k, v in ev.as_dict().items()},
        "weight_bytes_per_token": w_bytes / per,
        "weight_bytes_once_per_token": w_once / per,
        "offchip_bytes_per_token": off / per,
        "offchip_per_token": {"weights": w_bytes / per, "events": ev_bytes / per,
                              "outputs": out_bytes / per, "weights_once": w_once / per,
                              "events_once": ev_once / per},
        "link_bytes_per_token": link / per,
        "bandwidth_needed_bytes_per_s": moved / per / compute_s if compute_s else None,
        "weights_from": src, "weights_fit_memory": in_memory,
        "available_bytes_per_s": bps,
        "spike_util": work["spike array"] / cyc if cyc else None,
        "mac_util": work["MAC array"] / cyc if cyc else None,
        "bound": bound, "bound_why": why,
        "time_steps": max((stats.of(c.shape.kind).encoding.time_steps for c in costs),
                          default=1),
        "fp16": base,
        "kinds": [kind_row(c, per) for c in costs],
    }


def fp16_rows(costs: list[KindCost], cfg: AccelConfig, table: dict, per: int,
              ops_pj: float, full_pj: float) -> list[dict]:
    """The FP16 ANN baselines of :mod:`accel.baselines` for the same GEMMs (operands moved
    once, and a dense dataflow like this engine's), per token, with the hybrid's energy
    reductions against them: operations only (what Kirin reports) and with memory."""
    from accel.baselines import FP16, FP16_DENSE, fp16_baseline

    shapes = [(c.shape.m, c.shape.k, c.shape.n) for c in costs for _ in range(c.shape.calls)]
    out = []
    for name, lanes in ((FP16, None), (FP16_DENSE, cfg.lanes)):
        b = fp16_baseline(name, shapes, table, lanes)
        ops, full = b["compute_energy_pj"] / per, b["energy_pj"]["total"] / per
        out.append({"name": name, "memory_model": b["memory_model"],
                    "energy_pj_per_token": {"operations": ops, "with_sram": full},
                    "compute_energy_reduction_pct": 100 * (1 - ops_pj / per / ops),
                    "energy_reduction_pct": 100 * (1 - full_pj / per / full)})
    return out


def kind_row(c: KindCost, per: int) -> dict:
    """One GEMM kind's row of a phase (all its layers and heads, per token)."""
    sh = c.shape
    return {"kind": sh.kind, "m": sh.m, "k": sh.k, "n": sh.n, "heads": sh.heads,
            "layers": sh.layers, "outlier_channels": c.n_int,
            "silent_fraction": c.silent_fraction, "cycles_per_token": c.cycles / per,
            "descriptors_per_token": c.descriptors / per,
            "spike_array_cycles_per_token": c.spike_cycles / per,
            "mac_array_cycles_per_token": c.mac_cycles / per,
            "weight_bytes_per_token": c.weight_bytes / per,
            "accumulates_per_token": c.events.accumulates / per,
            "macs_per_token": c.events.macs / per}


def model_bytes(spec: ArchSpec, tokens: int, weight_bits: int) -> dict:
    """Bytes of the GEMM weights (4-bit codes; the device stores ``weight_bits``) and of the
    int8 KV cache at ``tokens`` tokens (embeddings, norms and the LM head are host work)."""
    lin = sum(n["K"] * n["N"] for n in gemm_nodes(spec) if n["kind"] == "linear")
    kv = 2 * spec.layers * spec.kv_heads * spec.head_dim * tokens
    return {"linear_weights": lin, "linear_4bit": lin * WEIGHT_BITS // 8,
            "device_weights": lin * weight_bits // 8, "kv_cache_int8": kv,
            "device_total": lin * weight_bits // 8 + kv}


@dataclass
class EstimateOptions:
    """What ``gen estimate`` was asked for."""

    arch: str
    tokens: int = 128
    targets: list[str] = field(default_factory=lambda: ["ulx3s-85f", "large"])
    budget: Budget | None = None  #: an extra target ``budget`` sized for this budget
    fixed: dict = field(default_factory=dict)
    clock_mhz: float | None = None  #: overrides every target's clock
    baud: int | None = None  #: overrides the ULX3S link's baud rate
    stats: str = "minilm"
    calib_tokens: int = 64
    energy_table: str | None = None
    seed: int = 0
    cache: bool = True


MAX_TOKENS = 2048


def estimate(o: EstimateOptions, stats: Stats | None = None) -> dict:
    """Run the estimate; returns the report (``estimate.json``)."""
    from models.energy import load_table

    if not 1 <= o.tokens <= MAX_TOKENS:
        raise ModelInputError(f"--tokens must be in 1..{MAX_TOKENS}, not {_show(o.tokens)}")
    for name, v in (("--calib-tokens", o.calib_tokens), ("--baud", o.baud),
                    ("--clock-mhz", o.clock_mhz)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ModelInputError(f"{name} must be positive, not {_show(v)}")
    label, spec = read_arch(o.arch)
    if o.tokens > spec.max_positions:
        raise ModelInputError(f"--tokens {o.tokens} exceeds {label}'s "
                              f"max_position_embeddings={spec.max_positions}")
    table = load_table(o.energy_table)
    stats = stats or load_stats(o.stats, o.calib_tokens, o.cache)
    for sh in phase_shapes(spec, "prefill", 1):
        stats.of(sh.kind)  # refuse a missing kind before any work
    targets = []
    for name in o.targets:
        if name not in TARGETS:
            raise ModelInputError(f"--target {name!r}: one of {', '.join(TARGETS)}")
        targets.append(TARGETS[name])
    if o.budget is not None:
        base = TARGETS["large"]
        targets.append(replace(base, name="budget", budget=o.budget,
                               description=f"a device with {o.budget.lut4:,} LUT4, "
                               f"{o.budget.dsp} MULT18X18D, {o.budget.bram} DP16KD "
                               f"(configuration sized by gen.sizing), memory and link as "
                               f"'large'"))
    out_targets = []
    for t in targets:
        if o.clock_mhz is not None:
            t = replace(t, clock_mhz=o.clock_mhz)
        if o.baud is not None and t.link.startswith("UART"):
            desc, bps = uart(o.baud)
            t = replace(t, link=desc, link_bps=bps)
        cfg, why = size_for(t, spec, stats, o.tokens, o.fixed, o.seed)
        from .resources import estimate as resources

        phases = {ph: phase_cost(cfg, t, spec, stats, ph, o.tokens, table, o.seed)
                  for ph in ("prefill", "decode")}
        d = phases["decode"]["cycles_per_token"] / phases["prefill"]["cycles_per_token"]
        out_targets.append(t.as_dict() | {
            "config": cfg.to_json(), "config_hash": cfg.hash_text, "config_why": why,
            "resources": resources(cfg).as_dict(), "phases": phases,
            "decode_over_prefill_cycles": d})
    return {
        "schema": SCHEMA,
        "arch": {"name": label, "spec": spec.to_json(),
                 "bytes": model_bytes(spec, o.tokens, 8)},
        "tokens": o.tokens,
        "statistics": stats.to_json(),
        "energy_table": o.energy_table or "default (Horowitz 45 nm)",
        "energy_table_pj": table,
        "seed": o.seed,
        "targets": out_targets,
        "notes": [
            "Per token: prefill = the cost of the whole prompt of `tokens` tokens divided "
            "by `tokens`; decode = one step with `tokens` keys in the KV cache.",
            "Cycles are the engine's busy cycles (accel.cycles, exact for the given events); "
            "host work (norms, softmax, rotary, embeddings, LM head) and link latency are "
            "not counted. time_s_per_token overlaps transfers with compute; "
            "time_s_per_token_serial does not (today's gateware).",
            "Energy: operations (spike accumulates, MACs, requantization) and on-chip "
            "buffer traffic; off-chip memory and link energy are not counted.",
            "Spike statistics are borrowed from `statistics.source`, not measured on this "
            "model.",
        ],
    }
