"""The transformer graph the accelerator runs, written once for every family.

:func:`forward` walks the blocks in execution order. Every GEMM goes through an ``ops``
object: :class:`FloatOps` computes in float64 (the FP reference, and calibration when given
a recorder); the golden model (:mod:`models.golden`) does the integer/spike arithmetic of
the hardware. Everything else (embeddings, norms, activation functions, softmax, rotary,
residuals) is host work from :mod:`models.nonlinear`.

With a :class:`KVCache`, :func:`forward` runs only the new tokens (at the positions after
the cached ones) and attends over the cached keys and values too: the prefill and decode
steps of generation (:mod:`models.generate`).

GEMM node names, in execution order per block ``i``: ``layers.i.q``, ``.k``, ``.v``
(linear), ``.qk`` (Q K^T per head), ``.av`` (P V per head), ``.o``, then ``.gate`` (gated
FFNs only), ``.up``, ``.down``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from . import nonlinear as nl
from .arch import ArchSpec
from .contract import F


def gemm_nodes(spec: ArchSpec) -> list[dict]:
    """Every GEMM of one forward pass, in execution order, with its static shape.

    ``M`` is the number of tokens (per call); ``K`` and ``N`` are the reduction and output
    sizes (``tokens`` where they depend on the sequence); ``heads`` is the batch of
    per-head matmuls. ``direct`` says the output feeds the next GEMM straight from the
    output neuron unit instead of going back to the host. Mamba models:
    :func:`models.mamba.mamba_nodes`.
    """
    if spec.family == "mamba":
        from .mamba import mamba_nodes

        return mamba_nodes(spec)
    h, d, kvd = spec.hidden, spec.head_dim, spec.kv_heads * spec.head_dim
    qd = spec.heads * d
    rotary = spec.position == "rotary"
    nodes = []
    for i in range(spec.layers):
        p = f"layers.{i}."
        nodes += [
            dict(name=p + "q", kind="linear", K=h, N=qd, heads=1, direct=not rotary),
            dict(name=p + "k", kind="linear", K=h, N=kvd, heads=1, direct=not rotary),
            dict(name=p + "v", kind="linear", K=h, N=kvd, heads=1, direct=True),
            dict(name=p + "qk", kind="qk", K=d, N="tokens", heads=spec.heads, direct=False),
            dict(name=p + "av", kind="av", K="tokens", N=d, heads=spec.heads, direct=True),
            dict(name=p + "o", kind="linear", K=qd, N=h, heads=1, direct=False),
        ]
        if spec.gated:
            nodes.append(dict(name=p + "gate", kind="linear", K=h, N=spec.ffn, heads=1,
                              direct=False))
        nodes += [
            dict(name=p + "up", kind="linear", K=h, N=spec.ffn, heads=1, direct=False),
            dict(name=p + "down", kind="linear", K=spec.ffn, N=h, heads=1, direct=False),
        ]
    return nodes


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[M, H*d]`` -> ``[H, M, d]``."""
    m = x.shape[0]
    return x.reshape(m, heads, -1).transpose(0, 1)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[H, M, d]`` -> ``[M, H*d]``."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _norm(spec: ArchSpec, params, key: str, x: torch.Tensor) -> torch.Tensor:
    w = params[key + ".w"].to(F)
    if spec.norm == "rmsnorm":
        return nl.rms_norm(x, w, spec.norm_eps)
    return nl.layer_norm(x, w, params[key + ".b"].to(F), spec.norm_eps)


def embed(spec: ArchSpec, params, ids: torch.Tensor, start: int = 0,
          positions: torch.Tensor | None = None) -> torch.Tensor:
    """Token (+ position, + segment 0) embeddings, normalised for BERT; ``ids`` sit at the
    positions from ``start`` on, or at ``positions``."""
    x = params["embed.tok.w"][ids].to(F)
    if spec.position == "absolute":
        pos = torch.arange(start, start + len(ids)) if positions is None else positions
        x = x + params["embed.pos.w"][pos + spec.position_offset].to(F)
    if "embed.type.w" in params:
        x = x + params["embed.type.w"].to(F)
    if spec.emb_norm:
        x = _norm(spec, params, "embed.norm", x)
    return x


class KVCache:
    """The keys and values of the tokens a decoder has seen, per layer, in the form its
    ``ops`` keep them (``ops.extend_kv``: the golden model keeps the contract's int8 codes,
    what the accelerator's host holds; :class:`FloatOps` float64), and their number."""

    def __init__(self, layers: int):
        self.layers: list[tuple | None] = [None] * layers  #: (keys, values) per layer
        self.length = 0  #: tokens cached (the next token's position)


def segment_ids(lengths: Sequence[int]) -> torch.Tensor:
    """For sequences of ``lengths`` laid end to end: each token's sequence number."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(list(lengths)))


def forward(spec: ArchSpec, params, ids: torch.Tensor, ops,
            cache: KVCache | None = None, lengths: Sequence[int] | None = None) -> torch.Tensor:
    """Run one sequence ``ids`` ``[M]``; returns the final hidden states ``[M, hidden]``.

    With ``cache`` (causal models only) ``ids`` are the tokens after the ``cache.length``
    cached ones: their queries attend over the cached keys and values and their own, and
    their keys and values are appended to the cache. With ``lengths``, ``ids`` are several
    sequences laid end to end (a batch, for training): each has its own positions and
    attends only to itself (``ops`` that quantize across keys must quantize each
    sequence's block alone: :class:`models.distill.FakeQuantOps`). Mamba models run
    :func:`models.mamba.forward`."""
    if spec.family == "mamba":
        if lengths is not None:
            raise ValueError("lengths: the mamba family runs one sequence at a time")
        from . import mamba

        return mamba.forward(spec, params, ids, ops, cache)
    if ids.dim() != 1 or len(ids) == 0:
        raise ValueError(f"ids must be a non-empty 1-D token sequence, not {tuple(ids.shape)}")
    if cache is not None and not spec.causal:
        raise ValueError(f"a KV cache needs a causal (decoder) model; {spec.family} is not")
    if lengths is not None and (cache is not None or sum(lengths) != len(ids)
                                or min(lengths) < 1):
        raise ValueError(f"lengths {list(lengths)} must be positive, sum to the {len(ids)} "
                         f"tokens, and have no KV cache")
    start = 0 if cache is None else cache.length
    longest = len(ids) if lengths is None else max(lengths)
    if (spec.position == "absolute"
            and start + longest + spec.position_offset > spec.max_positions):
        raise ValueError(f"{start + longest} tokens exceed the model's {spec.max_positions} "
                         f"positions")
    act = nl.ACTIVATIONS[spec.act]
    segments = None if lengths is None else segment_ids(lengths)
    positions = (torch.arange(start, start + len(ids)) if lengths is None else
                 torch.cat([torch.arange(n) for n in lengths]))
    x = embed(spec, params, ids, start, positions)
    for i in range(spec.layers):
        p = f"layers.{i}."
        h = x if spec.post_norm else _norm(spec, params, p + "norm1", x)
        q, k, v = (ops.linear(p + n, h) for n in "qkv")
        if spec.position == "rotary":
            q = merge_heads(nl.rotary(split_heads(ops.host(q), spec.heads), spec.rope_theta,
                                      positions))
            k = merge_heads(nl.rotary(split_heads(ops.host(k), spec.kv_heads), spec.rope_theta,
                                      positions))
        if cache is not None:  # attend over the cached tokens and the new ones
            k, v = cache.layers[i] = ops.extend_kv(p, cache.layers[i], k, v)
        probs = nl.softmax(ops.attn_scores(p + "qk", q, k), spec.causal, segments)
        o = ops.host(ops.linear(p + "o", ops.attn_values(p + "av", probs, v)))
        x = _norm(spec, params, p + "norm1", x + o) if spec.post_norm else x + o
        h = x if spec.post_norm else _norm(spec, params, p + "norm2", x)
        f = act(ops.host(ops.linear(p + ("gate" if spec.gated else "up"), h)))
        if spec.gated:
            f = f * ops.host(ops.linear(p + "up", h))
        dn = ops.host(ops.linear(p + "down", f))
        x = _norm(spec, params, p + "norm2", x + dn) if spec.post_norm else x + dn
    if spec.final_norm:
        x = _norm(spec, params, "final_norm", x)
    if cache is not None:
        cache.length += len(ids)
    return x


Recorder = Callable[[str, str, torch.Tensor], None]


class FloatOps:
    """Float64 GEMMs: the floating-point reference. ``record(node, role, tensor)`` sees
    every GEMM operand (roles ``x``/``y`` for linear input/output, ``q``, ``k``, ``s`` for
    QK^T, ``p``, ``v``, ``y`` for PV) so calibration can take statistics."""

    def __init__(self, spec: ArchSpec, params, record: Recorder | None = None):
        self.spec, self.params = spec, params
        self.record = record or (lambda node, role, t: None)
        self._f64: dict[str, torch.Tensor] = {}  # float64 copies, made once per parameter

    def _param(self, key: str) -> torch.Tensor:
        if key not in self._f64:
            self._f64[key] = self.params[key].to(F)
        return self._f64[key]

    def host(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self.record(name, "x", x)
        y = x @ self._param(name + ".w").t()
        if name + ".b" in self.params:
            y = y + self._param(name + ".b")
        self.record(name, "y", y)
        return y

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The output projection: logits ``x @ W^T`` (``models.lm_head.head_weight``)."""
        from .lm_head import HEAD, head_param  # it imports this module (via models.bundle)

        self.record(HEAD, "x", x)
        return x @ self._param(head_param(self.params)).t()

    def attn_scores(self, name: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        self.record(name, "q", q)
        self.record(name, "k", k)
        qh = split_heads(q, spec.heads)
        kh = split_heads(k, spec.kv_heads).repeat_interleave(spec.heads // spec.kv_heads, 0)
        s = qh @ kh.transpose(1, 2) / math.sqrt(spec.head_dim)
        self.record(name, "s", s)
        return s

    def extend_kv(self, prefix: str, past: tuple | None, k: torch.Tensor,
                  v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a :class:`KVCache` layer (``past``) with ``k``, ``v`` appended."""
        if past is None:
            return k, v
        return torch.cat([past[0], k]), torch.cat([past[1], v])

    def attn_values(self, name: str, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        self.record(name, "p", p)
        self.record(name, "v", v)
        vh = split_heads(v, spec.kv_heads).repeat_interleave(spec.heads // spec.kv_heads, 0)
        y = merge_heads(p @ vh)
        self.record(name, "y", y)
        return y
