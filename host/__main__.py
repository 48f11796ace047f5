"""Command line: ``python -m host run --bundle DIR (--sim | --port URL)`` and
``python -m host sim --bundle DIR``.

``run`` executes the converted model of a ``gen build`` bundle on the accelerator (the
simulator with ``--sim``, or a board / simulator at ``--port``: ``/dev/ttyUSB0`` or
``socket://127.0.0.1:PORT``), checks every GEMM and the final hidden states against the
golden model bit for bit, and writes ``report.json``, ``report.md``, ``cycles.png`` and
``energy.png`` (``docs/host.md``). It exits 1, loudly, if anything differs.
``sim`` starts the simulated device of a bundle and prints its URL (until interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gen.cache import source_digest
from gen.cycles import gemm_cycles
from gen.workload import GemmWork
from hw.board import BAUD
from hw.config import AccelConfig
from hw.counters import sram_bits
from models.arch import load_model
from models.bundle import load_bundle
from models.convert import ConvertOptions, convert
from models.encodings import Encoding
from models.energy import event_energy, load_table
from models.golden import run_golden, total_events

from . import report
from .driver import Device, DeviceError, LinkError
from .run import run_model
from .transport import FaultyTransport, SerialTransport

DEFAULT_TEXT = "Spiking transformers trade multiplications for silent, sparse events."
#: Baselines converted from the same model: (name, encoding or None for FP16).
BASELINES = (("fp16", None), ("w4a8 (int8, T=1)", Encoding("int", 8)),
             ("rate T=8", Encoding("rate", steps=8)),
             ("ttfs 8-bit (T=255)", Encoding("ttfs", 8)))


def simulator(bundle: Path):
    """The bundle's simulated device (built on first use into ``bundle/sim``)."""
    from sim.device import SimDevice, build_simulator

    binary = build_simulator((bundle / "spikellm_top.v").read_text(), bundle / "sim")
    return SimDevice(binary)


def _bundle(path: Path) -> tuple[AccelConfig, dict]:
    """The bundle's configuration and generator report (warns if built by other code)."""
    for f in ("config.json", "report.json", "spikellm_top.v", "model"):
        if not (path / f).exists():
            raise FileNotFoundError(f"{path}: no {f}; is this a `python -m gen build` "
                                    f"output directory?")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("hw_source") != source_digest("hw", "models", "gen"):
        # the gateware or the cycle model changed since the bundle was built: the run still
        # checks bit-exactness, but predicted cycles may not match the bundle's Verilog
        print(f"warning: {path} was built by another version of hw/, models/ or gen/; "
              f"rebuild it (python -m gen build) for matching cycle predictions",
              file=sys.stderr)
    return AccelConfig.from_json(meta["config"]), json.loads((path / "report.json").read_text())


def cmd_run(a) -> int:
    bundle = Path(a.bundle)
    cfg, gen_rep = _bundle(bundle)
    cm = load_bundle(bundle / "model")
    lm = load_model(gen_rep["model"]["name"])
    ids = lm.tokenize(a.text)
    table = load_table(a.energy_table)
    program = json.loads((bundle / "program.json").read_text())["gemms"]
    with contextlib.ExitStack() as stack:
        url = a.port
        if a.sim:
            url = stack.enter_context(simulator(bundle)).url
        transport = SerialTransport(url, a.baud)
        stack.callback(transport.close)
        if a.faults:
            transport = FaultyTransport(transport, a.faults, seed=a.seed)
        dev = Device(transport, cfg, verify_weights=a.verify, retries=a.retries)
        bar = tqdm(total=len(program), unit="gemm", disable=a.quiet, desc="run")
        t0 = time.perf_counter()
        res = run_model(cm, ids, dev, progress=bar, program=program)
        wall = time.perf_counter() - t0
        bar.close()
    layers = report.layer_rows(cfg, res, table)
    spiking = [n.act.encoding for n in cm.nodes.values() if n.act.encoding.is_spiking]
    hybrid_events = {r["name"]: report.counted_events(r["counters"]) for r in layers}
    hybrid = {"name": "hybrid", "time_steps": max((e.time_steps for e in spiking), default=1),
              "compute_energy_pj": sum(event_energy(e, table)["total"]
                                       for e in hybrid_events.values()),
              "energy_pj": {"total": sum(r["energy_pj"]["total"] for r in layers)},
              "measured_cycles": sum(r["measured_cycles"] for r in layers)}
    macs, bits = report.dense_work(res)
    baselines = []
    for name, enc in BASELINES:
        if enc is None:
            baselines.append(report.baseline_energy(name, {}, table, 1, macs, bits))
            continue
        # baseline conversions only provide event counts: a light calibration is enough
        cmb = convert(lm, ConvertOptions(encoding=enc, calib_sentences=8, gptq=False))
        trace: list = []
        _, ev = run_golden(cmb, ids, trace=trace)
        b = report.baseline_energy(name, ev, table, enc.time_steps, macs, bits)
        # on this accelerator: cycles and buffer traffic from the generator's models
        preds = [gemm_cycles(cfg, GemmWork.of(c)) for c in trace]
        b["predicted_cycles"] = sum(p.cycles for p in preds)
        b["energy_pj"] = event_energy(total_events(ev), table,
                                      sum(sram_bits(cfg, p.traffic()) for p in preds))
        baselines.append(b)
    rep = {
        "schema": report.SCHEMA, "model": gen_rep["model"]["name"], "tokens": int(ids.numel()),
        "text": a.text, "device": "simulator" if a.sim else url,
        "config_hash": f"0x{cfg.hash32():08x}", "bit_exact": res.bit_exact,
        "wall_s": wall, "link": {"bytes": dev.link_bytes(), "retries": dev.stats["retries"],
                                 "stats": dict(dev.stats),
                                 "faults_injected": dict(getattr(transport, "injected", {}))},
        "layers": layers, "hybrid": hybrid, "baselines": baselines,
        "reductions": [report.reductions(hybrid, b) for b in baselines],
        "totals": {"measured_cycles": sum(r["measured_cycles"] for r in layers),
                   "predicted_cycles": sum(r["predicted_cycles"] for r in layers),
                   "golden_events": vars(total_events(res.golden_events))},
        "energy_table_pj": table,
    }
    out = Path(a.out or bundle / "run")
    report.write(rep, out)
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1, sort_keys=True))
    t = rep["totals"]
    print(f"{'BIT-EXACT' if res.bit_exact else 'MISMATCH'}: {len(res.records)} GEMMs, "
          f"{t['measured_cycles']:,} cycles measured / {t['predicted_cycles']:,} predicted, "
          f"{wall:.1f} s; reports in {out}")
    if not res.bit_exact:
        bad = [f"{r.name}[{r.head}]" for r in res.records if not (r.exact and r.counters_match)]
        where = ", ".join(bad) or "the final hidden states"
        print(f"error: results differ from the golden model in {where}", file=sys.stderr)
        return 1
    return 0


def cmd_sim(a) -> int:
    bundle = Path(a.bundle)
    _bundle(bundle)
    with simulator(bundle) as dev:
        print(dev.url, flush=True)
        try:
            dev.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a bundle's model on the accelerator",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--bundle", required=True, help="a `python -m gen build` output directory")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="start the simulated device")
    where.add_argument("--port", help="serial device or pyserial URL (/dev/ttyUSB0, "
                                      "socket://127.0.0.1:PORT)")
    r.add_argument("--baud", type=int, default=BAUD, help="serial rate (the board's)")
    r.add_argument("--text", default=DEFAULT_TEXT, help="input text")
    r.add_argument("--out", help="report directory (default BUNDLE/run)")
    r.add_argument("--json", help="also write report.json here")
    r.add_argument("--energy-table", help="JSON pJ table (default: Horowitz 45 nm)")
    r.add_argument("--verify", action="store_true", help="read every weight write back")
    r.add_argument("--retries", type=int, default=8, help="retransmissions per request")
    r.add_argument("--faults", type=float, default=0.0,
                   help="inject link faults at this rate (testing the recovery)")
    r.add_argument("--seed", type=int, default=0, help="fault injection seed")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("sim", help="serve a bundle's simulated device; prints its URL")
    s.add_argument("--bundle", required=True)
    a = p.parse_args(argv)
    try:
        return cmd_run(a) if a.cmd == "run" else cmd_sim(a)
    except (FileNotFoundError, ValueError, DeviceError, LinkError, ConnectionError,
            RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
