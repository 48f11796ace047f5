"""Design-space exploration: the accelerator configuration that minimises cycles per token
of the converted model within a target's resource budget.

Candidates are every power-of-two pair (spike lanes, MAC units), each with the buffer
depths the workload asks for (weight rows for the largest K, rows for the sequence, event
buffers for the densest row group) and, when that does not fit, smaller buffers (more
tiles; the halving that costs the fewest predicted cycles per resource freed first).
Each candidate gets a resource estimate (:mod:`gen.resources`) and, if it fits, a
cycle prediction over every GEMM of the measured forward pass (:mod:`accel.cycles`). The
choice is the *smallest* fitting candidate (fewest LUTs) whose cycles are within
``slack`` of the fastest: more lanes that the model's work split cannot keep busy are not
worth their LUTs. With the ``energy`` objective it is instead the fitting candidate whose
predicted energy with memory (a caller's function of the configuration and its
predictions) is least. Each candidate records what bound it (spike array, MAC array,
output unit or the resource that refused it).

Given a clock (:class:`gen.placed.Envelope`), a candidate must also be no larger than a
design placed and routed at that clock or faster; one whose lanes and MAC units are both
pinned is kept, with its clock called unproven (the user asked for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from accel.config import AccelConfig
from accel.cycles import GemmPrediction, gemm_cycles
from accel.encoder import codes_fit
from accel.workload import GemmWork

from .placed import TIMING, Envelope, Placed
from .resources import Budget, Resources, estimate


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class Candidate:
    """One configuration considered."""

    cfg: AccelConfig
    res: Resources
    refused: list[str] = field(default_factory=list)  #: what does not fit (empty: fits)
    cycles: int | None = None
    spike_work: int = 0
    mac_work: int = 0
    out_work: int = 0
    energy_pj: float | None = None  #: predicted energy with memory (the energy objective)
    placed: Placed | None = None  #: the placed design that vouches for its clock, if any

    @property
    def bound(self) -> str:
        """What limits the candidate."""
        if self.refused:
            return "resources: " + "; ".join(self.refused)
        work = {"spike array": self.spike_work, "MAC array": self.mac_work,
                "output unit": self.out_work}
        return max(work, key=work.get)

    def as_dict(self) -> dict:
        """JSON form (one row of the report's candidate table)."""
        return {"lanes": self.cfg.lanes, "mac_units": self.cfg.mac_units,
                "weight_depth": self.cfg.weight_depth, "max_rows": self.cfg.max_rows,
                "spike_event_depth": self.cfg.spike_event_depth,
                "mac_event_depth": self.cfg.mac_event_depth,
                "resources": self.res.as_dict(), "fits": not self.refused,
                "cycles": self.cycles, "bound": self.bound, "energy_pj": self.energy_pj,
                "placed": self.placed.as_dict() if self.placed else None,
                "spike_util": self.spike_work / self.cycles if self.cycles else None,
                "mac_util": self.mac_work / self.cycles if self.cycles else None}


@dataclass
class Sizing:
    """The outcome of :func:`size`."""

    chosen: Candidate
    candidates: list[Candidate]
    predictions: list[GemmPrediction]  #: per GEMM of the workload, for the chosen config
    why: str


class DoesNotFit(ValueError):
    """No configuration fits the budget; the message says what and by how much."""


def base_config(works: list[GemmWork], **over) -> AccelConfig:
    """Buffer depths the workload asks for (before any budget cut)."""
    max_k = max(g.k for g in works)
    max_m = max(g.m for g in works)
    row_ev = max(int(g.units.sum(axis=1).max(initial=0)) + g.steps + 1 for g in works)
    max_int = max(g.n_int for g in works) + 1
    rows = min(128, _pow2_ceil(max_m))
    max_steps = max(max(g.steps for g in works), max(g.encoding.time_steps for g in works), 1)
    # the spike lanes are as wide as the model's codes need (AccelConfig.mem_bits): the
    # config runs the model's encodings and windows, not every encoding there is
    kinds = tuple(sorted({g.encoding.kind for g in works}))
    d = dict(weight_depth=min(4096, _pow2_ceil(max_k)), max_rows=rows,
             spike_event_depth=max(1024, min(32768, _pow2_ceil(row_ev * rows))),
             mac_event_depth=max(256, min(8192, _pow2_ceil(max_int * rows))),
             max_steps=min(4095, max_steps), encodings=kinds)
    d.update(over)
    d.setdefault("spike_rows", min(16, d["max_rows"]))
    # the on-chip spike encoder, where the model has codes it encodes (its code buffer is
    # one row group of one K tile: a few block RAMs)
    d.setdefault("spike_encoder", any(codes_fit(g.encoding) for g in works))
    missing = sorted(set(kinds) - set(d["encodings"]))
    if missing:
        raise ValueError(f"the model's GEMMs use {', '.join(missing)} spikes, which the fixed "
                         f"encodings={'+'.join(d['encodings'])} leave out")
    return AccelConfig(**d)


def evaluate(cand: Candidate, works: list[GemmWork]) -> list[GemmPrediction]:
    """Fill in the candidate's predicted cycles; returns the per-GEMM predictions."""
    preds = [gemm_cycles(cand.cfg, g) for g in works]
    cand.cycles = sum(p.cycles for p in preds)
    cand.spike_work = sum(p.spike_cycles for p in preds)
    cand.mac_work = sum(p.mac_cycles for p in preds)
    cand.out_work = sum(p.out_cycles for p in preds)
    return preds


#: What the sizing minimises.
OBJECTIVES = ("speed", "energy")


#: How much slower than the fastest fitting candidate the chosen (smallest) one may be.
SLACK = 0.02


def size(works: list[GemmWork], budget: Budget, *, lanes: tuple[int, ...] = (8, 16, 32, 64,
         128, 256), slack: float = SLACK, fixed: dict | None = None, objective: str = "speed",
         energy_of: Callable[[AccelConfig, list[GemmPrediction]], float] | None = None,
         clock: Envelope | None = None) -> Sizing:
    """Choose the configuration; raises :class:`DoesNotFit` when nothing fits.

    ``fixed`` pins configuration fields (``{"lanes": 64}``) instead of exploring them.
    ``objective`` ``"speed"``: the smallest within ``slack`` of the fastest; ``"energy"``:
    the least ``energy_of(cfg, predictions)`` (pJ with memory), then the fewest cycles.
    ``clock``: refuse candidates larger than every design placed at its clock (none: no
    timing check).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if objective == "energy" and energy_of is None:
        raise ValueError("the energy objective needs an energy function")
    fixed = dict(fixed or {})
    base = base_config(works, **{k: v for k, v in fixed.items()
                                 if k not in ("lanes", "mac_units")})
    cands: list[Candidate] = []
    lane_opts = (fixed["lanes"],) if "lanes" in fixed else lanes
    for n_lanes in lane_opts:
        units = [u for u in (1, 2, 4, 8, 16, 32, 64, 128, 256) if u <= n_lanes]
        if "mac_units" in fixed:
            units = [fixed["mac_units"]]
        for u in units:
            cfg = replace(base, lanes=n_lanes, mac_units=u)
            cand = _fit_buffers(cfg, budget, fixed, works)
            cands.append(cand)
    pinned = "lanes" in fixed and "mac_units" in fixed
    preds = {}
    for c in cands:
        if clock is not None and not c.refused:
            c.placed = clock.covering(c.res)
            if c.placed is None and not pinned:
                c.refused.append(clock.refusal(c.res))
        if not c.refused:
            try:
                preds[id(c)] = evaluate(c, works)
            except ValueError as e:  # a row's events overflow the shrunken event buffers
                c.refused.append(str(e))
    fitting = [c for c in cands if not c.refused]
    if not fitting:
        # when some fit the die but not the clock, the smallest of those says why
        timed = [c for c in cands if c.refused[0].startswith(TIMING)]
        smallest = (min(timed, key=lambda c: (c.res.lut4, c.res.dsp)) if timed
                    else min(cands, key=lambda c: (c.res.bram, c.res.lut4)))
        raise DoesNotFit(
            f"no configuration fits the budget (LUT4 {budget.lut4}, MULT18X18D {budget.dsp}, "
            f"DP16KD {budget.bram}{_clock_text(clock)}); the smallest, lanes="
            f"{smallest.cfg.lanes} mac_units={smallest.cfg.mac_units} weight_depth="
            f"{smallest.cfg.weight_depth} max_rows={smallest.cfg.max_rows}: "
            f"{'; '.join(smallest.refused)}"
            + ("; pin lanes and mac_units (--fix) to build a design larger than the placed "
               "ones anyway, or size for a lower clock (--freq)" if timed else ""))
    fastest = min(fitting, key=lambda c: c.cycles)
    why = (f"{len(cands)} candidates, {len(fitting)} fit the budget; the fastest "
           f"(lanes={fastest.cfg.lanes}, mac_units={fastest.cfg.mac_units}) needs "
           f"{fastest.cycles} cycles; ")
    if objective == "energy":
        for c in fitting:
            c.energy_pj = float(energy_of(c.cfg, preds[id(c)]))
        chosen = min(fitting, key=lambda c: (c.energy_pj, c.cycles))
        why += (f"the chosen one needs the least energy with memory "
                f"({chosen.energy_pj / 1e6:.3f} uJ, {chosen.cycles} cycles, "
                f"{chosen.cycles / fastest.cycles:.2f}x the fastest's")
    else:
        near = [c for c in fitting if c.cycles <= fastest.cycles * (1 + slack)]
        chosen = min(near, key=lambda c: (c.res.lut4 + 100 * c.res.dsp, c.cycles))
        why += (f"the chosen one is the smallest within {slack:.0%} of it "
                f"({chosen.cycles} cycles")
    why += (f", bound by the {chosen.bound}; spike array "
            f"{chosen.spike_work / chosen.cycles:.0%} busy, MAC array "
            f"{chosen.mac_work / chosen.cycles:.0%} busy)")
    if clock is not None:
        why += (f"; its clock: no larger than {chosen.placed.name}, placed at "
                f"{chosen.placed.fmax_mhz:g} MHz ({chosen.placed.commit})" if chosen.placed
                else f"; its clock is unproven: larger than every design placed at "
                     f"{clock.clock_mhz:g} MHz or faster")
    return Sizing(chosen, cands, preds[id(chosen)], why)


def _clock_text(clock: Envelope | None) -> str:
    return "" if clock is None else f", no larger than a design placed at {clock.clock_mhz:g} MHz"


def _fit_buffers(cfg: AccelConfig, budget: Budget, fixed: dict,
                 works: list[GemmWork]) -> Candidate:
    """Halve buffers until the candidate fits; returns the last one tried, with what it
    overran.

    Each step halves the buffer that gives up the fewest predicted cycles of ``works`` per
    share of the overrun resources it frees (each resource's saving as a fraction of its
    budget), and the one that frees the most among those that cost nothing. A halving
    after which a row's events overflow their buffer is not taken. Halving the weight
    buffer adds K tiles (cycles, and a LOAD a tile on the board's link); halving an event
    buffer may cost nothing for the model at hand: the cheapest cut is taken first, not
    the biggest. When the unshrunk candidate overflows already (no cycles to compare), the
    step frees the most."""
    shrink = [f for f in SHRINKABLE if f not in fixed]
    floor = {"weight_depth": 64, "max_rows": 8, "spike_event_depth": 1024,
             "mac_event_depth": 256}
    start = cfg
    res = estimate(cfg)
    cycles = predicted_cycles(cfg, works)
    while True:
        over = budget.over(res)
        if not over:
            return _grow_back(start, Candidate(cfg, res), budget, works, cycles)
        options = []
        for f in shrink:
            if getattr(cfg, f) > floor[f]:
                try:
                    smaller = _resized(cfg, f, getattr(cfg, f) // 2, cfg.spike_rows, fixed)
                except ValueError:
                    continue
                r = estimate(smaller)
                freed = _freed(budget, res, r)
                if freed <= 0:
                    continue
                cyc = None if cycles is None else predicted_cycles(smaller, works)
                if cycles is not None and cyc is None:
                    continue  # a row's events no longer fit
                lost = 0 if cycles is None else max(0, cyc - cycles)
                options.append((lost / freed, -freed, r, smaller, cyc))
        if not options:
            return Candidate(cfg, res, over)
        _, _, res, cfg, cycles = min(options, key=lambda o: o[:2])


#: The buffer depths the sizer halves when a candidate does not fit.
SHRINKABLE = ("weight_depth", "max_rows", "spike_event_depth", "mac_event_depth")


def _resized(cfg: AccelConfig, f: str, value: int, slots: int, fixed: dict) -> AccelConfig:
    """``cfg`` with buffer ``f`` at ``value``; the row slots follow the rows (at most
    ``slots``) unless pinned."""
    new = {f: value}
    if f == "max_rows" and "spike_rows" not in fixed:
        new["spike_rows"] = min(slots, value)
    return replace(cfg, **new)


def _grow_back(start: AccelConfig, cand: Candidate, budget: Budget, works: list[GemmWork],
               cycles: int | None) -> Candidate:
    """Undo halvings the fitting candidate can afford: the small cuts taken first may leave
    room for a big one to be undone. Each step doubles back the buffer that saves the most
    predicted cycles and still fits, until none does."""
    if cycles is None:
        return cand
    while True:
        best = None
        for f in SHRINKABLE:
            if getattr(cand.cfg, f) < getattr(start, f):
                bigger = _resized(cand.cfg, f, getattr(cand.cfg, f) * 2, start.spike_rows, {})
                r = estimate(bigger)
                if budget.over(r):
                    continue
                cyc = predicted_cycles(bigger, works)
                if cyc is not None and cyc < (cycles if best is None else best[0]):
                    best = (cyc, Candidate(bigger, r))
        if best is None:
            return cand
        cycles, cand = best


def predicted_cycles(cfg: AccelConfig, works: list[GemmWork]) -> int | None:
    """Predicted cycles of ``works`` on ``cfg``; None when a row's events overflow its
    event buffers."""
    try:
        return sum(gemm_cycles(cfg, g).cycles for g in works)
    except ValueError:
        return None


def _freed(budget: Budget, before: Resources, after: Resources) -> float:
    """What a change frees of the resources ``before`` overruns, each as a share of its
    budget (LUTs of the usable fill)."""
    caps = {"lut4": int(budget.lut4 * budget.lut_fill), "dsp": budget.dsp, "bram": budget.bram}
    return sum((getattr(before, k) - getattr(after, k)) / max(cap, 1) for k, cap in caps.items()
               if getattr(before, k) > cap)
