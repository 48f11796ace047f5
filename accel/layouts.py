"""What the gateware, the generator and the host share about the engine's buffers: the
buffer ids, word layouts and depths, the event opcodes, the tile descriptor and the rules it
must satisfy, and the word packers. Pure definitions (Amaranth layouts and enums, no
gateware): the host encodes with the same layout objects the gateware decodes with.
"""

from __future__ import annotations

from enum import Enum
from types import SimpleNamespace

import numpy as np
from amaranth import Shape, signed, unsigned
from amaranth.lib import data, enum

from models.contract import COL_MULT_BITS, MAX_REQ_SHIFT, ROW_MULT_BITS

from .config import CODE_BITS, CODES_PER_WORD, AccelConfig


class SpikeOp(enum.Enum, shape=2):
    """Spike-array event kinds. Every event names a row ``slot`` (rows are interleaved in
    time order, ``AccelConfig.spike_rows`` at a time)."""

    SPIKE = 0  #: a unit spike of input ``k``: add (``neg``: subtract) its weight row
    STEP = 1  #: end of a time step for the slot's row: the TTFS membrane adds I, V += I
    END = 2  #: end of the slot's row: emit its V and free the slot


class MacOp(enum.Enum, shape=1):
    """MAC-array event kinds."""

    MAC = 0  #: add ``(w[k] * q) << shift`` to every lane
    END = 1  #: end of the row: emit the lanes and clear them


def spike_event_layout(cfg: AccelConfig) -> data.StructLayout:
    """Payload of the spike array's input stream."""
    return data.StructLayout({"op": SpikeOp, "k": unsigned(cfg.k_bits), "neg": unsigned(1),
                              "slot": unsigned(cfg.slot_bits)})


def mac_event_layout(cfg: AccelConfig) -> data.StructLayout:
    """Payload of the MAC array's input stream."""
    return data.StructLayout({"op": MacOp, "k": unsigned(cfg.k_bits),
                              "q": signed(cfg.act_bits), "shift": unsigned(cfg.shift_bits)})


def weight_row_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """One row of the weight buffer."""
    return data.ArrayLayout(signed(cfg.weight_bits), cfg.lanes)


def narrow_row_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """The always-read half of a weight row: the low ``narrow_bits`` of every lane's weight
    (a 4-bit weight entire; the engine sign-extends it unless the tile is ``wide``)."""
    return data.ArrayLayout(signed(cfg.narrow_bits), cfg.lanes)


def high_row_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """The other half of a weight row, read only for ``wide`` tiles (int8 operands)."""
    return data.ArrayLayout(unsigned(cfg.weight_bits - cfg.narrow_bits), cfg.lanes)


def wide_weights(w, narrow_bits: int):
    """Which weights (a tensor or array) do not fit the weight buffer's narrow half of
    ``narrow_bits`` (two's complement): a tile holding any of them is ``wide``."""
    lim = 2 ** (narrow_bits - 1)
    return (w < -lim) | (w >= lim)


def spike_vector_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """A row of the spike array's membranes (``mem_bits`` per lane, one K tile's sum)."""
    return data.ArrayLayout(signed(cfg.mem_bits), cfg.lanes)


#: Requantizer shift field width (the contract's shifts 0..MAX_REQ_SHIFT).
SHIFT_BITS = MAX_REQ_SHIFT.bit_length()


def param_layout() -> data.StructLayout:
    """One lane's requantizer constants (a row of the parameter buffer)."""
    return data.StructLayout({"mcol": unsigned(COL_MULT_BITS), "bias": signed(32),
                              "zp": signed(16), "lo": signed(32), "hi": signed(32)})


def lane_bits(cfg: AccelConfig) -> int:
    """Width of a lane index."""
    return max(1, (cfg.lanes - 1).bit_length())


def lane_in_layout(cfg: AccelConfig) -> data.StructLayout:
    """One lane's sum entering the output unit (the combiner sends a row lane by lane),
    with its row's multiplier and whether it is the row's last lane."""
    return data.StructLayout({"acc": signed(cfg.acc_bits), "mrow": unsigned(ROW_MULT_BITS),
                              "lane": unsigned(lane_bits(cfg)), "last": unsigned(1)})


def value_layout(cfg: AccelConfig) -> data.StructLayout:
    """One output value: lane, value, last lane of the row."""
    return data.StructLayout({"value": signed(cfg.acc_bits), "lane": unsigned(lane_bits(cfg)),
                              "last": unsigned(1)})


class BufId(enum.Enum, shape=8):
    """On-chip buffers addressable by the host."""

    WEIGHTS = 0
    SPIKE_EV = 1
    MAC_EV = 2
    ROWS = 3
    ACC = 4
    PARAMS = 5
    OUT = 6
    START = 7
    #: the narrow halves of weight rows (write-only): a tile of 4-bit weights crosses the
    #: link at 4 bits a weight; the rows' high halves keep what they held, which a narrow
    #: tile never reads
    WEIGHTS4 = 8
    #: OUT read back a byte a word (read-only): outputs that are 8-bit codes
    OUT8 = 9
    #: the external memory (the board's SDRAM, ``hw.mem``): ``dram_bits`` words; the host
    #: writes and reads it, LOAD copies from it into the buffers above
    DRAM = 10
    #: OUT read back two bytes a word (read-only): outputs that are 16-bit codes
    OUT16 = 11
    #: the spike encoder's codes (``hw.encoder``; only with ``AccelConfig.spike_encoder``):
    #: one row group of one K tile, :data:`~accel.config.CODES_PER_WORD` 4-bit codes a
    #: word, each row from a word's first code (:func:`code_words`)
    CODES = 12

    def __hash__(self):
        # by value, not by name (``Enum``'s): sets of buffer ids (``LOADABLE``) iterate in
        # the same order whatever ``PYTHONHASHSEED``, so the emitted Verilog is the same
        return hash(self.value)


#: The read-only views of OUT that send fewer bytes a word, by their width: results that
#: are codes of at most that many bits are read through the narrowest that holds them
#: (``accel.tiling.out_read``).
OUT_VIEWS = {BufId.OUT8: 8, BufId.OUT16: 16}
#: Width of an OUT8 word.
OUT8_BITS = OUT_VIEWS[BufId.OUT8]


def buffer_shapes(cfg: AccelConfig) -> dict[BufId, tuple[object, int]]:
    """Word shape and depth of every buffer."""
    return {
        BufId.WEIGHTS: (weight_row_layout(cfg), cfg.weight_depth),
        BufId.SPIKE_EV: (spike_event_layout(cfg), cfg.spike_event_depth),
        BufId.MAC_EV: (mac_event_layout(cfg), cfg.mac_event_depth),
        BufId.ROWS: (unsigned(ROW_MULT_BITS), cfg.max_rows),
        BufId.ACC: (signed(cfg.acc_bits), cfg.max_rows * cfg.lanes),
        BufId.PARAMS: (param_layout(), cfg.lanes),
        BufId.OUT: (signed(cfg.acc_bits), cfg.max_rows * cfg.lanes),
        BufId.START: (signed(cfg.acc_bits), cfg.lanes),
        BufId.WEIGHTS4: (narrow_row_layout(cfg), cfg.weight_depth),
        BufId.OUT8: (signed(OUT8_BITS), cfg.max_rows * cfg.lanes),
        BufId.DRAM: (unsigned(cfg.dram_bits), 1 << cfg.dram_addr_bits),
        BufId.OUT16: (signed(OUT_VIEWS[BufId.OUT16]), cfg.max_rows * cfg.lanes),
    } | ({BufId.CODES: (code_word_layout(), cfg.code_words)} if cfg.code_words else {})


def row_lane_bytes(cfg: AccelConfig) -> int:
    """Bytes a lane of a weight row takes in a WRITE_ROWS (``accel.protocol.ROW_ARGS``,
    which writes only ``BufId.WEIGHTS``): its weight's, when that is whole bytes; 0 when it
    is not (then the core has no WRITE_ROWS)."""
    return cfg.weight_bits // 8 if cfg.weight_bits % 8 == 0 else 0


def code_word_layout() -> data.ArrayLayout:
    """One word of the code buffer (``BufId.CODES``): ``CODES_PER_WORD`` raw 4-bit codes,
    the first in the low bits (the ``EXPAND`` request says whether they are signed)."""
    return data.ArrayLayout(unsigned(CODE_BITS), CODES_PER_WORD)


def code_words(codes) -> list[list[int]]:
    """The code-buffer words of a row group's codes ``[rows, K]`` (an integer tensor or
    array): each row padded with zeros to whole words, rows one after another, each code
    as its low ``CODE_BITS`` bits (two's complement for a negative code)."""
    arr = np.asarray(codes, dtype=np.int64)
    per = -(-arr.shape[1] // CODES_PER_WORD)
    padded = np.zeros((arr.shape[0], per * CODES_PER_WORD), dtype=np.int64)
    padded[:, :arr.shape[1]] = arr & ((1 << CODE_BITS) - 1)
    return padded.reshape(-1, CODES_PER_WORD).tolist()


def onchip_shapes(cfg: AccelConfig) -> dict[BufId, tuple[object, int]]:
    """:func:`buffer_shapes` of the engine's own buffers (all but the external memory)."""
    return {b: v for b, v in buffer_shapes(cfg).items() if b != BufId.DRAM}


#: Buffers a LOAD may fill from the external memory: those the host may write, but not
#: the external memory itself or the datapath's own buffers. The code buffer is one, so
#: that a GEMM's spike codes, staged in the memory once, are LOADed and EXPANDed for each
#: of its N slices instead of crossing the link as event words (``accel.requests``).
LOADABLE = frozenset({BufId.WEIGHTS, BufId.WEIGHTS4, BufId.SPIKE_EV, BufId.MAC_EV,
                      BufId.ROWS, BufId.PARAMS, BufId.START, BufId.CODES})


def loadable(cfg: AccelConfig) -> frozenset:
    """The :data:`LOADABLE` buffers ``cfg`` has (the code buffer only with the encoder)."""
    return LOADABLE & buffer_shapes(cfg).keys()


#: Widest word a WRITE_BUF may pack (``accel.protocol.PACKED``: the executor assembles
#: packed words in a register this wide plus a byte).
PACK_BITS = 32


def packable(cfg: AccelConfig) -> dict[BufId, int]:
    """Buffers whose words cross the link packed at their width, by width: host-written,
    wider than a byte, at most :data:`PACK_BITS` wide and not a whole number of bytes (a
    17-bit spike event takes 17 bits on the link instead of 24)."""
    widths = {b: Shape.cast(s).width for b, (s, _) in buffer_shapes(cfg).items()}
    # wider than a byte: each byte received completes at most one word
    return {b: w for b, w in widths.items()
            if b in LOADABLE and 8 < w <= PACK_BITS and w % 8}


def dram_words(cfg: AccelConfig, buf: BufId) -> int:
    """External-memory words one word of ``buf`` takes there (``ceil(width / dram_bits)``,
    the low bits in the first word): how a LOAD reads it and how the host lays it out."""
    return -(-Shape.cast(buffer_shapes(cfg)[buf][0]).width // cfg.dram_bits)


def to_dram_words(cfg: AccelConfig, buf: BufId, raw: list[int]) -> list[int]:
    """Packed words of ``buf`` (raw bits, :func:`word_packer`) as external-memory words,
    laid out as LOAD reads them (:func:`dram_words` each, low bits first)."""
    n, b = dram_words(cfg, buf), cfg.dram_bits
    mask = (1 << b) - 1
    return [(w >> (i * b)) & mask for w in raw for i in range(n)]


def descriptor_layout(cfg: AccelConfig) -> data.StructLayout:
    """A GEMM tile descriptor (what RUN carries)."""
    return data.StructLayout({
        "rows": unsigned(cfg.max_rows.bit_length()),
        "n_active": unsigned(cfg.lanes.bit_length()),
        "spike_events": unsigned(cfg.spike_event_depth.bit_length()),
        "mac_events": unsigned(cfg.mac_event_depth.bit_length()),
        "ttfs": unsigned(1),
        "shift": unsigned(SHIFT_BITS),
        "relu": unsigned(1),
        "raw": unsigned(1),
        "resume": unsigned(1),  # start from ACC (previous K tile's sums), not from START
        "keep": unsigned(1),  # write sums back to ACC (more K tiles follow), no output
        "wide": unsigned(1),  # weights need more than narrow_bits: read both row halves
        # where the tile's data lie, so several tiles can stay resident in the buffers
        "w_base": unsigned(cfg.k_bits),
        "spike_base": unsigned((cfg.spike_event_depth - 1).bit_length()),
        "mac_base": unsigned((cfg.mac_event_depth - 1).bit_length()),
        "row_base": unsigned((cfg.max_rows - 1).bit_length() or 1),  # ROWS, ACC and OUT rows
    })


def descriptor_rules(cfg: AccelConfig) -> dict:
    """What a descriptor must satisfy to be run: ``{field: check}``. Each check takes the
    descriptor as an object with its fields as attributes and works alike on Python ints
    (the host, which names the field it breaks) and on Amaranth values (the core, which
    answers ``ERR_ARG``). What cannot be checked here (the number of row ends in the event
    buffers, weight addresses past the buffer) the engine catches while it runs."""
    return {  # keyed by the fields each rule reads
        "rows+row_base": lambda d: (d.rows >= 1) & (d.rows + d.row_base <= cfg.max_rows),
        "n_active": lambda d: (d.n_active >= 1) & (d.n_active <= cfg.lanes),
        # every row ends with an END in each event buffer
        "spike_events+spike_base+rows": lambda d: (d.spike_events >= d.rows)
        & (d.spike_base + d.spike_events <= cfg.spike_event_depth),
        "mac_events+mac_base+rows": lambda d: (d.mac_events >= d.rows)
        & (d.mac_base + d.mac_events <= cfg.mac_event_depth),
        "shift": lambda d: d.shift <= MAX_REQ_SHIFT,
    }


def descriptor_errors(cfg: AccelConfig, descriptor: dict) -> list[str]:
    """The rules of :func:`descriptor_rules` that ``descriptor`` (a dict) breaks, as
    ``field=value`` lists (``"rows=9, row_base=0"``)."""
    layout = descriptor_layout(cfg)
    d = SimpleNamespace(**{name: int(descriptor.get(name, 0)) for name, _ in layout})
    return [", ".join(f"{f}={getattr(d, f)}" for f in name.split("+"))
            for name, ok in descriptor_rules(cfg).items() if not ok(d)]


#: Cycles a running descriptor may go without progress (an event read, a row combined, an
#: output written) before the engine's watchdog stops it. A valid tile never waits more
#: than a row of the output unit or of the MAC array (``lanes`` cycles) plus a few.
def watchdog_cycles(cfg: AccelConfig) -> int:
    """Watchdog limit of :class:`Engine` (see above)."""
    return max(4096, 8 * cfg.lanes)


#: Buffers the host can read back. Not ACC: a host read port would be a second read port on
#: its block RAMs (doubling them) for a read the host never needs (results come through OUT).
#: Buffer ids that are views of another buffer's memory, not memories of their own.
VIEWS = {BufId.WEIGHTS4: BufId.WEIGHTS, **{v: BufId.OUT for v in OUT_VIEWS}}
#: Not WEIGHTS4 either: it is a write-only view of WEIGHTS. Nor SPIKE_EV: no run reads
#: spike events back, and a host read port would be a second copy of the deepest buffer
#: (34 of a 64-lane build's block RAMs) whose output mux was that build's critical path.
HOST_READABLE = frozenset(b for b in BufId
                          if b not in (BufId.ACC, BufId.WEIGHTS4, BufId.CODES, BufId.SPIKE_EV))
#: Buffers the host can write: not the read-only views of OUT.
HOST_WRITABLE = frozenset(b for b in BufId if b not in OUT_VIEWS)


def pack_word(shape, word) -> int:
    """A buffer word (dict/list for layouts, int otherwise) as its raw bits.

    The same bits as ``shape.const(word).as_bits()``, computed with integer operations
    from the layout's field offsets (Amaranth's ``const`` costs ~0.3 ms a word, and a model
    run packs millions of words). ``tests/hw/test_engine.py`` checks the two agree. For
    many words of one buffer, take :func:`word_packer` once."""
    return word_packer(shape)(word)


_PACKERS: dict = {}


def word_packer(shape):
    """The packing function of :func:`pack_word` for ``shape``, built once per distinct
    shape (layouts compare and hash by value, which is not cheap: look it up once)."""
    hit = _PACKERS.get(shape)
    if hit is not None:
        return hit
    if isinstance(shape, data.StructLayout):
        fields = [(name, f.offset, word_packer(f.shape)) for name, f in shape]
        names = [name for name, _, _ in fields]

        def pack(word):
            if len(word) != len(fields):  # a misspelled or missing field never packs as 0
                raise ValueError(f"word {word} has fields {sorted(word)}, the layout "
                                 f"{names}")
            bits = 0
            for name, off, sub in fields:
                v = word[name]
                if v:
                    bits |= sub(v) << off
            return bits
    elif isinstance(shape, data.ArrayLayout):
        w = Shape.cast(shape.elem_shape).width
        if not isinstance(shape.elem_shape, data.Layout) and w in (8, 16, 32):
            dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[w]

            def pack(word):
                raw = (np.asarray(word, dtype=np.int64) & ((1 << w) - 1)).astype(dtype)
                return int.from_bytes(raw.astype(f"<u{w // 8}").tobytes(), "little")
        elif not isinstance(shape.elem_shape, data.Layout):
            # other widths (4-bit weights): every element's bits, low first, packed at once
            shifts = np.arange(w, dtype=np.int64)

            def pack(word):
                bits = (np.asarray(word, dtype=np.int64)[:, None] >> shifts) & 1
                return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel(),
                                                  bitorder="little").tobytes(), "little")
        else:
            sub = word_packer(shape.elem_shape)

            def pack(word):
                bits = 0
                for i, x in enumerate(word):
                    bits |= sub(x) << (i * w)
                return bits
    elif isinstance(shape, data.Layout):
        def pack(word):
            return shape.const(word).as_bits()
    else:
        mask = (1 << Shape.cast(shape).width) - 1

        def pack(word):
            return (word.value if isinstance(word, Enum) else int(word)) & mask
    _PACKERS[shape] = pack
    return pack


def unpack_int(shape, bits: int) -> int:
    """Raw bits of an integer-shaped word as a Python int (sign-extended if signed)."""
    s = Shape.cast(shape)
    bits &= (1 << s.width) - 1  # the host read port is as wide as the widest buffer
    if s.signed and bits >> (s.width - 1) & 1:
        return bits - (1 << s.width)
    return bits
