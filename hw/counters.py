"""Event counters: the one counter map, and the counter file gateware.

Every counter is ``counter_bits`` wide (>= 48), counts up by a per-cycle increment, is
reset together with the others, and is read by index over the link (READ_COUNTERS returns
them all, in :data:`COUNTERS` order, each as ``counter_bits/8`` little-endian bytes).
Definitions match the golden model's events (``docs/contract.md``); the relation per GEMM
tile with ``n`` active lanes is in the right-hand column.
"""

from __future__ import annotations

from amaranth import Module, Shape, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .engine import BufId, buffer_shapes

#: name -> definition. The order is the wire order of READ_COUNTERS.
COUNTERS: dict[str, str] = {
    "cycles": "clock cycles since reset",
    "busy": "cycles a descriptor was running",
    "spike_busy": "cycles the spike array had an event in flight",
    "mac_busy": "cycles the MAC array had a weight row in flight",
    "stall": "cycles a descriptor was running with both arrays idle",
    "spikes": "unit spike events executed (golden spike_units)",
    "steps": "TTFS membrane steps executed (golden acc_step / N)",
    "acc_spike": "lane accumulates caused by spikes, spikes x n (golden acc_spike)",
    "acc_step": "lane accumulates V += I, steps x n (golden acc_step)",
    "macs": "multiply-accumulates, MAC rows x n (golden macs)",
    "w_rd": "weight-buffer row reads by both arrays",
    "ev_rd": "event-buffer reads (spike and MAC)",
    "acc_rd": "accumulator-buffer row reads",
    "acc_wr": "accumulator-buffer row writes",
    "out_wr": "output-buffer writes",
    "host_wr": "buffer words written by the host",
    "host_rd": "buffer words read by the host",
    "descriptors": "descriptors run",
    "link_rx": "bytes received on the host link",
    "link_tx": "bytes sent on the host link",
    "frame_errors": "bad frames (CRC, length, timeout)",
    "faults": "RUNs the engine stopped (watchdog, inconsistent events; answered ERR_FAULT)",
}
INDEX = {name: i for i, name in enumerate(COUNTERS)}

#: Counters that must equal a golden event count (``models.contract.Events`` field), under
#: the device's tiling (``docs/hw.md``).
GOLDEN_EVENTS = {"spikes": "spike_units", "acc_spike": "acc_spike", "acc_step": "acc_step",
                 "macs": "macs", "out_wr": "outs"}

#: Datapath buffer-traffic counters (what the energy model charges as SRAM accesses).
TRAFFIC = ("w_rd", "ev_rd", "acc_rd", "acc_wr", "out_wr")


def sram_bits(cfg: AccelConfig, traffic: dict) -> int:
    """Bits the datapath moves through on-chip buffers for :data:`TRAFFIC` counts (measured
    by the counters, or predicted by ``gen.cycles``): weight rows read, event words read
    (the wider of the two event words), accumulator rows read and written, outputs written.
    Host transfers are link traffic and are reported as bytes, not here."""
    w = {b: Shape.cast(s).width for b, (s, _) in buffer_shapes(cfg).items()}
    return (traffic["w_rd"] * w[BufId.WEIGHTS]
            + traffic["ev_rd"] * max(w[BufId.SPIKE_EV], w[BufId.MAC_EV])
            + (traffic["acc_rd"] + traffic["acc_wr"]) * w[BufId.ACC]
            + traffic["out_wr"] * w[BufId.OUT])


class CounterFile(wiring.Component):
    """All counters; ``inc[name]`` is added every cycle; ``clear`` zeroes them all."""

    def __init__(self, cfg: AccelConfig, inc_bits: int):
        self.cfg = cfg
        members = {f"inc_{n}": In(inc_bits) for n in COUNTERS}
        members.update({"clear": In(1), "sel": In(range(len(COUNTERS))),
                        "value": Out(cfg.counter_bits)})
        super().__init__(members)

    def inc(self, name: str):
        """The increment input of counter ``name``."""
        return getattr(self, f"inc_{name}")

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(unsigned(self.cfg.counter_bits), name=f"c_{n}") for n in COUNTERS]
        for n, reg in zip(COUNTERS, regs, strict=True):
            with m.If(self.clear):
                m.d.sync += reg.eq(0)
            with m.Else():
                m.d.sync += reg.eq(reg + self.inc(n))
        with m.Switch(self.sel):
            for i, reg in enumerate(regs):
                with m.Case(i):
                    m.d.comb += self.value.eq(reg)
        return m
