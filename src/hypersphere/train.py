"""Train one encoder from a config into a run record (runs.py); evaluation is separate (evaluate.py).

    from hypersphere.train import TrainConfig, train
    run_dir = train(TrainConfig(dataset="digits", objective="align(alpha=2) + uniform(t=2)", epochs=30))

The whole dataset sits on the training device as uint8 and the positive views are made there by
batched tensor ops (augment.py), so a GPU never waits for CPU workers. The encoder runs channels_last
(1.8x faster on CPU too) and, on CUDA, in bf16 autocast; the losses always compute in fp32.
The paper's common image setup (docs/paper.md, "Image setup"): SGD, momentum 0.9, weight decay 1e-4,
lr 0.12 per 256 images of batch, 200 epochs, lr x0.1 at epochs 155, 170 and 185. Sentence encoders (Fig. 9b)
train through the same loop with Adam, gradient clipping and the text domain's batch order and loss (domains.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import distributed, runs
from .augment import recipe
from .domains import domain_of
from .losses import Objective
from .moco import MoCo

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
    augment: Any = ""               # "" (the dataset's recipe), a name of augment.RECIPES, or {recipe: name, field: value}
    arch: str = "auto"              # smallalexnet | digitsnet | auto (the dataset's)
    dim: int = 128
    init: str = ""                  # "" (from scratch) or a finished run directory to fine-tune from (Fig. 8)
    epochs: int = 200               # 0 keeps the randomly initialised encoder (Fig. 3, first row)
    batch_size: int = 768
    lr: float = 0.0                 # 0: linear scaling, 0.12 per 256 images of batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"          # sgd (momentum above) | adam (Quick-Thought, Fig. 9b; needs an explicit lr)
    clip_grad: float = 0.0          # > 0: clip the gradients' global norm to this (Quick-Thought: 0.5)
    lr_decay_at: tuple[float, ...] = (155 / 200, 170 / 200, 185 / 200)  # fractions of the schedule
    cosine: bool = False            # a cosine schedule over the epochs instead of the steps of lr_decay_at (MoCo v2)
    seed: int = 0
    snapshot_epochs: tuple[int, ...] = ()  # also keep the weights at these epochs (Fig. 8 trajectories)
    # MoCo (Fig. 9a, Tables 3 and 5): a queue of past keys from an EMA key encoder; 0 keeps the in-batch losses
    queue: int = 0
    ema: float = 0.999
    intra_batch: bool = True        # L_uniform also over distinct pairs of the batch's queries (paper appendix)
    # where and how (not hashed)
    name: str = ""                  # prefix of the run directory (default: the dataset)
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    runs_dir: str = "runs"
    checkpoint_minutes: float = 10.0  # also save the resumable state mid-epoch after this long (0: every step)

    NOT_HASHED = ("name", "data_dir", "download", "device", "runs_dir", "checkpoint_minutes")
    # fields added after runs were cached: hashed only when they differ from these defaults, so older runs keep their names
    HASHED_UNLESS = {"optimizer": "sgd", "clip_grad": 0.0}

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
            raise ValueError(f"queue {self.queue} cannot hold a batch of {self.batch_size} keys; use queue >= batch_size")
        if self.queue and Objective.parse(self.objective).needs_labels:
            raise ValueError("a MoCo run (queue > 0) takes contrastive, align and uniform terms, not xent")
        if domain.check is not None:
            domain.check(self)

    @property
    def canonical_objective(self) -> str:
        return str(Objective.parse(self.objective))

    @property
    def base_lr(self) -> float:
        return self.lr or 0.12 * self.batch_size / 256

    def hashed(self) -> dict[str, Any]:
        """The fields that define the trained weights, objective in canonical form."""
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in self.NOT_HASHED and not (k in self.HASHED_UNLESS and v == self.HASHED_UNLESS[k])}
        d["objective"] = self.canonical_objective
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
VIEW_VALUES = 2 ** 24


def batches_per_draw(batch: int, channels: int, crop_size: int) -> int:
    """How many consecutive batches' views one augmentation call draws (VIEW_VALUES per view, at least one)."""
    return max(1, VIEW_VALUES // (batch * channels * crop_size ** 2))


def _gathered_states(state: torch.Tensor) -> list[torch.Tensor]:
    """Every process's augmentation generator state, so that a resumed distributed run continues each stream."""
    if distributed.rank_world()[1] == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(distributed.rank_world()[1])]
    torch.distributed.all_gather_object(states, state)
    return states


class Diverged(RuntimeError):
    """The loss became NaN or inf; the run is recorded as failed with the epoch and reason."""


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


def batch_loss(encoder: nn.Module, head: nn.Module | None, objective: Objective, x: list[torch.Tensor],
               labels: torch.Tensor | None, moco: MoCo | None = None):
    """Loss and its unweighted terms on one global batch, from this process's share of it as `objective.views`
    random views `x` (drawn for chunks of batches, VIEW_VALUES): the objective on all views after one forward pass (as the official code), or
    with `moco` on its queries, keys and queue (the batch's keys are enqueued afterwards). Under torchrun each
    process encodes its share and the losses see the gathered global batch (distributed.py); `labels` are the
    global batch's. Only the encoders run under bf16 autocast (on CUDA); augmentation and losses stay in fp32."""
    device = x[0].device.type
    if moco is not None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            q, k, queue = moco(*(v.contiguous(memory_format=torch.channels_last) for v in x))
        q, k = distributed.gather(q.float()), distributed.gather(k.float())
        loss, terms = objective(q, k, queue=queue, intra_batch=moco.intra_batch)
        moco.enqueue(k)
        return loss, {**terms, "norm_error": _norm_error(q)}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        z = encoder(torch.cat(x).contiguous(memory_format=torch.channels_last))
    z = [distributed.gather(v) for v in z.float().chunk(objective.views)]
    logits = head(z[0]) if head is not None else None  # on the global batch: the same on every process
    loss, terms = objective(z[0], z[-1], logits=logits, labels=labels)
    return loss, {**terms, "norm_error": _norm_error(z[0])}


def _norm_error(z: torch.Tensor) -> torch.Tensor:
    """max | ||z_i|| - 1 |: 0 for features on the sphere, 1 for an encoder whose outputs died to zero (a finite
    loss can hide it: all-zero features give the contrastive loss log(2K - 1))."""
    return (z.detach().norm(dim=1) - 1).abs().max()


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
    if status == "stale":
        old = runs.read_json(run_dir / runs.TRAIN).get("train_version")
        print(f"retraining {run_dir.name}: trained by training-code version {old}, this is version {TRAIN_VERSION}",
              file=sys.stderr)
    resume = runs.load_state(run_dir, cfg.hashed(), TRAIN_VERSION) if status == "todo" else None
    device = resolve_device(cfg.device)
    rank, world = distributed.init_from_env(device.type)
    main = rank == 0  # only the first process writes the record
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    if resume is None and main:
        runs.start_training(run_dir, cfg.hashed())
    distributed.barrier()
    data = (data or load_data(cfg)).to(device)

    torch.manual_seed(cfg.seed)
    encoder = make_encoder(cfg, data)
    if cfg.init and resume is None:
        if runs.train_status(Path(cfg.init), TRAIN_VERSION) != "done":
            raise runs.RunError(f"init run {cfg.init} is not a finished run: train it first (sweeps order parents first)")
        _load_weights(encoder, Path(cfg.init) / runs.CHECKPOINT)
    encoder = encoder.to(device, memory_format=torch.channels_last)  # faster convs and pools on CPU and GPU
    model = nn.parallel.DistributedDataParallel(encoder) if world > 1 else encoder
    moco = None
    if cfg.queue:  # the query encoder is trained (through DDP's wrapper); the key encoder follows it by EMA
        moco = MoCo(model, cfg.queue, cfg.ema, cfg.seed, cfg.intra_batch).to(device)
    objective = Objective.parse(cfg.objective)
    head = None
    if objective.needs_labels:  # zero init: the scaled logits start uniform (cross-entropy log C)
        head = nn.Linear(cfg.dim, data.num_classes).to(device)
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    params = list(encoder.parameters()) + (list(head.parameters()) if head else [])
    opt = (torch.optim.Adam(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam" else
           torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    milestones = sorted({round(f * cfg.epochs) for f in cfg.lr_decay_at})
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1)) if cfg.cosine
             else torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1))

    domain = domain_of(cfg.dataset)
    if domain.batch_loss is None:  # the objective on random views of each input (of labelled ones with a head)
        images = data.train_images if head is not None else data.encoder_images
        labels = data.train_labels if head is not None else None
        n = len(images)
        batch = min(cfg.batch_size, n)
        chunk = batches_per_draw(batch, images.shape[1], data.augment.crop_size)

        def step_loss(epoch: int, step: int, idx: torch.Tensor):
            c0 = step - step % chunk
            if drawn.get("chunk") != (epoch, c0):  # draw the views of batches c0, c0 + 1, ... (this process's shares)
                rows = torch.cat([distributed.shard(perm[s * batch:(s + 1) * batch]) for s in range(c0, min(c0 + chunk, steps))])
                drawn.update(chunk=(epoch, c0), gen=gen.get_state(),
                             x=[domain.views(data, images[rows], gen) for _ in range(objective.views)])
            local = len(distributed.shard(idx))  # this process's rows of each batch
            x = [v[(step - c0) * local:(step - c0 + 1) * local] for v in drawn["x"]]
            return batch_loss(model, head, objective, x, None if labels is None else labels[idx], moco)
    else:  # the domain's own loss on a batch of indices (sentences: the neighbours in a window of the stream)
        n = len(data)
        batch, chunk = min(cfg.batch_size, n), 1
        step_loss = lambda epoch, step, idx: domain.batch_loss(model, objective, data, idx)  # noqa: E731
    steps = n // batch  # drop the last incomplete batch, as the official loader does
    drawn = {}  # the views of the current chunk of batches and the generator state they were drawn from
    order = torch.Generator(device=device).manual_seed(cfg.seed)  # the sample order: the same on every process
    gen = torch.Generator(device=device).manual_seed(AUGMENT_SEED * cfg.seed + rank + 1)  # augmentations: per process
    log, resumed, start_epoch, start_step, perm, sums = [], [], 1, 0, None, {}
    if resume is not None:
        encoder.load_state_dict(resume["encoder"]), opt.load_state_dict(resume["opt"]), sched.load_state_dict(resume["sched"])
        if moco is not None:
            moco.load_state_dict(resume["moco"])
        if head is not None:
            head.load_state_dict(resume["head"])
        order.set_state(resume["order"]), gen.set_state(resume["gen"][rank]), torch.set_rng_state(resume["torch_rng"])
        log, start_epoch, start_step, perm, sums = (resume[k] for k in ("log", "epoch", "step", "perm", "sums"))
        resumed = resume["resumed"] + [{"epoch": start_epoch, "step": start_step}]
        perm = None if perm is None else perm.to(device)
        sums = {k: v.to(device) for k, v in sums.items()}

    def save_state(epoch: int, step: int, perm, sums) -> None:
        """Everything the loop needs to continue at (epoch, step) exactly as if it had not stopped: within a chunk
        of batches the generator state that drew its views, so that a resumed run draws them again."""
        gens = _gathered_states(gen.get_state() if step % chunk == 0 else drawn["gen"])
        if not main:
            return
        runs.save_checkpoint(run_dir / runs.STATE, {
            "config_hash": runs.config_hash(cfg.hashed()), "train_version": TRAIN_VERSION, "epoch": epoch, "step": step,
            "encoder": encoder.state_dict(), "head": head.state_dict() if head else None, "opt": opt.state_dict(),
            "moco": moco.state_dict() if moco else None,
            "sched": sched.state_dict(), "order": order.get_state(), "gen": gens, "torch_rng": torch.get_rng_state(), "perm": perm,
            "sums": sums, "log": log, "resumed": resumed})

    def snapshot(epoch: int) -> None:
        if epoch in cfg.snapshot_epochs and main:
            runs.save_checkpoint(runs.snapshot_path(run_dir, epoch), {"encoder": encoder.state_dict()})

    if resume is None:
        snapshot(0)
    bar = tqdm(total=cfg.epochs * steps, initial=(start_epoch - 1) * steps + start_step, desc=f"train {run_dir.name}",
               unit="step", disable=not (progress and main), leave=False)
    last_save = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        (moco or encoder).train()
        t0 = time.perf_counter()
        if perm is None:  # a new epoch (a resumed one continues with its saved order and sums)
            perm = (domain.order(n, batch, order) if domain.order else torch.randperm(n, generator=order, device=device))
            sums, start_step = {}, 0
        for step in range(start_step, steps):
            idx = perm[step * batch:(step + 1) * batch]
            loss, terms = step_loss(epoch, step, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            opt.step()
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            # the first step of the epoch with a non-finite loss (`steps` while none), without a device sync
            bad = torch.where(torch.isfinite(loss.detach()), steps, step)
            sums["first_bad"] = torch.minimum(sums.get("first_bad", bad), bad)
            bar.update()
            due = time.perf_counter() - last_save >= 60 * cfg.checkpoint_minutes
            if step + 1 < steps and distributed.agree(due):
                save_state(epoch, step + 1, perm, sums)
                last_save = time.perf_counter()
        first_bad = int(sums.pop("first_bad"))
        means = {k: float(v) / steps for k, v in sums.items()}  # one device sync per epoch
        if not math.isfinite(means["loss"]) or not means["norm_error"] < 0.01:
            bar.close()
            reason = (f"mean loss became {means['loss']} in epoch {epoch}, first at its step {first_bad + 1} of {steps}"
                      if not math.isfinite(means["loss"]) else
                      f"the features left the sphere in epoch {epoch} (dead or non-finite encoder outputs)")
            if main:
                # the run's first step with a non-finite loss (features that left the sphere: the epoch's last step)
                step_of_run = (epoch - 1) * steps + min(first_bad, steps - 1) + 1
                runs.write_json(run_dir / runs.FAILED, {"epoch": epoch, "step": step_of_run, "reason": reason})
                (run_dir / runs.STATE).unlink(missing_ok=True)
            raise Diverged(f"{run_dir.name}: {reason}")
        seconds = time.perf_counter() - t0
        log.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], **{k: round(v, 6) for k, v in means.items()},
                    "seconds": round(seconds, 3), "images_per_s": round((steps - start_step) * batch * objective.views / seconds, 1)})
        sched.step()
        bar.set_postfix(epoch=epoch, loss=f"{means['loss']:.3f}")
        if main:
            runs.write_csv(run_dir / runs.LOG, log)
        snapshot(epoch)
        perm = None
        save_state(epoch + 1, 0, None, {})
        last_save = time.perf_counter()
    bar.close()
    if not main:
        return
    state = {"encoder": encoder.state_dict(), **({"head": head.state_dict()} if head else {}),
             **({"moco": moco.state_dict()} if moco else {})}
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, state)
    train_seconds = sum(row["seconds"] for row in log)
    runs.write_json(run_dir / runs.TRAIN, {
        "config_hash": runs.config_hash(cfg.hashed()),
        "train_version": TRAIN_VERSION,
        "run": run_dir.name,
        "steps": cfg.epochs * steps,
        "resumed": resumed,
        "final_loss": log[-1]["loss"] if log else None,
        "train_seconds": round(train_seconds, 2),
        "images_per_s": round(cfg.epochs * steps * batch * objective.views / train_seconds, 1) if train_seconds else None,
        "device": str(device),
        "torch": torch.__version__,
        "pid": os.getpid(),
        "host": os.uname().nodename,
    })
    (run_dir / runs.STATE).unlink(missing_ok=True)
