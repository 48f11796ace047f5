"""Mamba (selective state-space) models: import and the float graph.

Import: ``MambaForCausalLM`` / ``MambaModel`` directories (``model_type: "mamba"``) and the
seeded random built-in ``tiny-mamba``, offline, into the canonical form of
:mod:`models.arch`: a :class:`MambaSpec` and a flat dict of float32 tensors with
family-independent names (``layers.3.in_proj.w`` is ``[out, in]``). Mamba-2 and Falcon-Mamba
are refused by name, as is every config option the graph does not compute exactly
(:func:`spec_from_mamba_dict`).

Graph (:func:`forward`), per block ``i`` (residual stream ``x``, ``d = inner``)::

    h        = rms_norm(x, norm.w)                        host
    [u | z]  = in_proj(h)                                  GEMM  layers.i.in_proj  [2d]
    u        = silu(causal_conv1d(u, conv.w, conv.b))      host
    [r|B|C]  = x_proj(u)                                   GEMM  layers.i.x_proj   [R+2S]
    dt       = softplus(dt_proj(r))                        GEMM  layers.i.dt_proj  [d], host
    y        = selective_scan(u, dt, A_log, B, C, D)       host
    x        = x + out_proj(y * silu(z))                   GEMM  layers.i.out_proj [hidden]

then ``final_norm``. The four projections are the accelerator's GEMMs (``ops.linear``);
the convolution, the scan, softplus, SiLU, the gating and the norms are the host functions
of :mod:`models.nonlinear` (float64, exact and deterministic). The LM head (tied to the
embeddings) is not part of the graph, as for the transformers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import nonlinear as nl
from .arch import (
    MAX_DIM,
    MAX_LAYERS,
    MAX_VOCAB,
    LoadedModel,
    ModelInputError,
    UnsupportedModelError,
    _Fields,
    _is_int,
    _show,
    _tokenizer_for,
    check_finite,
    one_line,
    spec_fields_from_json,
)
from .contract import F

#: The built-in random Mamba (for tests).
BUILTIN = ("tiny-mamba",)
#: ``model_type`` values routed here: ``mamba`` is imported, the others refused by name.
MODEL_TYPES = ("mamba", "mamba2", "falcon_mamba")
#: Largest SSM state and convolution width accepted.
MAX_STATE = 4096
MAX_CONV = 64


@dataclass(frozen=True, kw_only=True)
class MambaSpec:
    """Shape of a Mamba model (fields by keyword). ``inner`` is the mixer's width
    (``expand * hidden``), ``state`` the SSM state size per channel, ``conv`` the causal
    depthwise convolution's width, ``dt_rank`` the time-step projection's rank."""

    family: str  # "mamba"
    layers: int
    hidden: int
    inner: int
    state: int
    conv: int
    dt_rank: int
    vocab: int
    norm_eps: float
    conv_bias: bool  # the convolution has a bias
    proj_bias: bool  # in_proj and out_proj have biases (``use_bias``)

    #: A recurrent model reads its tokens in order (``gen build --workload decode`` asks).
    causal = True

    def to_json(self) -> dict:
        """Plain dict for the bundle manifest."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, where: str = "arch") -> MambaSpec:
        """Inverse of :meth:`to_json`; checks every field (:class:`ModelInputError`)."""
        return spec_fields_from_json(cls, d, where)

    def check(self, where: str = "arch") -> None:
        """Refuse sizes the graph cannot run (one line naming the field)."""
        if self.family != "mamba":
            raise ModelInputError(f"{where}.family: must be mamba, not {_show(self.family)}")
        for name, hi in (("layers", MAX_LAYERS), ("hidden", MAX_DIM), ("inner", MAX_DIM),
                         ("state", MAX_STATE), ("conv", MAX_CONV), ("dt_rank", MAX_DIM),
                         ("vocab", MAX_VOCAB)):
            if not 1 <= getattr(self, name) <= hi:
                raise ModelInputError(f"{where}.{name}: must be in 1..{hi}, not "
                                      f"{_show(getattr(self, name))}")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps <= 1):
            raise ModelInputError(f"{where}.norm_eps: must be a finite number in (0, 1], not "
                                  f"{_show(self.norm_eps)}")

    def describe(self) -> str:
        """The sizes, for messages."""
        return (f"family=mamba, layers={self.layers}, hidden={self.hidden}, "
                f"inner={self.inner}, state={self.state}, conv={self.conv}, "
                f"dt_rank={self.dt_rank}")


def _refuse(cond: bool, what: str) -> None:
    if cond:
        raise UnsupportedModelError(what)


#: Config options that change only initialisation, training or the kernel choice (the
#: forward pass's arithmetic is the same): accepted whatever their value.
_IGNORED_OPTIONS = ("initializer_range", "time_step_scale", "time_step_min", "time_step_max",
                    "time_step_init_scheme", "time_step_floor", "rescale_prenorm_residual",
                    "use_cache", "use_mambapy", "use_associative_scan", "residual_in_fp32",
                    "tie_word_embeddings")


def spec_from_mamba_dict(d: dict, where: str = "config") -> MambaSpec:
    """A :class:`MambaSpec` from a config dict (``config.json``, MambaConfig's defaults for
    missing keys). Refuses, naming ``where`` and the option: Mamba-2 and Falcon-Mamba
    (``model_type``), an activation other than SiLU (``hidden_act``), and an
    ``intermediate_size`` that is not ``expand * hidden_size``; malformed sizes and
    epsilons (:class:`ModelInputError`)."""
    if not isinstance(d, dict):
        raise ModelInputError(f"{where}: must be a JSON object, not {type(d).__name__}")
    mt = d.get("model_type")
    _refuse(mt == "mamba2", f"{where}: model_type 'mamba2' (Mamba-2: multi-head SSD scan, "
                            f"grouped norm) is not supported; supported: mamba")
    _refuse(mt == "falcon_mamba", f"{where}: model_type 'falcon_mamba' (RMS norms inside "
                                  f"the mixer, mixer_rms_eps) is not supported; supported: "
                                  f"mamba")
    _refuse(mt != "mamba", f"{where}: unsupported architecture {_show(mt)}; supported: mamba")
    c = _Fields(d, where)
    layers = c.int("num_hidden_layers", hi=MAX_LAYERS, default=32)
    hidden = c.int("hidden_size", default=768)
    vocab = c.int("vocab_size", hi=MAX_VOCAB, default=50280)
    state = c.int("state_size", hi=MAX_STATE, default=16)
    conv = c.int("conv_kernel", hi=MAX_CONV, default=4)
    inner = c.int("expand", default=2) * hidden
    _refuse(not 1 <= inner <= MAX_DIM, f"{where}: expand*hidden_size={inner} outside "
                                       f"1..{MAX_DIM}")
    if d.get("intermediate_size") is not None and d["intermediate_size"] != inner:
        raise UnsupportedModelError(
            f"{where}: intermediate_size={_show(d['intermediate_size'])} is not "
            f"expand*hidden_size={inner} (transformers' MambaConfig always derives it)")
    rank = d.get("time_step_rank", "auto")
    if rank == "auto":
        rank = math.ceil(hidden / 16)
    elif not (_is_int(rank) and 1 <= rank <= MAX_DIM):
        raise c.err("time_step_rank", f'must be "auto" or an integer in 1..{MAX_DIM}')
    act = c.str("hidden_act", "silu")
    _refuse(act != "silu", f"{where}: mamba: unsupported hidden_act {act!r} (supported: "
                           f"silu)")
    spec = MambaSpec(family="mamba", layers=layers, hidden=hidden, inner=inner, state=state,
                     conv=conv, dt_rank=rank, vocab=vocab,
                     norm_eps=c.float("layer_norm_epsilon", 1e-5),
                     conv_bias=c.bool("use_conv_bias", True), proj_bias=c.bool("use_bias", False))
    for key in _IGNORED_OPTIONS:  # accepted, but malformed values are still refused
        if key in d and d[key] is not None and not isinstance(d[key], bool | int | float | str):
            raise c.err(key, "must be a JSON scalar")
    spec.check(f"{where} (as arch)")
    return spec


def mamba_shapes(spec: MambaSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every canonical parameter (in_proj / out_proj biases only with
    ``proj_bias``, the convolution's bias only with ``conv_bias``)."""
    h, d, s, r = spec.hidden, spec.inner, spec.state, spec.dt_rank
    out: dict[str, tuple[int, ...]] = {"embed.tok.w": (spec.vocab, h), "final_norm.w": (h,)}
    for i in range(spec.layers):
        p = f"layers.{i}."
        out |= {p + "norm.w": (h,), p + "in_proj.w": (2 * d, h), p + "conv.w": (d, spec.conv),
                p + "x_proj.w": (r + 2 * s, d), p + "dt_proj.w": (d, r), p + "dt_proj.b": (d,),
                p + "A_log": (d, s), p + "D": (d,), p + "out_proj.w": (h, d)}
        if spec.conv_bias:
            out[p + "conv.b"] = (d,)
        if spec.proj_bias:
            out[p + "in_proj.b"] = (2 * d,)
            out[p + "out_proj.b"] = (h,)
    return out


#: The projections: the accelerator's GEMMs (every other parameter is the host's).
PROJECTIONS = ("in_proj", "x_proj", "dt_proj", "out_proj")


def mamba_host_shapes(spec: MambaSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of the host's parameters: all but the projections' weights and biases."""
    proj = tuple(f"{n}.{s}" for n in PROJECTIONS for s in "wb")
    return {k: s for k, s in mamba_shapes(spec).items() if not k.endswith(proj)}


#: Canonical name (after ``layers.i.``) -> source name after ``layers.i.``.
_LAYER = {"norm.w": "norm.weight", "in_proj.w": "mixer.in_proj.weight",
          "in_proj.b": "mixer.in_proj.bias", "conv.w": "mixer.conv1d.weight",
          "conv.b": "mixer.conv1d.bias", "x_proj.w": "mixer.x_proj.weight",
          "dt_proj.w": "mixer.dt_proj.weight", "dt_proj.b": "mixer.dt_proj.bias",
          "A_log": "mixer.A_log", "D": "mixer.D", "out_proj.w": "mixer.out_proj.weight",
          "out_proj.b": "mixer.out_proj.bias"}
_GLOBAL = {"embed.tok.w": "embeddings.weight", "final_norm.w": "norm_f.weight"}


def mamba_params(spec: MambaSpec, sd: dict[str, torch.Tensor],
                 where: str = "weights") -> dict[str, torch.Tensor]:
    """Map a ``MambaModel`` state dict (``backbone.`` stripped) to canonical names; refuse
    unknown, missing and mis-shaped tensors by name."""
    sd = {k.removeprefix("backbone."): v.detach().to(torch.float32) for k, v in sd.items()}
    sd = {("embeddings." + k[len("embedding."):] if k.startswith("embedding.") else k): v
          for k, v in sd.items()}  # old checkpoints (transformers' load hook does the same)
    src = dict(_GLOBAL)
    for i in range(spec.layers):
        src |= {f"layers.{i}.{c}": f"layers.{i}.{s}" for c, s in _LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for dst, s in src.items():
        if s in sd:
            t = sd[s]
            out[dst] = t.reshape(t.shape[0], -1) if dst.endswith("conv.w") else t
    used = set(src.values())
    unknown = sorted(k for k in sd if k not in used and not k.startswith("lm_head."))
    _refuse(bool(unknown), f"{where}: mamba: unsupported tensor(s): {', '.join(unknown[:8])}")
    shapes = mamba_shapes(spec)
    extra = sorted(k for k in out if k not in shapes)
    _refuse(bool(extra), f"{where}: mamba: tensor(s) {', '.join(extra[:4])} that the config "
                         f"does not have (use_bias / use_conv_bias)")
    for name, shape in shapes.items():
        _refuse(name not in out, f"{where}: mamba: the weights have no {name} "
                                 f"({src[name]})")
        if tuple(out[name].shape) != shape:
            raise ModelInputError(f"{where}: mamba: tensor {src[name]} has shape "
                                  f"{list(sd[src[name]].shape)}, the config implies "
                                  f"{list(shape)}")
    return out


def tiny_mamba_config(hidden: int = 64, layers: int = 2, state: int = 8, expand: int = 2,
                      conv: int = 4, vocab: int = 30522, dt_rank="auto", **kw):
    """A small random Mamba configuration (built-in and tests)."""
    from transformers import MambaConfig

    return MambaConfig(hidden_size=hidden, num_hidden_layers=layers, state_size=state,
                       expand=expand, conv_kernel=conv, vocab_size=vocab,
                       time_step_rank=dt_rank, **kw)


def random_mamba(cfg, seed: int = 0):
    """A transformers ``MambaModel`` with seeded random weights (no download); norms,
    biases and D perturbed so that the tests exercise every parameter."""
    from transformers import MambaModel

    torch.manual_seed(seed)
    model = MambaModel(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            if name.endswith("A_log"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def mamba_dir(name: str) -> bool:
    """Whether ``name`` is the built-in random Mamba or a directory whose ``config.json``
    names a Mamba-family ``model_type`` (those are imported or refused here)."""
    if name in BUILTIN:
        return True
    cfg = Path(name) / "config.json"
    if not cfg.is_file():
        return False
    try:
        d = json.loads(cfg.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False  # models.checkpoint reports it, naming the file
    return isinstance(d, dict) and d.get("model_type") in MODEL_TYPES


def _check_weights_header(path: Path, spec: MambaSpec) -> None:
    """Refuse a ``model.safetensors`` whose tensor names or shapes disagree with the config
    before anything is allocated (headers only)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        if not any(path.glob("*.bin")):
            raise ModelInputError(f"{path}: no weights (model.safetensors or "
                                  f"pytorch_model.bin)")
        return  # .bin: transformers reads it with weights_only=True; checked after loading
    shapes: dict[str, torch.Size] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    shapes[k] = torch.Size(sf.get_slice(k).get_shape())
        except Exception as e:  # safetensors raises its own types
            raise ModelInputError(f"{f}: unreadable safetensors header ({one_line(e)})") from e
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    mamba_params(spec, fake, str(files[0]))


def load_mamba(name_or_dir: str | os.PathLike) -> LoadedModel:
    """Load ``tiny-mamba`` or a Mamba directory, offline (no ``trust_remote_code``, weights
    through safetensors, or ``torch.load(weights_only=True)`` inside transformers)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = str(name_or_dir)
    if name in BUILTIN:
        model, path = random_mamba(tiny_mamba_config()), None
        spec = spec_from_mamba_dict(model.config.to_dict(), name)
    else:
        path = Path(name)
        where = str(path / "config.json")
        try:
            d = json.loads((path / "config.json").read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ModelInputError(f"{where}: unreadable or not JSON ({one_line(e)})") from e
        spec = spec_from_mamba_dict(d, where)
        _check_weights_header(path, spec)
        from transformers import MambaModel

        try:
            model = MambaModel.from_pretrained(str(path), trust_remote_code=False).eval()
        except Exception as e:  # transformers raises many types; the checks above passed
            raise ModelInputError(f"{path}: transformers could not load the model "
                                  f"({one_line(e)})") from e
        if spec_from_mamba_dict(model.config.to_dict(), where) != spec:
            raise ModelInputError(f"{where}: transformers read the config differently")
    params = mamba_params(spec, model.state_dict(), name)
    check_finite(params, name)
    return LoadedModel(name, spec, params, _tokenizer_for(path), model)


def mamba_nodes(spec: MambaSpec) -> list[dict]:
    """Every GEMM of one forward pass in execution order (the format of
    :func:`models.graph.gemm_nodes`): per block ``in_proj``, ``x_proj``, ``dt_proj``,
    ``out_proj``, all linear with their outputs going to the host."""
    h, d, r, s = spec.hidden, spec.inner, spec.dt_rank, spec.state
    nodes = []
    for i in range(spec.layers):
        p = f"layers.{i}."
        for name, k, n in (("in_proj", h, 2 * d), ("x_proj", d, r + 2 * s),
                           ("dt_proj", r, d), ("out_proj", d, h)):
            nodes.append(dict(name=p + name, kind="linear", K=k, N=n, heads=1, direct=False))
    return nodes


def forward(spec: MambaSpec, params, ids: torch.Tensor, ops, cache=None) -> torch.Tensor:
    """Run one sequence ``ids`` ``[M]``; returns the final hidden states ``[M, hidden]``
    (float64). ``ops`` computes the four projections (:class:`models.graph.FloatOps`, the
    golden model's ``GoldenOps``); the rest is host work (module doc)."""
    if ids.dim() != 1 or len(ids) == 0:
        raise ValueError(f"ids must be a non-empty 1-D token sequence, not {tuple(ids.shape)}")
    if cache is not None:
        raise ValueError("mamba: generation with a KV cache is not supported (a Mamba model "
                         "carries a recurrent state, not keys and values)")
    d, r, s = spec.inner, spec.dt_rank, spec.state
    def f64(key: str) -> torch.Tensor | None:
        return params[key].to(F) if key in params else None

    x = params["embed.tok.w"][ids].to(F)
    for i in range(spec.layers):
        p = f"layers.{i}."
        h = nl.rms_norm(x, f64(p + "norm.w"), spec.norm_eps)
        uz = ops.host(ops.linear(p + "in_proj", h))
        u = nl.silu(nl.causal_conv1d(uz[:, :d], f64(p + "conv.w"), f64(p + "conv.b")))
        rbc = ops.host(ops.linear(p + "x_proj", u))
        dt = nl.softplus(ops.host(ops.linear(p + "dt_proj", rbc[:, :r].contiguous())))
        y = nl.selective_scan(u, dt, f64(p + "A_log"), rbc[:, r:r + s], rbc[:, r + s:],
                              f64(p + "D"))
        x = x + ops.host(ops.linear(p + "out_proj", y * nl.silu(uz[:, d:])))
    return nl.rms_norm(x, f64("final_norm.w"), spec.norm_eps)
