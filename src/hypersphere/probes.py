"""Classifiers on a frozen encoder's features (Wang & Isola, ICML 2020, Sec. 3 "common image setup", Table 1).

- `lbfgs_probe`: multinomial logistic regression solved to convergence (full-batch L-BFGS) on cached
  evaluation-transform features, its L2 strength chosen by cross-validation on the labeled train split
  (in the spirit of the paper's sentence-probe protocol); the default for small data, where a fixed
  optimiser budget stops far from the optimum;
- `linear_probe_full`: the paper's protocol, Adam on fresh random crops through the frozen encoder every
  epoch, ending with `sanity_check` that the encoder did not change; `linear_probe_cached`: the same
  optimiser on cached features;
- `knn_accuracy` (k = 5, cosine similarity, majority vote);
- `cross_validate` on stratified folds of the labeled train split (Table 1 selects encoders by it).
All accuracies are in percent. Everything runs on the encoder's (or features') device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .augment import augment, eval_transform
from .models import frozen

if TYPE_CHECKING:  # the image domain uses the probes
    from .domains.image import ImageData


@dataclass(frozen=True)
class ProbeConfig:
    """A linear probe's optimiser and schedule. The defaults are the paper's Adam probe (Sec. 3): Adam(lr 1e-3,
    betas (0.5, 0.999)), batch 128, 100 epochs, lr x0.2 at 60% and 80% of them. MOCO_PROBE is the SGD protocol
    of its ImageNet-100 experiments (after CMC)."""

    optimizer: str = "adam"  # adam | sgd (momentum, no weight decay)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 100
    milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of the epochs where the lr is multiplied by gamma
    gamma: float = 0.2
    crop_scale: tuple[float, ...] = ()  # the training crops' area range; () keeps the dataset's (linear_probe_full)
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"probe epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"probe optimizer must be adam or sgd, got {self.optimizer!r}")

    def lr_milestones(self) -> list[int]:
        """Epochs at which the lr is multiplied by gamma."""
        return [round(m * self.epochs) for m in self.milestones]


# SGD(lr 10, momentum 0.9, weight decay 0), batch 256, 60 epochs, lr x0.2 at epochs 30, 40 and 50
MOCO_PROBE = ProbeConfig(optimizer="sgd", lr=10.0, batch_size=256, epochs=60, milestones=(30 / 60, 40 / 60, 50 / 60))
# the official MoCo code's linear classification on ImageNet (main_lincls.py), Table 5's: SGD lr 30, batch 256,
# 100 epochs, lr x0.1 at epochs 60 and 80, no weight decay, on RandomResizedCrop(224)'s default scale (0.08-1)
LINCLS_PROBE = ProbeConfig(
    optimizer="sgd", lr=30.0, batch_size=256, epochs=100, milestones=(0.6, 0.8), gamma=0.1, crop_scale=(0.08, 1.0)
)


def _device(encoder: nn.Module, device) -> torch.device:
    return torch.device(device) if device is not None else next(encoder.parameters()).device


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: Tensor,
    data: ImageData,
    taps: Sequence[str] = ("output",),
    batch_size: int = 512,
    device=None,
) -> dict[str, Tensor]:
    """Features of uint8 `images` at each tap, float32, on `device` (default: the encoder's).

    Eval mode, no grad, the evaluation transform of `data` (Resize(data.eval_resize) + CenterCrop(crop) +
    normalise; the paper's Resize(70) + CenterCrop(64) for STL-10). The encoder's train/eval mode is restored.
    """
    device = _device(encoder, device)
    chunks = {tap: [] for tap in taps}
    with frozen(encoder):
        for batch in images.split(batch_size):
            x = eval_transform(batch.to(device), data.augment.crop_size, data.eval_resize, data.mean, data.std)
            for tap, f in encoder.forward_taps(x, taps).items():
                chunks[tap].append(f.float())
    return {tap: torch.cat(c) for tap, c in chunks.items()}


def _train_linear(
    featurize: Callable[[Tensor], Tensor],
    labels: Tensor,
    in_dim: int,
    num_classes: int,
    cfg: ProbeConfig,
    device,
    plan: Callable[[list[Tensor]], None] | None = None,
) -> nn.Linear:
    """Train a linear classifier with the paper's schedule; `featurize(idx)` gives the batch's features, and
    `plan`, if given, learns each epoch's batches first (streamed images decode them ahead: ImageFiles.plan).

    The classifier starts at zero (the problem is convex, and it needs no random init to be deterministic);
    batches come from a CPU generator seeded with cfg.seed, so runs are reproducible.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    clf = nn.Linear(in_dim, num_classes).to(device)
    nn.init.zeros_(clf.weight)
    nn.init.zeros_(clf.bias)
    opt = (
        torch.optim.Adam(clf.parameters(), lr=cfg.lr, betas=cfg.betas)
        if cfg.optimizer == "adam"
        else torch.optim.SGD(clf.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.lr_milestones(), cfg.gamma)
    labels = labels.to(device)
    for _ in range(cfg.epochs):
        batches = torch.randperm(len(labels), generator=gen).split(cfg.batch_size)
        if plan is not None:
            plan(list(batches))
        for idx in batches:
            loss = F.cross_entropy(clf(featurize(idx).float()), labels[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return clf


@torch.no_grad()
def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> tuple[float, ...]:
    """Top-k accuracies (%) for each k: a point counts when its label is among its k largest logits."""
    if max(ks) > logits.shape[1]:
        raise ValueError(f"top-{max(ks)} accuracy needs at least {max(ks)} classes, got {logits.shape[1]}")
    hit = logits.topk(max(ks), dim=1).indices == labels.to(logits.device)[:, None]  # [n, max k]
    return tuple(100.0 * hit[:, :k].any(1).float().mean().item() for k in ks)


@torch.no_grad()
def _accuracy(clf: nn.Linear, f: Tensor, y: Tensor) -> float:
    return topk_accuracy(clf(f), y, (1,))[0]


def linear_probe_cached(train_f: Tensor, train_y: Tensor, val_f: Tensor, val_y: Tensor, cfg: ProbeConfig) -> float:
    """Validation accuracy (%) of a linear classifier trained on fixed features with the paper's optimiser.

    Features are used raw, not standardised, as in the paper's probe (and `linear_probe_full`), so the cached
    and full probes differ only in the training augmentation. Standardising keeps the function class but not
    the optimisation: Adam moves weights ~lr per step whatever the feature scale, so with the fixed budget a
    concentrated representation (small spread around its mean, i.e. poor uniformity) is harder to separate.
    That is the effect the paper measures, and standardising would undo it: on digits, a random-init DigitsNet
    gets 69.6% on raw outputs but 88.4% standardised (a trained align+uniform one 88.2% raw), and 69.1% vs
    96.9% on fc7.
    """
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    train_f = train_f.float()
    clf = _train_linear(
        lambda idx: train_f[idx.to(train_f.device)], train_y, train_f.shape[1], num_classes, cfg, train_f.device
    )
    return _accuracy(clf, val_f.float(), val_y)


def sanity_check(state_dict_before: dict[str, Tensor], encoder: nn.Module) -> None:
    """Raise if any encoder parameter or buffer (BN running stats included) differs from `state_dict_before`.

    As in MoCo's linear evaluation: catches a probe that forgot eval() (BN running stats drift), no_grad, or
    handed encoder parameters to the optimiser. Take the snapshot with
    `{k: v.detach().clone() for k, v in encoder.state_dict().items()}`.
    """
    after = encoder.state_dict()
    if after.keys() != state_dict_before.keys():
        raise RuntimeError("sanity check failed: the encoder's state_dict keys changed during the linear probe")
    for k, v in after.items():
        if not torch.equal(v, state_dict_before[k].to(v.device)):
            raise RuntimeError(
                f"sanity check failed: encoder entry {k!r} changed during the linear probe "
                "(the encoder must stay frozen: eval mode, no grad, not in the optimiser)"
            )


def linear_probe_full(
    encoder: nn.Module, tap: str, data: ImageData, cfg: ProbeConfig, device=None
) -> tuple[float, float]:
    """The paper's linear evaluation (Sec. 3): validation accuracy (%) of a linear classifier on `tap` of the
    frozen encoder (eval mode, no grad), trained each epoch on new random crops of the labeled train split,
    tested on evaluation-transform crops of the validation split: (top-1, top-5) accuracy (%), top-5 NaN with
    fewer than 5 classes. Ends with `sanity_check` that the encoder is unchanged. With MOCO_PROBE, the
    protocol of the paper's MoCo experiments.

    Training crops are the dataset's crop recipe without colour augmentation or blur (data.augment with jitter,
    grayscale and blur 0), at `cfg.crop_scale` when set. For STL-10 / CIFAR-10 that is exactly the paper's
    RandomResizedCrop(scale 0.08-1) + flip; with LINCLS_PROBE, MoCo's main_lincls.py (0.08-1 + flip, where the
    MoCo datasets train at 0.2-1 with MoCo v2's blur); for digits it keeps that dataset's milder crops and no flip
    (a mirrored digit is not a digit)."""
    device = _device(encoder, device)
    before = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    crops = replace(
        data.augment,
        jitter=(0.0, 0.0, 0.0, 0.0),
        grayscale_p=0.0,
        blur_p=0.0,
        **({"scale": cfg.crop_scale} if cfg.crop_scale else {}),
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # augment() draws on the images' device

    @torch.no_grad()
    def featurize(idx: Tensor) -> Tensor:
        x = augment(data.train_images[idx.to(data.train_images.device)].to(device), crops, data.mean, data.std, gen)
        return encoder.forward_taps(x, (tap,))[tap].float()

    with frozen(encoder):
        clf = _train_linear(
            featurize,
            data.train_labels,
            encoder.feature_dims[tap],
            data.num_classes,
            cfg,
            device,
            getattr(data.train_images, "plan", None),
        )
    val_f = extract_features(encoder, data.val_images, data, (tap,), device=device)[tap]
    sanity_check(before, encoder)
    return _top1_top5(clf, val_f, data.val_labels)


@torch.no_grad()
def _top1_top5(clf: nn.Linear, f: Tensor, y: Tensor) -> tuple[float, float]:
    logits = clf(f.float())
    return topk_accuracy(logits, y, (1, 5)) if logits.shape[1] >= 5 else (_accuracy(clf, f.float(), y), float("nan"))


@torch.no_grad()
def knn_accuracy(
    train_f: Tensor, train_y: Tensor, val_f: Tensor, val_y: Tensor, k: int = 5, chunk_size: int = 1024
) -> float:
    """k-NN validation accuracy (%) (the paper's "5-NN" columns): cosine similarity between l2-normalised
    features, majority vote among the k most similar training points. Ties between classes with equally many
    votes go to the tied class whose best-ranked neighbour is nearest (for k = 5 with votes 2-2-1, the class of
    the nearer of the two pairs). Computed over chunks of `chunk_size` validation points."""
    if not 1 <= k <= len(train_f):
        raise ValueError(f"k must be between 1 and the number of training points ({len(train_f)}), got {k}")
    train_f = F.normalize(train_f.float(), dim=1)
    train_y = train_y.to(train_f.device)
    num_classes = int(train_y.max()) + 1
    correct = 0
    for f, y in zip(val_f.split(chunk_size), val_y.split(chunk_size)):
        sims = F.normalize(f.float().to(train_f.device), dim=1) @ train_f.T
        nn_labels = train_y[sims.topk(k, dim=1).indices]  # [n, k], nearest first
        votes = F.one_hot(nn_labels, num_classes).sum(1)  # [n, C]
        neighbour_votes = votes.gather(1, nn_labels)  # votes for each neighbour's class
        first_winner = (neighbour_votes == neighbour_votes.max(1, keepdim=True).values).int().argmax(1)
        pred = nn_labels.gather(1, first_winner[:, None]).squeeze(1)
        correct += (pred == y.to(pred.device)).sum().item()
    return 100.0 * correct / len(val_f)


def stratified_folds(labels: Tensor, folds: int = 5, seed: int = 0) -> list[Tensor]:
    """Disjoint validation-index sets covering all points; every class is split as evenly as possible
    (shuffle with `seed`, group by class, deal positions round-robin into the folds)."""
    if not 2 <= folds <= len(labels):
        raise ValueError(f"folds must be between 2 and the number of points ({len(labels)}), got {folds}")
    labels = labels.cpu()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = perm[torch.argsort(labels[perm], stable=True)]
    fold_of = torch.empty(len(labels), dtype=torch.long)
    fold_of[order] = torch.arange(len(labels)) % folds
    return [torch.nonzero(fold_of == i).flatten() for i in range(folds)]


def cross_validate(
    features: Tensor,
    labels: Tensor,
    probe_fn: Callable[[Tensor, Tensor, Tensor, Tensor], float],
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Mean accuracy of `probe_fn(train_f, train_y, val_f, val_y)` over stratified `folds`-fold CV of one labeled
    split (Table 1 picks encoders by 5-fold CV of output + linear accuracy on the STL-10 train split).
    Works with `partial(linear_probe_cached, cfg=...)` and `partial(knn_accuracy, k=5)`."""
    accs = []
    for val_idx in stratified_folds(labels, folds, seed):
        is_train = torch.ones(len(labels), dtype=torch.bool)
        is_train[val_idx] = False
        fi, yi = is_train.to(features.device), is_train.to(labels.device)
        fv, yv = val_idx.to(features.device), val_idx.to(labels.device)
        accs.append(probe_fn(features[fi], labels[yi], features[fv], labels[yv]))
    return sum(accs) / len(accs)


# ----------------------------------------------------------------------------- converged logistic regression


@torch.enable_grad()
def fit_logistic(
    f: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int = 500, init: nn.Linear | None = None
) -> tuple[nn.Linear, dict[str, float]]:
    """Multinomial logistic regression on standardised features s = (f - mean) / std (training statistics):
    min_{W,b} mean_i CE(W s_i + b, y_i) + l2/2 ||W||^2 (bias not penalised), solved by full-batch L-BFGS with
    a strong-Wolfe line search until the largest gradient entry is below 1e-4. The same problem as
    scikit-learn's LogisticRegression(C = 1 / (l2 n)) on s. Standardising keeps the function class (an affine
    map is absorbed by W and b) and makes one L2 grid fit every tap; the returned classifier has it folded in,
    so it applies to raw features. Convex: the result does not depend on the start, `init` (the standardised
    fit at a neighbouring l2) only saves iterations. Returns (classifier on raw features, convergence info:
    iterations, final objective, largest gradient entry, and the standardised fit for warm starts)."""
    f, y = f.float(), y.to(f.device)
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    s = (f - mean) / std
    clf = nn.Linear(f.shape[1], num_classes).to(f.device)
    with torch.no_grad():
        if init is None:
            clf.weight.zero_(), clf.bias.zero_()
        else:
            clf.load_state_dict(init.state_dict())
    opt = torch.optim.LBFGS(
        clf.parameters(),
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-4,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(clf(s), y) + l2 / 2 * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    loss = objective()
    info = {
        "iterations": opt.state[opt._params[0]]["n_iter"],
        "objective": loss.item(),
        "grad_max": max(p.grad.abs().max().item() for p in clf.parameters()),
        "standardised": clf,
    }
    raw = nn.Linear(f.shape[1], num_classes).to(f.device)
    with torch.no_grad():
        raw.weight.copy_(clf.weight / std)
        raw.bias.copy_(clf.bias - raw.weight @ mean)
    return raw, info


def choose_l2(f: Tensor, y: Tensor, grid: Sequence[float], folds: int = 3, seed: int = 0) -> tuple[float, dict]:
    """The L2 strength of `grid` with the best mean accuracy over stratified `folds`-fold CV of (f, y);
    ties go to the stronger penalty. Fits run from strong to weak penalty, each starting at the last."""
    num_classes = int(y.max()) + 1
    scores = {l2: 0.0 for l2 in grid}
    for val_idx in stratified_folds(y, folds, seed):
        train = torch.ones(len(y), dtype=torch.bool)
        train[val_idx] = False
        train, val_idx = train.to(f.device), val_idx.to(f.device)
        warm = None
        for l2 in sorted(grid, reverse=True):
            clf, info = fit_logistic(f[train], y[train.to(y.device)], num_classes, l2, init=warm)
            warm = info["standardised"]
            scores[l2] += _accuracy(clf, f[val_idx], y[val_idx.to(y.device)]) / folds
    best = max(sorted(grid, reverse=True), key=lambda l2: scores[l2])
    return best, scores


def lbfgs_probe(
    train_f: Tensor, train_y: Tensor, val_f: Tensor, val_y: Tensor, l2: float, init: nn.Linear | None = None
) -> tuple[float, dict]:
    """Validation accuracy (%) of the converged logistic regression with penalty `l2`, and its convergence
    (info["standardised"] is the fit in standardised units, a warm start for fits on similar data)."""
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    clf, info = fit_logistic(train_f, train_y, num_classes, l2, init=init)
    top1, info["top5"] = _top1_top5(clf, val_f, val_y)
    return top1, info
