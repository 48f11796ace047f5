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


def softmax(scores: torch.Tensor, causal: bool) -> torch.Tensor:
    """Row softmax over keys, max-subtracted; with ``causal`` key j > query i gets 0."""
    if causal:
        m, n = scores.shape[-2:]
        mask = torch.ones(m, n, dtype=torch.bool).triu(1 + n - m)
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
