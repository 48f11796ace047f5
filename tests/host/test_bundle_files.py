"""The bundle's configuration and program files (``accel.bundle``): what the writer
records, the reader gives back, and what the reader refuses, by file and field."""

from __future__ import annotations

import json

import pytest

from accel.bundle import (
    CONFIG,
    PROGRAM,
    BundleFileError,
    built_by_other_code,
    config_record,
    program_record,
    read_config,
    read_program,
)
from accel.config import PRESETS

from .conftest import CFG

GEMMS = [{"gemm": "layers.0.q", "head": None, "k": 64, "n": 64, "tiles": [{"n": [0, 16]}]}]


def _write(d, cfg=CFG, gemms=GEMMS, **change):
    rec = config_record(cfg) | change
    (d / CONFIG).write_text(json.dumps(rec))
    (d / PROGRAM).write_text(json.dumps(program_record(cfg, gemms)))
    return d


def test_records_read_back(tmp_path):
    d = _write(tmp_path)
    cfg = read_config(d)
    assert cfg == CFG and read_program(d, cfg) == GEMMS
    assert not built_by_other_code(d)
    assert built_by_other_code(_write(tmp_path, hw_source="0" * 64))


def test_a_config_whose_hash_is_not_its_own_is_refused(tmp_path):
    d = _write(tmp_path, hash=PRESETS["tiny"].hash_text)
    with pytest.raises(BundleFileError, match=rf"{CONFIG}: hash '0x[0-9a-f]{{8}}' is not the "
                                              rf"hash of its config \({CFG.hash_text}\)"):
        read_config(d)


def test_a_bad_config_is_refused_naming_the_error(tmp_path):
    d = _write(tmp_path, config={"lanes": "many"})
    with pytest.raises(BundleFileError, match=rf"{CONFIG}: bad config \("):
        read_config(d)


def test_a_program_compiled_for_another_config_is_refused(tmp_path):
    d = _write(tmp_path)
    with pytest.raises(BundleFileError, match=rf"{PROGRAM}: compiled for config "
                                              rf"'{CFG.hash_text}', the bundle's is "):
        read_program(d, PRESETS["tiny"])


@pytest.mark.parametrize("gemms, message", [
    ([], "gemms is list, not a list of GEMMs"),
    ({"gemm": "q"}, "gemms is dict, not a list of GEMMs"),
    ([{**GEMMS[0], "k": "64"}], r"gemms\[0\] is malformed"),
    ([*GEMMS, {**GEMMS[0], "tiles": [{"n": [0]}]}], r"gemms\[1\] is malformed"),
])
def test_a_malformed_program_is_refused_naming_the_gemm(tmp_path, gemms, message):
    d = _write(tmp_path, gemms=gemms)
    with pytest.raises(BundleFileError, match=message):
        read_program(d, CFG)
