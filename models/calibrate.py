"""Threshold calibration of the spiking neurons: the plain clip search, Dual conversion's
per-layer threshold and initial membrane, and FAS stage 2's coarse-to-fine thresholds.

In this toolchain a GEMM input's integrate-and-fire neuron is exact (``docs/encodings.md``):
driven by a real input ``x`` for ``T`` steps, a soft-reset IF neuron with threshold
``theta`` and initial membrane ``v(0)`` fires ``floor(x / s + v(0) / theta)`` spikes
(``s = theta / T`` for binary spikes, ``theta`` per level for graded ones), which is a
quantizer. So every threshold a method calibrates is one of the contract's numbers
(``models.quant.ActPlan``), and the golden model and the hardware stay bit-exact:

- the threshold ``theta`` of a layer is its step, i.e. ``ActPlan.clip`` (and ``step``);
- the initial membrane ``v(0)`` is the rounding offset ``ActPlan.offset =
  v(0)/theta - 1/2`` (0 is ``theta/2``): the host quantizer adds it before rounding, and a
  requantizer that produces the codes adds it to its bias (:func:`fold_offsets`);
- a per-neuron (per input channel) threshold is a per-channel step ``ActPlan.scales``,
  which the consumer's weight columns absorb before weight quantization
  (:func:`calibrate_thresholds` returns the folded weights).

Methods (``ConvertOptions.threshold_calib``), each minimising the layer's output error
``|(X_hat - X) W^T|^2`` on calibration rows (centred per output channel when bias
correction will remove the mean):

``"dual"`` (Dual conversion, layer-wise): ``theta`` and ``v(0)`` per layer, by coordinate
    search (theta, then v(0), then theta again).
``"fas"`` (FAS stage 2, coarse to fine): ``theta`` per layer, then one threshold per input
    channel, then ``theta`` again; the fine step is kept only where it lowers the error.

The plain quantizer (``"none"``) picks the clip that minimises the input's own error
(:func:`best_clip`). Rules and measurements: ``docs/quantization.md``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .arch import ModelInputError
from .contract import COL_MULT_MAX, INT8_QMAX, REQ_MID_BITS, ROW_FRAC, F
from .encodings import Encoding
from .quant import (
    MAX_OUTLIER_SHIFT,
    ONE,
    ActPlan,
    dequantize_act,
    quantize_act,
    row_multipliers,
    token_steps,
)

#: Threshold calibration methods (``ConvertOptions.threshold_calib``).
METHODS = ("none", "dual", "fas")
#: Clip ratios of the plain quantizer's search (least error of the input itself).
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
#: Layer thresholds (clip ratios) that Dual and FAS try: the plain grid and lower.
THETA_GRID = tuple(round(1.0 - 0.05 * i, 2) for i in range(15))  # 1.0 .. 0.3
#: Initial membranes Dual tries, as offsets ``v(0)/theta - 1/2`` (0, theta/2, is the start).
OFFSET_GRID = (-0.375, -0.25, -0.125, 0.125, 0.25, 0.375)
#: Per-channel threshold factors FAS tries in each fine round.
SCALE_GRID = tuple(2.0 ** (i / 4) for i in range(-4, 3))  # 0.5 .. 1.41
#: Calibration rows the output error is measured on (evenly spaced over the text).
ERROR_ROWS = 1024
#: Coarse-to-fine rounds of FAS.
FAS_ROUNDS = 2
#: Reference-step headroom of per-token plans (:func:`ref_headroom_bits`): at most this many
#: bits, and the 1st-percentile calibration row keeps a row multiplier of at least this.
MAX_HEADROOM_BITS = 8
MIN_ROW_MULT = 2**7


def dual_encoding(steps: int, bits: int = 4) -> Encoding:
    """Dual conversion's integer-spiking neuron for ``steps`` = T in 1..8 covering ``bits``-bit
    codes: graded spikes of up to ``L = ceil((2**bits - 1) / T)`` per step, so ``L * T >=
    2**bits - 1`` (equal, as the paper's ``L x T = 2^n - 1``, where T divides ``2**bits - 1``:
    T = 1, 3, 5 for 4 bits; an even T cannot, and gets the one extra code ``L * T``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 8:
        raise ValueError(f"Dual conversion's time steps T must be an integer in 1..8, "
                         f"not {steps!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 12:
        raise ValueError(f"Dual conversion's activation bits n must be in 1..12, not {bits!r}")
    return Encoding("graded", steps=steps, levels=-(-(2**bits - 1) // steps))


def best_clip(x: torch.Tensor, plan: ActPlan) -> float:
    """Clip ratio of the spike channels' steps with the least calibration MSE of the input
    (over every channel, the outliers at shift 0): the plain quantizer's choice. Float32
    and, per token, each row's exact step (not its 16-bit multiplier): only the choice
    depends on it."""
    _, zp, lo, hi = (t.to(torch.float32) for t in plan.channel_targets(x.shape[-1]))
    x32 = x.to(torch.float32)
    # the step of one code (if-adaptive's codes are a grid ``fine`` times finer than a spike)
    base = (token_steps(x, replace(plan, clip=1.0)) / plan.encoding.fine).to(torch.float32)[:, None]
    # the smallest row step is the reference step / 2**15 (the row multiplier is >= 1)
    base = base.clamp(min=max(float(base.max()), 1e-30) / ONE)
    if not plan.per_token:  # one static step: the largest
        base = base.amax().expand_as(base)
    u = x32 / base  # x in units of the row's unclipped step
    w2 = (base * base)[:, 0]
    best, best_err = 1.0, math.inf
    for c in CLIP_GRID:  # error = base * (c * q - u), q = clamp(round(u / c) + zp) - zp
        e = torch.round(u * (1.0 / c)).add_(zp).clamp_(lo, hi).sub_(zp).mul_(c).sub_(u)
        err = float(e.mul_(e).sum(1) @ w2)
        if err < best_err:
            best, best_err = c, err
    return best


def ref_headroom_bits(steps: torch.Tensor, per_token: bool) -> int:
    """``h``: a per-token plan's reference step is ``2**h`` times its largest calibration row
    step. The requantizer rounds ``acc * mcol >> shift`` to an integer *before* the row
    multiplier scales it (``models.contract.requantize``), so with ``mrow`` near ``2**15``
    that first rounding costs up to half an output code (a second rounding error on 4-bit
    codes); a reference step ``2**h`` times larger gives it ``h`` fraction bits. The price
    is ``h`` bits of the row multipliers' precision: ``h`` is the largest (at most
    ``MAX_HEADROOM_BITS``) that leaves the 1st-percentile row a multiplier of at least
    ``MIN_ROW_MULT``. Static plans (``mrow`` is always ``2**15``): 0."""
    if not per_token:
        return 0
    live = steps[steps > 1e-12].to(F)
    if not len(live):
        return 0
    low = float(torch.quantile(live, 0.01)) / float(live.max())
    return max(0, min(MAX_HEADROOM_BITS, math.floor(math.log2(low * ONE / MIN_ROW_MULT))))


def fit_ratio(plan: ActPlan, ratio: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The requantization ratio ``ratio`` of a GEMM whose input has ``plan`` (calibration
    rows ``x``), made to fit the column multiplier: where its largest value would need a
    shift below 0, a per-token plan gives back reference-step headroom
    (:func:`ref_headroom_bits`; powers of two, never below the largest row step), which
    divides the ratio by as much. ``plan.step`` is lowered in place."""
    top, f = float(ratio.max()), 1.0
    if plan.per_token and top > COL_MULT_MAX:
        base = float(token_steps(x, plan).max())
        while top / f > COL_MULT_MAX and plan.step / (2 * f) >= base:
            f *= 2
        plan.step /= f
    return ratio / f


def fit_plan(x: torch.Tensor, plan: ActPlan, shift_rule: str = "max") -> ActPlan:
    """Set ``plan.step`` unless it is positive (the largest row step of the calibration rows
    ``x`` at the plan's clip and channel scales, times ``2**ref_headroom_bits`` for per-token
    plans) and the outlier shifts, per outlier channel at the step each row really gets (the
    reference step times its 16-bit row multiplier), at most ``MAX_OUTLIER_SHIFT``:
    ``shift_rule="max"``: the smallest shift that fits the channel's largest calibration
    value in int8 (the worst row decides for all); ``"error"``: the shift with the least
    squared quantization error of the channel over the calibration rows (a few rows may
    saturate so that the others get a finer step). Returns ``plan``."""
    if not plan.step > 0:
        steps = token_steps(x, plan).clamp(min=1e-12)
        plan.step = float(steps.max()) * 2.0 ** ref_headroom_bits(steps, plan.per_token)
    if plan.outliers:
        own = plan.step * row_multipliers(x, plan).to(F) / ONE
        xo = x[:, plan.outliers].to(F)
        ratio = (xo.abs() / own[:, None]).amax(0).clamp(min=1e-12)
        fit = [min(MAX_OUTLIER_SHIFT, max(0, math.ceil(math.log2(r / INT8_QMAX))))
               for r in ratio.tolist()]
        if shift_rule == "error":
            errs = []
            for p in range(MAX_OUTLIER_SHIFT + 1):
                s = own[:, None] * 2.0**p
                e = torch.round(xo / s).clamp(-INT8_QMAX, INT8_QMAX) * s - xo
                errs.append((e * e).sum(0))
            best = torch.stack(errs).argmin(0).tolist()  # the smallest shift among equals
            fit = [min(b, f) for b, f in zip(best, fit, strict=True)]
        plan.outlier_shifts = fit
    return plan


class OutputError:
    """The error a plan's quantization of calibration rows ``x`` ``[R, K]`` causes at the
    output of weights ``w`` ``[N, K]``: ``|(X_hat - X) W^T|^2`` over up to ``ERROR_ROWS``
    evenly spaced rows, centred per output channel with ``centre`` (bias correction removes
    the error's typical value). Float32 products: only comparisons depend on it."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, centre: bool):
        idx = torch.linspace(0, x.shape[0] - 1, min(ERROR_ROWS, x.shape[0])).round().long()
        self.x, self.centre = x[idx].to(F), centre
        w32 = w.to(torch.float32)
        # |D W^T|^2 = tr(D (W^T W) D^T): the cheaper of the two products
        self.w, self.g = (w32, None) if w.shape[0] <= w.shape[1] else (None, w32.t() @ w32)
        self.col = (w32 * w32).sum(0).to(F)  # |W[:, k]|^2: a channel's own weight

    def diff(self, plan: ActPlan) -> torch.Tensor:
        """``X_hat - X`` on the rows (centred with ``centre``)."""
        d = dequantize_act(*quantize_act(self.x, plan), plan) - self.x
        return d - d.mean(0) if self.centre else d

    def times_g(self, d: torch.Tensor) -> torch.Tensor:
        """``D W^T W`` (float64) of row differences ``d``."""
        d32 = d.to(torch.float32)
        return (d32 @ self.g if self.g is not None else (d32 @ self.w.t()) @ self.w).to(F)

    def __call__(self, plan: ActPlan) -> float:
        d = self.diff(plan).to(torch.float32)
        if self.g is None:
            e = d @ self.w.t()
            return float((e * e).sum())
        return float(((d @ self.g) * d).sum())


def _search(x: torch.Tensor, err: OutputError, best: tuple[float, ActPlan],
            field: str, grid) -> tuple[float, ActPlan]:
    """Try ``field`` at each value of ``grid`` on the best plan; keep strict improvements."""
    start = best[1]
    for v in grid:
        if v == getattr(start, field):
            continue
        p = fit_plan(x, replace(start, step=0.0, **{field: v}))
        e = err(p)
        if e < best[0]:
            best = (e, p)
    return best


def channel_scales(err: OutputError, plan: ActPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """FAS's fine step: ``(factors, gains)``: one threshold factor per channel, from
    ``SCALE_GRID`` times the current one (1 for outlier channels), each chosen for the least
    change of the output error when only its own channel changes (exact for one channel:
    ``2 delta . (D G)_k + G_kk |delta|^2`` with ``G = W^T W``, the rows' steps held), and
    that predicted change (``<= 0``)."""
    x = err.x
    k = x.shape[-1]
    mask = plan.outlier_mask(k)
    c0 = plan.spike_scales(k)
    s = (plan.step * row_multipliers(x, plan).to(F) / ONE)[:, None]
    _, zp, lo, hi = plan.channel_targets(k)

    def diff(c: torch.Tensor) -> torch.Tensor:
        step = s * c
        q = torch.minimum(torch.maximum(torch.round(x / step + plan.offset) + zp, lo), hi)
        d = (q - zp) * step - x
        return d - d.mean(0) if err.centre else d

    d0 = diff(c0)
    dg = err.times_g(d0)
    gains = [torch.zeros(k, dtype=F)]
    for f in SCALE_GRID:
        if f != 1.0:
            delta = diff(c0 * f) - d0
            gains.append(2 * (delta * dg).sum(0) + err.col * (delta * delta).sum(0))
    grid = torch.tensor([1.0] + [f for f in SCALE_GRID if f != 1.0], dtype=F)
    gain, best = torch.stack(gains).min(0)
    return torch.where(mask, 1.0, c0 * grid[best]), gain.masked_fill(mask, 0.0)


def _fine(x: torch.Tensor, err: OutputError, best: tuple[float, ActPlan]) -> tuple[float, ActPlan]:
    """One fine round of FAS: the channels' factors (:func:`channel_scales`) applied to the
    channels with the largest predicted gains, all of them or the best half, quarter or
    eighth (the predictions hold one channel at a time), whichever lowers the error most;
    factors normalised to geometric mean 1 (a common factor only moves the layer's
    threshold, which the next coarse step sets)."""
    plan = best[1]
    k = x.shape[-1]
    c0, mask = plan.spike_scales(k), plan.outlier_mask(k)
    cand, gain = channel_scales(err, plan)
    order = torch.argsort(gain)
    n = int((gain < 0).sum())
    for frac in (1, 2, 4, 8):
        pick = order[:max(1, -(-n // frac))] if n else order[:0]
        c = c0.clone()
        c[pick] = cand[pick]
        c = torch.where(mask, 1.0, c / c[~mask].log().mean().exp())
        p = fit_plan(x, replace(plan, step=0.0, scales=c.tolist()))
        e = err(p)
        if e < best[0]:
            best = (e, p)
    return best


def calibrate_plan(x: torch.Tensor, plan: ActPlan, w: torch.Tensor, method: str,
                   centre: bool) -> ActPlan:
    """The plan of one GEMM input with calibrated thresholds (``method`` ``"dual"`` or
    ``"fas"``), from calibration rows ``x`` ``[R, K]`` and the weights ``w`` ``[N, K]`` that
    read it (stacked where several layers share the input). The search starts at ``plan``
    and keeps only changes that lower the output error, so the result is never worse on
    the calibration rows. Weight columns must then carry ``plan.scales`` (FAS)."""
    if method not in METHODS:
        raise ModelInputError(f"option threshold_calib: must be one of "
                              f"{', '.join(map(repr, METHODS))}, not {method!r:.60}")
    spk = x.masked_fill(plan.outlier_mask(x.shape[-1]), 0.0)
    if method == "none" or not plan.encoding.is_spiking or not bool(spk.any()):
        return plan
    err = OutputError(x, w, centre)
    best = (err(plan), plan)
    best = _search(x, err, best, "clip", THETA_GRID)
    if method == "dual":
        best = _search(x, err, best, "offset", OFFSET_GRID)
        return _search(x, err, best, "clip", THETA_GRID)[1]
    for _ in range(FAS_ROUNDS):
        fine = _fine(x, err, best)
        if fine[1] is best[1]:
            break
        best = _search(x, err, fine, "clip", THETA_GRID)
    return best[1]


def calibrate_thresholds(nodes: dict, lin_w: dict[str, torch.Tensor],
                         lin_x: dict[str, torch.Tensor], opts) -> tuple[dict, dict]:
    """Calibrate the activation plans of the linear layers whose options ask for it
    (``opts.for_node(name).threshold_calib``), in place in ``nodes``; layers that read the
    same input (``lin_x`` the same tensor, same options and plan) are calibrated together.
    Returns the weights and calibration inputs as the weight quantizer must see them: with
    per-channel thresholds, weight column ``k`` times ``scales[k]`` and input channel ``k``
    divided by it (the product is unchanged)."""
    lin_w, lin_x = dict(lin_w), dict(lin_x)
    done: set[str] = set()
    for name in list(lin_w):
        o = opts.for_node(name)
        if name in done or o.threshold_calib == "none":
            continue
        group = [n for n in lin_w if n not in done and lin_x[n] is lin_x[name]
                 and opts.for_node(n) == o and nodes[n].act == nodes[name].act]
        done.update(group)
        x = lin_x[name]
        w = torch.cat([lin_w[n] for n in group])
        plan = calibrate_plan(x, nodes[name].act, w, o.threshold_calib, o.bias_correction)
        for n in group:
            nodes[n].act = replace(plan, outliers=list(plan.outliers), scales=list(plan.scales),
                                   outlier_shifts=list(plan.outlier_shifts))
        if plan.scales:
            c = plan.spike_scales(x.shape[-1])
            xs = x / c
            for n in group:
                lin_w[n], lin_x[n] = lin_w[n] * c, xs
    return lin_w, lin_x


def weight_space(nodes: dict) -> dict:
    """``nodes`` with plans as the weight quantizer must apply them to the folded inputs of
    :func:`calibrate_thresholds` (per-channel scales already divided out)."""
    return {n: replace(v, act=replace(v.act, scales=[])) if v.act.scales else v
            for n, v in nodes.items()}


def fold_offsets(tensors: dict, nodes: dict, host_in) -> None:
    """Add each calibrated initial membrane (``ActPlan.offset``) of an input that a
    requantizer produces to that requantizer's bias (``round(offset * 2**15)`` on the
    spike channels): ``floor(v + 1/2 + offset)`` is the IF neuron with that ``v(0)``.
    ``host_in(name)`` tells whether a linear node's input comes from the host (whose
    quantizer applies the offset itself); otherwise it comes from the block's ``av``."""
    for n in nodes.values():
        if n.kind != "linear" or not n.act.offset or host_in(n.name):
            continue
        prod = n.name.rsplit(".", 1)[0] + ".av.bias"
        k = len(tensors[prod])
        add = torch.full((k,), round(n.act.offset * 2**ROW_FRAC), dtype=torch.int64)
        b = tensors[prod].to(torch.int64) + add.masked_fill(n.act.outlier_mask(k), 0)
        if int(b.abs().max()) >= 2 ** (REQ_MID_BITS - 1):
            raise ModelInputError(f"{prod}: bias with the initial membrane of {n.name} does "
                                  f"not fit the 32-bit requantizer input")
        tensors[prod] = b.to(torch.int32)
