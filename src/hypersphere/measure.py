"""Alignment, uniformity and effective rank of any encoder's features (Wang & Isola 2020, Eqs. 4-5; effective rank
as RankMe, Garrido et al. 2023), with confidence intervals:

    python -m hypersphere measure views.npy                         # [2, N, d]: two views of N inputs
    python -m hypersphere measure feats.pt --positives pairs.npy    # [N, d] features, [P, 2] positive index pairs
    python -m hypersphere measure runs/digits-color-1a2b3c4d5e      # a run's encoder on its validation pairs
    python -m hypersphere measure mypkg.models:encoder --dataset digits-color   # any nn.Module on a dataset here

    from hypersphere.measure import measure
    measure(x, y)   # {"n", "dim", "align", "align_low", "align_high", "uniform", ..., "effective_rank"}

Features must lie on the unit sphere (l2-normalise them first, or pass --normalize); NaN, mismatched pairs and
bad indices are one-line errors.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .metrics import check_unit_norm, effective_rank, uniformity, uniformity_bound
from .stats import mean_interval

JACKKNIFE_BLOCKS = 10  # uniformity's interval: delete-a-block jackknife over this many blocks of inputs


def _uniform_interval(f: Tensor, t: float, level: float, blocks: int) -> tuple[float, float, float]:
    """L_uniform over all distinct pairs of f, and a delete-a-block jackknife interval over its inputs (pairs
    share points, so a plain interval over pairs would be too narrow)."""
    u = uniformity(f, t)
    k = min(blocks, len(f) // 2)
    if k < 2:
        return u, float("nan"), float("nan")
    parts = torch.arange(len(f)) % k
    pseudo = [k * u - (k - 1) * uniformity(f[parts != b], t) for b in range(k)]
    _, low, high = mean_interval(pseudo, level)
    return u, low, high


def measure(
    x: Tensor,
    y: Tensor,
    points: Tensor | None = None,
    alpha: float = 2.0,
    t: float = 2.0,
    level: float = 0.95,
    normalize: bool = False,
    blocks: int = JACKKNIFE_BLOCKS,
) -> dict[str, float]:
    """L_align(alpha) over the positive pairs (rows of x and y), with a t-interval over pairs; L_uniform(t) over
    all distinct pairs of `points` (default: x and y, averaged over the two views as the paper's estimator), with
    a jackknife interval over inputs; and the effective rank of `points` (default x)."""
    x, y = check_unit_norm(torch.as_tensor(x), normalize), check_unit_norm(torch.as_tensor(y), normalize)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"positive pairs need two [N, d] arrays of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    align, a_low, a_high = mean_interval((x - y).norm(dim=1).pow(alpha).double().numpy(), level)
    views = [check_unit_norm(torch.as_tensor(points), normalize)] if points is not None else [x, y]
    us = [_uniform_interval(v, t, level, blocks) for v in views]
    uniform, u_low, u_high = (float(np.mean([u[i] for u in us])) for i in range(3))
    return {
        "n": len(x),
        "dim": x.shape[1],
        "align": align,
        "align_low": a_low,
        "align_high": a_high,
        "uniform": uniform,
        "uniform_low": u_low,
        "uniform_high": u_high,
        "effective_rank": effective_rank(views[0]),
        "alpha": alpha,
        "t": t,
        "level": level,
    }


def _array(path: Path) -> Tensor:
    """A .npy or .pt file as a float tensor (one-line errors for other files and unreadable contents)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; give a .npy or .pt features file, a run directory or module:callable"
        )
    try:
        data = np.load(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy and torch raise many kinds for a file they cannot read
        raise ValueError(
            f"{path}: not a readable .npy or .pt array ({type(e).__name__}); save features with "
            f"numpy.save or torch.save"
        ) from None
    if not isinstance(data, (np.ndarray, Tensor)):
        raise ValueError(f"{path}: holds a {type(data).__name__}, not an array; save one tensor of features")
    return torch.as_tensor(data).float()


def from_file(path: str | Path, positives: str | Path | None = None, **kw) -> dict[str, float]:
    """`measure` on a features file: [2, N, d] (two views), or [N, d] with a [P, 2] file of positive index pairs."""
    f = _array(Path(path))
    if positives is None:
        if f.ndim != 3 or len(f) != 2:
            raise ValueError(
                f"{path}: shape {tuple(f.shape)}; give [2, N, d] (two views of N inputs) or [N, d] "
                f"features with --positives pairs.npy"
            )
        return measure(f[0], f[1], **kw)
    pairs = _array(Path(positives))
    if f.ndim != 2 or pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(
            f"--positives needs [N, d] features and [P, 2] index pairs, got {tuple(f.shape)} and {tuple(pairs.shape)}"
        )
    if (pairs != pairs.round()).any() or pairs.min() < 0 or pairs.max() >= len(f):
        raise ValueError(f"{positives}: index pairs must be integers in 0..{len(f) - 1}")
    i, j = pairs.long().unbind(1)
    return measure(f[i], f[j], points=f, **kw)


def from_encoder(encoder: torch.nn.Module, data, seed: int = 0, **kw) -> dict[str, float]:
    """`measure` on an encoder's outputs for two random views (the data's augmentation) of each validation image."""
    from .domains.image import view_pairs

    device = next(encoder.parameters()).device
    x, y = view_pairs(encoder, data, torch.Generator(device=device).manual_seed(seed), device)
    return measure(x, y, **kw)


def from_run(run_dir: str | Path, data_dir: str = "data", seed: int = 0, **kw) -> dict[str, float]:
    """`measure` on a finished run's encoder and its dataset's validation images."""
    from .train import load_encoder

    encoder, cfg, data = load_encoder(run_dir, "cpu", data_dir)
    if not hasattr(data, "val_images"):
        raise ValueError(
            f"{run_dir} is a {cfg.dataset} run: measure works on image runs; its evaluation record "
            f"(`python -m hypersphere evaluate`) has L_align and L_uniform"
        )
    return from_encoder(encoder, data, seed, **kw)


def from_module(spec: str, dataset: str, data_dir: str = "data", seed: int = 0, **kw) -> dict[str, float]:
    """`measure` on `module:callable` (returning an nn.Module of images -> features) on a dataset of this project
    (an image folder: dataset imagefolder with data_dir holding train/ and val/)."""
    from .domains import domain_of

    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot load {spec!r} ({e}); give module:callable, importable from here") from None
    encoder = factory().eval()
    if not isinstance(encoder, torch.nn.Module):
        raise ValueError(f"{spec} returned a {type(encoder).__name__}, not a torch.nn.Module")
    return from_encoder(encoder, domain_of(dataset).load(dataset, data_dir, False), seed, **kw)


def table(result: dict[str, float]) -> str:
    """The result as lines for a terminal."""
    pct, dim = f"{result['level']:.0%}", result["dim"]
    rows = [
        ("pairs", f"{result['n']} (dim {dim})"),
        (
            f"L_align(alpha={result['alpha']:g})",
            f"{result['align']:.4f}  {pct} CI [{result['align_low']:.4f}, {result['align_high']:.4f}]",
        ),
        (
            f"L_uniform(t={result['t']:g})",
            f"{result['uniform']:.4f}  {pct} CI [{result['uniform_low']:.4f}, {result['uniform_high']:.4f}]",
        ),
        ("  uniform on the sphere", f"{uniformity_bound(dim, result['t']):.4f}"),
        ("effective rank", f"{result['effective_rank']:.2f} of {dim}"),
    ]
    return "\n".join(f"{label:<24}{value}" for label, value in rows)
