"""Run a converted model on the accelerator: every linear layer and both attention matmuls
on the device, the nonlinear parts on the host exactly as the golden model defines them,
and every GEMM's result checked against the golden model computed from the same inputs.

The device's results feed the rest of the forward pass (``GoldenOps.execute``), so the
final hidden states are compared too: ``bit_exact`` is true only if every GEMM's output,
every GEMM's event counters and the final hidden states equal the golden model's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from gen.cycles import gemm_cycles
from gen.workload import GemmWork
from hw.tile import plan_gemm
from models.contract import Events
from models.convert import ConvertedModel
from models.golden import GemmCall, gemm, run_golden

from .driver import Device

#: Counters compared with the golden events of each GEMM (counter -> Events field).
CHECKED = {"spikes": "spike_units", "acc_spike": "acc_spike", "acc_step": "acc_step",
           "macs": "macs", "out_wr": "outs"}


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
    link_bytes: int
    exact: bool  #: outputs equal the golden outputs
    counters_match: bool  #: CHECKED counters equal the golden events


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


def expected_events(call: GemmCall, cfg) -> Events:
    """Golden events of ``call`` under the device's tiling (spikes repeat per N tile, TTFS
    steps per K tile)."""
    k, n = call.codes.shape[1], call.w.shape[0]
    _, ev = gemm(call.codes[None], call.int_mask[None], call.shifts[None], call.encoding,
                 call.w[None], call.start, call.name, k_tiles=max(1, math.ceil(k /
                                                                      cfg.weight_depth)),
                 n_tiles=math.ceil(n / cfg.lanes))
    return ev


def run_model(cm: ConvertedModel, ids: torch.Tensor, dev: Device, progress=None) -> RunResult:
    """Forward ``ids`` with every GEMM on ``dev``; see module doc."""
    cfg = dev.cfg
    golden_hidden, golden_events = run_golden(cm, ids)
    dev.identify()
    res = RunResult(golden_hidden, golden_hidden, golden_events)

    def execute(call: GemmCall) -> torch.Tensor:
        where = call.name + ("" if call.head is None else f"[head {call.head}]")
        plan = plan_gemm(cfg, call.codes, call.int_mask, call.shifts, call.encoding, call.w,
                         start=call.start, consts=call.consts, mrow=call.mrow,
                         shift=call.shift, where=where)
        bytes0 = dev.link_bytes()
        before = dev.counters()
        y = dev.gemm(plan)
        after = dev.counters()
        delta = {k: after[k] - before[k] for k in after}
        ev = expected_events(call, cfg)
        res.records.append(GemmRecord(
            call.name, call.head, call.codes.shape[0], call.codes.shape[1], call.w.shape[0],
            delta, ev, gemm_cycles(cfg, GemmWork.of(call)).cycles, dev.link_bytes() - bytes0,
            torch.equal(y, call.y), all(delta[c] == getattr(ev, f) for c, f in CHECKED.items())))
        if progress is not None:
            progress.update()
        return y

    t0 = time.perf_counter()
    res.hidden, _ = run_golden(cm, ids, execute=execute)
    res.wall_s = time.perf_counter() - t0
    return res
