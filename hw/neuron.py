"""Output neuron unit: the contract's fixed-point requantizer, one lane per cycle.

For each accumulator vector (one activation row of the tile) it computes, lane by lane,
``models.contract.requantize``: ``t = sat32(rshift_round(acc * mcol, S))``,
``u = rshift_round(t * mrow + bias, 15)``, optional ReLU, ``y = clamp(u + zp, lo, hi)``.
For a TTFS consumer ``y`` is the next layer's code: the neuron fires its single spike at
step ``T - y`` and stays silent for ``y < 1`` (silence threshold), which the sequencer's
event generator realises from ``y``; with ``raw`` the accumulator itself is passed on
(int32 partial sums, or results for the host).

Per-lane constants (``mcol``, ``bias``, ``zp``, ``lo``, ``hi``) come from a parameter
buffer through a read port; two pipelined multipliers (32x15 and 32x16 bits).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from models.contract import COL_MULT_BITS, MAX_REQ_SHIFT, REQ_MID_BITS, ROW_FRAC, ROW_MULT_BITS

from .arrays import acc_vector_layout
from .config import AccelConfig

#: Requantizer shift field width (the contract's shifts 0..MAX_REQ_SHIFT).
SHIFT_BITS = MAX_REQ_SHIFT.bit_length()


def param_layout() -> data.StructLayout:
    """One lane's requantizer constants (a row of the parameter buffer)."""
    return data.StructLayout({"mcol": unsigned(COL_MULT_BITS), "bias": signed(32),
                              "zp": signed(16), "lo": signed(32), "hi": signed(32)})


def row_in_layout(cfg: AccelConfig) -> data.StructLayout:
    """An accumulator row entering the unit, with its row multiplier."""
    return data.StructLayout({"acc": acc_vector_layout(cfg), "mrow": unsigned(ROW_MULT_BITS),
                              "n_active": unsigned((cfg.lanes).bit_length())})


def value_layout(cfg: AccelConfig) -> data.StructLayout:
    """One output value: lane, value, last lane of the row."""
    return data.StructLayout({"value": signed(cfg.acc_bits), "lane": unsigned(
        max(1, (cfg.lanes - 1).bit_length())), "last": unsigned(1)})


def _rshift_round(m: Module, x, shift, width: int):
    """``floor(x / 2**shift + 1/2)`` for a signed value and an unsigned shift signal."""
    half = Signal(signed(width + 1))
    m.d.comb += half.eq(Mux(shift == 0, 0, (1 << shift) >> 1))
    return (x + half) >> shift


class OutputUnit(wiring.Component):
    """Requantizes accumulator rows, one lane per cycle, four-stage pipeline."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        lane_bits = max(1, (cfg.lanes - 1).bit_length())
        super().__init__({
            "rows": In(stream.Signature(row_in_layout(cfg))),
            "out": Out(stream.Signature(value_layout(cfg))),
            "shift": In(SHIFT_BITS),
            "relu": In(1),
            "raw": In(1),
            "p_addr": Out(lane_bits),
            "p_en": Out(1),
            "p_data": In(param_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        lanes = cfg.lanes
        adv = Signal()  # the whole pipeline moves this cycle
        m.d.comb += adv.eq(~self.out.valid | self.out.ready)

        # stage 0: walk the lanes of the current row, read their constants
        row = Signal(row_in_layout(cfg))
        have = Signal()
        j = Signal(range(lanes))
        last = Signal()
        n_act = Signal.like(row.n_active)
        m.d.comb += last.eq(j + 1 >= n_act)
        m.d.comb += self.rows.ready.eq(adv & (~have | last))
        with m.If(self.rows.valid & self.rows.ready):
            m.d.sync += [row.eq(self.rows.payload), n_act.eq(self.rows.payload.n_active),
                         have.eq(self.rows.payload.n_active != 0), j.eq(0)]
        with m.Elif(adv & have):
            m.d.sync += j.eq(j + 1)
            with m.If(last):
                m.d.sync += have.eq(0)
        m.d.comb += [self.p_addr.eq(j), self.p_en.eq(adv)]

        acc_j = Signal(signed(cfg.acc_bits))
        m.d.comb += acc_j.eq(row.acc[j])
        # stage 1: constants arrive; first product
        s1 = dict(v=Signal(), acc=Signal(signed(cfg.acc_bits)), mrow=Signal(ROW_MULT_BITS),
                  lane=Signal(range(lanes)), last=Signal())
        with m.If(adv):
            m.d.sync += [s1["v"].eq(have), s1["acc"].eq(acc_j), s1["mrow"].eq(row.mrow),
                         s1["lane"].eq(j), s1["last"].eq(last)]
        p = self.p_data
        prod1 = Signal(signed(cfg.acc_bits + COL_MULT_BITS + 1))
        m.d.comb += prod1.eq(s1["acc"] * p.mcol)
        t_full = _rshift_round(m, prod1, self.shift, cfg.acc_bits + COL_MULT_BITS + 1)
        lim = 2 ** (REQ_MID_BITS - 1)
        t_sat = Mux(t_full >= lim, lim - 1, Mux(t_full < -lim, -lim, t_full))
        # stage 2
        s2 = dict(v=Signal(), t=Signal(signed(REQ_MID_BITS)), acc=Signal(signed(cfg.acc_bits)),
                  mrow=Signal(ROW_MULT_BITS), bias=Signal(signed(32)), zp=Signal(signed(16)),
                  lo=Signal(signed(32)), hi=Signal(signed(32)), lane=Signal(range(lanes)),
                  last=Signal())
        with m.If(adv):
            m.d.sync += [s2["v"].eq(s1["v"]), s2["t"].eq(t_sat), s2["acc"].eq(s1["acc"]),
                         s2["mrow"].eq(s1["mrow"]), s2["bias"].eq(p.bias), s2["zp"].eq(p.zp),
                         s2["lo"].eq(p.lo), s2["hi"].eq(p.hi), s2["lane"].eq(s1["lane"]),
                         s2["last"].eq(s1["last"])]
        prod2 = Signal(signed(REQ_MID_BITS + ROW_MULT_BITS + 2))
        m.d.comb += prod2.eq(s2["t"] * Cat(s2["mrow"], 0).as_signed() + s2["bias"])
        # stage 3: round, ReLU, zero point, clamp
        u = Signal(signed(REQ_MID_BITS + ROW_MULT_BITS + 2))
        m.d.comb += u.eq((prod2 + (1 << (ROW_FRAC - 1))) >> ROW_FRAC)
        ur = Mux(self.relu & (u < 0), 0, u)
        y = Signal(signed(REQ_MID_BITS + ROW_MULT_BITS + 3))
        m.d.comb += y.eq(ur + s2["zp"])
        yc = Mux(y < s2["lo"], s2["lo"], Mux(y > s2["hi"], s2["hi"], y))
        with m.If(adv):
            m.d.sync += [self.out.valid.eq(s2["v"]),
                         self.out.payload.value.eq(Mux(self.raw, s2["acc"], yc)),
                         self.out.payload.lane.eq(s2["lane"]),
                         self.out.payload.last.eq(s2["last"])]
        return m
