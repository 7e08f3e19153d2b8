"""Figures 3 and 4: encoders with 2-d outputs, so every feature is a point on the circle S^1: random
initialisation, supervised (encoder + linear head, cross-entropy) and unsupervised contrastive. Figure 3
shows positive-pair distances and feature densities; Figure 4 the mean Gaussian potential
G_2 = exp(L_uniform(t=2)) of each (the paper's numbers: data/reference/fig3_fig4.csv).

Verdicts: Figure 3 holds when the contrastive encoder is aligned (alignment ratio, the mean positive-pair
distance over the mean distance of random pairs, below ALIGNED) and the most uniform of the three (lowest
G_2); Figure 4 when G_2 orders them random > supervised > contrastive, as in the paper.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .. import plots
from ..metrics import uniformity_bound
from ..probes import extract_features
from ..resources import reference_table
from ..sphere import mean_gaussian_potential
from ..train import load_encoder
from . import verdict

NAMES = {"random": "random init", "supervised": "supervised", "contrastive": "unsupervised contrastive"}
ALIGNED = 0.5
KAPPA = 8.0  # vMF KDE concentration on the angles
CLASSES = (0, 3, 6, 9)


@torch.no_grad()
def encode(run_dir: str, device, data_dir: str, points: int, seed: int = 0) -> dict[str, Any]:
    """Validation features (evaluation transform), labels and positive-pair distances (two draws of the
    training augmentation) of the first `points` validation images of a finished dim-2 run."""
    encoder, cfg, data = load_encoder(run_dir, device, data_dir)
    images, labels = data.val_images[:points], data.val_labels[:points]
    feats = extract_features(encoder, images, data, ["output"], device=device)["output"]
    if feats.shape[1] != 2:
        raise ValueError(f"{run_dir} has {feats.shape[1]}-d features; Figures 3-4 need dim 2 (the dim2 sweep)")
    from ..domains import domain_of

    views, g = domain_of(cfg.dataset).views, torch.Generator(device).manual_seed(seed)
    dist = [
        (encoder(views(data, b.to(device), g)) - encoder(views(data, b.to(device), g))).norm(dim=1)
        for b in images.split(512)
    ]
    return dict(features=feats.cpu(), labels=labels.cpu(), pos_dist=torch.cat(dist).cpu(), dataset=cfg.dataset)


def potentials(enc: dict[str, dict], acc: dict[str, float], uniform_points: torch.Tensor) -> pd.DataFrame:
    """Figure 4's table: per encoder its accuracy, alignment ratio and G_2, beside a uniform sample of the same
    size, the uniform distribution's exact value (Prop. 1's minimum), and the paper's numbers."""
    paper = reference_table("fig3_fig4").set_index("encoder")
    rows = []
    for key, e in enc.items():
        mean_dist = torch.pdist(e["features"].double()).mean().item()
        rows.append(
            {
                "encoder": key,
                "linear acc. (%)": acc[key],
                "paper acc. (%)": paper.loc[key, "val_output_linear"],
                "mean positive distance": e["pos_dist"].mean().item(),
                "mean distance, random pairs": mean_dist,
                "alignment ratio": e["pos_dist"].mean().item() / mean_dist,
                "G_2": mean_gaussian_potential(e["features"], t=2),
                "paper G_2": paper.loc[key, "G2"],
            }
        )
    rows.append(
        {
            "encoder": "uniform sample",
            "G_2": mean_gaussian_potential(uniform_points, t=2),
            "mean distance, random pairs": torch.pdist(uniform_points.double()).mean().item(),
            "paper G_2": paper.loc["uniform", "G2"],
        }
    )
    rows.append(
        {
            "encoder": "uniform (exact)",
            "G_2": math.exp(uniformity_bound(2, 2)),
            "mean distance, random pairs": 4 / math.pi,
            "paper G_2": paper.loc["uniform", "G2"],
        }
    )
    return pd.DataFrame(rows).set_index("encoder")


def judge(table: pd.DataFrame) -> list[dict[str, Any]]:
    keys = [k for k in NAMES if k in table.index]
    G, ratio, acc = (table.loc[keys, c] for c in ("G_2", "alignment ratio", "linear acc. (%)"))
    holds3 = bool(ratio["contrastive"] < ALIGNED and G["contrastive"] == G.min()) if len(keys) == 3 else None
    evidence3 = (
        "alignment ratio "
        + ", ".join(f"{k} {ratio[k]:.2f}" for k in keys)
        + "; G_2 "
        + ", ".join(f"{k} {G[k]:.4f}" for k in keys)
        + "; linear acc. "
        + ", ".join(f"{k} {acc[k]:.1f}% (paper {table.loc[k, 'paper acc. (%)']}%)" for k in keys)
    )
    holds4 = bool(G["random"] > G["supervised"] > G["contrastive"]) if len(keys) == 3 else None
    evidence4 = (
        "G_2 "
        + " > ".join(f"{k} {G[k]:.4f}" for k in G.sort_values(ascending=False).index)
        + " (paper: "
        + ", ".join(f"{k} {table.loc[k, 'paper G_2']:.4f}" for k in keys)
        + f"; uniform {table.loc['uniform (exact)', 'paper G_2']:.4f})"
    )
    return [
        verdict(
            "Figure 3",
            "the contrastive encoder's 2-d features are both aligned and uniform on S^1",
            holds3,
            evidence3,
            ["fig3_hypersphere_2d"],
        ),
        verdict(
            "Figure 4",
            "mean Gaussian potential G_2: random > supervised > contrastive (close to uniform)",
            holds4,
            evidence4,
            ["fig4_potentials"],
        ),
    ]


def figure3(enc: dict[str, dict], acc: dict[str, float], class_names: list[str], kde_grid: int = 120):
    """Per encoder: positive-pair distance histogram, feature density in R^2, angle density, and the angle
    density of four classes."""
    paper = reference_table("fig3_fig4").set_index("encoder")["val_output_linear"]
    ncols = 3 + len(CLASSES)
    fig, axes = plt.subplots(
        len(enc),
        ncols,
        figsize=(2.6 * ncols, 2.7 * len(enc)),
        squeeze=False,
        gridspec_kw=dict(width_ratios=[1.2, 1, 1.2] + [1] * len(CLASSES)),
    )
    for row, (key, e) in zip(axes, enc.items()):
        d = e["pos_dist"].numpy()
        row[0].hist(d, bins=np.linspace(0, 2, 41), density=True, color="C0", alpha=0.8)
        row[0].axvline(d.mean(), color="k", ls="--", lw=1.2, label=f"mean {d.mean():.2f}")
        row[0].set(xlim=(0, 2), xlabel=r"$\Vert f(x) - f(y)\Vert_2$ of positive pairs", ylabel="density")
        row[0].legend(loc="upper right", fontsize="small")
        row[0].set_title(
            f"{NAMES[key]}: linear acc. {acc[key]:.1f}%\n(paper, CIFAR-10: {paper[key]:.2f}%)",
            loc="left",
            fontweight="bold",
        )
        plots.density_panel(row[1], e["features"], grid=kde_grid)
        row[1].set_title(r"features, Gaussian KDE in $\mathbb{R}^2$")
        for k, (ax, c) in enumerate(zip(row[2:], (None,) + CLASSES)):
            f = e["features"] if c is None else e["features"][e["labels"] == c]
            if len(f) < 2:
                ax.set_axis_off()
                continue
            plots.vmf_kde_angles(ax, f, kappa=KAPPA, color=f"C{k}")
            ax.axhline(1 / (2 * np.pi), color="0.5", ls=":", lw=1)
            ax.set_title("angles, vMF KDE (all classes)" if c is None else class_names[c])
    live = [ax for row in axes for ax in row[2:] if ax.axison]
    for ax in live:
        ax.set_ylim(0, max(a.get_ylim()[1] for a in live))
    fig.tight_layout()
    return fig


def figure4(enc: dict[str, dict], uniform_points: torch.Tensor, table: pd.DataFrame, kde_grid: int = 120):
    """The feature densities with their G_2, and G_2 of ours against the paper's."""
    panels = [(key, e["features"]) for key, e in enc.items()] + [("uniform sample", uniform_points)]
    fig, axes = plt.subplots(
        1,
        len(panels) + 1,
        figsize=(3.1 * (len(panels) + 1) + 1, 3.4),
        gridspec_kw=dict(width_ratios=[1] * len(panels) + [1.5]),
    )
    for ax, (key, f) in zip(axes, panels):
        plots.density_panel(ax, f, grid=kde_grid)
        ax.set_title(
            f"{NAMES.get(key, key)}\n$G_2$ = {table.loc[key, 'G_2']:.4f} (paper {table.loc[key, 'paper G_2']:.4f})"
        )
    keys, x, ax = [k for k, _ in panels], np.arange(len(panels)), axes[-1]
    ax.bar(x - 0.2, table.loc[keys, "G_2"], 0.4, label="ours", color="C0")
    ax.bar(x + 0.2, table.loc[keys, "paper G_2"], 0.4, label="paper (CIFAR-10)", color="0.6")
    ax.axhline(table.loc["uniform (exact)", "G_2"], color="k", ls=":", lw=1, label="uniform (exact)")
    ax.set_xticks(
        x, [k.replace("contrastive", "contr.").replace("supervised", "superv.").replace(" sample", "") for k in keys]
    )
    ax.set(ylabel=r"$G_2 = e^{\mathcal{L}_\mathsf{uniform}(t=2)}$", ylim=(0, 1.45), title="lower = more uniform")
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig
