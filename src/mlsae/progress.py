"""Progress bars: one switch for the whole package.

Bars are tqdm's ``auto`` flavour, so they render as widgets in JupyterLab (ipywidgets is pinned for
that) and as text in a terminal. ``MLSAE_PROGRESS=0`` turns every bar off: the notebook runner
(``mlsae figures``, the test suite) sets it for its kernels, so an executed notebook holds results
rather than hundreds of bar redraws. transformers' own "Loading weights" bars are always silenced
while this package loads a model (:func:`quiet_loading`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator

from tqdm.auto import tqdm

ENV = "MLSAE_PROGRESS"


def enabled(requested: bool = True) -> bool:
    """Whether a bar asked for with ``progress=requested`` is drawn (``$MLSAE_PROGRESS`` can only turn it off)."""
    return requested and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def bar(iterable: Iterable | None = None, *, desc: str, progress: bool = True, **kwargs) -> tqdm:
    return tqdm(iterable, desc=desc, disable=not enabled(progress), **kwargs)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' per-load progress bar for the duration, then restore the user's setting."""
    from transformers.utils import logging as hf_logging

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
