"""Tuned-lens transformations of the residual stream, and their exact inverse.

A tuned lens (Belrose et al. 2023, library ``tuned-lens``) holds one affine translator per
layer, ``f(h) = h + A h + b = (I + A) h + b``, trained so that the final norm and unembedding
applied to ``f(h)`` predict the model's own output. The MLSAE variant applies ``f`` to each
layer's residual vector before the SAE and the exact inverse ``(I + A)^-1 (y - b)`` to the
reconstruction, so that downstream losses are measured in the model's own basis.

Layer-index mapping (the one pitfall that silently breaks everything)
--------------------------------------------------------------------
``tuned_lens`` translator ``i`` was trained on ``hidden_states[i]``, the state *entering*
block ``i`` (transformers' convention: ``hidden_states[0]`` is the token embeddings). This
project's layer ``l`` is the *output* of block ``l``, which is ``hidden_states[l + 1]``.
Therefore:

* our layer ``l < L - 1``  ->  translator ``l + 1``;
* our layer ``L - 1`` (the last block's output) is already in the final layer's basis,
  so its map is the identity. (Translator 0, for the embeddings, is never used.)

:class:`ResidualLens` stores the maps already re-indexed to our layers, so callers never
have to think about this again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from mlsae.progress import bar
from tuned_lens import TunedLens

from mlsae.paths import atomic_dir

PRETRAINED_LENS_REPO = "AlignmentResearch/tuned-lens"  # a Hugging Face *space*


class ResidualLens(nn.Module):
    """Per-layer affine maps ``y = x M_l^T + b_l`` (``M_l = I + A_l``) with exact inverses.

    ``weight[l]`` is ``M_l`` [d, d] and ``bias[l]`` is ``b_l`` [d] for *our* layer ``l``
    (block outputs; see the module docstring for the mapping from tuned-lens indices).
    The inverse is a full linear solve against an LU factorisation kept in float64; it is
    never a per-dimension rescaling.
    """

    weight: Tensor  # [layer, d, d]
    bias: Tensor  # [layer, d]

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        if weight.ndim != 3 or weight.shape[1] != weight.shape[2] or bias.shape != weight.shape[:2]:
            raise ValueError(
                f"ResidualLens needs weight [layer, d, d] and bias [layer, d]; got {tuple(weight.shape)} "
                f"and {tuple(bias.shape)}"
            )
        self.register_buffer("weight", weight.detach().clone().float())
        self.register_buffer("bias", bias.detach().clone().float())
        lu, pivots = torch.linalg.lu_factor(weight.detach().double())
        self.register_buffer("_lu", lu, persistent=False)
        self.register_buffer("_pivots", pivots, persistent=False)

    @property
    def n_layers(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_tuned_lens(cls, lens: TunedLens) -> "ResidualLens":
        """Re-index a ``TunedLens`` with one translator per block to our block-output layers."""
        n_layers = len(lens)
        d = lens[0].weight.shape[0]
        eye = torch.eye(d)
        weight = torch.empty(n_layers, d, d)
        bias = torch.zeros(n_layers, d)
        with torch.no_grad():
            for layer in range(n_layers - 1):
                translator = lens[layer + 1]
                weight[layer] = eye + translator.weight.float()
                if translator.bias is not None:
                    bias[layer] = translator.bias.float()
            weight[n_layers - 1] = eye
        return cls(weight, bias)

    @classmethod
    def identity(cls, n_layers: int, d_model: int) -> "ResidualLens":
        return cls(torch.eye(d_model).expand(n_layers, d_model, d_model), torch.zeros(n_layers, d_model))

    def _check(self, x: Tensor, layers: list[int] | None) -> list[int]:
        layers = list(range(self.n_layers)) if layers is None else list(layers)
        if x.shape[0] != len(layers):
            raise ValueError(f"expected x of shape [layer={len(layers)}, ..., d]; got {tuple(x.shape)}")
        if x.shape[-1] != self.weight.shape[-1]:
            raise ValueError(f"lens d_model is {self.weight.shape[-1]}, activations have {x.shape[-1]}")
        bad = [l for l in layers if not 0 <= l < self.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range for a lens with {self.n_layers} layers")
        return layers

    def forward(self, x: Tensor, layers: list[int] | None = None) -> Tensor:
        """``x`` [layer, ..., d] in the model's basis -> [layer, ..., d] in the final layer's basis.

        Returns a new tensor; the clean activations are never modified in place.
        """
        layers = self._check(x, layers)
        out = torch.empty_like(x)
        for i, layer in enumerate(layers):
            w = self.weight[layer].to(x.dtype)
            out[i] = x[i] @ w.T + self.bias[layer].to(x.dtype)
        return out

    def inverse(self, y: Tensor, layers: list[int] | None = None) -> Tensor:
        """Exact inverse of :meth:`forward`: solves ``M_l h = y - b_l`` for every vector."""
        layers = self._check(y, layers)
        out = torch.empty_like(y)
        for i, layer in enumerate(layers):
            rhs = (y[i].double() - self.bias[layer].double()).reshape(-1, y.shape[-1]).T  # [d, n]
            h = torch.linalg.lu_solve(self._lu[layer], self._pivots[layer], rhs)
            out[i] = h.T.reshape(y[i].shape).to(y.dtype)
        return out


def sae_inputs(resid: Tensor, keep: Tensor, layers: list[int], lens: "ResidualLens | None" = None) -> Tensor:
    """The SAE's examples from one batch: the selected layers of ``resid`` [layer, batch, pos, d] at the
    kept (non-special) tokens -> [len(layers), token, d] in float32, mapped by ``lens`` when given.

    Always a new tensor: the clean residual stream is never modified.
    """
    x = resid[layers][:, keep].float()
    return lens(x, layers) if lens is not None else x


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
    else trained here once (on ``data``) and cached under ``$MLSAE_HOME/lenses``.

    Pythia models have pretrained lenses (``tuned-lens`` space); the offline zoo and any other
    model get a lens trained by :func:`train_tuned_lens`.
    """
    from mlsae.data import load_text, token_batches
    from mlsae.paths import mlsae_home, safe_name

    cached = mlsae_home() / "lenses" / f"{safe_name(model_name)}-{train_tokens}-s{seed}"
    if (cached / "params.pt").exists():
        return ResidualLens.from_tuned_lens(load_lens(model, cached))
    if not Path(model_name).exists() and "/" in str(model.config.name_or_path) and not Path(model.config.name_or_path).exists():
        try:
            return ResidualLens.from_tuned_lens(load_pretrained_lens(model))
        except LensNotAvailableError:
            pass  # fall through to training our own
    torch.manual_seed(seed)
    dataset = load_text(data, split="train", streaming=True)
    batches = token_batches(dataset, tokenizer, seq_len, batch_size, max_tokens=train_tokens)
    lens = train_tuned_lens(model, batches, progress=progress)
    save_lens(lens, cached)
    return ResidualLens.from_tuned_lens(lens)
