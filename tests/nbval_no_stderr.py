"""pytest plugin for nbval runs: a notebook cell that writes to stderr fails.

nbval's ``--nbval-lax`` compares only the ``# NBVAL_CHECK_OUTPUT`` cells; this keeps the guarantee that
an executed notebook writes nothing to stderr (progress bars, warnings: pink boxes in JupyterLab) for
every cell. :func:`mlsae.notebooks.check_against_reference` copies it beside the notebook as conftest.py.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    outputs = getattr(item, "test_outputs", None)  # nbval's IPyNbCell sets it while running the cell
    if call.when != "call" or not outputs or report.failed:
        return
    # as mlsae.notebooks.stderr_outputs, not imported: that would add seconds to every notebook's nbval run
    stderr = ["".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    if stderr:
        report.outcome = "failed"
        report.longrepr = (f"{item.name} wrote to stderr (progress bars, warnings):\n{stderr[0][:200]}\n"
                           f"Input:\n{item.cell.source[:1000]}")
