"""Notebook parameters are validated before any work is done."""

import time

import pytest

from mlsae.experiment import Experiment, series_models
from mlsae.models import ModelNotAvailableError


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
        exp.lm
    assert time.perf_counter() - start < 15


def test_series_leaves_out_models_that_are_not_here(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exp = Experiment(preset="tiny")
    assert series_models(exp, ["micro-l", "micro-s", "pythia-70m"]) == ["micro-s", "micro-m", "micro-l"]
    assert "pythia-70m" in capsys.readouterr().out


def test_with_model_revalidates_and_resets_data():
    exp = Experiment(preset="tiny")
    other = exp.with_model("micro-s", tuned_lens=True)
    assert other.model == "micro-s" and other.tuned_lens and other.data == "offline:micro"
    assert other.slug != exp.slug
