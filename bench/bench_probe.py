"""Benchmark 4: cost of evaluating encoders.

Row 1: one encoder, cached features vs the paper's full linear probe.

Ours ("cached"): probes.extract_features once (train + validation, evaluation transform), then
linear_probe_cached and knn_accuracy (k = 5) on those features.
Reference ("full"): probes.linear_probe_full, the paper's protocol: new random crops of the labeled train
split through the frozen encoder every epoch (plus one pass over the validation split).
Same encoder (DigitsNet briefly trained with align + uniform on the real digits), tap, schedule and seed;
measured at the epoch counts listed, nothing extrapolated. Target: >= 10x faster, linear accuracy equal
within noise (here: within 2 binomial standard errors of the validation accuracy).

The full probe's cost grows with the epochs while the cached one's is mostly the single extraction pass,
so the ratio grows with the epoch count and is roughly the ratio of encoder passes (augmentation adds a little),
(epochs * n_train + n_val) / (n_train + n_val), which the note gives (the paper's probe has 100 epochs).

Row 2: as many sweep workers as cores, each running the sentence evaluation's nested-CV logistic regression
(text.nested_cv_accuracy, scikit-learn on numpy's BLAS) at once, with each worker's BLAS capped at one thread as
sweep.run_one does ("ours") against BLAS left at its default of a thread per core ("reference"): the
oversubscribed cores spin-wait. Target: >= 1 (the cap never slows the sweep).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from hypersphere import runs
from hypersphere.domains.image import load_dataset
from hypersphere.probes import ProbeConfig, extract_features, knn_accuracy, linear_probe_cached, linear_probe_full
from hypersphere.domains.text import nested_cv_accuracy
from hypersphere.train import TrainConfig, make_encoder, train
from timing import Row, fmt_time, interleaved, median, speedup

TAP = "output"


def trained_digits_encoder(epochs: int):
    """DigitsNet trained `epochs` epochs with align + uniform on the embedded digits (no download)."""
    cfg = TrainConfig(
        dataset="digits",
        arch="digitsnet",
        dim=32,
        batch_size=128,
        epochs=epochs,
        objective="align(alpha=2) + uniform(t=2)",
        device="cpu",
        name="bench-probe",
    )
    data = load_dataset("digits")
    with tempfile.TemporaryDirectory(prefix="hypersphere-bench-") as tmp:
        run_dir = train(dataclasses.replace(cfg, runs_dir=tmp), progress=False, data=data)
        state = runs.load_checkpoint(Path(run_dir) / runs.CHECKPOINT)["encoder"]
    encoder = make_encoder(cfg, data)
    encoder.load_state_dict(state)
    return encoder.eval(), data


def run(quick: bool) -> list[Row]:
    encoder, data = trained_digits_encoder(epochs=1 if quick else 5)
    epoch_counts = (2,) if quick else (5, 20)
    rounds = 1 if quick else 2
    rows = []
    for epochs in epoch_counts:
        cfg = ProbeConfig(epochs=epochs)
        acc = {}

        def cached() -> None:
            tr = extract_features(encoder, data.train_images, data, (TAP,))[TAP]
            va = extract_features(encoder, data.val_images, data, (TAP,))[TAP]
            acc["cached"] = linear_probe_cached(tr, data.train_labels, va, data.val_labels, cfg)
            acc["5nn"] = knn_accuracy(tr, data.train_labels, va, data.val_labels, k=5)

        def full() -> None:
            acc["full"] = linear_probe_full(encoder, TAP, data, cfg)[0]  # top-1

        cached()  # warm-up
        t_ours, t_ref = interleaved(cached, full, rounds)
        n_train, n_val = len(data.train_labels), len(data.val_labels)
        # cached: one encoder pass over train + val; full: `epochs` passes over train + one over val
        passes = (epochs * n_train + n_val) / (n_train + n_val)
        p = acc["full"] / 100
        se = 100 * math.sqrt(max(p * (1 - p), 1e-4) / n_val)  # binomial standard error, in points
        same = abs(acc["cached"] - acc["full"]) <= 2 * se
        rows.append(
            Row(
                "probe",
                f"digits DigitsNet {TAP}: {epochs} probe epochs, cached (+5-NN) vs full",
                f"{fmt_time(median(t_ours))}, linear {acc['cached']:.1f}%, 5-NN {acc['5nn']:.1f}%",
                f"{fmt_time(median(t_ref))}, linear {acc['full']:.1f}%",
                speedup(t_ours, t_ref),
                10.0,
                note=f"accuracy gap {acc['cached'] - acc['full']:+.1f} pts ({'within' if same else 'OUTSIDE'} 2 SE = "
                f"{2 * se:.1f} pts, {n_val} val images); encoder passes full/cached = {passes:.1f}",
                raw={
                    "ours_s": t_ours,
                    "reference_s": t_ref,
                    "epochs": epochs,
                    "cached_linear": acc["cached"],
                    "cached_5nn": acc["5nn"],
                    "full_linear": acc["full"],
                    "accuracy_within_2se": same,
                },
            )
        )
    return rows + [blas_cap_row(quick)]


def _sentence_probe(cap: int | None, n: int, seed: int) -> None:
    """One worker's evaluation of one task: nested-CV logistic regression on n noisy linearly labelled 128-d
    features (the size of the quick sentence encoders' f || g), with BLAS capped at `cap` threads (None: default)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 128))
    y = (x @ rng.normal(size=128) + 8 * rng.normal(size=n) > 0).astype(int)
    with threadpool_limits(cap) if cap else contextlib.nullcontext():
        nested_cv_accuracy(x, y, folds=5, inner_folds=3)


def blas_cap_row(quick: bool) -> Row:
    workers, n, rounds = os.cpu_count() or 1, 1000 if quick else 4000, 1 if quick else 3
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:

        def all_workers(cap: int | None) -> None:
            list(pool.map(_sentence_probe, [cap] * workers, [n] * workers, range(workers)))

        all_workers(1)  # warm-up: each worker imports scikit-learn once
        t_ours, t_ref = interleaved(lambda: all_workers(1), lambda: all_workers(None), rounds)
    return Row(
        "probe",
        f"{workers} workers' nested-CV logistic regressions at once ({n} x 128, 5x3 folds, 9 C): "
        f"BLAS capped at 1 thread each vs default",
        fmt_time(median(t_ours)),
        fmt_time(median(t_ref)),
        speedup(t_ours, t_ref),
        1.0,
        raw={"ours_s": t_ours, "reference_s": t_ref, "workers": workers},
    )
