"""Token generation with a KV cache: the golden model's prefill and greedy decode steps.

A generation is one *prefill* pass over the prompt, then *decode* passes of one token each.
Every pass is :func:`models.graph.forward` with a :class:`~models.graph.KVCache`: the new
tokens' queries attend over the cached keys and values and their own, and their keys and
values are appended to the cache. The golden model's cache holds the contract's codes (int8
per channel at the step of the QK^T / PV node, ``GoldenOps.extend_kv``), exactly what the
host keeps for the accelerator, so QK^T and PV of a decode step are accelerator GEMMs over
the cached codes (one row; ``K = tokens`` for PV, ``N = tokens`` for QK^T).

Decode equals the full pass. Every quantizer of the contract works per row: activation codes
have a static step or a per-row step (``mrow``), the K and V operands a static per-channel
step, the requantizer per-channel constants and a per-row multiplier; the host functions
(norms, softmax, rotary, activations) work per row too, and the causal mask keeps a row from
seeing later tokens. So a decode step computes, bit for bit, the last row of a forward pass
over the whole sequence (``tests/models/test_generate.py`` checks it for every step). Its
*events* differ (one row instead of the whole sequence); they are the decode workload.

The next token comes from the output projection, a converted GEMM of the model
(:mod:`models.lm_head`: tied or the checkpoint's own ``lm_head``, 4-bit weights, its input
encoded like other linear inputs, raw int32 accumulators), run on the pass's last row only
(``GoldenOps.head``: on the accelerator when ``execute`` is set); the host dequantizes the
accumulators to float64 logits and takes the first index of the largest. A bundle converted
before the head existed is refused by :func:`check_length`, naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .bundle import ConvertedModel
from .contract import Events
from .golden import GemmCall, GoldenOps
from .graph import FloatOps, KVCache, forward
from .lm_head import greedy

PREFILL, DECODE = "prefill", "decode"


@dataclass
class Pass:
    """One forward pass of a generation."""

    phase: str  #: ``"prefill"`` (the prompt, empty cache) or ``"decode"`` (after it)
    ids: torch.Tensor  #: the tokens it ran ``[M]``
    cached: int  #: tokens in the KV cache before it (the first token's position)
    hidden: torch.Tensor  #: final hidden states of its rows ``[M, hidden]``, float64
    events: dict[str, Events]  #: golden events per GEMM node (``lm_head`` included)
    token: int  #: the greedy next token after its last row
    logits: torch.Tensor | None = None  #: the last row's logits ``[vocab]``, float64


@dataclass
class Generation:
    """A prefill and its decode steps."""

    prompt: torch.Tensor
    passes: list[Pass]

    @property
    def tokens(self) -> list[int]:
        """The generated tokens: the prefill's choice, then each decode step's."""
        return [p.token for p in self.passes]

    @property
    def prefill(self) -> Pass:
        """The pass over the prompt."""
        return self.passes[0]

    @property
    def decode(self) -> list[Pass]:
        """The decode steps, in order."""
        return self.passes[1:]


class Decoder:
    """A converted decoder model with its KV cache; :meth:`run` forwards new tokens.

    ``execute`` and ``trace`` are :func:`models.golden.run_golden`'s: every GEMM's result
    from ``execute`` (the accelerator) when set, every GEMM appended to ``trace``."""

    def __init__(self, cm: ConvertedModel, spike_domain: bool = False,
                 execute: Callable[[list[GemmCall]], list[torch.Tensor]] | None = None,
                 trace: list[GemmCall] | None = None):
        if not cm.spec.causal:
            raise ValueError(f"generation needs a decoder (causal) model; this "
                             f"{cm.spec.family} model is an encoder")
        self.cm, self.params = cm, cm.params()
        self.spike_domain, self.execute, self.trace = spike_domain, execute, trace
        self.cache = KVCache(cm.spec.layers)

    def run(self, ids: torch.Tensor) -> Pass:
        """Forward ``ids`` after the cached tokens (a prefill when the cache is empty)."""
        ops = GoldenOps(self.cm, self.spike_domain)
        ops.trace, ops.execute = self.trace, self.execute
        cached = self.cache.length
        hidden = forward(self.cm.spec, self.params, ids, ops, self.cache)
        logits = ops.head(hidden[-1:])[0]  # the output projection of the last row only
        return Pass(DECODE if cached else PREFILL, ids, cached, hidden, ops.events,
                    greedy(logits), logits)


def check_length(cm: ConvertedModel, prompt: int, steps: int) -> None:
    """Refuse a generation the model cannot run, naming what is wrong."""
    spec = cm.spec
    if steps < 0:
        raise ValueError(f"decode steps must be 0 or more, not {steps}")
    if prompt < 1:
        raise ValueError("the prompt is empty: generation needs at least one token")
    if not spec.causal:
        raise ValueError(f"generation needs a decoder (causal) model; this {spec.family} "
                         f"model is an encoder")
    if cm.head is None:
        raise ValueError("the converted model has no output projection (lm_head GEMM): it "
                         "was converted before the head became a GEMM; convert it again "
                         "(gen build / models convert)")
    # the last decode step runs at position prompt + steps - 1
    if spec.position == "absolute" and prompt + steps + spec.position_offset > \
            spec.max_positions:
        raise ValueError(f"a prompt of {prompt} tokens and {steps} decode steps exceed the "
                         f"model's {spec.max_positions} positions")


def generate(cm: ConvertedModel, prompt: torch.Tensor, steps: int,
             spike_domain: bool = False,
             execute: Callable[[list[GemmCall]], list[torch.Tensor]] | None = None,
             trace: list[GemmCall] | None = None,
             on_pass: Callable[[int, str], None] | None = None) -> Generation:
    """Prefill ``prompt`` ``[P]``, then ``steps`` greedy decode steps, each feeding the
    previous pass's token; ``steps + 1`` tokens come out. ``on_pass(i, phase)`` is called
    before pass ``i`` (0: the prefill)."""
    check_length(cm, len(prompt), steps)
    dec = Decoder(cm, spike_domain, execute, trace)
    passes: list[Pass] = []
    ids = prompt
    for i in range(steps + 1):
        if on_pass is not None:
            on_pass(i, DECODE if i else PREFILL)
        passes.append(dec.run(ids))
        ids = torch.tensor([passes[-1].token], dtype=torch.int64)
    return Generation(prompt, passes)


def teacher_forced(cm: ConvertedModel, ids: torch.Tensor, steps: int,
                   trace: list[GemmCall] | None = None,
                   on_pass: Callable[[int, str], None] | None = None) -> list[Pass]:
    """Prefill ``ids[:-steps]``, then decode each of the last ``steps`` tokens of ``ids``
    one at a time (the text's own tokens, not the model's choices): the decode workload of
    real text, with ``len(ids) - steps`` to ``len(ids) - 1`` tokens cached."""
    if not 1 <= steps < len(ids):
        raise ValueError(f"decode steps must be in 1..{len(ids) - 1} for {len(ids)} "
                         f"tokens, not {steps}")
    check_length(cm, len(ids) - steps, steps)
    dec = Decoder(cm, trace=trace)
    p = len(ids) - steps
    chunks = [ids[:p]] + [ids[i:i + 1] for i in range(p, len(ids))]
    out = []
    for i, c in enumerate(chunks):
        if on_pass is not None:
            on_pass(i, DECODE if i else PREFILL)
        out.append(dec.run(c))
    return out


def float_tokens(spec, params: dict[str, torch.Tensor], prompt: torch.Tensor,
                 steps: int) -> list[int]:
    """The float model's greedy generation (``FloatOps``, float64, with a KV cache and the
    float output projection): what the converted model's tokens are compared with."""
    cache, ids, out = KVCache(spec.layers), prompt, []
    for _ in range(steps + 1):
        ops = FloatOps(spec, params)
        hidden = forward(spec, params, ids, ops, cache)
        out.append(greedy(ops.head(hidden[-1:])[0]))
        ids = torch.tensor([out[-1]], dtype=torch.int64)
    return out


def pass_traces(cm: ConvertedModel, prompt: torch.Tensor, fed: list[int]) -> list[list[GemmCall]]:
    """Every GEMM of each pass of a generation that feeds the tokens ``fed`` after the
    prompt (a generation's tokens but the last), output projections included: the prefill's
    calls, then each decode step's (for another conversion of the model on the same
    tokens, e.g. a baseline)."""
    calls: list[GemmCall] = []
    dec = Decoder(cm, trace=calls)
    out = []
    for ids in [prompt] + [torch.tensor([t], dtype=torch.int64) for t in fed]:
        start = len(calls)
        dec.run(ids)
        out.append(calls[start:])
    return out


def kv_cache_bytes(cm: ConvertedModel, tokens: int) -> int:
    """Bytes of the KV cache for ``tokens`` tokens: one int8 code per key and value
    channel, per layer."""
    s = cm.spec
    return 2 * s.layers * s.kv_heads * s.head_dim * tokens


def decode_trace(cm: ConvertedModel, ids: torch.Tensor, steps: int) -> list[GemmCall]:
    """Every GEMM of the decode steps of :func:`teacher_forced` (the prefill's left out), in
    order: the decode workload of ``ids``'s last ``steps`` tokens."""
    calls: list[GemmCall] = []
    start: list[int] = []
    teacher_forced(cm, ids, steps, trace=calls,
                   on_pass=lambda i, phase: start.append(len(calls)) if i == 1 else None)
    return calls[start[0]:]
