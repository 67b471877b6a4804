"""The command line reports expected failures as one clear message and exit status 2."""

from mlsae.cli import main


def test_missing_model_is_a_message_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", "--model", "pythia-70m", "--expansion-factor", "64", "-k", "32"]) == 2
    err = capsys.readouterr().err
    assert "EleutherAI/pythia-70m-deduped" in err and "hf download" in err and "Traceback" not in err


def test_bad_hyper_parameter(capsys):
    assert main(["train", "--model", "micro-s", "-k", "0"]) == 2
    assert "k must be positive" in capsys.readouterr().err


def test_bad_layers_argument(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train", "--model", "micro-s", "--layers", "a,b"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_cli_rules_match_the_library(capsys):
    assert main(["train", "--model", "micro-s", "--lr", "nan"]) == 2
    assert "lr must be a positive finite number" in capsys.readouterr().err
    assert main(["train", "--model", "micro-s", "--layers", "0,0"]) == 2
    assert "name a layer more than once" in capsys.readouterr().err


def test_eval_on_a_truncated_sae_is_one_line(tmp_path, capsys):
    from mlsae.sae.config import SAEConfig
    from mlsae.sae.model import MLSAE

    MLSAE(SAEConfig(d_model=8, n_latents=16, k=2)).save_pretrained(tmp_path / "sae")
    weights = tmp_path / "sae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--model", "micro-s"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: cannot be read" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_flags_are_generated_from_the_config(monkeypatch):
    """Every TrainConfig field (the nested SAE and lens records' too) is a flag with its comment as help, so a new
    field cannot be forgotten, and what the CLI builds is exactly config_from_preset with the given values."""
    import mlsae.cli as cli
    from mlsae.training.config import TrainConfig, config_from_preset, flat_fields

    helps = TrainConfig.field_help()
    assert set(helps) == set(flat_fields()), "a field without a help comment"
    assert {"k", "expansion_factor", "dead_tokens", "encoder_init", "tuned_lens", "lens_tokens", "lr"} <= set(helps)
    built = {}

    def fake_train(cfg, out, resume):
        built["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr("mlsae.training.train.train", fake_train)
    argv = ["train", "--model", "micro-s", "--preset", "tiny", "-k", "16", "--tuned-lens", "--lens-tokens", "1000",
            "--layers", "0,2", "--lr", "0.003", "--encoder-init", "unit"]
    assert cli.main(argv) == 2
    assert built["cfg"] == config_from_preset("tiny", model="micro-s", k=16, tuned_lens=True, lens_tokens=1000,
                                              layers=[0, 2], lr=0.003, encoder_init="unit")
    assert cli.main(["train", "--model", "micro-s", "--preset", "tiny"]) == 2
    assert built["cfg"] == config_from_preset("tiny", model="micro-s")  # nothing given: the preset's values


def test_a_hub_model_gets_the_pile_under_every_preset_in_the_cli_and_the_notebooks():
    """On main 0d8e133, `--preset tiny|default` trained Pythia on the zoo's synthetic text, silently."""
    from mlsae.core.presets import HUB_DATA
    from mlsae.studies.experiment import Experiment
    from mlsae.training.config import config_from_preset

    for preset in ("tiny", "default", "paper"):
        assert config_from_preset(preset, model="pythia-70m").data == HUB_DATA, preset
        assert Experiment(model="pythia-70m", preset=preset).train_config().data == HUB_DATA, preset
    assert config_from_preset("tiny", model="pythia-70m", data="offline").data == "offline"  # asked for
    assert config_from_preset("tiny", model="micro-s").data == "offline:micro"  # a zoo model: its own corpus
    for preset in ("tiny", "default"):
        assert config_from_preset(preset, model="zoo-m").data == Experiment(model="zoo-m", preset=preset).data


def test_eval_of_a_released_sae_uses_the_models_own_data_and_says_so(tmp_path, empty_hf_cache, monkeypatch, capsys):
    """An SAE with no provenance, on Pythia (a hub-layout stand-in): the Pile's test split from the hub cache,
    not the synthetic corpus at 128 positions (main 0d8e133)."""
    from conftest import make_tiny_tokenizer, put_in_hub_cache, save_tiny_model_dir, write_pile_layout
    from mlsae.sae.config import SAEConfig
    from mlsae.sae.model import MLSAE

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    put_in_hub_cache(empty_hf_cache, "EleutherAI/pythia-70m-deduped",
                     save_tiny_model_dir(tmp_path / "neox", tokenizer=make_tiny_tokenizer()))
    put_in_hub_cache(empty_hf_cache, "monology/pile-uncopyrighted", write_pile_layout(tmp_path / "pile"),
                     repo_type="dataset")
    MLSAE(SAEConfig(d_model=32, n_latents=64, k=4)).save_pretrained(tmp_path / "sae")  # no provenance
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--model", "pythia-70m", "--seq-len", "16",
                 "--tokens", "64", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "no provenance: using monology/pile-uncopyrighted (test split) at 16 positions" in out


def test_a_budget_smaller_than_one_step_is_refused_with_the_numbers(monkeypatch, capsys):
    """On main 0d8e133 `--max-tokens 20000` under the paper preset trained one whole 131,072-token step."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", "--model", "pythia-70m", "--max-tokens", "20000"]) == 2
    err = capsys.readouterr().err
    assert "max_tokens=20,000 is less than one training step (64 sequences x 2048 positions" in err
    assert "131,072 tokens" in err and "--batch-size 8 --seq-len 256" in err
