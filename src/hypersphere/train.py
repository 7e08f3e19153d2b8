"""Train one encoder from a config and evaluate it the way the paper does (PAPER.md section 3).

    from hypersphere.train import TrainConfig, train
    run_dir = train(TrainConfig(dataset="digits", objective="align(alpha=2) + uniform(t=2)", epochs=30))

The whole dataset sits on the training device as uint8 and both positive views are made there by
batched tensor ops (augment.py), so a GPU never waits for CPU workers. The encoder runs channels_last
(1.8x faster on CPU too) and, on CUDA, in bf16 autocast; the losses always compute in fp32.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import runs
from .augment import augment
from .data import DATASETS, ImageData, load_dataset
from .evaluate import ProbeConfig, evaluate
from .losses import Objective
from .models import ARCHS, TAPS, build_encoder


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one run. Defaults are the paper's STL-10 setup; fields marked
    `not hashed` say where or how to run, not what to compute, and do not change the run's name."""
    # what to train
    dataset: str = "stl10"
    objective: str = "align(alpha=2) + uniform(t=2)"  # see losses.Objective; ignored when supervised
    supervised: bool = False        # encoder + linear head with cross-entropy on the labeled split (Fig. 3)
    arch: str = "auto"              # smallalexnet | digitsnet | auto (digitsnet for digits*, else smallalexnet)
    dim: int = 128
    init: str = ""                  # "" (from scratch) or a finished run directory to fine-tune from (Fig. 8)
    # optimisation: SGD, momentum 0.9, weight decay 1e-4, lr x0.1 at 155/170/185 of 200 epochs
    epochs: int = 200               # 0 evaluates the randomly initialised encoder (Fig. 3, first row)
    batch_size: int = 768
    lr: float = 0.0                 # 0: linear scaling, 0.12 per 256 images of batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay_at: tuple[float, ...] = (155 / 200, 170 / 200, 185 / 200)  # fractions of the schedule
    seed: int = 0
    # evaluation (PAPER.md: linear probe and 5-NN on fc7 and output, 5-fold CV, metrics on validation)
    taps: tuple[str, ...] = ("fc7", "output")
    probe_mode: str = "full"        # full: the paper's augmented protocol; cached: on cached features
    probe_epochs: int = 100
    cv_folds: int = 5
    snapshot_epochs: tuple[int, ...] = ()  # also record metrics + a cached output probe at these epochs
    # where and how (not hashed)
    name: str = ""                  # prefix of the run directory (default: the dataset)
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    runs_dir: str = "runs"

    NOT_HASHED = ("name", "data_dir", "download", "device", "runs_dir")

    def __post_init__(self) -> None:
        """Reject bad configs before any data is loaded (one line naming the problem and the fix)."""
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if self.arch not in ARCHS + ("auto",):
            raise ValueError(f"unknown arch {self.arch!r}; choose from auto, {', '.join(ARCHS)}")
        if not self.supervised:
            Objective.parse(self.objective)
        for key, least in (("epochs", 0), ("batch_size", 2), ("dim", 2), ("probe_epochs", 1), ("cv_folds", 0)):
            if getattr(self, key) < least:
                raise ValueError(f"{key} must be >= {least}, got {getattr(self, key)}")
        for key in ("lr", "momentum", "weight_decay"):
            if getattr(self, key) < 0 or not math.isfinite(getattr(self, key)):
                raise ValueError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        if unknown := set(self.taps) - set(TAPS):
            raise ValueError(f"unknown taps {sorted(unknown)}; choose from {', '.join(TAPS)}")
        if self.probe_mode not in ("full", "cached"):
            raise ValueError(f"probe_mode must be 'full' or 'cached', got {self.probe_mode!r}")
        if bad := [e for e in self.snapshot_epochs if not 0 <= e <= self.epochs]:
            raise ValueError(f"snapshot_epochs {bad} fall outside 0..{self.epochs}")

    @property
    def canonical_objective(self) -> str:
        return "supervised(cross_entropy)" if self.supervised else str(Objective.parse(self.objective))

    @property
    def base_lr(self) -> float:
        return self.lr or 0.12 * self.batch_size / 256

    def hashed(self) -> dict[str, Any]:
        """The fields that define the computation, objective in canonical form."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NOT_HASHED}
        d["objective"] = self.canonical_objective
        d["init"] = Path(self.init).name  # the parent run's name-hash, wherever runs/ lives
        d["taps"], d["lr_decay_at"], d["snapshot_epochs"] = (list(d[k]) for k in ("taps", "lr_decay_at", "snapshot_epochs"))
        return d

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / f"{self.name or self.dataset}-{runs.config_hash(self.hashed())}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - fields:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {', '.join(sorted(fields))}")
        tuples = {k: tuple(v) for k, v in d.items() if k in ("taps", "lr_decay_at", "snapshot_epochs")}
        return cls(**{**d, **tuples})


# Supervised mode: a linear head on the unit-norm output can only make logits as large as its weights, so an
# unscaled head learns very slowly (cross-entropy stays near log 10 for many epochs on digits-color at dim 2).
# Scaling its logits, as cosine classifiers do, lets it learn at the contrastive runs' learning rate.
SUPERVISED_LOGIT_SCALE = 10.0


class Diverged(RuntimeError):
    """The loss became NaN or inf; the run is recorded as failed with the epoch and reason."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


def make_encoder(cfg: TrainConfig, data: ImageData) -> nn.Module:
    arch = cfg.arch if cfg.arch != "auto" else ("digitsnet" if cfg.dataset.startswith("digits") else "smallalexnet")
    return build_encoder(arch, data.train_images.shape[1], cfg.dim, data.augment.crop_size)


def _load_parent(cfg: TrainConfig, encoder: nn.Module) -> None:
    """Fine-tuning: start from a finished run's encoder weights (Fig. 8)."""
    parent = Path(cfg.init)
    if not runs.is_complete(parent):
        raise runs.RunError(f"init run {parent} is not a finished run: train it first (sweeps order parents first)")
    state = runs.load_checkpoint(parent / runs.CHECKPOINT)
    try:
        encoder.load_state_dict(state["encoder"])
    except (RuntimeError, KeyError) as e:
        raise runs.RunError(f"checkpoint of {parent} does not fit this encoder (arch/dim/dataset differ): {e}") from None


def load_encoder(run_dir: str | Path, device: str = "cpu", data_dir: str = "data") -> tuple[nn.Module, TrainConfig, ImageData]:
    """A finished run's encoder (eval mode), its config and its dataset, e.g. for the figure notebooks."""
    run_dir = Path(run_dir)
    runs.load_result(run_dir)  # checks the record is complete and consistent
    cfg = TrainConfig.from_dict({**runs.read_json(run_dir / runs.CONFIG), "data_dir": data_dir, "init": ""})
    data = load_dataset(cfg.dataset, data_dir)
    encoder = make_encoder(cfg, data)
    encoder.load_state_dict(runs.load_checkpoint(run_dir / runs.CHECKPOINT, device)["encoder"])
    return encoder.to(device).eval(), cfg, data


def _snapshot(encoder, data: ImageData, cfg: TrainConfig, device, epoch: int) -> dict[str, float]:
    """Trajectory point (Fig. 8): metrics on validation and a freshly trained cached linear probe on outputs."""
    out = evaluate(encoder, data, taps=("output",), probe=ProbeConfig(mode="cached", epochs=cfg.probe_epochs),
                   knn_k=5, cv_folds=0, device=device, seed=cfg.seed, batch_size=cfg.batch_size)
    return {"epoch": epoch, "align": out["align"], "uniform": out["uniform"], "val_output_linear": out["val_output_linear"]}


def _batch_loss(encoder: nn.Module, head: nn.Module | None, objective: Objective | None, data: ImageData,
                images: torch.Tensor, labels: torch.Tensor | None, idx: torch.Tensor, gen: torch.Generator):
    """Loss and its unweighted terms on one batch: the objective on two augmented views of each image
    (one forward pass over both, as the official code), or cross-entropy of a linear head (supervised).
    Only the encoder runs under bf16 autocast (on CUDA); augmentation and losses stay in fp32."""
    views = 1 if head is not None else 2
    x = torch.cat([augment(images[idx], data.augment, data.mean, data.std, gen) for _ in range(views)])
    device = x.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        z = encoder(x.contiguous(memory_format=torch.channels_last))
    z = z.float()
    if head is not None:
        ce = F.cross_entropy(head(z) * SUPERVISED_LOGIT_SCALE, labels[idx])
        return ce, {"cross_entropy": ce}
    return objective(*z.chunk(2))


def train(cfg: TrainConfig, progress: bool = True, data: ImageData | None = None) -> Path:
    """Train and evaluate one encoder; return its run directory. A finished run is not retrained.

    `data` replaces the dataset named by the config (benchmarks use synthetic images of a given size).
    Raises Diverged (after writing failed.json) when a loss becomes NaN/inf.
    """
    run_dir = cfg.run_dir()
    if runs.is_complete(run_dir):
        return run_dir
    device = resolve_device(cfg.device)
    data = (data or load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)).to(device)
    runs.write_json(run_dir / runs.CONFIG, cfg.hashed())
    (run_dir / runs.FAILED).unlink(missing_ok=True)

    torch.manual_seed(cfg.seed)
    encoder = make_encoder(cfg, data)
    if cfg.init:
        _load_parent(cfg, encoder)
    encoder = encoder.to(device, memory_format=torch.channels_last)  # faster convs and pools on CPU and GPU
    head = None
    if cfg.supervised:  # zero init: the scaled logits start uniform (cross-entropy log C)
        head = nn.Linear(cfg.dim, data.num_classes).to(device)
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    objective = None if cfg.supervised else Objective.parse(cfg.objective)
    params = list(encoder.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    milestones = sorted({round(f * cfg.epochs) for f in cfg.lr_decay_at})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)

    images = data.train_images if cfg.supervised else data.encoder_images
    labels = data.train_labels if cfg.supervised else None
    n = len(images)
    batch = min(cfg.batch_size, n)
    steps = n // batch  # drop the last incomplete batch, as the official loader does
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    log, trajectory = [], []
    if 0 in cfg.snapshot_epochs:
        trajectory.append(_snapshot(encoder, data, cfg, device, 0))
    views = 1 if cfg.supervised else 2
    bar = tqdm(total=cfg.epochs * steps, desc=f"train {run_dir.name}", unit="step", disable=not progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        encoder.train()
        t0, sums = time.perf_counter(), {}
        perm = torch.randperm(n, generator=gen, device=device)
        for step in range(steps):
            idx = perm[step * batch:(step + 1) * batch]
            loss, terms = _batch_loss(encoder, head, objective, data, images, labels, idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            bar.update()
        means = {k: float(v) / steps for k, v in sums.items()}  # one device sync per epoch
        if not math.isfinite(means["loss"]):
            bar.close()
            reason = f"mean loss became {means['loss']} in epoch {epoch}"
            runs.write_json(run_dir / runs.FAILED, {"epoch": epoch, "reason": reason})
            raise Diverged(f"{run_dir.name}: {reason}")
        log.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], **{k: round(v, 6) for k, v in means.items()},
                    "seconds": round(time.perf_counter() - t0, 3)})
        log[-1]["images_per_s"] = round(steps * batch * views / log[-1]["seconds"], 1)
        sched.step()
        bar.set_postfix(epoch=epoch, loss=f"{means['loss']:.3f}")
        runs.write_csv(run_dir / runs.LOG, log)
        if epoch in cfg.snapshot_epochs:
            trajectory.append(_snapshot(encoder, data, cfg, device, epoch))
    bar.close()
    train_seconds = sum(row["seconds"] for row in log)  # snapshots excluded

    state = {"encoder": encoder.state_dict(), **({"head": head.state_dict()} if head else {})}
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, state)
    t0 = time.perf_counter()
    tau = objective.param("contrastive") if objective else None
    metrics = evaluate(encoder, data, taps=cfg.taps, probe=ProbeConfig(mode=cfg.probe_mode, epochs=cfg.probe_epochs, seed=cfg.seed),
                       knn_k=5, cv_folds=cfg.cv_folds, device=device, seed=cfg.seed, tau=tau, batch_size=batch)
    result = {
        "config_hash": runs.config_hash(cfg.hashed()),
        "run": run_dir.name,
        **metrics,
        "final_loss": log[-1]["loss"] if log else None,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "images_per_s": round(cfg.epochs * steps * batch * views / train_seconds, 1) if train_seconds else None,
        "trajectory": trajectory,
        "device": str(device),
        "torch": torch.__version__,
    }
    runs.write_json(run_dir / runs.RESULT, result)
    return run_dir
