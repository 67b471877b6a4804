"""An MLSAE as SAELens SAEs: one ``TopKSAE`` per layer, all with the same weights.

SAELens's ``TopKSAE`` with ``normalize_activations="layer_norm"`` centres each vector over ``d_model`` and divides it
by its (unbiased) std + 1e-5, subtracts ``b_dec`` before the encoder (``apply_b_dec_to_input=True``), keeps the top
``k`` pre-activations with a ReLU, decodes with ``W_dec`` + ``b_dec`` and undoes the standardisation. That is the
MLSAE's forward pass (:mod:`mlsae.sae.model`) with ``W_enc = encoder.T``, ``b_enc = 0``, ``W_dec``'s rows = the decoder
directions and ``b_dec = b_pre``; the layer index is no input of the MLSAE, so the SAE at layer ``l`` is the same
one hooked at ``blocks.{l}.hook_resid_post`` (TransformerLens's name for block ``l``'s output, which is what
:mod:`mlsae.models.residuals` reads as layer ``l``).

One difference, stated: SAELens multiplies the reconstruction back by the std, the MLSAE by std + 1e-5, so the
reconstructions differ by a relative 1e-5 / std (below float32 rounding for a residual std of 1 or more); the
latents are equal. Not expressible: an MLSAE trained after a tuned lens (the lens's affine map sits before the
standardisation, which SAELens has no place for) is refused; an MLSAE without standardisation exports with
``normalize_activations="none"``.

On disk, as SAELens's ``save_model`` writes it: ``OUT/blocks.{l}.hook_resid_post/cfg.json`` and
``sae_weights.safetensors`` per layer, and ``OUT/mlsae_export.json`` saying what was exported. No import of SAELens
here: ``tests/test_interop.py`` loads every layer with SAELens's own ``SAE.load_from_disk`` and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from mlsae.core.paths import atomic_dir
from mlsae.models.registry import model_shape, resolve_model
from mlsae.sae.io import read_provenance, sae_folder
from mlsae.sae.model import MLSAE
from mlsae.sae.origin import lens_of_sae, model_of_sae

SAELENS_VERSION = "6.54.12"  # the SAELens release whose files these follow (the interop extra; the tests load them)
MANIFEST = "mlsae_export.json"
HOOK = "blocks.{layer}.hook_resid_post"
DATASETS = {"offline": None}  # our generated text has no hub id; a hub data set's name is its SAELens dataset_path


def export_saelens(source: str | Path, out: str | Path, *, layers: list[int] | None = None,
                   model: str | None = None) -> list[Path]:
    """Write the MLSAE named by ``source`` (a run folder, an SAE folder or a hub id) as one SAELens ``TopKSAE``
    folder per layer into ``out``, atomically; returns the layer folders. ``layers``: which layers (default: those
    it was trained on, else every layer of its model); ``model``: the model's name when the SAE does not record it.
    An existing ``out`` is replaced only if it is an earlier export (it holds :data:`MANIFEST`)."""
    folder = sae_folder(source)
    sae = MLSAE.from_pretrained(folder)
    saved = read_provenance(folder)
    if lens_of_sae(str(source), folder):
        raise ValueError(f"{source}: this MLSAE reads tuned-lens-transformed residual streams; SAELens standardises "
                         "the raw residual vector, and the lens's affine map sits before that, so no SAELens SAE "
                         "computes the same latents. Export an MLSAE trained without the lens (tuned_lens=False)")
    model_name = model or model_of_sae(str(source), folder, flag="--model")
    layers = _layers(source, layers, sae.cfg.layers, model_name)
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out}: exists and is not an mlsae SAELens export (no {MANIFEST}); choose another "
                              "folder or remove it")
    train_cfg = saved.get("train_config") or {}
    src = resolve_model(model_name)
    metadata = {
        "model_name": src.repo_id_or_path if src.kind == "hub" else model_name,
        "context_size": train_cfg.get("seq_len") or saved.get("seq_len"),
        "prepend_bos": False,  # token_batches cuts a stream of EOS-separated documents; no BOS is added
        "exclude_special_tokens": True,  # the MLSAE never sees special tokens (mlsae.models.residuals)
        "dataset_path": DATASETS.get(str(saved.get("data")), saved.get("data")),
        "mlsae_source": str(source),
        "mlsae_cache_key": saved.get("cache_key"),
    }
    weights = {  # SAELens's parameter names and shapes
        "W_enc": sae.W_enc.detach().t().contiguous(),  # [d_in, d_sae]
        "W_dec": sae.W_dec_rows.detach().contiguous(),  # [d_sae, d_in]
        "b_enc": torch.zeros(sae.cfg.n_latents),  # [d_sae]: the MLSAE has no encoder bias
        "b_dec": sae.b_pre.detach().contiguous(),  # [d_in]
    }
    folders = []
    with atomic_dir(out) as tmp:
        for layer in layers:
            hook = HOOK.format(layer=layer)
            cfg = {
                "architecture": "topk", "d_in": sae.cfg.d_model, "d_sae": sae.cfg.n_latents, "k": sae.cfg.k,
                "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
                "normalize_activations": "layer_norm" if sae.cfg.standardize else "none",
                "reshape_activations": "none", "rescale_acts_by_decoder_norm": False,
                "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
                             **metadata, "hook_name": hook, "mlsae_layer": layer},
            }
            (tmp / hook).mkdir()
            save_file(weights, str(tmp / hook / "sae_weights.safetensors"))
            (tmp / hook / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
            folders.append(out / hook)
        (tmp / MANIFEST).write_text(json.dumps({"format": "saelens", "sae_lens_version": SAELENS_VERSION,
                                                "source": str(source), "layers": layers,
                                                "hooks": [f.name for f in folders]}, indent=2) + "\n")
    return folders


def _layers(source, layers: list[int] | None, trained: list[int] | None, model_name: str) -> list[int]:
    """The layers to export, checked against the model's depth where it is known without loading it."""
    shape = model_shape(model_name)
    if layers is None:
        layers = trained
    if layers is None:
        if shape is None:
            raise ValueError(f"{source}: the number of layers of {model_name} is not known here (its config is not "
                             "cached); pass layers=[...] (--layers 0,1,2)")
        layers = list(range(shape[0]))
    if not layers:
        raise ValueError("layers: give at least one layer to export")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0 or (shape and layer >= shape[0]):
            depth = f" ({model_name} has layers 0 ... {shape[0] - 1})" if shape else ""
            raise ValueError(f"layer {layer!r} cannot be exported{depth}")
    return sorted(set(layers))
