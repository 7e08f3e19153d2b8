"""Alignment and uniformity of a whole held-out set (docs/paper.md, "Definitions"), and the uniformity bound
(section 2). Unlike the minibatch losses, these are exact over every pair of the set, computed in
blocks so that memory stays bounded (100k x 128 features fit in a few hundred MB); `uniformity_se` is the
standard error of uniformity on a sample of a larger set (the U-statistic variance).

Label-free statistics that other work proposes for choosing an encoder without labels, next to L_align and
L_uniform in every evaluation record (`label_free`; the study is notebook 10_beyond):
  rankme            the effective rank of the features (Garrido et al. 2023, RankMe): higher is better;
  uniform_centred   L_uniform(t=2) of the features centred on their mean and renormalised: how uniform they are
                    around their mean direction, which plain L_uniform confounds with that direction's weight;
  eigen_decay       alpha of a power law lambda_k ~ k^-alpha fitted to the covariance spectrum (Agrawal et al. 2022,
                    alpha-ReQ), whose claim is that alpha near 1 is best."""

from __future__ import annotations

import math
from typing import Sequence

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
        raise ValueError(
            f"features are not unit-norm (max | ||f|| - 1 | = {err:.3g}): l2-normalise them "
            "first (F.normalize(f, dim=1)) or pass normalize=True"
        )
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
            logits = gaussian_logits(f[i : i + block], f[j : j + block], t)
            if i == j:  # diagonal block: strict upper triangle only
                logits = logits[torch.triu(torch.ones_like(logits, dtype=torch.bool), diagonal=1)]
            lse.append(torch.logsumexp(logits.flatten(), dim=0).double())
    return (torch.logsumexp(torch.stack(lse), dim=0) - math.log(n * (n - 1) / 2)).item()


@torch.no_grad()
def uniformity_se(
    fs: Sequence[Tensor],
    t: float = 2.0,
    normalize: bool = False,
    block: int = 4096,
    values: Sequence[float] | None = None,
) -> float:
    """Standard error of sum_m L_uniform(f_m; t) (a single term, or a sentence's f and g terms) over n points, the
    rows of each f_m [n, d_m], as an estimate of its value on the distribution they are independent draws from.

    Each L_uniform(f_m) = log U_m, U_m the mean of h_m(x, y) = exp(-t ||f_m(x) - f_m(y)||^2) over the n(n-1)/2
    distinct pairs: a U-statistic. To first order (the delta method) the sum moves as the U-statistic of the kernel
    k = sum_m h_m / U_m, whose variance is 2 / (n (n-1)) (2 (n-2) zeta_1 + zeta_2) (Hoeffding 1948), zeta_1 =
    Cov(k(X, Y), k(X, Z)) and zeta_2 = Var k(X, Y); both are estimated without bias from the ordered pairs' sums
    T = sum_ij c_ij, Q = sum_ij c_ij^2 and S = sum_i (sum_j c_ij)^2 of c = k - m (m terms; centred, so that nothing
    cancels): E c_ij c_ik = (S - Q) / n(n-1)(n-2), E c_ij^2 = Q / n(n-1), (E c)^2 = (T^2 - 4S + 2Q) / n(n-1)(n-2)(n-3).
    Near-uniform features make zeta_1 vanish (a degenerate U-statistic): the zeta_2 term then dominates. `values`:
    the terms' L_uniform, when already computed. One more pass over the pairs, in blocks as `uniformity`."""
    fs = [check_unit_norm(f, normalize) for f in fs]
    n = len(fs[0])
    if n < 4:
        return float("nan")
    u = [math.exp(v) for v in (values if values is not None else [uniformity(f, t, block=block) for f in fs])]
    r = torch.zeros(n, dtype=torch.float64, device=fs[0].device)
    q = torch.zeros((), dtype=torch.float64, device=fs[0].device)
    for i in range(0, n, block):
        for j in range(i, n, block):
            c = sum(gaussian_logits(f[i : i + block], f[j : j + block], t).double().exp() / um for f, um in zip(fs, u))
            c -= len(fs)
            if i == j:
                c.fill_diagonal_(0)
            r[i : i + block] += c.sum(1)
            if i != j:
                r[j : j + block] += c.sum(0)
            q += (1 if i == j else 2) * c.pow(2).sum()
    total, s, q = r.sum().item(), r.pow(2).sum().item(), q.item()
    cross, square = (s - q) / (n * (n - 1) * (n - 2)), q / (n * (n - 1))
    mean2 = (total * total - 4 * s + 2 * q) / (n * (n - 1) * (n - 2) * (n - 3))
    var = 2 / (n * (n - 1)) * (2 * (n - 2) * (cross - mean2) + (square - mean2))
    return math.sqrt(max(var, 0.0))


def effective_rank(f: Tensor) -> float:
    """exp of the entropy of the normalised singular values of the feature matrix (RankMe): 1 for features on
    one line, the dimension for isotropic ones."""
    s = torch.linalg.svdvals(f.double())
    p = s / s.sum() + 1e-12  # RankMe's epsilon: log 0 never happens
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def centred_uniformity(f: Tensor, t: float = 2.0) -> float:
    """L_uniform(t) of the features minus their mean, renormalised onto the sphere."""
    f = check_unit_norm(f)
    return uniformity(torch.nn.functional.normalize(f - f.mean(0), dim=1), t)


def eigen_decay(f: Tensor, floor: float = 1e-6) -> float:
    """alpha of lambda_k ~ k^-alpha: the least-squares slope of log lambda_k against log k (negated) over the
    covariance eigenvalues above `floor` times the largest (alpha-ReQ's fit); nan with fewer than 3 of them."""
    lam = torch.linalg.eigvalsh(torch.cov(f.double().T)).flip(0)
    lam = lam[lam > floor * lam[0]]
    if len(lam) < 3:
        return float("nan")
    k = torch.arange(1, len(lam) + 1, dtype=torch.float64, device=lam.device).log()
    slope = ((k - k.mean()) * (lam.log() - lam.log().mean())).sum() / ((k - k.mean()) ** 2).sum()
    return float(-slope)


LABEL_FREE = ("rankme", "uniform_centred", "eigen_decay")


def label_free(f: Tensor) -> dict[str, float]:
    """The label-free statistics of the unit-norm features f [N, d] (LABEL_FREE; see the module docstring)."""
    f = check_unit_norm(f)
    return {"rankme": effective_rank(f), "uniform_centred": centred_uniformity(f), "eigen_decay": eigen_decay(f)}


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
