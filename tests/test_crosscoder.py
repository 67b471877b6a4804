"""The acausal crosscoder (mlsae.sae.crosscoder): against the definition written out densely, its top-k ties, its
files, its layer picture (mlsae.analysis.cross_layer), planted cross-layer features, and a training run that
resumes bit for bit."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mlsae.analysis.cross_layer import (
    decoder_norm_distributions,
    layer_agreement,
    layer_specific_fraction,
    top_layer_share,
)
from mlsae.sae.architectures import build_sae, load_sae
from mlsae.sae.config import CrosscoderConfig, SAEConfig, SAEHyperparameters
from mlsae.sae.crosscoder import Crosscoder, dense_reference_crosscoder_loss
from mlsae.sae.model import MLSAE
from mlsae.training.config import config_from_preset
from mlsae.training.train import train


def _crosscoder(L=3, d=16, m=64, k=6, seed=0, **kw) -> Crosscoder:
    torch.manual_seed(seed)
    cfg = CrosscoderConfig(d_model=d, n_latents=m, k=k, k_aux=kw.pop("k_aux", 8), n_layers=L, layers=list(range(L)), **kw)
    return Crosscoder(cfg)


def _prepared(cc: Crosscoder, x: torch.Tensor, dead_every: int = 3) -> Crosscoder:
    cc.init_b_pre_(x)
    cc.fit_encoder_scale_(x)
    with torch.no_grad():  # move the decoder away from W_enc^T and make some latents dead, so AuxK runs
        cc.W_dec_rows.add_(0.1 * torch.randn_like(cc.W_dec_rows))
        cc.normalize_decoder_()
    cc.tokens_since_fired[::dead_every] = 10**9
    return cc.train()


@pytest.mark.parametrize("sparsity", ["topk", "l1"])
def test_the_forward_pass_loss_and_gradients_match_the_dense_definition(sparsity):
    x = torch.randn(3, 80, 16) * torch.tensor([1.0, 3.0, 0.5])[:, None, None] + 0.3
    cc = _prepared(_crosscoder(sparsity=sparsity, l1_coef=0.01), x)
    dead = cc.dead_mask().clone()
    ref_loss, ref_fvu, ref_aux = dense_reference_crosscoder_loss(cc, x, dead)
    ref_grads = torch.autograd.grad(ref_loss, list(cc.parameters()))
    out = cc(x)
    grads = torch.autograd.grad(out.loss, list(cc.parameters()))
    assert torch.allclose(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.fvu_per_layer, ref_fvu, rtol=1e-5, atol=1e-6)
    if sparsity == "topk":
        assert float(out.aux_loss) > 0 and torch.allclose(out.aux_loss, ref_aux, rtol=1e-5, atol=1e-6)
    for (name, _), g, r in zip(cc.named_parameters(), grads, ref_grads, strict=True):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6), f"{name}: max diff {float((g - r).abs().max())}"
    # the reconstruction is the definition's, mapped back to the input space, and one code serves every layer
    assert out.x_hat.shape == x.shape and out.top_indices.shape[:2] == (3, 80)
    assert torch.equal(out.top_indices[0], out.top_indices[2])
    assert torch.allclose(cc.reconstruct(x), out.x_hat, atol=1e-5)


def test_top_k_ties_choose_equal_values_and_give_the_definitions_loss():
    """Latents with identical encoder rows tie exactly; with identical decoders too, any choice among them is the
    same reconstruction, so the kernel's choice (not torch.topk's) must still give the dense loss."""
    cc = _crosscoder(m=64, k=5)
    with torch.no_grad():
        cc.W_enc[32:] = cc.W_enc[:32]
        cc.W_dec_rows[32:] = cc.W_dec_rows[:32]
    x = torch.randn(3, 50, 16)
    values, _ = cc.eval().encode(x)
    cat = cc._examples(x)[0]
    dense = ((cat - cc.b_pre) @ cc.W_enc.t()).topk(5, dim=1).values.relu()
    assert torch.allclose(values.sort(1).values, dense.sort(1).values, atol=1e-6)
    ref_loss, _, _ = dense_reference_crosscoder_loss(cc, x, torch.zeros(64, dtype=torch.bool))
    assert torch.allclose(cc(x).loss, ref_loss, rtol=1e-5)


def test_a_crosscoder_round_trips_through_its_files_and_loads_as_itself(tmp_path):
    cc = _crosscoder()
    cc.tokens_since_fired[:5] = 7
    cc.save_pretrained(tmp_path / "cc")
    config = json.loads((tmp_path / "cc" / "config.json").read_text())
    assert config["architecture"] == "crosscoder" and config["n_layers"] == 3
    back = load_sae(tmp_path / "cc")
    assert isinstance(back, Crosscoder) and back.cfg == cc.cfg
    for (name, a), b in zip(cc.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="holds a crosscoder, not a mlsae"):
        MLSAE.from_pretrained(tmp_path / "cc")
    MLSAE(SAEConfig(d_model=16, n_latents=32, k=4)).save_pretrained(tmp_path / "ml")
    assert type(load_sae(tmp_path / "ml")) is MLSAE
    with pytest.raises(ValueError, match="holds a mlsae, not a crosscoder"):
        Crosscoder.from_pretrained(tmp_path / "ml")


def test_bad_shapes_and_settings_are_refused_with_what_to_do():
    cc = _crosscoder()
    with pytest.raises(ValueError, match=r"takes x of shape \[layer=3, token, d_model=16\], got \(2, 5, 16\)"):
        cc(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="sparsity='l1' is a crosscoder option"):
        SAEHyperparameters(sparsity="l1")
    with pytest.raises(ValueError, match="architecture must be one of"):
        SAEHyperparameters(architecture="transcoder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_layers=2, not 3"):
        CrosscoderConfig(d_model=4, n_latents=8, k=2, n_layers=3, layers=[0, 1])
    built = SAEHyperparameters(expansion_factor=2, k=4, k_aux=8, architecture="crosscoder").sae_config(8, [1, 2])
    assert isinstance(build_sae(built), Crosscoder) and built.input_width == 16 and built.n_latents == 16


def test_the_layer_picture_is_the_decoder_norm_share():
    cc = _crosscoder(L=3, d=4, m=4, k=1)
    with torch.no_grad():
        W = torch.zeros(4, 3, 4)
        W[0, 0, 0] = 1.0  # all at layer 0
        W[1, :, 1] = torch.tensor([3.0, 4.0, 0.0]) / 5  # norms 0.6, 0.8, 0 -> shares 3/7, 4/7, 0
        W[2] = torch.randn(3, 4)
        W[3, 2, 3] = 1.0  # all at layer 2, but dead
        cc.W_dec_rows.copy_(W.reshape(4, 12))
    cc.tokens_since_fired[3] = cc.cfg.dead_tokens
    p = cc.layer_distribution()
    assert torch.allclose(p[0], torch.tensor([1.0, 0.0, 0.0])) and torch.allclose(p[1], torch.tensor([3, 4, 0]) / 7)
    norms = torch.linalg.vector_norm(W[2], dim=1)
    assert torch.allclose(p[2], norms / norms.sum())
    stats = decoder_norm_distributions(cc)
    assert stats.alive.tolist() == [True, True, True, False]
    assert math.isclose(float(stats.mean_layer[1]), 4 / 7, rel_tol=1e-6) and math.isnan(float(stats.mean_layer[3]))
    share = top_layer_share(stats)
    assert math.isclose(float(share[1]), 4 / 7, rel_tol=1e-6)
    expected = (1 + (float(share[2]) >= 0.8)) / 3  # latent 0 is specific, latent 1 is not, dead latent 3 left out
    assert math.isclose(layer_specific_fraction(stats), expected)
    assert layer_specific_fraction(stats, 0.5) == pytest.approx((2 + (float(share[2]) >= 0.5)) / 3)
    with pytest.raises(ValueError, match="threshold must be in"):
        layer_specific_fraction(stats, 0)


def test_agreement_finds_an_mlsae_latent_in_the_crosscoders_layer_direction():
    cc = _crosscoder(L=2, d=8, m=16, k=2)
    ml = MLSAE(SAEConfig(d_model=8, n_latents=5, k=2))
    with torch.no_grad():
        ml.W_dec_rows[0] = cc.layer_directions()[1, 7]  # latent 0 of the MLSAE is crosscoder latent 7 at layer 1
    best = layer_agreement(ml, cc)
    assert best.shape == (2, 5)
    assert math.isclose(float(best[1, 0]), 1.0, rel_tol=1e-5) and float(best[0].max()) < 1.0 - 1e-3


def test_planted_cross_layer_features_are_recovered_with_their_layer_profiles():
    """Data built from 24 known features, each with its own direction at every layer it uses (1, 2 or 3 of 3)
    and a known share of its norm per layer; 3 active per token. The crosscoder recovers the directions and the
    decoder-norm shares."""
    g = torch.Generator().manual_seed(0)
    L, d, n_feat, s = 3, 16, 24, 3
    profiles = torch.zeros(n_feat, L)
    for f in range(n_feat):
        used = torch.randperm(L, generator=g)[: 1 + f % 3]
        profiles[f, used] = torch.rand(len(used), generator=g) + 0.5
    profiles /= profiles.norm(dim=1, keepdim=True)  # the feature's concatenated direction has unit norm
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, L, d, generator=g), dim=-1) * profiles[:, :, None]

    def batch(n: int) -> torch.Tensor:
        idx = torch.rand(n, n_feat, generator=g).argsort(1)[:, :s]
        coef = torch.zeros(n, n_feat).scatter(1, idx, 1 + torch.rand(n, s, generator=g))
        return torch.einsum("nf,fld->lnd", coef, dirs) + 0.01 * torch.randn(L, n, d, generator=g)

    torch.manual_seed(1)
    cc = Crosscoder(CrosscoderConfig(d_model=d, n_latents=48, k=s, k_aux=16, dead_tokens=2_000, n_layers=L,
                                     layers=[0, 1, 2], standardize=False))
    first = batch(512)
    cc.init_b_pre_(first)
    cc.fit_encoder_scale_(first)
    opt = torch.optim.Adam(cc.parameters(), lr=3e-3)
    for _ in range(1500):
        out = cc(batch(256))
        opt.zero_grad()
        out.loss.backward()
        cc.project_decoder_grads_()
        opt.step()
        cc.normalize_decoder_()
    assert float(out.fvu_per_layer.mean()) < 0.05
    learned = torch.nn.functional.normalize(cc.W_dec_rows.detach(), dim=1)  # [48, L*d]
    cos = dirs.reshape(n_feat, L * d) @ learned.t()  # [feature, latent]
    best, match = cos.max(1)
    assert (best > 0.95).float().mean() >= 0.9, f"recovered {int((best > 0.95).sum())} of {n_feat}: {best}"
    found = best > 0.95
    shares = cc.layer_distribution()[match[found]]  # the layer profile, from the decoder norms alone
    planted = profiles[found] / profiles[found].sum(1, keepdim=True)
    error = (shares - planted).abs().sum(1)  # L1 distance between the distributions over layers
    assert float(error.mean()) < 0.15 and float(error.max()) < 0.4
    assert float(shares[planted == 0].max()) < 0.15  # a layer the feature does not use gets little of its norm
    assert torch.equal(shares.argmax(1), planted.argmax(1))


def test_a_crosscoder_trains_through_the_pipeline_and_resumes_bit_for_bit(tiny_model_dir, tmp_path):
    from conftest import write_word_corpus

    (tmp_path / "text").mkdir()
    text = write_word_corpus(tmp_path / "text", n_train=200, seed=0)
    cfg = config_from_preset("tiny", model=str(tiny_model_dir), data=str(text), architecture="crosscoder",
                             expansion_factor=4, k=6, k_aux=8, seq_len=16, batch_size=4, lr=3e-3, dead_tokens=300,
                             max_tokens=16 * 4 * 12, checkpoint_every=8, log_every=1)
    assert "-crosscoder-" in cfg.cache_key({"model_identity": "m", "data_identity": "d", "lens_identity": None})
    run = tmp_path / "run"
    full = train(cfg, run, progress=False)
    assert isinstance(full.sae, Crosscoder) and full.sae.cfg.layers == [0, 1, 2] and full.steps == 12
    assert full.metrics[-1]["fvu"] < full.metrics[0]["fvu"]
    assert isinstance(load_sae(run / "sae"), Crosscoder)
    weights = load_file(run / "sae" / "model.safetensors")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 8
    shutil.rmtree(run / "sae")  # as if killed after the checkpoint at step 8: the run resumes from it
    (run / "train_summary.json").unlink()
    resumed = train(cfg, run, progress=False)
    assert resumed.steps == 12
    again = load_file(run / "sae" / "model.safetensors")
    assert weights.keys() == again.keys()
    for name in weights:
        assert torch.equal(weights[name], again[name]), f"{name} differs after resuming from step 8"


def test_the_matched_dictionaries_follow_the_rules_and_leave_the_mlsaes_cache_key_alone():
    from mlsae.core.cache import key
    from mlsae.studies.cross_layer import EQUAL_LATENTS, EQUAL_PARAMETERS, matched_dictionaries
    from mlsae.studies.cross_layer import MLSAE as ML
    from mlsae.studies.experiment import Experiment
    from mlsae.training.config import NOT_IN_WEIGHTS

    identity = {"model_identity": "model@1", "data_identity": "data@1", "lens_identity": None}
    exp = Experiment(model="micro-m", preset="tiny", k=8)  # 3 layers, d_model 48, R 8: 384 latents
    dicts = matched_dictionaries(exp, 3)
    mlsae_cfg = dicts[ML].train_config()
    assert mlsae_cfg.cache_key(identity) == exp.train_config().cache_key(identity)
    fields = mlsae_cfg.flat()  # the key as it was before the crosscoder's and the schedule's fields existed
    for name in (*NOT_IN_WEIGHTS, "lens_tokens", "architecture", "n_latents", "sparsity", "l1_coef", "lr_warmup", "lr_decay"):
        fields.pop(name)
    fields.update(model_identity="model@1", data_identity="data@1")
    assert mlsae_cfg.cache_key(identity).endswith(key("sae", fields))
    a, b = dicts[EQUAL_LATENTS].train_config().sae, dicts[EQUAL_PARAMETERS].train_config().sae
    assert (a.architecture, a.n_latents, a.k) == ("crosscoder", None, 3 * 8)  # as many latents, L x k per token
    assert (b.architecture, b.n_latents, b.k, b.k_aux) == ("crosscoder", 128, 8, min(mlsae_cfg.sae.k_aux, 64))
    built_a, built_b = a.sae_config(48, [0, 1, 2]), b.sae_config(48, [0, 1, 2])
    params = {name: 2 * c.n_latents * c.input_width + c.input_width for name, c in (("a", built_a), ("b", built_b))}
    mlsae_params = 2 * 384 * 48 + 48
    assert built_a.n_latents == 384 and params["a"] == 3 * mlsae_params  # L times the weights
    assert abs(params["b"] - mlsae_params) / mlsae_params < 0.01  # equal parameters, to the bias
    other = dicts[EQUAL_PARAMETERS].with_model("micro-s")  # another model's width: its own R x d_model again
    assert other.train_config().sae.n_latents is None


def test_the_activation_statistics_and_other_layers_are_refused_for_a_crosscoder(tiny_model_dir):
    from mlsae.analysis.metrics import evaluate
    from mlsae.models.registry import load_model
    from mlsae.sae.pipeline import latents

    model, tokenizer = load_model(str(tiny_model_dir))
    cc = _crosscoder(L=2, d=model.config.hidden_size, m=32, k=4)
    cc.cfg.layers = [0, 1]
    with pytest.raises(ValueError, match="one code per token, not one per layer"):
        latents(model, tokenizer, cc, [], [0, 1])
    with pytest.raises(ValueError, match=r"cannot be evaluated on layers \[1, 2\]"):
        evaluate(model, tokenizer, cc, [], layers=[1, 2], progress=False)
