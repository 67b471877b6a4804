"""Model registry: name resolution, loading from folders / the zoo / the HF cache, fail-fast offline."""

from __future__ import annotations

import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_neox, make_tiny_tokenizer, put_in_hub_cache, save_tiny_model_dir
from mlsae.core import hub
from mlsae.models import registry as models
from mlsae.models.registry import (
    REGISTRY,
    ZOO_NAMES,
    ModelNotAvailableError,
    is_available,
    list_models,
    load_model,
    model_shape,
    resolve_model,
)

PAPER_SHAPES = {
    "pythia-70m": (6, 512), "pythia-160m": (12, 768), "pythia-410m": (24, 1024),
    "pythia-1b": (16, 2048), "pythia-1.4b": (24, 2048), "gpt2": (12, 768),
}


@pytest.fixture
def fake_zoo(monkeypatch, tiny_model_dir):
    """Replace mlsae.models.zoo by a stub whose ensure_zoo_model returns the tiny model folder."""
    calls = []

    def ensure_zoo_model(name: str) -> Path:
        calls.append(name)
        return tiny_model_dir

    stub = types.ModuleType("mlsae.models.zoo")
    stub.ZOO = {"micro-m": types.SimpleNamespace(n_layers=3, d_model=32)}  # shape exposed by the spec
    stub.ensure_zoo_model = ensure_zoo_model
    monkeypatch.setitem(sys.modules, "mlsae.models.zoo", stub)
    return calls


# ---- resolution -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAPER_SHAPES))
def test_registry_names_resolve_to_paper_checkpoints_with_shapes(name):
    src = resolve_model(name)
    assert src.kind == "hub" and src.name == name
    assert src.shape == PAPER_SHAPES[name] == model_shape(name)
    if name.startswith("pythia"):
        assert src.repo_id_or_path == f"EleutherAI/{name}-deduped"
    else:
        assert src.repo_id_or_path == "openai-community/gpt2" and "gpt2" in src.aliases


def test_hub_ids_zoo_names_and_case():
    assert resolve_model("Pythia-70M").repo_id_or_path == "EleutherAI/pythia-70m-deduped"
    src = resolve_model("EleutherAI/pythia-410m-deduped")
    assert (src.kind, src.repo_id_or_path, src.shape) == ("hub", "EleutherAI/pythia-410m-deduped", (24, 1024))
    assert resolve_model("EleutherAI/pythia-160m").shape == (12, 768)  # non-deduped run, same shape
    other = resolve_model("some-org/some-model")
    assert (other.kind, other.shape) == ("hub", None)
    for z in ZOO_NAMES:
        assert resolve_model(z).kind == "zoo"


def test_local_directory(tiny_model_dir):
    src = resolve_model(str(tiny_model_dir))
    assert src.kind == "local" and Path(src.repo_id_or_path) == tiny_model_dir.resolve()
    assert src.shape == (3, 32) == model_shape(str(tiny_model_dir))
    assert is_available(str(tiny_model_dir))


def test_unknown_names_fail_clearly(tmp_path):
    with pytest.raises(ValueError) as e:
        resolve_model("pythia-7b")
    assert "Did you mean 'pythia-" in str(e.value) and "list_models()" in str(e.value)  # the closest, not all
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError):
        resolve_model("")
    with pytest.raises(ValueError):
        is_available("not-a-model")


def test_list_models_covers_registry_and_zoo():
    rows = list_models()
    names = [r["name"] for r in rows]
    assert set(REGISTRY) | set(ZOO_NAMES) <= set(names)
    row = next(r for r in rows if r["name"] == "pythia-1b")
    assert (row["n_layers"], row["d_model"], row["source"]) == (16, 2048, "EleutherAI/pythia-1b-deduped")


# ---- loading ---------------------------------------------------------------------------------------


def test_load_local_folder_eval_mode_pad_token_and_dtype(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    assert not model.training
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert next(model.parameters()).dtype == torch.float32
    ids = tok("the cat sat on the mat", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    half, _ = load_model(str(tiny_model_dir), dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(tiny_model_dir), dtype="int3")


def test_default_dtype_is_fp32_even_for_fp16_checkpoints(tmp_path):
    # transformers v5 loads with dtype="auto" by default; Pythia's checkpoints are fp16
    folder = save_tiny_model_dir(tmp_path / "fp16", model=make_tiny_neox(len(make_tiny_tokenizer())).half())
    model, _ = load_model(str(folder))
    assert next(model.parameters()).dtype == torch.float32
    model, _ = load_model(str(folder), dtype="auto")
    assert next(model.parameters()).dtype == torch.float16


def test_zoo_names_load_through_ensure_zoo_model(fake_zoo):
    model, tok = load_model("micro-m")
    assert fake_zoo == ["micro-m"]
    assert model.config.model_type == "gpt_neox" and not model.training
    assert tok.pad_token is not None
    assert is_available("zoo-l")  # zoo models can always be built here
    assert model_shape("micro-m") == (3, 32) and resolve_model("micro-m").shape == (3, 32)
    assert model_shape("zoo-l") is None  # the stub's spec does not say


def test_cached_hub_model_loads_offline_including_alias(empty_hf_cache, monkeypatch, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tiny_tokenizer()
    neox_dir = save_tiny_model_dir(tmp_path / "neox", tokenizer=tok)
    put_in_hub_cache(empty_hf_cache, "EleutherAI/pythia-70m-deduped", neox_dir)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=32))
    put_in_hub_cache(empty_hf_cache, "gpt2", save_tiny_model_dir(tmp_path / "gpt2", gpt2, tok))  # legacy id only
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert is_available("pythia-70m") and is_available("gpt2") and not is_available("pythia-160m")
    model, _ = load_model("pythia-70m")
    assert model.config.hidden_size == 32
    model, _ = load_model("gpt2")
    assert model.config.model_type == "gpt2"


# ---- fail fast without network ---------------------------------------------------------------------


def _assert_helpful(err: ModelNotAvailableError, repo_id: str, cache: Path):
    msg = str(err)
    assert repo_id in msg
    assert str(cache) in msg
    assert f"hf download {repo_id}" in msg and f"huggingface-cli download {repo_id}" in msg
    assert "HF_HOME" in msg


@pytest.mark.parametrize("offline", [True, False])
def test_uncached_hub_model_fails_within_seconds(empty_hf_cache, monkeypatch, offline):
    from huggingface_hub import constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # this machine has no network: the reachability probe must fail fast
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real = models._from_pretrained

    def no_download(path, dtype, local_files_only):
        if not local_files_only:  # only reached when the probe found the hub: never download in tests
            pytest.skip("this machine can reach the Hugging Face hub; the no-network path is not exercised")
        return real(path, dtype, local_files_only)

    monkeypatch.setattr(models, "_from_pretrained", no_download)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as e:
        load_model("EleutherAI/pythia-70m-deduped")
    assert time.perf_counter() - t0 < 15
    _assert_helpful(e.value, "EleutherAI/pythia-70m-deduped", empty_hf_cache)
    assert ("HF_HUB_OFFLINE is set" in str(e.value)) == offline
    with pytest.raises(ModelNotAvailableError, match="EleutherAI/pythia-160m-deduped"):
        load_model("pythia-160m")  # short names name the repository too


def test_hanging_network_is_cut_off_by_the_probe_timeout(empty_hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: time.sleep(30))  # a black-holed connection
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="cannot be reached") as e:
        load_model("some-org/some-model")
    assert time.perf_counter() - t0 < 5
    _assert_helpful(e.value, "some-org/some-model", empty_hf_cache)


def test_repository_missing_on_the_hub(empty_hf_cache, monkeypatch):
    from huggingface_hub import constants

    def not_found(req, timeout=None):
        raise urllib.error.HTTPError(req.full_url, 404, "Not Found", None, None)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(ModelNotAvailableError, match="no repository"):
        load_model("some-org/does-not-exist")


# ---- other architecture families (notebook 12) ------------------------------------------------------

FAMILY_HUB_SHAPES = {
    "gpt2-medium": ("openai-community/gpt2-medium", 24, 1024),
    "gpt2-large": ("openai-community/gpt2-large", 36, 1280),
    "tinyllama-1.1b": ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", 22, 2048),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", 16, 2048),
}


@pytest.mark.parametrize("name", list(FAMILY_HUB_SHAPES))
def test_family_hub_models_resolve_with_known_shapes(name):
    repo_id, n_layers, d_model = FAMILY_HUB_SHAPES[name]
    assert resolve_model(name).repo_id_or_path == repo_id
    for given in (name, repo_id):  # the paper preset names the Llama models by hub id
        src = resolve_model(given)
        assert src.kind == "hub" and src.shape == (n_layers, d_model) == model_shape(given)


def test_family_hub_models_fail_fast_offline(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo_id in ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "meta-llama/Llama-3.2-1B", "gpt2-large"):
        assert not is_available(repo_id)
        t0 = time.perf_counter()
        with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE is set"):
            load_model(repo_id)
        assert time.perf_counter() - t0 < 5


def test_zoo_rows_name_their_architecture():
    rows = {r["name"]: r for r in list_models()}
    for name, family in (("zoo-s", "GPT-NeoX"), ("zoo-gpt2-m", "GPT-2"), ("zoo-llama-s", "Llama"),
                         ("micro-gpt2-s", "GPT-2"), ("micro-llama-m", "Llama"), ("micro-m", "GPT-NeoX")):
        assert family in rows[name]["description"], rows[name]
    assert (rows["zoo-llama-m"]["n_layers"], rows["zoo-llama-m"]["d_model"]) == (4, 128)
    assert (rows["micro-gpt2-m"]["n_layers"], rows["micro-gpt2-m"]["d_model"]) == (3, 48)
