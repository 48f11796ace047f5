"""What the gateware, the host and the cycle model share about the on-chip spike encoder
(``hw.encoder``, ``AccelConfig.spike_encoder``): which codes it encodes, the requests that
replace a tile's spike-event words, and its cycles.

A tile's spike-event words (``accel.tiling.spike_words``) are, row group after row group
(``spike_rows`` rows), the same function of the group's codes. With the encoder the host
writes each group's codes into the code buffer (``BufId.CODES``, 4 bits a code) and sends
an ``EXPAND``; the encoder writes the group's words where the host would have written
them. The host still builds the words: they size the descriptor, they are the ``count`` the
encoder must match, and the buffer mirror (``accel.requests.BufferMirror``) records them.
"""

from __future__ import annotations

import torch

from models.encodings import TTFS_KINDS, Encoding, spike_events

from .config import CODE_BITS, AccelConfig
from .layouts import SpikeOp, code_words
from .protocol import EXPAND_ARGS, Cmd, nbytes

#: Cycles of an EXPAND besides its items: its arguments' check, the three pipeline stages
#: after the last item, and the ``done`` cycle (``hw.encoder.SpikeEncoder``).
ENCODE_OVERHEAD = 5


def encode_cycles(rows: int, k: int, steps: int) -> int:
    """Cycles the encoder takes for one row group of ``rows`` rows of ``k`` codes in a
    window of ``steps``: one item a cycle, each code read once a step, a STEP per row and
    step and an END per row."""
    return rows * (k * steps + steps + 1) + ENCODE_OVERHEAD


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
                  words: list[dict], dst: int) -> list[tuple[list, bytes]]:
    """For a tile's spike codes ``[M, K]`` (integer channels zeroed) and their spike words
    ``words`` at ``dst`` of the spike-event buffer: per row group, its code-buffer words
    and its ``EXPAND`` payload."""
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
        args = EXPAND_ARGS.const({
            "dst": dst + start, "count": end - start, "rows": block.shape[0],
            "k": block.shape[1], "steps": enc.time_steps, "signed": int(enc.signed)})
        out.append((code_words(block),
                    args.as_bits().to_bytes(nbytes(EXPAND_ARGS.size), "little")))
        start = end
    return out


def encoder_counts(requests) -> dict[str, int]:
    """What the encoder's counters (``enc_busy``, ``enc_wr``) count for ``requests``
    (``accel.requests.Request``) answered OK: each EXPAND's cycles and words."""
    out = {"enc_busy": 0, "enc_wr": 0}
    for req in requests:
        if req.cmd == Cmd.EXPAND:
            a = EXPAND_ARGS.from_bits(int.from_bytes(req.payload, "little"))
            out["enc_busy"] += encode_cycles(int(a.rows), int(a.k), int(a.steps))
            out["enc_wr"] += int(a.count)
    return out
