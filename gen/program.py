"""The compiled program and the link description that go into the build bundle.

The *program* is what the host needs to run the model on this configuration: for every GEMM
(each attention head separately), in forward order, the N and K tiling, where each tile's
weights lie and the static fields of its descriptors. The data-dependent fields (rows,
event counts of a row group) are filled in by the host from the activations, cutting rows
with :func:`accel.tiling.row_groups` exactly as the cycle model assumed.

The *link description* is generated from ``accel.protocol``, ``hw.engine`` and
``hw.counters`` (the one definition), never written by hand.
"""

from __future__ import annotations

from amaranth import Shape
from amaranth.lib import data

from accel.config import AccelConfig
from accel.counters import COUNTERS
from accel.layouts import buffer_shapes, descriptor_layout
from accel.protocol import (
    BUF_ARGS,
    CRC_BYTES,
    HEADER,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SOF,
    Cmd,
    Status,
    ident_layout,
    ident_value,
    nbytes,
    word_bytes,
)
from accel.tiling import tiles as tiling
from accel.workload import GemmWork
from models.encodings import TTFS_KINDS


def layout_json(shape) -> dict:
    """Fields of a layout: offset and width (bits), recursively; or a plain shape."""
    if isinstance(shape, data.StructLayout):
        return {"kind": "struct", "bits": shape.size,
                "fields": {n: {"offset": f.offset, **layout_json(f.shape)}
                           for n, f in shape}}
    if isinstance(shape, data.ArrayLayout):
        return {"kind": "array", "bits": shape.size, "length": shape.length,
                "element": layout_json(shape.elem_shape)}
    s = Shape.cast(shape)
    return {"kind": "int", "bits": s.width, "signed": s.signed}


def link_description(cfg: AccelConfig) -> dict:
    """Frame format, command and status codes, payload layouts, buffers and counters."""
    wb = word_bytes(cfg)
    return {
        "protocol_version": PROTOCOL_VERSION, "sof": SOF, "header": layout_json(HEADER),
        "crc": {"bytes": CRC_BYTES, "algorithm": "zlib.crc32 over header and payload, "
                                                 "little-endian"},
        "max_payload": MAX_PAYLOAD,
        "commands": {c.name: c.value for c in Cmd},
        "statuses": {s.name: s.value for s in Status},
        "buf_args": layout_json(BUF_ARGS), "descriptor": layout_json(descriptor_layout(cfg)),
        "ident": layout_json(ident_layout()), "ident_value": ident_value(cfg),
        "buffers": {b.name: {"id": b.value, "depth": depth, "word_bytes": wb[b],
                             "word": layout_json(shape)}
                    for b, (shape, depth) in buffer_shapes(cfg).items()},
        "counters": [{"index": i, "name": n, "meaning": c.meaning,
                      "bytes": nbytes(cfg.counter_bits)}
                     for i, (n, c) in enumerate(COUNTERS.items())],
    }


def compile_program(cfg: AccelConfig, works: list[GemmWork], relu: dict | None = None,
                    shifts: dict | None = None) -> list[dict]:
    """Per GEMM: tiling and the static descriptor fields (see module doc)."""
    prog = []
    for g in works:
        # the row groups are the host's (they follow the activations): one group stands in
        tiles = [{"n": [t.n0, t.n1], "k": [t.k0, t.k1], "w_base": 0, "n_active": t.n_active,
                  "resume": int(t.ki > 0), "keep": int(not t.last),
                  "ttfs": int(g.encoding.kind in TTFS_KINDS)}
                 for t in tiling(cfg, [(0, g.m)], g.n, g.k)]
        prog.append({"gemm": g.name, "head": g.head, "m": g.m, "k": g.k, "n": g.n,
                     "encoding": g.encoding.kind, "time_steps": g.encoding.time_steps,
                     "int_channels": g.n_int,
                     "requant_shift": (shifts or {}).get(g.name, 0), "tiles": tiles})
    return prog
