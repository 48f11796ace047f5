"""Converter: a loaded float model -> a :class:`~models.bundle.ConvertedModel`.

Steps: (1) run the float model on the built-in calibration text and record every GEMM
operand; (2) per GEMM, choose the activation plan: outlier channels, zero point, step,
outlier shift; (3) quantize weights (rotated, MSE-clipped per-channel steps, GPTQ);
(4) compute each node's fixed-point epilogue for whoever consumes its output.
Rules: ``docs/quantization.md``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources

import torch
from tqdm import tqdm

from .arch import ArchSpec, LoadedModel, ModelInputError
from .bundle import ConvertedModel, NodeInfo
from .contract import (
    ACC_BITS,
    ACC_MAX,
    HOST_OUT_QMAX,
    INT8_QMAX,
    ROW_FRAC,
    WEIGHT_QMAX,
    ContractError,
)
from .encodings import Encoding
from .graph import FloatOps, forward, gemm_nodes
from .quant import (
    MAX_OUTLIER_SHIFT,
    ONE,
    ActPlan,
    dequantize_act,
    fixed_point,
    quantize_act,
    quantize_weight_gptq,
    quantize_weight_rtn,
    rotate,
    rotation_block,
    rotation_signs,
    row_multipliers,
    token_steps,
    weight_scale,
)

F = torch.float64
#: Host-bound outputs get this much headroom over the calibrated maximum.
HOST_HEADROOM = 2.0


@dataclass
class ConvertOptions:
    """Conversion choices (all recorded in the bundle manifest).

    encoding: the spike encoding of the non-outlier channels (``int`` for W4A8).
    outlier_fraction / outlier_count: how many channels per GEMM stay 8-bit integers
        (``outlier_count`` wins when set; 0 outliers gives all-spike W4A4).
    per_token: per-token activation steps for host-produced activations, else static
        per-tensor steps everywhere.
    rotate: Hadamard-rotate host-produced linear-layer inputs (weights absorb it).
    gptq: error-compensating weight rounding; else round to nearest.
    calib_sentences / max_tokens: size of the calibration run.
    layers: per-GEMM overrides, ``{glob: {"encoding": Encoding, "outlier_count": int, ...}}``
        matched with :func:`fnmatch.fnmatch` against node names (``layers.*.down``), applied
        in order; e.g. keep one layer all-integer W4A8 inside a hybrid model.
    """

    encoding: Encoding = Encoding("ttfs-signed", 4)  # noqa: RUF009 (frozen: sharing is safe)
    outlier_fraction: float = 1 / 32
    outlier_count: int | None = None
    per_token: bool = True
    rotate: bool = True
    gptq: bool = True
    seed: int = 0
    calib_sentences: int = 48
    max_tokens: int = 128
    layers: dict[str, dict] = field(default_factory=dict)

    def for_node(self, name: str) -> ConvertOptions:
        """The options in force for GEMM ``name`` after the per-layer overrides."""
        opts = self
        for pattern, over in self.layers.items():
            if fnmatch.fnmatch(name, pattern):
                opts = replace(opts, **over)
        return opts

    def check(self) -> None:
        """Refuse malformed options (:class:`ModelInputError` naming the option)."""
        def bad(name: str, what: str, v=None) -> ModelInputError:
            v = getattr(self, name) if v is None else v
            return ModelInputError(f"option {name}: {what}, not {v!r:.60}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.encoding, Encoding):
            raise bad("encoding", "must be an Encoding")
        f = self.outlier_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
            raise bad("outlier_fraction", "must be a number in [0, 1]")
        if self.outlier_count is not None and not (is_int(self.outlier_count) and
                                                   self.outlier_count >= 0):
            raise bad("outlier_count", "must be an integer >= 0 (--outliers)")
        for name in ("per_token", "rotate", "gptq"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be True or False")
        if not is_int(self.seed):
            raise bad("seed", "must be an integer")
        for name in ("calib_sentences", "max_tokens"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise bad(name, "must be a positive integer")
        if not isinstance(self.layers, dict):
            raise bad("layers", "must be a dict of node-name pattern -> overrides")
        known = {f.name for f in fields(self)} - {"layers"}
        for pattern, over in self.layers.items():
            if not isinstance(pattern, str) or not isinstance(over, dict):
                raise bad("layers", "must map node-name patterns to dicts", {pattern: over})
            unknown = sorted(set(over) - known)
            if unknown:
                raise bad("layers", f"unknown option(s) {', '.join(map(str, unknown))} for "
                                    f"{pattern!r}", over)
            replace(self, layers={}, **over).check()

    def to_json(self) -> dict:
        """Manifest form."""
        d = asdict(self)
        d["encoding"] = self.encoding.to_json()
        d["layers"] = {k: {kk: vv.to_json() if isinstance(vv, Encoding) else vv
                           for kk, vv in v.items()} for k, v in self.layers.items()}
        return d


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

    ops = FloatOps(lm.spec, lm.params, record)
    n_tok = calibration_tokens(lm.spec, opts)
    texts = builtin_text("calibration")[: opts.calib_sentences]
    for text in tqdm(texts, desc="calibrate", unit="sentence", disable=not progress,
                     leave=False):
        forward(lm.spec, lm.params, lm.tokenize(text, n_tok), ops)
    return rec


def _rows(ts: list[torch.Tensor]) -> torch.Tensor:
    """Stack calibration tensors into rows over their last axis (padding keys with 0)."""
    width = max(t.shape[-1] for t in ts)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[-1])).reshape(-1, width)
                      for t in ts]).to(F)


CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


def _best_clip(x: torch.Tensor, plan: ActPlan) -> float:
    """Clip ratio of the spike channels' steps with the least calibration MSE."""
    best, best_err = 1.0, math.inf
    for c in CLIP_GRID:
        trial = replace(plan, clip=c)
        trial.step = float(token_steps(x, trial).max().clamp(min=1e-12))
        err = float(((dequantize_act(*quantize_act(x, trial), trial) - x) ** 2).sum())
        if err < best_err:
            best, best_err = c, err
    return best


def plan_activation(x: torch.Tensor, opts: ConvertOptions, per_token: bool, rotate_: bool,
                    static_weights: bool) -> ActPlan:
    """Choose the split of one GEMM input from its calibration rows ``x`` ``[rows, K]``."""
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
    # Outlier rule: the n_out channels with the largest calibration magnitude.
    outliers = sorted(torch.topk(x.abs().amax(0), n_out).indices.tolist()) if n_out else []
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
        plan.clip = _best_clip(x, plan)
        plan.step = float(token_steps(x, plan).clamp(min=1e-12).max())
    if outliers:
        # Each outlier channel gets the smallest shift that fits it in int8 at the step each
        # row really gets (the reference step times its 16-bit row multiplier), at most the
        # accelerator's MAX_OUTLIER_SHIFT (beyond that the channel saturates).
        own = plan.step * row_multipliers(x, plan).to(F) / ONE
        ratio = (x[:, outliers].abs() / own[:, None]).amax(0).clamp(min=1e-12)
        plan.outlier_shifts = [min(MAX_OUTLIER_SHIFT, max(0, math.ceil(math.log2(r / INT8_QMAX))))
                               for r in ratio.tolist()]
    return plan


def _epilogue(tensors: dict, name: str, ratio: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor, zp, lo, hi) -> int:
    mcol, shift = fixed_point(ratio, name)
    b = torch.round(bias / scale * 2.0**ROW_FRAC)
    if b.numel() and float(b.abs().max()) >= 2**31:
        raise ContractError(f"{name}: bias does not fit the 32-bit requantizer input")
    e = len(scale)
    full = lambda v: torch.as_tensor(v).expand(e).to(torch.int32).clone()  # noqa: E731
    tensors.update({f"{name}.mcol": mcol.to(torch.int32), f"{name}.bias": b.to(torch.int32),
                    f"{name}.zp": full(zp), f"{name}.lo": full(lo), f"{name}.hi": full(hi),
                    f"{name}.scale": scale.to(F)})
    return shift


def convert(lm: LoadedModel, opts: ConvertOptions | None = None,
            progress: bool = False) -> ConvertedModel:
    """Convert a loaded model to the integer/spike contract. Refuses bad options and a
    conversion whose GEMMs could overflow the accumulator (:class:`ModelInputError` naming
    the option and the layer); ``progress`` shows progress bars on stderr."""
    opts = opts or ConvertOptions()
    opts.check()
    spec: ArchSpec = lm.spec
    if opts.rotate:
        lm = replace(lm, params=fold_head_rotations(spec, lm.params, opts.seed))
    rec = calibrate(lm, opts, progress)
    rows = lambda node, role: _rows(rec[(node, role)])  # noqa: E731
    tensors: dict[str, torch.Tensor] = {}
    signs: dict[int, torch.Tensor] = {}
    nodes: dict[str, NodeInfo] = {}
    graph = gemm_nodes(spec)
    rotary = spec.position == "rotary"
    d, heads, kvh = spec.head_dim, spec.heads, spec.kv_heads

    # 1. activation plans
    for g in tqdm(graph, desc="plan", unit="gemm", disable=not progress, leave=False):
        name, kind = g["name"], g["kind"]
        nopts = opts.for_node(name)
        if kind == "linear":
            host_in = not name.endswith(".o")
            rot = nopts.rotate and host_in
            x = rows(name, "x")
            if rot:
                k = x.shape[-1]
                signs.setdefault(k, rotation_signs(k, opts.seed))
                x = rotate(x, signs[k])
            plan = plan_activation(x, nopts, nopts.per_token and host_in, rot, True)
        elif kind == "qk":
            plan = plan_activation(rows(name, "q"), nopts, nopts.per_token and rotary, False, False)
        else:
            plan = plan_activation(rows(name, "p"), nopts, nopts.per_token, False, False)
        nodes[name] = NodeInfo(name, kind, g["K"], g["N"], g["heads"], g["direct"], plan, 0, 0)

    # 2. weight operands of the attention matmuls: int8, K per head, V per channel
    def head_max(t: torch.Tensor) -> torch.Tensor:
        return t.abs().reshape(-1, kvh, d).amax((0, 2)).repeat_interleave(d)

    for i in range(spec.layers):
        p = f"layers.{i}."
        tensors[p + "qk.w_scale"] = (head_max(rows(p + "qk", "k")) / INT8_QMAX).clamp(min=1e-12)
        tensors[p + "av.w_scale"] = (rows(p + "av", "v").abs().amax(0) / INT8_QMAX).clamp(min=1e-12)

    # 3. linear weights and every epilogue
    consumers = {"q": ("qk", "act"), "k": ("qk", "w"), "v": ("av", "w")}
    for g in tqdm(graph, desc="quantize", unit="gemm", disable=not progress, leave=False):
        name, node = g["name"], nodes[g["name"]]
        plan, base, short = node.act, name.rsplit(".", 1)[0] + ".", name.rsplit(".", 1)[1]
        if node.kind == "linear":
            w = lm.params[name + ".w"].to(F)
            bias = lm.params.get(name + ".b", torch.zeros(w.shape[0])).to(F)
            if plan.rotate:
                w = rotate(w, signs[w.shape[1]])
            s_w = weight_scale(w, WEIGHT_QMAX)
            if opts.for_node(name).gptq:
                x = rows(name, "x")
                x = rotate(x, signs[x.shape[1]]) if plan.rotate else x
                codes = quantize_weight_gptq(w, s_w, WEIGHT_QMAX, x.t() @ x)
            else:
                codes = quantize_weight_rtn(w, s_w, WEIGHT_QMAX)
            spk = ~plan.outlier_mask(w.shape[1])
            zcorr = -plan.zero_point * (codes * spk).sum(1)
            tensors.update({name + ".w": codes.to(torch.int8), name + ".w_scale": s_w,
                            name + ".zcorr": zcorr.to(torch.int32)})
            n = w.shape[0]
            if node.direct and short in consumers:
                cname, role = consumers[short]
                if role == "act":
                    mult, zp, lo, hi = nodes[base + cname].act.channel_targets(n)
                    scale = nodes[base + cname].act.step * mult
                else:
                    scale, zp, lo, hi = tensors[f"{base}{cname}.w_scale"], 0, -INT8_QMAX, INT8_QMAX
            else:
                scale = rows(name, "y").abs().amax(0) * HOST_HEADROOM / HOST_OUT_QMAX
                scale, zp, lo, hi = scale.clamp(min=1e-12), 0, -HOST_OUT_QMAX, HOST_OUT_QMAX
            ratio = plan.step * s_w / scale
            node.shift = _epilogue(tensors, name, ratio, scale, bias, zp, lo, hi)
        elif node.kind == "qk":
            s_k = tensors[name + ".w_scale"].reshape(kvh, d)[:, 0].repeat_interleave(heads // kvh)
            scale = torch.stack([s.abs().amax((1, 2)) for s in rec[(name, "s")]]).amax(0).to(F)
            scale = (scale * HOST_HEADROOM / HOST_OUT_QMAX).clamp(min=1e-12)
            ratio = plan.step * s_k / (math.sqrt(d) * scale)
            node.shift = _epilogue(tensors, name, ratio, scale, torch.zeros(heads, dtype=F), 0,
                                   -HOST_OUT_QMAX, HOST_OUT_QMAX)
        else:  # av -> the o projection's activation codes
            s_v = tensors[name + ".w_scale"].reshape(kvh, d).repeat_interleave(heads // kvh, 0)
            mult, zp, lo, hi = nodes[base + "o"].act.channel_targets(heads * d)
            scale = nodes[base + "o"].act.step * mult
            ratio = plan.step * s_v.reshape(-1) / scale
            node.shift = _epilogue(tensors, name, ratio, scale, torch.zeros(heads * d, dtype=F),
                                   zp, lo, hi)
        node.epi = len(tensors[name + ".scale"])

    host_params = sorted(k for k in lm.params if not k.startswith("layers.") or ".norm" in k)
    for k in host_params:
        tensors["host." + k] = lm.params[k].to(torch.float32).contiguous()
    for k, sg in signs.items():
        tensors[f"rot.{k}"] = sg
    options = opts.to_json() | {"model": lm.name}
    cm = ConvertedModel(spec, options, nodes, tensors, host_params)
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
