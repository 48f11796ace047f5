"""Designs placed and routed, and the clock the sizer may count on.

The resource estimate (:mod:`gen.resources`) says whether a design fits the die, not
whether it meets a clock: only place and route knows, and it takes 25 to 60 minutes for a
64-lane design on a 2-core machine, too slow to run for each candidate. Nor does a model
of Fmax against size hold: the Fmax of this design has moved by 10 MHz at one size with
one changed path (``docs/gen.md``, the timing table). So the sizer chooses, by default,
only designs no larger than one that was placed and routed and met the clock: no more
LUT4 and no more MULT18X18D (both by :func:`gen.resources.estimate`, the scale the
candidates are compared on, so the rows' configurations are kept, not their estimates)
than such a design. Those designs are the rows of ``placed.json``, each with the build
that measured it.

A design outside this envelope can still be built by pinning its size (``--fix
lanes=...,mac_units=...``): the sizer then says that its clock is unproven. A place and
route of a larger design that meets the clock adds a row, and so widens what the sizer
picks. The rows are measurements of one seed, on the gateware of the commit they name:
a later change to a path can lose (or win) a few MHz, which the build's own place and
route (``--pnr``) measures and reports.

Each row also keeps the digest of the design it measured (:func:`gen.cache.design_digest`:
the core's RTLIL, which the present code emits again for the row's configuration). A row
whose design the present gateware no longer emits is *stale*: it still vouches, since the
sizer has nothing better, but the build says so (``report.json``'s ``choice.clock_proof``,
``report.md``, a warning on the command line), and ``python -m gen placed`` lists which
rows are current. A build with ``--pnr`` writes the row that would record it
(``report.json``'s ``placed_row``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from accel.bundle import HW_SOURCES
from accel.config import AccelConfig

from .resources import Resources, estimate

#: The clock the sizer makes sure of without ``--freq`` (issue 12's floor; LiteX's tested
#: default on ECP5 boards), MHz.
SIZING_CLOCK_MHZ = 75.0
#: How a refusal for the clock begins (the sizer tells these from resource refusals).
TIMING = "timing: "
#: The measured designs, kept beside this module.
PLACED_JSON = Path(__file__).with_name("placed.json")


@dataclass(frozen=True)
class Placed:
    """One design placed and routed: its configuration and the Fmax it met."""

    name: str
    command: str  #: the build that measured it
    commit: str  #: the gateware it measured
    seed: int
    fmax_mhz: float
    cfg: AccelConfig
    design: str  #: :func:`gen.cache.design_digest` of what was placed
    #: (seed, Fmax) of other seeds of the same design (a sweep's others; none: unknown).
    #: nextpnr is deterministic for a netlist and a seed, so ``seed`` reproduces
    #: ``fmax_mhz``; these say how much that owes to the seed.
    others: tuple[tuple[int, float], ...] = ()

    @cached_property
    def res(self) -> Resources:
        """Its resources on the estimate's scale (what candidates are compared with)."""
        return estimate(self.cfg)

    def as_dict(self) -> dict:
        """JSON form (the report's note of the design that vouches for a candidate)."""
        return {"name": self.name, "fmax_mhz": self.fmax_mhz, "commit": self.commit,
                "seed": self.seed, "other_seeds": {str(k): f for k, f in self.others},
                "lut4_estimate": self.res.lut4, "mult18x18d_estimate": self.res.dsp}

    def current(self, use_cache: bool = True) -> bool:
        """Whether the present gateware still emits the design this row measured."""
        from .cache import design_digest  # the gateware: only when asked

        return design_digest(self.cfg, use_cache) == self.design

    def proof(self, cfg: AccelConfig, use_cache: bool = True) -> dict:
        """How this row vouches for ``cfg``'s clock: which measurement, whether ``cfg`` is
        the very configuration it placed, and whether that measurement is still of the
        present gateware (``current``; when not, the build warns: :func:`stale_warning`)."""
        return {**self.as_dict(), "same_config": cfg == self.cfg,
                "current": self.current(use_cache)}


def load(path: Path = PLACED_JSON) -> tuple[Placed, ...]:
    """The placed designs of ``path``; a malformed row is refused, naming it."""
    doc = json.loads(path.read_text())
    rows = doc.get("placed") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: no list of placed designs (\"placed\")")
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(Placed(str(r["name"]), str(r["command"]), str(r["commit"]),
                              int(r["seed"]), float(r["fmax_mhz"]),
                              AccelConfig.from_json(r["config"]), _digest(r["design"]),
                              tuple(sorted((int(k), float(f))
                                           for k, f in r.get("other_seeds", {}).items()))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path.name}: row {i} ({r.get('name', '?')}): {e}") from None
    return tuple(out)


def _digest(x) -> str:
    if not (isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)):
        raise ValueError(f"design must be a SHA-256 in hex, not {x!r}")
    return x


def stale_warning(proof: dict | None) -> str | None:
    """The warning for a clock vouched for by a measurement of other gateware (None when
    the measurement is current or there is none)."""
    if not proof or proof["current"]:
        return None
    return (f"the clock rests on {proof['name']}, placed at {proof['fmax_mhz']:g} MHz on "
            f"the gateware of {proof['commit']}, which the present gateware no longer emits: "
            f"place and route again (--pnr) and update gen/placed.json")


def row(report: dict, name: str, command: str, commit: str) -> dict:
    """The ``placed.json`` row that records a build's place and route (``report`` is its
    ``report.json`` after ``--pnr``); refused without a place and route."""
    pnr = report.get("pnr")
    if not pnr or not pnr.get("fmax_mhz"):
        raise ValueError("the build has no place and route result (build with --pnr)")
    synth = report["resources"]["synth"]
    return {"name": name, "command": command, "commit": commit, "seed": pnr["seed"],
            "fmax_mhz": pnr["fmax_mhz"], "pnr_s": round(pnr["seconds"]),
            "synth": {k: synth[k] for k in ("lut4", "ff", "dp16kd", "mult18x18d")},
            "config": report["config"], "design": pnr["design"],
            "other_seeds": {k: f for k, f in (pnr.get("seeds") or {}).items()
                            if int(k) != pnr["seed"]}}


def add(build: Path, path: Path = PLACED_JSON) -> Placed:
    """Append to ``path`` the row a build with ``--pnr`` wrote (``build/report.json``'s
    ``placed_row``). Refused, naming why, when the report has no such row, when its design
    is not what the present gateware emits (a measurement of other gateware), or when
    ``path`` already has that design at that seed."""
    rep = build / "report.json"
    try:
        new = json.loads(rep.read_text()).get("placed_row")
    except (OSError, ValueError) as e:
        raise ValueError(f"{rep}: {e}") from None
    if not new:
        raise ValueError(f"{rep} has no placed_row: build with --pnr")
    doc = json.loads(path.read_text())
    doc["placed"].append(new)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    try:
        *old, added = load(tmp)
        if not added.current():
            raise ValueError(f"{rep}: its design is not what the present gateware emits for "
                             f"its configuration (built from other gateware)")
        if any((o.design, o.seed) == (added.design, added.seed) for o in old):
            raise ValueError(f"{path.name} already has {added.name} at seed {added.seed}")
    except ValueError:
        tmp.unlink()
        raise
    tmp.replace(path)
    return added


def git_commit() -> str:
    """The checkout's commit for a new row (``+changes`` when the gateware's packages have
    uncommitted edits); ``unknown`` outside a git checkout. The row's ``design`` is what
    identifies the design; this says where to find its source."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *HW_SOURCES], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


@dataclass(frozen=True)
class Envelope:
    """The designs that met ``clock_mhz``: what the sizer may choose without pinning."""

    clock_mhz: float
    placed: tuple[Placed, ...]

    @classmethod
    def at(cls, clock_mhz: float, placed: tuple[Placed, ...] | None = None) -> Envelope:
        """The envelope of the designs (``placed.json``'s by default) that met the clock."""
        if not clock_mhz > 0:
            raise ValueError(f"sizing clock must be positive, not {clock_mhz}")
        rows = load() if placed is None else placed
        return cls(clock_mhz, tuple(p for p in rows if p.fmax_mhz >= clock_mhz))

    def covering(self, res: Resources) -> Placed | None:
        """The smallest design that met the clock and is no smaller than ``res`` in LUT4
        and in MULT18X18D; None when there is none."""
        big = [p for p in self.placed if p.res.lut4 >= res.lut4 and p.res.dsp >= res.dsp]
        return min(big, key=lambda p: (p.res.lut4, p.res.dsp), default=None)

    def refusal(self, res: Resources) -> str:
        """Why ``res`` is outside the envelope (for the candidate's refusal)."""
        if not self.placed:
            return f"{TIMING}no placed design met {self.clock_mhz:g} MHz"
        widest = max(self.placed, key=lambda p: p.res.lut4)
        return (f"{TIMING}larger than every design placed at {self.clock_mhz:g} MHz or "
                f"faster (LUT4 {res.lut4}, MULT18X18D {res.dsp}; the largest, {widest.name}, "
                f"{widest.res.lut4} / {widest.res.dsp} at {widest.fmax_mhz:g} MHz)")
