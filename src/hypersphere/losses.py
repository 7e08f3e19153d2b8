"""The paper's three training losses as minibatch estimators (docs/paper.md, "Definitions"), and the weighted
objective `w_c L_contrastive(tau) + w_a L_align(alpha) + w_u L_uniform(t)` that names every run.

All losses compute in at least float32 whatever the input precision (bf16 autocast on CUDA feeds them bf16).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _fp32(x: Tensor) -> Tensor:
    """Half-precision inputs are promoted to float32; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def align_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """L_align (Eq. 2 of the paper): mean over positive pairs of ||x_i - y_i||_2^alpha.

    Computed from the squared distance, so the gradient stays finite (zero) for identical pairs
    even when alpha < 2, where a norm-based formula gives NaN.
    """
    sq = (_fp32(x) - _fp32(y)).pow(2).sum(dim=1)
    if alpha == 2:
        return sq.mean()
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.pow(alpha / 2), torch.zeros_like(sq)).mean()


def gaussian_logits(x: Tensor, y: Tensor, t: float) -> Tensor:
    """All -t ||x_i - y_j||^2 = -t ||x_i||^2 - t ||y_j||^2 + 2t x_i.y_j, in one fused matrix product."""
    return torch.addmm(-t * (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)), x, y.T, alpha=2 * t)


def uniform_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """L_uniform (Eq. 3): log of the mean Gaussian potential exp(-t ||x_i - x_j||^2) over distinct pairs.

    Same value as the official `torch.pdist(x).pow(2).mul(-t).exp().mean().log()`, but from one
    matrix product and a log-sum-exp: no underflow to -inf for large t or spread points, finite
    gradients when two rows coincide (no square root), fp32 accumulation for half inputs, and a
    backward pass that is a matrix product rather than pdist's slow kernel.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniform_loss needs a batch of at least 2 points, got {n}")
    x = _fp32(x)
    logits = gaussian_logits(x, x, t).fill_diagonal_(float("-inf"))
    # The off-diagonal entries count every distinct pair twice: mean = LSE - log(n (n - 1)).
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))


def contrastive_loss(x: Tensor, y: Tensor, tau: float) -> Tensor:
    """Symmetric in-batch InfoNCE, L_contrastive(tau) (Eq. 1) with the paper's 2K-term estimator.

    For x_i the positive is y_i and the negatives are y_j (j != i); for y_i likewise with the x_j.
    Returns the mean of the 2K cross-entropy terms.
    """
    logits = _fp32(x) @ _fp32(y).T / tau
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ----------------------------------------------------------------------------- the objective

# term name -> (its parameter, default value or None when it must be given)
TERMS: dict[str, tuple[str, float | None]] = {
    "contrastive": ("tau", None),
    "align": ("alpha", 2.0),
    "uniform": ("t", 2.0),
    # Supervised training (Fig. 3): cross-entropy of a linear head on the unit-norm output, its logits times
    # `scale`, as cosine classifiers do. Unscaled, the logits can only be as large as the head's weights and
    # cross-entropy stays near log C for many epochs (digits-color at dim 2).
    "xent": ("scale", 10.0),
}
_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TERM = re.compile(
    rf"^\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*"
    rf"(?:\(\s*(?:(?P<key>\w+)\s*=\s*(?P<value>-?{_NUMBER})\s*)?\))?\s*$"
)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass(frozen=True)
class Term:
    name: str      # a key of TERMS
    weight: float
    param: float   # tau, alpha, t or scale

    def __str__(self) -> str:
        weight = "" if self.weight == 1 else f"{_fmt(self.weight)}*"
        return f"{weight}{self.name}({TERMS[self.name][0]}={_fmt(self.param)})"


@dataclass(frozen=True)
class Objective:
    """A weighted sum of losses, e.g. `Objective.parse("0.98*align(alpha=2) + 0.96*uniform(t=2)")`.

    `str(obj)` gives the canonical spec (terms in the order of TERMS), and `Objective.parse(str(obj)) == obj`.
    Calling it on the two views' features returns the total and each unweighted term; uniformity averages
    the two views, as the paper does (Sec. 4). The `xent` term needs the head's logits and the labels.
    """
    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, spec: str) -> "Objective":
        if not spec.strip():
            raise ValueError("empty objective: write e.g. 'align(alpha=2) + uniform(t=2)'")
        found: dict[str, Term] = {}
        for part in re.split(r"(?<![eE])\+", spec):
            found_term = cls._parse_term(part)
            if found_term.name in found:
                raise ValueError(f"objective term {found_term.name!r} appears twice in {spec!r}")
            found[found_term.name] = found_term
        terms = tuple(found[n] for n in TERMS if n in found)
        if all(term.weight == 0 for term in terms):
            raise ValueError(f"objective {spec!r} has all weights zero: give at least one term a positive weight")
        return cls(tuple(term for term in terms if term.weight > 0))

    @staticmethod
    def _parse_term(part: str) -> Term:
        if part.lstrip().startswith("-"):
            raise ValueError(f"term {part.strip()!r}: weights must be >= 0")
        m = _TERM.match(part)
        if m is None:
            raise ValueError(f"cannot parse objective term {part.strip()!r}: expected e.g. '0.5*uniform(t=2)'")
        name, key = m["name"], m["key"]
        if name not in TERMS:
            raise ValueError(f"unknown objective term {part.strip()!r}: choose from {', '.join(TERMS)}")
        param_name, default = TERMS[name]
        if key is not None and key != param_name:
            raise ValueError(f"term {part.strip()!r} takes the parameter {param_name!r}, not {key!r}")
        param = float(m["value"]) if m["value"] is not None else default
        if param is None:
            raise ValueError(f"term {part.strip()!r} needs its parameter, e.g. '{name}({param_name}=0.5)'")
        if param <= 0:
            raise ValueError(f"term {part.strip()!r}: {param_name} must be > 0")
        weight = float(m["weight"]) if m["weight"] is not None else 1.0
        return Term(name, weight, param)

    def __str__(self) -> str:
        return " + ".join(str(term) for term in self.terms)

    def weight(self, name: str) -> float:
        return next((term.weight for term in self.terms if term.name == name), 0.0)

    def param(self, name: str) -> float | None:
        return next((term.param for term in self.terms if term.name == name), None)

    @property
    def views(self) -> int:
        """Views of each input the objective needs: 1 for cross-entropy alone, else 2 (a positive pair)."""
        return 1 if self.needs_labels and len(self.terms) == 1 else 2

    @property
    def needs_labels(self) -> bool:
        return any(term.name == "xent" for term in self.terms)

    def __call__(self, zx: Tensor, zy: Tensor | None = None, logits: Tensor | None = None,
                 labels: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        values: dict[str, Tensor] = {}
        for term in self.terms:
            if term.name == "contrastive":
                values[term.name] = contrastive_loss(zx, zy, term.param)
            elif term.name == "align":
                values[term.name] = align_loss(zx, zy, term.param)
            elif term.name == "uniform":
                values[term.name] = (uniform_loss(zx, term.param) + uniform_loss(zy, term.param)) / 2
            else:
                values[term.name] = F.cross_entropy(term.param * _fp32(logits), labels)
        total = sum(term.weight * values[term.name] for term in self.terms)
        return total, values
