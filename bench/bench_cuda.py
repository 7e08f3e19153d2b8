"""Benchmark 5 (CUDA): the GPU check of the paper profile. Every paper path is measured on one GPU and the cost of
every paper sweep projected from those measurements. One prepared command: `make gpu-check`, i.e.
`python bench/run.py --cuda-only` (8 minutes or less on one H200). On a machine without CUDA,
`python bench/run.py --cuda-only --dry-run` runs every code path on the CPU at tiny sizes (its numbers are no
measurement) and skips what needs a GPU.

FLOPs are those of the models' forward + backward (augmentation excluded), counted with FlopCounterMode on one
step; MFU = achieved TFLOP/s / the card's achievable bf16 matmul TFLOP/s (also for fp32 rows). Peak memory is the
most GPU memory allocated during a measurement beyond what was allocated before it. The rows:

- the card's achievable bf16 matrix-multiply TFLOP/s (8192^3 matmuls), the denominator of MFU;
- STL-10 (Figs. 3-8, Table 1): images/s, TFLOP/s and MFU of SmallAlexNet's whole training step as train.py runs
  it (both views augmented on the GPU from 96 px uint8, channels_last, fp32 losses, SGD) in bf16 autocast, eager
  and torch.compile'd, at the paper's batch 768; augment() alone; the loss of one batch in fp32 and in bf16;
  peak memory with the whole STL-10 train+unlabeled set (105,000 x 3 x 96 x 96 uint8) resident; one paper
  encoder's projected wall time;
- SmallAlexNet in fp32, the precision the paper sweeps train in (they leave `bf16` off), at every batch size the
  STL-10, NYU-Depth-V2 and CIFAR-10 sweeps use (CIFAR-10: 32 px images and crops): the projections' seconds per step;
- NYU-Depth-V2 (Fig. 5b, Table 2): the encoder's step (as STL-10's, at the depth sweep's batch 128), and the depth
  decoder's training (depth.fit_decoder) on a frozen SmallAlexNet's conv5 and conv4 maps: images/s, peak memory;
- MoCo in memory (Fig. 9a, Table 3): ResNet-50 MoCo v2 steps through train.batch_loss (256 px uint8 on the GPU,
  224 px crops, queue 65,536, 3 L_align(2) + L_uniform(t=3), SGD) in fp32 and in bf16 autocast from the same
  weights and views: images/s, MFU, peak memory, and the mean loss of the same steps in both precisions;
- MoCo streamed (Table 5): train.train on a folder of 500 x 375 JPEGs written here (dataset "imagenet":
  ImageFiles decode them in DataLoader workers), ResNet-50, batch 256, queue 65,536, fp32 as the sweep trains:
  images/s of the epochs after the first (log.csv), peak memory, MFU;
- Quick-Thought (Fig. 9b, Table 4): train.train on the embedded sentence stand-in with the paper's encoder and
  optimiser (bi-GRUs over 620-d words, dim 1200, batches of 400 consecutive sentences, Adam 5e-4, clip 0.5):
  sentences/s, peak memory, MFU;
- fp32 vs bf16 accuracy: one digits-color config (real labelled images that ship offline) trained twice, with
  `bf16` off and on, each evaluated by evaluate_run (lbfgs linear probe): both accuracies and their difference;
- packing: K processes each training its own SmallAlexNet (batch 256) on the GPU at once, vs one alone;
- projected, per paper sweep (configs/profiles/paper.yaml's list, expanded and validated by sweep.load_sweep): the
  sum over its runs of epochs x steps per epoch x the measured seconds per step of the run's path (at the nearest
  measured batch, scaled linearly by batch), training only; and its counted PFLOP, epochs x samples x counted
  FLOPs per sample (device independent: the same in the CPU dry run).
"""
from __future__ import annotations

import contextlib
import gc
import os
import queue
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

from bench_stream import write_folder
from bench_train import synthetic_data
from hypersphere import profiles, runs
from hypersphere.augment import AugmentConfig, augment, recipe
from hypersphere.domains import IMAGE, TEXT
from hypersphere.domains.depth import DepthProbeConfig, feature_maps, fit_decoder
from hypersphere.domains.image import STL10_MEAN, STL10_STD
from hypersphere.evaluate import EvalConfig, evaluate_run
from hypersphere.losses import Objective
from hypersphere.models import SmallAlexNet
from hypersphere.moco import MoCo, resnet50_moco
from hypersphere.sweep import load_sweep, sweep_path
from hypersphere.train import TrainConfig, batch_loss, load_data, make_encoder, train
from timing import Row, fmt_rate, fmt_time, skipped

STL10_IMAGES, EPOCHS = 105_000, 200
OBJECTIVE = "align(alpha=2) + uniform(t=2)"
MOCO_OBJECTIVE = "3*align(alpha=2) + uniform(t=3)"  # Table 5's
# the measured paths, and the paper datasets each trains: (samples an epoch iterates over, path)
SAN64, SAN32, MOCO, STREAM, QT = ("SmallAlexNet 64 px", "SmallAlexNet 32 px", "ResNet-50 MoCo in memory",
                                  "ResNet-50 MoCo streamed", "Quick-Thought")
PAPER_DATA = {
    "stl10": (STL10_IMAGES, SAN64),  # train + unlabeled
    "nyu-depth-v2": (795, SAN64),  # the labeled train split (depth.load_nyu), 64 px crops as STL-10
    "cifar10": (50_000, SAN32),
    "imagenet100": (126_689, MOCO),  # CMC's 100 classes of ImageNet's train split (moco.build_imagenet100); Table 3's
    # linear head and MoCo v1 augmentation, measured with v2's MLP head and augmentation (FLOPs within 0.2%)
    "imagenet": (1_281_167, STREAM),  # ImageNet-1k's train split
    "bookcorpus": (74_004_228, QT),  # sentences: Zhu et al. 2015's count, an assumption (no longer distributed)
}


@dataclass(frozen=True)
class Sizes:
    """How large each measurement is: FULL (8 minutes or less on an H200), QUICK (--quick on a GPU), or DRY (the CPU
    dry run: every code path at tiny sizes, no measurement)."""
    batch: int                # SmallAlexNet on STL-10: the paper's 768
    warmup: int
    steps: int
    matmul: int               # side of the matmuls that measure the achievable TFLOP/s
    matmul_repeats: int
    sweep_batches: bool       # SmallAlexNet in fp32 at every batch size of the paper sweeps (else at `batch` only)
    sweep_steps: int
    depth_batch: int          # the NYU encoder's batch: the paper's 128
    decoder_train: int        # depth decoder: train and validation maps (NYU: 795 / 654)
    decoder_val: int
    decoder_epochs: int
    moco_batch: int           # MoCo in memory
    moco_side: int
    moco_crop: int
    moco_queue: int
    moco_steps: int
    stream_files: int         # MoCo streamed: JPEG files, epochs (the first is warm-up), batch, queue, augmentation
    stream_epochs: int
    stream_batch: int
    stream_queue: int
    stream_augment: object
    qt_sentences: int         # Quick-Thought: stand-in sentences trained on (0: all, ~18,800), batch, epochs
    qt_batch: int
    qt_epochs: int
    qt_count: int             # sentences its FLOPs are counted on
    digits_arch: str          # fp32 vs bf16 accuracy: arch, augmentation, encoder images (0: all 1,347), batch, epochs
    digits_augment: object
    digits_images: int
    digits_batch: int
    digits_epochs: int


FULL = Sizes(batch=768, warmup=5, steps=20, matmul=8192, matmul_repeats=50, sweep_batches=True, sweep_steps=8,
             depth_batch=128, decoder_train=795, decoder_val=654, decoder_epochs=30,
             moco_batch=256, moco_side=256, moco_crop=224, moco_queue=65536, moco_steps=10,
             stream_files=8192, stream_epochs=6, stream_batch=256, stream_queue=65536, stream_augment="",
             qt_sentences=0, qt_batch=400, qt_epochs=2, qt_count=32,
             digits_arch="smallalexnet", digits_augment={"recipe": "digits-color", "crop_size": 64}, digits_images=0,
             digits_batch=128, digits_epochs=10)
QUICK = replace(FULL, batch=256, warmup=2, steps=3, sweep_steps=3, decoder_epochs=5, moco_batch=128, moco_steps=3,
                stream_files=2048, stream_epochs=3, qt_epochs=1, digits_epochs=4)
DRY = Sizes(batch=8, warmup=1, steps=1, matmul=256, matmul_repeats=2, sweep_batches=False, sweep_steps=1,
            depth_batch=8, decoder_train=16, decoder_val=8, decoder_epochs=1,
            moco_batch=4, moco_side=40, moco_crop=32, moco_queue=16, moco_steps=1,
            stream_files=16, stream_epochs=2, stream_batch=4, stream_queue=16,
            stream_augment={"recipe": "mocov2", "crop_size": 32},
            qt_sentences=48, qt_batch=8, qt_epochs=2, qt_count=8,
            digits_arch="digitsnet", digits_augment="", digits_images=32, digits_batch=8, digits_epochs=1)


@dataclass
class Measured:
    """What the projections use: seconds per step of each path at each measured batch and precision, and the counted
    forward + backward FLOPs per sample (a positive pair, or a sentence) of each path."""
    seconds: dict = field(default_factory=dict)  # (path, bf16) -> {batch: seconds per step}
    flops: dict = field(default_factory=dict)    # path -> FLOPs per sample

    def add(self, path: str, batch: int, bf16: bool, seconds: float) -> None:
        self.seconds.setdefault((path, bf16), {})[batch] = seconds

    def has(self, path: str, batch: int, bf16: bool) -> bool:
        return batch in self.seconds.get((path, bf16), {})

    def seconds_per_step(self, path: str, batch: int, bf16: bool) -> tuple[float, int]:
        """Seconds per step at `batch`, from the nearest measured batch scaled linearly; and that batch. A precision
        never measured on this path falls back to the other one."""
        table = self.seconds.get((path, bf16)) or self.seconds[(path, not bf16)]
        near = min(table, key=lambda b: abs(b - batch) / b)
        return table[near] * batch / near, near


def say(message: str) -> None:
    print(f"[cuda] {message}", flush=True)


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
    memory["gib"] = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 30


def memory_note(gib: float | None) -> str:
    return f"peak memory {gib:.1f} GiB" if gib is not None else "peak memory needs CUDA"


def speed_row(case: str, per_s: float, unit: str, flops_per_item: float, peak: float, note: str, **raw) -> Row:
    """A throughput row: `per_s` items (views, images, sentences) a second, TFLOP/s at `flops_per_item`, MFU."""
    tflops = per_s * flops_per_item / 1e12
    return Row("cuda", case, f"{fmt_rate(per_s, unit)}, {tflops:.1f} TFLOP/s, MFU {tflops / peak:.0%}", "-", note=note,
               raw={f"{unit}s_per_s": per_s, "tflops": tflops, "mfu": tflops / peak, **raw})


class Trainer:
    """train.py's inner step for SmallAlexNet on `device`, on synthetic uint8 `side` px images kept there, with the
    augmentation `aug` (STL-10's by default), in bf16 autocast or fp32.

    Augmentation runs outside autocast (under bf16 autocast augment's matmuls would be cast to bf16)."""

    def __init__(self, batch: int, device: torch.device, compile: bool = False, seed: int = 0, side: int = 96,
                 aug: AugmentConfig = AugmentConfig(), bf16: bool = True):
        torch.manual_seed(seed)
        self.batch, self.device, self.bf16 = batch, device, bf16
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.images = torch.randint(0, 256, (4 * batch, 3, side, side), dtype=torch.uint8, device=device,
                                    generator=self.gen)
        self.model = SmallAlexNet(input_size=aug.crop_size).to(device, memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.12 * batch / 256, momentum=0.9, weight_decay=1e-4)
        self.objective = Objective.parse(OBJECTIVE)
        self.cfg = aug

    def views(self) -> torch.Tensor:
        idx = torch.randint(len(self.images), (self.batch,), device=self.device, generator=self.gen)
        both = torch.cat([augment(self.images[idx], self.cfg, STL10_MEAN, STL10_STD, self.gen) for _ in range(2)])
        return both.contiguous(memory_format=torch.channels_last)

    def model_step(self, both: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            zx, zy = self.forward(both).float().chunk(2)
            loss, _ = self.objective(zx, zy)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def step(self) -> None:
        self.model_step(self.views())

    def sync(self) -> None:
        _sync(self.device)

    def seconds_per_step(self, steps: int, warmup: int) -> float:
        for _ in range(warmup):
            self.step()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return (time.perf_counter() - t0) / steps

    def flops_per_step(self) -> int:
        """Forward + backward FLOPs of the model on one batch of 2 x batch views (the optimiser's are negligible)."""
        both = self.views()
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                zx, zy = self.model(both).float().chunk(2)
                loss, _ = self.objective(zx, zy)
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def _pack_worker(rank: int, batch: int, warmup: int, steps: int, device: str, barrier, out) -> None:
    """One packed process: warm up, wait for all, train `steps` steps, report (start, end, images)."""
    if device == "cpu":
        torch.set_num_threads(1)
    trainer = Trainer(batch, torch.device(device), seed=rank)
    for _ in range(warmup):
        trainer.step()
    trainer.sync()
    barrier.wait(timeout=300)
    start = time.time()
    for _ in range(steps):
        trainer.step()
    trainer.sync()
    out.put((start, time.time(), 2 * batch * steps))


def packed_images_per_s(processes: int, batch: int, warmup: int, steps: int, device: str = "cuda") -> float:
    """Aggregate images/s of `processes` concurrent training processes (spawned: CUDA cannot fork).
    A failed process ends the measurement with RuntimeError instead of leaving the others waiting."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_pack_worker, args=(r, batch, warmup, steps, device, barrier, out))
             for r in range(processes)]
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
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12


def augment_images_per_s(device: torch.device, batch: int, steps: int) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 96, 96), dtype=torch.uint8, device=device, generator=gen)
    augment(images, AugmentConfig(), STL10_MEAN, STL10_STD, gen)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        augment(images, AugmentConfig(), STL10_MEAN, STL10_STD, gen)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def bf16_loss_gap(device: torch.device, batch: int) -> tuple[float, float]:
    """The objective on one batch in fp32 and under bf16 autocast, same weights and views."""
    trainer = Trainer(batch, device)
    both = trainer.views()
    with torch.no_grad():
        fp32, _ = trainer.objective(*trainer.model(both).float().chunk(2))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16, _ = trainer.objective(*trainer.model(both).float().chunk(2))
    return fp32.item(), bf16.item()


# ---------------------------------------------------------------------------------------- STL-10 SmallAlexNet

def stl10_rows(device: torch.device, name: str, sizes: Sizes, peak: float, compile: bool,
               measured: Measured) -> list[Row]:
    """SmallAlexNet's bf16 step at the paper's batch (eager, and compiled on CUDA), augment() alone, the loss gap,
    peak memory with STL-10 resident and one encoder's projected time (at the fastest variant)."""
    batch, cuda, rows, best = sizes.batch, device.type == "cuda", [], None
    for compiled in ((False, True) if compile and cuda else (False,)):
        variant = "compiled" if compiled else "eager"
        case = f"SmallAlexNet B={batch} pairs, bf16 autocast, channels_last, {variant}, {name}"
        say(case)
        try:
            t0 = time.perf_counter()
            trainer = Trainer(batch, device, compile=compiled)
            trainer.step()  # compiles here when compiled
            trainer.sync()
            setup = time.perf_counter() - t0
            sec = trainer.seconds_per_step(sizes.steps, sizes.warmup)
            flops = trainer.flops_per_step()
        except Exception as e:  # torch.compile can fail on some setups; eager must not
            if not compiled:
                raise
            rows.append(skipped("cuda", case, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"))
            continue
        if not compiled:  # train.py runs eager: what the projections use
            measured.add(SAN64, batch, True, sec)
            measured.flops[SAN64] = flops / batch
        rows.append(speed_row(case, 2 * batch / sec, "image", flops / (2 * batch), peak,
                              f"{fmt_time(sec)} per step (augment + fwd + bwd + SGD), {flops / 1e12:.2f} TFLOP counted "
                              f"per step (fwd+bwd); first step incl. setup/compile {setup:.1f} s",
                              seconds_per_step=sec, flops_per_step=flops, first_step_s=setup))
        if best is None or sec < best[0]:
            best = (sec, variant)
        del trainer
        if cuda:
            torch.cuda.empty_cache()
    aug = augment_images_per_s(device, batch, sizes.steps)
    rows.append(Row("cuda", f"augment() alone, 96 px uint8 -> 64 px, B={batch}, {name}", fmt_rate(aug, "image"), "-",
                    raw={"images_per_s": aug}))
    fp32, bf16 = bf16_loss_gap(device, batch)
    rows.append(Row("cuda", f"loss of one batch, fp32 vs bf16 autocast, B={batch}", f"{bf16:.5f} (bf16)", f"{fp32:.5f} (fp32)",
                    note=f"relative difference {abs(bf16 - fp32) / abs(fp32):.1e}", raw={"fp32": fp32, "bf16": bf16}))
    rows.append(resident_memory_row(device, batch))
    sec, variant = best
    one = (STL10_IMAGES // batch) * EPOCHS * sec
    rows.append(Row("cuda", f"projected: one STL-10 encoder ({STL10_IMAGES // batch} steps x {EPOCHS} epochs, B={batch}, "
                            f"bf16 {variant})", f"{one / 60:.1f} min", "-",
                    note="training only; the paper sweeps train in fp32 eager: their rows below" +
                         ("; CPU dry run" if not cuda else ""), raw={"projected_s": one}))
    return rows


def resident_memory_row(device: torch.device, batch: int) -> Row:
    """Peak memory of a training step with the whole STL-10 train+unlabeled set resident on the GPU."""
    if device.type != "cuda":
        return skipped("cuda", "peak memory with STL-10 resident on the GPU", "skipped: no CUDA")
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.empty((STL10_IMAGES, 3, 96, 96), dtype=torch.uint8, device=device)
    Trainer(batch, device).step()
    peak_gib = torch.cuda.max_memory_allocated(device) / 2 ** 30
    del resident
    torch.cuda.empty_cache()
    return Row("cuda", f"peak memory: STL-10 resident (2.7 GiB uint8) + a B={batch} training step",
               f"{peak_gib:.1f} GiB", "-", raw={"peak_gib": peak_gib})


# ---------------------------------------------------------------------------------------- fp32 at the sweeps' batches

def fp32_rows(device: torch.device, name: str, sizes: Sizes, peak: float, sweeps: dict, measured: Measured) -> list[Row]:
    """SmallAlexNet's step as the paper sweeps run it (eager, in the precision each run sets: fp32) at every batch
    size their STL-10 / NYU-Depth-V2 runs (96 px -> 64 px) and CIFAR-10 runs (32 px -> 32 px) use; in the dry run at
    `sizes.batch` only. One row per path, the seconds per step of every batch in its note."""
    rows = []
    for path, side, aug in ((SAN64, 96, AugmentConfig()), (SAN32, 32, recipe("cifar10"))):
        wanted = sorted({(run.config.batch_size if sizes.sweep_batches else sizes.batch, run.config.bf16)
                         for sweep_runs in sweeps.values() for run in sweep_runs if PAPER_DATA[run.config.dataset][1] == path})
        if path == SAN64:
            wanted.append((sizes.depth_batch, False))  # the depth rows read it
        for batch, bf16 in wanted:
            if measured.has(path, batch, bf16):
                continue
            say(f"{path} B={batch} {'bf16' if bf16 else 'fp32'}")
            trainer = Trainer(batch, device, side=side, aug=aug, bf16=bf16)
            measured.add(path, batch, bf16, trainer.seconds_per_step(sizes.sweep_steps, sizes.warmup))
            if path not in measured.flops:
                measured.flops[path] = trainer.flops_per_step() / batch
            del trainer
        table = measured.seconds[(path, False)]
        top = max(table)
        rows.append(speed_row(f"{path} fp32 eager (as the paper sweeps train) at B={top} pairs, {side} px images, {name}",
                              2 * top / table[top], "image", measured.flops[path] / 2, peak,
                              "ms per step at each batch: " + ", ".join(f"{b}: {1e3 * s:.1f}" for b, s in sorted(table.items())),
                              seconds_per_step={str(b): s for b, s in table.items()}))
    return rows


# ---------------------------------------------------------------------------------------- NYU depth

def depth_rows(device: torch.device, name: str, sizes: Sizes, peak: float, measured: Measured) -> list[Row]:
    """The NYU encoder's step (SmallAlexNet on 64 px crops, as STL-10's, at the depth sweep's batch; measured by
    fp32_rows) and the depth decoder's training on each tap."""
    batch, sec = sizes.depth_batch, measured.seconds[(SAN64, False)][sizes.depth_batch]
    rows = [speed_row(f"NYU-Depth-V2 encoder: SmallAlexNet B={batch} pairs, 64 px crops, fp32 eager, {name}",
                      2 * batch / sec, "image", measured.flops[SAN64] / 2, peak,
                      f"{fmt_time(sec)} per step; trains as STL-10's (Table 8: batch 128, 400 epochs)",
                      seconds_per_step=sec)]
    return rows + [decoder_row(device, name, sizes, tap) for tap in ("conv5", "conv4")]


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
    return Row("cuda", f"NYU depth decoder training on {tap} maps {tuple(maps.shape[1:])}, {n} maps x {epochs} epochs, "
                       f"batch 128, {name}", fmt_rate(rate, "image"), "-",
               note=f"{memory_note(memory['gib'])} (maps resident besides)",
               raw={"images_per_s": rate, "seconds": seconds, "peak_gib": memory["gib"]})


# ---------------------------------------------------------------------------------------- MoCo

def moco_step(device: torch.device, batch: int, side: int, crop: int, queue_size: int, bf16: bool):
    """train.py's MoCo v2 step through train.batch_loss (ResNet-50 with MoCo v2's head, an EMA key encoder, a queue,
    3 L_align(2) + L_uniform(t=3), SGD) on synthetic uint8 `side` px images on `device`, seeded: the same weights
    and views in both precisions. Returns step(counter) -> the step's loss; the model's part of the step runs
    inside `counter` (a FlopCounterMode, or nothing)."""
    data = synthetic_data(2 * batch, 3, side, replace(recipe("mocov2"), crop_size=crop)).to(device)
    torch.manual_seed(0)
    encoder = resnet50_moco(128, mlp=True).to(device, memory_format=torch.channels_last)
    moco = MoCo(encoder, queue_size, 0.999).to(device).train()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.03 * batch / 256, momentum=0.9, weight_decay=1e-4)
    objective, gen = Objective.parse(MOCO_OBJECTIVE), torch.Generator(device=device).manual_seed(0)

    def step(counter=contextlib.nullcontext()) -> torch.Tensor:
        idx = torch.randint(len(data.encoder_images), (batch,), device=device, generator=gen)
        x = [IMAGE.views(data, data.encoder_images[idx], gen) for _ in range(objective.views)]
        with counter:
            loss, _ = batch_loss(encoder, None, objective, x, None, moco, bf16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        return loss.detach()

    return step


def moco_flops_per_pair(device: torch.device) -> float:
    """FLOPs of one MoCo step per positive pair at 224 px crops (query encoder fwd + bwd, key encoder fwd, the
    queue's products), counted at batch 2: linear in the batch, device independent."""
    counter = FlopCounterMode(display=False)
    moco_step(device, 2, 256, 224, 65536, bf16=False)(counter)
    return counter.get_total_flops() / 2


def timed_steps(step, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step of `step` after `warmup` steps, and the mean loss of the timed steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    _sync(device)
    return (time.perf_counter() - t0) / steps, torch.stack(losses).mean().item()


def moco_rows(device: torch.device, name: str, sizes: Sizes, peak: float, measured: Measured) -> list[Row]:
    """ResNet-50 MoCo v2 steps in memory in fp32 (as the paper sweeps train) and in bf16 autocast from the same
    weights and views: images/s (both views), MFU and peak memory of each, and the mean loss of the same steps."""
    batch, crop, queue_size = sizes.moco_batch, sizes.moco_crop, sizes.moco_queue
    say("MoCo FLOPs per pair at 224 px")
    measured.flops[MOCO] = measured.flops[STREAM] = flops = moco_flops_per_pair(device)
    rows, losses = [], {}
    for bf16 in (False, True):
        precision = "bf16 autocast" if bf16 else "fp32"
        case = f"ResNet-50 MoCo v2 step B={batch} pairs, {crop} px, queue {queue_size}, {precision}, {name}"
        say(case)
        with peak_memory(device) as memory:
            step = moco_step(device, batch, sizes.moco_side, crop, queue_size, bf16)
            sec, losses[bf16] = timed_steps(step, sizes.warmup, sizes.moco_steps, device)
            del step
        measured.add(MOCO, batch, bf16, sec)
        rows.append(speed_row(case, 2 * batch / sec, "image", flops / 2, peak,
                              f"{fmt_time(sec)} per step (augment + query and key forward + bwd + SGD); "
                              f"{memory_note(memory['gib'])}; {flops / 1e9:.1f} GFLOP counted per pair at 224 px",
                              seconds_per_step=sec, peak_gib=memory["gib"], flops_per_pair=flops))
    n = sizes.warmup + sizes.moco_steps
    gap = abs(losses[True] - losses[False]) / abs(losses[False])
    rows.append(Row("cuda", f"MoCo loss after {n} steps from the same weights and views, fp32 vs bf16 autocast, B={batch}",
                    f"{losses[True]:.4f} (bf16)", f"{losses[False]:.4f} (fp32)",
                    note=f"mean of the last {sizes.moco_steps} steps; relative difference {gap:.1e}" +
                         ("; CPU dry run: bf16 applies on CUDA only" if device.type != "cuda" else ""),
                    raw={"fp32": losses[False], "bf16": losses[True], "steps": n}))
    return rows


def write_imagenet(root: Path, files: int) -> None:
    """root/imagenet/{train,val}/c<k>/: `files` training JPEGs of 500 x 375 in all and 4 validation ones per class
    (bench_stream.write_folder), one class per process, written in parallel."""
    procs = max(1, min(16, os.cpu_count() or 1))
    jobs = [(root / "imagenet" / split / f"c{k}", n, seed) for k in range(procs)
            for split, n, seed in (("train", files // procs, k), ("val", 4, procs + k))]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(write_folder, *zip(*jobs)))


def trained_rate(run_dir: Path) -> tuple[float, dict]:
    """Images/s of a finished run (both views counted): the median over its epochs after the first (log.csv; the
    first pays for warm-up), or train.json's over the whole run when it had one epoch; and train.json."""
    summary = runs.load_summary(run_dir)
    per_epoch = pd.read_csv(run_dir / runs.LOG)["images_per_s"]
    return float(per_epoch.iloc[1:].median() if len(per_epoch) > 1 else summary["images_per_s"]), summary


def stream_moco_row(device: torch.device, name: str, sizes: Sizes, peak: float, measured: Measured) -> Row:
    """Table 5's path through the real trainer: ResNet-50 MoCo v2 streamed from a folder of JPEGs written here,
    decoded by ImageFiles' DataLoader workers, fp32 as the imagenet sweep trains: images/s (both views) of the
    epochs after the first, peak memory, MFU."""
    batch = sizes.stream_batch
    with tempfile.TemporaryDirectory(prefix="hypersphere-gpucheck-") as tmp:
        say(f"writing {sizes.stream_files} JPEGs")
        t0 = time.perf_counter()
        write_imagenet(Path(tmp), sizes.stream_files)
        written = time.perf_counter() - t0
        cfg = TrainConfig(dataset="imagenet", data_dir=tmp, arch="resnet50-mlp", batch_size=batch,
                          queue=sizes.stream_queue, ema=0.999, lr=0.03, cosine=True, epochs=sizes.stream_epochs,
                          objective=MOCO_OBJECTIVE, augment=sizes.stream_augment, device=device.type,
                          runs_dir=str(Path(tmp) / "runs"), checkpoint_minutes=1000)
        say("streamed MoCo through train()")
        with peak_memory(device) as memory:
            rate, summary = trained_rate(train(cfg))
    measured.add(STREAM, batch, cfg.bf16, 2 * batch / rate)
    crop = recipe(sizes.stream_augment or "mocov2").crop_size
    return speed_row(f"ResNet-50 MoCo v2 streamed through train(): {sizes.stream_files} JPEGs 500x375, B={batch} pairs, "
                     f"{crop} px, queue {sizes.stream_queue}, fp32, {summary['steps']} steps, {name}",
                     rate, "image", measured.flops[STREAM] / 2, peak,
                     f"epochs after the first (log.csv); whole run {fmt_rate(summary['images_per_s'], 'image')}; "
                     f"{memory_note(memory['gib'])}; JPEGs written in {written:.1f} s",
                     peak_gib=memory["gib"], steps=summary["steps"], run_images_per_s=summary["images_per_s"])


# ---------------------------------------------------------------------------------------- Quick-Thought

def qt_flops_per_sentence(cfg: TrainConfig, data, count: int) -> float:
    """Forward + backward FLOPs per sentence of the Quick-Thought step (text.batch_loss: f and g encode a window of
    consecutive sentences), counted on the CPU on `count` sentences from the middle of the stream: FlopCounterMode
    sees the GRUs' matrix products there, while cuDNN's fused RNN is one op it does not count."""
    model = make_encoder(cfg, data)
    idx = torch.arange(count) + (len(data) - count) // 2
    with FlopCounterMode(display=False) as counter:
        loss, _ = TEXT.batch_loss(model, Objective.parse(cfg.objective), data, idx)
        loss.backward()
    return counter.get_total_flops() / count


def quick_thought_row(device: torch.device, name: str, sizes: Sizes, peak: float, measured: Measured) -> Row:
    """Fig. 9b's path through the real trainer on the embedded sentence stand-in, with the paper's encoder and
    optimiser (configs/sweeps/paper/sentences.yaml): sentences/s, peak memory and MFU."""
    cfg = TrainConfig(dataset="standin", arch="qt", dim=1200, optimizer="adam", lr=5e-4, clip_grad=0.5,
                      weight_decay=0, lr_decay_at=(), batch_size=sizes.qt_batch, epochs=sizes.qt_epochs,
                      objective=OBJECTIVE, device=device.type, checkpoint_minutes=1000)
    data = load_data(cfg)
    if sizes.qt_sentences:
        data = replace(data, ids=data.ids[:sizes.qt_sentences], doc=data.doc[:sizes.qt_sentences])
    say("Quick-Thought FLOPs per sentence (CPU)")
    measured.flops[QT] = flops = qt_flops_per_sentence(cfg, data, sizes.qt_count)
    with tempfile.TemporaryDirectory(prefix="hypersphere-gpucheck-") as tmp:
        say("Quick-Thought through train()")
        with peak_memory(device) as memory:
            rate, summary = trained_rate(train(replace(cfg, runs_dir=tmp), data=data))
    sentences = rate / Objective.parse(cfg.objective).views  # f and g each encode every sentence once
    measured.add(QT, cfg.batch_size, cfg.bf16, cfg.batch_size / sentences)
    return speed_row(f"Quick-Thought through train(): bi-GRUs, 620-d words, dim 1200, B={cfg.batch_size} sentences, "
                     f"Adam, {len(data)} stand-in sentences x {cfg.epochs} epochs, {name}", sentences, "sentence",
                     flops, peak, f"{memory_note(memory['gib'])}; {flops / 1e9:.2f} GFLOP per sentence counted on the "
                                  f"CPU (stand-in sentences: {sum(map(len, data.ids)) / len(data):.1f} words on average)",
                     peak_gib=memory["gib"], steps=summary["steps"])


# ---------------------------------------------------------------------------------------- fp32 vs bf16 accuracy

def bf16_accuracy_row(device: torch.device, name: str, sizes: Sizes) -> Row:
    """One digits-color config (scikit-learn's digits, painted: real labelled images that ship offline) trained with
    `bf16` off and on from the same seed, each evaluated by evaluate_run (lbfgs linear probe on fc7 and the output,
    no CV): both fc7 accuracies and their difference."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="hypersphere-gpucheck-") as tmp:
        for bf16 in (False, True):
            cfg = TrainConfig(dataset="digits-color", arch=sizes.digits_arch, augment=sizes.digits_augment,
                              batch_size=sizes.digits_batch, epochs=sizes.digits_epochs, bf16=bf16, objective=OBJECTIVE,
                              device=device.type, runs_dir=tmp, checkpoint_minutes=1000)
            data = load_data(cfg)
            if sizes.digits_images:
                data = replace(data, encoder_images=data.encoder_images[:sizes.digits_images])
            say(f"digits-color {'bf16' if bf16 else 'fp32'}: train and evaluate")
            run_dir = train(cfg, data=data)
            results[bf16] = evaluate_run(run_dir, EvalConfig(probe="lbfgs", cv_folds=0), device.type, progress=False)["results"]
        steps = runs.load_summary(run_dir)["steps"]
    (fp32, bf16), (fp32_out, bf16_out) = ([results[b][f"val_{tap}_linear"] for b in (False, True)] for tap in ("fc7", "output"))
    return Row("cuda", f"accuracy after {steps} steps, fp32 vs bf16 autocast: {sizes.digits_arch} on digits-color, "
                       f"{data.augment.crop_size} px crops, B={sizes.digits_batch}, fc7 + lbfgs linear probe, {name}",
               f"{bf16:.2f}% (bf16)", f"{fp32:.2f}% (fp32)",
               note=f"difference {bf16 - fp32:+.2f} points; output + linear {bf16_out:.2f}% (bf16) vs {fp32_out:.2f}% (fp32)" +
                    ("; CPU dry run: bf16 applies on CUDA only, both runs are fp32" if device.type != "cuda" else ""),
               raw={"fp32_accuracy": fp32, "bf16_accuracy": bf16, "difference": bf16 - fp32, "steps": steps,
                    "fp32": results[False], "bf16": results[True]})


# ---------------------------------------------------------------------------------------- projections

def paper_sweeps() -> dict[str, list]:
    """Every sweep of the paper profile, in its order, expanded and validated by sweep.load_sweep; checked before any
    measurement to train only datasets whose size and measured path PAPER_DATA knows."""
    sweeps = {sweep: load_sweep(sweep_path(sweep, "paper"), {"device": "cpu"}) for sweep in profiles.load("paper").sweeps}
    if unknown := {run.config.dataset for sweep_runs in sweeps.values() for run in sweep_runs} - set(PAPER_DATA):
        raise ValueError(f"paper sweeps train on {sorted(unknown)}: add their sizes and paths to bench_cuda.PAPER_DATA")
    return sweeps


def projection_row(sweep: str, sweep_runs: list, measured: Measured, name: str) -> Row:
    """Projected GPU-hours (training only) of one paper sweep: the sum over its runs of epochs x steps per epoch x
    the measured seconds per step of the run's path at its batch (the nearest measured batch, scaled linearly); and
    its counted PFLOP: epochs x samples per epoch x counted FLOPs per sample of the path."""
    seconds = flop = 0.0
    scaled, paths = set(), set()
    for run in sweep_runs:
        cfg = run.config
        n, path = PAPER_DATA[cfg.dataset]
        per_epoch = n // cfg.batch_size if cfg.drop_last else -(-n // cfg.batch_size)
        sec, near = measured.seconds_per_step(path, cfg.batch_size, cfg.bf16)
        seconds += cfg.epochs * per_epoch * sec
        flop += cfg.epochs * min(n, per_epoch * cfg.batch_size) * measured.flops[path]
        paths.add(path)
        if near != cfg.batch_size:
            scaled.add((cfg.batch_size, near))
    datasets = ", ".join(sorted({f"{r.config.dataset} ({PAPER_DATA[r.config.dataset][0]:,})" for r in sweep_runs}))
    return Row("cuda", f"projected: paper sweep {sweep}, {len(sweep_runs)} runs on {datasets}, training only",
               f"{seconds / 3600:,.1f} GPU-hours, {flop / 1e15:,.1f} PFLOP counted", "-",
               note=f"at the measured steps of {', '.join(sorted(paths))} on {name}" +
                    (f"; batch-scaled: {', '.join(f'B={b} from B={m}' for b, m in sorted(scaled))}" if scaled else "") +
                    ("; BookCorpus taken as 74,004,228 sentences (an assumption)" if QT in paths else ""),
               raw={"gpu_hours": seconds / 3600, "pflop": flop / 1e15, "runs": len(sweep_runs)})


def packing_row(sizes: Sizes, pack: int) -> Row:
    """Aggregate images/s of `pack` SmallAlexNet B=256 runs, each in its own process, on the GPU at once, vs one alone."""
    small_batch, pack_steps = 256, (5 if sizes is QUICK else 30)
    say(f"packing {pack} runs")
    alone = packed_images_per_s(1, small_batch, sizes.warmup, pack_steps)
    together = packed_images_per_s(pack, small_batch, sizes.warmup, pack_steps)
    return Row("cuda", f"{pack} SmallAlexNet B={small_batch} runs packed on one GPU vs one alone (eager)",
               f"{fmt_rate(together, 'image')} together", f"{fmt_rate(alone, 'image')} alone",
               together / alone, note="ratio = aggregate packed throughput / a single run's",
               raw={"packed_images_per_s": together, "alone_images_per_s": alone, "processes": pack})

# ---------------------------------------------------------------------------------------- the check

def run(quick: bool, pack: int = 4, compile: bool = True, dry_run: bool = False) -> list[Row]:
    cuda = torch.cuda.is_available()
    if not cuda and not dry_run:
        return [skipped("cuda", "every paper path on one GPU, the paper sweeps' cost, packing", "skipped: no CUDA")]
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU dry run (not a measurement)"
    sizes, measured = (QUICK if quick else FULL) if cuda else DRY, Measured()
    sweeps = paper_sweeps()
    peak = achievable_tflops(device, sizes.matmul, sizes.matmul_repeats)
    rows = [Row("cuda", f"bf16 matmul {sizes.matmul}^3, {name}", f"{peak:.0f} TFLOP/s", "-",
                note="achievable peak: the denominator of MFU", raw={"tflops": peak})]
    rows += stl10_rows(device, name, sizes, peak, compile, measured)
    rows += fp32_rows(device, name, sizes, peak, sweeps, measured)
    rows += depth_rows(device, name, sizes, peak, measured)
    rows += moco_rows(device, name, sizes, peak, measured)
    rows.append(stream_moco_row(device, name, sizes, peak, measured))
    rows.append(quick_thought_row(device, name, sizes, peak, measured))
    rows.append(bf16_accuracy_row(device, name, sizes))
    rows += [projection_row(sweep, sweep_runs, measured, name) for sweep, sweep_runs in sweeps.items()]
    rows.append(packing_row(sizes, pack) if cuda else skipped("cuda", "packing several runs on one GPU", "skipped: no CUDA"))
    return rows
