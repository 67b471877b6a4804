"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---- tiny offline language models (mlsae.models.registry / mlsae.models.residuals tests) -------------------
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


def make_micro_setup():
    """A tiny GPT-NeoX, its tokenizer, a random 64-latent SAE and three [3, 16] batches of input ids whose first
    tokens are special (EOS/BOS id 0; <unk> id 1 occurs too), which are never analysed: what the example and
    dashboard tests compare against their dense references."""
    import torch

    from mlsae.sae.config import SAEConfig
    from mlsae.sae.model import MLSAE

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_neox(vocab_size=len(tokenizer), seed=1)
    torch.manual_seed(0)
    sae = MLSAE(SAEConfig(d_model=32, n_latents=64, k=4)).eval()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, len(tokenizer), (3, 16), generator=g) for _ in range(3)]
    batches[0][0, :3] = 0
    return model, tokenizer, sae, batches


def load_browser_check():
    """scripts/browser_check.py (the Chromium driver, the browser paths, the JupyterLab check), loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("browser_check", Path(__file__).resolve().parents[1] / "scripts" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_tiny_model_dir(path: Path, model=None, tokenizer=None) -> Path:
    """Write model + tokenizer with save_pretrained into ``path`` (a zoo-like folder)."""
    tokenizer = tokenizer or make_tiny_tokenizer()
    model = model or make_tiny_neox(vocab_size=len(tokenizer))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_pythia_as_released(path: Path, model, tokenizer) -> Path:
    """``model`` (a GPT-NeoX) in the form the Pythia repositories hold it: the ``config.json`` written by
    transformers 4.24 (``rotary_pct``, ``rotary_emb_base``, ``use_parallel_residual``, ``torch_dtype: float16``;
    no ``rope_parameters``), fp16 weights, and the attention buffers old checkpoints persisted
    (``attention.bias``, ``attention.masked_bias``, ``attention.rotary_emb.inv_freq``)."""
    import json

    import torch
    from safetensors.torch import save_file

    c = model.config
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    rope = c.rope_parameters
    (path / "config.json").write_text(json.dumps({
        "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
        "hidden_size": c.hidden_size, "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
        "layer_norm_eps": 1e-05, "max_position_embeddings": c.max_position_embeddings, "model_type": "gpt_neox",
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "rotary_emb_base": rope["rope_theta"], "rotary_pct": rope["partial_rotary_factor"],
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
        "use_parallel_residual": True, "vocab_size": c.vocab_size}, indent=2))
    state = {name: t.detach().to(torch.float16).contiguous() for name, t in model.state_dict().items()}
    n, head = c.max_position_embeddings, c.hidden_size // c.num_attention_heads
    rotary = int(head * rope["partial_rotary_factor"])
    for i in range(c.num_hidden_layers):
        prefix = f"gpt_neox.layers.{i}.attention."
        state[prefix + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        state[prefix + "masked_bias"] = torch.tensor(-1e9)
        state[prefix + "rotary_emb.inv_freq"] = 1.0 / rope["rope_theta"] ** (torch.arange(0, rotary, 2).float() / rotary)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A save_pretrained folder with a random tiny GPT-NeoX and a word-level tokenizer."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-neox"))


# ---- offline corpus + micro zoo (mlsae.data.corpus / mlsae.data.sources / mlsae.models.zoo tests) ------------------
# Built once per session in a temporary MLSAE_HOME (never the user's cache); tests that need it
# take ``micro_home``, which points MLSAE_HOME there for the duration of the test.


@pytest.fixture(scope="session")
def micro_text_home(tmp_path_factory) -> Path:
    """An MLSAE_HOME holding the micro corpus and its tokenizer (built once per session)."""
    home = tmp_path_factory.mktemp("mlsae-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLSAE_HOME", str(home))
        from mlsae.models.zoo import ensure_tokenizer

        ensure_tokenizer("micro")
    return home


@pytest.fixture(scope="session")
def micro_zoo_home(micro_text_home) -> Path:
    """``micro_text_home`` plus the micro zoo micro-s/m/l (trained once per session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLSAE_HOME", str(micro_text_home))
        from mlsae.models.zoo import build_zoo

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


# ---- the Hugging Face hub cache and the Pile, in their real on-disk layouts ------------------


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, so results do not depend on what this machine has cached."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, repo_type: str = "model", sha: str = HUB_SHA) -> Path:
    """Lay ``folder`` out as ``hf download`` leaves a repository in the hub cache: ``<type>s--org--name/``
    with ``refs/main`` naming the commit, the files as ``blobs/<sha256>`` and ``snapshots/<commit>/...``
    symbolic links to them. Returns the snapshot folder."""
    import hashlib
    import os

    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


PILE_SETS = ("Pile-CC", "Github", "ArXiv", "Wikipedia (en)", "StackExchange")


def write_pile_layout(root: Path, docs_per_file: int = 12, seed: int = 0) -> Path:
    """The Pile as ``hf download monology/pile-uncopyrighted --repo-type dataset --local-dir root`` leaves
    it: ``train/00.jsonl.zst``, ``train/01.jsonl.zst``, ``val.jsonl.zst``, ``test.jsonl.zst`` (zstd-compressed
    JSON lines of ``{"text": ..., "meta": {"pile_set_name": ...}}``) and a README.md. The documents use the
    tiny tokenizer's words and name their file, so a test can tell which file a row came from."""
    import json
    import random

    import zstandard

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("---\nlicense: other\n---\n# pile-uncopyrighted (test stand-in)\n")
    for name in ("train/00.jsonl.zst", "train/01.jsonl.zst", "val.jsonl.zst", "test.jsonl.zst"):
        rows = [{"text": f"{name} " + " ".join(rng.choice(TEXT_WORDS) for _ in range(30)),
                 "meta": {"pile_set_name": rng.choice(PILE_SETS)}} for _ in range(docs_per_file)]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return root


def write_released_mlsae(path: Path, d: int = 16, m: int = 64, k: int = 4, last_nonzero: bool = True,
                         decoder_shape=None, tfm: str | None = None, tuned_lens: bool = False) -> dict:
    """An MLSAE in the authors' released layout (``tim-lawson/mlsae-*``, written by ``PyTorchModelHubMixin``):
    ``config.json`` (``n_inputs``, ``n_latents``, ``k``, ``auxk``, ``dead_steps_threshold``, ``dead_threshold``,
    ``standardize``), ``model.safetensors`` (``encoder.weight``, ``decoder.weight``, ``pre_encoder_bias``,
    ``last_nonzero``) and a model card naming ``library_name: mlsae``. Returns the SAE's tensors.

    ``tfm="EleutherAI/pythia-70m-deduped"`` writes a ``-tfm`` checkpoint instead (their Lightning
    ``MLSAETransformer``): its ``__init__`` arguments as the config (``model_name``, ``expansion_factor``, ``k``,
    ``auxk``, ``dead_tokens_threshold``, ``max_length``, ``batch_size``, ``accumulate_grad_batches``,
    ``tuned_lens``, ...) and the whole module's state: the SAE under ``autoencoder.``, the transformer's
    weights under ``transformer.model.`` (a stand-in tensor here) and its lens under ``lens.`` when it had one."""
    import json

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    tensors = {
        "encoder.weight": torch.randn(m, d),
        "decoder.weight": torch.randn(*(decoder_shape or (d, m))),
        "pre_encoder_bias": torch.randn(d),
    }
    if last_nonzero:
        tensors["last_nonzero"] = torch.arange(m)
    path.mkdir(parents=True)
    if tfm is None:
        save_file(tensors, str(path / "model.safetensors"))
        config = dict(n_inputs=d, n_latents=m, k=k, dead_steps_threshold=76, dead_threshold=1e-3, auxk=None,
                      standardize=True)
    else:
        state = {f"autoencoder.{name}": t for name, t in tensors.items()}
        state["transformer.model.gpt_neox.embed_in.weight"] = torch.randn(64, d)
        if tuned_lens:
            state["lens.layer_translators.0.weight"] = torch.zeros(d, d)
        save_file(state, str(path / "model.safetensors"))
        config = dict(model_name=tfm, layers=None, expansion_factor=m // d, k=k, auxk=256, auxk_coef=1 / 32,
                      dead_tokens_threshold=10_000_000, dead_threshold=1e-3, lr=1e-4, standardize=True,
                      skip_special_tokens=True, max_length=2048, batch_size=1, accumulate_grad_batches=64,
                      tuned_lens=tuned_lens)
    (path / "config.json").write_text(json.dumps(config))
    (path / "README.md").write_text("---\nlibrary_name: mlsae\ntags:\n- model_hub_mixin\n---\n")
    return tensors
