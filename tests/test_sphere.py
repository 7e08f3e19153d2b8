"""Tests for hypersphere.sphere (samplers, potentials, Theorem 1 estimators) and the two density panels of
hypersphere.plots, each against an independent reference computed here."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from scipy.special import ive

from hypersphere.metrics import uniformity_bound
from hypersphere.sphere import (
    circle_mixture_potential,
    contrastive_limit,
    contrastive_loss_M,
    mean_gaussian_potential,
    optimize_points,
    sample_uniform,
    sample_vmf,
    sample_vmf_mixture,
    synthetic_encoder,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hypersphere import plots  # noqa: E402

FIG4_MIXTURE = ([[1.0, 0.0], [0.0, 1.0]], [1e3, 1.0], [0.4, 0.6])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("dim", [2, 3, 16])
@pytest.mark.parametrize("kappa", [0.5, 5.0, 50.0, 1e3])
def test_vmf_mean_resultant_length_matches_bessel_ratio(dim, kappa):
    """E[mu.x] = A_m(kappa) = I_{m/2}(kappa) / I_{m/2-1}(kappa) for x ~ vMF(mu, kappa) on S^{m-1}."""
    g = gen(dim)
    mu = torch.randn(dim, generator=g)
    x = sample_vmf(20_000, mu, kappa, g).double()
    mu = mu.double() / mu.double().norm()
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x), dtype=torch.float64), atol=1e-6)
    w = x @ mu
    expected = ive(dim / 2, kappa) / ive(dim / 2 - 1, kappa)
    se = w.std().item() / math.sqrt(len(w))
    assert abs(w.mean().item() - expected) < 5 * se + 1e-6, (w.mean().item(), expected, se)
    # the component orthogonal to mu averages to zero (no preferred direction besides mu)
    perp = (x - w[:, None] * mu).mean(0)
    assert perp.norm().item() < 6 * math.sqrt(max(1 - expected**2, 1e-12) / len(x)) + 1e-6


def test_vmf_is_stable_for_huge_kappa_and_exact_in_the_tail():
    g = gen()
    x = sample_vmf(5_000, [0.0, 0.0, 1.0], 1e6, g).double()
    assert torch.isfinite(x).all()
    # on S^2, 1 - w ~ Exponential(kappa) to first order: E[1 - w] = 1/kappa - ... (A_3 = coth k - 1/k)
    one_minus_w = 1 - x[:, 2]
    assert abs(one_minus_w.mean().item() * 1e6 - 1.0) < 0.1


def test_vmf_mixture_counts_and_components():
    mus, kappas, weights = FIG4_MIXTURE
    x = sample_vmf_mixture(20_000, mus, kappas, weights, gen())
    assert x.shape == (20_000, 2)
    near_e1 = (x[:, 0] > 0.99).double().mean().item()  # within 0.1415 rad of e1: all of the kappa = 1e3 part
    half = math.acos(0.99)
    theta = np.linspace(-half, half, 2001)  # plus the broad vMF([0,1], 1) density over that arc
    broad = np.trapezoid(np.exp(np.cos(theta - np.pi / 2) - 1) / (2 * np.pi * ive(0, 1.0)), theta)
    expected = 0.4 + 0.6 * broad
    assert abs(near_e1 - expected) < 5 * math.sqrt(expected * (1 - expected) / len(x))


def test_sampling_is_deterministic_with_a_seed():
    mus, kappas, weights = FIG4_MIXTURE
    for fn in (
        lambda g: sample_vmf(100, [1.0, 2.0, 3.0], 7.0, g),
        lambda g: sample_vmf_mixture(100, mus, kappas, weights, g),
        lambda g: sample_uniform(100, 5, g),
        lambda g: torch.cat(synthetic_encoder(100, g, dim=4, sigma=0.3, kappa=5.0)),
    ):
        assert torch.equal(fn(gen(3)), fn(gen(3)))
        assert not torch.equal(fn(gen(3)), fn(gen(4)))


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="nonzero"):
        sample_vmf(10, [0.0, 0.0], 1.0, gen())
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(10, [1.0, 0.0], -1.0, gen())
    with pytest.raises(ValueError, match="weights"):
        sample_vmf_mixture(10, [[1.0, 0.0]], [1.0], [-1.0], gen())


# ----------------------------------------------------------------------------- potentials (Figure 4, bound)


def test_uniform_mean_potential_on_circle_is_0_2070():
    """Figure 4: uniform points on S^1 have mean G_2 = 0.2070 = exp(uniformity_bound(2, 2)) = e^-4 I_0(4)."""
    value = mean_gaussian_potential(sample_uniform(3000, 2, gen()), t=2)
    exact = math.exp(uniformity_bound(2, 2))
    assert exact == pytest.approx(math.exp(-4) * np.i0(4), rel=1e-12)
    assert exact == pytest.approx(0.2070, abs=5e-5)
    assert abs(value - exact) < 7e-4  # ~5 standard errors at n = 3000 (measured sd 1.3e-4)


def test_mean_gaussian_potential_matches_pdist():
    x = sample_vmf(300, [1.0, 1.0, 0.0], 3.0, gen())
    reference = torch.pdist(x.double()).pow(2).mul(-2).exp().mean().item()
    assert mean_gaussian_potential(x, t=2) == pytest.approx(reference, rel=1e-5)


def test_circle_mixture_potential_matches_quadrature_and_sampling():
    mus, kappas, weights = FIG4_MIXTURE
    exact = circle_mixture_potential(mus, kappas, weights, t=2)
    # independent reference: double integral of the von Mises mixture density on a fine angle grid
    th = np.linspace(-np.pi, np.pi, 4001)[:-1]
    dth = th[1] - th[0]
    p = sum(
        w * np.exp(k * (np.cos(th - np.arctan2(m[1], m[0])) - 1)) / (2 * np.pi * ive(0, k))
        for m, k, w in zip(mus, kappas, weights)
    )
    kernel = np.exp(-2 * (2 - 2 * np.cos(th[:, None] - th[None, :])))
    assert exact == pytest.approx(p @ kernel @ p * dth**2, rel=1e-4)
    sampled = mean_gaussian_potential(sample_vmf_mixture(4000, mus, kappas, weights, gen()))
    assert abs(sampled - exact) < 0.012  # sd ~0.004 at n = 4000, from the binomial component counts
    assert circle_mixture_potential([[0.0, 1.0]], [0.0], [1.0], t=1.5) == pytest.approx(
        math.exp(uniformity_bound(2, 1.5)), rel=1e-10
    )


# ----------------------------------------------------------------------------- Props. 1-2


def test_optimized_points_on_circle_are_equally_spaced():
    n = 10
    init = sample_vmf(n, [1.0, 0.0], 2.0, gen())  # start clustered
    history: list[float] = []
    x = optimize_points(n, 2, t=2, steps=300, lr=0.05, init=init, history=history)
    angles = torch.atan2(x[:, 1], x[:, 0]).double().sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    assert torch.allclose(gaps, torch.full_like(gaps, 2 * math.pi / n), atol=1e-3)
    assert history[-1] < history[0]
    # regular n-gon: mean over distinct pairs of exp(-2 |x_i - x_j|^2) = exp(-4 + 4 cos(2 pi k / n)), k != 0
    ngon = np.mean([math.exp(-4 + 4 * math.cos(2 * math.pi * k / n)) for k in range(1, n)])
    assert history[-1] == pytest.approx(math.log(ngon), abs=1e-5)


def test_four_optimized_points_on_s2_form_a_regular_tetrahedron():
    x = optimize_points(4, 3, t=2, steps=500, lr=0.05, generator=gen()).double()
    gram = x @ x.T
    off = gram[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 3), atol=1e-3)


# ----------------------------------------------------------------------------- Theorem 1


def test_contrastive_limit_matches_loops():
    g = gen()
    fx, fy = synthetic_encoder(7, g, dim=3, sigma=0.5)
    neg, _ = synthetic_encoder(11, g, dim=3, sigma=0.5)
    tau = 0.3
    got = contrastive_limit(fx, fy, neg, tau, chunk=3)
    fx, fy, neg = fx.double().numpy(), fy.double().numpy(), neg.double().numpy()
    for i in range(7):
        ref = -fx[i] @ fy[i] / tau + math.log(np.mean([math.exp(n @ fy[i] / tau) for n in neg]))
        assert got[i].item() == pytest.approx(ref, rel=1e-10)


def test_contrastive_loss_M_with_one_negative_is_closed_form():
    """With a pool of one row every negative is b: loss = -a + log(e^a + M e^b), limit = -a + b."""
    g = gen()
    fx, fy = synthetic_encoder(50, g, dim=4, sigma=0.3)
    neg = sample_uniform(1, 4, g)
    tau, M = 0.5, 37
    a = (fx.double() * fy.double()).sum(1) / tau
    b = (fy.double() @ neg.double().T)[:, 0] / tau
    loss = contrastive_loss_M(fx, fy, neg, tau, M, g, chunk=16)
    assert torch.allclose(loss, -a + torch.log(a.exp() + M * b.exp()), rtol=1e-10)
    assert torch.allclose(contrastive_limit(fx, fy, neg, tau), b - a, rtol=1e-10)


def test_contrastive_loss_minus_log_M_converges_to_the_limit():
    g = gen()
    fx, fy = synthetic_encoder(1000, g, dim=8, sigma=0.2)
    neg, _ = synthetic_encoder(2000, g, dim=8, sigma=0.2)
    tau = 0.5
    limit = contrastive_limit(fx, fy, neg, tau)
    gaps = []
    for M in (4, 64, 1024):
        dev = contrastive_loss_M(fx, fy, neg, tau, M, g) - math.log(M) - limit
        gaps.append((dev.mean().abs().item(), dev.pow(2).mean().sqrt().item()))
    assert gaps[0][0] > gaps[1][0] > gaps[2][0]  # the loss itself approaches the limit
    assert gaps[2][0] < 0.01
    # per pair, the deviation shrinks like M^-1/2: a factor 4 per factor 16 in M
    assert gaps[1][1] / gaps[2][1] == pytest.approx(4, rel=0.2)


def test_contrastive_loss_M_is_deterministic():
    fx, fy = synthetic_encoder(64, gen(), dim=4, sigma=0.3)
    one = contrastive_loss_M(fx, fy, fx, 0.5, 16, gen(1))
    assert torch.equal(one, contrastive_loss_M(fx, fy, fx, 0.5, 16, gen(1)))


def test_synthetic_encoder_controls_alignment_and_uniformity():
    from hypersphere.metrics import alignment, uniformity

    g = gen()
    tight, loose = synthetic_encoder(2000, g, dim=8, sigma=0.05), synthetic_encoder(2000, g, dim=8, sigma=1.0)
    assert alignment(*tight) < 0.1 < 1.0 < alignment(*loose)
    clustered = synthetic_encoder(2000, g, dim=8, sigma=0.05, kappa=10.0)
    assert uniformity(clustered[0]) > uniformity(tight[0]) + 0.5
    assert abs(uniformity(tight[0]) - uniformity_bound(8, 2)) < 0.05


# ----------------------------------------------------------------------------- plots


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    plots.set_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png, pdf = plots.save_figure(fig, "line", tmp_path / "figs")
    plt.close(fig)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["line.pdf", "line.png"]  # no temp files


def test_density_panels():
    f = sample_vmf_mixture(2000, *FIG4_MIXTURE, gen())
    fig, (a, b) = plt.subplots(1, 2)
    image = plots.kde_panel_2d(a, f, grid=40)
    density = image.get_array()
    assert density.shape == (40, 40) and np.argmax(density) // 40 == 20  # peak at (1, 0): middle row
    line = plots.vmf_kde_angles(b, f, kappa=8.0)
    phi, dens = line.get_data()
    assert np.trapezoid(dens, phi) == pytest.approx(1.0, abs=1e-3)
    assert abs(phi[np.argmax(dens)]) < 0.05  # the tight cluster at angle 0
    with pytest.raises(ValueError, match="N, 2"):
        plots.kde_panel_2d(a, torch.zeros(5, 3))
    plt.close(fig)
