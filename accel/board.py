"""The board's clocking, shared by the board top (``hw.board``), the generator (which picks
the clock from the place-and-route result) and the host (which reads the clock and the baud
rate from the bundle): the ECP5 PLL settings for a core clock derived from the ULX3S's
25 MHz oscillator, and the UART divisor with its rate error.

The PLL (EHXPLLL, feedback from CLKOP) makes ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` with
the VCO at ``f_out * CLKOP_DIV``; the limits below are the ECP5 family data sheet's (FPGA-DS-
02012, PLL timing) as Lattice's ``ecppll`` and LiteX's ``ECP5PLL`` apply them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

from .protocol import BAUD, UART_BITS_PER_BYTE

#: The ULX3S oscillator (``clk25``).
BOARD_OSC_HZ = 25_000_000
#: The FT231X USB UART's fastest rate (the board build's default link rate).
FAST_BAUD = 3_000_000
#: The link rates the board's FT231X USB UART runs: the protocol's default and its maximum.
BOARD_BAUDS = (BAUD, FAST_BAUD)
#: Fewest clock cycles a UART bit may take (``hw.uart``: it samples mid-bit after a start
#: edge).
MIN_DIVISOR = 4
#: A half-received frame is dropped after this long without a byte (``hw.top.Top``).
LINK_TIMEOUT_S = 0.01
#: Largest rate error a UART divisor may have (8N1 samples mid-bit: the two ends together
#: tolerate about 4 %, the FT231X's own error at these rates is zero).
MAX_BAUD_ERROR = 0.01

_VCO_HZ = (400e6, 800e6)
_PFD_HZ = (3.125e6, 400e6)
_OUT_HZ = (3.125e6, 400e6)
_CLKI_DIV = range(1, 129)
_CLKFB_DIV = range(1, 81)
_CLKOP_DIV = range(1, 129)


@dataclass(frozen=True)
class Pll:
    """EHXPLLL settings (parameter names as the primitive's) and the frequency they give."""

    clki_div: int
    clkfb_div: int
    clkop_div: int
    f_in_hz: int
    f_out_hz: float

    @property
    def f_vco_hz(self) -> float:
        return self.f_out_hz * self.clkop_div


@cache
def pll_outputs(f_in_hz: int = BOARD_OSC_HZ) -> dict[Fraction, Pll]:
    """Every core clock the PLL can make from ``f_in_hz`` (exact, as a fraction of Hz),
    each with the settings that make it (the highest VCO frequency among equals: lower
    jitter)."""
    out: dict[Fraction, Pll] = {}
    for idiv in _CLKI_DIV:
        if not _PFD_HZ[0] <= f_in_hz / idiv <= _PFD_HZ[1]:
            continue
        for fb in _CLKFB_DIV:
            f = Fraction(f_in_hz * fb, idiv)
            if not _OUT_HZ[0] <= f <= _OUT_HZ[1]:
                continue
            odivs = [o for o in _CLKOP_DIV if _VCO_HZ[0] <= f * o <= _VCO_HZ[1]]
            if not odivs:
                continue
            pll = Pll(idiv, fb, max(odivs), f_in_hz, float(f))
            if f not in out or pll.f_vco_hz > out[f].f_vco_hz:
                out[f] = pll
    return out


def uart_divisor(clock_hz: float, baud: int) -> tuple[int, float]:
    """Clock cycles per bit for ``baud`` at ``clock_hz`` and the rate error it gives
    (relative, signed: positive is faster than ``baud``)."""
    div = max(1, round(clock_hz / baud))
    return div, clock_hz / div / baud - 1


@dataclass(frozen=True)
class BoardClock:
    """The core clock a board build runs at and its link rate."""

    pll: Pll
    baud: int

    @property
    def clock_hz(self) -> float:
        return self.pll.f_out_hz

    @property
    def divisor(self) -> int:
        return uart_divisor(self.clock_hz, self.baud)[0]

    @property
    def baud_error(self) -> float:
        return uart_divisor(self.clock_hz, self.baud)[1]

    def as_dict(self) -> dict:
        """What the bundle records (``board`` in ``report.json``)."""
        return {"clock_hz": self.clock_hz, "baud": self.baud, "uart_divisor": self.divisor,
                "baud_error": self.baud_error, "pll": asdict(self.pll)}


def choose_clock(limit_mhz: float, baud: int, f_in_hz: int = BOARD_OSC_HZ) -> BoardClock:
    """The fastest PLL clock at or below ``limit_mhz`` (the build's Fmax, or the frequency
    asked for) whose UART divisor for ``baud`` is within :data:`MAX_BAUD_ERROR`; among
    clocks within 2 % of that, one with an exact divisor is preferred."""
    if baud <= 0:
        raise ValueError(f"baud rate must be positive, not {baud}")
    fits = {}  # PLL settings -> rate error, for every clock that may serve
    for f, p in pll_outputs(f_in_hz).items():
        div, err = uart_divisor(p.f_out_hz, baud)
        if f <= Fraction(limit_mhz * 1e6) and div >= MIN_DIVISOR and abs(err) <= MAX_BAUD_ERROR:
            fits[p] = err
    if not fits:
        raise ValueError(f"no PLL clock at or below {limit_mhz:g} MHz runs the UART at "
                         f"{baud} baud within {MAX_BAUD_ERROR:.0%} (at least {MIN_DIVISOR} "
                         f"cycles a bit)")
    best = max(p.f_out_hz for p in fits)
    exact = [p for p, err in fits.items() if p.f_out_hz >= 0.98 * best and err == 0]
    pick = max(exact or fits, key=lambda p: p.f_out_hz)
    return BoardClock(pick, baud)


#: The bundle file that records the board build's clock and link rate (written by ``gen
#: build`` with ``--pnr`` or ``--bitstream``; what :meth:`BoardClock.as_dict` gives).
BOARD_FILE = "board.json"


def read_board(bundle: Path) -> dict | None:
    """The bundle's board clock and link rate (:data:`BOARD_FILE`), or None when the bundle
    records none. A record whose divisor disagrees with its clock and rate, or whose values
    are not positive numbers, is refused (``ValueError`` naming the file and the field)."""
    path = Path(bundle) / BOARD_FILE
    if not path.exists():
        return None
    where = f"{path}"
    try:
        rec = json.loads(path.read_text())
        clock, baud, div = float(rec["clock_hz"]), int(rec["baud"]), int(rec["uart_divisor"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: unreadable board record ({type(e).__name__}: {e})") from None
    if not clock > 0 or baud <= 0:
        raise ValueError(f"{where}: clock_hz and baud must be positive, not {clock}, {baud}")
    if div != uart_divisor(clock, baud)[0]:
        raise ValueError(f"{where}: uart_divisor {div} disagrees with clock_hz {clock:g} and "
                         f"baud {baud} (expected {uart_divisor(clock, baud)[0]})")
    return rec


#: Host turnaround of one request/response round trip (the USB serial chip's latency timer
#: set to its 1 ms minimum; the default, 16 ms, is far worse).
ROUND_TRIP_S = 1e-3
#: The core's clock on a board whose build recorded none (the board's oscillator).
BOARD_CLOCK_HZ = float(BOARD_OSC_HZ)


#: Counted cycles a measured board estimate charges besides the engine's busy cycles
#: (``accel.counters``): the spike encoder's, the waits for copies, the STOREs'. None of
#: them overlaps a RUN's busy cycles or another (the executor runs one command at a time).
BOARD_CYCLES = ("enc_busy", "load_wait", "store_busy")


def board_estimate(stats: dict, cycles: int, tokens: int,
                   clock_hz: float = BOARD_CLOCK_HZ) -> dict:
    """What a run would take on a real board, per baud rate: the link bytes both ways at
    10 bits a byte (8N1), a round trip (:data:`ROUND_TRIP_S`) each time the host waits for
    answers (``waits``: once per group of pipelined requests,
    ``accel.requests.pipeline_groups``), and the engine's cycles at ``clock_hz`` (the
    bundle's board clock, ``accel.board.read_board``), all strictly one after another (no
    byte is counted as sent while another is, the engine runs only inside a RUN, and a
    LOAD is not counted beside it). ``stats`` are the driver's counts (``bytes_tx``,
    ``bytes_rx``, ``frames_tx``, ``waits``) or ``accel.linkcost.link_cost``'s prediction;
    ``cycles`` the core's: the engine's (``accel.cycles``' prediction or the counters), the
    spike encoder's (``enc_busy``) and, measured only (:data:`BOARD_CYCLES`), the RUNs'
    waits for their weights' copies (``load_wait``) and the STOREs (``store_busy``,
    ``accel.chain``): the prediction has no model of the memory's timing, and does not
    count the STOREs' cycles."""
    link_bits = UART_BITS_PER_BYTE * (stats["bytes_tx"] + stats["bytes_rx"])
    trips = stats["waits"] * ROUND_TRIP_S
    compute = cycles / clock_hz
    out = {"assumes": f"8N1 UART, {ROUND_TRIP_S * 1e3:g} ms per round trip (one a group of "
                      f"pipelined requests), the core at {clock_hz / 1e6:g} MHz, nothing "
                      f"overlapped",
           "clock_hz": clock_hz, "round_trips": stats["waits"], "requests": stats["frames_tx"],
           "compute_s": compute, "by_baud": {}}
    for baud in BOARD_BAUDS:
        total = link_bits / baud + trips + compute
        out["by_baud"][str(baud)] = {"link_s": link_bits / baud, "round_trips_s": trips,
                                     "total_s": total, "tokens_per_s": tokens / total,
                                     "link_share": (link_bits / baud + trips) / total}
    return out
