"""mlsae.data.corpus (generated corpus), mlsae.data.sources (load_text) and mlsae.data.tokens (token_batches)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from conftest import HUB_SHA, PILE_SETS, put_in_hub_cache, write_pile_layout
from mlsae.data.corpus import (
    IOI_PROMPT,
    NAMES,
    OBJECTS,
    PLACES,
    PRESETS,
    generate_documents,
    offline_corpus,
    write_corpus,
)
from mlsae.data.sources import DataUnavailableError, load_text
from mlsae.data.tokens import token_batches

IOI_RE = re.compile(r"When (\w+) and (\w+) went to the (\w+), (\w+) (\w+) an? (\w+) to (\w+)\.")


def _read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


# ---- text ------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_seeded():
    a, b = generate_documents(30, seed=7), generate_documents(30, seed=7)
    assert a == b and all(isinstance(t, str) and t for t in a)
    assert generate_documents(10, seed=7) == a[:10]  # document i depends on (seed, i) only
    assert set(generate_documents(30, seed=8)).isdisjoint(a)
    with pytest.raises(ValueError):
        generate_documents(-1, seed=0)


def test_write_corpus_is_atomic_and_splits_are_disjoint(tmp_path):
    out = write_corpus(tmp_path / "c", n_train=60, n_test=20, seed=3)
    assert out == tmp_path / "c"
    train, test = _read_jsonl(out / "train.jsonl"), _read_jsonl(out / "test.jsonl")
    assert len(train) == 60 and len(test) == 20
    assert set(train).isdisjoint(test)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary folder left behind
    # Same seed, same bytes.
    again = write_corpus(tmp_path / "d", n_train=60, n_test=20, seed=3)
    assert (again / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    assert (again / "test.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()


def test_ioi_sentences_in_both_orders():
    docs = generate_documents(300, seed=0)
    found = [m.groups() for d in docs for m in IOI_RE.finditer(d)]
    assert len(found) > 100
    for x, y, place, giver, _verb, obj, receiver in found:
        assert x != y and {giver, receiver} == {x, y}
        assert place in PLACES and obj in OBJECTS and x in NAMES and y in NAMES
    assert sum(g == x for x, _, _, g, *_ in found) > 0.3 * len(found)  # the first name gives
    assert sum(g == y for _, y, _, g, *_ in found) > 0.3 * len(found)  # the second name gives
    assert IOI_RE.fullmatch(IOI_PROMPT + " Mary.")  # the paper's prompt is this template
    for w in ("Mary", "John"):
        assert w in NAMES
    assert "store" in PLACES and "drink" in OBJECTS


def test_entities_recur_and_spans_repeat():
    docs = generate_documents(200, seed=1)
    # A span of earlier text repeated verbatim later: the last 6 words of many documents occur
    # earlier in the same document, and a random list is often read twice.
    def tail_repeats(d: str) -> bool:
        words = d.split(" ")
        tail = " ".join(words[-6:])
        return tail in " ".join(words[:-6])

    assert sum(map(tail_repeats, docs)) > 0.3 * len(docs)
    # The document's cast recurs: some name appears at least 4 times in most documents.
    recurring = sum(max(d.count(n) for n in NAMES) >= 4 for d in docs)
    assert recurring > 0.9 * len(docs)


def test_offline_corpus_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSAE_HOME", str(tmp_path))
    path = offline_corpus("micro")
    assert path == tmp_path / "text" / "micro"
    assert len(_read_jsonl(path / "train.jsonl")) == PRESETS["micro"]["n_train"]
    mtime = (path / "train.jsonl").stat().st_mtime_ns
    assert offline_corpus("micro") == path and (path / "train.jsonl").stat().st_mtime_ns == mtime  # cached
    with pytest.raises(ValueError, match=r"'nope'.*default.*micro"):
        offline_corpus("nope")


# ---- load_text -------------------------------------------------------------------------------


@pytest.fixture
def local_text(tmp_path) -> Path:
    d = tmp_path / "local"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i} about Mary"}) + "\n" for i in range(5)))
    (d / "test.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    (d / "notes.txt").write_text("first line\n\nsecond line\n")
    return d


def test_load_text_offline(micro_text):
    import datasets

    ds = load_text("offline:micro")
    assert isinstance(ds, datasets.Dataset) and len(ds) == PRESETS["micro"]["n_train"]
    assert "Mary" in " ".join(ds[:200]["text"]) or "John" in " ".join(ds[:200]["text"])
    test = load_text("offline:micro", split="test", streaming=True)
    assert isinstance(test, datasets.IterableDataset)
    first = next(iter(test))["text"]
    assert first == _read_jsonl(micro_text / "text" / "micro" / "test.jsonl")[0]


def test_load_text_local_dir_and_files(local_text):
    import datasets

    ds = load_text(str(local_text))
    assert ds["text"] == [f"doc {i} about Mary" for i in range(5)]
    assert load_text(str(local_text), split="test")["text"] == ["held out"]
    streamed = load_text(str(local_text), streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [r["text"] for r in streamed] == ds["text"]
    assert load_text(str(local_text / "test.jsonl"))["text"] == ["held out"]
    lines = load_text(str(local_text / "notes.txt"))["text"]  # one document per line
    assert [t for t in lines if t] == ["first line", "second line"]


def test_load_text_errors(local_text, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    (empty / "test.jsonl").write_text("\n")
    (empty / "blank.txt").write_text("\n \n")
    for source in (str(empty), str(empty / "blank.txt")):
        for streaming in (False, True):
            with pytest.raises(ValueError, match="empty"):
                load_text(source, split="test", streaming=streaming)
    with pytest.raises(ValueError, match="empty"):
        load_text(str(empty))
    with pytest.raises(ValueError, match="no column 'body'"):
        load_text(str(local_text), text_field="body")
    with pytest.raises(FileNotFoundError, match="validation"):
        load_text(str(local_text), split="validation")
    with pytest.raises(FileNotFoundError):
        load_text(str(tmp_path / "missing.jsonl"))


def test_hub_data_set_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(DataUnavailableError) as e:
        load_text("mlsae-no-such-org/no-such-data-set", streaming=True)
    assert time.perf_counter() - t < 20
    msg = str(e.value)
    assert "mlsae-no-such-org/no-such-data-set" in msg and "HF_HOME" in msg and "HF_DATASETS_CACHE" in msg
    assert isinstance(e.value, ConnectionError)
    # the command it suggests fetches one split's files, not every split prepared (hundreds of GB for the Pile)
    assert "hf download mlsae-no-such-org/no-such-data-set --repo-type dataset --include 'train.*'" in msg
    assert "load_dataset(" not in msg and "HF_HUB_OFFLINE=1" in msg


def test_hub_data_set_fails_fast_when_unreachable(monkeypatch):
    # Not offline by configuration, but the endpoint does not answer (a closed local port).
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="unreachable"):
        load_text("monology/pile-uncopyrighted", streaming=True)
    assert time.perf_counter() - t < 20


# ---- the Pile, as people download it ------------------------------------------------------------


def _texts_of(ds, n=1000) -> list[str]:
    return [r["text"] for r in ds.take(n)] if hasattr(ds, "take") and not hasattr(ds, "__len__") else ds["text"][:n]


def _file_of(text: str) -> str:
    return text.split(" ", 1)[0]


def test_the_pile_from_a_local_folder_in_its_own_layout(tmp_path):
    """`hf download monology/pile-uncopyrighted --repo-type dataset --local-dir DIR`: train/NN.jsonl.zst,
    val.jsonl.zst, test.jsonl.zst. On main 0d8e133 the folder held "no 'test' file"."""
    root = write_pile_layout(tmp_path / "pile")
    test = load_text(str(root), split="test")
    assert {_file_of(t) for t in _texts_of(test)} == {"test.jsonl.zst"}
    rows = list(test.take(3))
    assert set(rows[0]) == {"text", "meta"} and rows[0]["meta"]["pile_set_name"] in PILE_SETS
    assert {_file_of(t) for t in _texts_of(load_text(str(root), split="validation"))} == {"val.jsonl.zst"}
    train = [_file_of(t) for t in _texts_of(load_text(str(root), split="train"))]
    assert train == ["train/00.jsonl.zst"] * 12 + ["train/01.jsonl.zst"] * 12  # every shard, in order
    single = load_text(str(root / "test.jsonl.zst"))  # one compressed file
    assert len(_texts_of(single)) == 12


def test_only_the_files_of_the_split_are_read(tmp_path):
    root = write_pile_layout(tmp_path / "pile")
    for shard in (root / "train").iterdir():
        shard.write_bytes(b"not zstd at all")  # a partial or broken download of a split not asked for
    assert len(_texts_of(load_text(str(root), split="test"))) == 12


def test_the_pile_from_the_hub_cache_offline_with_its_revision(tmp_path, empty_hf_cache, monkeypatch):
    """A hub-cache copy (refs/main -> snapshots/<sha>, files as blobs) is read in place, offline, without a
    prepared datasets cache; its identity names the revision. On main 0d8e133: DataUnavailableError."""
    from mlsae.data.sources import data_identity

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pile = write_pile_layout(tmp_path / "download")
    (pile / "train" / "00.jsonl.zst").unlink()  # people fetch some files: a partial snapshot is the rule
    (pile / "train" / "01.jsonl.zst").unlink()
    put_in_hub_cache(empty_hf_cache, "monology/pile-uncopyrighted", pile, repo_type="dataset")
    t = time.perf_counter()
    test = load_text("monology/pile-uncopyrighted", split="test")
    assert {_file_of(t) for t in _texts_of(test)} == {"test.jsonl.zst"}
    assert time.perf_counter() - t < 20
    assert data_identity("monology/pile-uncopyrighted") == f"hub:monology/pile-uncopyrighted@{HUB_SHA}"
    with pytest.raises(DataUnavailableError, match="--include 'train.\\*' --include 'train/\\*'"):
        load_text("monology/pile-uncopyrighted", split="train")  # not downloaded: say what to fetch


def test_token_batches_stream_from_the_pile_layout(tmp_path):
    from transformers import AutoTokenizer

    from conftest import make_tiny_tokenizer

    tok_dir = tmp_path / "tok"
    make_tiny_tokenizer().save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    root = write_pile_layout(tmp_path / "pile")
    batches = list(token_batches(load_text(str(root), split="test"), tokenizer, seq_len=16, batch_size=2,
                                 max_tokens=64))
    assert len(batches) == 2 and batches[0].shape == (2, 16)


def test_zstd_without_zstandard_names_the_package(tmp_path, monkeypatch):
    """On main 0d8e133 datasets said only "Compression type zstd not supported"."""
    import sys

    root = write_pile_layout(tmp_path / "pile")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ImportError, match="needs the zstandard package: pip install zstandard"):
        load_text(str(root), split="test")


# ---- token_batches ---------------------------------------------------------------------------


@pytest.fixture
def micro_tokenizer(micro_text):
    from transformers import AutoTokenizer

    from mlsae.models.zoo import ensure_tokenizer

    return AutoTokenizer.from_pretrained(ensure_tokenizer("micro"))


def test_token_batches_pack_documents_with_eos(micro_tokenizer, local_text):
    tok = micro_tokenizer
    docs = load_text(str(local_text))["text"]
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False).input_ids + [tok.eos_token_id]
    seq_len, batch = 4, 2
    batches = list(token_batches(load_text(str(local_text)), tok, seq_len, batch))
    assert batches and all(b.shape == (batch, seq_len) and b.dtype == torch.long for b in batches)
    n = len(stream) // (seq_len * batch) * seq_len * batch  # full batches only
    assert torch.cat([b.flatten() for b in batches]).tolist() == stream[:n]
    assert sum((b == tok.eos_token_id).sum().item() for b in batches) == stream[:n].count(tok.eos_token_id) >= 3


def test_token_batches_max_tokens_streaming_and_determinism(micro_tokenizer, micro_text):
    tok = micro_tokenizer
    ds = load_text("offline:micro", split="test", streaming=True)
    got = list(token_batches(ds, tok, 32, 4, max_tokens=32 * 4 * 12))
    assert len(got) == 12 and all(b.shape == (4, 32) for b in got)
    assert len(list(token_batches(ds, tok, 32, 4, max_tokens=32 * 4 * 2 + 1))) == 3  # rounds up
    again = list(token_batches(load_text("offline:micro", split="test"), tok, 32, 4, max_tokens=32 * 4 * 12))
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True))  # streaming == in-memory, deterministic
    assert all((b != tok.eos_token_id).any() for b in got)
    assert any((b == tok.eos_token_id).any() for b in got)  # documents are separated by EOS


def test_token_batches_errors(micro_tokenizer, local_text):
    ds = load_text(str(local_text), split="test")
    with pytest.raises(ValueError, match="too small"):
        list(token_batches(ds, micro_tokenizer, 128, 8))
    with pytest.raises(ValueError, match="positive"):
        token_batches(ds, micro_tokenizer, 0, 8)
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches(ds, micro_tokenizer, 4, 2, max_tokens=0)


def test_long_documents_are_tokenised_in_slices_with_the_same_tokens(micro_tokenizer, tmp_path, monkeypatch):
    """One huge line is cut before spaces into slices: same ids as one call, one EOS at its end."""
    import mlsae.data.tokens as data

    words = ("Mary and John went to the store . " * 400).strip()
    (tmp_path / "train.txt").write_text(words + "\n" + "a short one\n")
    whole = micro_tokenizer(words, add_special_tokens=False).input_ids
    short = micro_tokenizer("a short one", add_special_tokens=False).input_ids
    calls = []
    real = micro_tokenizer.__class__.__call__

    monkeypatch.setattr(data, "SLICE_CHARS", 500)
    monkeypatch.setattr(micro_tokenizer.__class__, "__call__",
                        lambda self, texts, **kw: calls.append(max(map(len, texts))) or real(self, texts, **kw))
    n = len(whole) + len(short) + 2
    got = torch.cat([b.flatten() for b in token_batches(load_text(str(tmp_path)), micro_tokenizer, 1, 1)]).tolist()
    assert got == (whole + [micro_tokenizer.eos_token_id] + short + [micro_tokenizer.eos_token_id])[:n]
    assert calls and max(calls) <= 500  # never the whole document at once


def test_slices_cut_before_spaces_and_cover_the_text():
    from mlsae.data.tokens import _slices

    text = "ab cd ef gh " * 10
    pieces = list(_slices(text, 7))
    assert "".join(p for p, _ in pieces) == text and [last for _, last in pieces][-1] is True
    assert all(len(p) <= 7 for p, _ in pieces) and all(p.startswith(" ") for p, _ in pieces[1:])
    assert list(_slices("x" * 20, 8)) == [("x" * 8, False), ("x" * 8, False), ("x" * 4, True)]


class _Counting:
    """A tokenizer that counts the texts it is asked to tokenise."""

    def __init__(self, tok):
        self.tok, self.texts = tok, 0
        self.eos_token_id = tok.eos_token_id

    def __call__(self, texts, **kw):
        self.texts += len(texts)
        return self.tok(texts, **kw)


@pytest.mark.parametrize("streaming", [True, False])
def test_a_stream_resumes_from_its_position_without_re_tokenising_what_came_before(micro_tokenizer, micro_text,
                                                                                 monkeypatch, streaming):
    """Item 4 of the reproducibility contract: resuming at batch n costs the same whatever n is."""
    import mlsae.data.tokens as data

    monkeypatch.setattr(data, "ROWS_PER_CALL", 4)  # many refills, so positions fall inside and between them

    def stream(state=None, tok=micro_tokenizer):
        return token_batches(load_text("offline:micro", split="test", streaming=streaming), tok, 32, 4,
                             max_tokens=32 * 4 * 40, state=state)

    reference = list(stream())
    assert len(reference) == 40
    first_batch_cost = []
    for n in (0, 1, 7, 25, 39):
        s = stream()
        for _ in range(n):
            next(s)
        state = json.loads(json.dumps(s.state_dict()))  # what a checkpoint stores survives JSON
        counting = _Counting(micro_tokenizer)
        resumed = stream(state, counting)
        first = next(resumed)
        first_batch_cost.append(counting.texts)
        rest = [first, *resumed]
        assert len(rest) == 40 - n and all(torch.equal(a, b) for a, b in zip(rest, reference[n:], strict=True)), n
    # texts tokenised before the first batch after the resume: the same at batch 39 as at batch 1
    assert max(first_batch_cost) <= min(first_batch_cost) + 8, first_batch_cost


def test_a_position_from_another_kind_of_data_set_is_refused(micro_tokenizer, micro_text):
    s = token_batches(load_text("offline:micro", split="test", streaming=True), micro_tokenizer, 32, 4)
    next(s)
    with pytest.raises(ValueError, match="another kind of data set"):
        token_batches(load_text("offline:micro", split="test"), micro_tokenizer, 32, 4, state=s.state_dict())
