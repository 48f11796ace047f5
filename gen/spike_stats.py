"""Spike statistics for ``gen estimate``: per GEMM kind, how a measured model's (or a
synthetic distribution's) inputs spike, kept as quantiles and distributions so a model
of another size can borrow them (``docs/estimate.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accel.workload import GemmWork
from models.arch import ModelInputError
from models.checkpoint import read_json
from models.encodings import Encoding

#: Quantile points kept of the per-row silent fraction of each GEMM kind.
QUANTILES = 33
#: Kinds whose statistics stand in for a kind the source model lacks (LLaMA's gate reads
#: the same input as up).
FALLBACK = {"gate": "up"}

def kind_of(name: str) -> str:
    """GEMM kind of a node name (``layers.3.up`` -> ``up``)."""
    return name.rsplit(".", 1)[-1]


# -- spike statistics ---------------------------------------------------------------------
@dataclass
class KindStats:
    """Spike statistics of one GEMM kind's input (pooled over layers and heads)."""

    encoding: Encoding
    silent_fraction: float  #: spike-channel inputs that send nothing
    row_silent: list[float]  #: :data:`QUANTILES` quantiles of the per-row silent fraction
    outliers: dict[float, float]  #: integer-channel fraction (n_int / K) -> share of calls
    units: dict[int, float]  #: unit spikes of a sending input -> probability
    #: time step of a unit spike -> probability (empty: not measured, uniform over the window)
    steps: dict[int, float] = field(default_factory=dict)

    @property
    def outlier_fraction(self) -> float:
        """Mean integer-channel fraction."""
        return sum(f * s for f, s in self.outliers.items())

    def to_json(self) -> dict:
        """JSON form (:meth:`from_json` reads it back)."""
        return {"encoding": self.encoding.to_json(), "encoding_name": self.encoding.name(),
                "silent_fraction": self.silent_fraction,
                "row_silent_quantiles": self.row_silent,
                "outlier_fraction": self.outlier_fraction,
                "outliers": [[f, s] for f, s in sorted(self.outliers.items())],
                "units": [[u, p] for u, p in sorted(self.units.items())],
                "steps": [[t, p] for t, p in sorted(self.steps.items())]}

    @classmethod
    def from_json(cls, d: dict, where: str) -> KindStats:
        """Read (and check) :meth:`to_json`'s form."""
        try:
            enc = Encoding.from_json(d["encoding"])
            sf = float(d["silent_fraction"])
            rows = [float(x) for x in d["row_silent_quantiles"]]
            outl = {float(f): float(s) for f, s in d["outliers"]}
            units = {int(u): float(p) for u, p in d["units"]}
            steps = {int(t): float(p) for t, p in d.get("steps", [])}
        except (KeyError, TypeError, ValueError) as e:
            raise ModelInputError(f"{where}: malformed ({type(e).__name__}: {e})") from None
        ok = (0 <= sf <= 1 and rows and all(0 <= x <= 1 for x in rows) and outl
              and all(0 <= f <= 1 and s >= 0 for f, s in outl.items()) and units
              and all(u >= 1 and p >= 0 for u, p in units.items())
              and all(0 <= t < max(1, enc.time_steps) and p >= 0 for t, p in steps.items()))
        if not ok:
            raise ModelInputError(f"{where}: fractions must be in [0, 1], unit spikes >= 1, "
                                  f"steps inside the window")
        return cls(enc, sf, rows, outl, units, steps)

    def step_probs(self) -> np.ndarray:
        """Probability of each time step of the window for a unit spike."""
        t = max(1, self.encoding.time_steps)
        p = np.zeros(t)
        for k, v in self.steps.items():
            p[k] = v
        return p / p.sum() if p.sum() > 0 else np.full(t, 1 / t)


@dataclass
class Stats:
    """Where the statistics came from, and the statistics of each GEMM kind."""

    source: str
    kinds: dict[str, KindStats]

    def to_json(self) -> dict:
        """JSON form (``estimate.json``'s ``statistics``; ``--stats FILE`` reads it)."""
        return {"source": self.source,
                "kinds": {k: s.to_json() for k, s in self.kinds.items()}}

    @classmethod
    def from_json(cls, d: dict, where: str) -> Stats:
        """Read :meth:`to_json`'s form (a bare one, or an ``estimate.json``)."""
        d = d.get("statistics", d)
        if not isinstance(d.get("source"), str) or not isinstance(d.get("kinds"), dict):
            raise ModelInputError(f"{where}: statistics need source (a string) and kinds "
                                  f"(an object)")
        return cls(d["source"], {k: KindStats.from_json(v, f"{where}: kinds.{k}")
                                 for k, v in d["kinds"].items()})

    def of(self, kind: str) -> KindStats:
        """The statistics used for ``kind`` (a stand-in from :data:`FALLBACK` if absent)."""
        if kind in self.kinds:
            return self.kinds[kind]
        if FALLBACK.get(kind) in self.kinds:
            return self.kinds[FALLBACK[kind]]
        raise ModelInputError(f"statistics from {self.source} have no GEMM kind {kind!r} "
                              f"(they have {', '.join(self.kinds)})")


def stats_from_works(works: list[GemmWork], source: str) -> Stats:
    """Per-kind statistics of measured GEMMs (:func:`accel.workload.measure`)."""
    groups: dict[str, list[GemmWork]] = {}
    for g in works:
        groups.setdefault(kind_of(g.name), []).append(g)
    kinds = {}
    for kd, gs in groups.items():
        encs = [g.encoding for g in gs]
        enc = max(set(encs), key=encs.count)
        row_silent, sent, silent, total = [], {}, 0, 0
        steps: dict[int, int] = {}
        for g in gs:
            sp = getattr(g, "spikes", None)  # (row, step, input) where the workload has them
            if sp is not None and len(sp):
                for t, c in enumerate(np.bincount(np.asarray(sp)[:, 1]).tolist()):
                    if c:
                        steps[t] = steps.get(t, 0) + c
            u = g.units[:, ~g.int_mask]
            if u.shape[1]:
                row_silent += ((u == 0).mean(axis=1)).tolist()
            silent += int((u == 0).sum())
            total += u.size
            vals, cnt = np.unique(u[u > 0], return_counts=True)
            for v, c in zip(vals.tolist(), cnt.tolist(), strict=True):
                sent[v] = sent.get(v, 0) + c
        outl: dict[float, float] = {}
        for g in gs:
            f = round(g.n_int / g.k, 6)
            outl[f] = outl.get(f, 0) + 1 / len(gs)
        n_sent = sum(sent.values())
        q = (np.quantile(row_silent, np.linspace(0, 1, QUANTILES)).tolist() if row_silent
             else [1.0] * QUANTILES)
        n_steps = sum(steps.values())
        kinds[kd] = KindStats(enc, silent / total if total else 1.0,
                              [round(x, 6) for x in q], outl,
                              {v: c / n_sent for v, c in sent.items()} if n_sent else {1: 1.0},
                              {t: c / n_steps for t, c in steps.items()})
    return Stats(source, kinds)


def measured_stats(model: str = "minilm", tokens: int = 64, use_cache: bool = True) -> Stats:
    """Statistics of a converted model (default conversion options) measured on ``tokens``
    tokens of the built-in calibration text, as ``gen build`` measures them."""
    from accel.workload import measure, sample_ids
    from models.convert import ConvertOptions

    from . import cache
    from .build import load

    lm = load(model)
    opts = ConvertOptions()
    cm, _ = cache.converted(lm, opts, use_cache)
    ids = sample_ids(lm, tokens)
    works, _ = measure(cm, ids)
    name = "all-MiniLM-L6-v2" if model == "minilm" else model
    return stats_from_works(works, f"{name} ({cm.spec.family}, {cm.spec.layers} layers, "
                                   f"hidden {cm.spec.hidden}) converted with the default "
                                   f"options ({opts.encoding.name()}, outlier fraction "
                                   f"{opts.outlier_fraction:g}), measured on "
                                   f"{int(ids.numel())} tokens of calibration text")


def synthetic_stats(spec: str) -> Stats:
    """``synthetic[:silent=F,outliers=F,encoding=E]``: every kind alike, every row with
    the same silent fraction, one unit spike per sending input."""
    from models.__main__ import _encoding

    _, _, arg = spec.partition(":")
    opts = {"silent": "0.75", "outliers": str(1 / 32), "encoding": "ttfs-signed:4"}
    for part in filter(None, arg.split(",")):
        key, eq, val = part.partition("=")
        if not eq or key not in opts:
            raise ModelInputError(f"--stats {spec!r}: {part!r} is not one of "
                                  f"{', '.join(k + '=' for k in opts)}")
        opts[key] = val
    try:
        silent, outl = float(opts["silent"]), float(opts["outliers"])
        enc = _encoding(opts["encoding"])
    except Exception as e:  # float() and the encoding parser
        raise ModelInputError(f"--stats {spec!r}: {e}") from None
    for key, v in (("silent", silent), ("outliers", outl)):
        if not 0 <= v <= 1:
            raise ModelInputError(f"--stats {spec!r}: {key} must be in [0, 1], not {v}")
    ks = KindStats(enc, silent, [silent] * QUANTILES, {outl: 1.0}, {1: 1.0})
    kinds = {k: ks for k in ("q", "k", "v", "qk", "av", "o", "gate", "up", "down")}
    return Stats(f"synthetic: silent fraction {silent:g} in every row, outlier fraction "
                 f"{outl:g}, {enc.name()}, one unit spike per sending input at a time step "
                 f"uniform over the window", kinds)


def load_stats(spec: str, tokens: int = 64, use_cache: bool = True) -> Stats:
    """``--stats``: ``synthetic[:...]``, a JSON file of statistics (or an
    ``estimate.json``), or a model (built-in name or directory) to measure."""
    if spec.split(":", 1)[0] == "synthetic":
        return synthetic_stats(spec)
    if spec.endswith(".json"):
        return Stats.from_json(read_json(Path(spec)), spec)
    return measured_stats(spec, tokens, use_cache)
