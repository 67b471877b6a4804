"""pytest plugin for the nbval run of one notebook: no cell may write to stderr, and the records go to a file.

``notebook_references.execute`` copies this file beside the prepared notebook as ``conftest.py`` and
runs ``pytest --nbval-lax`` there. nbval executes every cell and fails on an error; this plugin adds:

* a cell that writes to stderr fails (progress bars, warnings: pink boxes in JupyterLab);
* every ``mlsae.figures.records.record(...)`` output of every cell is written, in order, as JSON lines of
  ``[name, value]`` to ``$MLSAE_RECORDS_OUT``, for the comparison with ``tests/references/``.

It imports nothing of ``mlsae`` (that would add seconds to every notebook's nbval run), so the two
constants below repeat ``mlsae.figures.records.MIME`` and ``records_in_outputs``' filter.
"""

from __future__ import annotations

import json
import os

import pytest

MIME = "application/vnd.mlsae.record+json"  # = mlsae.figures.records.MIME (tests/test_notebooks.py checks it)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    outputs = getattr(item, "test_outputs", None)  # nbval's IPyNbCell sets it while running the cell
    if call.when != "call" or not outputs:
        return
    out_path = os.environ.get("MLSAE_RECORDS_OUT")
    if out_path:
        with open(out_path, "a", encoding="utf-8") as f:
            for o in outputs:
                data = o.get("data") or {}
                if o.get("output_type") in ("display_data", "execute_result") and MIME in data:
                    f.write(json.dumps([data[MIME]["name"], data[MIME]["value"]]) + "\n")
    if report.failed:
        return
    stderr = ["".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    if stderr:
        report.outcome = "failed"
        report.longrepr = (f"{item.name} wrote to stderr (progress bars, warnings):\n{stderr[0][:200]}\n"
                           f"Input:\n{item.cell.source[:1000]}")
