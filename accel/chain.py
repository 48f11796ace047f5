"""One GEMM's outputs as a later GEMM's weights, without the link: the core gathers them
from its output buffer into the external memory (``STORE``, ``accel.protocol.STORE_ARGS``)
laid out as weight rows, and the later GEMM LOADs them as it LOADs a linear layer's.

In a transformer block the keys and values are such outputs (``models.graph``: k and v are
``direct``, their int8 codes are QK^T's and PV's weights, ``models.golden``): for head
``h``, QK^T's weight row ``d`` holds key channel ``c0 + d`` of every key token (a
transpose of k's output), PV's weight row ``j`` holds value token ``j``'s channels
``c0 ..`` (v's output row as it is). :func:`gathers` finds, for each weight block a
consumer's tiles will load, the STORE that makes it from the producer's output slice,
checked against the golden values (it plans nothing it cannot show to be equal)."""

from __future__ import annotations

from typing import NamedTuple

from .config import AccelConfig
from .layouts import BufId, buffer_shapes, to_dram_words, word_packer
from .protocol import STORE_ARGS, nbytes


class Gather(NamedTuple):
    """One STORE (:data:`~accel.protocol.STORE_ARGS`): ``rows`` words of ``buf``, lane ``l``
    of row ``r`` the code at OUT word ``src + r * row_stride + l * lane_stride`` (``l <
    lanes``; the other lanes zero), written at memory word ``dst ..``."""

    buf: BufId
    src: int
    rows: int
    lanes: int
    row_stride: int
    lane_stride: int
    dst: int


def store_payload(g: Gather) -> bytes:
    """The STORE request's payload."""
    return STORE_ARGS.const({**g._asdict(), "buf": BufId(g.buf).value}).as_bits().to_bytes(
        nbytes(STORE_ARGS.size), "little")


def gathered(cfg: AccelConfig, g: Gather, out: list[int]) -> list[int]:
    """The memory words a STORE writes when the output buffer holds ``out`` (its words as
    integers, the requantized codes): what the core computes, as the host predicts it."""
    bits = cfg.weight_bits if g.buf == BufId.WEIGHTS else cfg.narrow_bits
    pack = word_packer(buffer_shapes(cfg)[g.buf][0])
    rows = []
    for r in range(g.rows):
        lanes = [out[g.src + r * g.row_stride + j * g.lane_stride] for j in range(g.lanes)]
        low = [((v & ((1 << bits) - 1)) ^ (1 << bits - 1)) - (1 << bits - 1) for v in lanes]
        rows.append(pack(low + [0] * (cfg.lanes - g.lanes)))
    return to_dram_words(cfg, g.buf, rows)

