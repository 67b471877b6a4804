"""Notebook parameters are validated before any work is done."""

import time

import pytest

from mlsae.models.registry import ModelNotAvailableError
from mlsae.studies.experiment import Experiment, series_models


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="pythia-70m"):
        Experiment(model="not-a-model", preset="tiny")


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset 'huge'"):
        Experiment(preset="huge")


@pytest.mark.parametrize("name, value", [("k", "32"), ("k", 3.5), ("tuned_lens", "yes"), ("expansion_factor", True),
                                         ("seed", None), ("eval_tokens", "1000")])
def test_wrong_types_name_the_parameter(name, value):
    with pytest.raises(TypeError, match=name):
        Experiment(preset="tiny", **{name: value})


@pytest.mark.parametrize("name, value, match", [("k", 0, "k must be positive"), ("expansion_factor", -2, "expansion_factor"),
                                                ("expansion_factor", 0, "expansion_factor"),
                                                ("train_tokens", -5, "train_tokens"), ("k", 100_000, "exceeds")])
def test_bad_values(name, value, match):
    with pytest.raises(ValueError, match=match):
        Experiment(preset="tiny", **{name: value})


def test_missing_hub_model_fails_fast_when_first_used(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exp = Experiment(model="pythia-1b", preset="tiny")  # valid name: nothing loaded yet
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="EleutherAI/pythia-1b-deduped"):
        exp.load_lm()
    assert time.perf_counter() - start < 15


def test_series_leaves_out_models_that_are_not_here(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exp = Experiment(preset="tiny")
    assert series_models(exp, ["micro-l", "micro-s", "pythia-70m"]) == ["micro-s", "micro-m", "micro-l"]
    assert "pythia-70m" in capsys.readouterr().out


def test_figure_names_carry_the_series_and_families():
    """A series or family set other than the preset's never gets the name of the committed figure."""
    exp = Experiment(preset="tiny")
    preset_series = series_models(exp, None)
    assert exp.series_slug(preset_series) == exp.slug_without_model == "tiny-x8-k32"
    assert exp.series_slug(preset_series, "tiny") == "tiny"
    extra = exp.with_model("micro-gpt2-s")  # -p model micro-gpt2-s: the model joins the preset's series
    named = extra.series_slug(series_models(extra, None))
    assert named != extra.slug_without_model and "micro-gpt2-s" in named and "micro-m" in named
    assert exp.series_slug(["micro-s", "micro-m"]) == "tiny-x8-k32-micro-m+micro-s"
    long = exp.series_slug([f"some-org/a-long-model-name-{i}" for i in range(4)])
    assert long.startswith("tiny-x8-k32-set-") and len(long) < 40
    assert exp.families_slug(exp.settings["families"]) == exp.slug_without_model
    other = exp.families_slug({"GPT-2": ["micro-gpt2-s"]})
    assert other.startswith("tiny-x8-k32-") and other != exp.families_slug({"GPT-2": ["micro-gpt2-m"]})


def test_with_model_revalidates_and_resets_data():
    exp = Experiment(preset="tiny")
    other = exp.with_model("micro-s", tuned_lens=True)
    assert other.model == "micro-s" and other.tuned_lens and other.data == "offline:micro"
    assert other.slug != exp.slug


def test_list_parameters_take_json_text_and_check_every_element():
    from mlsae.studies.parameters import list_parameter

    assert list_parameter("ks", "[16, 32]", int, positive=True) == [16, 32]  # papermill -p ks "[16, 32]"
    assert list_parameter("ks", [16, 32], int) == [16, 32]  # papermill -y, or Python
    assert list_parameter("models", None) is None
    with pytest.raises(ValueError, match=r"ks='\[16, 32' is not a list.*-p ks '\[16, 32\]'.*-y"):
        list_parameter("ks", "[16, 32", int)
    with pytest.raises(TypeError, match="ks element"):
        list_parameter("ks", '[16, "x"]', int)
    with pytest.raises(ValueError, match="positive"):
        list_parameter("ks", "[16, 0]", int, positive=True)
    with pytest.raises(ValueError, match="non-empty list"):
        list_parameter("ks", "[]", int)


def test_series_and_sweep_points_fail_on_a_bad_element_before_any_work(monkeypatch):
    from mlsae.studies.experiment import family_models
    from mlsae.studies.tables import sweep_points

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exp = Experiment(preset="tiny")
    assert series_models(exp, '["micro-l", "micro-s"]') == ["micro-s", "micro-m", "micro-l"]
    with pytest.raises(ValueError, match="not-a-model"):
        series_models(exp, '["micro-s", "not-a-model"]')
    points = sweep_points(exp, "[2, 8]", "[8, 16]", 8)
    assert [(w, e.expansion_factor, e.k) for w, e in points] == [("R", 2, 32), ("R", 8, 32), ("k", 8, 8), ("k", 8, 16)]
    with pytest.raises(ValueError, match="exceeds the number of latents"):
        sweep_points(exp, "[2, 8]", "[8, 100000]", 8)  # the k sweep's last point, caught before the R sweep trains
    assert family_models(exp, '{"GPT-NeoX": ["micro-m", "micro-s"]}') == {"GPT-NeoX": ["micro-s", "micro-m"]}
    with pytest.raises(ValueError, match="nope"):
        family_models(exp, {"GPT-2": ["micro-gpt2-s", "nope"]})
    with pytest.raises(ValueError, match="mapping"):
        family_models(exp, "{not json")


def test_sweep_points_below_k_aux_latents_take_every_dead_latent():
    """The default sweep's R = 1 on zoo-s has 64 latents, fewer than the preset's k_aux = 256: its point asks for
    AuxK over at most all 64 (what AuxK does when fewer than k_aux are dead), so the run's own check passes."""
    from mlsae.studies.tables import sweep_points

    exp = Experiment(model="zoo-s", preset="default")
    points = sweep_points(exp, [1, 2, 8], [16], 64)
    assert [e.train_config().sae.k_aux for _, e in points] == [64, 128, 256, 256]
    for _, e in points:
        e.train_config().sae_config(64, [0, 1])  # raised "k_aux=256 exceeds the 64 latents" before


def test_reading_an_experiments_properties_never_trains(tmp_path, monkeypatch):
    """`exp.sae` and `exp.lens` read what exists and name the call that makes it; training is `exp.train()`."""
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path / "home"))
    exp = Experiment(preset="tiny", model="micro-s", tuned_lens=True)
    with pytest.raises(RuntimeError, match=r"not trained yet.*exp\.train\(\)"):
        _ = exp.sae
    with pytest.raises(RuntimeError, match=r"no lens prepared yet.*exp\.prepare_lens\(\)"):
        _ = exp.lens
    assert exp.training_log() == [] and exp.train_summary() == {}
    assert not (tmp_path / "home").exists()  # nothing trained, nothing built, not even a folder
