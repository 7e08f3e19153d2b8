"""Datasets as whole uint8 tensors, each with its positive-pair recipe (paper Sec. 3 "Common image setup").

- stl10: the paper's setting. Encoders train on `train+unlabeled` (105,000 images, 96 px), probes on
  `train` (5,000), evaluation on `test` (8,000); crops of 64 px, evaluation Resize(70) + CenterCrop(64).
- cifar10: kept at its native 32 px with the paper's recipe scaled to it: crop 32 (scale 0.08-1) and
  evaluation Resize(35) + CenterCrop(32), the same 64/70 ratio (upsampling to 64 px would only cost compute).
- imagefolder: any `root/train/<class>/*` and `root/val/<class>/*`, resized (shorter side) and centre-cropped
  to 96 px like STL-10, ImageNet normalisation.
- imagenet100: `root/imagenet100/{train,val}/<wnid>/*` (build it from ImageNet with moco.build_imagenet100),
  kept at 256 px for MoCo's 224 px crops (Fig. 9a, Table 3); about 25 GB of uint8 in memory.
- digits: scikit-learn's bundled 8x8 digits (no download), upsampled to 28 px, for seconds-long CPU runs.
- digits-color: the same digits painted with a random foreground and background colour per image, so that
  colour is a nuisance the paper's colour augmentations have to remove, as on STL-10.
"""

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
import torch.nn.functional as F

from .augment import GRAY_WEIGHTS, AugmentConfig, recipe

DATASETS = ("digits", "digits-color", "stl10", "cifar10", "imagefolder", "imagenet100")

STL10_MEAN, STL10_STD = (0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)  # the paper's
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGEFOLDER_SIDE = 96

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
    augment: AugmentConfig  # the positive-pair recipe (the dataset's default from augment.RECIPES; a run may set another)
    eval_resize: int  # evaluation: Resize(eval_resize) then CenterCrop(augment.crop_size)

    def to(self, device) -> "ImageData":
        return to_device(self, device)


def to_device(data, device):
    """A data dataclass with all its tensors moved to `device` (dtypes kept; a tensor used twice is moved once)."""
    moved: dict[int, Tensor] = {}
    tensors = {f.name: getattr(data, f.name) for f in fields(data) if isinstance(getattr(data, f.name), Tensor)}
    for t in tensors.values():
        moved.setdefault(id(t), t.to(device))
    return replace(data, **{name: moved[id(t)] for name, t in tensors.items()})


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
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def _missing(what: str, path: Path, dataset: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found under {path}; download it with `make data DATASET={dataset}` "
                             f"or pass download=True (`--download`)")


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
    train, val = train_test_split(np.arange(len(labels)), test_size=DIGITS_VAL_SIZE, stratify=digits.target,
                                  random_state=DIGITS_SPLIT_SEED)
    train, val = torch.from_numpy(train), torch.from_numpy(val)
    train_images = images[train]
    mean, std = _channel_stats(train_images)
    return ImageData(
        name="digits" if color_seed is None else "digits-color",
        encoder_images=train_images, train_images=train_images, train_labels=labels[train],
        val_images=images[val], val_labels=labels[val], mean=mean, std=std, num_classes=10,
        augment=recipe("digits" if color_seed is None else "digits-color"), eval_resize=DIGITS_EVAL_RESIZE)


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


def _stl10(root: Path, download: bool) -> ImageData:
    """STL-10 (paper's setting): encoder on train+unlabeled, probes on train, evaluation on test."""
    from torchvision.datasets import STL10

    folder = root / "stl10_binary"
    if not download and not all((folder / f).is_file() for f in _STL10_FILES):
        raise _missing("STL-10", folder, "stl10")
    both = STL10(str(root), split="train+unlabeled", download=download)  # train first, then unlabeled (-1)
    test = STL10(str(root), split="test", download=False)
    images, labels = torch.from_numpy(both.data).contiguous(), torch.from_numpy(both.labels).long()
    labeled = labels >= 0
    return ImageData(
        name="stl10", encoder_images=images, train_images=images[labeled], train_labels=labels[labeled],
        val_images=torch.from_numpy(test.data).contiguous(), val_labels=torch.from_numpy(test.labels).long(),
        mean=STL10_MEAN, std=STL10_STD, num_classes=10, augment=recipe("stl10"), eval_resize=70)


def _cifar10(root: Path, download: bool) -> ImageData:
    """CIFAR-10 at 32 px: encoder and probes on train (50,000), evaluation on test (10,000)."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    if not download and not folder.is_dir():
        raise _missing("CIFAR-10", folder, "cifar10")
    train = CIFAR10(str(root), train=True, download=download)
    test = CIFAR10(str(root), train=False, download=False)
    images = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return ImageData(
        name="cifar10", encoder_images=images, train_images=images,
        train_labels=torch.tensor(train.targets, dtype=torch.int64),
        val_images=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        val_labels=torch.tensor(test.targets, dtype=torch.int64), mean=CIFAR10_MEAN, std=CIFAR10_STD,
        num_classes=10, augment=recipe("cifar10"), eval_resize=35)


def _imagefolder(root: Path, name: str, side: int, recipe_name: str, eval_resize: int) -> ImageData:
    """root/train/<class>/* and root/val/<class>/*, each image resized (shorter side) and centre-cropped to
    `side` px, decoded by DataLoader workers; encoder and probes on train, evaluation on val."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        hint = " (build it with hypersphere.moco.build_imagenet100)" if name == "imagenet100" else ""
        raise FileNotFoundError(f"image folders not found under {root}/train and {root}/val (they cannot be "
                                f"downloaded); pass a root holding train/<class>/*.png and val/<class>/*.png{hint}")
    to_tensor = T.Compose([T.Resize(side), T.CenterCrop(side), T.PILToTensor()])
    train, val = ImageFolder(str(root / "train"), to_tensor), ImageFolder(str(root / "val"), to_tensor)
    if train.classes != val.classes:
        raise ValueError(f"{root}/train and {root}/val have different classes; give both the same class folders")

    def stack(folder) -> tuple[Tensor, Tensor]:
        loader = torch.utils.data.DataLoader(folder, batch_size=256, num_workers=min(8, os.cpu_count() or 1))
        images, labels = zip(*loader)
        return torch.cat(images), torch.cat(labels).long()

    (images, labels), (val_images, val_labels) = stack(train), stack(val)
    return ImageData(
        name=name, encoder_images=images, train_images=images, train_labels=labels, val_images=val_images,
        val_labels=val_labels, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=len(train.classes),
        augment=recipe(recipe_name), eval_resize=eval_resize)
