"""The sizer's clock: it chooses only designs no larger than one placed and routed at the
clock (``gen.placed``), keeps a pinned one with its clock called unproven, and refuses
with a way out when nothing placed met the clock."""

import json

import pytest

from accel.workload import measure, sample_ids
from gen.__main__ import main
from gen.cache import design_digest
from gen.placed import PLACED_JSON, SIZING_CLOCK_MHZ, Envelope, Placed, load, row, stale_warning
from gen.resources import TARGETS
from gen.sizing import DoesNotFit, size


@pytest.fixture(scope="module")
def works(tiny_llama_cm, tiny_llama):
    return measure(tiny_llama_cm, sample_ids(tiny_llama, 32))[0]


@pytest.fixture(scope="module")
def free(works):
    """The sizing with no clock: every candidate that fits the die."""
    return size(works, TARGETS["ulx3s-85f"])


def _placed(free, lanes, units, fmax):
    c = next(c for c in free.candidates if (c.cfg.lanes, c.cfg.mac_units) == (lanes, units))
    return Placed(f"{lanes}/{units}", "test", "none", 1, fmax, c.cfg, "0" * 64)


def test_the_choice_is_the_fastest_within_the_designs_that_met_the_clock(works, free):
    # the free choice is wider than 8 lanes / 2 units, so a clock only that design met
    # changes it
    assert (free.chosen.cfg.lanes, free.chosen.cfg.mac_units) != (8, 2)
    wide = free.chosen.cfg
    rows = (_placed(free, 8, 2, 90.0), _placed(free, wide.lanes, wide.mac_units, 60.0))
    s = size(works, TARGETS["ulx3s-85f"], clock=Envelope.at(75.0, rows))
    small = rows[0]
    for c in s.candidates:
        inside = c.res.lut4 <= small.res.lut4 and c.res.dsp <= small.res.dsp
        timed = [r for r in c.refused if r.startswith("timing:")]
        assert bool(timed) == (not inside and not TARGETS["ulx3s-85f"].over(c.res)), c.cfg
        assert (c.placed is small) == inside
    assert s.chosen.placed is small and "no larger than 8/2, placed at 90 MHz" in s.why
    inside = [c for c in s.candidates if not c.refused]
    assert s.chosen.cycles <= min(c.cycles for c in inside) * 1.02
    # at 60 MHz the free choice vouches for itself: the choice is the free one again
    low = size(works, TARGETS["ulx3s-85f"], clock=Envelope.at(60.0, rows))
    assert low.chosen.cfg == free.chosen.cfg and low.chosen.cycles < s.chosen.cycles


def test_a_pinned_design_outside_the_envelope_is_built_and_called_unproven(works, free):
    rows = (_placed(free, 8, 2, 90.0),)
    s = size(works, TARGETS["ulx3s-85f"], fixed={"lanes": 32, "mac_units": 8},
             clock=Envelope.at(75.0, rows))
    assert (s.chosen.cfg.lanes, s.chosen.cfg.mac_units) == (32, 8)
    assert s.chosen.placed is None and "its clock is unproven" in s.why
    # pinning lanes alone still explores the units, so the envelope still holds
    with pytest.raises(DoesNotFit, match=r"timing: larger than every design placed at 75 MHz"
                                         r".*pin lanes and mac_units \(--fix\)"):
        size(works, TARGETS["ulx3s-85f"], fixed={"lanes": 32}, clock=Envelope.at(75.0, rows))


def test_a_clock_no_design_met_is_refused_saying_so(works, free):
    rows = (_placed(free, 8, 2, 90.0),)
    with pytest.raises(DoesNotFit, match=r"no larger than a design placed at 120 MHz.*"
                                         r"timing: no placed design met 120 MHz"):
        size(works, TARGETS["ulx3s-85f"], clock=Envelope.at(120.0, rows))
    with pytest.raises(ValueError, match="sizing clock must be positive"):
        Envelope.at(0.0, rows)


def test_the_placed_designs_load_and_the_minilm_one_has_64_lanes():
    rows = load()
    assert rows and all(p.fmax_mhz > 0 and p.res.lut4 > 0 for p in rows)
    env = Envelope.at(SIZING_CLOCK_MHZ)
    # issue 12's floor: a design of at least 64 spike lanes is placed at 75 MHz or faster,
    # so the default MiniLM sizing may choose one
    assert max(p.cfg.lanes for p in env.placed) >= 64
    # each row's own configuration is inside the envelope at its own clock
    for p in rows:
        assert Envelope.at(p.fmax_mhz, rows).covering(p.res) is not None


def test_a_malformed_row_is_refused_naming_it(tmp_path):
    doc = json.loads(PLACED_JSON.read_text())
    # the rows by design, wherever they stand in the file
    tiny, mini = (next(i for i, r in enumerate(doc["placed"]) if r["name"].startswith(n))
                  for n in ("tiny-llama", "minilm"))
    doc["placed"][tiny].pop("fmax_mhz")
    bad = tmp_path / "placed.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"placed.json: row {tiny} \(tiny-llama.*fmax_mhz"):
        load(bad)
    doc = json.loads(PLACED_JSON.read_text())
    doc["placed"][mini]["config"]["lanes"] = 3
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"row {mini} \(minilm"):
        load(bad)
    bad.write_text(json.dumps({"about": "no rows"}))
    with pytest.raises(ValueError, match=r"placed.json: no list of placed designs"):
        load(bad)
    doc = json.loads(PLACED_JSON.read_text())
    doc["placed"][tiny]["design"] = "3cfd"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"row {tiny} \(tiny-llama.*SHA-256 in hex, not '3cfd'"):
        load(bad)


def test_a_row_is_current_only_while_the_gateware_emits_its_design(free, tmp_path, capsys):
    """A row vouches for the gateware whose design it measured: another design (here, its
    digest altered or another configuration's) is stale, the proof and the build say so,
    and ``python -m gen placed`` lists it and exits 1."""
    small = _placed(free, 8, 2, 90.0)
    now = Placed("8/2 now", "test", "abc1234", 3, 90.0, small.cfg, design_digest(small.cfg))
    other = _placed(free, 16, 4, 90.0).cfg
    assert design_digest(other) != now.design
    old = Placed("8/2 old", "test", "abc1234", 3, 90.0, small.cfg, design_digest(other))
    assert now.current() and not old.current()
    proof = now.proof(small.cfg)
    assert proof["same_config"] and proof["current"] and stale_warning(proof) is None
    proof = old.proof(other)
    assert not proof["same_config"] and not proof["current"]
    assert stale_warning(proof).startswith("the clock rests on 8/2 old, placed at 90 MHz on "
                                           "the gateware of abc1234, which the present")
    assert stale_warning(None) is None
    doc = json.loads(PLACED_JSON.read_text())
    base = doc["placed"][0]
    doc["placed"] = [{**base, "name": r.name, "commit": r.commit, "seed": r.seed,
                      "fmax_mhz": r.fmax_mhz, "config": r.cfg.to_json(), "design": r.design,
                      "other_seeds": {}}  # as the rows above have none, whatever row 0 has
                     for r in (now, old)]
    f = tmp_path / "placed.json"
    f.write_text(json.dumps(doc))
    assert [r.current() for r in load(f)] == [True, False]
    assert main(["placed", "--file", str(f)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| 8/2 now | 90 | 3 | - | abc1234 |")
    assert lines[2].endswith("| yes |")
    assert lines[3].startswith("| 8/2 old | 90 |") and lines[3].endswith("| STALE |")
    doc["placed"] = doc["placed"][:1]
    f.write_text(json.dumps(doc))
    assert main(["placed", "--file", str(f)]) == 0
    assert main(["placed", "--file", str(tmp_path / "none.json")]) == 2


def test_a_builds_place_and_route_becomes_a_row_that_loads(free, tmp_path):
    cfg = _placed(free, 8, 2, 90.0).cfg
    rep = {"config": cfg.to_json(), "pnr": None,
           "resources": {"synth": {"lut4": 9000, "ff": 5000, "dp16kd": 30, "mult18x18d": 9,
                                   "cells": {}}}}
    with pytest.raises(ValueError, match="no place and route result"):
        row(rep, "x", "cmd", "abc")
    rep["pnr"] = {"fmax_mhz": 81.25, "seed": 7, "seconds": 99.6, "design": design_digest(cfg),
                  "seeds": {"6": 70.5, "7": 81.25, "8": 74.0}}  # a sweep: 7 was the best
    r = row(rep, "8 lanes", "python -m gen build ...", "abc1234")
    assert r["other_seeds"] == {"6": 70.5, "8": 74.0}
    assert r["synth"] == {"lut4": 9000, "ff": 5000, "dp16kd": 30, "mult18x18d": 9}
    assert (r["seed"], r["fmax_mhz"], r["pnr_s"]) == (7, 81.25, 100)
    f = tmp_path / "placed.json"
    f.write_text(json.dumps({"about": "", "placed": [r]}))
    (p,) = load(f)
    assert (p.name, p.cfg, p.seed, p.fmax_mhz) == ("8 lanes", cfg, 7, 81.25) and p.current()
    assert p.others == ((6, 70.5), (8, 74.0))
    assert p.as_dict()["other_seeds"] == {"6": 70.5, "8": 74.0}


def test_gen_placed_add_appends_a_builds_row_and_refuses_a_stale_or_repeated_one(
        free, tmp_path, capsys):
    cfg = _placed(free, 8, 2, 90.0).cfg
    rep = {"config": cfg.to_json(), "resources": {"synth": {
        "lut4": 9000, "ff": 5000, "dp16kd": 30, "mult18x18d": 9}},
        "pnr": {"fmax_mhz": 81.25, "seed": 7, "seconds": 99.6, "design": design_digest(cfg)}}
    build = tmp_path / "build"
    build.mkdir()
    f = tmp_path / "placed.json"
    f.write_text(json.dumps({"about": "test", "placed": []}))  # exit 1 if a row is stale
    before = f.read_text()
    add = ["placed", "--file", str(f), "--add", str(build)]
    (build / "report.json").write_text(json.dumps(rep))  # no --pnr: no placed_row
    assert main(add) == 2 and "has no placed_row: build with --pnr" in capsys.readouterr().err
    stale = {**row(rep, "8 lanes", "cmd", "abc1234"), "design": "f" * 64}
    (build / "report.json").write_text(json.dumps({**rep, "placed_row": stale}))
    assert main(add) == 2 and "built from other gateware" in capsys.readouterr().err
    assert f.read_text() == before and not (tmp_path / "placed.json.new").exists()
    (build / "report.json").write_text(json.dumps({**rep, "placed_row": row(
        rep, "8 lanes", "cmd", "abc1234")}))
    assert main(add) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"added to {f}: 8 lanes, 81.25 MHz at seed 7")
    assert "| 8 lanes | 81.25 | 7 | - | abc1234 |" in out
    assert [r.name for r in load(f)] == ["8 lanes"]
    after = f.read_text()
    assert main(add) == 2 and "already has 8 lanes at seed 7" in capsys.readouterr().err
    assert f.read_text() == after
