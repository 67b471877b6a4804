"""One switch for progress bars; transformers' loading bars silenced; widgets available for JupyterLab."""

from __future__ import annotations

import os

from mlsae.core import progress


def test_mlsae_progress_turns_every_bar_off(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.enabled() and not progress.enabled(False)
    assert not progress.bar(range(3), desc="x").disable
    for off in ("0", "false", "off"):
        monkeypatch.setenv(progress.ENV, off)
        assert not progress.enabled() and progress.bar(range(3), desc="x").disable


def test_the_notebook_runner_quiets_its_kernels_but_respects_a_choice(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    with progress.quiet_kernels():
        assert os.environ[progress.ENV] == "0"
    assert progress.ENV not in os.environ
    monkeypatch.setenv(progress.ENV, "1")
    with progress.quiet_kernels():
        assert os.environ[progress.ENV] == "1"


def test_loading_bars_are_silenced_only_while_we_load():
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    with progress.quiet_transformers():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is back


def test_jupyter_gets_widget_bars_not_a_tqdm_warning():
    """Without ipywidgets, tqdm.auto prints 'TqdmWarning: IProgress not found' in every notebook."""
    import tqdm.notebook

    assert tqdm.notebook.IProgress is not None


def test_only_the_two_known_transformers_warnings_are_dropped():
    import logging

    from transformers.utils import logging as hf_logging

    progress.drop_benign_warnings()
    progress.drop_benign_warnings()  # idempotent: one filter per handler
    handlers = hf_logging.get_logger().handlers
    assert handlers and all(sum(type(f).__name__ == "_DropBenign" for f in h.filters) == 1 for h in handlers)

    def shown(text):
        record = logging.LogRecord("transformers.models.gpt2", logging.WARNING, __file__, 1, text, None, None)
        return all(h.filter(record) for h in handlers)

    assert shown("something else is wrong")
    assert not any(shown(text + " (and the rest of the message)") for text in progress.BENIGN_WARNINGS)
