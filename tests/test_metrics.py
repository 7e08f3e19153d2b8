"""Whole-set metrics: exact over all pairs, bounded memory, unit-norm check, the uniformity bound."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate

from hypersphere.losses import uniform_loss
from hypersphere.metrics import alignment, uniformity, uniformity_bound


def sphere(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_uniformity_is_exact_over_all_pairs_across_blocks():
    f = sphere(1000, 16, 1)
    ref = torch.pdist(f.double()).pow(2).mul(-2).exp().mean().log().item()
    for block in (64, 333, 4096):  # several block layouts, one of them ragged
        assert uniformity(f, 2.0, block=block) == pytest.approx(ref, abs=1e-5)


def test_uniformity_is_not_an_average_of_minibatch_values():
    f = sphere(512, 8, 2)
    minibatch_mean = np.mean([uniform_loss(f[i:i + 64], 2).item() for i in range(0, 512, 64)])
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
    w = lambda s: (1 - s * s) ** ((m - 3) / 2)
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
