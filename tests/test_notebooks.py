"""Every numbered notebook: executed once under nbval with the CI parameters, its key numbers compared with
its reference within tolerances.

Each notebook records its key numbers by name (``mlsae.figures.records.record``); ``tests/references/NN_name.json``
holds each one's value and tolerance (``notebook_references.py``; values rewritten by
``scripts/update_references.py``, tolerances set from the spread measured by ``scripts/measure_spread.py``,
table in ``tests/references/README.md``). nbval executes every cell (an error fails), ``nbval_plugin.py``
fails a cell that writes to stderr. The notebooks share this session's ``$MLSAE_HOME``, so each SAE is
trained once.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

import nbval_plugin
from mlsae.figures import records
from mlsae.figures.notebooks import changed_parameters, figures_for, notebook_paths, parameter_names, run_notebook
from notebook_references import (
    CI_PARAMETERS,
    check,
    compare,
    read_reference,
    reference_path,
    update_command,
    update_reference,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_is_covered():
    on_disk = {p.stem for p in notebook_paths()}
    assert on_disk, "no numbered notebooks found"
    assert on_disk == set(CI_PARAMETERS), f"notebooks without CI parameters: {on_disk - set(CI_PARAMETERS)}; " \
                                          f"stale entries: {set(CI_PARAMETERS) - on_disk}"
    assert set(ROOT.joinpath("notebooks").glob("*.ipynb")) == set(notebook_paths()), "notebooks must be named NN_name.ipynb"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_is_thin_parameterised_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill injects after it)"
    assert "preset" in parameter_names(path)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "record(" in source, "no key number recorded (mlsae.figures.records.record)"
    assert "NBVAL_CHECK_OUTPUT" not in source and "rounded to the measured" not in source
    assert reference_path(path).is_file(), f"no reference: run `{update_command(path)}`"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "committed notebooks carry no outputs"
            assert len(c.source.splitlines()) <= 40, "a cell longer than a screen belongs in src/"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_every_reference_quantity_has_a_reviewed_tolerance(path):
    reference = read_reference(path)
    assert reference["notebook"] == path.stem and reference["parameters"] == CI_PARAMETERS[path.stem]
    for name, spec in reference["quantities"].items():
        tolerance = spec["tolerance"]
        assert tolerance == "exact" or (isinstance(tolerance, dict) and tolerance and set(tolerance) <= {"abs", "rel"}
                                        and all(v > 0 for v in tolerance.values())), (name, tolerance)


def test_the_honest_ratio_is_compared_in_03_07_and_12():
    for stem, name in (("03_layer_variance", "honest_ratio"), ("03_layer_variance", "series_honest_ratio"),
                       ("07_tuned_lens", "honest_ratio"), ("12_model_families", "honest_ratio")):
        spec = read_reference(ROOT / "notebooks" / f"{stem}.ipynb")["quantities"][name]
        assert spec["tolerance"] != "exact" and spec["tolerance"]["abs"] < 0.2, (stem, spec)


NB03_DEFAULTS = dict(model=None, preset="default", expansion_factor=None, k=32, tuned_lens=False, models=None,
                    train_tokens=None, analysis_tokens=None, seq_len=None, batch_size=None, seed=42, device="cpu",
                    pretrained_sae=None, paper_r_models=None)


def test_only_the_default_run_writes_the_committed_figures(monkeypatch):
    """``papermill 03_... -p model X`` must not overwrite what the README shows: any parameter changed from
    the notebook's own default sends the figures to outputs/figures/ (unless $MLSAE_FIGURES says where)."""
    monkeypatch.delenv("MLSAE_FIGURES", raising=False)
    assert changed_parameters("03_layer_variance", NB03_DEFAULTS) == []
    assert figures_for("03_layer_variance", NB03_DEFAULTS).root == ROOT / "figures"
    assert changed_parameters("03_layer_variance", {**NB03_DEFAULTS, "device": "cuda"}) == []  # where, not what
    for changed in ({"model": "pythia-1b"}, {"models": '["zoo-s"]'}, {"seed": 0}, {"preset": "tiny"}):
        values = {**NB03_DEFAULTS, **changed}
        assert changed_parameters("03_layer_variance", values) == list(changed)
        out = figures_for("03_layer_variance", values)
        assert out.root == ROOT / "outputs" / "figures" and out.notebook.startswith("03_layer_variance/")
    # runs with other seeds or budgets never share a folder
    names = {figures_for("03_layer_variance", {**NB03_DEFAULTS, **c}).notebook
             for c in ({"seed": 0}, {"seed": 1}, {"train_tokens": 5000}, {"seed": 0, "train_tokens": 5000})}
    assert len(names) == 4 and "03_layer_variance/seed=0" in names
    assert sorted(changed_parameters("03_layer_variance", {})) == sorted(set(NB03_DEFAULTS) - {"device"})
    assert changed_parameters("99_no_such_notebook", NB03_DEFAULTS)  # unreadable: never the committed run
    monkeypatch.setenv("MLSAE_FIGURES", "/somewhere/else")
    assert figures_for("03_layer_variance", {**NB03_DEFAULTS, "model": "x"}).root == Path("/somewhere/else")


def test_defaults_are_the_committed_ones_not_an_edited_working_copy(tmp_path):
    """Editing the parameters cell in JupyterLab and saving must not make that run 'the default run'."""
    import shutil
    import subprocess

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    shutil.copy(ROOT / "notebooks" / "03_layer_variance.ipynb", nbs)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    edited = nbformat.read(nbs / "03_layer_variance.ipynb", as_version=4)
    cell = next(c for c in edited.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace("seed = 42", "seed = 0")
    nbformat.write(edited, nbs / "03_layer_variance.ipynb")
    assert changed_parameters("03_layer_variance", {**NB03_DEFAULTS, "seed": 0}, nbs) == ["seed"]
    assert changed_parameters("03_layer_variance", NB03_DEFAULTS, nbs) == []
    shutil.rmtree(tmp_path / ".git")  # outside a checkout: the file's own defaults
    assert changed_parameters("03_layer_variance", {**NB03_DEFAULTS, "seed": 0}, nbs) == []


def test_every_notebook_writes_through_its_figure_folder():
    for path in notebook_paths():
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert f'figures_for("{path.stem}", globals())' in source, path.name
        assert "save_figure(" not in source and "save_table(" not in source and "FIGURES" not in source, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_matches_its_reference(path, tmp_path):
    """One execution per notebook: nbval runs it, its records are compared with the reference."""
    failure = check(path, tmp_path)
    assert failure is None, failure


# ---- the checker itself ---------------------------------------------------------------------------


def test_the_plugin_reads_the_mime_type_the_notebooks_write():
    assert nbval_plugin.MIME == records.MIME


def test_records_are_plain_json_and_a_name_is_one_quantity():
    import numpy as np
    import torch

    assert records.to_json_value({"a": np.float32(0.5), "b": torch.tensor([1, 2]), "c": (np.int64(3), "x")}) == \
        {"a": 0.5, "b": [1, 2], "c": [3, "x"]}
    assert records.to_json_value({"zoo-s": float("nan"), "zoo-m": np.inf}) == {"zoo-s": "nan", "zoo-m": "inf"}
    with pytest.raises(TypeError, match="cannot record a object"):
        records.to_json_value(object(), "x")
    out = {"output_type": "display_data", "data": {records.MIME: {"name": "x", "value": 1}}, "metadata": {}}
    assert records.read_records([[out], [{"output_type": "stream", "name": "stdout", "text": "x"}]]) == {"x": 1}
    with pytest.raises(ValueError, match="recorded twice"):
        records.read_records([[out], [out]])


def _reference(quantities: dict) -> dict:
    return {"quantities": {n: {"value": v, "tolerance": t} for n, (v, t) in quantities.items()}}


def test_compare_reports_value_reference_and_tolerance():
    ref = _reference({"ratio": ({"zoo-s": 1.25, "zoo-m": 2.0}, {"abs": 0.05}), "fvu": (0.02, {"rel": 0.1}),
                      "token": (" Mary", "exact"), "shape": ([2, 32], "exact")})
    ok = {"ratio": {"zoo-s": 1.29, "zoo-m": 1.96}, "fvu": 0.0219, "token": " Mary", "shape": [2, 32]}
    assert compare(ok, ref) == []
    bad = {**ok, "ratio": {"zoo-s": 1.31, "zoo-m": 2.0}, "token": " John", "shape": [2, 32, 1]}
    problems = compare(bad, ref)
    assert problems[0] == "ratio[zoo-s]: value 1.31, reference 1.25, tolerance abs 0.05 (deviation 0.06 > 0.05)"
    assert problems[1] == "token: value ' John', reference ' Mary', tolerance exact"
    assert problems[2].startswith("shape: value [2, 32, 1] has another structure")
    assert compare({**ok, "fvu": 0.0221}, ref) == ["fvu: value 0.0221, reference 0.02, tolerance rel 0.1 "
                                                   "(deviation 0.0021 > 0.002)"]
    assert compare({k: v for k, v in ok.items() if k != "fvu"} | {"new": 1}, ref) == [
        "new: recorded but not in the reference (new quantity: regenerate the reference, then set its tolerance)",
        "fvu: in the reference but not recorded by this run"]
    assert "no tolerance" in compare(ok, _reference({"fvu": (0.02, None)}) | {})[-1]


def test_a_5_percent_change_of_the_papers_estimator_fails_03_and_a_change_inside_the_tolerance_passes():
    """On the committed reference of the headline notebook: the check can fail, and it passes what it should."""
    reference = read_reference(ROOT / "notebooks" / "03_layer_variance.ipynb")
    values = {n: spec["value"] for n, spec in reference["quantities"].items()}
    assert compare(values, reference) == []
    for name in ("paper_ratio", "honest_ratio"):
        tolerance = reference["quantities"][name]["tolerance"]["abs"]
        inside = {**values, name: values[name] + 0.5 * tolerance}
        assert compare(inside, reference) == [], name
    for name in ("paper_ratio", "paper_ratio_whole", "q_weighted_ratio"):
        moved = {**values, name: values[name] * 1.05}
        problems = compare(moved, reference)
        assert len(problems) == 1 and problems[0].startswith(f"{name}: value {values[name] * 1.05!r}, reference "
                                                             f"{values[name]!r}, tolerance abs"), problems


SYNTHETIC = [
    ("x = 1.0", {"tags": ["parameters"]}),
    ("import os, sys\nif os.environ.get('SYNTHETIC_STDERR'):\n    print('a warning', file=sys.stderr)", {}),
    ("from mlsae.figures.records import record\nprint(f'key number {x / 3:.3f}')\nrecord('third', x / 3)\n"
     "record('label', 'x')", {}),
]


def _synthetic_notebook(folder: Path, cells=SYNTHETIC) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source, metadata=meta) for source, meta in cells]
    path = folder / "notebooks" / "99_synthetic.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _set_tolerance(ref: Path, name: str, tolerance) -> None:
    reference = json.loads(ref.read_text())
    reference["quantities"][name]["tolerance"] = tolerance
    ref.write_text(json.dumps(reference))


@pytest.mark.slow
def test_an_executed_notebook_is_checked_within_its_tolerance_and_a_stale_reference_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHETIC_STDERR", raising=False)
    path, refs = _synthetic_notebook(tmp_path), tmp_path / "references"
    ref = update_reference(path, refs, {"x": 2.0})
    written = json.loads(ref.read_text())
    assert written["quantities"] == {"third": {"value": 2.0 / 3, "tolerance": None},
                                     "label": {"value": "x", "tolerance": None}}
    assert "no tolerance in the reference" in check(path, tmp_path / "untoleranced", {"x": 2.0}, refs)
    _set_tolerance(ref, "third", {"rel": 0.01})
    _set_tolerance(ref, "label", "exact")
    assert check(path, tmp_path / "ok", {"x": 2.0}, refs) is None

    # the same code with other numbers: 0.5% off passes, 5% off fails with value, reference and tolerance
    written = json.loads(ref.read_text())
    for factor, passes in ((1.005, True), (1.05, False)):
        moved = {**written, "quantities": {**written["quantities"], "third": {"value": 2.0 / 3 * factor,
                                                                              "tolerance": {"rel": 0.01}}}}
        ref.write_text(json.dumps(moved))
        failure = check(path, tmp_path / f"moved-{factor}", {"x": 2.0}, refs)
        assert (failure is None) == passes, failure
        if not passes:
            assert f"third: value {2.0 / 3!r}, reference {2.0 / 3 * factor!r}, tolerance rel 0.01" in failure
    ref.write_text(json.dumps(written))

    # regenerating rewrites values and keeps the reviewed tolerances
    update_reference(path, refs, {"x": 2.0})
    assert json.loads(ref.read_text())["quantities"]["third"]["tolerance"] == {"rel": 0.01}

    edited = [*SYNTHETIC[:2], (SYNTHETIC[2][0].replace(":.3f", ":.4f"), {})]
    _synthetic_notebook(tmp_path, edited)
    failure = check(path, tmp_path / "stale", {"x": 2.0}, refs)
    assert failure.startswith("reference for 99 is stale: the notebook changed; "
                              "run `python scripts/update_references.py 99`")
    assert "stale" in check(path, tmp_path / "other-parameters", {"x": 3.0}, refs)


@pytest.mark.slow
def test_a_cell_writing_to_stderr_or_failing_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHETIC_STDERR", raising=False)
    path, refs, params = _synthetic_notebook(tmp_path), tmp_path / "references", {"x": 2.0}
    ref = update_reference(path, refs, params)
    _set_tolerance(ref, "third", {"rel": 0.01})
    _set_tolerance(ref, "label", "exact")
    monkeypatch.setenv("SYNTHETIC_STDERR", "1")
    failure = check(path, tmp_path / "check", params, refs)
    assert failure and "Cell 2 wrote to stderr" in failure and "a warning" in failure
    with pytest.raises(RuntimeError, match="no reference written"):
        update_reference(path, refs, params)
    monkeypatch.delenv("SYNTHETIC_STDERR")
    _synthetic_notebook(tmp_path, [*SYNTHETIC, ("raise ValueError('broken cell')", {})])
    update_reference_failure = None
    try:
        update_reference(path, refs, params)
    except RuntimeError as err:
        update_reference_failure = str(err)
    assert update_reference_failure and "broken cell" in update_reference_failure


@pytest.mark.parametrize("params, match", [
    ({"preset": "tiny", "ks": "[8, 100000]"}, "exceeds the number of latents"),  # JSON text, as -p passes it
    ({"preset": "tiny", "expansion_factors": "[2, 8"}, "is not a list"),
])
def test_a_bad_list_element_fails_in_the_first_cell(params, match, tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLSAE_FIGURES", str(tmp_path / "figures"))
    path = ROOT / "notebooks" / "06_sweeps.ipynb"
    run = run_notebook(path, tmp_path / "out.ipynb", params)
    assert not run.ok and match in run.error
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [2]  # parameters, injected parameters, then the first code cell
    assert not (tmp_path / "home" / "saes").exists()  # nothing trained
