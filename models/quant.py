"""Quantization: activation plans (Spike Matrix Hybridization), weights, rotation, epilogues.

An activation entering a GEMM is split per *channel* (input feature ``k``):

- most channels become spike codes of the layer's encoding at step ``s`` with zero point
  ``z`` (real value ``(q - z) * s``);
- a few *outlier channels* stay 8-bit integers at step ``s * 2**p`` (real value
  ``q * s * 2**p``), so the MAC array adds ``(w * q) << p`` into the same accumulator.

With ``per_token`` the host picks a step per row, expressed as a 16-bit multiple ``mrow``
of the calibrated reference step (``s_m = s * mrow / 2**15``), so everything downstream
stays fixed point. Rules and rounding: ``docs/quantization.md``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from .arch import ModelInputError, _is_int, _is_num
from .contract import (
    COL_MULT_MAX,
    INT8_QMAX,
    MAX_OUTLIER_SHIFT,
    MAX_REQ_SHIFT,
    ROW_FRAC,
    ROW_MULT_MAX,
    ContractError,
    F,
)
from .encodings import Encoding

ONE = 2**ROW_FRAC  # mrow value meaning a factor of 1.0


def encoding_from_json(d, where: str = "encoding") -> Encoding:
    """:meth:`Encoding.from_json` with type checks (:class:`ModelInputError` naming ``where``)."""
    if not isinstance(d, dict):
        raise ModelInputError(f"{where}: must be a JSON object, not {type(d).__name__}")
    for name, check in (("kind", lambda v: isinstance(v, str)), ("bits", _is_int),
                        ("steps", _is_int), ("levels", _is_int)):
        if name not in d:
            raise ModelInputError(f"{where}: missing field {name}")
        if not check(d[name]):
            raise ModelInputError(f"{where}.{name}: wrong type, not {d[name]!r:.60}")
    try:
        return Encoding.from_json(d)
    except ValueError as e:
        raise ModelInputError(f"{where}: {e}") from e


@dataclass
class ActPlan:
    """How one GEMM's activation operand is quantized and split.

    Attributes
    ----------
    encoding: spike (or integer) encoding of the non-outlier channels.
    zero_point: code of real zero for unsigned encodings (0 for signed ones).
    step: static step, or the reference step of per-token steps.
    per_token: choose a step per row (host-produced activations only).
    outliers: indices of the outlier channels (8-bit integers on the MAC array).
    outlier_shifts: ``p_k`` per outlier channel: its step is ``step * 2**p_k``.
    rotate: the host rotates the activation (``x @ R``) before quantizing it.
    learned_rotation: then multiplies it by the node's learned orthogonal matrix
        (``<node>.rotq``, ``[K, K]``; :mod:`models.rotation`): ``x @ R @ Q``.
    clip: per-token steps are ``clip`` times the row's range (calibrated; < 1 clips).
    offset: the quantizer's rounding offset on spike channels, ``round(x / s + offset)``:
        the IF neuron's initial membrane ``v(0) = theta * (offset + 1/2)`` (0: ``theta/2``,
        round to nearest); in ``[-1/2, 1/2)``. Set by threshold calibration
        (:mod:`models.calibrate`); a requantizer producing these codes adds it to its bias.
    scales: per-channel step multipliers of the spike channels (a per-neuron threshold):
        channel ``k``'s step is ``s * scales[k]``, and the consumer's weight column ``k``
        carries ``scales[k]`` (folded in before weight quantization); empty: all 1.
    """

    encoding: Encoding
    zero_point: int = 0
    step: float = 1.0
    per_token: bool = False
    outliers: list[int] = field(default_factory=list)
    outlier_shifts: list[int] = field(default_factory=list)
    rotate: bool = False
    clip: float = 1.0
    offset: float = 0.0
    scales: list[float] = field(default_factory=list)
    learned_rotation: bool = False

    def to_json(self) -> dict:
        """Manifest form (``offset``, ``scales`` and ``learned_rotation`` only where set)."""
        d = dict(encoding=self.encoding.to_json(), zero_point=self.zero_point,
                 step=self.step, per_token=self.per_token, outliers=list(self.outliers),
                 outlier_shifts=list(self.outlier_shifts), rotate=self.rotate, clip=self.clip)
        if self.offset:
            d["offset"] = self.offset
        if self.scales:
            d["scales"] = list(self.scales)
        if self.learned_rotation:
            d["learned_rotation"] = True
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "act") -> ActPlan:
        """Inverse of :meth:`to_json`; checks every field (:class:`ModelInputError` naming
        ``where`` and the field)."""
        if not isinstance(d, dict):
            raise ModelInputError(f"{where}: must be a JSON object, not {type(d).__name__}")
        names = ("encoding", "zero_point", "step", "per_token", "outliers", "outlier_shifts",
                 "rotate", "clip")
        missing = [n for n in names if n not in d]
        if missing:
            raise ModelInputError(f"{where}: missing field(s) {', '.join(missing)}")

        def bad(name: str, what: str) -> ModelInputError:
            v = repr(d[name])
            v = v if len(v) <= 60 else v[:57] + "..."
            return ModelInputError(f"{where}.{name}: {what}, not {v}")

        enc = encoding_from_json(d["encoding"], f"{where}.encoding")
        z = d["zero_point"]
        if not _is_int(z):
            raise bad("zero_point", "must be an integer")
        if (enc.signed or not enc.is_spiking) and z != 0:
            raise bad("zero_point", f"must be 0 for the signed encoding {enc.name()}")
        if not 0 <= z <= enc.qmax:
            raise bad("zero_point", f"must be in 0..{enc.qmax} for {enc.name()}")
        for name, hi in (("step", math.inf), ("clip", 1.0)):
            v = d[name]
            if not _is_num(v) or not (0 < v <= hi and math.isfinite(v)):
                raise bad(name, "must be a positive finite number" +
                          (f" at most {hi:g}" if hi < math.inf else ""))
        for name in ("per_token", "rotate"):
            if not isinstance(d[name], bool):
                raise bad(name, "must be true or false")
        out, sh = d["outliers"], d["outlier_shifts"]
        if not isinstance(out, list) or not all(_is_int(i) and i >= 0 for i in out):
            raise bad("outliers", "must be a list of channel indices (integers >= 0)")
        if any(b <= a for a, b in itertools.pairwise(out)):
            raise bad("outliers", "must be strictly increasing")
        if not isinstance(sh, list) or len(sh) != len(out):
            raise bad("outlier_shifts", f"must be a list of {len(out)} shifts (one per outlier)")
        if not all(_is_int(p) and 0 <= p <= MAX_OUTLIER_SHIFT for p in sh):
            raise bad("outlier_shifts", f"must be integers in 0..{MAX_OUTLIER_SHIFT}")
        off, sc = d.get("offset", 0.0), d.get("scales", [])
        if not _is_num(off) or not -0.5 <= off < 0.5:
            raise bad("offset", "must be a number in [-0.5, 0.5)")
        if not isinstance(sc, list) or not all(_is_num(c) and 0 < c < math.inf for c in sc):
            raise bad("scales", "must be a list of positive finite numbers")
        lr = d.get("learned_rotation", False)
        if not isinstance(lr, bool) or (lr and not d["rotate"]):
            raise bad("learned_rotation", "must be true or false, and true only with rotate")
        return cls(enc, z, float(d["step"]), d["per_token"], list(out), list(sh), d["rotate"],
                   float(d["clip"]), float(off), [float(c) for c in sc], lr)

    def spike_scales(self, k: int) -> torch.Tensor:
        """Per-channel step multipliers ``[k]`` (float64) of the spike channels: ``scales``,
        or all 1. Raises :class:`ModelInputError` if ``scales`` does not have ``k`` entries."""
        if not self.scales:
            return torch.ones(k, dtype=F)
        if len(self.scales) != k:
            raise ModelInputError(f"act.scales has {len(self.scales)} entries, the GEMM input "
                                  f"has {k} channels")
        return torch.tensor(self.scales, dtype=F)

    def zero_correction(self, codes: torch.Tensor) -> torch.Tensor:
        """The accumulator start of each output channel of weight codes ``[N, K]`` that
        removes the zero point of this input's spike channels: ``-zp * sum_k w[n, k]`` over
        them (0 for signed codes)."""
        return -self.zero_point * (codes * ~self.outlier_mask(codes.shape[1])).sum(1)

    def outlier_mask(self, k: int) -> torch.Tensor:
        """Boolean ``[k]`` mask of integer channels (all of them for the ``int`` encoding)."""
        if not self.encoding.is_spiking:
            return torch.ones(k, dtype=torch.bool)
        mask = torch.zeros(k, dtype=torch.bool)
        idx = [i for i in self.outliers if i < k]
        mask[idx] = True
        return mask

    def shifts(self, k: int) -> torch.Tensor:
        """Per-channel left shift ``[k]`` of the integer products (0 for spike channels and
        for the ``int`` encoding)."""
        out = torch.zeros(k, dtype=torch.int64)
        if self.encoding.is_spiking:
            for i, p in zip(self.outliers, self.outlier_shifts, strict=True):
                if i < k:
                    out[i] = p
        return out

    def channel_targets(self, k: int) -> tuple[torch.Tensor, ...]:
        """Per channel (step multiplier, zero point, lo, hi) that a producer must emit: the
        multiplier is ``2**p_k`` for outlier channels, ``scales[k]`` for spike channels
        (divided by ``encoding.fine``: ``step`` is what one spike stands for, and the codes
        of ``if-adaptive`` are a grid ``FINE`` times finer)."""
        mask = self.outlier_mask(k)
        enc = self.encoding
        qo = INT8_QMAX if enc.is_spiking else enc.qmax
        mult = (2.0 ** self.shifts(k)).to(F)
        if self.scales and enc.is_spiking:
            mult = torch.where(mask, mult, self.spike_scales(k))
        if enc.fine > 1:  # if-adaptive: codes on a grid FINE times finer than the spikes
            mult = torch.where(mask, mult, mult / enc.fine)
        zp = torch.where(mask, 0, self.zero_point)
        lo = torch.where(mask, -qo, enc.qmin)
        hi = torch.where(mask, qo, enc.qmax)
        return mult, zp, lo, hi


def token_steps(x: torch.Tensor, plan: ActPlan) -> torch.Tensor:
    """The step each row needs so its spike channels fit the code range (float64)."""
    mask = plan.outlier_mask(x.shape[-1])
    enc, z = plan.encoding, plan.zero_point
    if plan.scales and enc.is_spiking:  # each channel in units of its own step multiplier
        x = x / plan.spike_scales(x.shape[-1])
    xs = x.masked_fill(mask, 0.0) if plan.encoding.is_spiking else x
    hi = xs.amax(-1).clamp(min=0.0)
    lo = (-xs.amin(-1)).clamp(min=0.0)
    if enc.signed or z == 0:
        top = enc.qmax // enc.fine  # in spikes: the step is one spike's worth
        step = (torch.maximum(hi, lo) if enc.signed else hi) / top
    else:
        step = torch.maximum(hi / max(enc.qmax - z, 1), lo / z)
    return step * plan.clip


def row_multipliers(x: torch.Tensor, plan: ActPlan) -> torch.Tensor:
    """``mrow [..., M]``: each row's step as a 16-bit multiple of the reference step (the
    row's step is ``plan.step * mrow / 2**15``; all ``2**15`` for static steps)."""
    if plan.per_token:
        ratio = token_steps(x, plan) / plan.step
        return torch.round(ratio * ONE).clamp(1, ROW_MULT_MAX).to(torch.int64)
    return torch.full(x.shape[:-1], ONE, dtype=torch.int64)


def quantize_act(x: torch.Tensor, plan: ActPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Host encoder: float64 ``[..., M, K]`` -> (codes int64 ``[..., M, K]``, mrow ``[..., M]``).

    Rounding is round-half-to-even (IEEE ``roundTiesToEven``) in float64, then clamping.
    A calibrated ``plan.offset`` is added to the spike channels' ``x / step`` before rounding.
    """
    mrow = row_multipliers(x, plan)
    s = (plan.step * mrow.to(F) / ONE).unsqueeze(-1)
    mult, zp, lo, hi = plan.channel_targets(x.shape[-1])
    y = x / (s * mult)
    if plan.offset and plan.encoding.is_spiking:
        y = y + torch.full((x.shape[-1],), plan.offset, dtype=F).masked_fill(
            plan.outlier_mask(x.shape[-1]), 0.0)
    q = torch.round(y) + zp
    return torch.minimum(torch.maximum(q, lo), hi).to(torch.int64), mrow


def dequantize_act(q: torch.Tensor, mrow: torch.Tensor, plan: ActPlan) -> torch.Tensor:
    """Real value the codes stand for (for error analysis and tests)."""
    mult, zp, _, _ = plan.channel_targets(q.shape[-1])
    s = (plan.step * mrow.to(F) / ONE).unsqueeze(-1)
    return (q - zp).to(F) * s * mult


# -- rotation ------------------------------------------------------------------------------
def hadamard(n: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of size ``n`` (a power of two), entries +-1."""
    h = torch.ones(1, 1, dtype=F)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def rotation_block(n: int) -> int:
    """Block size of the rotation for dimension ``n``: the largest power of two dividing it."""
    return n & -n


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """``x @ R`` with ``R = diag(signs) . blockdiag(H_b / sqrt(b))``, orthogonal.

    Spreads outlier channels over a block before 4-bit quantization (QuaRot-style); the
    weights absorb ``R`` offline (``W' = W R``), so ``x R (W R)^T = x W^T``.
    """
    n = x.shape[-1]
    b = block or rotation_block(n)
    xs = (x * signs.to(F)).reshape(*x.shape[:-1], n // b, b)
    return (xs @ hadamard(b) / math.sqrt(b)).reshape(x.shape)


def rotation_signs(n: int, seed: int) -> torch.Tensor:
    """Seeded random +-1 vector of length ``n`` (stored in the bundle, not regenerated)."""
    g = torch.Generator().manual_seed(seed * 1000003 + n)
    return (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(torch.int8)


# -- weights -------------------------------------------------------------------------------
#: Clip ratios of the per-channel weight step search (1.0 = the channel's max).
WEIGHT_CLIPS = tuple(float(r) for r in torch.linspace(1.0, 0.5, 21, dtype=F))


def weight_scale(w: torch.Tensor, qmax: int, search: bool = True,
                 hess: torch.Tensor | None = None) -> torch.Tensor:
    """Per-output-channel symmetric step; ``search`` picks the clip ratio (``WEIGHT_CLIPS``)
    with the least error: the weight error ``|e|^2`` or, given ``hess = X^T X`` of the
    layer's calibration inputs, the output error ``e H e^T`` that the rounding error ``e``
    of the row causes on those inputs (float32: only the choice depends on it)."""
    amax = w.abs().amax(1).clamp(min=1e-12)
    if not search:
        return amax / qmax
    w32 = w.to(torch.float32)
    h = None if hess is None else (hess / hess.diagonal().mean().clamp(min=1e-30)).to(w32.dtype)
    steps = amax[None, :] * torch.tensor(WEIGHT_CLIPS, dtype=F)[:, None] / qmax  # [R, N]
    errs = []
    for s in steps.to(torch.float32):
        e = torch.round(w32 / s[:, None]).clamp(-qmax, qmax) * s[:, None] - w32
        errs.append((e * e).sum(1) if h is None else ((e @ h) * e).sum(1))
    best = torch.stack(errs).argmin(0)  # first (largest) ratio among equals
    return steps.gather(0, best[None])[0]


def quantize_weight_rtn(w: torch.Tensor, s: torch.Tensor, qmax: int) -> torch.Tensor:
    """Round-to-nearest codes for per-channel steps ``s``."""
    return torch.round(w / s[:, None]).clamp(-qmax, qmax).to(torch.int64)


def gptq_inverse(hess: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor of the damped inverse Hessian that GPTQ
    propagates rounding errors with (float64), and the mask of input channels that never
    carried anything (their weights are irrelevant and quantized as 0)."""
    h = hess.clone().to(F)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=F)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return u, dead


def gptq_rows(w: torch.Tensor, s: torch.Tensor, qmax: int, hinv: torch.Tensor,
              block: int = 128) -> torch.Tensor:
    """The GPTQ column loop on a batch: weights ``w [B, N, K]`` (already in quantization
    order), steps ``s [B, N]``, upper Cholesky factors ``hinv [B, K, K]`` of the inverse
    Hessians (:func:`gptq_inverse`); returns int64 codes ``[B, N, K]``.

    Runs in float32: the codes depend on it only through ties, and the same inputs give the
    same codes on every run. Rows are independent, so layers that share an input (and so a
    Hessian) can be stacked along ``N``, and layers of the same shape along ``B``."""
    w = w.to(torch.float32).clone()
    s = s.to(torch.float32)[..., None]  # [B, N, 1]
    hinv = hinv.to(torch.float32)
    q_all = torch.empty(w.shape, dtype=torch.float32)
    k = w.shape[-1]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[..., i1:i2].clone()
        q1 = q_all[..., i1:i2]
        err1 = torch.empty_like(w1)
        h1 = hinv[:, i1:i2, i1:i2]
        hd = h1.diagonal(dim1=1, dim2=2)[..., None]  # [B, blk, 1]
        for i in range(i2 - i1):
            col = w1[..., i:i + 1]  # [B, N, 1]
            q = torch.round(col / s).clamp_(-qmax, qmax)
            q1[..., i:i + 1] = q
            e = (col - q * s) / hd[:, i:i + 1]
            err1[..., i:i + 1] = e
            w1[..., i + 1:] -= e * h1[:, i:i + 1, i + 1:]
        if i2 < k:
            w[..., i2:] -= torch.bmm(err1, hinv[:, i1:i2, i2:])
    return q_all.to(torch.int64)


def quantize_weight_gptq(w: torch.Tensor, s: torch.Tensor, qmax: int, hess: torch.Tensor,
                         block: int = 128, damp: float = 0.01,
                         act_order: bool = True) -> torch.Tensor:
    """GPTQ (Frantar et al. 2022): quantize columns in order, pushing each column's rounding
    error onto the not-yet-quantized columns through the inverse Hessian of the layer
    input (``hess = X^T X`` over the calibration tokens, dampened by ``damp`` times its mean
    diagonal). Same steps ``s`` as RTN. ``act_order`` takes the columns with the largest
    input energy first."""
    perm = (torch.argsort(torch.diag(hess), descending=True, stable=True) if act_order
            else torch.arange(w.shape[1]))
    u, dead = gptq_inverse(hess[perm][:, perm], damp)
    wp = w[:, perm].to(F).masked_fill(dead[None, :], 0.0)
    q = gptq_rows(wp[None], s[None], qmax, u[None], block)[0]
    return q[:, torch.argsort(perm)]


# -- epilogue ------------------------------------------------------------------------------
def fixed_point(ratio: torch.Tensor, where: str) -> tuple[torch.Tensor, int]:
    """Per-channel multipliers and one shift: ``ratio ~= mcol / 2**shift``, mcol <= 15 bits."""
    top = float(ratio.max())
    if not math.isfinite(top) or top <= 0:
        raise ContractError(f"{where}: requantization ratio must be positive and finite")
    shift = max(0, min(MAX_REQ_SHIFT, math.floor(math.log2(COL_MULT_MAX / top))))
    mcol = torch.round(ratio * 2.0**shift).to(torch.int64)
    if int(mcol.max()) > COL_MULT_MAX:  # log2 rounding at the boundary
        shift -= 1
        mcol = torch.round(ratio * 2.0**shift).to(torch.int64)
    return mcol, shift
