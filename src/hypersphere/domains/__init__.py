"""The domains: one module per kind of data, each owning its datasets, encoders, positive pairs and evaluation
kinds. The trainer (train.py), the sweeps and the evaluation records (evaluate.py) reach them only through the
`Domain` entries below; nothing outside this package names a dataset.

  image.py   STL-10, CIFAR-10, image folders, ImageNet-100 and the embedded digits (Figs. 3-5a, 7-9a, Tables 1, 3, 5);
             evaluation kind `classify`
  depth.py   NYU-Depth-V2 and the rendered `scenes` stand-in (Fig. 5b, Table 2); evaluation kind `depth`
  text.py    BookCorpus-layout books and the embedded sentence stand-in (Fig. 9b, Table 4); evaluation kind `sentences`

A domain supplies four things:
  - its data:       `load(dataset, data_dir, download)` -> a data object holding whole splits;
  - its encoder:    `encoder(arch, dim, data)` -> an nn.Module with forward_taps / feature_dims;
  - positive pairs: `views(data, images, generator)` -> one random view of each input, drawn with the
                    data's augmentation recipe (the run's choice from augment.RECIPES), called once per view;
  - evaluations:    {kind: Evaluation} of the downstream tasks that apply to it, the first one its default.
A domain whose positives are not two views of one input (sentences) sets two hooks instead of `views`, and the
trainer then draws its batches with train.DomainBatches:
  - order:          `order(n, batch, generator)` -> the epoch's sample order, cut into batches in sequence;
  - batch_loss:     `batch_loss(model, objective, data, idx)` -> (loss, terms incl. "norm_error") of a batch
                    of indices.
Any domain may set `check(cfg)`, which raises ValueError for a TrainConfig the domain cannot train.

A new domain is one more module here and one more `Domain(...)` entry in DOMAINS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from . import depth, image, text


@dataclass(frozen=True)
class Evaluation:
    """One evaluation kind: `run(encoder, data, cfg, device, tau, batch_size, taps=None)` -> a flat dict of results
    (cfg: evaluate.EvalConfig; tau: the run's contrastive temperature, for L_contrastive; batch_size: the run's);
    `features(encoder, data, cfg, device)` -> the unit-norm validation features [N, d] whose label-free statistics
    (metrics.label_free) every record holds."""

    run: Callable[..., dict[str, float]]
    taps: tuple[str, ...]  # the taps it reads when the EvalConfig names none
    features: Callable[..., Any]
    snapshot: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields a snapshot epoch's evaluation overrides


@dataclass(frozen=True)
class Domain:
    name: str
    datasets: tuple[str, ...]
    load: Callable[[str, str, bool], Any]
    encoder: Callable[[str, int, Any], nn.Module]
    views: Callable[..., Any] | None
    evaluations: dict[str, Evaluation]
    archs: tuple[str, ...]
    order: Callable[..., Any] | None = None
    batch_loss: Callable[..., Any] | None = None
    check: Callable[[Any], None] | None = None


NO_SELECTION_CV = {"cv_folds": 0}  # a snapshot's evaluation skips the CV that only selects Tables 1-2's encoders

IMAGE = Domain(
    name="image",
    datasets=image.DATASETS,
    load=image.load_dataset,
    encoder=image.build_encoder,
    views=image.views,
    archs=image.ARCHS,
    evaluations={"classify": Evaluation(image.evaluate, ("fc7", "output"), image.validation_features, NO_SELECTION_CV)},
)
# Depth (Fig. 5b, Table 2): encoders train on the RGB images as in the image domain; the evaluation differs.
DEPTH = Domain(
    name="depth",
    datasets=depth.DATASETS,
    load=depth.load_dataset,
    encoder=image.build_encoder,
    views=image.views,
    archs=depth.ARCHS,
    evaluations={"depth": Evaluation(depth.evaluate, ("conv5", "conv4"), image.validation_features, NO_SELECTION_CV)},
)
# Sentences (Fig. 9b, Table 4): Quick-Thought encoders on windows of consecutive sentences; the sentence
# accuracy is itself cross-validated, so a snapshot's evaluation keeps its CV.
TEXT = Domain(
    name="text",
    datasets=text.DATASETS,
    load=text.load_dataset,
    encoder=text.build_encoder,
    views=None,
    archs=tuple(text.ARCHS),
    order=text.contiguous_order,
    batch_loss=text.batch_loss,
    check=text.check,
    evaluations={"sentences": Evaluation(text.evaluate, (), text.validation_features)},
)
DOMAINS = {d.name: d for d in (IMAGE, DEPTH, TEXT)}
EVALUATIONS = {kind: e for d in DOMAINS.values() for kind, e in d.evaluations.items()}


def domain_of(dataset: str) -> Domain:
    """The domain that provides `dataset`."""
    for d in DOMAINS.values():
        if dataset in d.datasets:
            return d
    known = ", ".join(ds for d in DOMAINS.values() for ds in d.datasets)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {known}")
