"""One figure style for the whole project, atomic PNG+PDF saving, and the two feature-density panels
of the paper's Figures 3 and 4 (Gaussian KDE of 2-d features in R^2, von Mises-Fisher KDE of their
angles), written for any [N, 2] unit-norm features: synthetic samples here, real encoders later."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from scipy.special import ive
from scipy.stats import gaussian_kde

from .runs import atomic_write

DPI = 150
CMAP = "viridis"


def set_style() -> None:
    """Paper-like rc: seaborn 'paper' context with ticks, STIX serif text and matching math text,
    embeddable (Type 42) fonts in PDFs."""
    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=1.2)
    matplotlib.rcParams.update(
        {
            "font.family": "serif",
            "font.serif": ["STIXGeneral", "DejaVu Serif"],
            "mathtext.fontset": "stix",
            "axes.titlesize": "medium",
            "legend.frameon": False,
            "figure.dpi": 100,
            "savefig.dpi": DPI,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
        }
    )


def save_figure(fig: plt.Figure, name: str, figures_dir: str | Path) -> tuple[Path, Path]:
    """Write `figures_dir/name.png` (dpi 150) and `name.pdf`, each through a temporary file in the same
    folder and os.replace, so a reader never sees a half-written figure. Returns the two paths."""
    paths = []
    for ext in ("png", "pdf"):
        path = Path(figures_dir) / f"{name}.{ext}"
        atomic_write(path, lambda fh: fig.savefig(fh, format=ext, dpi=DPI, bbox_inches="tight"))
        paths.append(path)
    return paths[0], paths[1]


def _as_2d_numpy(f) -> np.ndarray:
    f = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 2:
        raise ValueError(f"expected 2-d features of shape [N, 2], got {f.shape}: these panels show S^1 only")
    return f


def kde_panel_2d(ax: plt.Axes, f, grid: int = 150, lim: float = 1.3, bw_method=None, max_points: int = 10_000):
    """Gaussian KDE of 2-d features in R^2 (scipy.stats.gaussian_kde, Scott's bandwidth by default) on a
    grid x grid image over [-lim, lim]^2, with the unit circle drawn: Figures 3-4, middle columns.
    At most `max_points` evenly strided rows enter the KDE (evaluation cost is points x grid^2).
    Returns the image artist (for a colorbar)."""
    f = _as_2d_numpy(f)
    f = f[:: math.ceil(len(f) / max_points)]
    xs = np.linspace(-lim, lim, grid)
    xx, yy = np.meshgrid(xs, xs)
    density = gaussian_kde(f.T, bw_method=bw_method)(np.stack([xx.ravel(), yy.ravel()])).reshape(grid, grid)
    image = ax.imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap=CMAP, interpolation="bilinear")
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, lw=0.6, ls="--", color="white", alpha=0.6))
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])
    return image


def vmf_kde_angles(ax: plt.Axes, f, kappa: float = 8.0, grid: int = 720, **line_kw):
    """von Mises-Fisher KDE of the angles atan2(y, x) of 2-d features on [-pi, pi]: Figures 3-4, right
    columns. Density (1/N) sum_i exp(kappa cos(phi - theta_i)) / (2 pi I_0(kappa)), computed with
    exponentially scaled Bessel functions so that large kappa does not overflow. Returns the line."""
    f = _as_2d_numpy(f)
    theta = np.arctan2(f[:, 1], f[:, 0])
    phi = np.linspace(-np.pi, np.pi, grid)
    density = np.zeros(grid)
    for chunk in np.array_split(theta, max(1, len(theta) // 2048)):
        density += np.exp(kappa * (np.cos(phi[:, None] - chunk[None, :]) - 1)).sum(axis=1)
    density /= len(theta) * 2 * np.pi * ive(0, kappa)
    (line,) = ax.plot(phi, density, **line_kw)
    ax.fill_between(phi, density, alpha=0.25, color=line.get_color(), lw=0)
    ax.set(xlim=(-np.pi, np.pi), ylim=(0, None), xlabel="angle", ylabel="density")
    ax.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], [r"$-\pi$", r"$-\pi/2$", "0", r"$\pi/2$", r"$\pi$"])
    return line


def density_panel(ax: plt.Axes, f, grid: int = 150, max_dots: int = 400) -> None:
    """kde_panel_2d with a few of the points on top as white dots: a collapsed encoder's density is narrower
    than a pixel (or singular, when all features coincide), the dots still show where it sits."""
    f = _as_2d_numpy(f)
    try:
        kde_panel_2d(ax, f, grid=grid)
    except np.linalg.LinAlgError:  # all features identical: no density to estimate
        ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])
        ax.set_facecolor(plt.get_cmap(CMAP)(0.0))
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, lw=0.6, ls="--", color="white", alpha=0.6))
    dots = f[:: max(1, len(f) // max_dots)]
    ax.scatter(dots[:, 0], dots[:, 1], s=1.5, color="white", alpha=0.5, lw=0)


def rgbd_grid(images, depth, n: int = 8, title: str = ""):
    """The first `n` RGB images (uint8 [N, 3, H, W]) above their depth maps ([N, 1, H, W], metres; near =
    bright, one colour scale for all), as a reader checks that depth is visible in the images (Fig. 5b data)."""
    n = min(n, len(images))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    lo, hi = float(depth[:n].min()), float(depth[:n].max())
    for i in range(n):
        axes[0, i].imshow(images[i].permute(1, 2, 0).cpu().numpy())
        im = axes[1, i].imshow(depth[i, 0].cpu().numpy(), cmap="magma_r", vmin=lo, vmax=hi)
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.colorbar(im, ax=axes[1].tolist(), label="depth (m)", shrink=0.9)
    fig.suptitle(title)
    return fig


def learning_curves(table, points, acc: str = "val_output_linear"):
    """Validation accuracy, L_align and exp(L_uniform) of each run's evaluated snapshots against the training
    epoch, one line per run labelled by its objective and learning rate (`table`: a sweep's results table,
    `points`: its .trajectories.csv)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    panels = [
        (acc, "validation accuracy (%), output + linear"),
        ("align", r"$\mathcal{L}_\mathsf{align}(\alpha=2)$"),
        ("uniform", r"$\exp(\mathcal{L}_\mathsf{uniform}(t=2))$"),
    ]
    for k, (_, row) in enumerate(table.iterrows()):
        t = points[points["run"] == row["run"]].sort_values("epoch")
        for ax, (col, _) in zip(axes, panels):
            y = np.exp(t[col]) if col == "uniform" else t[col]
            ax.plot(t["epoch"], y, "o-", ms=4, color=f"C{k}", label=f"{row['objective']}, lr {row['lr']:g}")
    for ax, (_, label) in zip(axes, panels):
        ax.set(xlabel="training epoch", ylabel=label)
    axes[2].set_ylim(0, 1.05)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig
