"""Benchmark 5 (CUDA): the GPU check of the paper profile. Every row times the trainer's own step (train.py) on one
GPU, built from a config of the paper sweep it projects, and the cost of every paper sweep is projected from those
times (costs.py). One prepared command: `make gpu-check`, i.e. `python bench/run.py --cuda-only` (8 minutes or less
on one GPU). On a machine without CUDA, `python bench/run.py --cuda-only --dry-run` runs every code path on the CPU
at tiny sizes (its numbers are no measurement) and skips what needs a GPU.

The trainer's step (TrainerStep): the state train._fresh_state builds for the config (seeded encoder, MoCo's key
encoder and queue, heads, the optimiser), the domain's batch source (train.ViewBatches: the uint8 images sit on the
device and each chunk of batches' views is drawn there at its first step; train.DomainBatches: windows of
consecutive sentences), `batches.loss`, `train._step` (backward, clipping, optimiser step) and `train._accumulate`,
as train._epoch runs them in one process. Images are random uint8 of the dataset's stored size (only sizes matter
to speed); sentences are the embedded stand-in's, its vocabulary padded to BookCorpus's 50,000 words. Off the dry
run the warm-up and the timed steps are whole view drawings, so seconds per step carry their share of the drawing.

FLOPs are the forward + backward ones of a step (the view drawing's own products taken out), counted with
FlopCounterMode on the CPU on one step of 2 samples of the paper config (32 sentences for Quick-Thought): linear in
the batch and device independent (the same in the dry run), and on a GPU cuDNN's fused GRU would hide its products.
MFU = achieved TFLOP/s / the card's achievable bf16 matmul TFLOP/s (also for fp32 rows). Peak memory is the most
GPU memory allocated during a measurement (data, model and optimiser included) beyond what was allocated before.

The rows:
- the card's achievable bf16 matrix-multiply TFLOP/s (8192^3 matmuls), the denominator of MFU;
- every kind of step the paper sweeps train (costs.step_kind: dataset, encoder, MoCo queue, the modules the
  objective adds), in fp32 as they train, at every batch size they use: SmallAlexNet on STL-10 (13 batches, and
  beyond's MLP head, SimSiam's predictor, BYOL's target), on CIFAR-10 (contrastive and supervised) and as the
  NYU-Depth-V2 encoder; ResNet-50 MoCo on ImageNet-100 (Table 3's queue and linear head); Quick-Thought's bi-GRUs
  (B=400 sentences, Adam, clipping): throughput at the largest batch, MFU, peak memory, ms per step at each batch;
- bf16 autocast: SmallAlexNet at B=768 (eager, and with the encoder torch.compile'd: train.py runs eager) and the
  ResNet-50 MoCo step, each with the mean loss of the same steps from the same weights and views in fp32 and bf16;
- the view drawing alone at B=768; peak memory with the whole STL-10 train+unlabeled set resident (train.py keeps
  the dataset on the device);
- NYU-Depth-V2's depth decoder training (depth.fit_decoder) on a frozen SmallAlexNet's conv5 and conv4 maps;
- MoCo streamed (Table 5): train.train on a folder of 500 x 375 JPEGs written here (ImageFiles decode them in
  DataLoader workers) with the imagenet sweep's config: images/s of the epochs after the first, peak memory, MFU;
- fp32 vs bf16 accuracy: one digits-color config trained twice, `bf16` off and on, each evaluated by evaluate_run;
- 2-process DDP: `torchrun --nproc_per_node 2 -m hypersphere train --dataset digits --epochs 1` with NCCL when
  two GPUs are present (gloo on the CPU in the dry run), whether it held (exit 0 and the run finished);
- projected, per paper sweep (configs/profiles/paper.yaml's list, expanded by sweep.load_sweep): GPU-hours and
  counted PFLOP (costs.sweep_cost), and one STL-10 encoder's;
- packing: K processes each running the trainer's B=256 SmallAlexNet step on the GPU at once, vs one alone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

import costs
from bench_stream import write_folder
from costs import Measured, step_kind
from hypersphere import profiles, runs, train
from hypersphere.augment import recipe
from hypersphere.domains import domain_of, text
from hypersphere.domains.depth import DepthProbeConfig, feature_maps, fit_decoder
from hypersphere.domains.image import STL10_MEAN, STL10_STD, ImageData
from hypersphere.evaluate import EvalConfig, evaluate_run
from hypersphere.losses import Objective
from hypersphere.models import SmallAlexNet
from hypersphere.sweep import load_sweep, sweep_path, torchrun_command
from hypersphere.train import TrainConfig, load_data
from timing import Row, fmt_rate, fmt_time, skipped

# how each paper dataset is stored (height, width) and its augmentation recipe: the synthetic images' shape
STORED = {
    "stl10": (96, 96, "stl10"),
    "cifar10": (32, 32, "cifar10"),
    "nyu-depth-v2": (96, 126, "stl10"),
    "imagenet100": (256, 256, "mocov1"),
    "imagenet": (256, 256, "mocov2"),
}
STREAMED = "imagenet"  # measured streamed from JPEG files through train() (stream_row), not in memory
# the kinds of step (costs.step_kind) that rows besides the per-kind ones read
SAN, MOCO, STREAM = "stl10 auto", "imagenet100 resnet50 queue", "imagenet resnet50-mlp queue"
SAN_BATCH = 768  # the paper's STL-10 batch: the bf16 rows, the view drawing, resident memory
FLOP_BATCH, FLOP_SENTENCES = 2, 32  # one step of this many samples counts the FLOPs per sample
START = time.perf_counter()


@dataclass(frozen=True)
class Sizes:
    """How large each measurement is: FULL (8 minutes or less on one GPU), QUICK (--quick on a GPU), or DRY (the CPU
    dry run: every code path at tiny sizes, no measurement)."""

    dry: bool  # each kind once at a tiny batch (dry_config), steps not rounded to whole view drawings
    warmup: int  # steps before timing
    steps: int  # timed steps
    matmul: int  # side of the matmuls that measure the achievable TFLOP/s
    matmul_repeats: int
    pad_vocab: bool  # the sentence stand-in's vocabulary padded to BookCorpus's 50,000 words
    decoder_train: int  # depth decoder: train and validation maps (NYU: 795 / 654)
    decoder_val: int
    decoder_epochs: int
    stream_files: int  # MoCo streamed: JPEG files, epochs (the first is warm-up)
    stream_epochs: int
    digits_arch: str  # fp32 vs bf16 accuracy: arch, augmentation, encoder images (0: all 1,347), batch, epochs
    digits_augment: object
    digits_images: int
    digits_batch: int
    digits_epochs: int
    digits_eval: EvalConfig
    pack_steps: int


FULL = Sizes(
    dry=False,
    warmup=5,
    steps=10,
    matmul=8192,
    matmul_repeats=50,
    pad_vocab=True,
    decoder_train=795,
    decoder_val=654,
    decoder_epochs=30,
    stream_files=8192,
    stream_epochs=6,
    digits_arch="smallalexnet",
    digits_augment={"recipe": "digits-color", "crop_size": 64},
    digits_images=0,
    digits_batch=128,
    digits_epochs=10,
    digits_eval=EvalConfig(probe="lbfgs", cv_folds=0),
    pack_steps=30,
)
QUICK = replace(
    FULL, warmup=2, steps=3, decoder_epochs=5, stream_files=2048, stream_epochs=3, digits_epochs=4, pack_steps=5
)
# the dry run: no warm-up, no padded vocabulary (Adam over 62 M embedding weights), one L2 strength for the digits
# probe (its CV was half the dry run's time)
DRY = Sizes(
    dry=True,
    warmup=0,
    steps=1,
    matmul=256,
    matmul_repeats=2,
    pad_vocab=False,
    decoder_train=16,
    decoder_val=8,
    decoder_epochs=1,
    stream_files=8,
    stream_epochs=2,
    digits_arch="digitsnet",
    digits_augment="",
    digits_images=32,
    digits_batch=8,
    digits_epochs=1,
    digits_eval=EvalConfig(probe="lbfgs", cv_folds=0, l2_grid=(1e-4,), l2_folds=2),
    pack_steps=1,
)


def dry_config(cfg: TrainConfig) -> TrainConfig:
    """The dry run's tiny version of a paper config: 2 pairs of 32 px crops (and a queue of 16), or 8 sentences."""
    if is_text(cfg):
        return replace(cfg, batch_size=8)
    return replace(
        cfg, batch_size=2, queue=min(cfg.queue, 16), augment={"recipe": STORED[cfg.dataset][2], "crop_size": 32}
    )


def say(message: str) -> None:
    print(f"[cuda {time.perf_counter() - START:4.0f} s] {message}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "gib" is, once the block has run, the peak GPU memory allocated during it beyond what was
    allocated before it (None on a CPU)."""
    memory = {"gib": None}
    if device.type != "cuda":
        yield memory
        return
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield memory
    memory["gib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30


def memory_note(gib: float | None) -> str:
    return f"peak memory {gib:.1f} GiB" if gib is not None else "peak memory needs CUDA"


def speed_row(case: str, per_s: float, unit: str, flops_per_item: float, peak: float, note: str, **raw) -> Row:
    """A throughput row: `per_s` items (images, sentences) a second, TFLOP/s at `flops_per_item`, MFU."""
    tflops = per_s * flops_per_item / 1e12
    return Row(
        "cuda",
        case,
        f"{fmt_rate(per_s, unit)}, {tflops:.1f} TFLOP/s, MFU {tflops / peak:.0%}",
        "-",
        note=note,
        raw={f"{unit}s_per_s": per_s, "tflops": tflops, "mfu": tflops / peak, **raw},
    )


# ---------------------------------------------------------------------------------------- the trainer's step


def is_text(cfg: TrainConfig) -> bool:
    return domain_of(cfg.dataset).batch_loss is not None


def sentences(pad_vocab: bool):
    """The embedded sentence stand-in (BookCorpus is not distributed); with `pad_vocab` its vocabulary padded with
    unused words to BookCorpus's 50,000, so that the embedding tables, and Adam's step over them, are the paper's."""
    data = text.load_dataset("standin")
    if not pad_vocab:
        return data
    words = data.vocab.words[2:]  # after <pad> and <unk>, which Vocab puts back
    return replace(data, vocab=text.Vocab(words + [f"<unused{i}>" for i in range(text.VOCAB_SIZE - 2 - len(words))]))


def synthetic(cfg: TrainConfig, n: int, device: torch.device) -> ImageData:
    """n random uint8 images shaped as cfg's dataset stores them, made on `device`, all of them labelled (supervised
    runs draw labelled images), with the run's augmentation recipe."""
    height, width, name = STORED[cfg.dataset]
    aug = recipe(cfg.augment or name)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, device=device, generator=gen)
    labels = torch.randint(0, 10, (n,), device=device, generator=gen)
    return ImageData(
        "synthetic",
        images,
        images,
        labels,
        images,
        labels,
        STL10_MEAN,
        STL10_STD,
        10,
        aug,
        eval_resize=round(aug.crop_size * 70 / 64),
    )


def draw_batches(cfg: TrainConfig) -> int:
    """How many batches' views ViewBatches draws at once for cfg (1 for sentences)."""
    if is_text(cfg):
        return 1
    return train.batches_per_draw(cfg.batch_size, 3, recipe(cfg.augment or STORED[cfg.dataset][2]).crop_size)


def data_for(cfg: TrainConfig, device: torch.device, text_data, batches: int, draw: int):
    """The sentences, or synthetic images for `batches` batches rounded up to whole drawings of `draw` batches."""
    if is_text(cfg):
        return text_data
    return synthetic(cfg, cfg.batch_size * draw * -(-batches // draw), device)


class TrainerStep:
    """train._epoch's step for `cfg` on `data`, in one process: calling it runs the next step (a new epoch with a new
    order after the last), returns the step's loss. A fine-tune's step is timed from fresh weights (init dropped):
    the same work."""

    def __init__(self, cfg: TrainConfig, data, device: torch.device):
        self.cfg = cfg = replace(cfg, init="")
        objective, data = Objective.parse(cfg.objective), data.to(device)
        self.state = state = train._fresh_state(cfg, data, objective, device, 0, 1, fresh=True)
        self.batches = train.batch_source(cfg, data, objective, state)
        state.encoder.train(), state.method.train()

    def __call__(self) -> torch.Tensor:
        """train.train_step on the next step (its views drawn when it starts a chunk)."""
        state, b = self.state, self.batches
        if state.perm is None or state.step == b.steps:  # a new epoch: its order, as _epoch draws it
            state.epoch += state.perm is not None
            state.perm, state.sums, state.step = b.order(state.order), {}, 0
        loss = train.train_step(self.cfg, state, b, state.step)
        state.step += 1
        return loss.detach()


@dataclass
class Timing:
    seconds: float  # per step
    loss: float  # mean loss of the timed steps
    peak_gib: float | None
    warmup_s: float  # the warm-up steps' wall time (setup excluded; torch.compile's included)


def measure(
    cfg: TrainConfig, device: torch.device, sizes: Sizes, text_data, compile: bool = False, images: int = 0
) -> Timing:
    """Time the trainer's step for cfg: `sizes.warmup` steps, then `sizes.steps` timed ones, off the dry run both
    rounded up to whole view drawings. The data is made inside the measurement: `images` images (default: enough
    for the steps' batches, at least 4), so peak memory counts them."""
    draw = 1 if sizes.dry else draw_batches(cfg)
    warmup, steps = (draw * -(-n // draw) for n in (sizes.warmup, sizes.steps))
    with peak_memory(device) as memory:
        data = synthetic(cfg, images, device) if images else data_for(cfg, device, text_data, 4, draw)
        step = TrainerStep(cfg, data, device)
        if compile:  # what compiling the encoder in train.py would gain
            step.state.model = torch.compile(step.state.model)
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        _sync(device)
        t1 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        _sync(device)
        t2 = time.perf_counter()
        loss = torch.stack(losses).mean().item()
        del step, data, losses
    return Timing((t2 - t1) / steps, loss, memory["gib"], t1 - t0)


def flops_per_sample(cfg: TrainConfig, text_data) -> float:
    """Forward + backward FLOPs per sample of cfg's step, counted on the CPU on one step of FLOP_BATCH samples
    (FLOP_SENTENCES for sentences). The view drawing's own products (augment's resampling matmuls and blur
    convolutions: 0.5% of a step at 224 px) are counted apart while they run, and taken out."""
    cfg = replace(cfg, batch_size=FLOP_SENTENCES if is_text(cfg) else FLOP_BATCH, bf16=False)
    cpu = torch.device("cpu")
    step = TrainerStep(cfg, text_data if is_text(cfg) else synthetic(cfg, cfg.batch_size, cpu), cpu)
    drawing = FlopCounterMode(display=False)
    if not is_text(cfg):
        views = step.batches.views

        def counted_views(*args):
            with drawing:
                return views(*args)

        step.batches.views = counted_views
    with FlopCounterMode(display=False) as whole:
        step()
    return (whole.get_total_flops() - drawing.get_total_flops()) / cfg.batch_size


# ---------------------------------------------------------------------------------------- the paper sweeps


def paper_sweeps() -> dict[str, list]:
    """Every sweep of the paper profile, in its order, expanded and validated by sweep.load_sweep; checked before any
    measurement to train only datasets whose size costs.PAPER_DATA knows and this check can make."""
    sweeps = {
        sweep: load_sweep(sweep_path(sweep, "paper"), {"device": "cpu"}) for sweep in profiles.load("paper").sweeps
    }
    datasets = {run.config.dataset for sweep_runs in sweeps.values() for run in sweep_runs}
    if unknown := datasets - set(costs.PAPER_DATA):
        raise ValueError(f"paper sweeps train on {sorted(unknown)}: add their sizes to costs.PAPER_DATA")
    if unknown := {d for d in datasets if d not in STORED and domain_of(d).batch_loss is None}:
        raise ValueError(f"paper sweeps train on {sorted(unknown)}: add their stored shape to bench_cuda.STORED")
    return sweeps


def paper_kinds(sweeps: dict[str, list]) -> dict[str, list[TrainConfig]]:
    """Each kind of step the paper sweeps train (costs.step_kind), in order of appearance, with the config of its
    first run at each batch size it trains at, by batch."""
    kinds: dict[str, dict[int, TrainConfig]] = {}
    for sweep_runs in sweeps.values():
        for run in sweep_runs:
            kinds.setdefault(step_kind(run.config), {}).setdefault(run.config.batch_size, run.config)
    if missing := {SAN, MOCO, STREAM} - set(kinds):
        raise ValueError(f"the paper sweeps no longer train {sorted(missing)}: update bench_cuda's SAN, MOCO, STREAM")
    return {kind: [configs[b] for b in sorted(configs)] for kind, configs in kinds.items()}


def at_batch(configs: list[TrainConfig], batch: int, sizes: Sizes) -> TrainConfig:
    """The kind's config at `batch` (its nearest batch's), or in the dry run the tiny version of its first one (the
    one kind_rows times, so that bf16_rows compares the same steps)."""
    if sizes.dry:
        return dry_config(configs[0])
    return replace(min(configs, key=lambda c: abs(c.batch_size - batch)), batch_size=batch)


# ---------------------------------------------------------------------------------------- the rows


def achievable_tflops(device: torch.device, n: int, repeats: int) -> float:
    """bf16 TFLOP/s of n x n x n matrix products: the card's practical peak, the denominator of MFU."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def unit_of(cfg: TrainConfig) -> tuple[str, int]:
    """What a row counts, and how many of them a sample is: sentences, or images (a pair's views)."""
    return ("sentence", 1) if is_text(cfg) else ("image", Objective.parse(cfg.objective).views)


def kind_rows(
    device: torch.device, name: str, sizes: Sizes, peak: float, kinds: dict, text_data, measured: Measured
) -> tuple[list[Row], dict]:
    """Every kind of step in fp32 (as the paper sweeps train) at every batch it trains at (in the dry run once, tiny),
    and its FLOPs per sample: one row per kind, throughput, MFU and peak memory at the largest batch. Returns the rows
    and the timings, {kind: {batch: Timing}}."""
    rows, timings = [], {}
    for kind, configs in kinds.items():
        say(f"{kind}: FLOPs per sample (CPU)")
        measured.flops[kind] = flops = flops_per_sample(configs[0], text_data)
        if configs[0].dataset == STREAMED:
            continue  # stream_row times it
        timings[kind] = times = {}
        for cfg in [at_batch(configs, 0, sizes)] if sizes.dry else configs:
            say(f"{kind}: B={cfg.batch_size} fp32")
            times[cfg.batch_size] = timing = measure(cfg, device, sizes, text_data)
            measured.add(kind, cfg.batch_size, False, timing.seconds)
        top, (unit, per_sample) = max(times), unit_of(cfg)
        t, work = times[top], "a window packed" if is_text(cfg) else "views drawn"
        rows.append(
            speed_row(
                f"{kind}: the trainer's step, fp32 at B={top}, {name}",
                per_sample * top / t.seconds,
                unit,
                flops / per_sample,
                peak,
                f"{fmt_time(t.seconds)} per step ({work} + fwd + bwd + "
                f"{'clipping + ' * bool(cfg.clip_grad)}{cfg.optimizer}); "
                f"{memory_note(t.peak_gib)}; {flops / 1e9:.2f} GFLOP counted per sample; ms per step "
                "at each batch: " + ", ".join(f"{b}: {1e3 * x.seconds:.1f}" for b, x in times.items()),
                seconds_per_step={str(b): x.seconds for b, x in times.items()},
                peak_gib=t.peak_gib,
                flops_per_sample=flops,
                batch=top,
            )
        )
    return rows, timings


def bf16_rows(
    device: torch.device,
    name: str,
    sizes: Sizes,
    peak: float,
    compile: bool,
    kinds: dict,
    timings: dict,
    measured: Measured,
) -> list[Row]:
    """SmallAlexNet at B=768 (eager, and compiled on CUDA) and the ResNet-50 MoCo step in bf16 autocast; for each,
    the mean loss of the same steps from the same weights and views in fp32 (kind_rows' timing) and bf16."""
    rows, cuda = [], device.type == "cuda"
    for kind, batch in ((SAN, SAN_BATCH), (MOCO, max(c.batch_size for c in kinds[MOCO]))):
        cfg = at_batch(kinds[kind], batch, sizes)
        fp32 = timings[kind].get(cfg.batch_size) or measure(cfg, device, sizes, None)
        unit, per_sample = unit_of(cfg)
        for compiled in (False, True) if kind == SAN and compile and cuda else (False,):
            variant = "encoder compiled" if compiled else "eager"
            case = f"{kind}: the trainer's step, bf16 autocast, {variant}, B={cfg.batch_size}, {name}"
            say(case)
            try:
                t = measure(replace(cfg, bf16=True), device, sizes, None, compile=compiled)
            except Exception as e:  # torch.compile can fail on some setups; eager must not
                if not compiled:
                    raise
                rows.append(
                    skipped("cuda", case, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                )
                continue
            if not compiled:
                measured.add(kind, cfg.batch_size, True, t.seconds)
                bf16_loss = t.loss
            rows.append(
                speed_row(
                    case,
                    per_sample * cfg.batch_size / t.seconds,
                    unit,
                    measured.flops[kind] / per_sample,
                    peak,
                    f"{fmt_time(t.seconds)} per step, {fp32.seconds / t.seconds:.2f}x fp32's; "
                    f"{memory_note(t.peak_gib)}; warm-up {t.warmup_s:.1f} s"
                    + (" (compiling included)" if compiled else ""),
                    seconds_per_step=t.seconds,
                    peak_gib=t.peak_gib,
                    warmup_s=t.warmup_s,
                )
            )
        gap = bf16_loss - fp32.loss
        rows.append(
            Row(
                "cuda",
                f"{kind}: mean loss of the same steps from the same weights and views, fp32 vs bf16 "
                f"autocast, B={cfg.batch_size}",
                f"{bf16_loss:.4f} (bf16)",
                f"{fp32.loss:.4f} (fp32)",
                note=f"the timed steps above; difference {gap:+.1e}"
                + (f", relative {abs(gap / fp32.loss):.1e}" if fp32.loss else "")
                + ("; CPU dry run: bf16 applies on CUDA only" if not cuda else ""),
                raw={"fp32": fp32.loss, "bf16": bf16_loss},
            )
        )
    return rows


def view_drawing_row(device: torch.device, name: str, sizes: Sizes, kinds: dict) -> Row:
    """The view drawing alone (the domain's `views`, which ViewBatches calls: augment), both views of a B=768 batch."""
    cfg = at_batch(kinds[SAN], SAN_BATCH, sizes)
    data, gen = synthetic(cfg, cfg.batch_size, device), torch.Generator(device=device).manual_seed(0)
    views = domain_of(cfg.dataset).views
    views(data, data.encoder_images, gen)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(sizes.steps):
        views(data, data.encoder_images, gen), views(data, data.encoder_images, gen)
    _sync(device)
    rate = 2 * cfg.batch_size * sizes.steps / (time.perf_counter() - t0)
    return Row(
        "cuda",
        f"view drawing alone (augment), 96 px uint8 -> {data.augment.crop_size} px, both views of "
        f"B={cfg.batch_size}, {name}",
        fmt_rate(rate, "image"),
        "-",
        note="included in the steps above",
        raw={"images_per_s": rate},
    )


def resident_memory_row(device: torch.device, sizes: Sizes, kinds: dict) -> Row:
    """Peak memory of the trainer's fp32 B=768 step with the whole STL-10 train+unlabeled set resident on the GPU,
    as train.py keeps it."""
    if device.type != "cuda":
        return skipped("cuda", "peak memory with STL-10 resident on the GPU", "skipped: no CUDA")
    cfg = at_batch(kinds[SAN], SAN_BATCH, sizes)
    say("STL-10 resident")
    t = measure(cfg, device, replace(sizes, warmup=1, steps=2), None, images=costs.PAPER_DATA["stl10"])
    return Row(
        "cuda",
        f"peak memory: STL-10 resident ({costs.PAPER_DATA['stl10']:,} x 3 x 96 x 96 uint8) + the "
        f"trainer's fp32 B={cfg.batch_size} step",
        f"{t.peak_gib:.1f} GiB",
        "-",
        raw={"peak_gib": t.peak_gib},
    )


def decoder_row(device: torch.device, name: str, sizes: Sizes, tap: str) -> Row:
    """Images/s and peak memory of the depth decoder's training (depth.fit_decoder: Table 6's decoder, Adam, batch
    128, the paper's schedule) on a frozen SmallAlexNet's `tap` maps of NYU-sized splits (795 train / 654 validation
    64 px views in the paper; random pixels and depths: only sizes matter to speed). The maps stay resident, as in
    depth.depth_probe; the validation prediction at the end is timed too."""
    n, val, epochs = sizes.decoder_train, sizes.decoder_val, sizes.decoder_epochs
    say(f"depth decoder on {tap}")
    gen = torch.Generator(device=device).manual_seed(0)
    views = torch.randn(n + val, 3, 64, 64, device=device, generator=gen)
    depth = torch.randn(n + val, 1, 64, 64, device=device, generator=gen)
    encoder = SmallAlexNet().to(device).eval()
    with torch.no_grad():
        maps = torch.cat([feature_maps(encoder, v, (tap,))[tap] for v in views.split(256)])
    with peak_memory(device) as memory:
        t0 = time.perf_counter()
        fit_decoder(maps[:n], depth[:n], maps[n:], depth[n:], DepthProbeConfig(epochs=epochs), progress=False)
        seconds = time.perf_counter() - t0  # fit_decoder's .item() waits for the device
    rate = epochs * n / seconds
    return Row(
        "cuda",
        f"NYU depth decoder training on {tap} maps {tuple(maps.shape[1:])}, {n} maps x {epochs} epochs, "
        f"batch 128, {name}",
        fmt_rate(rate, "image"),
        "-",
        note=f"{memory_note(memory['gib'])} (maps resident besides)",
        raw={"images_per_s": rate, "seconds": seconds, "peak_gib": memory["gib"]},
    )


def write_imagenet(root: Path, files: int) -> None:
    """root/imagenet/{train,val}/c<k>/: `files` training JPEGs of 500 x 375 in all and 4 validation ones per class
    (bench_stream.write_folder), one class per process, written in parallel."""
    procs = max(1, min(16, os.cpu_count() or 1, files))
    jobs = [
        (root / "imagenet" / split / f"c{k}", n, seed)
        for k in range(procs)
        for split, n, seed in (("train", files // procs + (k < files % procs), k), ("val", 4, procs + k))
    ]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(write_folder, *zip(*jobs)))


def trained_rate(run_dir: Path) -> tuple[float, dict]:
    """Images/s of a finished run (both views counted): the median over its epochs after the first (log.csv; the
    first pays for warm-up), or train.json's over the whole run when it had one epoch; and train.json."""
    summary = runs.load_summary(run_dir)
    per_epoch = pd.read_csv(run_dir / runs.LOG)["images_per_s"]
    return float(per_epoch.iloc[1:].median() if len(per_epoch) > 1 else summary["images_per_s"]), summary


def stream_row(device: torch.device, name: str, sizes: Sizes, peak: float, kinds: dict, measured: Measured) -> Row:
    """Table 5's path through train.train itself with the imagenet sweep's config (fp32, as it trains): ResNet-50
    MoCo v2 streamed from a folder of JPEGs written here, decoded by ImageFiles' DataLoader workers: images/s (both
    views) of the epochs after the first, peak memory, MFU."""
    cfg = at_batch(kinds[STREAM], kinds[STREAM][0].batch_size, sizes)
    with tempfile.TemporaryDirectory(prefix="hypersphere-gpucheck-") as tmp:
        say(f"writing {sizes.stream_files} JPEGs")
        t0 = time.perf_counter()
        write_imagenet(Path(tmp), sizes.stream_files)
        written = time.perf_counter() - t0
        cfg = replace(
            cfg,
            data_dir=tmp,
            epochs=sizes.stream_epochs,
            device=device.type,
            runs_dir=str(Path(tmp) / "runs"),
            checkpoint_minutes=1000,
        )
        say("streamed MoCo through train()")
        with peak_memory(device) as memory:
            rate, summary = trained_rate(train.train(cfg))
    measured.add(STREAM, cfg.batch_size, cfg.bf16, 2 * cfg.batch_size / rate)
    return speed_row(
        f"{STREAM}: streamed through train(), {sizes.stream_files} JPEGs 500x375, B={cfg.batch_size}, "
        f"{recipe(cfg.augment or 'mocov2').crop_size} px, queue {cfg.queue}, fp32, {summary['steps']} "
        f"steps, {name}",
        rate,
        "image",
        measured.flops[STREAM] / 2,
        peak,
        f"epochs after the first (log.csv); whole run {fmt_rate(summary['images_per_s'], 'image')}; "
        f"{memory_note(memory['gib'])}; JPEGs written in {written:.1f} s",
        peak_gib=memory["gib"],
        steps=summary["steps"],
        run_images_per_s=summary["images_per_s"],
        flops_per_pair=measured.flops[STREAM],
    )


def bf16_accuracy_row(device: torch.device, name: str, sizes: Sizes) -> Row:
    """One digits-color config (scikit-learn's digits, painted: real labelled images that ship offline) trained with
    `bf16` off and on from the same seed, each evaluated by evaluate_run (lbfgs linear probe on fc7 and the output,
    no CV): both fc7 accuracies and their difference."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="hypersphere-gpucheck-") as tmp:
        for bf16 in (False, True):
            cfg = TrainConfig(
                dataset="digits-color",
                arch=sizes.digits_arch,
                augment=sizes.digits_augment,
                batch_size=sizes.digits_batch,
                epochs=sizes.digits_epochs,
                bf16=bf16,
                device=device.type,
                runs_dir=tmp,
                checkpoint_minutes=1000,
            )
            data = load_data(cfg)
            if sizes.digits_images:
                data = replace(data, encoder_images=data.encoder_images[: sizes.digits_images])
            say(f"digits-color {'bf16' if bf16 else 'fp32'}: train and evaluate")
            run_dir = train.train(cfg, data=data)
            results[bf16] = evaluate_run(run_dir, sizes.digits_eval, device.type, progress=False)["results"]
        steps = runs.load_summary(run_dir)["steps"]
    (fp32, bf16), (fp32_out, bf16_out) = (
        [results[b][f"val_{tap}_linear"] for b in (False, True)] for tap in ("fc7", "output")
    )
    return Row(
        "cuda",
        f"accuracy after {steps} steps, fp32 vs bf16 autocast: {sizes.digits_arch} on digits-color, "
        f"{data.augment.crop_size} px crops, B={sizes.digits_batch}, fc7 + lbfgs linear probe, {name}",
        f"{bf16:.2f}% (bf16)",
        f"{fp32:.2f}% (fp32)",
        note=(
            f"difference {bf16 - fp32:+.2f} points; output + linear {bf16_out:.2f}% (bf16) "
            f"vs {fp32_out:.2f}% (fp32)"
            + ("; CPU dry run: bf16 applies on CUDA only, both runs are fp32" if device.type != "cuda" else "")
        ),
        raw={
            "fp32_accuracy": fp32,
            "bf16_accuracy": bf16,
            "difference": bf16 - fp32,
            "steps": steps,
            "fp32": results[False],
            "bf16": results[True],
        },
    )


def ddp_row(device: torch.device) -> Row:
    """Two processes training one digits encoder for an epoch under torchrun, as `--executor torchrun` runs a sweep's
    runs: NCCL on two GPUs, or in the dry run gloo on the CPU (the same command with --device cpu). It held when
    torchrun exited 0 and the run's record is finished."""
    backend, case = ("NCCL", "2 GPUs") if device.type == "cuda" else ("gloo", "CPU dry run")
    label = f"2-process DDP training (torchrun, {backend}): digits, 1 epoch, B=128, {case}"
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return skipped(
            "cuda", label.replace(", 2 GPUs", ""), f"skipped: {torch.cuda.device_count()} GPU here, it needs 2"
        )
    say(label)
    with tempfile.TemporaryDirectory(prefix="hypersphere-gpucheck-") as tmp:
        cfg = TrainConfig(
            dataset="digits",
            epochs=1,
            batch_size=128,
            dim=32,
            device=device.type,
            runs_dir=tmp,
            checkpoint_minutes=1000,
        )
        # torch.distributed.run is torchrun; --standalone picks a free port (other jobs may hold torchrun's 29500)
        command = torchrun_command(cfg, 2)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp)
            code, tail = proc.returncode, (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            code, tail = None, ["timed out after 240 s"]
        seconds = time.perf_counter() - t0
        done = runs.train_status(cfg.run_dir(), train.TRAIN_VERSION) == "done"
        summary = runs.load_summary(cfg.run_dir()) if done else {}
    held = code == 0 and done
    return Row(
        "cuda",
        label,
        "held" if held else "failed",
        "-",
        met="yes" if held else "no",
        note=f"exit {code}, run {'finished' if done else 'not finished'}, {summary.get('steps', 0)} steps, "
        f"{seconds:.0f} s with start-up" + ("" if held else f"; {' '.join(tail)[:200]}"),
        raw={"exit_code": code, "finished": done, "seconds": seconds, "steps": summary.get("steps")},
    )


def projection_row(sweep: str, sweep_runs: list, measured: Measured, name: str) -> Row:
    """Projected GPU-hours (training only) and counted PFLOP of one paper sweep (costs.sweep_cost)."""
    configs = [run.config for run in sweep_runs]
    cost = costs.sweep_cost(configs, measured)
    datasets = sorted({cfg.dataset for cfg in configs})
    kinds = sorted({step_kind(cfg) for cfg in configs})
    return Row(
        "cuda",
        f"projected: paper sweep {sweep}, {len(configs)} runs on "
        f"{', '.join(f'{d} ({costs.PAPER_DATA[d]:,})' for d in datasets)}, training only",
        f"{cost.gpu_hours:,.1f} GPU-hours, {cost.pflop:,.1f} PFLOP counted",
        "-",
        note=f"at the measured steps of {', '.join(kinds)} on {name}"
        + (f"; batch-scaled: {', '.join(f'B={b} from B={m}' for b, m in sorted(cost.scaled))}" if cost.scaled else "")
        + "".join(
            f"; {d} taken as {costs.PAPER_DATA[d]:,} samples (an assumption)" for d in datasets if d in costs.ASSUMED
        ),
        raw={"gpu_hours": cost.gpu_hours, "pflop": cost.pflop, "runs": len(configs)},
    )


def encoder_row(kinds: dict, measured: Measured, name: str) -> Row:
    """One paper STL-10 encoder (200 epochs at B=768): GPU-hours in fp32, as the sweeps train, and in bf16."""
    cfg = next(c for c in kinds[SAN] if c.batch_size == SAN_BATCH)
    cfg = replace(cfg, epochs=200)
    fp32, bf16 = (costs.run_cost(replace(cfg, bf16=b), measured) for b in (False, True))
    return Row(
        "cuda",
        f"projected: one STL-10 encoder, 200 epochs at B={SAN_BATCH}, training only",
        f"{60 * fp32.gpu_hours:,.1f} min fp32, {60 * bf16.gpu_hours:,.1f} min bf16",
        "-",
        note=f"{fp32.pflop:.1f} PFLOP counted; on {name}",
        raw={"fp32_s": fp32.seconds, "bf16_s": bf16.seconds, "pflop": fp32.pflop},
    )


def _pack_worker(rank: int, cfg: TrainConfig, warmup: int, steps: int, barrier, out) -> None:
    """One packed process: the trainer's step for cfg on the GPU; warm up, wait for all, run `steps` steps, report
    (start, end, images)."""
    device = torch.device("cuda")
    step = TrainerStep(replace(cfg, seed=rank), data_for(cfg, device, None, 4, draw_batches(cfg)), device)
    for _ in range(warmup):
        step()
    _sync(device)
    barrier.wait(timeout=300)
    start = time.time()
    for _ in range(steps):
        step()
    _sync(device)
    out.put((start, time.time(), 2 * cfg.batch_size * steps))


def packed_images_per_s(processes: int, cfg: TrainConfig, warmup: int, steps: int) -> float:
    """Aggregate images/s of `processes` concurrent training processes (spawned: CUDA cannot fork).
    A failed process ends the measurement with RuntimeError instead of leaving the others waiting."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_pack_worker, args=(r, cfg, warmup, steps, barrier, out)) for r in range(processes)]
    for p in procs:
        p.start()
    reports = []
    try:
        while len(reports) < processes:
            try:
                reports.append(out.get(timeout=5))
            except queue.Empty:
                if failed := [p.exitcode for p in procs if p.exitcode not in (None, 0)]:
                    raise RuntimeError(f"a packed training process failed (exit codes {failed})") from None
    except BaseException:
        for p in procs:  # the others would wait at the barrier
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    return sum(r[2] for r in reports) / (max(r[1] for r in reports) - min(r[0] for r in reports))


def packing_row(sizes: Sizes, pack: int, kinds: dict) -> Row:
    """Aggregate images/s of `pack` processes each running the trainer's STL-10 B=256 step on the GPU at once, vs
    one alone (whole view drawings: B=256 draws 5 batches at a time)."""
    cfg = at_batch(kinds[SAN], 256, sizes)
    draw = draw_batches(cfg)
    warmup, steps = (draw * -(-n // draw) for n in (sizes.warmup, sizes.pack_steps))
    say(f"packing {pack} runs")
    alone = packed_images_per_s(1, cfg, warmup, steps)
    together = packed_images_per_s(pack, cfg, warmup, steps)
    return Row(
        "cuda",
        f"{pack} runs of the trainer's {SAN} B={cfg.batch_size} fp32 step packed on one GPU vs one alone",
        f"{fmt_rate(together, 'image')} together",
        f"{fmt_rate(alone, 'image')} alone",
        together / alone,
        note="ratio = aggregate packed throughput / a single run's",
        raw={"packed_images_per_s": together, "alone_images_per_s": alone, "processes": pack},
    )


# ---------------------------------------------------------------------------------------- the check


def run(quick: bool, pack: int = 4, compile: bool = True, dry_run: bool = False) -> list[Row]:
    global START
    START = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda and not dry_run:
        return [skipped("cuda", "every paper path on one GPU, the paper sweeps' cost, packing", "skipped: no CUDA")]
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU dry run (not a measurement)"
    sizes, measured = (QUICK if quick else FULL) if cuda else DRY, Measured()
    sweeps = paper_sweeps()
    kinds = paper_kinds(sweeps)
    text_data = sentences(sizes.pad_vocab)
    peak = achievable_tflops(device, sizes.matmul, sizes.matmul_repeats)
    rows = [
        Row(
            "cuda",
            f"bf16 matmul {sizes.matmul}^3, {name}",
            f"{peak:.0f} TFLOP/s",
            "-",
            note="achievable peak: the denominator of MFU",
            raw={"tflops": peak},
        )
    ]
    new, timings = kind_rows(device, name, sizes, peak, kinds, text_data, measured)
    rows += new
    rows += bf16_rows(device, name, sizes, peak, compile, kinds, timings, measured)
    rows += [view_drawing_row(device, name, sizes, kinds), resident_memory_row(device, sizes, kinds)]
    rows += [decoder_row(device, name, sizes, tap) for tap in ("conv5", "conv4")]
    rows.append(stream_row(device, name, sizes, peak, kinds, measured))
    rows.append(bf16_accuracy_row(device, name, sizes))
    rows.append(ddp_row(device))
    rows += [projection_row(sweep, sweep_runs, measured, name) for sweep, sweep_runs in sweeps.items()]
    rows.append(encoder_row(kinds, measured, name))
    rows.append(
        packing_row(sizes, pack, kinds)
        if cuda
        else skipped("cuda", "packing several runs on one GPU", "skipped: no CUDA")
    )
    say("done")
    return rows
