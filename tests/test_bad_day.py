"""A bad day, handled (issue "A bad day"): the wrong model is never evaluated silently, a budget the text cannot
fill says so, bad input fails before any model is built, runs say what they resume and what they leave alone,
and disk errors name the folder. Run against the code before this change (73669f1), every test of a finding
fails; the two parameter cases that pass there (dead_tokens 0, a budget under one step) were already refused
by the config and stay as guards."""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from conftest import write_word_corpus
from mlsae.cli import main
from mlsae.core.paths import atomic_write_text, disk_error
from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE

TINY = ["--preset", "tiny", "--expansion-factor", "4", "-k", "4", "--k-aux", "8", "--seq-len", "16",
        "--batch-size", "4", "--dead-tokens", "500", "--checkpoint-every", "5", "--log-every", "1"]


def _train(model: str, data: Path, out: Path, *extra: str) -> dict:
    assert main(["train", "--model", model, "--data", str(data), "--out", str(out), *TINY, *extra]) == 0
    return json.loads((out / "sae" / "provenance.json").read_text())


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return write_word_corpus(tmp_path_factory.mktemp("text"), n_train=200, seed=0)


# ---- 1. eval never measures another model ----------------------------------------------------------


def test_eval_of_a_run_trained_on_a_relative_folder_uses_that_folder_or_refuses(tiny_model_dir, text_dir, tmp_path,
                                                                                monkeypatch, capsys):
    """On 0d8e133 a run trained with --model ./model, evaluated from a folder holding another model/, exited 0 with
    that other model's FVU. Now the run records the folder's absolute path, and a model whose weights are not
    the recorded ones is refused."""
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_dir, first / "model")
    shutil.copytree(tiny_model_dir, second / "model")
    config = json.loads((second / "model" / "config.json").read_text())
    (second / "model" / "config.json").write_text(json.dumps({**config, "note": "another model"}))
    monkeypatch.chdir(first)
    run = tmp_path / "run"
    p = _train("./model", text_dir, run, "--max-tokens", str(16 * 4 * 6))
    assert p["model"] == str((first / "model").resolve())
    monkeypatch.chdir(second)
    capsys.readouterr()
    assert main(["eval", str(run), "--tokens", "256", "--batch-size", "4"]) == 0  # the recorded folder, not ./model
    assert main(["eval", str(run), "--model", "./model", "--tokens", "256"]) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "another model" in err and str(first / "model") in err


# ---- 2. a budget larger than the data ----------------------------------------------------------------


def test_a_budget_the_text_cannot_fill_is_said_and_recorded(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "small").mkdir()
    small = write_word_corpus(tmp_path / "small", n_train=6, seed=1)
    p = _train(str(tiny_model_dir), small, tmp_path / "run", "--max-tokens", "1000000")
    err = capsys.readouterr().err
    assert "ran out after" in err and "1,000,000 asked" in err
    assert p["data_exhausted"] is True and p["tokens"] < 1_000_000
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["data_exhausted"] is True and summary["steps"] == p["steps"]


# ---- 3. bad input fails before any model is built ---------------------------------------------------


@pytest.fixture
def no_model_may_load(tmp_path, monkeypatch):
    """An empty $MLSAE_HOME (zoo-m would take minutes to build), and a trap for any load or build."""
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))

    def trap(*args, **kwargs):
        raise AssertionError("the model was loaded or built before the bad input was found")

    monkeypatch.setattr("mlsae.training.train.load_model", trap)
    monkeypatch.setattr("mlsae.models.zoo.ensure_zoo_model", trap)
    monkeypatch.setattr("mlsae.models.zoo.train_zoo_model", trap)


def _bad_data(tmp_path: Path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "no-such-text")
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "binary":
        (folder / "train.txt").write_bytes(bytes(range(256)) * 64)
    if kind == "latin-1":
        (folder / "train.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    return str(folder)


@pytest.mark.parametrize("kind", ["missing", "empty", "binary", "latin-1"])
def test_bad_data_fails_before_the_model_is_built(no_model_may_load, tmp_path, capsys, kind):
    data = _bad_data(tmp_path, kind)
    start = time.perf_counter()
    assert main(["train", "--model", "zoo-m", "--data", data]) == 2
    err = capsys.readouterr().err
    assert data in err and "AssertionError" not in err and "Traceback" not in err
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("flags, named", [
    (["--layers", "99"], "layers [99]"), (["-k", "100000"], "k=100000"), (["--seq-len", "100000"], "seq_len 100000"),
    (["--seed", "-1"], "seed"), (["--dead-tokens", "0"], "dead_tokens"), (["--device", "banana"], "'banana'"),
    (["--k-aux", "100000"], "k_aux=100000"), (["--max-tokens", "10"], "max_tokens"),
])
def test_bad_settings_fail_in_seconds_on_an_empty_home(no_model_may_load, capsys, flags, named):
    start = time.perf_counter()
    assert main(["train", "--model", "zoo-m", *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "AssertionError" not in err, err
    assert time.perf_counter() - start < 20


def test_an_out_folder_that_cannot_be_made_fails_before_the_model_is_built(no_model_may_load, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["train", "--model", "zoo-m", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and str(blocker) in err and "AssertionError" not in err


def test_notebook_settings_fail_before_any_work(capsys):
    from mlsae.studies.experiment import Experiment

    with pytest.raises(ValueError, match="'banana' is not a torch device"):
        Experiment(preset="tiny", device="banana")


# ---- 4. threads per process are recorded -------------------------------------------------------------


def test_provenance_records_threads_and_processes(tiny_model_dir, text_dir, tmp_path):
    """1 vs N processes agree only at equal threads per process (README): the provenance says what a run had."""
    p = _train(str(tiny_model_dir), text_dir, tmp_path / "run", "--max-tokens", str(16 * 4 * 3))
    assert p["threads"] == torch.get_num_threads() and p["processes"] == 1


# ---- 6. a finished run is left alone; a resumed run says from where ------------------------------------


def test_rerunning_a_finished_run_leaves_its_files(tiny_model_dir, text_dir, tmp_path, capsys):
    out = tmp_path / "run"
    _train(str(tiny_model_dir), text_dir, out, "--max-tokens", str(16 * 4 * 6))
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    _train(str(tiny_model_dir), text_dir, out, "--max-tokens", str(16 * 4 * 6))
    assert f"already trained: {out}" in capsys.readouterr().err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == files
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(text_dir), "--out", str(out), *TINY,
                 "--max-tokens", str(16 * 4 * 6), "--lr", "0.01"]) == 2
    assert "holds a finished run with other settings (lr:" in capsys.readouterr().err


def test_a_resumed_run_says_from_which_step(tiny_model_dir, text_dir, tmp_path, monkeypatch, capsys):
    import mlsae.training.train as train_module

    real = train_module._Run.end_step

    def dying(self, model_seconds, stream):
        real(self, model_seconds, stream)
        if self.step == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module._Run, "end_step", dying)
    with pytest.raises(KeyboardInterrupt):
        _train(str(tiny_model_dir), text_dir, tmp_path / "run", "--max-tokens", str(16 * 4 * 12))
    monkeypatch.setattr(train_module._Run, "end_step", real)
    capsys.readouterr()
    _train(str(tiny_model_dir), text_dir, tmp_path / "run", "--max-tokens", str(16 * 4 * 12))
    assert "from its checkpoint at step 5 of 12" in capsys.readouterr().err


# ---- 5. disk errors name the folder and the fix -----------------------------------------------------


def test_a_full_disk_names_the_folder_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / "saes" / "x" / "train_config.json"
    target.parent.mkdir(parents=True)
    target.write_text("before")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mlsae.core.paths.os.replace", full)
    with pytest.raises(OSError, match=r"cannot write .*train_config.json: the disk is full .*\$MLSAE_HOME") as err:
        atomic_write_text(target, "after")
    assert err.value.errno == errno.ENOSPC and target.read_text() == "before"  # nothing already written is lost
    assert [p.name for p in target.parent.iterdir()] == ["train_config.json"]  # no temporary file left
    elsewhere = disk_error(OSError(errno.EROFS, "Read-only file system"), tmp_path / "out" / "run")
    assert "read-only" in str(elsewhere) and "--out" in str(elsewhere)


# ---- 7. a saved SAE that is not what it claims is refused ----------------------------------------------


def _saved(tmp_path: Path) -> Path:
    sae = MLSAE(SAEConfig(d_model=8, n_latents=32, k=4, k_aux=8))
    sae.save_pretrained(tmp_path / "sae")
    return tmp_path / "sae"


@pytest.mark.parametrize("change, message", [
    (lambda raw: {**raw, "format_version": 2}, "format 'mlsae' version 2"),
    (lambda raw: {**raw, "k": "4"}, "k must be an integer, got '4'"),
    (lambda raw: {**raw, "k": 64}, "k=64 must be in 1..n_latents=32"),
])
def test_a_config_this_version_cannot_read_is_refused(tmp_path, change, message):
    folder = _saved(tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(raw)))
    with pytest.raises(ValueError, match=message):
        MLSAE.from_pretrained(folder)


def test_extra_tensors_and_nan_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "W_extra": torch.zeros(3)}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="W_extra"):
        MLSAE.from_pretrained(folder)
    save_file({**tensors, "W_dec": torch.full_like(tensors["W_dec"], float("nan"))}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="'W_dec' holds NaN"):
        MLSAE.from_pretrained(folder)


# ---- 3 and 8. a notebook's bad or misspelt parameter fails in its first cell ----------------------------


def test_notebook_11_checks_its_latent_and_examples_before_training():
    from mlsae.studies.experiment import Experiment

    exp = Experiment(preset="tiny")  # micro-m, R = 8: its width is known without building it
    assert exp.n_latents == 8 * 48  # d_model 48
    with pytest.raises(ValueError, match="latent 99999 out of range: this SAE has 384 latents"):
        exp.check_examples(99999, 8)
    with pytest.raises(ValueError, match="n_examples must be positive, got 0"):
        exp.check_examples(None, 0)
    exp.check_examples(383, 8)


@pytest.mark.parametrize("notebook, parameters, message", [
    ("03_layer_variance", {"preset": "tiny", "seeed": 0}, "has no parameter seeed (did you mean seed?)"),
    ("11_max_examples", {"preset": "tiny", "latent": 99999}, "latent 99999 out of range"),
])
def test_a_notebook_refuses_bad_parameters_in_its_first_cell(tmp_path, monkeypatch, notebook, parameters, message):
    """On 0d8e133 -p seeed 0 ran the defaults, and notebook 11's -p latent 99999 failed after 93 s of training."""
    from mlsae.figures.notebooks import NOTEBOOKS, run_notebook

    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))  # empty: nothing may be built before the error
    monkeypatch.setenv("MLSAE_FIGURES", str(tmp_path / "figures"))
    start = time.perf_counter()
    run = run_notebook(NOTEBOOKS / f"{notebook}.ipynb", tmp_path / "out.ipynb", parameters)
    assert run.error is not None and message in run.error, run.error
    assert time.perf_counter() - start < 90 and not (tmp_path / "home" / "zoo").exists()


def test_figures_says_when_nothing_matches_or_a_parameter_is_unknown(capsys):
    assert main(["figures", "--only", "99"]) == 2
    assert "--only 99 matches no notebook" in capsys.readouterr().err
    assert main(["figures", "--only", "03", "-p", "seeed", "0"]) == 2
    assert "no chosen notebook has the parameter(s) seeed" in capsys.readouterr().err


def test_an_unknown_model_name_suggests_the_closest_instead_of_listing_all():
    from mlsae.models.registry import resolve_model

    with pytest.raises(ValueError, match="Did you mean 'pythia-70m'") as err:
        resolve_model("pythia70m")
    assert "zoo-xl" not in str(err.value) or str(err.value).count(",") < 12  # no dump of every name


def test_model_dot_is_recorded_by_its_path_and_names_no_hidden_folder(tiny_model_dir, tmp_path, monkeypatch):
    """On 0d8e133 ``--model .`` named its run ``saes/.-x8-...`` and wrote its lens into ``lenses/`` itself."""
    from mlsae.core.paths import safe_name
    from mlsae.training.config import config_from_preset
    from mlsae.training.identity import sae_key

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    monkeypatch.chdir(tmp_path / "model")
    cfg = config_from_preset("tiny", model=".", data="offline")
    assert cfg.model == str((tmp_path / "model").resolve())
    assert not sae_key(cfg).startswith(".") and not safe_name(cfg.model).startswith(".")
