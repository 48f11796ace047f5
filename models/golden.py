"""Golden model: executes a converted model exactly as the hardware and host will.

Every GEMM is integer arithmetic in the accumulator (spike part + integer part + zero-point
correction), checked against the 32-bit range, then the output neuron unit's fixed-point
requantizer; everything between GEMMs is the host's float64 work from
:mod:`models.nonlinear` and the quantizer of :mod:`models.quant`. Each GEMM's events are
counted (:class:`~models.contract.Events`): these are what the hardware counters must equal.

With ``spike_domain=True`` the spike part is computed by actually encoding spike trains and
running the neurons (:func:`models.encodings.accumulate`) instead of the closed-form
integer product; both give the same bits (tested), the default is faster.

The closed form multiplies the weights by :func:`models.encodings.spike_values` of the codes:
the codes themselves for every exact encoding, the neuron's actual spike counts for the
inexact ``if-adaptive``. ``ideal=True`` computes the quantized model instead: every GEMM from
its codes (for ``if-adaptive``: ``code / FINE`` spikes, as a rational accumulator rounded
once in the requantizer), the reference the inexact neuron's error is measured against
(``models.evaluate``); it is not what the hardware computes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .bundle import ConvertedModel, NodeInfo
from .contract import (
    INT8_QMAX,
    Events,
    F,
    check_acc,
    check_range,
    int_matmul,
    requantize,
)
from .encodings import TTFS_KINDS, Encoding, accumulate, encode, spike_counts, spike_values
from .graph import forward, merge_heads, split_heads
from .lm_head import HEAD, head_logits, raw_consts
from .quant import ONE, quantize_act, rotate


def gemm(codes: torch.Tensor, int_mask: torch.Tensor, shifts: torch.Tensor, enc: Encoding,
         w: torch.Tensor, start: torch.Tensor | None, where: str,
         spike_domain: bool = False, k_tile: int | None = None,
         n_tile: int | None = None, ideal: bool = False) -> tuple[torch.Tensor, Events]:
    """One batched GEMM of the accelerator.

    ``codes`` ``[B, M, K]`` activation codes; ``int_mask`` ``[B or 1, K]`` marks integer
    (outlier) channels, which the MAC array multiplies and shifts left by ``shifts``
    (``[B or 1, K]``); the
    rest are spikes of ``enc`` for the spike-accumulate array. ``w`` ``[B, N, K]`` integer
    weights; ``start`` ``[N]`` the accumulator's start value (zero-point correction).
    Returns the int32 accumulators ``[B, M, N]`` (as int64) and the events.

    ``k_tile``: the input channels per pass of the hardware (its weight buffer depth; None:
    one pass). Each pass that holds at least one spike channel runs its own TTFS window, so
    ``acc_step`` counts one window per such pass; a pass whose channels are all integer
    (outliers) needs no window and runs none. ``n_tile``: output channels per pass (its
    lanes; None: one pass); each output slice replays the input spikes, so ``spikes`` and
    ``spike_units`` count once per slice (lane accumulates do not change).

    ``ideal`` (quantized reference, not the hardware): an inexact encoding's spike part
    from the codes; the accumulator is then ``enc.fine`` times the hardware's scale (int64,
    unchecked), to be requantized with ``log2(enc.fine)`` more shift (:class:`GoldenOps`).
    """
    k = codes.shape[-1]
    n = w.shape[-2]
    mask = int_mask.view(-1, 1, k)
    spk = codes.masked_fill(mask, 0)
    ints = codes.masked_fill(~mask, 0)
    wt = w.transpose(-1, -2)
    ev = gemm_events(codes, int_mask, enc, n, k_tile, n_tile)
    if ideal and enc.is_spiking and not enc.exact:
        acc = int_matmul(spk, wt) + enc.fine * int_matmul(ints * (1 << shifts.view(-1, 1, k)),
                                                          wt)
        return (acc if start is None else acc + enc.fine * start), ev
    if spike_domain and enc.is_spiking:
        acc = accumulate(encode(spk, enc), w, enc)
    else:
        acc = int_matmul(spike_values(spk, enc), wt)
    acc = acc + int_matmul(ints * (1 << shifts.view(-1, 1, k)), wt)
    if start is not None:
        acc = acc + start
    acc = check_acc(acc, where)
    return acc, ev


def gemm_events(codes: torch.Tensor, int_mask: torch.Tensor, enc: Encoding, n: int,
                k_tile: int | None = None, n_tile: int | None = None) -> Events:
    """The events of :func:`gemm` (same arguments; ``n`` output channels) without computing
    its product: what the counters of a device with that tiling must count."""
    b, m, k = codes.shape
    mask = int_mask.view(-1, 1, k)
    spike_ch = ~mask.expand(b, 1, k)[:, 0]  # [B, K]
    spikes, units = spike_counts(codes.masked_fill(mask, 0), enc) if enc.is_spiking else (0, 0)
    return counted_events(enc, m, n, spike_ch, spikes, units, k_tile, n_tile)


def counted_events(enc: Encoding, m: int, n: int, spike_ch: torch.Tensor, spikes: int,
                   units: int, k_tile: int | None = None, n_tile: int | None = None) -> Events:
    """The event definitions of :func:`gemm_events`, from counts: ``m`` rows, ``n`` outputs,
    ``spike_ch`` ``[B, K]`` True for the spike (non-integer) channels, and the ``spikes``
    events and ``units`` unit spikes of one output slice (the generator's estimates give
    these from statistics instead of codes)."""
    b, k = spike_ch.shape
    n_int = int(k * b - spike_ch.sum())
    ev = Events(gemms=b, weights_in=b * n * k, acts_in=b * m * k, outs=b * m * n,
                macs=m * n_int * n, time_steps=1)
    if enc.is_spiking and n_int < b * k:
        n_tiles = 1 if n_tile is None else -(-n // n_tile)
        ev.spikes, ev.spike_units = spikes * n_tiles, units * n_tiles
        ev.acc_spike = units * n
        ev.time_steps = enc.time_steps
        if enc.kind in TTFS_KINDS:
            ev.acc_step = enc.time_steps * m * n * windows(spike_ch, k_tile)
    return ev


def windows(spike_ch: torch.Tensor, k_tile: int | None) -> int:
    """TTFS windows a GEMM runs: one per K pass (``k_tile`` input channels; None: one pass)
    that holds a spike channel, summed over the batch. ``spike_ch`` ``[B, K]`` is True for
    the spike (non-integer) channels. The tile builder (``hw.tile``) emits STEP events for
    exactly these passes."""
    k = spike_ch.shape[-1]
    step = k if k_tile is None else k_tile
    return sum(int(spike_ch[:, k0:k0 + step].any(dim=1).sum()) for k0 in range(0, k, step))


@dataclass
class GemmCall:
    """One GEMM exactly as the accelerator sees it (for driving hardware or a simulator):
    activation codes ``[M, K]`` with their integer-channel mask and shifts, integer weights
    ``[N, K]``, accumulator start ``[N]``, requantizer constants ``[N]`` and ``mrow [M]``,
    and the expected requantized outputs ``y [M, N]`` (with ``raw``: the accumulators, the
    output unit passing them through unrequantized)."""

    name: str
    head: int | None
    codes: torch.Tensor
    int_mask: torch.Tensor
    shifts: torch.Tensor
    encoding: Encoding
    w: torch.Tensor
    start: torch.Tensor | None
    consts: dict
    mrow: torch.Tensor
    shift: int
    y: torch.Tensor
    raw: bool = False
    #: ``w``, ``start`` and ``consts`` are the model's parameters (a linear layer), the same
    #: for every input, so they may stay in the accelerator's external memory
    #: (``accel.resident``); False where ``w`` is an activation (attention)
    constant: bool = False
    #: which hand-over to ``GoldenOps.execute`` this GEMM was part of (set by the golden
    #: model, unique in the process; None: a GEMM made elsewhere, alone): the GEMMs of one
    #: batch (an attention node's heads) cross the link as one request stream, and
    #: ``accel.tiling.batches`` reads the groups of a trace from it
    batch: int | None = None


#: Batch numbers (:attr:`GemmCall.batch`): one counter for the process, so that traces of
#: several passes (or several golden models) put together never merge two batches.
_BATCH_IDS = itertools.count()


@dataclass
class Coded:
    """Integer codes produced by the output neuron unit for the next GEMM (never the host)."""

    codes: torch.Tensor


class GoldenOps:
    """The ``ops`` of :func:`models.graph.forward` that compute what the hardware computes."""

    def __init__(self, cm: ConvertedModel, spike_domain: bool = False, ideal: bool = False):
        self.cm, self.spike_domain, self.ideal = cm, spike_domain, ideal
        self.t = cm.tensors
        self.events: dict[str, Events] = {}
        self.trace: list[GemmCall] | None = None  #: set to a list to record every GEMM
        #: set to run every GEMM elsewhere (the accelerator): ``execute(calls)`` gets a node's
        #: GEMMs (one, or an attention node's heads: one ``GemmCall.batch``) and returns
        #: their results ``y``, which replace the golden ones downstream, so a wrong result
        #: shows at the end, not only per GEMM
        self.execute = None

    def _record(self, node: NodeInfo, head, codes, mask, shifts, w, start, sl, mrow, y, n,
                constant: bool = False) -> GemmCall | None:
        """The GEMM as a :class:`GemmCall`, appended to the trace (None when neither a trace
        nor ``execute`` wants it)."""
        if self.trace is None and self.execute is None:
            return None
        consts = {c: self.t[f"{node.name}.{c}"][sl].to(torch.int64).expand(n).clone()
                  for c in ("mcol", "bias", "zp", "lo", "hi")}
        call = GemmCall(node.name, head, codes, mask, shifts, node.act.encoding, w, start,
                        consts, mrow, node.shift, y, constant=constant)
        if self.trace is not None:
            self.trace.append(call)
        return call

    def _run(self, calls: list[GemmCall | None], ys: list[torch.Tensor]) -> list[torch.Tensor]:
        """A node's GEMMs' results: ``ys`` (golden), or ``execute``'s of the recorded
        ``calls`` when it is set (one call for a node: its GEMMs, a head each for
        attention, may cross the link as one request stream). The recorded calls are
        marked as one batch (:attr:`GemmCall.batch`) either way."""
        batch = next(_BATCH_IDS)
        for call in calls:
            if call is not None:
                call.batch = batch
        if self.execute is None:
            return ys
        out = list(self.execute(calls))
        if len(out) != len(calls):
            raise ValueError(f"execute returned {len(out)} results for {len(calls)} GEMMs "
                             f"of {calls[0].name if calls else '?'}")
        return out

    # -- helpers ---------------------------------------------------------------------------
    def host(self, a):
        if isinstance(a, Coded):
            raise TypeError("accelerator-internal codes cannot go to a host function")
        return a

    def _count(self, name: str, ev: Events) -> None:
        self.events[name] = self.events[name] + ev if name in self.events else ev

    def _act(self, node: NodeInfo, a) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and row multipliers of an activation operand."""
        if isinstance(a, Coded):
            return a.codes, torch.full(a.codes.shape[:-1], ONE, dtype=torch.int64)
        x = a
        if node.act.rotate:
            x = rotate(x, self.t[f"rot.{x.shape[-1]}"])
        if node.act.learned_rotation:
            x = x @ self.t[f"{node.name}.rotq"].to(x.dtype)
        return quantize_act(x, node.act)

    def _epi(self, node: NodeInfo, acc: torch.Tensor, mrow: torch.Tensor, shape=(-1,)):
        """Requantize; per-channel constants are viewed as ``shape`` to broadcast (per head
        for QK^T, per head and channel for PV)."""
        t, nm = self.t, node.name
        get = lambda s: t[f"{nm}.{s}"].to(torch.int64).view(shape)  # noqa: E731
        return requantize(acc, get("mcol"), node.shift + self._finer(node), mrow, get("bias"),
                          get("zp"), get("lo"), get("hi"))

    def _finer(self, node: NodeInfo) -> int:
        """Extra requantizer shift of an ``ideal`` accumulator (``log2(enc.fine)``; 0 for
        the hardware's accumulators and exact encodings)."""
        return (node.act.encoding.fine.bit_length() - 1) if self.ideal else 0

    def _weights_operand(self, node: NodeInfo, a) -> torch.Tensor:
        """Codes of a dynamic weight operand (K of QK^T, V of PV): int8 per channel."""
        if isinstance(a, Coded):
            return a.codes.to(torch.int64)
        s = self.t[f"{node.name}.w_scale"]
        return torch.round(a / s).clamp(-INT8_QMAX, INT8_QMAX).to(torch.int64)

    def extend_kv(self, prefix: str, past: tuple[Coded, Coded] | None, k,
                  v) -> tuple[Coded, Coded]:
        """A KV-cache layer (:class:`models.graph.KVCache`) with the new keys ``k`` and
        values ``v`` appended, as the codes QK^T and PV take them (int8 per channel at the
        ``w_scale`` of ``prefix + "qk"`` / ``"av"``: what the host would hold for the
        accelerator). Codes depend on their own row only, so a cached token's codes are the
        ones a pass over the whole sequence computes for it."""
        kc, vc = (self._weights_operand(self.cm.nodes[prefix + n], a) for n, a in (("qk", k),
                                                                                  ("av", v)))
        for name, c in (("keys", kc), ("values", vc)):
            check_range(c, -INT8_QMAX, INT8_QMAX, f"{prefix}KV cache {name}")
        kc, vc = kc.to(torch.int8), vc.to(torch.int8)
        if past is not None:
            kc, vc = torch.cat([past[0].codes, kc]), torch.cat([past[1].codes, vc])
        return Coded(kc), Coded(vc)

    # -- the three GEMM kinds --------------------------------------------------------------
    def linear(self, name: str, x):
        node = self.cm.nodes[name]
        codes, mrow = self._act(node, x)
        w = self.t[name + ".w"].to(torch.int64)
        k = w.shape[1]
        acc, ev = gemm(codes[None], node.act.outlier_mask(k)[None], node.act.shifts(k)[None],
                       node.act.encoding, w[None], self.t[name + ".zcorr"].to(torch.int64),
                       name, self.spike_domain, ideal=self.ideal)
        self._count(name, ev)
        y = self._epi(node, acc[0], mrow)
        y, = self._run([self._record(node, None, codes, node.act.outlier_mask(k),
                                     node.act.shifts(k), w,
                                     self.t[name + ".zcorr"].to(torch.int64), slice(None),
                                     mrow, y, w.shape[0], constant=True)], [y])
        if node.direct:
            return Coded(y)
        return y.to(F) * self.t[name + ".scale"]

    def attn_scores(self, name: str, q, k) -> torch.Tensor:
        node, spec = self.cm.nodes[name], self.cm.spec
        codes, mrow = self._act(node, q)
        kc = self._weights_operand(node, k)
        group = spec.heads // spec.kv_heads
        qh = split_heads(codes, spec.heads)
        kh = split_heads(kc, spec.kv_heads).repeat_interleave(group, 0)
        k = codes.shape[-1]
        mask = split_heads(node.act.outlier_mask(k)[None], spec.heads)[:, 0]
        shifts = split_heads(node.act.shifts(k)[None], spec.heads)[:, 0]
        acc, ev = gemm(qh, mask, shifts, node.act.encoding, kh, None, name,
                       self.spike_domain, ideal=self.ideal)
        self._count(name, ev)
        yi = self._epi(node, acc, mrow, (-1, 1, 1))  # per-head constants
        yi = torch.stack(self._run([self._record(node, h, qh[h], mask[h], shifts[h], kh[h],
                                                 None, slice(h, h + 1), mrow, yi[h],
                                                 kh.shape[1]) for h in range(spec.heads)],
                                   list(yi)))
        return yi.to(F) * self.t[name + ".scale"].view(-1, 1, 1)

    def attn_values(self, name: str, p: torch.Tensor, v) -> Coded:
        node, spec = self.cm.nodes[name], self.cm.spec
        codes, mrow = self._act(node, p)  # [H, M, M], [H, M]
        vc = self._weights_operand(node, v)
        group = spec.heads // spec.kv_heads
        vh = split_heads(vc, spec.kv_heads).repeat_interleave(group, 0).transpose(1, 2)
        k = codes.shape[-1]
        acc, ev = gemm(codes, node.act.outlier_mask(k)[None], node.act.shifts(k)[None],
                       node.act.encoding, vh, None, name,
                       self.spike_domain, ideal=self.ideal)
        self._count(name, ev)
        d = spec.head_dim
        out = self._epi(node, acc, mrow, (spec.heads, 1, d))
        out = torch.stack(self._run([self._record(node, h, codes[h], node.act.outlier_mask(k),
                                                  node.act.shifts(k), vh[h], None,
                                                  slice(h * d, (h + 1) * d), mrow[h], out[h],
                                                  d) for h in range(spec.heads)], list(out)))
        return Coded(merge_heads(out))


    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The output projection (``models.lm_head``) of the rows ``x`` ``[M, hidden]``
        (the final norm's outputs): one linear GEMM whose output unit passes the raw int32
        accumulators (``GemmCall.raw``); returns the logits ``[M, vocab]``, float64, the
        accumulators dequantized (:func:`models.lm_head.head_logits`)."""
        node = self.cm.head
        if node is None:
            raise ValueError("the converted model has no output projection (lm_head): it was "
                             "converted before the head became a GEMM; convert it again")
        codes, mrow = self._act(node, x)
        w = self.t[HEAD + ".w"].to(torch.int64)
        k, start = w.shape[1], self.t[HEAD + ".zcorr"].to(torch.int64)
        mask, shifts = node.act.outlier_mask(k), node.act.shifts(k)
        acc, ev = gemm(codes[None], mask[None], shifts[None], node.act.encoding, w[None], start,
                       HEAD, self.spike_domain, ideal=self.ideal)
        self._count(HEAD, ev)
        acc = acc[0]
        if self.trace is not None or self.execute is not None:
            call = GemmCall(HEAD, None, codes, mask, shifts, node.act.encoding, w, start,
                            raw_consts(w.shape[0]), mrow, 0, acc, raw=True, constant=True)
            if self.trace is not None:
                self.trace.append(call)
            acc, = self._run([call], [acc])
        if self._finer(node):
            acc = acc.to(F) / node.act.encoding.fine
        return head_logits(self.cm, acc, mrow)


def run_golden(cm: ConvertedModel, ids: torch.Tensor, spike_domain: bool = False,
               trace: list[GemmCall] | None = None,
               execute=None, ideal: bool = False) -> tuple[torch.Tensor, dict[str, Events]]:
    """Forward one token sequence; returns (final hidden states float64, events per GEMM).
    With ``trace`` (a list), every GEMM is appended to it as a :class:`GemmCall`; with
    ``execute`` (``[GemmCall] -> [y]``, a node's GEMMs at a time), every GEMM's result
    comes from it (the accelerator).
    ``ideal``: the quantized reference model instead of the hardware's (differs only for
    the inexact ``if-adaptive`` encoding; see the module docstring)."""
    if ideal and (trace is not None or execute is not None):
        raise ValueError("run_golden: ideal is the quantized reference, not the hardware's "
                         "computation; it cannot be traced or executed on a device")
    ops = GoldenOps(cm, spike_domain, ideal)
    ops.trace = trace
    ops.execute = execute
    hidden = forward(cm.spec, cm.params(), ids, ops)
    return hidden, ops.events


def total_events(events: dict[str, Events]) -> Events:
    """Sum of the per-GEMM events."""
    total = Events()
    for ev in events.values():
        total = total + ev
    return total
