"""Run the numbered notebooks with papermill: one, or all of them in order; where their figures go.

Used by ``python -m mlsae figures`` (the README's regenerate-all command). The test suite's check of
the notebooks' recorded key numbers against ``tests/references/`` is test code
(``tests/notebook_references.py``).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlsae.core.paths import atomic_write_text, git_output, repository_root
from mlsae.core.progress import quiet_kernels
from mlsae.figures import plots

ROOT = repository_root() or Path.cwd()
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "outputs" / "executed"
KERNEL = "python3"
# Parameters that change where the work runs but not what a figure shows.
NOT_IN_FIGURES = frozenset({"device"})


def notebook_paths(notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), in order."""
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def parameter_names(path: Path) -> list[str]:
    """Names assigned in a notebook's ``parameters`` cell (what ``-p`` may set)."""
    import papermill  # heavy: loaded where used

    return sorted(papermill.inspect_notebook(str(path)).keys())


def changed_parameters(notebook: str, values: Mapping[str, object], notebooks_dir: Path = NOTEBOOKS) -> list[str]:
    """The parameters of ``notebook`` whose value in ``values`` (a notebook's ``globals()``) differs from
    the default in its *committed* ``parameters`` cell (git's HEAD, so that editing and saving the cell
    in JupyterLab is still a change; the file itself outside a checkout); every one if neither can be read."""
    import papermill  # heavy: loaded where used

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


def check_parameters(notebook: str, values: Mapping[str, object]) -> None:
    """Refuse, in the notebook's first cell, a parameter its ``parameters`` cell does not declare (``-p seeed 0``
    would otherwise run the defaults: papermill only warns). Read from the kernel's input history (``In``):
    papermill's injected cell (``# Parameters``) against the cell run just before it. Outside papermill, nothing
    to check."""
    history = values.get("In")
    if not isinstance(history, list):
        return
    at = next((i for i in range(len(history) - 1, 0, -1) if str(history[i]).lstrip().startswith("# Parameters")), None)
    if at is None:
        return
    given, declared = _assigned(history[at]), _assigned(history[at - 1])
    unknown = sorted(given - declared)
    if declared and unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, declared, n=1))
                 else name for name in unknown]
        raise ValueError(f"{notebook} has no parameter {', '.join(hints)}; its parameters are: "
                         f"{', '.join(sorted(declared))}")


def _assigned(source: str) -> set[str]:
    """The names a cell assigns at its top level."""
    try:
        tree = ast.parse(str(source))
    except SyntaxError:
        return set()
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def _committed_text(path: Path) -> str | None:
    """``path`` as committed at git's HEAD, or None (not in a checkout, not committed, no git)."""
    text = git_output(path.parent, "show", f"HEAD:./{path.name}")
    return text if text and text.strip() else None


def figures_for(notebook: str, values: Mapping[str, object]) -> plots.Figures:
    """Where this notebook run writes its figures: the committed ``figures/<notebook>`` only when every
    parameter keeps its default (see :func:`mlsae.figures.plots.figures_root`), so ``-p model X`` cannot overwrite
    a figure the README shows."""
    check_parameters(notebook, values)
    changed = changed_parameters(notebook, values)
    root = plots.figures_root(default_run=not changed)
    if changed and not os.environ.get("MLSAE_FIGURES"):
        folder = f"{notebook}/{run_name({name: values.get(name) for name in changed})}"  # one folder per setting
        print(f"not the default run ({', '.join(changed)} changed): figures go to {root / folder} "
              "(set MLSAE_FIGURES to choose)")
        return plots.Figures(folder, root)
    return plots.Figures(notebook, root)


def run_name(changed: Mapping[str, object]) -> str:
    """A folder name for a run's changed parameters (``seed=7_train_tokens=50000``), so that runs with other
    seeds, budgets or grids never overwrite each other; hashed when long."""
    text = "_".join(f"{k}={json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}"
                    for k, v in sorted(changed.items()))
    readable = "".join(c if c.isalnum() or c in "-._=+" else "-" for c in text).strip("-")
    if len(readable) <= 80:
        return readable
    return f"{readable[:60].rstrip('-_')}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


@dataclass
class NotebookRun:
    """One executed notebook: where its output is, whether it ran, its error and time."""
    notebook: str
    output: Path
    seconds: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_notebook(path: Path, output: Path, parameters: dict | None = None, *, cwd: Path | None = None) -> NotebookRun:
    """Execute one notebook with papermill; the executed copy is written to ``output``."""
    import papermill  # heavy: loaded where used

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
    chosen = [p for p in notebook_paths() if not only or any(p.name.startswith(o) for o in only)]
    if not chosen:
        raise ValueError(f"--only {' '.join(only or [])} matches no notebook; the notebooks are: "
                         f"{', '.join(p.stem for p in notebook_paths())}")
    declared = {p: set(parameter_names(p)) for p in chosen}
    unknown = sorted(set(parameters or {}) - set().union(*declared.values()))
    if unknown:  # checked before any notebook runs
        raise ValueError(f"no chosen notebook has the parameter(s) {', '.join(unknown)}; check the spelling "
                         "(each notebook's parameters cell lists its own)")
    runs = []
    for path in chosen:
        print(f"[figures] running {path.name} ...", flush=True)
        # each notebook gets the parameters it has (-p latent 5 is notebook 11's alone)
        run = run_notebook(path, out_dir / path.name, {k: v for k, v in (parameters or {}).items() if k in declared[path]})
        print(f"[figures] {path.name}: {'ok' if run.ok else 'FAILED'} in {run.seconds:.0f} s", flush=True)
        runs.append(run)
    return runs


def summary(runs: list[NotebookRun]) -> str:
    """A readable table of ``runs``: status and seconds of each notebook."""
    lines = [f"{'notebook':40s} {'status':8s} {'seconds':>8s}"]
    for r in runs:
        lines.append(f"{r.notebook:40s} {'ok' if r.ok else 'FAILED':8s} {r.seconds:8.0f}")
    total = sum(r.seconds for r in runs)
    failed = [r for r in runs if not r.ok]
    lines.append(f"{len(runs) - len(failed)} ran, {len(failed)} failed, {total:.0f} s in all")
    for r in failed:
        lines.append(f"\n--- {r.notebook} (executed copy: {r.output})\n{(r.error or '')[-3000:]}")
    return "\n".join(lines)


def write_summary(runs: list[NotebookRun], path: Path) -> None:
    """``runs`` as JSON at ``path`` (atomically), for scripts that read what ran."""
    atomic_write_text(path, json.dumps([{"notebook": r.notebook, "ok": r.ok, "seconds": round(r.seconds, 1),
                                         "error": r.error} for r in runs], indent=2))
