"""The theory, checked numerically on synthetic features (no images): Theorem 1, Propositions 1-2 and the
synthetic panels of Figure 4 (docs/paper.md, "Theory"). Reference values: data/reference/theory.csv.

- Theorem 1: L_contrastive(tau, M) - log M converges to an alignment term plus a uniformity term as the
  number of negatives M grows; the per-pair deviation from the limit decays as O(M^-1/2). Holds when the
  median slope of the per-pair RMS deviation against M (log-log, upper half of the M range) is below -0.35.
- Propositions 1-2: N-point minimisers of the Gaussian potential spread out (16 points on S^1 equally spaced
  within 5% of 2 pi / 16) and the uniformity bound takes the paper's values at m = 2 and m = 128 (1e-3).
- Figure 4 (synthetic): G_2 of 10,000 uniform points on S^1 within 0.005 of the paper's 0.2070.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .. import plots
from ..metrics import alignment, uniformity, uniformity_bound
from ..resources import reference_table
from ..sphere import (
    circle_mixture_potential,
    contrastive_limit,
    contrastive_loss_M,
    mean_gaussian_potential,
    optimize_points,
    sample_uniform,
    sample_vmf,
    sample_vmf_mixture,
    synthetic_encoder,
)
from . import verdict

TAU, DIM = 0.5, 16
ENCODERS = {  # name -> (sigma, kappa): noise between views, concentration of the latent cluster
    "aligned + uniform": (0.05, 0.0),
    "aligned + clustered": (0.05, 16.0),
    "poorly aligned + uniform": (0.5, 0.0),
    "poorly aligned + clustered": (0.5, 16.0),
}
MIXTURE = ([[1.0, 0.0], [0.0, 1.0]], [1e3, 1.0], [0.4, 0.6])  # Figure 4: 0.4 vMF([1,0], 1e3) + 0.6 vMF([0,1], 1)


def paper(quantity: str) -> float:
    return float(reference_table("theory").set_index("quantity").loc[quantity, "value"])


def theorem1(pairs: int, pool: int, max_log2_M: int, device, seed: int = 0) -> tuple[dict[str, dict], pd.DataFrame]:
    """For each synthetic encoder: L(M) - log M, the limit, the mean deviation (with its standard error) and
    the per-pair RMS deviation at M = 1, 2, 4, ... 2^max_log2_M, each pair with M fresh negatives from a pool
    of `pool` samples (so the limit is exactly the pool average); and a table of the two terms."""
    Ms = 2 ** np.arange(max_log2_M + 1)
    g = torch.Generator(device).manual_seed(seed)
    curves, rows = {}, []
    for name, (sigma, kappa) in ENCODERS.items():
        fx, fy = synthetic_encoder(pairs, g, dim=DIM, sigma=sigma, kappa=kappa)
        negatives, _ = synthetic_encoder(pool, g, dim=DIM, sigma=sigma, kappa=kappa)
        limit = contrastive_limit(fx, fy, negatives, TAU)
        dev = [contrastive_loss_M(fx, fy, negatives, TAU, int(M), g) - math.log(M) - limit for M in Ms]
        curves[name] = dict(
            M=Ms,
            limit=limit.mean().item(),
            loss=np.array([(d + limit).mean().item() for d in dev]),
            gap=np.array([d.mean().item() for d in dev]),
            gap_se=np.array([d.std().item() / math.sqrt(len(d)) for d in dev]),
            rms=np.array([d.pow(2).mean().sqrt().item() for d in dev]),
        )
        align_term = -(fx.double() * fy.double()).sum(1).mean().item() / TAU
        rows.append(
            {
                "encoder": name,
                "L_align(2)": alignment(fx, fy),
                "L_uniform(2)": uniformity(fx),
                "alignment term": align_term,
                "uniformity term": curves[name]["limit"] - align_term,
                "limit": curves[name]["limit"],
                f"L(M={Ms[-1]}) - log M": curves[name]["loss"][-1],
            }
        )
    return curves, pd.DataFrame(rows).set_index("encoder")


def slopes(curves: dict[str, dict]) -> pd.DataFrame:
    """Log-log slopes against M of |mean deviation| (where it stands out of its noise, M >= 8) and of the
    per-pair RMS deviation (upper half of the M range, log scale)."""

    def fit(M, y, keep):
        return np.polyfit(np.log(M[keep]), np.log(y[keep]), 1)[0] if keep.sum() >= 2 else np.nan

    rows = {}
    for name, r in curves.items():
        M, signal = r["M"], np.abs(r["gap"]) > 3 * r["gap_se"]
        rows[name] = {
            "mean deviation": fit(M, np.abs(r["gap"]), signal & (M >= 8)),
            "per-pair RMS deviation": fit(M, r["rms"], M >= M[-1] ** 0.5),
        }
    return pd.DataFrame(rows).T


def figure_theorem1(curves: dict[str, dict]):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, r), c in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        M, signal = r["M"], np.abs(r["gap"]) > 3 * r["gap_se"]
        ax1.plot(M, r["loss"], "o-", ms=3, color=c, label=name)
        ax1.axhline(r["limit"], color=c, ls="--", lw=1)
        ax2.plot(M[signal], np.abs(r["gap"][signal]), "o-", ms=3, color=c)
        ax2.plot(M, r["rms"], "s--", ms=2.5, lw=1, color=c, alpha=0.7)
    M = next(iter(curves.values()))["M"].astype(float)
    rms_end = np.median([r["rms"][-1] for r in curves.values()])
    ax2.plot(M, 2 * rms_end * (M / M[-1]) ** -0.5, color="0.4", lw=1.5, ls=":", label=r"$\propto M^{-1/2}$")
    ax1.set(
        xscale="log",
        xlabel="number of negatives $M$",
        ylabel=r"$\mathcal{L}_\mathrm{contrastive}(\tau, M) - \log M$",
        title=r"loss (dots) and its $M\to\infty$ limit (dashed), $\tau = 0.5$",
    )
    ax1.legend(fontsize="small")
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="number of negatives $M$",
        ylabel="deviation from the limit",
        title="deviation of the loss (solid) and RMS deviation per pair (dashed)",
    )
    ax2.legend(loc="lower left")
    fig.tight_layout()
    return fig


def optimised_points(sphere_points: int, steps: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Projected gradient descent on L_uniform(t=2) from clustered (vMF) starts: 16 points on S^1 and
    `sphere_points` on S^2, before and after."""
    g = torch.Generator(device).manual_seed(seed)
    out = {"circle start": sample_vmf(16, [1.0, 0.0], 8.0, g)}
    out["circle"] = optimize_points(16, 2, t=2, steps=steps, lr=0.05, init=out["circle start"])
    out["sphere start"] = sample_vmf(sphere_points, [0.0, 0.0, 1.0], 5.0, g)
    out["sphere"] = optimize_points(sphere_points, 3, t=2, steps=steps, lr=0.05, init=out["sphere start"])
    return out


def angle_spread(circle: torch.Tensor) -> float:
    """(largest - smallest gap between neighbouring angles) / (2 pi / N): 0 for equally spaced points."""
    angles = torch.atan2(circle[:, 1], circle[:, 0]).double().cpu().sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    return (gaps.max() - gaps.min()).item() / (2 * math.pi / len(circle))


def figure_points(points: dict[str, torch.Tensor]):
    fig = plt.figure(figsize=(12, 3.8))
    ax = fig.add_subplot(1, 3, 1)
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.7"))
    ax.scatter(*points["circle start"].cpu().T, s=18, color="0.6", label="start")
    ax.scatter(*points["circle"].cpu().T, s=22, color="C0", label="optimised")
    ax.set(
        aspect="equal",
        xlim=(-1.2, 1.2),
        ylim=(-1.2, 1.2),
        xticks=[-1, 0, 1],
        yticks=[-1, 0, 1],
        title=r"$N = 16$ on $\mathcal{S}^1$",
    )
    ax.legend(loc="center", fontsize="small")
    for k, key in enumerate(("sphere start", "sphere")):
        x = points[key].double().cpu()
        ax = fig.add_subplot(1, 3, 2 + k, projection="mollweide")
        ax.scatter(torch.atan2(x[:, 1], x[:, 0]), torch.asin(x[:, 2].clamp(-1, 1)), s=4, color="C0" if k else "0.6")
        ax.set_title(f"$N = {len(x)}$ on $\\mathcal{{S}}^2$, {'optimised' if k else 'start'} (equal-area)", pad=12)
        ax.set_xticklabels([]), ax.set_yticklabels([]), ax.grid(True, lw=0.4)
    fig.tight_layout()
    return fig


def prop2(n_points: list[int], steps: int, device, seed: int = 0) -> pd.DataFrame:
    """L_uniform(t=2) of N-point minimisers on S^1 and S^2: over distinct pairs (below the bound for finite N)
    and over all N^2 pairs (the empirical measure's energy, never below it), beside the bound."""
    rows = []
    for m in (2, 3):
        for n in n_points:
            x = optimize_points(n, m, t=2, steps=steps, lr=0.05, generator=torch.Generator(device).manual_seed(seed))
            distinct = uniformity(x, t=2)
            rows.append(
                {
                    "m": m,
                    "N": n,
                    "distinct pairs": distinct,
                    "bound": uniformity_bound(m, 2),
                    "all pairs": math.log(((n - 1) * math.exp(distinct) + 1) / n),
                }
            )
    return pd.DataFrame(rows)


def prop1_vmf(vmf_points: int, device, seed: int = 0) -> pd.DataFrame:
    """L_uniform(t=2) of vMF(mu, kappa) against kappa: exact on S^1, sampled on S^2 and S^15."""
    g = torch.Generator(device).manual_seed(seed)
    return pd.DataFrame(
        [
            {
                "kappa": k,
                "S^1 exact": math.log(circle_mixture_potential([[1.0, 0.0]], [k], [1.0])),
                **{f"S^{m - 1} sampled": uniformity(sample_vmf(vmf_points, np.eye(m)[0], k, g)) for m in (3, 16)},
            }
            for k in np.logspace(-2, 2, 17)
        ]
    ).set_index("kappa")


def figure_props(p2: pd.DataFrame, p1: pd.DataFrame):
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (m, d) in enumerate(p2.groupby("m")):
        ax.plot(d["N"], d["distinct pairs"], "o-", color=f"C{k}", label=f"$\\mathcal{{S}}^{m - 1}$, distinct pairs")
        ax.plot(d["N"], d["all pairs"], "s--", color=f"C{k}", ms=4, label=f"$\\mathcal{{S}}^{m - 1}$, all pairs")
        ax.axhline(d["bound"].iloc[0], color=f"C{k}", lw=1, ls=":")
    ax.set(
        xscale="log",
        xlabel="number of points $N$",
        ylabel=r"$\mathcal{L}_\mathrm{uniform}(t=2)$ of the minimiser",
        title="Prop. 2: N-point minimisers approach the bound (dotted)",
    )
    ax.legend(fontsize="small")
    for k, (col, m) in enumerate([("S^1 exact", 2), ("S^2 sampled", 3), ("S^15 sampled", 16)]):
        bx.plot(
            p1.index,
            p1[col],
            "-" if "exact" in col else "o",
            ms=4,
            color=f"C{k}",
            label=f"$\\mathcal{{S}}^{{{m - 1}}}$",
        )
        bx.axhline(uniformity_bound(m, 2), color=f"C{k}", lw=1, ls=":")
    bx.set(
        xscale="log",
        xlabel=r"vMF concentration $\kappa$",
        ylabel=r"$\mathcal{L}_\mathrm{uniform}(t=2)$",
        title=r"Prop. 1: vMF$(\mu, \kappa)$ reaches the bound only as $\kappa \to 0$",
    )
    bx.legend(fontsize="small")
    fig.tight_layout()
    return fig


def figure_bound():
    """-2t + log 0F1(; m/2; t^2) against m, tending to -2t, with the paper's two values."""
    fig, ax = plt.subplots(figsize=(6, 4))
    m = np.unique(np.round(np.logspace(np.log10(2), np.log10(8192), 60)).astype(int))
    for k, t in enumerate((1, 2, 4)):
        ax.plot(m, [uniformity_bound(int(d), t) for d in m], color=f"C{k}", label=f"$t = {t}$")
        ax.axhline(-2 * t, color=f"C{k}", lw=1, ls=":")
    ax.plot([2, 128], [paper("bound_m2_t2"), paper("bound_m128_t2")], "k*", ms=9, label="the paper's values ($t = 2$)")
    ax.set(
        xscale="log",
        xlabel="dimension $m$ (features on $\\mathcal{S}^{m-1}$)",
        ylabel=r"$-2t + \log\, {}_0F_1(;\frac{m}{2};t^2)$",
        title="uniformity lower bound, tending to $-2t$ (dotted)",
    )
    ax.legend()
    fig.tight_layout()
    return fig


def fig4_synthetic(points: int, seeds: int, device, seed: int = 0) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """G_2 of uniform points and of the vMF mixture on S^1 over `seeds` draws of `points`, beside the exact
    population values and the paper's; and the first draw of each (the one plotted)."""
    draw = {
        "uniform": lambda g: sample_uniform(points, 2, g),
        "vMF mixture": lambda g: sample_vmf_mixture(points, *MIXTURE, g),
    }
    exact = {
        "uniform": circle_mixture_potential([[1.0, 0.0]], [0.0], [1.0]),
        "vMF mixture": circle_mixture_potential(*MIXTURE),
    }
    reported = {"uniform": paper("uniform_G2_S1"), "vMF mixture": paper("vmf_mixture_G2")}
    rows, first = [], {}
    for name, sampler in draw.items():
        g = torch.Generator(device).manual_seed(seed)
        xs = [sampler(g) for _ in range(seeds)]
        first[name] = xs[0]
        G = [mean_gaussian_potential(x, t=2) for x in xs]
        rows.append(
            {
                "distribution": name,
                "G_2 (plotted draw)": G[0],
                "mean over draws": np.mean(G),
                "sd over draws": np.std(G, ddof=1),
                "exact population": exact[name],
                "paper": reported[name],
            }
        )
    return pd.DataFrame(rows).set_index("distribution"), first


def figure_fig4(table: pd.DataFrame, samples: dict[str, torch.Tensor], kde_grid: int = 150):
    fig, axes = plt.subplots(2, 2, figsize=(8, 7), gridspec_kw=dict(width_ratios=[1, 1.4]))
    for row, (name, x) in zip(axes, samples.items()):
        plots.kde_panel_2d(row[0], x, grid=kde_grid)
        row[0].set_title(f"{name}: $G_2$ = {table.loc[name, 'G_2 (plotted draw)']:.4f}")
        plots.vmf_kde_angles(row[1], x, kappa=8.0)
        row[1].axhline(1 / (2 * np.pi), color="0.5", ls=":", lw=1)
        row[1].set_title(f"vMF KDE of angles, $\\kappa = 8$ ({len(x):,} points; dotted: uniform)")
    fig.tight_layout()
    return fig


def judge(slope_table: pd.DataFrame, spread: float, fig4: pd.DataFrame) -> list[dict[str, Any]]:
    rms, gap = slope_table["per-pair RMS deviation"].median(), slope_table["mean deviation"].median()
    b2, b128 = uniformity_bound(2, 2), uniformity_bound(128, 2)
    bounds_ok = abs(b2 - paper("bound_m2_t2")) < 1e-3 and abs(b128 - paper("bound_m128_t2")) < 1e-3
    uniform = fig4.loc["uniform", "G_2 (plotted draw)"]
    return [
        verdict(
            "Theorem 1",
            "L_contrastive(tau, M) - log M approaches the alignment + uniformity limit, gap O(M^-1/2)",
            rms < -0.35,
            f"per-pair deviation falls as M^{rms:.2f} (theory {paper('theorem1_rms_slope'):g}), "
            f"the loss's mean deviation as M^{gap:.2f}",
            ["theorem1_convergence"],
        ),
        verdict(
            "Propositions 1-2",
            "minimisers of the Gaussian potential spread out uniformly; bound values",
            spread < 0.05 and bounds_ok,
            f"16 points on S^1 equally spaced within {100 * spread:.2g}%; bounds "
            f"{b2:.4f} (paper {paper('bound_m2_t2')}), {b128:.4f} (paper {paper('bound_m128_t2')})",
            ["prop1_optimized_points", "prop2_convergence", "uniformity_bound"],
        ),
        verdict(
            "Figure 4 (synthetic)",
            "mean G_2: uniform 0.2070, vMF mixture 0.3439",
            abs(uniform - paper("uniform_G2_S1")) < 0.005,
            f"uniform {uniform:.4f}, mixture {fig4.loc['vMF mixture', 'G_2 (plotted draw)']:.4f} (exact population "
            f"{fig4.loc['vMF mixture', 'exact population']:.4f})",
            ["fig4_synthetic"],
        ),
    ]
