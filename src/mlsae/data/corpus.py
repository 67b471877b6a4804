"""Seeded generator of an English-like corpus: the offline default text.

The paper trains its SAEs on the Pile; without network we generate text instead. The corpus
is built so that small language models have something worth learning at several depths:

* **IOI sentences** ("When Mary and John went to the store, John gave a drink to Mary"), in
  several templates, with the two names in both orders and either one as the giver, so the
  indirect object can only be found by noticing which name was *not* repeated;
* **short stories** whose characters, places and objects recur through the document, with
  gender-consistent pronouns;
* **facts and their recall** later in the same document ("Anna lives near the lake ...
  Where does Anna live? Anna lives near the lake.");
* **sequences** (counting, days, months) and **lists repeated verbatim**;
* **repeated spans**: a span of earlier text of the document copied verbatim later on, so
  that induction (``[A][B] ... [A] -> [B]``) pays off.

Everything is a pure function of the seed: document ``i`` of seed ``s`` depends only on
``(s, i)``, so ``generate_documents(n, s)`` is a prefix of ``generate_documents(n + m, s)``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from mlsae.core.paths import atomic_dir, mlsae_home, run_lock
from mlsae.core.presets import CORPUS_PRESETS as PRESETS  # the corpus presets, defined with every other preset

__all__ = [
    "IOI_PROMPT",
    "PRESETS",
    "TEXT_VERSION",
    "generate_document",
    "generate_documents",
    "offline_corpus",
    "write_corpus",
]

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"

# Bump when the generator changes: cached corpora with another version are regenerated.
TEXT_VERSION = 4

# ---- vocabulary ------------------------------------------------------------------------------

FEMALE = (
    "Mary Alice Emma Sarah Lisa Anna Kate Julia Rose Laura Grace Lucy Ella Sophie Hannah Claire "
    "Amy Nina Olivia Emily"
).split()
MALE = (
    "John Tom James David Michael Paul Mark Peter Daniel Sam Jack Ben Chris Robert George Henry "
    "Luke Adam Ryan Kevin"
).split()
NAMES = FEMALE + MALE
PLACES = (
    "store park school market library beach garden station restaurant office hospital museum "
    "cafe bakery river forest farm house kitchen zoo theater hotel church bank airport gym shop "
    "lake village castle"
).split()
OBJECTS = (
    "drink book ball apple letter ring bottle cake kite hat pen key box flower bag cup toy map "
    "coin basket necklace snack sandwich computer bone gift card painting orange banana"
).split()
GIVE_VERBS = "gave handed passed brought sent showed threw offered".split()
ANIMALS = "cat dog bird rabbit fox bear mouse horse duck frog owl lion".split()
ADJECTIVES = "little big happy kind brave quiet clever old young funny shy curious".split()
COLORS = "red blue green yellow purple orange black white pink brown".split()
JOBS = "teacher doctor farmer baker painter driver nurse cook writer singer pilot builder".split()
FOODS = "bread soup rice pasta cheese cookies pizza salad fish eggs honey tea".split()
FEELINGS = "happy sad tired excited surprised angry proud scared".split()
NUMBERS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = (
    "January February March April May June July August September October November December"
).split()
LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Words for random lists (induction material): every content word of the generator.
LIST_WORDS = sorted(set(PLACES + OBJECTS + ANIMALS + ADJECTIVES + COLORS + JOBS + FOODS))


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class _Doc:
    """Entities of one document (they recur across its paragraphs) and its random stream."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.people = rng.sample(NAMES, 4)
        self.places = rng.sample(PLACES, 3)
        self.objects = rng.sample(OBJECTS, 3)

    def person(self) -> str:
        # Mostly the document's cast, sometimes a newcomer.
        return self.rng.choice(self.people) if self.rng.random() < 0.85 else self.rng.choice(NAMES)

    def pair(self, p_cast: float = 0.7) -> tuple[str, str]:
        if self.rng.random() < p_cast:
            x, y = self.rng.sample(self.people, 2)
        else:
            x, y = self.rng.sample(NAMES, 2)
        return x, y

    def place(self) -> str:
        return self.rng.choice(self.places) if self.rng.random() < 0.7 else self.rng.choice(PLACES)

    def obj(self) -> str:
        return self.rng.choice(self.objects) if self.rng.random() < 0.6 else self.rng.choice(OBJECTS)


def _he(name: str) -> str:
    return "she" if name in FEMALE else "he"


def _his(name: str) -> str:
    return "her" if name in FEMALE else "his"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---- paragraph generators --------------------------------------------------------------------


def _ioi(d: _Doc) -> str:
    """One IOI sentence: two names, one of them repeated as the giver, the other is the answer."""
    r = d.rng
    x, y = d.pair(p_cast=0.5)  # mostly fresh names: the answer must come from the clause itself
    giver, receiver = (y, x) if r.random() < 0.5 else (x, y)
    p, o = d.place(), d.obj()
    v = r.choice(GIVE_VERBS) if r.random() < 0.5 else "gave"
    t = r.random()
    if t < 0.50:  # the paper's template
        return f"When {x} and {y} went to the {p}, {giver} {v} {_a(o)} to {receiver}."
    if t < 0.60:
        return f"After {x} and {y} went to the {p}, {giver} {v} the {o} to {receiver}."
    if t < 0.70:
        return f"When {x} and {y} arrived at the {p}, {giver} {v} {_a(o)} to {receiver}."
    if t < 0.78:
        return f"While {x} and {y} were at the {p}, {giver} {v} {_a(o)} to {receiver}."
    if t < 0.86:
        return f"{x} and {y} went to the {p}. {giver} {v} {_a(o)} to {receiver}."
    if t < 0.92:
        return f"Then, {x} and {y} had a long day at the {p}. {giver} decided to give {_a(o)} to {receiver}."
    return f"{x} and {y} found {_a(o)} at the {p}. Later, {giver} gave it to {receiver}."


def _ioi_block(d: _Doc) -> str:
    return " ".join(_ioi(d) for _ in range(d.rng.randint(2, 5)))


def _story(d: _Doc) -> str:
    r = d.rng
    a, b = r.sample(d.people, 2)
    p, p2 = r.sample(d.places, 2)
    o = r.choice(d.objects)
    kind = r.choice(ANIMALS) if r.random() < 0.4 else ("girl" if a in FEMALE else "boy")
    s = [
        r.choice([
            f"Once upon a time, there was {_a(r.choice(ADJECTIVES))} {kind} named {a}.",
            f"There was once {_a(r.choice(ADJECTIVES))} {kind} called {a}.",
            f"{a} was {_a(r.choice(ADJECTIVES))} {kind}.",
        ]),
        f"{_cap(_he(a))} lived near the {p} with {_his(a)} friend {b}.",
    ]
    events = [
        f"Every day, {a} and {b} played with {_a(o)} at the {p}.",
        f"One day, {b} lost the {o} near the {p2}.",
        f"{a} looked for the {o} everywhere.",
        f"At last, {a} found the {o} under a tree and gave it back to {b}.",
        f"{b} said, \"Thank you, {a}!\"",
        f"{a} and {b} were very {r.choice(FEELINGS)}.",
    ]
    extra = [
        f"{b} liked to eat {r.choice(FOODS)} with {a}.",
        f"On {r.choice(DAYS)}, {a} walked to the {p2} with {b}.",
        f"{a} told {b} a story about {_a(r.choice(ANIMALS))}.",
        f"{_cap(_he(b))} was {r.choice(FEELINGS)} because the {o} was {r.choice(COLORS)}.",
    ]
    n = r.randint(3, len(events))
    body = events[:n]
    for e in r.sample(extra, r.randint(0, 2)):
        body.insert(r.randint(1, len(body)), e)
    return " ".join(s + body)


def _facts(d: _Doc) -> str:
    """Facts about a character, then questions whose answers repeat them (recall)."""
    r = d.rng
    n = d.person()
    p, job, color, food = d.place(), r.choice(JOBS), r.choice(COLORS), r.choice(FOODS)
    # (statement naming the person, statement with a pronoun, question + answer)
    facts = [
        (f"{n} lives near the {p}.", f"{_cap(_he(n))} lives near the {p}.",
         f"Where does {n} live? {n} lives near the {p}."),
        (f"{n} works as {_a(job)}.", f"{_cap(_he(n))} works as {_a(job)}.",
         f"What is {n}'s job? {n} works as {_a(job)}."),
        (f"{n}'s favorite color is {color}.", f"{_cap(_his(n))} favorite color is {color}.",
         f"What color does {n} like? {n} likes {color}."),
        (f"{n} likes to eat {food}.", f"{_cap(_he(n))} likes to eat {food}.",
         f"What does {n} eat? {n} likes to eat {food}."),
    ]
    chosen = r.sample(facts, r.randint(2, 4))
    statements = [chosen[0][0]] + [named if r.random() < 0.3 else pron for named, pron, _ in chosen[1:]]
    questions = [q for _, _, q in chosen]
    r.shuffle(questions)
    return " ".join(statements + questions[: r.randint(1, len(questions))])


def _sequence(d: _Doc) -> str:
    r = d.rng
    seq = r.choice([NUMBERS, DAYS, MONTHS, LETTERS])
    start = r.randrange(len(seq) - 3)
    length = r.randint(3, min(8, len(seq) - start))
    items = ", ".join(seq[start : start + length])
    who = d.person()
    return r.choice([
        f"{who} counted: {items}.",
        f"{who} wrote the list {items}.",
        f"In order: {items}.",
    ])


def _list_repeat(d: _Doc) -> str:
    """A random list said twice: pure induction material."""
    r = d.rng
    words = [r.choice(LIST_WORDS) for _ in range(r.randint(4, 10))]
    lst = ", ".join(words)
    who = d.person()
    return r.choice([
        f"{who} wrote down: {lst}. Then {_he(who)} read it again: {lst}.",
        f"The list was {lst}. Again, the list was {lst}.",
        f"Remember these words: {lst}. The words were {lst}.",
    ])


def _dialogue(d: _Doc) -> str:
    r = d.rng
    a, b = d.pair()
    o, p = d.obj(), d.place()
    return " ".join([
        f"{a} asked {b}, \"Do you have the {o}?\"",
        r.choice([
            f"{b} said, \"Yes, I have the {o}.\" {b} gave the {o} to {a}.",
            f"{b} said, \"No, the {o} is at the {p}.\" So {a} went to the {p}.",
        ]),
    ])


_PARAGRAPHS = (
    (_ioi_block, 0.50),
    (_story, 0.14),
    (_facts, 0.10),
    (_sequence, 0.06),
    (_list_repeat, 0.12),
    (_dialogue, 0.08),
)


def _repeat_span(rng: random.Random, text: str) -> str:
    """Copy a span of ``text`` (6-24 words, starting at a word) verbatim to its end."""
    words = text.split(" ")
    if len(words) < 12:
        return text
    n = rng.randint(6, min(24, len(words) // 2))
    start = rng.randrange(0, len(words) - n)
    span = " ".join(words[start : start + n])
    return text + " " + span


def generate_document(seed: int, index: int) -> str:
    """Document ``index`` of the stream ``seed`` (a pure function of both)."""
    rng = random.Random(f"mlsae-text:{seed}:{index}")
    d = _Doc(rng)
    gens, weights = zip(*_PARAGRAPHS, strict=True)
    paragraphs: list[str] = []
    # Half of the documents open with the paper's IOI template, so the model also sees it
    # at the very start of a text (as the IOI prompt is).
    if rng.random() < 0.5:
        paragraphs.append(_ioi_block(d))
    target = rng.randint(4, 8)
    while len(paragraphs) < target:
        paragraphs.append(rng.choices(gens, weights)[0](d))
    text = ""
    for p in paragraphs:
        text = f"{text} {p}" if text else p
        if rng.random() < 0.15:
            text = _repeat_span(rng, text)
    if rng.random() < 0.5:
        text = _repeat_span(rng, text)
    return text


def generate_documents(n_docs: int, seed: int) -> list[str]:
    """``n_docs`` documents of the stream ``seed``; deterministic given ``seed``."""
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    return [generate_document(seed, i) for i in range(n_docs)]


def _split_seed(seed: int, split: str) -> int:
    """Independent seed streams for the splits (so train and test never share a stream)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "little")


def _write_jsonl(path: Path, docs: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in docs:
            f.write(json.dumps({"text": t}) + "\n")


def write_corpus(out_dir: Path, n_train: int, n_test: int, seed: int) -> Path:
    """Write ``train.jsonl`` and ``test.jsonl`` (one ``{"text": ...}`` per line) into ``out_dir``.

    The directory is built under a temporary name and renamed into place when complete. The
    splits come from independent seed streams; a test document that happens to equal a train
    document (vanishingly rare) is dropped, so the splits are disjoint.
    """
    out_dir = Path(out_dir)
    train = generate_documents(n_train, _split_seed(seed, "train"))
    seen = set(train)
    test = [t for t in generate_documents(n_test, _split_seed(seed, "test")) if t not in seen]
    meta = dict(version=TEXT_VERSION, n_train=n_train, n_test=len(test), seed=seed,
                generator="mlsae.data.corpus", format="jsonl, one {'text': ...} per line")
    with atomic_dir(out_dir) as tmp:
        _write_jsonl(tmp / "train.jsonl", train)
        _write_jsonl(tmp / "test.jsonl", test)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def _corpus_ok(path: Path, preset: dict) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("version") == TEXT_VERSION and meta.get("n_train") == preset["n_train"]
            and meta.get("seed") == preset["seed"] and (path / "train.jsonl").is_file()
            and (path / "test.jsonl").is_file())


def offline_corpus(preset: str = "default") -> Path:
    """Directory with ``train.jsonl``/``test.jsonl`` of the preset, generated on first use
    under ``mlsae_home()/text/<preset>`` (regenerated if the generator version changed)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown offline corpus preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    path = mlsae_home() / "text" / preset
    if not _corpus_ok(path, p):
        with run_lock(path):
            if not _corpus_ok(path, p):
                write_corpus(path, p["n_train"], p["n_test"], p["seed"])
    return path


