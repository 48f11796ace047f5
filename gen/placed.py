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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

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

    @cached_property
    def res(self) -> Resources:
        """Its resources on the estimate's scale (what candidates are compared with)."""
        return estimate(self.cfg)

    def as_dict(self) -> dict:
        """JSON form (the report's note of the design that vouches for a candidate)."""
        return {"name": self.name, "fmax_mhz": self.fmax_mhz, "commit": self.commit,
                "seed": self.seed, "lut4_estimate": self.res.lut4,
                "mult18x18d_estimate": self.res.dsp}


def load(path: Path = PLACED_JSON) -> tuple[Placed, ...]:
    """The placed designs of ``path``; a malformed row is refused, naming it."""
    rows = json.loads(path.read_text())["placed"]
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(Placed(str(r["name"]), str(r["command"]), str(r["commit"]),
                              int(r["seed"]), float(r["fmax_mhz"]),
                              AccelConfig.from_json(r["config"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path.name}: row {i} ({r.get('name', '?')}): {e}") from None
    return tuple(out)


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
