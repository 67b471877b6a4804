"""The install paths agree: pyproject.toml, environment.yml and the setup script."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(_split(d) for d in deps)


def _split(spec: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", spec)
    assert m, f"every dependency must be pinned exactly with ==, got {spec!r}"
    return m.group(1).lower().replace("_", "-"), m.group(2)


def test_every_dependency_is_pinned_and_torch_is_2_13():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.13.0"
    for name in ["transformers", "datasets", "tuned-lens", "jupyterlab", "papermill", "matplotlib", "seaborn", "nbval",
                 "ipywidgets"]:  # ipywidgets: tqdm draws widgets in JupyterLab instead of a TqdmWarning
        assert name in pins, f"{name} missing from pyproject.toml"


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert dict(_split(s) for s in pip_section) == _pyproject_pins()


def test_setup_script_pins_torch_first():
    """torch==2.13.0 must be installed before the package: otherwise a dependency pulls a CUDA build."""
    lines = [l for l in (ROOT / "scripts" / "setup.sh").read_text().splitlines() if "pip install" in l]
    torch_at = next(i for i, l in enumerate(lines) if "torch==2.13.0" in l)
    package_at = next(i for i, l in enumerate(lines) if " -e ." in l or l.rstrip().endswith(" ."))
    assert torch_at < package_at, lines


def test_ci_runs_the_readme_test_command():
    ci_command = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith(("#", "set ", "cd "))][-1]
    assert ci_command.strip() in (ROOT / "README.md").read_text()
