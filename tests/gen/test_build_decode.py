"""``gen build --workload decode``: sizing for generation (one row per GEMM over a KV cache)
and what it changes against sizing for the prefill."""

import json

import gen.build as gen_build
from gen.__main__ import main
from gen.sizing import SLACK
from models.arch import random_model, tiny_config
from models.generate import decode_trace

from ..helpers import one_error_line

ARGS = ["build", "--model", "tiny-llama", "--quiet", "--tokens", "16", "--fix", "lanes=8"]


def test_decode_sizing_reports_how_it_differs_from_prefill(fast_model, tiny_llama,
                                                           tiny_llama_cm, tmp_path, capsys):
    out = tmp_path / "b"
    assert main([*ARGS, "--out", str(out), "--workload", "decode", "--decode-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "(decode)" in printed and "Sized for decode: " in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["workload"] == {"kind": "decode", "prompt_tokens": rep["model"]["tokens"] - 3,
                               "decode_steps": 3}
    assert rep["totals"]["tokens"] == 3
    assert {r["m"] for r in rep["layers"]} == {1}  # one row per GEMM
    d = rep["decode_sizing"]
    cfg = rep["config"]
    assert {f: cfg[f] for f in gen_build.SIZED} == {f: d["decode_choice"][f]
                                                     for f in gen_build.SIZED}
    assert d["decode_choice"]["max_rows"] == 1 < d["prefill_choice"]["max_rows"]  # no rows
    assert d["differs"]["max_rows"] == {"decode": 1, "prefill": d["prefill_choice"]["max_rows"]}
    assert not d["same_config"]
    assert all(d["decode_choice"][f] == d["prefill_choice"][f] for f in gen_build.SIZED
               if f not in d["differs"])
    # each configuration is predicted on both workloads; on its own, each is at most the
    # sizer's slack slower than the other (it takes the smallest within the slack of the
    # fastest, and the other configuration is one of its candidates)
    c = d["cycles_per_token"]
    assert c["decode"]["decode_config"] == rep["totals"]["cycles_per_token"]
    assert c["decode"]["decode_config"] <= c["decode"]["prefill_config"] * (1 + SLACK)
    assert c["prefill"]["prefill_config"] <= c["prefill"]["decode_config"] * (1 + SLACK)
    assert "## Sized for decode" in (out / "report.md").read_text()
    # the hybrid and the converted baselines are charged for the same decode steps
    ids = gen_build.sample_ids(tiny_llama, 16)
    calls = decode_trace(tiny_llama_cm, ids, 3)
    assert sum(len(b["name"]) > 0 for b in rep["baselines"]) == 5
    fp16 = rep["baselines"][0]
    assert fp16["macs"] == sum(c.codes.shape[0] * c.codes.shape[1] * c.w.shape[0]
                               for c in calls)
    # the compiled program is one decode step's GEMMs
    prog = json.loads((out / "program.json").read_text())
    assert len(prog["gemms"]) == len(calls) // 3


def test_prefill_builds_have_no_decode_sizing(fast_model, tmp_path):
    out = tmp_path / "b"
    assert main([*ARGS, "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["workload"] == {"kind": "prefill", "tokens": rep["model"]["tokens"]}
    assert "decode_sizing" not in rep


def test_decode_refusals_name_the_problem(fast_model, tmp_path, capsys):
    out = tmp_path / "b"
    assert main([*ARGS, "--out", str(out), "--workload", "decode", "--decode-steps", "16"]) == 2
    assert "decode steps must be in 1..15 for 16 calibration tokens, not 16" in \
        one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_an_encoder_cannot_be_sized_for_decode(tmp_path, capsys):
    src = tmp_path / "bert"
    random_model(tiny_config("bert", hidden=32, heads=2, ffn=64, layers=1, vocab=300),
                 seed=1).save_pretrained(src)
    out = tmp_path / "b"
    assert main(["build", "--model", str(src), "--out", str(out), "--quiet", "--tokens", "12",
                 "--workload", "decode"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--workload decode: " in line and "is an encoder (bert)" in line
    assert not out.exists()
