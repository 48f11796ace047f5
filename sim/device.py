"""The simulated device: a bundle's Verilog compiled by Verilator with a small C++ harness
(``sim/csrc/server.cpp``) that serves the top's byte streams on a localhost TCP port, so
the host driver reaches it through ``socket://127.0.0.1:PORT`` exactly as it reaches a
board through ``/dev/ttyUSB0``.

A C++ harness rather than cocotb: the link moves a byte per cycle and a MiniLM forward
pass is tens of millions of cycles; cocotb's Python per-cycle loop runs ~30k cycles/s,
the harness runs at Verilator's speed (``docs/host.md`` has the figures).
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib import resources
from pathlib import Path

from .verilator import VERILATOR_ARGS, build_lock, ensure_verilator

TOP = "spikellm_top"


def build_simulator(verilog: str, base: Path, jobs: int = 2) -> Path:
    """Compile ``verilog`` (a ``spikellm_top`` module) into a server binary, once per
    design (the folder is keyed by the Verilog and the harness); returns its path."""
    harness = resources.files("sim").joinpath("csrc", "server.cpp").read_text()
    key = hashlib.sha256((verilog + harness).encode()).hexdigest()[:16]
    out = Path(base) / key
    binary = out / "obj" / "spikellm_sim"
    # another process may be building it (its binary half-linked): wait, then use it
    with build_lock(out):
        if not binary.exists():
            _compile(verilog, harness, out, jobs)
    return binary


def _compile(verilog: str, harness: str, out: Path, jobs: int) -> None:
    binary = out / "obj" / "spikellm_sim"
    (out / f"{TOP}.v").write_text(verilog)
    (out / "server.cpp").write_text(harness)
    exe = ensure_verilator()
    cmd = [exe, "--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
           "--noassert", *VERILATOR_ARGS, "--top-module", TOP, f"{TOP}.v", "server.cpp",
           "-o", "spikellm_sim", "--Mdir", "obj", "-j", str(jobs),
           "-CFLAGS", "-O2", "-MAKEFLAGS", "OPT_FAST=-O2"]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    (out / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode or not binary.exists():
        raise RuntimeError(f"Verilator build of the simulator failed; log {out / 'build.log'}")


#: Seconds a connected client may move no byte before the simulator drops it (server.cpp).
IDLE_TIMEOUT = 30.0


class SimDevice:
    """A running simulator process (context manager); ``url`` is for pyserial.

    It serves 127.0.0.1 only, one client at a time; a client that moves no byte in either
    direction for ``idle_timeout`` seconds (0: never) while the device is not working on
    its request is disconnected so that the next one is served (``docs/host.md``)."""

    def __init__(self, binary: Path, port: int = 0, idle_timeout: float = IDLE_TIMEOUT):
        if idle_timeout < 0:
            raise ValueError(f"idle_timeout must be >= 0, not {idle_timeout}")
        self.idle_timeout = idle_timeout
        self.proc = subprocess.Popen(
            [str(binary), "--idle-timeout", repr(float(idle_timeout)), str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None  # stdout=PIPE
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.close()
            raise RuntimeError(f"simulator did not start: {line!r} "
                               f"{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.port = int(line.split()[1])
        self.url = f"socket://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The simulator's process id."""
        return self.proc.pid

    def close(self) -> None:
        """Stop the simulator."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SimDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(verilog: str, base: Path, **kw) -> SimDevice:
    """The host's simulator factory (entry point ``spikellm.simulators: verilator``): the
    top ``verilog`` compiled once into ``base`` and started; ``kw`` go to :class:`SimDevice`."""
    return SimDevice(build_simulator(verilog, base), **kw)
