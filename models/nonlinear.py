"""Host-side nonlinear functions of the contract, in float64.

These run on the host between accelerator GEMMs, in the golden model and in the host driver
alike (both import this module, nothing re-implements it). Each is a fixed composition of
IEEE-754 float64 operations in torch, evaluated in the order written; results are then
quantized by :mod:`models.quant`. Re-running them with the same torch build reproduces them
bit for bit (``tests/models/test_golden.py`` checks repeatability).
"""

from __future__ import annotations

import math

import torch

from .contract import F


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * w + b`` (biased var)."""
    mean = x.mean(-1, keepdim=True)
    d = x - mean
    var = (d * d).mean(-1, keepdim=True)
    return d / torch.sqrt(var + eps) * w + b


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * w``."""
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: ``x/2 * (1 + erf(x / sqrt 2))``."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU: ``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``."""
    return torch.clamp(x, min=0.0)


def silu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)``, sigmoid as ``1 / (1 + exp(-x))``."""
    return x / (1.0 + torch.exp(-x))


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "silu": silu}


def softmax(scores: torch.Tensor, causal: bool,
            segments: torch.Tensor | None = None) -> torch.Tensor:
    """Row softmax over keys, max-subtracted; with ``causal`` key j > query i gets 0; with
    ``segments`` (each query's and key's sequence number, queries and keys the same
    tokens) a key of another sequence gets 0."""
    m, n = scores.shape[-2:]
    mask = torch.ones(m, n, dtype=torch.bool).triu(1 + n - m) if causal else None
    if segments is not None:
        other = segments[:, None] != segments[None, :]
        mask = other if mask is None else mask | other
    if mask is not None:
        scores = scores.masked_fill(mask, -math.inf)
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def rotary(x: torch.Tensor, theta: float, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (LLaMA "rotate half" convention) on ``[H, M, d]``."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=F) / d))
    ang = positions.to(F)[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * torch.cos(ang) + torch.cat([-x2, x1], -1) * torch.sin(ang)


# -- Mamba's host functions (models.mamba) -------------------------------------------------
#: Above this, softplus(x) is x (torch's and transformers' threshold).
SOFTPLUS_THRESHOLD = 20.0


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))`` as ``log1p(exp(x))``, and ``x`` itself above 20."""
    return torch.where(x > SOFTPLUS_THRESHOLD, x, torch.log1p(torch.exp(x)))


def causal_conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise convolution over tokens: ``x`` ``[M, C]``, ``w`` ``[C, W]``, ``b``
    ``[C]`` or None; ``y[t, c] = b[c] + sum_{j=0}^{W-1} w[c, j] x[t - W + 1 + j, c]`` with
    ``x`` zero before the first token, summed in the order of ``j`` (the bias first)."""
    m, c = x.shape
    width = w.shape[1]
    xp = torch.cat([torch.zeros(width - 1, c, dtype=x.dtype), x])
    y = torch.zeros(m, c, dtype=x.dtype) if b is None else b.expand(m, c).clone()
    for j in range(width):
        y = y + w[:, j] * xp[j:j + m]
    return y


def selective_scan(u: torch.Tensor, dt: torch.Tensor, a_log: torch.Tensor, b: torch.Tensor,
                   c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Mamba's selective scan, token by token from a zero state: ``u``, ``dt`` ``[M, C]``,
    ``a_log`` ``[C, S]``, ``b``, ``c`` ``[M, S]``, ``d`` ``[C]``. With ``A = -exp(a_log)``,
    per token ``t``: ``h = exp(A dt[t]) h + (dt[t] u[t]) b[t]`` (``h`` ``[C, S]``), then
    ``y[t] = sum_s h[:, s] c[t, s] + d u[t]`` (elementwise products, the sum over ``s`` one
    reduction); returns ``y`` ``[M, C]``."""
    a = -torch.exp(a_log)
    h = torch.zeros_like(a)
    ys = []
    for t in range(u.shape[0]):
        h = torch.exp(a * dt[t][:, None]) * h + (dt[t] * u[t])[:, None] * b[t][None, :]
        ys.append((h * c[t][None, :]).sum(-1) + d * u[t])
    return torch.stack(ys)
