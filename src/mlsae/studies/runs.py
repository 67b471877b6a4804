"""A saved SAE opened with what it needs to be run again: its model, tokenizer, lens and text, read from its
provenance (or, for a released SAE without one, from the paper's preset, said out loud). What ``mlsae eval`` and
``mlsae dashboard`` start from; flags override what the SAE recorded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mlsae.data.sources import load_text
from mlsae.data.tokens import token_batches
from mlsae.models.lens import IDENTITY, Lens
from mlsae.models.lens_training import residual_lens_for
from mlsae.models.registry import load_model
from mlsae.sae.architectures import load_sae
from mlsae.sae.io import read_provenance, sae_folder
from mlsae.sae.model import MLSAE
from mlsae.sae.origin import check_model_of_sae, lens_of_sae, model_of_sae
from mlsae.training.config import TrainConfig, config_from_preset


@dataclass
class OpenedRun:
    """An SAE with its model, tokenizer, lens and the settings of the text it is run on."""

    source: str  # as the user named it
    folder: Path  # the SAE's folder
    sae: MLSAE
    model: Any
    tokenizer: Any
    lens: Lens
    cfg: TrainConfig  # the run's settings (data, seq_len, lens), with the overrides applied
    tuned_lens: bool

    def batches(self, tokens: int, batch_size: int = 16, split: str = "test") -> Iterator[Tensor]:
        """``[batch, seq_len]`` input ids of the run's text (``split``), ``tokens`` of them in all."""
        return token_batches(load_text(self.cfg.data, split=split), self.tokenizer, self.cfg.seq_len, batch_size,
                             max_tokens=tokens)


def open_run(source: str | Path, *, model: str | None = None, data: str | None = None, seq_len: int | None = None,
             tuned_lens: bool | None = None, device: str = "cpu") -> OpenedRun:
    """Open the SAE that ``source`` names (a run folder, its ``sae/``, an SAE folder or a hub id) and load what it
    was trained with. The SAE is read first, so a missing or torn one fails before the model loads; another model's
    weights are refused (:func:`mlsae.sae.origin.check_model_of_sae`)."""
    folder = sae_folder(source)
    sae = load_sae(folder).to(device).eval()
    saved = read_provenance(folder)
    model_name = model or model_of_sae(str(source), folder, flag="--model")
    check_model_of_sae(str(source), folder, model_name, flag="--model")
    changes: dict[str, Any] = {"model": model_name, "device": "cpu", **({"data": data} if data else {}),
                               **({"seq_len": seq_len} if seq_len else {})}
    if saved.get("train_config"):
        cfg = TrainConfig.from_dict({**saved["train_config"], **changes})
    else:  # a released SAE, or one without provenance: the model's own text and context, said out loud
        cfg = config_from_preset("paper", **changes)
        print(f"{source} has no provenance: using {cfg.data} (test split) at {cfg.seq_len} positions "
              "(--data and --seq-len choose others)", flush=True)
    lensed = lens_of_sae(str(source), folder) if tuned_lens is None else tuned_lens
    lm, tokenizer = load_model(model_name, device=device)
    lens = residual_lens_for(model_name, lm, tokenizer, **cfg.lens_kwargs()) if lensed else IDENTITY
    return OpenedRun(str(source), folder, sae, lm, tokenizer, lens, cfg, lensed)
