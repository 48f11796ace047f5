"""Learned per-head rotations between V and the ``o`` projection (SpinQuant's R2), folded
offline into the weights.

The converter folds a per-head rotation ``R_h`` into V (``W_v' = R_h^T W_v``, per head's
rows) and the ``o`` projection (``W_o' = W_o R_h``, per head's columns): ``P (V R_h)`` is
the rotated attention output, so the float model is unchanged (``fold_head_rotations``,
a seeded block Hadamard). The ``o`` input never leaves the accelerator (the output neuron
unit produces it from PV), so it has one static 4-bit step per tensor plus a few int8
outlier channels, and the host cannot rotate it at run time: the per-head rotation is its
only rotation. Here it is *learned* on the calibration text (Liu et al., SpinQuant, 2024:
the rotations that can be folded are optimised through the quantized model): per block,
an extra orthogonal ``Q_h = expm(S_h - S_h^T)`` per K/V head on top of today's rotation and
smoothing, minimising the ``o`` projection's output error from its quantized input,
``|Q(X Q) (W_o Q)^T - X W_o^T|^2`` on evenly spaced calibration rows, with ``Q(.)`` the
plain quantizer of that input (static step from the calibration maximum of the spike
channels times the least-error clip ratio, the largest channels int8 and exact), rounding
with the straight-through gradient (:func:`models.distill.ste_round`); weights stay float
(GPTQ rounds them afterwards, SpinQuant's recipe with GPTQ). ``S = 0`` is today's model;
the iterate with the least error is kept, so a layer is never worse on its calibration
rows. Deterministic (no random numbers, fixed operations, one thread).

Nothing is stored in the bundle: the contract and the golden model see ordinary weights.
Measurements: ``docs/quantization.md``.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .arch import ArchSpec
from .calibrate import CLIP_GRID
from .contract import F
from .distill import ste_round

F32 = torch.float32
#: Calibration rows the output error is measured on (evenly spaced over the text).
ROT_ROWS = 1024
#: Adam's learning rate on the skew-symmetric generators (radians a step, roughly).
ROT_LR = 0.005


def _block(t: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``t @ blockdiag(rot)`` over the last axis (``rot`` ``[H, d, d]``)."""
    h, d = rot.shape[0], rot.shape[1]
    return torch.einsum("...hi,hij->...hj", t.reshape(*t.shape[:-1], h, d), rot).reshape(
        t.shape)


def _orth(s: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_exp(s - s.transpose(-1, -2))


class _OInput:
    """The ``o`` input's plain quantizer as a differentiable function of the rotation."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, qmax: int, n_out: int, group: int):
        self.full = x.to(F32)
        idx = torch.linspace(0, len(x) - 1, min(ROT_ROWS, len(x))).round().long()
        self.x = self.full[idx]
        self.w = w.to(F32)
        self.ref = self.x @ self.w.t()
        self.norm = float((self.ref * self.ref).sum().clamp(min=1e-30))
        self.qmax, self.n_out, self.group = qmax, n_out, group

    def _q_rot(self, rot: torch.Tensor) -> torch.Tensor:  # per query head
        return rot.repeat_interleave(self.group, 0)

    def loss(self, rot: torch.Tensor) -> torch.Tensor:
        rq = self._q_rot(rot)
        xr = _block(self.x, rq)
        with torch.no_grad():  # the plan: outliers, clip and step from every row
            full = _block(self.full, rq.detach())
            k = full.shape[-1]
            mask = torch.zeros(k, dtype=torch.bool)
            if self.n_out:
                mask[torch.topk(full.abs().amax(0), self.n_out).indices] = True
            spk = full.masked_fill(mask, 0.0)
            base = float(spk.abs().max().clamp(min=1e-12)) / self.qmax
            u = xr.detach().masked_fill(mask, 0.0) / base
            errs = [float(((torch.round(u / c).clamp(-self.qmax, self.qmax) * c - u) ** 2).sum())
                    for c in CLIP_GRID]
            step = base * CLIP_GRID[min(range(len(errs)), key=errs.__getitem__)]
        xq = torch.where(mask, xr, ste_round(xr / step, -self.qmax, self.qmax) * step)
        y = xq @ _block(self.w, rq).t()
        return ((y - self.ref) ** 2).sum() / self.norm


def learn_rotation(x: torch.Tensor, w: torch.Tensor, kv_heads: int, group: int, qmax: int,
                   n_out: int, steps: int) -> tuple[torch.Tensor, float, float]:
    """The orthogonal per-K/V-head rotations ``[kv_heads, d, d]`` with the least output error
    of one ``o`` projection (calibration input rows ``x`` ``[M, heads * d]``, weights ``w``
    ``[N, heads * d]``), after ``steps`` Adam steps from the identity; and the relative
    output error before and after."""
    d = x.shape[-1] // (kv_heads * group)
    prob = _OInput(x, w, qmax, n_out, group)
    s = torch.zeros(kv_heads, d, d, dtype=F32, requires_grad=True)

    def loss_of() -> tuple[torch.Tensor, torch.Tensor]:
        rot = _orth(s)
        return prob.loss(rot), rot

    best_rot, first, best = _least(s, ROT_LR, steps, loss_of,
                                   torch.eye(d, dtype=F32).expand(kv_heads, d, d).clone())
    return best_rot.to(F), first, best


def _least(s: torch.Tensor, lr: float, steps: int, loss_of,
           start: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``steps`` Adam steps at rate ``lr`` on the parameters ``s``; ``loss_of()`` gives the
    loss and the candidate it belongs to. Returns the candidate of least loss (``start``
    if none is finite), the first loss and the least."""
    opt = torch.optim.Adam([s], lr=lr)
    best_c, first, best = start, float("inf"), float("inf")
    for i in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss, cand = loss_of()
        v = float(loss.detach())
        if i == 0:
            first = v
        if v < best:
            best, best_c = v, cand.detach().clone()
        if i < steps:
            loss.backward()
            opt.step()
    return best_c, first, best


def fold_learned_rotations(spec: ArchSpec, params: dict, rec: dict, opts,
                           progress: bool = False) -> tuple[dict, dict[str, tuple]]:
    """Learn (:func:`learn_rotation`) and fold each block's V -> ``o`` rotation into V's
    weight rows and bias and ``o``'s weight columns, and rotate the recorded calibration
    operands ``rec`` to match (in place). ``opts``: the conversion options (the ``o``
    input's encoding and outlier count per node, ``learn_rotation`` steps). Returns the new
    parameters and, per ``o`` node, the relative output error before and after."""
    out = dict(params)
    d, kvh, group = spec.head_dim, spec.kv_heads, spec.heads // spec.kv_heads
    errors: dict[str, tuple] = {}
    for i in tqdm(range(spec.layers), desc="rotate", unit="block", disable=not progress,
                  leave=False):
        p = f"layers.{i}."
        o = opts.for_node(p + "o")
        if not o.encoding.is_spiking or o.encoding.qmin >= 0:
            continue  # integer or unsigned inputs: not what this objective models
        k = spec.heads * d
        n_out = o.outlier_count if o.outlier_count is not None else round(o.outlier_fraction * k)
        x = torch.cat([t.reshape(-1, k) for t in rec[(p + "o", "x")]])
        rot, before, after = learn_rotation(x, params[p + "o.w"], kvh, group, o.encoding.qmax,
                                            max(0, min(k, n_out)), opts.learn_rotation)
        errors[p + "o"] = (before, after)
        rq = rot.repeat_interleave(group, 0)
        wv = params[p + "v.w"].to(F)  # [kvh * d, hidden]: V = x W_v^T, V Q = x (Q^T W_v)^T
        out[p + "v.w"] = torch.einsum("hji,hjk->hik", rot, wv.reshape(kvh, d, -1)).reshape(
            wv.shape).to(torch.float32)
        if p + "v.b" in params:
            out[p + "v.b"] = _block(params[p + "v.b"].to(F), rot).to(torch.float32)
        out[p + "o.w"] = _block(params[p + "o.w"].to(F), rq).to(torch.float32)
        for key, r in (((p + "o", "x"), rq), ((p + "av", "y"), rq), ((p + "av", "v"), rot),
                       ((p + "v", "y"), rot)):
            rec[key] = [_block(t.to(F), r).to(torch.float32) for t in rec[key]]
    return out, errors


# -- learned rotations of the host-rotated inputs ------------------------------------------
#: Widest GEMM input whose host rotation is learned (a dense ``K x K`` matrix the host
#: multiplies each row by, and its ``K^3`` matrix exponential each optimisation step): the
#: inputs after the norms (q, k, v, up: the hidden size) on MiniLM, not ``down`` (1,536).
HOST_ROT_MAX_K = 512
#: Calibration rows of the host rotation's objective.
HOST_ROT_ROWS = 2048
#: Adam's learning rate on the host rotation's skew-symmetric generator.
HOST_ROT_LR = 0.003


def learn_host_rotation(x: torch.Tensor, w: torch.Tensor, qmax: int, n_out: int,
                        per_token: bool, steps: int) -> tuple[torch.Tensor, float, float]:
    """An orthogonal ``Q`` ``[K, K]`` the host applies after today's rotation (``x R Q``;
    the weights absorb it, ``W R Q``), with the least output error of the layers that read
    this input: ``|(Q(x Q) Q^T - x) W^T|^2`` on ``HOST_ROT_ROWS`` evenly spaced calibration
    rows ``x`` (already rotated by ``R``), ``W`` the rotated weights of every layer reading
    it, stacked; ``Q(.)``: the plain quantizer (per-token or static step from the spike
    channels' range times the least-error clip ratio, sign-magnitude codes up to ``qmax``,
    the ``n_out`` largest channels int8, taken as exact), straight-through rounding; after
    ``steps`` Adam steps from ``Q = I``. Unlike the Hadamard, which spreads every direction
    evenly, a learned ``Q`` can also turn the input's few dominant directions onto the int8
    channels. Returns ``Q`` (float64, rounded through float32 as the bundle stores it) and
    the relative output error before and after (the best iterate is kept)."""
    k = x.shape[-1]
    idx = torch.linspace(0, len(x) - 1, min(HOST_ROT_ROWS, len(x))).round().long()
    xs = x[idx].to(F32)
    w32 = w.to(F32)
    gram = w32.t() @ w32
    ref = xs @ w32.t()
    norm = float((ref * ref).sum().clamp(min=1e-30))
    grid = torch.tensor(CLIP_GRID, dtype=F32)
    s = torch.zeros(k, k, dtype=F32, requires_grad=True)

    def loss_of() -> tuple[torch.Tensor, torch.Tensor]:
        q = _orth(s)
        xr = xs @ q
        with torch.no_grad():
            mask = torch.zeros(k, dtype=torch.bool)
            if n_out:
                mask[torch.topk(xr.abs().amax(0), n_out).indices] = True
            spk = xr.masked_fill(mask, 0.0)
            base = spk.abs().amax(1, keepdim=True) if per_token else spk.abs().amax().expand(
                len(xr), 1)
            base = (base / qmax).clamp(min=1e-12)
            u = spk / base
            errs = [float((((torch.round(u / c).clamp(-qmax, qmax) * c - u) * base) ** 2).sum())
                    for c in CLIP_GRID]
            step = base * grid[min(range(len(errs)), key=errs.__getitem__)]
        xq = torch.where(mask, xr, ste_round(xr / step, -qmax, qmax) * step)
        e = xq @ q.t() - xs
        return ((e @ gram) * e).sum() / norm, q

    best_q, first, best = _least(s, HOST_ROT_LR, steps, loss_of, torch.eye(k, dtype=F32))
    return best_q.to(F), first, best
