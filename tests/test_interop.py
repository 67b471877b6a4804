"""mlsae SAEs elsewhere: the SAELens export checked with SAELens itself (from the ``interop`` extra), and the Hub's
own mixin (``from_pretrained(repo, revision=...)``, ``push_to_hub``, the generated card) offline, on the hub
cache's real layout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mlsae.sae.config import SAEConfig
from mlsae.sae.model import EPS, MLSAE, standardize

# SAELens standardises with the same formula but undoes it with std instead of std + 1e-5 (mlsae.interop.saelens):
# latents agree to float32 rounding, reconstructions to a relative 1e-5 / std on top of it.
LATENT_ATOL, RECON_RTOL = 1e-5, 1e-4


def _sae(d: int = 32, m: int = 128, k: int = 4, seed: int = 0) -> MLSAE:
    torch.manual_seed(seed)
    sae = MLSAE(SAEConfig(d_model=d, n_latents=m, k=k, k_aux=8))
    with torch.no_grad():  # not the symmetric init: a real encoder differs from the decoder, and b_pre is not 0
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.b_pre.copy_(0.2 * torch.randn(d))
    return sae


def _dense(values: torch.Tensor, indices: torch.Tensor, m: int) -> torch.Tensor:
    return torch.zeros(values.shape[0], m).scatter(1, indices, values)  # [n, m]


def _saved_run(tmp_path: Path, model_dir: Path, tuned_lens: bool = False, seq_len: int = 16) -> tuple[Path, MLSAE]:
    sae = _sae()
    provenance = {"model": str(model_dir), "tuned_lens": tuned_lens, "data": "offline", "seq_len": seq_len,
                  "train_config": {"seq_len": seq_len}, "cache_key": "test-key"}
    sae.save_pretrained(tmp_path / "run" / "sae", provenance=provenance)
    return tmp_path / "run", sae


@pytest.fixture(scope="module")
def sae_lens():
    pytest.importorskip("sae_lens", reason="SAELens comes from the interop extra (scripts/setup.sh installs it)")
    import sae_lens

    return sae_lens


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_saelens_loads_every_layer_and_computes_the_mlsae(tmp_path, tiny_model_dir, tiny_lm, sae_lens):
    """Each exported layer, loaded by SAELens's own SAE.load_from_disk, encodes and decodes that layer's residual
    vectors exactly as the MLSAE does."""
    from mlsae.interop.saelens import export_saelens
    from mlsae.models.residuals import residual_streams

    run, mlsae = _saved_run(tmp_path, tiny_model_dir)
    folders = export_saelens(run, tmp_path / "export")
    assert [f.name for f in folders] == [f"blocks.{l}.hook_resid_post" for l in range(3)]
    ids = torch.randint(0, tiny_lm.config.vocab_size, (4, 16))
    with torch.no_grad():
        x = residual_streams(tiny_lm, ids, layers=[0, 1, 2]).float()  # [layer, batch, pos, d]
    assert x.shape[-1] == mlsae.cfg.d_model
    for layer, folder in enumerate(folders):
        sl = sae_lens.SAE.load_from_disk(folder)
        assert type(sl).__name__ == "TopKSAE" and sl.cfg.k == mlsae.cfg.k
        assert sl.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        assert sl.cfg.metadata.context_size == 16 and sl.cfg.metadata.model_name == str(tiny_model_dir)
        xl = x[layer].reshape(-1, mlsae.cfg.d_model)  # [token, d]
        with torch.no_grad():
            ours = _dense(*mlsae.encode(xl), mlsae.cfg.n_latents)
            theirs = sl.encode(xl)
            assert torch.allclose(theirs, ours, atol=LATENT_ATOL, rtol=0), (theirs - ours).abs().max()
            assert torch.equal(theirs != 0, ours != 0)  # the same latents fire
            recon = sl.decode(theirs)  # SAELens undoes the standardisation of its last encode
            _, mean, scale = standardize(xl)
            x_hat_std = mlsae.decode(*mlsae.encode(xl))  # [token, d], the standardised space
            # SAELens maps back with the std, the MLSAE with std + EPS: equal to rounding once that is accounted for
            tol = dict(rtol=RECON_RTOL, atol=1e-6 * float(xl.abs().max()))
            assert torch.allclose(recon, x_hat_std * (scale - EPS) + mean, **tol)
            assert torch.allclose(sl(xl), recon, **tol)
            # ... and the MLSAE's own reconstruction differs by exactly EPS x the standardised reconstruction
            gap = (recon - mlsae.reconstruct(xl)).abs()
            assert (gap <= EPS * x_hat_std.abs() * 1.01 + tol["atol"]).all()


def test_export_writes_what_saelens_itself_writes(tmp_path, tiny_model_dir, sae_lens):
    """Our cfg.json and weight names are SAELens's: an exported layer saved again by SAELens has the same keys and
    tensors (so no field is our guess of its format)."""
    from safetensors.torch import load_file

    from mlsae.interop.saelens import export_saelens

    run, _ = _saved_run(tmp_path, tiny_model_dir)
    folder = export_saelens(run, tmp_path / "export", layers=[1])[0]
    sae_lens.SAE.load_from_disk(folder).save_model(tmp_path / "resaved")
    ours, theirs = (json.loads((f / "cfg.json").read_text()) for f in (folder, tmp_path / "resaved"))
    assert set(ours) == set(theirs) and ours["architecture"] == theirs["architecture"] == "topk"
    assert {k: v for k, v in ours["metadata"].items()} == theirs["metadata"]
    a, b = load_file(folder / "sae_weights.safetensors"), load_file(tmp_path / "resaved" / "sae_weights.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_export_refuses_a_lens_sae_and_a_foreign_folder_and_replaces_its_own(tmp_path, tiny_model_dir):
    from mlsae.interop.saelens import MANIFEST, export_saelens

    run, _ = _saved_run(tmp_path / "lens", tiny_model_dir, tuned_lens=True)
    with pytest.raises(ValueError, match="tuned-lens.*no SAELens SAE computes the same latents"):
        export_saelens(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    run, _ = _saved_run(tmp_path, tiny_model_dir)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an mlsae SAELens export"):
        export_saelens(run, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    export_saelens(run, tmp_path / "out", layers=[0, 1])
    export_saelens(run, tmp_path / "out", layers=[2])  # an earlier export is replaced whole
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blocks.2.hook_resid_post", MANIFEST]
    with pytest.raises(ValueError, match="layer 3 cannot be exported.*layers 0 ... 2"):
        export_saelens(run, tmp_path / "out", layers=[3])


def test_export_command(tmp_path, tiny_model_dir, capsys):
    from mlsae.cli import main

    run, _ = _saved_run(tmp_path, tiny_model_dir)
    assert main(["export", str(run), "--format", "saelens", "--out", str(tmp_path / "x"), "--layers", "0,2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in out["folders"]] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert main(["export", str(tmp_path / "nowhere"), "--format", "saelens", "--out", str(tmp_path / "y")]) == 2
    assert "no MLSAE there" in capsys.readouterr().err


# ---- the Hub's mixin -----------------------------------------------------------------------------------------


def test_mixin_round_trip_keeps_weights_provenance_and_card(tmp_path):
    from huggingface_hub import ModelHubMixin

    sae = _sae()
    sae.tokens_since_fired.fill_(7)
    provenance = {"model": "zoo-m", "tokens": 1234, "steps": 3}
    sae.save_pretrained(tmp_path / "a", provenance=provenance)
    back = MLSAE.from_pretrained(tmp_path / "a")
    assert isinstance(back, ModelHubMixin)
    for (name, p), q in zip(sae.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert back.cfg == sae.cfg and back.provenance == provenance
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mlsae\n") and "model_hub_mixin" in card and "| tokens seen | 1,234 |" in card
    back.save_pretrained(tmp_path / "b")  # a loaded SAE carries its provenance along
    assert json.loads((tmp_path / "b" / "provenance.json").read_text()) == provenance
    with pytest.raises(ValueError, match="a local folder has no revisions"):
        MLSAE.from_pretrained(tmp_path / "a", revision="v1")


def test_revision_pinning_in_the_hub_cache(tmp_path, empty_hf_cache, monkeypatch):
    """Two commits of one repo in the cache's own layout (refs/, snapshots/, blobs/), a tag on the older one: the
    revision picks the weights, offline."""
    from conftest import put_in_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old, new = "a" * 40, "b" * 40
    _sae(seed=1).save_pretrained(tmp_path / "old")
    _sae(seed=2).save_pretrained(tmp_path / "new")
    put_in_hub_cache(empty_hf_cache, "someone/mlsae-test", tmp_path / "old", sha=old)
    put_in_hub_cache(empty_hf_cache, "someone/mlsae-test", tmp_path / "new", sha=new)  # refs/main -> new
    (empty_hf_cache / "models--someone--mlsae-test" / "refs" / "v1").write_text(old)
    want_old, want_new = (MLSAE.from_pretrained(tmp_path / n).W_enc for n in ("old", "new"))
    assert torch.equal(MLSAE.from_pretrained("someone/mlsae-test").W_enc, want_new)
    assert torch.equal(MLSAE.from_pretrained("someone/mlsae-test", revision="v1").W_enc, want_old)
    assert torch.equal(MLSAE.from_pretrained("someone/mlsae-test", revision=old).W_enc, want_old)
    assert torch.equal(MLSAE.from_pretrained("someone/mlsae-test", revision="main").W_enc, want_new)
    with pytest.raises(FileNotFoundError, match=r"someone/mlsae-test.*revision 'v2'.*hf download someone/mlsae-test "
                                                r"--revision v2"):
        MLSAE.from_pretrained("someone/mlsae-test", revision="v2")


def test_released_layout_loads_through_the_mixin_at_a_revision(tmp_path, empty_hf_cache, monkeypatch):
    from conftest import put_in_hub_cache, write_released_mlsae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tensors = write_released_mlsae(tmp_path / "released")
    put_in_hub_cache(empty_hf_cache, "tim-lawson/mlsae-pythia-70m-deduped-x64-k32", tmp_path / "released", sha="c" * 40)
    sae = MLSAE.from_pretrained("tim-lawson/mlsae-pythia-70m-deduped-x64-k32", revision="c" * 40)
    assert torch.equal(sae.W_enc, tensors["encoder.weight"]) and sae.provenance is None


def test_push_to_hub_uploads_our_folder(tmp_path, monkeypatch):
    """push_to_hub is the mixin's: it creates the repo and uploads what save_pretrained writes. huggingface_hub has
    no local stand-in server, so the two Hub calls are replaced by recorders; everything else is the library's."""
    from huggingface_hub import HfApi

    pushed: dict = {}

    def create_repo(self, repo_id, **kw):
        pushed["created"] = (repo_id, kw.get("private"))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, revision=None, **kw):
        folder = Path(folder_path)
        pushed.update(repo=repo_id, revision=revision, files=sorted(p.name for p in folder.iterdir()),
                      sae=MLSAE.from_pretrained(folder), card=(folder / "README.md").read_text())
        return f"https://huggingface.co/{repo_id}/commit/{'d' * 40}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    sae = _sae()
    sae.save_pretrained(tmp_path / "a", provenance={"model": "zoo-m"})
    sae = MLSAE.from_pretrained(tmp_path / "a")
    url = sae.push_to_hub("me/mlsae-zoo-m", private=True, branch="v1")
    assert url.endswith("d" * 40) and pushed["created"] == ("me/mlsae-zoo-m", True) and pushed["revision"] == "v1"
    assert pushed["files"] == ["README.md", "config.json", "model.safetensors", "provenance.json"]
    assert torch.equal(pushed["sae"].W_enc, sae.W_enc) and pushed["sae"].provenance == {"model": "zoo-m"}
    assert "library_name: mlsae" in pushed["card"] and "`zoo-m`" in pushed["card"]


# ---- the dashboard and Neuronpedia export from a training run ------------------------------------------------


def test_dashboard_command_from_a_training_run(tmp_path, tiny_model_dir, capsys):
    """`mlsae dashboard RUN` reads model, data and lens from the run's provenance, writes a site whose index and
    chunks cover every latent, and with --neuronpedia the export beside it."""
    from conftest import write_word_corpus
    from mlsae.cli import main
    from mlsae.training.config import config_from_preset
    from mlsae.training.train import train

    (tmp_path / "text").mkdir()
    text = write_word_corpus(tmp_path / "text", n_train=200, seed=0)
    cfg = config_from_preset("tiny", model=str(tiny_model_dir), data=str(text), expansion_factor=4, k=4, k_aux=8,
                             seq_len=16, batch_size=4, max_tokens=16 * 4 * 6, dead_tokens=500)
    train(cfg, tmp_path / "run", progress=False)
    assert main(["dashboard", str(tmp_path / "run"), "--out", str(tmp_path / "dash"), "--tokens", "512",
                 "--n-examples", "3", "--neuronpedia", str(tmp_path / "np")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["latents"] == 4 * 32 and Path(report["index"]).is_file()
    index = (tmp_path / "dash" / "data" / "index.js").read_text()
    assert index.startswith("window.MLSAE_INDEX = ") and str(tmp_path / "run") in index
    assert sorted(p.name for p in (tmp_path / "dash" / "data" / "latents").iterdir()) == ["chunk-0000.js", "chunk-0001.js"]
    folder = Path(report["neuronpedia"])
    assert (folder / "source.jsonl").is_file() and list((folder / "features").glob("*.jsonl.gz"))
    assert main(["dashboard", str(tmp_path / "run"), "--out", str(text)]) == 2  # not a dashboard: refused
    assert "dashboard" in capsys.readouterr().err and (text / "train.jsonl").exists()
