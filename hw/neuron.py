"""Output neuron unit: the contract's fixed-point requantizer, one lane per cycle.

For each accumulator (the combiner sends a row of the tile lane by lane) it computes
``models.contract.requantize``: ``t = sat32(rshift_round(acc * mcol, S))``,
``u = rshift_round(t * mrow + bias, 15)``, optional ReLU, ``y = clamp(u + zp, lo, hi)``.
For a TTFS consumer ``y`` is the next layer's code: the neuron fires its single spike at
step ``T - y`` and stays silent for ``y < 1`` (silence threshold), which the sequencer's
event generator realises from ``y``; with ``raw`` the accumulator itself is passed on
(int32 partial sums, or results for the host).

Per-lane constants (``mcol``, ``bias``, ``zp``, ``lo``, ``hi``) come from a parameter
buffer through a read port, and the row multiplier ``mrow`` comes with the lane; two
pipelined multipliers (32x15 and 32x16 bits, the second as two 16-bit halves), each
followed by a register.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accel.config import AccelConfig
from accel.layouts import SHIFT_BITS, lane_bits, lane_in_layout, param_layout, value_layout
from models.contract import COL_MULT_BITS, REQ_MID_BITS, ROW_FRAC, ROW_MULT_BITS

#: The low bits of the middle value ``t`` in the second product's low half.
HALF = 16


def _shift_for_round(x, shift):
    """The first half of ``floor(x / 2**shift + 1/2)`` (signed ``x``, unsigned ``shift``):
    ``x >> (shift - 1)``, or ``x`` when ``shift`` is 0. :func:`_finish_round` completes it:
    ``floor((x + 2**(s-1)) / 2**s) == floor((floor(x / 2**(s-1)) + 1) / 2)``, so the barrel
    shifter and the rounding add sit in different pipeline stages (timing)."""
    return Mux(shift == 0, x, x >> (shift - 1)[:len(shift)])


def _finish_round(z, shift):
    """The second half of the rounding shift (see :func:`_shift_for_round`)."""
    return Mux(shift == 0, z, (z + 1) >> 1)


class OutputUnit(wiring.Component):
    """Requantizes accumulators, one lane per cycle, nine-stage pipeline (the constants are
    registered as they come from the parameter buffer, each multiply has its own stage (the
    second as two halves, summed in the next),
    the rounding shift is split in two, and the clamp follows the rounding and zero point
    in a stage of its own, for timing).
    Takes a lane (``inp``) whenever it can move and reads that lane's constants from the
    parameter buffer at once (unless ``raw``: then it passes the accumulator on and reads
    nothing)."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "inp": In(stream.Signature(lane_in_layout(cfg))),
            "out": Out(stream.Signature(value_layout(cfg))),
            "shift": In(SHIFT_BITS),
            "relu": In(1),
            "raw": In(1),
            "p_addr": Out(lane_bits(cfg)),
            "p_en": Out(1),
            "p_data": In(param_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        adv = Signal()  # the whole pipeline moves this cycle
        m.d.comb += adv.eq(~self.out.valid | self.out.ready)
        inp = self.inp.payload
        m.d.comb += [self.inp.ready.eq(adv), self.p_addr.eq(inp.lane),
                     self.p_en.eq(adv & self.inp.valid & ~self.raw)]

        def stage(name: str, values: dict) -> dict:
            """Registers for ``values`` (name -> value), loaded whenever the pipeline moves."""
            regs = {}
            for key, val in values.items():
                regs[key] = Signal.like(val, name=f"{name}_{key}") if isinstance(val, Signal) \
                    else Signal(val.shape(), name=f"{name}_{key}")
                with m.If(adv):
                    m.d.sync += regs[key].eq(val)
            return regs

        # stage 1: the lane's constants arrive from the parameter buffer
        s1 = stage("s1", dict(v=self.inp.valid, acc=inp.acc, mrow=inp.mrow, lane=inp.lane,
                              last=inp.last))
        # stage 1p: the constants registered (the parameter buffer's block RAM output ends
        # in a register, for timing)
        p = self.p_data
        s1p = stage("s1p", {**s1, "mcol": p.mcol, "bias": p.bias, "zp": p.zp, "lo": p.lo,
                            "hi": p.hi})
        # stage 1b: first product, registered (a 32 x 15 multiply spans several DSPs)
        prod1 = Signal(signed(cfg.acc_bits + COL_MULT_BITS + 1))
        m.d.comb += prod1.eq(s1p["acc"] * s1p["mcol"])
        s1b = stage("s1b", {**{k: s1p[k] for k in ("v", "acc", "mrow", "lane", "last", "bias",
                                                     "zp", "lo", "hi")}, "prod": prod1})
        # stage 2s: the barrel shift, registered; stage 2: round, saturate to the middle width
        s2s = stage("s2s", {**{k: s1b[k] for k in ("v", "acc", "mrow", "lane", "last", "bias",
                                                    "zp", "lo", "hi")},
                            "z": _shift_for_round(s1b["prod"], self.shift)})
        t_full = _finish_round(s2s["z"], self.shift)
        lim = 2 ** (REQ_MID_BITS - 1)
        t_sat = Signal(signed(REQ_MID_BITS))
        m.d.comb += t_sat.eq(Mux(t_full >= lim, lim - 1, Mux(t_full < -lim, -lim, t_full)))
        s2 = stage("s2", {**{k: s2s[k] for k in ("v", "acc", "mrow", "lane", "last", "bias", "zp",
                                                   "lo", "hi")}, "t": t_sat})
        # stage 2p: the second product's two halves, each a multiply that fits one DSP
        # (18 x 18), registered; stage 2b: their sum plus the bias, registered. One 32 x 16
        # multiply spans two DSPs and the add of their partial products, with the bias
        # after it: the 16-lane critical path in one stage.
        t = s2["t"]
        mrow = Cat(s2["mrow"], 0).as_signed()
        p_lo = Signal(signed(HALF + ROW_MULT_BITS + 2))
        p_hi = Signal(signed(REQ_MID_BITS - HALF + ROW_MULT_BITS + 1))
        m.d.comb += [p_lo.eq(Cat(t[:HALF], 0).as_signed() * mrow),
                     p_hi.eq(t[HALF:].as_signed() * mrow)]
        s2p = stage("s2p", {**{k: s2[k] for k in ("v", "acc", "lane", "last", "bias", "zp", "lo",
                                                    "hi")}, "p_lo": p_lo, "p_hi": p_hi})
        prod2 = Signal(signed(REQ_MID_BITS + ROW_MULT_BITS + 2))
        m.d.comb += prod2.eq((s2p["p_hi"] << HALF) + s2p["p_lo"] + s2p["bias"])
        s2b = stage("s2b", {**{k: s2p[k] for k in ("v", "acc", "lane", "last", "zp", "lo",
                                                     "hi")}, "prod": prod2})
        # stage 3: round, ReLU, zero point, registered
        u = Signal(signed(REQ_MID_BITS + ROW_MULT_BITS + 2))
        m.d.comb += u.eq((s2b["prod"] + (1 << (ROW_FRAC - 1))) >> ROW_FRAC)
        ur = Mux(self.relu & (u < 0), 0, u)
        y = Signal(signed(REQ_MID_BITS + ROW_MULT_BITS + 3))
        m.d.comb += y.eq(ur + s2b["zp"])
        s3 = stage("s3", {**{k: s2b[k] for k in ("v", "acc", "lane", "last", "lo", "hi")},
                          "y": y})
        # stage 4: clamp (three carry chains in one stage were the 16-lane critical path)
        yc = Mux(s3["y"] < s3["lo"], s3["lo"], Mux(s3["y"] > s3["hi"], s3["hi"], s3["y"]))
        with m.If(adv):
            m.d.sync += [self.out.valid.eq(s3["v"]),
                         self.out.payload.value.eq(Mux(self.raw, s3["acc"], yc)),
                         self.out.payload.lane.eq(s3["lane"]),
                         self.out.payload.last.eq(s3["last"])]
        return m
