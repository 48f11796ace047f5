"""Quantization-aware distillation: a short fine-tune of the converted model's weights.

After the converter has chosen every activation plan and rounded the weights (GPTQ), the
model is run as a *fake-quantized* float model (:class:`FakeQuantOps`, float32 products):
every GEMM input is quantized and dequantized by its own plan (per-token steps and their
16-bit row multipliers, int8 outlier channels at their shifts, the static steps of the
inputs the output neuron unit produces), the dynamic operands K and V by their int8
per-channel steps, and the 4-bit weights at their per-channel steps. Rounding passes the
gradient straight through where the code is not clamped (straight-through estimator).

The 4-bit weights (as real-valued codes, ``w / s``, starting at the converter's codes), the
linear layers' biases and the host's norm parameters are trained against the float model's
hidden states (every block's input and the final output) on the calibration text, never on
evaluation text. The result goes back to the converter as codes, biases and host parameters
at the *unchanged* plans and steps, so the rest of the conversion (outlier shifts, epilogues,
the contract's checks) and the golden model see an ordinary converted model: bit-exact by
construction. Deterministic: seeded order, one thread, fixed operations.

Measurements and the choice of defaults: ``docs/quantization.md``.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from .arch import ArchSpec, LoadedModel
from .bundle import NodeInfo
from .contract import INT8_QMAX, ROW_MULT_MAX, WEIGHT_QMAX, F
from .graph import FloatOps, forward, merge_heads, split_heads
from .lm_head import is_host_param
from .quant import ONE, ActPlan, hadamard, rotation_block, row_multipliers

F32 = torch.float32
#: Sentences whose gradients are summed before one optimizer step.
BATCH = 8
#: Learning rate of the biases and norm parameters, relative to the codes' (codes move in
#: steps of one code; 0.01 and 0.1 gained less).
CONTINUOUS_LR = 0.3


def ste_round(v: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """``clamp(round(v), lo, hi)`` whose gradient is 1 where ``round(v)`` is inside
    ``[lo, hi]`` and 0 where it is clamped (the straight-through estimator)."""
    r = torch.round(v.detach())
    inside = (r >= lo) & (r <= hi)
    q = torch.minimum(torch.maximum(r, torch.as_tensor(lo, dtype=r.dtype)),
                      torch.as_tensor(hi, dtype=r.dtype))
    return q + (v - v.detach()) * inside


class _ActQuant:
    """One GEMM input's quantizer (:func:`models.quant.quantize_act`, dequantized), with
    the straight-through gradient; per-channel constants cached per input width."""

    def __init__(self, plan: ActPlan):
        self.plan = plan
        self._consts: dict[int, tuple] = {}

    def consts(self, k: int) -> tuple:
        if k not in self._consts:
            mult, zp, lo, hi = self.plan.channel_targets(k)
            off = torch.zeros(k, dtype=F32)
            if self.plan.offset and self.plan.encoding.is_spiking:
                off = off.fill_(self.plan.offset).masked_fill(self.plan.outlier_mask(k), 0.0)
            self._consts[k] = (mult.to(F32), zp.to(F32), lo.to(F32), hi.to(F32), off)
        return self._consts[k]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mult, zp, lo, hi, off = self.consts(x.shape[-1])
        with torch.no_grad():  # the row steps are the host's (16-bit multiples), not trained
            mrow = row_multipliers(x.detach().to(F), self.plan).clamp(max=ROW_MULT_MAX)
            s = (self.plan.step * mrow.to(F) / ONE).to(F32).unsqueeze(-1) * mult
        return (ste_round(x / s + off + zp, lo, hi) - zp) * s


class FakeQuantOps(FloatOps):
    """The ``ops`` of :func:`models.graph.forward` computing the converted model in float:
    each GEMM's inputs quantized by their plans, its weights at their 4-bit steps.

    ``nodes``: the converter's nodes (plans); ``codes``: trainable real-valued weight codes
    per linear layer (``w / s``, rotated where the input is); ``steps``: the per-channel
    weight steps; ``biases``: trainable biases; ``w_scales``: the int8 steps of K (``qk``)
    and V (``av``) per node; ``signs``: the rotation signs per width; ``params``: the host
    parameters (float, trainable norms). ``taps`` collects the block inputs (the ``x`` of
    every ``.q`` layer) of the last forward."""

    def __init__(self, spec: ArchSpec, params: dict, nodes: dict[str, NodeInfo],
                 codes: dict[str, torch.Tensor], steps: dict[str, torch.Tensor],
                 biases: dict[str, torch.Tensor], w_scales: dict[str, torch.Tensor],
                 signs: dict[int, torch.Tensor], rotq: dict[str, torch.Tensor] | None = None):
        super().__init__(spec, params)
        self.rotq = {n: q.to(F32) for n, q in (rotq or {}).items()}
        self.nodes, self.codes, self.steps, self.biases = nodes, codes, steps, biases
        self.w_scales = {k: v.to(F32) for k, v in w_scales.items()}
        self.quant = {n: _ActQuant(node.act) for n, node in nodes.items()}
        self.rot: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for k, sg in signs.items():
            b = rotation_block(k)
            self.rot[k] = (sg.to(F32), (hadamard(b) / math.sqrt(b)).to(F32))
        self.taps: list[torch.Tensor] = []
        #: the lengths of the sequences laid end to end when :func:`models.graph.forward`
        #: runs with ``lengths`` (the same list); None: one sequence
        self.lengths: list[int] | None = None

    def _param(self, key: str) -> torch.Tensor:  # no cached copies: they are trained
        return self.params[key].to(F)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        sg, h = self.rot[x.shape[-1]]
        n, b = x.shape[-1], h.shape[0]
        return ((x * sg).reshape(*x.shape[:-1], n // b, b) @ h).reshape(x.shape)

    def weight(self, name: str) -> torch.Tensor:
        """The 4-bit weights of ``name`` as the model uses them (``codes * step``)."""
        return ste_round(self.codes[name], -WEIGHT_QMAX, WEIGHT_QMAX) * self.steps[name][:, None]

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name.endswith(".q"):
            self.taps.append(x)
        x = x.to(F32)
        if self.nodes[name].act.rotate:
            x = self._rotate(x)
        if self.nodes[name].act.learned_rotation:
            x = x @ self.rotq[name]
        y = self.quant[name](x) @ self.weight(name).t() + self.biases[name]
        return y.to(F)

    def _int8(self, name: str, t: torch.Tensor) -> torch.Tensor:
        s = self.w_scales[name]
        return ste_round(t.to(F32) / s, -INT8_QMAX, INT8_QMAX) * s

    def attn_scores(self, name: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        qh = split_heads(self.quant[name](q.to(F32)), spec.heads)
        kh = split_heads(self._int8(name, k), spec.kv_heads)
        kh = kh.repeat_interleave(spec.heads // spec.kv_heads, 0)
        return (qh @ kh.transpose(1, 2) / math.sqrt(spec.head_dim)).to(F)

    def attn_values(self, name: str, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        vh = split_heads(self._int8(name, v), spec.kv_heads)
        vh = vh.repeat_interleave(spec.heads // spec.kv_heads, 0)
        p = p.to(F32)
        if self.lengths is None:
            return merge_heads(self.quant[name](p) @ vh).to(F)
        # several sequences: the keys are the channels of PV's input (the outlier channels
        # are key positions), so each sequence's block is quantized alone; the probabilities
        # outside the blocks are exactly 0 and stay 0
        out, a = [], 0
        for n in self.lengths:
            out.append(self.quant[name](p[:, a:a + n, a:a + n]) @ vh[:, a:a + n])
            a += n
        return merge_heads(torch.cat(out, 1)).to(F)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("distillation matches hidden states, not logits")


class _TapOps(FloatOps):
    """The float reference, keeping the block inputs like :class:`FakeQuantOps`."""

    def __init__(self, spec: ArchSpec, params: dict):
        super().__init__(spec, params)
        self.taps: list[torch.Tensor] = []

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name.endswith(".q"):
            self.taps.append(x)
        return super().linear(name, x)


def _loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the taps (block inputs, final hidden states) of each token's relative
    squared error ``|s - t|^2 / |t|^2``, averaged over the tokens: per token, so that BERT's
    first token with its massive activations does not decide the fit (per-channel weights,
    tried first, favoured channels of no weight and gained less)."""
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        total = total + (((s - t) ** 2).sum(-1) / (t * t).sum(-1).clamp(min=1e-12)).mean()
    return total / len(student)


def float_taps(lm: LoadedModel, texts: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The float model's taps (every block input, then the output) per sequence of
    ``texts``, float32; run ``BATCH`` sequences at a time."""
    out = []
    with torch.no_grad():
        for i0 in range(0, len(texts), BATCH):
            chunk = texts[i0:i0 + BATCH]
            lengths = [len(t) for t in chunk]
            ops = _TapOps(lm.spec, lm.params)
            y = forward(lm.spec, lm.params, torch.cat(chunk), ops, lengths=lengths)
            taps = [t.to(F32).split(lengths) for t in [*ops.taps, y]]
            out += [[t[j] for t in taps] for j in range(len(chunk))]
    return out


def batch_loss(ops: FakeQuantOps, texts: list[torch.Tensor],
               teacher: list[list[torch.Tensor]]) -> torch.Tensor:
    """The mean over ``texts`` of each sequence's :func:`_loss` against its ``teacher``
    taps, the sequences run through ``ops`` together (laid end to end)."""
    lengths = [len(t) for t in texts]
    ops.lengths = lengths
    y = forward(ops.spec, ops.params, torch.cat(texts), ops, lengths=lengths)
    taps = [t.to(F32).split(lengths) for t in [*ops.taps, y]]
    return sum((_loss([t[j] for t in taps], teacher[j]) for j in range(len(texts))),
               torch.zeros((), dtype=F32)) / len(texts)


def distill(lm: LoadedModel, nodes: dict[str, NodeInfo], codes: dict[str, torch.Tensor],
            steps: dict[str, torch.Tensor], biases: dict[str, torch.Tensor],
            w_scales: dict[str, torch.Tensor], signs: dict[int, torch.Tensor],
            texts: list[torch.Tensor], epochs: int, lr: float, seed: int,
            progress: bool = False, rotq: dict[str, torch.Tensor] | None = None,
            ) -> tuple[dict, dict, dict]:
    """Fine-tune the fake-quantized model against the float one on the token sequences
    ``texts`` for ``epochs`` passes (Adam, ``lr`` in weight codes per step for the weights,
    ``lr * CONTINUOUS_LR`` for biases and norm parameters, cosine decay; sentences in a
    seeded order, gradients summed over ``BATCH`` sentences).

    ``lm``: the float model as the converter sees it (rotations and smoothing folded in);
    ``codes``, ``steps``, ``biases``: the linear layers' integer codes ``[N, K]``,
    per-channel steps and float biases; ``w_scales``: the int8 steps of K and V per
    attention node. Returns (codes int64, biases float64, host parameters float32): the
    trained codes, the trained biases, and ``lm.params`` with the trained norms."""
    spec = lm.spec
    teacher = float_taps(lm, texts)
    u = {n: c.to(F32).clone().requires_grad_(True) for n, c in codes.items()}
    b = {n: biases[n].to(F32).clone().requires_grad_(True) for n in codes}
    norms = {k: v.to(F32).clone().requires_grad_(True) for k, v in lm.params.items()
             if is_host_param(k) and "norm" in k}
    params = dict(lm.params) | norms
    st = {n: s.to(F32) for n, s in steps.items()}
    opt = torch.optim.Adam([{"params": list(u.values()), "lr": lr},
                            {"params": list(b.values()) + list(norms.values()),
                             "lr": lr * CONTINUOUS_LR}])
    n_steps = epochs * -(-len(texts) // BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, n_steps) / n_steps)))
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=n_steps, desc="distill", unit="step", disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=gen).tolist()
        for i0 in range(0, len(order), BATCH):
            opt.zero_grad(set_to_none=True)
            batch = order[i0:i0 + BATCH]
            ops = FakeQuantOps(spec, params, nodes, u, st, b, w_scales, signs, rotq)
            loss = batch_loss(ops, [texts[j] for j in batch], [teacher[j] for j in batch])
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    bar.close()
    with torch.no_grad():
        new_codes = {n: torch.round(v).clamp(-WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int64)
                     for n, v in u.items()}
        new_bias = {n: v.detach().to(F) for n, v in b.items()}
        new_params = dict(lm.params) | {k: v.detach().clone() for k, v in norms.items()}
    return new_codes, new_bias, new_params
