"""Benchmark: golden-model MiniLM forward for 128 tokens on one CPU core (goal < 2 s).

Run: ``python -m pytest -m benchmark bench/test_golden_speed.py -s``. Prints the median of
several runs for the fast (closed-form integer) path and the spike-domain path.
"""

import statistics
import time

import pytest
import torch

from models.arch import load_model
from models.convert import ConvertOptions, convert
from models.golden import run_golden


@pytest.mark.benchmark
def test_minilm_golden_forward_128_tokens_one_core():
    torch.set_num_threads(1)
    lm = load_model("minilm")
    cm = convert(lm, ConvertOptions())
    text = " ".join(["spiking accelerators replace multipliers with accumulates"] * 30)
    ids = lm.tokenize(text, max_tokens=128)
    assert len(ids) == 128
    run_golden(cm, ids)  # warm-up
    times = {}
    for mode in (False, True):
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            run_golden(cm, ids, spike_domain=mode)
            runs.append(time.perf_counter() - t0)
        times["spike-domain" if mode else "integer"] = statistics.median(runs)
    print("\nMiniLM golden forward, 128 tokens, 1 thread, median of 5: "
          + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()))
    assert times["integer"] < 2.0
