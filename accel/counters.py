"""The one counter map: every event counter's name, meaning and wire order, which golden
event each must equal, which count buffer traffic, and the SRAM bits that traffic moves.
The gateware's counter file (``hw/counters.py``), the generator's cycle model and reports
and the host's reports all derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Shape

from .config import AccelConfig
from .layouts import BufId, buffer_shapes


@dataclass(frozen=True)
class Counter:
    """One event counter: what it counts and where its increments come from.

    ``sources`` are 1-bit strobes added every cycle, named ``block.strobe``: ``engine.*``
    (``hw.engine.STROBES``), ``link.*`` (the link's byte and error strobes), ``exec.*``
    (the command executor's), ``dma.*`` (the LOAD copier's), or ``one`` (every cycle).
    ``scaled``: each strobe counts the running tile's active lanes instead of 1 (lane
    operations). ``golden``: the ``models.contract.Events`` field it must equal under the
    device's tiling. ``traffic``: a datapath buffer access (what the energy model charges
    as SRAM traffic)."""

    meaning: str
    sources: tuple[str, ...]
    scaled: bool = False
    golden: str | None = None
    traffic: bool = False


#: name -> counter. The order is the wire order of READ_COUNTERS. ``hw.top`` wires every
#: counter from its sources; the reports, the cycle model and the link description read it.
COUNTERS: dict[str, Counter] = {
    "cycles": Counter("clock cycles since reset", ("one",)),
    "busy": Counter("cycles a descriptor was running", ("engine.busy",)),
    "spike_busy": Counter("cycles the spike array had an event in flight",
                          ("engine.spike_busy",)),
    "mac_busy": Counter("cycles the MAC array had a weight row in flight",
                        ("engine.mac_busy",)),
    "stall": Counter("cycles a descriptor was running with both arrays idle",
                     ("engine.stall",)),
    "spikes": Counter("unit spike events executed (golden spike_units)", ("engine.spike",),
                      golden="spike_units"),
    "steps": Counter("TTFS membrane steps executed (golden acc_step / N)", ("engine.step",)),
    "acc_spike": Counter("lane accumulates caused by spikes, spikes x n (golden acc_spike)",
                         ("engine.spike",), scaled=True, golden="acc_spike"),
    "acc_step": Counter("lane accumulates V += I, steps x n (golden acc_step)",
                        ("engine.step",), scaled=True, golden="acc_step"),
    "macs": Counter("multiply-accumulates, MAC rows x n (golden macs)", ("engine.mac_row",),
                    scaled=True, golden="macs"),
    "w_rd": Counter("weight-buffer row reads by both arrays (the narrow half of the row)",
                    ("engine.w_rd_spike", "engine.w_rd_mac"), traffic=True),
    "w_rd_hi": Counter("weight-buffer row reads that also read the high half (wide tiles)",
                       ("engine.w_rd_hi_spike", "engine.w_rd_hi_mac"), traffic=True),
    "spike_ev_rd": Counter("spike-event buffer reads", ("engine.spike_ev_rd",), traffic=True),
    "mac_ev_rd": Counter("MAC-event buffer reads", ("engine.mac_ev_rd",), traffic=True),
    "acc_rd": Counter("accumulator-buffer word reads (lanes resuming a K tile)",
                      ("engine.acc_rd",), traffic=True),
    "acc_wr": Counter("accumulator-buffer word writes (lanes kept for the next K tile)",
                      ("engine.acc_wr",), traffic=True),
    "start_rd": Counter("start-value buffer reads (lanes starting a tile's first K tile)",
                        ("engine.start_rd",), traffic=True),
    "par_rd": Counter("parameter-buffer reads (lanes requantized)", ("engine.par_rd",),
                      traffic=True),
    "out_wr": Counter("output-buffer writes", ("engine.out_wr",), golden="outs",
                      traffic=True),
    "host_wr": Counter("buffer words written by the host", ("exec.host_wr",)),
    "enc_wr": Counter("spike-event words the spike encoder wrote (EXPAND)",
                      ("enc.word_wr",)),
    "enc_busy": Counter("cycles the spike encoder ran (EXPAND; accel.encoder.encode_cycles)",
                        ("enc.busy",)),
    "host_rd": Counter("buffer words read by the host", ("exec.host_rd",)),
    "descriptors": Counter("descriptors run", ("exec.descriptors",)),
    "loads": Counter("LOADs started (copies from the external memory)", ("exec.loads",)),
    "dram_rd": Counter("external-memory words read (by LOADs and the host)",
                       ("dma.word_rd", "exec.dram_rd")),
    "dram_wr": Counter("external-memory words written by the host", ("exec.dram_wr",)),
    "load_wait": Counter("cycles a command waited for a LOAD to finish", ("exec.load_wait",)),
    "store_busy": Counter("cycles a STORE ran (its gather from OUT and its memory writes)",
                          ("exec.store_busy",)),
    "load_busy": Counter("cycles a LOAD copy ran (the external memory's busy time)",
                         ("dma.busy",)),
    "load_overlap": Counter("cycles a LOAD ran while a descriptor ran (a weight tile "
                            "loaded beside the run)", ("exec.load_overlap",)),
    "link_rx": Counter("bytes received on the host link", ("link.rx_byte",)),
    "link_tx": Counter("bytes sent on the host link", ("link.tx_byte",)),
    "frame_errors": Counter("bad frames (CRC, length, timeout)", ("link.frame_err",)),
    "faults": Counter("RUNs the engine stopped (watchdog, inconsistent events; answered "
                      "ERR_FAULT)", ("engine.fault",)),
}
INDEX = {name: i for i, name in enumerate(COUNTERS)}

#: Counters that must equal a golden event count (``models.contract.Events`` field), under
#: the device's tiling (``docs/hw.md``).
GOLDEN_EVENTS = {n: c.golden for n, c in COUNTERS.items() if c.golden}

#: Datapath buffer-traffic counters (what the energy model charges as SRAM accesses).
TRAFFIC = tuple(n for n, c in COUNTERS.items() if c.traffic)


def sram_bits(cfg: AccelConfig, traffic: dict) -> int:
    """Bits the datapath moves through on-chip buffers for :data:`TRAFFIC` counts (measured
    by the counters, or predicted by ``accel.cycles``), each access at its buffer's real
    width: weight rows read (the narrow half always, the high half for wide tiles), spike
    and MAC event words read, accumulator words read and written, start values and
    requantizer constants read, outputs written. Host
    transfers are link traffic and are reported as bytes, not here."""
    w = {b: Shape.cast(s).width for b, (s, _) in buffer_shapes(cfg).items()}
    narrow = cfg.lanes * cfg.narrow_bits
    return (traffic["w_rd"] * narrow + traffic["w_rd_hi"] * (w[BufId.WEIGHTS] - narrow)
            + traffic["spike_ev_rd"] * w[BufId.SPIKE_EV]
            + traffic["mac_ev_rd"] * w[BufId.MAC_EV]
            + (traffic["acc_rd"] + traffic["acc_wr"]) * w[BufId.ACC]
            + traffic["start_rd"] * w[BufId.START] + traffic["par_rd"] * w[BufId.PARAMS]
            + traffic["out_wr"] * w[BufId.OUT])
