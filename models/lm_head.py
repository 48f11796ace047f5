"""The output projection (``lm_head``) of decoder models: a converted linear GEMM.

A decoder's next token comes from ``logits = h @ W^T`` over the vocabulary (``h``: the final
norm's output of the row, ``W`` ``[vocab, hidden]``: the token embeddings for a tied head,
as OPT and GPT-2 have, or the checkpoint's own ``lm_head.weight``, as most LLaMA models
have). It is converted like every other linear layer: 4-bit weight codes per output channel
(rotated, MSE-clipped, GPTQ, per the model's :class:`~models.options.ConvertOptions`), its
input encoded by the host like other linear inputs (hybrid spikes and int8 outliers,
per-token steps, rotation). It differs in two ways:

- **Raw output.** The output neuron unit passes the int32 accumulators through
  (``GemmCall.raw``): no requantizer, so no output calibration over the whole vocabulary
  and no requantizer constants in the bundle. The logits are the accumulators dequantized
  on the host in float64 (:func:`head_logits`): ``acc[r, n] * w_scale[n] * s_r`` with
  ``s_r = act.step * mrow[r] / 2**15`` the row's activation step (the accumulator already
  holds the zero-point correction and the outliers at the spike channels' scale). The
  greedy token is the first index of the largest logit (:func:`greedy`).
- **Only the rows that need it.** It is not part of :func:`models.graph.forward` (a plain
  pass gives hidden states); a generation runs it on the last row of the prefill and on the
  one row of each decode step (``models.generate``).

No bias (none of the supported families has one on its head) and no bias correction (the
raw path has no requantizer bias to carry it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .arch import ArchSpec, LoadedModel, ModelInputError, one_line
from .bundle import HEAD, ConvertedModel, NodeInfo
from .contract import WEIGHT_QMAX, F
from .quant import (
    ONE,
    dequantize_act,
    gptq_inverse,
    gptq_rows,
    quantize_act,
    quantize_weight_rtn,
    rotate,
    rotation_signs,
    weight_scale,
)

#: The canonical float parameter of an untied head (absent: tied to ``embed.tok.w``).
HEAD_PARAM = "lm_head.w"


def head_param(params: dict[str, torch.Tensor]) -> str:
    """The name of the float output projection: ``lm_head.w`` if the model has its own,
    else the token embeddings (tied)."""
    return HEAD_PARAM if HEAD_PARAM in params else "embed.tok.w"


def head_weight(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float output projection ``[vocab, hidden]`` (:func:`head_param`)."""
    return params[head_param(params)]


def is_host_param(name: str) -> bool:
    """Whether a canonical float parameter stays a host parameter of the converted model:
    embeddings and norms, not the linear layers' nor an untied head's weights (GEMMs)."""
    return name != HEAD_PARAM and (not name.startswith("layers.") or ".norm" in name)


def head_node(spec: ArchSpec) -> dict:
    """The head's static shape, in the form of :func:`models.graph.gemm_nodes`."""
    return dict(name=HEAD, kind="linear", K=spec.hidden, N=spec.vocab, heads=1, direct=False)


def checkpoint_head(path: Path, spec: ArchSpec, tied: bool) -> dict[str, torch.Tensor]:
    """``{"lm_head.w": W}`` from a model directory's weights when the config unties the
    head (``tie_word_embeddings`` false) and the checkpoint has ``lm_head.weight``; ``{}``
    otherwise (tied, or a base-model checkpoint without a head: the embeddings serve). A
    head of the wrong shape or with NaN/Inf is refused naming the file."""
    from .checkpoint import weight_files

    if tied or not spec.causal:
        return {}
    for f in weight_files(path):
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as sf:
                    if "lm_head.weight" not in sf.keys():
                        continue
                    w = sf.get_tensor("lm_head.weight")
            else:
                sd = torch.load(str(f), map_location="cpu", weights_only=True)
                if "lm_head.weight" not in sd:
                    continue
                w = sd["lm_head.weight"]
        except Exception as e:  # safetensors and torch raise their own error types
            raise ModelInputError(f"{f}: unreadable lm_head.weight ({one_line(e)})") from e
        if tuple(w.shape) != (spec.vocab, spec.hidden):
            raise ModelInputError(f"{f}: lm_head.weight has shape {list(w.shape)}, the config "
                                  f"implies [{spec.vocab}, {spec.hidden}] (vocab_size, "
                                  f"hidden_size)")
        w = w.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(w).all()):
            raise ModelInputError(f"{f}: lm_head.weight contains NaN or Inf")
        return {HEAD_PARAM: w}
    return {}


def convert_head(lm: LoadedModel, opts, x: torch.Tensor, tensors: dict) -> NodeInfo:
    """Convert the output projection of ``lm`` from its calibration inputs ``x``
    ``[rows, hidden]`` (the final norm's outputs on the calibration text) with the options
    in force for ``lm_head`` (``opts.for_node``). Adds ``lm_head.w`` (int8 codes),
    ``.w_scale`` and ``.zcorr`` (and ``rot.<hidden>`` if it rotates and no other layer
    did) to ``tensors``; returns the node."""
    from .calibrate import calibrate_thresholds, weight_space
    from .convert import _fit_outlier_shifts, plan_activation

    o = opts.for_node(HEAD)
    x = x.to(F)
    w = head_weight(lm.params).to(F)
    k = x.shape[-1]
    if o.rotate:
        key = f"rot.{k}"
        tensors.setdefault(key, rotation_signs(k, opts.seed))
        x, w = rotate(x, tensors[key]), rotate(w, tensors[key])
    plan = plan_activation(x, o, o.per_token, o.rotate, True, wnorm=w.norm(dim=0))
    g = head_node(lm.spec)
    node = NodeInfo(HEAD, "linear", g["K"], g["N"], 1, False, plan, 0, g["N"])
    lin_w, lin_x = calibrate_thresholds({HEAD: node}, {HEAD: w}, {HEAD: x}, opts)
    w, x = lin_w[HEAD], lin_x[HEAD]
    plan = weight_space({HEAD: node})[HEAD].act  # per-channel scales divided out
    x32 = x.to(torch.float32)
    hess = (x32.t() @ x32).to(F)
    s = weight_scale(w, WEIGHT_QMAX, search=o.weight_search != "none",
                     hess=hess if o.weight_search == "output" else None)
    if not o.gptq:
        codes = quantize_weight_rtn(w, s, WEIGHT_QMAX)
    else:
        h = hess
        if o.gptq_target == "quantized":  # as models.convert: ridge least squares, K x K
            xh = dequantize_act(*quantize_act(x, plan), plan)
            rn = x.norm(dim=1)
            r = (rn.median() / rn.clamp(min=1e-12)).clamp(max=1.0)[:, None]
            xh, xr = (xh * r).to(torch.float32), (x * r).to(torch.float32)
            h = (xh.t() @ xh).to(F)
            lam = o.gptq_damp * h.diagonal().mean()
            a = h + lam * torch.eye(k, dtype=F)
            rhs = ((xh.t() @ xr).to(F) @ w.t()) + lam * w.t()  # K x K first: N is the vocab
            w = torch.linalg.solve(a, rhs).t()
        perm = (torch.argsort(torch.diag(h), descending=True, stable=True) if o.act_order
                else torch.arange(k))
        u, dead = gptq_inverse(h[perm][:, perm], o.gptq_damp)
        wp = w[:, perm].masked_fill(dead[None, :], 0.0)
        codes = gptq_rows(wp[None], s[None], WEIGHT_QMAX, u[None])[0][:, torch.argsort(perm)]
    zcorr = node.act.zero_correction(codes)
    tensors.update({HEAD + ".w": codes.to(torch.int8), HEAD + ".w_scale": s.to(F),
                    HEAD + ".zcorr": zcorr.to(torch.int32)})
    probe = ConvertedModel(lm.spec, {}, {}, {HEAD + ".w": codes, HEAD + ".zcorr": zcorr})
    _fit_outlier_shifts(probe, node, opts)  # refuses a head whose accumulator could overflow
    return node


def raw_consts(n: int) -> dict[str, torch.Tensor]:
    """Requantizer constants of a raw GEMM (the output unit passes accumulators; these
    are loaded but unused): ``mcol`` 1, the rest 0."""
    return {c: torch.full((n,), 1 if c == "mcol" else 0, dtype=torch.int64)
            for c in ("mcol", "bias", "zp", "lo", "hi")}


def head_logits(cm: ConvertedModel, acc: torch.Tensor, mrow: torch.Tensor) -> torch.Tensor:
    """Logits ``[M, vocab]`` float64 from the head's raw int32 accumulators ``acc``
    ``[M, vocab]`` and the rows' multipliers ``mrow`` ``[M]``: ``acc * w_scale[n] * s_r``,
    ``s_r = step * mrow[r] / 2**15`` (the row's activation step)."""
    step = cm.head.act.step * mrow.to(F) / ONE
    return acc.to(F) * cm.tensors[HEAD + ".w_scale"].to(F)[None, :] * step[:, None]


def greedy(logits: torch.Tensor) -> int:
    """The greedy token of one row of logits: the first index of the largest."""
    return int(torch.argmax(logits))
