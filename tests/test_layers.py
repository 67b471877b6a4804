"""The house rule, read from the code: each room (subpackage of ``mlsae``) imports only the rooms below it.

    core  <  data  <  models  <  sae  <  training, analysis  <  interop  <  studies          figures: core and analysis only

Checked on every import statement in ``src/mlsae`` (module tops and function bodies alike), so a lazy import
cannot hide an upward dependency. The checker is run on a scratch package too, to show that it catches one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# room -> the rooms it may import (besides itself). The top level (cli, __main__, __init__) may import any room.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "sae": {"core", "models"},
    "training": {"core", "data", "models", "sae"},
    "analysis": {"core", "data", "models", "sae"},
    "interop": {"core", "data", "models", "sae", "analysis"},
    "studies": {"core", "data", "models", "sae", "training", "analysis", "interop"},
    "figures": {"core", "analysis"},
}


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import of ``package`` in ``path``; ``from package import name``
    counts as ``package.name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == package]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] == package:
                if node.module == package:
                    found += [(node.lineno, f"{package}.{a.name}") for a in node.names]
                else:
                    found.append((node.lineno, node.module))
    return found


def violations(src: Path, package: str = "mlsae", allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """Every import in ``src/package`` that breaks the rule, as ``file:line: room -> room (module)``."""
    root = src / package
    rooms = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    unknown = rooms - set(allowed)
    assert not unknown, f"rooms without a rule: {sorted(unknown)}; add them to ALLOWED"
    bad = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        room = parts[0] if len(parts) > 1 else None  # None: the top level
        if room is None:
            continue
        for line, module in imports_of(path, package):
            target = module.split(".")[1] if "." in module else ""
            if target == room or module == f"{package}.__version__":  # the top level's one plain value
                continue
            if target not in rooms or target not in allowed[room]:
                what = "the package's top level" if target not in rooms else target
                bad.append(f"{path.relative_to(src)}:{line}: {room} -> {what} ({module})")
    return bad


def test_every_room_imports_only_the_rooms_below_it():
    assert violations(SRC) == []


def test_the_rule_names_every_room_and_no_room_is_empty():
    rooms = {p.name for p in (SRC / "mlsae").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(ALLOWED)
    for room in rooms:
        modules = [p for p in (SRC / "mlsae" / room).glob("*.py") if p.name != "__init__.py"]
        assert modules, f"{room} holds no module"


@pytest.mark.parametrize("where, line, expected", [
    ("figures/plots.py", "from mlsae.models.registry import load_model", "figures -> models"),
    ("training/loop.py", "    from mlsae.studies import experiment  # lazily, still upward", "training -> studies"),
    ("core/paths.py", "import mlsae.data.sources", "core -> data"),
    ("core/paths.py", "from mlsae import load_model", "core -> the package's top level"),
])
def test_the_checker_catches_an_upward_import_in_a_scratch_package(tmp_path, where, line, expected):
    for room in ALLOWED:
        (tmp_path / "mlsae" / room).mkdir(parents=True)
        (tmp_path / "mlsae" / room / "__init__.py").write_text("")
        (tmp_path / "mlsae" / room / "base.py").write_text("import json\nfrom mlsae.core import paths\n"
                                                           if room != "core" else "import json\n")
    (tmp_path / "mlsae" / "cli.py").write_text("from mlsae.studies import experiment\n")  # the top: anything
    assert violations(tmp_path) == []
    (tmp_path / "mlsae" / where).write_text(f"def f():\n{line}\n" if line.startswith(" ") else f"{line}\n")
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0] and found[0].startswith(f"mlsae/{where}:")


def test_the_public_api_resolves_and_importing_mlsae_loads_no_torch():
    import subprocess
    import sys

    code = ("import sys, mlsae; assert 'torch' not in sys.modules, 'import mlsae loaded torch'; "
            "missing = [n for n in mlsae.__all__ if getattr(mlsae, n, None) is None]; assert not missing, missing; "
            "from mlsae import MLSAE, Experiment; print(MLSAE.__module__, Experiment.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["mlsae.sae.model", "mlsae.studies.experiment"]
