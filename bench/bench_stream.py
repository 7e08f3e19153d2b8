"""Benchmark 6: the streaming image path (Table 5's ImageNet) on CPU, in augmented views per second per core.

Both sides read the same folder of real JPEG files (500 x 375, ImageNet's typical size, written here) in a
shuffled order and make MoCo v2's two 224 px views of each image, on the same number of cores N:
  ours       domains/image.py's ImageFiles: one DataLoader worker per 8 cores decodes (TorchCodec) and resizes +
             centre-crops to 256 px, batches planned ahead as the trainer plans them; the main process draws both
             views with the batched augment() ("mocov2" recipe) on N torch threads.
  reference  the official MoCo code's pipeline: an ImageFolder with PIL decoding and TwoCropsTransform of
             torchvision transforms per image (RandomResizedCrop(224, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1)
             p 0.8, RandomGrayscale 0.2, PIL GaussianBlur sigma 0.1-2 p 0.5, flip, ToTensor, Normalize) in a
             DataLoader with N workers.
Same cores on both sides, so the ratio of views/s is also the ratio per core. Target: >= 1x. (The reference crops
the whole image, ours the 256 px centre crop, as for ImageNet-100 in memory: docs/paper.md.)
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter
from torchvision.datasets import ImageFolder

from hypersphere.augment import augment, recipe
from hypersphere.domains.image import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, decode
from timing import Row, fmt_rate, interleaved, median, speedup


def write_folder(root: Path, n: int, seed: int = 0) -> list[str]:
    """n JPEG files of 500 x 375 (smooth random colour fields plus noise, quality 90) in root/<class>/."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        folder = root / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)).resize(
            (500, 375), Image.BICUBIC
        )
        noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, size=(375, 500, 3))
        paths.append(str(folder / f"{i}.JPEG"))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def moco_blur(image: Image.Image) -> Image.Image:
    """MoCo v2's PIL Gaussian blur, sigma uniform in [0.1, 2]."""
    return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class TwoCrops:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def official_transform() -> TwoCrops:
    return TwoCrops(
        T.Compose(
            [
                T.RandomResizedCrop(224, scale=(0.2, 1.0)),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([moco_blur], p=0.5),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
    )


def run(quick: bool, threads: int) -> list[Row]:
    n, batch, rounds = (32, 16, 1) if quick else (384, 64, 3)
    # decoding is about a fifteenth of the work (784 images/s per core against ~97 views/s of augment() at 224 px),
    # so one worker per 8 cores decodes ahead while the augmentation has every core
    cores = max(2, threads)
    workers, torch_threads = max(1, cores // 8), cores
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_folder(Path(tmp), n)
        files = ImageFiles(paths, 256, workers=workers)
        cfg, gen = recipe("mocov2"), torch.Generator().manual_seed(0)
        reference_loader = torch.utils.data.DataLoader(
            ImageFolder(tmp, official_transform()),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=cores,
            persistent_workers=True,
            generator=torch.Generator().manual_seed(0),
        )

        def ours() -> None:
            before = torch.get_num_threads()
            torch.set_num_threads(torch_threads)
            batches = list(torch.randperm(n, generator=gen)[: n // batch * batch].split(batch))
            files.plan(batches)
            for rows in batches:
                images = files[rows]
                torch.cat([augment(images, cfg, IMAGENET_MEAN, IMAGENET_STD, gen) for _ in range(2)])
            torch.set_num_threads(before)

        def reference() -> None:
            for _ in reference_loader:
                pass

        reference(), ours()  # warm-up: the reference's persistent workers start, our first loader forks
        t_ours, t_ref = interleaved(ours, reference, rounds)
        decode_only = _decode_rate(paths[:16])
        # None, not del (reference() above still names it): dropping the loader shuts its persistent workers down
        # before the temporary folder is removed
        reference_loader = None
    views = 2 * (n // batch) * batch
    ours_rate, ref_rate = views / median(t_ours), views / median(t_ref)
    return [
        Row(
            "stream",
            f"MoCo v2 views of 500x375 JPEGs, B={batch}, {cores} core(s) each side",
            f"{fmt_rate(ours_rate, 'view')} ({ours_rate / cores:,.0f} per core)",
            f"{fmt_rate(ref_rate, 'view')} ({ref_rate / cores:,.0f} per core)",
            speedup(t_ours, t_ref),
            1.0,
            note=f"ours: {workers} decoding worker(s) + {torch_threads} augmenting thread(s); reference: "
            f"{cores} PIL workers; decode + resize alone {decode_only:,.0f} images/s on one core",
            raw={
                "ours_s": t_ours,
                "reference_s": t_ref,
                "views": views,
                "batch": batch,
                "cores": cores,
                "decode_images_per_s": decode_only,
            },
        )
    ]


def _decode_rate(paths: list[str]) -> float:
    """Images/s of decode + resize + centre crop to 256 px on one core (this process)."""
    decode(paths[0], 256)
    t0 = time.perf_counter()
    for p in paths:
        decode(p, 256)
    return len(paths) / (time.perf_counter() - t0)
