"""Screenshots of a latent dashboard (``mlsae dashboard RUN --out SITE``) in headless Chromium: the index and one
latent's page side by side in one PNG (the README's picture), and the time the index takes to load.

    .venv/bin/python scripts/dashboard_screenshots.py SITE --out figures/dashboard/dashboard.png [--latent 123]

Without ``--latent`` the page shown is the latent most spread over layers (largest layer std) among those firing on
at least 0.1% of the (token, layer) pairs. Needs Debian's chromium and chromium-driver (apt-get install ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_check import chromium  # noqa: E402  (a sibling script)


def _index(site: Path) -> dict:
    text = (site / "data" / "index.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))


def spread_latent(site: Path, min_frequency: float = 1e-3) -> int:
    """The frequent latent with the largest std over layers (lowest id on ties)."""
    index = _index(site)
    candidates = [(s, -j) for j, (f, s) in enumerate(zip(index["freq"], index["std"], strict=True))
                  if s is not None and f >= min_frequency]
    if not candidates:
        raise SystemExit(f"{site}: no latent fires on {min_frequency:.1%} of the (token, layer) pairs; pass --latent")
    return -max(candidates)[1]


def main() -> int:
    """Write the side-by-side screenshot; print the index's load time."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("site", type=Path, help="a folder written by mlsae dashboard")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--latent", type=int, default=None, help="the latent page to show (default: the most spread one)")
    args = ap.parse_args()
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        raise SystemExit(f"{site}: no index.html; give a folder written by `python -m mlsae dashboard`")
    latent = spread_latent(site) if args.latent is None else args.latent
    with tempfile.TemporaryDirectory() as tmp:
        driver = chromium(Path(tmp) / "profile", window=(1100, 1300))
        try:
            start = time.monotonic()
            driver.get((site / "index.html").as_uri())
            while not driver.execute_script("return document.querySelectorAll('tbody tr').length"):
                if time.monotonic() - start > 30:
                    raise SystemExit("the index did not render within 30 s")
                time.sleep(0.02)
            loaded = time.monotonic() - start
            driver.save_screenshot(str(Path(tmp) / "index.png"))
            driver.get((site / "latent.html").as_uri() + f"#{latent}")
            time.sleep(1.0)
            driver.save_screenshot(str(Path(tmp) / "latent.png"))
        finally:
            driver.quit()
        a, b = (mpimg.imread(Path(tmp) / f"{name}.png")[..., :3] for name in ("index", "latent"))  # [h, w, rgb]
        both = np.ones((max(a.shape[0], b.shape[0]), a.shape[1] + b.shape[1] + 16, 3), dtype=a.dtype)
        both[:a.shape[0], :a.shape[1]] = a
        both[:b.shape[0], a.shape[1] + 16:] = b
        args.out.parent.mkdir(parents=True, exist_ok=True)
        mpimg.imsave(args.out, both)
    print(json.dumps({"out": str(args.out), "latent": latent, "index_load_s": round(loaded, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
