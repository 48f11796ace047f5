"""A content-addressed cache for the two slow, deterministic steps of a build: converting
the model and emitting the Verilog. Keys hash everything the result depends on (the model's
parameters, the conversion options, the configuration, and the source of the packages that
compute them), so a changed input or a changed converter never reuses a stale result.

Location: ``$SPIKELLM_CACHE`` or ``~/.cache/spikellm``; ``gen build --no-cache`` skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import amaranth
from amaranth.back import rtlil

from accel.bundle import HW_SOURCES, SOURCES, source_digest
from accel.config import AccelConfig
from hw.device import emit_verilog
from hw.top import Top
from models.bundle import BundleError, load_bundle, save_bundle
from models.convert import ConvertedModel, ConvertOptions, convert

from . import sdram


def cache_dir() -> Path:
    """Where cached results live."""
    return Path(os.environ.get("SPIKELLM_CACHE", Path.home() / ".cache" / "spikellm"))


def jsonable(x):
    """Options as plain JSON (dataclasses, tuples and objects by their repr)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, int | float | str | bool) or x is None:
        return x
    return repr(x)


def _key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _gateware_key(cfg: AccelConfig, *more) -> str:
    """Key of a result the gateware computes from ``cfg``: the configuration, the source of
    the packages the Verilog depends on, and Amaranth's version (plus ``more``)."""
    return _key(json.dumps(cfg.to_json(), sort_keys=True), source_digest(*HW_SOURCES),
                amaranth.__version__, *more)


def converted(lm, opts: ConvertOptions, use: bool = True,
              progress: bool = False) -> tuple[ConvertedModel, bool]:
    """``convert(lm, opts)``, from the cache when possible; returns (model, was_cached).
    ``progress``: the conversion's progress bars (distillation takes minutes)."""
    h = hashlib.sha256()
    for name in sorted(lm.params):
        h.update(name.encode())
        h.update(lm.params[name].detach().contiguous().numpy().tobytes())
    opts = opts.resolved(lm.spec.family)  # the default and its explicit form: one entry
    key = _key(h.hexdigest(), json.dumps(jsonable(asdict(opts)), sort_keys=True),
               json.dumps(jsonable(asdict(lm.spec)), sort_keys=True), source_digest("models"))
    where = cache_dir() / "converted" / key
    if use and (where / "manifest.json").exists():
        try:
            return load_bundle(where), True
        except BundleError:
            shutil.rmtree(where, ignore_errors=True)  # damaged entry: rebuild it
    cm = convert(lm, opts, progress=progress)
    if use:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent))
        save_bundle(cm, tmp)
        try:
            tmp.rename(where)
        except OSError:  # another build got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return cm, False


def verilog(cfg: AccelConfig, use: bool = True, dram: str = "model") -> tuple[str, bool]:
    """``hw.device.emit_verilog(cfg, dram=dram)``, with LiteDRAM's simulation core
    (``gen.sdram``) for ``dram="litedram"``, from the cache when possible."""
    key = _gateware_key(cfg, dram)
    where = cache_dir() / "verilog" / f"{key}.v"
    if use and where.exists():
        return where.read_text(), True
    text = emit_verilog(cfg, dram=dram)
    if dram == "litedram":
        text += sdram.verilog(sdram.SdramConfig(sim=True, init_us=2.0,
                                                addr_bits=cfg.dram_addr_bits,
                                                data_bits=cfg.dram_bits))
    if use:
        _store(where, text)
    return text, False


def design_digest(cfg: AccelConfig, use: bool = True) -> str:
    """SHA-256 of the accelerator core that place and route measures (``hw.top.Top(cfg)``
    as RTLIL, without source locations, which name the checkout): equal digests are the
    same design, so a place and route of one stands for the other (``gen.placed``)."""
    key = _gateware_key(cfg)
    where = cache_dir() / "design" / f"{key}.sha256"
    if use and where.exists():
        return where.read_text().strip()
    text = rtlil.convert(Top(cfg), name="top", emit_src=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if use:
        _store(where, digest)
    return digest


def _store(where: Path, text: str) -> None:
    """Write a cache entry whole (a reader never sees half of one)."""
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(where)


# the code this process has imported, digested now rather than when a result is stored
# (a source edit during a long build must not file old results under the new code's key)
source_digest(*HW_SOURCES)
source_digest("models")
source_digest(*SOURCES)
