"""The scale model of the paper profile's datasets: will they fit this machine's host memory?

    python -m hypersphere scale --profile paper    # every dataset: 6 minutes on 2 idle cores (11 on busy ones)
    python -m hypersphere scale --datasets bookcorpus --host-gb 128 --out scale.json

The paper's datasets cannot be downloaded here, and the first user who has them must not meet an out-of-memory
that this machine could have predicted. So for each dataset the profile's sweeps use, miniature copies are written
in the real on-disk format (miniature.py) at three sizes and a fourth, larger one; each is read through the
project's loader (train.load_data) and evaluated by its sweep's evaluation (evaluate._evaluate and the label-free
statistics, as evaluate_run does) in a fresh process, forked from one that has imported everything, whose peak
resident memory above its start (/proc/self/status VmHWM, reset between phases; glibc set to unmap what is freed)
and wall time are recorded. Two training steps of the sweep's recipe (the trainer's own batch source, batch_loss
and optimiser step, on the CPU) are measured at each of two batch sizes cut from the paper's.

`analyse` fits each quantity against the examples: the load's peak, the data it leaves held and its time against
the examples written, the evaluation's own part (its peak less the data held) and time against the examples it
reads. Memory is fitted as a line a + b n (a fixed part plus what each example holds; `fit`), times as the line or
a power law a n^k (work over all pairs), whichever carries the first two sizes to the third; growth within the
noise is "flat". The fit on the three smallest sizes is checked against the fourth (its relative error is
reported), and the projection to the paper's size is the fit on the three largest (`project_fit`), with a ± from the
measurements' noise (`resolution`). The evaluation's need is the data held at the paper's size plus its own part
at what it reads there (eval_paper_n: for BookCorpus, the held-out sentences up to text.HELD_OUT_SAMPLE); the
step is projected linearly to the paper's batch. Where the need (the larger of loading and evaluating) exceeds
--host-gb the command exits 1 with one line naming the dataset, the phase and the fix; where only its ± reaches
the limit it warns; where a loader loses examples of the real format or a measurement fails it exits 1 too. The
table is printed and written as JSON (every measurement and fit) and CSV.

What the miniatures keep and what they cannot. The examples' sizes and formats are the paper's, and so are the
splits' proportions, except that every split an evaluation passes over in batches holds at least FLOOR examples
(the code works in batches of up to 512, whose buffers would otherwise read as growth per example), and that
STL-10's evaluation miniatures leave out the unlabeled images it does not read. The evaluation's encoder is the
run's with the trunk's compute replaced by a cheap stand-in of the same output shapes (`standin`): on the paper's
GPUs that compute and its activations live on the device, and the host holds the data, the features and the
metrics, which are what is measured; on the CPU here the features are host memory too, so the evaluation's
projection is an upper bound of its host memory. The ImageNets evaluate on 32 px crops of their 256 px images
(the features keep their dimensions), and every evaluation runs one probe epoch, the cached probe in place of
those on fresh crops (which hold one batch of crops), one depth-decoder epoch and 2-fold nested CV for
sentences: none of these changes what is held per example. The miniature corpus has 2,000 words (BookCorpus
50,000) and 40 labelled sentences per task (MR 10,662), neither of which grows with the corpus; the ImageNets'
JPEGs are 16-48 px (decoded to 256 px as ImageNet's are). Buffers the code sizes in examples beyond the
miniatures read as growth and over-project: NYU-Depth-V2's miniatures (64-384 of its 1,449 frames) are below its
batches, and their fourth size's error says by how much. Memory-mapped pages count as resident (the kernel may
drop them). Times on a CPU, with other processes on its cores, are informative only (`make gpu-check` measures the
paper's GPU time); DataLoader worker processes (a few decoded batches each) are not counted.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import miniature, profiles, runs, sweep

GB = 1024**3
HOST_GB = 64.0
NOISE_GB = 2 / 1024  # a fresh process's peak RSS repeats to about this (allocator effects): the memory resolution
FLOOR = 520  # examples of each split an evaluation passes over in batches (the code's are up to 512)
STEPS = 2  # training steps measured per batch size (the time is their mean)
CLASSES = 4  # classes of the miniature ImageNets
BOOKS = 20  # books of the miniature BookCorpus: its held-out 5% of documents is then one book, 5%
WIDTH = 4  # input channels a stand-in trunk reads
JPEG_PX = (16, 48)  # the miniature ImageNets' JPEG sides (decoded to 256 px as ImageNet's are; decoding is fast)


@dataclass(frozen=True)
class Paper:
    """A dataset at the paper's size: `n` examples over all the splits the loader reads (the x of the load's fits),
    `evaluated` those an evaluation reads (the x of its fits; BookCorpus's: eval_paper_n), `splits` their sizes
    (the miniatures keep their proportions), `text` as the table shows it."""

    n: int
    evaluated: int
    text: str
    splits: dict[str, int]
    unit: str = "images"


PAPER = {
    "stl10": Paper(
        113_000,
        13_000,
        "105k train+unlabeled, 5k train, 8k test",
        {"unlabeled": 100_000, "train": 5_000, "test": 8_000},
    ),
    "cifar10": Paper(60_000, 60_000, "50k train, 10k test", {"train": 50_000, "test": 10_000}),
    "nyu-depth-v2": Paper(1_449, 1_449, "795 train, 654 test frames", {"train": 795, "test": 654}, "frames"),
    "imagenet100": Paper(131_689, 131_689, "126,689 train, 5k val (in memory)", {"train": 126_689, "val": 5_000}),
    "imagenet": Paper(1_331_167, 1_331_167, "1.28M train, 50k val (streamed)", {"train": 1_281_167, "val": 50_000}),
    "bookcorpus": Paper(74_004_228, 3_700_211, "74.0M sentences (~985M words)", {"sentences": 74_004_228}, "sentences"),
}


@dataclass(frozen=True)
class Sizes:
    """Miniature sizes (write_miniature's n): `load` and `eval`, each three fitted sizes and a larger check. A size
    in both is one process that loads and evaluates."""

    load: tuple[int, int, int, int]
    eval: tuple[int, int, int, int]


SIZES = {  # the evaluations' sizes start where every split they read holds FLOOR examples
    "stl10": Sizes((4_000, 8_000, 16_000, 32_000), (1_352, 1_560, 1_820, 2_340)),  # eval: train + test only
    "cifar10": Sizes((3_000, 6_000, 12_000, 24_000), (1_040, 1_300, 1_560, 2_080)),
    "nyu-depth-v2": Sizes((64, 128, 192, 384), (64, 128, 192, 384)),
    "imagenet100": Sizes((1_040, 1_300, 1_560, 2_080), (1_040, 1_300, 1_560, 2_080)),
    "imagenet": Sizes((1_040, 1_300, 1_560, 2_080), (1_040, 1_300, 1_560, 2_080)),
    # the packer works in chunks of 1M sentences (text.PACK_CHUNK) and 16M words: its loads past them
    "bookcorpus": Sizes((500_000, 1_000_000, 1_500_000, 2_000_000), (20_000, 40_000, 80_000, 160_000)),
}
# Training steps are measured at two batch sizes cut from the paper's (a CPU step of SmallAlexNet at the paper's
# 1,024 takes minutes here, ResNet-50's at 256 longer) and projected linearly in the batch size.
STEP_BATCHES = {
    "stl10": (8, 16),
    "cifar10": (8, 16),
    "nyu-depth-v2": (8, 16),
    "imagenet100": (2, 4),
    "imagenet": (2, 4),
    "bookcorpus": (25, 50),
}
EVAL_AUGMENT = {
    "imagenet100": {"recipe": "mocov1", "crop_size": 32},  # 32 px crops (module docstring)
    "imagenet": {"recipe": "mocov2", "crop_size": 32},
}
EVAL_CHEAP = {"probe_epochs": 1, "decoder_epochs": 1, "snapshots": False}  # nothing held per example changes
EVAL_CHEAP_KIND = {"sentences": {"cv_folds": 2, "l2_folds": 2}}
FULL_CROP_PROBES = ("adam-full", "sgd-full", "sgd-lincls")  # hold one batch of crops: the cached probe stands in


SEPARATE_EVAL = ("stl10",)  # datasets whose evaluation miniatures leave out what it does not read


def cheap(evaluation):
    """The miniature's evaluation config (module docstring): one probe or decoder epoch, the cached probe for the
    full-crop ones, 2-fold nested CV for sentences; what it holds per example is the config's."""
    probe = {"probe": "adam"} if evaluation.probe in FULL_CROP_PROBES else {}
    return replace(evaluation, **EVAL_CHEAP, **probe, **EVAL_CHEAP_KIND.get(evaluation.kind, {}))


FIXES = {  # (dataset, phase) -> what to do when a projection is over the host limit
    ("bookcorpus", "load"): "hold the token stream as packed memory-mapped arrays, not Python lists (domains/text.py)",
    ("bookcorpus", "eval"): "compute the held-out metrics and label-free statistics on a seeded sample of the "
    "held-out sentences, not on all of them (domains/text.py, metrics.py)",
    ("imagenet100", "load"): "stream it from its JPEG files as ImageNet is (domains/image.py: "
    "_imagefolder(..., stream=True))",
    ("imagenet100", "eval"): "stream it from its JPEG files as ImageNet is (domains/image.py)",
    ("imagenet", "eval"): "keep the train features on the GPU or subsample them for k-NN (domains/image.py, probes.py)",
}
# imported once by the process that forks the measuring processes, so that a measurement holds no import
PRELOAD = (
    "hypersphere.scale",
    "hypersphere.evaluate",
    "torchvision.datasets",
    "torchvision.transforms.v2.functional",
    "h5py",
    "scipy.io",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "torchcodec.decoders",
)


# ----------------------------------------------------------------------------------------------- fits


def fit_line(x, y) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return float(y.mean() - b * x.mean()), float(b)


def fit_power(x, y) -> tuple[float, float]:
    """Least-squares (c, k) of log y = log c + k log x (y = c x^k); y must be positive."""
    a, k = fit_line(np.log(x), np.log(y))
    return float(math.exp(a)), k


@dataclass(frozen=True)
class Fit:
    """How a quantity grows with the number of examples n: "line" a + b n, "power" a n^b, or "flat" a (no growth
    resolved over the fitted sizes); `exponent` is the log-log slope over the fitted sizes (1 linear, 0 constant,
    2 all pairs; nan where a value is not positive), reported whichever model projects."""

    model: str
    a: float
    b: float
    exponent: float

    def __call__(self, n: float) -> float:
        if self.model == "power":
            return self.a * n**self.b
        return self.a + (self.b * n if self.model == "line" else 0.0)


def fit(x, y, noise: float = 0.0, power: bool = False) -> Fit:
    """The model of y(x), on increasing sizes x, to project with: "flat" at the largest value where y grows by no
    more than `noise` over the sizes (or falls); else the line a + b x (a fixed part plus a part per example: memory,
    whose growth is what is held per example) or, with `power` (times: work over all pairs grows as x^2), the power
    law a x^k where it carries the first two sizes to the third the more closely, fitted on all of them."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    positive = bool((y > 0).all())
    c, exponent = fit_power(x, y) if positive else (float("nan"), float("nan"))
    a, b = fit_line(x, y)
    if b <= 0 or b * (x.max() - x.min()) <= noise:
        return Fit("flat", float(y.max()), 0.0, exponent)
    if power and positive and len(x) > 2:
        a2, b2 = fit_line(x[:2], y[:2])
        c2, k2 = fit_power(x[:2], y[:2])
        if abs(c2 * x[2] ** k2 - y[2]) < abs(a2 + b2 * x[2] - y[2]):
            return Fit("power", c, exponent, exponent)
    return Fit("line", a, b, exponent)


def project_fit(x, y, noise: float = 0.0, power: bool = False) -> Fit:
    """The fit that projects, from four increasing sizes: the one on the last three (the first three's is what the
    fourth checks), so that a buffer that fills, or a cost that starts, within the sizes shapes the projection."""
    return fit(x[1:], y[1:], noise, power)


def noise_of(x, y, floor: float = NOISE_GB) -> float:
    """The measurements' noise: the rms residual of a line through all the sizes (at least `floor`)."""
    a, b = fit_line(x, y)
    residual = np.asarray(y, float) - a - b * np.asarray(x, float)
    return max(floor, float(np.sqrt((residual**2).sum() / max(len(x) - 2, 1))))


def resolution(x, n: float, noise: float = NOISE_GB) -> float:
    """How far a projection from sizes x to n can be off from measurement noise alone: its slope is known to about
    noise / (the sizes' range)."""
    return noise * max(n - max(x), 0) / (max(x) - min(x))


def step_projection(batches, y, batch: int, proportional: bool = False) -> float:
    """A step's memory or time at `batch` from its values at two cut batches: the line through them where it rises;
    else (noise, or a first step's overheads, outweighing the growth) the largest value, or with `proportional` (time)
    the larger batch's value scaled to `batch`."""
    a, b = fit_line(batches, y)
    if b > 0:
        return a + b * batch
    return y[-1] * batch / batches[-1] if proportional else max(y)


# ----------------------------------------------------------------------------------------------- miniatures


def write_miniature(
    dataset: str, root: Path, n: int, seed: int = 0, evaluated: bool = False, floor: int | None = None
) -> int:
    """`dataset` with about `n` examples over all splits in the paper's proportions, each split an evaluation
    passes over at least `floor` (FLOOR by default; module docstring), in its real on-disk format under `root`
    (miniature.py). With `evaluated`, `n` counts the splits the evaluation reads only (STL-10's train and test, 10
    unlabeled images beside them). Returns the number of examples written."""
    paper, root, floor = PAPER[dataset], Path(root), FLOOR if floor is None else floor
    total = paper.evaluated if evaluated and dataset == "stl10" else paper.n
    share = {k: v / total for k, v in paper.splits.items()}
    if dataset == "stl10":
        train, test = (max(floor, round(n * share[k])) for k in ("train", "test"))
        unlabeled = 10 if evaluated else max(1, n - train - test)
        miniature.write_stl10(root, n_train=train, n_test=test, n_unlabeled=unlabeled, seed=seed)
        return train + test + unlabeled
    if dataset == "cifar10":
        test = max(floor, round(n * share["test"]))
        train = max(floor, n - test)
        miniature.write_cifar10(root, n_train=train, n_test=test, seed=seed)
        return train + test
    if dataset == "nyu-depth-v2":  # 1,449 frames in all: its sizes are a fair share of the paper's
        miniature.write_nyu(root, n=max(10, n), seed=seed)
        return max(10, n)
    if dataset in ("imagenet100", "imagenet"):
        train, val = (max(math.ceil(floor / CLASSES), round(n * share[k] / CLASSES)) for k in ("train", "val"))
        miniature.write_imagefolder(
            root / dataset,
            classes=CLASSES,
            per_class=train,
            val_per_class=val,
            seed=seed,
            low=JPEG_PX[0],
            high=JPEG_PX[1],
        )
        return CLASSES * (train + val)
    if dataset == "bookcorpus":
        miniature.write_bookcorpus(root, n=n, books=BOOKS, seed=seed, vectorized=True)
        return n
    raise ValueError(f"no scale model of dataset {dataset!r}; choose from {', '.join(PAPER)}")


def eval_paper_n(dataset: str) -> int:
    """The examples an evaluation reads at the paper's size: its splits', or for BookCorpus its held-out sentences
    up to the sample the text domain caps its held-out metrics at (text.HELD_OUT_SAMPLE, where it has one)."""
    n = PAPER[dataset].evaluated
    if dataset == "bookcorpus":
        from .domains import text

        n = min(n, getattr(text, "HELD_OUT_SAMPLE", n))
    return n


def _evaluated(data) -> int | None:
    """The examples an evaluation of `data` reads: its labelled train and validation images, or the held-out
    sentences its metrics read (text.HELD_OUT_SAMPLE at most, where the text domain has that cap)."""
    if hasattr(data, "train_images"):
        return len(data.train_images) + len(data.val_images)
    if hasattr(data, "held"):
        from .domains import text

        return min(len(data.held), getattr(text, "HELD_OUT_SAMPLE", len(data.held)))
    return None


def paper_configs(profile: str) -> dict[str, tuple[Any, Any]]:
    """{dataset: (TrainConfig, EvalConfig)} of the profile's sweeps: per dataset, the run with the largest batch (the
    most memory per step; the first of them) and its sweep's evaluation."""
    best: dict[str, tuple[Any, Any]] = {}
    for name in profiles.load(profile).sweeps:
        for run in sweep.load_sweep(sweep.sweep_path(name, profile)):
            cfg = run.config
            if cfg.dataset not in best or cfg.batch_size > best[cfg.dataset][0].batch_size:
                best[cfg.dataset] = (cfg, run.evaluation)
    return best


# ----------------------------------------------------------------------------------------------- the stand-in


def _standin_modules():
    """The stand-in modules (defined on first use: torch is imported by the measuring processes only)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.utils.rnn import pad_packed_sequence

    class Trunk(nn.Module):
        """An output of the trunk's shape at almost no compute: for maps [C, h, w], the input's first channel
        average-pooled to h x w times a fixed random weight per output channel; for vectors [C], the spatial means
        of the input's first WIDTH channels (or its first WIDTH values) by a fixed random projection."""

        def __init__(self, c_in: int, shape: tuple[int, ...], seed: int):
            super().__init__()
            self.shape, k = tuple(shape), 1 if len(shape) == 3 else min(c_in, WIDTH)
            w = torch.randn(k, shape[0], generator=torch.Generator().manual_seed(seed))
            self.register_buffer("w", w / k**0.5)

        def forward(self, x):
            if len(self.shape) == 3:
                return F.adaptive_avg_pool2d(x[:, :1], self.shape[1:]) * self.w.view(1, -1, 1, 1)
            x = x[:, : len(self.w)]
            return (x.flatten(2).mean(2) if x.dim() == 4 else x) @ self.w

    class GRU(nn.Module):
        """A bidirectional GRU's final states [2, n, hidden] from the mean of each sentence's word vectors by a fixed
        random projection."""

        def __init__(self, input_size: int, hidden: int, seed: int):
            super().__init__()
            w = torch.randn(2 * hidden, input_size, generator=torch.Generator().manual_seed(seed)) / input_size**0.5
            self.register_buffer("w", w)

        def forward(self, packed):
            x, lengths = pad_packed_sequence(packed, batch_first=True)
            h = (x.sum(1) / lengths[:, None].to(x) @ self.w.T).tanh()
            return None, h.view(len(h), 2, -1).transpose(0, 1)

    return Trunk, GRU


def standin(encoder, channels: int, crop: int, seed: int = 0):
    """`encoder` with its trunk's compute replaced by stand-ins of the same output shapes (module docstring): each
    conv block of a SmallAlexNet (so that the depth probe's conv4 / conv5 maps keep theirs) and its fc blocks, a
    ResNet's trunk, a Quick-Thought model's GRUs. Its heads, word embeddings and normalisation stay; returned in
    eval mode."""
    import torch
    import torch.nn as nn

    Trunk, GRU = _standin_modules()
    encoder.eval()
    if hasattr(encoder, "conv"):
        x, blocks = torch.zeros(1, channels, crop, crop), []
        with torch.no_grad():
            for k, block in enumerate(encoder.conv):
                x = block(x)  # the last two keep their channels (the conv4 and conv5 taps), the others need not
                shape = x.shape[1:] if k >= len(encoder.conv) - 2 else (WIDTH, *x.shape[2:])
                blocks.append(Trunk(blocks[-1].shape[0] if blocks else channels, shape, seed + k))
        encoder.conv = nn.Sequential(*blocks)
        encoder.fc = Trunk(encoder.feature_dims["conv5"], (encoder.feature_dims["fc7"],), seed + len(blocks))
    elif hasattr(encoder, "trunk"):
        encoder.trunk = Trunk(channels, (encoder.feature_dims["penultimate"],), seed)
    elif hasattr(encoder, "f") and hasattr(encoder.f, "gru"):
        for k, half in enumerate((encoder.f, encoder.g)):
            half.gru = GRU(half.gru.input_size, half.gru.hidden_size, seed + k)
    else:
        raise ValueError(f"no stand-in for a {type(encoder).__name__}: give scale.standin its trunk")
    return encoder


# ----------------------------------------------------------------------------------------------- measuring (child)

_LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}: the scale model measures memory on Linux only")


def _exact_malloc() -> None:
    """Have glibc map every allocation of 4 MB or more on its own and unmap it when freed (a fixed mmap threshold,
    which frees no longer raise; one arena), so that the RSS follows the memory in use and repeats from process to
    process to about NOISE_GB (a threshold of 64 KB did no better, at 2-3x the time in page faults)."""
    if _LIBC is not None:
        _LIBC.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD
        _LIBC.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        _LIBC.mallopt(-8, 1)  # M_ARENA_MAX


def _settle() -> int:
    """Free what can be freed (garbage, the C heap's free pages), reset the peak RSS to the current RSS
    (/proc/self/clear_refs 5) and return the current RSS in bytes: the start of a measured phase."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _peak_since(start: int) -> float:
    """GB of peak RSS above `start` (bytes) since the last _settle."""
    return (_status_bytes("VmHWM") - start) / GB


def _examples(data) -> int | None:
    """The examples the loader read over all splits: encoder + validation images, or training + held-out sentences."""
    if hasattr(data, "encoder_images"):
        return len(data.encoder_images) + len(data.val_images)
    try:
        return len(data) + len(data.held)
    except (AttributeError, TypeError):
        return None


def _evaluation(cfg, evaluation, data) -> None:
    """One evaluation of the run's freshly initialised encoder (its trunk a stand-in), as evaluate_run computes it
    for a run: the kind's results, then the label-free statistics of its features; on the CPU."""
    import torch

    from . import evaluate, train
    from .domains import EVALUATIONS
    from .metrics import label_free

    torch.manual_seed(cfg.seed)
    channels = data.train_images.shape[1] if hasattr(data, "train_images") else 0
    crop = data.augment.crop_size if hasattr(data, "augment") else 0
    encoder = standin(train.make_encoder(cfg, data), channels, crop, cfg.seed)
    kind, device = EVALUATIONS[evaluation.kind], torch.device("cpu")
    evaluate._evaluate(encoder, cfg, data, evaluation, kind, Path("scale"), device, cfg.data_dir, False)
    label_free(kind.features(encoder, data, evaluation, device))


def _step(cfg, data, batch: int) -> dict[str, float]:
    """STEPS training steps of `cfg` at `batch` through the trainer's own parts (its batch source, batch_loss and
    optimiser step) on the CPU: seconds per step and GB of peak RSS above the state before the first."""
    import torch

    from . import train
    from .losses import Objective

    cfg = replace(cfg, batch_size=batch, device="cpu", init="")
    device, objective = torch.device("cpu"), Objective.parse(cfg.objective)
    data = data.to(device)
    state = train._fresh_state(cfg, data, objective, device, 0, 1, fresh=True)
    batches = train.batch_source(cfg, data, objective, state)
    if batches.batch < batch or batches.steps < STEPS:
        raise ValueError(
            f"{batches.n} training examples hold fewer than {STEPS} batches of {batch}: lower the step "
            f"batches (--step-batches) or raise the sizes"
        )
    state.perm = batches.order(state.order)
    start = _settle()
    t0 = time.perf_counter()
    for step in range(STEPS):
        loss, _ = batches.loss(state, step, state.perm[step * batch : (step + 1) * batch])
        train._step(state, loss, cfg.clip_grad)
    return {"step_s": (time.perf_counter() - t0) / STEPS, "step_gb": _peak_since(start)}


def measure(cfg, evaluation=None, step_batch: int | None = None, out: dict | None = None) -> dict[str, Any]:
    """In a fresh process: load cfg's dataset (from cfg.data_dir) through train.load_data, then evaluate it by
    `evaluation` or take training steps at `step_batch`. Returns seconds and GB of peak RSS above the process's
    start: load_gb (loading), held_gb (what stays after it), eval_gb (the evaluating process in all: the data held
    and the evaluation) and step_gb (the steps, above the state before them). Fills and returns `out` (so that a
    failure keeps what was measured before it)."""
    from . import train

    out = {} if out is None else out
    _exact_malloc()
    start = _settle()
    t0 = time.perf_counter()
    data = train.load_data(cfg)
    out.update(
        load_s=time.perf_counter() - t0,
        load_gb=_peak_since(start),
        examples=_examples(data),
        evaluated=_evaluated(data),
    )
    out["held_gb"] = (_settle() - start) / GB
    if evaluation is not None:
        t0 = time.perf_counter()
        _evaluation(cfg, evaluation, data)
        out.update(eval_s=time.perf_counter() - t0, eval_gb=_peak_since(start))
    if step_batch:
        out.update(_step(cfg, data, step_batch))
    return out


def _child(spec: dict[str, Any], conn) -> None:
    """A measuring process: `measure(**spec)` sent back, or the error in one line (its own progress bars and
    warnings are not shown)."""
    sys.stderr = open(os.devnull, "w")
    out: dict[str, Any] = {}
    try:
        conn.send(measure(**spec, out=out))
    except Exception as e:  # noqa: BLE001 - a loader or an evaluation failing on the real format is a finding
        text = str(e).strip().splitlines()
        conn.send({**out, "error": f"{type(e).__name__}: {text[0] if text else ''}"})
    finally:
        conn.close()


def _run_child(ctx, spec: dict[str, Any]) -> dict[str, Any]:
    """measure(**spec) in a fresh process forked from the preloaded server."""
    recv, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(spec, send))
    process.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        out = None
    process.join()
    if out is None:
        out = {"error": f"the measuring process died (exit code {process.exitcode}; -9 is a kill, e.g. out of memory)"}
    return out


# ----------------------------------------------------------------------------------------------- measuring (parent)


def measure_dataset(
    dataset: str, cfg, evaluation, sizes: Sizes, batches: tuple[int, int], work: Path, ctx, bar: tqdm | None = None
) -> dict[str, Any]:
    """Write the miniatures of `dataset`, measure each size in its own process (the load; the evaluation at the
    eval sizes) and the training step at each of `batches` (on a small miniature, step_size). Returns the raw
    measurements: {"points": [...], "steps": [...]}, each with its size and the examples written."""
    points = []
    eval_cfg = replace(cfg, augment=EVAL_AUGMENT[dataset]) if dataset in EVAL_AUGMENT else cfg

    bar = bar or tqdm(disable=True)

    def child(spec, what):
        bar.set_description(f"scale {dataset} {what}")
        out = _run_child(ctx, spec)
        bar.update()
        return out

    root = work / dataset / "step"  # a step does not depend on the dataset's size: a small miniature serves
    written = write_miniature(dataset, root, step_size(dataset, batches), floor=STEPS * batches[-1])
    steps = [
        {
            "batch": b,
            "n": written,
            **child({"cfg": replace(cfg, data_dir=str(root)), "step_batch": b}, f"step at batch {b}"),
        }
        for b in batches
    ]
    shutil.rmtree(root, ignore_errors=True)
    for phase, n in _plan(dataset, sizes):
        root = work / dataset / f"{phase}-{n}"
        written = write_miniature(dataset, root, n, evaluated=phase == "eval" and dataset in SEPARATE_EVAL)
        spec = {"cfg": replace(cfg, data_dir=str(root))}
        if phase != "load":
            spec = {"cfg": replace(eval_cfg, data_dir=str(root)), "evaluation": evaluation}
        points.append({"size": n, "phase": phase, "n": written, **child(spec, f"n={n:,}")})
        shutil.rmtree(root, ignore_errors=True)
    return {"points": points, "steps": steps}


def step_size(dataset: str, batches: tuple[int, int]) -> int:
    """The miniature the steps are measured on: room for STEPS batches of the larger size in its training split."""
    return 4000 if dataset == "bookcorpus" else max(64, 4 * STEPS * batches[-1])


def _plan(dataset: str, sizes: Sizes) -> list[tuple[str, int]]:
    """The measuring processes of a dataset, as (phase, size): "load", "eval", or "both" where one miniature serves
    both (its load then counts for the load's fit and its evaluation for the evaluation's)."""
    if dataset in SEPARATE_EVAL:
        return [("load", n) for n in sizes.load] + [("eval", n) for n in sizes.eval]
    return [
        ("both" if n in sizes.load and n in sizes.eval else "load" if n in sizes.load else "eval", n)
        for n in sorted(set(sizes.load) | set(sizes.eval))
    ]


# ----------------------------------------------------------------------------------------------- analysis


def _series(points: list[dict], phase: str, sizes: tuple[int, ...], key: str, x: str = "n"):
    """(x, y) of `key` over `sizes` from the points measuring `phase` ("load" or "eval"; "both" serves either)."""
    rows = [next(p for p in points if p["size"] == s and p["phase"] in (phase, "both")) for s in sizes]
    return [r[x] for r in rows], [r[key] for r in rows]


def _error(measured: dict[str, Any]) -> str | None:
    """The first failed measurement, in one line naming where."""
    for p in measured["points"] + measured["steps"]:
        if "error" in p:
            where = f"step at batch {p['batch']}" if "batch" in p else f"size {p['size']:,}"
            return f"{p['error']} (at {where})"
    return None


QUANTITIES = (  # (key, phase, x, noise): what is fitted, on which measurements, against what
    ("load_gb", "load", "n", NOISE_GB),
    ("held_gb", "load", "n", NOISE_GB),
    ("load_s", "load", "n", 0.0),
    ("own_gb", "eval", "evaluated", NOISE_GB),
    ("eval_s", "eval", "evaluated", 0.0),
)


def analyse(
    dataset: str, measured: dict[str, Any], batch: int, host_gb: float = HOST_GB, sizes: Sizes | None = None
) -> dict[str, Any]:
    """One row of the table from a dataset's measurements. The load's peak, the data it leaves held and the load's
    time are fitted against the examples written and projected to the paper's; the evaluation's own part (its peak
    less the data held) and time against the examples it reads (eval_paper_n). Each projection is `project_fit`'s, each
    check the fit on the first three sizes against the fourth. The evaluation's need is the data held plus its own
    part; the need, the larger of loading and evaluating, gives the verdict against `host_gb`. The step is projected
    to the paper's `batch`."""
    sizes, paper = sizes or SIZES[dataset], PAPER[dataset]
    n_eval = eval_paper_n(dataset)
    row: dict[str, Any] = {
        "dataset": dataset,
        "paper_n": paper.n,
        "eval_n": n_eval,
        "paper": paper.text,
        "unit": paper.unit,
        "batch": batch,
        "load_sizes": list(sizes.load),
        "eval_sizes": list(sizes.eval),
    }
    points = measured["points"]
    if short := [p for p in points if p.get("examples") is not None and p["examples"] < 0.9 * p["n"]]:
        return {
            **row,
            "verdict": "error",
            "message": f"the loader read {short[0]['examples']:,} of the {short[0]['n']:,} {paper.unit} written "
            f"(size {short[0]['size']:,}): its reader of the real format loses examples",
        }
    if error := _error(measured):
        return {**row, "verdict": "error", "message": error}
    for p in points:
        if "eval_gb" in p:
            p["own_gb"] = p["eval_gb"] - p["held_gb"]
    for key, phase, x_key, noise in QUANTITIES:
        x, y = _series(points, phase, getattr(sizes, phase), key, x_key)
        timed, target = key.endswith("_s"), paper.n if phase == "load" else n_eval
        f, last = fit(x[:3], y[:3], noise, power=timed), project_fit(x, y, noise, power=timed)
        row[key], row[f"{key}_model"], row[f"{key}_exponent"] = last(target), last.model, f.exponent
        row[f"{key}_check"] = f(x[3]) / y[3] - 1 if y[3] else float("nan")
        row[f"{key}_measured"] = dict(zip(map(int, x), y))
        if key in ("load_gb", "own_gb"):
            row[f"{key}_noise"] = noise_of(x, y)
            row[f"{key}_resolution"] = resolution(x[1:], target, row[f"{key}_noise"])
    row["eval_gb"] = row["held_gb"] + row["own_gb"]
    row["eval_gb_resolution"] = row["load_gb_resolution"] + row["own_gb_resolution"]
    bs = [s["batch"] for s in measured["steps"]]
    for quantity in ("gb", "s"):
        ys = [s[f"step_{quantity}"] for s in measured["steps"]]
        row[f"step_{quantity}"] = step_projection(bs, ys, batch, proportional=quantity == "s")
        row[f"step_{quantity}_measured"] = dict(zip(bs, ys))
    row["need_gb"] = max(row["load_gb"], row["eval_gb"])
    row["need_phase"] = "load" if row["load_gb"] >= row["eval_gb"] else "eval"
    margin = row[f"{row['need_phase']}_gb_resolution"]
    row["verdict"] = "over" if row["need_gb"] > host_gb else "uncertain" if row["need_gb"] + margin > host_gb else "ok"
    return row


def limit_messages(rows: list[dict[str, Any]], host_gb: float) -> list[str]:
    """One line per dataset that cannot run here: a projection over `host_gb`, or a measurement that failed."""
    out = []
    for r in rows:
        if r["verdict"] == "error":
            out.append(
                f"scale: {r['dataset']} could not be measured: {r['message']}; fix its loader or evaluation "
                f"for the real format (miniature.py writes it)"
            )
        elif r["need_gb"] > host_gb:
            phase = r["need_phase"]
            fix = FIXES.get(
                (r["dataset"], phase),
                f"use a host with at least {math.ceil(r['need_gb'])} GB (--host-gb) or stream the dataset",
            )
            out.append(
                f"scale: {r['dataset']} needs ~{_gb(r['need_gb'])} GB of host memory to "
                f"{'load' if phase == 'load' else 'evaluate'} at the paper's {r['paper_n']:,} {r['unit']}, "
                f"over the {host_gb:g} GB limit (--host-gb): {fix}"
            )
    return out


# ----------------------------------------------------------------------------------------------- output


def _gb(v: float) -> str:
    return f"{v:,.2f}" if abs(v) < 1 else f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"


def _seconds(s: float) -> str:
    return f"{s:.2g} s" if s < 60 else f"{s / 60:.2g} min" if s < 3600 else f"{s / 3600:.3g} h"


def table(rows: list[dict[str, Any]], host_gb: float) -> str:
    """The printed table: one row per dataset (markdown). GB are projected to the paper's size, with their
    resolution (±) and the fourth size's check; the step is a CPU step projected to the paper's batch."""
    head = (
        "dataset",
        "paper size",
        "miniature sizes (load; eval)",
        "load GB @paper",
        "step (CPU) @paper batch",
        "eval GB @paper",
        "check @4th size",
        "verdict",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sizes = "; ".join("/".join(f"{s:,}" for s in r[k]) for k in ("load_sizes", "eval_sizes"))
        if r["verdict"] == "error":
            cells = (r["dataset"], r["paper"], sizes, "-", "-", "-", "-", f"ERROR: {r['message']}")
        else:
            load = f"{_gb(r['load_gb'])} ±{_gb(r['load_gb_resolution'])} (k={r['load_gb_exponent']:.2f})"
            ev = f"{_gb(r['eval_gb'])} ±{_gb(r['eval_gb_resolution'])} (own k={r['own_gb_exponent']:.2f})"
            step = (
                f"{_seconds(r['step_s'])}, {_gb(r['step_gb'])} GB @{r['batch']} "
                f"(from {'/'.join(map(str, r['step_s_measured']))})"
            )
            check = f"load {r['load_gb_check']:+.0%}, eval {r['own_gb_check']:+.0%}"
            verdict = {
                "over": f"OVER {host_gb:g} GB ({r['need_phase']})",
                "uncertain": f"UNCERTAIN: within {host_gb:g} GB only without its ± ({r['need_phase']})",
                "ok": f"ok: {_gb(r['need_gb'])} GB = {r['need_gb'] / host_gb:.0%} of {host_gb:g} ({r['need_phase']})",
            }[r["verdict"]]
            cells = (r["dataset"], r["paper"], sizes, load, step, ev, check, verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """This machine in a few words: CPU model, cores, memory, torch, the commit measured."""
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "cpu",
    )

    def git(*a):
        return subprocess.run(
            ["git", *a], capture_output=True, text=True, cwd=Path(__file__).resolve().parent
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    memory = (
        next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        * 1024
        / GB
    )
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(memory, 1),
        "torch": torch.__version__,
        "commit": commit + dirty,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": os.getloadavg(),
    }


def slug(m: dict[str, Any]) -> str:
    """A file name for the machine: its CPU model and cores (as bench/run.py names its results)."""
    name = re.sub(
        r"\((r|tm)\)|\b(cpu|processor)\b|@.*?ghz|\b\d+-core\b", "", f"{m['cpu']}-{m['cores']}cores", flags=re.I
    )
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_outputs(out: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> tuple[Path, Path]:
    """The table as JSON (rows with every measurement and fit, plus `info`) and CSV (one row per dataset)."""
    path = out.with_suffix(".csv")
    runs.write_json(out, {**info, "rows": rows})
    runs.write_csv(path, [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows])
    return out, path


# ----------------------------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="paper", help="the profile whose sweeps name the datasets and recipes")
    p.add_argument("--host-gb", type=float, default=HOST_GB, help=f"host memory limit in GB (default: {HOST_GB:g})")
    p.add_argument(
        "--datasets", nargs="*", default=None, help=f"a subset of {', '.join(PAPER)} (default: all the profile's)"
    )
    p.add_argument(
        "--sizes",
        nargs="*",
        default=[],
        metavar="DATASET=A,B,C,D",
        help="miniature sizes (examples over all splits: three, then a larger check) for load and "
        "evaluation, e.g. bookcorpus=20000,40000,80000,160000",
    )
    p.add_argument(
        "--step-batches",
        nargs="*",
        default=[],
        metavar="DATASET=B1,B2",
        help="the two cut batch sizes the step is measured at, e.g. stl10=16,32",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON file (and a .csv beside it; default: bench/results/scale-<machine>.json)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where the miniatures are written (default: a temporary folder, removed afterwards)",
    )


def _overrides(items: list[str], count: int, what: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            numbers = tuple(int(v) for v in values.split(","))
        except ValueError:
            numbers = ()
        if name not in PAPER or len(numbers) != count or sorted(set(numbers)) != list(numbers) or numbers[0] < 1:
            raise ValueError(
                f"--{what} {item!r}: expected DATASET={','.join('ABCD'[:count])}, a dataset of "
                f"{', '.join(PAPER)} and {count} increasing positive numbers"
            )
        out[name] = numbers
    return out


def run(args: argparse.Namespace) -> int:
    """The command: measure, fit, print the table, write it, and return 1 where a dataset cannot run here."""
    sizes = {d: Sizes(s, s) for d, s in _overrides(args.sizes, 4, "sizes").items()}
    batches = _overrides(args.step_batches, 2, "step-batches")
    configs = paper_configs(args.profile)
    known = [d for d in PAPER if d in configs]
    if not known:
        raise ValueError(
            f"profile {args.profile!r}'s sweeps use none of the paper's datasets ({', '.join(PAPER)}), "
            "which are what the scale model projects: use --profile paper"
        )
    datasets = args.datasets or known
    if unknown := [d for d in datasets if d not in known]:
        raise ValueError(
            f"no scale model of {', '.join(unknown)} in profile {args.profile!r}: choose from {', '.join(known)}"
        )
    plan = {d: sizes.get(d, SIZES[d]) for d in datasets}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    t0, rows = time.perf_counter(), []
    work = Path(args.work or tempfile.mkdtemp(prefix="hypersphere-scale-"))
    try:
        steps = {d: batches.get(d, STEP_BATCHES[d]) for d in datasets}
        with tqdm(total=sum(len(_plan(d, s)) + len(steps[d]) for d, s in plan.items()), unit="process") as bar:
            for d in datasets:
                cfg, evaluation = configs[d]
                evaluation = cheap(evaluation)
                measured = measure_dataset(d, cfg, evaluation, plan[d], steps[d], work, ctx, bar)
                rows.append({**analyse(d, measured, cfg.batch_size, args.host_gb, plan[d]), "raw": measured})
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    info = {
        "machine": machine(),
        "profile": args.profile,
        "host_gb": args.host_gb,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(table(rows, args.host_gb))
    out = args.out or Path("bench/results") / f"scale-{slug(info['machine'])}.json"
    print(f"{info['seconds']:.0f} s; written to {', '.join(map(str, write_outputs(out, rows, info)))}")
    for r in rows:
        if r["verdict"] == "uncertain":
            print(
                f"scale: warning: {r['dataset']} is within {args.host_gb:g} GB only without the noise of its "
                f"measurements (±{_gb(r[r['need_phase'] + '_gb_resolution'])} GB): widen its sizes (--sizes)",
                file=sys.stderr,
            )
    messages = limit_messages(rows, args.host_gb)
    for line in messages:
        print(line, file=sys.stderr)
    return 1 if messages else 0
