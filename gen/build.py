"""``gen build``: convert, measure, size, emit the bundle, optionally run the FPGA flow."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from hw.config import AccelConfig
from models.arch import load_model
from models.bundle import save_bundle
from models.convert import ConvertOptions
from models.energy import load_table

from . import cache, flow, report
from .program import compile_program, link_description
from .resources import TARGETS, Budget, estimate
from .sizing import size
from .workload import measure, sample_ids


@dataclass
class BuildOptions:
    """What ``gen build`` was asked for (recorded in the report)."""

    model: str
    out: Path
    target: str = "ulx3s-85f"
    budget: Budget | None = None  #: overrides the target's
    encoding: object = None  #: models.encodings.Encoding; None: the converter's default
    tokens: int = 64  #: length of the measured calibration sequence
    fixed: dict = field(default_factory=dict)  #: pinned configuration fields
    energy_table: str | None = None
    synth: bool = False
    pnr: bool = False
    bitstream: bool = False
    freq_mhz: float = 100.0
    progress: bool = True
    cache: bool = True  #: reuse converted models and Verilog (gen/cache.py)


def build(o: BuildOptions) -> dict:
    """Run the build; returns the report (also written to ``o.out``)."""
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = o.budget or TARGETS[o.target]
    steps = ["load", "convert", "measure", "size", "emit"] + (
        ["synth"] * (o.synth or o.pnr) + ["pnr"] * o.pnr + ["bitstream"] * o.bitstream)
    bar = tqdm(total=len(steps), disable=not o.progress, unit="step")
    times: dict[str, float] = {}

    def step(name):
        bar.set_description(name)
        times[name] = time.perf_counter()

    def done(name):
        times[name] = round(time.perf_counter() - times[name], 3)
        bar.update()

    step("load")
    lm = load_model(o.model)
    done("load")
    step("convert")
    opts = ConvertOptions() if o.encoding is None else ConvertOptions(encoding=o.encoding)
    cm, cached = cache.converted(lm, opts, o.cache)
    save_bundle(cm, out / "model")
    done("convert")
    step("measure")
    ids = sample_ids(lm, o.tokens)
    works, events = measure(cm, ids)
    done("measure")
    step("size")
    sizing = size(works, budget, fixed=o.fixed)
    cfg: AccelConfig = sizing.chosen.cfg
    done("size")
    step("emit")
    (out / "spikellm_top.v").write_text(cache.verilog(cfg, o.cache)[0])
    (out / "config.json").write_text(json.dumps(
        {"config": cfg.to_json(), "hash": f"0x{cfg.hash32():08x}",
         "hw_source": cache.source_digest("hw", "models", "gen")}, indent=1))
    shifts = {n: info.shift for n, info in cm.nodes.items()}
    (out / "program.json").write_text(json.dumps(
        {"config_hash": f"0x{cfg.hash32():08x}",
         "gemms": compile_program(cfg, works, shifts=shifts)}, indent=1))
    (out / "link.json").write_text(json.dumps(link_description(cfg), indent=1))
    table = load_table(o.energy_table)
    rows = report.layer_rows(cfg, works, sizing.predictions, events, table)
    rep = {
        "schema": report.SCHEMA,
        "model": {"name": o.model, "arch": cm.spec.family if hasattr(cm.spec, "family")
                  else type(cm.spec).__name__, "tokens": int(ids.numel()),
                  "options": cache.jsonable(asdict(opts)), "conversion_cached": cached},
        "target": o.target, "budget": budget.as_dict(), "config": cfg.to_json(),
        "config_hash": f"0x{cfg.hash32():08x}",
        "choice": {"why": sizing.why, "candidates": [c.as_dict() for c in sizing.candidates]},
        "resources": {"estimate": estimate(cfg).as_dict(), "synth": None},
        "fmax_mhz": None, "energy_table": o.energy_table or "default (Horowitz 45 nm)",
        "energy_table_pj": table, "layers": rows,
        "totals": report.totals(rows, int(ids.numel())), "timings_s": times,
    }
    done("emit")
    if o.synth or o.pnr:
        step("synth")
        rep["resources"]["synth"] = flow.synth(cfg, out / "synth")
        done("synth")
    if o.pnr:
        step("pnr")
        p = flow.pnr(out / "synth", o.freq_mhz)
        rep["fmax_mhz"] = p["fmax_mhz"]
        rep["pnr"] = p
        done("pnr")
    if o.bitstream:
        step("bitstream")
        rep["bitstream"] = str(flow.bitstream(cfg, out / "ulx3s"))
        done("bitstream")
    bar.close()
    report.write_json(rep, out / "report.json")
    report.write_markdown(rep, out / "report.md")
    report.plot(rep, out / "report.png")
    return rep

