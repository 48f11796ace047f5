"""``python -m gen build`` on bad model directories, and what a failed build leaves at
``--out`` (nothing new: the bundle is staged and published only when complete)."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gen.build as gen_build
from gen.__main__ import main
from models.arch import random_model, tiny_config

from ..helpers import one_error_line


def _env() -> dict:
    """The subprocesses import the code under test, however the project is installed."""
    root = str(Path(__file__).resolve().parents[2])
    return os.environ | {"PYTHONPATH": os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _llama(d, **change):
    tiny_config("llama", layers=1).save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | change))


def _gpt2(d):
    random_model(tiny_config("gpt2", hidden=32, heads=2, ffn=64, layers=1, vocab=500)
                 ).save_pretrained(d)


def _corrupt(d):
    _gpt2(d)
    (d / "model.safetensors").write_bytes(b"\0" * 100)


#: (id, how to make the model directory (None: leave it absent), words of the one error
#: line); the table of the final report.
BAD = [
    ("config-is-a-list", lambda d: (d / "config.json").write_text("[]"),
     ["config.json", "a JSON list"]),
    ("unknown-architecture", lambda d: (d / "config.json").write_text(
        '{"model_type": "rwkv"}'), ["unsupported architecture 'rwkv'"]),
    ("layers-a-string", lambda d: _llama(d, num_hidden_layers="two"),
     ["config.json", "num_hidden_layers", "two"]),
    ("unknown-activation", lambda d: _llama(d, hidden_act="swish"),
     ["config.json", "hidden_act", "swish"]),
    ("no-weights", lambda d: _llama(d), ["no-weights", "weights"]),
    ("corrupt-weights", _corrupt, ["model.safetensors"]),
]


@pytest.fixture(scope="module")
def bad_builds(tmp_path_factory):
    """Every case of :data:`BAD` as a subprocess, all at once (they spend their time
    importing); with the progress bar on, to see the error is not printed inside it."""
    base = tmp_path_factory.mktemp("badmodels")

    jobs = {}
    for name, make, _ in BAD:  # made here: transformers' lazy imports are not thread-safe
        src, parent = base / name / "model", base / name / "outs"
        parent.mkdir(parents=True)
        if make is not None:
            src.mkdir()
            make(src)
        jobs[name] = (parent, ["--model", str(src), "--out", str(parent / "out")])

    def run(parent, args):
        p = subprocess.run([sys.executable, "-m", "gen", "build", *args, "--fix", "lanes=8"],
                           capture_output=True, text=True, timeout=300, env=_env(), cwd=base)
        return parent, p.returncode, p.stderr

    with ThreadPoolExecutor(4) as pool:
        futures = {n: pool.submit(run, *job) for n, job in jobs.items()}
        return {n: f.result() for n, f in futures.items()}




@pytest.mark.slow
@pytest.mark.parametrize(("name", "words"), [(n, w) for n, _, w in BAD],
                         ids=[n for n, _, _ in BAD])
def test_a_bad_model_directory_is_one_line_exit_2(bad_builds, name, words):
    parent, rc, err = bad_builds[name]
    assert rc == 2, err
    line = one_error_line(err)
    for w in words:
        assert w in line, line
    assert list(parent.iterdir()) == [], "a failed build left something at --out"


ARGS = ["build", "--model", "tiny-llama", "--quiet", "--tokens", "16", "--fix", "lanes=8"]


def test_a_failed_build_creates_no_out_directory(fast_model, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "out"
    assert main([*ARGS, "--out", str(out), "--budget", "lut=2000"]) == 3
    assert "does not fit" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # not out, not its parents, no staging folder


def test_a_failed_build_leaves_an_existing_out_directory_as_it_was(fast_model, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "model" / "old.txt").write_text("an older bundle's")

    def fail(*a, **k):
        raise ValueError("late failure")

    monkeypatch.setattr(gen_build, "link_description", fail)  # during emit, after model/
    assert main([*ARGS, "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["model", "notes.txt"]
    assert [p.name for p in (out / "model").iterdir()] == ["old.txt"]
    assert list(tmp_path.iterdir()) == [out]


def test_a_build_into_an_existing_directory_keeps_other_files(fast_model, tmp_path):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "model" / "old.txt").write_text("an older bundle's")
    assert main([*ARGS, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names >= {"notes.txt", "model", "tokenizer", "float", "config.json", "report.json"}
    assert not [n for n in names if n.startswith(".")], names  # no staging folder left
    assert not (out / "model" / "old.txt").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_a_pinned_max_shift_below_the_models_outlier_shifts_is_refused(fast_model, tmp_path,
                                                                     capsys):
    out = tmp_path / "x"
    assert main([*ARGS[:-1], "lanes=8,max_shift=0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--fix max_shift=0: node layers." in err and "has outlier shifts up to" in err
    assert not out.exists()


def test_fixed_encodings_that_leave_out_the_models_spikes_are_refused(fast_model, tmp_path,
                                                                     capsys):
    out = tmp_path / "x"
    assert main([*ARGS[:-1], "lanes=8,encodings=rate+int", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ttfs-signed spikes, which the fixed encodings=rate+int leave out" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, words", [
    (["--pnr", "--baud", "0"], "--baud 0 with --freq 100: baud rate must be positive"),
    (["--bitstream", "--freq", "5"], "no PLL clock at or below 5 MHz runs the UART"),
    (["--pnr", "--seeds", "0"], "seeds must be distinct and at least one"),
])
def test_a_board_clock_or_seed_request_that_cannot_be_met_is_refused_first(
        fast_model, tmp_path, capsys, monkeypatch, extra, words):
    def no_flow(*a, **k):
        raise AssertionError("the flow ran before the options were checked")

    for name in ("synth", "pnr_sweep", "bitstream"):
        monkeypatch.setattr(gen_build.flow, name, no_flow)
    out = tmp_path / "x"
    assert main([*ARGS, "--out", str(out), *extra]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()
