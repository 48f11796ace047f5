"""Conversion options: every choice the converter makes, checked, recorded in the bundle
manifest, and made concrete per model family (:meth:`ConvertOptions.resolved`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace

from .arch import ModelInputError
from .calibrate import METHODS
from .contract import HOST_OUT_WIDTHS
from .encodings import Encoding

#: The allowed values of the options that name a rule.
CHOICES = {"weight_search": ("weight", "output", "none"), "gptq_target": ("float", "quantized"),
           "outlier_rule": ("magnitude", "effect"), "threshold_calib": METHODS,
           "outlier_shift": ("max", "error")}


#: Distillation passes of the default conversion (:mod:`models.distill`; measured in
#: ``docs/quantization.md``: 6 passes gained no more).
DEFAULT_DISTILL_EPOCHS = 4
#: The spike share the default conversion's mixed choice keeps (:mod:`models.mixed`; the
#: floor of issue 14: at least 90 % of the linear layers' input channels are spikes).
DEFAULT_MIN_SPIKE_SHARE = 0.9


@dataclass
class ConvertOptions:
    """Conversion choices (all recorded in the bundle manifest).

    encoding: the spike encoding of the non-outlier channels (``int`` for W4A8).
    outlier_fraction / outlier_count: how many channels per GEMM stay 8-bit integers
        (``outlier_count`` wins when set; 0 outliers gives all-spike W4A4).
    per_token: per-token activation steps for host-produced activations, else static
        per-tensor steps everywhere.
    rotate: Hadamard-rotate host-produced linear-layer inputs (weights absorb it).
    gptq: error-compensating weight rounding; else round to nearest.
    gptq_damp: GPTQ's dampening, a fraction of the Hessian's mean diagonal added to it.
    act_order: GPTQ rounds the columns with the largest input energy first.
    weight_search: how each output channel's weight step is searched: ``"weight"`` (least
        weight error), ``"output"`` (least error of the layer's output on the calibration
        inputs, ``e X^T X e^T``; default) or ``"none"`` (the channel's maximum).
    gptq_target: ``"float"``: GPTQ matches the float layer on float inputs; ``"quantized"``
        (default): it matches the float layer's output from the *quantized* calibration
        inputs (the weights absorb part of the activation rounding error; ridge-regularised
        by ``gptq_damp``). Needs ``gptq``.
    bias_correction: add the calibration median of the layer's output error (float minus
        quantized, activations and weights) to the bias (default).
    smooth_vo: SmoothQuant strength ``alpha`` of a per-channel scaling folded offline into
        V (divided) and the ``o`` weights (multiplied); 0 is off.
    outlier_rule: ``"magnitude"``: outliers are the channels with the largest calibration
        magnitude; ``"effect"``: the largest magnitude times the channel's weight-column
        norm (its effect on the output), for linear layers.
    outlier_shift: each outlier channel's shift: ``"max"`` fits its calibration maximum in
        int8; ``"error"`` (default): least squared calibration error (rare rows may
        saturate).
    unsigned_nonneg: a GEMM input that is never negative on the calibration text (the
        attention probabilities; ReLU outputs) gets the unsigned form of a sign-magnitude
        TTFS encoding (``ttfs-signed:4`` -> ``ttfs:4``, zero point 0): 15 levels instead
        of 7 at the same code width (a 15-step window instead of 7; default on: the build
        report charges each GEMM its own window, ``accel.baselines.windows``).
    threshold_calib: the spiking neurons' thresholds of the linear layers' inputs:
        ``"none"`` (the plain quantizer), ``"dual"`` (Dual conversion: threshold and initial
        membrane per layer) or ``"fas"`` (FAS stage 2: per layer, then per input channel),
        each minimising the layer's output error (:mod:`models.calibrate`).
    calib_sentences / max_tokens: size of the calibration run.
    distill_epochs: passes of quantization-aware distillation over the calibration text
        (:mod:`models.distill`: the 4-bit weight codes, biases and host norms fine-tuned
        against the float model's hidden states, straight-through rounding); 0 is off; None
        (default): :data:`DEFAULT_DISTILL_EPOCHS` where the family and encoding have it
        (:meth:`ConvertOptions.resolved`).
    distill_lr: its learning rate, in weight codes per step (biases and norms: 1/100 of it).
    learn_rotation: Adam steps of a learned per-head rotation between V and the ``o``
        projection, folded into their weights (:mod:`models.rotation`: SpinQuant's R2,
        minimising the ``o`` projection's output error from its quantized input on the
        calibration text); 0 is off (the seeded Hadamard only).
    learn_host_rotation: Adam steps of a learned orthogonal matrix the host applies after
        its rotation of the inputs it produces (``x R Q``, stored as ``<node>.rotq``; the
        weights absorb it), per input of width at most ``models.rotation.HOST_ROT_MAX_K``,
        minimising the output error of the layers reading it from the quantized input
        (:func:`models.rotation.learn_host_rotation`); 0 is off.
    min_spike_share: a mixed hybrid (:mod:`models.mixed`): the converter moves the linear
        GEMMs whose spike inputs cost the model most on the calibration text to int8 inputs
        (W4A8), as long as at least this share of the linear layers' input channels stay
        spikes; the bundle's options list them as ``integer_gemms``. 0 is off; None
        (default): :data:`DEFAULT_MIN_SPIKE_SHARE` for spiking encodings outside the mamba
        family (:meth:`ConvertOptions.resolved`).
    host_out_bits: the width of the GEMM's outputs that go back to the host (those no
        later GEMM takes as codes): 16 or 8 (``models.contract.HOST_OUT_WIDTHS``; 8 is read
        back through OUT8 at half the link bytes, at a coarser step), for every GEMM or per
        layer (``layers={"layers.*.o": {"host_out_bits": 8}}``); None (default): 8 for the
        up projection of an MLP that is not gated (GELU's or ReLU's input), 16 elsewhere
        (``models.convert.host_out_bits``).
    host_out_shared_step: a linear GEMM's outputs to the host on one step for all its
        channels (its largest channel's) instead of one a channel: what one GELU table on
        the output unit would need (``docs/memory.md``); off by default.
    layers: per-GEMM overrides, ``{glob: {"encoding": Encoding, "outlier_count": int, ...}}``
        matched with :func:`fnmatch.fnmatch` against node names (``layers.*.down``), applied
        in order; e.g. keep one layer all-integer W4A8 inside a hybrid model.
    """

    encoding: Encoding = Encoding("ttfs-signed", 4)  # noqa: RUF009 (frozen: sharing is safe)
    outlier_fraction: float = 1 / 32
    outlier_count: int | None = None
    per_token: bool = True
    rotate: bool = True
    gptq: bool = True
    gptq_damp: float = 0.1
    act_order: bool = True
    weight_search: str = "output"
    gptq_target: str = "quantized"
    bias_correction: bool = True
    smooth_vo: float = 0.8
    outlier_rule: str = "magnitude"
    outlier_shift: str = "error"
    unsigned_nonneg: bool = True
    threshold_calib: str = "none"
    seed: int = 0
    calib_sentences: int = 256
    max_tokens: int = 128
    distill_epochs: int | None = None
    distill_lr: float = 0.01
    learn_rotation: int = 0
    learn_host_rotation: int = 0
    min_spike_share: float | None = None
    host_out_bits: int | None = None
    host_out_shared_step: bool = False
    layers: dict[str, dict] = field(default_factory=dict)

    def resolved(self, family: str) -> ConvertOptions:
        """These options with the defaults left as None made concrete for a model of
        ``family``: distillation and the mixed choice are on for the transformer families
        (the mamba converter has neither), distillation only for exact encodings, the
        mixed choice only for spiking ones."""
        d: dict = {}
        if self.distill_epochs is None:
            d["distill_epochs"] = (DEFAULT_DISTILL_EPOCHS
                                   if family != "mamba" and self.encoding.exact else 0)
        if self.min_spike_share is None:
            d["min_spike_share"] = (DEFAULT_MIN_SPIKE_SHARE
                                    if family != "mamba" and self.encoding.is_spiking else 0.0)
        return replace(self, **d)

    def for_node(self, name: str) -> ConvertOptions:
        """The options in force for GEMM ``name`` after the per-layer overrides."""
        opts = self
        for pattern, over in self.layers.items():
            if fnmatch.fnmatch(name, pattern):
                opts = replace(opts, **over)
        return opts

    def check(self) -> None:
        """Refuse malformed options (:class:`ModelInputError` naming the option)."""
        def bad(name: str, what: str, v=None) -> ModelInputError:
            v = getattr(self, name) if v is None else v
            return ModelInputError(f"option {name}: {what}, not {v!r:.60}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.encoding, Encoding):
            raise bad("encoding", "must be an Encoding")
        f = self.outlier_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
            raise bad("outlier_fraction", "must be a number in [0, 1]")
        if self.outlier_count is not None and not (is_int(self.outlier_count) and
                                                   self.outlier_count >= 0):
            raise bad("outlier_count", "must be an integer >= 0 (--outliers)")
        for name in ("per_token", "rotate", "gptq", "act_order", "bias_correction",
                     "unsigned_nonneg", "host_out_shared_step"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be True or False")
        for name, lo, hi in (("gptq_damp", 1e-6, 10.0), ("smooth_vo", 0.0, 1.0),
                             ("distill_lr", 1e-6, 1.0), ("min_spike_share", 0.0, 1.0)):
            v = getattr(self, name)
            if name == "min_spike_share" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise bad(name, f"must be a number in [{lo:g}, {hi:g}]")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {', '.join(map(repr, allowed))}")
        if self.threshold_calib != "none" and not self.encoding.exact:  # if-adaptive
            raise bad("threshold_calib", f"must be 'none' for {self.encoding.name()}")
        if not is_int(self.seed):
            raise bad("seed", "must be an integer")
        for name in ("calib_sentences", "max_tokens"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise bad(name, "must be a positive integer")
        if self.distill_epochs is not None and not (is_int(self.distill_epochs)
                                                    and self.distill_epochs >= 0):
            raise bad("distill_epochs", "must be an integer >= 0")
        if self.distill_epochs and not self.encoding.exact:  # if-adaptive
            raise bad("distill_epochs", f"must be 0 for {self.encoding.name()}")
        for name in ("learn_rotation", "learn_host_rotation"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "must be an integer >= 0")
        if self.host_out_bits is not None and (self.host_out_bits not in HOST_OUT_WIDTHS
                                               or isinstance(self.host_out_bits, bool)):
            raise bad("host_out_bits", f"must be one of {', '.join(map(str, HOST_OUT_WIDTHS))}")
        if not isinstance(self.layers, dict):
            raise bad("layers", "must be a dict of node-name pattern -> overrides")
        known = {f.name for f in fields(self)} - {"layers"}
        for pattern, over in self.layers.items():
            if not isinstance(pattern, str) or not isinstance(over, dict):
                raise bad("layers", "must map node-name patterns to dicts", {pattern: over})
            unknown = sorted(set(over) - known)
            if unknown:
                raise bad("layers", f"unknown option(s) {', '.join(map(str, unknown))} for "
                                    f"{pattern!r}", over)
            replace(self, layers={}, **over).check()

    def to_json(self) -> dict:
        """Manifest form."""
        d = asdict(self)
        d["encoding"] = self.encoding.to_json()
        d["layers"] = {k: {kk: vv.to_json() if isinstance(vv, Encoding) else vv
                           for kk, vv in v.items()} for k, v in self.layers.items()}
        return d


def host_out(opts: ConvertOptions, widths: Iterable[tuple[str, int]]) -> ConvertOptions:
    """``opts`` with, for each ``(pattern, bits)`` in order, the GEMMs whose names match
    ``pattern`` (``fnmatch``, e.g. ``layers.*.up``; ``*`` for all) sending their outputs to
    the host at ``bits`` bits (:attr:`ConvertOptions.host_out_bits`), kept as per-layer
    overrides after the others (the last match wins: the command lines'
    ``--host-out8 GLOB`` and ``--host-out16 GLOB``, in the order given)."""
    layers = dict(opts.layers)
    for p, bits in widths:
        layers[p] = {**layers.pop(p, {}), "host_out_bits": bits}
    return replace(opts, layers=layers)


def host_out_flags(parser) -> None:
    """The ``--host-out8 GLOB`` / ``--host-out16 GLOB`` flags of ``parser`` (an argparse
    parser; both append ``(GLOB, bits)`` to ``host_out``, for :func:`host_out`)."""
    for bits in sorted(HOST_OUT_WIDTHS):
        parser.add_argument(f"--host-out{bits}", dest="host_out", action="append", default=[],
                            metavar="GLOB", type=lambda g, b=bits: (g, b),
                            help=f"the GEMMs whose names match GLOB (e.g. 'layers.*.up', '*'; "
                                 f"repeatable, the last match wins) send their outputs to the "
                                 f"host at {bits} bits (default: 8 for the up projection of "
                                 f"a non-gated MLP, 16 elsewhere)")
