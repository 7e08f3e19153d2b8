"""The sentence domain (domains/text.py): loaders on files in the real formats, vocabulary, contiguous batches, packed
encoders, the Quick-Thought losses against brute force, the nested-CV protocol, and learnability on the
embedded stand-in."""
import csv
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import yaml

from hypersphere import resources, runs
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


TINY = dict(dataset="bookcorpus", arch="qt-small", dim=8, epochs=2, batch_size=16, optimizer="adam", lr=1e-2,
            clip_grad=0.5, weight_decay=0.0, lr_decay_at=(), device="cpu")


def test_the_trainer_trains_sentence_encoders_deterministically_and_evaluates_them(tmp_path):
    """train.train() on a BookCorpus-layout folder: batches are windows of consecutive sentences, the run is
    deterministic, its record is complete, and the `sentences` evaluation gives accuracies and both metrics."""
    data_dir = write_bookcorpus(tmp_path / "data")
    cfg = TrainConfig(**TINY, objective="contrastive(tau=0.5)", data_dir=str(data_dir), runs_dir=str(tmp_path / "a"),
                      snapshot_epochs=(0, 2))
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
    record = evaluate_run(a, EvalConfig(kind="sentences", cv_folds=2, l2_folds=2, snapshots=True), device="cpu",
                          data_dir=str(data_dir))
    r = record["results"]
    assert set(r) == {"val_mr", "cv_mr", "n_mr", "val_cr", "cv_cr", "n_cr", "align", "uniform", "uniform_f", "uniform_g",
                      "contrastive", "rankme", "uniform_centred", "eigen_decay"}
    assert r["n_mr"] == len(data.tasks["mr"].labels) and r["n_cr"] == len(data.tasks["cr"].labels)
    assert [p["epoch"] for p in record["trajectory"]] == [0, 2]  # the snapshots, evaluated the same way
    assert {k: record["trajectory"][-1][k] for k in r} == pytest.approx(r)
    assert 0 <= r["align"] <= 4 and r["uniform"] == pytest.approx(r["uniform_f"] + r["uniform_g"]) and -16 <= r["uniform"] <= 0
    with pytest.raises(ValueError, match="does not apply"):
        evaluate_run(a, EvalConfig(kind="classify"), device="cpu", data_dir=str(data_dir))


@pytest.mark.parametrize("kw, message", [
    (dict(objective="xent"), "no Quick-Thought form"), (dict(queue=400), "no queue"), (dict(arch="smallalexnet"), "unknown arch"),
    (dict(optimizer="adam", lr=0.0), "explicit lr"), (dict(dim=9), "even dim"), (dict(optimizer="rmsprop"), "unknown optimizer")])
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
    sweep.write_text(yaml.safe_dump({"defaults": defaults, "evaluation": {"kind": "sentences", "cv_folds": 2, "l2_folds": 2},
                                     "runs": [{"objective": "contrastive(tau=1e-40)"},
                                              {"objective": "align(alpha=2) + uniform(t=2)"}]}))
    df = run_sweep(load_sweep(sweep), tmp_path / "s.csv", progress=False)
    assert list(df["status"]) == ["failed", "done"]
    failed = json.loads((Path(df.loc[0, "run_dir"]) / runs.FAILED).read_text())
    assert failed["epoch"] == 1 and failed["step"] == 1 and df.loc[0, "failed_step"] == 1
    assert "nan in epoch 1, first at its step 1 of 7" in failed["reason"]
    assert np.isnan(df.loc[0, "val_mr"]) and np.isfinite(df.loc[1, "val_mr"])


def test_a_killed_sentence_run_resumes_to_the_same_weights(tmp_path):
    """kill -9 mid-epoch (state saved after every step), rerun: the weights and log equal an uninterrupted run's."""
    data_dir = write_bookcorpus(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = lambda runs_dir, *extra: [sys.executable, "-m", "hypersphere", "train", "--dataset", "bookcorpus", "--arch",  # noqa: E731
                                    "qt-small", "--dim", "8", "--epochs", "1", "--batch-size", "4", "--optimizer", "adam",
                                    "--lr", "0.01", "--clip-grad", "0.5", "--weight-decay", "0", "--lr-decay-at",
                                    "--data-dir", str(data_dir), "--runs-dir", str(runs_dir), "--quiet", *extra]
    subprocess.run(cmd(tmp_path / "a"), env=env, check=True, capture_output=True)
    (run_a,) = (tmp_path / "a").iterdir()
    run_b = tmp_path / "b" / run_a.name
    proc = subprocess.Popen(cmd(tmp_path / "b", "--checkpoint-minutes", "0"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        state = runs.load_state(run_b, json.loads((run_a / runs.CONFIG).read_text()), TRAIN_VERSION)
        if state is not None and state["step"] >= 2:  # mid-epoch
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert runs.train_status(run_b, TRAIN_VERSION) == "todo", "kill it before it finishes"
    subprocess.run(cmd(tmp_path / "b", "--checkpoint-minutes", "0"), env=env, check=True, capture_output=True)
    assert len(runs.load_summary(run_b)["resumed"]) == 1
    a, b = (runs.load_checkpoint(d / runs.CHECKPOINT)["encoder"] for d in (run_a, run_b))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = lambda d: [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}  # noqa: E731
                     for row in csv.DictReader((d / runs.LOG).open())]
    assert log(run_a) == log(run_b)


def test_the_paper_sweep_has_a_run_per_row_of_table_10_with_its_numbers():
    sweep_runs = load_sweep(resources.configs() / "sweeps" / "paper" / "sentences.yaml")  # validates, trains nothing
    assert len(sweep_runs) == 114
    by_row = {int(r.paper["paper_row"]): r for r in sweep_runs}
    qt = by_row[1].config  # QT's own encoder: unnormalised, tau 1
    assert (qt.arch, qt.canonical_objective, qt.dim, qt.batch_size, qt.lr, qt.epochs) == ("qt-raw", "contrastive(tau=1)",
                                                                                          1200, 400, 5e-4, 1)
    assert (qt.optimizer, qt.clip_grad, qt.dataset) == ("adam", 0.5, "bookcorpus") and by_row[16].config.arch == "qt"
    assert by_row[47].config.canonical_objective == "0.9*align(alpha=2) + 0.1*uniform(t=5)"
    assert by_row[47].paper["paper_val_mr"] == 73.76 and by_row[5].paper["paper_val_mr"] == 77.51
    assert [r for r in by_row if by_row[r].paper["paper_nan"]] == list(range(109, 115))
    assert len({r.config.run_dir() for r in sweep_runs}) == 112  # rows 42-44 repeat one configuration
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
def test_a_briefly_trained_encoder_beats_random_embeddings_on_the_standin(tmp_path):
    """Two epochs of a small encoder (~20 s on one core) against the same encoder at initialisation (epochs 0), on
    the subjectivity task (the sentiment task moves little: about +1 point)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = TrainConfig(dataset="standin", arch="qt-small", dim=64, batch_size=400, optimizer="adam", lr=2e-3,
                           clip_grad=0.5, weight_decay=0.0, lr_decay_at=(), objective="contrastive(tau=0.1)",
                           device="cpu", runs_dir=str(tmp_path))
        ev = EvalConfig(kind="sentences", cv_folds=5, l2_folds=3, max_examples=2000)
        acc = {epochs: evaluate_run(train(replace(base, epochs=epochs), progress=False), ev, device="cpu")["results"]
               for epochs in (0, 2)}
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
