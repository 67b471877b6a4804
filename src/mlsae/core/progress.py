"""Progress bars and library noise: one switch for the whole package.

Bars are tqdm's ``auto`` flavour, so they render as widgets in JupyterLab (ipywidgets is pinned for
that) and as text in a terminal. ``MLSAE_PROGRESS=0`` turns every bar off: the notebook runner
(``mlsae figures``, the test suite) sets it for its kernels, so an executed notebook holds results
rather than hundreds of bar redraws. transformers' own "Loading weights" and "Writing model shards"
bars are always silenced while this package loads or saves a model (:func:`quiet_transformers`), and
two transformers warnings that are expected here are dropped (:data:`BENIGN_WARNINGS`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

ENV = "MLSAE_PROGRESS"


def enabled(requested: bool = True) -> bool:
    """Whether a bar asked for with ``progress=requested`` is drawn (``$MLSAE_PROGRESS`` can only turn it off)."""
    return requested and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def bar(iterable: Iterable | None = None, *, desc: str, progress: bool = True, **kwargs) -> tqdm:
    """A tqdm bar (a widget in JupyterLab), silent when ``progress`` is off or ``MLSAE_PROGRESS=0``."""
    if kwargs.get("total") is None and not hasattr(iterable, "__len__"):  # open-ended: a count and a rate, not "16/?"
        kwargs.setdefault("bar_format", "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]")
        kwargs.setdefault("unit", "batches")
    short = desc if len(desc) <= 28 else desc[:27] + "…"  # JupyterLab's widget label wraps longer ones
    return tqdm(iterable, desc=short, disable=not enabled(progress), **kwargs)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load and per-save progress bars for the duration, then restore the user's setting."""
    from transformers.utils import logging as hf_logging  # heavy: loaded where used

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextmanager
def quiet_kernels() -> Iterator[None]:
    """Set ``$MLSAE_PROGRESS=0`` for kernels started inside (unless the caller chose a value)."""
    chosen = os.environ.get(ENV)
    os.environ[ENV] = chosen if chosen is not None else "0"
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop(ENV, None)


# transformers warnings that are expected here and say nothing wrong; shown pink in every notebook otherwise.
BENIGN_WARNINGS = (
    # The zoo's configs name no loss type; transformers falls back to the causal-LM loss, the one we train with.
    "`loss_type=None` was set in the config but it is unrecognized",
    # Our batches are fixed-length windows of concatenated documents: GPT-2's pad token (= EOS) marks a
    # document boundary there, never padding, so no attention mask is needed.
    "We strongly recommend passing in an `attention_mask` since your input_ids may be padded",
)


class _DropBenign(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(BENIGN_WARNINGS)


def drop_benign_warnings() -> None:
    """Filter :data:`BENIGN_WARNINGS` out of transformers' log handler (idempotent); nothing else."""
    from transformers.utils import logging as hf_logging  # heavy: loaded where used

    for handler in hf_logging.get_logger().handlers:
        if not any(isinstance(f, _DropBenign) for f in handler.filters):
            handler.addFilter(_DropBenign())
