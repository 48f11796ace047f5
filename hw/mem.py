"""The accelerator's port to its external memory (the board's SDRAM).

The core sees the external memory as ``2 ** dram_addr_bits`` words of ``dram_bits`` (``AccelConfig``) through
one port shaped like LiteDRAM's native user port (``litedram.common.LiteDRAMNativePort``:
a command stream, a write-data stream and a read-data stream), so that the LiteDRAM core
(``hw.sdram``) and the behavioural model used in simulation (:class:`MemModel`) plug in
alike. Differences from LiteDRAM's port, all handled by the wrapper: no ``last`` on the
command (every command is one word) and no byte enables on the write data (whole words
only).

Rules of the port (those of LiteDRAM's native port):
- a write command is followed, in order, by one word on ``wdata``;
- a read command returns one word on ``rdata``, in command order;
- the memory may hold ``cmd.ready`` low for any number of cycles (refresh, row opens).
"""

from __future__ import annotations

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def mem_cmd_layout(addr_bits: int) -> data.StructLayout:
    """One command: the word address and whether it writes."""
    return data.StructLayout({"addr": addr_bits, "we": 1})


def mem_port_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """The port as the core (the initiator) sees it."""
    return wiring.Signature({
        "cmd": Out(stream.Signature(mem_cmd_layout(addr_bits))),
        "wdata": Out(stream.Signature(data_bits)),
        "rdata": In(stream.Signature(data_bits)),
    })
