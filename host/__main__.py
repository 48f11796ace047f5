"""Command line: ``python -m host run --bundle DIR (--sim | --port URL)`` and
``python -m host sim --bundle DIR``.

``run`` executes the converted model of a ``gen build`` bundle on the accelerator (the
simulator with ``--sim``, or a board / simulator at ``--port``: ``/dev/ttyUSB0`` or
``socket://127.0.0.1:PORT``), checks every GEMM and the final hidden states against the
golden model bit for bit, and writes ``report.json``, ``report.md``, ``cycles.png`` and
``energy.png`` (``docs/host.md``). It exits 1, loudly, if anything differs, and 2 with one
line naming the file or field for a bad bundle or a device that cannot be reached (the
port is opened before the model is loaded). Everything comes from the bundle directory:
the configuration, Verilog, compiled program, converted model, tokenizer and float model;
its ``report.json`` is never read. With ``--generate N`` (decoder models) the text is a
prompt: a prefill and N greedy decode steps with a KV cache run on the device, bit-exact
against the golden generation, and the report adds the prefill and decode figures per
token and their ratio (``docs/generate.md``). ``sim`` starts the simulated device of a
bundle and prints its URL (until interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from tqdm import tqdm

from accel import baselines
from accel.board import BOARD_CLOCK_HZ, BOARD_CYCLES, board_estimate, read_board
from accel.bundle import (
    CONFIG,
    FLOAT,
    PROGRAM,
    TOKENIZER,
    built_by_other_code,
    load_host_model,
    read_config,
    read_program,
)
from accel.config import AccelConfig
from accel.protocol import BAUD
from accel.requests import LINK_KEYS
from accel.resident import resident_image
from models.arch import LoadedModel, ModelInputError, one_line
from models.bundle import BundleError, load_bundle
from models.convert import ConvertedModel, convert
from models.energy import load_table
from models.generate import check_length, float_tokens, generate, kv_cache_bytes, pass_traces
from models.golden import run_golden, total_events
from models.lm_head import HEAD

from . import report
from .driver import Device, DeviceError, LinkError
from .run import run_generation, run_model
from .transport import FaultyTransport, SerialTransport, Transport

DEFAULT_TEXT = "Spiking transformers trade multiplications for silent, sparse events."
#: Files and folders of a bundle that ``run`` reads (``spikellm_top.v`` only with --sim).
RUN_FILES = (CONFIG, PROGRAM, "model", TOKENIZER, FLOAT)


_WHAT = {TOKENIZER: "tokenizer", FLOAT: "float parameters, for the baselines"}


class BundleInputError(ValueError):
    """A bundle file or field that cannot be used (the message is one line naming it)."""


#: Entry-point group of simulated devices: ``name = "module:factory"``, the factory taking
#: the Verilog of a top and a build folder and returning a context manager with a ``url``
#: (``pyproject.toml`` registers ``verilator = "sim.device:serve"``). The run-time host
#: finds the simulator here instead of importing the simulation package.
SIMULATORS = "spikellm.simulators"


def simulator(bundle: Path, name: str = "verilator"):
    """The bundle's simulated device (built on first use into ``bundle/sim``)."""
    found = [e for e in entry_points(group=SIMULATORS) if e.name == name]
    if not found:
        raise BundleInputError(f"no simulator {name!r} is installed (entry point group "
                               f"{SIMULATORS}); reinstall the project: pip install -e .")
    return found[0].load()((bundle / "spikellm_top.v").read_text(), bundle / "sim")


def _bundle(path: Path, need: tuple[str, ...]) -> tuple[AccelConfig, list[dict] | None]:
    """The bundle's configuration and compiled program, after checking that the files in
    ``need`` are there."""
    for f in need:
        if (path / f).exists():
            continue
        if f in (TOKENIZER, FLOAT) and (path / CONFIG).exists():
            raise BundleInputError(f"{path}: no {f}/ (the model's {_WHAT[f]}); the bundle "
                                   f"was built by an older gen build: rebuild it")
        raise BundleInputError(f"{path}: no {f}; is this a `python -m gen build` "
                               f"output directory?")
    cfg = read_config(path)
    return cfg, read_program(path, cfg) if PROGRAM in need else None


def _warn_if_stale(path: Path) -> None:
    """Warn when the bundle was built by other code than this process runs."""
    if built_by_other_code(path):
        # the gateware or the cycle model changed since the bundle was built: the run still
        # checks bit-exactness, but predicted cycles may not match the bundle's Verilog
        print(f"warning: {path} was built by another version of hw/, models/ or gen/; "
              f"rebuild it (python -m gen build) for matching cycle predictions",
              file=sys.stderr)


def _model(bundle: Path) -> tuple[ConvertedModel, LoadedModel]:
    """The converted model (``models.bundle`` checks every field), tokenizer and float
    model, all from the bundle."""
    mdir = bundle / "model"
    try:
        cm = load_bundle(mdir)
    except (BundleError, ModelInputError) as e:  # one line naming the file and field
        raise BundleInputError(one_line(e)) from None
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise BundleInputError(f"{mdir}: cannot load the converted model "
                               f"({type(e).__name__}: {one_line(e)})") from None
    return cm, load_host_model(bundle, cm)


def _say(a, msg: str) -> None:
    """A status line for a long step (stderr; not with --quiet)."""
    if not a.quiet:
        print(msg, file=sys.stderr, flush=True)


def cmd_run(a) -> int:
    bundle = Path(a.bundle)
    table = load_table(a.energy_table)
    cfg, program = _bundle(bundle, RUN_FILES + (("spikellm_top.v",) if a.sim else ()))
    try:  # the board build's clock and link rate, when it recorded them
        board = read_board(bundle)
    except ValueError as e:
        raise BundleInputError(one_line(e)) from None
    baud = a.baud or (board["baud"] if board else BAUD)
    with contextlib.ExitStack() as stack:
        link: Transport | None = None
        dev: Device | None = None

        def connect(url: str):
            raw = SerialTransport(url, baud)
            stack.callback(raw.close)
            t = FaultyTransport(raw, a.faults, seed=a.seed) if a.faults else raw
            return t, Device(t, cfg, verify_weights=a.verify, retries=a.retries)

        if a.port:  # the device first: a bad port is reported before the model loads
            if "://" not in a.port and not Path(a.port).exists():
                raise ConnectionError(f"cannot open {a.port}: no such device")
            _say(a, f"device: opening {a.port} and identifying it")
            link, dev = connect(a.port)
            dev.identify()
        _say(a, f"model: loading {bundle / 'model'} and its tokenizer")
        cm, lm = _model(bundle)
        ids = lm.tokenize(a.text)
        gen = None
        if a.generate is not None:
            ids = prompt_ids(lm, ids)
            try:  # an encoder, or more tokens than the model has positions: refused here
                check_length(cm, len(ids), a.generate)
            except ValueError as e:
                raise BundleInputError(f"--generate {a.generate}: {one_line(e)}") from None
        try:  # a model that cannot run is refused before the simulator is built
            golden = run_golden(cm, ids)
            if a.generate is not None:
                gen = generate(cm, ids, a.generate)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            raise BundleInputError(f"{bundle / 'model'}: the converted model does not run on "
                                   f"the input ({type(e).__name__}: {one_line(e)})") from None
        _warn_if_stale(bundle)
        if a.sim:
            _say(a, f"simulator: starting {bundle / 'spikellm_top.v'} (Verilator compiles it "
                    f"into {bundle / 'sim'} on a design's first run: about a minute for "
                    f"MiniLM)")
            t0 = time.perf_counter()
            url = stack.enter_context(simulator(bundle)).url
            _say(a, f"simulator: ready after {time.perf_counter() - t0:.0f} s")
            link, dev = connect(url)
        assert dev is not None  # --sim or --port: argparse requires one
        assert program is not None  # RUN_FILES holds program.json
        resident = _resident(a, cfg, cm, dev)
        passes = 1 if gen is None else len(gen.passes)
        # a generation adds the output projection to each pass (unless the program has it)
        per_pass = len(program) + (gen is not None and program[-1]["gemm"] != HEAD)
        bar = tqdm(total=per_pass * passes, unit="gemm", disable=a.quiet,
                   desc="run" if gen is None else "generate")
        t0 = time.perf_counter()
        try:
            if gen is None:
                res = run_model(cm, ids, dev, progress=bar, program=program, golden=golden)
            else:
                gres = run_generation(cm, ids, a.generate, dev, progress=bar, program=program,
                                      golden=gen)
                res = gres.phase("prefill")  # the per-layer report and baselines: the prompt
        finally:
            bar.close()
        wall = time.perf_counter() - t0
    layers = report.layer_rows(cfg, res, table)
    hybrid = report.hybrid(cfg, layers, baselines.time_steps(cm), table)
    converted, converted_decode = [], []
    bar = tqdm(baselines.CONVERTED, unit="baseline", disable=a.quiet, desc="baselines")
    for name, enc in bar:
        bar.set_postfix_str(f"converting {name}")
        # on this accelerator: golden events, cycles and buffer traffic from gen's models
        cmb = convert(lm, baselines.options(enc))
        if gen is None:
            converted.append(baselines.converted_baseline(cfg, name, cmb, ids, table))
        else:  # the same passes on the same tokens, output projections included
            pre, dec = _generation_baseline(cfg, name, cmb, ids, gres.tokens, table)
            converted.append(pre)
            converted_decode += [dec] if dec is not None else []
    bar.set_postfix_str("done")
    bar.close()
    versus = baselines.compare(cfg, table, hybrid, report.shapes(res), converted)
    rep = {
        "schema": report.SCHEMA, "model": lm.name, "tokens": int(ids.numel()),
        "text": a.text, "device": "simulator" if a.sim else a.port,
        "config_hash": cfg.hash_text, "bit_exact": res.bit_exact,
        "wall_s": wall, "link": {"bytes": dev.link_bytes(), "retries": dev.stats["retries"],
                                 "stats": dict(dev.stats),
                                 "faults_injected": dict(getattr(link, "injected", {})),
                                 # the GEMMs' requests, counted and as accel.requests prices
                                 # them (equal without retransmissions)
                                 **{f"gemms_{w}": {k: sum(getattr(r, f)[k]
                                                          for r in res.records)
                                                   for k in LINK_KEYS}
                                    for w, f in (("measured", "link"),
                                                 ("predicted", "predicted_link"))}},
        "layers": layers, "hybrid": hybrid, **versus,
        **({} if gen is None else {"generation": _generation(cfg, gres, cm, lm, table,
                                                              converted_decode)}),
        "totals": {"measured_cycles": sum(r["measured_cycles"] for r in layers),
                   "predicted_cycles": sum(r["predicted_cycles"] for r in layers),
                   "golden_events": vars(total_events(res.golden_events))},
        "energy_table_pj": table, "resident": resident,
    }
    # the engine's cycles, the spike encoder's (it runs between RUNs), the cycles a RUN
    # waited for its weights' copy and the STOREs' (none of them busy or link time)
    rep["board"] = board_estimate(dev.stats, rep["totals"]["measured_cycles"]
                                  + sum(r.counters[k] for r in res.records
                                        for k in BOARD_CYCLES),
                                  int(ids.numel()),
                                  board["clock_hz"] if board else BOARD_CLOCK_HZ)
    out = Path(a.out or bundle / "run")
    report.write(rep, out)
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1, sort_keys=True))
    t = rep["totals"]
    if gen is not None:
        return _print_generation(rep["generation"], out, wall)
    gemms = sum(len(r.heads) or 1 for r in res.records)
    print(f"{'BIT-EXACT' if res.bit_exact else 'MISMATCH'}: {gemms} GEMMs "
          f"({len(res.records)} request streams, a node's heads one), "
          f"{t['measured_cycles']:,} cycles measured / {t['predicted_cycles']:,} predicted, "
          f"{wall:.1f} s; reports in {out}")
    print("on a board (" + rep["board"]["assumes"] + "): " + ", ".join(
        f"{v['tokens_per_s']:.2f} tokens/s at {int(b) / 1e6:g} Mbaud "
        f"({v['link_share']:.1%} waiting on the link)"
        for b, v in rep["board"]["by_baud"].items()))
    if not res.bit_exact:
        bad = [f"{r.name}{list(r.heads) if r.heads else ''}" for r in res.records
               if not (r.exact and r.counters_match)]
        where = ", ".join(bad) or "the final hidden states"
        print(f"error: results differ from the golden model in {where}", file=sys.stderr)
        return 1
    return 0


def prompt_ids(lm: LoadedModel, ids):
    """A generation's prompt: the tokenized text without a trailing separator (the
    borrowed wordpiece tokenizer of the built-in models ends every text with [SEP]; a
    prompt is continued, not closed)."""
    sep = getattr(lm.tokenizer, "sep_token_id", None)
    if sep is not None and len(ids) > 1 and int(ids[-1]) == sep % lm.spec.vocab:
        return ids[:-1]
    return ids


def _generation_baseline(cfg, name: str, cmb: ConvertedModel, ids, tokens: list[int],
                         table: dict) -> tuple[dict, dict | None]:
    """An accelerator baseline of a generation: ``cmb`` (another conversion of the model)
    over the same passes as the device's (the prompt, then each generated token but the
    last), output projections included, predicted on this accelerator; the prefill's
    scheme and the decode steps' (None without decode steps)."""
    traces = pass_traces(cmb, ids, tokens[:-1])
    pre = baselines.predicted(cfg, name, baselines.time_steps(cmb), traces[0], table,
                              baselines.MEMORY_MODELS["converted"])[0]
    if len(traces) == 1:
        return pre, None
    dec = baselines.predicted(cfg, name, baselines.time_steps(cmb),
                              [c for t in traces[1:] for c in t], table,
                              baselines.MEMORY_MODELS["converted"])[0]
    return pre, dec


def _generation(cfg, gres, cm, lm, table, converted_decode: list[dict]) -> dict:
    """The report's ``generation`` key, with the generated text, the KV cache size, the
    float model's tokens and the decode steps' baselines."""
    g = report.generation(cfg, gres, baselines.time_steps(cm), table)
    g["text"] = lm.tokenizer.decode(gres.tokens)
    g["kv_cache_bytes"] = kv_cache_bytes(cm, g["prompt_tokens"] + g["decode_steps"])
    ft = float_tokens(lm.spec, lm.params, gres.golden.prompt, g["decode_steps"])
    g["float_tokens"] = ft
    g["float_agreement"] = sum(a == b for a, b in zip(ft, gres.tokens, strict=True)) / len(ft)
    if "decode" in g:
        dres = gres.phase("decode")
        h = report.hybrid(cfg, report.layer_rows(cfg, dres, table), baselines.time_steps(cm),
                          table)
        g["decode"].update(baselines.compare(cfg, table, h, report.shapes(dres),
                                             converted_decode))
        g["decode"]["hybrid"] = h
    return g


def _print_generation(g: dict, out: Path, wall: float) -> int:
    """The printed summary of a generation run; 1 if anything differs."""
    ok = g["bit_exact"]
    print(f"{'BIT-EXACT' if ok else 'MISMATCH'}: prefill of {g['prompt_tokens']} tokens and "
          f"{g['decode_steps']} decode steps, tokens {g['tokens']} ({g['text']!r}), "
          f"{wall:.1f} s; reports in {out}")
    print("\n".join(report.generation_lines(g)))
    if not ok:
        what = ("the tokens" if not g["tokens_match"] else "a pass's GEMMs or hidden states")
        print(f"error: the generation differs from the golden model's in {what} "
              f"(golden tokens {g['golden_tokens']})", file=sys.stderr)
        return 1
    return 0


def _resident(a, cfg: AccelConfig, cm: ConvertedModel, dev: Device) -> dict:
    """The model in the device's external memory: written first with ``--load``, else
    used if the device holds it already (``accel.resident``); what was done, for the
    report. The load's link traffic is kept out of the run's."""
    image = resident_image(cfg, cm)
    out: dict = {"image_words": len(image.words), "blocks": len(image), "loaded": None,
                 "image_bytes": len(image.words) * cfg.dram_bits // 8}
    if getattr(a, "load", False):
        t0 = time.perf_counter()
        with tqdm(total=len(image.words), unit="word", disable=a.quiet, desc="load") as bar:
            dev.load_image(image, verify=True, progress=bar.update)
        out["loaded"] = {"link_bytes": dev.link_bytes(), "seconds": time.perf_counter() - t0,
                         "frames": dev.stats["frames_tx"]}
        dev.stats.clear()
    elif not getattr(a, "no_resident", False):
        dev.use_image(image)
    out["used"] = dev.image is not None
    _say(a, "model: " + ("weights, constants and start values from the external memory"
                         if out["used"] else "not in the external memory; every word "
                         "crosses the link (load it with --load or `host load`)"))
    return out


def cmd_load(a) -> int:
    bundle = Path(a.bundle)
    cfg, _ = _bundle(bundle, RUN_FILES)
    board = read_board(bundle)
    t = SerialTransport(a.port, a.baud or (board["baud"] if board else BAUD))
    try:
        dev = Device(t, cfg, retries=a.retries)
        dev.identify()
        cm, _ = _model(bundle)
        a.load = True
        r = _resident(a, cfg, cm, dev)
    finally:
        t.close()
    print(f"loaded {r['image_bytes']:,} bytes ({r['blocks']} blocks) into the external "
          f"memory, verified by CRC-32, in {r['loaded']['seconds']:.1f} s "
          f"({r['loaded']['link_bytes']:,} link bytes)")
    return 0


def cmd_sim(a) -> int:
    bundle = Path(a.bundle)
    _bundle(bundle, (CONFIG, "spikellm_top.v"))
    _warn_if_stale(bundle)
    with simulator(bundle) as dev:
        print(dev.url, flush=True)
        try:
            dev.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _steps(s: str) -> int:
    """``--generate``: a number of decode steps, 0 or more."""
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of decode steps, not "
                                         f"{s!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more decode steps, not {n}")
    return n


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
    r.add_argument("--baud", type=int, default=None,
                   help="serial rate (default: the bundle's board.json, else 1,000,000)")
    r.add_argument("--text", default=DEFAULT_TEXT, help="input text (the prompt with --generate)")
    r.add_argument("--generate", type=_steps, default=None, metavar="N",
                   help="decoder models: prefill the text, then N greedy decode steps with a "
                        "KV cache, all on the device (docs/generate.md)")
    r.add_argument("--out", help="report directory (default BUNDLE/run)")
    r.add_argument("--json", help="also write report.json here")
    r.add_argument("--energy-table", help="JSON pJ table (default: Horowitz 45 nm)")
    r.add_argument("--verify", action="store_true", help="read every weight write back")
    r.add_argument("--retries", type=int, default=8, help="retransmissions per request")
    r.add_argument("--faults", type=float, default=0.0,
                   help="inject link faults at this rate (testing the recovery)")
    r.add_argument("--seed", type=int, default=0, help="fault injection seed")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    res = r.add_mutually_exclusive_group()
    res.add_argument("--load", action="store_true",
                     help="write the model into the device's external memory first (what "
                          "`host load` does), then run from there")
    res.add_argument("--no-resident", action="store_true",
                     help="send every word over the link even if the device holds the model")
    ld = sub.add_parser("load", help="write a bundle's model into the board's external memory "
                                     "(SDRAM), verified by read-back; later runs use it")
    ld.add_argument("--bundle", required=True)
    ld.add_argument("--port", required=True, help="serial device or pyserial URL")
    ld.add_argument("--baud", type=int, default=None)
    ld.add_argument("--retries", type=int, default=8)
    ld.add_argument("--quiet", action="store_true")
    s = sub.add_parser("sim", help="serve a bundle's simulated device; prints its URL")
    s.add_argument("--bundle", required=True)
    a = p.parse_args(argv)
    try:
        return {"run": cmd_run, "load": cmd_load, "sim": cmd_sim}[a.cmd](a)
    except (OSError, ValueError, DeviceError, LinkError, RuntimeError) as e:
        # bad bundles and inputs, devices that cannot be reached: one line, no traceback
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
