"""Figure 5 (and the same analysis for any cloud of encoders): L_uniform(t=2) on x, L_align(alpha=2) on y,
colour = downstream performance; the paper reads "the best encoders sit in the lower-left corner" off the
plot and gives no statistic. Here, per performance column:

- Spearman rank correlations (bootstrap CIs) of L_align, L_uniform, their sum and a cross-validated linear
  combination with performance (stats.py);
- the share of the best tenth of encoders in the lower-left quadrant (both metrics at or below their medians);
- on the paper profile, ours against the paper's number for the same configuration.

The verdict: for every panel, the fitted combination ranks encoders out of sample with a 95% interval on the
right side of zero, and both fitted weights point the paper's way (lower metrics, better performance).
Which way is better comes from each performance column (items.higher_is_better: accuracies up, depth MSE down).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from .. import stats
from ..resources import reference, reference_table
from ..sweep import repeated_rows
from . import FAMILIES, FAMILY_MARKERS, add_family, higher_is_better, oriented, verdict

X_LABEL, Y_LABEL = r"$\mathcal{L}_\mathsf{uniform}(t=2)$", r"$\mathcal{L}_\mathsf{align}(\alpha=2)$"
MIN_ENCODERS = 8  # fewer: undecided


def usable(cloud: pd.DataFrame, targets: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str], str]:
    """Encoders with a loss family and finite metrics, the target columns present for all of them, and a note."""
    cloud = add_family(cloud)
    bad = (cloud["family"] == "") | ~np.isfinite(cloud[["align", "uniform"]]).all(axis=1)
    cloud = cloud[~bad].reset_index(drop=True)
    kept = {c: n for c, n in targets.items() if c in cloud and cloud[c].notna().all()}
    note = f"{len(cloud)} encoders ({bad.sum()} left out without a family or finite metrics)"
    if missing := set(targets) - set(kept):
        note += f"; no complete column {sorted(missing)}, left out"
    return cloud, kept, note


def statistics(
    cloud: pd.DataFrame, targets: dict[str, str], n_boot: int = 2000, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Per target and score (lower = better encoder): Spearman rho with the target in its own units (negative is the
    paper's way for an accuracy, positive for an error) and its bootstrap CI, the cross-validated R^2 of the fitted
    combination, and what picking the best-scored encoder gives, in the target's units. Returns (table, fits)."""
    rows, fits = [], {}
    for col, name in targets.items():
        raw = cloud[col].to_numpy(float)  # rho is reported against the target in its own units
        y = oriented(raw, col)  # performance, higher is better: what the fit and the picks read
        scores = {
            "L_align": cloud["align"].to_numpy(),
            "L_uniform": cloud["uniform"].to_numpy(),
            "L_align + L_uniform": (cloud["align"] + cloud["uniform"]).to_numpy(),
        }
        if len(cloud) >= 5:
            fits[col] = stats.combination_score(
                cloud[["align", "uniform"]].to_numpy(), y, folds=5, repeats=10, seed=seed
            )
            scores["fitted combination (CV)"] = -fits[col]["pred"]
        for score_name, score in scores.items():
            rho, lo, hi = stats.bootstrap_spearman(score, raw, n_boot=n_boot, seed=seed)
            pick = stats.selection_rule(-score, y)
            rows.append(
                {
                    "target": name,
                    "score (lower = better)": score_name,
                    "spearman": rho,
                    "ci_low": lo,
                    "ci_high": hi,
                    "R2_cv": fits[col]["r2"] if score_name.startswith("fitted") else np.nan,
                    **{
                        f"{k} {name}": oriented(v, col).item()
                        for k, v in (("picked", pick["chosen"]), ("best", pick["best"]), ("median", pick["median"]))
                    },
                    "picked percentile": pick["percentile"],
                }
            )
    return pd.DataFrame(rows), fits


def corner(cloud: pd.DataFrame, col: str) -> dict[str, float]:
    """How many of the best tenth (at least one) by `col` lie in the lower-left quadrant, against all encoders."""
    lower_left = (cloud["align"] <= cloud["align"].median()) & (cloud["uniform"] <= cloud["uniform"].median())
    n = max(1, len(cloud) // 10)
    top = cloud.nlargest(n, col) if higher_is_better(col) else cloud.nsmallest(n, col)
    return {
        "top": n,
        "top_in_corner": int(lower_left[top.index].sum()),
        "share_top": float(lower_left[top.index].mean()),
        "share_all": float(lower_left.mean()),
    }


def ours_vs_paper(cloud: pd.DataFrame, pairs: dict[str, str]) -> dict[str, dict[str, float]]:
    """For target columns paired with the paper's column for the same configuration (paper profile): the
    number of encoders, Spearman rho, mean and mean absolute difference ours - paper."""
    out = {}
    for col, paper_col in pairs.items():
        if col in cloud and paper_col in cloud and len(d := cloud[[col, paper_col]].dropna()):
            diff = (d[col] - d[paper_col]).to_numpy()
            out[col] = {
                "n": len(d),
                "spearman": stats.spearman(d[paper_col], d[col]),
                "mean_diff": diff.mean(),
                "mad": np.abs(diff).mean(),
            }
    return out


def run_to_run(cloud: pd.DataFrame, table: str, pairs: dict[str, str]) -> pd.DataFrame:
    """The paper's run-to-run spread, next to ours: the appendix table `table` repeats some configurations, each a
    training of its own (sweep.repeated_rows), so their numbers differ by that spread alone. Per group of rows and
    metric (`pairs`: our column -> its paper_* column), the paper's numbers and ours for the same rows (the sweep
    trains the repeats under seeds 0, 1, ...; only the paper profile has them, elsewhere ours are NaN), and the
    range (max - min) of each."""
    paper = reference_table(table).set_index("row")
    ours = cloud.dropna(subset=["paper_row"]).set_index("paper_row") if "paper_row" in cloud else pd.DataFrame()
    out = []
    for group in repeated_rows(reference(f"{table}.csv")):
        for col, paper_col in pairs.items():
            theirs = paper.loc[group, paper_col.removeprefix("paper_")].to_numpy(float)
            mine = ours[col].reindex(group).to_numpy(float) if col in ours else np.full(len(group), np.nan)
            out.append(
                {
                    "rows": "/".join(map(str, group)),
                    "metric": col,
                    "paper": theirs.round(2).tolist(),
                    "paper range": _range(theirs),
                    "ours": mine.round(2).tolist(),
                    "ours range": _range(mine),
                }
            )
    return pd.DataFrame(out)


def _range(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.ptp(finite)) if len(finite) > 1 else np.nan


def spread_note(spread: pd.DataFrame) -> str:
    """One sentence on a run_to_run table: how far the repeats' numbers lie apart, the paper's and ours."""

    def ranges(col: str) -> str:
        r = spread[col].dropna()
        return f"{r.min():.2f}-{r.max():.2f} (median {r.median():.2f})"

    n = spread["rows"].nunique()
    note = (
        f"{n} configuration{'s' * (n > 1)} repeated in the appendix; the paper's trainings of each differ by "
        f"{ranges('paper range')}"
    )
    if spread["ours range"].notna().any():
        return note + f", ours by {ranges('ours range')}"
    return note + "; this profile trains none of them twice (the paper profile does, under seeds 0, 1, ...)"


def judge(
    item: str,
    cloud: pd.DataFrame,
    targets: dict[str, str],
    table: pd.DataFrame,
    fits: dict,
    agreement: dict | None = None,
    figures=(),
) -> dict[str, Any]:
    """The verdict: decided with >= MIN_ENCODERS encoders and a fit per target; holds when every fitted
    combination's 95% CI excludes zero on the paper's side and both its weights point the paper's way."""
    ok, parts = [], []
    for col, name in targets.items():
        s = table[table["target"] == name].set_index("score (lower = better)")
        line = f"{name}: rho align {s.loc['L_align', 'spearman']:+.2f}, uniform {s.loc['L_uniform', 'spearman']:+.2f}"
        if col in fits:
            f, (_, b, c) = s.loc["fitted combination (CV)"], fits[col]["weights"]
            ok.append(f["ci_high"] < 0 if higher_is_better(col) else f["ci_low"] > 0)
            ok[-1] = ok[-1] and b < 0 and c < 0  # weights of the "higher is better" performance
            line += (
                f", fitted combination {f['spearman']:+.2f} [{f['ci_low']:+.2f}, {f['ci_high']:+.2f}], "
                f"weights align {b:+.2f} uniform {c:+.2f}"
            )
        k = corner(cloud, col)
        line += (
            f"; {k['top_in_corner']} of the best {k['top']} in the lower-left quadrant ({k['share_all']:.0%} of all)"
        )
        parts.append(line)
    for col, a in (agreement or {}).items():
        parts.append(
            f"ours vs paper, {targets.get(col, col)}: Spearman {a['spearman']:.2f}, mean diff {a['mean_diff']:+.2f}"
        )
    decided = len(cloud) >= MIN_ENCODERS and len(fits) == len(targets) and len(targets) > 0
    direction = "higher accuracy" if all(map(higher_is_better, targets)) else "lower error"
    return verdict(
        item,
        f"encoders with lower L_align and lower L_uniform (lower-left) have {direction}",
        all(ok) if decided else None,
        f"{len(cloud)} encoders. " + "; ".join(parts),
        figures,
    )


def figure(cloud: pd.DataFrame, targets: dict[str, str], label: str = "validation accuracy (%)"):
    """The scatter panels: one per target, colour range the 2nd-98th percentile, blue = better."""
    fig, axes = plt.subplots(1, len(targets), figsize=(6.4 * len(targets), 4.8), squeeze=False)
    for ax, (col, name) in zip(axes[0], targets.items()):
        cmap = "coolwarm_r" if higher_is_better(col) else "coolwarm"
        lo, hi = np.nanpercentile(cloud[col], [2, 98])
        norm = Normalize(lo, hi if hi > lo else lo + 1)
        for fam in FAMILIES:
            d, marker = cloud[cloud["family"] == fam], FAMILY_MARKERS[fam]
            style = dict(s=55, linewidths=1.3) if marker == "+" else dict(s=30, linewidths=0.4, edgecolors="0.25")
            ax.scatter(d["uniform"], d["align"], c=d[col], cmap=cmap, norm=norm, marker=marker, **style)
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"{label}, {name}")
        ax.annotate(
            "better",
            xy=(0.04, 0.05),
            xytext=(0.2, 0.2),
            xycoords="axes fraction",
            color="0.4",
            arrowprops=dict(arrowstyle="->", color="0.4"),
            ha="center",
            va="center",
            zorder=0,
        )
        ax.set(xlabel=X_LABEL, ylabel=Y_LABEL, title=f"{name} ({len(cloud)} encoders)")
    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker=FAMILY_MARKERS[f],
            color="0.35",
            markersize=7,
            markerfacecolor="0.75" if FAMILY_MARKERS[f] != "+" else None,
            label=f,
        )
        for f in FAMILIES
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, title="training objective (marker)")
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    return fig


def figure_vs_paper(cloud: pd.DataFrame, pairs: dict[str, str], targets: dict[str, str]):
    """Ours against the paper's number, encoder by encoder (paper profile)."""
    pairs = {c: p for c, p in pairs.items() if c in targets and p in cloud and cloud[[c, p]].notna().all(axis=1).any()}
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.8), squeeze=False)
    for ax, (col, pc) in zip(axes[0], pairs.items()):
        d = cloud[[col, pc, "family"]].dropna()
        for fam in FAMILIES:
            e = d[d["family"] == fam]
            ax.scatter(e[pc], e[col], marker=FAMILY_MARKERS[fam], s=30, label=fam)
        lo, hi = min(d[pc].min(), d[col].min()), max(d[pc].max(), d[col].max())
        lim = [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
        ax.plot(lim, lim, color="0.4", ls="--", lw=1)
        ax.set(xlim=lim, ylim=lim, aspect="equal", xlabel="paper", ylabel="ours", title=targets[col])
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig
