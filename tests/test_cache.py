"""One cache keyed by what an artefact is made from: the weights, the text and the code, not names."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mlsae.analysis.distributions import LayerDistributionAccumulator, LayerDistributions, ResidualGeometry
from mlsae.analysis.examples import MaxExamples
from mlsae.analysis.metrics import EvalResult
from mlsae.core import cache
from mlsae.data.sources import data_identity
from mlsae.models.lens import ResidualLens
from mlsae.models.lens_training import lens_fields
from mlsae.studies.experiment import Experiment
from mlsae.training.config import TrainConfig, config_from_preset
from mlsae.training.identity import sae_key


def test_a_rebuilt_zoo_model_never_reuses_what_was_made_from_the_old_one(monkeypatch):
    """Before: SAE keys hashed the model's name and lens keys left out the data, so retraining a zoo
    model under the same name silently reused SAEs and lenses trained on the old weights."""
    from mlsae.models import zoo

    exp = Experiment(preset="tiny", model="micro-s", tuned_lens=True)
    before = (exp.out_dir, exp.geometry_fields(), lens_fields("micro-s", **exp.train_config().lens_kwargs()))
    spec = zoo.ZOO["micro-s"]
    monkeypatch.setitem(zoo.ZOO, "micro-s", dataclasses.replace(spec, train_tokens=spec.train_tokens + 1))
    exp = Experiment(preset="tiny", model="micro-s", tuned_lens=True)
    after = (exp.out_dir, exp.geometry_fields(), lens_fields("micro-s", **exp.train_config().lens_kwargs()))
    assert after[0] != before[0]  # the SAE and everything cached beside it (eval, distributions, examples)
    assert cache.key("geometry", after[1]) != cache.key("geometry", before[1])
    assert cache.key("lens", after[2]) != cache.key("lens", before[2])


def test_edited_data_changes_the_keys(tmp_path):
    data = tmp_path / "text"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"text": "one"}) + "\n")
    first = (data_identity(str(data)), sae_key(TrainConfig(data=str(data))))
    (data / "train.jsonl").write_text(json.dumps({"text": "two"}) + "\n")
    second = (data_identity(str(data)), sae_key(TrainConfig(data=str(data))))
    assert first[0] != second[0] and first[1] != second[1]
    assert data_identity("offline") != data_identity("offline:micro")


def test_the_key_covers_every_result_field_and_the_code_version(monkeypatch):
    base = sae_key(config_from_preset("tiny", model="micro-s"))
    assert base == sae_key(config_from_preset("tiny", model="micro-s", device="cpu", log_every=1))
    for change in ({"k": 16}, {"seed": 1}, {"lr": 1e-3}, {"max_tokens": 20_000}, {"layers": [0]}, {"tuned_lens": True}):
        assert sae_key(config_from_preset("tiny", model="micro-s", **change)) != base, change
    monkeypatch.setitem(cache.VERSIONS, "sae", cache.VERSIONS["sae"] + 1)
    assert sae_key(config_from_preset("tiny", model="micro-s")) != base


def test_cached_computes_once_and_says_what_it_was_made_from(tmp_path, monkeypatch):
    calls = []

    def compute():
        calls.append(1)
        return ResidualGeometry(torch.rand(2), torch.rand(2), torch.rand(3), tokens=7)

    fields = {"model": "zoo:x:abc", "tokens": 7}
    first = cache.cached(tmp_path, "geometry", fields, ResidualGeometry.load, compute)
    again = cache.cached(tmp_path, "geometry", fields, ResidualGeometry.load, compute)
    assert len(calls) == 1 and torch.equal(first.cos_mean, again.cos_mean) and again.tokens == 7
    path = cache.path_for(tmp_path, "geometry", fields)
    assert json.loads(path.with_suffix(".json").read_text())["model"] == "zoo:x:abc"
    monkeypatch.setitem(cache.VERSIONS, "geometry", cache.VERSIONS["geometry"] + 1)  # the code changed
    cache.cached(tmp_path, "geometry", fields, ResidualGeometry.load, compute)
    assert len(calls) == 2


def _distributions() -> LayerDistributions:
    acc = LayerDistributionAccumulator(3, 10, window=8)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        acc.update(torch.rand(3, 8, 2, generator=g), torch.randint(0, 10, (3, 8, 2), generator=g))
    return acc.stats


@pytest.mark.parametrize("make", [
    lambda: EvalResult(layers=[0, 1], fvu=[0.1, 0.2], mse=[1.0, 2.0], l0=[4.0, 4.0], l1=[3.0, 3.5], delta_ce=None,
                       kl=None, clean_ce=None, dead_fraction=0.25, tokens=64),
    _distributions,
    lambda: ResidualGeometry(torch.rand(2), torch.rand(2), torch.rand(3), tokens=9),
    lambda: MaxExamples(torch.rand(2, 5, 3), torch.randint(0, 99, (2, 5, 3)), torch.randint(0, 50, (4, 8), dtype=torch.int32),
                        layers=[0, 1], n_tokens=32),
    lambda: ResidualLens(torch.eye(4).expand(2, 4, 4) + 0.1, torch.rand(2, 4)),
], ids=["eval", "distributions", "geometry", "examples", "lens"])
def test_every_result_type_round_trips_through_the_one_format(make, tmp_path):
    from safetensors import safe_open

    result = make()
    result.save(tmp_path / "r.safetensors")
    with safe_open(str(tmp_path / "r.safetensors"), framework="pt") as f:  # safetensors + JSON metadata, no pickle
        assert f.metadata() is not None
    loaded = type(result).load(tmp_path / "r.safetensors")
    for name, value in vars(result).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, getattr(loaded, name)), name
        elif not name.startswith("_") and not callable(value) and name != "training":
            assert value == getattr(loaded, name), name
    (tmp_path / "torn.safetensors").write_bytes((tmp_path / "r.safetensors").read_bytes()[:40])
    with pytest.raises(ValueError, match="torn.safetensors"):
        type(result).load(tmp_path / "torn.safetensors")
