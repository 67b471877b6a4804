"""The paper's own path, executed offline: Pythia and GPT-2 from the Hugging Face cache, the Pile from the hub
cache, the pretrained tuned lens from the tuned-lens space, all as `hf download` leaves them (small random
stand-ins built by conftest in the real on-disk layouts), with HF_HUB_OFFLINE=1. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from conftest import (HUB_SHA, make_tiny_tokenizer, put_in_hub_cache, save_tiny_model_dir, write_pile_layout)
from mlsae.notebooks import run_notebook
from mlsae.presets import HUB_DATA

ROOT = Path(__file__).resolve().parents[1]
# A CPU-sized smoke test of the paper preset: its R = 64, k = 32, constant lr and unit-norm init, on a budget
# of a few thousand tokens in 4 x 32-token batches (4,096 analysis tokens: at least one of the paper's 2,048-token windows).
SMALL = {"train_tokens": 4096, "analysis_tokens": 4096, "seq_len": 32, "batch_size": 4}


@pytest.fixture
def hub_machine(tmp_path, empty_hf_cache, monkeypatch):
    """A machine that has fetched pythia-70m-deduped, gpt2, the Pile's files and the pretrained lens."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from tuned_lens import TunedLens

    from mlsae.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty_hf_cache))  # for the notebook kernels (separate processes)
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLSAE_FIGURES", str(tmp_path / "figures"))
    tok = make_tiny_tokenizer()
    put_in_hub_cache(empty_hf_cache, "EleutherAI/pythia-70m-deduped", save_tiny_model_dir(tmp_path / "neox", tokenizer=tok))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))  # the tokenizer's <|endoftext|>
    put_in_hub_cache(empty_hf_cache, "openai-community/gpt2", save_tiny_model_dir(tmp_path / "gpt2", gpt2, tok))
    put_in_hub_cache(empty_hf_cache, HUB_DATA, write_pile_layout(tmp_path / "pile", docs_per_file=150),
                     repo_type="dataset")
    model, _ = load_model("pythia-70m")
    space = tmp_path / "space"
    TunedLens.from_model(model).save(space / "lens" / "EleutherAI" / "pythia-70m-deduped")
    put_in_hub_cache(empty_hf_cache, "AlignmentResearch/tuned-lens", space, repo_type="space")
    return tmp_path


def _executed_cleanly(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    stderr = ["".join(o.get("text", ""))[:300] for o in outputs if o.get("name") == "stderr"]
    assert stderr == [], f"pink boxes on the hub path: {stderr}"
    from mlsae.records import read_records

    return read_records(c.get("outputs", []) for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pythia-70m", "gpt2"])
def test_notebook_03_runs_the_paper_preset_on_hub_models_offline(hub_machine, model):
    params = {"model": model, "preset": "paper", "models": json.dumps([model]), **SMALL}
    run = run_notebook(ROOT / "notebooks" / "03_layer_variance.ipynb", hub_machine / f"03-{model}.ipynb", params)
    assert run.ok, run.error
    records = _executed_cleanly(run.output)
    assert records["variance_ratio"] > 0 and records["paper_ratio"] > 0 and list(records["series_honest_ratio"]) == [model]
    provenance = json.loads(next((hub_machine / "home" / "saes").glob("*/sae/provenance.json")).read_text())
    assert provenance["data"] == HUB_DATA and provenance["data_identity"] == f"hub:{HUB_DATA}@{HUB_SHA}"
    assert provenance["train_config"]["seq_len"] == 32 and provenance["steps"] == 4096 // (4 * 32)  # the budget, in steps


@pytest.mark.slow
@pytest.mark.parametrize("lens", [False, True])
def test_the_cli_trains_pythia_under_the_paper_preset_on_the_pile_with_and_without_the_pretrained_lens(
        hub_machine, lens, capsys):
    from mlsae.__main__ import main

    argv = ["train", "--model", "pythia-70m", "--max-tokens", "2048", "--batch-size", "4", "--seq-len", "32",
            "--out", str(hub_machine / "run")] + (["--tuned-lens"] if lens else [])
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["data"] == HUB_DATA and summary["steps"] == 2048 // (4 * 32)
    provenance = json.loads((hub_machine / "run" / "sae" / "provenance.json").read_text())
    assert provenance["preset"] == "paper" and provenance["data_identity"] == f"hub:{HUB_DATA}@{HUB_SHA}"
    if lens:
        assert provenance["lens"] == {"source": "pretrained", "identity":
                                      f"AlignmentResearch/tuned-lens@{HUB_SHA}:lens/EleutherAI/pythia-70m-deduped"}
        assert not (hub_machine / "home" / "lenses").exists()  # the pretrained lens, nothing trained
    else:
        assert provenance["lens"] is None


RELEASED = "tim-lawson/mlsae-pythia-70m-deduped-x2-k4"  # the authors' naming: model, R, k


@pytest.mark.slow
def test_a_released_mlsae_is_evaluated_and_analysed_in_a_notebook_without_training(hub_machine, empty_hf_cache, capsys):
    """The authors' released layout from the hub cache: `mlsae eval` and notebook 04 (`-p pretrained_sae`, the
    model named by the id). On main 0d8e133 no notebook could analyse a released MLSAE."""
    from conftest import write_released_mlsae
    from mlsae.__main__ import main

    put_in_hub_cache(empty_hf_cache, RELEASED, (write_released_mlsae(hub_machine / "released", d=32, m=64, k=4)
                                                and hub_machine / "released"))
    assert main(["eval", "--sae", RELEASED, "--model", "pythia-70m", "--seq-len", "32", "--tokens", "256",
                 "--batch-size", "4"]) == 0
    assert f"no provenance: evaluating on {HUB_DATA} (test split) at 32 positions" in capsys.readouterr().out

    params = {"pretrained_sae": RELEASED, "preset": "paper", "models": '["pythia-70m"]', "analysis_tokens": 4096,
              "seq_len": 32, "batch_size": 4}
    run = run_notebook(ROOT / "notebooks" / "04_layer_heatmaps.ipynb", hub_machine / "04.ipynb", params)
    assert run.ok, run.error
    records = _executed_cleanly(run.output)
    assert records["latents_on_prompt"] > 0
    saes = hub_machine / "home" / "saes"
    assert not list(saes.glob("*/sae")), "nothing trained"
    assert [p.name.split("-")[0] for p in saes.iterdir()] == ["pretrained"]
