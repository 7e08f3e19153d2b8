"""Depth prediction from frozen encoder features (Wang & Isola, ICML 2020, Fig. 5b, Table 2, appendix B.1, Table 6).

- `load_nyu`: NYU-Depth-V2's 1,449 labeled RGB-D images (Silberman et al. 2012) with the standard 795 / 654 split.
- `render_scenes` / `load_scenes`: an embedded stand-in with exact depth, rendered by ray casting in torch: a room
  (textured floor, back and side walls) with 1-4 boxes and spheres, seen from a random camera. Depth shows in
  the image through perspective, occlusion, shading, cast shadows and texture gradients (floor tiles of about
  half a metre also give a cue to absolute scale).
- `feature_maps`: the spatial activations of an encoder's last two conv blocks ("conv5", "conv4").
- `DepthDecoder` (Table 6) and `depth_probe`: the paper's depth predictor trained on a frozen encoder's maps
  (appendix B.1), scored by MSE on the validation split.
- `evaluate`: the evaluation kind `depth` (domains.DEPTH); encoders and views are the image domain's.

The paper does not state its NYU preprocessing or depth target; the choices here are documented where made.
"""

from dataclasses import dataclass, replace
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import models, runs
from ..augment import AugmentConfig, eval_transform, recipe
from ..probes import sanity_check
from .image import channel_stats, pair_metrics, summary, to_device

NYU_FILES = ("nyu_depth_v2_labeled.mat", "splits.mat")
NYU_URL = "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html"
NYU_VALID = (45, 471, 41, 601)  # rows, cols of the 480x640 frame with valid Kinect depth (Eigen et al. 2014 crop)
NYU_SIDE = 96  # stored shorter side, as STL-10's 96 px images: the paper's 64 px crops and Resize(70) apply as is
SCENES_VERSION = 1  # bump when the renderer changes: older caches are then ignored


@dataclass(frozen=True)
class DepthData:
    """Whole RGB-D splits as tensors: images uint8 [N, 3, H, W], depth float32 [N, 1, H, W] in metres.

    Depth targets are standardised, (depth - depth_mean) / depth_std with the train split's pixel mean and std.
    The paper reports MSE without saying in what units (Table 2: 0.70-0.76); with this target predicting the
    mean depth scores about 1, so its numbers read as a fraction of depth variance left unexplained."""

    name: str
    encoder_images: Tensor  # what encoders train on: the train RGB (appendix B.1)
    train_images: Tensor
    train_depth: Tensor
    val_images: Tensor  # the paper's "validation set" (NYU's test split)
    val_depth: Tensor
    mean: tuple[float, ...]  # RGB, 0-1 scale, of the train split
    std: tuple[float, ...]
    depth_mean: float  # metres, of the train split
    depth_std: float
    augment: AugmentConfig  # the positive-pair recipe
    eval_resize: int  # evaluation view: Resize(eval_resize) then CenterCrop(augment.crop_size), RGB and depth alike

    def to(self, device) -> "DepthData":
        return to_device(self, device)

    def summary(self) -> str:
        return summary(self)


def _depth_data(name, train_images, train_depth, val_images, val_depth, augment, eval_resize) -> DepthData:
    mean, std = channel_stats(train_images)
    return DepthData(
        name,
        train_images,
        train_images,
        train_depth,
        val_images,
        val_depth,
        mean,
        std,
        train_depth.mean().item(),
        train_depth.std().item(),
        augment,
        eval_resize,
    )


# ---------------------------------------------------------------------------------------- NYU-Depth-V2


def load_nyu(root: str | Path, side: int = NYU_SIDE) -> DepthData:
    """NYU-Depth-V2 labeled set from root/nyu_depth_v2_labeled.mat (MATLAB v7.3, i.e. HDF5: `images` uint8
    [1449, 3, W=640, H=480], `depths` metres [1449, 640, 480]) and root/splits.mat (1-based `trainNdxs`,
    `testNdxs`: 795 / 654). Each frame is cropped to the region of valid depth (NYU_VALID, 426 x 560) and resized
    (bilinear, antialiased; RGB and depth alike) to shorter side `side`. The paper says only "the train-val split
    on the 1449 labeled images" (appendix B.1); the crop and size are choices made here. Augmentation: the
    paper's STL-10 recipe (64 px crops, Resize(70) evaluation); B.1 lists the same operations for NYU-Depth-V2
    without their parameters. RGB mean / std: the train split's."""
    root = Path(root)
    if not all((root / f).is_file() for f in NYU_FILES):
        raise FileNotFoundError(
            f"NYU-Depth-V2 needs {' and '.join(NYU_FILES)} in {root}; download both from the "
            f"NYU Depth V2 dataset page ({NYU_URL}) into that folder"
        )
    try:
        import h5py
    except ImportError:
        raise ImportError("reading nyu_depth_v2_labeled.mat (MATLAB v7.3) needs h5py; pip install h5py") from None
    from scipy.io import loadmat

    splits = loadmat(root / NYU_FILES[1])
    train, val = (torch.from_numpy(splits[k].ravel().astype(np.int64) - 1) for k in ("trainNdxs", "testNdxs"))
    top, bottom, left, right = NYU_VALID
    size = (side, round(side * (right - left) / (bottom - top)))
    images, depths = [], []
    with h5py.File(root / NYU_FILES[0], "r") as f:
        for i in range(0, f["images"].shape[0], 64):  # 64 frames at a time: the whole file is ~3 GB
            rgb = torch.from_numpy(f["images"][i : i + 64]).transpose(2, 3)  # (N, 3, W, H) -> (N, 3, H, W)
            d = torch.from_numpy(f["depths"][i : i + 64].astype(np.float32)).transpose(1, 2)[:, None]
            rgb, d = rgb[..., top:bottom, left:right], d[..., top:bottom, left:right]
            rgb = F.interpolate(rgb.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
            images.append(rgb.round_().clamp_(0, 255).to(torch.uint8))
            depths.append(F.interpolate(d, size=size, mode="bilinear", align_corners=False, antialias=True))
    images, depths = torch.cat(images), torch.cat(depths)
    return _depth_data("nyu-depth-v2", images[train], depths[train], images[val], depths[val], recipe("stl10"), 70)


# ---------------------------------------------------------------------------------------- rendered scenes

FOV = math.radians(60)  # full field of view, horizontal and vertical (NYU's Kinect: about 58 x 45 degrees)
AMBIENT = 0.3  # ambient share of the light
MAX_OBJECTS = 4
PLANE_AXIS = (1, 2, 0, 0)  # floor y = 0, back wall z = back, side walls x = -half_width and x = +half_width
PLANE_NORMALS = torch.tensor([[0.0, 1, 0], [0, 0, -1], [1, 0, 0], [-1, 0, 0]])
# texture axes: the pattern is the parity of sum_k axes[k] * floor(p_k / period) at the world point p
FLOOR_AXES = torch.tensor([[1.0, 0, 1]])  # checker tiles
BACK_AXES = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])  # vertical or horizontal stripes, checker
SIDE_AXES = torch.tensor([[0.0, 1, 0], [0, 0, 1], [0, 1, 1]])
OBJECT_AXES = torch.tensor([[0.0, 0, 0], [0, 1, 0], [1, 1, 1]])  # plain, stripes, 3-D checker


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def sample_scenes(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """n random scenes (lengths in metres, angles in radians). Camera at (0, height, 0) with `yaw` about the
    vertical and `pitch` down; a room with floor y = 0, back wall z = back, side walls x = +-half_width;
    `light` [n, 3] a unit vector towards a directional light. Objects [n, MAX_OBJECTS]: `kind` 0 none, 1 sphere,
    2 box, `centre` [.., 3], `size` [.., 3] (box half-extents; a sphere's radius in each entry), all resting on
    the floor. Surfaces [n, 4 + MAX_OBJECTS] (floor, back, left, right, then the objects): two colours `color_a`,
    `color_b` [.., 3] in [0, 1], texture `period` and `axes` [.., 3]."""
    g, K = generator, MAX_OBJECTS
    s = {
        "height": _uniform(g, 0.6, 1.8, n),
        "pitch": _uniform(g, math.radians(5), math.radians(25), n),
        "yaw": _uniform(g, -math.radians(30), math.radians(30), n),
        "back": _uniform(g, 4.0, 8.0, n),
        "half_width": _uniform(g, 1.5, 3.5, n),
    }
    elevation, azimuth = _uniform(g, math.radians(30), math.radians(75), n), _uniform(g, 0, 2 * math.pi, n)
    s["light"] = torch.stack([elevation.cos() * azimuth.sin(), elevation.sin(), elevation.cos() * azimuth.cos()], 1)
    count = torch.randint(1, K + 1, (n, 1), generator=g)
    s["kind"] = torch.where(torch.arange(K) < count, torch.randint(1, 3, (n, K), generator=g), 0)
    radius, half = _uniform(g, 0.2, 0.6, n, K, 1), _uniform(g, 0.15, 0.6, n, K, 3)
    s["size"] = torch.where(s["kind"][..., None] == 1, radius.expand(n, K, 3), half)
    u = torch.rand(n, K, 2, generator=g)
    w, back = s["half_width"][:, None], s["back"][:, None]
    x = (w - 0.6) * (2 * u[..., 0] - 1)
    z = 1.5 + (back - 2.1) * u[..., 1]
    s["centre"] = torch.stack([x, s["size"][..., 1], z], 2)
    S = 4 + K
    s["color_a"], s["color_b"] = _uniform(g, 0.15, 1.0, n, S, 3), _uniform(g, 0.15, 1.0, n, S, 3)
    s["period"] = torch.cat([_uniform(g, 0.4, 0.6, n, 1), _uniform(g, 0.3, 1.2, n, 3), _uniform(g, 0.1, 0.4, n, K)], 1)
    pick = lambda options, m: options[torch.randint(len(options), (n, m), generator=g)]  # noqa: E731
    s["axes"] = torch.cat([pick(FLOOR_AXES, 1), pick(BACK_AXES, 1), pick(SIDE_AXES, 2), pick(OBJECT_AXES, K)], 1)
    return s


def _hit_objects(o: Tensor, d: Tensor, kind: Tensor, centre: Tensor, size: Tensor) -> Tensor:
    """Ray parameter t of the first hit in front of o (inf: none) of rays o + t d (o, d [3, n, P], components
    first) with each object (kind [n, K], centre and size [n, K, 3]): [n, K, P]. Spheres by the quadratic, boxes
    by the slab test."""
    o, d = o[:, :, None], d[:, :, None]  # [3, n, 1, P]
    c, h = centre.permute(2, 0, 1)[..., None], size.permute(2, 0, 1)[..., None]  # [3, n, K, 1]
    oc = o - c
    a, b = (d * d).sum(0), (d * oc).sum(0)
    disc = b * b - a * ((oc * oc).sum(0) - h[0] ** 2)
    t_sphere = (-b - disc.clamp_min(0).sqrt()) / a
    t_sphere = torch.where((disc >= 0) & (t_sphere > 1e-4), t_sphere, torch.inf)
    inv = 1 / torch.where(d == 0, 1e-12, d)
    t1, t2 = (-h - oc) * inv, (h - oc) * inv
    near, far = torch.minimum(t1, t2).amax(0), torch.maximum(t1, t2).amin(0)
    t_box = torch.where((far >= near) & (near > 1e-4), near, torch.inf)
    kind = kind[:, :, None]
    return torch.where(kind == 1, t_sphere, torch.where(kind == 2, t_box, torch.inf))


def render(scenes: dict[str, Tensor], size: int, supersample: int = 2) -> tuple[Tensor, Tensor]:
    """Ray-cast `scenes` (sample_scenes' format) -> RGB uint8 [n, 3, size, size], depth float32 [n, 1, size, size].

    Pinhole camera, FOV wide; the ray through pixel (i, j) of an R = size * supersample grid is
    forward + tan(FOV / 2) * (x right + y up), x = 2 (j + 0.5) / R - 1, y = 1 - 2 (i + 0.5) / R, so its hit
    parameter is the depth along the optical axis (what a Kinect measures). The nearest of the 4 planes and the
    objects is seen; its colour is the texture's times AMBIENT + (1 - AMBIENT) max(0, normal . light), the
    second term zero in the shadow of an object (walls cast none). Pixels average their supersample^2 rays.
    Vectors are laid out components first, [3, n, P] (P = R^2 rays): dot products add three slabs."""
    n, R = len(scenes["height"]), size * supersample
    cy, sy, cp, sp = scenes["yaw"].cos(), scenes["yaw"].sin(), scenes["pitch"].cos(), scenes["pitch"].sin()
    forward = torch.stack([sy * cp, -sp, cy * cp])[..., None]  # [3, n, 1]
    right = torch.stack([cy, torch.zeros_like(cy), -sy])[..., None]
    up = torch.stack([sy * sp, cp, cy * sp])[..., None]
    grid = (torch.arange(R) + 0.5) * 2 / R - 1
    y, x = torch.meshgrid(-grid, grid, indexing="ij")
    tan = math.tan(FOV / 2)
    d = forward + tan * (x.reshape(-1) * right + y.reshape(-1) * up)  # [3, n, P]
    o = torch.stack([torch.zeros(n), scenes["height"], torch.zeros(n)])[..., None].expand_as(d)

    planes = torch.stack([torch.zeros(n), scenes["back"], -scenes["half_width"], scenes["half_width"]], 1)
    t_planes = torch.stack([(planes[:, k, None] - o[a]) / d[a] for k, a in enumerate(PLANE_AXIS)], 1)
    t_planes = torch.where(t_planes > 0, t_planes, torch.inf)
    t_all = torch.cat([t_planes, _hit_objects(o, d, scenes["kind"], scenes["centre"], scenes["size"])], 1)
    depth, surface = t_all.min(1)  # [n, P]: the nearest hit; every ray meets a wall or the floor
    p = o + depth * d

    def per_pixel(field: Tensor) -> Tensor:  # surface field [n, S] or [n, S, 3] -> [n, P] or [3, n, P]
        if field.ndim == 2:
            return field.gather(1, surface)
        return field.gather(1, surface[..., None].expand(-1, -1, 3)).permute(2, 0, 1)

    obj = (surface - 4).clamp_min(0)  # the object slot of object pixels
    kind = torch.where(surface < 4, 0, scenes["kind"].gather(1, obj))
    c = scenes["centre"].gather(1, obj[..., None].expand(-1, -1, 3)).permute(2, 0, 1)
    h = scenes["size"].gather(1, obj[..., None].expand(-1, -1, 3)).permute(2, 0, 1)
    q = (p - c) / h
    face = q.abs() >= q.abs().amax(0)  # the axis of the box face hit (two or three at an edge or corner)
    box_normal = face * q.sign() / face.sum(0).sqrt()
    plane_normal = PLANE_NORMALS[surface.clamp_max(3)].permute(2, 0, 1)
    normal = torch.where(kind == 0, plane_normal, torch.where(kind == 1, q, box_normal))  # q: a sphere's unit normal

    parity = (per_pixel(scenes["axes"]) * torch.floor(p / per_pixel(scenes["period"]))).sum(0) % 2
    albedo = torch.where(parity == 0, per_pixel(scenes["color_a"]), per_pixel(scenes["color_b"]))
    light = scenes["light"].T[..., None].expand_as(p)
    blockers = _hit_objects(p + 1e-3 * normal, light, scenes["kind"], scenes["centre"], scenes["size"])
    shadowed = blockers.amin(1) < torch.inf
    direct = (normal * light).sum(0).clamp_min(0) * ~shadowed
    rgb = albedo * (AMBIENT + (1 - AMBIENT) * direct)

    rgb = F.avg_pool2d(rgb.transpose(0, 1).reshape(n, 3, R, R), supersample)
    depth = F.avg_pool2d(depth.reshape(n, 1, R, R), supersample)
    return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8), depth


def render_scenes(
    n: int, size: int = 32, seed: int = 0, supersample: int = 2, chunk: int = 32
) -> tuple[Tensor, Tensor]:
    """n random scenes (sample_scenes) rendered at size x size: RGB uint8 [n, 3, size, size], depth float32
    [n, 1, size, size] in metres. Deterministic in `seed` (all parameters are drawn first, then rendered in chunks)."""
    scenes = sample_scenes(n, torch.Generator().manual_seed(seed))
    parts = [render({k: v[i : i + chunk] for k, v in scenes.items()}, size, supersample) for i in range(0, n, chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def load_scenes(
    data_dir: str | Path = "data", n_train: int = 2000, n_test: int = 500, size: int = 32, seed: int = 0
) -> DepthData:
    """The rendered stand-in as DepthData: train scenes from seed 2 * seed, validation from 2 * seed + 1, cached in
    data_dir/scenes/ as one .npz keyed by the arguments. Augmentation: the paper's recipe with size-px crops
    (as for CIFAR-10), evaluation Resize(size * 70 / 64) + CenterCrop(size)."""
    path = Path(data_dir) / "scenes" / f"scenes-v{SCENES_VERSION}-{n_train}-{n_test}-{size}px-seed{seed}.npz"
    if not path.is_file():
        (tr_x, tr_d), (va_x, va_d) = render_scenes(n_train, size, 2 * seed), render_scenes(n_test, size, 2 * seed + 1)
        arrays = {"train_images": tr_x, "train_depth": tr_d, "val_images": va_x, "val_depth": va_d}
        runs.atomic_write(path, lambda f: np.savez(f, **{k: v.numpy() for k, v in arrays.items()}))
    with np.load(path) as z:
        t = {k: torch.from_numpy(z[k]) for k in ("train_images", "train_depth", "val_images", "val_depth")}
    return _depth_data(
        "scenes",
        t["train_images"],
        t["train_depth"],
        t["val_images"],
        t["val_depth"],
        replace(recipe("stl10"), crop_size=size),
        round(size * 70 / 64),
    )


# ---------------------------------------------------------------------------------------- depth predictor


def feature_maps(encoder: nn.Module, x: Tensor, taps=("conv4", "conv5")) -> dict[str, Tensor]:
    """Unflattened outputs [B, C, h, w] of conv blocks of `encoder.conv`: "conv5" the last block (after its
    pooling), "conv4" the one before, and so on (SmallAlexNet's five blocks are conv1..conv5)."""
    taps, blocks = ([taps] if isinstance(taps, str) else list(taps)), list(encoder.conv)
    index = {t: len(blocks) - 6 + int(t[4:]) for t in taps if t[:4] == "conv" and t[4:].isdigit()}
    if len(index) != len(taps) or not taps or not all(0 <= i < len(blocks) for i in index.values()):
        raise ValueError(
            f"unknown spatial taps {list(taps)}; {type(encoder).__name__} has conv{6 - len(blocks)}..conv5"
        )
    out = {}
    for i, block in enumerate(blocks[: max(index.values()) + 1]):
        x = block(x)
        out.update({t: x for t, j in index.items() if j == i})
    return out


class DepthDecoder(nn.Sequential):
    """The paper's depth predictor (appendix Table 6): blocks of ConvTranspose2d(k 3, stride 2, padding 1,
    output_padding 1; no bias, BN follows) + BN + ReLU, each doubling the side and halving the channels (floor),
    then a 3x3 conv to one channel. The number of blocks is round(log2(out_size / in_size)) (at least 1); where
    in_size * 2^blocks is not out_size (SmallAlexNet's 7 px conv5 at 64 px), the last block's output is resized
    (bilinear) to it."""

    def __init__(self, in_channels: int, in_size: int, out_size: int):
        blocks = max(1, round(math.log2(out_size / in_size)))
        layers, c = [], in_channels
        for _ in range(blocks):
            layers += [
                nn.ConvTranspose2d(c, max(1, c // 2), 3, 2, 1, output_padding=1, bias=False),
                nn.BatchNorm2d(max(1, c // 2)),
                nn.ReLU(inplace=True),
            ]
            c = max(1, c // 2)
        if in_size * 2**blocks != out_size:
            layers.append(nn.Upsample(size=(out_size, out_size), mode="bilinear", align_corners=False))
        super().__init__(*layers, nn.Conv2d(c, 1, 3, padding=1))


@dataclass(frozen=True)
class DepthProbeConfig:
    """The paper's depth-predictor training (appendix B.1): Adam(lr 3e-3, betas (0.5, 0.999)), batch 128,
    120 epochs, lr x0.2 at epochs 70, 90, 100, 110 (kept as fractions when `epochs` changes)."""

    lr: float = 3e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 128
    epochs: int = 120
    milestones: tuple[float, ...] = (70 / 120, 90 / 120, 100 / 120, 110 / 120)
    gamma: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"depth probe epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    def lr_milestones(self) -> list[int]:
        """Epochs at which the lr is multiplied by gamma."""
        return [round(m * self.epochs) for m in self.milestones]


def depth_views(depth: Tensor, data: DepthData) -> Tensor:
    """Standardised depth of the evaluation view, pixel-aligned with eval_transform's RGB: [N, 1, crop, crop]."""
    H, W = depth.shape[-2:]
    r, crop = data.eval_resize, data.augment.crop_size
    size = (r, int(r * W / H)) if H <= W else (int(r * H / W), r)
    if size != (H, W):
        depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((size[0] - crop) / 2)), int(round((size[1] - crop) / 2))
    return (depth[..., top : top + crop, left : left + crop] - data.depth_mean) / data.depth_std


@torch.no_grad()
def _maps(encoder: nn.Module, images: Tensor, tap: str, data: DepthData, device, batch_size: int = 256) -> Tensor:
    chunks = [
        feature_maps(
            encoder, eval_transform(b.to(device), data.augment.crop_size, data.eval_resize, data.mean, data.std), (tap,)
        )[tap].float()
        for b in images.split(batch_size)
    ]
    return torch.cat(chunks)


def fit_decoder(
    train_f: Tensor,
    train_y: Tensor,
    val_f: Tensor,
    val_y: Tensor,
    cfg: DepthProbeConfig = DepthProbeConfig(),
    progress: bool = True,
    desc: str = "depth probe",
) -> float:
    """Validation MSE of a DepthDecoder (Table 6) trained on cached feature maps `train_f` [N, C, h, w] against
    standardised depth `train_y` [N, 1, H, W] with the paper's optimiser and schedule. Deterministic on CPU."""
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the global generator alone
        torch.manual_seed(cfg.seed)
        decoder = DepthDecoder(train_f.shape[1], train_f.shape[-1], train_y.shape[-1]).to(train_f.device)
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.lr_milestones(), cfg.gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.epochs), desc=desc, leave=False, disable=not progress):
        for idx in torch.randperm(len(train_f), generator=gen).split(cfg.batch_size):
            idx = idx.to(train_f.device)
            loss = F.mse_loss(decoder(train_f[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    decoder.eval()
    with torch.no_grad():
        pred = torch.cat([decoder(f) for f in val_f.split(256)])
    return F.mse_loss(pred, val_y).item()


def depth_probe(
    encoder: nn.Module,
    tap: str,
    data: DepthData,
    cfg: DepthProbeConfig = DepthProbeConfig(),
    device=None,
    progress: bool = True,
    cv_folds: int = 0,
) -> dict[str, float]:
    """Validation MSE of a DepthDecoder trained on `tap` ("conv5" or "conv4") maps of the frozen encoder (Table 2).

    The encoder sees each image's evaluation view once (eval mode, no grad) and its maps are cached: the paper
    states no augmentation for the depth predictor. Returns `mse` (standardised depth, DepthData's units),
    `rmse_m` (metres), two image-blind baselines (`mean_mse` predicts the train mean depth, `pixel_mean_mse`
    the train mean depth map) and with `cv_folds` >= 2 `cv_mse`, the mean held-out MSE of decoders trained on
    the other folds of the train split (a shuffled k-fold split from cfg.seed; the paper selects encoders by
    it). Ends with `sanity_check` that the encoder is unchanged."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    before = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    with models.frozen(encoder):
        train_f, val_f = (_maps(encoder, x, tap, data, device) for x in (data.train_images, data.val_images))
    train_y, val_y = (depth_views(d.to(device), data) for d in (data.train_depth, data.val_depth))
    mse = fit_decoder(train_f, train_y, val_f, val_y, cfg, progress, f"depth probe {tap}")
    out = {
        "mse": mse,
        "rmse_m": math.sqrt(mse) * data.depth_std,
        "mean_mse": val_y.pow(2).mean().item(),
        "pixel_mean_mse": F.mse_loss(train_y.mean(0, keepdim=True).expand_as(val_y), val_y).item(),
    }
    if cv_folds >= 2:
        folds = (
            torch.randperm(len(train_f), generator=torch.Generator().manual_seed(cfg.seed)).to(device).chunk(cv_folds)
        )
        held = []
        for i, fold in enumerate(folds):
            rest = torch.cat(folds[:i] + folds[i + 1 :])
            held.append(
                fit_decoder(
                    train_f[rest],
                    train_y[rest],
                    train_f[fold],
                    train_y[fold],
                    cfg,
                    progress,
                    f"depth CV {tap} {i + 1}/{len(folds)}",
                )
            )
        out["cv_mse"] = sum(held) / len(held)
    sanity_check(before, encoder)
    return out


# ---------------------------------------------------------------------------------------- the domain's datasets

DATASETS = ("nyu-depth-v2", "scenes")
ARCHS = ("auto",) + models.ARCHS  # the image domain's conv encoders: the decoder reads their spatial taps
SCENES = {"n_train": 2000, "n_test": 500, "size": 24}  # the embedded stand-in (load_scenes); not in a run's hash: bump
# train.TRAIN_VERSION with any change, or runs trained on the old scenes would be taken as current


def load_dataset(name: str, root: str | Path = "data", download: bool = False) -> DepthData:
    """`nyu-depth-v2` from root/nyu_depth_v2/ (no download: the labeled file is fetched by hand, load_nyu says
    where from), or `scenes`, the rendered stand-in (rendered once into root/scenes/)."""
    if name == "nyu-depth-v2":
        return load_nyu(Path(root) / "nyu_depth_v2")
    if name == "scenes":
        return load_scenes(root, **SCENES)
    raise ValueError(f"unknown depth dataset {name!r}; choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------- evaluation: depth


def evaluate(
    encoder: nn.Module,
    data: DepthData,
    cfg,
    device,
    tau: float | None = None,
    batch_size: int = 768,
    taps: Sequence[str] | None = None,
) -> dict[str, float]:
    """Depth evaluations of one encoder as a flat dict (MSE of standardised depth, DepthData's units):
    val_{tap}_mse, val_{tap}_rmse_m     the decoder's validation MSE (and RMSE in metres) per spatial tap,
    cv_{tap}_mse                        for the first tap (conv5 by default, the one Table 2 selects by) its
                                        `cv_folds`-fold CV MSE on the train split,
    val_mean_mse, val_pixel_mean_mse    image-blind baselines: the train mean depth, the train mean depth map,
    align, uniform (, contrastive)      `pair_metrics` on the validation split."""
    out: dict[str, float] = {}
    probe = DepthProbeConfig(epochs=cfg.decoder_epochs, seed=cfg.seed)
    taps = cfg.taps if taps is None else taps
    for tap in taps:
        r = depth_probe(
            encoder, tap, data, probe, device, progress=False, cv_folds=cfg.cv_folds if tap == taps[0] else 0
        )
        out.update(
            {
                f"val_{tap}_mse": r["mse"],
                f"val_{tap}_rmse_m": r["rmse_m"],
                "val_mean_mse": r["mean_mse"],
                "val_pixel_mean_mse": r["pixel_mean_mse"],
                **({f"cv_{tap}_mse": r["cv_mse"]} if "cv_mse" in r else {}),
            }
        )
    out.update(pair_metrics(encoder, data, tau, batch_size, cfg.seed, device=device))
    return out
