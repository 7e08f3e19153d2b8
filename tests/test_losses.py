"""Losses against independent reference formulas (pdist and explicit loops), float64 gradient checks,
property tests, and the objective's parser."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from hypersphere.losses import Objective, align_loss, contrastive_loss, uniform_loss


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


@pytest.mark.parametrize("spec, canonical", [
    ("contrastive(tau=0.5) + uniform(t=2)", "contrastive(tau=0.5) + uniform(t=2)"),
    ("uniform + align", "align(alpha=2) + uniform(t=2)"),
    ("5e-05*align(alpha=2)", "5e-05*align(alpha=2)"),
    (" 2 * uniform( t = 3 )+0.5*contrastive(tau=0.07)", "0.5*contrastive(tau=0.07) + 2*uniform(t=3)"),
    ("0*contrastive(tau=1) + align(alpha=1)", "align(alpha=1)"),
])
def test_objective_canonical_form(spec, canonical):
    obj = Objective.parse(spec)
    assert str(obj) == canonical and Objective.parse(canonical) == obj


@pytest.mark.parametrize("spec, quoted", [
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
])
def test_bad_objective_specs_quote_the_offending_part(spec, quoted):
    with pytest.raises(ValueError, match=__import__("re").escape(quoted)):
        Objective.parse(spec)
