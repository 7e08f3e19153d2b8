"""Figure 8: fine-tuning a poorly tuned contrastive encoder with L_align only, L_uniform only, or both,
recording L_align, exp(L_uniform) and a freshly trained linear probe on outputs at every epoch. The paper
(data/reference/fig8.csv): each term alone makes the encoder worse, only both together improve it.

The verdict judges those signs against seed noise (`judge`): over the parents (one poor encoder per seed), the
95% interval of the change in accuracy must lie above 0 with both terms and below 0 with each term alone.
"""

from __future__ import annotations

import itertools
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..resources import reference_table
from ..stats import decide, describe
from . import verdict

KINDS = {"align only": "C0", "uniform only": "C1", "align + uniform": "C2"}
GAINS = {"align only": False, "uniform only": False, "align + uniform": True}  # the sign each kind's change must have
ACC = "val_output_linear"
CLAIM = "fine-tuning a poor encoder improves it only with both L_align and L_uniform"


def kind(w_align: float, w_uniform: float) -> str:
    return "align + uniform" if w_align > 0 and w_uniform > 0 else "align only" if w_align > 0 else "uniform only"


def trajectories(finetune: pd.DataFrame, points: pd.DataFrame, parent_id: str = "poor") -> dict[str, pd.DataFrame]:
    """The trajectory of each fine-tune of the run named `parent_id` (finetune: the sweep's results table;
    points: its .trajectories.csv), keyed by kind; epoch 0 is the parent encoder."""
    parents = finetune[finetune["id"] == parent_id]
    if parents.empty:
        raise ValueError(f"the parent run (id {parent_id!r}) did not finish: nothing was fine-tuned")
    children = finetune[finetune["init"] == parents["run"].iloc[0]]
    out = {}
    for _, row in children.iterrows():
        t = points[points["run"] == row["run"]].sort_values("epoch")
        if len(t):
            out[kind(row["w_align"], row["w_uniform"])] = t.assign(objective=row["objective"]).reset_index(drop=True)
    return out


def parents(finetune: pd.DataFrame) -> list[str]:
    """The ids of the runs that others are fine-tuned from (one per seed of the poor encoder), in sweep order."""
    return [r["id"] for _, r in finetune.iterrows() if r["id"] and (finetune["init"] == r["run"]).any()]


def summary(by_parent: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """Start and final accuracy and metrics of each parent's fine-tunes, next to the paper's final accuracy."""
    paper = reference_table("fig8").set_index("kind")
    return pd.DataFrame(
        [
            {
                "parent": p,
                "fine-tuned with": k,
                "objective": t["objective"].iloc[0],
                "start acc.": t[ACC].iloc[0],
                "final acc.": t[ACC].iloc[-1],
                "paper final": paper.loc[k, "final"],
                "start L_align": t["align"].iloc[0],
                "final L_align": t["align"].iloc[-1],
                "start exp(L_uniform)": np.exp(t["uniform"].iloc[0]),
                "final exp(L_uniform)": np.exp(t["uniform"].iloc[-1]),
            }
            for p, trajectories in by_parent.items()
            for k, t in trajectories.items()
        ]
    )


def gains(by_parent: dict[str, dict[str, pd.DataFrame]]) -> dict[str, dict[str, float]]:
    """Each parent's change in accuracy over each kind of fine-tuning (final minus start), in points."""
    return {p: {k: t[ACC].iloc[-1] - t[ACC].iloc[0] for k, t in ts.items()} for p, ts in by_parent.items()}


def gains_by_seed(finetune: pd.DataFrame, points: pd.DataFrame) -> dict[int, dict[str, float]]:
    """`gains` keyed by the seed of each parent (one poor encoder per seed)."""
    seed = dict(zip(finetune["id"], finetune["seed"].astype(int)))
    return {seed[p]: g for p, g in gains({p: trajectories(finetune, points, p) for p in parents(finetune)}).items()}


def judge(by_parent: dict[str, dict[str, pd.DataFrame]]) -> dict[str, Any]:
    """The signs of the changes in accuracy, judged against seed noise: each parent (one per seed of the poor
    encoder) gives one change per kind of fine-tuning, and each kind's 95% interval over the parents must lie on
    its claimed side of 0 (a gain with both terms, a loss with either alone; stats.decide). Holds when all three
    do, fails when any lies wholly on the wrong side, undecided otherwise or when a parent misses a fine-tune."""
    changes = gains(by_parent)
    complete = bool(changes) and all(len(g) == len(GAINS) for g in changes.values())
    results = {k: decide([g[k] for g in changes.values()], 0.0, gain) for k, gain in GAINS.items()} if complete else {}
    outcomes = [r["holds"] for r in results.values()]
    holds = None if not complete else False if False in outcomes else True if all(outcomes) else None
    paper = reference_table("fig8").set_index("kind")
    evidence = (
        "change in accuracy over fine-tuning: "
        + "; ".join(f"{p}: " + ", ".join(f"{k} {g:+.1f} pts" for k, g in gain.items()) for p, gain in changes.items())
        + "".join(f"; {k}, a {'gain' if GAINS[k] else 'loss'} claimed: {describe(r)}" for k, r in results.items())
        + (" (a parent misses a fine-tune)" if changes and not complete else "")
        + " (paper: "
        + ", ".join(f"{k} {r.final - r.start:+.1f}" for k, r in paper.iterrows())
        + f" pts from {paper['start'].iloc[0]:.2f}%)"
    )
    return verdict("Figure 8", CLAIM, holds, evidence, ["fig8_finetuning"])


def figure(by_parent: dict[str, dict[str, pd.DataFrame]], show_paper: bool = False):
    """One colour per fine-tuning kind, one marker per parent (seed) of the poor encoder."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    panels = [
        ("align", r"$\mathcal{L}_\mathsf{align}(\alpha=2)$"),
        ("exp_uniform", r"$\exp(\mathcal{L}_\mathsf{uniform}(t=2))$"),
        (ACC, "validation accuracy (%), output + linear"),
    ]
    for ax, (col, label) in zip(axes, panels):
        for (p, trajectories), marker in zip(by_parent.items(), itertools.cycle("osD^v")):
            for k, t in trajectories.items():
                y = np.exp(t["uniform"]) if col == "exp_uniform" else t[col]
                ax.plot(
                    t["epoch"],
                    y,
                    "-",
                    marker=marker,
                    ms=4,
                    color=KINDS[k],
                    alpha=0.8,
                    label=f"{k}: {t['objective'].iloc[0]}" if p == next(iter(by_parent)) else None,
                )
        ax.set(xlabel="fine-tuning epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(0, 1.05)
    every = [t for ts in by_parent.values() for t in ts.values()]
    if show_paper and every:
        paper, last = reference_table("fig8").set_index("kind"), max(t["epoch"].max() for t in every)
        axes[2].plot(0, paper["start"].iloc[0], "s", color="0.45", ms=7, label="paper: start / final")
        for k in KINDS:
            axes[2].plot(last, paper.loc[k, "final"], "s", color=KINDS[k], mec="0.3", ms=7, alpha=0.6)
    fig.legend(*axes[2].get_legend_handles_labels(), loc="upper center", ncol=4, fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
