"""The paper's three training losses as minibatch estimators (docs/paper.md, "Definitions"), and the weighted
objective `w_c L_contrastive(tau) + w_a L_align(alpha) + w_u L_uniform(t)` that names every run.

Every kind of term is one entry of TERMS (a TermKind: its parameter and its loss in each form it has: in-batch,
against MoCo's queue, on sentence windows); `register` adds one from outside, and nothing else names terms.

All losses compute in at least float32 whatever the input precision (under `bf16`, autocast on CUDA feeds them bf16).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .moco import ema_update


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


def _uniform_row_blocks(n: int) -> list[tuple[int, int]]:
    """Row blocks [i0, i1) of the pair matrix's upper part: block [i0, i1) holds the pairs (i, j), i in the block
    and j >= i0, as one (i1 - i0) x (n - i0) matrix, so each distinct pair is held once, except in the squares on
    the diagonal (twice): k equal blocks hold n^2 (1 + 1/k) / 2 entries instead of n^2, at the price of 3k - 1
    matrix products instead of 2. Worth it with one intra-op thread only: with several, every product is an
    OpenMP parallel region, and on a machine whose cores other processes also use (two processes with two
    threads each on two cores), every region can wait a scheduler time slice (~10 ms), which costs more than
    the halved arithmetic saves."""
    k = max(1, min(4, n // 256)) if torch.get_num_threads() == 1 else 1
    cuts = [round(i * n / k) for i in range(k + 1)]
    return list(zip(cuts, cuts[1:]))


def _autocast_off(device_type: str):
    """The products below must stay in the input's precision inside a bf16 autocast region."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    import contextlib

    return contextlib.nullcontext()


def _uniform_factored(x: Tensor, t: float, with_grad: bool):
    """The fast path (CPU, t > 0): exp(l_ij) = exp(2t x_i.x_j) u_i u_j with u = exp(-t ||x||^2), so the pair
    matrix is one matrix product and one in-place exp, with no bias terms and no max pass; the squared norms are
    the product's diagonal. Returns None where that form loses accuracy, for the caller to use the shifted form:
    2t ||x_i||^2 so large that exp(2t x_i.x_j) could overflow, or potentials so small (large t, spread points)
    that their total is within n^2 * tiny / eps of underflow.

    Returns (None, S, h, u), S = sum_{i != j} exp(l_ij) and, when `with_grad`, h = E (u * x) - (E u) * x for the
    gradient u * h * 4t / S (E = exp(2t x x^T) with a zero diagonal).
    """
    info = torch.finfo(x.dtype)
    n, d = x.shape
    spans = _uniform_row_blocks(n)
    zero = x.new_zeros(())
    if len(spans) == 1:
        flat = torch.addmm(zero, x, x.T, beta=0, alpha=2 * t)
        blocks = [flat]
    else:
        flat = x.new_empty(sum((i1 - i0) * (n - i0) for i0, i1 in spans))
        blocks, offset = [], 0
        for i0, i1 in spans:
            block = flat[offset : offset + (i1 - i0) * (n - i0)].view(i1 - i0, n - i0)
            offset += block.numel()
            torch.addmm(zero, x[i0:i1], x[i0:].T, beta=0, alpha=2 * t, out=block)
            blocks.append(block)
    norms = torch.cat([block.diagonal() for block in blocks])  # 2t ||x_i||^2
    # |2t x_i.x_j| <= max 2t ||x||^2 <= log(max) - 8: exp cannot overflow, and u >= exp(-(log(max) - 8) / 2) is
    # a normal number (False for NaN too).
    if not norms.abs().max().item() <= math.log(info.max) - 8:
        return None
    u = torch.exp(norms * -0.5)
    flat.exp_()  # all blocks at once
    for block in blocks:
        block.diagonal().zero_()  # the pairs (i, i)
    # One product gives both E u and E (u * x): w = [u * x | u] (only [u] without the gradient).
    w = x.new_empty(n, d + 1 if with_grad else 1)
    w[:, -1] = u
    if with_grad:
        torch.mul(x, u[:, None], out=w[:, :-1])
    if len(blocks) == 1:
        m = blocks[0] @ w
    else:  # E w for the symmetric E whose upper part the blocks hold
        m = torch.zeros_like(w)
        for (i0, i1), block in zip(spans, blocks):
            m[i0:i1].addmm_(block, w[i0:])
            if i1 < n:
                m[i1:].addmm_(block[:, i1 - i0 :].T, w[i0:i1])
    eu = m[:, -1]
    total = torch.dot(u, eu)  # the intermediate products E_ij u_j >= exp(l_ij): none underflows before its term
    if not n * (n - 1) * info.tiny / info.eps <= total.item() < math.inf:
        return None  # all underflowed terms together (each < tiny) would not be below eps * total
    h = torch.addcmul(m[:, :-1], x, eu[:, None], value=-1) if with_grad else None
    return None, total, h, u


def _uniform_shifted(x: Tensor, t: float, with_grad: bool):
    """The general path (other devices, where reading a value back would synchronise, and the CPU path's
    fallback): the n x n logits, shifted by their largest off-diagonal entry, then exp. Returns (shift, S, h, None)
    with S = sum_{i != j} exp(l_ij - shift) and h = E x - (E 1) * x (E = exp(l - shift), zero diagonal)."""
    logits = gaussian_logits(x, x, t)
    logits.diagonal().fill_(float("-inf"))
    shift = logits.amax()
    e = logits.sub_(shift).exp_()
    r = e.sum(1)
    h = torch.addcmul(e @ x, x, r[:, None], value=-1) if with_grad else None
    return shift, r.sum(), h, None


class _UniformLoss(torch.autograd.Function):
    """L_uniform with its gradient computed in the forward pass (no n x n matrix is kept); see uniform_loss."""

    @staticmethod
    def forward(ctx, x: Tensor, t: float) -> Tensor:
        n = x.shape[0]
        with_grad = ctx.needs_input_grad[0]
        with _autocast_off(x.device.type):
            out = _uniform_factored(x, t, with_grad) if x.device.type == "cpu" and t > 0 else None
            if out is None:
                out = _uniform_shifted(x, t, with_grad)
        shift, total, h, u = out
        if with_grad:
            ctx.save_for_backward(x, h, u, total)
            ctx.t = t
        # every distinct pair is in the total twice (once per order): mean = total / (n (n - 1))
        value = total.log() - math.log(n * (n - 1))
        return value if shift is None else value + shift

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, h, u, total = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (second derivatives): the same gradient from differentiable ops on the full
            # n x n matrix, which autograd can differentiate again.
            with _autocast_off(x.device.type):
                n = x.shape[0]
                logits = gaussian_logits(x, x, ctx.t).fill_diagonal_(float("-inf"))
                p = torch.softmax(logits.flatten(), dim=0).view(n, n)
                return (p @ x - p.sum(1, keepdim=True) * x) * (grad * 4 * ctx.t), None
        scale = grad * (4 * ctx.t) / total
        return h * (scale if u is None else (u * scale)[:, None]), None


def uniform_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """L_uniform (Eq. 3): log of the mean Gaussian potential exp(-t ||x_i - x_j||^2) over distinct pairs.

    Same value as the official `torch.pdist(x).pow(2).mul(-t).exp().mean().log()`, without its underflow
    to -inf for large t or spread points, with finite gradients when two rows coincide (no square root),
    and fp32 accumulation for half inputs (the gradient comes back in the input's dtype; float64 stays
    float64). `t` is a number (not differentiated).

    The gradient has a closed form. With l_ij = -t ||x_i - x_j||^2, S = sum_{i != j} exp(l_ij) and
    P = exp(l) / S (zero diagonal, symmetric), each pair appears as (i, j) and (j, i) and
    dl_ij/dx_i = -2t (x_i - x_j), so dL/dx_i = 4t ((P x)_i - (sum_j P_ij) x_i). A custom autograd Function
    computes it in the forward pass, when x requires grad, from the same pair matrix (one more matrix product),
    and keeps only that n x d result for the backward pass: two matrix products and an exp in all, where
    autograd through addmm, a diagonal fill and logsumexp took three products and several n x n passes.

    Second derivatives work but are not fast: with create_graph=True the backward pass builds the gradient
    from differentiable ops on the full n x n matrix instead.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniform_loss needs a batch of at least 2 points, got {n}")
    return _UniformLoss.apply(_fp32(x), float(t))


def contrastive_loss(x: Tensor, y: Tensor, tau: float) -> Tensor:
    """Symmetric in-batch InfoNCE, L_contrastive(tau) (Eq. 1) with the paper's 2K-term estimator.

    For x_i the positive is y_i and the negatives are y_j (j != i); for y_i likewise with the x_j.
    Returns the mean of the 2K cross-entropy terms.
    """
    logits = _fp32(x) @ _fp32(y).T / tau
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def ntxent_loss(x: Tensor, y: Tensor, tau: float) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1): each of the 2K views against the 2K - 1 others, its positive the
    other view of its input (L_contrastive's estimator compares each view with the other view's K only); the mean
    of the 2K cross-entropy terms."""
    z = torch.cat([_fp32(x), _fp32(y)])
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    k = len(x)
    positives = torch.cat([torch.arange(k, 2 * k), torch.arange(k)]).to(x.device)
    return F.cross_entropy(logits, positives)


def barlow_loss(x: Tensor, y: Tensor, lambd: float) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, Eq. 1) on the embeddings before l2-normalisation: C is the cross-correlation
    of the two views with every dimension standardised over the batch (as the official code's affine-free
    BatchNorm: biased variance, eps 1e-5); sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2."""

    def standardise(v: Tensor) -> Tensor:
        v = _fp32(v)
        return (v - v.mean(0)) / (v.var(0, unbiased=False) + 1e-5).sqrt()

    c = standardise(x).T @ standardise(y) / len(x)
    on = (c.diagonal() - 1).pow(2).sum()
    return on + lambd * (c.pow(2).sum() - c.diagonal().pow(2).sum())


def vicreg_loss(x: Tensor, y: Tensor, nu: float = 1.0) -> Tensor:
    """VICReg (Bardes et al. 2022, Eq. 6, coefficients lambda = mu = 25 and nu) on the embeddings before
    l2-normalisation: 25 * invariance (the mean squared difference of the views) + 25 * variance (the mean hinge
    relu(1 - std) of each dimension's std over the batch, eps 1e-4, both views averaged) + nu * covariance (the sum
    of the squared off-diagonal covariances divided by the dimension d, both views summed). The paper's nu = 1 is
    tuned for d = 8192; the 1/d makes the covariance term weaker the smaller d is (docs/paper.md, beyond the paper)."""
    x, y = _fp32(x), _fp32(y)
    invariance = F.mse_loss(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    variance = sum(F.relu(1 - (v.var(0) + 1e-4).sqrt()).mean() for v in (x, y)) / 2
    d = x.shape[1]
    covariance = sum(((v.T @ v) / (len(v) - 1)).fill_diagonal_(0).pow(2).sum() / d for v in (x, y))
    return 25 * invariance + 25 * variance + nu * covariance


def predictive_loss(p: tuple[Tensor, Tensor], t: tuple[Tensor, Tensor]) -> Tensor:
    """BYOL's loss (Grill et al. 2020, Eq. 2), symmetrised: the mean over both directions of
    ||p_1 / |p_1| - t_2 / |t_2| ||^2 = 2 - 2 cos(p_1, t_2), the targets t without gradient. SimSiam (Chen & He
    2021) minimises -cos with the same stop-gradient, the same objective up to 2 - 2 cos = 2 (1 + D)."""
    return (
        sum(
            (2 - 2 * F.cosine_similarity(_fp32(a), _fp32(b).detach(), dim=1)).mean()
            for a, b in ((p[0], t[1]), (p[1], t[0]))
        )
        / 2
    )


DINO_STUDENT_TAU = 0.1  # DINO's student temperature
DINO_PROTOTYPES = 256  # K, the scores' dimension (DINO's 65,536 is sized for ImageNet)
DINO_CENTRE_MOMENTUM = 0.9  # DINO's m in C <- m C + (1 - m) mean(teacher scores)


def dino_loss(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], centre: Tensor, tau: float) -> Tensor:
    """DINO's loss (Caron et al. 2021, Eq. 1 and Algorithm 1) on two views: the mean over the two cross-view pairs of
    H(P_t, P_s) = -sum_k P_t log P_s, P_s = softmax(s / DINO_STUDENT_TAU) from the student's scores of one view and
    P_t = softmax((t - centre) / tau) from the teacher's scores of the other (centred, sharpened, no gradient)."""
    loss = 0
    for s, t in ((student[0], teacher[1]), (student[1], teacher[0])):
        p_t = F.softmax((_fp32(t).detach() - centre) / tau, dim=1)
        loss = loss - (p_t * F.log_softmax(_fp32(s) / DINO_STUDENT_TAU, dim=1)).sum(1).mean()
    return loss / 2


def queue_contrastive_loss(q: Tensor, k: Tensor, queue: Tensor, tau: float) -> Tensor:
    """MoCo's InfoNCE (He et al. 2020, Eq. 1): mean over i of -log softmax_0([q_i.k_i, q_i.queue_1, ...,
    q_i.queue_N] / tau), the positive at index 0. q, k [K, d], queue [N, d] -> scalar, in at least float32."""
    with _autocast_off(q.device.type):
        q, k, queue = _fp32(q), _fp32(k), _fp32(queue)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / tau
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def queue_uniform_loss(q: Tensor, queue: Tensor, t: float = 2.0, intra_batch: bool = True) -> Tensor:
    """L_uniform against a queue of keys (Wang & Isola 2020, appendix, MoCo on ImageNet-100):

      intra_batch=False (Eq. 17): log (1 / (K N)) sum_{i,j} exp(-t ||q_i - queue_j||^2);
      intra_batch=True  (Eq. 18): log of the mean of exp(-t d^2) over the K N query-queue pairs and the
        K (K - 1) / 2 distinct pairs of queries, i.e. every pair weighted 2 / (2 N K + K (K - 1)).

    K = len(q) (the batch), N = len(queue). A log-sum-exp over gaussian_logits, so nothing underflows for large
    t, gradients stay finite for coincident points (no square root), and bf16 inputs are computed in float32
    (also inside autocast). The queue gets no gradient.
    """
    with _autocast_off(q.device.type):
        q, queue = _fp32(q), _fp32(queue.detach())
        logits = gaussian_logits(q, queue, t).flatten()
        pairs = len(q) * len(queue)
        if intra_batch and len(q) > 1:
            i, j = torch.triu_indices(len(q), len(q), offset=1, device=q.device)
            logits = torch.cat([logits, gaussian_logits(q, q, t)[i, j]])
            pairs += len(q) * (len(q) - 1) // 2
        return torch.logsumexp(logits, dim=0) - math.log(pairs)


# ----------------------------------------------------------------------------- sentence windows (Fig. 9b)

CONTEXT = 1  # neighbours on each side of a sentence that are its positives


def neighbour_pairs(doc: Tensor, context: int = CONTEXT) -> tuple[Tensor, Tensor]:
    """All ordered (i, j) of a batch of consecutive sentences with 0 < |i - j| <= context in one document."""
    doc, i, j = torch.as_tensor(doc), [], []
    n = len(doc)
    for d in range(1, min(context, n - 1) + 1):
        first = torch.arange(n - d)[doc[:-d] == doc[d:]]
        i += [first, first + d]
        j += [first + d, first]
    if not i:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    i, j = torch.cat(i), torch.cat(j)
    order = torch.argsort(i * n + j)
    return i[order], j[order]


def qt_contrastive_loss(
    zf: Tensor, zg: Tensor, doc: Tensor, context: int = CONTEXT, tau: float = 1.0, self_score: float | None = None
) -> Tensor:
    """QT's objective (Logeswaran & Lee 2018, Sec. 3) on a batch of consecutive sentences: sentence i
    classifies its candidates j (the batch) by softmax_j(f(s_i).g(s_j) / tau), and the loss is the mean over
    sentences with a neighbour of -mean_{j in N(i)} log p(j | i), N(i) its neighbours within `context` in its
    document. The candidates exclude s_i itself (the paper's set); `self_score=0.` instead keeps it with score 0,
    as QT's released code does. tau = 1 with unnormalised outputs is QT; Wang & Isola's contrastive family uses
    l2-normalised outputs and a temperature."""
    scores = _fp32(zf) @ _fp32(zg).T / tau
    scores = scores.diagonal_scatter(
        torch.full((len(scores),), float("-inf") if self_score is None else self_score, device=scores.device)
    )
    i, j = neighbour_pairs(doc.cpu(), context)
    if len(i) == 0:
        raise ValueError("no two neighbouring sentences of one document in this batch: batch consecutive sentences")
    i, j = i.to(scores.device), j.to(scores.device)
    per_row = torch.bincount(i, minlength=len(scores)).float()
    logp = scores.log_softmax(dim=1)[i, j]
    return -(logp / per_row[i]).sum() / (per_row > 0).sum()


# ----------------------------------------------------------------------------- the terms an objective is made of


@dataclass(frozen=True)
class Batch:
    """What one step hands the objective: the two views' unit-norm features, and what some terms read besides
    (`TermKind.reads`): the labels, the embeddings before l2-normalisation (`raw`; `projected` when the predictor
    reads them, TrainConfig.predictor_on), an EMA target encoder's features of both views (`targets`), MoCo's queue,
    and for sentence windows each sentence's document (`doc`) and how many neighbours on each side are positives
    (`context`). `own` is the module of the term being computed (TermKind.own), set by Objective.on for each term."""

    zx: Tensor
    zy: Tensor | None = None
    labels: Tensor | None = None
    raw: tuple[Tensor, Tensor] | None = None
    projected: tuple[Tensor, Tensor] | None = None
    targets: tuple[Tensor, Tensor] | None = None
    queue: Tensor | None = None
    intra_batch: bool = True
    doc: Tensor | None = None
    context: int = CONTEXT
    own: nn.Module | None = None


@dataclass(frozen=True)
class TermKind:
    """One kind of term: its parameter (default None: it must be given) and its loss in each form it has, each a
    function (Batch, parameter) -> loss; None where it has no such form. `batch`: the two views of a batch;
    `queue`: MoCo's queries and keys against the queue; `sentences`: a window of consecutive sentences, zx and zy
    the f and g encoders' outputs (Quick-Thought). `reads`: what of Batch it needs beyond zx and zy, so the trainer
    builds it (`labels`; `raw`; `targets`: an EMA target encoder). `own`: (config, data, parameter) -> a module the
    term trains and keeps (a head, a predictor), saved under `key` (`register` defaults it to the term's name) and
    handed to its loss as Batch.own. `collapse_prone` (no negatives): the trainer records the features' spread."""

    param: str
    default: float | None
    batch: Callable[[Batch, float], Tensor]
    queue: Callable[[Batch, float], Tensor] | None = None
    sentences: Callable[[Batch, float], Tensor] | None = None
    reads: tuple[str, ...] = ()
    collapse_prone: bool = False
    own: Callable[[Any, Any, float], nn.Module] | None = None
    key: str = ""


def _head(cfg, data, scale: float) -> nn.Module:
    """xent's linear head, zero-initialised: the scaled logits start uniform (cross-entropy log C)."""
    head = nn.Linear(cfg.dim, data.num_classes)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    return head


def _predictor(cfg, data, width: float) -> nn.Module:
    """SimSiam's predictor (Chen & He 2021), also BYOL's: Linear-BN-ReLU-Linear, its hidden layer `width` x the output
    dimension (SimSiam's bottleneck is 1/4; BYOL's is wider)."""
    hidden = round(width * cfg.dim)
    return nn.Sequential(
        nn.Linear(cfg.dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, cfg.dim),
    )


class Prototypes(nn.Module):
    """DINO's last layer and centre (Caron et al. 2021, Sec. 3.1): the scores z . w_k of unit-norm features against
    K unit-norm prototypes (a weight-normalised layer with its norm fixed at 1, after the l2-normalised bottleneck
    DINO's head ends in, here the encoder's output); the teacher's prototypes, which follow the student's by an EMA
    (momentum `ema`, applied before each use in training mode, as the EMA target encoder's); and the centre of the
    teacher's scores."""

    def __init__(self, dim: int, prototypes: int, ema: float):
        super().__init__()
        self.student = nn.Linear(dim, prototypes, bias=False)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("centre", torch.zeros(prototypes))
        self.ema = ema

    def forward(self, z: Tensor) -> Tensor:
        return _fp32(z) @ F.normalize(self.student.weight, dim=1).T

    @torch.no_grad()
    def teach(self, targets: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The teacher's scores of both views' target features; in training mode, after the EMA step."""
        if self.training:
            ema_update(self.teacher, self.student, self.ema)
        w = F.normalize(self.teacher.weight, dim=1)
        return tuple(_fp32(t) @ w.T for t in targets)

    @torch.no_grad()
    def recentre(self, scores: Tensor) -> None:
        """C <- m C + (1 - m) mean of the teacher's scores over the (global) batch (DINO's Eq. 4)."""
        if self.training:
            self.centre.mul_(DINO_CENTRE_MOMENTUM).add_(scores.mean(0) * (1 - DINO_CENTRE_MOMENTUM))


def _prototypes(cfg, data, tau: float) -> Prototypes:
    return Prototypes(cfg.dim, DINO_PROTOTYPES, cfg.ema)


def _dino(b: Batch, tau: float) -> Tensor:
    teacher = b.own.teach(b.targets)
    loss = dino_loss((b.own(b.zx), b.own(b.zy)), teacher, b.own.centre, tau)
    b.own.recentre(torch.cat(teacher))
    return loss


def _predictive(b: Batch, width: float) -> Tensor:
    x, y = b.projected if b.projected is not None else (b.zx, b.zy)
    return predictive_loss((b.own(x), b.own(y)), b.targets if b.targets is not None else (b.zx, b.zy))


def _align(b: Batch, alpha: float) -> Tensor:
    return align_loss(b.zx, b.zy, alpha)


def _sentence_align(b: Batch, alpha: float) -> Tensor:
    i, j = neighbour_pairs(b.doc.cpu(), b.context)
    return align_loss(b.zx[i.to(b.zx.device)], b.zy[j.to(b.zy.device)], alpha)


# term name -> its kind, in the order of a canonical objective; `register` adds one (docs/architecture.md)
TERMS: dict[str, TermKind] = {
    "contrastive": TermKind(
        "tau",
        None,
        batch=lambda b, tau: contrastive_loss(b.zx, b.zy, tau),
        queue=lambda b, tau: queue_contrastive_loss(b.zx, b.zy, b.queue, tau),
        sentences=lambda b, tau: qt_contrastive_loss(b.zx, b.zy, b.doc, b.context, tau),
    ),
    "align": TermKind(
        "alpha",
        2.0,
        batch=_align,
        queue=_align,  # queries against their keys, as in a batch
        sentences=_sentence_align,
    ),
    # uniformity averages the two views (Sec. 4); against a queue it reads the queries; on sentence windows it is
    # the SUM of f's and g's terms, as the paper's appendix defines it there
    "uniform": TermKind(
        "t",
        2.0,
        batch=lambda b, t: (uniform_loss(b.zx, t) + uniform_loss(b.zy, t)) / 2,
        queue=lambda b, t: queue_uniform_loss(b.zx, b.queue, t, b.intra_batch),
        sentences=lambda b, t: uniform_loss(b.zx, t) + uniform_loss(b.zy, t),
    ),
    # Supervised training (Fig. 3): cross-entropy of a linear head on the unit-norm output, its logits times
    # `scale`, as cosine classifiers do. Unscaled, the logits can only be as large as the head's weights and
    # cross-entropy stays near log C for many epochs (digits-color at dim 2).
    "xent": TermKind(
        "scale",
        10.0,
        batch=lambda b, scale: F.cross_entropy(scale * _fp32(b.own(b.zx)), b.labels),
        reads=("labels",),
        own=_head,
        key="head",
    ),
    # Beyond the paper (notebook 10_beyond): SimCLR's NT-Xent; Barlow Twins and VICReg on the embeddings before
    # l2-normalisation; SimSiam (stop-gradient) and BYOL (an EMA target encoder, TrainConfig.ema) through a
    # predictor MLP whose hidden layer is `width` times the output dimension.
    "ntxent": TermKind("tau", None, batch=lambda b, tau: ntxent_loss(b.zx, b.zy, tau)),
    "barlow": TermKind(
        "lambd", 0.0051, batch=lambda b, lambd: barlow_loss(*b.raw, lambd), reads=("raw",), collapse_prone=True
    ),
    "vicreg": TermKind("nu", 1.0, batch=lambda b, nu: vicreg_loss(*b.raw, nu), reads=("raw",), collapse_prone=True),
    "simsiam": TermKind("width", 4.0, batch=_predictive, collapse_prone=True, own=_predictor, key="predictor"),
    "byol": TermKind(
        "width", 4.0, batch=_predictive, reads=("targets",), collapse_prone=True, own=_predictor, key="predictor"
    ),
    # DINO: K prototypes scored by the student's and the EMA teacher's features, the teacher's scores centred and
    # sharpened at temperature `tau`
    "dino": TermKind("tau", 0.04, batch=_dino, reads=("targets",), collapse_prone=True, own=_prototypes, key="dino"),
}
FORMS = {"batch": "in-batch", "queue": "MoCo queue", "sentences": "Quick-Thought"}  # TermKind's forms, in words


def with_form(form: str) -> str:
    """The kinds of term that have `form`, in words: "contrastive, align and uniform"."""
    names = [name for name, kind in TERMS.items() if getattr(kind, form) is not None]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def register(name: str, kind: TermKind) -> None:
    """Add a kind of term to every objective's vocabulary, after the others in canonical order (so no existing
    run's name changes): `losses.register("toy", TermKind("w", 1.0, batch=lambda b, w: ...))`, then
    `objective: "toy(w=0.5) + uniform(t=2)"` in a config. A form it lacks is refused before training."""
    if not name.isidentifier() or name in TERMS:
        raise ValueError(f"cannot register term {name!r}: it must be a new identifier (known: {', '.join(TERMS)})")
    TERMS[name] = replace(kind, key=kind.key or name)


_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TERM = re.compile(
    rf"^\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*"
    rf"(?:\(\s*(?:(?P<key>\w+)\s*=\s*(?P<value>-?{_NUMBER})\s*)?\))?\s*$"
)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass(frozen=True)
class Term:
    name: str  # a key of TERMS
    weight: float
    param: float  # tau, alpha, t or scale

    def __str__(self) -> str:
        weight = "" if self.weight == 1 else f"{_fmt(self.weight)}*"
        return f"{weight}{self.name}({TERMS[self.name].param}={_fmt(self.param)})"


@dataclass(frozen=True)
class Objective:
    """A weighted sum of losses, e.g. `Objective.parse("0.98*align(alpha=2) + 0.96*uniform(t=2)")`.

    `str(obj)` gives the canonical spec (terms in the order of TERMS), and `Objective.parse(str(obj)) == obj`.
    Calling it on the two views' features returns the total and each unweighted term (`on` for another form);
    uniformity averages the two views, as the paper does (Sec. 4). What a term reads besides is in TermKind.reads.
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
        owners = [term.name for term in terms if TERMS[term.name].own is not None]
        keys = [TERMS[name].key for name in owners]
        if shared := next((k for k in keys if keys.count(k) > 1), None):
            both = " and ".join(n for n, k in zip(owners, keys) if k == shared)
            raise ValueError(f"objective {spec!r}: {both} each own a {shared}; train them apart")
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
        param_name, default = TERMS[name].param, TERMS[name].default
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
        return self.reads("labels")

    def reads(self, what: str) -> bool:
        """Whether a term reads `what` of Batch beyond the two views' unit-norm features (TermKind.reads)."""
        return any(what in TERMS[term.name].reads for term in self.terms)

    @property
    def collapse_prone(self) -> bool:
        return any(TERMS[term.name].collapse_prone for term in self.terms)

    def lacking(self, form: str) -> list[str]:
        """The terms with no loss in `form` (a key of FORMS)."""
        return [term.name for term in self.terms if getattr(TERMS[term.name], form) is None]

    def on(
        self, form: str, batch: Batch, owned: dict[str, nn.Module] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum of the terms' losses in `form` on `batch`, and each unweighted term; `owned`: the terms'
        own modules by term name (TermKind.own; methods.Method makes them)."""
        if bad := self.lacking(form):
            raise ValueError(f"objective {self}: {', '.join(bad)} has no {FORMS[form]} form; use {with_form(form)}")
        owned = owned or {}
        values = {
            term.name: getattr(TERMS[term.name], form)(replace(batch, own=owned.get(term.name)), term.param)
            for term in self.terms
        }
        return sum(term.weight * values[term.name] for term in self.terms), values

    def __call__(
        self, zx: Tensor, zy: Tensor | None = None, owned: dict[str, nn.Module] | None = None, **batch
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective on one batch of two views (Batch's fields by name); with `queue=`, against MoCo's queue."""
        return self.on("batch" if batch.get("queue") is None else "queue", Batch(zx, zy, **batch), owned)
