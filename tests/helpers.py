"""Helpers shared by the command-line tests."""


def one_error_line(err: str) -> str:
    """The one ``error:`` line of a refused command's stderr, asserting there is exactly
    one, no traceback, and that it comes last (not inside a progress bar's line)."""
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]
