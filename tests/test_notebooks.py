"""Every numbered notebook: executed once under nbval with the CI parameters and compared with its reference.

tests/references/NN_name.ipynb is the notebook as papermill runs it with ``CI_PARAMETERS``, with outputs
kept only for the key-number cells (``# NBVAL_CHECK_OUTPUT``); ``nbval --nbval-lax`` executes the notebook
and compares those cells with it (``nbval_sanitize.cfg`` masks timings and paths), and
``nbval_no_stderr.py`` fails any cell that writes to stderr. ``python scripts/update_references.py NN``
rewrites a reference (see tests/references/README.md for the precision rule). The notebooks share this
session's ``$MLSAE_HOME``, so each SAE is trained once.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from mlsae.notebooks import (CI_PARAMETERS, KEY_MARKER, changed_parameters, check_against_reference, figures_for,
                             notebook_paths, parameter_names, reference_path, run_notebook, update_reference)

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
    assert any("NBVAL_CHECK_OUTPUT" in c.source for c in nb.cells if c.cell_type == "code"), "no key-number cell"
    assert reference_path(path).is_file(), f"no reference: run `python scripts/update_references.py {path.stem[:2]}`"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "committed notebooks carry no outputs"
            assert len(c.source.splitlines()) <= 40, "a cell longer than a screen belongs in src/"


NB03_DEFAULTS = dict(model=None, preset="default", expansion_factor=None, k=32, tuned_lens=False, models=None,
                    train_tokens=None, analysis_tokens=None, seed=42, device="cpu")


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
        assert figures_for("03_layer_variance", values).root == ROOT / "outputs" / "figures"
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
    """One execution per notebook: nbval runs it and compares the key-number cells with the reference."""
    failure = check_against_reference(path, tmp_path)
    assert failure is None, failure


SYNTHETIC = [
    ("x = 1.0", {"tags": ["parameters"]}),
    ("import os, sys\nif os.environ.get('SYNTHETIC_STDERR'):\n    print('a warning', file=sys.stderr)", {}),
    (KEY_MARKER + "\nprint(f'key number {x / 3:.3f}')", {}),
]


def _synthetic_notebook(folder: Path, cells=SYNTHETIC) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source, metadata=meta) for source, meta in cells]
    path = folder / "notebooks" / "99_synthetic.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _set_key_output(ref: Path, text: str) -> None:
    nb = nbformat.read(ref, as_version=4)
    next(c for c in nb.cells if KEY_MARKER in c.source).outputs[0].text = text
    nbformat.write(nb, ref)


@pytest.mark.slow
def test_a_changed_key_number_or_a_stale_reference_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHETIC_STDERR", raising=False)
    path, refs, params = _synthetic_notebook(tmp_path), tmp_path / "references", {"x": 2.0}
    ref = update_reference(path, refs, params)
    written = nbformat.read(ref, as_version=4)
    code = [c for c in written.cells if c.cell_type == "code"]
    assert [c.metadata.get("tags") for c in code[:2]] == [["parameters"], ["injected-parameters"]]
    assert [bool(c.outputs) for c in code] == [False, False, False, True], "outputs only for the key cell"
    assert code[-1].outputs[0].text == "key number 0.667\n"
    assert set(written.metadata) == {"kernelspec", "language_info", "papermill"}

    assert check_against_reference(path, tmp_path / "ok", params, refs) is None

    _set_key_output(ref, "key number 0.668\n")  # a regression in the last printed digit
    failure = check_against_reference(path, tmp_path / "changed", params, refs)
    assert failure and "Cell outputs differ" in failure and "0.668" in failure and "0.667" in failure

    _set_key_output(ref, "key number 0.667\n")
    edited = [*SYNTHETIC[:2], (KEY_MARKER + "\nprint(f'key number {x / 3:.4f}')", {})]
    _synthetic_notebook(tmp_path, edited)
    failure = check_against_reference(path, tmp_path / "stale", params, refs)
    assert failure.startswith("reference for 99 is stale: the notebook changed; "
                              "run `python scripts/update_references.py 99`")
    assert "stale" in check_against_reference(path, tmp_path / "other-parameters", {"x": 3.0}, refs)


@pytest.mark.slow
def test_a_cell_writing_to_stderr_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHETIC_STDERR", raising=False)
    path, refs, params = _synthetic_notebook(tmp_path), tmp_path / "references", {"x": 2.0}
    update_reference(path, refs, params)
    monkeypatch.setenv("SYNTHETIC_STDERR", "1")  # an unmarked cell: nbval --nbval-lax alone would pass it
    failure = check_against_reference(path, tmp_path / "check", params, refs)
    assert failure and "Cell 2 wrote to stderr" in failure and "a warning" in failure
    with pytest.raises(RuntimeError, match="wrote to stderr, no reference written"):
        update_reference(path, refs, params)


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
