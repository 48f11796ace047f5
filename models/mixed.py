"""Mixed hybrids: which linear GEMMs to move from spikes to integer (W4A8) inputs.

``ConvertOptions.min_spike_share`` lets the converter move the linear layers whose 4-bit
spike inputs cost the model most to int8 inputs (the MAC array), as long as the share of
the linear layers' input channels that stay spikes is at least that floor. The choice is
measured on the calibration text, never on evaluation text: the model runs fake-quantized
(:class:`models.distill.FakeQuantOps`: every GEMM input quantized by its plan, the weights
in float so that only the activations' error is seen), once as planned and once per
candidate with that one input quantized by its int8 plan instead; a candidate's gain is how
much that lowers the loss of the output (the distillation's: each token's relative error,
averaged; with the block inputs too, the choice favoured early blocks and measured worse).
Candidates are taken by gain per spike channel given up, largest first, while the floor
holds (one that would break it is skipped, a narrower one may still fit).

Measurements: ``docs/quantization.md`` ("Mixed hybrids").
"""

from __future__ import annotations

import torch

from .arch import LoadedModel
from .bundle import NodeInfo
from .distill import BATCH, F32, FakeQuantOps, _loss, float_taps
from .graph import forward
from .quant import ActPlan

#: Calibration sentences the gains are measured on (evenly spaced over the calibration
#: text; each candidate costs one fake-quantized forward per sentence).
SENSITIVITY_SENTENCES = 32


class _FloatWeightOps(FakeQuantOps):
    """:class:`FakeQuantOps` with float weights: the activations' error only."""

    def weight(self, name: str) -> torch.Tensor:
        return self.codes[name]


def spike_channels(nodes: dict[str, NodeInfo]) -> tuple[int, int]:
    """(spike input channels, all input channels) of the linear layers."""
    total = spikes = 0
    for n in nodes.values():
        if n.kind == "linear":
            total += int(n.K)
            if n.act.encoding.is_spiking:
                spikes += int(n.K) - len(n.act.outliers)
    return spikes, total


def sensitivity(lm: LoadedModel, nodes: dict[str, NodeInfo], weights: dict[str, torch.Tensor],
                signs: dict[int, torch.Tensor], rotq: dict[str, torch.Tensor],
                texts: list[torch.Tensor], alternatives: dict[str, ActPlan]) -> dict[str, float]:
    """The loss (:func:`models.distill._loss`, summed over ``texts``) the model loses when
    node ``n``'s input is quantized by ``alternatives[n]`` instead of its plan, for each
    ``n``; ``weights``: the linear layers' float weights as the converter rotated them."""
    spec = lm.spec
    w = {n: t.to(F32) for n, t in weights.items()}
    b = {n: lm.params[n + ".b"].to(F32) if n + ".b" in lm.params
         else torch.zeros(w[n].shape[0], dtype=F32) for n in w}
    ones = {n: torch.ones(t.shape[0], dtype=F32) for n, t in w.items()}
    w_scales = {n: torch.ones(1, dtype=F32) for n in nodes if nodes[n].kind != "linear"}
    teacher = [t[-1] for t in float_taps(lm, texts)]

    def loss(swap: str | None) -> float:
        total = 0.0
        for i0 in range(0, len(texts), BATCH):
            chunk = texts[i0:i0 + BATCH]
            ops = _FloatWeightOps(spec, lm.params, nodes, w, ones, b, w_scales, signs, rotq)
            ops._int8 = lambda _name, x: x.to(F32)  # K and V exact: only the swap differs
            if swap is not None:
                ops.quant[swap] = type(ops.quant[swap])(alternatives[swap])
            ops.lengths = [len(t) for t in chunk]
            out = forward(spec, lm.params, torch.cat(chunk), ops, lengths=ops.lengths)
            for y, t in zip(out.to(F32).split(ops.lengths), teacher[i0:i0 + BATCH], strict=True):
                total += float(_loss([y], [t]))
        return total

    with torch.no_grad():
        base = loss(None)
        return {n: base - loss(n) for n in alternatives}


def choose(nodes: dict[str, NodeInfo], gains: dict[str, float], floor: float) -> list[str]:
    """The nodes to move to their integer plans: by gain per spike channel given up,
    largest first, skipping any that would take the spike share below ``floor``."""
    spikes, total = spike_channels(nodes)
    cost = {n: int(nodes[n].K) - len(nodes[n].act.outliers) for n in gains}
    chosen = []
    for n in sorted(gains, key=lambda n: (-gains[n] / max(cost[n], 1), n)):
        if gains[n] <= 0:
            break
        if (spikes - cost[n]) >= floor * total:
            spikes -= cost[n]
            chosen.append(n)
    return sorted(chosen)
