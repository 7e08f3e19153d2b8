"""Statistics the paper does not give for its metric-vs-performance figures (Figs. 5, 9): Spearman rank
correlations with percentile-bootstrap confidence intervals, an out-of-sample (cross-validated) linear
combination of L_align and L_uniform, and "pick the encoder with the best score" as a selection rule; and for the
claims judged over seeds, the Student-t interval rule (`decide`) and a two-stage design that plans the seeds an
undecided claim needs (`second_stage`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import nct, rankdata, spearmanr
from scipy.stats import t as student_t


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


def bootstrap_spearman_difference(
    a, b, y, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """rho(a, y) - rho(b, y) and its paired percentile-bootstrap interval: both scores are ranked on the same
    resamples of the points, so what they share does not widen the interval. Returns (difference, low, high)."""
    a, b, y = (np.asarray(v, float) for v in (a, b, y))
    diff = spearman(a, y) - spearman(b, y)
    if np.isnan(diff):
        return diff, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    ranked_y = rankdata(y[idx], axis=1)
    boots = _pearson_rows(rankdata(a[idx], axis=1), ranked_y) - _pearson_rows(rankdata(b[idx], axis=1), ranked_y)
    boots = boots[np.isfinite(boots)]
    alpha = (1 - level) / 2
    return float(diff), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


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
        raise ValueError(
            f"need at least {X.shape[1] + 3} points to cross-validate a linear fit on {X.shape[1]} metrics, got {n}"
        )
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


def selection_rule(score, accuracy) -> dict[str, float]:
    """Model selection by a label-free or out-of-sample score: the accuracy of the encoder the score ranks
    first (its highest), next to the best and the median accuracy, and the chosen one's percentile (100 = the best).
    Both are "higher is better" (items.oriented)."""
    score, accuracy = np.asarray(score, float), np.asarray(accuracy, float)
    ok = np.isfinite(score) & np.isfinite(accuracy)
    score, accuracy = score[ok], accuracy[ok]
    if len(score) == 0:
        return {"chosen": float("nan"), "best": float("nan"), "median": float("nan"), "percentile": float("nan")}
    i = int(np.argmax(score))
    return {
        "chosen": float(accuracy[i]),
        "best": float(accuracy.max()),
        "median": float(np.median(accuracy)),
        "percentile": float(100 * (accuracy <= accuracy[i]).mean()),
    }


def binomial_se(accuracy, n) -> np.ndarray:
    """Standard error (points) of an accuracy (%) measured on n independent examples: 100 sqrt(p (1 - p) / n)."""
    p = np.asarray(accuracy, float) / 100
    return 100 * np.sqrt(p * (1 - p) / np.asarray(n, float))


def mean_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of x and its two-sided Student-t confidence interval, mean +- t_{n-1} sd / sqrt(n) (NaN bounds with
    fewer than 2 values)."""
    x = np.asarray(x, float)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(student_t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def seeds_to_decide(mean: float, sd: float, bound: float, level: float = 0.95, most: int = 1000) -> int | None:
    """The fewest seeds whose interval, at this mean and spread, would lie wholly on one side of `bound`;
    None when no number up to `most` would (the mean sits on the bound)."""
    gap = abs(mean - bound)
    for n in range(2, most + 1):
        if gap > student_t.ppf((1 + level) / 2, n - 1) * sd / np.sqrt(n):
            return n
    return None


def decision_power(effect: float, n, level: float = 0.95):
    """The probability that the Student-t interval of n normal differences lies wholly on one side of the bound
    when their true mean sits `effect` standard deviations from it (two-sided; the noncentral t). `n` may be an
    array of sample sizes."""
    n = np.asarray(n)
    if np.isinf(effect):
        return np.ones(n.shape) if n.ndim else 1.0
    crit = student_t.ppf((1 + level) / 2, n - 1)
    shift = abs(effect) * np.sqrt(n)
    # the far tail as sf at the mirrored shift: scipy's nct.cdf(-crit, df, shift) returns NaN for large shifts
    power = nct.sf(crit, n - 1, shift) + nct.sf(crit, n - 1, -shift)
    return power if n.ndim else float(power)


def effect_size(mean: float, sd: float, bound: float) -> float:
    """How many standard deviations `mean` sits from `bound` (infinite for a spread of 0 off the bound, 0 on it)."""
    gap = abs(mean - bound)
    return gap / sd if sd > 0 else np.inf if gap > 0 else 0.0


def second_stage(first, bound: float, level: float = 0.95, power: float = 0.8, most: int = 17) -> dict[str, Any]:
    """A two-stage design (after Stein, 1945) for a claim that the first seeds left undecided: from their
    differences, fixed before any new seed trains, the fewest new seeds (2 to `most`) whose own interval would
    decide the claim with probability `power` were the true mean and spread the first stage's. The verdict then
    judges the new seeds alone (`decide`): their number depends on the first stage only and they are independent
    of it, so their interval covers the true mean at exactly `level` (for normal differences). Pooling them with
    the first seeds would not: the number of seeds would depend on the data it judges (test_stats simulates both).
    `power` is the planned number's power; below the target when `most` caps it."""
    d = np.asarray(first, float)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    seeds = np.arange(2, most + 1)
    powers = decision_power(effect_size(mean, sd, bound), seeds, level)
    i = int(np.argmax(powers >= power)) if (powers >= power).any() else len(seeds) - 1
    return {"first_n": len(d), "first_mean": mean, "first_sd": sd, "seeds": int(seeds[i]), "power": float(powers[i])}


def decide(differences, bound: float, above: bool, level: float = 0.95) -> dict[str, Any]:
    """A claim about paired differences over seeds (one difference per seed, e.g. one family's selected encoder
    minus the other's): their mean lies above `bound` (`above`) or below it. It holds when the whole confidence
    interval of the mean lies on the claimed side, fails when it lies wholly on the other side, and is undecided
    when it straddles the bound or there are fewer than 2 seeds. `more_seeds`: how many more seeds would decide
    it if the mean and spread stayed as measured (0 when decided; None when none would)."""
    d = np.asarray(differences, float)
    mean, low, high = mean_interval(d, level)
    if len(d) < 2:
        return {"n": len(d), "mean": mean, "low": low, "high": high, "holds": None, "more_seeds": 2 - len(d)}
    claimed, other = (low > bound, high < bound) if above else (high < bound, low > bound)
    holds = True if claimed else False if other else None
    needed = 0 if holds is not None else seeds_to_decide(mean, float(d.std(ddof=1)), bound, level)
    return {
        "n": len(d),
        "mean": mean,
        "low": low,
        "high": high,
        "holds": holds,
        "more_seeds": None if needed is None else max(0, needed - len(d)),
    }


def describe(result: dict[str, Any], unit: str = "points", level: float = 0.95) -> str:
    """`decide`'s result as evidence: mean, interval, seeds and, when undecided, how many more would decide it."""
    if result["n"] < 2:
        more = result["more_seeds"]
        return (
            f"{result['mean']:+.2f} {unit} from {result['n']} seed{'s' * (result['n'] != 1)}: no interval; run at "
            f"least {more} more seed{'s' * (more != 1)}"
        )
    text = (
        f"mean {result['mean']:+.2f} {unit}, {level:.0%} CI [{result['low']:+.2f}, {result['high']:+.2f}] over "
        f"{result['n']} seeds"
    )
    if result["holds"] is None:
        more = result["more_seeds"]
        text += (
            "; no number of seeds would decide it at this mean"
            if more is None
            else f"; about {more} more seeds at this mean and spread would decide it"
        )
    return text
