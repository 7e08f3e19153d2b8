"""Beyond the paper (notebook 10_beyond): which statistic of an encoder's features, computed without labels, best
picks the encoder that does best downstream?

Every evaluation record holds, next to L_align(alpha=2) and L_uniform(t=2), the label-free statistics of
metrics.label_free. For each domain's cloud of encoders (the quick profile's Figs. 5a, 5b, 9a and 9b) this module
ranks the encoders by each statistic and compares the ranking with downstream performance: Spearman's rho
oriented so that +1 is a perfect ranking (a statistic that is better when lower is negated), with a percentile
bootstrap interval over encoders, and the performance of the encoder the statistic ranks first. A domain's verdict
asks whether L_align + L_uniform, the paper's pair, ranks its encoders as well as the best of the other statistics
(within MARGIN of its rho, by a paired bootstrap interval of the difference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import stats
from ..metrics import LABEL_FREE
from ..models import HEADS
from . import fig9b, load_results, oriented, verdict

# statistic -> how to compute it from a results table, oriented so that higher ranks an encoder first (a statistic
# that is better when lower, negated)
STATISTICS: dict[str, Any] = {
    "L_align": lambda d: -d["align"],
    "L_uniform": lambda d: -d["uniform"],
    "L_align + L_uniform": lambda d: -(d["align"] + d["uniform"]),
    "RankMe": lambda d: d["rankme"],
    "centred L_uniform": lambda d: -d["uniform_centred"],
    "|alpha - 1| (alpha-ReQ)": lambda d: -(d["eigen_decay"] - 1).abs(),
}
PAPER_PAIR = "L_align + L_uniform"
MARGIN = 0.1  # rho the paper's pair may trail the best statistic by and still rank "as well"
MIN_ENCODERS = 8
PICKS = {"picked": "chosen", "best": "best", "median": "median"}  # table column -> stats.selection_rule's key
TARGET = 80.0  # % linear accuracy an objective beyond the paper should reach on the quick recipe (or collapse)

# sweep -> (domain, performance column, its name); which way is better comes from the column (higher_is_better)
DOMAINS = {
    "cloud": ("images", "val_output_linear", "output + linear accuracy (%)"),
    "depth": ("depth", "val_conv5_mse", "conv5 depth MSE"),
    "moco": ("MoCo", "val_penultimate_linear", "penultimate + linear top-1 (%)"),
    "sentences": ("sentences", "val_tasks", "mean accuracy of the two sentence tasks (%)"),
}


def load(results_dir, sweeps) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Each domain's encoders with finite metrics and a performance column `performance` (supervised encoders left
    out), for the sweeps of DOMAINS among `sweeps` (a profile's), the images domain joined by the encoders of the
    `beyond` sweep (objectives beyond the paper) on its data when the profile has it; and per domain a note of what
    was left out."""
    clouds, notes = {}, {}
    for sweep in (s for s in DOMAINS if s in sweeps):
        domain, col, name = DOMAINS[sweep]
        parts = [sweep] + (["beyond"] if sweep == "cloud" and "beyond" in sweeps else [])
        loaded = [load_results(results_dir, part, need=["align", "uniform", *LABEL_FREE]) for part in parts]
        df, said = pd.concat([d for d, _ in loaded], ignore_index=True), [note for _, note in loaded]
        other = ~df["dataset"].isin(loaded[0][0]["dataset"])  # the beyond sweep's controls on other data
        if other.any():
            said.append(f"{other.sum()} on other data ({', '.join(df.loc[other, 'dataset'].unique())}) left out")
            df = df[~other].reset_index(drop=True)
        if sweep == "sentences":  # the mean over the dataset's two tasks (MR and CR, or their stand-ins)
            df = df.assign(val_tasks=df[list(fig9b.targets(df))].mean(axis=1))
        supervised = df["w_xent"].fillna(0).to_numpy() > 0 if "w_xent" in df else np.zeros(len(df), bool)
        ok = np.isfinite(df[["align", "uniform", col]].to_numpy(float)).all(axis=1) & ~supervised
        clouds[domain] = df[ok].assign(performance=df.loc[ok, col]).reset_index(drop=True)
        notes[domain] = "; ".join(said) + (
            f"; {len(df) - ok.sum()} without finite metrics and performance, or supervised, left out; "
            f"{ok.sum()} encoders; performance: {name}"
        )
    return clouds, notes


def objectives(results_dir) -> pd.DataFrame:
    """The beyond sweep's runs, failed ones included, each with the representation its probe reads (`probed`: fc7,
    the backbone, for an encoder with a projection head, as SimCLR's, SimSiam's, BYOL's and DINO's papers evaluate;
    else the output), that probe's `accuracy`, and its outcome against TARGET."""
    df = pd.read_csv(Path(results_dir) / "beyond.csv", dtype={"id": str})
    if "base_lr" in df:  # the rate it trained with (lr 0 is the linear scaling rule's, e.g. on the paper profile)
        df["lr"] = df["base_lr"]
    cols = [
        "id",
        "objective",
        "dataset",
        "arch",
        "optimizer",
        "lr",
        "epochs",
        "predictor_on",
        "status",
        "val_output_linear",
        "val_fc7_linear",
        "rankme",
        "dim",
        "failed_reason",
    ]
    df = df.reindex(columns=cols).assign(
        id=lambda d: d["id"].astype(object).fillna(""),
        optimizer=lambda d: d["optimizer"].astype(object).fillna("sgd"),
        predictor_on=lambda d: d["predictor_on"].astype(object).fillna("output"),
    )
    projector = df["arch"].astype(str).str.endswith(tuple(HEADS[1:]))
    df = df.assign(
        recipe=[_recipe(row) for _, row in df.iterrows()],
        probed=np.where(projector, "fc7", "output"),
        accuracy=np.where(projector, df["val_fc7_linear"], df["val_output_linear"]),
    )
    return df.assign(outcome=[outcome(row, df) for _, row in df.iterrows()]).drop(columns="failed_reason")


def _recipe(run: pd.Series) -> str:
    """How a beyond run trained, in words: "digitsnet-mlp, sgd lr 0.005, 120 epochs"."""
    predictor = ", predictor on the projection" if run["predictor_on"] == "projection" else ""
    return f"{run['arch']}, {run['optimizer']} lr {run['lr']:g}, {run['epochs']:g} epochs{predictor}"


def outcome(row: pd.Series, runs: pd.DataFrame) -> str:
    """Why a beyond run reached TARGET or not, in numbers: the trainer's reason for a failed run (a collapse to a point,
    a divergence); for a run below TARGET, its effective rank (RankMe) against a random-init encoder's (a run whose id
    starts with `random`, on the same data, of the run's dim where there is one: fewer effective dimensions than a
    random encoder of the same dim has is a dimensional collapse), its `accuracy` against that encoder's at the same
    representation, and what the same recipe (objective, arch, optimiser, dim, epochs, predictor input) reaches on grey
    `digits`, a
    control where colour is no nuisance."""
    if row["id"].startswith("random"):
        return "the random-init reference"
    if row["status"] == "failed":
        return f"failed: {row['failed_reason']}"
    if row["status"] != "done":
        return f"not finished ({row['status']})"
    where = "" if row["probed"] == "output" else f" ({row['probed']})"
    if row["accuracy"] >= TARGET:
        return f"reached {TARGET:g}%{where}"
    parts, done = [f"below {TARGET:g}%{where}"], runs[runs["status"] == "done"]
    random = done[done["id"].str.startswith("random") & (done["dataset"] == row["dataset"])]
    random = random.sort_values("dim", key=lambda dim: dim != row["dim"], kind="stable")  # one of its dim first
    rank = f"effective rank {row['rankme']:.1f} of {row['dim']:g}"
    if len(random):
        ref = random.iloc[0]
        same = ref["dim"] == row["dim"]  # ranks of other dimensions are reported, not compared
        collapsed = same and row["rankme"] < ref["rankme"]
        of = "" if same else f" of {ref['dim']:g}"
        parts.append(f"{'dimensional collapse: ' if collapsed else ''}{rank} (random init {ref['rankme']:.1f}{of})")
        if row["accuracy"] < (reference := ref[f"val_{row['probed']}_linear"]):
            parts.append(f"under the random-init encoder's {reference:.1f}%{where}")
    else:
        parts.append(rank)
    recipe = ["objective", "arch", "optimizer", "lr", "dim", "epochs", "predictor_on"]
    control = done[
        (done[recipe] == row[recipe]).all(axis=1) & (done["dataset"] == "digits") & (row["dataset"] != "digits")
    ]
    if len(control):
        parts.append(f"{control['accuracy'].iloc[0]:.1f}% on grey digits")
    return "; ".join(parts)


def _column(domain: str) -> str:
    """The domain's performance column."""
    return next(col for d, col, _ in DOMAINS.values() if d == domain)


def goodness(cloud: pd.DataFrame, statistic: str) -> np.ndarray:
    """The statistic oriented so that higher ranks an encoder first."""
    return STATISTICS[statistic](cloud).to_numpy(float)


def table(clouds: dict[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per domain and statistic: encoders, oriented Spearman rho with its bootstrap CI, the performance of the
    encoder the statistic ranks first, the best and the median performance, and the pick's percentile."""
    rows = []
    for domain, cloud in clouds.items():
        col = _column(domain)
        y = oriented(cloud["performance"], col)
        for name in STATISTICS:
            g = goodness(cloud, name)
            ok = np.isfinite(g) & np.isfinite(y)
            rho, lo, hi = stats.bootstrap_spearman(g[ok], y[ok], n_boot=n_boot, seed=seed)
            pick = stats.selection_rule(g[ok], y[ok])
            rows.append(
                {
                    "domain": domain,
                    "statistic": name,
                    "encoders": int(ok.sum()),
                    "spearman": rho,
                    "ci_low": lo,
                    "ci_high": hi,
                    **{k: oriented(pick[v], col).item() for k, v in PICKS.items()},  # in the column's units
                    "picked percentile": pick["percentile"],
                }
            )
    return pd.DataFrame(rows)


def judge(domain: str, cloud: pd.DataFrame, t: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Against the best of the other statistics (by rho): holds when the paired-bootstrap 95% interval of
    rho(L_align + L_uniform) - rho(that statistic) lies above -MARGIN, fails when it lies below, undecided when it
    straddles -MARGIN or the domain has too few encoders."""
    claim = f"L_align + L_uniform ranks the {domain} encoders as well as the best label-free statistic"
    rows = t[t["domain"] == domain].set_index("statistic")
    if len(cloud) < MIN_ENCODERS or rows["spearman"].isna().all():
        return verdict(
            f"Label-free selection ({domain})",
            claim,
            None,
            f"{len(cloud)} encoders with finite statistics; at least {MIN_ENCODERS} needed",
            ["beyond_statistics"],
        )
    rival = rows["spearman"].drop(PAPER_PAIR).idxmax()
    y = oriented(cloud["performance"], _column(domain))
    diff, lo, hi = stats.bootstrap_spearman_difference(
        goodness(cloud, PAPER_PAIR), goodness(cloud, rival), y, n_boot=n_boot, seed=seed
    )
    holds = True if lo > -MARGIN else False if hi < -MARGIN else None
    ranked = ", ".join(
        f"{s} {r['spearman']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        for s, r in rows.sort_values("spearman", ascending=False).iterrows()
    )
    p, r = rows.loc[PAPER_PAIR], rows.loc[rival]
    evidence = (
        f"{len(cloud)} encoders; Spearman with performance (+1 ranks them perfectly): {ranked}. "
        f"{PAPER_PAIR} minus the best other statistic, {rival}: {diff:+.2f} [{lo:+.2f}, {hi:+.2f}] (paired "
        f"bootstrap; margin -{MARGIN:g}). First picks: {PAPER_PAIR} {p['picked']:.3g}, {rival} "
        f"{r['picked']:.3g}; the best encoder {p['best']:.3g}, the median {p['median']:.3g}"
    )
    return verdict(f"Label-free selection ({domain})", claim, holds, evidence, ["beyond_statistics"])


def figure(t: pd.DataFrame):
    """One panel per domain: each statistic's oriented Spearman rho with its 95% bootstrap interval."""
    domains = list(dict.fromkeys(t["domain"]))
    fig, axes = plt.subplots(1, len(domains), figsize=(3.6 * len(domains), 3.2), sharey=True, squeeze=False)
    for ax, domain in zip(axes[0], domains):
        rows = t[t["domain"] == domain]
        ypos = np.arange(len(rows))[::-1]
        err = np.vstack([rows["spearman"] - rows["ci_low"], rows["ci_high"] - rows["spearman"]])
        colours = ["C3" if s == PAPER_PAIR else "C0" for s in rows["statistic"]]
        ax.barh(ypos, rows["spearman"], xerr=err, color=colours, alpha=0.8, capsize=2)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(ypos, rows["statistic"])
        ax.set_xlim(-1, 1)
        ax.set_title(f"{domain} ({rows['encoders'].iloc[0]} encoders)")
        ax.set_xlabel("Spearman with performance")
    fig.tight_layout()
    return fig
