"""Benchmark 5 (CUDA only): SmallAlexNet training speed at the paper's batch 768 on one GPU.

- images/s (augmented views; two per pair) and achieved TFLOP/s of the whole training step as train.py runs
  it: both views augmented on the GPU from uint8, encoder in bf16 autocast with channels_last, fp32 losses,
  SGD. FLOPs of forward + backward are counted with torch.utils.flop_counter.FlopCounterMode on one step.
  Eager, and torch.compile'd (compile time reported; a failure is reported, not fatal).
- the projected wall time of one full STL-10 encoder: floor(105,000 / 768) steps x 200 epochs (training only).
- packing: K processes each training its own small encoder (SmallAlexNet, batch 256) on the same GPU at once,
  vs one such process alone; ratio = aggregate images/s packed / images/s alone (the sweep's fractional GPUs).
One prepared command: `python bench/run.py --cuda-only` (a few minutes on an H200).
"""
from __future__ import annotations

import queue
import time

import torch
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

from hypersphere.augment import AugmentConfig, augment
from hypersphere.data import STL10_MEAN, STL10_STD
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


def run(quick: bool, pack: int = 4, compile: bool = True) -> list[Row]:
    if not torch.cuda.is_available():
        return [skipped("cuda", "SmallAlexNet training speed, STL-10 projection, packing", "skipped: no CUDA")]
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    batch, warmup, steps = (256 if quick else 768), (2 if quick else 5), (3 if quick else 20)
    rows = []
    best: tuple[float, str] | None = None
    for compiled in ((False, True) if compile else (False,)):
        variant = "compiled" if compiled else "eager"
        case = f"SmallAlexNet B={batch} pairs, bf16 autocast, channels_last, {variant}, {name}"
        try:
            t0 = time.perf_counter()
            trainer = Trainer(batch, device, compile=compiled)
            trainer.step()  # compiles here when compiled
            torch.cuda.synchronize()
            setup = time.perf_counter() - t0
            sec = trainer.seconds_per_step(steps, warmup)
            flops = trainer.flops_per_step()
        except Exception as e:  # torch.compile can fail on some setups; eager must not
            if not compiled:
                raise
            rows.append(skipped("cuda", case, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"))
            continue
        images_per_s = 2 * batch / sec
        rows.append(Row("cuda", case, f"{fmt_rate(images_per_s, 'image')}, {flops / sec / 1e12:.1f} TFLOP/s", "-",
                        note=f"{fmt_time(sec)} per step (augment + fwd + bwd + SGD), {flops / 1e12:.2f} TFLOP counted "
                             f"per step (fwd+bwd); first step incl. setup/compile {setup:.1f} s",
                        raw={"seconds_per_step": sec, "flops_per_step": flops, "images_per_s": images_per_s,
                             "first_step_s": setup}))
        if best is None or sec < best[0]:
            best = (sec, variant)
        del trainer
        torch.cuda.empty_cache()
    sec, variant = best
    total = (STL10_IMAGES // batch) * EPOCHS * sec
    rows.append(Row("cuda", f"projected STL-10 encoder: {STL10_IMAGES // batch} steps x {EPOCHS} epochs "
                            f"at B={batch} ({variant})", f"{total / 60:.1f} min training", "-",
                    note="training only (evaluation not included)", raw={"projected_s": total}))
    small_batch, pack_steps = 256, (5 if quick else 30)
    alone = packed_images_per_s(1, small_batch, warmup, pack_steps)
    together = packed_images_per_s(pack, small_batch, warmup, pack_steps)
    rows.append(Row("cuda", f"{pack} SmallAlexNet B={small_batch} runs packed on one GPU vs one alone (eager)",
                    f"{fmt_rate(together, 'image')} together", f"{fmt_rate(alone, 'image')} alone",
                    together / alone, note="ratio = aggregate packed throughput / a single run's",
                    raw={"packed_images_per_s": together, "alone_images_per_s": alone, "processes": pack}))
    return rows
