"""Evaluation records: what a frozen encoder achieves downstream, kept beside its run (runs.py).

An evaluation is identified by its own config (EvalConfig: kind, probe and its settings, taps, k of k-NN,
CV folds, snapshots) plus EVAL_VERSION, never by the training config: a new probe re-evaluates every
cached encoder without retraining it.

    python -m hypersphere evaluate runs/digits-color-* --probe adam --cv-folds 0

Kinds (EVALUATIONS), one per downstream task; a domain lists the kinds that apply to it:
  classify  linear probe and k-NN accuracy on taps, k-fold CV on the labeled train split (Table 1 selects
            encoders by it), and L_align(alpha=2), L_uniform(t=2) (and L_contrastive(tau) for runs trained
            with it) on validation positive pairs (the axes of Fig. 5). With `snapshots`, the same metrics
            and an output probe at each snapshot epoch of the run (Fig. 8 trajectories).
  depth     validation MSE of the paper's depth decoder trained on each spatial tap (conv5, conv4) of the frozen
            encoder (depth.depth_probe; Fig. 5b, Table 2), its k-fold CV MSE on the train split, two image-blind
            baselines, and L_align, L_uniform on validation positive pairs as for classify.
  sentences Fig. 9b / Table 4: logistic regression on frozen f||g features of each labelled task, nested CV
            (cv_folds outer folds, l2_folds inner ones choosing C among 1, 1/2, ..., 1/256), and L_align,
            L_uniform (f's + g's terms) on held-out neighbouring sentences.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import runs, text
from .augment import augment
from .data import ImageData
from .depth import DepthData, DepthProbeConfig, depth_probe
from .losses import Objective, contrastive_loss
from .metrics import alignment, uniformity
from .probes import (MOCO_PROBE, ProbeConfig, choose_l2, cross_validate, extract_features, knn_accuracy, lbfgs_probe,
                     linear_probe_cached, linear_probe_full)

# Bump in any commit that changes what an evaluation config computes: older records are then ignored.
EVAL_VERSION = 1
PROBES = ("lbfgs", "adam", "adam-full", "sgd-full")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate a trained encoder. probe: lbfgs (converged logistic regression, L2 picked from
    `l2_grid` by `l2_folds`-fold CV on the labeled train split; the default), adam (the paper's Adam probe on
    cached features), adam-full (the paper's protocol: Adam on fresh augmented crops every epoch) or sgd-full
    (the protocol of its MoCo experiments: SGD, lr 10, on fresh crops; probe_epochs 60 for the paper's)."""
    kind: str = "classify"
    probe: str = "lbfgs"
    l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    l2_folds: int = 3
    probe_epochs: int = 100         # adam and adam-full
    decoder_epochs: int = 120       # depth: the depth decoder's epochs (the paper's 120; its lr steps scale along)
    taps: tuple[str, ...] = ()      # () = the kind's: fc7 and output (classify), conv5 and conv4 (depth)
    knn_k: int = 5
    cv_folds: int = 5               # k-fold CV on the labeled train split (Table 1 selection); 0 skips it
    snapshots: bool = False         # also evaluate the run's snapshot epochs (Fig. 8 trajectories)
    max_examples: int = 0           # sentences: > 0 evaluates each task on a seeded class-balanced sample of this size
    seed: int = 0                   # CV folds, validation pairs and probe batches

    def __post_init__(self) -> None:
        if self.kind not in EVALUATIONS:
            raise ValueError(f"unknown evaluation kind {self.kind!r}; choose from {', '.join(EVALUATIONS)}")
        object.__setattr__(self, "taps", tuple(self.taps) or DEFAULT_TAPS[self.kind])
        if self.probe not in PROBES:
            raise ValueError(f"unknown probe {self.probe!r}; choose from {', '.join(PROBES)}")
        for key, least in (("probe_epochs", 1), ("decoder_epochs", 1), ("knn_k", 1), ("cv_folds", 0), ("l2_folds", 2),
                           ("max_examples", 0)):
            if getattr(self, key) < least:
                raise ValueError(f"{key} must be >= {least}, got {getattr(self, key)}")
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (no cross-validation) or >= 2, got 1")
        if not self.l2_grid or min(self.l2_grid) <= 0:
            raise ValueError(f"l2_grid must hold positive values, got {list(self.l2_grid)}")

    # fields added after records were cached: hashed only when not the default, so older records stay valid
    HASHED_UNLESS = {"max_examples": 0, "decoder_epochs": 120}

    def hashed(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if not (k in self.HASHED_UNLESS and v == self.HASHED_UNLESS[k])}
        return {**d, "l2_grid": list(d["l2_grid"]), "taps": list(d["taps"]), "eval_version": EVAL_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - fields:
            raise ValueError(f"unknown evaluation config keys {sorted(unknown)}; known: {', '.join(sorted(fields))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@torch.no_grad()
def pair_metrics(encoder: nn.Module, data: ImageData, generator: torch.Generator, device=None,
                 tau: float | None = None, batch_size: int = 768, chunk_size: int = 512) -> dict[str, float]:
    """L_align(alpha=2) and L_uniform(t=2) of the encoder's outputs on the VALIDATION split (Fig. 5 axes).

    The paper does not say how validation positive pairs are formed; here each validation image gives one pair
    from two independent draws of the training augmentation `data.augment`. Both metrics are exact over the whole
    split (metrics.alignment over all pairs; metrics.uniformity over all distinct pairs, averaged over the two
    views as the paper's estimator does). With `tau`, also L_contrastive(tau): losses.contrastive_loss over
    shuffled batches of `batch_size` pairs (the run's batch size; a last incomplete batch is dropped unless it is
    the only one), averaged. Encoder in eval mode (mode restored afterwards). `generator` must live on `device`
    (the encoder's by default), as augment() requires.
    """
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    fx, fy = [], []
    for batch in data.val_images.split(chunk_size):
        batch = batch.to(device)
        fx.append(encoder(augment(batch, data.augment, data.mean, data.std, generator)).float())
        fy.append(encoder(augment(batch, data.augment, data.mean, data.std, generator)).float())
    encoder.train(was_training)
    fx, fy = torch.cat(fx), torch.cat(fy)
    out = {"align": alignment(fx, fy, alpha=2.0), "uniform": (uniformity(fx, t=2.0) + uniformity(fy, t=2.0)) / 2}
    if tau is not None:
        batches = torch.randperm(len(fx), generator=generator, device=generator.device).split(batch_size)
        if len(batches) > 1 and len(batches[-1]) < batch_size:
            batches = batches[:-1]
        losses = [contrastive_loss(fx[b.to(device)], fy[b.to(device)], tau).item() for b in batches]
        out["contrastive"] = sum(losses) / len(losses)
    return out


def _linear(encoder: nn.Module, tap: str, data: ImageData, train_f, val_f, cfg: EvalConfig, device) -> dict:
    """Validation accuracy of the configured probe on one tap (and, for lbfgs, the chosen L2 and convergence)."""
    if cfg.probe == "lbfgs":
        l2, _ = choose_l2(train_f, data.train_labels, cfg.l2_grid, cfg.l2_folds, cfg.seed)
        acc, info = lbfgs_probe(train_f, data.train_labels, val_f, data.val_labels, l2)
        return {"linear": acc, "linear_top5": info["top5"], "linear_l2": l2, "linear_iterations": info["iterations"],
                "linear_grad": info["grad_max"], "fit": info["standardised"]}
    adam = ProbeConfig(epochs=cfg.probe_epochs, seed=cfg.seed)
    if cfg.probe == "adam":
        return {"linear": linear_probe_cached(train_f, data.train_labels, val_f, data.val_labels, adam)}
    probe = adam if cfg.probe == "adam-full" else dataclasses.replace(MOCO_PROBE, epochs=cfg.probe_epochs, seed=cfg.seed)
    top1, top5 = linear_probe_full(encoder, tap, data, probe, device)
    return {"linear": top1, "linear_top5": top5}


def classify(encoder: nn.Module, data: ImageData, cfg: EvalConfig, device, tau: float | None = None,
             batch_size: int = 768, taps: Sequence[str] | None = None) -> dict[str, float]:
    """All classification evaluations of one encoder as a flat dict:
      val_{tap}_linear, val_{tap}_{k}nn   validation accuracy (%) of the probe and of k-NN,
      val_{tap}_linear_l2 (, _iterations, _grad)   the lbfgs probe's chosen L2 and its convergence,
      cv_{tap}_linear, cv_{tap}_{k}nn     stratified `cv_folds`-fold CV on the labeled train split (the
                                          linear one with the probe's optimiser on cached features),
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
            else:
                probe = partial(linear_probe_cached, cfg=ProbeConfig(epochs=cfg.probe_epochs, seed=cfg.seed))
            out[f"cv_{tap}_linear"] = cross_validate(train_f[tap], data.train_labels, probe, cfg.cv_folds, cfg.seed)
            out[f"cv_{tap}_{cfg.knn_k}nn"] = cross_validate(train_f[tap], data.train_labels, knn, cfg.cv_folds, cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out.update(pair_metrics(encoder, data, generator, device, tau, batch_size))
    return out


def depth(encoder: nn.Module, data: DepthData, cfg: EvalConfig, device, tau: float | None = None,
          batch_size: int = 768, taps: Sequence[str] | None = None) -> dict[str, float]:
    """Depth evaluations of one encoder as a flat dict (MSE of standardised depth, DepthData's units):
      val_{tap}_mse, val_{tap}_rmse_m     the decoder's validation MSE (and RMSE in metres) per spatial tap,
      cv_{tap}_mse                        for the first tap (conv5 by default, the one Table 2 selects by) its
                                          `cv_folds`-fold CV MSE on the train split,
      val_mean_mse, val_pixel_mean_mse    image-blind baselines: the train mean depth, the train mean depth map,
      align, uniform (, contrastive)      `pair_metrics` on the validation split."""
    out: dict[str, float] = {}
    probe = DepthProbeConfig(epochs=cfg.decoder_epochs, seed=cfg.seed)
    taps = cfg.taps if taps is None else taps
    for tap in taps:
        r = depth_probe(encoder, tap, data, probe, device, progress=False, cv_folds=cfg.cv_folds if tap == taps[0] else 0)
        out.update({f"val_{tap}_mse": r["mse"], f"val_{tap}_rmse_m": r["rmse_m"], "val_mean_mse": r["mean_mse"],
                    "val_pixel_mean_mse": r["pixel_mean_mse"], **({f"cv_{tap}_mse": r["cv_mse"]} if "cv_mse" in r else {})})
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out.update(pair_metrics(encoder, data, generator, device, tau, batch_size))
    return out


def sentences(model: nn.Module, data: text.TextData, cfg: EvalConfig, device, tau: float | None = None,
              batch_size: int = 400, taps: Sequence[str] | None = None) -> dict[str, float]:
    """The sentence evaluations of a frozen Quick-Thought model (Fig. 9b, Table 4; Logeswaran & Lee 2018's
    protocol as SentEval runs it), flat:
      val_{task}    test accuracy (%) of L2-regularised logistic regression on the concatenated f and g outputs,
                    by stratified `cv_folds`-fold CV (the paper: 10), C chosen in each fold by `l2_folds`-fold CV
                    on its training part among 1, 1/2, ..., 1/256 (the paper: 10 folds);
      cv_{task}     the chosen C's inner-CV accuracy, averaged over the folds (SentEval's devacc; Table 4 selects
                    by it);
      n_{task}      the number of sentences evaluated (each is tested once: val's binomial standard error);
      align, uniform, uniform_f, uniform_g (, contrastive)   text.pair_metrics on the held-out documents'
                    neighbouring sentences; uniform = L_uniform(f) + L_uniform(g), the paper's form in this domain.
    Each task uses a seeded class-balanced sample of `max_examples` sentences when that is > 0."""
    if cfg.cv_folds < 2:
        raise ValueError("the sentences evaluation is cross-validated: set cv_folds >= 2 (the paper: 10)")
    out: dict[str, float] = {}
    for task, labelled in data.tasks.items():
        keep = np.arange(len(labelled.labels))
        if 0 < cfg.max_examples < len(keep):
            rng = np.random.default_rng(cfg.seed)
            keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labelled.labels == c))[:cfg.max_examples // 2]
                                           for c in (0, 1)]))
        feats = text.features(model, [labelled.sentences[k] for k in keep], data.vocab)
        r = text.nested_cv_accuracy(feats, labelled.labels[keep], folds=cfg.cv_folds, inner_folds=cfg.l2_folds,
                                    seed=cfg.seed)
        out.update({f"val_{task}": r["acc"], f"cv_{task}": r["cv"], f"n_{task}": len(keep)})
    out.update(text.pair_metrics(model, data.held, data.vocab, tau, batch_size))
    return out


EVALUATIONS = {"classify": classify, "depth": depth, "sentences": sentences}
DEFAULT_TAPS = {"classify": ("fc7", "output"), "depth": ("conv5", "conv4"), "sentences": ()}
# what a snapshot's evaluation leaves out: the CV that only selects Tables 1-2's encoders (a sentence accuracy is CV)
SNAPSHOT_SKIPS = {"classify": {"cv_folds": 0}, "depth": {"cv_folds": 0}, "sentences": {}}


def check_kind(dataset: str, kind: str) -> None:
    """Fail in one line when evaluation `kind` does not apply to `dataset`'s domain."""
    from .domains import domain_of

    if kind not in (kinds := domain_of(dataset).evaluations):
        raise ValueError(f"evaluation kind {kind!r} does not apply to {dataset}; use kind: {' or '.join(kinds)}")


def evaluate_run(run_dir: str | Path, cfg: EvalConfig = EvalConfig(), device: str = "auto",
                 data_dir: str = "data", progress: bool = True) -> dict[str, Any]:
    """The evaluation record of a finished run for `cfg`: read when it exists, else computed and written to
    run_dir/evals/<kind>-<hash>.json. Returns {"config", "run", "results", "trajectory", "seconds"}."""
    from .train import load_encoder, resolve_device  # train imports the domains, which name the evaluations

    run_dir, config = Path(run_dir), cfg.hashed()
    if (record := runs.load_eval(run_dir, cfg.kind, config)) is not None:
        return record
    device = resolve_device(device)
    t0 = time.perf_counter()
    runs.load_summary(run_dir)  # a finished run, or a one-line error saying why not
    check_kind(runs.read_json(run_dir / runs.CONFIG)["dataset"], cfg.kind)  # before loading any data
    encoder, train_cfg, data = load_encoder(run_dir, device, data_dir)
    data = data.to(device)
    tau = Objective.parse(train_cfg.objective).param("contrastive")
    batch = train_cfg.batch_size  # pair_metrics keeps a single batch of fewer pairs whole
    evaluation = partial(EVALUATIONS[cfg.kind], data=data, cfg=cfg, device=device, tau=tau, batch_size=batch)
    results = evaluation(encoder)
    trajectory = []
    if cfg.snapshots:
        snap_cfg = dataclasses.replace(cfg, **SNAPSHOT_SKIPS[cfg.kind])
        for epoch in tqdm(train_cfg.snapshot_epochs, desc=f"snapshots {run_dir.name}", leave=False,
                          disable=not progress):
            snap, _, _ = load_encoder(run_dir, device, data_dir, snapshot=epoch)
            point = EVALUATIONS[cfg.kind](snap, data, snap_cfg, device, tau, batch, taps=("output",))
            trajectory.append({"epoch": epoch, **point})
    record = {"config": config, "run": run_dir.name, "results": results, "trajectory": trajectory,
              "seconds": round(time.perf_counter() - t0, 2), "device": str(device)}
    runs.write_json(runs.eval_path(run_dir, cfg.kind, config), record)
    return record
