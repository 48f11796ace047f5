"""Run a converted model on the accelerator: every linear layer and both attention matmuls
on the device, the nonlinear parts on the host exactly as the golden model defines them,
and every GEMM's result checked against the golden model computed from the same inputs.

The device's results feed the rest of the forward pass (``GoldenOps.execute``), so the
final hidden states are compared too: ``bit_exact`` is true only if every GEMM's output,
every GEMM's event counters and the final hidden states equal the golden model's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from accel.counters import GOLDEN_EVENTS
from accel.cycles import gemm_cycles
from accel.tiling import plan_gemm, tiled_events
from accel.workload import GemmWork
from models.contract import Events
from models.convert import ConvertedModel
from models.golden import GemmCall, run_golden

from .driver import Device


@dataclass
class GemmRecord:
    """One GEMM (one head) as run on the device."""

    name: str
    head: int | None
    m: int
    k: int
    n: int
    counters: dict  #: counter deltas over this GEMM
    expected: Events  #: golden events with the same tiling
    predicted_cycles: int
    predicted_traffic: dict  #: ``accel.counters.TRAFFIC`` counts predicted by ``accel.cycles``
    link_bytes: int
    exact: bool  #: outputs equal the golden outputs
    counters_match: bool  #: ``accel.counters.GOLDEN_EVENTS`` counters equal the golden events


@dataclass
class RunResult:
    """Everything a report needs."""

    hidden: torch.Tensor
    golden_hidden: torch.Tensor
    golden_events: dict[str, Events]
    records: list[GemmRecord] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def bit_exact(self) -> bool:
        """Outputs, counters and final hidden states all equal the golden model's."""
        return (torch.equal(self.hidden, self.golden_hidden)
                and all(r.exact and r.counters_match for r in self.records))


def check_program(entry: dict, call: GemmCall, plan) -> None:
    """The generator's compiled program (``program.json``) must tile this GEMM the way the
    driver does; a bundle from another generator version is refused here, by GEMM."""
    where = f"{call.name}" + ("" if call.head is None else f"[head {call.head}]")
    if (entry["gemm"], entry["head"]) != (call.name, call.head):
        raise ValueError(f"program.json: expected GEMM {entry['gemm']}[{entry['head']}], the "
                         f"model runs {where}: the bundle does not belong to this model")
    if (entry["k"], entry["n"]) != (call.codes.shape[1], call.w.shape[0]):
        return  # attention shapes follow the sequence length; the program has the calibration's
    # (N range, number of K tiles) of every output slice
    mine = sorted({(n0, n1, len(imgs)) for _, _, n0, n1, imgs in plan.slices})
    per_n: dict[tuple, int] = {}
    for t in entry["tiles"]:
        per_n[tuple(t["n"])] = per_n.get(tuple(t["n"]), 0) + 1
    theirs = sorted((n0, n1, k) for (n0, n1), k in per_n.items())
    if mine != theirs:
        raise ValueError(f"program.json: {where} is tiled {theirs} there, {mine} here "
                         f"(N range, K tiles)")


def plan_call(cfg, call: GemmCall):
    """The device's tiling of one traced GEMM (``accel.tiling.plan_gemm``)."""
    where = call.name + ("" if call.head is None else f"[head {call.head}]")
    return plan_gemm(cfg, call.codes, call.int_mask, call.shifts, call.encoding, call.w,
                     start=call.start, consts=call.consts, mrow=call.mrow, shift=call.shift,
                     raw=call.raw, where=where)


def run_gemm(dev: Device, call: GemmCall, plan=None,
             before: dict | None = None) -> tuple[torch.Tensor, GemmRecord, dict]:
    """Run one GEMM on ``dev`` and compare it with the golden model: its outputs, its
    counter deltas against the golden events under the device's tiling, and the cycle
    model's prediction. ``before`` is the counters before it (read if not given); returns
    the outputs, the record and the counters after it (the next GEMM's ``before``)."""
    cfg = dev.cfg
    plan = plan if plan is not None else plan_call(cfg, call)
    bytes0 = dev.link_bytes()
    before = before if before is not None else dev.counters()
    y = dev.gemm(plan)
    after = dev.counters()
    delta = {k: after[k] - before[k] for k in after}
    ev = tiled_events(cfg, call)
    pred = gemm_cycles(cfg, GemmWork.of(call))
    rec = GemmRecord(
        call.name, call.head, call.codes.shape[0], call.codes.shape[1], call.w.shape[0],
        delta, ev, pred.cycles, pred.traffic(), dev.link_bytes() - bytes0,
        torch.equal(y, call.y),
        all(delta[c] == getattr(ev, f) for c, f in GOLDEN_EVENTS.items()))
    return y, rec, after


def run_model(cm: ConvertedModel, ids: torch.Tensor, dev: Device, progress=None,
              program: list[dict] | None = None, golden: tuple | None = None) -> RunResult:
    """Forward ``ids`` with every GEMM on ``dev``; see module doc. With ``program`` (the
    bundle's compiled program) each GEMM's tiling is checked against it. ``golden``: the
    result of ``run_golden(cm, ids)`` if the caller has it already."""
    cfg = dev.cfg
    order = iter(program) if program is not None else None
    golden_hidden, golden_events = golden if golden is not None else run_golden(cm, ids)
    dev.identify()
    res = RunResult(golden_hidden, golden_hidden, golden_events)
    last = {"counters": dev.counters()}  # each GEMM's "after" is the next one's "before"

    def execute(call: GemmCall) -> torch.Tensor:
        where = call.name + ("" if call.head is None else f"[head {call.head}]")
        plan = plan_call(cfg, call)
        if order is not None:
            entry = next(order, None)
            if entry is None:
                raise ValueError(f"program.json ends before {where}")
            check_program(entry, call, plan)
        y, rec, last["counters"] = run_gemm(dev, call, plan, last["counters"])
        res.records.append(rec)
        if progress is not None:
            progress.update()
        return y

    t0 = time.perf_counter()
    res.hidden, _ = run_golden(cm, ids, execute=execute)
    res.wall_s = time.perf_counter() - t0
    return res
