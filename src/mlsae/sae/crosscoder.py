"""The acausal crosscoder (Lindsey et al. 2024, *Sparse Crosscoders*) on the MLSAE's own inputs.

One example is one **token**: its standardised residual vectors at all L layers, ``x[l]`` [layer, d_model]
(each vector centred and scaled as the MLSAE's, PAPER.md §1). With ``W_enc[l]`` [n_latents, d_model] and
``W_dec[l]`` [d_model, n_latents] per layer::

    f        = act(sum_l W_enc[l] x[l] + b_enc)          [n_latents], one code per token
    x_hat[l] = W_dec[l] f + b_dec[l]                     for every layer l

so each latent has a decoder direction per layer. The encoder bias is tied to the decoder's,
``b_enc = -sum_l W_enc[l] b_dec[l]`` (as in the MLSAE and Gao et al.'s TopK SAE, where the input is centred
by the decoder bias before encoding). Written on the concatenated vector ``x_cat`` [layer * d_model], the
crosscoder is then the MLSAE's kernel (:func:`~mlsae.sae.kernels.topk_encode`,
:func:`~mlsae.sae.kernels.sparse_decode`) on one ``L * d``-wide example per token instead of L ``d``-wide
ones: the same multiply-adds per token as an MLSAE with as many latents, and never a dense
``[token, n_latents]`` with top-k.

Sparsity (``cfg.sparsity``):

* ``"topk"`` (default): ``act`` = ReLU of the k largest, k per token for every layer at once (so at an equal
  budget of active latents summed over layers, a crosscoder over L layers has k = L x the MLSAE's k); AuxK on
  the dead latents as the MLSAE's. Each latent's concatenated decoder vector has unit norm
  (``sum_l ||W_dec[l, i]||^2 = 1``), which leaves its split over the layers free.
* ``"l1"``: ``act`` = ReLU and the penalty ``l1_coef * mean_tokens sum_i f_i sum_l ||W_dec[l, i]||`` (the
  paper's), the decoder unconstrained. The codes are dense ``[token, n_latents]``: an option, not the default.

Loss: the MLSAE's, the mean over layers of each layer's FVU in the standardised space, + ``auxk_coef`` x AuxK
(+ the L1 penalty).

Which layers a latent uses: its decoder-norm distribution ``p_l(i) = ||W_dec[l, i]|| / sum_l' ||W_dec[l', i]||``
(:meth:`Crosscoder.layer_distribution`). It is the same for every token: a crosscoder's per-token
distribution over layers *is* this, so its "per-token vs aggregated" variance ratio is 1 by construction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlsae.sae.config import CrosscoderConfig
from mlsae.sae.kernels import sparse_decode, topk_encode
from mlsae.sae.model import MLSAE, Reduce, SAEOutput, aux_fvu, layer_fvu


class Crosscoder(MLSAE):
    """Acausal crosscoder over ``cfg.layers`` (see module docstring). Parameters as the MLSAE's, one example
    wider: ``W_enc`` [n_latents, layer * d], ``W_dec_rows`` [n_latents, layer * d] (latent i's decoder vector at
    layer l is ``W_dec_rows[i, l*d:(l+1)*d]``), ``b_pre`` [layer * d] (the decoder bias ``b_dec``).

    ``encode``, ``reconstruct`` and ``forward`` take ``[layer, token, d_model]``; ``encode`` gives one code per
    token, ``[token, k]``. Saved and loaded as the MLSAE (its ``config.json`` says ``architecture: crosscoder``;
    :func:`mlsae.sae.architectures.load_sae` picks the class).
    """

    ARCHITECTURE = "crosscoder"
    cfg: CrosscoderConfig

    def __init__(self, cfg: CrosscoderConfig, *, device: torch.device | str | None = None, dtype=torch.float32):
        if not isinstance(cfg, CrosscoderConfig):
            raise TypeError(f"Crosscoder needs a CrosscoderConfig, got {type(cfg).__name__}; build an MLSAE for it")
        super().__init__(cfg, device=device, dtype=dtype)

    # --- shapes -----------------------------------------------------------------------------------

    def _check(self, x: Tensor) -> tuple[int, int, int]:
        cfg = self.cfg
        if x.ndim != 3 or x.shape[0] != cfg.n_layers or x.shape[-1] != cfg.d_model:
            raise ValueError(f"a crosscoder over {cfg.n_layers} layers (layers {cfg.layers}) takes x of shape "
                             f"[layer={cfg.n_layers}, token, d_model={cfg.d_model}], got {tuple(x.shape)}: pass the "
                             "vectors of every layer it was trained on, for the same tokens")
        return x.shape[0], x.shape[1], x.shape[2]

    def _examples(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [layer, token, d] -> (x_cat [token, layer * d] standardised per vector, mean, scale [layer, token, 1])."""
        L, T, d = self._check(x)
        x_std, mean, scale = self._standardize(x)
        return x_std.transpose(0, 1).reshape(T, L * d), mean, scale

    def _per_layer(self, cat: Tensor) -> Tensor:
        """[token, layer * d] -> [layer, token, d] (a view)."""
        return cat.view(cat.shape[0], self.cfg.n_layers, self.cfg.d_model).transpose(0, 1)

    # --- encoding and decoding -----------------------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One code per token: x [layer, token, d] -> (values [token, k] post-ReLU, indices [token, k]); under
        ``sparsity='l1'`` every latent, [token, n_latents]."""
        return self._encode_std(self._examples(x)[0])

    def _encode_std(self, x_cat: Tensor) -> tuple[Tensor, Tensor]:
        if self.cfg.sparsity == "l1":
            f = ((x_cat - self.b_pre) @ self.W_enc.t()).relu()  # [token, n_latents]: the L1 option is dense
            return f, torch.arange(f.shape[1], device=f.device).expand_as(f)
        return super()._encode_std(x_cat)

    def decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """Reconstruction of every layer in the STANDARDISED space, concatenated -> [token, layer * d]."""
        if self.cfg.sparsity == "l1":
            return values @ self.W_dec_rows + self.b_pre
        return sparse_decode(values, indices, self.W_dec_rows) + self.b_pre

    def reconstruct(self, x: Tensor) -> Tensor:
        """Input-space reconstruction of x [layer, token, d] -> [layer, token, d]."""
        cat, mean, scale = self._examples(x)
        return self._per_layer(self.decode(*self._encode_std(cat))) * scale + mean

    # --- training ------------------------------------------------------------------------------------

    def forward(self, x: Tensor, reduce: Reduce | None = None) -> SAEOutput:
        """x [layer, token, d] -> SAEOutput (as :meth:`MLSAE.forward`; ``top_values``/``top_indices`` are the one
        code per token, broadcast to [layer, token, k] without a copy, since every layer reads it)."""
        L, T, d = self._check(x)
        cfg = self.cfg
        cat, mean, scale = self._examples(x)  # [T, L*d]
        use_aux = self.training and cfg.sparsity == "topk" and cfg.k_aux > 0 and cfg.auxk_coef > 0
        dead = torch.nonzero(self.dead_mask()).squeeze(1) if use_aux else None  # [n_dead]
        if cfg.sparsity == "topk":
            values, indices, aux_values, aux_indices = topk_encode(
                cat, self.b_pre, self.W_enc, cfg.k, dead, cfg.k_aux, self.chunk_rows)
            values = values.relu()
        else:
            (values, indices), aux_values, aux_indices = self._encode_std(cat), None, None
        x_hat_cat = self.decode(values, indices)  # [T, L*d]
        fvu = layer_fvu(self._per_layer(cat), self._per_layer(x_hat_cat), reduce)
        if dead is not None and aux_values is not None and aux_indices is not None:
            aux_loss = self._aux_loss(cat, x_hat_cat, aux_values, aux_indices, dead, reduce)
        else:
            aux_loss = fvu.new_zeros(())
        loss = fvu.mean() + cfg.auxk_coef * aux_loss
        if cfg.sparsity == "l1":
            n = float(T) if reduce is None else reduce(fvu.new_tensor(float(T)))
            loss = loss + cfg.l1_coef * (values @ self.decoder_norms().sum(0)).sum() / n
        if self.training:
            self._count_dead(values, indices, n_tokens=T, reduce=reduce)
        return SAEOutput(
            x_hat=self._per_layer(x_hat_cat) * scale + mean,
            top_values=values.unsqueeze(0).expand(L, -1, -1),
            top_indices=indices.unsqueeze(0).expand(L, -1, -1),
            loss=loss,
            fvu_per_layer=fvu.detach(),
            aux_loss=aux_loss,
        )

    def _example_rows(self, x: Tensor) -> Tensor:
        """A batch x [layer, token, d] as one concatenated row per token, [token, layer * d]: what
        :meth:`MLSAE.init_b_pre_` (the geometric median) and :meth:`MLSAE.fit_encoder_scale_` read."""
        return self._examples(x)[0]

    @torch.no_grad()
    def project_decoder_grads_(self) -> None:
        """Top-k: keep each latent's concatenated decoder vector on the unit sphere (the MLSAE's rule on wider
        rows); L1: the decoder is free (its norms are what the penalty weighs)."""
        if self.cfg.sparsity == "topk":
            super().project_decoder_grads_()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        if self.cfg.sparsity == "topk":
            super().normalize_decoder_()

    # --- which layers a latent uses -----------------------------------------------------------------

    def decoder_norms(self) -> Tensor:
        """[layer, n_latents]: ``||W_dec[l, i]||``, differentiable (the L1 penalty uses it)."""
        m, L, d = self.cfg.n_latents, self.cfg.n_layers, self.cfg.d_model
        return torch.linalg.vector_norm(self.W_dec_rows.view(m, L, d), dim=2).t()

    @torch.no_grad()
    def layer_distribution(self) -> Tensor:
        """[n_latents, layer]: ``p_l(i) = ||W_dec[l, i]|| / sum_l' ||W_dec[l', i]||``, float32 on the CPU; a
        latent whose decoder is all zero gets the uniform distribution."""
        norms = self.decoder_norms().t().float().cpu()  # [m, L]
        total = norms.sum(1, keepdim=True)
        uniform = torch.full_like(norms, 1.0 / norms.shape[1])
        return torch.where(total > 0, norms / total.clamp_min(torch.finfo(norms.dtype).tiny), uniform)

    @torch.no_grad()
    def layer_directions(self) -> Tensor:
        """[layer, n_latents, d]: each latent's decoder direction at every layer, unit norm (zero stays zero)."""
        m, L, d = self.cfg.n_latents, self.cfg.n_layers, self.cfg.d_model
        dirs = self.W_dec_rows.detach().float().cpu().view(m, L, d).transpose(0, 1)
        return torch.nn.functional.normalize(dirs, dim=-1)


def dense_reference_crosscoder_loss(cc: Crosscoder, x: Tensor, dead_mask: Tensor | None = None
                                    ) -> tuple[Tensor, Tensor, Tensor]:
    """The definition written out densely, per layer (the module docstring's sums, no concatenation, no
    kernels): x [layer, token, d] -> (loss, fvu [layer], aux_loss). For the tests; ``dead_mask`` defaults to
    ``cc.dead_mask()`` (read it before a training-mode forward updates it)."""
    cfg = cc.cfg
    L, T, d = x.shape
    m = cfg.n_latents
    x_std, _, _ = cc._standardize(x)  # [L, T, d]
    W_enc = cc.W_enc.view(m, L, d)  # W_enc[l] = W_enc[:, l]
    W_dec = cc.W_dec_rows.view(m, L, d)
    b_dec = cc.b_pre.view(L, d)
    pre = torch.stack([x_std[l] @ W_enc[:, l].t() - W_enc[:, l] @ b_dec[l] for l in range(L)]).sum(0)  # [T, m]
    if cfg.sparsity == "topk":
        v, i = pre.topk(cfg.k, dim=1)
        f = torch.zeros_like(pre).scatter(1, i, v.relu())
    else:
        f = pre.relu()
    x_hat = torch.stack([f @ W_dec[:, l] + b_dec[l] for l in range(L)])  # [L, T, d]
    fvu = layer_fvu(x_std, x_hat)
    aux = fvu.new_zeros(())
    dead_mask = cc.dead_mask() if dead_mask is None else dead_mask
    n_dead = int(dead_mask.sum())
    if cfg.sparsity == "topk" and n_dead and cfg.k_aux > 0 and cfg.auxk_coef > 0:
        av, ai = pre.masked_fill(~dead_mask, -math.inf).topk(min(cfg.k_aux, n_dead), dim=1)
        z = torch.zeros_like(pre).scatter(1, ai, av.relu())  # [T, m]
        err = (x_std - x_hat).detach().transpose(0, 1).reshape(T, L * d)
        e_hat = torch.cat([z @ W_dec[:, l] for l in range(L)], dim=1)
        aux = aux_fvu(err, e_hat)
    loss = fvu.mean() + cfg.auxk_coef * aux
    if cfg.sparsity == "l1":
        norms = torch.stack([torch.linalg.vector_norm(W_dec[:, l], dim=1) for l in range(L)])  # [L, m]
        loss = loss + cfg.l1_coef * (f * norms.sum(0)).sum(1).mean()
    return loss, fvu.detach(), aux
