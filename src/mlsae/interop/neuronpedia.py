"""A Neuronpedia-style export of an MLSAE's latents: the bulk-import layout sae-dashboard writes for Neuronpedia.

Layout (:func:`write_neuronpedia`), as sae-dashboard's ``sae_dashboard/neuronpedia/neuronpedia_export.py`` writes it::

    {out}/{model_id}/{source_id}/
        release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl      one JSON object each
        features/batch-0.jsonl.gz, batch-1.jsonl.gz, ...               gzip JSON lines, one feature (latent) a line
        activations/batch-0.jsonl.gz, ...                              one top example a line, same batches

Where the fields come from:

* sae-dashboard (its inlined copies of the neuronpedia-utils ``db_models``: ``SourceRelease``, ``Model``,
  ``SourceSet``, ``Source``, ``Feature``, ``Activation``): every camelCase field and its meaning, e.g. a feature's
  ``modelId``, ``layer`` (the source id), ``index``, ``maxActApprox``, ``frac_nonzero``, ``pos_str``/``pos_values``
  (largest logits of the decoder direction), ``neg_str``/``neg_values`` (smallest); an activation's ``tokens``,
  ``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``, ``qualifyingTokenIndex`` and the top-activation
  bin convention (``binMin = -1``, ``binMax`` = the feature's largest activation, ``binContains = -1``). Fields we
  have nothing for keep sae-dashboard's defaults (empty lists, ``None``): the activation and logit histograms,
  neuron alignment, correlated neurons and features, DFA, loss values, steering vectors.
* Ours (no dashboard has them), on each feature: ``layer_distribution`` (``p(l | j)`` per analysed layer),
  ``mean_layer`` and ``layer_std`` (null for a latent that never fires), ``layer_frac_nonzero`` (firing frequency
  per layer), ``model_layers`` (the model layer of each entry) and ``input_str``/``input_values`` (the tokens whose
  input embedding is nearest the encoder direction, by cosine); on each activation: ``model_layer`` (the layer its
  ``values`` are at) and ``layer_values`` (the latent at every analysed layer on the qualifying token, its per-token
  distribution over layers unnormalised). ``frac_nonzero`` is over (token, layer) pairs, ``dataIndex`` the index of
  the analysed sequence.

One source holds the whole MLSAE (its latents are the same at every layer), so ``source_id`` names the SAE, not a
layer. The numbers are :class:`mlsae.analysis.latent_records.DashboardData`'s, floats to 4 significant digits.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mlsae.analysis.latent_records import DashboardData
from mlsae.core.paths import atomic_dir
from mlsae.interop.dashboard import round_sig

FEATURES_PER_BATCH = 128  # sae-dashboard's default n_features_per_batch
# sae-dashboard's fallback creator id for Neuronpedia bulk imports (its FALLBACK_CREATOR_ID); $DEFAULT_CREATOR_ID wins
FALLBACK_CREATOR_ID = "clkht01d40000jv08hvalcvly"


@dataclass(frozen=True)
class NeuronpediaExport:
    """What :func:`write_neuronpedia` wrote."""

    folder: Path  # {out}/{model_id}/{source_id}
    n_features: int
    n_activations: int
    n_batches: int


def _component(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"{what} {value!r} must be a non-empty folder name without slashes, e.g. 'pythia-70m-deduped'")
    return value


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
                   for r in rows).encode("utf-8")


def _is_export(folder: Path, model_id: str, source_id: str) -> bool:
    try:
        source = json.loads((folder / "source.jsonl").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    return source.get("id") == source_id and source.get("modelId") == model_id and (folder / "features").is_dir()


def _activation_id(*parts) -> str:
    """A deterministic 25-character id in the shape of the cuids Neuronpedia uses."""
    return "c" + hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:24]


def write_neuronpedia(
    data: DashboardData, out: str | Path, *, model_id: str, source_id: str, set_name: str | None = None,
    release_id: str | None = None, release_title: str | None = None, creator_name: str = "mlsae",
    creator_id: str | None = None, url: str | None = None, hf_repo_id: str | None = None, dataset: str | None = None,
    features_per_batch: int = FEATURES_PER_BATCH, created_at: datetime | None = None,
) -> NeuronpediaExport:
    """Write ``data`` into ``{out}/{model_id}/{source_id}/`` in the layout of the module docstring, atomically. An
    existing folder there is replaced only if it is an export of the same model and source (its ``source.jsonl``
    says so) or empty; anything else is refused before any work.

    ``set_name``: the source set (default ``source_id``); ``release_id``/``release_title``: the release (default the
    set name); ``creator_id``: the Neuronpedia user (default ``$DEFAULT_CREATOR_ID``, else sae-dashboard's fallback);
    ``url``, ``hf_repo_id``, ``dataset``: recorded on the release and source; ``created_at``: the timestamp of every
    row (default now)."""
    model_id, source_id = _component(model_id, "model_id"), _component(source_id, "source_id")
    if isinstance(features_per_batch, bool) or not isinstance(features_per_batch, int) or features_per_batch <= 0:
        raise ValueError(f"features_per_batch must be a positive int, got {features_per_batch!r}")
    folder = Path(out).expanduser() / model_id / source_id
    empty = folder.is_dir() and not any(folder.iterdir())
    if folder.exists() and not empty and not _is_export(folder, model_id, source_id):
        raise FileExistsError(f"{folder} exists and is not a Neuronpedia export of {model_id}/{source_id} (no matching "
                              "source.jsonl): it is left alone; choose another folder, or remove it yourself")
    data.check()
    set_name = set_name or source_id
    release_id = release_id or set_name
    creator = creator_id or os.environ.get("DEFAULT_CREATOR_ID") or FALLBACK_CREATOR_ID
    when = (created_at or datetime.now()).isoformat()
    info = data.info
    notes = (f"mlsae multi-layer SAE over model layers {data.layers}: {data.n_latents} latents"
             + (f", k = {info['k']}" if "k" in info else "") + f", lens: {info.get('lens', 'none')}; "
             f"{data.n_tokens} tokens analysed")
    head = {
        "release.jsonl": {"name": release_id, "description": release_title or release_id, "creatorName": creator_name,
                          "creatorId": creator, "visibility": "PUBLIC", "isNewUi": False, "featured": False,
                          "descriptionShort": release_title or release_id, "urls": [url] if url else [],
                          "creatorEmail": None, "creatorNameShort": creator_name, "defaultSourceSetName": set_name,
                          "defaultSourceId": source_id, "defaultUmapSourceIds": [], "createdAt": when},
        "model.jsonl": {"id": model_id, "instruct": model_id.endswith("-it"), "creatorId": creator,
                        "displayNameShort": model_id, "displayName": model_id, "tlensId": None,
                        "dimension": info.get("d_model"), "visibility": "PUBLIC", "defaultSourceSetName": set_name,
                        "defaultSourceId": source_id, "inferenceEnabled": False,
                        "layers": int(info.get("model_layers", max(data.layers) + 1)), "neuronsPerLayer": 0,
                        "createdAt": when, "owner": "", "updatedAt": when, "website": None},
        "sourceset.jsonl": {"modelId": model_id, "name": set_name, "creatorId": creator, "hasDashboards": True,
                            "visibility": "PUBLIC", "description": release_title or notes, "type": "",
                            "creatorName": creator_name, "urls": [url] if url else [], "creatorEmail": None,
                            "releaseName": release_id, "defaultOfModelId": None, "defaultRange": 1,
                            "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False,
                            "showHeadAttribution": False, "showUmap": False, "createdAt": when},
        "source.jsonl": {"id": source_id, "modelId": model_id, "setName": set_name, "creatorId": creator,
                         "hasDashboards": True, "inferenceEnabled": False, "inferenceHosts": [], "saelensConfig": None,
                         "saelensRelease": None, "saelensSaeId": None, "hfRepoId": hf_repo_id, "hfFolderId": None,
                         "visibility": "PUBLIC", "defaultOfModelId": None, "hasUmap": False,
                         "hasUmapLogSparsity": False, "hasUmapClusters": False,
                         "num_prompts": info.get("sequences"), "num_tokens_in_prompt": info.get("seq_len"),
                         "dataset": dataset, "notes": notes, "createdAt": when},
    }
    common = {"modelId": model_id, "layer": source_id, "creatorId": creator, "createdAt": when}
    n_batches = max(1, math.ceil(data.n_latents / features_per_batch))
    n_activations = 0
    with atomic_dir(folder) as tmp:
        for name, row in head.items():
            (tmp / name).write_bytes(_jsonl([row]))
        (tmp / "features").mkdir()
        (tmp / "activations").mkdir()
        for b in range(n_batches):
            lo, hi = b * features_per_batch, min((b + 1) * features_per_batch, data.n_latents)
            features, activations = _batch(data, lo, hi, common, model_id, source_id, set_name)
            n_activations += len(activations)
            (tmp / "features" / f"batch-{b}.jsonl.gz").write_bytes(gzip.compress(_jsonl(features), 6, mtime=0))
            (tmp / "activations" / f"batch-{b}.jsonl.gz").write_bytes(gzip.compress(_jsonl(activations), 6, mtime=0))
    return NeuronpediaExport(folder=folder, n_features=data.n_latents, n_activations=n_activations, n_batches=n_batches)


def _batch(data: DashboardData, lo: int, hi: int, common: dict, model_id: str, source_id: str,
           set_name: str) -> tuple[list[dict], list[dict]]:
    """The feature rows of latents ``lo`` … ``hi - 1`` and the activation rows of their top examples."""
    sl, vocab, before = slice(lo, hi), data.vocab, data.context[0]
    stats = data.stats
    p = round_sig(stats.p_layer[:, sl].t()).tolist()  # [c, L]
    mean = round_sig(stats.mean_layer[sl]).tolist()
    std = round_sig(stats.std_layer[sl]).tolist()
    freq = round_sig(data.frequency[sl]).tolist()
    layer_freq = round_sig(data.layer_frequency[:, sl].t()).tolist()  # [c, L]
    near = {k: (getattr(data, f"{k}_ids")[sl].tolist(), round_sig(getattr(data, v)[sl]).tolist())
            for k, v in (("input", "input_cos"), ("output", "output_logits"), ("bottom", "bottom_logits"))}
    values = round_sig(data.example_values[:, sl]).tolist()  # [L, c, n]
    seq = data.example_seq[:, sl].tolist()
    wid = data.window_ids[:, sl].tolist()  # [L, c, n, W]
    acts = round_sig(data.window_acts[:, sl]).tolist()
    layer_acts = round_sig(data.token_layer_acts[:, sl]).tolist()  # [L, c, n, L]

    def text(ids: list[int]) -> list[str]:
        return [vocab[t] if t < len(vocab) else f"<{t}>" for t in ids]

    features, activations = [], []
    for c in range(hi - lo):
        j = lo + c
        rows = []
        for r, layer in enumerate(data.layers):
            for s in range(data.n_examples):
                if seq[r][c][s] < 0:
                    continue
                inside = [w for w, t in enumerate(wid[r][c][s]) if t >= 0]
                tokens = text([wid[r][c][s][w] for w in inside])
                vals = [acts[r][c][s][w] for w in inside]
                top = max(vals)
                rows.append({"id": _activation_id(model_id, source_id, j, layer, s), "tokens": tokens, "index": str(j),
                             **common, "maxValue": top, "maxValueTokenIndex": vals.index(top), "minValue": min(vals),
                             "values": vals, "dataSource": None, "dataIndex": str(seq[r][c][s]), "dfaValues": [],
                             "dfaTargetIndex": None, "dfaMaxValue": None, "lossValues": [], "logitContributions": None,
                             "binMin": -1, "binMax": None, "binContains": -1,
                             "qualifyingTokenIndex": inside.index(before), "zIndices": None, "zValues": None,
                             "model_layer": layer, "layer_values": layer_acts[r][c][s]})
        max_act = max((values[r][c][0] for r in range(data.n_layers) if seq[r][c][0] >= 0), default=0.0)
        for row in rows:
            row["binMax"] = max_act
        activations += rows
        features.append({
            **common, "index": str(j), "maxActApprox": max_act, "hasVector": False, "vector": [], "vectorLabel": None,
            "vectorDefaultSteerStrength": 10, "hookName": None, "topkCosSimIndices": [], "topkCosSimValues": [],
            "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
            "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
            "correlated_features_indices": [], "correlated_features_pearson": [], "correlated_features_l1": [],
            "neg_str": text(near["bottom"][0][c]), "neg_values": near["bottom"][1][c],
            "pos_str": text(near["output"][0][c]), "pos_values": near["output"][1][c],
            "frac_nonzero": freq[c], "freq_hist_data_bar_heights": [], "freq_hist_data_bar_values": [],
            "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [], "decoder_weights_dist": [],
            "sourceSetName": set_name,
            # ours: the latent's distribution over layers, which no dashboard has
            "layer_distribution": p[c], "mean_layer": None if math.isnan(mean[c]) else mean[c],
            "layer_std": None if math.isnan(std[c]) else std[c], "layer_frac_nonzero": layer_freq[c],
            "model_layers": list(data.layers), "input_str": text(near["input"][0][c]),
            "input_values": near["input"][1][c],
        })
    return features, activations
