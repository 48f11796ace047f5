"""The numerical contract: integer widths, rounding, requantization, event definitions.

Everything that the hardware (``hw/``), the generator (``gen/``), the simulator benches
(``sim/``) and the host driver (``host/``) must agree on bit for bit is defined here,
once. See ``docs/contract.md`` for the prose specification and the proofs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

#: The host's float type: every function between GEMMs (``models.nonlinear``) and every
#: activation quantizer runs in float64, so the golden model's codes are reproducible.
F = torch.float64

#: Accumulator width of both arrays (signed).
ACC_BITS = 32
ACC_MIN = -(2 ** (ACC_BITS - 1))
ACC_MAX = 2 ** (ACC_BITS - 1) - 1

#: Linear-layer weights: signed, symmetric, per output channel: codes in [-7, 7].
WEIGHT_BITS = 4
WEIGHT_QMAX = 2 ** (WEIGHT_BITS - 1) - 1

#: Dynamic operands of the attention matmuls (K of QK^T, V of AV) and outlier activations:
#: signed, symmetric 8 bit: codes in [-127, 127].
INT8_QMAX = 127

#: Row multiplier (per-token step relative to the calibrated reference step), unsigned
#: fixed point with ROW_FRAC fraction bits: ``mrow = 2**ROW_FRAC`` means 1.0.
ROW_FRAC = 15
ROW_MULT_MAX = 2**16 - 1

#: Width of the row multiplier.
ROW_MULT_BITS = ROW_MULT_MAX.bit_length()

#: Largest outlier-channel shift ``p_k`` a converted model may use (4 bits): the default
#: of the accelerator's outlier shift field (``accel.config.AccelConfig.max_shift``).
MAX_OUTLIER_SHIFT = 15

#: Largest requantizer shift (keeps ``acc * mcol`` rounding inside a 48-bit datapath).
MAX_REQ_SHIFT = 47

#: Column multiplier (per output channel), unsigned, at most COL_MULT_BITS bits.
COL_MULT_BITS = 15
COL_MULT_MAX = 2**COL_MULT_BITS - 1

#: Outputs that go back to the host are signed 16-bit at a per-channel step (the default;
#: a conversion may choose 8 bits per GEMM, ``ConvertOptions.host_out_bits``: half the
#: link bytes of reading them back, at a coarser step).
HOST_OUT_BITS = 16
HOST_OUT_QMAX = 2 ** (HOST_OUT_BITS - 1) - 1
#: The widths a host output may have (the output buffer's narrow views, OUT8 and OUT16).
HOST_OUT_WIDTHS = (8, 16)


def host_out_qmax(bits: int = HOST_OUT_BITS) -> int:
    """Largest magnitude of a ``bits``-bit host output (symmetric: ``-qmax .. qmax``)."""
    if bits not in HOST_OUT_WIDTHS:
        raise ValueError(f"host outputs are {' or '.join(map(str, HOST_OUT_WIDTHS))} bits, "
                         f"not {bits}")
    return 2 ** (bits - 1) - 1

#: Intermediate of the two-stage requantizer saturates to this signed width.
REQ_MID_BITS = 32


def signed_bits(bound: int) -> int:
    """Width of a two's complement register that holds every value in ``[-bound, bound]``
    (the spike lanes' registers are sized from such bounds, ``accel.config``)."""
    return max(1, int(bound).bit_length() + 1)


def low_bits(x, bits: int):
    """The low ``bits`` of ``x`` read as a two's complement value: what a weight's narrow
    half holds, and what a packed 4-bit weight unpacks to (ints or integer tensors)."""
    half = 1 << (bits - 1)
    return ((x + half) & ((half << 1) - 1)) - half


class ContractError(ValueError):
    """A value broke the numerical contract (overflow, out-of-range code). Names the place."""


def rshift_round(x: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """Arithmetic right shift with rounding half up: ``floor(x / 2**shift + 1/2)``.

    This is what the hardware does: add ``2**(shift-1)`` then shift right arithmetically.
    ``shift == 0`` returns ``x``. Works on int64 tensors; ``shift`` may be a tensor that
    broadcasts against ``x``.
    """
    shift_t = torch.as_tensor(shift, dtype=torch.int64)
    half = torch.where(shift_t > 0, torch.ones_like(shift_t) << (shift_t - 1).clamp(min=0), 0)
    return (x + half) >> shift_t


def saturate(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Clamp to the signed range of ``bits`` bits."""
    return x.clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def check_range(x: torch.Tensor, lo: int, hi: int, where: str) -> None:
    """Raise :class:`ContractError` naming ``where`` if any element is outside [lo, hi]."""
    if x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
        raise ContractError(
            f"{where}: values span [{int(x.min())}, {int(x.max())}], outside [{lo}, {hi}]"
        )


def check_acc(acc: torch.Tensor, where: str) -> torch.Tensor:
    """Check that an accumulator fits ACC_BITS signed bits; return it as int64."""
    check_range(acc, ACC_MIN, ACC_MAX, f"{where}: accumulator overflow ({ACC_BITS}-bit)")
    return acc.to(torch.int64)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer ``a @ b`` for small integer operands, through float64 BLAS.

    float64 represents every integer below 2**53 exactly, and every partial sum of a dot
    product of 8-bit by 8-bit values over up to 2**37 terms stays below that, so the result
    is exact regardless of summation order. Callers check the int32 range afterwards.
    """
    out = torch.matmul(a.to(torch.float64), b.to(torch.float64))
    return out.round().to(torch.int64)


def requantize(
    acc: torch.Tensor,
    mcol: torch.Tensor,
    shift: int,
    mrow: torch.Tensor,
    bias_fx: torch.Tensor,
    zero_point: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    relu: bool = False,
) -> torch.Tensor:
    """The output neuron unit's fixed-point requantizer (two stages).

    ``acc`` is ``[..., M, N]`` int64 (int32 values); ``mcol``, ``bias_fx``, ``zero_point``,
    ``lo``, ``hi`` are per output channel ``[N]``; ``mrow`` is per row ``[M]``.

    1. ``t = sat32(rshift_round(acc * mcol[n], shift))``     (<= 47-bit product)
    2. ``u = rshift_round(t * mrow[m] + bias_fx[n], ROW_FRAC)`` (<= 48-bit product)
    3. ``y = clamp(u + zero_point[n], lo[n], hi[n])`` (with ``relu``: ``max(u, 0)`` first)
    """
    t = saturate(rshift_round(acc * mcol, shift), REQ_MID_BITS)
    u = rshift_round(t * mrow.unsqueeze(-1) + bias_fx, ROW_FRAC)
    if relu:
        u = u.clamp(min=0)
    return torch.minimum(torch.maximum(u + zero_point, lo), hi)


@dataclass
class Events:
    """Event counts of one GEMM (or a sum of them). The hardware counters must equal these.

    Definitions (see ``docs/contract.md``):

    - ``spikes``: spike events, one per (time step, input element) carrying a nonzero spike;
    - ``spike_units``: the sum of |spike value| (equals ``spikes`` for binary spikes; a graded
      spike of value s counts s);
    - ``acc_spike``: lane accumulates caused by spikes: ``spike_units * N``;
    - ``acc_step``: per-step accumulates of the TTFS neuron (V += I): ``T * M * N``;
    - ``macs``: multiply-accumulates of the integer array: outlier elements and integer
      encodings, ``M * K_int * N``;
    - ``time_steps``: the window length T of the activation encoding (1 for integers);
    - ``weights_in``: weight values written to the accelerator (``K * N``);
    - ``acts_in``: activation values written to the accelerator (``M * K``);
    - ``outs``: output values read back (``M * N``).
    """

    gemms: int = 0
    spikes: int = 0
    spike_units: int = 0
    acc_spike: int = 0
    acc_step: int = 0
    macs: int = 0
    time_steps: int = 0
    weights_in: int = 0
    acts_in: int = 0
    outs: int = 0

    def __add__(self, other: Events) -> Events:
        return Events(
            **{
                f.name: (
                    max(getattr(self, f.name), getattr(other, f.name))
                    if f.name == "time_steps"
                    else getattr(self, f.name) + getattr(other, f.name)
                )
                for f in fields(self)
            }
        )

    @property
    def accumulates(self) -> int:
        """All accumulate operations (per spike and per step)."""
        return self.acc_spike + self.acc_step

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON reports."""
        d = asdict(self)
        d["accumulates"] = self.accumulates
        return d
