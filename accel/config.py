"""The one configuration of an accelerator instance.

Every component, the generator and the test parametrisation take an :class:`AccelConfig`;
nothing else sizes the hardware. Numerical widths come from :mod:`models.contract`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from models.contract import (
    ACC_BITS,
    COL_MULT_BITS,
    INT8_QMAX,
    MAX_OUTLIER_SHIFT,
    ROW_FRAC,
    WEIGHT_BITS,
    signed_bits,
)
from models.encodings import KINDS, TTFS_KINDS

#: Width of a code in the spike encoder's code buffer (``BufId.CODES``): a 4-bit TTFS code,
#: sign-magnitude (-7..7) or unsigned (0..15), as ``models.encodings`` makes them.
CODE_BITS = 4
#: Codes in one word of the code buffer (32 bits: one external-memory word, whole bytes).
CODES_PER_WORD = 8


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class AccelConfig:
    """Parameters of one accelerator instance (validated; JSON round trip; hashable)."""

    #: Output channels the spike-accumulate array updates in parallel (one adder per lane).
    lanes: int = 16
    #: Multipliers of the integer MAC array; a weight row takes ``lanes / mac_units`` cycles.
    mac_units: int = 4
    #: Stored weight width: 4-bit linear codes are sign-extended, attention operands are int8.
    weight_bits: int = 8
    #: Activation code width (spike codes and int8 outliers).
    act_bits: int = 8
    #: Accumulator width (the contract's).
    acc_bits: int = ACC_BITS
    #: Rows of the weight buffer (input channels K of one weight tile).
    weight_depth: int = 1024
    #: Activation rows M of one tile (accumulator buffer depth; output buffer rows).
    max_rows: int = 128
    #: Entries of the spike-event buffer (unit spikes, step marks and row ends of a tile).
    spike_event_depth: int = 8192
    #: Entries of the integer (outlier) event buffer.
    mac_event_depth: int = 2048
    #: Rows of MAC accumulators (the row being accumulated and finished rows waiting for the
    #: combiner): how far the MAC array may run ahead of the spike array.
    row_fifo_depth: int = 4
    #: Row slots of the spike array: it interleaves this many rows in time order, so one
    #: weight-row read serves every row that spikes on that input at that step.
    spike_rows: int = 16
    #: Largest left shift of an outlier product.
    max_shift: int = MAX_OUTLIER_SHIFT
    #: Longest spike window T.
    max_steps: int = 255
    #: Width of every event counter.
    counter_bits: int = 48
    #: Spike encodings the spike array executes.
    encodings: tuple[str, ...] = KINDS
    #: Width of an external-memory word (the SDRAM controller's user port, ``hw.mem``).
    dram_bits: int = 32
    #: Word-address width of the external memory: ``2 ** dram_addr_bits`` words (the
    #: ULX3S's 32 MB SDRAM is 2 ** 23 words of 32 bits).
    dram_addr_bits: int = 23
    #: The on-chip spike encoder (``hw.encoder``): the host sends a row group's TTFS codes
    #: (4 bits each, ``BufId.CODES``) and an ``EXPAND`` request instead of its spike-event
    #: words, and the encoder writes those words into the spike-event buffer.
    spike_encoder: bool = False

    def __post_init__(self) -> None:
        if self.dram_bits not in (8, 16, 32, 64, 128):
            raise ValueError(f"dram_bits must be one of 8, 16, 32, 64, 128, not {self.dram_bits}")
        if not 8 <= self.dram_addr_bits <= 24:  # the link's 24-bit buffer addresses
            raise ValueError(f"dram_addr_bits must be in 8..24, not {self.dram_addr_bits}")
        if not _pow2(self.lanes):
            raise ValueError(f"lanes must be a positive power of two, not {self.lanes}")
        if not _pow2(self.mac_units) or self.mac_units > self.lanes:
            raise ValueError(
                f"mac_units must be a power of two no larger than lanes ({self.lanes}), "
                f"not {self.mac_units}")
        if not 4 <= self.weight_bits <= 16:
            raise ValueError(f"weight_bits must be in 4..16, not {self.weight_bits}")
        if self.act_bits < (INT8_QMAX + 1).bit_length():
            raise ValueError(f"act_bits must be at least 8, not {self.act_bits}")
        if self.acc_bits != ACC_BITS:
            raise ValueError(f"acc_bits must be the contract's {ACC_BITS}, not {self.acc_bits}")
        if not _pow2(self.weight_depth):
            raise ValueError(f"weight_depth must be a positive power of two, "
                             f"not {self.weight_depth}")
        for name in ("max_rows", "spike_event_depth", "mac_event_depth"):
            if not _pow2(getattr(self, name)):
                raise ValueError(f"{name} must be a positive power of two, "
                                 f"not {getattr(self, name)}")
        if not _pow2(self.spike_rows) or not 1 <= self.spike_rows <= min(64, self.max_rows):
            raise ValueError(f"spike_rows must be a power of two in 1..min(64, max_rows="
                             f"{self.max_rows}), not {self.spike_rows}")
        if not 1 <= self.row_fifo_depth <= 64:
            raise ValueError(f"row_fifo_depth must be in 1..64, not {self.row_fifo_depth}")
        if not 0 <= self.max_shift <= 24:
            raise ValueError(f"max_shift must be in 0..24, not {self.max_shift}")
        if not 1 <= self.max_steps <= 4095:
            raise ValueError(f"max_steps must be in 1..4095, not {self.max_steps}")
        if self.counter_bits < 48:
            raise ValueError(f"counter_bits must be at least 48, not {self.counter_bits}")
        bad = [e for e in self.encodings if e not in KINDS]
        if bad or not self.encodings:
            raise ValueError(f"encodings must be a non-empty subset of {KINDS}, not {bad}")

    # -- derived widths --------------------------------------------------------------------
    @property
    def k_bits(self) -> int:
        """Address width of the weight buffer."""
        return (self.weight_depth - 1).bit_length()

    @property
    def half_rows(self) -> int:
        """Rows of one half of the weight buffer (0 for a buffer of one row): a LOAD
        writes one half while a RUN reads the other (``accel.tiling.alternate_halves``,
        ``accel.requests.prefetch``, the executor's ``w_base`` check)."""
        return self.weight_depth // 2

    @property
    def k_tile(self) -> int:
        """Input channels (weight rows) of one K tile: half the weight buffer, so that the
        next tile's weights always have a half to be loaded into while this one runs
        (``accel.tiling.alternate_halves``; a buffer of one row: that row)."""
        return max(1, self.half_rows)

    @property
    def code_words(self) -> int:
        """Depth of the code buffer (``BufId.CODES``): one row group (``spike_rows`` rows)
        of one K tile's codes, ``CODES_PER_WORD`` to a word, each row starting a word
        (``accel.layouts``); 0 without the spike encoder."""
        return self.spike_rows * -(-self.k_tile // CODES_PER_WORD) if self.spike_encoder else 0

    @property
    def mac_cycles(self) -> int:
        """Cycles the MAC array spends on one weight row."""
        return self.lanes // self.mac_units

    @property
    def shift_bits(self) -> int:
        """Width of an outlier shift field."""
        return max(1, self.max_shift.bit_length())

    @property
    def step_bits(self) -> int:
        """Width of a time-step counter."""
        return self.max_steps.bit_length()

    @property
    def slot_bits(self) -> int:
        """Width of a spike-array row slot index."""
        return max(1, (self.spike_rows - 1).bit_length())

    @property
    def spike_fifo_depth(self) -> int:
        """Rows of the spike array's row ring (finished membranes waiting for the combiner):
        a slot group's rows all end at once, after their window, so the ring holds a whole
        group (``spike_rows``, at least ``row_fifo_depth``; 16 rows are one LUT RAM deep)."""
        return max(self.row_fifo_depth, self.spike_rows)

    @property
    def narrow_bits(self) -> int:
        """Bits of a weight the buffer's always-read half holds: the contract's 4-bit linear
        weights; a wider weight (the int8 operands of QK^T and PV) also reads the high half."""
        return WEIGHT_BITS

    @property
    def spike_code_max(self) -> int:
        """Largest code magnitude a row sends through the spike array in one window: the
        window for TTFS and rate codes, the activation width for graded and ternary spikes
        (``accel.tiling.build_tile`` refuses larger codes)."""
        spiking = [e for e in self.encodings if e != "int"] or ["ttfs"]
        return max(self.max_steps if e in (*TTFS_KINDS, "rate") else 2**self.act_bits - 1
                   for e in spiking)

    @property
    def cur_bits(self) -> int:
        """Width of a lane's synaptic current I: at most one unit spike per input of a K tile
        per window (TTFS), each adding a weight of ``weight_bits``."""
        return min(self.acc_bits, signed_bits(2 ** (self.weight_bits - 1) * self.weight_depth))

    @property
    def mem_bits(self) -> int:
        """Width of a lane's membrane V: one K tile's partial dot product of weights and
        codes up to :attr:`spike_code_max` (the combiner adds it to the 32-bit sums)."""
        return self.lane_bits(self.spike_code_max)

    def lane_bits(self, code_max: int) -> int:
        """Width of a membrane that holds one K tile's sum for codes up to ``code_max``
        (what the energy model charges a spike lane's addition for a window of that code)."""
        return min(self.acc_bits, signed_bits(2 ** (self.weight_bits - 1) * code_max
                                              * self.weight_depth))

    @property
    def col_mult_bits(self) -> int:
        """Requantizer column multiplier width (contract)."""
        return COL_MULT_BITS

    @property
    def row_frac(self) -> int:
        """Requantizer row multiplier fraction bits (contract)."""
        return ROW_FRAC

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict:
        """Plain dict (lists for tuples)."""
        d = asdict(self)
        d["encodings"] = list(self.encodings)
        return d

    @classmethod
    def from_json(cls, d: dict) -> AccelConfig:
        """Inverse of :meth:`to_json`; unknown keys are refused by name."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        d = dict(d)
        if "encodings" in d:
            d["encodings"] = tuple(d["encodings"])
        return cls(**d)

    def hash32(self) -> int:
        """32-bit identity of the configuration (the device reports it on identify)."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")

    @property
    def hash_text(self) -> str:
        """:meth:`hash32` as the bundle files and reports write it (``0x1234abcd``)."""
        return f"0x{self.hash32():08x}"


#: Named presets.
PRESETS = {
    "tiny": AccelConfig(lanes=4, mac_units=2, weight_depth=64, max_steps=15, max_rows=8,
                        spike_event_depth=4096, mac_event_depth=128, spike_rows=4),
    "default": AccelConfig(),
    "ulx3s-85f": AccelConfig(lanes=64, mac_units=16, weight_depth=1024),
}
