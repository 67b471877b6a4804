"""mlsae.models.zoo: the offline model zoo (micro models only; the default zoo is too slow for tests)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from mlsae.data.corpus import IOI_PROMPT
from mlsae.models.lm_eval import evaluate_lm
from mlsae.models.zoo import (
    DEFAULT_ZOO,
    ZOO,
    build_zoo,
    ensure_tokenizer,
    ensure_zoo_model,
    train_zoo_model,
)

MICRO = ("micro-s", "micro-m", "micro-l")


def test_zoo_specs_grow_in_depth_and_width():
    # zoo-xl extends the default series in depth only: zoo-m's width at 12 layers (pythia-160m's depth)
    for names in (DEFAULT_ZOO[:3], MICRO):
        specs = [ZOO[n] for n in names]
        assert [s.n_layers for s in specs] == sorted({s.n_layers for s in specs})  # strictly increasing
        assert [s.d_model for s in specs] == sorted({s.d_model for s in specs})
        assert all(s.d_model % s.n_heads == 0 for s in specs)
    depths = [ZOO[n].n_layers for n in DEFAULT_ZOO]
    assert depths == sorted(set(depths)) and depths[0] == 2 and depths[-1] == 12
    xl, m = ZOO["zoo-xl"], ZOO["zoo-m"]
    assert (xl.d_model, xl.n_heads, xl.corpus) == (m.d_model, m.n_heads, m.corpus)


def test_seed_replicas_differ_from_their_model_only_in_seed_and_name():
    from dataclasses import replace

    from mlsae.models.zoo import SPREAD_SEEDS

    for base in DEFAULT_ZOO:
        for seed in SPREAD_SEEDS:
            replica = ZOO[f"{base}-seed{seed}"]
            assert replica == replace(ZOO[base], name=replica.name, seed=seed) and seed != ZOO[base].seed
            assert replica.digest() != ZOO[base].digest()


@pytest.mark.slow
def test_zoo_trainer_uses_a_fixed_thread_count_whatever_the_caller_set(micro_home, tmp_path):
    from safetensors.torch import load_file

    from mlsae.models.zoo import ZOO_THREADS

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        report = train_zoo_model("micro-s", tmp_path / "a", progress=False)
        assert torch.get_num_threads() == 1  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert report["torch_threads"] == ZOO_THREADS
    # ... so the weights equal the zoo's own copy, trained by the fixture at the process's thread count
    wa, wz = load_file(tmp_path / "a" / "model.safetensors"), load_file(micro_home / "zoo" / "micro-s" / "model.safetensors")
    assert all(torch.equal(wa[k], wz[k]) for k in wa)
    assert {s.corpus for s in ZOO.values()} == {"default", "micro"}
    assert all(ZOO[n].corpus == "default" for n in DEFAULT_ZOO) and all(ZOO[n].corpus == "micro" for n in MICRO)


def test_unknown_names_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=r"'zoo-xxl'.*zoo-s.*micro-l"):
        ensure_zoo_model("zoo-xxl")
    with pytest.raises(ValueError, match="nope"):
        build_zoo(["micro-s", "nope"])
    with pytest.raises(ValueError, match="nope"):
        ensure_tokenizer("nope")
    assert not (tmp_path / "zoo" / "micro-s").exists()  # validated before building anything


def test_tokenizer_is_pythia_like_and_deterministic(micro_text):
    from transformers import AutoTokenizer

    from mlsae.data.corpus import offline_corpus
    from mlsae.models.zoo import TOKENIZER_VOCAB, train_tokenizer

    tok = AutoTokenizer.from_pretrained(ensure_tokenizer("micro"))
    assert tok.eos_token == tok.bos_token == tok.unk_token == tok.pad_token == "<|endoftext|>"
    for word in (" Mary", " John", " store", " drink"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok(IOI_PROMPT).input_ids
    assert tok.eos_token_id not in ids  # no BOS/EOS added automatically (as Pythia)
    assert tok.decode(ids) == IOI_PROMPT
    again = train_tokenizer(offline_corpus("micro"), TOKENIZER_VOCAB["micro"])
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


@pytest.mark.slow
def test_micro_zoo_trains_reloads_and_beats_unigram(micro_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM

    from mlsae.data.sources import load_text
    from mlsae.data.tokens import token_batches

    reports = build_zoo(list(MICRO), progress=False)  # built by the fixture: must be reused
    for name in MICRO:
        path = ensure_zoo_model(name)
        assert path == micro_home / "zoo" / name
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
        spec, report = ZOO[name], reports[name]
        assert json.loads((path / "zoo_report.json").read_text()) == report
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert isinstance(model, GPTNeoXForCausalLM)
        cfg = model.config
        assert (cfg.num_hidden_layers, cfg.hidden_size) == (spec.n_layers, spec.d_model) == (report["n_layers"], report["d_model"])
        assert cfg.use_parallel_residual and not cfg.tie_word_embeddings and cfg.rope_parameters["partial_rotary_factor"] == 0.25
        assert report["n_params"] == sum(p.numel() for p in model.parameters())
        assert report["train_tokens"] == spec.steps * spec.batch_size * spec.seq_len
        assert report["heldout_loss"] < 0.8 * report["unigram_loss"], report
        assert len(report["ioi_top5"]) == 5 and report["ioi_prompt"] == IOI_PROMPT
        assert all(0 <= p <= 1 for _, p in report["ioi_top5"])
        assert report["train_time_s"] > 0
    # The reloaded smallest model reproduces its held-out loss.
    path = ensure_zoo_model("micro-s")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    spec = ZOO["micro-s"]
    test = token_batches(load_text("offline:micro", split="test"), tok, spec.seq_len, spec.batch_size,
                         max_tokens=spec.eval_tokens)
    counts = torch.zeros(len(tok), dtype=torch.long)
    again = evaluate_lm(model, tok, test, counts)
    assert again["heldout_loss"] == pytest.approx(reports["micro-s"]["heldout_loss"], rel=1e-4)
    # Deeper micro models fit better.
    assert reports["micro-l"]["heldout_loss"] < reports["micro-s"]["heldout_loss"]


def test_cached_model_is_reused(micro_home):
    path = micro_home / "zoo" / "micro-m"
    before = (path / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    assert ensure_zoo_model("micro-m") == path
    assert time.perf_counter() - t < 2
    assert (path / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_same_seed_same_weights(micro_home, tmp_path):
    from safetensors.torch import load_file

    a = train_zoo_model("micro-s", tmp_path / "a", progress=False)
    b = train_zoo_model("micro-s", tmp_path / "b", progress=False)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["heldout_loss"] == b["heldout_loss"]
    # ... and the zoo's own copy (trained by the fixture in the same way) is identical too.
    wz = load_file(micro_home / "zoo" / "micro-s" / "model.safetensors")
    assert all(torch.equal(wa[k], wz[k]) for k in wa)


@pytest.mark.slow
def test_crash_leaves_nothing_and_broken_folders_are_rebuilt(micro_zoo_home, tmp_path, monkeypatch):
    import mlsae.models.zoo as zoo

    home = tmp_path / "home"
    shutil.copytree(micro_zoo_home, home)
    monkeypatch.setenv("MLSAE_HOME", str(home))
    shutil.rmtree(home / "zoo" / "micro-s")

    def crash(spec, out_dir, progress=True):
        (out_dir / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "train_zoo_model", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_zoo_model("micro-s")
    left = {p.name for p in (home / "zoo").iterdir()}
    assert "micro-s" not in left and not [n for n in left if n.startswith(".micro-s")], left
    monkeypatch.undo()
    monkeypatch.setenv("MLSAE_HOME", str(home))

    # A folder without its report (e.g. from an older layout) is not trusted: it is rebuilt.
    (home / "zoo" / "micro-s").mkdir()
    (home / "zoo" / "micro-s" / "config.json").write_text("{}")
    path = ensure_zoo_model("micro-s", progress=False)
    assert json.loads((path / "zoo_report.json").read_text())["spec_digest"] == ZOO["micro-s"].digest()
    assert not [p for p in (home / "zoo").iterdir() if p.name.startswith(".micro-s")]


# ---- architecture families (GPT-2, Llama) -----------------------------------------------------------

FAMILY_MICRO = ("micro-gpt2-s", "micro-gpt2-m", "micro-llama-s", "micro-llama-m")


def test_neox_digests_are_unchanged_by_the_arch_field():
    # Built zoos live in users' caches under these digests: a change forces a retrain. zoo-m's changed
    # on purpose when it went from 2M to 3M training tokens (was 01e2c4f286bf8754); the family models
    # built beside it keep theirs.
    assert {n: ZOO[n].digest() for n in ("zoo-s", "zoo-m", "zoo-l", "micro-s", "micro-m", "micro-l")} == {
        "zoo-s": "ebc39a2e065dc328", "zoo-m": "46f10f25f82868d2", "zoo-l": "2f51578c2f4f6834",
        "micro-s": "ecd5b783f2b202e2", "micro-m": "22b71d47be078f6c", "micro-l": "dd5c99d000f015b3",
    }
    assert all(ZOO[n].arch == "gpt-neox" for n in ("zoo-s", "zoo-m", "zoo-l", "micro-s", "micro-m", "micro-l"))
    assert {n: ZOO[n].digest() for n in ("zoo-gpt2-m", "zoo-llama-m")} == {
        "zoo-gpt2-m": "5b339064dfd1ac39", "zoo-llama-m": "b87fa4c06e7532f4"}


def test_family_specs_mirror_their_neox_counterparts():
    from dataclasses import replace

    from mlsae.models.registry import ZOO_NAMES

    assert set(ZOO) == set(ZOO_NAMES)  # the static registry list knows every zoo model
    digests = [s.digest() for s in ZOO.values()]
    assert len(set(digests)) == len(digests)
    for prefix in ("zoo", "micro"):
        for size in ("s", "m"):
            base = ZOO[f"{prefix}-{size}"]
            for arch in ("gpt2", "llama"):
                spec = ZOO[f"{prefix}-{arch}-{size}"]
                assert spec.arch == arch and spec.corpus == base.corpus and spec.seed == base.seed
                assert (spec.n_layers, spec.d_model, spec.n_heads) == (base.n_layers, base.d_model, base.n_heads)
                assert spec.train_tokens <= base.train_tokens
    assert ZOO["zoo-llama-s"].d_mlp == 176 and ZOO["zoo-llama-m"].d_mlp == 344 and ZOO["zoo-gpt2-m"].d_mlp == 512
    with pytest.raises(ValueError, match="architecture"):
        replace(ZOO["micro-s"], arch="mamba")


@pytest.mark.slow
def test_micro_family_models_train_beat_unigram_and_expose_residual_streams(micro_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM

    from mlsae.models.residuals import logits_from_layer, residual_streams

    reports = build_zoo(list(FAMILY_MICRO), progress=False)
    for name in FAMILY_MICRO:
        spec, report = ZOO[name], reports[name]
        path = ensure_zoo_model(name)
        model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
        assert isinstance(model, GPT2LMHeadModel if spec.arch == "gpt2" else LlamaForCausalLM)
        cfg = model.config
        assert (cfg.num_hidden_layers, cfg.hidden_size) == (spec.n_layers, spec.d_model)
        assert not cfg.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        assert cfg.eos_token_id == cfg.bos_token_id == cfg.pad_token_id == tok.eos_token_id
        assert report["spec_digest"] == spec.digest() and report["architecture"].startswith(type(model).__name__)
        assert report["heldout_loss"] < 0.8 * report["unigram_loss"], report
        ids = tok([IOI_PROMPT], return_tensors="pt").input_ids
        resid = residual_streams(model, ids)
        assert resid.shape == (spec.n_layers, 1, ids.shape[1], spec.d_model)
        with torch.no_grad():
            clean = model(input_ids=ids).logits
        torch.testing.assert_close(logits_from_layer(model, spec.n_layers - 1, resid[-1], ids), clean)
