"""Text -> tokens: ``token_batches`` concatenates documents, each followed by the tokenizer's EOS token (the
Pythia convention), and cuts the stream into ``[batch, seq_len]`` blocks (a :class:`TokenStream`, whose position
a checkpoint stores, so a resumed run continues where the last one stopped)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

# Documents longer than this many characters are tokenised in slices (cut before a space, where
# byte-level BPE starts a new word anyway), so one huge line never becomes one huge token list.
SLICE_CHARS = 1 << 16


def _slices(text: str, n: int | None = None) -> Iterator[tuple[str, bool]]:
    """``(piece, last)``: consecutive pieces of at most ``n`` (default :data:`SLICE_CHARS`) characters,
    cut before a space where one is."""
    n = n or SLICE_CHARS
    start = 0
    while len(text) - start > n:
        cut = text.rfind(" ", start + 1, start + n)
        cut = start + n if cut <= start else cut
        yield text[start:cut], False
        start = cut
    yield text[start:], True


def _texts(rows: Iterable, text_field: str) -> Iterator[tuple[str, bool]]:
    """``(piece, end_of_document)`` for the non-empty texts of ``rows``; a long document comes as
    consecutive slices (:func:`_slices`), and only its last one is followed by EOS."""
    try:
        for row in rows:
            text = row[text_field]
            if text:
                yield from _slices(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"a data file is not UTF-8 text ({err.reason} at byte {err.start}); mlsae reads UTF-8 "
                         f"text: convert it, e.g. with `iconv -f latin1 -t utf-8 FILE > FILE.utf8`") from err


def token_batches(dataset, tokenizer, seq_len: int, batch_size: int, max_tokens: int | None = None,
                  text_field: str = "text", state: dict | None = None) -> TokenStream:
    """Yield ``[batch_size, seq_len]`` LongTensors of packed token ids (a :class:`TokenStream`).

    Documents are tokenized without special tokens, each is followed by the EOS token, and the
    concatenation is cut into consecutive ``seq_len`` blocks (a block may start mid-document),
    ``batch_size`` blocks per batch. Every batch is full: the tail that does not fill one is
    dropped. With ``max_tokens``, iteration stops once ``ceil(max_tokens / (batch_size *
    seq_len))`` batches have been yielded. Streaming data sets are read lazily. ``state`` (a
    :meth:`TokenStream.state_dict`) continues a stream where it stopped, without re-reading or
    re-tokenising what came before.
    Raises ``ValueError`` if the data set does not fill a single batch.
    """
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no EOS token to separate documents")
    n_batches = math.inf if max_tokens is None else math.ceil(max_tokens / (batch_size * seq_len))
    return TokenStream(dataset, tokenizer, seq_len, batch_size, n_batches, text_field, state)


# Rows tokenised per call of the tokenizer.
ROWS_PER_CALL = 64


class TokenStream:
    """The iterator :func:`token_batches` returns, with a position that survives a restart.

    :meth:`state_dict` after any batch says where the next one starts: the data set's own position
    (``IterableDataset.state_dict()``, which reopens the right shard at the right row; a row count
    for other iterables) and the tokens already read but not yet yielded (``carry``). Resuming from
    it costs one shard seek, not a re-read of everything consumed (PAPER's ``paper`` preset: up to
    1B tokens).
    """

    def __init__(self, dataset, tokenizer, seq_len: int, batch_size: int, n_batches: float, text_field: str,
                 state: dict | None = None):
        self.dataset, self.tokenizer, self.text_field = dataset, tokenizer, text_field
        self.seq_len, self.batch_size, self.n_batches = seq_len, batch_size, n_batches
        self._resumable = hasattr(dataset, "state_dict") and hasattr(dataset, "load_state_dict")
        self.batches = 0  # yielded so far, over the stream's whole life
        self._carry: list[int] = []  # read, not yet yielded
        self._position = dataset.state_dict() if self._resumable else 0  # after the last row read
        if state is not None:
            self._restore(state)
        self._it = self._generate()

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> Tensor:
        return next(self._it)

    def state_dict(self) -> dict:
        """``{"batches", "position", "carry": [token ids]}``: JSON-able but for ``carry`` (a list of ints)."""
        return {"batches": self.batches, "position": copy.deepcopy(self._position), "carry": list(self._carry)}

    def _restore(self, state: dict) -> None:
        position = state["position"]
        if self._resumable != isinstance(position, dict):
            raise ValueError("this stream position was saved for another kind of data set (streaming vs not); "
                             "resume with the same data source, or start the run over")
        self.batches, self._carry, self._position = int(state["batches"]), [int(t) for t in state["carry"]], position
        if self._resumable:
            self.dataset.load_state_dict(copy.deepcopy(position))

    def _rows(self) -> Iterator[list]:
        """The data set's rows from the current position, ROWS_PER_CALL at a time."""
        rows = iter(self.dataset)
        if not self._resumable and self._position:
            rows = itertools.islice(rows, self._position, None)  # reads, but does not tokenise, what came before
        while chunk := list(itertools.islice(rows, ROWS_PER_CALL)):
            if self._resumable:
                self._position = self.dataset.state_dict()
            else:
                self._position += len(chunk)
            yield chunk

    def _generate(self) -> Iterator[Tensor]:
        per_batch, eos = self.batch_size * self.seq_len, self.tokenizer.eos_token_id
        seen = 0
        if self.batches >= self.n_batches:
            return
        for rows in self._rows():
            pieces = list(_texts(rows, self.text_field))
            if pieces:
                encoded = self.tokenizer([t for t, _ in pieces], add_special_tokens=False, verbose=False)["input_ids"]
                for ids, (_, last) in zip(encoded, pieces, strict=True):
                    self._carry.extend(ids)
                    if last:
                        self._carry.append(eos)
                        seen += 1
            while len(self._carry) >= per_batch:
                block = self._carry[:per_batch]
                del self._carry[:per_batch]
                self.batches += 1
                yield torch.tensor(block, dtype=torch.long).view(self.batch_size, self.seq_len)
                if self.batches >= self.n_batches:
                    return
        if self.batches == 0:
            raise ValueError(
                f"the data set is too small: {seen} documents gave {len(self._carry)} tokens, fewer than one batch "
                f"({self.batch_size} x {self.seq_len} = {per_batch} tokens)" if seen else "the data set is empty (no text)"
            )
