"""Run a converted model on the accelerator: every linear layer and both attention matmuls
on the device, the nonlinear parts on the host exactly as the golden model defines them,
and every GEMM's result checked against the golden model computed from the same inputs.

The device's results feed the rest of the forward pass (``GoldenOps.execute``), so the
final hidden states are compared too: ``bit_exact`` is true only if every GEMM's output,
every GEMM's event counters and the final hidden states equal the golden model's.

:func:`run_generation` does the same for a generation (``models.generate``): the prefill and
each decode step with every GEMM on the device, QK^T and PV over the cached K and V codes,
and the output projection (``lm_head``, raw int32 accumulators) on each pass's last row;
each pass's hidden states, logits and greedy token are compared with the golden
generation's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from accel.chain import Chain, PassChains
from accel.counters import GOLDEN_EVENTS
from accel.cycles import gemm_cycles
from accel.encoder import encoder_counts
from accel.linkcost import link_cost
from accel.requests import LINK_KEYS
from accel.resident import DramImage
from accel.tiling import BatchTiles, PassPlanner, TileImage, tiled_events
from accel.workload import GemmWork
from models.contract import Events
from models.convert import ConvertedModel
from models.generate import Generation, generate
from models.golden import GemmCall, run_golden
from models.lm_head import HEAD

from .driver import Device


@dataclass
class GemmRecord:
    """One GEMM as run on the device, or an attention node's heads run as one request
    stream (``accel.tiling.BatchTiles``): their counters are read once, after the last."""

    name: str
    #: the heads it ran (``m``, ``k``, ``n`` are each one's), () for a linear layer
    heads: tuple[int, ...]
    m: int
    k: int
    n: int
    counters: dict  #: counter deltas over this GEMM (all its heads)
    expected: Events  #: golden events with the same tiling (summed over its heads)
    predicted_cycles: int  #: summed over its heads
    predicted_traffic: dict  #: ``accel.counters.TRAFFIC`` counts predicted by ``accel.cycles``
    link_bytes: int
    #: outputs equal the golden outputs; for a GEMM whose outputs stayed on the device as
    #: later GEMMs' weights (``accel.chain``), those GEMMs all exact (None until they ran)
    exact: bool | None
    #: ``accel.counters.GOLDEN_EVENTS`` counters equal the golden events, and the spike
    #: encoder's counters its EXPANDs' (``predicted_encoder``)
    counters_match: bool
    #: ``frames_tx`` (requests), ``waits`` (round trips), ``bytes_tx``, ``bytes_rx`` the
    #: driver counted over this GEMM (its requests and the counters read after it), and as
    #: ``accel.linkcost.link_cost`` predicts them: equal unless a request had to be
    #: retransmitted
    link: dict = field(default_factory=dict)
    predicted_link: dict = field(default_factory=dict)
    #: the spike encoder's counters (``enc_busy``, ``enc_wr``) as the GEMM's EXPANDs
    #: predict them (``accel.encoder.encoder_counts``)
    predicted_encoder: dict = field(default_factory=dict)

    @property
    def calls(self) -> list[tuple[str, int | None]]:
        """The GEMMs ``(name, head)`` it ran."""
        return [(self.name, h) for h in self.heads] or [(self.name, None)]


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


def run_gemm(dev: Device, call: GemmCall, plan=None, before: dict | None = None,
             lead: TileImage | None = None, image: DramImage | None = None,
             chain: Chain | None = None) -> tuple[torch.Tensor, GemmRecord, dict]:
    """Run one GEMM on ``dev`` and compare it with the golden model: its outputs, its
    counter deltas against the golden events under the device's tiling, and the cycle
    model's prediction. ``before`` is the counters before it (read if not given); returns
    the outputs, the record and the counters after it (the next GEMM's ``before``).
    ``lead``: the next GEMM's first weights, loaded beside the last tile
    (``accel.tiling.PassPlanner.lead``; only with the model in the external memory).
    ``image``: what the external memory holds for it, if more than the model
    (``accel.chain.PassChains.image_for``); ``chain``: its own, if its outputs are STOREd
    for later GEMMs: not read back (but for the slices the chain still reads, compared
    here), so it returns the golden outputs and its record's ``exact`` is None until the
    pass sets it from theirs (``_Executor.settle``; False at once if a slice read differs)."""
    (y,), rec, after = run_gemms(dev, [call], plan, before, lead, image, chain)
    return y, rec, after


def run_gemms(dev: Device, calls: list[GemmCall], plan=None, before: dict | None = None,
              lead: TileImage | None = None, image: DramImage | None = None,
              chain: Chain | None = None) -> tuple[list[torch.Tensor], GemmRecord, dict]:
    """:func:`run_gemm` of a node's GEMMs (``calls``: one, or an attention node's heads,
    ``plan`` their ``accel.tiling.PassPlanner.plan_batch``) as one request stream, the
    counters read once after the last and compared with the heads' golden events summed:
    one record. ``chain`` only for a single GEMM (heads are never chain producers)."""
    cfg = dev.cfg
    if plan is None:
        plan = PassPlanner(cfg).plan_batch(calls)
    if chain is not None and len(calls) != 1:
        raise ValueError(f"{calls[0].name}: a chain's outputs are one GEMM's, not a batch's")
    before = before if before is not None else dev.counters()
    bytes0, stats0 = dev.link_bytes(), dict(dev.stats)
    chain = dev.chain_in_force(chain)
    requests = dev.gemm_requests(plan, lead, image, chain, counted=True)
    predicted_link = link_cost(cfg, requests, dev.window)
    out, after = dev.send_gemm(plan, requests)
    assert after is not None
    ys = plan.outputs(out, calls) if isinstance(plan, BatchTiles) else [out]
    exact: bool | None
    if chain is None:
        exact = all(torch.equal(y, c.y) for y, c in zip(ys, calls, strict=True))
    else:
        # the slices still read are checked here, the rest where they are used (None
        # until then, ``_Executor.settle``); the pass goes on with the golden outputs
        call = calls[0]
        exact = None if all(torch.equal(out[d.r0:d.r1, d.n0:d.n1],
                                        call.y[d.r0:d.r1, d.n0:d.n1])
                            for i, (_, d) in enumerate(plan.steps())
                            if i in chain.reads) else False
        ys = [call.y]
    delta = {k: after[k] - before[k] for k in after}
    ev = sum((tiled_events(cfg, c) for c in calls), Events())
    preds = [gemm_cycles(cfg, GemmWork.of(c)) for c in calls]
    traffic: dict[str, int] = {}
    for p in preds:
        for k, v in p.traffic().items():
            traffic[k] = traffic.get(k, 0) + v
    encoder = encoder_counts(requests)
    first = calls[0]
    rec = GemmRecord(
        first.name, tuple(c.head for c in calls if c.head is not None),
        first.codes.shape[0], first.codes.shape[1], first.w.shape[0],
        delta, ev, sum(p.cycles for p in preds), traffic, dev.link_bytes() - bytes0, exact,
        all(delta[c] == getattr(ev, f) for c, f in GOLDEN_EVENTS.items())
        and all(delta[c] == v for c, v in encoder.items()),
        {k: dev.stats[k] - stats0.get(k, 0) for k in LINK_KEYS},
        {k: predicted_link[k] for k in LINK_KEYS}, encoder)
    return ys, rec, after


class _Executor:
    """``GoldenOps.execute`` on the device: plans each GEMM (one
    ``accel.tiling.PassPlanner``), checks it against the compiled program (restarted per
    forward pass), runs it and keeps its record. ``upcoming``: the pass's GEMMs in order
    (a golden trace), so that each GEMM's last tile loads the next one's first weights."""

    def __init__(self, dev: Device, program: list[dict] | None, progress=None,
                 upcoming: list[GemmCall] | None = None):
        self.dev, self.program, self.progress = dev, program, progress
        self.records: list[GemmRecord] = []
        self.order: Iterator[dict] | None = None
        self.counters: dict[str, int] | None = None
        self.planner = PassPlanner(dev.cfg)
        self.upcoming = upcoming
        self.pos = 0  # calls of this pass so far
        # outputs STOREd as later GEMMs' weights (accel.chain), planned on the trace: used
        # while the pass follows it (a GEMM whose outputs differ from the trace's, or the
        # order, ends them: what the plan stores is then not what the GEMMs need)
        self.chains = (PassChains(dev.cfg, upcoming, dev.image)
                       if upcoming and dev.image is not None else None)
        self.chained: list[tuple[GemmRecord, Chain]] = []
        self.loaded: set[tuple[str, int | None]] = set()  # GEMMs run while chains held

    def settle(self) -> None:
        """Each chained GEMM's ``exact``: its consumers' (all of them ran while the chains
        held, so they LOADed what it stored, and all exact), and its slices read back
        equal. A stored code that only ever meets silent inputs changes no consumer's
        output, so it is not checked: nor does it change the pass's result."""
        for rec, chain in self.chained:
            users = [r for r in self.records
                     if any(c in chain.consumers and c in self.loaded for c in r.calls)]
            ran = {c for r in users for c in r.calls if c in self.loaded}
            rec.exact = (rec.exact is not False and all(c in ran for c in chain.consumers)
                         and all(r.exact for r in users))

    def start(self) -> None:
        """A new forward pass: the program starts again."""
        self.order = iter(self.program) if self.program is not None else None
        self.pos = 0
        if self.counters is None:
            self.counters = self.dev.counters()  # each GEMM's "after" is the next "before"

    def _next(self, call: GemmCall) -> GemmCall | None:
        """The GEMM the pass runs after ``call`` (None: unknown, or the last)."""
        if self.upcoming is None:
            return None
        pos = self.pos
        self.pos += 1
        if pos >= len(self.upcoming) or (self.upcoming[pos].name, self.upcoming[pos].head) != (
                call.name, call.head):
            self.upcoming = None  # not the traced order: no guesses
            return None
        return self.upcoming[pos + 1] if pos + 1 < len(self.upcoming) else None

    def __call__(self, calls: list[GemmCall]) -> list[torch.Tensor]:
        """Run a node's GEMMs (``models.golden.GoldenOps.execute``: one, or an attention
        node's heads) as one request stream; their outputs."""
        plan = self.planner.plan_batch(calls)
        plans = plan.plans if isinstance(plan, BatchTiles) else [plan]
        for call, own in zip(calls, plans, strict=True):
            where = call.name + ("" if call.head is None else f"[head {call.head}]")
            if self.order is not None:
                entry = next(self.order, None)
                if entry is None and call.name != HEAD:
                    raise ValueError(f"program.json ends before {where}")
                if entry is not None:  # a prefill-sized program (a forward pass) has no head
                    check_program(entry, call, own)
        pos, traced = self.pos, self.upcoming
        for call in calls[:-1]:
            self._next(call)
        lead = self.planner.lead(self._next(calls[-1]))
        chain = None
        if self.chains is not None:
            # chains are linear layers' (``accel.chain.PassChains``), never a batch of heads
            chain = self.chains.by_call.get(pos) if len(calls) == 1 else None
            if traced is None or self.upcoming is None or (
                    chain is not None and not torch.equal(calls[0].y, traced[pos].y)):
                self.chains = chain = None
        image = None if self.chains is None else self.chains.image_for(pos)
        ys, rec, self.counters = run_gemms(self.dev, calls, plan, self.counters, lead, image,
                                           chain)
        if chain is not None:
            self.chained.append((rec, chain))
        if self.chains is not None:
            self.loaded.update((c.name, c.head) for c in calls)
        self.records.append(rec)
        if self.progress is not None:
            self.progress.update(len(calls))
        return ys


def run_model(cm: ConvertedModel, ids: torch.Tensor, dev: Device, progress=None,
              program: list[dict] | None = None, golden: tuple | None = None) -> RunResult:
    """Forward ``ids`` with every GEMM on ``dev``; see module doc. With ``program`` (the
    bundle's compiled program) each GEMM's tiling is checked against it. ``golden``: the
    result of ``run_golden(cm, ids)`` if the caller has it already."""
    # with the model resident, the pass's GEMMs in order (their lead weights): traced by
    # the golden run itself when this function makes it, else by one more
    upcoming: list[GemmCall] | None = [] if dev.image is not None else None
    if golden is None:
        golden = run_golden(cm, ids, trace=upcoming)
    elif upcoming is not None:
        run_golden(cm, ids, trace=upcoming)
    golden_hidden, golden_events = golden
    dev.identify()
    res = RunResult(golden_hidden, golden_hidden, golden_events)
    ex = _Executor(dev, program, progress, upcoming)
    ex.start()
    t0 = time.perf_counter()
    res.hidden, _ = run_golden(cm, ids, execute=ex)
    res.wall_s = time.perf_counter() - t0
    ex.settle()
    res.records = ex.records
    return res


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Equal tensors, or neither there."""
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@dataclass
class PassRun:
    """One pass of a generation on the device, beside the golden generation's."""

    phase: str  #: ``models.generate.PREFILL`` or ``DECODE``
    cached: int  #: tokens in the KV cache before it
    rows: int  #: tokens it ran
    records: list[GemmRecord]
    hidden: torch.Tensor  #: final hidden states from the device's GEMMs
    golden_hidden: torch.Tensor
    token: int  #: greedy token from the device's output projection
    golden_token: int
    golden_events: dict[str, Events]
    logits: torch.Tensor | None = None  #: the last row's logits from the device's head
    golden_logits: torch.Tensor | None = None

    @property
    def bit_exact(self) -> bool:
        """Every GEMM, the hidden states, the logits and the token equal the golden
        generation's."""
        return (torch.equal(self.hidden, self.golden_hidden) and self.token == self.golden_token
                and _same(self.logits, self.golden_logits)
                and all(r.exact and r.counters_match for r in self.records))


@dataclass
class GenerationResult:
    """A generation on the device (:func:`run_generation`)."""

    golden: Generation
    passes: list[PassRun]
    wall_s: float = 0.0

    @property
    def tokens(self) -> list[int]:
        """The tokens the device run generated."""
        return [p.token for p in self.passes]

    @property
    def bit_exact(self) -> bool:
        """Every pass is bit-exact and the tokens are the golden generation's."""
        return (all(p.bit_exact for p in self.passes)
                and self.tokens == self.golden.tokens)

    def phase(self, phase: str) -> RunResult:
        """The prefill or all decode steps together, as a :class:`RunResult` (records in
        order, golden events summed per GEMM node) for the per-layer reports."""
        ps = [p for p in self.passes if p.phase == phase]
        events: dict[str, Events] = {}
        for p in ps:
            for k, ev in p.golden_events.items():
                events[k] = events[k] + ev if k in events else ev
        if not ps:
            raise ValueError(f"the generation has no {phase} pass")
        return RunResult(torch.cat([p.hidden for p in ps]),
                         torch.cat([p.golden_hidden for p in ps]), events,
                         [r for p in ps for r in p.records])


def run_generation(cm: ConvertedModel, prompt: torch.Tensor, steps: int, dev: Device,
                   progress=None, program: list[dict] | None = None,
                   golden: Generation | None = None) -> GenerationResult:
    """Generate on ``dev``: prefill ``prompt``, then ``steps`` greedy decode steps, every
    GEMM on the device (QK^T and PV over the cached K and V codes), each checked as in
    :func:`run_model`; each pass's hidden states and token are compared with ``golden``
    (``models.generate.generate(cm, prompt, steps)``, computed if not given). With
    ``program`` each pass's GEMMs are checked against the compiled program."""
    golden = golden if golden is not None else generate(cm, prompt, steps)
    dev.identify()
    ex = _Executor(dev, program, progress)
    starts: list[int] = []

    def on_pass(i: int, phase: str) -> None:
        ex.start()
        starts.append(len(ex.records))

    t0 = time.perf_counter()
    gen = generate(cm, prompt, steps, execute=ex, on_pass=on_pass)
    wall = time.perf_counter() - t0
    ends = [*starts[1:], len(ex.records)]
    passes = [PassRun(p.phase, p.cached, len(p.ids), ex.records[a:b], p.hidden, g.hidden,
                      p.token, g.token, g.events, p.logits, g.logits)
              for p, g, a, b in zip(gen.passes, golden.passes, starts, ends, strict=True)]
    return GenerationResult(golden, passes, wall)
