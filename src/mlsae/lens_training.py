"""Tuned lenses for this project: pretrained ones from the ``tuned-lens`` hub space, our own training
loop around ``tuned_lens.TunedLens`` (its training scripts need the removed ``torchdata.dataloader2``),
file I/O, and the cache that gives every model one lens (:func:`residual_lens_for`).

The transform itself, re-indexed to this project's layers, is :class:`mlsae.lens.ResidualLens`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tuned_lens import TunedLens

from mlsae.cache import cached, data_identity, model_identity, path_for
from mlsae.lens import ResidualLens
from mlsae.paths import atomic_dir
from mlsae.progress import bar
from mlsae.seeding import seed_everything

PRETRAINED_LENS_REPO = "AlignmentResearch/tuned-lens"  # a Hugging Face *space*


def load_pretrained_lens(model: nn.Module, resource_id: str | None = None) -> TunedLens:
    """A pretrained tuned lens from a local directory or the ``tuned-lens`` hub space.

    ``resource_id`` defaults to the model's hub id (e.g. ``EleutherAI/pythia-70m-deduped``).
    A lens that is neither local nor cached fails at once (no hanging download) with a
    message saying what to fetch.
    """
    from huggingface_hub import hf_hub_download

    resource_id = resource_id or model.config.name_or_path
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
    def __init__(self, resource_id: str):
        import huggingface_hub.constants as c

        super().__init__(
            f"No pretrained tuned lens for {resource_id!r} is on this machine (looked in a local "
            f"directory of that name and in the Hugging Face cache {c.HF_HUB_CACHE}). On a machine "
            f"with network, fetch it with\n"
            f"    hf download {PRETRAINED_LENS_REPO} --repo-type space --include 'lens/{resource_id}/*'\n"
            f"and copy the cache over (or pass the folder holding config.json and params.pt). "
            f"Alternatively train one here with mlsae.lens.train_tuned_lens."
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


def residual_lens_for(
    model_name: str,
    model: nn.Module,
    tokenizer,
    *,
    data: str = "offline",
    seed: int = 42,
    train_tokens: int = 400_000,
    seq_len: int = 128,
    batch_size: int = 16,
    progress: bool = True,
) -> ResidualLens:
    """The lens for ``model_name`` as a :class:`ResidualLens`: pretrained if one is on this machine,
    else trained here once (on ``data``) and cached under ``$MLSAE_HOME/lenses`` (:mod:`mlsae.cache`: keyed
    by the model's weights and the text, not their names).

    Pythia models have pretrained lenses (``tuned-lens`` space); the offline zoo and any other
    model get a lens trained by :func:`train_tuned_lens`.
    """
    from mlsae.data import load_text, token_batches
    from mlsae.paths import mlsae_home, safe_name

    folder = mlsae_home() / "lenses" / safe_name(model_name)
    fields = lens_fields(model_name, data=data, seed=seed, train_tokens=train_tokens, seq_len=seq_len, batch_size=batch_size)
    if not path_for(folder, "lens", fields).exists() and not Path(model_name).exists() \
            and "/" in str(model.config.name_or_path) and not Path(model.config.name_or_path).exists():
        try:
            return ResidualLens.from_tuned_lens(load_pretrained_lens(model))
        except LensNotAvailableError:
            pass  # fall through to training our own

    def train_here() -> ResidualLens:
        seed_everything(seed)
        batches = token_batches(load_text(data, split="train", streaming=True), tokenizer, seq_len, batch_size,
                                max_tokens=train_tokens)
        return ResidualLens.from_tuned_lens(train_tuned_lens(model, batches, progress=progress))

    return cached(folder, "lens", fields, ResidualLens.load, train_here)
