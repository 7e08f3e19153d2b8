"""Numerical helpers on the unit hypersphere S^{m-1} for the paper's theory (docs/paper.md, "Theory"):
samplers (uniform, von Mises-Fisher, vMF mixtures), the mean Gaussian potential of Figure 4,
N-point minimisers of the potential (Props. 1-2), and the finite-M contrastive loss next to its
M -> infinity limit (Theorem 1), evaluated on synthetic "encoders" whose alignment and uniformity
are chosen by hand.

Every sampler takes an explicit torch.Generator and works on the generator's device; sampling runs
in float64 and returns float32 points.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.special import ive
from torch import Tensor

from .losses import uniform_loss
from .metrics import uniformity


def _as_unit_vector(mu: Sequence[float] | Tensor, device: torch.device) -> Tensor:
    mu = torch.as_tensor(mu, dtype=torch.float64, device=device).flatten()
    if mu.numel() < 2 or not mu.norm() > 0:
        raise ValueError(f"the mean direction must be a nonzero vector of dimension >= 2, got {mu.tolist()}")
    return mu / mu.norm()


def sample_uniform(n: int, dim: int, generator: torch.Generator) -> Tensor:
    """n points from the uniform distribution sigma on S^{dim-1} (normalised standard Gaussians)."""
    if dim < 2:
        raise ValueError(f"sample_uniform needs dim >= 2, got {dim}")
    g = torch.randn(n, dim, dtype=torch.float64, generator=generator, device=generator.device)
    return F.normalize(g, dim=1).float()


def _vmf_cosines(n: int, dim: int, kappa: float, generator: torch.Generator) -> Tensor:
    """w = mu.x for x ~ vMF(mu, kappa) on S^{dim-1}: Wood's (1994) rejection sampler, vectorised.

    The envelope is a transformed Beta((m-1)/2, (m-1)/2) variable z, and we keep 1 - w = 2bz / (1 - (1-b)z)
    rather than w itself, so that w close to 1 (large kappa) loses no precision. Acceptance is at least
    ~0.65 for every (m, kappa) (measured for m = 2..4096, kappa = 0.01..1e6), so drawing twice the missing
    count per round fills all n samples in a few vectorised rounds.
    """
    m1 = dim - 1
    b = m1 / (2 * kappa + math.sqrt(4 * kappa**2 + m1**2))  # = (-2k + sqrt(4k^2 + (m-1)^2)) / (m-1), stably
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m1 * math.log(1 - x0**2)
    one_minus_w = torch.empty(0, dtype=torch.float64, device=generator.device)
    while len(one_minus_w) < n:
        k = 2 * (n - len(one_minus_w)) + 16
        shape = torch.full((2, k), m1 / 2, dtype=torch.float64, device=generator.device)
        gx, gy = torch._standard_gamma(shape, generator=generator)  # Beta(a, a) = X / (X + Y), no cancellation
        z = gx / (gx + gy)
        u = torch.rand(k, dtype=torch.float64, generator=generator, device=generator.device)
        omw = 2 * b * z / (1 - (1 - b) * z)
        w = 1 - omw
        accept = kappa * w + m1 * torch.log1p(-x0 * w) - c >= torch.log(u)
        one_minus_w = torch.cat([one_minus_w, omw[accept]])
    return one_minus_w[:n]


def sample_vmf(n: int, mu: Sequence[float] | Tensor, kappa: float, generator: torch.Generator) -> Tensor:
    """n samples from the von Mises-Fisher distribution vMF(mu, kappa) on S^{m-1}, density ~ exp(kappa mu.x).

    kappa = 0 is the uniform distribution; the sampler stays exact for kappa of 1e3 and far beyond.
    Samples are drawn around e_1 (w = e_1.x from Wood's sampler, uniform direction orthogonal to e_1)
    and moved to mu by the Householder reflection that swaps e_1 and mu.
    """
    mu = _as_unit_vector(mu, generator.device)
    dim = mu.numel()
    if kappa < 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    if kappa == 0:
        return sample_uniform(n, dim, generator)
    one_minus_w = _vmf_cosines(n, dim, kappa, generator)
    v = F.normalize(torch.randn(n, dim - 1, dtype=torch.float64, generator=generator, device=mu.device), dim=1)
    sin = torch.sqrt(one_minus_w * (2 - one_minus_w))  # sqrt(1 - w^2)
    x = torch.cat([(1 - one_minus_w)[:, None], sin[:, None] * v], dim=1)
    h = torch.zeros_like(mu)
    h[0] = 1
    h = h - mu
    if h.norm() > 1e-12:  # reflect e_1 onto mu: x - 2 h (h.x) / |h|^2
        x = x - 2 * (x @ h)[:, None] * h / h.dot(h)
    return F.normalize(x, dim=1).float()


def sample_vmf_mixture(
    n: int,
    mus: Sequence[Sequence[float]] | Tensor,
    kappas: Sequence[float],
    weights: Sequence[float],
    generator: torch.Generator,
) -> Tensor:
    """n samples from sum_k weights_k vMF(mus_k, kappas_k), in random order.

    Figure 4's mixture is `sample_vmf_mixture(n, [[1, 0], [0, 1]], [1e3, 1], [0.4, 0.6], g)`.
    """
    if not len(mus) == len(kappas) == len(weights):
        raise ValueError(
            f"need one mean, kappa and weight per component, got {len(mus)}, {len(kappas)}, {len(weights)}"
        )
    w = torch.as_tensor(weights, dtype=torch.float64, device=generator.device)
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {list(weights)}")
    component = torch.multinomial(w, n, replacement=True, generator=generator)
    dim = len(mus[0])
    out = torch.empty(n, dim, device=generator.device)
    for k, (mu, kappa) in enumerate(zip(mus, kappas)):
        idx = (component == k).nonzero().flatten()
        out[idx] = sample_vmf(len(idx), mu, kappa, generator)
    return out


def mean_gaussian_potential(f: Tensor, t: float = 2.0) -> float:
    """Mean pairwise Gaussian potential G_t = mean over distinct pairs of exp(-t ||f_i - f_j||^2), i.e.
    exp(L_uniform(t)): the quantity Figure 4 reports (0.2070 for uniform points on S^1 with t = 2)."""
    return math.exp(uniformity(f, t))


def optimize_points(
    n: int,
    dim: int,
    t: float = 2.0,
    steps: int = 500,
    lr: float = 0.05,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    history: list[float] | None = None,
) -> Tensor:
    """N points on S^{dim-1} minimising the pairwise Gaussian potential (Props. 1-2: such minimisers
    converge to the uniform distribution as N grows).

    Projected gradient descent on L_uniform(t) (losses.uniform_loss) with renormalisation after each
    step. The gradient of the *mean* potential on one point is O(1/N), so the step is lr * N * grad:
    `lr` is a per-point step size, the same for every N (0.1 already oscillates for N = 6 on S^1). Starts from
    `init` (e.g. a clustered vMF sample, to watch the points spread out) or from uniform samples; appends L_uniform
    per step to `history`.
    """
    if init is None:
        if generator is None:
            raise ValueError("optimize_points needs a generator (or init points) to start from")
        init = sample_uniform(n, dim, generator)
    if init.shape != (n, dim):
        raise ValueError(f"init must have shape ({n}, {dim}), got {tuple(init.shape)}")
    x = F.normalize(init.detach().float(), dim=1).requires_grad_(True)
    for _ in range(steps):
        loss = uniform_loss(x, t)
        (grad,) = torch.autograd.grad(loss, x)
        if history is not None:
            history.append(loss.item())
        with torch.no_grad():
            x = F.normalize(x - lr * n * grad, dim=1)
        x.requires_grad_(True)
    return x.detach()


# ----------------------------------------------------------------------------- Theorem 1


def _check_pairs(fx: Tensor, fy: Tensor, negatives: Tensor) -> None:
    if fx.shape != fy.shape or fx.ndim != 2 or negatives.ndim != 2 or negatives.shape[1] != fx.shape[1]:
        raise ValueError(
            f"need fx, fy of one shape [K, d] and negatives [P, d], got {tuple(fx.shape)}, "
            f"{tuple(fy.shape)}, {tuple(negatives.shape)}"
        )


def contrastive_limit(fx: Tensor, fy: Tensor, negatives: Tensor, tau: float, chunk: int = 1024) -> Tensor:
    """Per positive pair, the Theorem 1 limit of L_contrastive(tau, M) - log M as M -> infinity:

        -(1/tau) f(x).f(y) + log E_{x^-} exp(f(x^-).f(y) / tau),

    with E_{x^-} the mean over the rows of `negatives` (a large sample independent of the pairs). The
    mean of the result is the theorem's limit, -(1/tau) E_pos[f(x).f(y)] + E_x[log E_{x^-} e^{f(x^-).f(x)/tau}]
    (x and y are exchangeable, so the anchor of the second term may be f(y), as in the loss).
    """
    _check_pairs(fx, fy, negatives)
    fx, fy, negatives = fx.double(), fy.double(), negatives.double()
    log_mean = torch.cat(
        [torch.logsumexp((fy[i : i + chunk] / tau) @ negatives.T, dim=1) for i in range(0, len(fy), chunk)]
    ) - math.log(len(negatives))
    return -(fx * fy).sum(1) / tau + log_mean


def contrastive_loss_M(
    fx: Tensor, fy: Tensor, negatives: Tensor, tau: float, M: int, generator: torch.Generator, chunk: int = 1024
) -> Tensor:
    """Per positive pair, the InfoNCE term of L_contrastive(f; tau, M) (docs/paper.md, "Definitions"):

        -log( e^{f(x).f(y)/tau} / (e^{f(x).f(y)/tau} + sum_{i=1..M} e^{f(x_i^-).f(y)/tau}) ),

    with M negatives drawn independently for each pair, with replacement, from the rows of `negatives`.
    Draws from the same pool as `contrastive_limit`, so `loss - log M` converges to exactly that limit.
    """
    _check_pairs(fx, fy, negatives)
    if M < 1:
        raise ValueError(f"M must be >= 1, got {M}")
    fx, fy, negatives = fx.double(), fy.double(), negatives.double()
    out = []
    for i in range(0, len(fy), chunk):
        scores = (fy[i : i + chunk] / tau) @ negatives.T  # [chunk, P]
        idx = torch.randint(len(negatives), (len(scores), M), generator=generator, device=generator.device)
        neg = scores.gather(1, idx.to(scores.device))  # [chunk, M]
        pos = (fx[i : i + chunk] * fy[i : i + chunk]).sum(1, keepdim=True) / tau
        out.append(torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos[:, 0])
    return torch.cat(out)


def synthetic_encoder(
    n: int,
    generator: torch.Generator,
    dim: int = 2,
    sigma: float = 0.1,
    kappa: float = 0.0,
    modes: Sequence[Sequence[float]] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """n positive pairs (f(x), f(y)) of a made-up encoder with hand-chosen alignment and uniformity.

    A latent point z is drawn uniformly on S^{dim-1} (kappa = 0) or from an equal mixture of
    vMF(mode, kappa) (kappa > 0: clustered, less uniform; default one mode at e_1); the two views are
    f(x) = normalise(z + sigma * n_1), f(y) = normalise(z + sigma * n_2) with Gaussian n_1, n_2, so that
    sigma sets the alignment and (x, y) is exchangeable, as Theorem 1 assumes. Call it again for
    independent negatives (use either view).
    """
    if kappa > 0:
        if modes is None:
            modes = torch.eye(dim)[:1]
        z = sample_vmf_mixture(n, modes, [kappa] * len(modes), [1.0] * len(modes), generator)
    else:
        z = sample_uniform(n, dim, generator)
    z = z.double()
    noise = torch.randn(2, n, dim, dtype=torch.float64, generator=generator, device=generator.device)
    fx, fy = (F.normalize(z + sigma * e, dim=1).float() for e in noise)
    return fx, fy


def circle_mixture_potential(
    mus: Sequence[Sequence[float]] | Tensor,
    kappas: Sequence[float],
    weights: Sequence[float],
    t: float = 2.0,
    terms: int = 64,
) -> float:
    """Exact population G_t = E exp(-t ||x - y||^2) for x, y iid from a von Mises mixture on S^1.

    With exp(-t ||x - y||^2) = e^{-2t} e^{2t cos(a - b)} = sum_n ive(n, 2t) e^{in(a - b)} and the
    characteristic function E e^{in a} = sum_j w_j A_n(kappa_j) e^{in mu_j}, A_n = I_n(kappa) / I_0(kappa):

        G_t = sum_{n in Z} ive(n, 2t) |sum_j w_j A_n(kappa_j) e^{in mu_j}|^2.

    The uniform distribution (kappa = 0) gives ive(0, 2t) = exp(uniformity_bound(2, t)). This is the value
    a finite sample (Figure 4: 10,000 points) estimates. Terms fall like ive(n, 2t) ~ e^{-2t} t^n / n!,
    so 64 of them are exact to double precision for t up to ~10.
    """
    mus = torch.as_tensor(mus, dtype=torch.float64).cpu()
    if mus.ndim != 2 or mus.shape[1] != 2 or not len(mus) == len(kappas) == len(weights):
        raise ValueError(
            f"need one 2-d mean direction, kappa and weight per component, got mus of shape "
            f"{tuple(mus.shape)}, {len(kappas)} kappas, {len(weights)} weights"
        )
    angles = torch.atan2(mus[:, 1], mus[:, 0]).numpy()
    w = torch.as_tensor(weights, dtype=torch.float64).numpy()
    w = w / w.sum()
    total = 0.0
    for n in range(-terms, terms + 1):
        # I_n(k) / I_0(k) = ive(n, k) / ive(0, k); kappa = 0 gives 1 for n = 0 and 0 otherwise.
        a = [ive(n, k) / ive(0, k) for k in kappas]
        phi = sum(wj * aj * complex(math.cos(n * mu), math.sin(n * mu)) for wj, aj, mu in zip(w, a, angles))
        total += ive(n, 2 * t) * abs(phi) ** 2
    return float(total)
