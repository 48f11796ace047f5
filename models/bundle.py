"""The converted-model bundle: a JSON manifest and one safetensors file.

``manifest.json`` holds the graph (GEMM nodes in execution order with shapes, activation
plans, encodings, requantization shifts), the architecture, the conversion options and
the format version; ``tensors.safetensors`` holds every tensor: integer tensors for the
accelerator (4-bit weight codes, zero-point corrections, requantization multipliers and
biases, clamps) and the float tensors the host needs (embeddings, norms, steps). Loading
validates everything and refuses a bad bundle with a message naming the problem.
Keys: ``docs/bundle.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .arch import ArchSpec
from .contract import COL_MULT_MAX, WEIGHT_QMAX
from .quant import ActPlan

FORMAT = "spikellm-bundle"
VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


class BundleError(ValueError):
    """A bundle is missing, malformed or inconsistent."""


@dataclass
class NodeInfo:
    """One GEMM of the converted graph."""

    name: str
    kind: str  # "linear" | "qk" | "av"
    K: int | str
    N: int | str
    heads: int
    direct: bool
    act: ActPlan
    shift: int  # requantizer shift of this node's epilogue
    epi: int  # number of epilogue channels (N for linear, heads for qk, heads*d for av)

    def to_json(self) -> dict:
        """Manifest form."""
        return dict(name=self.name, kind=self.kind, K=self.K, N=self.N, heads=self.heads,
                    direct=self.direct, act=self.act.to_json(), shift=self.shift, epi=self.epi)

    @classmethod
    def from_json(cls, d: dict) -> NodeInfo:
        """Inverse of :meth:`to_json`."""
        return cls(d["name"], d["kind"], d["K"], d["N"], int(d["heads"]), bool(d["direct"]),
                   ActPlan.from_json(d["act"]), int(d["shift"]), int(d["epi"]))


@dataclass
class ConvertedModel:
    """A model converted to the integer/spike contract: what the bundle holds."""

    spec: ArchSpec
    options: dict
    nodes: dict[str, NodeInfo]
    tensors: dict[str, torch.Tensor]
    host_params: list[str] = field(default_factory=list)

    def params(self) -> dict[str, torch.Tensor]:
        """Host float parameters under their canonical names (for :mod:`models.graph`)."""
        return {k: self.tensors["host." + k] for k in self.host_params}

    def expected_tensors(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of every tensor the manifest implies."""
        s = self.spec
        exp: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        kvd = s.kv_heads * s.head_dim
        for n in self.nodes.values():
            for t in ("mcol", "bias", "zp", "lo", "hi"):
                exp[f"{n.name}.{t}"] = (torch.int32, (n.epi,))
            exp[f"{n.name}.scale"] = (torch.float64, (n.epi,))
            if n.kind == "linear":
                exp[f"{n.name}.w"] = (torch.int8, (n.N, n.K))
                exp[f"{n.name}.w_scale"] = (torch.float64, (n.N,))
                exp[f"{n.name}.zcorr"] = (torch.int32, (n.N,))
            else:
                exp[f"{n.name}.w_scale"] = (torch.float64, (kvd,))
            if n.act.rotate:
                exp[f"rot.{n.K}"] = (torch.int8, (n.K,))
        for k in self.host_params:
            t = self.tensors.get("host." + k)
            exp["host." + k] = (torch.float32, tuple(t.shape) if t is not None else ())
        return exp

    def validate(self) -> None:
        """Raise :class:`BundleError` naming any missing/extra/mis-shaped/non-finite tensor."""
        exp = self.expected_tensors()
        missing = sorted(set(exp) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(exp))
        if missing:
            raise BundleError(f"missing tensor(s): {', '.join(missing[:8])}")
        if extra:
            raise BundleError(f"unexpected tensor(s): {', '.join(extra[:8])}")
        for name, (dtype, shape) in exp.items():
            t = self.tensors[name]
            if t.dtype != dtype:
                raise BundleError(f"tensor {name}: dtype {t.dtype}, expected {dtype}")
            if shape and tuple(t.shape) != shape:
                raise BundleError(f"tensor {name}: shape {tuple(t.shape)}, expected {shape}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise BundleError(f"tensor {name}: contains NaN or Inf")
        for n in self.nodes.values():
            if n.kind == "linear":
                w = self.tensors[f"{n.name}.w"]
                if int(w.abs().max()) > WEIGHT_QMAX:
                    raise BundleError(f"tensor {n.name}.w: codes outside +-{WEIGHT_QMAX}")
            mcol = self.tensors[f"{n.name}.mcol"]
            if int(mcol.min()) < 0 or int(mcol.max()) > COL_MULT_MAX:
                raise BundleError(f"tensor {n.name}.mcol: outside [0, {COL_MULT_MAX}]")
            if not (0 < n.act.step < math.inf):
                raise BundleError(f"node {n.name}: activation step {n.act.step} not positive")


def save_bundle(cm: ConvertedModel, out: str | Path) -> Path:
    """Write ``manifest.json`` and ``tensors.safetensors`` into directory ``out``."""
    cm.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "arch": cm.spec.to_json(),
        "options": cm.options,
        "host_params": cm.host_params,
        "graph": [n.to_json() for n in cm.nodes.values()],
        "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                    for k, v in sorted(cm.tensors.items())},
    }
    # clone: safetensors refuses tensors that share storage (e.g. a scale used twice)
    save_file({k: v.contiguous().clone() for k, v in cm.tensors.items()}, str(out / TENSORS))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


def load_bundle(path: str | Path) -> ConvertedModel:
    """Read and validate a bundle directory."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path}: no {MANIFEST}")
    if not (path / TENSORS).is_file():
        raise BundleError(f"{path}: no {TENSORS}")
    try:
        m = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path / MANIFEST}: not valid JSON ({e})") from e
    if m.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} (format {m.get('format')!r})")
    if m.get("version") != VERSION:
        raise BundleError(f"{path}: unknown bundle version {m.get('version')!r}; "
                          f"this tool reads version {VERSION}")
    try:
        spec = ArchSpec.from_json(m["arch"])
        nodes = {d["name"]: NodeInfo.from_json(d) for d in m["graph"]}
        host_params = list(m["host_params"])
        options = m["options"]
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path / MANIFEST}: malformed ({type(e).__name__}: {e})") from e
    try:
        tensors = load_file(str(path / TENSORS))
    except Exception as e:  # safetensors raises its own error types
        raise BundleError(f"{path / TENSORS}: unreadable ({e})") from e
    cm = ConvertedModel(spec, options, nodes, tensors, host_params)
    cm.validate()
    return cm
