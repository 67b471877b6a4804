"""Which dictionary a config or a folder is: the MLSAE (:mod:`mlsae.sae.model`) or the acausal crosscoder
(:mod:`mlsae.sae.crosscoder`). Training builds with :func:`build_sae`; everything that opens a saved SAE without
knowing its kind loads with :func:`load_sae`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mlsae.sae.config import CONFIG_FILE, CrosscoderConfig, SAEConfig
from mlsae.sae.crosscoder import Crosscoder
from mlsae.sae.io import check_sae_files, local_folder
from mlsae.sae.model import MLSAE


def sae_class(cfg: SAEConfig) -> type[MLSAE]:
    """The module class of a built config."""
    return Crosscoder if isinstance(cfg, CrosscoderConfig) else MLSAE


def build_sae(cfg: SAEConfig, device: torch.device | str | None = None) -> MLSAE:
    """A freshly initialised MLSAE or crosscoder for ``cfg``."""
    return sae_class(cfg)(cfg, device=device)


def load_sae(source: str | Path, *, revision: str | None = None, device: torch.device | str | None = None,
             **kwargs) -> MLSAE:
    """The SAE in ``source`` (a folder, or a hub id at ``revision``) as the class its ``config.json`` names: a
    :class:`~mlsae.sae.crosscoder.Crosscoder` when it says ``architecture: crosscoder``, else an
    :class:`~mlsae.sae.model.MLSAE` (ours and the released layouts). ``kwargs``: ``MLSAE.from_pretrained``'s."""
    folder = check_sae_files(local_folder(source, revision=revision))
    try:
        kind = json.loads((folder / CONFIG_FILE).read_text()).get("architecture", "mlsae")
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG_FILE}: not valid JSON ({err})") from err
    cls = Crosscoder if kind == "crosscoder" else MLSAE
    return cls.from_pretrained(folder, device=device, **kwargs)
