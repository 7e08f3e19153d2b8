"""Evaluation records: what a frozen encoder achieves downstream, kept beside its run (runs.py).

An evaluation is identified by its own config (EvalConfig: kind, probe and its settings, taps, k of k-NN,
CV folds, snapshots) plus EVAL_VERSION, never by the training config: a new probe re-evaluates every
cached encoder without retraining it.

    python -m hypersphere evaluate runs/digits-color-* --probe adam --cv-folds 0

The evaluation kinds, one per downstream task, belong to their domains (domains.EVALUATIONS):
  classify  (domains/image.py) linear probe and k-NN accuracy on taps, k-fold CV on the labeled train split
            (Table 1 selects encoders by it), and L_align(alpha=2), L_uniform(t=2) (and L_contrastive(tau) for
            runs trained with it) on validation positive pairs (the axes of Fig. 5).
  depth     (domains/depth.py) validation MSE of the paper's depth decoder on each spatial tap (conv5, conv4) of
            the frozen encoder (Fig. 5b, Table 2), its k-fold CV MSE on the train split, two image-blind
            baselines, and L_align, L_uniform on validation positive pairs as for classify.
  sentences (domains/text.py) Fig. 9b / Table 4: logistic regression on frozen f||g features of each labelled
            task, nested CV, and L_align, L_uniform (f's + g's terms) on held-out neighbouring sentences: all of
            them up to text.HELD_OUT_SAMPLE (100k), a seeded sample of that many beyond (BookCorpus's ~3.7M), with
            the sample's size and uniform's standard error (uniform_n, uniform_se); on the run's device.
Every kind's results also hold the label-free statistics of its features (metrics.label_free: RankMe, centred
uniformity, the spectrum's decay), for choosing encoders without labels (notebook 10_beyond), computed where the
kind's features are (the sentences' on the run's device, on the same held-out sample as its L_uniform).
With `snapshots`, the same metrics on the output tap at each snapshot epoch of the run (Fig. 8 trajectories).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import runs
from .domains import EVALUATIONS, domain_of
from .losses import Objective
from .metrics import LABEL_FREE, label_free
from .train import load_encoder, resolve_device

# Bump in any commit that changes what an evaluation config computes: older records are then ignored.
EVAL_VERSION = 1
PROBES = ("lbfgs", "adam", "adam-full", "sgd-full", "sgd-lincls")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate a trained encoder. probe: lbfgs (converged logistic regression, L2 picked from
    `l2_grid` by `l2_folds`-fold CV on the labeled train split; the default), adam (the paper's Adam probe on
    cached features), adam-full (the paper's protocol: Adam on fresh augmented crops every epoch), sgd-full
    (the protocol of its ImageNet-100 MoCo experiments: SGD, lr 10, on fresh crops; probe_epochs 60 for the
    paper's) or sgd-lincls (the official MoCo code's ImageNet protocol, Table 5: SGD, lr 30; probe_epochs 100)."""

    kind: str = "classify"
    probe: str = "lbfgs"
    l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    l2_folds: int = 3
    probe_epochs: int = 100  # adam and adam-full
    decoder_epochs: int = 120  # depth: the depth decoder's epochs (the paper's 120; its lr steps scale along)
    taps: tuple[str, ...] = ()  # () = the kind's: fc7 and output (classify), conv5 and conv4 (depth)
    knn_k: int = 5
    cv_folds: int = 5  # k-fold CV on the labeled train split (Table 1 selection); 0 skips it
    snapshots: bool = False  # also evaluate the run's snapshot epochs (Fig. 8 trajectories)
    max_examples: int = 0  # sentences: > 0 evaluates each task on a seeded class-balanced sample of this size
    seed: int = 0  # CV folds, validation pairs and probe batches

    def __post_init__(self) -> None:
        if self.kind not in EVALUATIONS:
            raise ValueError(f"unknown evaluation kind {self.kind!r}; choose from {', '.join(EVALUATIONS)}")
        object.__setattr__(self, "taps", tuple(self.taps) or EVALUATIONS[self.kind].taps)
        if self.probe not in PROBES:
            raise ValueError(f"unknown probe {self.probe!r}; choose from {', '.join(PROBES)}")
        for key, least in (
            ("probe_epochs", 1),
            ("decoder_epochs", 1),
            ("knn_k", 1),
            ("cv_folds", 0),
            ("l2_folds", 2),
            ("max_examples", 0),
        ):
            if getattr(self, key) < least:
                raise ValueError(f"{key} must be >= {least}, got {getattr(self, key)}")
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (no cross-validation) or >= 2, got 1")
        if not self.l2_grid or min(self.l2_grid) <= 0:
            raise ValueError(f"l2_grid must hold positive values, got {list(self.l2_grid)}")

    # fields added after records were cached: hashed only when not the default, so older records stay valid
    HASHED_UNLESS = {"max_examples": 0, "decoder_epochs": 120}

    def hashed(self) -> dict[str, Any]:
        d = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if not (k in self.HASHED_UNLESS and v == self.HASHED_UNLESS[k])
        }
        return {**d, "l2_grid": list(d["l2_grid"]), "taps": list(d["taps"]), "eval_version": EVAL_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - fields:
            raise ValueError(f"unknown evaluation config keys {sorted(unknown)}; known: {', '.join(sorted(fields))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def check_kind(dataset: str, kind: str) -> None:
    """Fail in one line when evaluation `kind` does not apply to `dataset`'s domain."""
    if kind not in (kinds := domain_of(dataset).evaluations):
        raise ValueError(f"evaluation kind {kind!r} does not apply to {dataset}; use kind: {' or '.join(kinds)}")


def load_record(run_dir: str | Path, cfg: EvalConfig) -> dict[str, Any] | None:
    """The run's complete evaluation record for `cfg`, or None: absent, or written before the label-free
    statistics (evaluate_run then adds them)."""
    record = runs.load_eval(Path(run_dir), cfg.kind, cfg.hashed())
    return record if record is not None and set(LABEL_FREE) <= set(record["results"]) else None


def evaluate_run(
    run_dir: str | Path,
    cfg: EvalConfig = EvalConfig(),
    device: str = "auto",
    data_dir: str = "data",
    progress: bool = True,
) -> dict[str, Any]:
    """The evaluation record of a finished run for `cfg`: read when it exists, else computed and written to
    run_dir/evals/<kind>-<hash>.json. Returns {"config", "run", "results", "trajectory", "seconds"}. Its results
    hold the label-free statistics too (metrics.LABEL_FREE); a record written before they existed gets them
    added (nothing else is recomputed: they depend on the encoder and the seed only)."""
    run_dir, config = Path(run_dir), cfg.hashed()
    if (complete := load_record(run_dir, cfg)) is not None:
        return complete
    record = runs.load_eval(run_dir, cfg.kind, config)
    device = resolve_device(device)
    t0 = time.perf_counter()
    runs.load_summary(run_dir)  # a finished run, or a one-line error saying why not
    check_kind(runs.read_json(run_dir / runs.CONFIG)["dataset"], cfg.kind)  # before loading any data
    encoder, train_cfg, data = load_encoder(run_dir, device, data_dir)
    data = data.to(device)
    kind = EVALUATIONS[cfg.kind]
    if record is None:
        record = {
            "config": config,
            "run": run_dir.name,
            **_evaluate(encoder, train_cfg, data, cfg, kind, run_dir, device, data_dir, progress),
        }
    record["results"].update(label_free(kind.features(encoder, data, cfg, device)))
    record["seconds"] = round(record.get("seconds", 0) + time.perf_counter() - t0, 2)
    record["device"] = str(device)
    runs.write_json(runs.eval_path(run_dir, cfg.kind, config), record)
    return record


def _evaluate(
    encoder, train_cfg, data, cfg: EvalConfig, kind, run_dir: Path, device, data_dir: str, progress: bool
) -> dict[str, Any]:
    """The kind's results of the encoder, and with `snapshots` of each snapshot epoch's encoder (the trajectory,
    its points with their label-free statistics; the record's results get theirs in evaluate_run)."""
    tau = Objective.parse(train_cfg.objective).param("contrastive")
    batch = train_cfg.batch_size  # pair_metrics keeps a single batch of fewer pairs whole
    results = kind.run(encoder, data, cfg, device, tau, batch)
    trajectory = []
    if cfg.snapshots:
        snap_cfg = dataclasses.replace(cfg, **kind.snapshot)
        for epoch in tqdm(
            train_cfg.snapshot_epochs, desc=f"snapshots {run_dir.name}", leave=False, disable=not progress
        ):
            snap, _, _ = load_encoder(run_dir, device, data_dir, snapshot=epoch)
            point = kind.run(snap, data, snap_cfg, device, tau, batch, taps=("output",))
            trajectory.append({"epoch": epoch, **point, **label_free(kind.features(snap, data, snap_cfg, device))})
    return {"results": results, "trajectory": trajectory}
