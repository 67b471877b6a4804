"""The paper's own path, executed offline: Pythia and GPT-2 from the Hugging Face cache, the Pile from the hub
cache, the pretrained tuned lens from the tuned-lens space, all as `hf download` leaves them (small random
stand-ins built by conftest in the real on-disk layouts), with HF_HUB_OFFLINE=1. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch

from conftest import (
    HUB_SHA,
    make_tiny_neox,
    make_tiny_tokenizer,
    put_in_hub_cache,
    save_pythia_as_released,
    save_tiny_model_dir,
    write_pile_layout,
    write_released_mlsae,
)
from mlsae.core.presets import HUB_DATA
from mlsae.figures.notebooks import run_notebook

ROOT = Path(__file__).resolve().parents[1]
# A CPU-sized smoke test of the paper preset: its R = 64, k = 32, constant lr and unit-norm init, on a budget
# of a few thousand tokens in 4 x 32-token batches (4,096 analysis tokens: at least one of the paper's 2,048-token windows).
SMALL = {"train_tokens": 4096, "analysis_tokens": 4096, "seq_len": 32, "batch_size": 4}


@pytest.fixture
def hub_machine(tmp_path, empty_hf_cache, monkeypatch):
    """A machine that has fetched pythia-70m-deduped, gpt2, the Pile's files and the pretrained lens."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from tuned_lens import TunedLens

    from mlsae.models.registry import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty_hf_cache))  # for the notebook kernels (separate processes)
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLSAE_FIGURES", str(tmp_path / "figures"))
    tok = make_tiny_tokenizer()
    pythia = save_pythia_as_released(tmp_path / "neox", make_tiny_neox(vocab_size=len(tok)), tok)
    put_in_hub_cache(empty_hf_cache, "EleutherAI/pythia-70m-deduped", pythia)
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


def test_pythia_as_its_repository_holds_it_loads_with_its_old_config_keys(hub_machine, capfd):
    """The Pythia repositories' config.json predates ``rope_parameters`` (``rotary_pct``, ``rotary_emb_base``), the
    weights are fp16 and carry attention buffers that today's GPT-NeoX no longer has: the model loads in fp32 with
    the same rotary settings, computes what the fp16 weights compute, and says nothing about unused weights."""
    from mlsae.models.registry import load_model

    model, tokenizer = load_model("pythia-70m")
    assert capfd.readouterr().err == ""
    rope = model.config.rope_parameters
    assert (rope["partial_rotary_factor"], rope["rope_theta"]) == (0.25, 10000)
    assert model.dtype == torch.float32 and model.config.use_parallel_residual
    reference = make_tiny_neox(vocab_size=len(tokenizer))  # the same random weights, rounded as the file holds them
    reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


TFM = "tim-lawson/mlsae-pythia-70m-deduped-x2-k4-lens-tfm"  # an MLSAETransformer checkpoint, trained through the lens


def test_a_released_tfm_checkpoint_names_its_model_and_lens_and_loads_only_its_sae(hub_machine, empty_hf_cache, capsys):
    """The authors' ``-tfm`` checkpoints (their Lightning module, transformer included): the SAE is read from the
    ``autoencoder.`` tensors, the model from ``model_name``, the lens from ``tuned_lens``; a notebook analyses it
    through the pretrained lens, and `mlsae eval` needs no --model. Unsupported on main 0d8e133."""
    from mlsae.cli import main
    from mlsae.studies.experiment import Experiment

    tensors = write_released_mlsae(hub_machine / "tfm", d=32, m=64, k=4, last_nonzero=False,
                                   tfm="EleutherAI/pythia-70m-deduped", tuned_lens=True)
    put_in_hub_cache(empty_hf_cache, TFM, hub_machine / "tfm")
    exp = Experiment(pretrained_sae=TFM, preset="paper", seq_len=32, batch_size=4, progress=False)
    assert (exp.model, exp.tuned_lens, exp.expansion_factor, exp.k) == ("pythia-70m", True, 2, 4)
    sae = exp.sae
    assert (sae.cfg.d_model, sae.cfg.n_latents, sae.cfg.k_aux, sae.cfg.dead_tokens) == (32, 64, 256, 10_000_000)
    assert torch.equal(sae.W_enc, tensors["encoder.weight"]) and torch.equal(sae.b_pre, tensors["pre_encoder_bias"])
    from mlsae.studies.tables import (
        reconstruction_table,  # notebook 02's table: the pretrained SAE's one row, nothing trained
    )

    rows = reconstruction_table(exp, [exp.model])
    assert [(r["model"], r["tuned lens"]) for r in rows] == [("pythia-70m", True)]
    assert not list((hub_machine / "home" / "saes").glob("*/sae"))
    with pytest.raises(ValueError, match="plain residual stream.*drop tuned_lens=True"):
        put_in_hub_cache(empty_hf_cache, RELEASED, (write_released_mlsae(hub_machine / "plain", d=32, m=64, k=4)
                                                    and hub_machine / "plain"))
        Experiment(pretrained_sae=RELEASED, tuned_lens=True, progress=False)
    assert main(["eval", "--sae", TFM, "--seq-len", "32", "--tokens", "256", "--batch-size", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["layer"] for r in rows] == [0, 1, 2, "mean"] and all(r["fvu"] > 0 for r in rows)  # random weights


def _executed_cleanly(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    stderr = ["".join(o.get("text", ""))[:300] for o in outputs if o.get("name") == "stderr"]
    assert stderr == [], f"pink boxes on the hub path: {stderr}"
    from mlsae.figures.records import read_records

    return read_records(c.get("outputs", []) for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pythia-70m", "gpt2"])
def test_notebook_03_runs_the_paper_preset_on_hub_models_offline(hub_machine, model):
    params = {"model": model, "preset": "paper", "models": json.dumps([model]), **SMALL}
    run = run_notebook(ROOT / "notebooks" / "03_layer_variance.ipynb", hub_machine / f"03-{model}.ipynb", params)
    assert run.ok, run.error
    records = _executed_cleanly(run.output)
    assert records["honest_ratio"] > 0 and records["paper_ratio"] > 0 and list(records["series_honest_ratio"]) == [model]
    provenance = json.loads(next((hub_machine / "home" / "saes").glob("*/sae/provenance.json")).read_text())
    assert provenance["data"] == HUB_DATA and provenance["data_identity"] == f"hub:{HUB_DATA}@{HUB_SHA}"
    assert provenance["train_config"]["seq_len"] == 32 and provenance["steps"] == 4096 // (4 * 32)  # the budget, in steps


@pytest.mark.slow
def test_notebook_13_compares_the_dictionaries_on_pythia_under_the_paper_preset_offline(hub_machine):
    """Notebook 13 with ``-p preset paper`` where Pythia is cached: the MLSAE, both matched crosscoders and one SAE
    per layer trained on the Pile's files (the paper's lr, 1e-4, for all), evaluated, compared."""
    params = {"model": "pythia-70m", "preset": "paper", "models": json.dumps(["pythia-70m"]), "k": 4,
              "eval_tokens": 2048, **SMALL}
    run = run_notebook(ROOT / "notebooks" / "13_cross_layer_dictionaries.ipynb", hub_machine / "13.ipynb", params)
    assert run.ok, run.error
    records = _executed_cleanly(run.output)
    assert set(records["fvu"]) == {"pythia-70m"}
    assert set(records["fvu"]["pythia-70m"]) == {"MLSAE", "crosscoder, equal latents", "crosscoder, equal parameters",
                                                "single-layer SAEs"}
    assert all(v > 0 for v in records["fvu"]["pythia-70m"].values())
    configs = [json.loads(p.read_text()) for p in (hub_machine / "home" / "saes").glob("*/train_config.json")]
    assert {c["sae"]["architecture"] for c in configs} == {"mlsae", "crosscoder"} and len(configs) == 3 + 3
    assert {c["lr"] for c in configs} == {1e-4} and {c["data"] for c in configs} == {HUB_DATA}


@pytest.mark.slow
@pytest.mark.parametrize("lens", [False, True])
def test_the_cli_trains_pythia_under_the_paper_preset_on_the_pile_with_and_without_the_pretrained_lens(
        hub_machine, lens, capsys):
    from mlsae.cli import main

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
    from mlsae.cli import main

    put_in_hub_cache(empty_hf_cache, RELEASED, (write_released_mlsae(hub_machine / "released", d=32, m=64, k=4)
                                                and hub_machine / "released"))
    assert main(["eval", "--sae", RELEASED, "--model", "pythia-70m", "--seq-len", "32", "--tokens", "256",
                 "--batch-size", "4"]) == 0
    assert f"no provenance: using {HUB_DATA} (test split) at 32 positions" in capsys.readouterr().out

    params = {"pretrained_sae": RELEASED, "preset": "paper", "models": '["pythia-70m"]', "analysis_tokens": 4096,
              "seq_len": 32, "batch_size": 4}
    run = run_notebook(ROOT / "notebooks" / "04_layer_heatmaps.ipynb", hub_machine / "04.ipynb", params)
    assert run.ok, run.error
    records = _executed_cleanly(run.output)
    assert records["latents_on_prompt"] > 0
    saes = hub_machine / "home" / "saes"
    assert not list(saes.glob("*/sae")), "nothing trained"
    assert [p.name.split("-")[0] for p in saes.iterdir() if not p.name.startswith(".")] == ["pretrained"]
