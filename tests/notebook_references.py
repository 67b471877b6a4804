"""Check the notebooks' recorded key numbers against the committed references, within tolerances.

Each notebook records its key numbers by name (:func:`mlsae.figures.records.record`). ``tests/references/NN_name.json``
holds, for the notebook run with :data:`CI_PARAMETERS`, each quantity's value and its tolerance:

    {"notebook": "03_layer_variance", "parameters": {...}, "code_sha256": "...",
     "quantities": {"honest_ratio": {"value": 1.267, "tolerance": {"abs": 0.08}}, ...}}

A tolerance is ``{"abs": a}`` (|value - reference| <= a), ``{"rel": r}`` (<= r |reference|), both (the
larger bound holds) or ``"exact"``; it applies to every number of a list or dict value, whose structure
must match exactly. Values are rewritten by ``scripts/update_references.py`` (which never touches a
tolerance); tolerances are reviewed like code and set from a measured spread
(``scripts/measure_spread.py``, table in ``tests/references/README.md``).

A notebook is executed once, under nbval (``--nbval-lax``: every cell must run without error), with
``nbval_plugin.py`` beside it, which fails a cell that writes to stderr and writes the records out. A
notebook whose code differs from the one the reference was made from fails as stale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsae.core.paths import atomic_write_text
from mlsae.core.progress import quiet_kernels
from mlsae.figures.notebooks import KERNEL
from mlsae.figures.notebooks import notebook_paths as notebook_paths  # re-exported for the scripts

REFERENCES = Path(__file__).with_name("references")
PLUGIN = Path(__file__).with_name("nbval_plugin.py")

# The parameters CI passes to each notebook (and the references are made with). Discrete picks that an
# argmax would make are fixed here, so that a near tie on another machine cannot change what is compared:
# notebook 11's latent (its default, the most spread frequent latent, is latent 355 on the reference run).
CI_PARAMETERS: dict[str, dict] = {
    "01_language_models": {"preset": "tiny"},
    "02_train_mlsae": {"preset": "tiny"},
    "03_layer_variance": {"preset": "tiny"},
    "04_layer_heatmaps": {"preset": "tiny"},
    "05_residual_similarity": {"preset": "tiny"},
    "06_sweeps": {"preset": "tiny"},
    "07_tuned_lens": {"preset": "tiny"},
    "08_decoder_geometry": {"preset": "tiny"},
    "09_layer_statistics": {"preset": "tiny"},
    "10_single_layer_baselines": {"preset": "tiny"},
    "11_max_examples": {"preset": "tiny", "latent": 355},
    "12_model_families": {"preset": "tiny"},
    "13_cross_layer_dictionaries": {"preset": "tiny"},
}


def reference_path(path: Path, references_dir: Path = REFERENCES) -> Path:
    return references_dir / f"{path.stem}.json"


def update_command(path: Path) -> str:
    return f"python scripts/update_references.py {path.stem[:2]}"


# ---- execution ----------------------------------------------------------------------------------


def prepare(path: Path, parameters: dict):
    """``path`` with papermill's parameters cell injected, not executed (what papermill would run)."""
    import papermill

    return papermill.execute_notebook(str(path), None, parameters=parameters, prepare_only=True,
                                      kernel_name=KERNEL, progress_bar=False, log_output=False)


def code_digest(nb) -> str:
    """sha256 of the code cells' sources (parameters injected): what a reference was made from."""
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


@dataclass
class Execution:
    records: dict[str, Any]
    failure: str | None  # None: every cell ran, none wrote to stderr, no name recorded twice
    digest: str


def execute(path: Path, workdir: Path, parameters: dict) -> Execution:
    """Run ``path`` once under nbval in ``workdir`` (figures there too) and collect its records."""
    from papermill.iorw import write_ipynb

    nb = prepare(path, parameters)
    for cell in nb.cells:  # nbval compares nothing under --nbval-lax without markers; start clean anyway
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    workdir.mkdir(parents=True, exist_ok=True)
    write_ipynb(nb, str(workdir / path.name))
    shutil.copy(PLUGIN, workdir / "conftest.py")
    records_file = workdir / "records.jsonl"
    records_file.unlink(missing_ok=True)
    with quiet_kernels():  # the kernel's environment as mlsae.figures.notebooks.run_notebook gives it
        env = {**os.environ, "MLSAE_FIGURES": str(workdir / "figures"), "MLSAE_RECORDS_OUT": str(records_file)}
    nbval = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", path.name, "--nbval-current-env", "-p", "no:cacheprovider",
         "-q", "--color=no", "--rootdir", str(workdir)],
        capture_output=True, text=True, cwd=str(workdir), env=env,
    )
    failure = None
    if nbval.returncode != 0:
        failure = f"nbval failed on {path.name}:\n{nbval.stdout[-6000:]}\n{nbval.stderr[-2000:]}"
    records: dict[str, Any] = {}
    lines = records_file.read_text(encoding="utf-8").splitlines() if records_file.is_file() else []
    for name, value in map(json.loads, lines):
        if name in records and failure is None:
            failure = f"{path.name} records {name!r} twice; give each quantity one name"
        records[name] = value
    return Execution(records, failure, code_digest(nb))


# ---- comparison ---------------------------------------------------------------------------------


def _bound(reference: float, tolerance) -> float:
    if tolerance == "exact":
        return 0.0
    return max(float(tolerance.get("abs", 0.0)), float(tolerance.get("rel", 0.0)) * abs(reference))


def describe_tolerance(tolerance) -> str:
    if tolerance == "exact":
        return "exact"
    return " or ".join(f"{k} {v:g}" for k, v in tolerance.items())


def leaves(value, prefix: str = ""):
    """(path, leaf) pairs of a JSON value, e.g. ('[zoo-s]', 1.2) or ('[0]', 3)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{prefix}[{k}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _shape(value):
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def compare(records: dict[str, Any], reference: dict) -> list[str]:
    """Every mismatch between a run's records and a reference, one line each (value, reference, tolerance)."""
    problems = []
    quantities = reference["quantities"]
    for name in records.keys() - quantities.keys():
        problems.append(f"{name}: recorded but not in the reference (new quantity: regenerate the reference, "
                        "then set its tolerance)")
    for name, spec in quantities.items():
        if name not in records:
            problems.append(f"{name}: in the reference but not recorded by this run")
            continue
        tolerance, expected, got = spec.get("tolerance"), spec["value"], records[name]
        if tolerance is None:
            problems.append(f"{name}: no tolerance in the reference; measure the spread "
                            "(scripts/measure_spread.py) and set one")
            continue
        if _shape(got) != _shape(expected):
            problems.append(f"{name}: value {json.dumps(got)} has another structure than the reference "
                            f"{json.dumps(expected)}")
            continue
        for (where, g), (_, e) in zip(leaves(got), leaves(expected), strict=True):
            numeric = isinstance(e, (int, float)) and not isinstance(e, bool)
            if numeric and tolerance != "exact":
                bound = _bound(e, tolerance)
                deviation = abs(g - e)
                if not (deviation <= bound) or math.isnan(deviation):
                    problems.append(f"{name}{where}: value {g!r}, reference {e!r}, tolerance "
                                    f"{describe_tolerance(tolerance)} (deviation {deviation:.3g} > {bound:.3g})")
            elif g != e:
                problems.append(f"{name}{where}: value {g!r}, reference {e!r}, tolerance exact")
    return problems


# ---- references ---------------------------------------------------------------------------------


def read_reference(path: Path, references_dir: Path = REFERENCES) -> dict | None:
    ref = reference_path(path, references_dir)
    return json.loads(ref.read_text(encoding="utf-8")) if ref.is_file() else None


def write_reference(ref: Path, reference: dict) -> None:
    atomic_write_text(ref, json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


def check(path: Path, workdir: Path, parameters: dict | None = None, references_dir: Path = REFERENCES) -> str | None:
    """Execute ``path`` once and compare its records with its reference; None when it passes, else what failed."""
    parameters = CI_PARAMETERS[path.stem] if parameters is None else parameters
    reference = read_reference(path, references_dir)
    if reference is None:
        return f"no reference for {path.stem} ({reference_path(path, references_dir)}); run `{update_command(path)}`"
    if code_digest(prepare(path, parameters)) != reference["code_sha256"]:
        return (f"reference for {path.stem[:2]} is stale: the notebook changed; run `{update_command(path)}` and "
                "review the diff (values only; tolerances are kept)")
    run = execute(path, workdir, parameters)
    if run.failure:
        return run.failure
    problems = compare(run.records, reference)
    if problems:
        return (f"{path.stem}: {len(problems)} key number(s) differ from {reference_path(path, references_dir)}:\n  "
                + "\n  ".join(problems))
    return None


def update_reference(path: Path, references_dir: Path = REFERENCES, parameters: dict | None = None) -> Path:
    """Execute ``path`` with its CI parameters and rewrite its reference's values, keeping every tolerance
    (a new quantity gets none: the check fails until one is set)."""
    parameters = CI_PARAMETERS[path.stem] if parameters is None else parameters
    with tempfile.TemporaryDirectory() as tmp:
        run = execute(path, Path(tmp), parameters)
    if run.failure:
        raise RuntimeError(f"{path.name}: no reference written:\n{run.failure}")
    if not run.records:
        raise RuntimeError(f"{path.name} records no key number (mlsae.figures.records.record); no reference written")
    old = (read_reference(path, references_dir) or {}).get("quantities", {})
    reference = {"notebook": path.stem, "parameters": parameters, "code_sha256": run.digest,
                 "quantities": {name: {"value": value, "tolerance": old.get(name, {}).get("tolerance")}
                                for name, value in run.records.items()}}
    out = reference_path(path, references_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_reference(out, reference)
    return out
