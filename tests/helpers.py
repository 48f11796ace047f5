"""Helpers and settings shared by the tests."""

from accel.config import AccelConfig
from hw.device import emit_verilog
from sim.device import build_simulator

#: A short link timeout (cycles) keeps fault recovery quick in the tests.
LINK_TIMEOUT = 20_000
#: Driver settings that go with it (seconds).
FAST = {"timeout": 0.3, "run_timeout": 2.0, "quiet": 0.05}


def simulator_binary(cfg: AccelConfig, base):
    """The simulated device of ``cfg`` with the tests' short link timeout, built into
    ``base`` (cached per design)."""
    return build_simulator(emit_verilog(cfg, link_timeout=LINK_TIMEOUT), base)



def one_error_line(err: str) -> str:
    """The one ``error:`` line of a refused command's stderr, asserting there is exactly
    one, no traceback, and that it comes last (not inside a progress bar's line)."""
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]


def reuse_conversion(mp, lm, cm) -> None:
    """Make ``gen build`` (through the monkeypatch ``mp``) take ``lm`` as its model and
    ``cm`` as its conversion: no loading or converting."""
    import gen.build as gen_build

    mp.setattr(gen_build, "load", lambda name: lm)
    mp.setattr(gen_build.cache, "converted",
               lambda lm_, opts, use=True, progress=False: (cm, False))
