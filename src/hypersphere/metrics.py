"""Alignment and uniformity of a whole held-out set (docs/paper.md, "Definitions"), and the uniformity bound
(section 2). Unlike the minibatch losses, these are exact over every pair of the set, computed in
blocks so that memory stays bounded (100k x 128 features fit in a few hundred MB)."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special
from torch import Tensor

from .losses import gaussian_logits

UNIT_NORM_TOL = 1e-2  # bf16 features normalised in bf16 are off by ~4e-3


def check_unit_norm(f: Tensor, normalize: bool = False) -> Tensor:
    """Return f as float32, refusing features that are not on the unit sphere (or normalising them
    when asked): unnormalised features are the most common mistake with these metrics."""
    f = f.detach().float()
    if normalize:
        return torch.nn.functional.normalize(f, dim=1)
    err = (f.norm(dim=1) - 1).abs().max().item() if len(f) else 0.0
    if not err <= UNIT_NORM_TOL:
        raise ValueError(f"features are not unit-norm (max | ||f|| - 1 | = {err:.3g}): l2-normalise them "
                         "first (F.normalize(f, dim=1)) or pass normalize=True")
    return f


@torch.no_grad()
def alignment(fx: Tensor, fy: Tensor, alpha: float = 2.0, normalize: bool = False) -> float:
    """L_align(f; alpha) = E_pos ||f(x) - f(y)||^alpha over all positive pairs (rows of fx, fy)."""
    if fx.shape != fy.shape:
        raise ValueError(f"alignment needs paired features of one shape, got {tuple(fx.shape)} and {tuple(fy.shape)}")
    fx, fy = check_unit_norm(fx, normalize), check_unit_norm(fy, normalize)
    return (fx - fy).norm(dim=1).double().pow(alpha).mean().item()


@torch.no_grad()
def uniformity(f: Tensor, t: float = 2.0, normalize: bool = False, block: int = 4096) -> float:
    """L_uniform(f; t) = log E exp(-t ||f(x) - f(y)||^2), exactly over all N(N-1)/2 distinct pairs.

    Blocks of `block` x `block` distances are reduced to a log-sum-exp one at a time (upper block
    triangle only), so memory is O(block^2) whatever N is.
    """
    f = check_unit_norm(f, normalize)
    n = len(f)
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 points, got {n}")
    lse = []
    for i in range(0, n, block):
        for j in range(i, n, block):
            logits = gaussian_logits(f[i:i + block], f[j:j + block], t)
            if i == j:  # diagonal block: strict upper triangle only
                logits = logits[torch.triu(torch.ones_like(logits, dtype=torch.bool), diagonal=1)]
            lse.append(torch.logsumexp(logits.flatten(), dim=0).double())
    return (torch.logsumexp(torch.stack(lse), dim=0) - math.log(n * (n - 1) / 2)).item()


def uniformity_bound(dim: int, t: float = 2.0) -> float:
    """The value of L_uniform(t) for the uniform distribution on S^{dim-1}: -2t + log 0F1(; dim/2; t^2).

    It is the minimum over all distributions (Prop. 1, latest arXiv version) and tends to -2t as
    dim grows. Computed in the Bessel form log(Gamma(nu+1) t^-nu e^{-2t} I_nu(2t)), nu = dim/2 - 1,
    which cannot overflow for large t; where the scaled Bessel function underflows (large dim,
    small t), 0F1 itself is close to 1 and is used directly.
    """
    if dim < 2 or t <= 0:
        raise ValueError(f"uniformity_bound needs dim >= 2 and t > 0, got dim={dim}, t={t}")
    nu = dim / 2 - 1
    bessel = special.ive(nu, 2 * t)
    if bessel > 0 and np.isfinite(bessel):
        return float(special.gammaln(nu + 1) - nu * np.log(t) + np.log(bessel))
    return float(-2 * t + np.log(special.hyp0f1(dim / 2, t * t)))
