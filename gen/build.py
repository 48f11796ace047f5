"""``gen build``: convert, measure, size, emit the bundle, optionally run the FPGA flow.

The bundle is self-contained: besides the accelerator and the converted model it holds the
model's tokenizer (``tokenizer/``) and the float parameters the host's baselines are
converted from (``float/``), so ``host run`` reads nothing outside it (docs/gen.md).
The bundle is written into a temporary sibling of ``--out`` and moved into place when it
is complete: a failed build leaves no new or half-written ``--out`` behind.

``workload="decode"`` (decoder models) sizes for token-by-token generation instead of the
whole-sequence pass: the workload is the last ``decode_steps`` tokens of the calibration
text decoded one at a time over a KV cache of the tokens before them (one row per GEMM);
the report then says how that choice differs from the prefill sizing (``decode_sizing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from accel import baselines
from accel.board import BOARD_CLOCK_HZ, BOARD_FILE, FAST_BAUD, board_estimate, choose_clock
from accel.bundle import CONFIG, PROGRAM, config_record, program_record, save_host_files
from accel.config import AccelConfig
from accel.linkcost import PART, link_parts, run_link_costs
from accel.resident import model_image
from accel.workload import GemmWork, sample_ids
from models.arch import LoadedModel, ModelInputError, load_model, one_line
from models.bundle import save_bundle
from models.convert import ConvertOptions
from models.encodings import Encoding
from models.energy import load_table
from models.generate import decode_trace
from models.options import host_out

from . import cache, flow, placed, report
from .placed import SIZING_CLOCK_MHZ, Envelope
from .program import compile_program, link_description
from .resources import TARGETS, Budget, estimate
from .sizing import OBJECTIVES, Sizing, predicted_cycles, size


class BuildError(ValueError):
    """A build input (the model directory, ``--out``) that cannot be used."""


@dataclass(kw_only=True)
class BuildOptions:
    """What ``gen build`` was asked for (recorded in the report; fields by keyword)."""

    model: str
    out: Path
    target: str = "ulx3s-85f"
    budget: Budget | None = None  #: overrides the target's
    encoding: Encoding | None = None  #: None: the converter's default
    #: ``(GEMM-name pattern, bits)`` of the host outputs' widths, in order
    #: (``models.options.host_out``; none: the converter's defaults)
    host_out: tuple[tuple[str, int], ...] = ()
    tokens: int = 64  #: length of the measured calibration sequence
    fixed: dict = field(default_factory=dict)  #: pinned configuration fields
    energy_table: str | None = None
    synth: bool = False
    pnr: bool = False
    bitstream: bool = False
    #: the place-and-route target (:data:`PNR_TARGET_MHZ` when None); without ``--pnr``, when
    #: given, the board clock's limit (a Fmax measured before): the board estimate and
    #: ``board.json`` then charge the PLL clock at or below it, not the 25 MHz oscillator
    freq_mhz: float | None = None
    #: place-and-route seeds: one run per seed, in parallel, the best kept (``--seeds``)
    seeds: tuple[int, ...] = (1,)
    #: the board's link rate; its core clock is the fastest PLL clock at or below the P&R
    #: Fmax (or ``freq_mhz`` without ``--pnr``) that runs the UART at this rate
    baud: int = FAST_BAUD
    progress: bool = True
    #: the simulated device's external memory (``spikellm_top.v``; ``hw.device.SimTop``):
    #: ``"model"`` (behavioural) or ``"litedram"`` (LiteDRAM's controller on its PHY model)
    sim_dram: str = "model"
    cache: bool = True  #: reuse converted models and Verilog (gen/cache.py)
    workload: str = "prefill"  #: size for ``"prefill"`` (whole sequence) or ``"decode"``
    decode_steps: int = 4  #: decode steps of the ``"decode"`` workload
    #: what the sizing minimises: ``"speed"`` (cycles, then LUTs) or ``"energy"`` (the
    #: hybrid's predicted energy with memory)
    objective: str = "speed"

    @property
    def freq(self) -> float:
        """The place-and-route target, and the board clock's limit without ``--pnr``."""
        return PNR_TARGET_MHZ if self.freq_mhz is None else self.freq_mhz

    @property
    def sizing_clock(self) -> float:
        """The clock the sizer's choice must be proven at (``gen.placed``): ``--freq``, else
        :data:`gen.placed.SIZING_CLOCK_MHZ`."""
        return SIZING_CLOCK_MHZ if self.freq_mhz is None else self.freq_mhz

    @property
    def clocked(self) -> bool:
        """Whether the build picks the board's clock (from the P&R's Fmax, else from
        ``--freq``); else the estimates charge the oscillator's 25 MHz."""
        return self.pnr or self.bitstream or self.freq_mhz is not None


WORKLOADS = ("prefill", "decode")
#: The place-and-route target without ``--freq`` (issue 12's goal), MHz.
PNR_TARGET_MHZ = 100.0


def _check_pinned_shift(cm, fixed: dict) -> None:
    """A pinned ``max_shift`` below the model's outlier shifts builds an engine that stops
    every tile of that node (``ERR_FAULT``): refuse it, naming the node."""
    if "max_shift" not in fixed:
        return  # the sizing keeps the contract's largest shift
    nodes = [*cm.nodes.values(), *([cm.head] if cm.head is not None else [])]
    shift, name = max((max(n.act.outlier_shifts, default=0), n.name) for n in nodes)
    if shift > fixed["max_shift"]:
        raise BuildError(f"--fix max_shift={fixed['max_shift']}: node {name} has outlier "
                         f"shifts up to {shift}; the engine would refuse its MAC events")


def load(model: str) -> LoadedModel:
    """``models.arch.load_model``; what it does not refuse itself as a
    :class:`~models.arch.ModelInputError` (one line naming the file and field) is put on
    one line naming the model."""
    try:
        return load_model(model)
    except ModelInputError:
        raise
    except Exception as e:  # transformers, safetensors and tokenizers raise their own types
        raise BuildError(f"{model}: cannot load the model ({type(e).__name__}: "
                         f"{one_line(e)})") from None


def _staging(out: Path) -> Path:
    """A new temporary folder for the bundle: inside ``out`` when it exists already (the
    same file system, nothing else of the user's touched), otherwise beside it in its
    nearest existing ancestor, so that nothing is created on the way to ``out`` before the
    build succeeds."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out}: exists and is not a directory")
    parent = out if out.is_dir() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BuildError(f"--out {out}: {parent} is not a directory")
    while True:  # mkdir, unlike mkdtemp, gives the folder the user's usual permissions
        tmp = parent / f".{out.name or 'bundle'}.building-{secrets.token_hex(4)}"
        with contextlib.suppress(FileExistsError):
            tmp.mkdir()
            return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished bundle into ``out``: a rename when ``out`` is new; otherwise each
    of the bundle's entries replaces its namesake in ``out`` and other files stay."""
    if not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
        return
    for entry in sorted(tmp.iterdir()):
        old = out / entry.name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        entry.rename(old)
    tmp.rmdir()


def build(o: BuildOptions) -> dict:
    """Run the build; returns the report (also written to ``o.out``). The bundle is
    assembled in a temporary folder and moved to ``o.out`` once complete; the optional
    flow steps then run in ``o.out`` (their logs stay there when a tool fails)."""
    out = Path(os.path.abspath(o.out))
    if o.objective not in OBJECTIVES:
        raise BuildError(f"--objective {o.objective!r}: must be one of {', '.join(OBJECTIVES)}")
    if o.workload not in WORKLOADS:
        raise BuildError(f"--workload {o.workload!r}: must be one of {', '.join(WORKLOADS)}")
    if o.workload == "decode" and not 1 <= o.decode_steps < o.tokens:
        raise BuildError(f"decode steps must be in 1..{o.tokens - 1} for {o.tokens} "
                         f"calibration tokens, not {o.decode_steps}")
    if not o.seeds or len(set(o.seeds)) != len(o.seeds):
        raise BuildError(f"place-and-route seeds must be distinct and at least one, not "
                         f"{list(o.seeds)}")
    if o.clocked:
        try:  # a rate no PLL clock can serve is refused before the long steps
            choose_clock(o.freq, o.baud)
        except ValueError as e:
            raise BuildError(f"--baud {o.baud} with --freq {o.freq:g}: {e}") from None
    budget = o.budget or TARGETS[o.target]
    steps = ["load", "convert", "measure", "size", "baselines", "emit"] + (
        ["synth"] * (o.synth or o.pnr) + ["pnr"] * o.pnr + ["bitstream"] * o.bitstream)
    tmp = _staging(out)
    bar = tqdm(total=len(steps), disable=not o.progress, unit="step")
    try:
        return _build(o, out, tmp, budget, bar)
    finally:
        bar.close()  # before any error message, so it is not printed inside the bar's line
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build(o: BuildOptions, out: Path, tmp: Path, budget: Budget, bar) -> dict:
    times: dict[str, float] = {}

    def step(name):
        bar.set_description(name)
        times[name] = time.perf_counter()

    def done(name):
        times[name] = round(time.perf_counter() - times[name], 3)
        bar.update()

    step("load")
    table = load_table(o.energy_table)
    lm = load(o.model)
    if o.workload == "decode" and lm.spec.family == "mamba":
        raise BuildError(f"--workload decode: {o.model} is a Mamba model, whose generation "
                         f"(a recurrent state, not a KV cache) is not supported; size for "
                         f"the prefill")
    if o.workload == "decode" and not lm.spec.causal:
        raise BuildError(f"--workload decode: {o.model} is an encoder ({lm.spec.family}); "
                         f"only decoder models generate")
    done("load")
    step("convert")
    opts = host_out(ConvertOptions() if o.encoding is None else
                    ConvertOptions(encoding=o.encoding), o.host_out)
    cm, cached = cache.converted(lm, opts, o.cache, o.progress)
    _check_pinned_shift(cm, o.fixed)
    save_bundle(cm, tmp / "model")
    save_host_files(lm, cm, tmp)
    done("convert")
    step("measure")
    ids = sample_ids(lm, o.tokens)
    decode = o.workload == "decode"
    if decode and len(ids) <= o.decode_steps:
        raise BuildError(f"--workload decode: the calibration text gives {len(ids)} tokens, "
                         f"not more than the {o.decode_steps} decode steps")
    calls = baselines.trace(cm, ids)  # accel.workload.measure, keeping the trace
    works = [GemmWork.of(c) for c in calls]
    prefill_works = works
    if decode:
        calls = decode_trace(cm, ids, o.decode_steps)
        works = [GemmWork.of(c) for c in calls]
    done("measure")
    step("size")
    steps = baselines.time_steps(cm)  # reported: the longest; energy per GEMM window

    def energy_of(c: AccelConfig, preds, traced=calls) -> float:  # the hybrid's, on ``c``
        return baselines.predicted(c, "hybrid", steps, traced, table,
                                   baselines.MEMORY_MODELS["predicted"],
                                   preds=preds)[0]["energy_pj"]["total"]

    clock = Envelope.at(o.sizing_clock)
    sizing = size(works, budget, fixed=o.fixed, objective=o.objective, energy_of=energy_of,
                  clock=clock)
    cfg: AccelConfig = sizing.chosen.cfg
    versus_prefill = None
    if decode:
        prefill = size(prefill_works, budget, fixed=o.fixed, clock=clock)  # speed
        versus_prefill = decode_sizing(sizing, prefill, works, prefill_works, o.decode_steps,
                                       len(ids))
    del prefill_works
    done("size")
    step("baselines")
    # the hybrid as predicted on this accelerator, against the host run's baselines
    hybrid, events = baselines.predicted(cfg, "hybrid", steps, calls,
                                         table, baselines.MEMORY_MODELS["predicted"],
                                         preds=sizing.predictions)
    link = board_link(cfg, calls, int(ids.numel()), sizing.predictions)
    del calls
    converted = []
    for name, enc in baselines.CONVERTED:
        cmb = cache.converted(lm, baselines.options(enc), o.cache)[0]
        if decode:  # the same decode steps as the hybrid's
            converted.append(baselines.predicted(
                cfg, name, baselines.time_steps(cmb), decode_trace(cmb, ids, o.decode_steps),
                table, baselines.MEMORY_MODELS["converted"])[0])
        else:
            converted.append(baselines.converted_baseline(cfg, name, cmb, ids, table))
    versus = baselines.compare(cfg, table, hybrid, [(g.m, g.k, g.n) for g in works],
                               converted)
    done("baselines")
    step("emit")
    (tmp / "spikellm_top.v").write_text(cache.verilog(cfg, o.cache, o.sim_dram)[0])
    (tmp / CONFIG).write_text(json.dumps(config_record(cfg), indent=1))
    shifts = {n: info.shift for n, info in cm.nodes.items()}
    one_pass = works[len(works) - len(works) // o.decode_steps:] if decode else works  # last step
    (tmp / PROGRAM).write_text(json.dumps(
        program_record(cfg, compile_program(cfg, one_pass, shifts=shifts)), indent=1))
    (tmp / "link.json").write_text(json.dumps(link_description(cfg), indent=1))
    rows = report.layer_rows(cfg, works, sizing.predictions, events, table)
    rep = {
        "schema": report.SCHEMA,
        "model": {"name": o.model, "arch": cm.spec.family, "tokens": int(ids.numel()),
                  "options": cache.jsonable(asdict(opts)), "conversion_cached": cached},
        "target": o.target, "budget": budget.as_dict(), "config": cfg.to_json(),
        "config_hash": cfg.hash_text,
        "choice": {"why": sizing.why, "clock_mhz": clock.clock_mhz,
                   "clock_proof": (sizing.chosen.placed.proof(cfg, o.cache)
                                   if sizing.chosen.placed else None),
                   "candidates": [c.as_dict() for c in sizing.candidates]},
        "resources": {"estimate": estimate(cfg).as_dict(), "synth": None},
        "fmax_mhz": None, "energy_table": o.energy_table or "default (Horowitz 45 nm)",
        "energy_table_pj": table, "layers": rows, "hybrid": hybrid, **versus,
        "totals": report.totals(rows, o.decode_steps if decode else int(ids.numel())),
        "timings_s": times, "link": link,
        "workload": {"kind": o.workload, **({"prompt_tokens": len(ids) - o.decode_steps,
                                             "decode_steps": o.decode_steps}
                                            if decode else {"tokens": int(ids.numel())})},
    }
    if versus_prefill is not None:
        rep["decode_sizing"] = versus_prefill
    done("emit")
    _write_reports(rep, tmp)
    _publish(tmp, out)
    if o.synth or o.pnr:
        step("synth")
        rep["resources"]["synth"] = flow.synth(cfg, out / "synth")
        done("synth")
    if o.pnr:
        step("pnr")
        p = flow.pnr_sweep(out / "synth", o.freq, list(o.seeds))
        rep["fmax_mhz"] = p["fmax_mhz"]
        rep["pnr"] = {**p, "design": cache.design_digest(cfg, o.cache)}
        rep["placed_row"] = placed.row(
            rep, f"{o.model}, {cfg.lanes} lanes / {cfg.mac_units} MAC units",
            f"python -m gen build --model {o.model} --target {o.target} "
            f"--fix lanes={cfg.lanes},mac_units={cfg.mac_units} --pnr --seed {p['seed']}",
            placed.git_commit())
        done("pnr")
    if o.clocked:
        limit = rep["fmax_mhz"] if o.pnr and rep["fmax_mhz"] else o.freq
        clock = choose_clock(limit, o.baud)
        rep["board"] = {**clock.as_dict(), "clock_from": "pnr" if o.pnr else "freq"}
        board_time(rep["link"], clock.clock_hz)
        (out / BOARD_FILE).write_text(json.dumps(rep["board"], indent=1))
    if o.bitstream:
        step("bitstream")
        bit, board_fmax = flow.bitstream(cfg, out / "ulx3s", clock)
        rep["bitstream"] = str(bit)
        rep["board"]["fmax_mhz"] = board_fmax
        done("bitstream")
    if o.synth or o.clocked:
        _write_reports(rep, out)
    return rep


def board_link(cfg: AccelConfig, calls: list, tokens: int, preds) -> dict:
    """What the host link carries for the measured forward pass, priced request by request
    (``accel.linkcost.run_link_costs``, what ``host run`` sends) with the model streamed over
    the link and with it resident in the external memory, and the board time each gives
    (:func:`board_time`; ``host run`` measures the same traffic and checks it)."""
    image = model_image(cfg, calls)
    out: dict = {"cycles": sum(p.cycles for p in preds), "tokens": tokens,
                 "image_bytes": len(image.words) * cfg.dram_bits // 8}
    costs = run_link_costs(cfg, calls, [None, image])  # each GEMM planned once
    for name, cost in zip(("streamed", "resident"), costs, strict=True):
        # what crosses, per GEMM kind (all layers): bytes a token by what they carry
        parts = {label: {w: b / tokens for w, b in row.items()}
                 for label, row in link_parts(cost).items()}
        out[name] = {**{k: v for k, v in cost.items() if not k.startswith(PART)},
                     "parts": parts,
                     "bytes_per_token": (cost["bytes_tx"] + cost["bytes_rx"]) / tokens,
                     "requests_per_token": cost["frames_tx"] / tokens,
                     "round_trips_per_token": cost["waits"] / tokens}
    board_time(out)
    return out


def board_time(link: dict, clock_hz: float = BOARD_CLOCK_HZ) -> None:
    """Add to :func:`board_link`'s figures the board time of each (``accel.board.
    board_estimate``), the core at ``clock_hz`` (the oscillator's 25 MHz until the board
    build picks its clock)."""
    for name in ("streamed", "resident"):
        # the engine's cycles and the spike encoder's (it runs between RUNs)
        link[name]["board"] = board_estimate(
            link[name], link["cycles"] + link[name].get("enc_busy", 0), link["tokens"],
            clock_hz)


def _write_reports(rep: dict, out: Path) -> None:
    report.write_json(rep, out / "report.json")
    report.write_markdown(rep, out / "report.md")
    if "decode_sizing" in rep:
        with (out / "report.md").open("a") as f:
            f.write("\n## Sized for decode\n\n" + decode_sizing_text(rep["decode_sizing"])
                    + "\n")
    report.plot(rep, out / "report.png")


#: Configuration fields the decode and prefill sizings are compared on.
SIZED = ("lanes", "mac_units", "weight_depth", "max_rows", "spike_rows", "spike_event_depth",
         "mac_event_depth")


def decode_sizing(dec: Sizing, pre: Sizing, dec_works: list[GemmWork],
                  pre_works: list[GemmWork], steps: int, tokens: int) -> dict:
    """How the decode sizing differs from the prefill sizing of the same text: both choices,
    the fields that differ, and each workload's predicted cycles per token on both
    configurations (``steps`` decode tokens, ``tokens`` prefill tokens)."""
    a, b = dec.chosen.cfg, pre.chosen.cfg
    per = {"decode": (dec_works, steps), "prefill": (pre_works, tokens)}
    cross = {}
    for name, (works, n) in per.items():
        on = {"decode_config": predicted_cycles(a, works),
              "prefill_config": predicted_cycles(b, works)}
        cross[name] = {k: None if v is None else v / n for k, v in on.items()}
    choice = lambda s: {**{f: getattr(s.chosen.cfg, f) for f in SIZED},  # noqa: E731
                        "luts": s.chosen.res.lut4, "dsp": s.chosen.res.dsp,
                        "bram": s.chosen.res.bram, "bound": s.chosen.bound, "why": s.why}
    return {"decode_choice": choice(dec), "prefill_choice": choice(pre),
            "differs": {f: {"decode": getattr(a, f), "prefill": getattr(b, f)}
                        for f in SIZED if getattr(a, f) != getattr(b, f)},
            "same_config": a == b, "cycles_per_token": cross}


def decode_sizing_text(d: dict) -> str:
    """One paragraph: what sizing for decode changed against sizing for prefill."""
    dc, pc = d["decode_choice"], d["prefill_choice"]
    if d["same_config"]:
        what = "the same configuration as sizing for the prefill"
    else:
        what = "; ".join(f"{f} {v['decode']} (prefill sizing: {v['prefill']})"
                         for f, v in d["differs"].items()) or "a different configuration"
    c = d["cycles_per_token"]
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    return (f"Sized for decode: {what}. LUT4 {dc['luts']:,} vs {pc['luts']:,}, DP16KD "
            f"{dc['bram']} vs {pc['bram']}, MULT18X18D {dc['dsp']} vs {pc['dsp']}; decode is bound "
            f"by the {dc['bound']}, the prefill by the {pc['bound']}. Predicted cycles per "
            f"token, decode: {fmt(c['decode']['decode_config'])} on this configuration, "
            f"{fmt(c['decode']['prefill_config'])} on the prefill-sized one; prefill: "
            f"{fmt(c['prefill']['decode_config'])} here, "
            f"{fmt(c['prefill']['prefill_config'])} on the prefill-sized one.")
