"""The build bundle's host side: the folders a bundle holds for the host (tokenizer and
float parameters), their writer and reader, and the digest of the code that built it.
``gen build`` writes a bundle; ``host run`` reads one with nothing but this module and
``models.bundle`` (the converted model): the bundle is self-contained.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from models.arch import LoadedModel, one_line
from models.bundle import ConvertedModel

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
