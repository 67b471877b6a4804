"""Reconstruction and downstream metrics of an (ML)SAE on held-out text, per layer.

Definitions (stated once here, and next to every number the notebooks print):

* **FVU** (fraction of variance unexplained, the paper's "normalised MSE") at layer l:
  ``sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2``, where ``mean(x)`` is the mean
  over all evaluated tokens of that layer, per dimension.
* **MSE**: ``sum_t ||x_t - x_hat_t||^2 / (n_tokens * d_model)``.
* **L0**: mean number of latents with activation > 0 per (token, layer) example; **L1**: mean
  sum of latent activations per example.
* **dead fraction**: latents that never exceed ``dead_threshold`` on any evaluated example.
* **Delta CE** at layer l: next-token cross-entropy with block l's output replaced by the SAE
  reconstruction (mapped back to the model's basis when a lens is used) minus the clean
  cross-entropy, averaged over the spliced (non-special) positions. **KL**: mean over the same
  positions of ``KL(p_clean || p_spliced)``, in nats per token.

With a tuned lens, FVU/MSE/L0/L1 are measured in the lens basis (where the SAE works), and
Delta CE / KL in the model's own basis. Only one layer is spliced at a time, and logits are
computed layer by layer, so no ``[layer, batch, pos, vocab]`` buffer ever exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mlsae.core.paths import load_result, save_result
from mlsae.core.progress import bar
from mlsae.models.lens import IDENTITY, Lens, as_lens
from mlsae.models.residuals import check_layers, logits_from_layer, residual_batches
from mlsae.sae.config import CrosscoderConfig
from mlsae.sae.model import MLSAE
from mlsae.sae.pipeline import sae_inputs


@dataclass
class EvalResult:
    """Per-layer metrics of one SAE on held-out text, with the clean loss and dead fraction beside them."""
    layers: list[int]
    fvu: list[float]
    mse: list[float]
    l0: list[float]
    l1: list[float]
    delta_ce: list[float] | None
    kl: list[float] | None
    clean_ce: float | None
    dead_fraction: float
    tokens: int  # evaluated token positions (per layer)

    def mean(self, name: str) -> float:
        values = getattr(self, name)
        return float(sum(values) / len(values))

    def rows(self) -> list[dict]:
        """One dict per layer plus a final 'mean' row: ready for a table."""
        names = ["fvu", "mse", "l0", "l1"] + (["delta_ce", "kl"] if self.delta_ce is not None else [])
        rows = [{"layer": l, **{n: getattr(self, n)[i] for n in names}} for i, l in enumerate(self.layers)]
        rows.append({"layer": "mean", **{n: self.mean(n) for n in names}})
        return rows

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        save_result(path, {}, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> EvalResult:
        return cls(**load_result(path)[1])


def check_sae_matches_model(sae: MLSAE, model) -> None:
    """A checkpoint trained on another model's residual stream is refused with a clear message."""
    d_model, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    if sae.cfg.d_model != d_model:
        raise ValueError(
            f"the SAE was trained on d_model={sae.cfg.d_model} residual vectors but this model has "
            f"d_model={d_model}; load the SAE trained for this model (or train one)"
        )
    bad = [l for l in (sae.cfg.layers or []) if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"the SAE was trained on layers {bad}, which this {n_layers}-layer model does not have")


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    sae: MLSAE,
    batches: Iterable[Tensor],
    *,
    lens: Lens = IDENTITY,
    downstream: bool = True,
    layers: list[int] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``sae`` on ``batches`` of input ids [batch, pos] (held-out text).

    ``layers``: where to apply the SAE; by default the layers it was trained on. A single-layer
    SAE evaluated on other layers gives the off-diagonal entries of the paper's baseline matrices.
    The SAE runs in eval mode (its dead-latent counters are left alone) and is put back after.
    """
    check_sae_matches_model(sae, model)
    layers = check_layers(sae.cfg.layers if layers is None else layers, model.config.num_hidden_layers)
    if isinstance(sae.cfg, CrosscoderConfig) and layers != sae.cfg.layers:
        raise ValueError(f"a crosscoder reads and writes the layers it was trained on, {sae.cfg.layers}, together; "
                         f"it cannot be evaluated on layers {layers} (leave layers=None)")
    was_training = sae.training
    sae.eval()
    try:
        return _evaluate(model, tokenizer, sae, batches, as_lens(lens), downstream, layers, progress)
    finally:
        sae.train(was_training)


def _evaluate(model, tokenizer, sae, batches, lens, downstream, layers, progress) -> EvalResult:
    n_layers, d = len(layers), sae.cfg.d_model
    sq_err = torch.zeros(n_layers, dtype=torch.float64)
    sum_x = torch.zeros(n_layers, d, dtype=torch.float64)
    sum_sq = torch.zeros(n_layers, dtype=torch.float64)
    l0 = torch.zeros(n_layers, dtype=torch.float64)
    l1 = torch.zeros(n_layers, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool)
    ce_sum = torch.zeros(n_layers, dtype=torch.float64)
    kl_sum = torch.zeros(n_layers, dtype=torch.float64)
    clean_sum, n_pred, n_tok = 0.0, 0, 0

    for input_ids, keep, resid in bar(residual_batches(model, tokenizer, batches), desc="evaluate", progress=progress):
        x_in = sae_inputs(resid, keep, layers, lens)  # [layer, token, d], in the SAE's basis
        out = sae(x_in)  # reconstructions in the space the SAE works in
        x_hat = out.x_hat.float()
        sq_err += (x_in - x_hat).pow(2).sum(dim=(1, 2)).double()
        sum_x += x_in.sum(dim=1).double()
        sum_sq += x_in.pow(2).sum(dim=(1, 2)).double()
        vals = out.top_values.float()
        l0 += (vals > 0).sum(dim=(1, 2)).double()
        l1 += vals.sum(dim=(1, 2)).double()
        idx = out.top_indices[vals > sae.cfg.dead_threshold]
        fired[idx.flatten().cpu()] = True
        n_tok += x_in.shape[1]

        if downstream:
            pred = keep[:, :-1]  # positions that were spliced and have a next token
            targets = input_ids[:, 1:][pred]
            clean_logits = model(input_ids).logits[:, :-1][pred].float()
            clean_logp = F.log_softmax(clean_logits, dim=-1)
            clean_sum += float(F.nll_loss(clean_logp, targets, reduction="sum"))
            n_pred += int(targets.numel())
            x_model = lens.inverse(x_hat, layers)
            for i, layer in enumerate(layers):
                spliced = resid[layer].clone()  # [batch, pos, d]; the clean stream stays untouched
                spliced[keep] = x_model[i].to(spliced.dtype)
                logp = F.log_softmax(logits_from_layer(model, layer, spliced, input_ids)[:, :-1][pred].float(), -1)
                ce_sum[i] += float(F.nll_loss(logp, targets, reduction="sum"))
                kl_sum[i] += float(F.kl_div(logp, clean_logp, log_target=True, reduction="sum"))

    if n_tok == 0:
        raise ValueError("evaluate() got no tokens: the evaluation data set is empty (or all special tokens)")
    mean_x = sum_x / n_tok
    total_var = sum_sq - n_tok * mean_x.pow(2).sum(dim=1)
    down = downstream and n_pred > 0
    clean_ce = clean_sum / n_pred if down else None
    return EvalResult(
        layers=layers,
        fvu=(sq_err / total_var).tolist(),
        mse=(sq_err / (n_tok * d)).tolist(),
        l0=(l0 / n_tok).tolist(),
        l1=(l1 / n_tok).tolist(),
        delta_ce=(ce_sum / n_pred - clean_sum / n_pred).tolist() if down else None,  # = ... - clean_ce
        kl=(kl_sum / n_pred).tolist() if down else None,
        clean_ce=clean_ce,
        dead_fraction=float(1 - fired.float().mean()),
        tokens=n_tok,
    )
