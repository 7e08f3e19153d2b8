"""The paper's figures and tables, one module each: every item computes its tables from results tables
(results/<profile>/<sweep>.csv) and judges its claims with explicit rules; the paper's numbers come from
data/reference/ (resources.reference_table). Notebooks set parameters, call an item, plot and narrate.

    theory     Theorem 1, Propositions 1-2, Figure 4's synthetic panels   (notebook 01_theory)
    fig3_4     Figures 3 and 4: dim-2 encoders on the circle                 (02_hypersphere_2d)
    fig5       Figure 5: metrics against downstream performance             (03_metrics_vs_accuracy)
    fig7       Figure 7: weighting alignment against uniformity             (04_weighting)
    fig8       Figure 8: fine-tuning a poor encoder                         (05_finetuning)
    table1     Table 1: the best encoder of each loss family                (06_table1)
    table2     Table 2: the same for depth prediction; Figure 5b is fig5's  (07_depth)
    table3     Table 3: the best MoCo encoder of each family; Fig. 9a is fig5's (08_moco)
    table5     Table 5: full-ImageNet MoCo v2, reported, not run              (08_moco)
    fig9b      Figure 9b: the sentence encoders' metrics against MR / CR     (09_sentences)
    table4     Table 4: the best sentence encoder of each loss family        (09_sentences)
    beyond     beyond the paper: which label-free statistic picks the best encoder (10_beyond)

A new figure is a new module here with its reference numbers in data/reference/, an entry in ITEMS, a
notebook, and unit tests of its computation and verdict on small fixture tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..stats import decide, describe

# paper item -> (the notebook that covers it, its figure files), or why it is not replicated yet
ITEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Theorem 1": ("01_theory", ("theorem1_convergence",)),
    "Propositions 1-2": ("01_theory", ("prop1_optimized_points", "prop2_convergence", "uniformity_bound")),
    "Figure 3": ("02_hypersphere_2d", ("fig3_hypersphere_2d",)),
    "Figure 4": ("02_hypersphere_2d", ("fig4_potentials",)),
    "Figure 4 (synthetic)": ("01_theory", ("fig4_synthetic",)),
    "Figure 5a": ("03_metrics_vs_accuracy", ("fig5a_metrics_vs_accuracy", "fig5a_statistics", "fig5a_ours_vs_paper")),
    "Figure 5b": ("07_depth", ("fig5b_metrics_vs_depth", "fig5b_statistics", "fig5b_ours_vs_paper")),
    "Figure 7": ("04_weighting", ("fig7_weighting",)),
    "Figure 8": ("05_finetuning", ("fig8_finetuning",)),
    "Figure 9a": ("08_moco", ("fig9a_metrics_vs_accuracy", "fig9a_statistics", "fig9a_ours_vs_paper")),
    "Figure 9b": ("09_sentences", ("fig9b_sentences", "fig9b_statistics")),
    "Table 1": ("06_table1", ("table1",)),
    "Table 2": ("07_depth", ("table2",)),
    "Table 2 (vs random init)": ("07_depth", ("table2",)),
    "Table 3": ("08_moco", ("table3",)),
    "Table 4": ("09_sentences", ("table4",)),
    "Table 5": ("08_moco", ("table5",)),
    **{
        f"Label-free selection ({d})": ("10_beyond", ("beyond_statistics",))
        for d in ("images", "depth", "MoCo", "sentences")
    },
}

FAMILIES = ("contrastive only", "align + uniform only", "all three")
FAMILY_MARKERS = {"contrastive only": "+", "align + uniform only": "o", "all three": "^"}


def verdict(item: str, claim: str, holds: bool | None, evidence: str, figures: Sequence[str] = ()) -> dict[str, Any]:
    """One verdict entry: holds is True, False or None (undecided, e.g. too few runs)."""
    return {
        "item": item,
        "claim": claim,
        "holds": None if holds is None else bool(holds),
        "evidence": evidence,
        "figures": list(figures),
    }


def per_seed(cands: pd.DataFrame, selection: Callable[[pd.DataFrame], dict[str, Any]]) -> pd.DataFrame:
    """`selection` repeated among each seed's candidates alone (the `seed` column): one row per seed."""
    return pd.DataFrame([{"seed": seed, **selection(c)} for seed, c in cands.groupby("seed")])


def seed_verdict(
    item: str,
    claim: str,
    seeds: pd.DataFrame,
    column: str,
    bound: float,
    above: bool,
    what: str,
    unit: str,
    evidence: str,
    figures: Sequence[str],
) -> dict[str, Any]:
    """The verdict on the paired differences `seeds[column]` (a by_seed table; seeds without one are left out,
    stats.decide): holds when their confidence interval lies wholly on the claimed side of `bound`, fails when
    wholly on the other, undecided otherwise; the evidence gives each seed's difference, the interval and how
    many more seeds would decide it."""
    seeds = seeds.dropna(subset=[column])
    differences = seeds[column]
    result = decide(differences, bound, above)
    side = "above" if above else "below"
    evidence += (
        f"; {what} per seed "
        + ", ".join(f"{s:g}: {d:+.2f}" for s, d in zip(seeds["seed"], differences))
        + f"; {describe(result, unit)}; the claim needs the interval {side} {bound:+g}"
    )
    return verdict(item, claim, result["holds"], evidence, figures)


def say(v: dict[str, Any]) -> str:
    """A verdict as one printed line."""
    word = "HOLDS" if v["holds"] else "undecided" if v["holds"] is None else "does NOT hold"
    return f"{v['item']}: {word}. {v['claim']}.\n  evidence: {v['evidence']}"


def load_results(results_dir: str | Path, sweep: str, need: Sequence[str] = ()) -> tuple[pd.DataFrame, str]:
    """The finished, evaluated runs of results_dir/<sweep>.csv and a one-line account of what was dropped.

    Runs whose status is not "done" (failed: diverged; todo / stale / to evaluate: not ready) are dropped;
    `need` names columns the caller cannot do without (a clear error names the fix when one is missing)."""
    path = Path(results_dir) / f"{sweep}.csv"
    if not path.exists():
        raise FileNotFoundError(f"no results table {path}: run `make sweep PROFILE=<profile>` first")
    df = pd.read_csv(path, dtype={"id": str, "init": str}, keep_default_na=True)
    if missing := [c for c in ("status", *need) if c not in df.columns]:
        raise ValueError(
            f"{path} lacks columns {missing}: an older version or another evaluation wrote it; rewrite "
            f"it with `python -m hypersphere sweep {sweep} --profile <profile>` (nothing is retrained)"
        )
    df["id"] = df["id"].fillna("") if "id" in df.columns else ""
    done = df[df["status"] == "done"].reset_index(drop=True)
    counts = df["status"].value_counts()
    dropped = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "done")
    return done, f"{path.name}: {len(done)} of {len(df)} runs finished" + (f"; dropped {dropped}" if dropped else "")


def loss_family(w_contrastive: float, w_align: float, w_uniform: float) -> str:
    """Figure 5 / Table 1 family of an objective from its loss weights ("" for none of them)."""
    if w_contrastive > 0:
        return "all three" if (w_align > 0 or w_uniform > 0) else "contrastive only"
    return "align + uniform only" if (w_align > 0 or w_uniform > 0) else ""


def reference_cloud(name: str) -> pd.DataFrame:
    """One of the paper's appendix tables (data/reference/<name>.csv) as a results table: its columns plus the
    canonical `objective`, the w_* loss weights and the `family`."""
    from ..resources import reference_table, row_objective

    d = reference_table(name)
    d = d.assign(
        objective=[row_objective(r) for _, r in d.iterrows()],
        w_contrastive=d["contr_w"],
        w_align=d["align_w"],
        w_uniform=d["unif_w"],
    )
    return add_family(d)


def higher_is_better(column: str) -> bool:
    """The one direction rule for a performance column: better when higher (accuracies), except errors, whose names
    end in "mse" (depth). Read a metric through `oriented` once; after that, higher is better everywhere."""
    return not column.endswith("mse")


def oriented(values, column: str) -> np.ndarray:
    """`values` of `column` as "higher is better" (errors negated); applied again, back in the column's units."""
    values = np.asarray(values, float)
    return values if higher_is_better(column) else -values


def best_of(cloud: pd.DataFrame, family: str, by: str) -> tuple[pd.Series, int]:
    """The encoder of `family` with the best `by` (higher_is_better) among those that have one, and how many had
    one; an empty Series when none had, so that .get(column, default) fills a table's row either way."""
    cands = cloud[(cloud["family"] == family) & cloud[by].notna()]
    if cands.empty:
        return pd.Series(dtype=object), 0
    return cands.loc[cands[by].idxmax() if higher_is_better(by) else cands[by].idxmin()], len(cands)


def cell(ours: float, paper: float, fmt: str = ".2f") -> str:
    """A table cell "ours (paper)", or "- (paper)" where we have no number."""
    return f"{ours:{fmt}} ({paper:{fmt}})" if np.isfinite(ours) else f"- ({paper:{fmt}})"


def add_family(df: pd.DataFrame) -> pd.DataFrame:
    """A `family` column from the w_* columns (runs trained with cross-entropy get "")."""
    supervised = df["w_xent"].fillna(0).to_numpy() > 0 if "w_xent" in df else False
    fam = [loss_family(c, a, u) for c, a, u in zip(df["w_contrastive"], df["w_align"], df["w_uniform"])]
    return df.assign(family=np.where(supervised, "", fam))
