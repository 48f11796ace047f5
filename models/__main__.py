"""Command line: ``python -m models eval|convert``.

``eval --model minilm`` prints the accuracy table (FP32 vs the hybrid and its baselines);
``convert --model NAME_OR_DIR --out DIR`` writes a converted-model bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict

from .arch import BUILTIN, ModelInputError, load_model
from .bundle import save_bundle
from .calibrate import dual_encoding
from .convert import builtin_text
from .encodings import Encoding
from .evaluate import (
    ADAPTIVE_STEPS,
    CALIBRATION_STEPS,
    ablation,
    adaptive,
    calibration,
    evaluate,
    format_table,
    schemes,
)
from .options import (
    CHOICES,
    DEFAULT_DISTILL_EPOCHS,
    DEFAULT_MIN_SPIKE_SHARE,
    ConvertOptions,
    host_out,
    host_out_flags,
)


def _encoding(s: str) -> Encoding:
    kind, _, arg = s.partition(":")
    try:
        if kind in ("ttfs", "ttfs-signed", "int"):
            return Encoding(kind, int(arg or (8 if kind == "int" else 4)))
        if kind == "graded":
            t, x, lv = (arg or "5x3").partition("x")
            # graded:T (T in 1..8): Dual conversion's neuron covering 4-bit codes
            return Encoding(kind, steps=int(t), levels=int(lv)) if x else dual_encoding(int(t))
        if kind == "ternary":  # ternary:T (MAR), ternary:TxL (SpikingMamba's signed levels)
            t, _, lv = (arg or "8").partition("x")
            return Encoding(kind, steps=int(t), levels=int(lv or 1))
        return Encoding(kind, steps=int(arg or 8))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{s!r}: {e}") from e


def _count(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number >= 0")
    return n


def _share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{s!r} is not a share in [0, 1]")
    return v


def _steps(s: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(v) for v in s.split(","))
        for t in steps:
            dual_encoding(t)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{s!r}: comma-separated time steps in 1..8 ({e})") \
            from e
    return steps


def _adaptive_steps(s: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(v) for v in s.split(","))
        for t in steps:
            Encoding("if-adaptive", steps=t)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{s!r}: comma-separated time steps ({e})") from e
    return steps


#: Built-in evaluation texts ``eval --sentences`` takes by name (``models/data``).
BUILTIN_TEXTS = ("eval_sentences", "heldout_sentences")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("eval", help="accuracy table of the conversion schemes")
    ev.add_argument("--model", default="minilm",
                    help=f"built-in name ({', '.join(BUILTIN)}) or HF directory (default minilm)")
    ev.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    ev.add_argument("--sentences", metavar="FILE|NAME",
                    help="evaluation sentences, one a line: a file, or a built-in text "
                         "(eval_sentences, the default; heldout_sentences, which nothing "
                         "calibrates or trains on)")
    ev.add_argument("--ablation", action="store_true",
                    help="also show the hybrid with each accuracy remedy switched on in turn")
    ev.add_argument("--calibration", action="store_true",
                    help="also show rate-coded and graded all-spike schemes at each --steps T, "
                         "uncalibrated and with Dual / FAS threshold calibration")
    ev.add_argument("--steps", type=_steps, default=CALIBRATION_STEPS, metavar="T,T,...",
                    help="time steps of --calibration (default "
                         f"{','.join(map(str, CALIBRATION_STEPS))})")
    ev.add_argument("--only-calibration", action="store_true",
                    help="with --calibration or --adaptive: skip the standard schemes")
    ev.add_argument("--adaptive", type=_adaptive_steps, nargs="?", const=ADAPTIVE_STEPS,
                    metavar="T,T,...",
                    help="also show SNN2ANN's IF neuron with hard reset and an adaptive "
                         "threshold (if-adaptive, inexact) at each T (default "
                         f"{','.join(map(str, ADAPTIVE_STEPS))}), with its error against its "
                         "quantized model")
    cv = sub.add_parser("convert", help="convert a model and write its bundle")
    cv.add_argument("--model", required=True, help=f"built-in name ({', '.join(BUILTIN)}) or dir")
    cv.add_argument("--out", required=True, help="bundle directory to write")
    cv.add_argument("--encoding", default="ttfs-signed:4", type=_encoding,
                    help="ttfs[:bits] | ttfs-signed[:bits] | rate[:T] | graded[:TxL] | "
                         "graded:T (T in 1..8, L covering 4-bit codes) | ternary[:T[xL]] | "
                         "if-adaptive[:T] (SNN2ANN's hard-reset adaptive-threshold neuron, "
                         "inexact, T <= 31) | int[:bits] (default ttfs-signed:4: zero is "
                         "silent)")
    cv.add_argument("--outliers", type=_count, default=None,
                    help="outlier channels per GEMM (default: 1/32 of the channels)")
    cv.add_argument("--static", action="store_true", help="static per-tensor activation steps")
    cv.add_argument("--no-rotate", action="store_true", help="no Hadamard rotation")
    cv.add_argument("--rtn", action="store_true", help="round-to-nearest weights, not GPTQ")
    d = ConvertOptions()
    cv.add_argument("--damp", type=float, default=d.gptq_damp,
                    help=f"GPTQ dampening, fraction of the mean Hessian diagonal "
                         f"(default {d.gptq_damp:g})")
    cv.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=d.act_order,
                    help="GPTQ rounds the columns with the most input energy first")
    cv.add_argument("--weight-search", choices=CHOICES["weight_search"], default=d.weight_search,
                    help=f"weight step per channel: least weight or layer-output error, or the "
                         f"channel max (default {d.weight_search})")
    cv.add_argument("--gptq-target", choices=CHOICES["gptq_target"], default=d.gptq_target,
                    help=f"GPTQ matches the float output from float or from quantized inputs "
                         f"(default {d.gptq_target})")
    cv.add_argument("--bias-correction", action=argparse.BooleanOptionalAction,
                    default=d.bias_correction, help="add the mean calibration output error "
                                                    "to each linear layer's bias")
    cv.add_argument("--smooth-vo", type=float, default=d.smooth_vo, metavar="ALPHA",
                    help=f"SmoothQuant strength between V and o, 0 = off (default "
                         f"{d.smooth_vo:g})")
    cv.add_argument("--outlier-rule", choices=CHOICES["outlier_rule"], default=d.outlier_rule,
                    help=f"outlier channels by calibration magnitude or by their effect on the "
                         f"output (default {d.outlier_rule})")
    cv.add_argument("--threshold-calib", choices=CHOICES["threshold_calib"],
                    default=d.threshold_calib,
                    help=f"spiking thresholds: the plain quantizer's, Dual conversion's "
                         f"(per layer: threshold, initial membrane) or FAS stage 2's (per layer, "
                         f"then per input channel) (default {d.threshold_calib})")
    cv.add_argument("--calib-sentences", type=_count, default=d.calib_sentences,
                    help=f"calibration sentences (default {d.calib_sentences})")
    cv.add_argument("--outlier-shift", choices=CHOICES["outlier_shift"], default=d.outlier_shift,
                    help=f"outlier channel shifts: fit the calibration maximum, or least "
                         f"calibration error (default {d.outlier_shift})")
    cv.add_argument("--unsigned-nonneg", action=argparse.BooleanOptionalAction,
                    default=d.unsigned_nonneg,
                    help="inputs that are never negative (softmax, ReLU) get the unsigned "
                         "form of a sign-magnitude TTFS encoding (default on)")
    cv.add_argument("--distill", type=_count, default=None, metavar="EPOCHS",
                    help=f"quantization-aware distillation passes over the calibration text "
                         f"(minutes on a CPU; 0 = off; default {DEFAULT_DISTILL_EPOCHS} for "
                         f"transformer models and exact encodings)")
    cv.add_argument("--distill-lr", type=float, default=d.distill_lr,
                    help=f"distillation learning rate, weight codes per step "
                         f"(default {d.distill_lr:g})")
    cv.add_argument("--learn-rotation", type=_count, default=d.learn_rotation, metavar="STEPS",
                    help=f"learned per-head V->o rotation (SpinQuant R2), Adam steps per block "
                         f"(default {d.learn_rotation}: off, the seeded Hadamard only)")
    cv.add_argument("--learn-host-rotation", type=_count, default=d.learn_host_rotation,
                    metavar="STEPS",
                    help=f"learned orthogonal matrix the host applies after its rotation, per "
                         f"input up to 512 wide, Adam steps (default {d.learn_host_rotation})")
    host_out_flags(cv)
    cv.add_argument("--min-spike-share", type=_share, default=None,
                    metavar="SHARE",
                    help=f"mixed hybrid: move the linear GEMMs whose spike inputs cost most on "
                         f"the calibration text to int8 inputs while at least SHARE of the "
                         f"linear input channels stay spikes; 0 = off (default "
                         f"{DEFAULT_MIN_SPIKE_SHARE:g} for transformer models and spiking "
                         f"encodings)")
    for sp in (ev, cv):
        sp.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    a = p.parse_args(argv)
    try:
        lm = load_model(a.model)
        if a.cmd == "eval":
            if a.only_calibration and not (a.calibration or a.adaptive):
                raise ValueError("--only-calibration needs --calibration or --adaptive")
            names = ({} if a.only_calibration else schemes()) | \
                (ablation() if a.ablation else {}) | \
                (calibration(a.steps) if a.calibration else {}) | \
                (adaptive(a.adaptive) if a.adaptive else {})
            sentences = None
            if a.sentences:
                sentences = (builtin_text(a.sentences) if a.sentences in BUILTIN_TEXTS else
                             [t.strip() for t in open(a.sentences, encoding="utf-8")
                              if t.strip()])
            rows = evaluate(lm, names, sentences, progress=not a.quiet)
            print(f"model: {a.model}\n")
            print(format_table(rows))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"model": a.model, "rows": [asdict(r) for r in rows]}, f, indent=1)
            return 0
        from .convert import convert

        opts = ConvertOptions(encoding=a.encoding, outlier_count=a.outliers,
                              per_token=not a.static, rotate=not a.no_rotate, gptq=not a.rtn,
                              gptq_damp=a.damp, act_order=a.act_order,
                              weight_search=a.weight_search, gptq_target=a.gptq_target,
                              bias_correction=a.bias_correction, smooth_vo=a.smooth_vo,
                              outlier_rule=a.outlier_rule, threshold_calib=a.threshold_calib,
                              calib_sentences=a.calib_sentences,
                              outlier_shift=a.outlier_shift, unsigned_nonneg=a.unsigned_nonneg,
                              distill_epochs=a.distill, distill_lr=a.distill_lr,
                              learn_rotation=a.learn_rotation,
                              learn_host_rotation=a.learn_host_rotation,
                              min_spike_share=a.min_spike_share)
        opts = host_out(opts, a.host_out)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            cm = convert(lm, opts, progress=not a.quiet)
        for w in caught:  # e.g. outlier shifts lowered to fit the accumulator: one line each
            print(f"warning: {_one_line(w.message)}", file=sys.stderr)
        out = save_bundle(cm, a.out)
        print(f"wrote {out}")
        return 0
    except (ModelInputError, ValueError, OSError) as e:
        # bad input (ModelInputError names the file and field), a broken contract
        # (ContractError), or a file that cannot be written: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
