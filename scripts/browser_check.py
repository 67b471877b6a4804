"""Run a notebook in JupyterLab in a real (headless) Chromium, as a user would, and check what they see.

    .venv/bin/python scripts/browser_check.py                       # notebook 03, tiny preset
    .venv/bin/python scripts/browser_check.py --preset default --notebook 03_layer_variance

Starts JupyterLab on a free local port over a temporary copy of the notebook (its parameters cell
followed by an injected one, as papermill does), opens it in Chromium driven by selenium, clicks
Run > Run All Cells, waits for the kernel to go idle, saves, and reads the saved notebook back.
It fails (exit 1) when a cell did not run, a cell raised, or any cell wrote to stderr (the pink
boxes: a TqdmWarning, loading bars drawn as text). It prints a JSON summary and leaves a screenshot
of the notebook as the user saw it (``--screenshot``). Needs Debian's ``chromium`` and
``chromium-driver`` (``apt-get install chromium chromium-driver``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

from mlsae.figures.records import MIME as RECORD_MIME

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepared_copy(notebook: Path, parameters: dict, folder: Path) -> Path:
    """The notebook with an injected parameters cell after its own, like ``papermill -p``."""
    nb = nbformat.read(notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    path = folder / notebook.name
    nbformat.write(nb, path)
    return path


def _api(port: int, route: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{route}", timeout=5) as r:
        return json.loads(r.read())


def _wait(what: str, check, timeout: float, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - the server or page is not ready yet
            pass
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _kernel_states(port: int) -> list[str]:
    return [s["kernel"]["execution_state"] for s in _api(port, "sessions")]


def _finished(driver, port: int) -> bool:
    """The run is over: the kernel is idle, no cell waits ("[*]") and every cell ran or one failed."""
    from selenium.webdriver.common.by import By

    prompts = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
    failed = driver.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], '
                                                   '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    ran = [p for p in prompts if any(c.isdigit() for c in p)]
    return (_kernel_states(port) == ["idle"] and bool(prompts) and not any("*" in p for p in prompts)
            and (len(ran) == len(prompts) or bool(failed)))


def summarise(path: Path) -> dict:
    """What the saved notebook holds: cells run, errors, stderr outputs, progress widgets, images."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    return {
        "code_cells": len(code),
        "cells_run": sum(c.get("execution_count") is not None for c in code),
        "errors": [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("output_type") == "error"],
        "stderr": ["".join(o.get("text", ""))[:200] for o in outputs if o.get("name") == "stderr"],
        "progress_widgets": sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs),
        "images": sum("image/png" in o.get("data", {}) for o in outputs),
        "records": sum(RECORD_MIME in o.get("data", {}) for o in outputs),
    }


def chromium(profile: Path, window: tuple[int, int] = (1280, 1400), console: bool = False):
    """Debian's headless Chromium through selenium, offline, with its profile in ``profile``; ``console=True`` keeps
    the page's console messages (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver online
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def check(notebook: str, parameters: dict, screenshot: Path, timeout: float) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists():
            raise FileNotFoundError(f"{exe} not found: install Debian's chromium and chromium-driver "
                                    "(apt-get install chromium chromium-driver)")
    source = ROOT / "notebooks" / f"{notebook}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"no notebook {source}; pass --notebook NN_name, e.g. 03_layer_variance")
    work = Path(tempfile.mkdtemp(prefix="mlsae-browser-"))
    path = _prepared_copy(source, parameters, work)
    port = _free_port()
    env = {**os.environ, "MLSAE_FIGURES": os.environ.get("MLSAE_FIGURES", str(work / "figures")),
           "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    env.pop("MLSAE_PROGRESS", None)  # what a user sees: bars on, drawn as widgets
    env.pop("MPLBACKEND", None)  # figures inline, as in a user's JupyterLab (the test scripts set Agg)
    settings = work / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news toast
    env["JUPYTERLAB_SETTINGS_DIR"] = str(work / "settings")
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={work}", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", "--allow-root", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "lab.log", "w"),
    )
    driver = None
    start = time.monotonic()
    try:
        _wait("JupyterLab to start", lambda: _api(port, "status"), 60)
        driver = chromium(work / "chromium", window=(1400, 2200))
        driver.get(f"http://127.0.0.1:{port}/lab/tree/{path.name}")
        _wait("the notebook to open", lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 90)
        _wait("its kernel", lambda: _kernel_states(port) == ["idle"], 90)
        menu = _wait("the Run menu", lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                                               if e.text == "Run"], 30)
        menu[0].click()
        item = _wait("Run All Cells", lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                               if e.text == "Run All Cells"], 30)
        item[0].click()
        _wait("the run to finish", lambda: _finished(driver, port) and (time.sleep(2) or _finished(driver, port)),
              timeout, every=1)
        seconds = time.monotonic() - start
        before = path.stat().st_mtime_ns
        driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").click()
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "s")
        _wait("the notebook to be saved", lambda: path.stat().st_mtime_ns != before, 30)
        # mlsae.figures.records outputs must stay invisible: no "No renderer could be found" text, no JSON shown
        records_shown = [e.text[:200] for e in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                         if "No renderer" in e.text or RECORD_MIME in e.text]
        images = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        if images:  # show the first figure, as a reader scrolling down would see it
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", images[0])
            time.sleep(1)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return {"notebook": notebook, "parameters": parameters, "seconds": round(seconds, 1),
                "screenshot": str(screenshot), "records_shown": records_shown, **summarise(path)}
    finally:
        if driver is not None:
            driver.quit()
        lab.terminate()
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            lab.kill()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebook", default="03_layer_variance", help="NN_name of a notebook under notebooks/")
    ap.add_argument("--preset", default="tiny", help="tiny (about a minute once cached), default or paper")
    ap.add_argument("--screenshot", type=Path, default=ROOT / "outputs" / "browser" / "notebook.png")
    ap.add_argument("--timeout", type=float, default=900, help="seconds the run may take")
    args = ap.parse_args(argv)
    result = check(args.notebook, {"preset": args.preset}, args.screenshot, args.timeout)
    print(json.dumps(result, indent=2))
    ok = (result["cells_run"] == result["code_cells"] and not result["errors"] and not result["stderr"]
          and not result["records_shown"])
    print("browser check:", "clean" if ok else "NOT clean (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
