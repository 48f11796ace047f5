"""Benchmark: MiniLM with its model resident in the simulated board's SDRAM (issue 13):
bit-exact, every GEMM's link traffic equal to its prediction, the run's link bytes and round
trips per token against the build's prediction, the board's tokens/s at 1 and 3 Mbaud, and
the arrays' busy fraction with the weights streaming from the memory.

Run: ``python -m pytest -m benchmark bench/test_resident_minilm.py -s`` (``SIM_DRAM=litedram``
for LiteDRAM's controller on its PHY model; ``HOST_OUT16=GLOB[,GLOB]`` to convert with those
GEMMs' outputs to the host at 16 bits, e.g. ``HOST_OUT16='*'`` as before 8-bit up outputs
were the default, and ``HOST_OUT8`` likewise; a build, a Verilator
compile of minutes and a run of one to three minutes).
"""

import json
import os

import pytest

from gen.__main__ import main as gen_main
from host.__main__ import main as host_main


@pytest.mark.benchmark
def test_minilm_resident_in_the_simulated_sdram(tmp_path):
    out = tmp_path / "minilm"
    dram = os.environ.get("SIM_DRAM", "model")
    widths = [a for bits in (8, 16) for g in os.environ.get(f"HOST_OUT{bits}", "").split(",")
              if g for a in (f"--host-out{bits}", g)]
    assert gen_main(["build", "--model", "minilm", "--out", str(out), "--fix",
                     "lanes=64,mac_units=8", "--sim-dram", dram, *widths, "--quiet"]) == 0
    assert host_main(["run", "--bundle", str(out), "--sim", "--load", "--quiet"]) == 0
    run = json.loads((out / "run" / "report.json").read_text())
    build = json.loads((out / "report.json").read_text())
    assert run["bit_exact"] and run["resident"]["used"]
    link = run["link"]
    assert link["gemms_measured"] == link["gemms_predicted"]
    c = {k: sum(r["counters"][k] for r in run["layers"])
         for k in ("busy", "load_wait", "load_busy", "dram_rd")}
    tokens = run["tokens"]
    board = run["board"]["by_baud"]
    stats = run["link"]["stats"]
    print(f"\n{dram}: {link['bytes'] / tokens:,.0f} link bytes/token "
          f"({stats['frames_tx'] / tokens:.1f} requests, {stats['waits'] / tokens:.1f} round "
          f"trips/token); build "
          f"predicted {build['link']['resident']['bytes_per_token']:,.0f} on its own "
          f"{build['link']['tokens']} tokens; "
          + ", ".join(f"{v['tokens_per_s']:.2f} tokens/s at {int(b) / 1e6:g} Mbaud"
                      for b, v in board.items())
          + f"; {c['dram_rd'] / c['load_busy']:.2f} memory words a cycle while copying; "
          f"arrays busy {c['busy'] / (c['busy'] + c['load_wait']):.1%} of busy + waits")
    # the link diet's floor (issue 13): under 100 KB a token, 2 tokens/s at 3 Mbaud
    assert link["bytes"] / tokens < 100_000 and board["3000000"]["tokens_per_s"] >= 2
