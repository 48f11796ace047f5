"""The emitted Verilog is a function of the configuration only: not of Python's string
hashing (``PYTHONHASHSEED``), which orders sets of enum members hashed by name."""

import hashlib
import os
import subprocess
import sys

EMIT = ("import hashlib, sys; from hw.device import emit_verilog; "
        "from accel.config import PRESETS; "
        "sys.stdout.write(hashlib.sha256(emit_verilog(PRESETS['tiny']).encode()).hexdigest())")


def _digest(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", EMIT], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout


def test_verilog_does_not_depend_on_the_hash_seed():
    digests = {seed: _digest(seed) for seed in ("1", "2", "3")}
    assert len(set(digests.values())) == 1, digests
    assert len(digests["1"]) == len(hashlib.sha256().hexdigest())
