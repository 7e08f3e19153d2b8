"""Whole-set metrics: exact over all pairs, bounded memory, unit-norm check, the uniformity bound."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate

from hypersphere.losses import uniform_loss
from hypersphere.metrics import alignment, uniformity, uniformity_bound, uniformity_se


def sphere(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_uniformity_is_exact_over_all_pairs_across_blocks():
    f = sphere(1000, 16, 1)
    ref = torch.pdist(f.double()).pow(2).mul(-2).exp().mean().log().item()
    for block in (64, 333, 4096):  # several block layouts, one of them ragged
        assert uniformity(f, 2.0, block=block) == pytest.approx(ref, abs=1e-5)


def test_uniformity_is_not_an_average_of_minibatch_values():
    f = sphere(512, 8, 2)
    minibatch_mean = np.mean([uniform_loss(f[i : i + 64], 2).item() for i in range(0, 512, 64)])
    exact = uniformity(f, 2.0)
    assert exact == pytest.approx(uniform_loss(f, 2).item(), abs=1e-5)
    assert abs(exact - minibatch_mean) > 1e-3


def test_alignment_reference():
    fx, fy = sphere(300, 8, 3), sphere(300, 8, 4)
    assert alignment(fx, fy, 2) == pytest.approx(((fx - fy).norm(dim=1) ** 2).mean().item(), rel=1e-6)
    assert alignment(fx, fx, 1) == 0.0


def test_non_unit_features_are_refused_with_the_fix_named():
    f = torch.randn(20, 4) * 3
    with pytest.raises(ValueError, match="not unit-norm.*normalize=True"):
        uniformity(f)
    with pytest.raises(ValueError, match="not unit-norm"):
        alignment(f, f)
    assert uniformity(f, normalize=True) == pytest.approx(uniformity(F.normalize(f, dim=1)), abs=1e-6)


def test_large_set_runs_in_bounded_memory():
    """100k x 128 must work on a laptop; here a 20k slice through the same blocked path (memory is
    O(block^2) whatever N), checked against the bound it cannot beat by much."""
    f = sphere(20_000, 128, 5)
    value = uniformity(f, 2.0)
    assert uniformity_bound(128, 2.0) - 1e-3 < value < uniformity_bound(128, 2.0) + 0.01


def test_uniformity_bound_values_from_the_paper():
    assert uniformity_bound(2, 2.0) == pytest.approx(-1.575, abs=1e-3)
    assert math.exp(uniformity_bound(2, 2.0)) == pytest.approx(0.2070, abs=1e-4)
    assert uniformity_bound(128, 2.0) == pytest.approx(-3.9375, abs=1e-3)
    assert uniformity_bound(100_000, 2.0) == pytest.approx(-4.0, abs=1e-3)
    assert np.isfinite(uniformity_bound(2, 500.0))  # the Bessel form where 0F1 overflows
    bounds = [uniformity_bound(m, 2.0) for m in (2, 3, 8, 64, 1024)]
    assert all(a > b for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize("m, t", [(2, 2.0), (3, 1.0), (5, 3.0)])
def test_uniformity_bound_matches_numerical_integration(m, t):
    """E exp(-t||u - v||^2) = E exp(-2t (1 - cos theta)), cos theta having density prop. to (1-s^2)^((m-3)/2)."""

    def w(s):
        return (1 - s * s) ** ((m - 3) / 2)

    num, _ = integrate.quad(lambda s: math.exp(-2 * t * (1 - s)) * w(s), -1, 1)
    den, _ = integrate.quad(w, -1, 1)
    assert uniformity_bound(m, t) == pytest.approx(math.log(num / den), abs=1e-6)


# ----------------------------------------------------------------------------- label-free statistics


def test_centred_uniformity_and_the_spectrum_decay_against_numpy_and_scipy():
    """uniform_centred: scipy's pdist on the centred, renormalised points; eigen_decay: numpy's polyfit of the
    log covariance spectrum against log rank (an independent eigen-solver and fit)."""
    import numpy as np
    from scipy.spatial.distance import pdist

    from hypersphere.metrics import centred_uniformity, eigen_decay, label_free

    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(300, 12, generator=g) * torch.linspace(3, 0.2, 12) + 2.0, dim=1)
    c = f.double().numpy() - f.double().numpy().mean(0)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    assert centred_uniformity(f) == pytest.approx(np.log(np.mean(np.exp(-2 * pdist(c) ** 2))), abs=1e-5)
    lam = np.sort(np.linalg.eigvalsh(np.cov(f.double().numpy().T)))[::-1]
    lam = lam[lam > 1e-6 * lam[0]]
    slope = np.polyfit(np.log(np.arange(1, len(lam) + 1)), np.log(lam), 1)[0]
    assert eigen_decay(f) == pytest.approx(-slope, rel=1e-6)
    assert set(label_free(f)) == {"rankme", "uniform_centred", "eigen_decay"}
    with pytest.raises(ValueError, match="not unit-norm"):
        label_free(f * 2)


# ----------------------------------------------------------------------------- the standard error of uniformity


def _population(kind: str, n: int = 20_000, seed: int = 0):
    """f and a noisy g of the same points: clustered around one direction (zeta_1 large) or uniform on S^2 (the
    degenerate U-statistic: zeta_1 = 0, only the pairs' own variance is left)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) * torch.tensor([3.0, 2, 1, 0.5, 0.3, 0.2]) + torch.tensor([2.0, 0, 0, 0, 0, 0])
    if kind == "uniform":
        x = torch.randn(n, 3, generator=g)
    return F.normalize(x, dim=1), F.normalize(x + 0.5 * torch.randn(x.shape, generator=g), dim=1)


@pytest.mark.parametrize("kind, tol", [("clustered", 0.1), ("uniform", 0.15)])
def test_uniformity_se_matches_the_spread_over_random_subsamples(kind, tol):
    """The independent check: the empirical standard deviation of L_uniform(f) + L_uniform(g) over 300 random
    200-point subsamples of a 20,000-point set against the root-mean-square of the predicted standard errors
    (measured: 0.98 and 0.94 of it); one term alone as well."""
    f, g = _population(kind)
    rng = np.random.default_rng(0)
    both, one, se_both, se_one = [], [], [], []
    for _ in range(300):
        idx = torch.from_numpy(rng.choice(len(f), 200, replace=False))
        uf, ug = uniformity(f[idx]), uniformity(g[idx])
        both.append(uf + ug)
        one.append(uf)
        se_both.append(uniformity_se([f[idx], g[idx]], values=[uf, ug]))
        se_one.append(uniformity_se([f[idx]]))
    for values, ses in ((both, se_both), (one, se_one)):
        assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(np.std(values, ddof=1), rel=tol)


def test_uniformity_se_is_the_unbiased_u_statistic_variance_across_blocks():
    """Against the definitions written out over every ordered triple and quadruple of distinct points (n = 9), and
    the same over several block layouts."""
    import itertools

    f, g = (F.normalize(x[:9], dim=1) for x in _population("clustered", 50, seed=3))
    h = [torch.exp(-2 * torch.cdist(x.double(), x.double()) ** 2) for x in (f, g)]
    n = 9
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    u = [sum(m[i, j] for i, j in pairs).item() / len(pairs) for m in h]
    k = sum(m / um for m, um in zip(h, u)).numpy()
    mean2 = np.mean([k[i, j] * k[a, b] for i, j, a, b in itertools.permutations(range(n), 4)])
    cross = np.mean([k[i, j] * k[i, a] for i, j, a in itertools.permutations(range(n), 3)])
    square = np.mean([k[i, j] ** 2 for i, j in pairs])
    expected = math.sqrt(2 / (n * (n - 1)) * (2 * (n - 2) * (cross - mean2) + square - mean2))
    for block in (2, 4, 4096):
        assert uniformity_se([f, g], block=block) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(uniformity_se([f[:3]]))
