"""Every numbered notebook: executed by papermill with the tiny preset, then validated by nbval.

nbval runs in ``--nbval-lax`` mode: only cells marked ``# NBVAL_CHECK_OUTPUT`` (deterministic key
numbers) are compared with papermill's outputs; ``nbval_sanitize.cfg`` masks timings and paths.
The notebooks share this session's ``$MLSAE_HOME``, so each SAE is trained once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mlsae.notebooks import changed_parameters, figures_for, notebook_paths, parameter_names, run_notebook

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")

# The parameters CI passes to each notebook. A notebook missing here fails test_every_notebook_is_covered.
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
def test_notebook_runs_under_papermill_and_passes_nbval(path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MLSAE_FIGURES", str(tmp_path_factory.mktemp("figures")))
    out = tmp_path_factory.mktemp("executed") / path.name
    run = run_notebook(path, out, CI_PARAMETERS.get(path.stem, {"preset": "tiny"}))
    assert run.ok, f"papermill failed on {path.name}:\n{run.error}"
    stderr = ["".join(o.get("text", ""))[:200] for c in nbformat.read(out, as_version=4).cells
              for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr (progress bars, warnings): {stderr[:5]}"
    nbval = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", str(out), "--nbval-sanitize-with", str(SANITIZE),
         "--nbval-current-env", "-p", "no:cacheprovider", "-q", "--rootdir", str(out.parent)],
        capture_output=True, text=True, cwd=str(out.parent),
    )
    assert nbval.returncode == 0, f"nbval failed on {path.name}:\n{nbval.stdout[-4000:]}\n{nbval.stderr[-2000:]}"


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
