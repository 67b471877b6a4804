"""Notebook 03 in JupyterLab in headless Chromium, as a user runs it (scripts/browser_check.py).

Needs Debian's chromium and chromium-driver; ``.ci/run`` installs them and sets
``MLSAE_REQUIRE_BROWSER=1``, so in CI a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import load_browser_check


@pytest.mark.slow
def test_notebook_03_runs_clean_in_jupyterlab(tmp_path, monkeypatch):
    bc = load_browser_check()
    if not (Path(bc.CHROMIUM).exists() and Path(bc.CHROMEDRIVER).exists()):
        if os.environ.get("MLSAE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{bc.CHROMIUM} or {bc.CHROMEDRIVER} missing although MLSAE_REQUIRE_BROWSER=1")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    monkeypatch.setenv("MLSAE_FIGURES", str(tmp_path / "figures"))
    result = bc.check("03_layer_variance", {"preset": "tiny"}, tmp_path / "shot.png", timeout=900)
    assert result["code_cells"] > 0 and result["cells_run"] == result["code_cells"], result
    assert result["errors"] == [], result
    assert result["stderr"] == [], "pink boxes in JupyterLab: " + repr(result["stderr"])
    assert result["images"] >= 3, result  # the notebook's figures rendered inline
    assert result["records"] >= 10 and result["records_shown"] == [], result  # key numbers recorded, not shown
    assert (tmp_path / "shot.png").stat().st_size > 10_000
    assert list((tmp_path / "figures" / "03_layer_variance").glob("*.png"))
