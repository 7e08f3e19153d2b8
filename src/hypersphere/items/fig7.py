"""Figure 7: (1 - lambda) L_align(alpha=2) + lambda L_uniform(t=2) for lambda in [0, 1]. If contrastive
learning works because it optimises both properties, both should be needed: alignment alone collapses the
features to a point, uniformity alone ignores the positive pairs, and accuracy is an inverted U in lambda.

The verdict holds when (i) the best lambda is strictly inside (0, 1) and beats both ends by more than
MARGIN points, and (ii) alignment alone collapses (exp(L_uniform) > COLLAPSE at lambda = 0), on the seed-mean
curve and on every seed's own curve. Undecided without runs at both ends and one between. The paper's curve is
data/reference/fig7.csv.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..resources import reference_table
from . import verdict

COLLAPSE = 0.9  # exp(L_uniform) above this: features (nearly) one point
MARGIN = 2.0  # points; the paper's run-to-run spread is 0.2-1
ACC = "val_output_linear"


def runs_by_lambda(results: pd.DataFrame) -> pd.DataFrame:
    """The align/uniform mixtures of a results table with their lambda = w_uniform / (w_align + w_uniform),
    exp(L_uniform) and whether they collapsed, sorted by lambda."""
    mix = results[(results["w_contrastive"] == 0) & (results["w_align"] + results["w_uniform"] > 0)]
    return (
        mix.assign(
            **{
                "lambda": mix["w_uniform"] / (mix["w_align"] + mix["w_uniform"]),
                "exp_uniform": np.exp(mix["uniform"]),
                "collapsed": np.exp(mix["uniform"]) > COLLAPSE,
            }
        )
        .sort_values("lambda")
        .reset_index(drop=True)
    )


def curve(lam: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds at each lambda, with the seed spread (std) of accuracy."""
    g = lam.groupby("lambda")
    return g[["align", "exp_uniform", ACC]].mean().assign(acc_std=g[ACC].std().fillna(0.0), seeds=g.size())


def _inverted_u(cur: pd.DataFrame) -> tuple[bool, float]:
    """Whether one curve is an inverted U with collapse at lambda 0 (the module's rule), and its best lambda."""
    acc, best = cur[ACC], cur[ACC].idxmax()
    interior = 0 < best < 1 and acc[best] - acc[0.0] > MARGIN and acc[best] - acc[1.0] > MARGIN
    return bool(interior and cur.loc[0.0, "exp_uniform"] > COLLAPSE), best


def judge(cur: pd.DataFrame, lam: pd.DataFrame) -> dict[str, Any]:
    """The rule on the seed-mean curve and, with several seeds, on each seed's own curve: it holds only when it
    holds on every one of them."""
    acc = cur[ACC]
    claim = "accuracy is an inverted U in lambda, with collapse when uniformity is too weak"
    if len(cur) < 3 or 0.0 not in acc.index or 1.0 not in acc.index:
        return verdict(
            "Figure 7",
            claim,
            None,
            f"needs runs at lambda 0, 1 and between; have {', '.join(f'{x:g}' for x in acc.index)}",
            ["fig7_weighting"],
        )
    holds, best = _inverted_u(cur)
    collapsed = lam.loc[lam["collapsed"], "lambda"].unique()
    paper = reference_table("fig7").set_index("lambda")[ACC]
    evidence = (
        f"best lambda {best:g} ({acc[best]:.1f}%) vs lambda 0 {acc[0.0]:.1f}% and lambda 1 {acc[1.0]:.1f}%; "
        f"exp(L_uniform) at lambda 0: {cur.loc[0.0, 'exp_uniform']:.3f}; collapsed at lambda "
        f"{', '.join(f'{x:g}' for x in collapsed) or 'none'}"
    )
    seeds = {s: curve(g) for s, g in lam.groupby("seed")}
    seeds = {s: c for s, c in seeds.items() if 0.0 in c.index and 1.0 in c.index and len(c) >= 3}
    if len(seeds) > 1:
        each = {s: _inverted_u(c) for s, c in seeds.items()}
        holds = holds and all(h for h, _ in each.values())
        evidence += (
            f"; holds on {sum(h for h, _ in each.values())} of {len(each)} seeds, best lambda per seed "
            + ", ".join(f"{s:g}: {b:g} ({seeds[s].loc[b, ACC]:.1f}%)" for s, (_, b) in each.items())
        )
    evidence += (
        f"; paper: {paper.iloc[0]:g}% up to lambda {paper[paper == paper.iloc[0]].index.max():g}, best "
        f"{paper.max():.2f}% at {paper.idxmax():g}, {paper.loc[1.0]:.2f}% at 1"
    )
    return verdict("Figure 7", claim, holds, evidence, ["fig7_weighting"])


def figure(lam: pd.DataFrame, cur: pd.DataFrame, chance: float | None = None, show_paper: bool = False):
    """Accuracy, L_align and exp(L_uniform) against lambda; red crosses: collapsed runs; star: the best."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    panels = [
        (ACC, "validation accuracy (%), output + linear"),
        ("align", r"$\mathcal{L}_\mathsf{align}(\alpha=2)$"),
        ("exp_uniform", r"$\exp(\mathcal{L}_\mathsf{uniform}(t=2))$"),
    ]
    for k, (ax, (col, label)) in enumerate(zip(axes, panels)):
        ax.plot(cur.index, cur[col], "-", color=f"C{k}", lw=1.5)
        ok, bad = lam[~lam["collapsed"]], lam[lam["collapsed"]]
        ax.plot(ok["lambda"], ok[col], "o", color=f"C{k}", ms=5)
        ax.plot(bad["lambda"], bad[col], "x", color="C3", ms=7, mew=1.5, label="collapsed" if k == 0 else None)
        ax.set(xlabel=r"$\lambda$ (weight of $\mathcal{L}_\mathsf{uniform}$)", ylabel=label, xlim=(-0.04, 1.04))
    ax = axes[0]
    if len(cur):
        best = cur[ACC].idxmax()
        ax.plot(
            best,
            cur.loc[best, ACC],
            "*",
            color="gold",
            mec="k",
            ms=15,
            zorder=5,
            label=f"best: $\\lambda$ = {best:g}, {cur.loc[best, ACC]:.1f}%",
        )
    if chance:
        ax.axhline(chance, color="0.5", ls=":", lw=1, label=f"chance ({chance:g}%)")
    if show_paper:
        paper = reference_table("fig7")
        ax.plot(paper["lambda"], paper[ACC], "s--", color="0.45", ms=5, lw=1, label="paper (STL-10)")
    axes[2].axhline(1.0, color="0.5", ls=":", lw=1)
    axes[2].set_ylim(0, 1.05)
    axes[1].set_ylim(bottom=0)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig
