"""Tests for hypersphere.augment: the paper's augmentation recipe as batched tensor ops, checked against
torchvision (per image) as the independent reference."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T2
import torchvision.transforms.v2.functional as TF
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from hypersphere.augment import (
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment,
    eval_transform,
    jitter_orders,
    resized_crop,
    sample_crops,
)

MEAN3, STD3 = (0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def smooth_images(n, c=3, h=96, w=96, seed=0):
    """Natural-ish uint8 test images: smooth random colour fields (so crops and jitter change statistics)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def normalize_ref(x01, mean, std):
    return (x01 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.fixture(autouse=True)
def one_thread():
    """Small batched ops run best on one intra-op thread; with 2 threads on a busy 2-core machine,
    OpenMP barriers can make hundreds of small kernels 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0)


# ---------------------------------------------------------------------------------------- shapes, seeds


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", [1, 3])
def test_output_dtype_device_shape(device, c):
    x = smooth_images(8, c=c, h=40, w=50).to(device)
    mean, std = (0.5,) * c, (0.25,) * c
    out = augment(x, AugmentConfig(crop_size=24), mean, std, gen(0, device))
    assert out.dtype == torch.float32 and out.device.type == device and out.shape == (8, c, 24, 24)
    assert torch.isfinite(out).all()
    ev = eval_transform(x, 24, 26, mean, std)
    assert ev.dtype == torch.float32 and ev.device.type == device and ev.shape == (8, c, 24, 24)


def test_bad_input_raises():
    x = smooth_images(2)
    with pytest.raises(ValueError, match="uint8"):
        augment(x.float(), AugmentConfig(), MEAN3, STD3, gen())
    with pytest.raises(ValueError, match="mean/std"):
        augment(x, AugmentConfig(), (0.5,), (0.5,), gen())
    with pytest.raises(ValueError, match="generator"):
        augment(x, AugmentConfig(), MEAN3, STD3, SimpleNamespace(device=torch.device("cuda")))
    with pytest.raises(ValueError, match="resize"):
        eval_transform(x, 64, 60, MEAN3, STD3)


@pytest.mark.parametrize(
    "cfg,c",
    [(AugmentConfig(), 3), (AugmentConfig(24, (0.3, 1.0), flip=False, jitter=(0.4, 0.4, 0, 0), grayscale_p=0), 1)],
)
def test_parameters_differ_per_image(cfg, c):
    """B copies of one image must give B different views (the pitfall of one transform call per batch)."""
    x = smooth_images(1, c=c).expand(32, -1, -1, -1).contiguous()
    out = augment(x, cfg, (0.5,) * c, (0.25,) * c, gen()).flatten(1)
    dist = torch.cdist(out, out)
    off_diag = dist[~torch.eye(32, dtype=torch.bool)]
    assert off_diag.min() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_seed_fixes_result(device):
    x = smooth_images(16).to(device)
    a = augment(x, AugmentConfig(), MEAN3, STD3, gen(1, device))
    b = augment(x, AugmentConfig(), MEAN3, STD3, gen(1, device))
    c = augment(x, AugmentConfig(), MEAN3, STD3, gen(2, device))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------------------- crops


def _tv_crops(n, height, width, scale, ratio, seed=0):
    torch.manual_seed(seed)
    return np.array(
        [RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio)) for _ in range(n)]
    )  # rows (top, left, h, w)


def _ours(n, height, width, scale, ratio, seed=0):
    return torch.stack(sample_crops(n, height, width, scale, ratio, gen(seed)), 1).numpy()


def _crop_stats(c, height, width):
    top, left, h, w = c.T
    area = h * w / (height * width)
    log_aspect = np.log(w / h)
    rel_top = (top + 0.5) / (height - h + 1)  # position within the free range, uniform if randint
    return area, log_aspect, rel_top


@pytest.mark.parametrize(
    "height,width,scale,n", [(96, 96, (0.08, 1.0), 20_000), (28, 28, (0.3, 1.0), 10_000), (20, 100, (0.5, 1.0), 4_000)]
)
def test_crop_distribution_matches_torchvision(height, width, scale, n):
    """Area fraction, log aspect ratio and position match RandomResizedCrop.get_params (KS test); the
    (20, 100) case mostly takes the central-crop fallback."""
    ratio = (3 / 4, 4 / 3)
    ours = _ours(n, height, width, scale, ratio)
    ref = _tv_crops(n, height, width, scale, ratio)
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    for a, b in zip(_crop_stats(ours, height, width), _crop_stats(ref, height, width)):
        assert ks_2samp(a, b).pvalue > 1e-3


def test_crop_ks_test_detects_wrong_parameters():
    """The KS check above has power: a different scale or ratio range fails it."""
    ref = _tv_crops(20_000, 96, 96, (0.08, 1.0), (3 / 4, 4 / 3))
    area_ref, aspect_ref, _ = _crop_stats(ref, 96, 96)
    area, _, _ = _crop_stats(_ours(20_000, 96, 96, (0.12, 1.0), (3 / 4, 4 / 3)), 96, 96)
    _, aspect, _ = _crop_stats(_ours(20_000, 96, 96, (0.08, 1.0), (2 / 3, 3 / 2)), 96, 96)
    assert ks_2samp(area, area_ref).pvalue < 1e-3
    assert ks_2samp(aspect, aspect_ref).pvalue < 1e-3


@pytest.mark.parametrize("height,width,ratio", [(10, 10, (2.0, 3.0)), (10, 10, (0.2, 0.4)), (12, 30, (1.0, 1.0))])
def test_crop_fallback_equals_torchvision(height, width, ratio):
    """When no candidate fits (scale 1 with a ratio the image cannot hold), both take the same central crop."""
    ours = _ours(5, height, width, (1.0, 1.0), ratio)
    ref = _tv_crops(5, height, width, (1.0, 1.0), ratio)
    np.testing.assert_array_equal(ours, ref)


def test_resized_crop_matches_torchvision():
    """Crop + antialiased bilinear resize (+ flip) equals torchvision's resized_crop on float images, for
    crops smaller (upsampling) and larger (downsampling) than the output."""
    x = torch.rand(24, 3, 40, 50, generator=gen())
    top, left, h, w = sample_crops(24, 40, 50, (0.05, 1.0), (0.5, 2.0), gen(1))
    flip = torch.rand(24, generator=gen(2)) < 0.5
    out = resized_crop(x, top, left, h, w, 32, flip)
    for i in range(24):
        ref = TF.resized_crop(x[i], int(top[i]), int(left[i]), int(h[i]), int(w[i]), [32, 32], antialias=True)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert (h < 32).any() and (h > 32).any()


@pytest.mark.parametrize("c", [1, 3])
def test_identity_and_flip(c):
    x = smooth_images(64, c=c, h=20, w=20)
    mean, std = MEAN3[:c], STD3[:c]
    expected = normalize_ref(x.float() / 255, mean, std)
    out = augment(x, AugmentConfig(crop_size=20, **IDENTITY), mean, std, gen())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)

    out = augment(x, AugmentConfig(crop_size=20, **{**IDENTITY, "flip": True}), mean, std, gen())
    same = (out - expected).flatten(1).abs().amax(1) < 1e-5
    flipped = (out - torch.flip(expected, dims=[-1])).flatten(1).abs().amax(1) < 1e-5
    assert (same | flipped).all() and same.sum() > 16 and flipped.sum() > 16


# ---------------------------------------------------------------------------------------- colour


def _colour_batch(n=16, seed=0):
    x = torch.rand(n, 3, 12, 12, generator=gen(seed))
    x[:, :, :2] = x[:, :1, :2]  # grey pixels (max == min)
    x[:, 1, 2:4] = x[:, 0, 2:4]  # ties r == g
    x[:, 2, 4:6] = x[:, 1, 4:6]  # ties g == b
    x[:, :, 6] = x[:, :, 6].round()  # saturated corners 0/1
    return x


@pytest.mark.parametrize(
    "ours,ref,lo,hi",
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
@pytest.mark.parametrize("c", [1, 3])
def test_jitter_ops_match_torchvision(ours, ref, lo, hi, c):
    x = _colour_batch()[:, :c]
    f = lo + (hi - lo) * torch.rand(16, generator=gen(1))
    f[0], f[1] = lo, hi
    out = ours(x, f)
    expected = torch.stack([ref(x[i], float(f[i])) for i in range(16)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_jitter_orders():
    assert len(jitter_orders((0.4, 0.4, 0.4, 0.4), 3)) == 24
    assert sorted(jitter_orders((0.4, 0.4, 0.4, 0.4), 1)) == [(0, 1), (1, 0)]  # no saturation/hue on grey
    assert jitter_orders((0.0, 0.4, 0.0, 0.0), 3) == [(1,)]
    assert jitter_orders((0.0, 0.0, 0.0, 0.0), 3) == [()]


def test_jitter_order_is_random_per_image(monkeypatch):
    """Each image goes through the four ops in its own uniformly random order: replace op k by
    x -> 10 x + (k + 1), so the final pixel value spells the order as digits."""
    import hypersphere.augment as A

    monkeypatch.setattr(A, "_JITTER_OPS", tuple((lambda k: lambda x, f: 10 * x + (k + 1))(k) for k in range(4)))
    n = 4800
    x = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    cfg = AugmentConfig(crop_size=2, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, grayscale_p=0.0)
    out = augment(x, cfg, (0.0,) * 3, (1.0,) * 3, gen())
    codes = out[:, 0, 0, 0].round().long()
    assert (out == codes.view(-1, 1, 1, 1).float()).all()  # one order per image, applied to every pixel
    perms = {int("".join(p)) for p in itertools.permutations("1234")}
    assert set(codes.tolist()) == perms  # every order occurs, and only permutations
    counts = torch.bincount(codes)[sorted(perms)].float()
    assert ((counts - n / 24).abs() < 5 * math.sqrt(n / 24)).all()


def _view_stats(v):
    """Statistics of views [N, 3, H, W] in [0, 1] that crops, jitter order and grayscale all move."""
    m = v.mean(dim=(2, 3))
    return {
        "mean_r": m[:, 0],
        "g_minus_b": m[:, 1] - m[:, 2],
        "contrast": v.std(dim=(1, 2, 3)),
        "saturation": (v.amax(1) - v.amin(1)).mean(dim=(1, 2)),
    }


def test_whole_recipe_matches_torchvision_in_distribution():
    """The full paper recipe (crop, flip, jitter in random order, grayscale) gives views of one image
    whose statistics follow torchvision.transforms.v2 applied per image (KS tests)."""
    n = 1000
    x = smooth_images(1, h=32, w=32, seed=3)
    ours = augment(x.expand(n, -1, -1, -1).contiguous(), AugmentConfig(crop_size=16), (0.0,) * 3, (1.0,) * 3, gen())
    tv = T2.Compose(
        [
            T2.ToDtype(torch.float32, scale=True),
            T2.RandomResizedCrop(16, scale=(0.08, 1.0)),
            T2.RandomHorizontalFlip(),
            T2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T2.RandomGrayscale(0.2),
        ]
    )
    torch.manual_seed(0)
    ref = torch.stack([tv(x[0]) for _ in range(n)])
    for (name, a), b in zip(_view_stats(ours).items(), _view_stats(ref).values()):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, name
    # power check: without grayscale the saturation statistic is visibly different
    no_gray = augment(
        x.expand(n, -1, -1, -1).contiguous(),
        AugmentConfig(crop_size=16, grayscale_p=0.0),
        (0.0,) * 3,
        (1.0,) * 3,
        gen(),
    )
    assert ks_2samp(_view_stats(no_gray)["saturation"].numpy(), _view_stats(ref)["saturation"].numpy()).pvalue < 1e-3


def test_grayscale_fraction():
    x = smooth_images(1, h=24, w=24).expand(4000, -1, -1, -1).contiguous()
    cfg = AugmentConfig(crop_size=16, jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.2)
    out = augment(x, cfg, (0.0,) * 3, (1.0,) * 3, gen())
    grey = (out.amax(1) - out.amin(1)).flatten(1).amax(1) < 1e-6
    assert abs(grey.float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 4000)


def test_grayscale_first_is_moco_v1s_order():
    """MoCo v1 greys before the jitter, so a greyed view keeps no hue: it equals torchvision's RandomGrayscale(p=1)
    followed by ColorJitter(hue=0.5), whatever hue is drawn; greyed after the jitter (the paper's order), the
    rotated hue changes the luminance."""
    x = smooth_images(16, h=24, w=24)
    ref = normalize_ref(TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3), MEAN3, STD3)
    greyed = {**IDENTITY, "jitter": (0.0, 0.0, 0.0, 0.5), "grayscale_p": 1.0}
    views = {
        first: augment(x, AugmentConfig(crop_size=24, grayscale_first=first, **greyed), MEAN3, STD3, gen())
        for first in (True, False)
    }
    assert torch.allclose(views[True], ref, atol=1e-4)
    assert (views[False] - ref).abs().amax() > 0.05


# ---------------------------------------------------------------------------------------- evaluation view


@pytest.mark.parametrize(
    "h,w,resize,crop", [(96, 96, 70, 64), (28, 28, 26, 24), (32, 32, 35, 32), (40, 60, 30, 24), (60, 40, 30, 24)]
)
def test_eval_transform_matches_torchvision(h, w, resize, crop):
    x = smooth_images(6, h=h, w=w) ^ torch.randint(0, 40, (6, 3, h, w), generator=gen(), dtype=torch.uint8)
    ref = T2.Compose([T2.Resize(resize, antialias=True), T2.CenterCrop(crop)])
    out = eval_transform(x, crop, resize, (0.0,) * 3, (1.0,) * 3)
    assert out.shape == (6, 3, crop, crop)
    assert (out * 255 - ref(x).float()).abs().max() <= 1.0 + 1e-3  # torchvision rounds to uint8
    torch.testing.assert_close(out, ref(x.float() / 255), atol=1e-5, rtol=0)  # same maths on float
    normed = eval_transform(x, crop, resize, MEAN3, STD3)
    torch.testing.assert_close(normed, normalize_ref(out, MEAN3, STD3), atol=1e-5, rtol=0)


def test_augment_inside_bf16_autocast_stays_float32():
    """The trainer runs the encoder under bf16 autocast on CUDA; augmentation must not be caught by it
    (a matmul into an fp32 `out` failed under autocast). CPU autocast reproduces the CUDA behaviour."""
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment(images, AugmentConfig(crop_size=24), (0.5,) * 3, (0.25,) * 3, g)
    ref = augment(images, AugmentConfig(crop_size=24), (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.equal(out, ref)
