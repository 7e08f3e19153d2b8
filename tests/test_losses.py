"""Losses against independent reference formulas (pdist and explicit loops), float64 gradient checks,
property tests, and the objective's parser."""

import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from hypersphere.losses import Objective, _uniform_row_blocks, align_loss, contrastive_loss, uniform_loss


def sphere(n, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def ref_contrastive(x, y, tau):
    """2K terms written as explicit loops over the batch (docs/paper.md, "Definitions")."""
    k, terms = len(x), []
    for a, b in ((x, y), (y, x)):
        for i in range(k):
            pos = torch.exp(a[i] @ b[i] / tau)
            neg = sum(torch.exp(a[i] @ b[j] / tau) for j in range(k) if j != i)
            terms.append(-torch.log(pos / (pos + neg)))
    return torch.stack(terms).mean()


def test_align_matches_official_formula():
    x, y = sphere(50, 16, 0), sphere(50, 16, 1)
    for alpha in (1.0, 2.0, 3.0):
        ref = (x - y).norm(p=2, dim=1).pow(alpha).mean()
        assert torch.allclose(align_loss(x, y, alpha), ref, atol=1e-10)


@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
def test_uniform_matches_pdist(t):
    x = sphere(64, 8, 2)
    ref = torch.pdist(x).pow(2).mul(-t).exp().mean().log()
    assert torch.allclose(uniform_loss(x, t).double(), ref, atol=1e-5)


def test_uniform_matches_explicit_loop_on_unnormalised_points():
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pairs = [math.exp(-2 * (x[i] - x[j]).pow(2).sum().item()) for i in range(12) for j in range(i + 1, 12)]
    assert uniform_loss(x, 2.0).item() == pytest.approx(math.log(sum(pairs) / len(pairs)), abs=1e-5)


def test_contrastive_matches_loops():
    x, y = sphere(10, 6, 4), sphere(10, 6, 5)
    for tau in (0.07, 0.5, 2.0):
        assert contrastive_loss(x, y, tau).item() == pytest.approx(ref_contrastive(x, y, tau).item(), rel=1e-5)


def test_uniform_does_not_underflow_where_pdist_does():
    x = torch.eye(4)  # every pair at squared distance 2
    t = 100.0  # exp(-200) underflows to 0 in float32: the pdist form gives -inf
    assert torch.isinf(torch.pdist(x).pow(2).mul(-t).exp().mean().log())
    assert uniform_loss(x, t).item() == pytest.approx(-200.0)


def test_collapsed_encoder_has_finite_gradients():
    """Two identical rows (a collapsing encoder): gradients stay finite (docs/paper.md, "Definitions": pitfalls),
    and the two copies receive the same gradient, as they must by symmetry."""
    x = sphere(8, 4, 7, torch.float32)
    x = torch.cat([x, x[:1]]).requires_grad_()
    uniform_loss(x, 2.0).backward()
    assert torch.isfinite(x.grad).all() and torch.allclose(x.grad[0], x.grad[-1])
    z = torch.ones(5, 3, requires_grad=True)  # fully collapsed
    uniform_loss(z, 2.0).backward()
    assert torch.isfinite(z.grad).all()
    y = x.detach().clone().requires_grad_()
    align_loss(y, y.detach(), alpha=1.0).backward()
    assert torch.isfinite(y.grad).all()


def test_gradients_float64():
    x = sphere(6, 3, 8).requires_grad_()
    y = sphere(6, 3, 9).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: uniform_loss(a, 2.0).double(), (x,))
    assert torch.autograd.gradcheck(lambda a, b: align_loss(a, b, 1.5).double(), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, b, 0.5).double(), (x, y))


def test_half_precision_inputs_accumulate_in_fp32():
    x = sphere(256, 32, 10, torch.float32)
    ref = uniform_loss(x, 2.0)
    for dtype in (torch.float16, torch.bfloat16):
        out = uniform_loss(x.to(dtype), 2.0)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(ref.item(), abs=2e-2)


def test_batch_of_one_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        uniform_loss(torch.ones(1, 4))


def lse_uniform(x, t):
    """The previous uniform_loss, kept as a reference: autograd through addmm, a -inf diagonal and logsumexp
    over all n^2 logits (uniform_loss now computes a closed-form gradient in its forward pass)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    n = x.shape[0]
    sq = x.pow(2).sum(1, keepdim=True)
    logits = torch.addmm(-t * (sq + sq.T), x, x.T, alpha=2 * t).fill_diagonal_(float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))


def value_and_grad(fn, x, t):
    x = x.detach().clone().requires_grad_()
    value = fn(x, t)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def with_duplicates(x, k):
    """x with copies of its first k rows appended (a partly collapsed batch)."""
    return torch.cat([x, x[:k]])


@pytest.fixture(params=["default threads", "one thread"])
def threads(request):
    """With one intra-op thread uniform_loss splits the pair matrix into row blocks (upper part only), with
    several it uses the full matrix: test both layouts."""
    before = torch.get_num_threads()
    if request.param == "one thread":
        torch.set_num_threads(1)
    yield request.param
    torch.set_num_threads(before)


def test_row_blocks_tile_the_batch(threads):
    for n in (2, 255, 256, 511, 512, 767, 768, 1024, 1031, 5000):
        spans = _uniform_row_blocks(n)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(i1 - i0 >= 2 for i0, i1 in spans)
        if torch.get_num_threads() > 1 or n < 512:
            assert len(spans) == 1


# batch sizes on both sides of the row-block boundaries (with one thread: 1 block below 512, then 2, 3, 4)
@pytest.mark.parametrize("n", [2, 3, 5, 255, 256, 511, 512, 513, 767, 768, 1024, 1031])
def test_uniform_value_and_gradient_match_the_previous_formula_float64(n, threads):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x = F.normalize(x, dim=1) if n % 2 else x * 0.3  # on the sphere, and unnormalised
    if n > 8:
        x = with_duplicates(x, 3)
    for t in (0.5, 2.0, 10.0):
        value, grad = value_and_grad(uniform_loss, x, t)
        ref_value, ref_grad = value_and_grad(lse_uniform, x, t)
        assert value.dtype == grad.dtype == torch.float64
        assert value.item() == pytest.approx(ref_value.item(), abs=1e-12)
        assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-12 * ref_grad.abs().max().item())
        with torch.no_grad():  # the forward pass alone (no gradient computed)
            assert uniform_loss(x, t).item() == pytest.approx(ref_value.item(), abs=1e-12)


@pytest.mark.parametrize("n", [200, 768, 2048])
def test_uniform_matches_the_previous_formula_float32(n, threads):
    x = sphere(n, 128, n, torch.float32)
    exact_value, exact_grad = value_and_grad(lse_uniform, x.double(), 2.0)
    for fn in (uniform_loss, lse_uniform):
        value, grad = value_and_grad(fn, x, 2.0)
        assert value.dtype == grad.dtype == torch.float32
        assert value.item() == pytest.approx(exact_value.item(), abs=2e-6)
        assert (grad.double() - exact_grad).abs().max() <= 1e-4 * exact_grad.abs().max()


@pytest.mark.parametrize("t", [0.3, 2.0, 7.0, 40.0])
@pytest.mark.parametrize("n, duplicates", [(2, 0), (3, 0), (7, 2), (12, 4)])
def test_uniform_gradcheck_float64(n, duplicates, t):
    x = with_duplicates(sphere(n, 3, n + 20), duplicates).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: uniform_loss(a, t), (x,))


@pytest.mark.parametrize("n", [600, 800, 1100])  # with one thread: 2, 3 and 4 row blocks
def test_uniform_gradcheck_float64_large_batches(n, threads):
    x = with_duplicates(sphere(n - 5, 3, n), 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: uniform_loss(a, 2.0), (x,), fast_mode=True)


def test_large_t_is_finite_and_matches_float64(threads):
    """t = 100: every pair potential underflows in fp32 (pdist gives -inf and NaN gradients); ours gives the
    float64 value and gradient, for spread points, for a partly collapsed batch and for several blocks."""
    for x in (
        sphere(256, 128, 13, torch.float32),
        with_duplicates(sphere(60, 8, 14, torch.float32), 2),
        sphere(1030, 16, 15, torch.float32),
    ):
        exact_value, exact_grad = value_and_grad(lse_uniform, x.double(), 100.0)
        value, grad = value_and_grad(uniform_loss, x, 100.0)
        assert math.isfinite(value.item()) and torch.isfinite(grad).all()
        assert value.item() == pytest.approx(exact_value.item(), rel=1e-5)
        # no less accurate than the previous formula in fp32 (the duplicates' exact gradient is 0: rounding only)
        previous_error = (value_and_grad(lse_uniform, x, 100.0)[1].double() - exact_grad).abs().max()
        error = (grad.double() - exact_grad).abs().max()
        assert error <= 3e-5 * max(1.0, exact_grad.abs().max()) and error <= 1.5 * previous_error


@pytest.mark.parametrize(
    "x, t, expected",
    [
        (torch.eye(4), 40.0, -80.0),  # exp(-80) is a normal fp32 number, but 12 of them are too close to underflow
        (torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), 40.0, -160.0),  # exp(-160) underflows in fp32
        (torch.tensor([[3.0, 0.0], [0.0, 4.0], [3.0, 0.0]]), 5.0, math.log(1 / 3)),  # 2t ||x||^2 = 160: large norms
    ],
)
def test_uniform_underflow_and_large_norms_fall_back_to_the_shifted_form(x, t, expected):
    value, grad = value_and_grad(uniform_loss, x, t)
    exact_value, exact_grad = value_and_grad(lse_uniform, x.double(), t)
    assert value.item() == pytest.approx(expected, rel=1e-6) and exact_value.item() == pytest.approx(expected)
    assert torch.isfinite(grad).all()
    assert (grad.double() - exact_grad).abs().max() <= 1e-5 * max(1.0, exact_grad.abs().max())


def test_uniform_far_apart_points_float64():
    x = 100 * sphere(10, 4, 16)  # squared distances ~ 2e4: exp underflows even in float64
    value, grad = value_and_grad(uniform_loss, x, 2.0)
    ref_value, ref_grad = value_and_grad(lse_uniform, x, 2.0)
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-12 * ref_grad.abs().max().item())


def test_uniform_half_precision_gradient_comes_back_in_the_input_dtype():
    x = sphere(300, 32, 17, torch.float32)
    _, ref_grad = value_and_grad(uniform_loss, x, 2.0)
    for dtype in (torch.float16, torch.bfloat16):
        value, grad = value_and_grad(uniform_loss, x.to(dtype), 2.0)
        assert value.dtype == torch.float32 and grad.dtype == dtype
        assert (grad.float() - ref_grad).abs().max() <= 0.05 * ref_grad.abs().max()


def test_uniform_inside_bf16_autocast_stays_float32():
    x = sphere(300, 32, 18, torch.float32)
    ref_value, ref_grad = value_and_grad(uniform_loss, x, 2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grad = value_and_grad(uniform_loss, x, 2.0)
    assert value.dtype == grad.dtype == torch.float32
    assert value.item() == pytest.approx(ref_value.item(), abs=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_uniform_non_contiguous_input_and_no_grad(threads):
    x = sphere(20, 1100, 19, torch.float32)  # x.T[:, ::2] is 1100 x 10, neither row- nor column-contiguous
    y = x.T[:, ::2]
    value, grad = value_and_grad(uniform_loss, y, 2.0)
    ref_value, ref_grad = value_and_grad(lse_uniform, y, 2.0)
    assert value.item() == pytest.approx(ref_value.item(), abs=2e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    with torch.no_grad():
        assert uniform_loss(y, 2.0).item() == pytest.approx(value.item(), abs=1e-6)
    assert uniform_loss(y.detach(), 2.0).item() == pytest.approx(value.item(), abs=1e-6)  # nothing to differentiate


def test_uniform_two_views_then_one_backward(threads):
    """The objective calls uniform_loss on both views before one backward: each keeps its own saved state."""
    x, y = sphere(520, 8, 20, torch.float32), sphere(520, 8, 21, torch.float32)
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    (uniform_loss(a, 2.0) + uniform_loss(b, 3.0)).backward()
    for points, t, grad in ((x, 2.0, a.grad), (y, 3.0, b.grad)):
        assert torch.allclose(grad, value_and_grad(lse_uniform, points, t)[1], atol=1e-6)


@pytest.mark.parametrize("n, t", [(5, 2.0), (9, 0.7), (8, 20.0)])
def test_uniform_second_derivatives_fall_back_to_a_differentiable_gradient(n, t):
    x = with_duplicates(sphere(n, 3, n + 22), 1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a: uniform_loss(a, t), (x,))
    (grad,) = torch.autograd.grad(uniform_loss(x, t), x, create_graph=True)
    (ref_grad,) = torch.autograd.grad(lse_uniform(x, t), x, create_graph=True)
    assert torch.allclose(grad, ref_grad, atol=1e-12)
    penalty, ref_penalty = (grad.pow(2).sum(), ref_grad.pow(2).sum())
    assert torch.allclose(torch.autograd.grad(penalty, x)[0], torch.autograd.grad(ref_penalty, x)[0], atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_uniform_on_cuda_matches_cpu():
    for n, t in ((256, 2.0), (1030, 2.0), (256, 100.0)):
        x = sphere(n, 64, 23, torch.float32)
        value, grad = value_and_grad(uniform_loss, x, t)
        for dtype in (torch.float32, torch.bfloat16):
            cuda_value, cuda_grad = value_and_grad(uniform_loss, x.cuda().to(dtype), t)
            assert cuda_value.dtype == torch.float32 and cuda_grad.dtype == dtype
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            assert cuda_value.item() == pytest.approx(value.item(), abs=tol * max(1, t))
            assert (cuda_grad.float().cpu() - grad).abs().max() <= 5 * tol * grad.abs().max()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(2, 16), seed=st.integers(0, 10_000), t=st.floats(0.1, 10))
def test_uniform_bounds_and_rotation_invariance(n, d, seed, t):
    x = sphere(n, d, seed)
    value = uniform_loss(x, t).item()
    # every pair potential lies in [exp(-4t), 1] on the unit sphere
    assert -4 * t - 1e-6 <= value <= 1e-6
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    assert uniform_loss(x @ q, t).item() == pytest.approx(value, abs=1e-4)
    assert uniform_loss(x[torch.randperm(n)], t).item() == pytest.approx(value, abs=1e-4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 10_000), tau=st.floats(0.05, 5))
def test_contrastive_symmetric_and_bounded(n, seed, tau):
    x, y = sphere(n, 8, seed), sphere(n, 8, seed + 1)
    value = contrastive_loss(x, y, tau)
    assert value.item() == pytest.approx(contrastive_loss(y, x, tau).item(), rel=1e-5)
    # each term is at least the loss of a perfectly aligned pair against maximally far negatives
    assert value.item() >= math.log(1 + (n - 1) * math.exp(-2 / tau)) - 1e-5


# ----------------------------------------------------------------------------- objective


def test_objective_round_trips_and_computes_the_weighted_sum():
    obj = Objective.parse("0.98*align(alpha=2) + 0.96*uniform(t=2)")
    assert str(obj) == "0.98*align(alpha=2) + 0.96*uniform(t=2)"
    assert Objective.parse(str(obj)) == obj
    x, y = sphere(16, 8, 11, torch.float32), sphere(16, 8, 12, torch.float32)
    total, terms = obj(x, y)
    unif = (uniform_loss(x, 2) + uniform_loss(y, 2)) / 2
    assert terms["uniform"].item() == pytest.approx(unif.item())
    assert total.item() == pytest.approx(0.98 * align_loss(x, y).item() + 0.96 * unif.item(), rel=1e-6)


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("contrastive(tau=0.5) + uniform(t=2)", "contrastive(tau=0.5) + uniform(t=2)"),
        ("uniform + align", "align(alpha=2) + uniform(t=2)"),
        ("5e-05*align(alpha=2)", "5e-05*align(alpha=2)"),
        (" 2 * uniform( t = 3 )+0.5*contrastive(tau=0.07)", "0.5*contrastive(tau=0.07) + 2*uniform(t=3)"),
        ("0*contrastive(tau=1) + align(alpha=1)", "align(alpha=1)"),
    ],
)
def test_objective_canonical_form(spec, canonical):
    obj = Objective.parse(spec)
    assert str(obj) == canonical and Objective.parse(canonical) == obj


@pytest.mark.parametrize(
    "spec, quoted",
    [
        ("-0.5*align(alpha=2)", "-0.5*align(alpha=2)"),
        ("0*align + 0*uniform", "all weights zero"),
        ("align(alpha=0)", "align(alpha=0)"),
        ("uniform(t=-1)", "uniform(t=-1)"),
        ("contrastive", "contrastive"),
        ("contrastive(tau=0)", "contrastive(tau=0)"),
        ("unifrom(t=2)", "unifrom(t=2)"),
        ("align(t=2)", "align(t=2)"),
        ("0.98*align(alpha=2", "0.98*align(alpha=2"),
        ("align + align", "twice"),
        ("", "empty"),
    ],
)
def test_bad_objective_specs_quote_the_offending_part(spec, quoted):
    with pytest.raises(ValueError, match=__import__("re").escape(quoted)):
        Objective.parse(spec)


# ----------------------------------------------------------------------------- objectives beyond the paper


def _pairs(k=12, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g, dtype=torch.float64), torch.randn(k, d, generator=g, dtype=torch.float64)


def test_ntxent_against_a_loop_over_its_2k_anchors():
    from hypersphere.losses import ntxent_loss

    x, y = (F.normalize(v, dim=1) for v in _pairs())
    z, k, tau = torch.cat([x, y]).numpy(), len(x), 0.3
    terms = []
    for i in range(2 * k):
        positive = (i + k) % (2 * k)
        others = [j for j in range(2 * k) if j != i]
        terms.append(-z[i] @ z[positive] / tau + np.log(sum(np.exp(z[i] @ z[j] / tau) for j in others)))
    assert ntxent_loss(x, y, tau).item() == pytest.approx(np.mean(terms), rel=1e-10)


def test_barlow_twins_against_numpy():
    from hypersphere.losses import barlow_loss

    x, y = _pairs()
    a, b = x.numpy(), y.numpy()
    za = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)  # the official code's affine-free BatchNorm
    zb = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = za.T @ zb / len(a)
    d = c.shape[0]
    expected = sum((1 - c[i, i]) ** 2 for i in range(d)) + 0.005 * sum(
        c[i, j] ** 2 for i in range(d) for j in range(d) if i != j
    )
    assert barlow_loss(x, y, 0.005).item() == pytest.approx(expected, rel=1e-10)


def test_vicreg_against_numpy():
    from hypersphere.losses import vicreg_loss

    x, y = _pairs()
    x, y = 0.3 * x, 0.3 * y  # some dimensions' std under 1: the hinge is active
    a, b = x.numpy(), y.numpy()
    invariance = ((a - b) ** 2).mean()
    variance = np.mean([np.maximum(0, 1 - np.sqrt(v.var(0, ddof=1) + 1e-4)).mean() for v in (a, b)])
    covariance = sum(((np.cov(v.T) - np.diag(np.diag(np.cov(v.T)))) ** 2).sum() / v.shape[1] for v in (a, b))
    for nu in (1, 30):
        assert vicreg_loss(x, y, nu).item() == pytest.approx(
            25 * invariance + 25 * variance + nu * covariance, rel=1e-10
        )


def test_predictive_loss_is_byols_and_stops_the_targets_gradient():
    from hypersphere.losses import predictive_loss

    p1, p2 = (v.requires_grad_() for v in _pairs(seed=1))
    t1, t2 = (v.requires_grad_() for v in _pairs(seed=2))
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    a, b, c, d = (unit(v.detach().numpy()) for v in (p1, p2, t1, t2))
    expected = (((a - d) ** 2).sum(1).mean() + ((b - c) ** 2).sum(1).mean()) / 2
    loss = predictive_loss((p1, p2), (t1, t2))
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert t1.grad is None and t2.grad is None and p1.grad.abs().sum() > 0


def test_dino_loss_against_scipy_and_its_centre_and_teacher():
    """DINO (Caron et al. 2021, Algorithm 1): the cross-entropy of the student's softmax at 0.1 against the teacher's
    centred softmax at tau, both cross-view pairs averaged, the teacher without gradient; the centre and the teacher's
    prototypes follow by EMA in training mode only."""
    from scipy.special import log_softmax, softmax

    from hypersphere.losses import DINO_CENTRE_MOMENTUM, Prototypes, dino_loss

    g = torch.Generator().manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(16, 12, generator=g, dtype=torch.float64) for _ in range(4))
    centre, tau = torch.randn(12, generator=g, dtype=torch.float64), 0.04
    s1.requires_grad_(), t1.requires_grad_()
    expected = np.mean(
        [
            -(softmax((t.detach().numpy() - centre.numpy()) / tau, axis=1) * log_softmax(s.detach().numpy() / 0.1, 1))
            .sum(1)
            .mean()
            for s, t in ((s1, t2), (s2, t1))
        ]
    )
    loss = dino_loss((s1, s2), (t1, t2), centre, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert t1.grad is None and s1.grad.abs().sum() > 0

    torch.manual_seed(0)
    head = Prototypes(dim=8, prototypes=12, ema=0.9).train()
    z = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    w = head.student.weight.detach().clone()
    assert torch.allclose(head(z), z @ F.normalize(w, dim=1).T)  # cosines with unit-norm prototypes
    with torch.no_grad():
        head.student.weight.add_(1.0)
    teacher = head.teach((z, z))
    moved = 0.9 * w + 0.1 * (w + 1)
    assert torch.allclose(head.teacher.weight, moved) and torch.allclose(teacher[0], z @ F.normalize(moved, dim=1).T)
    head.recentre(torch.cat(teacher))
    assert torch.allclose(head.centre, (1 - DINO_CENTRE_MOMENTUM) * teacher[0].mean(0))
    head.eval()
    head.teach((z, z)), head.recentre(torch.cat(teacher))
    assert torch.allclose(head.teacher.weight, moved) and torch.allclose(
        head.centre, (1 - DINO_CENTRE_MOMENTUM) * teacher[0].mean(0)
    )


def test_objectives_beyond_the_paper_parse_and_refuse_a_queue():
    objective = Objective.parse("ntxent(tau=0.5) + 0.5*barlow + vicreg(nu=2) + byol(width=2) + dino")
    assert str(objective) == (
        "ntxent(tau=0.5) + 0.5*barlow(lambd=0.0051) + vicreg(nu=2) + byol(width=2) + dino(tau=0.04)"
    )
    with pytest.raises(ValueError, match="simsiam and byol each own a predictor; train them apart"):
        Objective.parse("simsiam + byol")
    with pytest.raises(ValueError, match="needs its parameter"):
        Objective.parse("ntxent")
    x, y = (F.normalize(v.float(), dim=1) for v in _pairs())
    with pytest.raises(ValueError, match="barlow has no MoCo queue form"):
        Objective.parse("barlow")(x, y, queue=x)
