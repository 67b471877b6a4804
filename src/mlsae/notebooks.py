"""Run the numbered notebooks with papermill: one, or all of them in order; check them against references.

Used by ``python -m mlsae figures`` (the README's regenerate-all command) and by the test suite,
which executes every notebook once with :data:`CI_PARAMETERS` under nbval and compares its key-number
cells (``# NBVAL_CHECK_OUTPUT``) with the committed reference in ``tests/references/``
(:func:`check_against_reference`; written by :func:`update_reference`, i.e.
``python scripts/update_references.py``).
"""

from __future__ import annotations

import ast
import json
import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from mlsae import plots
from mlsae.paths import git_output, repository_root
from mlsae.progress import quiet_kernels

ROOT = repository_root() or Path.cwd()
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "outputs" / "executed"
# Committed reference outputs of the key-number cells, one NN_name.ipynb per notebook, and nbval's helpers.
REFERENCES = ROOT / "tests" / "references"
NBVAL_SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
NBVAL_NO_STDERR = ROOT / "tests" / "nbval_no_stderr.py"
# The cells whose printed output is a committed key number (nbval's marker; every notebook has one or more).
KEY_MARKER = "# NBVAL_CHECK_OUTPUT"
KERNEL = "python3"
# The parameters CI passes to each notebook (and the references are executed with).
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
    "11_max_examples": {"preset": "tiny"},
    "12_model_families": {"preset": "tiny"},
}
# Parameters that change where the work runs but not what a figure shows.
NOT_IN_FIGURES = frozenset({"device"})


def notebook_paths(notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), in order."""
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def parameter_names(path: Path) -> list[str]:
    """Names assigned in a notebook's ``parameters`` cell (what ``-p`` may set)."""
    import papermill

    return sorted(papermill.inspect_notebook(str(path)).keys())


def changed_parameters(notebook: str, values: Mapping[str, object], notebooks_dir: Path = NOTEBOOKS) -> list[str]:
    """The parameters of ``notebook`` whose value in ``values`` (a notebook's ``globals()``) differs from
    the default in its *committed* ``parameters`` cell (git's HEAD, so that editing and saving the cell
    in JupyterLab is still a change; the file itself outside a checkout); every one if neither can be read."""
    import tempfile

    import papermill

    path = notebooks_dir / f"{notebook}.ipynb"
    committed = _committed_text(path)
    if committed is None and not path.is_file():
        return [f"(notebook {path} not found)"]
    with tempfile.TemporaryDirectory() as tmp:
        if committed is not None:
            path = Path(tmp) / path.name
            path.write_text(committed)
        defaults = papermill.inspect_notebook(str(path))
    changed = []
    for name, info in defaults.items():
        if name in NOT_IN_FIGURES:
            continue
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            changed.append(name)  # a default that is not a literal: cannot tell, so not the committed run
            continue
        if name not in values or values[name] != default:
            changed.append(name)
    return changed


def _committed_text(path: Path) -> str | None:
    """``path`` as committed at git's HEAD, or None (not in a checkout, not committed, no git)."""
    text = git_output(path.parent, "show", f"HEAD:./{path.name}")
    return text if text and text.strip() else None


def figures_for(notebook: str, values: Mapping[str, object]) -> plots.Figures:
    """Where this notebook run writes its figures: the committed ``figures/<notebook>`` only when every
    parameter keeps its default (see :func:`mlsae.plots.figures_root`), so ``-p model X`` cannot overwrite
    a figure the README shows."""
    changed = changed_parameters(notebook, values)
    root = plots.figures_root(default_run=not changed)
    if changed and not os.environ.get("MLSAE_FIGURES"):
        print(f"not the default run ({', '.join(changed)} changed): figures go to {root / notebook} "
              "(set MLSAE_FIGURES to choose)")
    return plots.Figures(notebook, root)


@dataclass
class NotebookRun:
    notebook: str
    output: Path
    seconds: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_notebook(path: Path, output: Path, parameters: dict | None = None, *, cwd: Path | None = None) -> NotebookRun:
    """Execute one notebook with papermill; the executed copy is written to ``output``."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        with quiet_kernels():  # bars off in the kernel: an executed notebook keeps results, not redraws
            papermill.execute_notebook(
                str(path), str(output), parameters=parameters or {}, cwd=str(cwd or path.parent),
                kernel_name=KERNEL, progress_bar=False, log_output=False,
            )
    except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(err).__name__}: {err}".strip() or traceback.format_exc()
    return NotebookRun(path.name, output, time.perf_counter() - start, error)


def run_all(parameters: dict | None = None, out_dir: Path = EXECUTED, only: list[str] | None = None) -> list[NotebookRun]:
    """Run every numbered notebook in order (each sees the cache the previous ones filled)."""
    runs = []
    for path in notebook_paths():
        if only and not any(path.name.startswith(o) for o in only):
            continue
        print(f"[figures] running {path.name} ...", flush=True)
        run = run_notebook(path, out_dir / path.name, parameters)
        print(f"[figures] {path.name}: {'ok' if run.ok else 'FAILED'} in {run.seconds:.0f} s", flush=True)
        runs.append(run)
    return runs


def summary(runs: list[NotebookRun]) -> str:
    lines = [f"{'notebook':40s} {'status':8s} {'seconds':>8s}"]
    for r in runs:
        lines.append(f"{r.notebook:40s} {'ok' if r.ok else 'FAILED':8s} {r.seconds:8.0f}")
    total = sum(r.seconds for r in runs)
    failed = [r for r in runs if not r.ok]
    lines.append(f"{len(runs) - len(failed)} ran, {len(failed)} failed, {total:.0f} s in all")
    for r in failed:
        lines.append(f"\n--- {r.notebook} (executed copy: {r.output})\n{r.error[-3000:]}")
    return "\n".join(lines)


def write_summary(runs: list[NotebookRun], path: Path) -> None:
    from mlsae.paths import atomic_write_text

    atomic_write_text(path, json.dumps([{"notebook": r.notebook, "ok": r.ok, "seconds": round(r.seconds, 1),
                                         "error": r.error} for r in runs], indent=2))


# ---- committed references of the key-number cells ----------------------------------------------


def is_key_cell(cell) -> bool:
    return cell.cell_type == "code" and KEY_MARKER in cell.source


def stderr_outputs(outputs) -> list[str]:
    """The first 200 characters of each stderr stream in ``outputs`` (a cell's output list)."""
    return ["".join(o.get("text", ""))[:200] for o in outputs
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]


def _code_sources(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def prepare_notebook(path: Path, parameters: dict):
    """``path`` with papermill's parameters cell injected, not executed (what papermill would run)."""
    import papermill

    return papermill.execute_notebook(str(path), None, parameters=parameters, prepare_only=True,
                                      kernel_name=KERNEL, progress_bar=False, log_output=False)


# Notebooks are read and written through papermill's IO (nbformat underneath), a main dependency.


def read_notebook(path: Path):
    from papermill.iorw import load_notebook_node

    return load_notebook_node(str(path))


def write_notebook(nb, path: Path) -> None:
    """Write ``nb`` atomically, as nbformat formats it (one JSON field a line, so diffs stay small)."""
    import tempfile

    from papermill.iorw import write_ipynb

    from mlsae.paths import atomic_write_text

    with tempfile.TemporaryDirectory() as tmp:
        write_ipynb(nb, str(Path(tmp) / "nb.ipynb"))
        text = (Path(tmp) / "nb.ipynb").read_text(encoding="utf-8")
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def reference_notebook(executed):
    """An executed notebook trimmed to a reference: outputs (images dropped) and execution counts kept
    only for the key-number cells, cell metadata reduced to tags, notebook metadata to the kernel and
    the parameters, so that a reference's diff shows the key numbers and nothing else."""
    import copy

    nb = copy.deepcopy(executed)
    parameters = nb.metadata.get("papermill", {}).get("parameters", {})
    nb.metadata = {"kernelspec": nb.metadata.get("kernelspec", {}), "language_info": {"name": "python"},
                   "papermill": {"parameters": parameters}}
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        cell.metadata = {"tags": tags} if tags else {}
        if "injected-parameters" in tags:
            cell["id"] = "injected-parameters"  # papermill's is random: keep the diffs quiet
        if cell.cell_type != "code":
            continue
        if is_key_cell(cell):
            for out in cell.outputs:
                if "data" in out:
                    out["data"] = {k: v for k, v in out["data"].items() if not k.startswith("image/")}
                    out["metadata"] = {}
            cell.execution_count = cell.execution_count or index  # nbval checks only cells with a count
        else:
            cell.outputs, cell.execution_count = [], None
    return nb


def reference_path(path: Path, references_dir: Path = REFERENCES) -> Path:
    return references_dir / f"{path.stem}.ipynb"


@contextmanager
def _figures_in(folder: Path) -> Iterator[None]:
    """``$MLSAE_FIGURES`` pointing at ``folder`` for the duration (CI and references never write figures/)."""
    was = os.environ.get("MLSAE_FIGURES")
    os.environ["MLSAE_FIGURES"] = str(folder)
    try:
        yield
    finally:
        if was is None:
            os.environ.pop("MLSAE_FIGURES", None)
        else:
            os.environ["MLSAE_FIGURES"] = was


def update_reference(path: Path, references_dir: Path = REFERENCES, parameters: dict | None = None) -> Path:
    """Execute ``path`` with its CI parameters and write its reference (see :func:`reference_notebook`)."""
    import tempfile

    parameters = CI_PARAMETERS[path.stem] if parameters is None else parameters
    with tempfile.TemporaryDirectory() as tmp, _figures_in(Path(tmp) / "figures"):
        run = run_notebook(path, Path(tmp) / path.name, parameters)
        if not run.ok:
            raise RuntimeError(f"{path.name} failed, no reference written:\n{run.error}")
        executed = read_notebook(Path(tmp) / path.name)
    stderr = [s for c in executed.cells if c.cell_type == "code" for s in stderr_outputs(c.get("outputs", []))]
    if stderr:
        raise RuntimeError(f"{path.name} wrote to stderr, no reference written: {stderr[:5]}")
    if not any(is_key_cell(c) for c in executed.cells):
        raise RuntimeError(f"{path.name} has no key-number cell ({KEY_MARKER})")
    out = reference_path(path, references_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_notebook(reference_notebook(executed), out)
    return out


def check_against_reference(path: Path, workdir: Path, parameters: dict | None = None,
                            references_dir: Path = REFERENCES, sanitize: Path = NBVAL_SANITIZE,
                            no_stderr_plugin: Path = NBVAL_NO_STDERR) -> str | None:
    """Execute ``path`` once under nbval and compare its key-number cells with the committed reference.

    The notebook is parameterised as papermill would (:func:`prepare_notebook`), its code must be the
    reference's (else the reference is stale), the reference's outputs are copied in, and nbval
    (``--nbval-lax``) runs it in ``workdir`` with ``$MLSAE_PROGRESS=0`` and figures under ``workdir``;
    the plugin ``no_stderr_plugin`` fails any cell that writes to stderr. Returns None when it passes,
    else what failed."""
    import shutil
    import subprocess
    import sys

    nn = path.stem.split("_")[0]
    parameters = CI_PARAMETERS[path.stem] if parameters is None else parameters
    ref_path = reference_path(path, references_dir)
    if not ref_path.is_file():
        return (f"no reference for {path.stem} ({ref_path}); run `python scripts/update_references.py {nn}` "
                "and review it")
    reference = read_notebook(ref_path)
    nb = prepare_notebook(path, parameters)
    if _code_sources(nb) != _code_sources(reference):
        return (f"reference for {nn} is stale: the notebook changed; run `python scripts/update_references.py {nn}` "
                "and review the diff")
    ref_cells = [c for c in reference.cells if c.cell_type == "code"]
    for cell, ref in zip([c for c in nb.cells if c.cell_type == "code"], ref_cells):
        cell.outputs, cell.execution_count = ref.outputs, ref.execution_count
    workdir.mkdir(parents=True, exist_ok=True)
    write_notebook(nb, workdir / path.name)
    shutil.copy(no_stderr_plugin, workdir / "conftest.py")
    with quiet_kernels():  # the kernel's environment as run_notebook gives it
        env = {**os.environ, "MLSAE_FIGURES": str(workdir / "figures")}
    nbval = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", path.name, "--nbval-sanitize-with", str(sanitize),
         "--nbval-current-env", "-p", "no:cacheprovider", "-q", "--color=no", "--rootdir", str(workdir)],
        capture_output=True, text=True, cwd=str(workdir), env=env,
    )
    if nbval.returncode == 0:
        return None
    return (f"nbval failed on {path.name} against {ref_path} (in a mismatch, nbval's `reference_output == "
            f"test_output` shows the committed text first, this run's second):\n{nbval.stdout[-6000:]}\n"
            f"{nbval.stderr[-2000:]}")
