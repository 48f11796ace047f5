"""The converted-model bundle: a JSON manifest and one safetensors file.

``manifest.json`` holds the graph (GEMM nodes in execution order with shapes, activation
plans, encodings, requantization shifts), the architecture, the conversion options and
the format version; ``tensors.safetensors`` holds every tensor: integer tensors for the
accelerator (4-bit weight codes, zero-point corrections, requantization multipliers and
biases, clamps) and the float tensors the host needs (embeddings, norms, steps). Loading
validates everything and refuses a bad bundle with a one-line :class:`BundleError` naming
the file and the field. Keys: ``docs/bundle.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .arch import (
    ArchSpec,
    ModelInputError,
    _is_int,
    _show,
    canonical_shapes,
    one_line,
    spec_from_json,
)
from .contract import (
    ACC_BITS,
    ACC_MAX,
    COL_MULT_MAX,
    INT8_QMAX,
    MAX_REQ_SHIFT,
    WEIGHT_BITS,
    WEIGHT_QMAX,
    low_bits,
)
from .graph import gemm_nodes
from .quant import ActPlan

__all__ = ["FORMAT", "MANIFEST", "TENSORS", "VERSION", "BundleError", "ConvertedModel",
           "ModelInputError", "NodeInfo", "load_bundle", "save_bundle"]

FORMAT = "spikellm-bundle"
#: Version 2 stores 4-bit weights packed, two a byte (``{node}.w4``); version 1 (int8
#: ``{node}.w``) still loads.
VERSION = 2
READS_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
KINDS = ("linear", "qk", "av")
#: The output projection's node name (``models.lm_head``; the manifest's optional ``head``).
HEAD = "lm_head"
#: Output codes, zero points and clamps of the output neuron unit are 16-bit signed.
OUT_MIN, OUT_MAX = -(2**15), 2**15 - 1


class BundleError(ModelInputError):
    """A bundle is missing, malformed or inconsistent (one line naming file and field)."""


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
    def from_json(cls, d: dict, where: str = "node") -> NodeInfo:
        """Inverse of :meth:`to_json`; checks every field's type and range."""
        if not isinstance(d, dict):
            raise BundleError(f"{where}: must be a JSON object, not {type(d).__name__}")
        names = ("name", "kind", "K", "N", "heads", "direct", "act", "shift", "epi")
        missing = [n for n in names if n not in d]
        if missing:
            raise BundleError(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(d["name"], str):
            raise BundleError(f"{where}.name: must be a string, not {_show(d['name'])}")
        where = f"{where} ({d['name']})"

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise BundleError(f"{where}.{name}: {what}, not {_show(d[name])}")

        need(d["kind"] in KINDS, "kind", f"must be one of {', '.join(KINDS)}")
        for n in ("K", "N"):
            need(d[n] == "tokens" or (_is_int(d[n]) and d[n] >= 1), n,
                 'must be a positive integer or "tokens"')
        for n in ("heads", "epi"):
            need(_is_int(d[n]) and d[n] >= 1, n, "must be a positive integer")
        need(isinstance(d["direct"], bool), "direct", "must be true or false")
        need(_is_int(d["shift"]) and 0 <= d["shift"] <= MAX_REQ_SHIFT, "shift",
             f"must be an integer in 0..{MAX_REQ_SHIFT}")
        act = ActPlan.from_json(d["act"], f"{where}.act")
        return cls(d["name"], d["kind"], d["K"], d["N"], d["heads"], d["direct"], act,
                   d["shift"], d["epi"])


@dataclass
class ConvertedModel:
    """A model converted to the integer/spike contract: what the bundle holds."""

    spec: ArchSpec
    options: dict
    nodes: dict[str, NodeInfo]
    tensors: dict[str, torch.Tensor]
    host_params: list[str] = field(default_factory=list)
    #: the output projection (decoders; ``models.lm_head``), None in bundles made before it
    head: NodeInfo | None = None

    def params(self) -> dict[str, torch.Tensor]:
        """Host float parameters under their canonical names (for :mod:`models.graph`)."""
        return {k: self.tensors["host." + k] for k in self.host_params}

    def host_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape of every host parameter the architecture implies."""
        if self.spec.family == "mamba":
            from .mamba import mamba_host_shapes  # it imports this module's package

            return mamba_host_shapes(self.spec)
        return {k: s for k, s in canonical_shapes(self.spec).items()
                if not k.startswith("layers.") or ".norm" in k}

    def channels(self, n: NodeInfo) -> int:
        """Channels of a node's activation operand: K (linear), heads*head_dim (Q of QK^T),
        at most max_positions (the key positions of PV)."""
        s = self.spec
        if n.kind == "linear":
            return int(n.K)
        return s.heads * s.head_dim if n.kind == "qk" else s.max_positions

    def expected_tensors(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of every tensor the manifest implies."""
        s = self.spec
        exp: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for n in self.nodes.values():
            for t in ("mcol", "bias", "zp", "lo", "hi"):
                exp[f"{n.name}.{t}"] = (torch.int32, (n.epi,))
            exp[f"{n.name}.scale"] = (torch.float64, (n.epi,))
            if n.kind == "linear":
                exp[f"{n.name}.w"] = (torch.int8, (n.N, n.K))
                exp[f"{n.name}.w_scale"] = (torch.float64, (n.N,))
                exp[f"{n.name}.zcorr"] = (torch.int32, (n.N,))
            else:
                exp[f"{n.name}.w_scale"] = (torch.float64, (s.kv_heads * s.head_dim,))
            if n.act.rotate:
                exp[f"rot.{n.K}"] = (torch.int8, (n.K,))
            if n.act.learned_rotation:
                exp[f"{n.name}.rotq"] = (torch.float32, (n.K, n.K))
        if self.head is not None:  # raw accumulators: no requantizer constants
            h = self.head
            exp |= {f"{h.name}.w": (torch.int8, (h.N, h.K)), f"{h.name}.w_scale":
                    (torch.float64, (h.N,)), f"{h.name}.zcorr": (torch.int32, (h.N,))}
            if h.act.rotate:
                exp[f"rot.{h.K}"] = (torch.int8, (h.K,))
        host = self.host_shapes()
        for k in self.host_params:
            exp["host." + k] = (torch.float32, host.get(k, ()))
        return exp

    def check_graph(self) -> None:
        """The nodes must be the architecture's GEMMs, in order, with its shapes."""
        s = self.spec
        exp = gemm_nodes(s)
        arch = f"arch ({s.describe()})"
        if len(exp) != len(self.nodes):
            raise BundleError(f"graph: {len(self.nodes)} distinct nodes, but {arch} implies "
                              f"{len(exp)}")
        for i, (g, n) in enumerate(zip(exp, self.nodes.values(), strict=True)):
            if n.name != g["name"]:
                raise BundleError(f"graph[{i}]: node {n.name!r}, expected {g['name']!r}")
            epi = (g["N"] if g["kind"] == "linear" else
                   s.heads if g["kind"] == "qk" else s.heads * s.head_dim)
            for f, want in (("kind", g["kind"]), ("K", g["K"]), ("N", g["N"]),
                            ("heads", g["heads"]), ("direct", g["direct"]), ("epi", epi)):
                if getattr(n, f) != want:
                    raise BundleError(f"graph node {n.name}: {f}={getattr(n, f)!r} disagrees "
                                      f"with {arch}, which implies {want!r}")
            a, ch = n.act, self.channels(n)
            if a.outliers and a.outliers[-1] >= ch:
                raise BundleError(f"graph node {n.name}: act.outliers: channel "
                                  f"{a.outliers[-1]} outside 0..{ch - 1}")
            if a.rotate and n.kind != "linear":
                raise BundleError(f"graph node {n.name}: act.rotate: only linear inputs are "
                                  f"rotated")
        self._check_head()
        host = self.host_shapes()
        missing = sorted(set(host) - set(self.host_params))
        extra = sorted(set(self.host_params) - set(host))
        if missing or extra or len(set(self.host_params)) != len(self.host_params):
            what = (f"missing {', '.join(missing[:4])}" if missing else
                    f"unexpected {', '.join(map(str, extra[:4]))}" if extra else "duplicates")
            raise BundleError(f"host_params: {what} (arch: family={s.family}, "
                              f"layers={s.layers}, norm={getattr(s, 'norm', 'rmsnorm')})")

    def _check_head(self) -> None:
        """The output projection, if present: a decoder's ``lm_head``, ``[vocab, hidden]``,
        raw accumulators (shift 0, not direct), its outliers inside ``hidden``."""
        h, s = self.head, self.spec
        if h is None:
            return
        if not s.causal:
            raise BundleError(f"head: an encoder ({s.family}) has no output projection")
        want = dict(name=HEAD, kind="linear", K=s.hidden, N=s.vocab, heads=1, direct=False,
                    shift=0, epi=s.vocab)
        for f, v in want.items():
            if getattr(h, f) != v:
                raise BundleError(f"head: {f}={getattr(h, f)!r}, the output projection of "
                                  f"arch (hidden={s.hidden}, vocab={s.vocab}) needs {v!r}")
        if h.act.outliers and h.act.outliers[-1] >= s.hidden:
            raise BundleError(f"head: act.outliers: channel {h.act.outliers[-1]} outside "
                              f"0..{s.hidden - 1}")

    def acc_bound(self, n: NodeInfo) -> int:
        """Largest |accumulator| (partial sums included) that node ``n`` can reach over every
        input its activation plan admits: spike codes at the ends of their range, outlier
        codes at +-127 shifted by their ``p_k``, weights as stored (linear) or +-127 (the K
        and V operands of QK^T and PV, over up to max_positions keys)."""
        a, enc = n.act, n.act.encoding
        k = self.channels(n)
        mask, shifts = a.outlier_mask(k), a.shifts(k)
        qo = INT8_QMAX if enc.is_spiking else enc.qmax
        m = torch.where(mask, qo * 2.0 ** shifts.to(torch.float64),
                        float(max(-enc.qmin, enc.qmax)))
        if n.kind == "linear":
            w = self.tensors[n.name + ".w"].to(torch.float64).abs()
            zc = self.tensors[n.name + ".zcorr"].to(torch.float64).abs()
            return int((w @ m + zc).max())
        if n.kind == "qk":
            return int(m.view(self.spec.heads, -1).sum(1).max()) * INT8_QMAX
        return int(m.sum()) * INT8_QMAX

    def validate(self) -> None:
        """Raise :class:`BundleError` naming any missing/extra/mis-shaped/non-finite tensor,
        out-of-range value, graph that disagrees with the architecture, or GEMM whose
        accumulator could leave the 32-bit range."""
        self.check_graph()
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
            if tuple(t.shape) != shape:
                raise BundleError(f"tensor {name}: shape {tuple(t.shape)}, expected {shape}"
                                  + (" (from arch)" if name.startswith("host.") else ""))
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise BundleError(f"tensor {name}: contains NaN or Inf")
            if name.startswith("rot.") and not bool((t.abs() == 1).all()):
                raise BundleError(f"tensor {name}: rotation signs must be +-1")
            if name.endswith(".rotq"):
                q = t.to(torch.float64)
                eye = torch.eye(q.shape[0], dtype=torch.float64)
                if float((q @ q.t() - eye).abs().max()) > 1e-4:
                    raise BundleError(f"tensor {name}: a learned rotation must be orthogonal")
        if self.head is not None:
            self._validate_head()
        for n in self.nodes.values():
            t = lambda s, n=n: self.tensors[f"{n.name}.{s}"]  # noqa: E731
            if n.kind == "linear" and t("w").numel() and int(t("w").abs().max()) > WEIGHT_QMAX:
                raise BundleError(f"tensor {n.name}.w: codes outside +-{WEIGHT_QMAX}")
            if int(t("mcol").min()) < 0 or int(t("mcol").max()) > COL_MULT_MAX:
                raise BundleError(f"tensor {n.name}.mcol: outside [0, {COL_MULT_MAX}]")
            for s in ("zp", "lo", "hi"):
                if int(t(s).min()) < OUT_MIN or int(t(s).max()) > OUT_MAX:
                    raise BundleError(f"tensor {n.name}.{s}: outside [{OUT_MIN}, {OUT_MAX}]")
            if bool((t("lo") > t("hi")).any()):
                raise BundleError(f"tensor {n.name}.lo: above {n.name}.hi")
            for s in ("scale", "w_scale"):
                if not bool((t(s) > 0).all()):
                    raise BundleError(f"tensor {n.name}.{s}: steps must be positive")
            if not (0 < n.act.step < math.inf):
                raise BundleError(f"node {n.name}: activation step {n.act.step} not positive")
            bound = self.acc_bound(n)
            if bound > ACC_MAX:
                raise BundleError(
                    f"node {n.name}: the {ACC_BITS}-bit accumulator can overflow (worst case "
                    f"{bound:.3g}) with encoding {n.act.encoding.name()}, "
                    f"{len(n.act.outliers)} outlier channel(s), outlier shifts up to "
                    f"{max(n.act.outlier_shifts, default=0)}")


    def _validate_head(self) -> None:
        """Weight codes, steps and accumulator bound of the output projection."""
        h = self.head
        w = self.tensors[h.name + ".w"]
        if w.numel() and int(w.abs().max()) > WEIGHT_QMAX:
            raise BundleError(f"tensor {h.name}.w: codes outside +-{WEIGHT_QMAX}")
        if not bool((self.tensors[h.name + ".w_scale"] > 0).all()):
            raise BundleError(f"tensor {h.name}.w_scale: steps must be positive")
        if not (0 < h.act.step < math.inf):
            raise BundleError(f"head: activation step {h.act.step} not positive")
        bound = self.acc_bound(h)
        if bound > ACC_MAX:
            raise BundleError(f"head: the {ACC_BITS}-bit accumulator can overflow (worst "
                              f"case {bound:.3g})")


def _four_bit(cm: ConvertedModel) -> dict[str, int]:
    """The 4-bit weight tensors (the linear nodes' and the head's ``.w``) and their K."""
    nodes = [n for n in cm.nodes.values() if n.kind == "linear"]
    nodes += [cm.head] if cm.head is not None else []
    return {f"{n.name}.w": int(n.K) for n in nodes}


def pack_weights(w: torch.Tensor) -> torch.Tensor:
    """4-bit weight codes ``[N, K]`` (int8, -8..7) packed two a byte ``[N, ceil(K/2)]``
    (uint8): input ``2i`` in the low nibble, ``2i+1`` in the high one (two's complement; an
    odd K pads with 0)."""
    if w.shape[1] % 2:
        w = torch.nn.functional.pad(w, (0, 1))
    nib = (w.to(torch.int16) & ((1 << WEIGHT_BITS) - 1)).to(torch.uint8)
    return nib[:, 0::2] | (nib[:, 1::2] << WEIGHT_BITS)


def unpack_weights(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_weights`: int8 codes ``[N, k]``."""
    lo = (p & ((1 << WEIGHT_BITS) - 1)).to(torch.int16)
    hi = (p >> WEIGHT_BITS).to(torch.int16)
    w = torch.stack([lo, hi], dim=2).reshape(p.shape[0], -1)[:, :k]
    return low_bits(w, WEIGHT_BITS).to(torch.int8)


def _stored(cm: ConvertedModel) -> dict[str, torch.Tensor]:
    """The tensors as the file holds them: 4-bit weights packed (``.w4``)."""
    four = _four_bit(cm)
    return {(k + "4" if k in four else k): (pack_weights(v) if k in four else v)
            for k, v in cm.tensors.items()}


def _unstored(cm: ConvertedModel, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors in memory: packed weights (``.w4``, uint8 ``[N, ceil(K/2)]``) unpacked to
    int8 ``.w``; a version-1 file's int8 ``.w`` as they are."""
    four = _four_bit(cm)
    out = {}
    for k, v in stored.items():
        name = k[:-1] if k.endswith(".w4") else None
        if name in four and name in stored:
            raise BundleError(f"tensor {name}: stored twice, packed ({k}) and as int8")
        if name in four:
            if v.dtype != torch.uint8 or v.dim() != 2 or v.shape[1] != -(-four[name] // 2):
                raise BundleError(f"tensor {k}: {str(v.dtype).removeprefix('torch.')} "
                                  f"{list(v.shape)}, expected uint8 [N, {-(-four[name] // 2)}] "
                                  f"(packed 4-bit weights of K = {four[name]})")
            out[name] = unpack_weights(v, four[name])
        else:
            out[k] = v
    return out


def save_bundle(cm: ConvertedModel, out: str | Path) -> Path:
    """Write ``manifest.json`` and ``tensors.safetensors`` into directory ``out`` (4-bit
    weights packed two a byte)."""
    cm.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stored = _stored(cm)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "arch": cm.spec.to_json(),
        "options": cm.options,
        "host_params": cm.host_params,
        "graph": [n.to_json() for n in cm.nodes.values()],
        **({} if cm.head is None else {"head": cm.head.to_json()}),
        "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                    for k, v in sorted(stored.items())},
    }
    # clone: safetensors refuses tensors that share storage (e.g. a scale used twice)
    save_file({k: v.contiguous().clone() for k, v in stored.items()}, str(out / TENSORS))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


def _manifest(path: Path) -> dict:
    mf = path / MANIFEST
    try:
        m = json.loads(mf.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf}: not valid JSON ({e})") from e
    except (UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{mf}: not valid JSON ({one_line(e)})") from e
    except OSError as e:
        raise BundleError(f"{mf}: unreadable ({e.strerror or one_line(e)})") from e
    if not isinstance(m, dict):
        raise BundleError(f"{mf}: must be a JSON object, not a JSON {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} (format {_show(m.get('format'))})")
    if m.get("version") not in READS_VERSIONS:
        raise BundleError(f"{path}: unknown bundle version {_show(m.get('version'))}; "
                          f"this tool reads versions {', '.join(map(str, READS_VERSIONS))}")
    for key, typ in (("arch", dict), ("options", dict), ("host_params", list), ("graph", list),
                     ("tensors", dict)):
        if key not in m:
            raise BundleError(f"{mf}: missing {key}")
        if not isinstance(m[key], typ):
            raise BundleError(f"{mf}: {key} must be a JSON "
                              f"{'object' if typ is dict else 'list'}, not {_show(m[key])}")
    if not all(isinstance(k, str) for k in m["host_params"]):
        raise BundleError(f"{mf}: host_params must be a list of names")
    return m


def _check_table(table: dict, tensors: dict[str, torch.Tensor], where: str) -> None:
    """The manifest's ``tensors`` table must describe the safetensors file exactly."""
    for name in sorted(set(table) | set(tensors)):
        if name not in tensors:
            raise BundleError(f"{where}: tensors table lists {name}, which {TENSORS} lacks")
        t = tensors[name]
        real = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if name not in table:
            raise BundleError(f"{where}: tensors table lacks {name} ({real['dtype']} "
                              f"{real['shape']})")
        if table[name] != real:
            raise BundleError(f"{where}: tensors table entry {name} is {_show(table[name])}, "
                              f"but {TENSORS} holds {real}")


def load_bundle(path: str | Path) -> ConvertedModel:
    """Read and validate a bundle directory; refuses a bad one with :class:`BundleError`."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path}: no {MANIFEST}")
    if not (path / TENSORS).is_file():
        raise BundleError(f"{path}: no {TENSORS}")
    mf = path / MANIFEST
    m = _manifest(path)
    try:
        spec = spec_from_json(m["arch"], "arch")
        nodes: dict[str, NodeInfo] = {}
        for i, d in enumerate(m["graph"]):
            n = NodeInfo.from_json(d, f"graph[{i}]")
            if n.name in nodes:
                raise BundleError(f"graph[{i}]: node {n.name} appears twice")
            nodes[n.name] = n
        head = None if m.get("head") is None else NodeInfo.from_json(m["head"], "head")
    except ModelInputError as e:  # BundleError, or from ArchSpec / ActPlan
        raise BundleError(f"{mf}: {e}") from e
    cm = ConvertedModel(spec, m["options"], nodes, {}, list(m["host_params"]), head)
    try:
        cm.check_graph()
    except BundleError as e:
        raise BundleError(f"{mf}: {e}") from e
    try:
        stored = load_file(str(path / TENSORS))
    except Exception as e:  # safetensors raises its own error types
        raise BundleError(f"{path / TENSORS}: unreadable ({one_line(e)})") from e
    try:
        cm.tensors = _unstored(cm, stored)
        cm.validate()
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from e
    _check_table(m["tensors"], stored, str(mf))
    return cm
