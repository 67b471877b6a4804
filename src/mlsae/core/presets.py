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


# Token budgets sized for the machine at hand. "paper" is PAPER.md §1 verbatim (a constant lr of 1e-4). The short
# offline runs (a few hundred steps, not the paper's 7,600) also fit the encoder's scale on the first batch:
# with the paper's unit-norm init, zoo-s at R=64 is still at FVU 1.06 after 262k tokens with k=32
# (10.1 with k=128), against 0.031 (0.011) with the fit.
# The offline presets' lr is a schedule that needs no search (README, Decisions, "lr schedule"): a peak of 1e-2,
# reached linearly over the first 5% of the steps and decayed linearly towards 0 over the last 20%. Measured by
# benchmarks/lr_schedule.py against constant lrs {3e-4, 1e-3, 3e-3, 1e-2} (held-out FVU, default budget): zoo-m
# 0.0108 against the grid's best 0.0115 (constant 1e-2), zoo-xl 0.0164 against 0.0173; every dictionary of
# notebook 13 uses it too (benchmarks/cross_layer_lr.py: each was best at 1e-2 on zoo-s).
TRAIN_PRESETS: dict[str, dict] = {
    "paper": {},
    "default": dict(
        expansion_factor=16, seq_len=128, batch_size=32, max_tokens=1_000_000, lr=1e-2,
        lr_warmup=0.05, lr_decay=0.2, dead_tokens=500_000, checkpoint_every=100, encoder_init="fit",
    ),
    "tiny": dict(
        expansion_factor=8, seq_len=64, batch_size=8, max_tokens=40_000, lr=2e-3,
        dead_tokens=20_000, k_aux=32, checkpoint_every=20, log_every=5, encoder_init="fit", lens_tokens=40_000,
    ),
}


# Notebook presets: the train preset they use (R and the sequence length come from it), which models
# the model-size figures use, the evaluation/analysis budgets (batch_size: sequences per evaluation
# batch), the sweep grid and notebook 03's models at the paper's R (``paper_r``). HUB_DATA is the text used
# for models outside the zoo.
NOTEBOOK_PRESETS: dict[str, dict] = {
    "tiny": dict(
        train="tiny", model="micro-m", models=["micro-s", "micro-m", "micro-l"],
        eval_tokens=2_048, analysis_tokens=8_192, batch_size=8, paper_r=dict(expansion_factor=64, models=["micro-m"]),
        sweep=dict(model="micro-s", expansion_factors=[2, 8], ks=[8, 16], k_expansion_factor=8, train_tokens=20_000,
                   analysis_tokens=4_096),
        families={"GPT-NeoX": ["micro-s", "micro-m"], "GPT-2": ["micro-gpt2-s", "micro-gpt2-m"],
                  "Llama": ["micro-llama-s", "micro-llama-m"]},
    ),
    "default": dict(
        train="default", model="zoo-m", models=["zoo-s", "zoo-m", "zoo-xl"],
        eval_tokens=32_768, analysis_tokens=262_144, batch_size=32,
        paper_r=dict(expansion_factor=64, models=["zoo-s", "zoo-m", "zoo-xl"]),
        sweep=dict(model="zoo-s", expansion_factors=[1, 2, 4, 8, 16, 32, 64], ks=[16, 32, 64, 128], k_expansion_factor=64,
                   train_tokens=500_000, analysis_tokens=65_536),
        families={"GPT-NeoX": ["zoo-s", "zoo-m"], "GPT-2": ["zoo-gpt2-s", "zoo-gpt2-m"],
                  "Llama": ["zoo-llama-s", "zoo-llama-m"]},
    ),
    "paper": dict(
        train="paper", model="pythia-70m", models=["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b"],
        eval_tokens=1_000_000, analysis_tokens=10_000_000, batch_size=8, paper_r=dict(expansion_factor=64, models=[]),
        sweep=dict(model="pythia-70m", expansion_factors=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                   ks=[16, 32, 64, 128, 256, 512], k_expansion_factor=64, train_tokens=None, analysis_tokens=1_000_000),
        families={"GPT-NeoX": ["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b"],
                  "GPT-2": ["gpt2", "gpt2-medium", "gpt2-large"],
                  "Llama": ["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "meta-llama/Llama-3.2-1B"]},
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
