"""Sizing: the choice fits, balances the arrays, honours pins, and refuses what cannot fit."""

from dataclasses import replace

import pytest

from accel.bram import dp16kd_blocks, logic_bits
from accel.config import PRESETS
from accel.workload import measure, sample_ids
from gen.resources import TARGETS, Budget, estimate
from gen.sizing import Candidate, DoesNotFit, evaluate, size


@pytest.fixture(scope="module")
def works(tiny_llama_cm, tiny_llama):
    cm, lm = tiny_llama_cm, tiny_llama
    return measure(cm, sample_ids(lm, 32))[0]


def test_choice_fits_and_is_near_the_fastest(works):
    s = size(works, TARGETS["ulx3s-85f"])
    assert not TARGETS["ulx3s-85f"].over(estimate(s.chosen.cfg))
    fitting = [c for c in s.candidates if not c.refused]
    fastest = min(c.cycles for c in fitting)
    assert s.chosen.cycles <= fastest * 1.02
    # nothing cheaper is as fast: the MAC array is not oversized for the model's work split
    cheaper = [c for c in fitting if c.res.lut4 + 100 * c.res.dsp
               < s.chosen.res.lut4 + 100 * s.chosen.res.dsp]
    assert all(c.cycles > fastest * 1.02 for c in cheaper)
    assert s.chosen.bound in ("spike array", "MAC array", "output unit")
    assert sum(p.cycles for p in s.predictions) == s.chosen.cycles


def test_a_larger_budget_is_never_slower(works):
    small = size(works, Budget(30_000, 40, 100))
    large = size(works, TARGETS["ulx3s-85f"])
    assert large.chosen.cycles <= small.chosen.cycles
    assert estimate(small.chosen.cfg).lut4 <= 30_000 * 0.8


def test_pinned_fields_are_honoured(works):
    s = size(works, TARGETS["ulx3s-85f"], fixed={"lanes": 16, "mac_units": 2})
    assert (s.chosen.cfg.lanes, s.chosen.cfg.mac_units) == (16, 2)
    assert len(s.candidates) == 1


def test_a_model_that_cannot_fit_is_refused_with_the_overrun(works):
    with pytest.raises(DoesNotFit, match=r"DP16KD \d+ > 5, over by \d+"):
        size(works, Budget(83_640, 156, 5))
    with pytest.raises(DoesNotFit, match=r"LUT4 \d+ > 800 .*over by \d+"):
        size(works, Budget(1000, 156, 208))


def test_dp16kd_packing():
    assert dp16kd_blocks(36, 512) == 1
    assert dp16kd_blocks(512, 1024) == 29  # 18-bit wide mode, 1024 deep
    assert dp16kd_blocks(16, 64) == 0  # small: logic
    assert dp16kd_blocks(1, 16384) == 1
    # columns at most two blocks deep (accel.bram): 1-bit columns of two 16K blocks, not
    # 2048 x 9 blocks sixteen deep (32)
    assert dp16kd_blocks(17, 32768) == 34
    # deeper than two 16K blocks: as shallow as it goes, four deep, not refused
    assert dp16kd_blocks(17, 65536) == 68
    assert estimate(replace(PRESETS["tiny"], spike_event_depth=65536)).bram > 0
    # a last column small enough for logic takes no block
    assert (dp16kd_blocks(127, 96), logic_bits(127, 96)) == (3, 19 * 96)
    # up to 64 deep (a 64-lane build's parameter rows) in LUT RAM, from 65 in blocks
    assert (dp16kd_blocks(127, 64), logic_bits(127, 64)) == (0, 127 * 64)
    assert (dp16kd_blocks(127, 65), logic_bits(127, 65)) == (3, 19 * 65)


def test_row_slots_follow_the_rows_unless_pinned(works):
    s = size(works, TARGETS["ulx3s-85f"], fixed={"lanes": 16, "mac_units": 2, "max_rows": 8})
    assert (s.chosen.cfg.max_rows, s.chosen.cfg.spike_rows) == (8, 8)
    s = size(works, TARGETS["ulx3s-85f"], fixed={"lanes": 16, "mac_units": 2, "spike_rows": 2})
    assert s.chosen.cfg.spike_rows == 2
    # fewer rows than 16 (pinned: since ACC holds a word per lane, a block-RAM budget no
    # longer halves the rows before the other buffers) take as many slots as rows
    s = size(works, Budget(83_640, 156, 40), fixed={"lanes": 16, "mac_units": 2,
                                                    "max_rows": 4})
    assert s.chosen.cfg.spike_rows <= s.chosen.cfg.max_rows
    assert s.chosen.cfg.max_rows == 4 and s.chosen.cfg.spike_rows == 4


def test_the_energy_objective_takes_the_least_energy_and_says_so(works):
    from accel.counters import sram_bits

    def sram(cfg, preds):  # an energy function: the SRAM bits the predictions move
        return float(sum(sram_bits(cfg, p.traffic()) for p in preds))

    s = size(works, TARGETS["ulx3s-85f"], objective="energy", energy_of=sram)
    fitting = [c for c in s.candidates if not c.refused]
    assert all(c.energy_pj is not None for c in fitting)
    assert s.chosen.energy_pj == min(c.energy_pj for c in fitting)
    assert s.chosen.energy_pj == sram(s.chosen.cfg, s.predictions)
    assert "least energy" in s.why
    # the speed objective picks a faster (wider) design here, moving more SRAM bits
    fast = size(works, TARGETS["ulx3s-85f"])
    assert fast.chosen.cfg != s.chosen.cfg
    assert fast.chosen.cycles <= s.chosen.cycles
    assert sram(fast.chosen.cfg, fast.predictions) >= s.chosen.energy_pj
    assert sram(fast.chosen.cfg, fast.predictions) > s.chosen.energy_pj
    with pytest.raises(ValueError, match="objective must be one of speed, energy"):
        size(works, TARGETS["ulx3s-85f"], objective="area")
    with pytest.raises(ValueError, match="needs an energy function"):
        size(works, TARGETS["ulx3s-85f"], objective="energy")


SHRINKABLE = ("weight_depth", "max_rows", "spike_event_depth", "mac_event_depth")


def _cycles_of(cfg, works):
    return sum(p.cycles for p in evaluate(Candidate(cfg, estimate(cfg)), works))


@pytest.mark.parametrize("share", [0.5, 0.7, 0.85])
def test_buffers_shrink_where_it_costs_the_fewest_cycles(works, share):
    fixed = {"lanes": 16, "mac_units": 4}
    full = size(works, TARGETS["ulx3s-85f"], fixed=fixed).chosen
    budget = Budget(83_640, 156, int(full.res.bram * share))
    got = size(works, budget, fixed=fixed).chosen
    assert not budget.over(got.res) and got.cfg != full.cfg
    # no halving it took can be undone within the budget for fewer cycles
    for f in SHRINKABLE:
        if getattr(got.cfg, f) < getattr(full.cfg, f):
            grown = {f: getattr(got.cfg, f) * 2}
            if f == "max_rows":
                grown["spike_rows"] = min(full.cfg.spike_rows, grown[f])
            bigger = replace(got.cfg, **grown)
            if not budget.over(estimate(bigger)):
                assert _cycles_of(bigger, works) >= got.cycles, f
    # and no single buffer halved alone until the design fits is faster (the rule
    # before: the biggest saving first, which halved the weight buffer at 64 lanes)
    for f in SHRINKABLE:
        cfg = full.cfg
        while budget.over(estimate(cfg)) and getattr(cfg, f) > 64:
            half = {f: getattr(cfg, f) // 2}
            if f == "max_rows":
                half["spike_rows"] = min(cfg.spike_rows, half[f])
            cfg = replace(cfg, **half)
        if not budget.over(estimate(cfg)):
            try:
                alone = _cycles_of(cfg, works)
            except ValueError:  # a row no longer fits its event buffers
                continue
            assert got.cycles <= alone, f
