"""Benchmark 5 (CUDA): SmallAlexNet training at the paper's batch 768 on one GPU, the GPU check for the paper
profile. One prepared command: `python bench/run.py --cuda-only` (a few minutes on an H200); on a machine
without CUDA, `python bench/run.py --cuda-only --dry-run` runs every code path on the CPU at tiny sizes (its
numbers are no measurement) and skips what needs a GPU.

- the card's achievable bf16 matrix-multiply TFLOP/s (8192^3 matmuls), the reference for MFU;
- images/s and TFLOP/s of the whole training step as train.py runs it (both views augmented on the GPU from
  uint8, encoder in bf16 autocast with channels_last, fp32 losses, SGD), eager and torch.compile'd; MFU =
  achieved / achievable; FLOPs of forward + backward counted with FlopCounterMode on one step;
- GPU augmentation alone: images/s of augment() on 96 px uint8 batches;
- bf16 against fp32: the loss of one batch with the same weights, relative difference;
- peak memory with the whole STL-10 train+unlabeled set (105,000 x 3 x 96 x 96 uint8) resident on the GPU;
- projected wall time of one paper encoder and of the whole STL-10 cloud (data/reference/stl10_encoders.csv:
  every row's epochs x floor(105,000 / batch) steps, at the measured images/s, training only);
- packing: K processes each training its own SmallAlexNet (batch 256) on the GPU at once, vs one alone;
- MoCo (Fig. 9a, Tables 3 and 5): one ResNet-50 MoCo v2 training step as train.py runs it (256 px uint8 images on
  the GPU, MoCo v2 augmentation to 224 px, query encoder and EMA key encoder in bf16 autocast, a queue of 65,536,
  3 L_align(2) + L_uniform(t=3) against the queue, SGD): images/s and peak memory.
"""
from __future__ import annotations

import queue
import time

import torch
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

from hypersphere.augment import AugmentConfig, augment
from hypersphere.domains.image import STL10_MEAN, STL10_STD
from hypersphere.losses import Objective
from hypersphere.models import SmallAlexNet
from timing import Row, fmt_rate, fmt_time, skipped

STL10_IMAGES, EPOCHS = 105_000, 200
OBJECTIVE = "align(alpha=2) + uniform(t=2)"


class Trainer:
    """train.py's inner step for SmallAlexNet on `device`, on synthetic uint8 96 px images kept there.

    Augmentation runs outside autocast (under bf16 autocast augment's matmuls would be cast to bf16)."""

    def __init__(self, batch: int, device: torch.device, compile: bool = False, seed: int = 0):
        torch.manual_seed(seed)
        self.batch, self.device = batch, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.images = torch.randint(0, 256, (4 * batch, 3, 96, 96), dtype=torch.uint8, device=device,
                                    generator=self.gen)
        self.model = SmallAlexNet().to(device, memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.12 * batch / 256, momentum=0.9, weight_decay=1e-4)
        self.objective = Objective.parse(OBJECTIVE)
        self.cfg = AugmentConfig()

    def views(self) -> torch.Tensor:
        idx = torch.randint(len(self.images), (self.batch,), device=self.device, generator=self.gen)
        both = torch.cat([augment(self.images[idx], self.cfg, STL10_MEAN, STL10_STD, self.gen) for _ in range(2)])
        return both.contiguous(memory_format=torch.channels_last)

    def model_step(self, both: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            zx, zy = self.forward(both).float().chunk(2)
            loss, _ = self.objective(zx, zy)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def step(self) -> None:
        self.model_step(self.views())

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def cloud_images() -> int:
    """Augmented views the paper's STL-10 cloud trains on: rows x epochs x floor(105,000 / batch) x batch x 2."""
    import pandas as pd
    from hypersphere.resources import reference
    rows = pd.read_csv(reference("stl10_encoders.csv"))
    return int(sum(e * (STL10_IMAGES // b) * b * 2 for e, b in zip(rows["epochs"], rows["batch_size"])))


def run(quick: bool, pack: int = 4, compile: bool = True, dry_run: bool = False) -> list[Row]:
    cuda = torch.cuda.is_available()
    if not cuda and not dry_run:
        return [skipped("cuda", "SmallAlexNet training speed, STL-10 projection, packing", "skipped: no CUDA")]
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU dry run (not a measurement)"
    batch, warmup, steps = (8, 1, 1) if not cuda else (256, 2, 3) if quick else (768, 5, 20)
    peak = achievable_tflops(device, 256 if not cuda else 8192, 2 if not cuda else 50)
    rows = [Row("cuda", f"bf16 matmul {'256' if not cuda else '8192'}^3, {name}", f"{peak:.0f} TFLOP/s", "-",
                note="achievable peak: the denominator of MFU", raw={"tflops": peak})]
    best: tuple[float, str] | None = None
    for compiled in ((False, True) if compile and cuda else (False,)):
        variant = "compiled" if compiled else "eager"
        case = f"SmallAlexNet B={batch} pairs, bf16 autocast, channels_last, {variant}, {name}"
        try:
            t0 = time.perf_counter()
            trainer = Trainer(batch, device, compile=compiled)
            trainer.step()  # compiles here when compiled
            trainer.sync()
            setup = time.perf_counter() - t0
            sec = trainer.seconds_per_step(steps, warmup)
            flops = trainer.flops_per_step()
        except Exception as e:  # torch.compile can fail on some setups; eager must not
            if not compiled:
                raise
            rows.append(skipped("cuda", case, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"))
            continue
        images_per_s, achieved = 2 * batch / sec, flops / sec / 1e12
        rows.append(Row("cuda", case, f"{fmt_rate(images_per_s, 'image')}, {achieved:.1f} TFLOP/s, MFU {achieved / peak:.0%}",
                        "-", note=f"{fmt_time(sec)} per step (augment + fwd + bwd + SGD), {flops / 1e12:.2f} TFLOP counted "
                                  f"per step (fwd+bwd); first step incl. setup/compile {setup:.1f} s",
                        raw={"seconds_per_step": sec, "flops_per_step": flops, "images_per_s": images_per_s,
                             "first_step_s": setup, "mfu": achieved / peak}))
        if best is None or sec < best[0]:
            best = (sec, variant)
        del trainer
        if cuda:
            torch.cuda.empty_cache()
    sec, variant = best
    aug = augment_images_per_s(device, batch, steps)
    rows.append(Row("cuda", f"augment() alone, 96 px uint8 -> 64 px, B={batch}, {name}", fmt_rate(aug, "image"), "-",
                    raw={"images_per_s": aug}))
    fp32, bf16 = bf16_loss_gap(device, batch)
    rows.append(Row("cuda", f"loss of one batch, fp32 vs bf16 autocast, B={batch}", f"{bf16:.5f} (bf16)", f"{fp32:.5f} (fp32)",
                    note=f"relative difference {abs(bf16 - fp32) / abs(fp32):.1e}", raw={"fp32": fp32, "bf16": bf16}))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.empty((STL10_IMAGES, 3, 96, 96), dtype=torch.uint8, device=device)
        Trainer(batch, device).step()
        peak_gib = torch.cuda.max_memory_allocated(device) / 2 ** 30
        del resident
        torch.cuda.empty_cache()
        rows.append(Row("cuda", f"peak memory: STL-10 resident (2.7 GiB uint8) + a B={batch} training step",
                        f"{peak_gib:.1f} GiB", "-", raw={"peak_gib": peak_gib}))
    else:
        rows.append(skipped("cuda", "peak memory with STL-10 resident on the GPU", "skipped: no CUDA"))
    one = (STL10_IMAGES // batch) * EPOCHS * sec
    cloud = cloud_images() / (2 * batch / sec)
    rows.append(Row("cuda", f"projected: one STL-10 encoder ({STL10_IMAGES // batch} steps x {EPOCHS} epochs, B={batch}, "
                            f"{variant}); the whole 309-row STL-10 cloud at the same images/s",
                    f"{one / 60:.1f} min; cloud {cloud / 3600:.1f} GPU-hours", "-",
                    note="training only (evaluation not included)" + ("; CPU dry run" if not cuda else ""),
                    raw={"projected_s": one, "cloud_s": cloud}))
    rows.append(moco_resnet50_row(device, name, quick))
    if not cuda:
        rows.append(skipped("cuda", "packing several runs on one GPU", "skipped: no CUDA"))
        return rows
    small_batch, pack_steps = 256, (5 if quick else 30)
    alone = packed_images_per_s(1, small_batch, warmup, pack_steps)
    together = packed_images_per_s(pack, small_batch, warmup, pack_steps)
    rows.append(Row("cuda", f"{pack} SmallAlexNet B={small_batch} runs packed on one GPU vs one alone (eager)",
                    f"{fmt_rate(together, 'image')} together", f"{fmt_rate(alone, 'image')} alone",
                    together / alone, note="ratio = aggregate packed throughput / a single run's",
                    raw={"packed_images_per_s": together, "alone_images_per_s": alone, "processes": pack}))
    return rows


def moco_resnet50_row(device: torch.device, name: str, quick: bool) -> Row:
    """images/s (both views) and peak memory of ResNet-50 MoCo v2 training steps through train.batch_loss; on a
    CPU dry run 40 px images, 32 px crops, batch 4 and a queue of 16 (no measurement)."""
    from dataclasses import replace

    from bench_train import synthetic_data
    from hypersphere.augment import recipe
    from hypersphere.domains import IMAGE
    from hypersphere.moco import MoCo, resnet50_moco
    from hypersphere.train import batch_loss

    cuda = device.type == "cuda"
    batch, side, crop, queue, warmup, steps = ((128 if quick else 256), 256, 224, 65536, 2, (3 if quick else 10)) \
        if cuda else (4, 40, 32, 16, 1, 1)
    data = synthetic_data(2 * batch, 3, side, replace(recipe("mocov2"), crop_size=crop)).to(device)
    torch.manual_seed(0)
    encoder = resnet50_moco(128, mlp=True).to(device, memory_format=torch.channels_last)
    moco = MoCo(encoder, queue, 0.999).to(device).train()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.03 * batch / 256, momentum=0.9, weight_decay=1e-4)
    objective, gen = Objective.parse("3*align(alpha=2) + uniform(t=3)"), torch.Generator(device=device).manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        idx = torch.randint(len(data.encoder_images), (batch,), device=device, generator=gen)
        x = [IMAGE.views(data, data.encoder_images[idx], gen) for _ in range(objective.views)]
        loss, _ = batch_loss(encoder, None, objective, x, None, moco)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    sec = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
    return Row("cuda", f"ResNet-50 MoCo v2 step B={batch} pairs, {crop} px, queue {queue}, bf16 autocast, {name}",
               fmt_rate(2 * batch / sec, "image"), "-",
               note=f"{fmt_time(sec)} per step (augment + query and key forward + bwd + SGD); " +
                    (f"peak memory {peak:.1f} GiB" if cuda else "CPU dry run"),
               raw={"seconds_per_step": sec, "images_per_s": 2 * batch / sec, "peak_gib": peak})

