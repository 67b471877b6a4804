"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---- tiny offline language models (mlsae.models / mlsae.activations tests) -------------------
# A word-level tokenizer and a random tiny GPT-NeoX, saved like a zoo model (save_pretrained),
# so tests never need the real zoo or the network.

TINY_WORDS = (
    "when mary and john went to the store gave a drink to . , the cat sat on mat dog ran "
    "fast slow red blue green one two three four five six seven eight nine ten"
).split()


def make_tiny_tokenizer():
    """PreTrainedTokenizerFast: word level, BOS = EOS = ``<|endoftext|>`` (id 0), ``<unk>``, no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )


TEXT_WORDS = "when mary and john went to the store gave a drink to the cat sat on mat dog ran fast".split()


def write_word_corpus(d: Path, n_train: int, seed: int, n_test: int = 60) -> Path:
    """A local data set in the tiny tokenizer's vocabulary: train/test jsonl of random 40-word documents."""
    import json

    import torch

    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        docs = [" ".join(TEXT_WORDS[i] for i in torch.randint(0, len(TEXT_WORDS), (40,), generator=g).tolist())
                for _ in range(n)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return d


def make_tiny_neox(vocab_size: int = 64, seed: int = 0, **overrides):
    """A random tiny GPT-NeoX (Pythia architecture) causal LM in eval mode."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25)
    kw.update(overrides)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**kw)).eval()


def save_tiny_model_dir(path: Path, model=None, tokenizer=None) -> Path:
    """Write model + tokenizer with save_pretrained into ``path`` (a zoo-like folder)."""
    tokenizer = tokenizer or make_tiny_tokenizer()
    model = model or make_tiny_neox(vocab_size=len(tokenizer))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A save_pretrained folder with a random tiny GPT-NeoX and a word-level tokenizer."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-neox"))


# ---- offline corpus + micro zoo (mlsae.text / mlsae.data / mlsae.zoo tests) ------------------
# Built once per session in a temporary MLSAE_HOME (never the user's cache); tests that need it
# take ``micro_home``, which points MLSAE_HOME there for the duration of the test.


@pytest.fixture(scope="session")
def micro_text_home(tmp_path_factory) -> Path:
    """An MLSAE_HOME holding the micro corpus and its tokenizer (built once per session)."""
    home = tmp_path_factory.mktemp("mlsae-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLSAE_HOME", str(home))
        from mlsae.zoo import ensure_tokenizer

        ensure_tokenizer("micro")
    return home


@pytest.fixture(scope="session")
def micro_zoo_home(micro_text_home) -> Path:
    """``micro_text_home`` plus the micro zoo micro-s/m/l (trained once per session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLSAE_HOME", str(micro_text_home))
        from mlsae.zoo import build_zoo

        build_zoo(["micro-s", "micro-m", "micro-l"], progress=False)
    return micro_text_home


@pytest.fixture
def micro_text(micro_text_home, monkeypatch) -> Path:
    """``micro_text_home`` with MLSAE_HOME pointing at it for this test."""
    monkeypatch.setenv("MLSAE_HOME", str(micro_text_home))
    return micro_text_home


@pytest.fixture
def micro_home(micro_zoo_home, monkeypatch) -> Path:
    """``micro_zoo_home`` with MLSAE_HOME pointing at it for this test."""
    monkeypatch.setenv("MLSAE_HOME", str(micro_zoo_home))
    return micro_zoo_home
