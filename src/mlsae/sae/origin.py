"""What a saved SAE was trained on, read from what it carries: its provenance (ours), its ``-tfm`` config, or its
released hub name (``tim-lawson/mlsae-pythia-70m-deduped-x64-k32-lens``); and the check that it is analysed with
the model whose weights it was trained on."""

from __future__ import annotations

import re
from pathlib import Path

from mlsae.models.registry import REGISTRY, model_identity
from mlsae.sae.io import read_provenance, released_facts


def model_of_sae(source: str, folder: Path, flag: str = "-p model") -> str:
    """The model a pretrained SAE was trained on: its provenance's or its ``-tfm`` config's, else the registry
    name in its id (``tim-lawson/mlsae-pythia-70m-deduped-x64-k32`` -> ``pythia-70m``)."""
    if (model := read_provenance(folder).get("model") or released_facts(folder).get("model")) is not None:
        by_repo = [name for name, e in REGISTRY.items() if e.repo_id == model]
        return by_repo[0] if by_repo else model
    named = [name for name, e in REGISTRY.items() if e.repo_id.split("/")[-1] in str(source)]
    if not named:
        raise ValueError(f"{source} does not say which model it was trained on (no provenance.json, no registry "
                         f"model in its name); pass {flag} NAME")
    return max(named, key=lambda n: len(REGISTRY[n].repo_id))  # pythia-1.4b-deduped, not pythia-1b...


def check_model_of_sae(source: str, folder: Path, model_name: str, flag: str = "-p model") -> None:
    """Refuse to analyse a trained SAE with other weights than it was trained on: ``model_name``'s identity
    (:func:`mlsae.models.registry.model_identity`) against the one its provenance recorded. A model not on this
    machine is left to fail when it is loaded, with what to fetch."""
    saved = read_provenance(folder)
    recorded = saved.get("model_identity")
    if recorded is None:  # a released SAE, or one without provenance: nothing to compare
        return
    now = model_identity(model_name)
    if now.endswith("@uncached"):
        return
    if now != recorded:
        raise ValueError(f"{source} was trained on {saved.get('model')} with weights {recorded}, but {model_name} here has "
                         f"weights {now}: evaluating it there would measure another model. Pass the model it was "
                         f"trained on ({flag} ...), or train an SAE for this one")


def lens_of_sae(source: str, folder: Path) -> bool:
    """Whether a pretrained SAE reads tuned-lens-transformed activations: its provenance or ``-tfm`` config says
    so, else its released name does (``...-k32-lens``, ``...-k32-lens-tfm``)."""
    said = read_provenance(folder).get("tuned_lens", released_facts(folder).get("tuned_lens"))
    if said is not None:
        return bool(said)
    return re.search(r"-lens(-tfm)?/?$", str(source)) is not None
