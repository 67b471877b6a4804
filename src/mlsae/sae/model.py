"""The multi-layer SAE (PAPER.md §1): one TopK sparse autoencoder trained on every layer's residual stream.

A batch of T tokens from L layers is L*T examples; the layer index is never an input. Each vector
is standardised (centred over its d entries, divided by its std), encoded as
``z = TopK(W_enc (x_std - b_pre))`` (ReLU of the k largest, no encoder bias), decoded as
``x_hat_std = W_dec z + b_pre`` and mapped back to the input space. A single-layer baseline SAE is
the same class with one layer.

The loss lives in the standardised space: the mean over layers of each layer's FVU plus
``auxk_coef`` times AuxK (the top ``k_aux`` dead latents reconstruct the residual error).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelHubMixin
from torch import Tensor, nn

from mlsae.sae.config import PAPER_TOKENS_PER_FORWARD, PAPER_TOKENS_PER_STEP, SAEConfig
from mlsae.sae.io import (
    MODEL_CARD_TEMPLATE,
    check_sae_files,
    local_folder,
    model_card_body,
    read_provenance,
    read_sae,
    write_sae,
)
from mlsae.sae.kernels import sparse_decode, topk_encode

EPS = 1e-5  # standardisation




@dataclass
class SAEOutput:
    """What one forward pass gives: the reconstruction, the top-k latents, the loss and its parts."""
    x_hat: Tensor  # [layer, token, d] reconstruction in the input space
    top_values: Tensor  # [layer, token, k] post-ReLU, unordered
    top_indices: Tensor  # [layer, token, k]
    loss: Tensor  # [] mean layer FVU + auxk_coef * aux_loss
    fvu_per_layer: Tensor  # [layer] detached, standardised space
    aux_loss: Tensor  # [] AuxK (0 outside training or with no dead latents)


def standardize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre each vector over its last dim and divide by its std + eps -> (x_std, mean, scale).

    ``x = x_std * scale + mean``. The unbiased std matches the released MLSAEs.
    """
    mean = x.mean(-1, keepdim=True)
    x = x - mean
    scale = x.std(-1, keepdim=True) + EPS
    return x / scale, mean, scale


# Sums a tensor over the data-parallel ranks (mlsae.training.distributed.Group.sum); None in one process.
Reduce = Callable[[Tensor], Tensor]


def _global_spread(x: Tensor, dim: int, reduce: Reduce) -> Tensor:
    """sum ||x - mean(x)||^2 over ``dim`` and the last dim, the mean and the sum taken over every rank's x."""
    n = reduce(x.new_tensor(float(x.shape[dim])))
    mean = reduce(x.sum(dim, keepdim=True)) / n
    return reduce((x - mean).pow(2).sum((dim, -1)))


def layer_fvu(x: Tensor, x_hat: Tensor, reduce: Reduce | None = None) -> Tensor:
    """FVU per layer: sum ||x - x_hat||^2 / sum ||x - mean_tokens(x)||^2. x, x_hat [L, T, d] -> [L].

    With ``reduce`` (data-parallel training) the variance is the global batch's and the result is this
    rank's share: the shares of all ranks sum to the FVU of the whole batch.
    """
    x, x_hat = _at_least_fp32(x), _at_least_fp32(x_hat)
    sse = (x_hat - x).pow(2).sum((1, 2))
    var = (x - x.mean(1, keepdim=True)).pow(2).sum((1, 2)) if reduce is None else _global_spread(x, 1, reduce)
    return sse / var.clamp_min(torch.finfo(var.dtype).tiny)


def aux_fvu(e: Tensor, e_hat: Tensor, reduce: Reduce | None = None) -> Tensor:
    """AuxK: ||e - e_hat||^2 normalised by the variance of the error e (over all examples). [n, d] -> [].
    With ``reduce``, this rank's share of the global batch's value (as :func:`layer_fvu`)."""
    e, e_hat = _at_least_fp32(e), _at_least_fp32(e_hat)
    var = (e - e.mean(0)).pow(2).sum() if reduce is None else _global_spread(e, 0, reduce)
    return (e_hat - e).pow(2).sum() / var.clamp_min(torch.finfo(var.dtype).tiny)


def _rowwise_dot(a: Tensor, b: Tensor, chunk: int = 1024) -> Tensor:
    """[m, d] x [m, d] -> [m]; chunked so the product temporaries stay in cache (about 4x faster)."""
    out = a.new_empty(a.shape[0])
    for i in range(0, a.shape[0], chunk):
        torch.linalg.vecdot(a[i : i + chunk], b[i : i + chunk], dim=1, out=out[i : i + chunk])
    return out


def _at_least_fp32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 200, tol: float = 1e-7) -> Tensor:
    """Weiszfeld iterations for argmin_m sum_i ||points_i - m|| (points [n, d] -> [d]), in float64."""
    p = points.double()
    med = p.mean(0)
    for _ in range(max_iter):
        w = 1 / torch.linalg.vector_norm(p - med, dim=1).clamp_min(1e-12)  # [n]
        new = (w[:, None] * p).sum(0) / w.sum()
        done = torch.linalg.vector_norm(new - med) <= tol * (1 + torch.linalg.vector_norm(med))
        med = new
        if done:
            break
    return med.to(points.dtype)


class MLSAE(nn.Module, ModelHubMixin, library_name="mlsae", paper_url="https://arxiv.org/abs/2409.04185",
            tags=["sparse-autoencoder", "interpretability", "multi-layer-sae"],
            model_card_template=MODEL_CARD_TEMPLATE):
    """TopK SAE over the residual vectors of every layer (see module docstring).

    Parameters: ``W_enc`` [n_latents, d], ``W_dec_rows`` [n_latents, d] and ``b_pre`` [d]; buffer
    ``tokens_since_fired`` [n_latents]. The decoder ``W_dec`` [d, n_latents] (unit-norm columns) is
    the view ``W_dec_rows.T``: stored row-major so that each latent's decoder vector is contiguous,
    which ``embedding_bag`` and fused Adam need to be fast. Its gradient lives on ``W_dec_rows``.

    The Hub's ``ModelHubMixin`` gives ``from_pretrained(repo, revision=...)``, ``push_to_hub`` and the model card's
    metadata; the files are ours (:mod:`mlsae.sae.io`), so the released ``tim-lawson/mlsae-*`` layouts load too.
    """

    ARCHITECTURE = "mlsae"  # what config.json says (SAEConfig has no field for it; a crosscoder's does)
    tokens_since_fired: Tensor  # a registered buffer (nn.Module's attribute lookup does not say so)
    provenance: dict | None  # what a loaded SAE says it was trained on (provenance.json); saved with it again

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        W = torch.randn(cfg.n_latents, cfg.input_width, device=device, dtype=dtype)  # d_model for the MLSAE
        W /= torch.linalg.vector_norm(W, dim=1, keepdim=True)
        self.W_enc = nn.Parameter(W.clone())  # [m, d]
        self.W_dec_rows = nn.Parameter(W.clone())  # [m, d]; W_dec = W_enc.T at init
        self.b_pre = nn.Parameter(torch.zeros(cfg.input_width, device=device, dtype=dtype))
        counter = torch.zeros(cfg.n_latents, dtype=torch.long, device=device)
        self.register_buffer("tokens_since_fired", counter)  # [m], saved with the model
        self.chunk_rows: int | None = None  # rows per pre-activation chunk; None: kernels.CHUNK_ELEMS
        self.provenance = None

    @property
    def W_dec(self) -> Tensor:
        """[d, n_latents] decoder, a view of ``W_dec_rows``."""
        return self.W_dec_rows.t()

    # --- encoding and decoding -------------------------------------------------------------------

    def _standardize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = x.to(self.W_enc.dtype)
        if self.cfg.standardize:
            return standardize(x)
        return x, x.new_zeros(()), x.new_ones(())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latents of input-space vectors x [n, d] -> (values [n, k] post-ReLU, indices [n, k])."""
        x_std, _, _ = self._standardize(x)
        return self._encode_std(x_std)

    def _encode_std(self, x_std: Tensor) -> tuple[Tensor, Tensor]:
        values, indices, _, _ = topk_encode(x_std, self.b_pre, self.W_enc, self.cfg.k, chunk_rows=self.chunk_rows)
        return values.relu(), indices

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """Reconstruction in the STANDARDISED space, ``W_dec z + b_pre`` -> [n, d].

        Map back with the input's (mean, scale) from ``standardize``, or use ``reconstruct``.
        """
        return sparse_decode(values, indices, self.W_dec_rows) + self.b_pre

    def reconstruct(self, x: Tensor) -> Tensor:
        """Input-space reconstruction of x [..., d] -> [..., d] (the layer index plays no role)."""
        shape = x.shape
        x_std, mean, scale = self._standardize(x.reshape(-1, shape[-1]))
        x_hat = self.decode(*self._encode_std(x_std)) * scale + mean
        return x_hat.reshape(shape)

    # --- training --------------------------------------------------------------------------------

    def dead_mask(self) -> Tensor:
        """[n_latents] bool: latents unfired for at least ``dead_tokens`` tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    def forward(self, x: Tensor, reduce: Reduce | None = None) -> SAEOutput:
        """x [layer, token, d] -> SAEOutput. In training mode also computes AuxK and advances the
        dead-latent counters by T tokens (the dead set used is the one from before this batch).

        ``reduce`` (data-parallel training, :mod:`mlsae.training.distributed`) sums a tensor over the ranks: the
        losses become this rank's share of the global batch's, and the dead-latent counters advance by
        the global token count, a latent that fired on any rank counting as fired."""
        if x.ndim != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"expected x of shape [layer, token, d_model={self.cfg.d_model}], got {tuple(x.shape)}; "
                "for a single layer pass x[None]"
            )
        L, T, d = x.shape
        x_std, mean, scale = self._standardize(x)  # [L, T, d], [L, T, 1] x2
        flat = x_std.reshape(L * T, d)
        cfg = self.cfg
        use_aux = self.training and cfg.k_aux > 0 and cfg.auxk_coef > 0
        dead = torch.nonzero(self.dead_mask()).squeeze(1) if use_aux else None  # [n_dead]
        values, indices, aux_values, aux_indices = topk_encode(
            flat, self.b_pre, self.W_enc, cfg.k, dead, cfg.k_aux, self.chunk_rows)
        values = values.relu()
        x_hat_std = self.decode(values, indices)  # [L*T, d]

        fvu = layer_fvu(x_std, x_hat_std.view(L, T, d), reduce)
        aux_loss = (self._aux_loss(flat, x_hat_std, aux_values, aux_indices, dead, reduce) if dead is not None
                    else fvu.new_zeros(()))
        loss = fvu.mean() + cfg.auxk_coef * aux_loss
        if self.training:
            self._count_dead(values, indices, n_tokens=T, reduce=reduce)
        return SAEOutput(
            x_hat=x_hat_std.view(L, T, d) * scale + mean,
            top_values=values.view(L, T, -1),
            top_indices=indices.view(L, T, -1),
            loss=loss,
            fvu_per_layer=fvu.detach(),
            aux_loss=aux_loss,
        )

    def _aux_loss(self, x_std: Tensor, x_hat_std: Tensor, aux_values: Tensor, aux_indices: Tensor, dead: Tensor,
                  reduce: Reduce | None = None) -> Tensor:
        """The top k_aux dead latents (``aux_*`` [n, k_aux] from :func:`topk_encode`, indices into ``dead``)
        reconstruct the (detached) error x_std - x_hat_std: a sparse decode over the dead decoder rows
        (a small contiguous copy, which the sampled products read much faster than the whole decoder)."""
        if aux_indices.shape[1] == 0:  # no dead latents
            return _at_least_fp32(x_std.new_zeros(()))
        e_hat = sparse_decode(aux_values.relu(), aux_indices, self.W_dec_rows.index_select(0, dead))  # [n, d]
        e = (x_std - x_hat_std).detach()
        return aux_fvu(e, e_hat, reduce)

    @torch.no_grad()
    def _count_dead(self, values: Tensor, indices: Tensor, n_tokens: int, reduce: Reduce | None = None) -> None:
        fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        fired[indices[values > self.cfg.dead_threshold]] = True
        if reduce is not None:  # fired on any rank; the global batch's tokens
            fired = reduce(fired.to(torch.int32)) > 0
            n_tokens = int(reduce(torch.tensor(n_tokens, device=fired.device)))
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    def _example_rows(self, x: Tensor) -> Tensor:
        """A batch as the encoder's examples, standardised: x [..., d] -> [n, d] (a crosscoder: one wider row per
        token). The initialisations below read their batch through this."""
        return self._standardize(x.reshape(-1, x.shape[-1]))[0]

    @torch.no_grad()
    def init_b_pre_(self, x: Tensor) -> None:
        """Set b_pre to the geometric median of a batch x [..., d], in the standardised space."""
        self.b_pre.copy_(geometric_median(self._example_rows(x)))

    @torch.no_grad()
    def fit_encoder_scale_(self, x: Tensor) -> float:
        """Scale ``W_enc`` by the least-squares factor that makes a batch x [..., d] best reconstructed.

        With unit-norm encoder rows, the k top pre-activations of random directions each add ~3 units
        along nearly orthogonal decoder vectors, so the initial reconstruction overshoots by about
        ``sqrt(k / d)`` times (zoo-s, d = 64, k = 256: FVU 58 over the first steps), which a short run
        does not recover from.
        ReLU and top-k are positively homogeneous, so scaling the encoder scales the latent part of
        the reconstruction exactly; call after :meth:`init_b_pre_`. Returns the factor.
        """
        x_std = self._example_rows(x)
        part = self.decode(*self._encode_std(x_std)) - self.b_pre  # [n, d]: W_dec z
        scale = float((part * (x_std - self.b_pre)).sum() / part.pow(2).sum().clamp_min(1e-12))
        scale = max(scale, 1e-3)  # a non-positive fit would switch every latent off
        self.W_enc.mul_(scale)
        return scale

    @torch.no_grad()
    def project_decoder_grads_(self) -> None:
        """Remove from each decoder column's gradient its component along that column (after backward)."""
        W, G = self.W_dec_rows, self.W_dec_rows.grad  # [m, d]
        if G is None:
            return
        coef = _rowwise_dot(G, W) / _rowwise_dot(W, W)  # [m]
        G.addcmul_(coef.neg().unsqueeze(1), W)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Renormalise decoder columns to unit norm (after each optimiser step)."""
        W = self.W_dec_rows  # [m, d]
        W.div_(torch.linalg.vector_norm(W, dim=1, keepdim=True).clamp_min(1e-12))

    # --- checkpoints ---------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, provenance: dict | None = None, *,  # type: ignore[override]
                        push_to_hub: bool = False, repo_id: str | None = None, config: dict | None = None,
                        model_card_kwargs: dict | None = None, **push_to_hub_kwargs) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and the model card ``README.md`` into ``save_directory``
        atomically, with ``provenance`` (what it was trained on, :mod:`mlsae.training.provenance`; default: the
        provenance it was loaded with) also ``provenance.json``; ``push_to_hub=True`` then uploads the folder to
        ``repo_id`` (the mixin's ``push_to_hub``). The mixin's own ``save_pretrained`` is not used because it deletes
        ``config.json`` before writing, which would leave a broken folder if the write failed."""
        if config is not None:
            raise ValueError("config: an MLSAE's config.json is its SAEConfig (sae.cfg); it takes no other")
        provenance = self.provenance if provenance is None else provenance
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_pre": self.b_pre,
                   "tokens_since_fired": self.tokens_since_fired}
        card = self.generate_model_card(provenance=provenance, **(model_card_kwargs or {}))
        write_sae(save_directory, self.cfg, tensors, provenance, card=str(card))
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        self.save_pretrained(save_directory)

    def generate_model_card(self, *args, provenance: dict | None = None, **kwargs) -> ModelCard:
        """The Hub card: the mixin's metadata (``library_name: mlsae``, tags, paper) above our table of what the SAE
        is and was trained on (:func:`mlsae.sae.io.model_card_body`)."""
        body = model_card_body(self.cfg, self.provenance if provenance is None else provenance)
        return super().generate_model_card(*args, body=body, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        device: torch.device | str | None = None,
        tokens_per_step: int = PAPER_TOKENS_PER_STEP,
        tokens_per_forward: int = PAPER_TOKENS_PER_FORWARD,
        **hub_kwargs,
    ) -> MLSAE:
        """Load a directory written by ``save_pretrained``, a released MLSAE (hub layout), or a Hugging Face hub id
        (``org/name``) at ``revision`` (a branch, tag or commit; the cache first, downloaded unless offline);
        ``hub_kwargs``: the mixin's ``cache_dir``, ``force_download``, ``local_files_only``, ``token``.

        The layout is detected from ``config.json`` (:func:`mlsae.sae.io.released_layout`). Released checkpoints count dead
        latents in steps: ``dead_tokens = dead_steps_threshold * tokens_per_step`` and
        ``tokens_since_fired = last_nonzero * tokens_per_forward`` (the paper's run: 64 sequences of 2048
        tokens per step, one sequence per forward; a ``-tfm`` checkpoint states its own). ``auxk: null`` becomes
        ``k_aux=0``. Only the SAE's tensors are read, so a ``-tfm`` file's transformer weights stay on disk.
        """
        # The folder is found first, so a missing local folder or an uncached repo fails with our message (the
        # mixin would try to download config.json, then raise the hub library's error).
        folder = check_sae_files(local_folder(pretrained_model_name_or_path, revision=revision, **hub_kwargs))
        return super().from_pretrained(folder, device=device, tokens_per_step=tokens_per_step,
                                       tokens_per_forward=tokens_per_forward)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, device=None, tokens_per_step: int = PAPER_TOKENS_PER_STEP,
                         tokens_per_forward: int = PAPER_TOKENS_PER_FORWARD, **_) -> MLSAE:
        """The mixin's loading hook: ``model_id`` is the local folder :meth:`from_pretrained` resolved."""
        cfg, tensors = read_sae(model_id, tokens_per_step, tokens_per_forward)
        kind = getattr(cfg, "architecture", "mlsae")
        if kind != getattr(cls, "ARCHITECTURE", "mlsae"):
            raise ValueError(f"{model_id} holds a {kind}, not a {cls.ARCHITECTURE}: load it with "
                             "mlsae.sae.architectures.load_sae(path), which picks the class")
        sae = cls(cfg, device="meta").to_empty(device=device or "cpu")  # skip the random init
        with torch.no_grad():
            sae.W_enc.copy_(tensors["W_enc"])
            sae.W_dec.copy_(tensors["W_dec"])
            sae.b_pre.copy_(tensors["b_pre"])
            sae.tokens_since_fired.zero_()
            if "tokens_since_fired" in tensors:
                sae.tokens_since_fired.copy_(tensors["tokens_since_fired"])
        sae.provenance = read_provenance(model_id) or None
        return sae


def dense_reference_loss(
    sae: MLSAE, x: Tensor, dead_mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The straightforward dense implementation of ``MLSAE.forward``'s training loss.

    Dense latents [L*T, n_latents] via torch.topk + scatter, a dense decoder matmul, dense AuxK,
    plain autograd. For tests and the benchmark only. x [L, T, d] -> (loss, fvu [L], aux_loss).
    ``dead_mask`` defaults to ``sae.dead_mask()`` (call this before ``sae.forward`` updates it).
    """
    cfg = sae.cfg
    L, T, d = x.shape
    x_std, _, _ = sae._standardize(x)
    flat = x_std.reshape(L * T, d)
    pre = (flat - sae.b_pre) @ sae.W_enc.t()  # [n, m]
    v, i = pre.topk(cfg.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, i, v.relu())  # [n, m]
    x_hat = z @ sae.W_dec.t() + sae.b_pre  # [n, d]
    fvu = layer_fvu(x_std, x_hat.view(L, T, d))
    aux = fvu.new_zeros(())
    dead_mask = sae.dead_mask() if dead_mask is None else dead_mask
    n_dead = int(dead_mask.sum())
    if n_dead and cfg.k_aux > 0 and cfg.auxk_coef > 0:
        av, ai = pre.masked_fill(~dead_mask, -math.inf).topk(min(cfg.k_aux, n_dead), dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, ai, av.relu())  # [n, m]
        aux = aux_fvu((flat - x_hat).detach(), z_aux @ sae.W_dec.t())
    return fvu.mean() + cfg.auxk_coef * aux, fvu.detach(), aux
