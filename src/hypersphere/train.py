"""Train one encoder from a config into a run record (runs.py); evaluation is separate (evaluate.py).

    from hypersphere.train import TrainConfig, train
    run_dir = train(TrainConfig(dataset="digits", objective="align(alpha=2) + uniform(t=2)", epochs=30))

The file reads in the order a run goes, one trainer for every domain (domains/): the config; a run (`train`,
`_train`, `_fresh_state`); an epoch (`_epoch`: the steps, mid-epoch saves, the divergence check; `_end_epoch`: log
row, schedule, snapshot, saved state; `_write_record`: checkpoint, then train.json); a step (`train_step`: the
objective on one global batch, then `_step`; its batch source `ViewBatches`, random views of each input and the loss
of the objective's method (methods.py: what it trains beside the encoder), or `DomainBatches`, a domain's own order
and loss); the state (`TrainState`: weights, optimiser, schedule, random streams and the epoch's progress, saved and
restored exactly); loading data and encoders. Collectives
(distributed.py) are called in the loop itself, by every process, never inside `if main`.

The whole dataset sits on the training device as uint8 and the positive views are made there by
batched tensor ops (augment.py), so a GPU never waits for CPU workers; a dataset too large for memory (ImageNet)
streams its decoded images from DataLoader workers into the same batched augmentation (domains/image.py,
ImageFiles). The encoder runs channels_last (1.8x faster on CPU too), in fp32 as the official code, or with
`bf16` in bf16 autocast on CUDA; the losses always compute in fp32.
The paper's common image setup (docs/paper.md, "Image setup"): SGD, momentum 0.9, weight decay 1e-4,
lr 0.12 per 256 images of batch, 200 epochs, lr x0.1 at epochs 155, 170 and 185. Sentence encoders (Fig. 9b)
train through the same loop with Adam, gradient clipping and the text domain's batch order and loss (domains/text.py).

Tests kill a run at a chosen point, without racing it, through test-only environment variables:
HYPERSPHERE_KILL_AT="E:S" makes the training process SIGKILL itself right after the resumable state with epoch E
and step S is saved (S > 0: a mid-epoch save, after every step with checkpoint_minutes 0; S = 0: the save at the end
of epoch E - 1). HYPERSPHERE_KILL_RANK=r kills only process r of a torchrun run (default: every process, as a node
failure does); HYPERSPHERE_KILL_RUN=<run directory name> only that run of a sweep (default: every run). A resumed
run continues after its saved point and never reaches it again, so the hook fires at most once per run: torchrun's
elastic restart, or the same command run again, completes the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import distributed, models, runs
from .augment import recipe
from .domains import domain_of
from .losses import TERMS, Objective, with_form
from .methods import Method


# The training-code version. Bump it in any commit that changes what a config trains to (augmentation,
# initialisation, optimiser, loss numerics, data preparation): cached runs of an older version are then
# reported and retrained instead of silently reused.
TRAIN_VERSION = 4  # 4: views drawn for many batches at once (VIEW_VALUES)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one trained encoder. Defaults are the paper's STL-10 setup; the fields in
    NOT_HASHED say where or how to run, not what to compute, and do not change the run's name."""

    dataset: str = "stl10"
    objective: str = "align(alpha=2) + uniform(t=2)"  # see losses.Objective; "xent()" trains supervised
    augment: Any = ""  # "" (the dataset's recipe), a name of augment.RECIPES, or {recipe: name, field: value}
    arch: str = "auto"  # smallalexnet | digitsnet | auto (the dataset's)
    dim: int = 128
    init: str = ""  # "" (from scratch) or a finished run directory to fine-tune from (Fig. 8)
    epochs: int = 200  # 0 keeps the randomly initialised encoder (Fig. 3, first row)
    batch_size: int = 768
    lr: float = 0.0  # 0: linear scaling, 0.12 per 256 images of batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # sgd (momentum above) | adam (Quick-Thought, Fig. 9b; needs an explicit lr)
    clip_grad: float = 0.0  # > 0: clip the gradients' global norm to this (Quick-Thought: 0.5)
    lr_decay_at: tuple[float, ...] = (155 / 200, 170 / 200, 185 / 200)  # fractions of the schedule
    cosine: bool = False  # a cosine schedule over the epochs instead of the steps of lr_decay_at (MoCo v2)
    seed: int = 0
    snapshot_epochs: tuple[int, ...] = ()  # also keep the weights at these epochs (Fig. 8 trajectories)
    # MoCo (Fig. 9a, Tables 3 and 5): a queue of past keys from an EMA key encoder; 0 keeps the in-batch losses
    queue: int = 0
    ema: float = 0.999
    intra_batch: bool = True  # L_uniform also over distinct pairs of the batch's queries (paper appendix)
    # SimSiam's and BYOL's predictor reads the unit-norm output ("output"), or the projector's output before the
    # l2-normalisation ("projection"), as those papers' code does
    predictor_on: str = "output"
    # the official STL-10 code's details (docs/paper.md, "Differences from the official code")
    drop_last: bool = True  # False: keep each epoch's last partial batch, as the official loader does
    # > 1: BatchNorm normalises that many equal parts of the views' batch apart, as nn.DataParallel on that many GPUs
    # does (the official 83.19%: 4; models.group_batchnorm)
    bn_groups: int = 1
    bf16: bool = False  # CUDA only: encoders in bf16 autocast (losses stay fp32); the official code is fp32
    # where and how (not hashed)
    name: str = ""  # prefix of the run directory (default: the dataset)
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    runs_dir: str = "runs"
    checkpoint_minutes: float = 10.0  # also save the resumable state mid-epoch after this long (0: every step)

    NOT_HASHED = ("name", "data_dir", "download", "device", "runs_dir", "checkpoint_minutes")
    # fields added after runs were cached: hashed only when they differ from these defaults, so older runs keep their
    # names
    HASHED_UNLESS = {
        "optimizer": "sgd",
        "clip_grad": 0.0,
        "drop_last": True,
        "bn_groups": 1,
        "bf16": False,
        "predictor_on": "output",
    }

    def __post_init__(self) -> None:
        """Reject bad configs before any data is loaded (one line naming the problem and the fix)."""
        domain = domain_of(self.dataset)
        if self.arch not in domain.archs:
            raise ValueError(f"unknown arch {self.arch!r} for {self.dataset}; choose from {', '.join(domain.archs)}")
        Objective.parse(self.objective)
        if self.augment:
            recipe(self.augment)
        for key, least in (("epochs", 0), ("batch_size", 2), ("dim", 2)):
            if getattr(self, key) < least:
                raise ValueError(f"{key} must be >= {least}, got {getattr(self, key)}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if self.optimizer == "adam" and self.lr <= 0:
            raise ValueError("optimizer adam needs an explicit lr (the linear scaling rule is SGD's): e.g. lr 5e-4")
        for key in ("lr", "momentum", "weight_decay", "clip_grad"):
            if getattr(self, key) < 0 or not math.isfinite(getattr(self, key)):
                raise ValueError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        if bad := [e for e in self.snapshot_epochs if not 0 <= e <= self.epochs]:
            raise ValueError(f"snapshot_epochs {bad} fall outside 0..{self.epochs}")
        if self.queue < 0 or not 0 <= self.ema <= 1:
            raise ValueError(f"queue must be >= 0 and ema in [0, 1], got {self.queue} and {self.ema}")
        if 0 < self.queue < self.batch_size:
            raise ValueError(
                f"queue {self.queue} cannot hold a batch of {self.batch_size} keys; use queue >= batch_size"
            )
        objective = Objective.parse(self.objective)
        if self.queue and (bad := objective.lacking("queue")):
            raise ValueError(
                f"a MoCo run (queue > 0) takes {with_form('queue')} terms only; {bad[0]} has no queue form"
            )
        if self.predictor_on not in ("output", "projection"):
            raise ValueError(f"predictor_on must be output or projection, got {self.predictor_on!r}")
        if self.predictor_on != "output" and "predictor" not in [TERMS[t.name].key for t in objective.terms]:
            raise ValueError("predictor_on applies to objectives with a predictor (simsiam, byol); leave it at output")
        if self.bn_groups < 1 or self.batch_size % self.bn_groups:
            raise ValueError(f"bn_groups must be >= 1 and divide batch_size {self.batch_size}, got {self.bn_groups}")
        if self.bn_groups > 1 and (self.queue or domain.batch_loss):
            raise ValueError(
                "bn_groups splits the views' batch of in-batch image runs; MoCo runs (queue > 0) use "
                "Shuffle-BN and sentence runs have no BatchNorm: leave bn_groups at 1"
            )
        if domain.check is not None:
            domain.check(self)

    @property
    def canonical_objective(self) -> str:
        return str(Objective.parse(self.objective))

    @property
    def linear_lr(self) -> float:
        """The linear-scaling rule's lr: 0.12 per 256 images of batch (the paper's)."""
        return 0.12 * self.batch_size / 256

    @property
    def base_lr(self) -> float:
        return self.lr or self.linear_lr

    def hashed(self) -> dict[str, Any]:
        """The fields that define the trained weights, in one form each: the objective canonical, an SGD lr equal
        to the linear-scaling rule's as the rule itself (so the paper's rows that spell out lr 0.36 at batch 768
        and a sweep that leaves it to the rule share one run)."""
        d = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in self.NOT_HASHED and not (k in self.HASHED_UNLESS and v == self.HASHED_UNLESS[k])
        }
        d["objective"] = self.canonical_objective
        if self.optimizer == "sgd" and math.isclose(self.lr, self.linear_lr, rel_tol=1e-9):
            d["lr"] = 0.0  # one encoder, one name: the linear-scaling lr written out hashes as the rule (0)
        d["init"] = Path(self.init).name  # the parent run's name-hash, wherever runs/ lives
        d["lr_decay_at"], d["snapshot_epochs"] = list(d["lr_decay_at"]), list(d["snapshot_epochs"])
        return d

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / f"{self.name or self.dataset}-{runs.config_hash(self.hashed())}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - fields:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; known: {', '.join(sorted(fields))}")
        tuples = {k: tuple(v) for k, v in d.items() if k in ("lr_decay_at", "snapshot_epochs")}
        return cls(**{**d, **tuples})


AUGMENT_SEED = 1_000_003  # process r of a run with seed s draws augmentations from seed AUGMENT_SEED * s + r + 1


# Views are drawn for as many consecutive batches at once as fit in this many values per view (64 MB of float32):
# the whole epoch for small images (digits, the depth stand-in), where one call per batch cost 8x the call per
# epoch; one batch at a time for 64 px and larger crops at the paper's batch sizes, as before.
VIEW_VALUES = 2**24


# an epoch's mean feature spread (methods._spread) below this: the run collapsed (objectives without negatives)
COLLAPSED = 0.05


class Diverged(RuntimeError):
    """The loss became NaN or inf; the run is recorded as failed with the epoch and reason."""


# ---------------------------------------------------------------------------------------- a run, start to end


def train(cfg: TrainConfig, progress: bool = True, data=None) -> Path:
    """Train one encoder; return its run directory. A finished run of this training-code version is not
    retrained; one of an older version is, with a message saying why. A killed run resumes from its last
    saved state (end of each epoch, and every `checkpoint_minutes` within one) and ends with the same
    weights as an uninterrupted one. Raises runs.RunLocked when another live process trains the run.

    `data` replaces the dataset named by the config (benchmarks use synthetic images of a given size).
    Raises Diverged (after writing failed.json) when a loss becomes NaN/inf.
    """
    run_dir = cfg.run_dir()
    if runs.train_status(run_dir, TRAIN_VERSION) == "done":
        return run_dir
    first = int(os.environ.get("RANK", "0")) == 0  # under torchrun, process 0 holds the lock for all
    with runs.lock(run_dir) if first else contextlib.nullcontext():
        status = runs.train_status(run_dir, TRAIN_VERSION)  # another process may have finished it meanwhile
        if status != "done":
            _train(cfg, run_dir, status, progress, data)
    distributed.barrier()  # under torchrun, every process returns once process 0 has written the record
    return run_dir


def _train(cfg: TrainConfig, run_dir: Path, status: str, progress: bool, data) -> None:
    """Train `run_dir` from its saved state (status "todo" with a state file) or from scratch."""
    if status == "stale":
        old = runs.read_json(run_dir / runs.TRAIN).get("train_version")
        print(
            f"retraining {run_dir.name}: trained by training-code version {old}, this is version {TRAIN_VERSION}",
            file=sys.stderr,
        )
    saved = runs.load_state(run_dir, cfg.hashed(), TRAIN_VERSION) if status == "todo" else None
    device, rank, world = distributed.init_from_env(resolve_device(cfg.device))  # torchrun's, else 0 and 1
    main = rank == 0  # only the first process writes the record
    if saved is None and main:
        runs.start_training(run_dir, cfg.hashed())
    distributed.barrier()
    data = (data or load_data(cfg)).to(device)
    objective = Objective.parse(cfg.objective)
    state = _fresh_state(cfg, data, objective, device, rank, world, fresh=saved is None)
    batches = batch_source(cfg, data, objective, state)
    if saved is not None:
        state.restore(saved, rank, device)
    else:
        _snapshot(cfg, run_dir, state, 0, main)
    bar = tqdm(
        total=cfg.epochs * batches.steps,
        initial=(state.epoch - 1) * batches.steps + state.step,
        desc=f"train {run_dir.name}",
        unit="step",
        disable=not (progress and main),
        leave=False,
    )
    while state.epoch <= cfg.epochs:
        t0, first_step = time.perf_counter(), state.step if state.perm is not None else 0
        means = _epoch(cfg, run_dir, state, batches, bar, main)
        _end_epoch(cfg, run_dir, state, batches, means, time.perf_counter() - t0, first_step, main)
        bar.set_postfix(epoch=state.epoch - 1, loss=f"{means['loss']:.3f}")
    bar.close()
    if main:
        _write_record(cfg, run_dir, state, batches, device)


def _fresh_state(
    cfg: TrainConfig, data, objective: Objective, device, rank: int, world: int, fresh: bool
) -> TrainState:
    """A run's state at its first step: the seeded encoder (the parent's weights when fine-tuning a `fresh` run),
    the objective's method (methods.Method: its head, predictor, EMA target or MoCo), the optimiser and schedule, the
    random streams."""
    torch.manual_seed(cfg.seed)
    encoder = models.group_batchnorm(make_encoder(cfg, data), cfg.bn_groups)
    if cfg.init and fresh:
        if runs.train_status(Path(cfg.init), TRAIN_VERSION) != "done":
            raise runs.RunError(
                f"init run {cfg.init} is not a finished run: train it first (sweeps order parents first)"
            )
        _load_weights(encoder, Path(cfg.init) / runs.CHECKPOINT)
    encoder = encoder.to(device, memory_format=torch.channels_last)  # faster convs and pools on CPU and GPU
    model = nn.parallel.DistributedDataParallel(encoder) if world > 1 else encoder
    method = Method(cfg, objective, data, model)
    params = [*encoder.parameters(), *method.parameters()]
    opt = (
        torch.optim.Adam(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam"
        else torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    )
    milestones = sorted({round(f * cfg.epochs) for f in cfg.lr_decay_at})
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
        if cfg.cosine
        else torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    )
    return TrainState(
        encoder=encoder,
        model=model,
        method=method,
        opt=opt,
        sched=sched,
        order=torch.Generator(device=device).manual_seed(cfg.seed),
        gen=torch.Generator(device=device).manual_seed(AUGMENT_SEED * cfg.seed + rank + 1),
    )


# ---------------------------------------------------------------------------------------- an epoch


def _epoch(cfg: TrainConfig, run_dir: Path, state: TrainState, batches, bar, main: bool) -> dict[str, float]:
    """The steps of `state.epoch` from `state.step` on, saving the state every `checkpoint_minutes` within it.
    Returns the epoch's mean loss terms; raises Diverged (after recording why) when the epoch diverged."""
    state.encoder.train(), state.method.train()
    if state.perm is None:  # a new epoch (a resumed one continues with its saved order and sums)
        state.perm, state.sums, state.step = batches.order(state.order), {}, 0
    last_save = time.perf_counter()
    for step in range(state.step, batches.steps):
        train_step(cfg, state, batches, step)
        bar.update()
        due = time.perf_counter() - last_save >= 60 * cfg.checkpoint_minutes
        if step + 1 < batches.steps and distributed.agree(due):
            state.step = step + 1
            gens = distributed.all_gather(batches.gen_state(state.step))  # a collective: never under `if main`
            state.save(run_dir / runs.STATE, cfg, gens, main)
            last_save = time.perf_counter()
    first_bad = int(state.sums.pop("first_bad"))
    means = {k: float(v) / batches.steps for k, v in state.sums.items()}  # one device sync per epoch
    if reason := _divergence(means, state.epoch, first_bad, batches.steps):
        bar.close()
        if main:  # the run's first step with a non-finite loss (features that left the sphere: the epoch's last step)
            step_of_run = (state.epoch - 1) * batches.steps + min(first_bad, batches.steps - 1) + 1
            runs.write_json(run_dir / runs.FAILED, {"epoch": state.epoch, "step": step_of_run, "reason": reason})
            (run_dir / runs.STATE).unlink(missing_ok=True)
        raise Diverged(f"{run_dir.name}: {reason}")
    return means


def _end_epoch(
    cfg: TrainConfig,
    run_dir: Path,
    state: TrainState,
    batches,
    means: dict[str, float],
    seconds: float,
    first_step: int,
    main: bool,
) -> None:
    """The epoch's log row, the schedule's step, a snapshot when asked for, and the saved state of the next epoch."""
    state.log.append(
        {
            "epoch": state.epoch,
            "lr": state.opt.param_groups[0]["lr"],
            **{k: round(v, 6) for k, v in means.items()},
            "seconds": round(seconds, 3),
            "images_per_s": round(_images(batches, first_step) / seconds, 1),
        }
    )
    state.sched.step()
    if main:
        runs.write_csv(run_dir / runs.LOG, state.log)
    _snapshot(cfg, run_dir, state, state.epoch, main)
    state.epoch, state.step, state.perm, state.sums = state.epoch + 1, 0, None, {}
    gens = distributed.all_gather(batches.gen_state(0))  # a collective: every process calls it
    state.save(run_dir / runs.STATE, cfg, gens, main)


def _accumulate(sums: dict, terms: dict[str, torch.Tensor], step: int, steps: int) -> None:
    """Add a step's loss terms to the epoch's sums, and keep `first_bad`: the epoch's first step with a
    non-finite loss (`steps` while none), without a device sync."""
    for k, v in terms.items():
        sums[k] = sums.get(k, 0.0) + v.detach()
    bad = torch.where(torch.isfinite(terms["loss"].detach()), steps, step)
    sums["first_bad"] = torch.minimum(sums.get("first_bad", bad), bad)


def _divergence(means: dict[str, float], epoch: int, first_bad: int, steps: int) -> str | None:
    """Why the epoch diverged, or None: a non-finite mean loss, features that left the sphere (dead or non-finite
    encoder outputs, which a finite loss can hide), or, for objectives without negatives, features that
    collapsed to a point."""
    if not math.isfinite(means["loss"]):
        return f"mean loss became {means['loss']} in epoch {epoch}, first at its step {first_bad + 1} of {steps}"
    if not means["norm_error"] < 0.01:
        return f"the features left the sphere in epoch {epoch} (dead or non-finite encoder outputs)"
    if "spread" in means and not means["spread"] >= COLLAPSED:
        return (
            f"the features collapsed in epoch {epoch}: their spread (sqrt(dim) x the mean std of a dimension over "
            f"the batch; about 1 when spread over the sphere) fell to {means['spread']:.3g}"
        )
    return None


def _images(batches, first_step: int = 0) -> int:
    """The views an epoch's steps from `first_step` on encode (a kept last batch may be partial)."""
    return (min(batches.n, batches.steps * batches.batch) - first_step * batches.batch) * batches.objective.views


def _snapshot(cfg: TrainConfig, run_dir: Path, state: TrainState, epoch: int, main: bool) -> None:
    """Keep the encoder's weights at `epoch` when it is one of the config's snapshot epochs (Fig. 8)."""
    if epoch in cfg.snapshot_epochs and main:
        runs.save_checkpoint(runs.snapshot_path(run_dir, epoch), {"encoder": state.encoder.state_dict()})


def _write_record(cfg: TrainConfig, run_dir: Path, state: TrainState, batches, device: torch.device) -> None:
    """The final checkpoint, then train.json (written last: the run is finished once it exists)."""
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, {k: m.state_dict() for k, m in state.modules().items()})
    steps = cfg.epochs * batches.steps
    train_seconds = sum(row["seconds"] for row in state.log)
    runs.write_json(
        run_dir / runs.TRAIN,
        {
            "config_hash": runs.config_hash(cfg.hashed()),
            "train_version": TRAIN_VERSION,
            "run": run_dir.name,
            "steps": steps,
            "resumed": state.resumed,
            "final_loss": state.log[-1]["loss"] if state.log else None,
            "train_seconds": round(train_seconds, 2),
            "images_per_s": round(cfg.epochs * _images(batches) / train_seconds, 1) if train_seconds else None,
            "device": str(device),
            "torch": torch.__version__,
            "pid": os.getpid(),
            "host": os.uname().nodename,
        },
    )
    (run_dir / runs.STATE).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- a step


def batch_source(cfg: TrainConfig, data, objective: Objective, state: TrainState):
    """The domain's batches: its own order and loss (DomainBatches: sentences), else random views (ViewBatches)."""
    return (DomainBatches if domain_of(cfg.dataset).batch_loss else ViewBatches)(cfg, data, objective, state)


def train_step(cfg: TrainConfig, state: TrainState, batches, step: int) -> torch.Tensor:
    """Step `step` of the epoch in `state.perm`: its loss, the optimiser's step, the epoch's sums. Returns the loss."""
    loss, terms = batches.loss(state, step, state.perm[step * batches.batch : (step + 1) * batches.batch])
    _step(state, loss, cfg.clip_grad)
    _accumulate(state.sums, {"loss": loss, **terms}, step, batches.steps)
    return loss


def _step(state: TrainState, loss: torch.Tensor, clip_grad: float) -> None:
    """One optimiser step on `loss` (gradients clipped to a global norm of `clip_grad` when > 0)."""
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_([p for group in state.opt.param_groups for p in group["params"]], clip_grad)
    state.opt.step()


class ViewBatches:
    """The batches of the image and depth domains: `objective.views` random views of each input (domain.views),
    drawn for a chunk of consecutive batches at once (VIEW_VALUES) from this process's augmentation stream."""

    def __init__(self, cfg: TrainConfig, data, objective: Objective, state: TrainState):
        supervised = objective.needs_labels  # xent() trains on the labelled images
        self.images = data.train_images if supervised else data.encoder_images
        self.labels = data.train_labels if supervised else None
        self.n, self.batch = len(self.images), min(cfg.batch_size, len(self.images))
        self.steps = self.n // self.batch if cfg.drop_last else -(-self.n // self.batch)
        last, world = (0 if cfg.drop_last else self.n % self.batch), distributed.rank_world()[1]
        if last % world:
            raise ValueError(
                f"the last partial batch of {last} does not divide by {world} processes; "
                "set drop_last true or change batch_size"
            )
        if 0 < last and (last < 2 or objective.views * last // world < 2):  # in-batch losses, BatchNorm on each process
            raise ValueError(
                f"the last partial batch of {last} is too small for in-batch losses and BatchNorm on "
                f"{world} process(es); set drop_last true or change batch_size"
            )
        self.chunk = batches_per_draw(self.batch, self.images.shape[1], data.augment.crop_size)
        self.views, self.data, self.objective, self.gen = domain_of(cfg.dataset).views, data, objective, state.gen
        self.bf16 = cfg.bf16
        self.drawn = {}  # the views of the current chunk of batches and the generator state they were drawn from
        self.planned = None  # streamed images (ImageFiles): the (epoch, chunk) its workers decode next

    def order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=generator, device=generator.device)

    def loss(self, state: TrainState, step: int, idx: torch.Tensor):
        c0 = step - step % self.chunk
        # draw the views of batches c0, c0 + 1, ... (this process's shares)
        if self.drawn.get("chunk") != (state.epoch, c0):
            if hasattr(self.images, "plan") and self.planned != (state.epoch, c0):  # streamed: decode the rest ahead
                self.images.plan([self._rows(state.perm, c) for c in range(c0, self.steps, self.chunk)])
            self.planned = (state.epoch, c0 + self.chunk)
            images = self.images[self._rows(state.perm, c0)].to(self.gen.device, non_blocking=True)
            self.drawn = {
                "chunk": (state.epoch, c0),
                "gen": self.gen.get_state(),
                "x": [self.views(self.data, images, self.gen) for _ in range(self.objective.views)],
            }
        start = (step - c0) * (self.batch // distributed.rank_world()[1])  # only a chunk's last batch can be partial
        x = [v[start : start + len(distributed.shard(idx))] for v in self.drawn["x"]]
        labels = None if self.labels is None else self.labels[idx]
        return state.method.loss(state.model, x, labels)

    def _rows(self, perm: torch.Tensor, c0: int) -> torch.Tensor:
        """This process's shares of batches c0, c0 + 1, ... of the chunk that starts at step c0."""
        return torch.cat(
            [
                distributed.shard(perm[s * self.batch : (s + 1) * self.batch])
                for s in range(c0, min(c0 + self.chunk, self.steps))
            ]
        )

    def gen_state(self, step: int) -> torch.Tensor:
        """The augmentation stream to save for continuing at `step`: within a chunk, the state that drew the chunk,
        so that a resumed run draws its views again."""
        return self.gen.get_state() if step % self.chunk == 0 else self.drawn["gen"]


def batches_per_draw(batch: int, channels: int, crop_size: int) -> int:
    """How many consecutive batches' views one augmentation call draws (VIEW_VALUES per view, at least one)."""
    return max(1, VIEW_VALUES // (batch * channels * crop_size**2))


class DomainBatches:
    """The batches of a domain with its own `order` and `batch_loss` (sentences: windows of consecutive sentences,
    the loss on each window's neighbouring sentences)."""

    def __init__(self, cfg: TrainConfig, data, objective: Objective, state: TrainState):
        self.domain, self.data, self.objective, self.gen = domain_of(cfg.dataset), data, objective, state.gen
        self.n, self.batch = len(data), min(cfg.batch_size, len(data))
        self.steps = self.n // self.batch  # drop the last incomplete batch

    def order(self, generator: torch.Generator) -> torch.Tensor:
        return self.domain.order(self.n, self.batch, generator)

    def loss(self, state: TrainState, step: int, idx: torch.Tensor):
        return self.domain.batch_loss(state.model, self.objective, self.data, idx)

    def gen_state(self, step: int) -> torch.Tensor:
        return self.gen.get_state()


# ---------------------------------------------------------------------------------------- the state of a run


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped: the trained modules, the optimiser and its
    schedule, the random streams and the progress within the epoch. `save` and `restore` are exact inverses, so a
    resumed run ends with the same weights as an uninterrupted one."""

    encoder: nn.Module
    model: nn.Module  # the encoder as the step calls it: DDP's wrapper under torchrun (not saved: it holds the encoder)
    method: Method  # what the objective trains beside the encoder, and its loss
    opt: torch.optim.Optimizer
    sched: Any
    order: torch.Generator  # the sample order: the same on every process
    gen: torch.Generator  # the augmentations: one stream per process
    epoch: int = 1
    step: int = 0  # the next step of `epoch`
    perm: torch.Tensor | None = None  # `epoch`'s sample order, once drawn
    sums: dict = field(default_factory=dict)  # `epoch`'s running sums of the loss terms, on the device
    log: list = field(default_factory=list)  # one row per finished epoch
    resumed: list = field(default_factory=list)  # (epoch, step) where each restart continued

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, **self.method.modules()}

    def save(self, path: Path, cfg: TrainConfig, gens: list[torch.Tensor], main: bool) -> None:
        """Write the state (process 0), with `gens`, every process's augmentation stream (gathered by the caller)."""
        if main:
            runs.save_checkpoint(
                path,
                {
                    "config_hash": runs.config_hash(cfg.hashed()),
                    "train_version": TRAIN_VERSION,
                    **{k: m.state_dict() for k, m in self.modules().items()},
                    "opt": self.opt.state_dict(),
                    "sched": self.sched.state_dict(),
                    "order": self.order.get_state(),
                    "gen": gens,
                    "torch_rng": torch.get_rng_state(),
                    **{k: getattr(self, k) for k in ("epoch", "step", "perm", "sums", "log", "resumed")},
                },
            )
        _kill_hook(path.parent.name, self.epoch, self.step)

    def restore(self, saved: dict, rank: int, device: torch.device) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(saved[k])
        self.opt.load_state_dict(saved["opt"]), self.sched.load_state_dict(saved["sched"])
        self.order.set_state(saved["order"]), self.gen.set_state(saved["gen"][rank])
        torch.set_rng_state(saved["torch_rng"])
        self.epoch, self.step, self.log = saved["epoch"], saved["step"], saved["log"]
        self.perm = None if saved["perm"] is None else saved["perm"].to(device)
        self.sums = {k: v.to(device) for k, v in saved["sums"].items()}
        self.resumed = saved["resumed"] + [{"epoch": self.epoch, "step": self.step}]


def _kill_hook(run: str, epoch: int, step: int) -> None:
    """Tests' deterministic SIGKILL (module docstring): once the state at (`epoch`, `step`) of `run` is saved."""
    env = os.environ
    if env.get("HYPERSPHERE_KILL_AT") != f"{epoch}:{step}" or env.get("HYPERSPHERE_KILL_RUN", run) != run:
        return
    distributed.barrier()  # every process passed the save point, and process 0 has written the state
    rank = distributed.rank_world()[0]
    if env.get("HYPERSPHERE_KILL_RANK", str(rank)) == str(rank):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------- data and encoders


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


def load_data(cfg: TrainConfig):
    """The run's dataset, carrying the run's augmentation recipe. A recipe with another crop size scales the
    evaluation view's resize along, so Resize(r) + CenterCrop(crop) keeps the dataset's ratio (70 / 64 for STL-10)."""
    data = domain_of(cfg.dataset).load(cfg.dataset, cfg.data_dir, cfg.download)
    if not cfg.augment:
        return data
    aug = recipe(cfg.augment)
    return replace(data, augment=aug, eval_resize=round(data.eval_resize * aug.crop_size / data.augment.crop_size))


def make_encoder(cfg: TrainConfig, data) -> nn.Module:
    return domain_of(cfg.dataset).encoder(cfg.arch, cfg.dim, data)


def _load_weights(encoder: nn.Module, path: Path, device="cpu") -> dict:
    state = runs.load_checkpoint(path, device)
    try:
        encoder.load_state_dict(state["encoder"])
    except (RuntimeError, KeyError) as e:
        raise runs.RunError(f"{path} does not fit this encoder (arch/dim/dataset differ): {e}") from None
    return state


def load_encoder(run_dir: str | Path, device: str = "cpu", data_dir: str = "data", snapshot: int | None = None):
    """A finished run's encoder (eval mode; at a snapshot epoch if given), its config and its dataset."""
    run_dir = Path(run_dir)
    runs.load_summary(run_dir)  # checks the record is complete and consistent
    cfg = TrainConfig.from_dict({**runs.read_json(run_dir / runs.CONFIG), "data_dir": data_dir, "init": ""})
    data = load_data(cfg)
    encoder = make_encoder(cfg, data)
    path = run_dir / runs.CHECKPOINT if snapshot is None else runs.snapshot_path(run_dir, snapshot)
    _load_weights(encoder, path, device)
    return encoder.to(device).eval(), cfg, data
