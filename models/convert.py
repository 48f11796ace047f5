"""Converter: a loaded float model -> a :class:`~models.bundle.ConvertedModel`.

Steps: (1) run the float model on the calibration text, recording every GEMM operand;
(2) per GEMM, the activation plan: outliers, zero point, step, outlier shift; (3) weights
(rotated, MSE-clipped per-channel steps, GPTQ); (4) each node's epilogue for its consumer.
Decoders' output projection: :mod:`models.lm_head`. Rules: ``docs/quantization.md``."""

from __future__ import annotations

import fnmatch
import math
import warnings
from dataclasses import replace
from importlib import resources

import torch
from tqdm import tqdm

from .arch import ArchSpec, LoadedModel, ModelInputError
from .bundle import ConvertedModel, NodeInfo
from .calibrate import (
    best_clip,
    calibrate_thresholds,
    fit_plan,
    fit_ratio,
    fold_offsets,
    weight_space,
)
from .contract import (
    ACC_BITS,
    ACC_MAX,
    HOST_OUT_BITS,
    INT8_QMAX,
    REQ_MID_BITS,
    ROW_FRAC,
    ContractError,
    F,
    host_out_qmax,
)
from .distill import distill
from .encodings import Encoding
from .graph import FloatOps, forward, gemm_nodes
from .lm_head import HEAD, convert_head, is_host_param
from .mixed import SENSITIVITY_SENTENCES, choose, sensitivity
from .options import ConvertOptions
from .quant import (
    ActPlan,
    fixed_point,
    hadamard,
    rotate,
    rotation_block,
    rotation_signs,
    token_steps,
)
from .rotation import HOST_ROT_MAX_K, fold_learned_rotations, learn_host_rotation
from .weights import quantize_linears

#: Host-bound outputs get this much headroom over the calibrated maximum, by width: at 16
#: bits headroom costs nothing; at 8 bits it costs step, and 1.25 measured as accurate as
#: 16 bits on MiniLM's up projection where 2.0 lost 0.0002 cosine (docs/quantization.md).
HOST_HEADROOM = {16: 2.0, 8: 1.25}


def host_out_step(peak: torch.Tensor, bits: int) -> tuple[torch.Tensor, int, int, int]:
    """``(step, zp, lo, hi)`` of a GEMM's outputs to the host at ``bits`` bits (the
    contract's ``host_out_qmax``), from their calibration peak per channel (or head):
    :data:`HOST_HEADROOM` times the peak at full scale, symmetric, no zero point."""
    qmax = host_out_qmax(bits)
    return (peak * HOST_HEADROOM[bits] / qmax).clamp(min=1e-12), 0, -qmax, qmax


def host_out_bits(spec: ArchSpec, opts: ConvertOptions, name: str) -> int:
    """The width of GEMM ``name``'s outputs to the host: the options' (per-layer overrides
    included), else the default: 8 bits for the up projection of an MLP that is not gated
    (its outputs go only to GELU or ReLU and then the down projection's per-token
    quantizer) and for QK^T's scores (they go only to the softmax); both measured as
    accurate as 16 bits on MiniLM (docs/quantization.md), at half the link bytes of those
    reads. 16 elsewhere (o and down feed the residual and LayerNorm)."""
    bits = opts.for_node(name).host_out_bits
    if bits is not None:
        return bits
    narrow = (name.endswith(".up") and not spec.gated) or name.endswith(".qk")
    return 8 if narrow else HOST_OUT_BITS


def builtin_text(name: str) -> list[str]:
    """Lines of a built-in text file (``calibration`` or ``eval_sentences``)."""
    text = resources.files("models").joinpath("data", f"{name}.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def fold_head_rotations(spec: ArchSpec, params: dict, seed: int) -> dict:
    """Fold a per-head rotation into the weights (offline, no host work at run time).

    ``v' = v R`` per head makes ``P v'`` the rotated attention output, which the ``o``
    projection absorbs (``W_o' = W_o R``); likewise ``q' = q R``, ``k' = k R`` leave
    ``q k^T`` unchanged (not for rotary models, where the position rotation sits between).
    This spreads the outlier channels of V, of the ``o`` input and of Q and K, which the
    host cannot rotate because they never leave the accelerator.
    """
    d = spec.head_dim
    blk = rotation_block(d)
    sg_kv = rotation_signs(spec.kv_heads * d, seed + 1)
    # query head h pairs with key/value head h // group: give it the same rotation
    sg_q = sg_kv.view(spec.kv_heads, d).repeat_interleave(spec.heads // spec.kv_heads, 0)
    sg_q = sg_q.reshape(-1)
    out = dict(params)

    def rot_rows(w: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:  # W' = R^T W
        r = rotate(torch.eye(len(sg), dtype=F), sg, blk)
        return (r.t() @ w.to(F)).to(torch.float32)

    for i in range(spec.layers):
        p = f"layers.{i}."
        pairs = [("v", sg_kv)] + ([] if spec.position == "rotary" else
                                  [("q", sg_q), ("k", sg_kv)])
        for name, sg in pairs:
            out[p + name + ".w"] = rot_rows(params[p + name + ".w"], sg)
            if p + name + ".b" in params:
                out[p + name + ".b"] = rot_rows(params[p + name + ".b"][:, None], sg)[:, 0]
        out[p + "o.w"] = rotate(params[p + "o.w"].to(F), sg_q, blk).to(torch.float32)
    return out


class _CalibOps(FloatOps):
    """:class:`FloatOps` with the linear layers' products in float32 (calibration takes
    statistics only; the host functions between them stay float64)."""

    def __init__(self, spec: ArchSpec, params, record=None):
        super().__init__(spec, params, record)
        self._f32: dict[str, torch.Tensor] = {}

    def _param32(self, key: str) -> torch.Tensor:
        if key not in self._f32:
            self._f32[key] = self.params[key].to(torch.float32)
        return self._f32[key]

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self.record(name, "x", x)
        y = (x.to(torch.float32) @ self._param32(name + ".w").t()).to(F)
        if name + ".b" in self.params:
            y = y + self._param(name + ".b")
        self.record(name, "y", y)
        return y


def _rotate32(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """:func:`models.quant.rotate` in float32, for calibration statistics (returned as
    float64); the host's run-time rotation stays float64."""
    n = x.shape[-1]
    b = rotation_block(n)
    h = (hadamard(b) / math.sqrt(b)).to(torch.float32)
    xs = (x.to(torch.float32) * signs.to(torch.float32)).reshape(*x.shape[:-1], n // b, b)
    return (xs @ h).reshape(x.shape).to(F)


def calibration_tokens(spec: ArchSpec, opts: ConvertOptions) -> int:
    """Tokens per calibration sentence: ``max_tokens``, at most the model's positions."""
    if spec.position == "absolute":
        return max(1, min(opts.max_tokens, spec.max_positions))
    return opts.max_tokens


def calibrate(lm: LoadedModel, opts: ConvertOptions,
              progress: bool = False) -> dict[tuple[str, str], list[torch.Tensor]]:
    """Run the float model on the calibration text; return every GEMM operand, per role.
    Refuses a float model that gives NaN or Inf (naming the GEMM)."""
    rec: dict[tuple[str, str], list[torch.Tensor]] = {}

    def record(node: str, role: str, t: torch.Tensor) -> None:
        if not bool(torch.isfinite(t).all()):
            raise ModelInputError(f"{lm.name}: the float model gives NaN or Inf at {node} "
                                  f"({role}) on the calibration text; check its weights and "
                                  f"norm epsilon (norm_eps={lm.spec.norm_eps})")
        rec.setdefault((node, role), []).append(t.detach().to(torch.float32))

    ops = _CalibOps(lm.spec, lm.params, record)
    n_tok = calibration_tokens(lm.spec, opts)
    texts = builtin_text("calibration")[: opts.calib_sentences]
    for text in tqdm(texts, desc="calibrate", unit="sentence", disable=not progress,
                     leave=False):
        record(HEAD, "x", forward(lm.spec, lm.params, lm.tokenize(text, n_tok), ops))
    return rec


def _rows(ts: list[torch.Tensor]) -> torch.Tensor:
    """Stack calibration tensors into rows over their last axis (padding keys with 0)."""
    width = max(t.shape[-1] for t in ts)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[-1])).reshape(-1, width)
                      for t in ts]).to(F)


def plan_activation(x: torch.Tensor, opts: ConvertOptions, per_token: bool, rotate_: bool,
                    static_weights: bool, wnorm: torch.Tensor | None = None) -> ActPlan:
    """Choose the split of one GEMM input from its calibration rows ``x`` ``[rows, K]``;
    ``wnorm`` ``[K]``: the norms of the weight columns (static weights), which the
    ``"effect"`` outlier rule weighs each channel's magnitude by."""
    k = x.shape[-1]
    enc = opts.encoding
    if not enc.is_spiking:
        plan = ActPlan(enc, 0, 1.0, per_token, [], [], rotate_)
        plan.step = float(token_steps(x, plan).max().clamp(min=1e-12))
        return plan
    n_out = opts.outlier_count
    if n_out is None:
        n_out = round(opts.outlier_fraction * k)
    n_out = max(0, min(k, n_out))
    # Outlier rule: the n_out channels with the largest calibration magnitude (times the
    # norm of the channel's weight column: its effect on the output, with "effect").
    score = x.abs().amax(0)
    if opts.outlier_rule == "effect" and wnorm is not None:
        score = score * wnorm.to(score.dtype)
    outliers = sorted(torch.topk(score, n_out).indices.tolist()) if n_out else []
    plan = ActPlan(enc, 0, 1.0, per_token, outliers, [0] * len(outliers), rotate_)
    spk = x.masked_fill(plan.outlier_mask(k), 0.0)
    if outliers and not bool(spk.any()):
        # The outliers hold every channel that carried anything in calibration (e.g. PV with
        # as many outliers as the calibration text has tokens): the spike channels have no
        # range of their own, so they get the step they would have without outliers.
        free = ActPlan(enc, 0, 1.0, per_token, [], [], rotate_)
        plan.step = float(token_steps(x, free).max().clamp(min=1e-12))
    else:
        lo, hi = float(spk.min()), float(spk.max())
        if lo < 0 and not enc.signed:
            if static_weights:  # zero point folded into the accumulator's start value
                plan.zero_point = min(enc.qmax - 1, max(1, round(enc.qmax * -lo / (hi - lo))))
            else:  # a dynamic weight operand cannot absorb a zero point: signed spikes instead
                plan.encoding = enc.signed_variant()
        elif lo >= 0 and enc.kind == "ttfs-signed" and opts.unsigned_nonneg:
            # never negative (softmax, ReLU): the unsigned form has twice the levels above
            # zero at the same code width, and real zero is still code 0 (silent)
            plan.encoding = Encoding("ttfs", enc.bits)
        plan.clip = best_clip(x, plan)
        plan.step = 0.0
    # the step (unless set above) and the outlier shifts
    return fit_plan(x, plan, opts.outlier_shift)


def _epilogue(tensors: dict, name: str, ratio: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor, zp, lo, hi) -> int:
    mcol, shift = fixed_point(ratio, name)
    b = torch.round(bias / scale * 2.0**ROW_FRAC)
    if b.numel() and float(b.abs().max()) >= 2 ** (REQ_MID_BITS - 1):
        raise ContractError(f"{name}: bias does not fit the 32-bit requantizer input")
    e = len(scale)
    full = lambda v: torch.as_tensor(v).expand(e).to(torch.int32).clone()  # noqa: E731
    tensors.update({f"{name}.mcol": mcol.to(torch.int32), f"{name}.bias": b.to(torch.int32),
                    f"{name}.zp": full(zp), f"{name}.lo": full(lo), f"{name}.hi": full(hi),
                    f"{name}.scale": scale.to(F)})
    return shift


def smooth_vo(spec: ArchSpec, params: dict, rec: dict, alpha: float) -> dict:
    """SmoothQuant (Xiao et al. 2022) between V and the ``o`` projection, folded offline:
    channel ``j`` of V (its weight row and bias) is divided by
    ``c_j = max|x_j|^alpha / max|W_o[:, j]|^(1 - alpha)`` (``x``: the ``o`` input on the
    calibration text) and column ``j`` of ``W_o`` multiplied by it, so the float model is
    unchanged while the ``o`` input's channels get more even ranges. Scales the recorded
    calibration operands ``rec`` to match (in place); returns the new parameters."""
    out = dict(params)
    d, kvh, group = spec.head_dim, spec.kv_heads, spec.heads // spec.kv_heads
    for i in range(spec.layers):
        p = f"layers.{i}."
        xo = _rows(rec[(p + "o", "x")]).abs().amax(0).view(kvh, group, d)
        wo = params[p + "o.w"].to(F).abs().amax(0).view(kvh, group, d)
        # one factor per V channel, shared by the query heads that read it
        c = xo.amax(1).clamp(min=1e-6) ** alpha / wo.amax(1).clamp(min=1e-6) ** (1 - alpha)
        c = (c / c.log().mean().exp()).reshape(-1)  # geometric mean 1
        cq = c.view(kvh, 1, d).expand(kvh, group, d).reshape(-1)
        out[p + "v.w"] = (params[p + "v.w"].to(F) / c[:, None]).to(torch.float32)
        if p + "v.b" in params:
            out[p + "v.b"] = (params[p + "v.b"].to(F) / c).to(torch.float32)
        out[p + "o.w"] = (params[p + "o.w"].to(F) * cq[None, :]).to(torch.float32)
        for key, f in (((p + "o", "x"), cq), ((p + "av", "y"), cq), ((p + "av", "v"), c),
                       ((p + "v", "y"), c)):
            rec[key] = [(t.to(F) / f).to(torch.float32) for t in rec[key]]
    return out


class _Threads:
    """Run with ``n`` intra-op threads, then restore: the conversion's GEMMs are small and
    OpenMP's spinning threads cost far more than they save on a shared or busy machine."""

    def __init__(self, n: int = 1):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def convert(lm: LoadedModel, opts: ConvertOptions | None = None,
            progress: bool = False) -> ConvertedModel:
    """Convert a loaded model to the integer/spike contract. Refuses bad options and a
    conversion whose GEMMs could overflow the accumulator (:class:`ModelInputError` naming
    the option and the layer); ``progress`` shows progress bars on stderr."""
    opts = (opts or ConvertOptions()).resolved(lm.spec.family)
    opts.check()
    gemms = [g["name"] for g in gemm_nodes(lm.spec)]
    for pattern in opts.layers:  # a pattern that matches nothing is a typo, not a no-op
        if not any(fnmatch.fnmatch(n, pattern) for n in gemms):
            raise ModelInputError(f"option layers: {pattern!r} names no GEMM of {lm.name} "
                                  f"(they are {gemms[0]!r} .. {gemms[-1]!r})")
    with _Threads(1):
        if lm.spec.family == "mamba":
            from .mamba_convert import convert_mamba  # it imports this module

            for name in ("distill_epochs", "learn_rotation", "learn_host_rotation",
                         "min_spike_share"):
                if getattr(opts, name):
                    raise ModelInputError(f"option {name}: must be 0 for the mamba family, "
                                          f"not {getattr(opts, name)}")
            return convert_mamba(lm, opts, progress)
        return _convert(lm, opts, progress)


def _convert(lm: LoadedModel, opts: ConvertOptions, progress: bool) -> ConvertedModel:
    spec: ArchSpec = lm.spec
    if opts.rotate:
        lm = replace(lm, params=fold_head_rotations(spec, lm.params, opts.seed))
    rec = calibrate(lm, opts, progress)
    if opts.smooth_vo > 0:
        lm = replace(lm, params=smooth_vo(spec, lm.params, rec, opts.smooth_vo))
    if opts.learn_rotation:
        lm = replace(lm, params=fold_learned_rotations(spec, lm.params, rec, opts,
                                                       progress)[0])
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def rows(node: str, role: str) -> torch.Tensor:
        if (node, role) not in cache:
            cache[(node, role)] = _rows(rec[(node, role)])
        return cache[(node, role)]

    tensors: dict[str, torch.Tensor] = {}
    signs: dict[int, torch.Tensor] = {}
    nodes: dict[str, NodeInfo] = {}
    graph = gemm_nodes(spec)
    rotary = spec.position == "rotary"
    d, heads, kvh = spec.head_dim, spec.heads, spec.kv_heads
    lin_w: dict[str, torch.Tensor] = {}  # linear weights as quantized (rotated)
    rotq: dict[str, torch.Tensor] = {}  # learned host rotations (learn_host_rotation)
    lin_x: dict[str, torch.Tensor] = {}  # their calibration inputs (rotated)
    raw_x: dict[str, torch.Tensor] = {}

    # 1. activation plans
    for g in tqdm(graph, desc="plan", unit="gemm", disable=not progress, leave=False):
        name, kind = g["name"], g["kind"]
        nopts = opts.for_node(name)
        if kind == "linear":
            host_in = not name.endswith(".o")
            rot = nopts.rotate and host_in
            x = rows(name, "x")
            w = lm.params[name + ".w"].to(F)
            if rot:
                k = x.shape[-1]
                signs.setdefault(k, rotation_signs(k, opts.seed))
                w = rotate(w, signs[k])
            # layers that read the same input (q, k, v; gate, up) share one rows tensor (and
            # its learned host rotation, where they learn one)
            learns = _learns_host_rotation(nopts, rot and host_in, x.shape[-1])
            same = next((lin_x[n] for n in lin_x if n.startswith(name.rsplit(".", 1)[0] + ".")
                         and lin_x[n].shape == x.shape and nodes[n].act.rotate == rot
                         and nodes[n].act.learned_rotation == learns
                         and torch.equal(raw_x[n], x)), None)
            raw_x[name] = x
            lin_w[name] = w
            lin_x[name] = same if same is not None else (_rotate32(x, signs[k]) if rot else x)
            learned = None if not learns else _host_rotation(
                name, opts, lin_x, rotq, graph, lambda n: rows(n, "x"), lm.params, signs, same)
            if learned is not None:
                lin_x[name], lin_w[name] = learned[0], w @ rotq[name]
                w = lin_w[name]
                tensors[name + ".rotq"] = rotq[name].to(torch.float32)
            plan = plan_activation(lin_x[name], nopts, nopts.per_token and host_in, rot, True,
                                   wnorm=w.norm(dim=0))
            plan.learned_rotation = learned is not None
        elif kind == "qk":
            plan = plan_activation(rows(name, "q"), nopts, nopts.per_token and rotary, False, False)
        else:
            plan = plan_activation(rows(name, "p"), nopts, nopts.per_token, False, False)
        nodes[name] = NodeInfo(name, kind, g["K"], g["N"], g["heads"], g["direct"], plan, 0, 0)
    mixed = _mix(lm, opts, nodes, lin_w, lin_x, signs, rotq) if opts.min_spike_share else []

    # 2. weight operands of the attention matmuls: int8, K per head, V per channel
    def head_max(t: torch.Tensor) -> torch.Tensor:
        return t.abs().reshape(-1, kvh, d).amax((0, 2)).repeat_interleave(d)

    for i in range(spec.layers):
        p = f"layers.{i}."
        tensors[p + "qk.w_scale"] = (head_max(rows(p + "qk", "k")) / INT8_QMAX).clamp(min=1e-12)
        tensors[p + "av.w_scale"] = (rows(p + "av", "v").abs().amax(0) / INT8_QMAX).clamp(min=1e-12)

    # 3. thresholds (models.calibrate); linear weights: steps, codes (GPTQ batched over
    # layers), bias corrections
    lin_w, lin_x = calibrate_thresholds(nodes, lin_w, lin_x, opts)
    codes_of, s_of, bias_of = quantize_linears(lm, opts, weight_space(nodes), lin_w, lin_x,
                                               progress)
    moved: dict[str, torch.Tensor] = {}
    if opts.distill_epochs:  # quantization-aware fine-tune of codes, biases, host norms
        texts = [lm.tokenize(t, calibration_tokens(spec, opts))
                 for t in builtin_text("calibration")[: opts.calib_sentences]]
        w_scales = {n: tensors[n + ".w_scale"] for n in nodes if nodes[n].kind != "linear"}
        codes_of, new_bias, params = distill(lm, nodes, codes_of, s_of, bias_of, w_scales,
                                             signs, texts, opts.distill_epochs,
                                             opts.distill_lr, opts.seed, progress, rotq)
        # host-bound outputs move with their trained bias: their 16-bit steps make room
        moved = {n: (new_bias[n] - bias_of[n]).abs() for n in new_bias}
        lm, bias_of = replace(lm, params=params), new_bias

    # 4. outlier shifts the accumulator can hold (before the epilogues that use them)
    zcorr = {n: nodes[n].act.zero_correction(c)
             for n, c in codes_of.items()}
    probe = ConvertedModel(spec, {}, nodes, {f"{n}.{t}": v for n in codes_of
                                             for t, v in (("w", codes_of[n]), ("zcorr", zcorr[n]))})
    for node in nodes.values():
        _fit_outlier_shifts(probe, node, opts)

    # 5. every epilogue
    consumers = {"q": ("qk", "act"), "k": ("qk", "w"), "v": ("av", "w")}
    for g in tqdm(graph, desc="epilogue", unit="gemm", disable=not progress, leave=False):
        name, node = g["name"], nodes[g["name"]]
        plan, base, short = node.act, name.rsplit(".", 1)[0] + ".", name.rsplit(".", 1)[1]
        if node.kind == "linear":
            codes, s_w, bias = codes_of[name], s_of[name], bias_of[name]
            tensors.update({name + ".w": codes.to(torch.int8), name + ".w_scale": s_w,
                            name + ".zcorr": zcorr[name].to(torch.int32)})
            n = codes.shape[0]
            if node.direct and short in consumers:
                cname, role = consumers[short]
                if role == "act":
                    mult, zp, lo, hi = nodes[base + cname].act.channel_targets(n)
                    scale = nodes[base + cname].act.step * mult
                else:
                    scale, zp, lo, hi = tensors[f"{base}{cname}.w_scale"], 0, -INT8_QMAX, INT8_QMAX
            else:
                peak = rows(name, "y").abs().amax(0) + moved.get(name, 0.0)
                if opts.for_node(name).host_out_shared_step:  # one step, the widest's
                    peak = torch.full_like(peak, float(peak.max()))
                scale, zp, lo, hi = host_out_step(peak, host_out_bits(spec, opts, name))
            ratio = fit_ratio(plan, plan.step * s_w / scale, lin_x[name])
            node.shift = _epilogue(tensors, name, ratio, scale, bias, zp, lo, hi)
        elif node.kind == "qk":
            s_k = tensors[name + ".w_scale"].reshape(kvh, d)[:, 0].repeat_interleave(heads // kvh)
            scale = torch.stack([s.abs().amax((1, 2)) for s in rec[(name, "s")]]).amax(0).to(F)
            scale, zp, lo, hi = host_out_step(scale, host_out_bits(spec, opts, name))
            ratio = fit_ratio(plan, plan.step * s_k / (math.sqrt(d) * scale), rows(name, "q"))
            node.shift = _epilogue(tensors, name, ratio, scale, torch.zeros(heads, dtype=F), zp,
                                   lo, hi)
        else:  # av -> the o projection's activation codes
            s_v = tensors[name + ".w_scale"].reshape(kvh, d).repeat_interleave(heads // kvh, 0)
            mult, zp, lo, hi = nodes[base + "o"].act.channel_targets(heads * d)
            scale = nodes[base + "o"].act.step * mult
            ratio = fit_ratio(plan, plan.step * s_v.reshape(-1) / scale, rows(name, "p"))
            node.shift = _epilogue(tensors, name, ratio, scale, torch.zeros(heads * d, dtype=F),
                                   zp, lo, hi)
        node.epi = len(tensors[name + ".scale"])

    fold_offsets(tensors, nodes, lambda n: not n.endswith(".o"))
    host_params = sorted(k for k in lm.params if is_host_param(k))
    for k in host_params:
        tensors["host." + k] = lm.params[k].to(torch.float32).contiguous()
    for k, sg in signs.items():
        tensors[f"rot.{k}"] = sg
    head = convert_head(lm, opts, _rows(rec[(HEAD, "x")]), tensors) if spec.causal else None
    options = opts.to_json() | {"model": lm.name}
    if opts.min_spike_share:
        options["integer_gemms"] = mixed
    cm = ConvertedModel(spec, options, nodes, tensors, host_params, head)
    for n in nodes.values():  # a model its own contract would refuse is not produced
        bound = cm.acc_bound(n)
        if bound > ACC_MAX:
            o = opts.for_node(n.name)
            count = (f"outlier_count={o.outlier_count}" if o.outlier_count is not None else
                     f"outlier_fraction={o.outlier_fraction:g}")
            raise ModelInputError(
                f"{n.name}: options encoding={n.act.encoding.name()} and {count} (--outliers) "
                f"give {len(n.act.outliers)} outlier channel(s) with shifts up to "
                f"{max(n.act.outlier_shifts, default=0)}; the {ACC_BITS}-bit accumulator "
                f"could overflow (worst case {bound:.3g} > {ACC_MAX}): use fewer outlier "
                f"channels or a narrower encoding")
    cm.validate()
    return cm


def _mix(lm: LoadedModel, opts: ConvertOptions, nodes: dict[str, NodeInfo],
         lin_w: dict[str, torch.Tensor], lin_x: dict[str, torch.Tensor],
         signs: dict[int, torch.Tensor], rotq: dict[str, torch.Tensor]) -> list[str]:
    """Move the linear GEMMs whose spike inputs cost most to int8 inputs while the spike
    share stays >= ``opts.min_spike_share`` (:mod:`models.mixed`); a GEMM whose encoding a
    ``layers`` override sets is left as set. Returns the moved nodes' names."""
    alt = {}
    for name, node in nodes.items():
        pinned = any(fnmatch.fnmatch(name, p) and "encoding" in o for p, o in opts.layers.items())
        if node.kind != "linear" or not node.act.encoding.is_spiking or pinned:
            continue
        iopts = replace(opts.for_node(name), encoding=Encoding("int", 8))
        alt[name] = plan_activation(lin_x[name], iopts, node.act.per_token, node.act.rotate, True)
        alt[name].learned_rotation = node.act.learned_rotation
    texts = builtin_text("calibration")[: opts.calib_sentences]
    pick = torch.linspace(0, len(texts) - 1, min(SENSITIVITY_SENTENCES, len(texts))).long()
    ids = [lm.tokenize(texts[int(i)], calibration_tokens(lm.spec, opts)) for i in pick]
    gains = sensitivity(lm, nodes, lin_w, signs, rotq, ids, alt)
    chosen = choose(nodes, gains, opts.min_spike_share)
    for name in chosen:
        nodes[name].act = alt[name]
    return chosen


def _learns_host_rotation(opts: ConvertOptions, host_rotated: bool, k: int) -> bool:
    """Whether a linear layer's input gets a learned host rotation: ``learn_host_rotation``
    on, an input the host rotates, at most ``HOST_ROT_MAX_K`` wide, sign-magnitude spikes
    (the objective's quantizer)."""
    enc = opts.encoding
    return bool(opts.learn_host_rotation) and host_rotated and k <= HOST_ROT_MAX_K and \
        enc.is_spiking and enc.signed


def _host_rotation(name: str, all_opts: ConvertOptions, lin_x: dict[str, torch.Tensor],
                   rotq: dict[str, torch.Tensor], graph, raw_rows, params: dict,
                   signs: dict[int, torch.Tensor],
                   same: torch.Tensor | None) -> tuple[torch.Tensor]:
    """The learned host rotation of linear layer ``name`` (which learns one): learned once
    per input (with the weights of every layer of the block that reads it and learns one,
    e.g. q, k and v), shared by those layers (``same``: the rows of an earlier one). Records
    it in ``rotq``; returns the calibration rows rotated by it."""
    opts = all_opts.for_node(name)
    x = lin_x[name]
    k = x.shape[-1]
    enc = opts.encoding
    if same is not None:  # an earlier layer's input, rotated by its learned matrix already
        rotq[name] = rotq[next(n for n in rotq if lin_x[n] is same)]
        return (same,)
    block = name.rsplit(".", 1)[0] + "."
    raw = raw_rows(name)
    peers = [g["name"] for g in graph if g["kind"] == "linear" and g["name"].startswith(block)
             and not g["name"].endswith(".o") and raw_rows(g["name"]).shape == raw.shape
             and torch.equal(raw_rows(g["name"]), raw)
             and _learns_host_rotation(all_opts.for_node(g["name"]), True, k)]
    w = torch.cat([rotate(params[n + ".w"].to(F), signs[k]) for n in peers])
    n_out = opts.outlier_count if opts.outlier_count is not None else \
        round(opts.outlier_fraction * k)
    q, _, _ = learn_host_rotation(x, w, enc.qmax // enc.fine, max(0, min(k, n_out)),
                                  opts.per_token, opts.learn_host_rotation)
    rotq[name] = q
    return ((x.to(torch.float32) @ q.to(torch.float32)).to(F),)


def _fit_outlier_shifts(cm: ConvertedModel, node: NodeInfo, opts: ConvertOptions) -> None:
    """Lower the largest outlier shifts of ``node`` (its outlier channels then saturate
    earlier) until the contract's worst-case accumulator bound fits ``ACC_BITS``; refuse
    (:class:`ModelInputError` naming the layer and the options) when even shift 0 does
    not. Warns when it lowers a shift."""
    a = node.act
    first = max(a.outlier_shifts, default=0)
    while cm.acc_bound(node) > ACC_MAX and any(a.outlier_shifts):
        top = max(a.outlier_shifts)
        a.outlier_shifts = [p - 1 if p == top else p for p in a.outlier_shifts]
    bound = cm.acc_bound(node)
    o = opts.for_node(node.name)
    count = (f"outlier_count={o.outlier_count}" if o.outlier_count is not None else
             f"outlier_fraction={o.outlier_fraction:g}")
    if bound > ACC_MAX:
        raise ModelInputError(
            f"{node.name}: options encoding={a.encoding.name()} and {count} (--outliers) "
            f"give {len(a.outliers)} outlier channel(s); the {ACC_BITS}-bit accumulator "
            f"could overflow even with outlier shifts of 0 (worst case {bound:.3g} > "
            f"{ACC_MAX}): use fewer outlier channels or a narrower encoding")
    if max(a.outlier_shifts, default=0) < first:
        warnings.warn(f"{node.name}: outlier shifts capped at {max(a.outlier_shifts)} "
                      f"(calibration asked for up to {first}) so that the {ACC_BITS}-bit "
                      f"accumulator cannot overflow with {len(a.outliers)} outlier channels "
                      f"({count}, --outliers); those channels saturate earlier", stacklevel=4)
