"""Benchmark 1: L_uniform forward + backward, ours (losses.uniform_loss: the distinct pairs' potentials from a
few matrix products, and a closed-form backward that is one more) vs the official
`torch.pdist(x).pow(2).mul(-t).exp().mean().log()`.

Targets: not slower at batch 256, >= 1.5x faster at batch >= 768 (dim 128, t = 2, fp32; bf16 too on CUDA).
Full (not --quick) runs also time the previous implementation, autograd through one matrix product and a
log-sum-exp over the n x n matrix (`lse_uniform`), and note ours' speedup over it.
Also a correctness fact: at large t (100) the pdist form underflows (loss -inf, NaN gradients) while ours
stays finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hypersphere.losses import uniform_loss
from timing import Row, fmt_time, interleaved, median, skipped, speedup

DIM, T = 128, 2.0


def pdist_uniform(x: Tensor, t: float = T) -> Tensor:
    """The official implementation (Wang & Isola's align_uniform repository)."""
    return torch.pdist(x).pow(2).mul(-t).exp().mean().log()


def lse_uniform(x: Tensor, t: float = T) -> Tensor:
    """The previous implementation of uniform_loss: autograd through addmm, a -inf diagonal and logsumexp."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    n = x.shape[0]
    sq = x.pow(2).sum(1, keepdim=True)
    logits = torch.addmm(-t * (sq + sq.T), x, x.T, alpha=2 * t).fill_diagonal_(float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))


def _points(n: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, DIM, generator=gen), dim=1)
    return x.to(device=device, dtype=dtype).requires_grad_()


def _fwd_bwd(loss_fn, x: Tensor, repeats: int):
    """`repeats` forward + backward passes (several per measurement on CUDA, where one is ~0.1 ms)."""

    def run() -> None:
        for _ in range(repeats):
            x.grad = None
            loss_fn(x, T).backward()

    return run


def timing_rows(device: torch.device, quick: bool) -> list[Row]:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sizes = (256, 768) if quick else (256, 768, 2048, 4096)
    dtypes = (torch.float32, torch.bfloat16) if cuda else (torch.float32,)
    repeats = 10 if cuda else 1
    rows = []
    for dtype in dtypes:
        for n in sizes:
            x = _points(n, dtype, device)
            ours, ref = _fwd_bwd(uniform_loss, x, repeats), _fwd_bwd(pdist_uniform, x, repeats)
            case = f"fwd+bwd B={n} d={DIM} {str(dtype).removeprefix('torch.')} {device.type}"
            try:
                ref()
            except RuntimeError as e:  # e.g. a dtype pdist has no kernel for
                rows.append(skipped("loss", case, f"pdist failed: {str(e).splitlines()[0][:80]}"))
                continue
            ours()  # warm-up (allocations, kernel selection)
            rounds = 3 if quick or n >= 4096 else 5
            t_ours, t_ref = interleaved(ours, ref, rounds, sync)
            raw = {"ours_s": t_ours, "reference_s": t_ref, "repeats": repeats, "batch": n, "dtype": str(dtype)}
            note = ""
            if not quick:
                t_new, t_old = interleaved(ours, _fwd_bwd(lse_uniform, x, repeats), rounds, sync)
                raw |= {"ours_vs_previous_s": t_new, "previous_s": t_old}
                note = f"{speedup(t_new, t_old):.2f}x the previous log-sum-exp version"
            target = 1.0 if n <= 256 else 1.5
            rows.append(
                Row(
                    "loss",
                    case,
                    fmt_time(median(t_ours) / repeats),
                    fmt_time(median(t_ref) / repeats),
                    speedup(t_ours, t_ref),
                    target,
                    note=note,
                    raw=raw,
                )
            )
    return rows


def finiteness_row(device: torch.device, t: float = 100.0) -> Row:
    """Large t: every exp(-t ||xi - xj||^2) underflows to 0 in fp32, so pdist's loss is -inf, its gradient NaN."""
    out = {}
    for name, fn in (("ours", uniform_loss), ("pdist", pdist_uniform)):
        x = _points(256, torch.float32, device)
        loss = fn(x, t)
        loss.backward()
        out[name] = (loss.item(), bool(torch.isfinite(x.grad).all()))
    (lo, go), (lr, gr) = out["ours"], out["pdist"]
    fixed = math.isfinite(lo) and go and not (math.isfinite(lr) and gr)
    return Row(
        "loss",
        f"finite where pdist is not: B=256 d={DIM} t={t:g} fp32 {device.type}",
        f"loss {lo:.2f}, grad {'finite' if go else 'NaN/inf'}",
        f"loss {lr:.2f}, grad {'finite' if gr else 'NaN/inf'}",
        met="yes" if fixed else "no",
        note="target: ours finite, pdist not",
        raw={"t": t, "ours_loss": str(lo), "ours_grad_finite": go, "pdist_loss": str(lr), "pdist_grad_finite": gr},
    )


def run(quick: bool, devices: list[torch.device]) -> list[Row]:
    rows = []
    for device in devices:
        rows += timing_rows(device, quick)
    return rows + [finiteness_row(devices[0])]
