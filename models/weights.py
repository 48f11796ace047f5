"""The linear layers' 4-bit weights: per-channel steps, GPTQ codes (batched over layers
that share a Hessian), and bias correction. Rules: ``docs/quantization.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from .arch import LoadedModel
from .bundle import NodeInfo
from .contract import WEIGHT_QMAX, F
from .quant import (
    dequantize_act,
    gptq_inverse,
    gptq_rows,
    quantize_act,
    quantize_weight_rtn,
    weight_scale,
)

if TYPE_CHECKING:
    from .convert import ConvertOptions


def quantize_linears(lm: LoadedModel, opts: ConvertOptions, nodes: dict[str, NodeInfo],
                     lin_w: dict[str, torch.Tensor], lin_x: dict[str, torch.Tensor],
                     progress: bool) -> tuple[dict, dict, dict]:
    """Codes, per-channel steps and (corrected) float biases of every linear layer.

    GPTQ is row-independent given the Hessian, so the layers are stacked: those that share
    an input (q, k, v) along the output axis, the same GEMM of every block along a batch
    axis, and one batched column loop runs per group (:func:`models.quant.gptq_rows`)."""
    codes_of, s_of, bias_of = {}, {}, {}
    jobs: dict[tuple, list] = {}  # (K, N, damp, block) -> [(names, w, s, hinv, perm)]
    x_hat: dict[str, torch.Tensor] = {}
    names = list(lin_w)
    done: set[str] = set()
    for name in tqdm(names, desc="weights", unit="gemm", disable=not progress, leave=False):
        if name in done:
            continue
        o = opts.for_node(name)
        # layers reading the same input (q, k, v of one block) with the same options share a
        # Hessian and an input plan: quantize them together
        group = [n for n in names if n not in done and lin_x[n] is lin_x[name]
                 and opts.for_node(n) == o and nodes[n].act == nodes[name].act]
        done.update(group)
        x = lin_x[name]
        plan = nodes[name].act
        if o.bias_correction or (o.gptq and o.gptq_target == "quantized"):
            xh = dequantize_act(*quantize_act(x, plan), plan)
            x_hat.update({n: xh for n in group})
        x32 = x.to(torch.float32)
        hess = (x32.t() @ x32).to(F)
        for n in group:
            w = lin_w[n]
            bias_of[n] = lm.params.get(n + ".b", torch.zeros(w.shape[0])).to(F)
            s_of[n] = weight_scale(w, WEIGHT_QMAX, search=o.weight_search != "none",
                                   hess=hess if o.weight_search == "output" else None)
        if not o.gptq:
            for n in group:
                codes_of[n] = quantize_weight_rtn(lin_w[n], s_of[n], WEIGHT_QMAX)
            continue
        w = torch.cat([lin_w[n] for n in group])
        h = hess
        if o.gptq_target == "quantized":
            # least squares: quantized inputs times W* ~ float inputs times W (ridge toward
            # W); rows larger than the median row count as the median row, so a few tokens
            # with massive activations do not decide the fit
            rn = x.norm(dim=1)
            r = (rn.median() / rn.clamp(min=1e-12)).clamp(max=1.0)[:, None]
            xh, xr = (x_hat[name] * r).to(torch.float32), (x * r).to(torch.float32)
            h = (xh.t() @ xh).to(F)
            lam = o.gptq_damp * h.diagonal().mean()
            a = h + lam * torch.eye(h.shape[0], dtype=F)
            rhs = (xh.t() @ (xr @ w.t().to(torch.float32))).to(F) + lam * w.t()
            w = torch.linalg.solve(a, rhs).t()
        perm = (torch.argsort(torch.diag(h), descending=True, stable=True) if o.act_order
                else torch.arange(h.shape[0]))
        u, dead = gptq_inverse(h[perm][:, perm], o.gptq_damp)
        wp = w[:, perm].masked_fill(dead[None, :], 0.0)
        s = torch.cat([s_of[n] for n in group])
        jobs.setdefault((tuple(wp.shape), o.gptq_damp), []).append((group, wp, s, u, perm))
    for batch in tqdm(list(jobs.values()), desc="GPTQ", unit="batch", disable=not progress,
                      leave=False):
        q = quantize_weight_gptq_batch([j[1] for j in batch], [j[2] for j in batch],
                                       [j[3] for j in batch])
        for (group, _, _, _, perm), qb in zip(batch, q, strict=True):
            qb = qb[:, torch.argsort(perm)]
            at = 0
            for n in group:
                m = lin_w[n].shape[0]
                codes_of[n], at = qb[at:at + m], at + m
    for name in names:
        o = opts.for_node(name)
        if o.bias_correction:
            w_hat = (codes_of[name] * s_of[name][:, None]).to(torch.float32)
            err = (lin_x[name].to(torch.float32) @ lin_w[name].t().to(torch.float32)
                   - x_hat[name].to(torch.float32) @ w_hat.t())
            # the median, not the mean: a rare token with a massive activation (BERT's
            # first token) would otherwise shift every other token's output
            bias_of[name] = bias_of[name] + err.median(0).values.to(F)
    return codes_of, s_of, bias_of


def quantize_weight_gptq_batch(ws: list[torch.Tensor], ss: list[torch.Tensor],
                               us: list[torch.Tensor]) -> list[torch.Tensor]:
    """GPTQ codes of several same-shape weights (in quantization order) at once."""
    return list(gptq_rows(torch.stack(ws), torch.stack(ss), WEIGHT_QMAX, torch.stack(us)))
