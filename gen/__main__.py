"""Command line: ``python -m gen build --model NAME_OR_DIR --out DIR``, and
``python -m gen estimate --arch NAME_OR_CONFIG`` (per-token cost at a model's full size from
its configuration alone: docs/estimate.md), and ``python -m gen placed`` (the placed designs
the sizer's clock rests on, and whether the present gateware still emits each).

Converts the model, measures its GEMMs on calibration text, sizes the accelerator for the
target's budget and writes into DIR: the Verilog (``spikellm_top.v``), ``config.json``, the
converted model (``model/``), its tokenizer (``tokenizer/``) and float parameters
(``float/``, for the host's baselines), the compiled program (``program.json``), the link
description (``link.json``), ``report.json``, ``report.md`` and ``report.png``. DIR appears
only when the bundle is complete. ``--synth``, ``--pnr`` and ``--bitstream`` run the open
ECP5 flow for the ULX3S 85F (docs/gen.md). ``--workload decode`` sizes for token-by-token
generation (one row per GEMM over a KV cache) and reports how that choice differs from
sizing for the prefill (docs/generate.md). Exit status: 2 for a bad input (one line naming
the file or field), 3 when the model does not fit the budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from accel.board import FAST_BAUD
from hw.device import SIM_DRAMS
from models.__main__ import _encoding
from models.arch import BUILTIN, UnsupportedModelError
from models.options import host_out_flags

from .build import WORKLOADS, BuildOptions, build, decode_sizing_text, one_line
from .flow import FlowError
from .placed import PLACED_JSON, add, load, stale_warning
from .resources import TARGETS, Budget
from .sizing import OBJECTIVES, DoesNotFit


def _budget(s: str) -> Budget:
    parts = dict(p.split("=", 1) for p in s.split(",") if p)
    base = TARGETS["ulx3s-85f"]
    unknown = sorted(set(parts) - {"lut", "dsp", "bram", "fill"})
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown budget key(s) {unknown}; "
                                         f"use lut=,dsp=,bram=,fill=")
    return Budget(int(parts.get("lut", base.lut4)), int(parts.get("dsp", base.dsp)),
                  int(parts.get("bram", base.bram)), float(parts.get("fill", base.lut_fill)))


def _fixed(s: str) -> dict:
    """``lanes=64,mac_units=8,encodings=ttfs-signed+int``: integers, and ``encodings`` as a
    ``+``-separated list."""
    return {k: tuple(v.split("+")) if k == "encodings" else int(v)
            for k, v in (p.split("=", 1) for p in s.split(",") if p)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="size, emit and (optionally) synthesise an accelerator",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--model", required=True,
                   help=f"built-in name ({', '.join(BUILTIN)}) or a Hugging Face model directory")
    b.add_argument("--out", required=True,
                   help="output directory (created when the build succeeds; an existing one "
                        "keeps its other files)")
    b.add_argument("--target", choices=sorted(TARGETS), default="ulx3s-85f",
                   help="ulx3s-85f: the board's LFE5U-85F; sim: the simulator, same budget "
                        "unless --budget")
    b.add_argument("--budget", type=_budget, default=None,
                   help="resource budget, e.g. lut=40000,dsp=64,bram=100,fill=0.8 (fill: "
                        "fraction of LUTs the sizing may use); default: the target's")
    b.add_argument("--encoding", type=_encoding, default=None,
                   help="spike encoding: ttfs[:bits] | ttfs-signed[:bits] | rate[:T] | "
                        "ternary[:T[xL]] | int[:bits]; default: the converter's (ttfs-signed:4)")
    host_out_flags(b)
    b.add_argument("--tokens", type=int, default=64,
                   help="tokens of calibration text the workload is measured on")
    b.add_argument("--workload", choices=WORKLOADS, default="prefill",
                   help="size for the whole-sequence pass (prefill) or for generation: "
                        "decode steps of one token over a KV cache (decoder models)")
    b.add_argument("--decode-steps", type=int, default=4,
                   help="--workload decode: the calibration text's last tokens decoded one "
                        "at a time (the others fill the KV cache)")
    b.add_argument("--fix", type=_fixed, default={},
                   help="pin configuration fields instead of exploring them, e.g. "
                        "lanes=64,mac_units=16")
    b.add_argument("--objective", default="speed", choices=OBJECTIVES,
                   help="what the sizing minimises: cycles (speed, then the fewest LUTs) or "
                        "the predicted energy with memory (energy)")
    b.add_argument("--energy-table", default=None,
                   help="JSON file of pJ per operation (keys of models.energy.DEFAULT_TABLE)")
    b.add_argument("--synth", action="store_true", help="run Yosys synth_ecp5")
    b.add_argument("--pnr", action="store_true", help="also place and route (nextpnr-ecp5)")
    b.add_argument("--freq", type=float, default=None,
                   help="place-and-route target, MHz (default 100); without --pnr, the board "
                        "clock's limit (a measured Fmax) that the board estimate charges "
                        "(default: the 25 MHz oscillator). The sizer chooses only designs no "
                        "larger than one placed at this clock (default 75; gen/placed.json)")
    b.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    b.add_argument("--seeds", type=int, default=1,
                   help="place and route with this many seeds from --seed on, in parallel "
                        "(one process per core), and keep the fastest")
    b.add_argument("--baud", type=int, default=FAST_BAUD,
                   help="the board's UART rate; the board clock is the fastest PLL clock at "
                        "or below the P&R Fmax that serves it (docs/gen.md)")
    b.add_argument("--sim-dram", choices=SIM_DRAMS, default="model",
                   help="the simulated device's SDRAM: a behavioural model, or LiteDRAM's "
                        "controller on its PHY model (slower to build and run; docs/memory.md)")
    b.add_argument("--bitstream", action="store_true",
                   help="build the ULX3S 85F bitstream (accelerator behind the USB UART)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--no-cache", action="store_true",
                   help="convert and emit afresh (default: reuse ~/.cache/spikellm results)")
    _estimate_parser(sub)
    pl = sub.add_parser("placed", help="the placed designs the sizer's clock rests on "
                        "(gen/placed.json), and whether the present gateware still emits "
                        "each; exit status 1 when one is stale")
    pl.add_argument("--file", help="another placed.json (default: the one beside gen/placed.py)")
    pl.add_argument("--add", metavar="BUILD_DIR",
                    help="first add the row of a build with --pnr (its report.json's "
                         "placed_row; refused when built from other gateware or already there)")
    a = p.parse_args(argv)
    if a.cmd == "estimate":
        return _run_estimate(a)
    if a.cmd == "placed":
        return _run_placed(a)
    try:
        rep = build(BuildOptions(
            model=a.model, out=a.out, target=a.target, budget=a.budget, encoding=a.encoding,
            host_out=tuple(a.host_out),
            tokens=a.tokens, fixed=a.fix, energy_table=a.energy_table, synth=a.synth,
            pnr=a.pnr, bitstream=a.bitstream, freq_mhz=a.freq, progress=not a.quiet,
            seeds=tuple(range(a.seed, a.seed + max(a.seeds, 0))), baud=a.baud,
            cache=not a.no_cache, workload=a.workload, decode_steps=a.decode_steps,
            objective=a.objective, sim_dram=a.sim_dram))
    except DoesNotFit as e:
        print(f"error: the model does not fit: {one_line(e)}", file=sys.stderr)
        return 3
    except (UnsupportedModelError, ValueError, FlowError, OSError) as e:
        # bad inputs (the model directory, --out, --energy-table) and tool failures: one
        # line, no traceback; nothing new is left at --out (gen/build.py)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    t = rep["totals"]
    c = rep["config"]
    print(f"{a.out}: {c['lanes']} lanes, {c['mac_units']} MAC units, config "
          f"{rep['config_hash']}; {t['cycles_per_token']:,.0f} predicted cycles/token, "
          f"{t['energy_pj_per_token'] / 1e3:,.1f} nJ/token"
          + (" (decode)" if a.workload == "decode" else ""))
    if "decode_sizing" in rep:
        print(decode_sizing_text(rep["decode_sizing"]))
    warn = stale_warning(rep["choice"]["clock_proof"])
    if warn:
        print(f"warning: {warn}", file=sys.stderr)
    return 0


def _run_placed(a) -> int:
    """``python -m gen placed``: the placed designs, and which the present gateware still
    emits (a stale row's clock is of other gateware)."""
    file = Path(a.file) if a.file else PLACED_JSON
    try:
        if a.add:
            r = add(Path(a.add), file)
            print(f"added to {file}: {r.name}, {r.fmax_mhz:g} MHz at seed {r.seed}")
        rows = load(file)
    except (OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    stale = 0
    print("| design | Fmax (MHz) | seed | other seeds (MHz) | commit | LUT4 est. | "
          "MULT18X18D est. | current |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        now = r.current()
        stale += not now
        others = ", ".join(f"{sd}: {f:g}" for sd, f in r.others) or "-"
        print(f"| {r.name} | {r.fmax_mhz:g} | {r.seed} | {others} | {r.commit} | "
              f"{r.res.lut4} | {r.res.dsp} | {'yes' if now else 'STALE'} |")
    return 1 if stale else 0


def _estimate_parser(sub) -> None:
    from .estimate import MAX_TOKENS, TARGETS, builtin_archs

    e = sub.add_parser("estimate", help="per-token cost of a model at full size, from its "
                       "configuration alone (no weights)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--arch", required=True,
                   help=f"built-in configuration ({', '.join(builtin_archs())}), a Hugging "
                        f"Face config.json, or a directory holding one")
    e.add_argument("--tokens", type=int, default=128,
                   help=f"prompt length of the prefill, and KV-cache length of the decode step "
                        f"(1..{MAX_TOKENS})")
    e.add_argument("--target", action="append", choices=sorted(TARGETS), default=None,
                   help="target(s), repeatable (default: ulx3s-85f and large)")
    e.add_argument("--budget", type=_budget, default=None,
                   help="add a target of this resource budget (lut=,dsp=,bram=,fill=; unset "
                        "keys: the ULX3S's), sized by gen.sizing, memory and link as 'large'")
    e.add_argument("--fix", type=_fixed, default={},
                   help="pin configuration fields of every target, e.g. lanes=128,mac_units=8")
    e.add_argument("--clock-mhz", type=float, default=None,
                   help="clock of every target (default: each target's own)")
    e.add_argument("--baud", type=int, default=None,
                   help="UART baud rate of the ULX3S link (default: the board's 1,000,000)")
    e.add_argument("--stats", default="minilm",
                   help="spike statistics: a model to convert and measure (built-in name or "
                        "directory), a statistics JSON (an estimate.json), or "
                        "synthetic[:silent=F,outliers=F,encoding=E]")
    e.add_argument("--calib-tokens", type=int, default=64,
                   help="calibration tokens the statistics model is measured on")
    e.add_argument("--energy-table", default=None,
                   help="JSON file of pJ per operation (keys of models.energy.DEFAULT_TABLE)")
    e.add_argument("--seed", type=int, default=0, help="seed of the synthetic workload")
    e.add_argument("--out", default=None, help="write estimate.json and estimate.md here")
    e.add_argument("--no-cache", action="store_true",
                   help="convert the statistics model afresh")


def _run_estimate(a) -> int:
    from pathlib import Path

    from .estimate import EstimateOptions, estimate
    from .estimate_report import format_table, write

    try:
        rep = estimate(EstimateOptions(
            a.arch, a.tokens, a.target or ["ulx3s-85f", "large"], a.budget, a.fix,
            a.clock_mhz, a.baud, a.stats, a.calib_tokens, a.energy_table, a.seed,
            not a.no_cache))
        if a.out:
            write(rep, Path(a.out))
    except DoesNotFit as e:
        print(f"error: the model does not fit: {one_line(e)}", file=sys.stderr)
        return 3
    except (UnsupportedModelError, ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{rep['arch']['name']}: prefill of {rep['tokens']} tokens, decode with "
          f"{rep['tokens']} cached; statistics: {rep['statistics']['source']}")
    print(format_table(rep))
    if a.out:
        print(f"wrote {Path(a.out) / 'estimate.json'} and estimate.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
