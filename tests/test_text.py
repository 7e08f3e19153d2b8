"""The sentence domain (text.py): loaders on files in the real formats, vocabulary, contiguous batches, packed
encoders, the Quick-Thought losses against brute force, the nested-CV protocol, and learnability on the
embedded stand-in."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from hypersphere import text as T
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
        "Mrs. Long says that Netherfield is taken!"]
    assert T.split_sentences("J. K. Smith wrote it. U.S. Army men read it.") == [
        "J. K. Smith wrote it.", "U.S. Army men read it."]
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


def test_mr_and_cr_loaders_read_sentevals_latin1_files(tmp_path):
    pos = "a charming , caf\xe9-set romance .\nsimply superb .\n"
    (tmp_path / "rt-polarity.pos").write_bytes(pos.encode("latin-1"))  # \xe9 is one byte: not UTF-8
    (tmp_path / "rt-polarity.neg").write_bytes("tedious and silly .\n\n".encode("latin-1"))
    mr = T.load_mr(tmp_path)
    assert mr.sentences == [["a", "charming", ",", "café", "-", "set", "romance", "."], ["simply", "superb", "."],
                            ["tedious", "and", "silly", "."]]
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


def test_training_is_deterministic_and_changes_the_encoders():
    corpus = T.corpus_from_texts(["a", "b"], [BOOK_A, BOOK_B])
    cfg = T.QTConfig(word_dim=8, dim=8, vocab_size=40, batch_size=4, epochs=2, lr=1e-2)
    (m1, vocab, h1), (m2, _, h2) = T.train_quick_thought(corpus, cfg), T.train_quick_thought(corpus, cfg)
    assert h1 == h2 and len(h1) == 4 and all(math.isfinite(h["loss"]) for h in h1)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    untrained, _, _ = T.train_quick_thought(corpus, T.QTConfig(**{**cfg.__dict__, "epochs": 0}))
    assert not torch.equal(m1.f.gru.weight_hh_l0, untrained.f.gru.weight_hh_l0)
    f = T.features(m1, corpus.sentences, vocab)
    assert f.shape == (len(corpus), 16)
    metrics = T.pair_metrics(m1, corpus, vocab)
    zf, zg = T.encode(m1, corpus.sentences, vocab)
    i, j = T.neighbour_pairs(torch.as_tensor(corpus.doc))
    assert metrics["align"] == pytest.approx((zf[i] - zg[j]).pow(2).sum(1).mean().item(), rel=1e-5)
    assert -4 <= metrics["uniform"] <= 0 and metrics["uniform"] == pytest.approx(
        (metrics["uniform_f"] + metrics["uniform_g"]) / 2)


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


needs_standin = pytest.mark.skipif(importlib.util.find_spec(T.STANDIN_PACKAGE) is None,
                                   reason=f"the embedded text stand-in needs {T.STANDIN_PIN}")


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
def test_a_briefly_trained_encoder_beats_random_embeddings_on_the_standin():
    """Two epochs of a small encoder (~20 s on one core) against the same encoder at initialisation, on the
    subjectivity task (the sentiment task needs longer training to move: about +2 points after 4 epochs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus, tasks = T.load_standin()
        cfg = T.QTConfig(vocab_size=5000, word_dim=32, dim=64, lr=3e-3, epochs=2)
        random_init, vocab, _ = T.train_quick_thought(corpus, T.QTConfig(**{**cfg.__dict__, "epochs": 0}))
        trained, _, history = T.train_quick_thought(corpus, cfg, vocab)
        task = tasks["subjectivity"]
        acc = {name: T.nested_cv_accuracy(T.features(model, task.sentences, vocab), task.labels, folds=5,
                                          inner_folds=3)["acc"]
               for name, model in [("random", random_init), ("trained", trained)]}
    finally:
        torch.set_num_threads(threads)
    assert history[-1]["loss"] < history[0]["loss"] - 0.2
    assert acc["trained"] > acc["random"] + 3, acc  # measured: 63.0 -> 69.5
