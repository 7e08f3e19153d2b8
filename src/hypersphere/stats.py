"""Statistics the paper does not give for its metric-vs-performance figures (Figs. 5, 9): Spearman rank
correlations with percentile-bootstrap confidence intervals, an out-of-sample (cross-validated) linear
combination of L_align and L_uniform, and "pick the encoder with the best score" as a selection rule."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr


def spearman(x, y) -> float:
    """Spearman rank correlation; nan when fewer than 3 points or either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def bootstrap_spearman(x, y, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Spearman rho of (x, y) and its percentile-bootstrap confidence interval (resampling the points with
    replacement; resamples where a side is constant are skipped). Returns (rho, low, high)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = spearman(x, y)
    if np.isnan(rho):
        return rho, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    # Spearman = Pearson correlation of (tie-averaged) ranks, for all resamples at once
    boots = _pearson_rows(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))
    boots = boots[np.isfinite(boots)]  # resamples where one side is constant
    alpha = (1 - level) / 2
    return rho, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / den


def fit_linear(X, y) -> np.ndarray:
    """Least-squares weights [intercept, w_1, ..., w_k] of y ~ X."""
    X = np.column_stack([np.ones(len(X)), np.asarray(X, float)])
    return np.linalg.lstsq(X, np.asarray(y, float), rcond=None)[0]


def cv_predictions(X, y, folds: int = 5, repeats: int = 10, seed: int = 0) -> np.ndarray:
    """Out-of-sample predictions of a linear regression y ~ X: each point is predicted only by fits that did
    not see it, averaged over `repeats` random splits into `folds` folds (folds >= n: leave-one-out, once)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    if X.ndim == 1:
        X = X[:, None]
    n = len(y)
    if n < X.shape[1] + 3:
        raise ValueError(f"need at least {X.shape[1] + 3} points to cross-validate a linear fit on "
                         f"{X.shape[1]} metrics, got {n}")
    rng = np.random.default_rng(seed)
    splits = [np.arange(n)] if folds >= n else [rng.permutation(n) % folds for _ in range(repeats)]
    pred = np.zeros(n)
    for fold_of in splits:
        for k in range(fold_of.max() + 1):
            test = fold_of == k
            w = fit_linear(X[~test], y[~test])
            pred[test] += w[0] + X[test] @ w[1:]
    return pred / len(splits)


def combination_score(X, y, folds: int = 5, repeats: int = 10, seed: int = 0) -> dict[str, Any]:
    """How well a linear combination of the metrics X ranks encoders by accuracy y, out of sample:
    spearman (rank correlation of the cross-validated predictions with y), r2 (1 - SSE / SS around the mean,
    out of sample, so it can be negative), the predictions and the weights fitted on all points.
    With no signal at all the expected score is slightly negative (a known bias of cross-validated
    correlations: each held-out point pulls the fit away from itself), not exactly 0."""
    y = np.asarray(y, float)
    pred = cv_predictions(X, y, folds, repeats, seed)
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() if np.ptp(y) > 0 else float("nan")
    return {"spearman": spearman(pred, y), "r2": float(r2), "pred": pred, "weights": fit_linear(X, y)}


def selection_rule(score, accuracy, higher_is_better: bool = True) -> dict[str, float]:
    """Model selection by a label-free or out-of-sample score: the accuracy of the encoder the score ranks
    first, next to the best and the median accuracy, and the chosen one's percentile (100 = the best)."""
    score, accuracy = np.asarray(score, float), np.asarray(accuracy, float)
    ok = np.isfinite(score) & np.isfinite(accuracy)
    score, accuracy = score[ok], accuracy[ok]
    if len(score) == 0:
        return {"chosen": float("nan"), "best": float("nan"), "median": float("nan"), "percentile": float("nan")}
    i = int(np.argmax(score) if higher_is_better else np.argmin(score))
    return {"chosen": float(accuracy[i]), "best": float(accuracy.max()), "median": float(np.median(accuracy)),
            "percentile": float(100 * (accuracy <= accuracy[i]).mean())}


def binomial_se(accuracy, n) -> np.ndarray:
    """Standard error (points) of an accuracy (%) measured on n independent examples: 100 sqrt(p (1 - p) / n)."""
    p = np.asarray(accuracy, float) / 100
    return 100 * np.sqrt(p * (1 - p) / np.asarray(n, float))
