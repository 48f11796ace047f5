"""What the gateware, the host and the cycle model share about the on-chip spike encoder
(``hw.encoder``, ``AccelConfig.spike_encoder``): which codes it encodes, the requests that
replace a tile's spike-event words (and its MAC-event words), and its cycles.

A tile's spike-event words (``accel.tiling.spike_words``) are, row group after row group
(``spike_rows`` rows), the same function of the group's codes. With the encoder the host
writes each group's codes into the code buffer (``BufId.CODES``, 4 bits a code) and sends
an ``EXPAND``; the encoder writes the group's words where the host would have written
them. The host still builds the words: they size the descriptor, they are the ``count`` the
encoder must match, and the buffer mirror (``accel.requests.BufferMirror``) records them.

The same EXPAND with ``mac`` set makes a tile's MAC-event words (its integer channels, a
word each per row, then an END, ``accel.tiling.mac_words``: 23 bits a word packed) from a
channel table and the values a byte each (:func:`mac_groups`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from models.encodings import TTFS_KINDS, Encoding, spike_events

from .config import CODE_BITS, CODES_PER_WORD, AccelConfig
from .layouts import BufId, MacOp, SpikeOp, code_words
from .protocol import EXPAND_ARGS, Cmd, pack_args, unpack_args

#: Cycles of an EXPAND besides its items: its arguments' check, the three pipeline stages
#: after the last item, and the ``done`` cycle (``hw.encoder.SpikeEncoder``).
ENCODE_OVERHEAD = 5


def encode_cycles(rows: int, k: int, steps: int) -> int:
    """Cycles the encoder takes for one row group of ``rows`` rows of ``k`` codes in a
    window of ``steps``: one item a cycle, each code read once a step, a STEP per row and
    step and an END per row."""
    return rows * (k * steps + steps + 1) + ENCODE_OVERHEAD


#: Bits of an entry of a MAC EXPAND's channel table: the channel (``k_bits``, its weight
#: row in the tile), its shift above it (``shift_bits``), zeros; two to a code-buffer word.
TABLE_BITS = 16
#: Bits of a value of a MAC EXPAND: an int8 integer channel's code, two's complement; four
#: to a code-buffer word.
VALUE_BITS = 8
#: Code-buffer bits a word (``CODES_PER_WORD`` codes).
WORD_BITS = CODE_BITS * CODES_PER_WORD


def mac_cycles(rows: int, chans: int) -> int:
    """Cycles the encoder takes for a MAC EXPAND of ``rows`` rows of ``chans`` integer
    channels: two a word (its table entry's read, then its value's), one an END."""
    return rows * (2 * chans + 1) + ENCODE_OVERHEAD


def mac_expandable(cfg: AccelConfig) -> bool:
    """Whether ``cfg``'s encoder makes MAC-event words: it has one, and a channel and its
    shift fit a table entry."""
    return cfg.spike_encoder and cfg.k_bits + cfg.shift_bits <= TABLE_BITS


class ExpandGroup(NamedTuple):
    """One EXPAND: the code-buffer words it reads (``blocks``: ``(address, words)``, each
    word a list of ``CODES_PER_WORD`` codes) and its payload."""

    blocks: tuple[tuple[int, list], ...]
    payload: bytes


def _payload(**args) -> bytes:
    return pack_args(EXPAND_ARGS, args)


def _as_codes(values: list[int], bits: int) -> list[list[int]]:
    """Fields of ``bits`` bits (the low bits of each value), packed into code-buffer words
    from the low bits up, as lists of codes."""
    per = WORD_BITS // bits
    out = []
    for i in range(0, len(values), per):
        word = 0
        for j, v in enumerate(values[i:i + per]):
            word |= (v & ((1 << bits) - 1)) << (j * bits)
        out.append([(word >> (c * CODE_BITS)) & ((1 << CODE_BITS) - 1)
                    for c in range(CODES_PER_WORD)])
    return out


def mac_groups(cfg: AccelConfig, words: list[dict], dst: int) -> list[ExpandGroup] | None:
    """The EXPANDs that make a tile's MAC-event words ``words`` (``accel.tiling.mac_words``)
    at ``dst ..`` of the MAC-event buffer, or None when the encoder cannot: it has no MAC
    mode (:func:`mac_expandable`), the rows do not all name the same channels and shifts,
    a value is not int8, or a row does not fit the code buffer beside the table.

    The code buffer holds the channel table from word 0 (an entry a channel:
    :data:`TABLE_BITS`) and, from the word after it, the values of as many rows as fit,
    row after row with no padding (:data:`VALUE_BITS` a value); the table is the same for
    every group, so the host writes it once."""
    if not mac_expandable(cfg) or not words:
        return None
    rows: list[list[dict]] = [[]]
    for w in words:
        if w["op"] == MacOp.END:
            rows.append([])
        else:
            rows[-1].append(w)
    if rows.pop():  # MAC words after the last END
        return None
    table = [(w["k"], w["shift"]) for w in rows[0]]
    chans = len(table)
    if (not chans or chans > cfg.k_tile or any([(w["k"], w["shift"]) for w in r] != table
                                               for r in rows)
            or any(not -128 <= w["q"] < 128 for r in rows for w in r)):
        return None
    tab = _as_codes([k | s << cfg.k_bits for k, s in table], TABLE_BITS)
    fit = min(255, (cfg.code_words - len(tab)) * (WORD_BITS // VALUE_BITS) // chans)
    if fit < 1:
        return None
    out = []
    for g0 in range(0, len(rows), fit):
        group = rows[g0:g0 + fit]
        vals = _as_codes([w["q"] for r in group for w in r], VALUE_BITS)
        out.append(ExpandGroup(((0, tab), (len(tab), vals)), _payload(
            dst=dst + g0 * (chans + 1), count=len(group) * (chans + 1), rows=len(group),
            k=chans, mac=1)))
    return out


def codes_fit(enc: Encoding) -> bool:
    """Whether an encoder would make ``enc``'s events: TTFS codes of at most
    ``CODE_BITS``."""
    return enc.kind in TTFS_KINDS and enc.bits <= CODE_BITS


def spike_table(cfg: AccelConfig) -> dict[tuple[int, int], list[tuple[int, int] | None]]:
    """What the encoder does with each raw ``CODE_BITS``-bit code, per encoding it runs
    (those :func:`codes_fit` admits, with a window ``cfg`` allows), keyed by ``(signed,
    steps)`` as EXPAND names them: ``(t, neg)`` for the code's one spike at step ``t``,
    ``(-1, 0)`` for a silent code, None for a code outside the encoding. Made by
    ``models.encodings.spike_events`` itself (the gateware builds its table from this, so
    the TTFS timing rule has one home)."""
    table = {}
    for kind in TTFS_KINDS:
        for bits in range(1, CODE_BITS + 1):
            try:
                enc = Encoding(kind, bits)
            except ValueError:
                continue  # ttfs-signed needs a sign bit and one more
            if not codes_fit(enc) or enc.time_steps > cfg.max_steps:
                continue
            row: list[tuple[int, int] | None] = []
            for raw in range(1 << CODE_BITS):
                v = raw - (1 << CODE_BITS) if enc.signed and raw >> (CODE_BITS - 1) else raw
                if not enc.qmin <= v <= enc.qmax:
                    row.append(None)
                    continue
                ev = spike_events(torch.tensor([[v]]), enc).tolist()
                row.append((ev[0][1], int(ev[0][3] < 0)) if ev else (-1, 0))
            table[(int(enc.signed), enc.time_steps)] = row
    return table


def encodable(cfg: AccelConfig, enc: Encoding) -> bool:
    """Whether ``cfg``'s encoder makes ``enc``'s events (:func:`codes_fit`)."""
    return cfg.spike_encoder and codes_fit(enc)


def group_ends(words: list[dict]) -> list[int]:
    """Where each row group's words end in a tile's spike words: after its last END (the
    group's ENDs are its last words, ``accel.tiling.spike_words``)."""
    ends, prev = [], None
    for i, w in enumerate(words):
        is_end = w["op"] == SpikeOp.END
        if prev and not is_end:
            ends.append(i)
        prev = is_end
    if words:
        ends.append(len(words))
    return ends


def expand_groups(cfg: AccelConfig, codes: torch.Tensor, enc: Encoding,
                  words: list[dict], dst: int) -> list[ExpandGroup]:
    """For a tile's spike codes ``[M, K]`` (integer channels zeroed) and their spike words
    ``words`` at ``dst`` of the spike-event buffer: per row group, its code-buffer words
    (from word 0) and its ``EXPAND`` payload."""
    if not encodable(cfg, enc):
        raise ValueError(f"the spike encoder does not make {enc.name()} events")
    slots = cfg.spike_rows
    ends = group_ends(words)
    groups = range(0, codes.shape[0], slots)
    if len(ends) != len(groups):
        raise ValueError(f"{len(ends)} row groups in the words, {len(groups)} in the codes")
    out, start = [], 0
    for g0, end in zip(groups, ends, strict=True):
        block = codes[g0:g0 + slots]
        out.append(ExpandGroup(((0, code_words(block)),), _payload(
            dst=dst + start, count=end - start, rows=block.shape[0], k=block.shape[1],
            steps=enc.time_steps, signed=int(enc.signed))))
        start = end
    return out


def expand_writes(payload: bytes) -> BufId:
    """The event buffer an EXPAND with ``payload`` writes: the MAC-event buffer with
    ``mac`` set, else the spike-event buffer."""
    a = unpack_args(EXPAND_ARGS, payload)
    return BufId.MAC_EV if a.mac else BufId.SPIKE_EV


def encoder_counts(requests) -> dict[str, int]:
    """What the encoder's counters (``enc_busy``, ``enc_wr``) count for ``requests``
    (``accel.requests.Request``) answered OK: each EXPAND's cycles and words."""
    out = {"enc_busy": 0, "enc_wr": 0}
    for req in requests:
        if req.cmd == Cmd.EXPAND:
            a = unpack_args(EXPAND_ARGS, req.payload)
            rows, k = int(a.rows), int(a.k)
            out["enc_busy"] += (mac_cycles(rows, k) if a.mac else
                                encode_cycles(rows, k, int(a.steps)))
            out["enc_wr"] += int(a.count)
    return out
