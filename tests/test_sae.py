"""The MLSAE model: config, standardisation, init, constraints, loss, dead latents, checkpoints, training."""

import pytest
import torch

from conftest import write_released_mlsae
from mlsae.sae.config import SAEConfig
from mlsae.sae.model import MLSAE, dense_reference_loss, geometric_median, standardize
from mlsae.training.identity import sae_key


def small(d=16, m=256, k=4, **kw) -> MLSAE:
    torch.manual_seed(0)
    return MLSAE(SAEConfig(d_model=d, n_latents=m, k=k, **kw))


def batch(L=3, T=40, d=16, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, L + 1, dtype=torch.float32)[:, None, None]
    return torch.randn(L, T, d, generator=g) * scale + 0.5


def mark_dead(sae: MLSAE, n: int) -> torch.Tensor:
    dead = torch.randperm(sae.cfg.n_latents, generator=torch.Generator().manual_seed(2))[:n]
    sae.tokens_since_fired[dead] = sae.cfg.dead_tokens
    return dead


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, bad",
    [
        (dict(d_model=8, n_latents=64, k=0), "k=0"),
        (dict(d_model=8, n_latents=64, k=65), "k=65"),
        (dict(d_model=8, n_latents=0, k=1), "n_latents=0"),
        (dict(d_model=0, n_latents=64, k=1), "d_model=0"),
        (dict(d_model=8, n_latents=64, k=4, k_aux=-1), "k_aux=-1"),
    ],
)
def test_bad_config_raises(kw, bad):
    with pytest.raises(ValueError, match=bad):
        SAEConfig(**kw)


def test_expansion_factor():
    cfg = SAEConfig.from_expansion_factor(512, 64, 32)
    assert cfg.n_latents == 32768 and cfg.expansion_factor == 64
    with pytest.raises(ValueError, match="expansion_factor=0"):
        SAEConfig.from_expansion_factor(512, 0, 32)
    with pytest.raises(ValueError, match="expansion_factor=-2"):
        SAEConfig.from_expansion_factor(512, -2, 32)


# --- standardisation and init ---------------------------------------------------------------------


def test_standardize_and_inverse():
    x = batch()
    x_std, mean, scale = standardize(x)
    torch.testing.assert_close(x_std.mean(-1), torch.zeros(x.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_std.std(-1), torch.ones(x.shape[:-1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(x_std * scale + mean, x)
    # the reconstruction is mapped back with the same statistics, and a scaled input is encoded alike
    sae = small()
    v1, i1 = sae.encode(x[0])
    v2, i2 = sae.encode(3 * x[0] + 7)
    assert torch.equal(i1.sort(1).values, i2.sort(1).values)
    torch.testing.assert_close(v1.sort(1).values, v2.sort(1).values, rtol=1e-4, atol=1e-4)


def test_init_tied_and_unit_norm():
    sae = small()
    assert torch.equal(sae.W_dec, sae.W_enc.t())
    assert sae.W_dec.shape == (16, 256) and sae.W_enc.shape == (256, 16)
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(256))


def test_geometric_median_beats_mean_and_is_stationary():
    torch.manual_seed(0)
    pts = torch.cat([torch.randn(60, 3), torch.randn(6, 3) * 20 + 50]).double()  # outliers
    med = geometric_median(pts)

    def total(c):
        return (pts - c).norm(dim=1).sum()

    assert total(med) < total(pts.mean(0))
    # brute force: no point of a fine grid around the median does better
    steps = torch.linspace(-0.05, 0.05, 11, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), -1)
    assert total(med) <= min(total(med + off) for off in grid.reshape(-1, 3)) + 1e-9
    # first-order condition: the unit vectors towards the points sum to ~0
    assert ((pts - med) / (pts - med).norm(dim=1, keepdim=True)).sum(0).norm() < 1e-3


def test_init_b_pre_in_standardised_space():
    sae, x = small(), batch()
    sae.init_b_pre_(x)
    expected = geometric_median(standardize(x.reshape(-1, 16))[0])
    torch.testing.assert_close(sae.b_pre.detach(), expected)


def test_fit_encoder_scale_is_the_least_squares_scale():
    sae, x = small(), batch()
    sae.init_b_pre_(x)
    x_std = standardize(x.reshape(-1, 16))[0]
    err = lambda: float((sae.decode(*sae.encode(x.reshape(-1, 16))) - x_std).pow(2).sum().detach())  # noqa: E731
    directions = torch.nn.functional.normalize(sae.W_enc.detach(), dim=1)
    before = err()
    scale = sae.fit_encoder_scale_(x)
    after = err()
    assert 0 < scale < 1 and after < before  # unit rows overshoot; the fit shrinks them
    torch.testing.assert_close(torch.nn.functional.normalize(sae.W_enc.detach(), dim=1), directions)
    for nudge in (0.97, 1.03):  # a stationary point: scaling further either way is worse
        sae.W_enc.data.mul_(nudge)
        assert err() > after
        sae.W_enc.data.div_(nudge)


def test_train_config_encoder_init():
    from mlsae.training.config import TrainConfig

    base = TrainConfig()
    assert base.sae.encoder_init == "unit"
    assert sae_key(base) == sae_key(TrainConfig()) and sae_key(base).startswith("pythia-70m-x64-k32-all-")
    assert sae_key(TrainConfig.from_dict(dict(encoder_init="fit"))) != sae_key(base)
    with pytest.raises(ValueError, match="encoder_init"):
        TrainConfig.from_dict(dict(encoder_init="zeros"))


# --- forward, constraints, loss ---------------------------------------------------------------------


def test_topk_exactly_k_nonnegative_and_largest():
    sae, x = small(), batch()
    out = sae(x)
    assert out.top_values.shape == out.top_indices.shape == (3, 40, 4)
    assert out.x_hat.shape == x.shape and out.fvu_per_layer.shape == (3,)
    assert (out.top_values >= 0).all()
    idx = out.top_indices.reshape(-1, 4)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()
    x_std = standardize(x.reshape(-1, 16))[0]
    pre = (x_std - sae.b_pre) @ sae.W_enc.t()
    ref = pre.topk(4, dim=1).values.relu()
    got = out.top_values.reshape(-1, 4).sort(1).values
    torch.testing.assert_close(got, ref.sort(1).values, rtol=1e-5, atol=1e-5)


def test_encode_decode_reconstruct_consistent():
    sae, x = small(), batch()
    sae.eval()
    out = sae(x)
    torch.testing.assert_close(sae.reconstruct(x), out.x_hat)
    flat = x.reshape(-1, 16)
    _, mean, scale = standardize(flat)
    v, i = sae.encode(flat)
    torch.testing.assert_close(sae.decode(v, i) * scale + mean, sae.reconstruct(flat))
    with pytest.raises(ValueError, match="layer, token"):
        sae(flat)


def test_decoder_grad_projection_and_renorm():
    sae, x = small(), batch()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        sae(x).loss.backward()
        sae.project_decoder_grads_()
        parallel = (sae.W_dec_rows.grad * sae.W_dec_rows).sum(1)
        assert parallel.abs().max() < 1e-6
        opt.step()
        opt.zero_grad()
        sae.normalize_decoder_()
        torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(256))


def test_dead_counter_counts_tokens():
    sae, x = small(), batch(L=3, T=40)
    sae.train()
    out = sae(x)
    fired = torch.zeros(256, dtype=torch.bool)
    fired[out.top_indices[out.top_values > sae.cfg.dead_threshold]] = True
    assert 0 < fired.sum() < 256
    assert (sae.tokens_since_fired[fired] == 0).all()
    assert (sae.tokens_since_fired[~fired] == 40).all()  # T tokens, not L*T examples, not 1 step
    sae(x)
    assert (sae.tokens_since_fired[~fired] >= 40).all() and sae.tokens_since_fired.max() == 80
    sae.eval()
    before = sae.tokens_since_fired.clone()
    sae(x)
    assert torch.equal(before, sae.tokens_since_fired)


def test_aux_loss_zero_without_dead_positive_with_dead():
    sae, x = small(dead_tokens=1000), batch()
    sae.train()
    assert sae(x).aux_loss == 0
    mark_dead(sae, 50)
    out = sae(x)
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.fvu_per_layer.mean() + out.aux_loss / 32)
    sae.eval()
    assert sae(x).aux_loss == 0  # AuxK is a training objective only


@pytest.mark.parametrize("n_dead", [0, 5, 120])  # none, fewer than k_aux, more than k_aux
def test_step_matches_dense_reference(n_dead):
    sae, x = small(k_aux=16, dead_tokens=1000), batch()
    sae.init_b_pre_(x)
    mark_dead(sae, n_dead)
    sae.train()
    dead_mask = sae.dead_mask().clone()
    out = sae(x)
    out.loss.backward()
    fast = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    loss, fvu, aux = dense_reference_loss(sae, x, dead_mask)
    loss.backward()
    torch.testing.assert_close(out.loss, loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.fvu_per_layer, fvu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.aux_loss, aux, rtol=1e-4, atol=1e-6)
    for got, p in zip(fast, sae.parameters(), strict=True):
        scale = p.grad.abs().max()
        torch.testing.assert_close(got / scale, p.grad / scale, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_runs():
    sae, x = small(dead_tokens=1000), batch()
    mark_dead(sae, 40)
    sae.train()
    ref = sae(x).loss.item()
    mark_dead(sae, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and abs(out.loss.item() - ref) < 0.05 * ref
    assert all(p.grad.isfinite().all() for p in sae.parameters())


# --- checkpoints -------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    sae, x = small(k_aux=8, layers=[0, 1, 2]), batch()
    sae.init_b_pre_(x)
    sae(x)  # advance the dead counters
    path = tmp_path / "sae"
    sae.save_pretrained(path)
    sae.save_pretrained(path)  # overwriting is fine
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # the Hub card too
    loaded = MLSAE.from_pretrained(path)
    assert loaded.cfg == sae.cfg
    for name, t in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert loaded.W_dec_rows.is_contiguous()
    sae.eval(), loaded.eval()
    torch.testing.assert_close(loaded.reconstruct(x), sae.reconstruct(x))


def test_load_paper_layout(tmp_path):
    tensors = write_released_mlsae(tmp_path / "hub")
    sae = MLSAE.from_pretrained(tmp_path / "hub")
    assert (sae.cfg.d_model, sae.cfg.n_latents, sae.cfg.k, sae.cfg.k_aux) == (16, 64, 4, 0)
    assert sae.cfg.dead_tokens == 76 * 64 * 2048  # steps of 64 x 2048-token sequences
    assert torch.equal(sae.W_enc, tensors["encoder.weight"])
    assert torch.equal(sae.W_dec, tensors["decoder.weight"])
    assert torch.equal(sae.b_pre, tensors["pre_encoder_bias"])
    assert torch.equal(sae.tokens_since_fired, torch.arange(64) * 2048)
    assert sae.reconstruct(batch()).shape == (3, 40, 16)

    write_released_mlsae(tmp_path / "no_counter", last_nonzero=False)
    assert (MLSAE.from_pretrained(tmp_path / "no_counter").tokens_since_fired == 0).all()


def test_load_tfm_layout_reads_only_the_autoencoder(tmp_path):
    from mlsae.sae.io import released_facts, sae_shape

    tensors = write_released_mlsae(tmp_path / "tfm", tfm="EleutherAI/pythia-70m-deduped")
    assert sae_shape(tmp_path / "tfm") == (16, 64, 4)
    assert released_facts(tmp_path / "tfm") == {"model": "EleutherAI/pythia-70m-deduped", "tuned_lens": False}
    sae = MLSAE.from_pretrained(tmp_path / "tfm")
    assert (sae.cfg.d_model, sae.cfg.n_latents, sae.cfg.k, sae.cfg.k_aux) == (16, 64, 4, 256)
    assert sae.cfg.dead_tokens == 10_000_000  # no dead_steps_threshold saved: its dead_tokens_threshold
    assert torch.equal(sae.W_dec, tensors["decoder.weight"])
    assert torch.equal(sae.tokens_since_fired, torch.arange(64) * 2048)  # 1 sequence of 2048 per forward
    write_released_mlsae(tmp_path / "plain")
    assert released_facts(tmp_path / "plain") == {}  # a plain released SAE says nothing of its model


def test_load_errors_name_path_and_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MLSAE.from_pretrained(tmp_path / "nowhere")
    write_released_mlsae(tmp_path / "bad", decoder_shape=(64, 16))
    with pytest.raises(ValueError, match=r"bad.*model.safetensors.*decoder.weight.*\(64, 16\)"):
        MLSAE.from_pretrained(tmp_path / "bad")
    small().save_pretrained(tmp_path / "ours")
    (tmp_path / "ours" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ours.*model.safetensors"):
        MLSAE.from_pretrained(tmp_path / "ours")


# --- training -----------------------------------------------------------------------------------------


def test_short_training_drives_fvu_down():
    """Synthetic residuals that are sparse combinations of a hidden dictionary, shared by 2 'layers'."""
    g = torch.Generator().manual_seed(0)
    d, n_atoms, L, T = 32, 64, 2, 256
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=g), dim=1)

    def sample():
        codes = torch.rand(L * T, n_atoms, generator=g) * (torch.rand(L * T, n_atoms, generator=g) < 0.05)
        return (codes @ atoms).reshape(L, T, d) + 0.01 * torch.randn(L, T, d, generator=g)

    torch.manual_seed(0)
    sae = MLSAE(SAEConfig(d_model=d, n_latents=256, k=8, k_aux=32, dead_tokens=2_000)).train()
    sae.init_b_pre_(sample())
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    first = sae(sample()).fvu_per_layer.mean().item()
    for _ in range(300):
        out = sae(sample())
        out.loss.backward()
        sae.project_decoder_grads_()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
    last = out.fvu_per_layer.mean().item()
    assert last < 0.3 * first and last < 0.25, (first, last)
