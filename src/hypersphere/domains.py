"""The seam between the generic machinery (trainer, sweeps, evaluation records) and a kind of data.

A domain supplies four things, and nothing else in the package looks at dataset names:
  - its data:       `load(dataset, data_dir, download)` -> a data object holding whole splits;
  - its encoder:    `encoder(arch, dim, data)` -> an nn.Module with forward_taps / feature_dims;
  - positive pairs: `views(data, images, generator)` -> one random view of each input, drawn with the
                    data's augmentation recipe (the run's choice from augment.RECIPES), called once per view;
  - evaluations:    the evaluation kinds that apply to it (evaluate.EVALUATIONS), the first one its default.
Three optional hooks, for a domain whose positives are not two views of one input (sentences):
  - order:          `order(n, batch, generator)` -> the epoch's sample order, cut into batches in sequence
                    (default: a random permutation);
  - batch_loss:     `batch_loss(model, objective, data, idx)` -> (loss, terms incl. "norm_error") of a batch
                    of indices (default: the objective on `views` of the inputs, train.batch_loss);
  - check:          `check(cfg)` raises ValueError for a TrainConfig the domain cannot train.

The image domain covers the paper's STL-10 / CIFAR-10 setup and the embedded digits; the depth domain
NYU-Depth-V2 and its rendered stand-in. A new domain is one more `Domain(...)` entry in DOMAINS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from . import augment, data, depth, models, moco, text


@dataclass(frozen=True)
class Domain:
    name: str
    datasets: tuple[str, ...]
    load: Callable[[str, str, bool], Any]
    encoder: Callable[[str, int, Any], nn.Module]
    views: Callable[..., Any]
    evaluations: tuple[str, ...]
    archs: tuple[str, ...]
    order: Callable[..., Any] | None = None
    batch_loss: Callable[..., Any] | None = None
    check: Callable[[Any], None] | None = None


RESNETS = {  # MoCo's encoders (Fig. 9a): "-mlp" is MoCo v2's projection head, else MoCo v1's linear one
    "resnet50": lambda dim, mlp, channels: moco.resnet50_moco(dim, mlp),
    "smallresnet": lambda dim, mlp, channels: moco.small_resnet_moco(dim, mlp, in_channels=channels),
    # a quarter of smallresnet's widths: ~6x faster on a CPU, for the quick profile's MoCo cloud on 28 px digits
    "tinyresnet": lambda dim, mlp, channels: moco.small_resnet_moco(dim, mlp, (8, 16, 32, 64), in_channels=channels),
}


EMBEDDED = ("digits", "digits-color", "scenes")  # small images: DigitsNet by default


def _image_encoder(arch: str, dim: int, d: data.ImageData | depth.DepthData) -> nn.Module:
    """SmallAlexNet (the paper's) for natural images, DigitsNet for the embedded small images by default;
    ResNets (taps "penultimate", "output") for MoCo."""
    if arch == "auto":
        arch = "digitsnet" if d.name in EMBEDDED else "smallalexnet"
    if (name := arch.removesuffix("-mlp")) in RESNETS:
        return RESNETS[name](dim, arch.endswith("-mlp"), d.train_images.shape[1])
    return models.build_encoder(arch, d.train_images.shape[1], dim, d.augment.crop_size)


def _image_views(d: data.ImageData, images, generator):
    return augment.augment(images, d.augment, d.mean, d.std, generator)


IMAGE = Domain(name="image", datasets=data.DATASETS, load=data.load_dataset, encoder=_image_encoder,
               views=_image_views, evaluations=("classify",),
               archs=("auto",) + models.ARCHS + tuple(f"{r}{mlp}" for r in RESNETS for mlp in ("", "-mlp")))
# Depth (Fig. 5b, Table 2): encoders train on the RGB images as in the image domain; the evaluation differs.
DEPTH = Domain(name="depth", datasets=depth.DATASETS, load=depth.load_dataset, encoder=_image_encoder,
               views=_image_views, evaluations=("depth",), archs=("auto",) + models.ARCHS)
# Sentences (Fig. 9b, Table 4): Quick-Thought encoders on windows of consecutive sentences (text.py)
TEXT = Domain(name="text", datasets=text.DATASETS, load=text.load_dataset, encoder=text.build_encoder, views=None,
              evaluations=("sentences",), archs=tuple(text.ARCHS), order=text.contiguous_order,
              batch_loss=text.batch_loss, check=text.check)
DOMAINS = {d.name: d for d in (IMAGE, DEPTH, TEXT)}


def domain_of(dataset: str) -> Domain:
    """The domain that provides `dataset`."""
    for d in DOMAINS.values():
        if dataset in d.datasets:
            return d
    known = ", ".join(ds for d in DOMAINS.values() for ds in d.datasets)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {known}")
