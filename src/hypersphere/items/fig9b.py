"""Figure 9b: the sentence encoders (Quick-Thought, BookCorpus) on the axes of Figure 5, L_uniform(t=2) on x
(here the sum of f's and g's terms, the form the paper trains with in this domain: domains/text.py),
L_align(alpha=2) on y, colour = 10-fold CV test accuracy on MR and on CR (on the stand-in: its "sentiment"
and "subjectivity" tasks). The statistics, corner count and verdict are Figure 5a's (items/fig5.py).

Randomly initialised encoders (epochs 0) are the baseline, not points of the cloud: `split` takes them out, and
`versus_random` says whether training beats them. Collapsed encoders (`collapsed`: features in a small cap) sit
at low L_align by construction and classify worst, which can hide or fake the lower-left relation; the
statistics are also given without them, and the verdict's evidence reports both, with `noise`: how far those
encoders' accuracies spread against the standard error of one accuracy. Diverged runs are results too: `diverged`
lists them (with the epoch and step at which the loss became non-finite) next to the paper's NaN rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from . import fig5

# the task columns of each dataset -> panel names (the paper's MR and CR; the stand-in's tasks in their place)
TASKS = {
    "bookcorpus": {"val_mr": "MR", "val_cr": "CR"},
    "standin": {"val_sentiment": "sentiment (MR's stand-in)", "val_subjectivity": "subjectivity (CR's stand-in)"},
}
PAPER_COLS = {"val_mr": "paper_val_mr", "val_cr": "paper_val_cr"}


def targets(cloud: pd.DataFrame) -> dict[str, str]:
    """The panels for the dataset(s) of this results table."""
    out = {}
    for dataset in cloud["dataset"].unique():
        if dataset not in TASKS:
            raise ValueError(f"no Figure 9b tasks for dataset {dataset!r}; known: {', '.join(TASKS)}")
        out.update(TASKS[dataset])
    return out


def split(cloud: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trained encoders, randomly initialised ones: epochs 0)."""
    random = cloud["epochs"] == 0
    return cloud[~random].reset_index(drop=True), cloud[random].reset_index(drop=True)


COLLAPSED = -0.5  # L_uniform(f) + L_uniform(g) above this: each encoder's mean Gaussian potential > e^-0.25 = 0.78


def collapsed(cloud: pd.DataFrame) -> pd.Series:
    """Encoders whose features fill a small cap of the sphere (L_uniform(f) + L_uniform(g) > COLLAPSED at t = 2:
    randomly initialised GRUs sit at about -0.3, uniform features near -8)."""
    return cloud["uniform"] > COLLAPSED


def versus_random(trained: pd.DataFrame, random: pd.DataFrame, targets: dict[str, str]) -> pd.DataFrame:
    """Per task: the random-init accuracy (mean over random-init encoders), the trained encoders' median and best,
    and the share of trained encoders above the random-init mean."""
    rows = []
    for col, name in targets.items():
        base = random[col].mean() if len(random) else np.nan
        rows.append(
            {
                "task": name,
                "random init": base,
                "trained median": trained[col].median(),
                "trained best": trained[col].max(),
                "median - random": trained[col].median() - base,
                "share above random": float((trained[col] > base).mean()) if len(random) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def noise(cloud: pd.DataFrame, targets: dict[str, str]) -> pd.DataFrame:
    """Per task: how far the encoders' accuracies spread (their standard deviation) against how much one accuracy
    moves by chance (the binomial standard error on the task's `n_<task>` sentences, at the median accuracy; NaN
    where the results do not say n). A spread near the standard error leaves little for L_align or L_uniform to
    explain."""
    rows = []
    for col, name in targets.items():
        n_col = "n_" + col.removeprefix("val_")
        n = cloud[n_col].median() if n_col in cloud else np.nan
        median, std = cloud[col].median(), cloud[col].std()
        se = float(stats.binomial_se(median, n))
        rows.append(
            {
                "task": name,
                "sentences": n,
                "median accuracy": median,
                "standard error": se,
                "spread (std)": std,
                "spread / standard error": std / se,
            }
        )
    return pd.DataFrame(rows)


def diverged(results_dir: str | Path, sweep: str) -> pd.DataFrame:
    """The sweep's runs that diverged (status failed): objective, where it diverged and why, with the paper's
    own NaN flag for the same configuration when the table carries it (paper profile)."""
    df = pd.read_csv(Path(results_dir) / f"{sweep}.csv")
    cols = [
        c
        for c in ("objective", "arch", "failed_epoch", "failed_step", "failed_reason", "paper_row", "paper_nan")
        if c in df
    ]
    return df.loc[df["status"] == "failed", cols].reset_index(drop=True)


def nan_agreement(results_dir: str | Path, sweep: str) -> pd.DataFrame | None:
    """On the paper profile: ours (diverged or not) against the paper's NaN rows, a 2x2 count; else None."""
    df = pd.read_csv(Path(results_dir) / f"{sweep}.csv")
    if "paper_nan" not in df:
        return None
    ran = df[df["status"].isin(["done", "failed"])]
    return pd.crosstab(
        ran["status"].eq("failed").map({True: "ours diverged", False: "ours trained"}),
        ran["paper_nan"].astype(bool).map({True: "paper NaN", False: "paper trained"}),
    )


def judge(
    cloud: pd.DataFrame,
    targets: dict[str, str],
    table: pd.DataFrame,
    fits: dict,
    baseline: pd.DataFrame | None = None,
    agreement: dict | None = None,
    n_diverged: int = 0,
    uncollapsed: pd.DataFrame | None = None,
    uncollapsed_noise: pd.DataFrame | None = None,
    figures=("fig9b_sentences", "fig9b_statistics"),
) -> dict[str, Any]:
    """Figure 5a's verdict on the whole sentence cloud, as the paper plots it; the evidence also gives the
    statistics without the collapsed encoders (`uncollapsed`: fig5.statistics' table on them), their accuracies'
    spread against one accuracy's standard error (`uncollapsed_noise`: `noise` on them), how training compares
    with random init and how many runs diverged."""
    v = fig5.judge("Figure 9b", cloud, targets, table, fits, agreement=agreement, figures=list(figures))
    if uncollapsed is not None and len(uncollapsed):
        s = uncollapsed.set_index(["target", "score (lower = better)"])
        v["evidence"] += f"; without the {int(collapsed(cloud).sum())} collapsed encoders: " + ", ".join(
            f"{name} rho align {s.loc[(name, 'L_align'), 'spearman']:+.2f}, uniform "
            f"{s.loc[(name, 'L_uniform'), 'spearman']:+.2f}"
            + (
                f", fitted {s.loc[(name, 'fitted combination (CV)'), 'spearman']:+.2f} "
                f"[{s.loc[(name, 'fitted combination (CV)'), 'ci_low']:+.2f}, "
                f"{s.loc[(name, 'fitted combination (CV)'), 'ci_high']:+.2f}]"
                if (name, "fitted combination (CV)") in s.index
                else ""
            )
            for name in targets.values()
        )
    if uncollapsed_noise is not None and uncollapsed_noise["standard error"].notna().all():
        v["evidence"] += "; their accuracies' spread (std) against one accuracy's standard error: " + ", ".join(
            f"{r['task']} {r['spread (std)']:.2f} vs {r['standard error']:.2f}" for _, r in uncollapsed_noise.iterrows()
        )
    if baseline is not None and len(baseline) and baseline["random init"].notna().all():
        v["evidence"] += "; trained vs random init: " + ", ".join(
            f"{r['task']} median {r['trained median']:.2f} vs {r['random init']:.2f} ({r['median - random']:+.2f})"
            for _, r in baseline.iterrows()
        )
    if n_diverged:
        v["evidence"] += f"; {n_diverged} runs diverged (not plotted, listed in the notebook)"
    return v


def figure(cloud: pd.DataFrame, targets: dict[str, str], n_diverged: int = 0):
    """Figure 5a's panels on the sentence cloud, one per task."""
    fig = fig5.figure(cloud, targets, label="CV test accuracy (%)")
    for ax in fig.axes[: len(targets)]:  # the panels (their colour bars come after them)
        ax.set_xlabel(r"$\mathcal{L}_\mathsf{uniform}(f;t=2) + \mathcal{L}_\mathsf{uniform}(g;t=2)$")
        ax.set_ylabel(r"$\mathcal{L}_\mathsf{align}(\alpha=2)$ of $f(s)$, $g$(neighbour)")
    if n_diverged:
        fig.text(
            0.99, 0.01, f"{n_diverged} diverged runs (NaN) not shown", ha="right", va="bottom", fontsize=9, color="0.35"
        )
    return fig
