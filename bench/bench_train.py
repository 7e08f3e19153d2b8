"""Benchmark 3: efficiency of the real training loop, as a fraction of the model's own speed.

Ours: hypersphere.train.train on synthetic images passed through its `data=` argument; pairs/s is
train.json's images_per_s / 2 (it counts training time only: augmentation, forward, backward, SGD, logging).
Reference: forward + backward + SGD step alone, same model in the same memory format as train() runs it
(channels_last), batch, objective and optimiser, on pre-augmented inputs already in memory. The ratio is ours /
reference pairs/s. Target: >= 0.85 on CPU. Cases: DigitsNet (1x28x28 digits-like -> 24 px, dim 32, batch 128)
and SmallAlexNet (3x96x96 -> 64 px, dim 128, batch 64 pairs = 128 views to keep CPU steps at a few seconds).
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
from pathlib import Path

import torch

from hypersphere import runs
from hypersphere.augment import AugmentConfig, augment
from hypersphere.augment import RECIPES
from hypersphere.domains.image import STL10_MEAN, STL10_STD, ImageData
from hypersphere.losses import Objective
from hypersphere.train import TrainConfig, make_encoder, train
from timing import Row, fmt_rate, interleaved, median, speedup

OBJECTIVE = "align(alpha=2) + uniform(t=2)"
PROBE_IMAGES = 64  # labeled train / validation images: enough for train()'s evaluation to run, nothing more


def synthetic_data(n: int, channels: int, side: int, augment_cfg: AugmentConfig, seed: int = 0) -> ImageData:
    """Random uint8 images shaped like a real dataset (only sizes matter to speed)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n + 2 * PROBE_IMAGES, channels, side, side), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (2 * PROBE_IMAGES,), generator=gen)
    mean, std = (STL10_MEAN, STL10_STD) if channels == 3 else ((0.5,), (0.25,))
    return ImageData(
        name="synthetic",
        encoder_images=images[:n],
        train_images=images[n : n + PROBE_IMAGES],
        train_labels=labels[:PROBE_IMAGES],
        val_images=images[n + PROBE_IMAGES :],
        val_labels=labels[PROBE_IMAGES:],
        mean=mean,
        std=std,
        num_classes=10,
        augment=augment_cfg,
        eval_resize=augment_cfg.crop_size + augment_cfg.crop_size // 12,
    )


def one_case(label: str, cfg: TrainConfig, data: ImageData, rounds: int, workdir: Path) -> Row:
    steps = cfg.epochs * (len(data.encoder_images) // cfg.batch_size)
    pairs = steps * cfg.batch_size

    # Reference: the same model, set up as train() sets it up (channels_last), and the same optimiser, on
    # pre-augmented batches already in memory (a few distinct ones, cycled).
    torch.manual_seed(cfg.seed)
    encoder = make_encoder(cfg, data).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(encoder.parameters(), lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    objective = Objective.parse(cfg.objective)
    gen = torch.Generator().manual_seed(cfg.seed)
    inputs = [
        torch.cat(
            [
                augment(
                    data.encoder_images[i * cfg.batch_size : (i + 1) * cfg.batch_size],
                    data.augment,
                    data.mean,
                    data.std,
                    gen,
                )
                for _ in range(2)
            ]
        ).contiguous(memory_format=torch.channels_last)
        for i in range(min(steps, 4))
    ]

    def step(both: torch.Tensor) -> None:
        zx, zy = encoder(both).float().chunk(2)
        loss, _ = objective(zx, zy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def reference() -> None:
        encoder.train()
        for s in range(steps):
            step(inputs[s % len(inputs)])

    counter = itertools.count()

    def ours() -> float:
        runs_dir = workdir / f"run{next(counter)}"  # a fresh directory, or train() would find the run finished
        run_dir = train(dataclasses.replace(cfg, runs_dir=str(runs_dir)), progress=False, data=data)
        result = runs.load_summary(run_dir)
        shutil.rmtree(runs_dir)  # SmallAlexNet checkpoints are ~220 MB
        return pairs / (result["images_per_s"] / 2)  # training seconds, as the run records them

    step(inputs[0])  # warm-up: oneDNN primitives for these shapes are cached process-wide, for both sides
    t_ours, t_ref = interleaved(ours, reference, rounds)
    ours_rate, ref_rate = pairs / median(t_ours), pairs / median(t_ref)
    return Row(
        "train",
        f"{label}: {steps} steps of batch {cfg.batch_size} pairs, train() vs fwd+bwd+SGD",
        fmt_rate(ours_rate, "pair"),
        fmt_rate(ref_rate, "pair"),
        speedup(t_ours, t_ref),
        0.85,
        note="ratio = train() pairs/s / model-only pairs/s",
        raw={"ours_s": t_ours, "reference_s": t_ref, "pairs": pairs, "steps": steps},
    )


def run(quick: bool) -> list[Row]:
    common = dict(objective=OBJECTIVE, device="cpu", name="bench")
    digits_steps, digits_epochs = (4, 1) if quick else (10, 2)
    alex_batch, alex_steps = (16, 2) if quick else (64, 2)  # 64 pairs = 128 views: ~5 s a step on 2 cores
    cases = [  # (label, config, data, rounds): a DigitsNet run takes ~2 s, a SmallAlexNet one ~15 s
        (
            "DigitsNet 1x28->24 d=32",
            TrainConfig(dataset="digits", arch="digitsnet", dim=32, batch_size=128, epochs=digits_epochs, **common),
            synthetic_data(128 * digits_steps, 1, 28, RECIPES["digits"]),
            1 if quick else 3,
        ),
        (
            "SmallAlexNet 3x96->64 d=128",
            TrainConfig(dataset="stl10", arch="smallalexnet", dim=128, batch_size=alex_batch, epochs=1, **common),
            synthetic_data(alex_batch * alex_steps, 3, 96, AugmentConfig()),
            1 if quick else 2,
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="hypersphere-bench-") as tmp:
        return [one_case(label, cfg, data, rounds, Path(tmp)) for label, cfg, data, rounds in cases]
