"""The one counter map: every event counter's name, meaning and wire order, which golden
event each must equal, which count buffer traffic, and the SRAM bits that traffic moves.
The gateware's counter file (``hw/counters.py``), the generator's cycle model and reports
and the host's reports all derive from it.
"""

from __future__ import annotations

from amaranth import Shape

from .config import AccelConfig
from .layouts import BufId, buffer_shapes

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
    by the counters, or predicted by ``accel.cycles``): weight rows read, event words read
    (the wider of the two event words), accumulator rows read and written, outputs written.
    Host transfers are link traffic and are reported as bytes, not here."""
    w = {b: Shape.cast(s).width for b, (s, _) in buffer_shapes(cfg).items()}
    return (traffic["w_rd"] * w[BufId.WEIGHTS]
            + traffic["ev_rd"] * max(w[BufId.SPIKE_EV], w[BufId.MAC_EV])
            + (traffic["acc_rd"] + traffic["acc_wr"]) * w[BufId.ACC]
            + traffic["out_wr"] * w[BufId.OUT])
