"""Checking a Hugging Face model directory before anything is loaded.

``config.json`` must be a JSON object of a supported family whose sizes are positive
integers and whose epsilons are finite (:func:`models.arch.spec_from_dict`), and the
weights files' headers (tensor names, shapes, dtypes; nothing is allocated) must match what
the config asks for, tensor by tensor, with no tensor the config does not explain. Every
refusal is a :class:`~models.arch.ModelInputError` whose message is one line naming the
file and the field. :func:`models.arch.load_model` runs :func:`check_model_dir` first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .arch import (
    _GLOBAL,
    _IGNORED,
    _KEYS,
    _LAYER,
    _LAYER_PREFIX,
    FAMILIES,
    ArchSpec,
    ModelInputError,
    _refuse,
    _show,
    _unsupported_arch,
    one_line,
    spec_from_dict,
)

#: The prefix of the base model inside a checkpoint with a task head (stripped, as
#: transformers does), and the task heads themselves (not part of the graph; not loaded).
_BASE_PREFIX = {"bert": "bert.", "gpt2": "transformer.", "opt": "model.", "llama": "model."}
_HEADS = ("lm_head.", "cls.", "classifier.", "score.", "qa_outputs.")

#: A dimension of an expected tensor: (size, the config field(s) it comes from).
Dim = tuple[int, str]


def expected_weights(spec: ArchSpec, d: dict | None = None) -> dict[str, tuple[Dim, ...]]:
    """Every source tensor (base-model names) the config asks for, with its shape, each
    dimension labelled with the config field it comes from. ``d``: the config dict (for
    BERT's ``type_vocab_size`` and LLaMA's ``attention_bias``/``mlp_bias``)."""
    d = d or {}
    fam, k = spec.family, _KEYS[spec.family]
    hid: Dim = (spec.hidden, k["hidden"])
    ffn: Dim = (spec.ffn, k["ffn"])
    if fam == "gpt2" and d.get("n_inner") is None:
        ffn = (spec.ffn, "4*n_embd (n_inner is null)")
    voc: Dim = (spec.vocab, "vocab_size")
    pos: Dim = (spec.max_positions + spec.position_offset,
                k["positions"] + (f"+{spec.position_offset}" if spec.position_offset else ""))
    if fam == "llama":
        qd: Dim = (spec.heads * spec.head_dim, "num_attention_heads*head_dim")
        kvd: Dim = (spec.kv_heads * spec.head_dim, "num_key_value_heads*head_dim")
    else:
        qd = kvd = hid
    glob = {"embed.tok.w": (voc, hid), "embed.pos.w": (pos, hid),
            "embed.type.w": ((d.get("type_vocab_size", 2), "type_vocab_size"), hid),
            "embed.norm.w": (hid,), "embed.norm.b": (hid,), "final_norm.w": (hid,),
            "final_norm.b": (hid,)}
    out: dict[str, tuple[Dim, ...]] = {src: glob[dst] for dst, src in _GLOBAL[fam].items()}
    # canonical [out, in] of each linear layer
    lin = {"q": (qd, hid), "k": (kvd, hid), "v": (kvd, hid), "o": (hid, qd), "gate": (ffn, hid),
           "up": (ffn, hid), "down": (hid, ffn)}
    bias = fam != "llama"
    for i in range(spec.layers):
        pre = f"{_LAYER_PREFIX[fam]}{i}."
        for short, src in _LAYER[fam].items():
            if short == "qkv":  # GPT-2 Conv1D: one [in, 3*out] weight
                out[pre + src + ".weight"] = (hid, (3 * spec.hidden, "3*" + k["hidden"]))
                out[pre + src + ".bias"] = ((3 * spec.hidden, "3*" + k["hidden"]),)
            elif short.startswith("norm"):
                out[pre + src + ".weight"] = (hid,)
                if spec.norm == "layernorm":
                    out[pre + src + ".bias"] = (hid,)
            else:
                o, i_ = lin[short]
                out[pre + src + ".weight"] = (i_, o) if fam == "gpt2" else (o, i_)
                has_bias = bias or d.get("mlp_bias" if short in ("gate", "up", "down")
                                         else "attention_bias", False)
                if has_bias:
                    out[pre + src + ".bias"] = (o,)
    return out


def check_weights(spec: ArchSpec, d: dict | None, shapes: dict[str, tuple[tuple[int, ...], str]],
                  cfg_where: str, w_where: str) -> None:
    """Compare a weights file's tensors (name -> (shape, dtype), base-model names) with what
    the config asks for; refuse, naming the file and the config field, any missing tensor,
    tensor the config does not explain, wrong shape, wrong layer count or non-float dtype."""
    fam, keys = spec.family, _KEYS[spec.family]
    prefix = _LAYER_PREFIX[fam]
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = sorted({int(m.group(1)) for n in shapes if (m := pat.match(n))})
    if found != list(range(spec.layers)):
        lf = keys["layers"]
        if not found:
            raise ModelInputError(f"{cfg_where}: {lf}={spec.layers} but {w_where} holds no "
                                  f"layers ({prefix}N.*)")
        if found == list(range(len(found))):
            raise ModelInputError(f"{cfg_where}: {lf}={spec.layers} but {w_where} holds "
                                  f"{len(found)} layer(s) ({prefix}0 .. {prefix}{found[-1]})")
        raise ModelInputError(f"{w_where}: layers numbered {_show(found)}, not 0..{len(found) - 1}"
                              f" ({cfg_where}: {lf}={spec.layers})")
    exp = expected_weights(spec, d)
    for name, dims in exp.items():
        if name not in shapes:
            continue
        shape, dtype = shapes[name]
        want = tuple(s for s, _ in dims)
        if tuple(shape) != want:
            what = "the config"
            if len(shape) == len(want):
                size, lab = next((s, lab) for (s, lab), g in zip(dims, shape, strict=True)
                                 if s != g)
                what = f"{lab}={size}"
            raise ModelInputError(f"{cfg_where}: {what} does not match the weights: {name} in "
                                  f"{w_where} has shape {list(shape)}, expected {list(want)}")
        if not _is_float_dtype(dtype):
            raise ModelInputError(f"{w_where}: tensor {name} has dtype {dtype}, expected a "
                                  f"floating-point type")
    missing = [n for n in exp if n not in shapes]
    if missing:
        raise ModelInputError(f"{w_where}: missing tensor(s) that {cfg_where} asks for: "
                              f"{', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
    extra = sorted(n for n in shapes if n not in exp and not any(s in n for s in _IGNORED))
    if extra:
        raise ModelInputError(f"{w_where}: tensor(s) that {cfg_where} does not explain: "
                              f"{', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else ""))


def _is_float_dtype(dtype) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return str(dtype).upper() in ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")


# -- reading a model directory --------------------------------------------------------------
def read_json(path: Path, what: str = "a JSON object") -> dict:
    """A JSON object from ``path``, or a one-line :class:`ModelInputError` naming it."""
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise ModelInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ModelInputError(f"{path}: unreadable ({e.strerror or one_line(e)})") from e
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelInputError(f"{path}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise ModelInputError(f"{path}: not valid JSON (nested too deeply)") from e
    if not isinstance(d, dict):
        raise ModelInputError(f"{path}: must be {what}, not a JSON {type(d).__name__}")
    return d


def read_config(path: Path) -> dict:
    """``config.json`` of a model directory over its family's defaults (what transformers
    would use), checked to be a JSON object of a supported family."""
    cfg_path = path / "config.json"
    raw = read_json(cfg_path)
    mt = raw.get("model_type")
    _refuse(not isinstance(mt, str) or mt not in FAMILIES, f"{cfg_path}: {_unsupported_arch(mt)}")
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[mt]
    defaults = cls().to_dict()
    # sizes that transformers derives from others when absent (not the class defaults)
    for k in ("head_dim", "num_key_value_heads", "n_inner", "word_embed_proj_dim"):
        defaults.pop(k, None)
    amap = getattr(cls, "attribute_map", {}) or {}
    return defaults | {amap.get(k, k): v for k, v in raw.items()}


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def weight_files(path: Path) -> list[Path]:
    """The weights file(s) transformers would read from a model directory."""
    for name in _WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return [f]
        wm = read_json(f).get("weight_map")
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise ModelInputError(f"{f}: weight_map must be an object of tensor -> file name")
        files = []
        for v in sorted(set(wm.values())):
            if Path(v).name != v or not (path / v).is_file():
                raise ModelInputError(f"{f}: weight_map names {v!r}, which is not a file in "
                                      f"{path}")
            files.append(path / v)
        return files
    raise ModelInputError(f"{path}: no weights file ({', '.join(_WEIGHT_FILES)})")


def weight_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], object]]:
    """Name -> (shape, dtype) of every tensor in the weights file(s), read from the headers
    only (safetensors) or onto the meta device (``.bin``): nothing is allocated."""
    from safetensors import safe_open

    out: dict[str, tuple[tuple[int, ...], object]] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt") as g:
                    for k in g.keys():
                        sl = g.get_slice(k)
                        out[k] = (tuple(sl.get_shape()), sl.get_dtype())
            else:
                sd = torch.load(str(f), map_location="meta", weights_only=True)
                if not isinstance(sd, dict):
                    raise ValueError(f"holds a {type(sd).__name__}, not a state dict")
                for k, t in sd.items():
                    if not isinstance(t, torch.Tensor):
                        raise ValueError(f"entry {k!r} is not a tensor")
                    out[k] = (tuple(t.shape), t.dtype)
        except Exception as e:  # safetensors and torch raise their own error types
            raise ModelInputError(f"{f}: unreadable weights file ({one_line(e)})") from e
    return out


def _base_names(fam: str, shapes: dict) -> dict:
    """Checkpoint names as the base model sees them: the task model's prefix stripped and
    task heads (``lm_head``, ...) dropped, as transformers does when loading a base model."""
    pre = _BASE_PREFIX[fam]
    out = {}
    for k, v in shapes.items():
        k = k.removeprefix(pre)
        if k.endswith((".gamma", ".beta")):  # legacy LayerNorm names, renamed on load
            k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
        if not k.startswith(_HEADS):
            out[k] = v
    return out


def check_model_dir(path: Path) -> tuple[ArchSpec, dict]:
    """Check a Hugging Face model directory without loading it: config fields, then the
    weights files' headers against the config. Returns the spec and the config dict."""
    cfg_where = str(path / "config.json")
    d = read_config(path)
    spec = spec_from_dict(d, cfg_where)
    files = weight_files(path)
    w_where = str(files[0]) if len(files) == 1 else f"{path} (weights shards)"
    check_weights(spec, d, _base_names(spec.family, weight_shapes(files)), cfg_where, w_where)
    return spec, d
