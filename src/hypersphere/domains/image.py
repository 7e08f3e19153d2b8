"""The image domain: datasets as whole uint8 tensors with their positive-pair recipes (paper Sec. 3 "Common image
setup"), the encoder each uses, its random views, and the evaluation kind `classify` (Figs. 3-5a, 7-9a, Tables 1, 3).

- stl10: the paper's setting. Encoders train on `train+unlabeled` (105,000 images, 96 px), probes on
  `train` (5,000), evaluation on `test` (8,000); crops of 64 px, evaluation Resize(70) + CenterCrop(64).
- cifar10: kept at its native 32 px with the paper's recipe scaled to it: crop 32 (scale 0.08-1) and
  evaluation Resize(35) + CenterCrop(32), the same 64/70 ratio (upsampling to 64 px would only cost compute).
- imagefolder: any `root/train/<class>/*` and `root/val/<class>/*` (JPEG, PNG, WebP), resized (shorter side) and
  centre-cropped to 96 px like STL-10, ImageNet normalisation.
- imagenet100: `root/imagenet100/{train,val}/<wnid>/*` (build it from ImageNet with moco.build_imagenet100),
  kept at 256 px for MoCo's 224 px crops (Fig. 9a, Table 3); about 25 GB of uint8 in memory.
- imagenet: `root/imagenet/{train,val}/<wnid>/*.JPEG`, ImageNet-1k for MoCo v2 (Table 5), streamed: 1.28 M images
  at 256 px (~250 GB of uint8) do not fit in memory, so the files are decoded as batches are drawn (ImageFiles).
- digits: scikit-learn's bundled 8x8 digits (no download), upsampled to 28 px, for seconds-long CPU runs.
- digits-color: the same digits painted with a random foreground and background colour per image, so that
  colour is a nuisance the paper's colour augmentations have to remove, as on STL-10.

The building blocks live outside the domain because the depth domain and the probes share them: the batched
augmentation (augment.py), the conv encoders (models.py) and MoCo's ResNets (moco.py).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import models, moco
from ..augment import GRAY_WEIGHTS, AugmentConfig, augment, recipe
from ..losses import contrastive_loss
from ..metrics import alignment, uniformity
from ..probes import (
    LINCLS_PROBE,
    MOCO_PROBE,
    ProbeConfig,
    choose_l2,
    cross_validate,
    extract_features,
    knn_accuracy,
    lbfgs_probe,
    linear_probe_cached,
    linear_probe_full,
)

DATASETS = ("digits", "digits-color", "stl10", "cifar10", "imagefolder", "imagenet100", "imagenet")

STL10_MEAN, STL10_STD = (0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)  # the paper's
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGEFOLDER_SIDE = 96
DECODED = (".jpg", ".jpeg", ".png", ".webp")  # of torchvision's ImageFolder extensions, those `decode` reads

DIGITS_EVAL_RESIZE = 13  # Resize(13) + CenterCrop(12) ~ the paper's Resize(70) + CenterCrop(64)
DIGITS_SIDE, DIGITS_VAL_SIZE, DIGITS_SPLIT_SEED = 28, 450, 0
MIN_LUMA_CONTRAST = 0.25  # digits-color: foreground and background luminance differ by at least this


@dataclass(frozen=True)
class ImageData:
    """Whole splits as tensors: images uint8 [N, C, H, W], labels int64 [N]."""

    name: str
    encoder_images: Tensor  # what encoders train on (no labels needed)
    train_images: Tensor  # labeled split for probes and 5-fold CV
    train_labels: Tensor
    val_images: Tensor  # labeled validation split
    val_labels: Tensor
    mean: tuple[float, ...]  # per channel, 0-1 scale
    std: tuple[float, ...]
    num_classes: int
    # the positive-pair recipe (the dataset's default from augment.RECIPES; a run may set another)
    augment: AugmentConfig
    eval_resize: int  # evaluation: Resize(eval_resize) then CenterCrop(augment.crop_size)

    def to(self, device) -> "ImageData":
        return to_device(self, device)

    def summary(self) -> str:
        return summary(self)


def to_device(data, device):
    """A data dataclass with all its tensors moved to `device` (dtypes kept; a tensor used twice is moved once)."""
    moved: dict[int, Tensor] = {}
    tensors = {f.name: getattr(data, f.name) for f in fields(data) if isinstance(getattr(data, f.name), Tensor)}
    for t in tensors.values():
        moved.setdefault(id(t), t.to(device))
    return replace(data, **{name: moved[id(t)] for name, t in tensors.items()})


def summary(d) -> str:
    """The splits' sizes of image data (ImageData, or the depth domain's DepthData)."""
    return (
        f"{len(d.encoder_images)} encoder images, {len(d.train_images)} labeled train, {len(d.val_images)} "
        f"validation, {tuple(d.train_images.shape[1:])} uint8"
    )


def load_dataset(name: str, root: str | Path = "data", download: bool = False, seed: int = 0) -> ImageData:
    """Load dataset `name` (one of DATASETS) from `root`. `seed` only sets digits-color's colours."""
    root = Path(root)
    if name == "digits":
        return _digits()
    if name == "digits-color":
        return _digits(color_seed=seed)
    if name == "stl10":
        return _stl10(root, download)
    if name == "cifar10":
        return _cifar10(root, download)
    if name == "imagefolder":
        return _imagefolder(root, "imagefolder", IMAGEFOLDER_SIDE, "stl10", 70)
    if name == "imagenet100":
        return _imagefolder(root / "imagenet100", "imagenet100", 256, "mocov1", 256)
    if name == "imagenet":
        return _imagefolder(root / "imagenet", "imagenet", 256, "mocov2", 256, stream=True)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def _missing(what: str, path: Path, dataset: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found under {path}; download it with `make data DATASET={dataset}` "
        f"or pass download=True (`--download`)"
    )


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0-1 scale."""
    x = images.double().div(255).transpose(0, 1).flatten(1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


# ---------------------------------------------------------------------------------------- digits


def _digits(color_seed: int | None = None) -> ImageData:
    """sklearn's 1,797 8x8 digits, bilinearly upsampled to 28 px, fixed stratified 1,347 / 450 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16  # [1797, 1, 8, 8], 0-1
    x = F.interpolate(x, size=(DIGITS_SIDE, DIGITS_SIDE), mode="bilinear", align_corners=False)
    images = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    if color_seed is not None:
        images = _colorize(images, torch.Generator().manual_seed(color_seed))
    train, val = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_VAL_SIZE, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    train, val = torch.from_numpy(train), torch.from_numpy(val)
    train_images = images[train]
    mean, std = channel_stats(train_images)
    return ImageData(
        name="digits" if color_seed is None else "digits-color",
        encoder_images=train_images,
        train_images=train_images,
        train_labels=labels[train],
        val_images=images[val],
        val_labels=labels[val],
        mean=mean,
        std=std,
        num_classes=10,
        augment=recipe("digits" if color_seed is None else "digits-color"),
        eval_resize=DIGITS_EVAL_RESIZE,
    )


def _colorize(gray: Tensor, generator: torch.Generator, tries: int = 16) -> Tensor:
    """uint8 [N, 1, H, W] -> uint8 [N, 3, H, W]: each image gets a random foreground and background colour
    (uniform in RGB), and the grey level is the alpha between them. Of `tries` random pairs the first whose
    luminances differ by >= MIN_LUMA_CONTRAST is used (else the most contrasted), so the digit stays
    visible in grayscale."""
    n = len(gray)
    pairs = torch.rand(n, tries, 2, 3, generator=generator)  # (foreground, background) candidates
    contrast = (pairs @ torch.tensor(GRAY_WEIGHTS)).diff(dim=2).abs().squeeze(2)  # [n, tries]
    ok = contrast >= MIN_LUMA_CONTRAST
    pick = torch.where(ok.any(1), ok.int().argmax(1), contrast.argmax(1))
    fg, bg = pairs[torch.arange(n), pick].unbind(1)  # [n, 3] each
    alpha = gray.float() / 255
    rgb = bg[:, :, None, None] + alpha * (fg - bg)[:, :, None, None]
    return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------- torchvision sets

_STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")


def _stl10_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """One split of stl10_binary/: images stored column-major [N, 3, W, H] -> [N, 3, H, W]; labels 1-10 -> 0-9
    (-1 for the unlabeled split)."""
    raw = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise ValueError(f"{folder / split}_X.bin is not whole 3x96x96 images ({raw.size} bytes); download it again")
    images = torch.from_numpy(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy())
    y = folder / f"{split}_y.bin"
    labels = (
        torch.from_numpy(np.fromfile(y, dtype=np.uint8).astype(np.int64)) - 1
        if y.is_file()
        else torch.full((len(images),), -1, dtype=torch.int64)
    )
    if len(labels) != len(images):
        raise ValueError(f"{y} has {len(labels)} labels for {len(images)} images; download STL-10 again")
    return images, labels


def _stl10(root: Path, download: bool) -> ImageData:
    """STL-10 (paper's setting): encoder on train+unlabeled, probes on train, evaluation on test. The binaries are
    read as stl10_binary.tar.gz holds them; torchvision only downloads them (and checks their md5)."""
    folder = root / "stl10_binary"
    if download:
        from torchvision.datasets import STL10

        STL10(str(root), split="train+unlabeled", download=True)
    if not all((folder / f).is_file() for f in _STL10_FILES):
        raise _missing("STL-10", folder, "stl10")
    (train, train_y), (unlabeled, _), (test, test_y) = (_stl10_split(folder, s) for s in ("train", "unlabeled", "test"))
    images = torch.cat([train, unlabeled])  # train first, then unlabeled, as torchvision's train+unlabeled
    return ImageData(
        name="stl10",
        encoder_images=images,
        train_images=images[: len(train)],
        train_labels=train_y,
        val_images=test,
        val_labels=test_y,
        mean=STL10_MEAN,
        std=STL10_STD,
        num_classes=10,
        augment=recipe("stl10"),
        eval_resize=70,
    )


def _cifar10_batches(folder: Path, names: list[str]) -> tuple[Tensor, Tensor]:
    """Pickled batches of cifar-10-batches-py/: 'data' uint8 [N, 3072] (R, G, B planes, row-major), 'labels'."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += list(batch["labels"])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def _cifar10(root: Path, download: bool) -> ImageData:
    """CIFAR-10 at 32 px: encoder and probes on train (50,000), evaluation on test (10,000). The pickles are read
    as cifar-10-python.tar.gz holds them; torchvision only downloads them (and checks their md5)."""
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)]
    if download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    if not all((folder / f).is_file() for f in names + ["test_batch"]):
        raise _missing("CIFAR-10", folder, "cifar10")
    (images, labels), (val_images, val_labels) = (
        _cifar10_batches(folder, names),
        _cifar10_batches(folder, ["test_batch"]),
    )
    return ImageData(
        name="cifar10",
        encoder_images=images,
        train_images=images,
        train_labels=labels,
        val_images=val_images,
        val_labels=val_labels,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        num_classes=10,
        augment=recipe("cifar10"),
        eval_resize=35,
    )


def _imagefolder(
    root: Path, name: str, side: int, recipe_name: str, eval_resize: int, stream: bool = False
) -> ImageData:
    """root/train/<class>/* and root/val/<class>/* (torchvision's ImageFolder), each image resized (shorter side)
    and centre-cropped to `side` px: decoded into memory, or with `stream` left on disk as ImageFiles that decode
    the rows a batch draws. Encoder and probes on train, evaluation on val."""
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        hint = {
            "imagenet100": " (build it with hypersphere.moco.build_imagenet100)",
            "imagenet": " (ImageNet's val sorted into class folders, as for the official MoCo code)",
        }.get(name, "")
        raise FileNotFoundError(
            f"image folders not found under {root}/train and {root}/val (they cannot be "
            f"downloaded); pass a root holding train/<class>/*.jpg and val/<class>/*.jpg{hint}"
        )
    train, val = _listed(root / "train"), _listed(root / "val")
    if train.classes != val.classes:
        raise ValueError(f"{root}/train and {root}/val have different classes; give both the same class folders")
    (images, labels), (val_images, val_labels) = [
        (ImageFiles([path for path, _ in folder.samples], side), torch.tensor(folder.targets, dtype=torch.int64))
        for folder in (train, val)
    ]
    if not stream:
        images, val_images = images.decode_all(), val_images.decode_all()
    return ImageData(
        name=name,
        encoder_images=images,
        train_images=images,
        train_labels=labels,
        val_images=val_images,
        val_labels=val_labels,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=len(train.classes),
        augment=recipe(recipe_name),
        eval_resize=eval_resize,
    )


def _listed(folder: Path):
    """torchvision's ImageFolder of `folder` (it lists the files only), checked before anything is decoded: it has
    class folders, and `decode` reads every image it lists."""
    from torchvision.datasets import ImageFolder

    if not any(entry.is_dir() for entry in os.scandir(folder)):
        raise FileNotFoundError(
            f"{folder} has no class folders; sort its images into {folder}/<class>/ (a raw "
            f"ImageNet val/ is flat: sort it into val/<wnid>/ with the devkit's ground truth, e.g. "
            f"the widely used valprep.sh)"
        )
    images = ImageFolder(str(folder))
    if other := [path for path, _ in images.samples if not path.lower().endswith(DECODED)]:
        kinds = sorted({os.path.splitext(path)[1].lower() for path in other})
        raise ValueError(
            f"{folder} holds {len(other)} images as {', '.join(kinds)} (e.g. {other[0]}), which the "
            f"decoder (TorchCodec: {', '.join(DECODED)}) does not read; convert them to PNG or JPEG, or "
            f"remove them"
        )
    return images


def decode(path: str, side: int) -> Tensor:
    """One image file as uint8 [3, side, side]: decoded by TorchCodec (libjpeg-turbo; JPEG, PNG, WebP; grey and
    CMYK to RGB), the shorter side resized to `side` (bilinear, antialiased), centre-cropped. Tensor decoding and
    resizing rather than PIL's: 2.1x the images/s on one core on 500x375 JPEGs (765 against 342), the same
    pixels to within 0.002 of 255 on average (measured when this path was chosen). TorchCodec rather than
    torchvision.io, which deprecates its decoders in its favour (the same pixels, the same speed)."""
    from torchcodec.decoders import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import center_crop, resize

    try:
        image = decode_image(path, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"cannot decode {path}: {str(e).splitlines()[0]}; remove or replace the file") from None
    return center_crop(resize(image, side, antialias=True), side)


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], side: int):
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return decode(self.paths[i], self.side)


def _loader_workers() -> int:
    """DataLoader workers per training process: this machine's cores shared by torchrun's local processes, <= 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class ImageFiles:
    """Image files standing in for a uint8 [N, 3, side, side] tensor whose rows are decoded when indexed: the
    streaming path for datasets too large for memory. `images[rows]` decodes those rows (`decode`) in DataLoader
    worker processes; `plan(batches)` has the workers decode batches ahead, in order, so that the trainer's next
    `images[rows]` finds them ready; `split(n)` decodes consecutive chunks ahead. The batched augmentation then
    runs on the device exactly as for an in-memory dataset, so a streamed run draws the same views as the same
    images held in memory would."""

    dtype, device = torch.uint8, torch.device("cpu")

    def __init__(self, paths: list[str], side: int, workers: int | None = None):
        self.paths, self.side = list(paths), side
        self.shape = (len(self.paths), 3, side, side)
        self.workers = _loader_workers() if workers is None else workers
        self._planned, self._ahead = collections.deque(), iter(())

    def __len__(self) -> int:
        return len(self.paths)

    def _batches(self, batches: list[Tensor]):
        # a generator of its own: a DataLoader otherwise seeds its workers from torch's global one, which would shift
        # the draws of everything else (Shuffle-BN's permutation) between a resumed run and an uninterrupted one
        return iter(
            torch.utils.data.DataLoader(
                _Decoded(self.paths, self.side),
                batch_sampler=[b.tolist() for b in batches],
                num_workers=self.workers,
                pin_memory=torch.cuda.is_available(),
                generator=torch.Generator(),
            )
        )

    def plan(self, batches: list[Tensor]) -> None:
        """Decode these batches of rows ahead, in this order (the trainer's remaining batches of an epoch)."""
        self._planned = collections.deque(b.cpu() for b in batches)
        self._ahead = self._batches(list(self._planned))

    def __getitem__(self, idx) -> Tensor:
        rows = torch.arange(len(self))[idx] if isinstance(idx, (int, slice)) else torch.as_tensor(idx).cpu()
        if self._planned and torch.equal(self._planned[0], rows):
            self._planned.popleft()
            return next(self._ahead)
        images = next(self._batches([rows.reshape(-1)]))
        return images[0] if rows.dim() == 0 else images

    def split(self, size: int):
        return self._batches(list(torch.arange(len(self)).split(size)))

    def decode_all(self) -> Tensor:
        """Every image as one uint8 [N, 3, side, side] tensor, filled a batch at a time: no list of batches beside
        it to concatenate, which doubled the peak (ImageNet-100's train split alone is ~25 GB)."""
        out, start = torch.empty(len(self), 3, self.side, self.side, dtype=torch.uint8), 0
        for batch in self.split(256):
            out[start : start + len(batch)] = batch
            start += len(batch)
        return out


# ---------------------------------------------------------------------------------------- encoders and views

RESNETS = {  # MoCo's encoders (Fig. 9a): "-mlp" is MoCo v2's projection head, else MoCo v1's linear one
    "resnet50": lambda dim, mlp, channels: moco.resnet50_moco(dim, mlp),
    "smallresnet": lambda dim, mlp, channels: moco.small_resnet_moco(dim, mlp, in_channels=channels),
    # a quarter of smallresnet's widths: ~6x faster on a CPU, for the quick profile's MoCo cloud on 28 px digits
    "tinyresnet": lambda dim, mlp, channels: moco.small_resnet_moco(dim, mlp, (8, 16, 32, 64), in_channels=channels),
}
ARCHS = (
    ("auto",)
    + tuple(f"{a}{head}" for a in models.ARCHS for head in models.HEADS)
    + tuple(f"{a}{mlp}" for a in RESNETS for mlp in ("", "-mlp"))
)
EMBEDDED = ("digits", "digits-color", "scenes")  # small images: DigitsNet by default


def build_encoder(arch: str, dim: int, d) -> nn.Module:
    """SmallAlexNet (the paper's) for natural images, DigitsNet for the embedded small images by default;
    ResNets (taps "penultimate", "output") for MoCo. `d`: ImageData or the depth domain's DepthData."""
    if arch == "auto":
        arch = "digitsnet" if d.name in EMBEDDED else "smallalexnet"
    if (name := arch.removesuffix("-mlp")) in RESNETS:
        return RESNETS[name](dim, arch.endswith("-mlp"), d.train_images.shape[1])
    return models.build_encoder(arch, d.train_images.shape[1], dim, d.augment.crop_size)


def views(d, images: Tensor, generator: torch.Generator) -> Tensor:
    """One random view of each image, with the data's augmentation recipe (augment.py)."""
    return augment(images, d.augment, d.mean, d.std, generator)


# ---------------------------------------------------------------------------------------- evaluation: classify
@torch.no_grad()
def view_pairs(
    encoder: nn.Module, data, generator: torch.Generator, device, chunk_size: int = 512
) -> tuple[Tensor, Tensor]:
    """The encoder's outputs (float32) on two independent draws of the training augmentation of each validation
    image: row i of both is a positive pair. Eval mode, restored afterwards; `generator` lives on `device`."""
    fx, fy = [], []
    with models.frozen(encoder):
        for batch in data.val_images.split(chunk_size):
            batch = batch.to(device)
            fx.append(encoder(augment(batch, data.augment, data.mean, data.std, generator)).float())
            fy.append(encoder(augment(batch, data.augment, data.mean, data.std, generator)).float())
    return torch.cat(fx), torch.cat(fy)


def validation_features(encoder: nn.Module, data, cfg, device) -> Tensor:
    """The outputs on the first view of each validation pair (view_pairs, seeded as the evaluation's pair_metrics):
    the features the label-free statistics of an evaluation record read."""
    return view_pairs(encoder, data, torch.Generator(device=device).manual_seed(cfg.seed), device)[0]


@torch.no_grad()
def pair_metrics(
    encoder: nn.Module,
    data: ImageData,
    tau: float | None = None,
    batch_size: int = 768,
    seed: int = 0,
    *,
    device=None,
    chunk_size: int = 512,
) -> dict[str, float]:
    """L_align(alpha=2) and L_uniform(t=2) of the encoder's outputs on the VALIDATION split (Fig. 5 axes).

    The paper does not say how validation positive pairs are formed; here each validation image gives one pair
    from two independent draws of the training augmentation `data.augment`. Both metrics are exact over the whole
    split (metrics.alignment over all pairs; metrics.uniformity over all distinct pairs, averaged over the two
    views as the paper's estimator does). With `tau`, also L_contrastive(tau): losses.contrastive_loss over
    shuffled batches of `batch_size` pairs (the run's batch size; a last incomplete batch is dropped unless it is
    the only one), averaged. Encoder in eval mode (mode restored afterwards); the views and batches are drawn from
    a generator seeded `seed` on `device` (the encoder's by default). The same signature in every domain (text.py).
    """
    device = device or next(encoder.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    fx, fy = view_pairs(encoder, data, generator, device, chunk_size)
    out = {"align": alignment(fx, fy, alpha=2.0), "uniform": (uniformity(fx, t=2.0) + uniformity(fy, t=2.0)) / 2}
    if tau is not None:
        batches = torch.randperm(len(fx), generator=generator, device=generator.device).split(batch_size)
        if len(batches) > 1 and len(batches[-1]) < batch_size:
            batches = batches[:-1]
        losses = [contrastive_loss(fx[b.to(device)], fy[b.to(device)], tau).item() for b in batches]
        out["contrastive"] = sum(losses) / len(losses)
    return out


FULL_PROBES = {"adam-full": ProbeConfig(), "sgd-full": MOCO_PROBE, "sgd-lincls": LINCLS_PROBE}  # on fresh crops


def _probe_config(cfg) -> ProbeConfig:
    """The optimiser and schedule of the evaluation's probe (`adam`: the paper's Adam probe, on cached features)."""
    return dataclasses.replace(FULL_PROBES.get(cfg.probe, ProbeConfig()), epochs=cfg.probe_epochs, seed=cfg.seed)


def _linear(encoder: nn.Module, tap: str, data: ImageData, train_f, val_f, cfg, device) -> dict:
    """Validation accuracy of the configured probe on one tap (and, for lbfgs, the chosen L2 and convergence)."""
    if cfg.probe == "lbfgs":
        l2, _ = choose_l2(train_f, data.train_labels, cfg.l2_grid, cfg.l2_folds, cfg.seed)
        acc, info = lbfgs_probe(train_f, data.train_labels, val_f, data.val_labels, l2)
        return {
            "linear": acc,
            "linear_top5": info["top5"],
            "linear_l2": l2,
            "linear_iterations": info["iterations"],
            "linear_grad": info["grad_max"],
            "fit": info["standardised"],
        }
    if cfg.probe == "adam":
        return {"linear": linear_probe_cached(train_f, data.train_labels, val_f, data.val_labels, _probe_config(cfg))}
    top1, top5 = linear_probe_full(encoder, tap, data, _probe_config(cfg), device)
    return {"linear": top1, "linear_top5": top5}


def evaluate(
    encoder: nn.Module,
    data: ImageData,
    cfg,
    device,
    tau: float | None = None,
    batch_size: int = 768,
    taps: Sequence[str] | None = None,
) -> dict[str, float]:
    """All classification evaluations of one encoder as a flat dict:
    val_{tap}_linear, val_{tap}_{k}nn   validation accuracy (%) of the probe and of k-NN,
    val_{tap}_linear_l2 (, _iterations, _grad)   the lbfgs probe's chosen L2 and its convergence,
    cv_{tap}_linear, cv_{tap}_{k}nn     stratified `cv_folds`-fold CV on the labeled train split (the
                                        linear one with the probe's optimiser and schedule on cached features:
                                        the paper's CV, e.g. Table 3's, is of the classifier it reports),
    align, uniform (, contrastive)      `pair_metrics` on the validation split."""
    taps = cfg.taps if taps is None else taps
    out: dict[str, float] = {}
    train_f = extract_features(encoder, data.train_images, data, taps, device=device)
    val_f = extract_features(encoder, data.val_images, data, taps, device=device)
    knn = partial(knn_accuracy, k=cfg.knn_k)
    for tap in taps:
        linear = _linear(encoder, tap, data, train_f[tap], val_f[tap], cfg, device)
        fit = linear.pop("fit", None)  # the full-split fit: a warm start for the CV folds' fits
        out.update({f"val_{tap}_{k}": v for k, v in linear.items()})
        out[f"val_{tap}_{cfg.knn_k}nn"] = knn(train_f[tap], data.train_labels, val_f[tap], data.val_labels)
        if cfg.cv_folds:
            if cfg.probe == "lbfgs":
                probe = lambda *a, l2=linear["linear_l2"], fit=fit: lbfgs_probe(*a, l2, init=fit)[0]  # noqa: E731
            else:  # the reported probe's optimiser and schedule (Table 3: SGD lr 10), on cached features
                probe = partial(linear_probe_cached, cfg=_probe_config(cfg))
            out[f"cv_{tap}_linear"] = cross_validate(train_f[tap], data.train_labels, probe, cfg.cv_folds, cfg.seed)
            out[f"cv_{tap}_{cfg.knn_k}nn"] = cross_validate(
                train_f[tap], data.train_labels, knn, cfg.cv_folds, cfg.seed
            )
    out.update(pair_metrics(encoder, data, tau, batch_size, cfg.seed, device=device))
    return out
