"""Every preset in one place: ``tiny`` (the test suite), ``default`` (the offline figures) and ``paper``,
and the offline corpus's ``default`` and ``micro``.

:data:`TRAIN_PRESETS` are overrides of :class:`mlsae.training.config.TrainConfig` (what one SAE is trained
with, the CLI's ``--preset``; the data is not a preset's but the model's, :func:`default_data`);
:data:`NOTEBOOK_PRESETS` add what a notebook needs around it (the model-size series, evaluation and
analysis budgets, the sweep grid, the model families) and name the train preset they use, so a preset
means the same in the CLI and the notebooks.
"""

from __future__ import annotations

# The offline corpus (mlsae.data.corpus): preset -> (n_train documents, n_test documents, seed). A document is ~340 tokens of the zoo
# tokenizer: "default" is ~6.7M train tokens and ~0.84M test tokens (enough for the zoo and the
# default SAE budget of 2M tokens without repeating), "micro" ~200k / ~50k.
CORPUS_PRESETS: dict[str, dict[str, int]] = {
    "default": dict(n_train=20_000, n_test=2_500, seed=0),
    "micro": dict(n_train=600, n_test=150, seed=1),
}


# Token budgets sized for the machine at hand. "paper" is PAPER.md §1 verbatim. The short offline
# runs (a few hundred steps, not the paper's 7,600) also fit the encoder's scale on the first batch:
# with the paper's unit-norm init, zoo-s at R=64 is still at FVU 1.06 after 262k tokens with k=32
# (10.1 with k=128), against 0.031 (0.011) with the fit.
TRAIN_PRESETS: dict[str, dict] = {
    "paper": {},
    "default": dict(
        expansion_factor=16, seq_len=128, batch_size=32, max_tokens=1_000_000, lr=1e-3,
        dead_tokens=500_000, checkpoint_every=100, encoder_init="fit",
    ),
    "tiny": dict(
        expansion_factor=8, seq_len=64, batch_size=8, max_tokens=40_000, lr=2e-3,
        dead_tokens=20_000, k_aux=32, checkpoint_every=20, log_every=5, encoder_init="fit", lens_tokens=40_000,
    ),
}


# Notebook 13's learning rates: each dictionary at its own best lr of the grid {3e-4, 1e-3, 3e-3, 1e-2}, measured
# by benchmarks/cross_layer_lr.py on zoo-s at the default budget (held-out FVU; README, "Cross-layer dictionaries"):
# all three are best at 1e-2, the grid's top (MLSAE 0.0074 vs 0.0190 at the train preset's 1e-3; crosscoder at
# equal latents 0.0053, at equal parameters 0.0085), and the ranking is the same at every lr of the grid. zoo-m
# and zoo-xl use zoo-s's choice (no grid there: the time). None: the train preset's lr ("tiny": no grid; "paper":
# the paper's constant 1e-4, no grid run on Pythia here).
CROSS_LAYER_LR: dict[str, dict[str, float | None]] = {
    "tiny": {"mlsae": None, "equal latents": None, "equal parameters": None},
    "default": {"mlsae": 1e-2, "equal latents": 1e-2, "equal parameters": 1e-2},
    "paper": {"mlsae": None, "equal latents": None, "equal parameters": None},
}


# Notebook presets: the train preset they use (R and the sequence length come from it), which models
# the model-size figures use, the evaluation/analysis budgets (batch_size: sequences per evaluation
# batch) and the sweep grid. HUB_DATA is the text used for models outside the zoo.
NOTEBOOK_PRESETS: dict[str, dict] = {
    "tiny": dict(
        train="tiny", model="micro-m", models=["micro-s", "micro-m", "micro-l"],
        eval_tokens=2_048, analysis_tokens=8_192, batch_size=8,
        sweep=dict(model="micro-s", expansion_factors=[2, 8], ks=[8, 16], k_expansion_factor=8, train_tokens=20_000,
                   analysis_tokens=4_096),
        families={"GPT-NeoX": ["micro-s", "micro-m"], "GPT-2": ["micro-gpt2-s", "micro-gpt2-m"],
                  "Llama": ["micro-llama-s", "micro-llama-m"]},
        cross_layer=dict(lr=CROSS_LAYER_LR["tiny"]),
    ),
    "default": dict(
        train="default", model="zoo-m", models=["zoo-s", "zoo-m", "zoo-xl"],
        eval_tokens=32_768, analysis_tokens=262_144, batch_size=32,
        sweep=dict(model="zoo-s", expansion_factors=[1, 2, 4, 8, 16, 32, 64], ks=[16, 32, 64, 128], k_expansion_factor=64,
                   train_tokens=500_000, analysis_tokens=65_536),
        families={"GPT-NeoX": ["zoo-s", "zoo-m"], "GPT-2": ["zoo-gpt2-s", "zoo-gpt2-m"],
                  "Llama": ["zoo-llama-s", "zoo-llama-m"]},
        cross_layer=dict(lr=CROSS_LAYER_LR["default"]),
    ),
    "paper": dict(
        train="paper", model="pythia-70m", models=["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b"],
        eval_tokens=1_000_000, analysis_tokens=10_000_000, batch_size=8,
        sweep=dict(model="pythia-70m", expansion_factors=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                   ks=[16, 32, 64, 128, 256, 512], k_expansion_factor=64, train_tokens=None, analysis_tokens=1_000_000),
        families={"GPT-NeoX": ["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b"],
                  "GPT-2": ["gpt2", "gpt2-medium", "gpt2-large"],
                  "Llama": ["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "meta-llama/Llama-3.2-1B"]},
        cross_layer=dict(lr=CROSS_LAYER_LR["paper"]),
    ),
}
HUB_DATA = "monology/pile-uncopyrighted"


def default_data(model: str, kind: str) -> str:
    """The text a model is trained and evaluated on when none is given: the same under every preset, in the
    CLI and the notebooks. A zoo model gets the corpus it was trained on (``micro-*``: the micro corpus),
    every other model (``kind`` from :func:`mlsae.models.registry.resolve_model`: hub, local) the Pile; the
    synthetic corpus for a hub model only when asked for (``data="offline"``)."""
    if kind == "zoo":
        return "offline:micro" if model.startswith("micro-") else "offline"
    return HUB_DATA
