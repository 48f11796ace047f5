"""The converted model's hardware workload: every GEMM of a forward pass with the spike
statistics the sizing needs, measured by running the golden model on calibration text."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.contract import WEIGHT_BITS
from models.convert import ConvertedModel, builtin_text
from models.encodings import TTFS_KINDS, Encoding, spike_events
from models.golden import GemmCall, run_golden

from .layouts import wide_weights


@dataclass
class GemmWork:
    """One GEMM (one head of an attention matmul) as the engine sees it."""

    name: str  #: node name (``layers.0.q``); attention heads share it
    head: int | None
    m: int
    k: int
    n: int
    encoding: Encoding
    int_mask: np.ndarray  #: [K] bool, outlier channels on the MAC array
    units: np.ndarray  #: [M, K] unit spike events per row and input channel
    #: [S, 3] the distinct (row, time step, input) of the unit spikes, for the weight reads
    #: the spike array shares (None: not measured; each unit spike is counted as a read)
    spikes: np.ndarray | None = None
    #: [N, K] bool: weights wider than the weight buffer's narrow half (int8 operands), or
    #: one bool for all of them
    wide: np.ndarray | bool = True
    #: results leave as accumulators (no requantization, no requantizer constants read)
    raw: bool = False
    #: ``accel.cycles.gemm_cycles``' cut of this GEMM per buffer configuration (derived
    #: from the fields above, which are not changed after construction)
    split_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_int(self) -> int:
        """Integer (outlier) channels."""
        return int(self.int_mask.sum())

    @property
    def steps(self) -> int:
        """STEP events per row (TTFS time steps; other encodings have none)."""
        return self.encoding.time_steps if self.encoding.kind in TTFS_KINDS else 0

    @property
    def silent_fraction(self) -> float:
        """Fraction of spike-channel inputs that send no spike."""
        spk = ~self.int_mask
        total = self.m * int(spk.sum())
        return float((self.units[:, spk] == 0).sum() / total) if total else 1.0

    @classmethod
    def of(cls, call: GemmCall) -> GemmWork:
        """Statistics of one traced GEMM."""
        m, k = call.codes.shape
        spk = call.codes.masked_fill(call.int_mask, 0)
        units = np.zeros((m, k), dtype=np.int32)
        spikes = np.zeros((0, 3), dtype=np.int64)
        if call.encoding.is_spiking:
            ev = spike_events(spk, call.encoding)
            flat = (ev[:, 0] * k + ev[:, 2]).bincount(minlength=m * k)
            units = flat.view(m, k).numpy().astype(np.int32)
            spikes = np.unique(ev[:, :3].numpy(), axis=0)
        wide = wide_weights(call.w, WEIGHT_BITS).numpy()
        return cls(call.name, call.head, m, k, call.w.shape[0], call.encoding,
                   call.int_mask.numpy().astype(bool), units, spikes, wide, bool(call.raw))


def sample_ids(lm, tokens: int) -> torch.Tensor:
    """A calibration-text sequence of about ``tokens`` tokens (sentences joined)."""
    text = " ".join(builtin_text("calibration"))
    return lm.tokenize(text, tokens)


def measure(cm: ConvertedModel, ids: torch.Tensor) -> tuple[list[GemmWork], dict]:
    """Every GEMM of one forward pass of ``ids`` and the golden events per layer."""
    trace: list[GemmCall] = []
    _, events = run_golden(cm, ids, trace=trace)
    return [GemmWork.of(c) for c in trace], events
