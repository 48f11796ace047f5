"""Converter for Mamba models: a loaded :class:`~models.mamba.MambaSpec` model -> a
:class:`~models.bundle.ConvertedModel`, with the transformers' rules and mechanisms
(:mod:`models.convert`, ``docs/quantization.md``, ``docs/mamba.md``).

The four projections of every block (``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj``)
are the accelerator's GEMMs. Each reads a host-produced activation (the RMSNorm output,
the SiLU of the convolution, the time-step rank slice of ``x_proj``'s output, the gated
scan output), so every input gets per-token steps, the Hadamard rotation and, with a
spiking encoding, the split into spike channels and int8 outlier channels; every output
goes back to the host as 16-bit values. The weights are 4-bit (GPTQ, bias correction,
threshold calibration: the same options as for the transformers; ``smooth_vo`` has no
V/O pair here and is ignored).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .arch import LoadedModel, ModelInputError
from .bundle import ConvertedModel, NodeInfo
from .calibrate import calibrate_thresholds, fit_ratio, weight_space
from .contract import ACC_BITS, ACC_MAX, HOST_OUT_BITS, F
from .convert import (
    ConvertOptions,
    _CalibOps,
    _epilogue,
    _fit_outlier_shifts,
    _rotate32,
    _rows,
    builtin_text,
    host_out_step,
    plan_activation,
)
from .graph import gemm_nodes
from .mamba import forward, mamba_host_shapes
from .quant import rotate, rotation_signs
from .weights import quantize_linears


def calibrate_mamba(lm: LoadedModel, opts: ConvertOptions,
                    progress: bool = False) -> dict[tuple[str, str], list[torch.Tensor]]:
    """Run the float model on the calibration text (``calib_sentences`` sentences of at most
    ``max_tokens`` tokens); return every projection's input ``x`` and output ``y`` per
    sentence. Refuses a float model that gives NaN or Inf, naming the GEMM."""
    rec: dict[tuple[str, str], list[torch.Tensor]] = {}

    def record(node: str, role: str, t: torch.Tensor) -> None:
        if not bool(torch.isfinite(t).all()):
            raise ModelInputError(f"{lm.name}: the float model gives NaN or Inf at {node} "
                                  f"({role}) on the calibration text; check its weights")
        rec.setdefault((node, role), []).append(t.detach().to(torch.float32))

    ops = _CalibOps(lm.spec, lm.params, record)
    texts = builtin_text("calibration")[: opts.calib_sentences]
    for text in tqdm(texts, desc="calibrate", unit="sentence", disable=not progress,
                     leave=False):
        forward(lm.spec, lm.params, lm.tokenize(text, opts.max_tokens), ops)
    return rec


def convert_mamba(lm: LoadedModel, opts: ConvertOptions,
                  progress: bool = False) -> ConvertedModel:
    """Convert a Mamba model (called by :func:`models.convert.convert`, which checks the
    options). Refuses a conversion whose GEMMs could overflow the accumulator, naming the
    layer and the options."""
    spec = lm.spec
    rec = calibrate_mamba(lm, opts, progress)
    graph = gemm_nodes(spec)
    nodes: dict[str, NodeInfo] = {}
    signs: dict[int, torch.Tensor] = {}
    lin_w: dict[str, torch.Tensor] = {}
    lin_x: dict[str, torch.Tensor] = {}
    # 1. activation plans (every input is host-produced)
    for g in tqdm(graph, desc="plan", unit="gemm", disable=not progress, leave=False):
        name = g["name"]
        nopts = opts.for_node(name)
        x = _rows(rec[(name, "x")])
        w = lm.params[name + ".w"].to(F)
        k = x.shape[-1]
        if nopts.rotate:
            signs.setdefault(k, rotation_signs(k, opts.seed))
            w = rotate(w, signs[k])
            x = _rotate32(x, signs[k])
        lin_w[name], lin_x[name] = w, x
        plan = plan_activation(x, nopts, nopts.per_token, nopts.rotate, True,
                               wnorm=w.norm(dim=0))
        nodes[name] = NodeInfo(name, "linear", g["K"], g["N"], 1, False, plan, 0, 0)
    # 2. thresholds and weights
    lin_w, lin_x = calibrate_thresholds(nodes, lin_w, lin_x, opts)
    codes_of, s_of, bias_of = quantize_linears(lm, opts, weight_space(nodes), lin_w, lin_x,
                                               progress)
    # 3. outlier shifts the accumulator can hold
    zcorr = {n: nodes[n].act.zero_correction(c)
             for n, c in codes_of.items()}
    tensors: dict[str, torch.Tensor] = {}
    for n in nodes:
        tensors.update({n + ".w": codes_of[n].to(torch.int8), n + ".w_scale": s_of[n],
                        n + ".zcorr": zcorr[n].to(torch.int32)})
    probe = ConvertedModel(spec, {}, nodes, tensors)
    for node in nodes.values():
        _fit_outlier_shifts(probe, node, opts)
    # 4. epilogues: values for the host (16 bits unless the options say 8), one step per
    # output channel
    for name, node in nodes.items():
        scale, zp, lo, hi = host_out_step(_rows(rec[(name, "y")]).abs().amax(0),
                                          opts.for_node(name).host_out_bits or HOST_OUT_BITS)
        ratio = fit_ratio(node.act, node.act.step * s_of[name] / scale, lin_x[name])
        node.shift = _epilogue(tensors, name, ratio, scale, bias_of[name], zp, lo, hi)
        node.epi = len(tensors[name + ".scale"])
    host_params = sorted(k for k in lm.params if k in mamba_host_shapes(spec))
    for k in host_params:
        tensors["host." + k] = lm.params[k].to(torch.float32).contiguous()
    for k, sg in signs.items():
        tensors[f"rot.{k}"] = sg
    cm = ConvertedModel(spec, opts.to_json() | {"model": lm.name}, nodes, tensors, host_params)
    for n in nodes.values():
        bound = cm.acc_bound(n)
        if bound > ACC_MAX:
            raise ModelInputError(
                f"{n.name}: options encoding={n.act.encoding.name()} with "
                f"{len(n.act.outliers)} outlier channel(s): the {ACC_BITS}-bit accumulator "
                f"could overflow (worst case {bound:.3g} > {ACC_MAX}): use fewer outlier "
                f"channels (--outliers) or a narrower encoding")
    cm.validate()
    return cm
