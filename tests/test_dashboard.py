"""The latent dashboard and the Neuronpedia-style export (mlsae.analysis.latent_records, mlsae.interop.dashboard,
mlsae.interop.neuronpedia): the numbers against a slow dense reference, the site's files for 8,192 latents, the site
in headless Chromium (as a file and over HTTP), and the export's layout."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import load_browser_check, make_micro_setup
from mlsae.analysis.latent_records import DashboardData, dashboard_data
from mlsae.interop.dashboard import CHUNK_SIZE, MARKER, SITE_FILES, write_dashboard
from mlsae.interop.neuronpedia import write_neuronpedia
from mlsae.models.residuals import residual_streams, special_token_mask

TOL = 1e-5  # activations recomputed in other batches than the reference's: float32 rounding only
CONTEXT = (3, 2)
CHROMIUM, CHROMEDRIVER = load_browser_check().CHROMIUM, load_browser_check().CHROMEDRIVER


# ---- the numbers: a tiny model and SAE against a dense reference ----------------------------------------------


@pytest.fixture(scope="module")
def micro():
    return make_micro_setup()


@pytest.fixture(scope="module")
def data(micro) -> DashboardData:
    model, tokenizer, sae, batches = micro
    return dashboard_data(model, tokenizer, sae, batches, n_examples=4, context=CONTEXT, n_nearest=5, progress=False)


@torch.no_grad()
def _dense(model, tokenizer, sae, batches) -> torch.Tensor:
    """a [layer, seq, pos, latent] over every sequence at once (one forward pass, unlike dashboard_data's batches),
    0 on special tokens: the slow, obvious definition."""
    ids = torch.cat(batches)
    resid = residual_streams(model, ids)  # [layer, seq, pos, d]
    L, S, P, d = resid.shape
    values, indices = sae.encode(resid.reshape(-1, d))
    a = torch.zeros(values.shape[0], sae.cfg.n_latents).scatter_(1, indices, values).view(L, S, P, -1)
    return a * special_token_mask(ids, tokenizer)[None, :, :, None]


def test_frequencies_and_layer_distributions_match_the_dense_reference(micro, data):
    a = _dense(*micro)
    L, S, P, m = a.shape
    n_tokens = int(special_token_mask(torch.cat(micro[3]), micro[1]).sum())
    assert data.n_tokens == n_tokens and data.layers == [0, 1, 2] and data.n_latents == m
    counts = (a > 0).sum((1, 2)).double()  # [layer, latent]
    assert torch.equal(data.counts, counts)
    assert torch.allclose(data.frequency, counts.sum(0) / (n_tokens * L), rtol=0, atol=1e-12)
    assert torch.allclose(data.layer_frequency, counts / n_tokens, rtol=0, atol=1e-12)
    mass = a.sum((1, 2)).double()
    p = mass / mass.sum(0).clamp_min(1e-30)
    assert torch.allclose(data.stats.p_layer, p, atol=TOL)
    layer = torch.arange(L, dtype=torch.float64)[:, None]
    mean = (p * layer).sum(0)
    std = ((p * layer**2).sum(0) - mean**2).clamp_min(0).sqrt()
    alive = mass.sum(0) > 0
    assert torch.allclose(data.stats.mean_layer[alive], mean[alive], atol=TOL)
    assert torch.allclose(data.stats.std_layer[alive], std[alive], atol=1e-4)  # sqrt amplifies near 0
    assert data.stats.mean_layer[~alive].isnan().all()


def test_examples_windows_and_per_layer_activations_match_the_dense_reference(micro, data):
    a = _dense(*micro)
    L, S, P, m = a.shape
    ids = torch.cat(micro[3])
    before, after = CONTEXT
    checked = 0
    for r in range(L):
        for j in range(m):
            fired = int((a[r, :, :, j] > 0).sum())
            slots = data.example_seq[r, j] >= 0
            assert int(slots.sum()) == min(fired, data.n_examples)  # as many examples as it has, up to n
            if fired:
                assert abs(float(data.example_values[r, j, 0]) - float(a[r, :, :, j].max())) < TOL
            for s in torch.nonzero(slots).flatten().tolist():
                seq, pos = int(data.example_seq[r, j, s]), int(data.example_pos[r, j, s])
                assert abs(float(data.example_values[r, j, s]) - float(a[r, seq, pos, j])) < TOL
                for w, at in enumerate(range(pos - before, pos + after + 1)):
                    inside = 0 <= at < P
                    assert int(data.window_ids[r, j, s, w]) == (int(ids[seq, at]) if inside else -1)
                    want = float(a[r, seq, at, j]) if inside else 0.0
                    assert abs(float(data.window_acts[r, j, s, w]) - want) < TOL, (r, j, s, w)
                assert torch.allclose(data.token_layer_acts[r, j, s], a[:, seq, pos, j], atol=TOL, rtol=0)
                checked += 1
    assert checked > 100
    assert (data.example_values[:, :, :-1] >= data.example_values[:, :, 1:]).all()  # largest first


def test_nearest_tokens_match_a_dense_argsort(micro, data):
    model, tokenizer, sae, _ = micro
    V = len(tokenizer)
    emb = model.get_input_embeddings().weight[:V].detach()
    W_U = model.get_output_embeddings().weight[:V].detach()
    cos = torch.nn.functional.normalize(sae.W_enc.detach(), dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    logits = (W_U @ sae.W_dec.detach()).T  # [latent, vocab]: logit of each token along W_dec[:, j]
    q = data.input_ids.shape[1]
    for got_ids, got_values, dense, descending in ((data.input_ids, data.input_cos, cos, True),
                                                   (data.output_ids, data.output_logits, logits, True),
                                                   (data.bottom_ids, data.bottom_logits, logits, False)):
        want = torch.argsort(dense, dim=1, descending=descending)[:, :q]
        assert torch.equal(got_ids, want)
        assert torch.allclose(got_values, torch.gather(dense, 1, want), atol=TOL)
    assert data.vocab == tokenizer.batch_decode([[t] for t in range(V)])


def test_dashboard_data_round_trips_and_rejects_bad_settings(micro, data, tmp_path):
    data.save(tmp_path / "d.safetensors")
    back = DashboardData.load(tmp_path / "d.safetensors")
    assert back.vocab == data.vocab and back.context == data.context and back.info == data.info
    assert torch.equal(back.window_acts, data.window_acts) and torch.equal(back.counts, data.counts)
    model, tokenizer, sae, batches = micro
    with pytest.raises(ValueError, match="context"):
        dashboard_data(model, tokenizer, sae, batches, context=(-1, 2), progress=False)
    with pytest.raises(ValueError, match="n_nearest"):
        dashboard_data(model, tokenizer, sae, batches, n_nearest=0, progress=False)
    with pytest.raises(ValueError, match="no tokens"):
        dashboard_data(model, tokenizer, sae, [], progress=False)


# ---- the site: 8,192 synthetic latents ------------------------------------------------------------------------

HOSTILE = "<b>bold</b>&amp;\"'\n"  # a token that must show as text, never as markup


def synthetic(m: int = 8192, L: int = 6, n: int = 8, context=(12, 4), q: int = 8, V: int = 5000,
              seed: int = 0) -> DashboardData:
    """Random but consistent dashboard data: about 10 % of the latents never fire (latent 3 among them), the others
    have 0 … n examples per layer with sparse window activations; every seventh token is :data:`HOSTILE`."""
    g = torch.Generator().manual_seed(seed)
    before, after = context
    W = before + 1 + after
    alive = torch.rand(m, generator=g) > 0.1
    alive[3] = False
    alive[5] = True
    counts = (torch.rand(L, m, generator=g) * 100).floor().double() * alive
    totals = counts * torch.rand(L, m, generator=g).double() * 3
    n_fill = torch.randint(1, n + 1, (L, m), generator=g)
    filled = (torch.arange(n).view(1, 1, n) < n_fill[..., None]) & (counts[..., None] > 0)
    values = torch.sort(torch.rand(L, m, n, generator=g) * 5, descending=True).values * filled
    seq = torch.where(filled, torch.randint(0, 500, (L, m, n), generator=g), -1)
    pos = torch.where(filled, torch.randint(0, 64, (L, m, n), generator=g), -1)
    window_ids = torch.randint(0, V, (L, m, n, W), generator=g, dtype=torch.int32)
    window_ids[..., :2] = -1  # the start of a sequence
    acts = torch.rand(L, m, n, W, generator=g) * (torch.rand(L, m, n, W, generator=g) > 0.8) * filled[..., None]
    acts[..., before] = values
    layer_acts = torch.rand(L, m, n, L, generator=g) * filled[..., None]
    near = torch.randint(0, V, (m, q), generator=g)
    vocab = [HOSTILE if i % 7 == 0 else f"tok{i}" for i in range(V)]
    return DashboardData(
        layers=list(range(L)), n_tokens=100_000, counts=counts, totals=totals, example_values=values, example_seq=seq,
        example_pos=pos, window_ids=window_ids, window_acts=acts, token_layer_acts=layer_acts, input_ids=near,
        input_cos=torch.sort(torch.rand(m, q, generator=g), descending=True).values, output_ids=near.flip(1),
        output_logits=torch.sort(torch.randn(m, q, generator=g), descending=True).values, bottom_ids=near,
        bottom_logits=-torch.sort(torch.rand(m, q, generator=g), descending=True).values, vocab=vocab,
        context=context, info={"model": "synthetic", "d_model": 512, "k": 32, "lens": "none (identity)"})


@pytest.fixture(scope="module")
def site8k(tmp_path_factory):
    data = synthetic()
    out = tmp_path_factory.mktemp("dashboard") / "site"
    start = time.perf_counter()
    site = write_dashboard(data, out, title="Synthetic MLSAE", meta={"data": "random, for the tests"})
    print(f"\nwrote {site.n_latents} latents: {site.n_files} files, {site.n_bytes / 2**20:.1f} MiB in "
          f"{time.perf_counter() - start:.1f} s")
    return data, site


def _chunk_json(path: Path) -> tuple[int, dict]:
    text = path.read_text(encoding="utf-8")
    head, tail = "mlsaeChunk(", ");\n"
    assert text.startswith(head) and text.endswith(tail), path
    number, _, body = text[len(head):-len(tail)].partition(", ")
    return int(number), json.loads(body)


def _index_json(folder: Path) -> dict:
    text = (folder / "data" / "index.js").read_text(encoding="utf-8")
    head, tail = "window.MLSAE_INDEX = ", ";\n"
    assert text.startswith(head) and text.endswith(tail)
    return json.loads(text[len(head):-len(tail)])


def test_the_8192_latent_site_has_bounded_files_and_every_chunk_parses(site8k):
    data, site = site8k
    folder = site.folder
    n_chunks = 8192 // CHUNK_SIZE
    # bounds: the 4 site files, the index, the marker and one file per 64 latents; under 64 MiB in all (8 examples
    # of 17 tokens at 6 layers, a fifth of the window activations non-zero: denser than real latents), no chunk over
    # 1 MiB (what one latent page loads) and an index under 1 MiB (what the index page loads)
    assert site.n_latents == 8192 and site.n_chunks == n_chunks
    assert site.n_files == len(SITE_FILES) + 2 + n_chunks == len([p for p in folder.rglob("*") if p.is_file()])
    assert site.n_bytes < 64 * 2**20
    assert (folder / "data" / "index.js").stat().st_size < 2**20
    for name in SITE_FILES:
        assert (folder / name).is_file()
    index = _index_json(folder)
    assert index["n_latents"] == 8192 and index["chunk_size"] == CHUNK_SIZE and index["n_chunks"] == n_chunks
    assert len(index["freq"]) == len(index["mean"]) == len(index["p"]) == 8192
    assert index["mean"][3] is None and index["freq"][3] == 0  # never fires: null, not NaN
    assert abs(index["freq"][5] - float(data.frequency[5])) <= 1e-3 * float(data.frequency[5])  # 4 significant digits
    seen = 0
    for c, path in enumerate(sorted((folder / "data" / "latents").glob("chunk-*.js"))):
        assert path.name == f"chunk-{c:04d}.js" and path.stat().st_size < 2**20
        number, chunk = _chunk_json(path)
        assert number == c and chunk["first"] == c * CHUNK_SIZE
        assert [rec["id"] for rec in chunk["latents"]] == list(range(c * CHUNK_SIZE, (c + 1) * CHUNK_SIZE))
        seen += len(chunk["latents"])
        if c == 0:  # latent 5: every stored example, its tokens through the chunk's table, values to 4 digits
            rec = chunk["latents"][5]
            for r, examples in enumerate(rec["ex"]):
                assert len(examples) == int((data.example_seq[r, 5] >= 0).sum())
                for s, (value, seq, pos, tokens, acts, layer_acts) in enumerate(examples):
                    assert abs(value - float(data.example_values[r, 5, s])) <= 1e-3 * value
                    assert (seq, pos) == (int(data.example_seq[r, 5, s]), int(data.example_pos[r, 5, s]))
                    want = [data.vocab[t] if t >= 0 else None for t in data.window_ids[r, 5, s].tolist()]
                    assert [chunk["tokens"][t] if t >= 0 else None for t in tokens] == want
                    assert torch.allclose(torch.tensor(acts), data.window_acts[r, 5, s], rtol=1e-3, atol=0)
                    assert len(layer_acts) == data.n_layers
    assert seen == 8192


def test_write_dashboard_refuses_what_it_did_not_write_and_replaces_what_it_did(tmp_path):
    small = synthetic(m=100, L=3, n=2, V=50)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dashboard"):
        write_dashboard(small, other, title="t", meta={})
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        write_dashboard(small, a_file, title="t", meta={})
    out = tmp_path / "site"
    first = write_dashboard(small, out, title="first", meta={})
    assert (out / MARKER).is_file() and first.n_chunks == 2
    (out / "data" / "stale.js").write_text("old")
    second = write_dashboard(synthetic(m=10, L=3, n=2, V=50), out, title="second", meta={"run": 2})
    assert second.n_chunks == 1 and not (out / "data" / "stale.js").exists()
    assert _index_json(out)["title"] == "second" and ["run", "2"] in _index_json(out)["meta"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


# ---- the site in headless Chromium ----------------------------------------------------------------------------


def _driver(tmp_path: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("MLSAE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing although MLSAE_REQUIRE_BROWSER=1")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    return load_browser_check().chromium(tmp_path / "chromium", window=(1280, 1400), console=True)


def _wait(what: str, check, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _first_ids(driver, n: int = 5) -> list[int]:
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr td:first-child")
    return [int(c.text) for c in cells[:n]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_site_in_headless_chromium(site8k, tmp_path):
    from selenium.webdriver.common.by import By

    data, site = site8k
    shots = Path(os.environ.get("MLSAE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    index = _index_json(site.folder)
    driver = _driver(tmp_path)
    server = None
    try:
        rows = lambda: driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")  # noqa: E731
        start = time.perf_counter()
        driver.get(site.index.as_uri())
        _wait("the first page of latents", lambda: len(rows()) == 100)
        load = time.perf_counter() - start
        print(f"\nindex of {site.n_latents} latents loaded in {load:.2f} s; screenshots in {shots}")
        assert load < 5.0
        assert _first_ids(driver) == [0, 1, 2, 3, 4]
        driver.save_screenshot(str(shots / "index.png"))

        # sort by firing frequency: ascending, then descending (ties by id; never-firing latents always last)
        header = driver.find_element(By.CSS_SELECTOR, 'th[data-key="freq"] button')
        header.click()
        freq = index["freq"]
        assert _first_ids(driver) == sorted(range(8192), key=lambda j: (freq[j], j))[:5]
        header.click()
        assert _first_ids(driver) == sorted(range(8192), key=lambda j: (-freq[j], j))[:5]
        th = driver.find_element(By.CSS_SELECTOR, 'th[data-key="freq"]')
        assert th.get_attribute("aria-sort") == "descending"
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="mean"] button').click()
        mean = index["mean"]
        alive = [j for j in range(8192) if mean[j] is not None]
        assert _first_ids(driver) == sorted(alive, key=lambda j: (mean[j], j))[:5]
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="mean"] button').click()
        ids = [int(c.text) for c in driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr td:first-child")]
        assert all(mean[j] is not None for j in ids)  # descending too: the nulls stay at the end
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="id"] button').click()

        # pages and the search box
        driver.find_element(By.ID, "next").click()
        assert _first_ids(driver, 1) == [100]
        search = driver.find_element(By.ID, "search")
        search.send_keys("4321")
        _wait("the search", lambda: _first_ids(driver) == [4321])
        search.clear()
        search.send_keys("99999")
        _wait("no match", lambda: not rows())
        assert "no latent" in driver.find_element(By.ID, "search-note").text
        search.clear()
        search.send_keys("5\n")  # Enter opens the latent

        # a latent page: the chart, per-layer examples, escaped tokens, hashchange, a never-firing latent
        _wait("latent 5's page", lambda: driver.find_elements(By.CSS_SELECTOR, "#examples .example"))
        assert driver.current_url.endswith("latent.html#5")
        chart = driver.find_element(By.ID, "p-layer-chart")
        assert len(chart.find_elements(By.CSS_SELECTOR, "rect.bar")) == data.n_layers
        labels = [t.text for t in chart.find_elements(By.CSS_SELECTOR, "text.label")]
        assert labels == ["layer", "p(l | j)"]
        n_examples = int((data.example_seq[:, 5] >= 0).sum())
        assert len(driver.find_elements(By.CSS_SELECTOR, "#examples .example")) == n_examples
        assert len(driver.find_elements(By.CSS_SELECTOR, "#examples .tok.focus")) == n_examples
        assert len(driver.find_elements(By.CSS_SELECTOR, "#examples svg.strip")) == n_examples
        tokens = driver.find_element(By.ID, "examples")
        assert not tokens.find_elements(By.CSS_SELECTOR, ".tokens b")  # the hostile token stayed text
        texts = driver.execute_script("return [...document.querySelectorAll('.tok')].map(e => e.textContent)")
        assert "<b>bold</b>&amp;\"'↵" in texts
        assert driver.find_elements(By.CSS_SELECTOR, "#nearest-input li")
        driver.save_screenshot(str(shots / "latent.png"))
        driver.execute_script("location.hash = '#6'")
        _wait("latent 6", lambda: driver.find_element(By.TAG_NAME, "h1").text == "Latent 6")
        driver.get(site.folder.joinpath("latent.html").as_uri() + "#3")
        dead = _wait("latent 3's page", lambda: driver.find_elements(By.ID, "never-fires"))
        assert "never fires" in dead[0].text
        assert not driver.find_elements(By.CSS_SELECTOR, "#examples")
        driver.save_screenshot(str(shots / "never-fires.png"))
        assert _severe(driver) == []

        # the same site from a web server
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(site.folder)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        _wait("the web server", lambda: _port_open(port))
        driver.get(f"http://127.0.0.1:{port}/index.html")
        _wait("the first page of latents over HTTP", lambda: len(rows()) == 100)
        driver.get(f"http://127.0.0.1:{port}/latent.html#8191")
        _wait("the last latent over HTTP", lambda: driver.find_elements(By.ID, "p-layer-chart")
              or driver.find_elements(By.ID, "never-fires"))
        assert _severe(driver) == []
    finally:
        driver.quit()
        if server is not None:
            server.terminate()
            server.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- the Neuronpedia-style export ------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def test_neuronpedia_export_layout_and_records(data, tmp_path):
    export = write_neuronpedia(data, tmp_path / "exports", model_id="tiny-neox", source_id="all-mlsae",
                               features_per_batch=16, dataset="offline")
    folder = tmp_path / "exports" / "tiny-neox" / "all-mlsae"
    assert export.folder == folder and export.n_batches == 4
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert names == sorted(["release.jsonl", "model.jsonl", "sourceset.jsonl", "source.jsonl"]
                           + [f"{kind}/batch-{b}.jsonl.gz" for kind in ("features", "activations") for b in range(4)])
    for name in ("release.jsonl", "model.jsonl", "sourceset.jsonl", "source.jsonl"):
        assert len(_lines(folder / name)) == 1
    assert _lines(folder / "source.jsonl")[0]["id"] == "all-mlsae"
    assert _lines(folder / "model.jsonl")[0]["id"] == "tiny-neox"
    features = [f for b in range(4) for f in _lines(folder / "features" / f"batch-{b}.jsonl.gz")]
    activations = [a for b in range(4) for a in _lines(folder / "activations" / f"batch-{b}.jsonl.gz")]
    assert [f["index"] for f in features] == [str(j) for j in range(data.n_latents)]
    assert len(activations) == export.n_activations == int((data.example_seq >= 0).sum())
    for f in features:
        j = int(f["index"])
        assert f["modelId"] == "tiny-neox" and f["layer"] == "all-mlsae" and len(f["pos_str"]) == 5
        assert len(f["layer_distribution"]) == data.n_layers and f["model_layers"] == data.layers
        if data.counts[:, j].sum() > 0:
            assert abs(sum(f["layer_distribution"]) - 1) < 1e-3  # 4 significant digits each
            assert abs(f["mean_layer"] - float(data.stats.mean_layer[j])) < 1e-3
            assert abs(f["frac_nonzero"] - float(data.frequency[j])) <= 1e-3 * f["frac_nonzero"]
        else:
            assert f["mean_layer"] is None and sum(f["layer_distribution"]) == 0
    for a in activations:
        assert len(a["tokens"]) == len(a["values"]) and a["values"][a["qualifyingTokenIndex"]] > 0
        assert a["maxValue"] == max(a["values"]) and len(a["layer_values"]) == data.n_layers
        assert a["model_layer"] in data.layers and a["index"] in {f["index"] for f in features}
    assert len({a["id"] for a in activations}) == len(activations)
    # a rewrite replaces an export; any other folder is refused
    write_neuronpedia(data, tmp_path / "exports", model_id="tiny-neox", source_id="all-mlsae")
    (tmp_path / "exports" / "tiny-neox" / "mine").mkdir()
    (tmp_path / "exports" / "tiny-neox" / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a Neuronpedia export"):
        write_neuronpedia(data, tmp_path / "exports", model_id="tiny-neox", source_id="mine")
    with pytest.raises(ValueError, match="source_id"):
        write_neuronpedia(data, tmp_path / "exports", model_id="tiny-neox", source_id="a/b")
