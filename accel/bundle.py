"""The build bundle's host side: the files a bundle holds for the host (its configuration,
its compiled program, the tokenizer and float parameters), their writers and readers (one
validation each), and the digest of the code that built it. ``gen build`` writes a bundle;
``host run`` reads one with nothing but this module and ``models.bundle`` (the converted
model): the bundle is self-contained.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from models.arch import LoadedModel, one_line
from models.bundle import ConvertedModel
from models.checkpoint import read_json

from .config import AccelConfig

#: The accelerator the bundle was built for: ``{"config", "hash", "hw_source"}``.
CONFIG = "config.json"
#: The compiled program: ``{"config_hash", "gemms"}`` (``gen.program.compile_program``).
PROGRAM = "program.json"
TOKENIZER = "tokenizer"
FLOAT = "float"
FLOAT_PARAMS = "params.safetensors"
FLOAT_INDEX = "params.json"


#: Packages whose source a bundle's Verilog and program depend on (its ``hw_source``).
SOURCES = ("accel", "hw", "models", "gen")
#: Packages the emitted Verilog depends on.
HW_SOURCES = ("accel", "hw", "models")


class BundleFileError(ValueError):
    """A bundle file the host needs is missing or unreadable (one-line message)."""


def save_host_files(lm: LoadedModel, cm: ConvertedModel, out: Path) -> None:
    """``tokenizer/`` (the model's tokenizer, as ``save_pretrained`` writes it) and
    ``float/`` (the float parameters that ``model/`` does not already hold as host tensors,
    and the list of all of them)."""
    tokenizer: Any = lm.tokenizer  # a transformers tokenizer (LoadedModel types it object)
    tokenizer.save_pretrained(str(out / TOKENIZER))
    shared = sorted(k for k in cm.host_params if k in lm.params
                    and torch.equal(cm.tensors["host." + k], lm.params[k]))
    own = {k: v.detach().contiguous().clone() for k, v in lm.params.items() if k not in shared}
    from safetensors.torch import save_file

    (out / FLOAT).mkdir()
    save_file(own, str(out / FLOAT / FLOAT_PARAMS))
    (out / FLOAT / FLOAT_INDEX).write_text(json.dumps(
        {"params": sorted(lm.params), "from_model": shared}, indent=1))


def load_host_model(bundle: Path, cm: ConvertedModel) -> LoadedModel:
    """The bundle's model as the host needs it: its tokenizer and float parameters (for the
    baselines), read from ``tokenizer/`` and ``float/`` only. Raises
    :class:`BundleFileError` naming the file."""
    tok = bundle / TOKENIZER
    if not tok.is_dir():
        raise BundleFileError(f"{bundle}: no {TOKENIZER}/ (the model's tokenizer); the bundle "
                              f"was built by an older gen build: rebuild it")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok), trust_remote_code=False,
                                                  local_files_only=True)
    except Exception as e:  # transformers / tokenizers raise their own types
        raise BundleFileError(f"{tok}: unreadable tokenizer ({type(e).__name__}: "
                              f"{one_line(e)})") from None
    fdir = bundle / FLOAT
    for f in (FLOAT_INDEX, FLOAT_PARAMS):
        if not (fdir / f).is_file():
            raise BundleFileError(f"{bundle}: no {FLOAT}/{f} (the float model the baselines "
                                  f"are converted from); rebuild the bundle")
    try:
        index = json.loads((fdir / FLOAT_INDEX).read_text())
        names, shared = index["params"], index["from_model"]
        if not (isinstance(names, list) and isinstance(shared, list)
                and all(isinstance(n, str) for n in names + shared)):
            raise TypeError("params and from_model must be lists of names")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise BundleFileError(f"{fdir / FLOAT_INDEX}: malformed ({type(e).__name__}: "
                              f"{one_line(e)})") from None
    try:
        from safetensors.torch import load_file

        params = load_file(str(fdir / FLOAT_PARAMS))
    except Exception as e:  # safetensors raises its own error type
        raise BundleFileError(f"{fdir / FLOAT_PARAMS}: unreadable ({one_line(e)})") from None
    for k in shared:
        if "host." + k not in cm.tensors:
            raise BundleFileError(f"{fdir / FLOAT_INDEX}: {k} is not a host tensor of model/")
        params[k] = cm.tensors["host." + k]
    if sorted(params) != sorted(names):
        missing = sorted(set(names) - set(params))
        extra = sorted(set(params) - set(names))
        raise BundleFileError(f"{fdir}: parameters missing {missing[:4]}, unexpected "
                              f"{extra[:4]}")
    bad = [k for k, v in params.items() if v.dtype != torch.float32]
    if bad:
        raise BundleFileError(f"{fdir / FLOAT_PARAMS}: {bad[0]} is {params[bad[0]].dtype}, "
                              f"not float32")
    return LoadedModel(str(cm.options.get("model", bundle.name)), cm.spec, params, tokenizer,
                       None)


def source_digest(*packages: str) -> str:
    """Hash of the Python source of ``packages`` (folders next to this one), read once per
    process, when first asked, so that it describes the code this process runs."""
    key = tuple(packages)
    if key not in _DIGESTS:
        _DIGESTS[key] = _digest(packages)
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


def _digest(packages) -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def config_record(cfg: AccelConfig) -> dict:
    """What :data:`CONFIG` holds for ``cfg``: the configuration, its hash
    (``AccelConfig.hash_text``) and the digest of the code that builds from it."""
    return {"config": cfg.to_json(), "hash": cfg.hash_text, "hw_source": source_digest(*SOURCES)}


def program_record(cfg: AccelConfig, gemms: list[dict]) -> dict:
    """What :data:`PROGRAM` holds: the compiled ``gemms`` and the hash of the configuration
    they were compiled for."""
    return {"config_hash": cfg.hash_text, "gemms": gemms}


def read_config(bundle: Path) -> AccelConfig:
    """The bundle's configuration from :data:`CONFIG`, refused (:class:`BundleFileError`,
    one line naming the file) when it does not parse or its hash is not its own."""
    meta = read_json(bundle / CONFIG)
    try:
        cfg = AccelConfig.from_json(meta["config"])
        digest = cfg.hash_text
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise BundleFileError(f"{bundle / CONFIG}: bad config ({type(e).__name__}: "
                              f"{one_line(e)})") from None
    if meta.get("hash") != digest:
        raise BundleFileError(f"{bundle / CONFIG}: hash {meta.get('hash')!r} is not "
                              f"the hash of its config ({digest})")
    return cfg


def read_program(bundle: Path, cfg: AccelConfig) -> list[dict]:
    """The compiled GEMMs of :data:`PROGRAM`, refused unless compiled for ``cfg`` and each
    has the fields the host compares with its own tiling (``gemm``, ``head``, ``k``,
    ``n``, ``tiles`` with ``n`` ranges)."""
    where = bundle / PROGRAM
    prog = read_json(where)
    if prog.get("config_hash") != cfg.hash_text:
        raise BundleFileError(f"{where}: compiled for config {prog.get('config_hash')!r}, "
                              f"the bundle's is {cfg.hash_text}")
    gemms = prog.get("gemms")
    if not isinstance(gemms, list) or not gemms:
        raise BundleFileError(f"{where}: gemms is {type(gemms).__name__}, not a list of GEMMs")
    for i, g in enumerate(gemms):
        ok = (isinstance(g, dict) and isinstance(g.get("gemm"), str)
              and (g.get("head") is None or type(g.get("head")) is int)
              and all(type(g.get(k)) is int for k in ("k", "n"))
              and isinstance(g.get("tiles"), list)
              and all(isinstance(t, dict) and isinstance(t.get("n"), list) and len(t["n"]) == 2
                      and all(type(v) is int for v in t["n"]) for t in g["tiles"]))
        if not ok:
            raise BundleFileError(f"{where}: gemms[{i}] is malformed (needs gemm, head, k, n "
                                  f"and tiles with n ranges)")
    return gemms


def built_by_other_code(bundle: Path) -> bool:
    """Whether the bundle's Verilog and program came from other source than this process
    runs (its :data:`CONFIG` ``hw_source`` differs from :func:`source_digest`)."""
    return read_json(bundle / CONFIG).get("hw_source") != source_digest(*SOURCES)
