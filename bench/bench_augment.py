"""Benchmark 2: positive-pair augmentation throughput on CPU, in augmented views per second.

Ours: augment.augment with AugmentConfig() (the paper's recipe) on a batch of uint8 96 px images, two views
per image concatenated, exactly as train.py does it, with N torch threads.
Reference: the official STL-10 example's pipeline, torchvision.transforms on PIL images (RandomResizedCrop(64,
scale=(0.08, 1)), RandomHorizontalFlip, ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2), ToTensor,
Normalize), two views per image, in a shuffling DataLoader with num_workers = N (persistent, warmed up).
Both sides use N CPU cores, so the ratio is also the ratio per core. Target: >= 3x.

Second case, the embedded recipe (digits-color, 28 -> 12 px, batch 128): the trainer draws the views of as many
batches at once as fit in train.VIEW_VALUES (the whole epoch here), against one call per batch as before version
4; the same views per second of training. Target: >= 3x (small images: the per-call overhead dominates).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from hypersphere.augment import RECIPES, AugmentConfig, augment
from hypersphere.domains.image import STL10_MEAN, STL10_STD, load_dataset
from hypersphere.train import batches_per_draw
from timing import Row, fmt_rate, interleaved, median, speedup

SIDE = 96


class TwoViews(torch.utils.data.Dataset):
    """The official example's dataset: each item is a PIL image made from an HWC uint8 array (as
    torchvision's STL10 does in __getitem__) and transformed twice."""

    def __init__(self, images_hwc: np.ndarray, transform):
        self.images, self.transform = images_hwc, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


def _drain(loader) -> None:
    for _ in loader:
        pass


def official_transform() -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(64, scale=(0.08, 1)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
            T.Normalize(STL10_MEAN, STL10_STD),
        ]
    )


def run(quick: bool, threads: int) -> list[Row]:
    n = 512 if quick else 1536  # divisible by every batch size below (drop_last on both sides)
    batches = (256,) if quick else (256, 768)
    rounds = 1 if quick else 3
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, SIDE, SIDE), dtype=torch.uint8, generator=gen)
    dataset = TwoViews(images.permute(0, 2, 3, 1).contiguous().numpy(), official_transform())
    cfg = AugmentConfig()
    rows = []
    for batch in batches:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=threads,
            persistent_workers=True,
            generator=torch.Generator().manual_seed(0),
        )

        reference = partial(_drain, loader)

        def ours() -> None:
            perm = torch.randperm(n, generator=gen)
            for step in range(n // batch):
                idx = perm[step * batch : (step + 1) * batch]
                torch.cat([augment(images[idx], cfg, STL10_MEAN, STL10_STD, gen) for _ in range(2)])

        reference()  # starts the workers and warms them up
        ours()
        t_ours, t_ref = interleaved(ours, reference, rounds)
        views = 2 * (n // batch) * batch
        ours_rate, ref_rate = views / median(t_ours), views / median(t_ref)
        rows.append(
            Row(
                "augment",
                f"paper recipe 96->64 px, B={batch}, 2 views, {threads} core(s)",
                f"{fmt_rate(ours_rate, 'view')} ({ours_rate / threads:,.0f} per core)",
                f"{fmt_rate(ref_rate, 'view')} ({ref_rate / threads:,.0f} per core)",
                speedup(t_ours, t_ref),
                3.0,
                note=f"ours: {threads} torch thread(s); reference: DataLoader num_workers={threads}",
                raw={"ours_s": t_ours, "reference_s": t_ref, "views": views, "batch": batch, "cores": threads},
            )
        )
        del reference, loader  # shuts its workers down
    return rows + [epoch_draw_row(rounds, threads)]


def epoch_draw_row(rounds: int, threads: int, batch: int = 128) -> Row:
    """Two views of every batch of one digits-color epoch: drawn a chunk of batches at a time (train.py) or one
    call per batch."""
    data, gen = load_dataset("digits-color"), torch.Generator().manual_seed(0)
    images, cfg = data.train_images, RECIPES["digits-color"]
    steps = len(images) // batch
    chunk = batches_per_draw(batch, images.shape[1], cfg.crop_size)
    perm = torch.randperm(len(images), generator=gen)

    def draw(per_call: int) -> None:
        for c0 in range(0, steps, per_call):
            rows = perm[c0 * batch : min(c0 + per_call, steps) * batch]
            [augment(images[rows], cfg, data.mean, data.std, gen) for _ in range(2)]

    ours, reference = partial(draw, chunk), partial(draw, 1)
    ours(), reference()
    t_ours, t_ref = interleaved(ours, reference, max(rounds, 3))
    views = 2 * steps * batch
    return Row(
        "augment",
        f"digits-color 28->12 px, B={batch}, 2 views, {chunk if chunk < steps else 'all'} batches "
        f"per call vs 1, {threads} core(s)",
        fmt_rate(views / median(t_ours), "view"),
        fmt_rate(views / median(t_ref), "view"),
        speedup(t_ours, t_ref),
        3.0,
        note="train.VIEW_VALUES: the views of many batches in one augment call",
        raw={"ours_s": t_ours, "reference_s": t_ref, "views": views, "batch": batch, "cores": threads},
    )
