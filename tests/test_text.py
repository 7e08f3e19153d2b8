"""The sentence domain (domains/text.py): loaders on files in the real formats, vocabulary, contiguous batches, packed
encoders, the Quick-Thought losses against brute force, the nested-CV protocol, and learnability on the
embedded stand-in."""

import csv
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
import torch

import yaml

from hypersphere import miniature, resources, runs
from hypersphere.domains import text as T
from hypersphere.evaluate import EvalConfig, evaluate_run
from hypersphere.sweep import load_sweep, run_sweep
from hypersphere.train import TRAIN_VERSION, TrainConfig, train
from hypersphere.losses import Objective, uniform_loss

BOOK_A = """CHAPTER I

It is a truth universally acknowledged, that a single man in possession
of a good fortune, must be in want of a wife. Mr. Bennet replied that he
had not.

"Is that so?" she asked. Mrs. Long says that Netherfield is taken!
"""
BOOK_B = "Call me Ishmael. Some years ago I went to sea.\n\nIt is a way I have of driving off the spleen."


def test_split_sentences_handles_line_wraps_paragraphs_and_abbreviations():
    assert T.split_sentences(BOOK_A) == [
        "CHAPTER I",
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife.",
        "Mr. Bennet replied that he had not.",
        '"Is that so?" she asked.',
        "Mrs. Long says that Netherfield is taken!",
    ]
    assert T.split_sentences("J. K. Smith wrote it. U.S. Army men read it.") == [
        "J. K. Smith wrote it.",
        "U.S. Army men read it.",
    ]
    assert T.split_sentences("pi is 3.14 here. ok") == ["pi is 3.14 here. ok"]  # no capital: no boundary


def test_tokenize_keeps_contractions_and_splits_punctuation():
    assert T.tokenize("Don’t stop, Mr. Darcy!") == ["don't", "stop", ",", "mr", ".", "darcy", "!"]
    assert T.tokenize("Don't", lower=False) == ["Don't"]
    assert T.tokenize("   ") == []


def test_load_books_reads_a_folder_as_one_ordered_stream(tmp_path):
    (tmp_path / "b_moby.txt").write_text(BOOK_B, encoding="utf-8")
    (tmp_path / "a_pride.txt").write_text(BOOK_A, encoding="utf-8")
    (tmp_path / "notes.md").write_text("Not a book.", encoding="utf-8")
    corpus = T.load_books(tmp_path)
    assert corpus.names == ["a_pride", "b_moby"]
    assert len(corpus) == 8 and corpus.doc.tolist() == [0] * 5 + [1] * 3
    assert corpus.sentences[2] == ["mr", ".", "bennet", "replied", "that", "he", "had", "not", "."]
    assert corpus.sentences[5] == ["call", "me", "ishmael", "."]
    train, held = corpus.split(held_out=0.5, seed=0)
    assert sorted(train.names + held.names) == corpus.names and len(train) + len(held) == len(corpus)
    assert set(held.doc.tolist()) == {0} and set(train.doc.tolist()) == {0}


def test_load_books_names_the_problem_when_no_books(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no \.txt books in .*one plain-text file per book"):
        T.load_books(tmp_path)


WORDS = "the a man woman dog house said walked into room and of was it he she".split()


def lines_book(n: int, seed: int) -> str:
    """n lowercased, tokenised sentences one per line, as in books_large_p1.txt: quotes, an abbreviation, a question
    inside a line, a heading with no full stop, some sentences longer than MAX_TOKENS."""
    rng = np.random.default_rng(seed)
    forms = ["`` {w} ? '' she asked .", "mr . {w} .", "chapter {k}", "{w} , {w} !", "{w} ."]
    return "".join(
        forms[k % 5].format(w=" ".join(rng.choice(WORDS, rng.integers(1, 25))), k=k) + "\n" for k in range(n)
    )


def test_one_sentence_per_line_files_load_as_one_sentence_per_line(tmp_path):
    """BookCorpus's lowercased, tokenised releases: 3 files of 300 sentences are 900 sentences (read as prose, as
    before, they were a handful: no capital letter ever starts a sentence), and the summary says how they were read."""
    for k in range(3):
        (tmp_path / f"part{k}.txt").write_text(lines_book(300, k), encoding="utf-8")
    corpus = T.load_books(tmp_path)
    assert (
        len(corpus) == 900
        and corpus.names == ["part0", "part1", "part2"]
        and np.bincount(corpus.doc).tolist() == [300] * 3
    )
    assert corpus.sentences[1][:3] == ["mr", ".", corpus.sentences[1][2]] and corpus.sentences[2][0] == "chapter"
    assert len(T.load_books(tmp_path, form="prose")) < 10
    train, held, vocab, read = T.pack_books(tmp_path, progress=False)
    assert len(train) + len(held) == 900 and read == "3 files read as 3 one sentence per line; 3 documents"
    cased = [f"The man number {k} walked into the room." for k in range(50)]
    assert T.detect_form(cased) == "lines" and T.detect_form(BOOK_A.splitlines()) == "prose"
    assert T.detect_form((BOOK_A + "\n\n" + BOOK_B).splitlines()) == "prose"
    with pytest.raises(ValueError, match="unknown book form"):
        T.load_books(tmp_path, form="sentences")


def test_documents_are_files_books_marked_by_blank_lines_and_blocks(tmp_path, monkeypatch):
    """In the lines form 2 blank lines (a paragraph, as soskek/bookcorpus writes them) keep the book, 3 or more (its
    5 between books) start another; a document longer than DOC_BLOCK sentences is cut into blocks."""
    book = lambda n, w: "".join(f"{w} sentence {k} .\n" for k in range(n))  # noqa: E731
    (tmp_path / "a.txt").write_text(book(5, "one") + "\n\n" + book(5, "two") + "\n" * 6 + book(5, "three"))
    (tmp_path / "b.txt").write_text(book(3, "four"))
    monkeypatch.setattr(T, "DOC_BLOCK", 4)
    corpus = T.load_books(tmp_path)
    assert np.bincount(corpus.doc).tolist() == [4, 4, 2, 4, 1, 3]
    assert corpus.names == ["a", "a#2", "a#3", "a#4", "a#5", "b"]
    assert corpus.sentences[9] == ["two", "sentence", "4", "."] and corpus.sentences[10][0] == "three"


def test_packing_equals_the_split_vocabulary_and_encoding_in_memory(tmp_path, monkeypatch):
    """pack_books (chunked here every 7 sentences) against Corpus.split, Vocab.build (ties by first occurrence) and
    Vocab.encode of the same folder held as lists, with prose and one-per-line files mixed; the Packed API the
    trainer and bench/bench_cuda.py use (windows, slices, iteration)."""
    monkeypatch.setattr(T, "PACK_CHUNK", 7)
    for k in range(4):
        (tmp_path / f"lines{k}.txt").write_text(lines_book(60, k), encoding="utf-8")
    (tmp_path / "prose.txt").write_text(BOOK_A * 3, encoding="utf-8")
    corpus = T.load_books(tmp_path)
    train, held = corpus.split(0.4, seed=1)
    vocab = T.Vocab.build(train.sentences, max_size=20)
    p_train, p_held, p_vocab, read = T.pack_books(tmp_path, held_out=0.4, seed=1, max_size=20, progress=False)
    assert p_vocab.words == vocab.words and read == "5 files read as 4 one sentence per line, 1 prose; 5 documents"
    for packed, part in ((p_train, train), (p_held, held)):
        assert [s.tolist() for s in packed] == [vocab.encode(s) for s in part.sentences]
        assert packed.doc.tolist() == part.doc.tolist() and isinstance(packed.tokens, np.memmap)
    assert max(map(len, p_train)) == T.MAX_TOKENS and sum(map(len, p_train)) == len(p_train.tokens)
    window = p_train[3:8]
    assert len(window) == 5 and [s.tolist() for s in window] == [s.tolist() for s in list(p_train)[3:8]]
    batch, expected = p_train.batch(torch.arange(3, 8)), T.pack([vocab.encode(s) for s in train.sentences[3:8]])
    assert torch.equal(batch.data, expected.data) and torch.equal(batch.batch_sizes, expected.batch_sizes)


def test_the_packed_cache_is_built_once_atomically_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    for k in range(2):
        (tmp_path / f"part{k}.txt").write_text(lines_book(40, k), encoding="utf-8")
    first = T.pack_books(tmp_path, progress=False)
    (built,) = [p for p in (tmp_path / ".packed").iterdir() if p.is_dir()]
    monkeypatch.setattr(T, "pack_stream", lambda *a, **k: pytest.fail("rebuilt"))
    again = T.pack_books(tmp_path, progress=False)  # read back
    assert again[2].words == first[2].words and [s.tolist() for s in again[0]] == [s.tolist() for s in first[0]]

    def killed(stream, folder, **kw):  # dies mid-build, having written part of a file
        next(iter(stream))
        (folder / "train_tokens.npy").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "pack_stream", killed)
    with (tmp_path / "part1.txt").open("a") as f:
        f.write("one more sentence .\n")
    with pytest.raises(KeyboardInterrupt):
        T.pack_books(tmp_path, progress=False)
    assert sorted(p.name.endswith(".tmp") for p in (tmp_path / ".packed").iterdir() if p.is_dir()) == [False, True]
    monkeypatch.undo()
    rebuilt = T.pack_books(tmp_path, progress=False)
    assert len(rebuilt[0]) + len(rebuilt[1]) == len(first[0]) + len(first[1]) + 1
    assert not [p for p in (tmp_path / ".packed").iterdir() if p.name.endswith(".tmp")]


def test_mr_and_cr_loaders_read_sentevals_latin1_files(tmp_path):
    pos = "a charming , caf\xe9-set romance .\nsimply superb .\n"
    (tmp_path / "rt-polarity.pos").write_bytes(pos.encode("latin-1"))  # \xe9 is one byte: not UTF-8
    (tmp_path / "rt-polarity.neg").write_bytes("tedious and silly .\n\n".encode("latin-1"))
    mr = T.load_mr(tmp_path)
    assert mr.sentences == [
        ["a", "charming", ",", "café", "-", "set", "romance", "."],
        ["simply", "superb", "."],
        ["tedious", "and", "silly", "."],
    ]
    assert mr.labels.tolist() == [1, 1, 0]
    (tmp_path / "custrev.pos").write_text("the battery lasts forever .\n", encoding="latin-1")
    (tmp_path / "custrev.neg").write_text("the screen cracked .\nno support .\n", encoding="latin-1")
    cr = T.load_cr(tmp_path)
    assert cr.labels.tolist() == [1, 0, 0] and cr.sentences[2] == ["no", "support", "."]


def test_missing_mr_and_cr_files_raise_one_line_errors_naming_them(tmp_path):
    (tmp_path / "rt-polarity.pos").write_text("good .\n")
    with pytest.raises(FileNotFoundError) as err:
        T.load_mr(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "rt-polarity.pos and rt-polarity.neg" in msg and "missing rt-polarity.neg" in msg
    assert "movie-review-data" in msg
    with pytest.raises(FileNotFoundError, match=r"custrev\.pos and custrev\.neg .*get_transfer_data"):
        T.load_cr(tmp_path)


def test_mr_reads_cornells_windows_1252_bytes_and_splits_lines_at_newlines_only(tmp_path):
    """Cornell's rt-polarity files are Windows-1252: 0x85 is "…" (U+0085 in latin-1, a line break to
    str.splitlines()) and 0x92 "’"; 0x81, undefined there, reads as latin-1."""
    pos = b"a charming \x85 and often affecting journey .\nthe film\x92s end is superb .\n"
    (tmp_path / "rt-polarity.pos").write_bytes(pos)
    (tmp_path / "rt-polarity.neg").write_bytes(b"a dull \x85 mess \x81 .\n")
    assert len(pos.decode("latin-1").splitlines()) == 3  # the old reading: one snippet too many
    mr = T.load_mr(tmp_path)
    assert mr.labels.tolist() == [1, 1, 0]
    assert mr.sentences[0] == ["a", "charming", "…", "and", "often", "affecting", "journey", "."]
    assert mr.sentences[1][:3] == ["the", "film's", "end"] and mr.sentences[2] == [
        "a",
        "dull",
        "…",
        "mess",
        "\x81",
        ".",
    ]
    (tmp_path / "rt-polarity.pos").write_text("naïve but “fun” .\n", encoding="utf-8")  # UTF-8 files read as such
    assert T.load_mr(tmp_path).sentences[0] == ["naïve", "but", "“", "fun", "”", "."]


def test_sentevals_upper_case_mr_and_cr_folders_are_read(tmp_path):
    data_dir = write_bookcorpus(tmp_path / "data")
    for task in ("mr", "cr"):
        (data_dir / task).rename(data_dir / task.upper())
    data = T.load_dataset("bookcorpus", str(data_dir))
    assert len(data.tasks["mr"].labels) == 24 and len(data.tasks["cr"].labels) == 24
    assert data.summary().endswith("; 8 files read as 8 prose; 8 documents")


def test_vocab_keeps_the_most_frequent_words_and_maps_the_rest_to_unk():
    sentences = [["the", "cat", "sat"], ["the", "dog", "sat"], ["the", "end"]]
    vocab = T.Vocab.build(sentences, max_size=4)
    assert vocab.words == [T.PAD, T.UNK, "the", "sat"] and len(vocab) == 4
    assert vocab.encode(["the", "dog", "sat", "zebra"]) == [2, 1, 3, 1]
    assert vocab.encode(["the"] * 50, max_tokens=30) == [2] * 30
    assert len(T.Vocab.build(sentences, max_size=1000)) == 2 + 5
    with pytest.raises(ValueError, match="max_size >= 3"):
        T.Vocab.build(sentences, max_size=2)


def test_batches_are_consecutive_runs_and_pairs_are_neighbours_in_one_document():
    batches = T.contiguous_batches(11, 4, torch.Generator().manual_seed(0))
    assert sorted(b.tolist() for b in batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert len(T.contiguous_batches(9, 4)) == 2  # a last run of 1 sentence has no neighbour: dropped
    doc = torch.tensor([0, 0, 0, 1, 1, 2])
    i, j = T.neighbour_pairs(doc, context=1)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)]
    i, j = T.neighbour_pairs(doc, context=2)
    assert (0, 2) in set(zip(i.tolist(), j.tolist())) and (1, 3) not in set(zip(i.tolist(), j.tolist()))
    assert ((i - j).abs() <= 2).all() and (doc[i] == doc[j]).all() and (i != j).all()


@pytest.mark.parametrize("normalize", [True, False])
def test_packed_batch_equals_encoding_each_sentence_alone(normalize):
    torch.manual_seed(0)
    model = T.QuickThought(vocab_size=50, word_dim=8, dim=12, normalize=normalize).double()
    ids = [[5, 7, 9, 2, 3], [4], [8, 8, 1, 6], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    zf, zg = model(T.pack(ids))
    for k, s in enumerate(ids):
        f1, g1 = model(T.pack([s]))
        torch.testing.assert_close(zf[k], f1[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(zg[k], g1[0], rtol=0, atol=1e-12)
    assert zf.shape == (4, 12) and not torch.allclose(zf, zg)  # f and g are separate encoders
    if normalize:
        torch.testing.assert_close(zf.norm(dim=1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty sentence"):
        T.pack([[3], []])


def _brute_force_qt(zf, zg, doc, context, tau, self_score):
    terms = []
    for i in range(len(zf)):
        neighbours = [j for j in range(len(zf)) if j != i and abs(i - j) <= context and doc[i] == doc[j]]
        if not neighbours:
            continue
        scores = [(zf[i] @ zg[j]).item() / tau for j in range(len(zf))]
        candidates = [j for j in range(len(zf)) if j != i or self_score is not None]
        if self_score is not None:
            scores[i] = self_score
        log_z = math.log(sum(math.exp(scores[j]) for j in candidates))
        terms.append(-sum(scores[j] - log_z for j in neighbours) / len(neighbours))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("context,tau,self_score", [(1, 1.0, None), (2, 0.3, None), (1, 0.5, 0.0)])
def test_qt_contrastive_loss_equals_brute_force(context, tau, self_score):
    g = torch.Generator().manual_seed(1)
    zf, zg = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    doc = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # sentence 6 has no neighbour
    loss = T.qt_contrastive_loss(zf, zg, doc, context, tau, self_score)
    assert loss.item() == pytest.approx(_brute_force_qt(zf, zg, doc, context, tau, self_score), rel=1e-6)
    with pytest.raises(ValueError, match="no two neighbouring sentences"):
        T.qt_contrastive_loss(zf, zg, torch.arange(7))


def test_qt_objective_align_over_neighbours_and_uniform_as_a_sum():
    g = torch.Generator().manual_seed(2)
    zf = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    zg = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    doc = torch.tensor([0, 0, 0, 1, 1, 1])
    total, values = T.qt_objective(Objective.parse("0.5*align(alpha=2) + 2*uniform(t=3)"), zf, zg, doc)
    pairs = [(i, j) for i in range(6) for j in range(6) if abs(i - j) == 1 and doc[i] == doc[j]]
    assert values["align"].item() == pytest.approx(np.mean([(zf[i] - zg[j]).pow(2).sum().item() for i, j in pairs]))
    assert values["uniform"].item() == pytest.approx((uniform_loss(zf, 3) + uniform_loss(zg, 3)).item())
    assert total.item() == pytest.approx(0.5 * values["align"].item() + 2 * values["uniform"].item())
    with pytest.raises(ValueError, match="no Quick-Thought form"):
        T.qt_objective(Objective.parse("xent"), zf, zg, doc)


@pytest.mark.parametrize("spec", ["contrastive(tau=0.1)", "align(alpha=2) + uniform(t=2)", "align(alpha=1)"])
def test_a_collapsed_encoder_gives_finite_gradients(spec):
    torch.manual_seed(0)
    model = T.QuickThought(vocab_size=30, word_dim=6, dim=8)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every sentence -> the zero vector (the GRU state never leaves 0)
    zf, zg = model(T.pack([[3, 4], [5], [6, 7, 8], [9]]))
    assert (zf == 0).all() and (zg == 0).all()
    total, _ = T.qt_objective(Objective.parse(spec), zf, zg, torch.zeros(4, dtype=torch.long))
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def write_bookcorpus(root: Path) -> Path:
    """A data folder in the accepted layouts: books as plain text, MR and CR as SentEval's latin-1 files."""
    (root / "bookcorpus").mkdir(parents=True)
    for k in range(8):  # 8 books of ~15 sentences each
        (root / "bookcorpus" / f"book{k}.txt").write_text((BOOK_A + "\n\n" + BOOK_B + "\n\n") * 2, encoding="utf-8")
    for folder, (pos, neg) in (("mr", T.MR_FILES), ("cr", T.CR_FILES)):
        (root / folder).mkdir()
        (root / folder / pos).write_bytes("a charming , caf\xe9-set romance .\nsimply superb .\n".encode("latin-1") * 6)
        (root / folder / neg).write_bytes("tedious and silly .\na dull mess .\n".encode("latin-1") * 6)
    return root


TINY = dict(
    dataset="bookcorpus",
    arch="qt-small",
    dim=8,
    epochs=2,
    batch_size=16,
    optimizer="adam",
    lr=1e-2,
    clip_grad=0.5,
    weight_decay=0.0,
    lr_decay_at=(),
    device="cpu",
)


def test_the_trainer_trains_sentence_encoders_deterministically_and_evaluates_them(tmp_path):
    """train.train() on a BookCorpus-layout folder: batches are windows of consecutive sentences, the run is
    deterministic, its record is complete, and the `sentences` evaluation gives accuracies and both metrics."""
    data_dir = write_bookcorpus(tmp_path / "data")
    cfg = TrainConfig(
        **TINY,
        objective="contrastive(tau=0.5)",
        data_dir=str(data_dir),
        runs_dir=str(tmp_path / "a"),
        snapshot_epochs=(0, 2),
    )
    a = train(cfg, progress=False)
    b = train(replace(cfg, runs_dir=str(tmp_path / "b")), progress=False)
    wa, wb = (runs.load_checkpoint(d / runs.CHECKPOINT)["encoder"] for d in (a, b))
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    data = T.load_dataset("bookcorpus", str(data_dir))
    assert runs.load_summary(a)["steps"] == 2 * (len(data) // 16) and runs.load_summary(a)["final_loss"] > 0
    untrained = T.build_encoder("qt-small", 8, data)
    assert not torch.equal(wa["f.gru.weight_hh_l0"], untrained.state_dict()["f.gru.weight_hh_l0"])
    order = T.contiguous_order(len(data), 16, torch.Generator().manual_seed(0)).view(-1, 16)
    assert sorted(order[:, 0].tolist()) == list(range(0, 16 * len(order), 16)) and (order.diff(dim=1) == 1).all()
    record = evaluate_run(
        a, EvalConfig(kind="sentences", cv_folds=2, l2_folds=2, snapshots=True), device="cpu", data_dir=str(data_dir)
    )
    r = record["results"]
    assert set(r) == {
        "val_mr",
        "cv_mr",
        "n_mr",
        "val_cr",
        "cv_cr",
        "n_cr",
        "align",
        "uniform",
        "uniform_f",
        "uniform_g",
        "uniform_n",
        "uniform_se",
        "contrastive",
        "rankme",
        "uniform_centred",
        "eigen_decay",
    }
    assert r["n_mr"] == len(data.tasks["mr"].labels) and r["n_cr"] == len(data.tasks["cr"].labels)
    assert [p["epoch"] for p in record["trajectory"]] == [0, 2]  # the snapshots, evaluated the same way
    assert {k: record["trajectory"][-1][k] for k in r} == pytest.approx(r)
    assert (
        0 <= r["align"] <= 4
        and r["uniform"] == pytest.approx(r["uniform_f"] + r["uniform_g"])
        and -16 <= r["uniform"] <= 0
    )
    with pytest.raises(ValueError, match="does not apply"):
        evaluate_run(a, EvalConfig(kind="classify"), device="cpu", data_dir=str(data_dir))


def held_stream(n: int = 3000, docs: int = 30, seed: int = 0) -> T.Packed:
    """A held-out stream of n random sentences of 1-11 word ids in `docs` documents."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 12, n))])
    return T.Packed(
        rng.integers(2, 50, offsets[-1]).astype(np.int32),
        offsets,
        np.repeat(np.arange(docs), n // docs).astype(np.int32),
    )


def test_pair_metrics_are_exact_below_the_sample_size_and_a_seeded_sample_above_it(monkeypatch):
    """At most `sample` held-out sentences: all of them, exactly as before (the stand-in's case), or a seeded sample
    whose estimate lies within a few standard errors of the whole set's, only its sentences (and their neighbours,
    and the sampled windows) encoded."""
    from hypersphere.metrics import alignment, uniformity

    torch.manual_seed(0)
    model = T.QuickThought(vocab_size=50, word_dim=8, dim=8)
    held = held_stream()
    data = SimpleNamespace(held=held)  # what pair_metrics reads of a TextData
    full = T.pair_metrics(model, data, tau=0.5, batch_size=100)
    zf, zg = T.encode_ids(model, held)
    i, j = T.neighbour_pairs(torch.as_tensor(held.doc))
    assert full["align"] == alignment(zf[i], zg[j], normalize=True) and full["uniform_n"] == 3000
    assert full["uniform_f"] == uniformity(zf, normalize=True) and full["uniform_g"] == uniformity(zg, normalize=True)
    encoded, encode_ids = [], T.encode_ids
    monkeypatch.setattr(T, "encode_ids", lambda model, ids, *a: encoded.append(len(ids)) or encode_ids(model, ids, *a))
    sub = T.pair_metrics(model, data, tau=0.5, batch_size=100, sample=300, seed=0)
    assert sub["uniform_n"] == 300 and encoded[0] <= 2 * 300 + 3 * 100
    assert sub == T.pair_metrics(model, data, tau=0.5, batch_size=100, sample=300, seed=0)
    assert sub["uniform"] != T.pair_metrics(model, data, tau=0.5, batch_size=100, sample=300, seed=1)["uniform"]
    assert abs(sub["uniform"] - full["uniform"]) < 4 * sub["uniform_se"] and 0 < full["uniform_se"] < sub["uniform_se"]
    assert sub["align"] == pytest.approx(full["align"], rel=0.05)
    assert sub["contrastive"] == pytest.approx(full["contrastive"], rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_held_out_metrics_and_label_free_statistics_run_on_the_models_device():

    from hypersphere.metrics import label_free

    torch.manual_seed(0)
    model = T.QuickThought(vocab_size=50, word_dim=8, dim=8)
    held = held_stream()
    data = SimpleNamespace(held=held)
    cpu = T.pair_metrics(model, data, tau=0.5, batch_size=100, sample=500)
    model.cuda()
    assert T.pair_metrics(model, data, tau=0.5, batch_size=100, sample=500) == pytest.approx(cpu, rel=1e-3)
    feats = T.validation_features(model, SimpleNamespace(held=held), SimpleNamespace(seed=0), "cuda")
    assert feats.is_cuda and len(feats) == 3000
    assert label_free(feats) == pytest.approx(label_free(feats.cpu()), rel=1e-3)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(objective="xent"), "no Quick-Thought form"),
        (dict(queue=400), "no queue"),
        (dict(arch="smallalexnet"), "unknown arch"),
        (dict(optimizer="adam", lr=0.0), "explicit lr"),
        (dict(dim=9), "even dim"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
    ],
)
def test_bad_sentence_configs_are_refused_before_any_data_is_read(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, **kw})


def test_new_trainer_fields_at_their_defaults_leave_older_run_names_alone():
    image = TrainConfig(dataset="digits")
    assert "optimizer" not in image.hashed() and "clip_grad" not in image.hashed()
    assert TrainConfig(**TINY).hashed()["optimizer"] == "adam" and TrainConfig(**TINY).hashed()["clip_grad"] == 0.5
    assert "max_examples" not in EvalConfig().hashed() and EvalConfig(max_examples=10).hashed()["max_examples"] == 10


def test_a_diverged_sentence_run_is_a_failed_row_with_its_step(tmp_path):
    """tau = 1e-40 overflows the scores to inf at the first step (a bounded GRU shrugs off any lr): failed.json
    says the epoch and step, and the sweep table keeps the run as a row without metrics next to a finished one."""
    data_dir = write_bookcorpus(tmp_path / "data")
    defaults = {**TINY, "epochs": 1, "data_dir": str(data_dir), "runs_dir": str(tmp_path / "runs"), "lr_decay_at": []}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "defaults": defaults,
                "evaluation": {"kind": "sentences", "cv_folds": 2, "l2_folds": 2},
                "runs": [{"objective": "contrastive(tau=1e-40)"}, {"objective": "align(alpha=2) + uniform(t=2)"}],
            }
        )
    )
    df = run_sweep(load_sweep(sweep), tmp_path / "s.csv", progress=False)
    assert list(df["status"]) == ["failed", "done"]
    failed = json.loads((Path(df.loc[0, "run_dir"]) / runs.FAILED).read_text())
    assert failed["epoch"] == 1 and failed["step"] == 1 and df.loc[0, "failed_step"] == 1
    assert "nan in epoch 1, first at its step 1 of 7" in failed["reason"]
    assert np.isnan(df.loc[0, "val_mr"]) and np.isfinite(df.loc[1, "val_mr"])


def test_a_killed_sentence_run_resumes_to_the_same_weights(tmp_path):
    """kill -9 mid-epoch (state saved after every step; the process kills itself after step 2: train.py's test hook),
    rerun: the weights and log equal an uninterrupted run's."""
    data_dir = write_bookcorpus(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(runs_dir, *extra):
        recipe = (
            "--dataset bookcorpus --arch qt-small --dim 8 --epochs 1 --batch-size 4 --optimizer adam --lr 0.01 "
            "--clip-grad 0.5 --weight-decay 0 --lr-decay-at"
        ).split()
        where = ["--data-dir", str(data_dir), "--runs-dir", str(runs_dir)]
        return [sys.executable, "-m", "hypersphere", "train", *recipe, *where, "--quiet", *extra]

    subprocess.run(cmd(tmp_path / "a"), env=env, check=True, capture_output=True)
    (run_a,) = (tmp_path / "a").iterdir()
    run_b = tmp_path / "b" / run_a.name
    killed = subprocess.run(
        cmd(tmp_path / "b", "--checkpoint-minutes", "0"), capture_output=True, env={**env, "HYPERSPHERE_KILL_AT": "1:2"}
    )  # SIGKILLs itself after step 2's save
    assert killed.returncode == -signal.SIGKILL
    assert runs.train_status(run_b, TRAIN_VERSION) == "todo", "kill it before it finishes"
    subprocess.run(cmd(tmp_path / "b", "--checkpoint-minutes", "0"), env=env, check=True, capture_output=True)
    assert len(runs.load_summary(run_b)["resumed"]) == 1
    a, b = (runs.load_checkpoint(d / runs.CHECKPOINT)["encoder"] for d in (run_a, run_b))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def log(d):
        return [
            {k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
            for row in csv.DictReader((d / runs.LOG).open())
        ]

    assert log(run_a) == log(run_b)


def test_the_paper_sweep_has_a_run_per_row_of_table_10_with_its_numbers():
    sweep_runs = load_sweep(resources.configs() / "sweeps" / "paper" / "sentences.yaml")  # validates, trains nothing
    assert len(sweep_runs) == 114
    by_row = {int(r.paper["paper_row"]): r for r in sweep_runs}
    qt = by_row[1].config  # QT's own encoder: unnormalised, tau 1
    assert (qt.arch, qt.canonical_objective, qt.dim, qt.batch_size, qt.lr, qt.epochs) == (
        "qt-raw",
        "contrastive(tau=1)",
        1200,
        400,
        5e-4,
        1,
    )
    assert (qt.optimizer, qt.clip_grad, qt.dataset) == ("adam", 0.5, "bookcorpus") and by_row[16].config.arch == "qt"
    assert by_row[47].config.canonical_objective == "0.9*align(alpha=2) + 0.1*uniform(t=5)"
    assert by_row[47].paper["paper_val_mr"] == 73.76 and by_row[5].paper["paper_val_mr"] == 77.51
    assert [r for r in by_row if by_row[r].paper["paper_nan"]] == list(range(109, 115))
    assert len({r.config.run_dir() for r in sweep_runs}) == 114  # rows 42-44 repeat one configuration: seeds 0, 1, 2
    assert len({r.config.run_dir() for r in sweep_runs if r.config.seed == 0}) == 112
    assert all(r.evaluation.kind == "sentences" and r.evaluation.cv_folds == 10 for r in sweep_runs)


def test_nested_cv_returns_one_accuracy_and_one_c_per_fold_and_is_deterministic():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 45)
    x = rng.normal(size=(90, 5)) + 1.5 * y[:, None] * np.array([1, 0, 0, 0, 0])
    r1 = T.nested_cv_accuracy(x, y, folds=3, inner_folds=2, seed=0)
    r2 = T.nested_cv_accuracy(x, y, folds=3, inner_folds=2, seed=0)
    assert r1 == r2 and len(r1["fold_acc"]) == 3 and len(r1["C"]) == 3
    assert set(r1["C"]) <= set(T.C_GRID) and r1["acc"] == pytest.approx(np.mean(r1["fold_acc"]))
    assert r1["acc"] > 70
    shuffled = T.nested_cv_accuracy(x, rng.permutation(y), cs=(1.0,), folds=3, inner_folds=2, seed=0)
    assert shuffled["acc"] < r1["acc"] - 15 and shuffled["C"] == [1.0] * 3


needs_standin = pytest.mark.skipif(
    importlib.util.find_spec(T.STANDIN_PACKAGE) is None, reason=f"the embedded text stand-in needs {T.STANDIN_PIN}"
)


@needs_standin
def test_standin_is_an_ordered_corpus_and_balanced_labelled_sets_disjoint_from_it():
    corpus, tasks = T.load_standin()
    assert len(corpus) > 19_000 and len(corpus.names) > 1_000
    assert (np.diff(corpus.doc) >= 0).all()  # documents are contiguous runs
    sentiment, subjectivity = tasks["sentiment"], tasks["subjectivity"]
    assert len(sentiment.sentences) > 10_000 and len(subjectivity.sentences) > 2_500
    assert sentiment.labels.mean() == 0.5 and subjectivity.labels.mean() == 0.5
    prose = {tuple(s) for s in corpus.sentences}
    for task in tasks.values():  # no labelled sentence was trained on (bar a few generic ones)
        assert sum(tuple(s) in prose for s in task.sentences) < 0.005 * len(task.sentences)
    again, _ = T.load_standin()
    assert again.sentences == corpus.sentences and again.names == corpus.names


@pytest.mark.slow
@needs_standin
def test_a_briefly_trained_encoder_beats_random_embeddings_on_the_standin(tmp_path):
    """Two epochs of a small encoder (~20 s on one core) against the same encoder at initialisation (epochs 0), on
    the subjectivity task (the sentiment task moves little: about +1 point)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = TrainConfig(
            dataset="standin",
            arch="qt-small",
            dim=64,
            batch_size=400,
            optimizer="adam",
            lr=2e-3,
            clip_grad=0.5,
            weight_decay=0.0,
            lr_decay_at=(),
            objective="contrastive(tau=0.1)",
            device="cpu",
            runs_dir=str(tmp_path),
        )
        ev = EvalConfig(kind="sentences", cv_folds=5, l2_folds=3, max_examples=2000)
        acc = {
            epochs: evaluate_run(train(replace(base, epochs=epochs), progress=False), ev, device="cpu")["results"]
            for epochs in (0, 2)
        }
    finally:
        torch.set_num_threads(threads)
    assert acc[2]["val_subjectivity"] > acc[0]["val_subjectivity"] + 3, acc  # measured: 63.7 -> 68.9 (3000 examples)
    assert acc[2]["uniform"] < acc[0]["uniform"] - 1  # random outputs are far from uniform; training spreads them


def test_the_data_command_summarises_the_sentence_stand_in(capsys):
    from hypersphere.__main__ import main

    assert main(["data", "standin"]) == 0
    data = T.load_dataset("standin")
    out = capsys.readouterr().out
    assert out.startswith(f"standin: {len(data)} training sentences in ") and "sentiment (" in out


def test_vectorized_bookcorpus_writes_the_same_form(tmp_path):
    """miniature.write_bookcorpus(vectorized=True), the scale model's fast writer for millions of sentences: one
    sentence of 4-19 words and " ." per line, as the default writer's."""
    for vectorized in (False, True):
        miniature.write_bookcorpus(tmp_path / str(vectorized), n=300, books=3, vectorized=vectorized)
        lines = [
            line
            for book in sorted((tmp_path / str(vectorized) / "bookcorpus").glob("*.txt"))
            for line in book.read_text().splitlines()
        ]
        assert len(lines) == 300 and all(re.fullmatch(r"(w\d+ ){4,19}\.", line) for line in lines)
