"""``python -m host run`` on bad bundles and ports, and the self-contained bundle.

One small tiny-llama bundle is built per module (from the session's converted model in
``conftest.py``, and sized to its simulator's configuration so that the session's Verilator
build serves it). Each bad bundle is a mutated copy, run as a subprocess: it must exit 2
with one ``error:`` line naming the file or field, no traceback, before any simulator is
compiled.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from accel.config import AccelConfig
from gen.__main__ import main as gen_main
from host import __main__ as host_main
from host.__main__ import main

from ..helpers import one_error_line, reuse_conversion
from .conftest import CFG


def _env() -> dict:
    """The subprocesses import the code under test, however the project is installed."""
    root = str(Path(__file__).resolve().parents[2])
    return os.environ | {"PYTHONPATH": os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))}

#: Pins the generator to the session simulator's configuration.
FIX = ",".join(f"{k}={getattr(CFG, k)}" for k in (
    "lanes", "mac_units", "weight_depth", "max_rows", "spike_event_depth", "mac_event_depth",
    "max_steps", "spike_rows")) + f",encodings={'+'.join(CFG.encodings)}"
TEXT = "A dozen tokens of text for the tiny model."


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_llama, tiny_llama_cm):
    lm, cm = tiny_llama, tiny_llama_cm
    out = tmp_path_factory.mktemp("bundle") / "b"
    with pytest.MonkeyPatch.context() as mp:  # reuse the session's model and conversion
        reuse_conversion(mp, lm, cm)
        assert gen_main(["build", "--model", "tiny-llama", "--out", str(out), "--quiet",
                         "--tokens", "16", "--fix", FIX]) == 0
    cfg = AccelConfig.from_json(json.loads((out / "config.json").read_text())["config"])
    assert cfg.hash32() == CFG.hash32()
    return out


def _json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _arch(field, value):
    def mutate(b):
        _json(b / "model" / "manifest.json",
              lambda m: m | {"arch": m["arch"] | {field: value}})
    return mutate


def _remove(rel):
    def mutate(b):
        p = b / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return mutate


def _write(rel, text):
    def mutate(b):
        (b / rel).write_text(text)
    return mutate


#: (id, mutation, words the one error line must contain); the table of the final report.
BAD = [
    ("manifest-is-a-list", _write("model/manifest.json", "[]"),
     ["model/manifest.json", "must be a JSON object, not a JSON list"]),
    ("layers-1e6", _arch("layers", 1e6),
     ["model/manifest.json", "layers", "1000000.0"]),
    ("layers-million", _arch("layers", 1_000_000),
     ["model/manifest.json", "layers", "1000000"]),
    ("layers-string", _arch("layers", "2"),
     ["model/manifest.json", "layers", "'2'"]),
    ("unknown-activation", _arch("act", "swish"),
     ["model/manifest.json", "act", "swish"]),
    ("no-tensors", _remove("model/tensors.safetensors"), ["model: no tensors.safetensors"]),
    ("no-tokenizer", _remove("tokenizer"), ["no tokenizer/", "rebuild"]),
    ("bad-tokenizer", _write("tokenizer/tokenizer.json", "not json"),
     ["tokenizer: unreadable tokenizer"]),
    ("no-float-model", _remove("float"), ["no float/", "rebuild"]),
    ("config-is-a-list", _write("config.json", "[1]"),
     ["config.json: must be a JSON object, not a JSON list"]),
    ("program-of-another-config", _write("program.json", "{}"),
     ["program.json: compiled for config None, the bundle's is 0x"]),
    ("board-divisor-disagrees", _write("board.json", json.dumps(
        {"clock_hz": 75e6, "baud": 3_000_000, "uart_divisor": 24})),
     ["board.json: uart_divisor 24 disagrees with clock_hz 7.5e+07 and baud 3000000"]),
]


def _run(args, cwd) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "host", "run", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=300, env=_env())
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


@pytest.fixture(scope="module")
def bad_runs(bundle, tmp_path_factory):
    """Every case of :data:`BAD` run at once (the subprocesses spend their time importing)."""
    base = tmp_path_factory.mktemp("bad")
    jobs = {}
    for name, mutate, _ in BAD:
        copy = base / name
        shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("sim", "run"))
        mutate(copy)
        jobs[name] = (copy, ["--bundle", str(copy), "--sim", "--quiet", "--text", TEXT])
    with ThreadPoolExecutor(4) as pool:
        futures = {k: pool.submit(_run, args, base) for k, (_, args) in jobs.items()}
        return {k: (jobs[k][0], *f.result()) for k, f in futures.items()}




@pytest.mark.slow
@pytest.mark.parametrize(("name", "words"), [(n, w) for n, _, w in BAD],
                         ids=[n for n, _, _ in BAD])
def test_a_bad_bundle_is_one_line_exit_2(bad_runs, name, words):
    copy, rc, _, err, _ = bad_runs[name]
    assert rc == 2, err
    line = one_error_line(err)
    for w in words:
        assert w in line, line
    assert not (copy / "sim").exists(), "refused only after building the simulator"
    assert not (copy / "run").exists()


def test_the_port_is_opened_before_the_model_loads(bundle, tmp_path, monkeypatch, capsys):
    def no(*a, **k):
        raise AssertionError("the model was loaded before the port was opened")

    monkeypatch.setattr(host_main, "_model", no)
    monkeypatch.setattr(host_main, "load_bundle", no)
    port = tmp_path / "ttyNONE"
    assert main(["run", "--bundle", str(bundle), "--port", str(port)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: cannot open {port}: no such device"


@pytest.mark.slow
def test_a_bad_port_fails_fast_even_with_a_bad_model(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("sim", "run"))
    (copy / "model" / "manifest.json").write_text("[]")  # would be refused if it were read
    rc, _, err, wall = _run(["--bundle", str(copy), "--port", "/dev/ttyNONE-spikellm"],
                            tmp_path)
    assert rc == 2
    assert "cannot open /dev/ttyNONE-spikellm" in one_error_line(err)
    assert wall < 60  # imports only; the model used to load first (28 s for MiniLM)


@pytest.mark.slow
def test_the_bundle_is_self_contained(bundle, tiny_llama, sim_binary, tmp_path, monkeypatch,
                                      capsys):
    from sim.device import SimDevice

    lm = tiny_llama
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(bundle, moved, ignore=shutil.ignore_patterns("sim", "run"))
    # a hostile report naming a model directory outside the bundle (relative to the
    # working directory, where the old host run resolved it): nothing of it may be read
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "config.json").write_text('{"model_type": "bert", "hidden_size": "x"}')
    _json(moved / "report.json", lambda r: r | {"model": r["model"] | {"name": "../decoy"}})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with SimDevice(sim_binary) as dev:
        assert main(["run", "--bundle", "../elsewhere/moved", "--port", dev.url, "--text",
                     TEXT]) == 0
    cap = capsys.readouterr()
    assert "BIT-EXACT" in cap.out
    for status in ("device: opening", "model: loading", "baselines"):
        assert status in cap.err, status
    rep = json.loads((moved / "run" / "report.json").read_text())
    assert rep["bit_exact"] and rep["model"] == "tiny-llama"
    assert rep["tokens"] == lm.tokenize(TEXT).numel()
    assert not list(cwd.iterdir())
