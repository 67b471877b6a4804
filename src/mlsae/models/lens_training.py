"""Tuned lenses for this project: pretrained ones from the ``tuned-lens`` hub space, our own training
loop around ``tuned_lens.TunedLens`` (its training scripts need the removed ``torchdata.dataloader2``),
file I/O, and the cache that gives every model one lens (:func:`residual_lens_for`).

The transform itself, re-indexed to this project's layers, is :class:`mlsae.models.lens.ResidualLens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tuned_lens import TunedLens

from mlsae.core import hub
from mlsae.core.cache import cached
from mlsae.core.paths import atomic_dir, mlsae_home, safe_name
from mlsae.core.progress import bar
from mlsae.core.seeding import seed_everything
from mlsae.data.sources import data_identity, load_text
from mlsae.data.tokens import token_batches
from mlsae.models.lens import ResidualLens
from mlsae.models.registry import model_identity, resolve_model

PRETRAINED_LENS_REPO = "AlignmentResearch/tuned-lens"  # a Hugging Face *space*


def load_pretrained_lens(model: nn.Module, resource_id: str | None = None) -> TunedLens:
    """A pretrained tuned lens from a local directory or the ``tuned-lens`` hub space.

    ``resource_id`` defaults to the model's hub id (e.g. ``EleutherAI/pythia-70m-deduped``).
    A lens that is neither local nor cached fails at once (no hanging download) with a
    message saying what to fetch.
    """
    from huggingface_hub import hf_hub_download  # heavy: loaded where used

    config: Any = model.config  # a transformers PretrainedConfig
    resource_id = resource_id or str(config.name_or_path)
    local = Path(resource_id)
    if (local / "config.json").exists() and (local / "params.pt").exists():
        return TunedLens.from_model_and_pretrained(model, lens_resource_id=str(local))
    paths = []
    for name in ("config.json", "params.pt"):
        try:
            paths.append(
                hf_hub_download(
                    PRETRAINED_LENS_REPO,
                    name,
                    subfolder=f"lens/{resource_id}",
                    repo_type="space",
                    local_files_only=True,
                )
            )
        except Exception as err:  # not in the local cache
            raise LensNotAvailableError(resource_id) from err
    return TunedLens.from_model_and_pretrained(model, lens_resource_id=str(Path(paths[0]).parent))


class LensNotAvailableError(RuntimeError):
    """A pretrained tuned lens was asked for and is not on this machine (the message says how to fetch it)."""
    def __init__(self, resource_id: str):
        import huggingface_hub.constants as c  # heavy: loaded where used

        super().__init__(
            f"No pretrained tuned lens for {resource_id!r} is on this machine (looked in a local "
            f"directory of that name and in the Hugging Face cache {c.HF_HUB_CACHE}). On a machine "
            f"with network, fetch it with\n"
            f"    hf download {PRETRAINED_LENS_REPO} --repo-type space --include 'lens/{resource_id}/*'\n"
            f"and copy the cache over (or pass the folder holding config.json and params.pt). "
            f"Alternatively train one here with mlsae.models.lens.train_tuned_lens."
        )


def train_tuned_lens(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    keep: Tensor | None = None,
    progress: bool = True,
) -> TunedLens:
    """Train a ``TunedLens`` for any causal LM with the project's own loop.

    ``batches`` yields ``input_ids`` [batch, pos]. Loss: for every translator ``i``, the KL
    divergence ``KL(p_final || p_lens_i)`` between the model's own next-token distribution and
    the lens's prediction from ``hidden_states[i]``, averaged over tokens. The model is frozen.
    Translators start at zero (the identity map), as in ``tuned-lens``.
    """
    lens = TunedLens.from_model(model)
    lens.to(next(model.parameters()).device)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lens.unembed.parameters():
        p.requires_grad_(False)
    params = list(lens.layer_translators.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for input_ids in bar(batches, desc="tuned lens", progress=progress):
        with torch.no_grad():
            out = model(input_ids, output_hidden_states=True)
            target = F.log_softmax(out.logits.float(), dim=-1).flatten(0, 1)  # [token, vocab]
        opt.zero_grad(set_to_none=True)
        for i in range(len(lens)):  # one translator at a time: never [layer, token, vocab]
            logits = lens(out.hidden_states[i], i).float().flatten(0, 1)
            kl = F.kl_div(F.log_softmax(logits, dim=-1), target, log_target=True, reduction="batchmean")
            (kl / len(lens)).backward()
        opt.step()
    lens.eval()
    return lens


def save_lens(lens: TunedLens, path: Path) -> Path:
    """Save in the ``tuned-lens`` layout (config.json + params.pt), atomically."""
    with atomic_dir(Path(path)) as tmp:
        lens.save(tmp)
    return Path(path)


def load_lens(model: nn.Module, path: Path) -> TunedLens:
    """A tuned lens for ``model`` from a folder saved by ``TunedLens.save`` (ours or the space's layout)."""
    return TunedLens.from_model_and_pretrained(model, lens_resource_id=str(path))


def lens_kl_per_layer(model: nn.Module, lens: TunedLens, input_ids: Tensor) -> Tensor:
    """Mean ``KL(p_final || p_lens_i)`` per translator ``i`` [layer]: how good the lens is."""
    with torch.no_grad():
        out = model(input_ids, output_hidden_states=True)
        target = F.log_softmax(out.logits.float(), dim=-1).flatten(0, 1)
        kls = []
        for i in range(len(lens)):
            logits = lens(out.hidden_states[i], i).float().flatten(0, 1)
            kls.append(F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="batchmean"))
    return torch.stack(kls)


def lens_fields(model_name: str, *, data: str, seed: int, train_tokens: int, seq_len: int = 128,
                batch_size: int = 16) -> dict:
    """What a lens trained here depends on (its cache key): the model's weights, the text and the budget."""
    return dict(model=model_identity(model_name), data=data_identity(data), seed=seed, train_tokens=train_tokens,
                seq_len=seq_len, batch_size=batch_size)


def _pretrained_lens(model_name: str) -> tuple[Path, str] | None:
    """The folder of the tuned-lens space's lens for this hub model in the local hub cache (``hf download
    ... --repo-type space``) and its identity ``AlignmentResearch/tuned-lens@<commit>:lens/<hub id>``, or None.
    Reads the cache's own layout only, so it is as cheap as :func:`mlsae.models.registry.model_identity` and never
    touches the network."""
    source = resolve_model(model_name)
    snapshot = hub.cached_snapshot(PRETRAINED_LENS_REPO, "space") if source.kind == "hub" else None
    if snapshot is None:
        return None
    for repo_id in (source.repo_id_or_path, *source.aliases):
        folder = snapshot[0] / "lens" / repo_id
        if all((folder / name).is_file() for name in ("config.json", "params.pt")):
            return folder, f"{PRETRAINED_LENS_REPO}@{snapshot[1]}:lens/{repo_id}"
    return None


def pretrained_lens_identity(model_name: str) -> str | None:
    """What names the pretrained lens a run with this model uses (:func:`_pretrained_lens`), or None."""
    found = _pretrained_lens(model_name)
    return found[1] if found else None


def lens_record(model_name: str, **lens_kwargs) -> dict:
    """Which lens a run with these settings uses, for its provenance and cache key: the pretrained one with its
    identity, or one trained here with what it was trained on (:func:`lens_fields`)."""
    identity = pretrained_lens_identity(model_name)
    if identity is not None:
        return {"source": "pretrained", "identity": identity}
    return {"source": "trained here", **lens_fields(model_name, **lens_kwargs)}


def residual_lens_for(
    model_name: str,
    model: nn.Module,
    tokenizer,
    *,
    data: str,
    seed: int,
    train_tokens: int,
    seq_len: int = 128,
    batch_size: int = 16,
    progress: bool = True,
) -> ResidualLens:
    """The lens for ``model_name`` as a :class:`ResidualLens`: the pretrained one (``tuned-lens`` space, Pythia
    and GPT-2) whenever it is on this machine, else one trained here once (on ``data``) and cached under
    ``$MLSAE_HOME/lenses`` (:mod:`mlsae.core.cache`: keyed by the model's weights and the text, not their names).
    A hub model without a pretrained lens here says so before training one. :func:`lens_record` says which.
    """
    pretrained = _pretrained_lens(model_name)
    if pretrained is not None:
        return ResidualLens.from_tuned_lens(load_pretrained_lens(model, str(pretrained[0])))
    folder = mlsae_home() / "lenses" / safe_name(model_name)
    fields = lens_fields(model_name, data=data, seed=seed, train_tokens=train_tokens, seq_len=seq_len, batch_size=batch_size)

    def train_here() -> ResidualLens:
        source = resolve_model(model_name)
        if source.kind == "hub":
            print(f"no pretrained tuned lens for {source.repo_id_or_path} on this machine (fetch it with: hf download "
                  f"{PRETRAINED_LENS_REPO} --repo-type space --include 'lens/{source.repo_id_or_path}/*'); training "
                  f"one here on {data} ({train_tokens:,} tokens), cached for later runs", flush=True)
        seed_everything(seed)
        batches = token_batches(load_text(data, split="train", streaming=True), tokenizer, seq_len, batch_size,
                                max_tokens=train_tokens)
        return ResidualLens.from_tuned_lens(train_tuned_lens(model, batches, progress=progress))

    return cached(folder, "lens", fields, ResidualLens.load, train_here)
