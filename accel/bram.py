"""How a buffer maps onto the ECP5's block RAMs (DP16KD), defined once for the gateware,
which builds each buffer in columns of this width (``hw.bram.ColumnMemory``), and the
resource model, which counts their blocks (``gen.resources``).

A DP16KD holds 18 Kbit in one of six aspect ratios. A memory deeper than one block stacks
blocks, and its read passes a mux across them: at 64 lanes a 32,768-deep event buffer
(2048 x 9 blocks, 16 deep) made a 16-to-1 mux after the blocks' 5.8 ns clock-to-data, the
critical path (60.3 MHz). A buffer is therefore built of columns narrow enough that at
most :data:`MAX_DEEP` blocks stack, at the cost of a few blocks where the narrow ratios
waste bits (the 32,768 x 17 spike-event buffer: 34 blocks instead of 32).
"""

from __future__ import annotations

import math

#: DP16KD aspect ratios (width, depth) in pseudo-dual-port mode.
DP16KD_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
#: Memories smaller than this many bits, or at most this deep, are built from logic (LUT
#: RAM): the gateware marks such a column so (``hw.bram.ColumnMemory``, ``ram_style``),
#: whatever Yosys would pick. Up to 64 deep: the parameter and start buffers of a 64-lane
#: build (one row a lane) take LUT RAM instead of 8 DP16KD, which pays for the weight
#: buffer's 1,024 rows there (Yosys alone put them in block RAM).
LOGIC_MEM_BITS = 2048
LOGIC_MEM_DEPTH = 64
#: Blocks stacked in a column at most (a read's mux across blocks: 2-to-1, one LUT).
MAX_DEEP = 2


def in_logic(width: int, depth: int) -> bool:
    """Whether a ``width x depth`` memory is built from logic rather than block RAM."""
    return width * depth < LOGIC_MEM_BITS or depth <= LOGIC_MEM_DEPTH


def column_mode(width: int, depth: int) -> tuple[int, int]:
    """The DP16KD ratio ``(width, depth)`` of a ``width x depth`` memory's columns: the
    fewest blocks among the ratios at most :data:`MAX_DEEP` blocks deep (the shallowest on
    a tie). A memory deeper than ``MAX_DEEP x 16,384`` stacks as few as it can (16K x 1)."""
    deep = max(MAX_DEEP, min(math.ceil(depth / d) for _, d in DP16KD_MODES))
    fits = [(w, d) for w, d in DP16KD_MODES if math.ceil(depth / d) <= deep]
    return min(fits, key=lambda m: (math.ceil(width / m[0]) * math.ceil(depth / m[1]),
                                    math.ceil(depth / m[1])))


def columns(width: int, depth: int) -> list[int]:
    """The widths of a ``width x depth`` memory's columns, low bits first: the
    :func:`column_mode` width, the last one what is left (one column if built from logic)."""
    if in_logic(width, depth):
        return [width]
    w = column_mode(width, depth)[0]
    return [min(w, width - lo) for lo in range(0, width, w)]


def dp16kd_blocks(width: int, depth: int) -> int:
    """DP16KD blocks for one copy (one read port) of a ``width x depth`` memory, built in
    :func:`columns`; a column small enough for logic (the last) takes none."""
    total = 0
    for c in columns(width, depth):
        if not in_logic(c, depth):
            w, d = column_mode(c, depth)
            total += math.ceil(c / w) * math.ceil(depth / d)
    return total


def logic_bits(width: int, depth: int) -> int:
    """Bits of one copy of a ``width x depth`` memory built from logic (its columns that
    are too small for a block RAM)."""
    return sum(c * depth for c in columns(width, depth) if in_logic(c, depth))
