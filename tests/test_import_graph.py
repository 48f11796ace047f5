"""The import graph runs one way (README, "Where things live"): ``models/`` at the bottom,
``accel/`` on it, ``hw/``, ``gen/`` and ``host/`` side by side above, ``sim/`` on top.

A static scan of every module's ``import`` statements, those inside functions included (a
deferred import is still a dependency: it only moves the failure to run time). Nothing is
imported, so a violation is reported even where importing would succeed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each package -> the project packages it must not import. ``host/`` runs on a machine
#: without the build tools (no ``gen/``, no gateware, no simulator: ``--sim`` goes through
#: the ``spikellm.simulators`` entry point); ``accel/`` and ``models/`` are shared by all.
FORBIDDEN = {
    "models": {"accel", "gen", "hw", "host", "sim"},
    "accel": {"gen", "hw", "host", "sim"},
    "hw": {"gen", "host", "sim"},
    "gen": {"host", "sim"},
    "host": {"gen", "hw", "sim"},
    "sim": {"gen"},
}


def imported_packages(path: Path, package: str) -> dict[str, int]:
    """Top-level project packages a module imports (name -> first line), relative imports
    resolved against ``package``, the module's dotted package name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def _modules(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts if rel.name == "__init__" else rel.parts[:-1]
    return ".".join(p for p in parts if p != "__init__")


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(pkg):
    assert _modules(pkg), f"no modules found under {pkg}/"
    bad = []
    for path in _modules(pkg):
        for name, line in imported_packages(path, _package_of(path)).items():
            if name in FORBIDDEN[pkg]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_scan_resolves_relative_and_deferred_imports(tmp_path):
    """The scan sees ``from .. import x`` as the parent package and an import inside a
    function as an import (so the test above cannot pass by missing them)."""
    mod = tmp_path / "m.py"
    mod.write_text("from .. import gen\nfrom . import driver\n"
                   "def f():\n    import hw.top\n    from sim.device import serve\n")
    found = imported_packages(mod, "host.sub")
    assert found == {"host": 1, "hw": 4, "sim": 5}
