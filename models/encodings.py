"""Spike encodings and the neurons that produce and consume them.

Every encoding maps an integer *code* (what the quantizer produced) to a *spike train*
``[T, ...]`` and back, exactly. Accumulating a spike train against integer weights gives
the integer dot product ``sum_k w[n, k] * q[k]`` bit for bit. Proofs: ``docs/encodings.md``.

Kinds (``Encoding.kind``):

``ttfs``
    Kirin's time-to-first-spike single spike, unsigned: codes ``0 .. 2**b - 1``, window
    ``T = 2**b - 1``. Code ``q >= 1`` fires once at step ``t = T - q``; ``0`` is silent.
``ttfs-signed``
    The sign-magnitude form: codes ``-(2**(b-1) - 1) .. 2**(b-1) - 1``, window
    ``T = 2**(b-1) - 1``, one spike of value ``sign(q)`` at ``t = T - |q|``.
``rate``
    Integrate-and-fire, binary spikes, ``T`` steps, ``v(0) = theta/2``, soft reset:
    codes ``0 .. T``.
``graded``
    Integer-spiking neuron: up to ``L`` spikes per step (a graded spike ``0 .. L``), ``T``
    steps, codes ``0 .. L*T`` (exact for all n-bit values when ``L*T = 2**n - 1``).
``ternary``
    Spikes in ``{-1, 0, +1}``, subtractive reset, thresholds ``+-theta/2``: codes ``-T .. T``
    (MAR). With ``L > 1``: signed multi-level spikes ``-L .. L`` (SpikingMamba), codes
    ``-L*T .. L*T``.
``if-adaptive``
    SNN2ANN's neuron: integrate-and-fire with **hard reset** and an **adaptive threshold**,
    ``T`` steps, driven by sign-magnitude codes of a fine grid ``-FINE*T .. FINE*T``
    (:data:`FINE` codes per spike). Not exact: its spike count approximates ``q / FINE``
    (:func:`adaptive_table`); the consumer adds the actual spikes, so the GEMM computes
    ``sum_k w[n, k] * count(q[k])`` (:func:`spike_values`).
``int``
    Plain signed integers for the MAC array, ``b`` bits symmetric, one "step".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .contract import int_matmul

KINDS = ("ttfs", "ttfs-signed", "rate", "graded", "ternary", "if-adaptive", "int")
#: Encodings whose spikes feed the two-level (synaptic current I, membrane V) TTFS neuron.
TTFS_KINDS = ("ttfs", "ttfs-signed")
#: Encodings whose train comes from the integrate-and-fire neuron (closed form below).
IF_KINDS = ("rate", "graded", "ternary")
#: The inexact kind: the hard-reset IF neuron with an adaptive threshold (SNN2ANN).
ADAPTIVE = "if-adaptive"
#: Fine-grid codes per spike of ``if-adaptive``: a code ``q`` stands for ``q / FINE`` spikes.
FINE = 8
#: Longest ``if-adaptive`` window: codes ``FINE * T`` must fit the 8-bit activation width.
ADAPTIVE_MAX_STEPS = 255 // FINE


@dataclass(frozen=True)
class Encoding:
    """One spike encoding, with its parameters.

    Parameters
    ----------
    kind:
        One of :data:`KINDS`.
    bits:
        Value bits for ``ttfs``, ``ttfs-signed`` and ``int``.
    steps:
        Time steps ``T`` for ``rate``, ``graded``, ``ternary`` and ``if-adaptive``.
    levels:
        Spikes per step ``L`` for ``graded``.
    """

    kind: str
    bits: int = 4
    steps: int = 0
    levels: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown encoding {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind in ("ttfs", "int") and not 1 <= self.bits <= 16:
            raise ValueError(f"{self.kind} bits must be in 1..16, not {self.bits}")
        if self.kind == "ttfs-signed" and not 2 <= self.bits <= 16:
            raise ValueError(f"ttfs-signed bits must be in 2..16, not {self.bits}")
        if self.kind == ADAPTIVE and not 1 <= self.steps <= ADAPTIVE_MAX_STEPS:
            raise ValueError(f"{self.kind} steps must be in 1..{ADAPTIVE_MAX_STEPS} (codes "
                             f"{FINE}*T must fit 8 bits), not {self.steps}")
        if self.kind in IF_KINDS and not 1 <= self.steps <= 4096:
            raise ValueError(f"{self.kind} steps must be in 1..4096, not {self.steps}")
        if self.kind in ("graded", "ternary") and not 1 <= self.levels <= 255:
            raise ValueError(f"{self.kind} levels must be in 1..255, not {self.levels}")
        if self.kind not in ("graded", "ternary") and self.levels != 1:
            raise ValueError(f"levels is only for graded and ternary spikes, not {self.kind}")

    # -- derived ---------------------------------------------------------------------------
    @property
    def signed(self) -> bool:
        """Whether codes (and spikes) can be negative."""
        return self.kind in ("ttfs-signed", "ternary", ADAPTIVE, "int")

    @property
    def time_steps(self) -> int:
        """Window length T (1 for plain integers)."""
        if self.kind == "ttfs":
            return 2**self.bits - 1
        if self.kind == "ttfs-signed":
            return 2 ** (self.bits - 1) - 1
        if self.kind == "int":
            return 1
        return self.steps

    @property
    def qmin(self) -> int:
        """Smallest code."""
        return -self.qmax if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest code."""
        if self.kind == "int":
            return 2 ** (self.bits - 1) - 1
        if self.kind in ("graded", "ternary"):
            return self.levels * self.steps
        return self.time_steps * self.fine

    @property
    def fine(self) -> int:
        """Codes per unit spike: :data:`FINE` for ``if-adaptive`` (its codes are a finer
        grid than its spikes), 1 for the exact kinds."""
        return FINE if self.kind == ADAPTIVE else 1

    @property
    def exact(self) -> bool:
        """Whether the spikes of a code add up to the code (all kinds but ``if-adaptive``)."""
        return self.kind != ADAPTIVE

    @property
    def is_spiking(self) -> bool:
        """False only for plain integers (the MAC array's encoding)."""
        return self.kind != "int"

    @property
    def threshold(self) -> int:
        """IF threshold theta in code units (the neuron gains q per step)."""
        return self.time_steps

    @property
    def v0(self) -> int:
        """IF initial membrane potential, theta/2 rounded down."""
        return self.threshold // 2

    def name(self) -> str:
        """Short human-readable name, e.g. ``ttfs4`` or ``graded T=5 L=3``."""
        if self.kind in ("ttfs", "ttfs-signed", "int"):
            return f"{self.kind}{self.bits}"
        if self.levels > 1:
            return f"{self.kind} T={self.steps} L={self.levels}"
        return f"{self.kind} T={self.steps}"

    def to_json(self) -> dict:
        """JSON form (round-trips through :meth:`from_json`)."""
        return {"kind": self.kind, "bits": self.bits, "steps": self.steps, "levels": self.levels}

    @classmethod
    def from_json(cls, d: dict) -> Encoding:
        """Inverse of :meth:`to_json`; validates."""
        return cls(d["kind"], int(d["bits"]), int(d["steps"]), int(d["levels"]))

    def signed_variant(self) -> Encoding:
        """The encoding to use for signed data where a zero point is not allowed."""
        if self.signed:
            return self
        if self.kind == "ttfs":
            return Encoding("ttfs-signed", self.bits)
        # rate -> ternary, graded -> signed multi-level spikes, same T and L
        return Encoding("ternary", steps=self.steps, levels=self.levels)


def check_codes(q: torch.Tensor, enc: Encoding, where: str = "codes") -> None:
    """Raise ``ValueError`` naming ``where`` if a code is outside the encoding's range."""
    if q.numel() and (int(q.min()) < enc.qmin or int(q.max()) > enc.qmax):
        raise ValueError(
            f"{where}: codes span [{int(q.min())}, {int(q.max())}], outside "
            f"[{enc.qmin}, {enc.qmax}] of {enc.name()}"
        )


# -- encoders / neurons --------------------------------------------------------------------
def ttfs_fire(u: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """TTFS output neuron with silence threshold: requantized value ``u`` -> spike train.

    In the firing window the neuron's membrane ramps, ``V(t) = |u| + t``; it fires once,
    at the first step where ``V(t) >= T``, i.e. at ``t = T - |u|``. The silence threshold
    ``theta_s = 1`` keeps it silent for ``|u| < 1``: zero costs no spike. ``u`` must already
    be clamped to the code range (the requantizer does that).
    """
    check_codes(u, enc, "ttfs_fire input")
    t_steps = enc.time_steps
    t = torch.arange(t_steps).view(-1, *([1] * u.dim()))
    mag = u.abs()
    fire = (mag >= 1) & (mag + t == t_steps)
    return (fire.to(torch.int8) * torch.sign(u).to(torch.int8)).to(torch.int8)


def if_fire(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """IF neuron (rate, graded, ternary) driven by a constant input ``q`` per step.

    Closed form of the soft-reset neuron with ``v(0) = theta/2``: the cumulative spike count
    after ``t`` steps is ``C(t) = floor((v0 + t*q) / theta)``, so the spike at step ``t`` is
    ``C(t+1) - C(t)``. ``docs/encodings.md`` proves this equals the step-by-step neuron
    (:func:`if_neuron_stepwise`) and that ``C(T) = q``.
    """
    check_codes(q, enc, "if_fire input")
    t = torch.arange(enc.time_steps + 1).view(-1, *([1] * q.dim()))
    c = torch.div(enc.v0 + t * q.to(torch.int64), enc.threshold, rounding_mode="floor")
    return (c[1:] - c[:-1]).to(torch.int8)


def if_neuron_stepwise(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """The literal step-by-step IF neuron (reference for :func:`if_fire`; loops over T)."""
    smin, smax = {"rate": (0, 1), "graded": (0, enc.levels),
                  "ternary": (-enc.levels, enc.levels)}[enc.kind]
    v = torch.full_like(q, enc.v0, dtype=torch.int64)
    out = []
    for _ in range(enc.time_steps):
        v = v + q
        s = torch.div(v, enc.threshold, rounding_mode="floor").clamp(smin, smax)
        v = v - s * enc.threshold
        out.append(s)
    return torch.stack(out).to(torch.int8)


def adaptive_neuron(m: torch.Tensor, steps: int) -> torch.Tensor:
    """SNN2ANN's IF neuron with hard reset and an adaptive threshold, step by step.

    ``m`` (int64, any shape) is the input magnitude, a fine-grid code ``0 .. FINE*T``,
    added to the membrane every step; returns the binary train ``[T, ...]`` (int8). With
    ``theta0 = FINE*T`` (what one spike stands for: a code ``q`` held for ``T`` steps is
    worth ``q/FINE`` spikes), all integers:

    - start: ``v = 0``, ``theta = theta_b = theta0 - floor(7*theta0/16)``;
    - each step: ``v += m``; if ``v >= theta``: spike, ``v = 0`` (hard reset: the excess
      ``v - theta`` is lost) and ``theta = min(theta + FINE/2, theta0)`` (the threshold
      adapts upward after each spike, at most to one spike's worth); else
      ``theta -= floor((theta - theta_b)/8)`` (it relaxes back).

    ``theta_b`` below ``theta0`` offsets the charge a hard reset throws away; the rise
    after a spike holds back the neurons that would fire every step. Constants and the
    resulting count error: ``docs/encodings.md``.
    """
    theta0 = FINE * steps
    base = theta0 - (7 * theta0 >> 4)
    v = torch.zeros_like(m, dtype=torch.int64)
    th = torch.full_like(v, base)
    out = []
    for _ in range(steps):
        v = v + m
        fire = v >= th
        v = torch.where(fire, 0, v)
        th = torch.where(fire, (th + FINE // 2).clamp(max=theta0), th - ((th - base) >> 3))
        out.append(fire)
    return torch.stack(out).to(torch.int8)


@lru_cache(maxsize=64)
def adaptive_table(steps: int) -> torch.Tensor:
    """The trains of :func:`adaptive_neuron` for every magnitude ``0 .. FINE*T``:
    ``[FINE*T + 1, T]`` int8 (row ``m``: the train of input ``m``). Its row sums are the
    spike counts; ``count(m) != m / FINE`` in general (the neuron is not exact)."""
    return adaptive_neuron(torch.arange(FINE * steps + 1), steps).t().contiguous()


def adaptive_fire(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """``if-adaptive`` codes ``q`` -> train ``[T, ...]`` (int8): the neuron of
    :func:`adaptive_neuron` on ``|q|``, each spike carrying ``sign(q)``."""
    check_codes(q, enc, "adaptive_fire input")
    q = q.to(torch.int64)
    train = adaptive_table(enc.steps)[q.abs()]  # [..., T]
    return (train * torch.sign(q).unsqueeze(-1).to(torch.int8)).movedim(-1, 0).contiguous()


def spike_values(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """What the spike array adds per input over the window, in weight rows: the decoded
    spike train of codes ``q`` (int64). The code itself for every exact kind;
    ``sign(q) * count(|q|)`` for ``if-adaptive``, which the golden GEMM must use instead
    of the code (its spikes are the hardware's events)."""
    if enc.exact:
        return q
    check_codes(q, enc, "spike_values input")
    q = q.to(torch.int64)
    counts = adaptive_table(enc.steps).sum(1, dtype=torch.int64)
    return counts[q.abs()] * torch.sign(q)


def encode(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """Codes ``[...]`` -> spike train ``[T, ...]`` (int8). ``int`` gives ``[1, ...]`` values."""
    if enc.kind in TTFS_KINDS:
        return ttfs_fire(q, enc)
    if enc.kind in IF_KINDS:
        return if_fire(q, enc)
    if enc.kind == ADAPTIVE:
        return adaptive_fire(q, enc)
    check_codes(q, enc)
    return q.unsqueeze(0).clone()


def decode(train: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """Spike train -> codes: TTFS reads the spike time, IF kinds count spikes (for
    ``if-adaptive`` the count is :func:`spike_values` of the code, not the code)."""
    if train.shape[0] != enc.time_steps:
        raise ValueError(
            f"spike train has {train.shape[0]} steps, {enc.name()} has {enc.time_steps}"
        )
    if enc.kind in TTFS_KINDS:
        n = train.ne(0).sum(0)
        if n.numel() and int(n.max()) > 1:
            raise ValueError("TTFS spike train has more than one spike for an input")
        t = torch.arange(enc.time_steps).view(-1, *([1] * (train.dim() - 1)))
        return (train.to(torch.int64) * (enc.time_steps - t)).sum(0)
    return train.to(torch.int64).sum(0)


def accumulate(train: torch.Tensor, w: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """Spike-domain dot product: train ``[T, .., M, K]``, weights ``[.., N, K]`` -> ``[.., M, N]``.

    TTFS: each spike adds (or subtracts) its weight row into the synaptic current ``I``
    at its step; every step the membrane adds the current, ``V += I``; after the window
    ``V = sum_k w[n, k] * q[k]``. IF kinds: each spike adds ``s * w`` into ``V`` directly.
    ``int`` is the MAC array: one step, ``V = q @ w.T``.
    """
    # [T, ..., M, N]: what the spike events add at each step
    per_step = int_matmul(train, w.transpose(-1, -2))
    if enc.kind in TTFS_KINDS:
        current = torch.cumsum(per_step, 0)  # I(t)
        return current.sum(0)  # V(T) = sum_t I(t)
    return per_step.sum(0)


def spike_counts(q: torch.Tensor, enc: Encoding) -> tuple[int, int]:
    """(spike events, spike units) that codes ``q`` produce, without building the train.

    Closed forms: TTFS fires once per nonzero code; rate and ternary fire ``|q|`` unit spikes
    on ``|q|`` distinct steps; graded needs the train (events are steps with a nonzero spike);
    ``if-adaptive`` fires ``|spike_values(q)|`` unit spikes on as many steps.
    """
    if enc.kind in TTFS_KINDS:
        n = int(q.count_nonzero())
        return n, n
    if enc.kind in ("rate", "ternary") and enc.levels == 1:
        n = int(q.abs().sum())
        return n, n
    if enc.kind == ADAPTIVE:
        n = int(spike_values(q, enc).abs().sum())
        return n, n
    if enc.kind in ("graded", "ternary"):
        train = if_fire(q, enc)
        return int(train.count_nonzero()), int(q.abs().sum())
    return 0, 0


def spike_events(q: torch.Tensor, enc: Encoding) -> torch.Tensor:
    """The unit spike events of codes ``q`` ``[M, K]``, in the order the hardware takes them.

    Returns int64 ``[E, 4]`` rows ``(m, t, k, sign)`` sorted by row ``m``, then step ``t``,
    then input ``k``; a graded spike of value ``s`` appears ``|s|`` times. Its length is the
    ``spike_units`` of :func:`spike_counts`.
    """
    if enc.kind in TTFS_KINDS:  # one spike per nonzero code, at T - |q|: no train needed
        check_codes(q, enc, "spike_events input")
        m, k = q.nonzero(as_tuple=True)
        v = q[m, k].to(torch.int64)
        t = enc.time_steps - v.abs()
        order = torch.argsort((m * enc.time_steps + t) * q.shape[1] + k)
        return torch.stack([m, t, k, torch.sign(v)], 1)[order]
    train = encode(q, enc).to(torch.int64)  # [T, M, K]
    t, m, k = train.nonzero(as_tuple=True)
    s = train[t, m, k]
    order = torch.argsort((m * train.shape[0] + t) * train.shape[2] + k)
    t, m, k, s = t[order], m[order], k[order], s[order]
    reps = s.abs()
    ev = torch.stack([m, t, k, torch.sign(s)], 1)
    return ev.repeat_interleave(reps, 0)
